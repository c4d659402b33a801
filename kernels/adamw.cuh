/* kernels/adamw.cuh — the optimizer step and the global gradient norm.
 *
 *   MT_TRY(mt_sumsq(cx, norm_sq, grads, n));                 // *norm_sq += sum(g^2), per buffer
 *   MT_TRY(mt_clip_coef(cx, coef, norm_sq, 1.0f));           // on the device, no host sync
 *   MT_TRY(mt_adamw(cx, params, master, m, v, grads, n, &hp, coef, seed));
 *
 * Defines  mt_adamw_gpu, mt_sumsq_gpu, mt_clip_coef_gpu
 *
 * AdamW over a flat range of n parameters (call it once over a contiguous parameter buffer, or once
 * per buffer).  param and grad are in cx->dtype; master, m, v are float.  With master (bf16 params):
 * the update runs on the fp32 master copy and param receives it rounded to bf16 — to nearest, or
 * stochastically when seed != 0 with the 32-bit draw mt_rng_u32(seed, hp->step, i) for element i of
 * this call (vary the seed per buffer so that buffers do not share draws).  Without master, param is
 * read and written directly.  gscale (float, on the device, or NULL) multiplies every gradient.
 * 16-byte packs when n's pointers are aligned, the tail element by element.
 *
 * mt_sumsq_gpu: deterministic two-pass sum of squares: a grid fixed by n (not by the device) writes
 * one fp64 partial per block into the scratch; one block adds them in order and adds the total to
 * *acc (float).  mt_clip_coef_gpu: one thread.
 */
#ifndef MT_KERNELS_ADAMW_CUH
#define MT_KERNELS_ADAMW_CUH
#include "common.cuh"

#define MT__SUMSQ_MAX_BLOCKS 1024

typedef struct mt__adamw_args {
    float lr, beta1, beta2, eps, wd, bc1, bc2;
    uint64_t seed;
    uint64_t step;
} mt__adamw_args;

/* Stochastic rounding float -> bf16 with 16 random bits; Inf/NaN round to nearest. */
__device__ __forceinline__ __nv_bfloat16 mt__bf16_sr(float x, uint32_t r) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);
    u += r & 0xffffu;
    return __ushort_as_bfloat16((unsigned short)(u >> 16));
}

template <typename T>
__device__ __forceinline__ T mt__round_param(float x, uint32_t r, bool sr) {
    if constexpr (sizeof(T) == 2) {
        return sr ? mt__bf16_sr(x, r) : __float2bfloat16_rn(x);
    } else {
        (void)r; (void)sr;
        return x;
    }
}

/* One element: returns the new parameter; updates m, v in place. */
__device__ __forceinline__ float mt__adamw_elem(float p, float g, float &m, float &v, const mt__adamw_args &a) {
    m = a.beta1 * m + (1.0f - a.beta1) * g;
    v = a.beta2 * v + (1.0f - a.beta2) * g * g;
    float mhat = m / a.bc1, vhat = v / a.bc2;
    return p - a.lr * (mhat / (sqrtf(vhat) + a.eps) + a.wd * p);
}

template <typename T, int VEC, bool MASTER>
__global__ void mt__adamw_kernel(T *param, float *master, float *m, float *v, const T *__restrict__ grad, size_t n,
                                 mt__adamw_args a, const float *__restrict__ gscale) {
    float gs = gscale ? *gscale : 1.0f;
    bool sr = sizeof(T) == 2 && a.seed != 0;
    uint32_t key[2] = {(uint32_t)a.seed, (uint32_t)(a.seed >> 32)};
    size_t npk = VEC >= 4 ? n / VEC : 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < npk; i += (size_t)gridDim.x * blockDim.x) {
        size_t e0 = i * VEC;
        mt__vec<T, VEC> gv = mt__ldcs<T, VEC>(grad + e0), pv, out;
        if (!MASTER) pv = mt__ld<T, VEC>(param + e0);
        float mf[VEC], vf[VEC], pf[VEC];
#pragma unroll
        for (int c = 0; c < VEC / 4; c++) {
            mt__vec<float, 4> m4 = mt__ld<float, 4>(m + e0 + 4 * c), v4 = mt__ld<float, 4>(v + e0 + 4 * c);
            mt__vec<float, 4> p4;
            if (MASTER) p4 = mt__ld<float, 4>(master + e0 + 4 * c);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                mf[4 * c + k] = m4.v[k];
                vf[4 * c + k] = v4.v[k];
                pf[4 * c + k] = MASTER ? p4.v[k] : mt__f(pv.v[4 * c + k]);
            }
        }
        uint32_t rnd[VEC];
        if (sr) {
#pragma unroll
            for (int c = 0; c < VEC / 4; c++) {
                uint64_t q = (e0 >> 2) + c;
                uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), (uint32_t)a.step, (uint32_t)(a.step >> 32)};
                uint32_t r4[4];
                mt_philox4x32(ctr, key, r4);
