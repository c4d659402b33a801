/* kernels/vocab_parallel.cuh — the tensor-parallel kernels: vocab-parallel cross-entropy in two
 * parts (local statistics; the finishing pass once every rank's statistics are gathered) and the
 * epilogue of a row-parallel linear (partial sum + bias + residual).
 *
 *   MT_TRY(mt_vocab_parallel_xent(cx, &lp, losses, logits, logits, targets, scale, stats, N, V, Vl, vstart));
 *
 * Defines  mt_vocab_xent_local_gpu, mt_vocab_xent_finish_gpu, mt_bias_residual_gpu
 *
 * Rules (as in mt/cpu_ops.inl): logits (N, Vl) are this rank's columns [vstart, vstart + Vl) of the
 * padded vocabulary, global columns >= V are padding; stats (3, N) float: local max (-inf when the
 * rank has no real column), sum of exp below it, target logit when local else 0; the finishing pass
 * reads all (tp, 3, N) and writes losses (N, float) and dlogits (may alias logits, NULL = forward
 * only); a target < 0 or >= V gives loss 0 and a zero gradient row.
 *
 * One block per row, as kernels/xent.cuh: the local pass keeps a running (max, sum of exp) per
 * thread over 16-byte packs, merged by fixed-order block reductions; the finishing pass combines
 * the tp triples in rank order (every thread the same, a few loads) and streams dlogits in place.
 * DRAM traffic: two reads and one write of the local logits (the single-rank kernel reads once
 * and writes once: the row is out of L2 by the time the gathered statistics arrive).
 */
#ifndef MT_KERNELS_VOCAB_PARALLEL_CUH
#define MT_KERNELS_VOCAB_PARALLEL_CUH
#include "common.cuh"
#include "elementwise.cuh"

#define MT__VXENT_THREADS 512

template <typename T, int VEC>
__global__ void __launch_bounds__(MT__VXENT_THREADS, 2)
    mt__vocab_xent_local_kernel(float *stats, const T *logits, const int32_t *__restrict__ targets, int N, int V,
                                int nreal, int Vl, int vstart) {
    __shared__ float shm[32];
    int row = blockIdx.x;
    const T *x = logits + (size_t)row * Vl;
    constexpr int U = 4;
    float m = -INFINITY, s = 0.0f;
    int npk = (nreal + VEC - 1) / VEC; /* a last partial pack stays inside the row: Vl % VEC == 0 */
    for (int p0 = threadIdx.x; p0 < npk; p0 += U * blockDim.x) {
        mt__vec<T, VEC> xv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p < npk) xv[u] = mt__ld<T, VEC>(x + (size_t)p * VEC);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p >= npk) break;
            float f[VEC], pm = -INFINITY;
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                f[k] = p * VEC + k < nreal ? mt__f(xv[u].v[k]) : -INFINITY;
                pm = fmaxf(pm, f[k]);
            }
            if (pm > m) {
                s *= expf(m - pm);
                m = pm;
            }
#pragma unroll
            for (int k = 0; k < VEC; k++)
                if (p * VEC + k < nreal) s += expf(f[k] - m);
        }
    }
    float M = mt__block_max(m, shm);
    float sv[1] = {m == -INFINITY ? 0.0f : s * expf(m - M)};
    mt__block_sum<1>(sv, shm);
    if (threadIdx.x == 0) {
        int tgt = targets[row], t = tgt - vstart;
        stats[row] = M;
        stats[(size_t)N + row] = sv[0];
        stats[2 * (size_t)N + row] = tgt >= 0 && tgt < V && t >= 0 && t < Vl ? mt__f(x[t]) : 0.0f;
    }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(MT__VXENT_THREADS, 2)
    mt__vocab_xent_finish_kernel(float *losses, T *dlogits, const T *logits, const int32_t *__restrict__ targets,
                                 const float *__restrict__ all, float dscale, int N, int V, int nreal, int Vl,
                                 int vstart, int tp) {
    int row = blockIdx.x;
    float M = -INFINITY, S = 0.0f, xt = 0.0f;
    for (int q = 0; q < tp; q++) M = fmaxf(M, all[(size_t)q * 3 * N + row]);
    for (int q = 0; q < tp; q++) {
        float m = all[(size_t)q * 3 * N + row];
        if (m != -INFINITY) S += all[(size_t)q * 3 * N + N + row] * expf(m - M);
        xt += all[(size_t)q * 3 * N + 2 * (size_t)N + row];
    }
    float lse = M + logf(S);
    int tgt = targets[row];
    bool ok = tgt >= 0 && tgt < V;
    if (threadIdx.x == 0) losses[row] = ok ? lse - xt : 0.0f;
    if (!dlogits) return;
    const T *x = logits + (size_t)row * Vl;
    T *d = dlogits + (size_t)row * Vl;
    int lt = tgt - vstart; /* the target's local column (outside [0, Vl) when another rank has it) */
    constexpr int U = 4;
    int npk = Vl / VEC;
    for (int p0 = threadIdx.x; p0 < npk; p0 += U * blockDim.x) {
        mt__vec<T, VEC> xv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p < npk) xv[u] = mt__ldcs<T, VEC>(x + (size_t)p * VEC);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p >= npk) break;
            mt__vec<T, VEC> o;
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                int c = p * VEC + k;
                float g = c < nreal ? expf(mt__f(xv[u].v[k]) - lse) : 0.0f;
                if (c == lt) g -= 1.0f;
                o.v[k] = mt__cvt<T>(ok ? g * dscale : 0.0f);
            }
            mt__stcs<T, VEC>(d + (size_t)p * VEC, o);
        }
    }
}

