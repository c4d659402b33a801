/* kernels/elementwise.cuh — embedding, GELU, SwiGLU, residual add, RoPE.
 *
 *   MT_TRY(mt_gelu_fwd_gpu(cx, out, inp, n));     // via mt_gelu_fwd
 *
 * Defines  mt_embedding_fwd_gpu, mt_embedding_bwd_gpu, mt_gelu_fwd_gpu, mt_gelu_bwd_gpu,
 *          mt_swiglu_fwd_gpu, mt_swiglu_bwd_gpu, mt_residual_fwd_gpu, mt_rope_gpu
 *
 * Rules (as in mt/cpu_ops.inl): activation gradients are assigned, weight gradients (dwte, dwpe)
 * accumulate; elementwise outputs may alias their inputs (gelu_bwd's dinp may be dout).
 * Vectorisation: 16-byte packs (8 bf16 or 4 f32) through a grid-stride loop when every pointer is
 * 16-byte aligned, then the < 8-element tail one element per thread; unaligned pointers take the
 * scalar path of the same kernel.  Maths in fp32 (RoPE angles in fp64: pos * theta^(-2i/D) reaches
 * thousands of radians, where fp32 would lose the 1e-5 agreement with the CPU).
 * Embedding backward, deterministic without atomics: the token ids are sorted (stable radix sort
 * of (id, position) pairs, CUB from the CUDA toolkit, buffers in the scratch), then each run of
 * equal ids sums its dout rows in position order, split over segments of the sorted positions when
 * it is long (partial sums joined in segment order), and adds the sum to its dwte row once.  dwpe
 * sums over the batch in order, one thread per (t, pack).
 */
#ifndef MT_KERNELS_ELEMENTWISE_CUH
#define MT_KERNELS_ELEMENTWISE_CUH
#include "common.cuh"
#include <cub/device/device_radix_sort.cuh>

/* ------------------------------------------------------------------ maths */

#define MT__GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define MT__GELU_A 0.044715f

