/* kernels/attention_ref.cuh — a simple, correct attention: forward and backward for any head size
 * D <= 256, causal or not, grouped-query (G query heads per K/V head).  The reference the fast
 * flash-attention kernels are checked against on the GPU, and the fallback for shapes they skip.
 *
 *   MT_TRY(mt_attention_fwd(cx, out, lse, qkv, B, T, Hkv, G, D, 1));   // via mt/ops.h
 *
 * Defines  mt_attention_fwd_gpu, mt_attention_bwd_gpu
 *
 * Layout (as in mt/cpu_ops.inl): qkv (B, T, Hkv, G+2, D) — per K/V group its G query heads, then K,
 * then V; out (B, T, H, D) with head h = g*G + j; lse (B, H, T) float = log sum_u exp(q.k_u * scale),
 * scale = 1/sqrt(D).  The backward assigns every element of dqkv.
 *
 * One warp per row of work, lane l holding elements l, l+32, ... of each D-vector (NC = ceil(D/32)
 * registers): the forward walks the keys of one query with an online softmax; the backward runs one
 * warp per query (dQ) and one warp per key (dK, dV, summing over the G heads of its group and the
 * queries that see it), recomputing the probabilities from lse.  Every output element has one
 * writer, so results are deterministic.  fp32 accumulation; O(T^2) work with no tiling — correct,
 * not fast.
 */
#ifndef MT_KERNELS_ATTENTION_REF_CUH
#define MT_KERNELS_ATTENTION_REF_CUH
#include "common.cuh"

#define MT__ATTN_WARPS 4 /* warps per block */

template <typename T, int NC>
__global__ void __launch_bounds__(MT__ATTN_WARPS * 32)
    mt__attention_fwd_kernel(T *__restrict__ out, float *__restrict__ lse, const T *__restrict__ qkv, int B, int Tn,
                             int Hkv, int G, int D, int causal, float scale) {
    int H = Hkv * G, lane = threadIdx.x & 31;
    size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (w >= (size_t)B * H * Tn) return; /* whole warps leave together */
    int t = (int)(w % Tn), h = (int)((w / Tn) % H);
    size_t b = w / ((size_t)Tn * H);
    int g = h / G, j = h % G;
    size_t row = (size_t)Hkv * (G + 2) * D;
    const T *q = qkv + (b * Tn + t) * row + ((size_t)g * (G + 2) + j) * D;
    const T *kb = qkv + b * Tn * row + ((size_t)g * (G + 2) + G) * D, *vb = kb + D;
    float qv[NC], acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int i = lane + 32 * c;
        qv[c] = i < D ? mt__f(q[i]) : 0.0f;
        acc[c] = 0.0f;
    }
    float mx = -INFINITY, l = 0.0f;
    int tend = causal ? t + 1 : Tn;
    for (int u = 0; u < tend; u++) {
        const T *k = kb + (size_t)u * row, *v = vb + (size_t)u * row;
        float d = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int i = lane + 32 * c;
            if (i < D) d += qv[c] * mt__f(k[i]);
        }
        float s = mt__warp_sum(d) * scale;
        float nm = fmaxf(mx, s), corr = expf(mx - nm), p = expf(s - nm);
        l = l * corr + p;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int i = lane + 32 * c;
            acc[c] = acc[c] * corr + (i < D ? p * mt__f(v[i]) : 0.0f);
        }
        mx = nm;
    }
    T *o = out + ((b * Tn + t) * H + h) * D;
    float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int i = lane + 32 * c;
        if (i < D) o[i] = mt__cvt<T>(acc[c] * inv);
    }
    if (lane == 0) lse[(b * H + h) * Tn + t] = mx + logf(l);
}