#pragma unroll
                for (int k = 0; k < 4; k++) rnd[4 * c + k] = r4[k];
            }
        } else {
#pragma unroll
            for (int k = 0; k < VEC; k++) rnd[k] = 0;
        }
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            pf[k] = mt__adamw_elem(pf[k], mt__f(gv.v[k]) * gs, mf[k], vf[k], a);
            out.v[k] = mt__round_param<T>(pf[k], rnd[k], sr);
        }
#pragma unroll
        for (int c = 0; c < VEC / 4; c++) {
            mt__vec<float, 4> m4, v4, p4;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                m4.v[k] = mf[4 * c + k];
                v4.v[k] = vf[4 * c + k];
                p4.v[k] = pf[4 * c + k];
            }
            mt__st<float, 4>(m + e0 + 4 * c, m4);
            mt__st<float, 4>(v + e0 + 4 * c, v4);
            if (MASTER) mt__st<float, 4>(master + e0 + 4 * c, p4);
        }
        mt__st<T, VEC>(param + e0, out);
    }
    /* tail (and the whole range when VEC == 1): one element per thread */
    for (size_t e = npk * VEC + (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        float mm = m[e], vv = v[e];
        float p = MASTER ? master[e] : mt__f(param[e]);
        p = mt__adamw_elem(p, mt__f(grad[e]) * gs, mm, vv, a);
        m[e] = mm;
        v[e] = vv;
        if (MASTER) master[e] = p;
        param[e] = mt__round_param<T>(p, sr ? mt_rng_u32(a.seed, a.step, e) : 0u, sr);
    }
}

/* partial[block] = sum of x^2 over the block's grid-stride share, in fp64 */
template <typename T, int VEC>
__global__ void mt__sumsq_partial_kernel(double *partial, const T *__restrict__ x, size_t n) {
    __shared__ double shm[32];
    double acc = 0.0;
    size_t npk = n / VEC;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < npk; i += (size_t)gridDim.x * blockDim.x) {
        mt__vec<T, VEC> xv = mt__ldcs<T, VEC>(x + i * VEC);
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < VEC; k++) s += mt__f(xv.v[k]) * mt__f(xv.v[k]);
        acc += (double)s;
    }
    for (size_t e = npk * VEC + (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        double f = mt__f(x[e]);
        acc += f * f;
    }
    acc = mt__warp_sum_d(acc);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shm[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += shm[w];
        partial[blockIdx.x] = s;
    }
}

/* *acc += sum of partial[0..nblk), one block of 1024 threads, fixed order */
__global__ void mt__sumsq_final_kernel(float *acc, const double *__restrict__ partial, int nblk) {
    __shared__ double shm[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < nblk; i += blockDim.x) s += partial[i];
    s = mt__warp_sum_d(s);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shm[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += shm[w];
        *acc = *acc + (float)t;
    }
}