__device__ __forceinline__ float mt__gelu(float x) {
    float u = MT__GELU_K * (x + MT__GELU_A * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}
__device__ __forceinline__ float mt__gelu_grad(float x) {
    float u = MT__GELU_K * (x + MT__GELU_A * x * x * x), th = tanhf(u);
    float du = MT__GELU_K * (1.0f + 3.0f * MT__GELU_A * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

/* ------------------------------------------------------------------ kernels */

#define MT__GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)
#define MT__TAIL_INDEX(npk, VEC) ((npk) * (VEC) + (size_t)blockIdx.x * blockDim.x + threadIdx.x)

template <typename T, int VEC>
__global__ void mt__gelu_fwd_kernel(T *out, const T *inp, size_t n) {
    size_t npk = n / VEC;
    MT__GRID_STRIDE(i, npk) {
        mt__vec<T, VEC> x = mt__ldcs<T, VEC>(inp + i * VEC), o;
#pragma unroll
        for (int k = 0; k < VEC; k++) o.v[k] = mt__cvt<T>(mt__gelu(mt__f(x.v[k])));
        mt__st<T, VEC>(out + i * VEC, o);
    }
    size_t t = MT__TAIL_INDEX(npk, VEC);
    if (VEC > 1 && t < n) out[t] = mt__cvt<T>(mt__gelu(mt__f(inp[t])));
}

template <typename T, int VEC>
__global__ void mt__gelu_bwd_kernel(T *dinp, const T *inp, const T *dout, size_t n) {
    size_t npk = n / VEC;
    MT__GRID_STRIDE(i, npk) {
        mt__vec<T, VEC> x = mt__ldcs<T, VEC>(inp + i * VEC), d = mt__ldcs<T, VEC>(dout + i * VEC), o;
#pragma unroll
        for (int k = 0; k < VEC; k++) o.v[k] = mt__cvt<T>(mt__f(d.v[k]) * mt__gelu_grad(mt__f(x.v[k])));
        mt__st<T, VEC>(dinp + i * VEC, o);
    }
    size_t t = MT__TAIL_INDEX(npk, VEC);
    if (VEC > 1 && t < n) dinp[t] = mt__cvt<T>(mt__f(dout[t]) * mt__gelu_grad(mt__f(inp[t])));
}

template <typename T, int VEC>
__global__ void mt__residual_fwd_kernel(T *out, const T *a, const T *b, size_t n) {
    size_t npk = n / VEC;
    MT__GRID_STRIDE(i, npk) {
        mt__vec<T, VEC> x = mt__ldcs<T, VEC>(a + i * VEC), y = mt__ldcs<T, VEC>(b + i * VEC), o;
#pragma unroll
        for (int k = 0; k < VEC; k++) o.v[k] = mt__cvt<T>(mt__f(x.v[k]) + mt__f(y.v[k]));
        mt__st<T, VEC>(out + i * VEC, o);
    }
    size_t t = MT__TAIL_INDEX(npk, VEC);
    if (VEC > 1 && t < n) out[t] = mt__cvt<T>(mt__f(a[t]) + mt__f(b[t]));
}

/* inp (N, 2F) = [gate | up], out (N, F); VEC divides F */
template <typename T, int VEC>
__global__ void mt__swiglu_fwd_kernel(T *out, const T *inp, int N, int F) {
    size_t fp = F / VEC, npk = (size_t)N * fp;
    MT__GRID_STRIDE(i, npk) {
        size_t r = i / fp, c = (i % fp) * VEC;
        mt__vec<T, VEC> g = mt__ldcs<T, VEC>(inp + r * 2 * F + c), u = mt__ldcs<T, VEC>(inp + r * 2 * F + F + c), o;
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            float gv = mt__f(g.v[k]);
            o.v[k] = mt__cvt<T>(gv / (1.0f + expf(-gv)) * mt__f(u.v[k]));
        }
        mt__st<T, VEC>(out + r * F + c, o);
    }
}

template <typename T, int VEC>
__global__ void mt__swiglu_bwd_kernel(T *dinp, const T *inp, const T *dout, int N, int F) {
    size_t fp = F / VEC, npk = (size_t)N * fp;
    MT__GRID_STRIDE(i, npk) {
        size_t r = i / fp, c = (i % fp) * VEC;
        mt__vec<T, VEC> g = mt__ldcs<T, VEC>(inp + r * 2 * F + c), u = mt__ldcs<T, VEC>(inp + r * 2 * F + F + c);
        mt__vec<T, VEC> d = mt__ldcs<T, VEC>(dout + r * F + c), dg, du;
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            float gv = mt__f(g.v[k]), uv = mt__f(u.v[k]), dv = mt__f(d.v[k]);
            float sg = 1.0f / (1.0f + expf(-gv));
            dg.v[k] = mt__cvt<T>(dv * uv * sg * (1.0f + gv * (1.0f - sg)));
            du.v[k] = mt__cvt<T>(dv * gv * sg);
        }
        mt__st<T, VEC>(dinp + r * 2 * F + c, dg);
        mt__st<T, VEC>(dinp + r * 2 * F + F + c, du);
    }
}

/* One thread per (b, t, kv group, pair i < D/2): rotates the pair in the G query heads and the key
 * head, copies the pair of V when out != inp. */
template <typename T>
__global__ void mt__rope_kernel(T *out, const T *inp, int B, int Tn, int Hkv, int G, int D, int pos_offset,
                                double theta, int dir) {
    int half = D / 2;
    size_t total = (size_t)B * Tn * Hkv * half;
    MT__GRID_STRIDE(idx, total) {
        int i = (int)(idx % half);
        size_t r = idx / half;
        int g = (int)(r % Hkv);
        r /= Hkv;
        int t = (int)(r % Tn);
        size_t b = r / Tn;
        double ang = (double)(pos_offset + t) * pow(theta, -2.0 * i / D), s, c;
        sincos(ang, &s, &c);
        s *= dir;
        size_t base = (((size_t)b * Tn + t) * Hkv + g) * (size_t)(G + 2) * D;
        for (int j = 0; j <= G; j++) {
            size_t o = base + (size_t)j * D;
            double x0 = mt__f(inp[o + i]), x1 = mt__f(inp[o + i + half]);
            out[o + i] = mt__cvt<T>((float)(x0 * c - x1 * s));
            out[o + i + half] = mt__cvt<T>((float)(x0 * s + x1 * c));
        }
        if (out != inp) {
            size_t o = base + (size_t)(G + 1) * D;
            out[o + i] = inp[o + i];
            out[o + i + half] = inp[o + i + half];
        }
    }
}

/* out (B*T, C) = wte[tok - vstart] (0 when outside the local rows) + wpe[pos_offset + t] */
template <typename T, int VEC>
__global__ void mt__embedding_fwd_kernel(T *out, const int32_t *__restrict__ tokens, const T *__restrict__ wte,
                                         const T *__restrict__ wpe, int BT, int Tn, int C, int pos_offset, int vstart,
                                         int vcount) {
    size_t cp = C / VEC, npk = (size_t)BT * cp;
    MT__GRID_STRIDE(i, npk) {
        size_t r = i / cp, c = (i % cp) * VEC;
        int id = tokens[r] - vstart, t = (int)(r % Tn);
        float acc[VEC];
#pragma unroll
        for (int k = 0; k < VEC; k++) acc[k] = 0.0f;
        if (id >= 0 && id < vcount) {
            mt__vec<T, VEC> e = mt__ld<T, VEC>(wte + (size_t)id * C + c);
#pragma unroll
            for (int k = 0; k < VEC; k++) acc[k] += mt__f(e.v[k]);
        }
        if (wpe) {
            mt__vec<T, VEC> p = mt__ld<T, VEC>(wpe + (size_t)(pos_offset + t) * C + c);
#pragma unroll
            for (int k = 0; k < VEC; k++) acc[k] += mt__f(p.v[k]);
        }
        mt__vec<T, VEC> o;
#pragma unroll
        for (int k = 0; k < VEC; k++) o.v[k] = mt__cvt<T>(acc[k]);
        mt__st<T, VEC>(out + r * C + c, o);
    }
}

/* keys[i] = local id of token i (vcount when not local), vals[i] = i */
__global__ void mt__embedding_keys_kernel(uint32_t *keys, int32_t *vals, const int32_t *tokens, int BT, int vstart,
                                          int vcount) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= BT) return;
    int id = tokens[i] - vstart;
    keys[i] = (id >= 0 && id < vcount) ? (uint32_t)id : (uint32_t)vcount;
    vals[i] = i;
}