/* dQ: one warp per (b, h, t) query */
template <typename T, int NC>
__global__ void __launch_bounds__(MT__ATTN_WARPS * 32)
    mt__attention_bwd_dq_kernel(T *__restrict__ dqkv, const T *__restrict__ dout, const T *__restrict__ out,
                                const float *__restrict__ lse, const T *__restrict__ qkv, int B, int Tn, int Hkv,
                                int G, int D, int causal, float scale) {
    int H = Hkv * G, lane = threadIdx.x & 31;
    size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (w >= (size_t)B * H * Tn) return;
    int t = (int)(w % Tn), h = (int)((w / Tn) % H);
    size_t b = w / ((size_t)Tn * H);
    int g = h / G, j = h % G;
    size_t row = (size_t)Hkv * (G + 2) * D;
    size_t qoff = (b * Tn + t) * row + ((size_t)g * (G + 2) + j) * D, ooff = ((b * Tn + t) * H + h) * D;
    const T *kb = qkv + b * Tn * row + ((size_t)g * (G + 2) + G) * D, *vb = kb + D;
    float qv[NC], dov[NC], dq[NC], delta = 0.0f;
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int i = lane + 32 * c;
        qv[c] = i < D ? mt__f(qkv[qoff + i]) : 0.0f;
        dov[c] = i < D ? mt__f(dout[ooff + i]) : 0.0f;
        delta += i < D ? dov[c] * mt__f(out[ooff + i]) : 0.0f;
        dq[c] = 0.0f;
    }
    delta = mt__warp_sum(delta);
    float L = lse[(b * H + h) * Tn + t];
    int tend = causal ? t + 1 : Tn;
    for (int u = 0; u < tend; u++) {
        const T *k = kb + (size_t)u * row, *v = vb + (size_t)u * row;
        float kv[NC], s = 0.0f, dp = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int i = lane + 32 * c;
            kv[c] = i < D ? mt__f(k[i]) : 0.0f;
            s += qv[c] * kv[c];
            dp += i < D ? dov[c] * mt__f(v[i]) : 0.0f;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            s += __shfl_xor_sync(0xffffffffu, s, o);
            dp += __shfl_xor_sync(0xffffffffu, dp, o);
        }
        float p = expf(s * scale - L), ds = p * (dp - delta) * scale;
#pragma unroll
        for (int c = 0; c < NC; c++) dq[c] += ds * kv[c];
    }
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int i = lane + 32 * c;
        if (i < D) dqkv[qoff + i] = mt__cvt<T>(dq[c]);
    }
}

/* dK, dV: one warp per (b, g, u) key, over the G heads of the group and the queries that see u */
template <typename T, int NC>
__global__ void __launch_bounds__(MT__ATTN_WARPS * 32)
    mt__attention_bwd_dkv_kernel(T *__restrict__ dqkv, const T *__restrict__ dout, const T *__restrict__ out,
                                 const float *__restrict__ lse, const T *__restrict__ qkv, int B, int Tn, int Hkv,
                                 int G, int D, int causal, float scale) {
    int H = Hkv * G, lane = threadIdx.x & 31;
    size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (w >= (size_t)B * Hkv * Tn) return;
    int u = (int)(w % Tn), g = (int)((w / Tn) % Hkv);
    size_t b = w / ((size_t)Tn * Hkv);
    size_t row = (size_t)Hkv * (G + 2) * D;
    size_t koff = (b * Tn + u) * row + ((size_t)g * (G + 2) + G) * D, voff = koff + D;
    float kv[NC], vv[NC], dk[NC], dv[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int i = lane + 32 * c;
        kv[c] = i < D ? mt__f(qkv[koff + i]) : 0.0f;
        vv[c] = i < D ? mt__f(qkv[voff + i]) : 0.0f;
        dk[c] = dv[c] = 0.0f;
    }
    for (int j = 0; j < G; j++) {
        int h = g * G + j;
        for (int t = causal ? u : 0; t < Tn; t++) {
            const T *q = qkv + (b * Tn + t) * row + ((size_t)g * (G + 2) + j) * D;
            const T *dO = dout + ((b * Tn + t) * H + h) * D, *O = out + ((b * Tn + t) * H + h) * D;
            float qv[NC], dov[NC], s = 0.0f, dp = 0.0f, delta = 0.0f;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int i = lane + 32 * c;
                qv[c] = i < D ? mt__f(q[i]) : 0.0f;
                dov[c] = i < D ? mt__f(dO[i]) : 0.0f;
                s += qv[c] * kv[c];
                dp += dov[c] * vv[c];
                delta += i < D ? dov[c] * mt__f(O[i]) : 0.0f;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                s += __shfl_xor_sync(0xffffffffu, s, o);
                dp += __shfl_xor_sync(0xffffffffu, dp, o);
                delta += __shfl_xor_sync(0xffffffffu, delta, o);
            }
            float p = expf(s * scale - lse[(b * H + h) * Tn + t]), ds = p * (dp - delta) * scale;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                dv[c] += p * dov[c];
                dk[c] += ds * qv[c];
            }
        }
    }
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int i = lane + 32 * c;
        if (i < D) {
            dqkv[koff + i] = mt__cvt<T>(dk[c]);
            dqkv[voff + i] = mt__cvt<T>(dv[c]);
        }
    }
}

