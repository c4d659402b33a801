/* kernels/xent.cuh — softmax cross-entropy, forward and backward fused, over rows of logits.
 *
 *   MT_TRY(mt_xent(cx, losses, logits, logits, targets, 1.0f / (B * T), B * T, V, Vp));  // in place
 *
 * Defines  mt_xent_gpu
 *
 * Rules (as in mt/cpu_ops.inl): logits (N, Vp), the first V columns real, the rest padding (gradient
 * 0); losses (N, float) = logsumexp - logit[target]; dlogits = (softmax - onehot) * dscale, may alias
 * logits, NULL = forward only; a target < 0 (or >= V) is ignored: loss 0, gradient row 0.
 *
 * One block per row.  Pass one reads the row once from memory and keeps a running (max, sum of
 * exp) per thread, merged by a fixed-order block reduction: the log-sum-exp without fp32 logits
 * ever being stored.  Pass two re-reads the row (from L2, just touched; the last use, so with an
 * evict-first hint) and writes dlogits in place with streaming stores.  DRAM traffic: one read and
 * one write of the row.  512 threads and about two blocks per SM keep the rows that sit between
 * their two reads (~26 MB for bf16 at V = 50304 on 132 SMs) inside L2; each thread has 4 packs in
 * flight.  16-byte packs when Vp is a multiple of 16/sizeof(T) and pointers are
 * aligned; scalar otherwise.
 */
#ifndef MT_KERNELS_XENT_CUH
#define MT_KERNELS_XENT_CUH
#include "common.cuh"

#define MT__XENT_THREADS 512 /* x 2 blocks per SM: the rows between their two reads fit in L2 */

template <typename T, int VEC>
__global__ void __launch_bounds__(MT__XENT_THREADS, 2)
    mt__xent_kernel(float *losses, T *dlogits, const T *logits, const int32_t *__restrict__ targets, float dscale,
                    int N, int V, int Vp) {
    __shared__ float shm[32];
    int row = blockIdx.x;
    if (row >= N) return;
    const T *x = logits + (size_t)row * Vp;
    int tgt = targets[row];
    if (tgt >= V) tgt = -1;
    float xt = tgt >= 0 ? mt__f(x[tgt]) : 0.0f; /* read before any thread writes (barriers below) */

    /* pass 1: running max and sum of exp over the V real columns; U packs in flight per thread */
    constexpr int U = 4;
    float m = -INFINITY, s = 0.0f;
    int npk = (V + VEC - 1) / VEC;
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
                f[k] = p * VEC + k < V ? mt__f(xv[u].v[k]) : -INFINITY;
                pm = fmaxf(pm, f[k]);
            }
            if (pm > m) {
                s *= expf(m - pm); /* 0 while m is still -inf */
                m = pm;
            }
#pragma unroll
            for (int k = 0; k < VEC; k++)
                if (p * VEC + k < V) s += expf(f[k] - m);
        }
    }
    float M = mt__block_max(m, shm);
    float sv[1] = {m == -INFINITY ? 0.0f : s * expf(m - M)};
    mt__block_sum<1>(sv, shm);
    float lse = M + logf(sv[0]);
    if (threadIdx.x == 0) losses[row] = tgt >= 0 ? lse - xt : 0.0f;
    if (!dlogits) return;

    /* pass 2: dlogits over all Vp columns */
    T *d = dlogits + (size_t)row * Vp;
    int npk2 = Vp / VEC;
    for (int p0 = threadIdx.x; p0 < npk2; p0 += U * blockDim.x) {
        mt__vec<T, VEC> xv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p < npk2) xv[u] = mt__ldcs<T, VEC>(x + (size_t)p * VEC);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p >= npk2) break;
            mt__vec<T, VEC> o;
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                int c = p * VEC + k;
                float g = c < V ? expf(mt__f(xv[u].v[k]) - lse) : 0.0f;
                if (c == tgt) g -= 1.0f;
                o.v[k] = mt__cvt<T>(tgt >= 0 ? g * dscale : 0.0f);
            }
            mt__stcs<T, VEC>(d + (size_t)p * VEC, o);
        }
    }
}

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_xent_gpu(const mt_ctx *cx, void *losses, void *dlogits, const void *logits,
                             const int32_t *targets, float dscale, int N, int V, int Vp) {
    if (N < 0 || V <= 0 || Vp < V) return mt_errorf(MT_ERR_SHAPE, "xent: N = %d, V = %d, Vp = %d (need 0 < V <= Vp)", N, V, Vp);
    if (!losses) return mt_errorf(MT_ERR_ARG, "xent: losses is required");
    if (N == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "xent", {
        constexpr int PW = mt__pack_width<T>::value;
        if (Vp % PW == 0 && mt__al16(logits) && mt__al16(dlogits))
            mt__xent_kernel<T, PW><<<N, MT__XENT_THREADS, 0, MT__STREAM(cx)>>>(
                (float *)losses, (T *)dlogits, (const T *)logits, targets, dscale, N, V, Vp);
        else
            mt__xent_kernel<T, 1><<<N, MT__XENT_THREADS, 0, MT__STREAM(cx)>>>(
                (float *)losses, (T *)dlogits, (const T *)logits, targets, dscale, N, V, Vp);
    });
    MT__LAUNCHED(cx, "mt__xent_kernel");
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_XENT_CUH */