/* The wte gradient in two launches over segments of S sorted positions (S from 16 up, so that the
 * partial sums fit in the scratch).  Pass 1, one block per segment: each run of equal ids inside the
 * segment sums its dout rows in position order (4 rows in flight); a run that lies wholly in the
 * segment adds its sum to dwte at once, a run that crosses the segment's start or end leaves its
 * part as fp32 in part[2s + 0] (the part at the segment's start) or part[2s + 1] (a run that starts
 * later and crosses the end).  Pass 2, one block per segment where a crossing run starts: its part,
 * plus the head parts of the segments it covers, in segment order, added to dwte.  So a token that
 * fills a whole batch (a synthetic task, a padding id) is summed by many blocks, not one, and each
 * dwte row is written by one block: deterministic without atomics. */
template <typename T, int VEC>
__global__ void mt__embedding_bwd_seg_kernel(T *dwte, float *__restrict__ part, const T *__restrict__ dout,
                                             const uint32_t *__restrict__ keys, const int32_t *__restrict__ pos,
                                             int BT, int C, uint32_t vcount, int S) {
    extern __shared__ uint32_t mt__emb_sm[]; /* the segment's keys, then its positions */
    const int s = blockIdx.x, s0 = s * S, n = min(S, BT - s0), cp = C / VEC;
    uint32_t *sk = mt__emb_sm;
    int32_t *sp = (int32_t *)(mt__emb_sm + S);
    for (int i = threadIdx.x; i < n; i += blockDim.x) { sk[i] = keys[s0 + i]; sp[i] = pos[s0 + i]; }
    __syncthreads();
    const bool from_left = s0 > 0 && keys[s0 - 1] == sk[0];
    const bool to_right = s0 + n < BT && keys[s0 + n] == sk[n - 1];
    for (int p = threadIdx.x; p < cp; p += blockDim.x) {
        for (int i = 0; i < n;) {
            const uint32_t key = sk[i];
            if (key >= vcount) break; /* sorted: the rest are not local ids */
            int e = i + 1;
            while (e < n && sk[e] == key) e++;
            float acc[VEC];
#pragma unroll
            for (int k = 0; k < VEC; k++) acc[k] = 0.0f;
            int j = i;
            for (; j + 4 <= e; j += 4) {
                mt__vec<T, VEC> d[4];
#pragma unroll
                for (int u = 0; u < 4; u++) d[u] = mt__ldcs<T, VEC>(dout + (size_t)sp[j + u] * C + (size_t)p * VEC);
#pragma unroll
                for (int u = 0; u < 4; u++)
#pragma unroll
                    for (int k = 0; k < VEC; k++) acc[k] += mt__f(d[u].v[k]);
            }
            for (; j < e; j++) {
                mt__vec<T, VEC> d = mt__ldcs<T, VEC>(dout + (size_t)sp[j] * C + (size_t)p * VEC);
#pragma unroll
                for (int k = 0; k < VEC; k++) acc[k] += mt__f(d.v[k]);
            }
            const bool head = i == 0 && from_left, tail = e == n && to_right;
            if (!head && !tail) {
                T *dst = dwte + (size_t)key * C + (size_t)p * VEC;
                mt__vec<T, VEC> w = mt__ld<T, VEC>(dst);
#pragma unroll
                for (int k = 0; k < VEC; k++) w.v[k] = mt__cvt<T>(mt__f(w.v[k]) + acc[k]);
                mt__st<T, VEC>(dst, w);
            } else {
                float *dst = part + ((size_t)2 * s + (i == 0 ? 0 : 1)) * C + (size_t)p * VEC;
#pragma unroll
                for (int k = 0; k < VEC; k++) dst[k] = acc[k];
            }
            i = e;
        }
    }
}