/* Launch KERNEL<T, NC> with NC = ceil(D / 32) in 1..8 */
#define MT__ATTN_LAUNCH(KERNEL, nwarps, ...)                                                        \
    do {                                                                                            \
        unsigned mt__grid = mt__cdiv((size_t)(nwarps), MT__ATTN_WARPS);                             \
        switch ((D + 31) / 32) {                                                                    \
            case 1: KERNEL<T, 1><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
            case 2: KERNEL<T, 2><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
            case 3: KERNEL<T, 3><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
            case 4: KERNEL<T, 4><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
            case 5: KERNEL<T, 5><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
            case 6: KERNEL<T, 6><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
            case 7: KERNEL<T, 7><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
            default: KERNEL<T, 8><<<mt__grid, MT__ATTN_WARPS * 32, 0, MT__STREAM(cx)>>>(__VA_ARGS__); break; \
        }                                                                                           \
    } while (0)

MT_API mt_status mt__attention_check(const char *op, int B, int T_, int Hkv, int G, int D) {
    if (B < 0 || T_ < 0 || Hkv < 0 || G < 1 || D < 1 || D > 256)
        return mt_errorf(MT_ERR_SHAPE, "%s: B = %d, T = %d, Hkv = %d, G = %d, D = %d (need G >= 1, 1 <= D <= 256)", op,
                         B, T_, Hkv, G, D);
    return MT_OK;
}

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_attention_fwd_gpu(const mt_ctx *cx, void *out, void *lse, const void *qkv, int B, int T_, int Hkv,
                                      int G, int D, int causal) {
    MT_TRY(mt__attention_check("attention_fwd", B, T_, Hkv, G, D));
    size_t nw = (size_t)B * Hkv * G * T_;
    if (nw == 0) return MT_OK;
    float scale = (float)(1.0 / sqrt((double)D));
    MT__GPU_DISPATCH(cx, "attention_fwd", {
        MT__ATTN_LAUNCH(mt__attention_fwd_kernel, nw, (T *)out, (float *)lse, (const T *)qkv, B, T_, Hkv, G, D,
                        causal, scale);
    });
    MT__LAUNCHED(cx, "mt__attention_fwd_kernel");
    return MT_OK;
}

MT_API mt_status mt_attention_bwd_gpu(const mt_ctx *cx, void *dqkv, const void *dout, const void *out, const void *lse,
                                      const void *qkv, int B, int T_, int Hkv, int G, int D, int causal) {
    MT_TRY(mt__attention_check("attention_bwd", B, T_, Hkv, G, D));
    size_t nq = (size_t)B * Hkv * G * T_, nk = (size_t)B * Hkv * T_;
    if (nq == 0) return MT_OK;
    float scale = (float)(1.0 / sqrt((double)D));
    MT__GPU_DISPATCH(cx, "attention_bwd", {
        MT__ATTN_LAUNCH(mt__attention_bwd_dq_kernel, nq, (T *)dqkv, (const T *)dout, (const T *)out,
                        (const float *)lse, (const T *)qkv, B, T_, Hkv, G, D, causal, scale);
    });
    MT__LAUNCHED(cx, "mt__attention_bwd_dq_kernel");
    MT__GPU_DISPATCH(cx, "attention_bwd", {
        MT__ATTN_LAUNCH(mt__attention_bwd_dkv_kernel, nk, (T *)dqkv, (const T *)dout, (const T *)out,
                        (const float *)lse, (const T *)qkv, B, T_, Hkv, G, D, causal, scale);
    });
    MT__LAUNCHED(cx, "mt__attention_bwd_dkv_kernel");
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_ATTENTION_REF_CUH */