/* out = inp + bias[c] + resid, one pack of VEC columns per item; bias, resid may be NULL */
template <typename T, int VEC>
__global__ void mt__bias_residual_kernel(T *out, const T *inp, const T *bias, const T *resid, int N, int C) {
    size_t cp = (size_t)C / VEC, npk = (size_t)N * cp;
    MT__GRID_STRIDE(i, npk) {
        size_t c = (i % cp) * VEC;
        mt__vec<T, VEC> x = mt__ld<T, VEC>(inp + i * VEC), b, r, o;
        if (bias) b = mt__ld<T, VEC>(bias + c);
        if (resid) r = mt__ldcs<T, VEC>(resid + i * VEC);
#pragma unroll
        for (int k = 0; k < VEC; k++)
            o.v[k] = mt__cvt<T>(mt__f(x.v[k]) + (bias ? mt__f(b.v[k]) : 0.0f) + (resid ? mt__f(r.v[k]) : 0.0f));
        mt__st<T, VEC>(out + i * VEC, o);
    }
}

#ifdef __cplusplus
extern "C" {
#endif

MT_API int mt__vocab_nreal(int V, int Vl, int vstart) { return V - vstart < Vl ? (V - vstart > 0 ? V - vstart : 0) : Vl; }

MT_API mt_status mt__vocab_check(const char *op, int N, int V, int Vl, int vstart) {
    if (N < 0 || V <= 0 || Vl <= 0 || vstart < 0)
        return mt_errorf(MT_ERR_SHAPE, "%s: N = %d, V = %d, local vocab %d from %d (need N >= 0, V > 0, Vl > 0)", op,
                         N, V, Vl, vstart);
    return MT_OK;
}

MT_API mt_status mt_vocab_xent_local_gpu(const mt_ctx *cx, void *stats, const void *logits, const int32_t *targets,
                                         int N, int V, int Vl, int vstart) {
    MT_TRY(mt__vocab_check("vocab_xent_local", N, V, Vl, vstart));
    if (N == 0) return MT_OK;
    int nreal = mt__vocab_nreal(V, Vl, vstart);
    MT__GPU_DISPATCH(cx, "vocab_xent_local", {
        constexpr int PW = mt__pack_width<T>::value;
        if (Vl % PW == 0 && mt__al16(logits))
            mt__vocab_xent_local_kernel<T, PW><<<N, MT__VXENT_THREADS, 0, MT__STREAM(cx)>>>(
                (float *)stats, (const T *)logits, targets, N, V, nreal, Vl, vstart);
        else
            mt__vocab_xent_local_kernel<T, 1><<<N, MT__VXENT_THREADS, 0, MT__STREAM(cx)>>>(
                (float *)stats, (const T *)logits, targets, N, V, nreal, Vl, vstart);
    });
    MT__LAUNCHED(cx, "mt__vocab_xent_local_kernel");
    return MT_OK;
}

MT_API mt_status mt_vocab_xent_finish_gpu(const mt_ctx *cx, void *losses, void *dlogits, const void *logits,
                                          const int32_t *targets, const void *all, float dscale, int N, int V, int Vl,
                                          int vstart, int tp) {
    MT_TRY(mt__vocab_check("vocab_xent_finish", N, V, Vl, vstart));
    if (!losses || !all || tp < 1) return mt_errorf(MT_ERR_ARG, "vocab_xent_finish: losses and stats required, tp %d", tp);
    if (N == 0) return MT_OK;
    int nreal = mt__vocab_nreal(V, Vl, vstart);
    MT__GPU_DISPATCH(cx, "vocab_xent_finish", {
        constexpr int PW = mt__pack_width<T>::value;
        if (Vl % PW == 0 && mt__al16(logits) && mt__al16(dlogits))
            mt__vocab_xent_finish_kernel<T, PW><<<N, MT__VXENT_THREADS, 0, MT__STREAM(cx)>>>(
                (float *)losses, (T *)dlogits, (const T *)logits, targets, (const float *)all, dscale, N, V, nreal,
                Vl, vstart, tp);
        else
            mt__vocab_xent_finish_kernel<T, 1><<<N, MT__VXENT_THREADS, 0, MT__STREAM(cx)>>>(
                (float *)losses, (T *)dlogits, (const T *)logits, targets, (const float *)all, dscale, N, V, nreal,
                Vl, vstart, tp);
    });
    MT__LAUNCHED(cx, "mt__vocab_xent_finish_kernel");
    return MT_OK;
}

MT_API mt_status mt_bias_residual_gpu(const mt_ctx *cx, void *out, const void *inp, const void *bias,
                                      const void *resid, int N, int C) {
    if (N < 0 || C < 0) return mt_errorf(MT_ERR_SHAPE, "bias_residual: N = %d, C = %d", N, C);
    if ((size_t)N * C == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "bias_residual", {
        constexpr int PW = mt__pack_width<T>::value;
        int ok = C % PW == 0 && mt__al16(out) && mt__al16(inp) && mt__al16(bias) && mt__al16(resid);
        if (ok)
            mt__bias_residual_kernel<T, PW><<<mt__ew_grid(cx, (size_t)N * C / PW), 256, 0, MT__STREAM(cx)>>>(
                (T *)out, (const T *)inp, (const T *)bias, (const T *)resid, N, C);
        else
            mt__bias_residual_kernel<T, 1><<<mt__ew_grid(cx, (size_t)N * C), 256, 0, MT__STREAM(cx)>>>(
                (T *)out, (const T *)inp, (const T *)bias, (const T *)resid, N, C);
    });
    MT__LAUNCHED(cx, "mt__bias_residual_kernel");
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_VOCAB_PARALLEL_CUH */