template <typename T, int VEC>
__global__ void mt__embedding_bwd_join_kernel(T *dwte, const float *__restrict__ part,
                                              const uint32_t *__restrict__ keys, int BT, int C, uint32_t vcount,
                                              int S) {
    const int s = blockIdx.x, s0 = s * S, s1 = s0 + S, cp = C / VEC;
    if (s1 >= BT) return;
    const uint32_t key = keys[s1 - 1];
    if (key >= vcount || keys[s1] != key) return;              /* no run crosses this segment's end */
    if (s0 > 0 && keys[s0] == key && keys[s0 - 1] == key) return; /* it started in an earlier segment */
    const int slot = keys[s0] == key ? 0 : 1;
    for (int p = threadIdx.x; p < cp; p += blockDim.x) {
        float acc[VEC];
        const float *src = part + ((size_t)2 * s + slot) * C + (size_t)p * VEC;
#pragma unroll
        for (int k = 0; k < VEC; k++) acc[k] = src[k];
        for (int t = s + 1;; t++) { /* the head part of every segment the run reaches, in order */
            src = part + (size_t)2 * t * C + (size_t)p * VEC;
#pragma unroll
            for (int k = 0; k < VEC; k++) acc[k] += src[k];
            const int t1 = (t + 1) * S;
            if (t1 >= BT || keys[t1] != key) break;
        }
        T *dst = dwte + (size_t)key * C + (size_t)p * VEC;
        mt__vec<T, VEC> w = mt__ld<T, VEC>(dst);
#pragma unroll
        for (int k = 0; k < VEC; k++) w.v[k] = mt__cvt<T>(mt__f(w.v[k]) + acc[k]);
        mt__st<T, VEC>(dst, w);
    }
}