__global__ void mt__clip_coef_kernel(float *coef, const float *norm_sq, float max_norm) {
    double c = max_norm > 0.0f ? (double)max_norm / (sqrt((double)*norm_sq) + 1e-6) : 1.0;
    *coef = (float)(c < 1.0 ? c : 1.0);
}

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_adamw_gpu(const mt_ctx *cx, void *param, float *master, void *m, void *v, const void *grad,
                              size_t n, const mt_adamw_hp *hp, const void *gscale, uint64_t seed) {
    if (!hp || hp->step < 1) return mt_errorf(MT_ERR_ARG, "adamw: hp->step must be >= 1 (got %d)", hp ? hp->step : 0);
    if (n == 0) return MT_OK;
    mt__adamw_args a;
    a.lr = hp->lr;
    a.beta1 = hp->beta1;
    a.beta2 = hp->beta2;
    a.eps = hp->eps;
    a.wd = hp->weight_decay;
    a.bc1 = (float)(1.0 - pow((double)hp->beta1, hp->step));
    a.bc2 = (float)(1.0 - pow((double)hp->beta2, hp->step));
    a.seed = seed;
    a.step = (uint64_t)hp->step;
    MT__GPU_DISPATCH(cx, "adamw", {
        constexpr int PW = mt__pack_width<T>::value;
        int ok = mt__al16(param) && mt__al16(master) && mt__al16(m) && mt__al16(v) && mt__al16(grad);
        unsigned grid = mt__ew_grid(cx, ok ? n / PW : n);
        if (ok && master)
            mt__adamw_kernel<T, PW, true><<<grid, 256, 0, MT__STREAM(cx)>>>((T *)param, master, (float *)m, (float *)v,
                                                                            (const T *)grad, n, a, (const float *)gscale);
        else if (ok)
            mt__adamw_kernel<T, PW, false><<<grid, 256, 0, MT__STREAM(cx)>>>((T *)param, master, (float *)m, (float *)v,
                                                                             (const T *)grad, n, a, (const float *)gscale);
        else if (master)
            mt__adamw_kernel<T, 1, true><<<grid, 256, 0, MT__STREAM(cx)>>>((T *)param, master, (float *)m, (float *)v,
                                                                           (const T *)grad, n, a, (const float *)gscale);
        else
            mt__adamw_kernel<T, 1, false><<<grid, 256, 0, MT__STREAM(cx)>>>((T *)param, master, (float *)m, (float *)v,
                                                                            (const T *)grad, n, a, (const float *)gscale);
    });
    MT__LAUNCHED(cx, "mt__adamw_kernel");
    return MT_OK;
}

MT_API mt_status mt_sumsq_gpu(const mt_ctx *cx, void *acc, const void *x, size_t n) {
    if (n == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "sumsq", {
        constexpr int PW = mt__pack_width<T>::value;
        int vec = mt__al16(x) ? PW : 1;
        size_t per_blk = (size_t)256 * vec * 4; /* at least 4 packs per thread */
        size_t nb = (n + per_blk - 1) / per_blk;
        int nblk = nb > MT__SUMSQ_MAX_BLOCKS ? MT__SUMSQ_MAX_BLOCKS : (int)nb;
        double *partial = (double *)cx->gpu->scratch;
        if (vec == PW)
            mt__sumsq_partial_kernel<T, PW><<<nblk, 256, 0, MT__STREAM(cx)>>>(partial, (const T *)x, n);
        else
            mt__sumsq_partial_kernel<T, 1><<<nblk, 256, 0, MT__STREAM(cx)>>>(partial, (const T *)x, n);
        MT__LAUNCHED(cx, "mt__sumsq_partial_kernel");
        mt__sumsq_final_kernel<<<1, 1024, 0, MT__STREAM(cx)>>>((float *)acc, partial, nblk);
    });
    MT__LAUNCHED(cx, "mt__sumsq_final_kernel");
    return MT_OK;
}

MT_API mt_status mt_clip_coef_gpu(const mt_ctx *cx, void *coef, const void *norm_sq, float max_norm) {
    MT_TRY(mt__gpu_check(cx, "clip_coef"));
    mt__clip_coef_kernel<<<1, 1, 0, MT__STREAM(cx)>>>((float *)coef, (const float *)norm_sq, max_norm);
    MT__LAUNCHED(cx, "mt__clip_coef_kernel");
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_ADAMW_CUH */
