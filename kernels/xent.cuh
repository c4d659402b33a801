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
 * One block of 512 threads per row.  Pass one reads the row once from memory (4 packs in flight
 * per thread), keeps a running (max, sum of exp) per thread, merged by a fixed-order block
 * reduction: the log-sum-exp without fp32 logits ever being stored.  With dlogits, pass one also
 * keeps the row in shared memory (bf16 V = 50304: 98 KiB, two blocks per SM fit in 227 KB) and
 * pass two computes dlogits from there and writes them in place with streaming stores: DRAM
 * traffic is exactly one read and one write of the row.  A row larger than shared memory falls
 * back to re-reading it (from L2 when it is still there).  16-byte packs when Vp is a multiple of
 * 16/sizeof(T) and pointers are aligned; scalar otherwise.
 */
#ifndef MT_KERNELS_XENT_CUH
#define MT_KERNELS_XENT_CUH
#include "common.cuh"

#define MT__XENT_THREADS 512 /* x 2 blocks per SM */
#define MT__LOG2E 1.4426950408889634f
#define MT__LN2 0.6931471805599453f

/* SMEM = true: pass one also stores the row (its first ceil(V/VEC) packs) in dynamic shared memory
 * and pass two reads it from there, so DRAM sees exactly one read and one write of the row.
 * SMEM = false: pass two re-reads the row from memory (L2 when lucky): for rows larger than shared
 * memory, and for the forward alone.  Exponentials are exp2f of x*log2(e) - max, one FFMA + MUFU. */
template <typename T, int VEC, bool SMEM>
__global__ void __launch_bounds__(MT__XENT_THREADS, 2)
    mt__xent_kernel(float *losses, T *dlogits, const T *logits, const int32_t *__restrict__ targets, float dscale,
                    int N, int V, int Vp) {
    extern __shared__ __align__(16) unsigned char mt__xent_row[];
    __shared__ float shm[32];
    mt__vec<T, VEC> *srow = reinterpret_cast<mt__vec<T, VEC> *>(mt__xent_row);
    int row = blockIdx.x;
    if (row >= N) return;
    const T *x = logits + (size_t)row * Vp;
    int tgt = targets[row];
    if (tgt >= V) tgt = -1;
    float xt = tgt >= 0 ? mt__f(x[tgt]) : 0.0f; /* read before any thread writes (barriers below) */

    /* pass 1: running max (scaled by log2 e) and sum of exp2 over the V real columns; U packs in
     * flight per thread */
    constexpr int U = 4;
    float m = -INFINITY, s = 0.0f;
    int npk = (V + VEC - 1) / VEC;
    for (int p0 = threadIdx.x; p0 < npk; p0 += U * blockDim.x) {
        mt__vec<T, VEC> xv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p < npk) xv[u] = SMEM ? mt__ldcs<T, VEC>(x + (size_t)p * VEC) : mt__ld<T, VEC>(x + (size_t)p * VEC);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p >= npk) break;
            if (SMEM) srow[p] = xv[u];
            float f[VEC], pm = -INFINITY;
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                f[k] = p * VEC + k < V ? mt__f(xv[u].v[k]) : -INFINITY;
                pm = fmaxf(pm, f[k]);
            }
            pm *= MT__LOG2E;
            if (pm > m) {
                s *= exp2f(m - pm); /* 0 while m is still -inf */
                m = pm;
            }
#pragma unroll
            for (int k = 0; k < VEC; k++)
                if (p * VEC + k < V) s += exp2f(fmaf(f[k], MT__LOG2E, -m));
        }
    }
    float M = mt__block_max(m, shm); /* ends with a barrier: srow is complete */
    float sv[1] = {m == -INFINITY ? 0.0f : s * exp2f(m - M)};
    mt__block_sum<1>(sv, shm);
    float lse2 = M + log2f(sv[0]); /* log-sum-exp in base 2 units */
    if (threadIdx.x == 0) losses[row] = tgt >= 0 ? lse2 * MT__LN2 - xt : 0.0f;
    if (!dlogits) return;

    /* pass 2: dlogits over all Vp columns */
    T *d = dlogits + (size_t)row * Vp;
    int npk2 = Vp / VEC;
    float sc = tgt >= 0 ? dscale : 0.0f;
    for (int p0 = threadIdx.x; p0 < npk2; p0 += U * blockDim.x) {
        mt__vec<T, VEC> xv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (SMEM) {
                if (p < npk) xv[u] = srow[p];
            } else if (p < npk2) {
                xv[u] = mt__ldcs<T, VEC>(x + (size_t)p * VEC);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = p0 + u * blockDim.x;
            if (p >= npk2) break;
            mt__vec<T, VEC> o;
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                int c = p * VEC + k;
                float g = c < V ? exp2f(fmaf(mt__f(xv[u].v[k]), MT__LOG2E, -lse2)) : 0.0f;
                if (c == tgt) g -= 1.0f;
                o.v[k] = mt__cvt<T>(g * sc);
            }
            mt__stcs<T, VEC>(d + (size_t)p * VEC, o);
        }
    }
}

/* Launch one instance; the shared-memory variant needs its dynamic limit raised first. */
template <typename T, int VEC>
static inline mt_status mt__xent_launch(const mt_ctx *cx, float *losses, T *dlogits, const T *logits,
                                        const int32_t *targets, float dscale, int N, int V, int Vp) {
    size_t row_nbytes = (size_t)((V + VEC - 1) / VEC) * VEC * sizeof(T);
    size_t limit = cx->gpu->smem_optin_nbytes > 1024 ? cx->gpu->smem_optin_nbytes - 1024 : 0; /* static shm */
    if (dlogits && row_nbytes <= limit && cx->gpu->xent_smem) {
        MT_CUDA_TRY(cudaFuncSetAttribute(mt__xent_kernel<T, VEC, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)row_nbytes));
        MT_CUDA_TRY(cudaFuncSetAttribute(mt__xent_kernel<T, VEC, true>,
                                         cudaFuncAttributePreferredSharedMemoryCarveout,
                                         (int)cudaSharedmemCarveoutMaxShared));
        mt__xent_kernel<T, VEC, true><<<N, MT__XENT_THREADS, row_nbytes, MT__STREAM(cx)>>>(
            losses, dlogits, logits, targets, dscale, N, V, Vp);
    } else {
        mt__xent_kernel<T, VEC, false><<<N, MT__XENT_THREADS, 0, MT__STREAM(cx)>>>(losses, dlogits, logits, targets,
                                                                                 dscale, N, V, Vp);
    }
    MT__LAUNCHED(cx, "mt__xent_kernel");
    return MT_OK;
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
            return mt__xent_launch<T, PW>(cx, (float *)losses, (T *)dlogits, (const T *)logits, targets, dscale, N, V,
                                          Vp);
        return mt__xent_launch<T, 1>(cx, (float *)losses, (T *)dlogits, (const T *)logits, targets, dscale, N, V, Vp);
    });
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_XENT_CUH */