/* dwpe[pos_offset + t] += sum over b of dout[b, t], b in order */
template <typename T, int VEC>
__global__ void mt__embedding_bwd_wpe_kernel(T *dwpe, const T *__restrict__ dout, int B, int Tn, int C,
                                             int pos_offset) {
    size_t cp = C / VEC, npk = (size_t)Tn * cp;
    MT__GRID_STRIDE(i, npk) {
        size_t t = i / cp, c = (i % cp) * VEC;
        float acc[VEC];
#pragma unroll
        for (int k = 0; k < VEC; k++) acc[k] = 0.0f;
        T *dst = dwpe + (size_t)(pos_offset + t) * C + c;
        mt__vec<T, VEC> w = mt__ld<T, VEC>(dst);
        int b = 0;
        for (; b + 4 <= B; b += 4) { /* 4 rows in flight, added in order */
            mt__vec<T, VEC> d[4];
#pragma unroll
            for (int u = 0; u < 4; u++) d[u] = mt__ld<T, VEC>(dout + ((size_t)(b + u) * Tn + t) * C + c);
#pragma unroll
            for (int u = 0; u < 4; u++)
#pragma unroll
                for (int k = 0; k < VEC; k++) acc[k] += mt__f(d[u].v[k]);
        }
        for (; b < B; b++) {
            mt__vec<T, VEC> d = mt__ld<T, VEC>(dout + ((size_t)b * Tn + t) * C + c);
#pragma unroll
            for (int k = 0; k < VEC; k++) acc[k] += mt__f(d.v[k]);
        }
#pragma unroll
        for (int k = 0; k < VEC; k++) w.v[k] = mt__cvt<T>(mt__f(w.v[k]) + acc[k]);
        mt__st<T, VEC>(dst, w);
    }
}

/* ------------------------------------------------------------------ launchers */

/* Launch KERNEL<T, PW> when `ok` (16-byte aligned, sizes divisible), else KERNEL<T, 1>. */
#define MT__EW_LAUNCH(ok, n_items, KERNEL, ...)                                                         \
    do {                                                                                                \
        constexpr int PW = mt__pack_width<T>::value;                                                    \
        if (ok)                                                                                         \
            KERNEL<T, PW><<<mt__ew_grid(cx, (n_items) / PW), 256, 0, MT__STREAM(cx)>>>(__VA_ARGS__);     \
        else                                                                                            \
            KERNEL<T, 1><<<mt__ew_grid(cx, (n_items)), 256, 0, MT__STREAM(cx)>>>(__VA_ARGS__);           \
    } while (0)

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_gelu_fwd_gpu(const mt_ctx *cx, void *out, const void *inp, size_t n) {
    if (n == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "gelu_fwd", {
        MT__EW_LAUNCH(mt__al16(out) && mt__al16(inp), n, mt__gelu_fwd_kernel, (T *)out, (const T *)inp, n);
    });
    MT__LAUNCHED(cx, "mt__gelu_fwd_kernel");
    return MT_OK;
}

MT_API mt_status mt_gelu_bwd_gpu(const mt_ctx *cx, void *dinp, const void *inp, const void *dout, size_t n) {
    if (n == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "gelu_bwd", {
        MT__EW_LAUNCH(mt__al16(dinp) && mt__al16(inp) && mt__al16(dout), n, mt__gelu_bwd_kernel, (T *)dinp,
                      (const T *)inp, (const T *)dout, n);
    });
    MT__LAUNCHED(cx, "mt__gelu_bwd_kernel");
    return MT_OK;
}

MT_API mt_status mt_residual_fwd_gpu(const mt_ctx *cx, void *out, const void *a, const void *b, size_t n) {
    if (n == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "residual_fwd", {
        MT__EW_LAUNCH(mt__al16(out) && mt__al16(a) && mt__al16(b), n, mt__residual_fwd_kernel, (T *)out,
                      (const T *)a, (const T *)b, n);
    });
    MT__LAUNCHED(cx, "mt__residual_fwd_kernel");
    return MT_OK;
}

MT_API mt_status mt_swiglu_fwd_gpu(const mt_ctx *cx, void *out, const void *inp, int N, int F) {
    if (N < 0 || F < 0) return mt_errorf(MT_ERR_SHAPE, "swiglu_fwd: N = %d, F = %d", N, F);
    if ((size_t)N * F == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "swiglu_fwd", {
        int ok = F % mt__pack_width<T>::value == 0 && mt__al16(out) && mt__al16(inp);
        MT__EW_LAUNCH(ok, (size_t)N * F, mt__swiglu_fwd_kernel, (T *)out, (const T *)inp, N, F);
    });
    MT__LAUNCHED(cx, "mt__swiglu_fwd_kernel");
    return MT_OK;
}

MT_API mt_status mt_swiglu_bwd_gpu(const mt_ctx *cx, void *dinp, const void *inp, const void *dout, int N, int F) {
    if (N < 0 || F < 0) return mt_errorf(MT_ERR_SHAPE, "swiglu_bwd: N = %d, F = %d", N, F);
    if ((size_t)N * F == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "swiglu_bwd", {
        int ok = F % mt__pack_width<T>::value == 0 && mt__al16(dinp) && mt__al16(inp) && mt__al16(dout);
        MT__EW_LAUNCH(ok, (size_t)N * F, mt__swiglu_bwd_kernel, (T *)dinp, (const T *)inp, (const T *)dout, N, F);
    });
    MT__LAUNCHED(cx, "mt__swiglu_bwd_kernel");
    return MT_OK;
}

MT_API mt_status mt_rope_gpu(const mt_ctx *cx, void *out, const void *inp, int B, int T_, int Hkv, int G, int D,
                             int pos_offset, float theta, int dir) {
    if (B < 0 || T_ < 0 || Hkv < 0 || G < 1 || D < 2 || D % 2)
        return mt_errorf(MT_ERR_SHAPE, "rope: B = %d, T = %d, Hkv = %d, G = %d, D = %d (D must be even)", B, T_, Hkv,
                         G, D);
    size_t total = (size_t)B * T_ * Hkv * (D / 2);
    if (total == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "rope", {
        mt__rope_kernel<T><<<mt__ew_grid(cx, total), 256, 0, MT__STREAM(cx)>>>((T *)out, (const T *)inp, B, T_, Hkv,
                                                                               G, D, pos_offset, (double)theta,
                                                                               dir < 0 ? -1 : 1);
    });
    MT__LAUNCHED(cx, "mt__rope_kernel");
    return MT_OK;
}

MT_API mt_status mt_embedding_fwd_gpu(const mt_ctx *cx, void *out, const int32_t *tokens, const void *wte,
                                      const void *wpe, int B, int T_, int C, int pos_offset, int vstart, int vcount) {
    if (B < 0 || T_ < 0 || C <= 0) return mt_errorf(MT_ERR_SHAPE, "embedding_fwd: B = %d, T = %d, C = %d", B, T_, C);
    if ((size_t)B * T_ == 0) return MT_OK;
    int BT = B * T_;
    MT__GPU_DISPATCH(cx, "embedding_fwd", {
        int ok = C % mt__pack_width<T>::value == 0 && mt__al16(out) && mt__al16(wte) && mt__al16(wpe);
        MT__EW_LAUNCH(ok, (size_t)BT * C, mt__embedding_fwd_kernel, (T *)out, tokens, (const T *)wte, (const T *)wpe,
                      BT, T_, C, pos_offset, vstart, vcount);
    });
    MT__LAUNCHED(cx, "mt__embedding_fwd_kernel");
    return MT_OK;
}

MT_API mt_status mt_embedding_bwd_gpu(const mt_ctx *cx, void *dwte, void *dwpe, const void *dout,
                                      const int32_t *tokens, int B, int T_, int C, int pos_offset, int vstart,
                                      int vcount) {
    const char *op = "embedding_bwd";
    if (B < 0 || T_ < 0 || C <= 0 || vcount < 0)
        return mt_errorf(MT_ERR_SHAPE, "%s: B = %d, T = %d, C = %d, vcount = %d", op, B, T_, C, vcount);
    int BT = B * T_;
    if (BT == 0) return MT_OK;
    MT_TRY(mt__gpu_check(cx, op));
    if (dwte && vcount > 0) {
        /* scratch: keys_in, vals_in, keys_out, vals_out (BT each), then CUB's temporary storage */
        size_t arr = ((size_t)BT * 4 + 255) / 256 * 256;
        char *base = (char *)cx->gpu->scratch;
        uint32_t *keys_in = (uint32_t *)base, *keys_out = (uint32_t *)(base + 2 * arr);
        int32_t *vals_in = (int32_t *)(base + arr), *vals_out = (int32_t *)(base + 3 * arr);
        void *temp = base + 4 * arr;
        int end_bit = 1;
        while (end_bit < 32 && ((uint64_t)1 << end_bit) <= (uint64_t)vcount) end_bit++;
        size_t temp_nbytes = 0;
        MT_CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, temp_nbytes, keys_in, keys_out, vals_in, vals_out, BT, 0,
                                                    end_bit, MT__STREAM(cx)));
        /* segments of S sorted positions: the smallest S from 16 whose partial sums fit after the sort */
        size_t used = 4 * arr + (temp_nbytes + 255) / 256 * 256;
        int S = 16;
        while (S < BT && used + (size_t)2 * mt__cdiv(BT, S) * C * sizeof(float) > cx->gpu->scratch_nbytes) S *= 2;
        if (used + (size_t)2 * mt__cdiv(BT, S) * C * sizeof(float) > cx->gpu->scratch_nbytes)
            return mt_errorf(MT_ERR_UNSUPPORTED, "%s: %d tokens of width %d need %zu bytes of scratch, have %zu", op,
                             BT, C, used + (size_t)2 * mt__cdiv(BT, S) * C * sizeof(float), cx->gpu->scratch_nbytes);
        if ((size_t)S * 8 > 48 * 1024)
            return mt_errorf(MT_ERR_UNSUPPORTED, "%s: %d tokens of width %d: segments of %d positions; more scratch "
                             "(MT_GPU_SCRATCH_NBYTES, now %zu bytes) would make them shorter", op, BT, C, S,
                             cx->gpu->scratch_nbytes);
        float *part = (float *)(base + used);
        mt__embedding_keys_kernel<<<mt__cdiv(BT, 256), 256, 0, MT__STREAM(cx)>>>(keys_in, vals_in, tokens, BT, vstart,
                                                                                 vcount);
        MT__LAUNCHED(cx, "mt__embedding_keys_kernel");
        MT_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_nbytes, keys_in, keys_out, vals_in, vals_out, BT, 0,
                                                    end_bit, MT__STREAM(cx)));
        const int nseg = mt__cdiv(BT, S);
        const size_t smem = (size_t)S * 8;
        MT__GPU_DISPATCH(cx, op, {
            constexpr int PW = mt__pack_width<T>::value;
            int vec = C % PW == 0 && mt__al16(dwte) && mt__al16(dout) ? PW : 1;
            int cp = C / vec, threads = cp < 256 ? (cp + 31) / 32 * 32 : 256;
            if (vec == PW) {
                mt__embedding_bwd_seg_kernel<T, PW><<<nseg, threads, smem, MT__STREAM(cx)>>>(
                    (T *)dwte, part, (const T *)dout, keys_out, vals_out, BT, C, (uint32_t)vcount, S);
                mt__embedding_bwd_join_kernel<T, PW><<<nseg, threads, 0, MT__STREAM(cx)>>>(
                    (T *)dwte, part, keys_out, BT, C, (uint32_t)vcount, S);
            } else {
                mt__embedding_bwd_seg_kernel<T, 1><<<nseg, threads, smem, MT__STREAM(cx)>>>(
                    (T *)dwte, part, (const T *)dout, keys_out, vals_out, BT, C, (uint32_t)vcount, S);
                mt__embedding_bwd_join_kernel<T, 1><<<nseg, threads, 0, MT__STREAM(cx)>>>(
                    (T *)dwte, part, keys_out, BT, C, (uint32_t)vcount, S);
            }
        });
        MT__LAUNCHED(cx, "mt__embedding_bwd_seg_kernel / mt__embedding_bwd_join_kernel");
    }
    if (dwpe) {
        MT__GPU_DISPATCH(cx, op, {
            int ok = C % mt__pack_width<T>::value == 0 && mt__al16(dwpe) && mt__al16(dout);
            MT__EW_LAUNCH(ok, (size_t)T_ * C, mt__embedding_bwd_wpe_kernel, (T *)dwpe, (const T *)dout, B, T_, C,
                          pos_offset);
        });
        MT__LAUNCHED(cx, "mt__embedding_bwd_wpe_kernel");
    }
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_ELEMENTWISE_CUH */
