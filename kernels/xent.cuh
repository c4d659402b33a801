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
 * Both kernels read a row in two passes.  Pass one keeps a running (max, sum of exp) per thread,
 * merged by a fixed-order block reduction: the log-sum-exp without fp32 logits ever being stored.
 * Pass two computes dlogits over all Vp columns and writes them (in place or not) with streaming
 * stores.  Exponentials are exp2 of x*log2(e) - max: one FFMA + MUFU.  DRAM traffic is one read of
 * the row (plus one write with dlogits) whenever the row fits in shared memory.
 *
 * Variants (cx->gpu->xent_variant; 0 = MT__XENT_DEFAULT, now 1; the bench times each).  Measured on an
 * H200 (N = 8192, V = 50304 bf16, fwd+bwd): variant 1 0.426 ms (91% of copy), 2 0.436 ms, 3 0.659 ms.
 *
 *
 *   1, 2  Persistent and pipelined, sm_90 bulk copies: min(N, SMs x resident blocks) blocks of 1024
 *         (variant 1) or 512 threads (variant 2); block b takes rows b, b + grid, b + 2 grid, ...
 *         Dynamic shared memory holds two row buffers (bf16 V = 50304: 2 x 98 KiB, one block per
 *         SM).  The bulk copy engine streams row i + 1 into one buffer while the threads reduce
 *         row i from the other and write its dlogits, so the SM always has loads in flight and
 *         writes overlap them:
 *
 *             threads:    [row 0: reduce, write d0] [row 1: reduce, write d1] [row 2: ...
 *             buffer 0:   load 0 | row 0 ...........| load 2 ................| row 2 ...
 *             buffer 1:   load 1 ...................| row 1 .................| load 3 ...
 *
 *         A row is loaded as 32 KiB chunks, one mbarrier per chunk (thread 0 arms it with the
 *         chunk's byte count, then issues cp.async.bulk), so pass one starts on chunk 0 while the
 *         rest of the row lands.  Only the real columns are loaded, ceil(V / pack) 16-byte packs;
 *         pass two writes zeros over the padding.  Thread 0 refills a buffer with row i + 2 right
 *         after a block barrier that follows every read of row i, so the only rows in flight are
 *         other rows than the one being written: in place is safe.  The forward alone runs the
 *         same pipeline without pass two.  Needs a GPU of compute capability 9.0 or later and a
 *         build with sm_90+ device code, Vp * sizeof(T) a multiple of 16, 16-byte aligned pointers
 *         and two buffers within the opt-in shared memory (on a 227 KB part: bf16 V up to 57856,
 *         f32 up to 28928); anything else runs variant 3.
 *   3     One block of 512 threads per row, two blocks per SM.  Pass one reads the row from memory
 *         (4 packs in flight per thread) and, with dlogits, also keeps it in shared memory (bf16
 *         V = 50304: 98 KiB, two blocks per SM fit in 227 KB) for pass two.  A row larger than
 *         shared memory, or cx->gpu->xent_smem = 0, re-reads it for pass two (from L2 when it is
 *         still there).  16-byte packs when Vp is a multiple of 16/sizeof(T) and pointers are
 *         aligned; scalar otherwise.  A block alternates between a read phase and a write phase,
 *         barriers between, so the SM's memory pipe idles part of the time.
 */
#ifndef MT_KERNELS_XENT_CUH
#define MT_KERNELS_XENT_CUH
#include "common.cuh"

#define MT__XENT_THREADS 512      /* variant 3: x 2 blocks per SM */
#define MT__XENT_CHUNK 32768      /* variants 1, 2: bytes per bulk copy, one mbarrier each */
#define MT__XENT_MAXCHUNKS 4      /* two row buffers fit in 227 KB only below 4 chunks each */
#define MT__XENT_VARIANTS 3       /* variants 1 .. this (the bench times each) */
#define MT__XENT_DEFAULT 1        /* the variant that xent_variant = 0 runs */
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

/* ------------------------------------------------------------------ variants 1, 2: bulk copies */

/* The sm_90 pieces, as inline PTX (no CUTLASS): mbarriers in shared memory, the bulk copy engine
 * (global -> shared, completion counted in bytes on an mbarrier) and MUFU.EX2 without the denormal
 * fix-up of exp2f (a result below 2^-126 flushes to 0, far below what a softmax term can add). */
__device__ __forceinline__ unsigned mt__xent_smem_addr(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ float mt__xent_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ void mt__xent_mbar_init(uint64_t *bar, unsigned count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(mt__xent_smem_addr(bar)), "r"(count) : "memory");
#endif
}
/* Make the initialised mbarriers visible to the bulk copy engine (the async proxy). */
__device__ __forceinline__ void mt__xent_mbar_fence_init(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
/* Block until the phase of `bar` with this parity has completed (all its bytes have landed). */
__device__ __forceinline__ void mt__xent_mbar_wait(uint64_t *bar, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned a = mt__xent_smem_addr(bar), done;
    do {
        asm volatile("{\n\t.reg .pred p;\n\t"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                     "selp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
    } while (!done);
#endif
}
/* Copy `nbytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared memory;
 * arrival on `bar` expects exactly these bytes.  The lines are marked evict-first in L2: each row
 * is read once. */
__device__ __forceinline__ void mt__xent_bulk_load(void *dst, const void *src, unsigned nbytes, uint64_t *bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned b = mt__xent_smem_addr(bar);
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(nbytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
                 " [%0], [%1], %2, [%3], %4;" ::"r"(mt__xent_smem_addr(dst)),
                 "l"(src), "r"(nbytes), "r"(b), "l"(policy)
                 : "memory");
#endif
}
/* Start loading the first `nbytes` of a row into `buf`, one chunk per mbarrier of `bars` (thread 0). */
__device__ __forceinline__ void mt__xent_load_row(unsigned char *buf, const void *src, unsigned nbytes, uint64_t *bars) {
    for (unsigned off = 0, c = 0; off < nbytes; off += MT__XENT_CHUNK, c++) {
        unsigned n = nbytes - off < MT__XENT_CHUNK ? nbytes - off : MT__XENT_CHUNK;
        mt__xent_bulk_load(buf + off, (const unsigned char *)src + off, n, &bars[c]);
    }
}

/* 16-byte pack of g[k] * sc; bf16 converts two at a time (one F2FP per pair). */
template <typename T, int VEC>
__device__ __forceinline__ mt__vec<T, VEC> mt__xent_pack(const float (&g)[VEC], float sc) {
    mt__vec<T, VEC> o;
    if constexpr (sizeof(T) == 2) {
        __nv_bfloat162 *o2 = reinterpret_cast<__nv_bfloat162 *>(o.v);
#pragma unroll
        for (int k = 0; k < VEC / 2; k++) o2[k] = __floats2bfloat162_rn(g[2 * k] * sc, g[2 * k + 1] * sc);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; k++) o.v[k] = mt__cvt<T>(g[k] * sc);
    }
    return o;
}

/* Persistent, pipelined kernel (variants 1 and 2; see the header comment).  Shared memory: two row
 * buffers of buf_nbytes each (dynamic), an mbarrier per (buffer, chunk), and the per-warp partials
 * of the two block reductions in separate arrays, so that one row's reduction can never overwrite
 * what a slower thread is still reading of the previous one.  Per row: 2 block barriers, 3 with
 * dlogits.  Pack p of the row belongs to thread p % NT in both passes: a fixed order, so the result
 * does not depend on the grid. */
template <typename T, int NT>
__global__ void __launch_bounds__(NT, 1)
    mt__xent_bulk_kernel(float *losses, T *dlogits, const T *logits, const int32_t *__restrict__ targets,
                         float dscale, int N, int V, int Vp, int buf_nbytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int VEC = 16 / (int)sizeof(T);   /* elements per 16-byte pack */
    constexpr int CHP = MT__XENT_CHUNK / 16;   /* packs per chunk */
    constexpr int U = CHP / NT;                /* packs per thread per chunk, loads in flight */
    constexpr int NW = NT / 32;
    static_assert(U * NT == CHP, "a chunk must be a whole number of packs per thread");
    typedef mt__vec<T, VEC> P;
    extern __shared__ __align__(128) unsigned char mt__xent_bufs[];
    __shared__ __align__(8) uint64_t bars[2][MT__XENT_MAXCHUNKS];
    __shared__ float red_m[NW], red_s[NW];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, G = gridDim.x;
    const int npk = (V + VEC - 1) / VEC;                /* packs loaded: the real columns */
    const int tail = V - (npk - 1) * VEC;               /* real elements in the last of them, 1..VEC */
    const unsigned nbytes = (unsigned)npk * 16u;
    const int nch = (int)((nbytes + MT__XENT_CHUNK - 1) / MT__XENT_CHUNK);
    const size_t row_nbytes = (size_t)Vp * sizeof(T);

    if (tid == 0) {
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < nch; c++) mt__xent_mbar_init(&bars[b][c], 1); /* thread 0's arrive */
        mt__xent_mbar_fence_init();
        for (int b = 0; b < 2 && (int)blockIdx.x + b * G < N; b++)
            mt__xent_load_row(mt__xent_bufs + (size_t)b * buf_nbytes,
                              (const unsigned char *)logits + (size_t)(blockIdx.x + b * G) * row_nbytes, nbytes,
                              bars[b]);
    }
    __syncthreads(); /* the mbarriers are initialised before anyone waits on them */

    int tnext = targets[blockIdx.x]; /* the grid has at most N blocks */
    for (int it = 0, row = blockIdx.x; row < N; it++, row += G) {
        const int b = it & 1;
        const unsigned parity = (unsigned)(it >> 1) & 1u; /* this buffer's use count, mod 2 */
        const P *srow = reinterpret_cast<const P *>(mt__xent_bufs + (size_t)b * buf_nbytes);
        int tgt = tnext;
        if (row + G < N) tnext = targets[row + G]; /* the next row's target, a whole row early */
        if (tgt >= V) tgt = -1;

        /* pass 1, chunk by chunk as they land: per group of U packs one max, one rescale */
        float m = -INFINITY, s = 0.0f;
        for (int c = 0; c < nch; c++) {
            mt__xent_mbar_wait(&bars[b][c], parity);
            const int p0 = c * CHP + tid;
            if (p0 >= npk) continue;
            float f[U][VEC], gm = -INFINITY;
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int p = p0 + u * NT;
                if (p < npk - 1) {
                    P x = srow[p];
#pragma unroll
                    for (int k = 0; k < VEC; k++) f[u][k] = mt__f(x.v[k]);
                } else {
                    P x;
                    if (p == npk - 1) x = srow[p];
#pragma unroll
                    for (int k = 0; k < VEC; k++) f[u][k] = p == npk - 1 && k < tail ? mt__f(x.v[k]) : -INFINITY;
                }
#pragma unroll
                for (int k = 0; k < VEC; k++) gm = fmaxf(gm, f[u][k]);
            }
            gm *= MT__LOG2E; /* finite: pack p0 has at least one real column */
            if (gm > m) {
                s *= mt__xent_ex2(m - gm); /* 0 while m is still -inf */
                m = gm;
            }
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int k = 0; k < VEC; k++) s += mt__xent_ex2(fmaf(f[u][k], MT__LOG2E, -m));
        }
        /* thread 0 has waited on every chunk; read the target logit before the barriers below, after
         * which the buffer may be refilled */
        float xt = 0.0f;
        if (tid == 0 && tgt >= 0) xt = mt__f(reinterpret_cast<const T *>(srow)[tgt]);

        /* block reduction, the max first (no exponentials), then the sums rescaled to it (one exp2
         * per thread).  Each a butterfly within warps, the per-warp partials to shared memory, and a
         * butterfly over them in every warp (lane w reads warp w's): one shared load per thread,
         * and every thread ends with the same bits (a + b == b + a), in the same order each run */
        float wm = mt__warp_max(m);
        if (lane == 0) red_m[warp] = wm;
        __syncthreads();
        const float M = mt__warp_max(lane < NW ? red_m[lane] : -INFINITY);
        float sv = m == -INFINITY ? 0.0f : s * mt__xent_ex2(m - M);
        sv = mt__warp_sum(sv);
        if (lane == 0) red_s[warp] = sv;
        __syncthreads();
        const float S = mt__warp_sum(lane < NW ? red_s[lane] : 0.0f);
        const float lse2 = M + log2f(S); /* log-sum-exp in base 2 units */
        if (tid == 0) losses[row] = tgt >= 0 ? lse2 * MT__LN2 - xt : 0.0f;

        /* pass 2: dlogits over all Vp columns from the buffer; zeros past the loaded packs */
        if (dlogits) {
            T *d = dlogits + (size_t)row * Vp;
            const int npk2 = Vp / VEC;
            const float sc = tgt >= 0 ? dscale : 0.0f;
            const int tpk = tgt >= 0 ? tgt / VEC : -1, tk = tgt - tpk * VEC;
            for (int p0 = tid; p0 < npk2; p0 += U * NT) {
                P xv[U];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int p = p0 + u * NT;
                    if (p < npk) xv[u] = srow[p];
                }
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int p = p0 + u * NT;
                    if (p >= npk2) break;
                    float g[VEC];
                    if (p < npk - 1) {
#pragma unroll
                        for (int k = 0; k < VEC; k++) g[k] = mt__xent_ex2(fmaf(mt__f(xv[u].v[k]), MT__LOG2E, -lse2));
                    } else {
#pragma unroll
                        for (int k = 0; k < VEC; k++)
                            g[k] = p == npk - 1 && k < tail ? mt__xent_ex2(fmaf(mt__f(xv[u].v[k]), MT__LOG2E, -lse2))
                                                            : 0.0f;
                    }
                    if (p == tpk) {
#pragma unroll
                        for (int k = 0; k < VEC; k++)
                            if (k == tk) g[k] -= 1.0f;
                    }
                    mt__stcs<T, VEC>(d + (size_t)p * VEC, mt__xent_pack<T, VEC>(g, sc));
                }
            }
            __syncthreads(); /* every thread is done reading buffer b */
        }
        /* refill buffer b with row + 2 grid.  Every read of it (pass 1 before the reduction's
         * barriers, pass 2 before the one above) is ordered before this by a block barrier. */
        if (tid == 0 && row + 2 * G < N)
            mt__xent_load_row(mt__xent_bufs + (size_t)b * buf_nbytes,
                              (const unsigned char *)logits + (size_t)(row + 2 * G) * row_nbytes, nbytes, bars[b]);
    }
#endif
}

/* 1 when this build holds sm_90 (or later) device code, where the bulk kernel has its body. */
MT_API int mt__xent_bulk_compiled(void) {
#ifdef __CUDA_ARCH_LIST__
    const int archs[] = {__CUDA_ARCH_LIST__};
    int hi = 0;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) hi = archs[i] > hi ? archs[i] : hi;
    return hi >= 900;
#else
    return 1;
#endif
}

/* Bytes of one row buffer of the bulk kernel (the loaded packs, rounded up to 128), or 0 when
 * variants 1 and 2 cannot run this call and it goes to variant 3. */
template <typename T>
static inline size_t mt__xent_bulk_buf_nbytes(const mt_ctx *cx, const void *dlogits, const void *logits, int V,
                                              int Vp) {
    constexpr int VEC = 16 / (int)sizeof(T);
    size_t load = (size_t)((V + VEC - 1) / VEC) * 16, buf = (load + 127) & ~(size_t)127;
    size_t limit = cx->gpu->smem_optin_nbytes > 1024 ? cx->gpu->smem_optin_nbytes - 1024 : 0; /* static shm */
    if (cx->gpu->cc_major < 9 || !mt__xent_bulk_compiled()) return 0;
    if (Vp % VEC != 0 || !mt__al16(logits) || !mt__al16(dlogits)) return 0;
    if (load > (size_t)MT__XENT_MAXCHUNKS * MT__XENT_CHUNK || 2 * buf > limit) return 0;
    return buf;
}

template <typename T, int NT>
static inline mt_status mt__xent_bulk_launch(const mt_ctx *cx, float *losses, T *dlogits, const T *logits,
                                             const int32_t *targets, float dscale, int N, int V, int Vp,
                                             size_t buf_nbytes) {
    size_t smem = 2 * buf_nbytes;
    MT_CUDA_TRY(cudaFuncSetAttribute(mt__xent_bulk_kernel<T, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem));
    MT_CUDA_TRY(cudaFuncSetAttribute(mt__xent_bulk_kernel<T, NT>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     (int)cudaSharedmemCarveoutMaxShared));
    /* persistent: as many blocks as fit at once (one per SM for the d48 row), never more than rows */
    int per_sm = mt__occupancy_smem(cx, (const void *)mt__xent_bulk_kernel<T, NT>, NT, smem);
    long long grid = (long long)per_sm * cx->gpu->sm_count;
    if (grid > N) grid = N;
    mt__xent_bulk_kernel<T, NT><<<(unsigned)grid, NT, smem, MT__STREAM(cx)>>>(losses, dlogits, logits, targets,
                                                                             dscale, N, V, Vp, (int)buf_nbytes);
    MT__LAUNCHED(cx, "mt__xent_bulk_kernel");
    return MT_OK;
}

/* ------------------------------------------------------------------ launchers */

/* Variant 3: launch one instance; the shared-memory variant needs its dynamic limit raised first. */
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

/* A few words on variant v (1 .. MT__XENT_VARIANTS), for tables. */
MT_API const char *mt__xent_variant_name(int v) {
    switch (v) {
    case 1: return "bulk pipeline, 1024 thr";
    case 2: return "bulk pipeline, 512 thr";
    case 3: return "block per row";
    default: return "?";
    }
}

MT_API mt_status mt_xent_gpu(const mt_ctx *cx, void *losses, void *dlogits, const void *logits,
                             const int32_t *targets, float dscale, int N, int V, int Vp) {
    if (N < 0 || V <= 0 || Vp < V) return mt_errorf(MT_ERR_SHAPE, "xent: N = %d, V = %d, Vp = %d (need 0 < V <= Vp)", N, V, Vp);
    if (!losses) return mt_errorf(MT_ERR_ARG, "xent: losses is required");
    MT_TRY(mt__gpu_check(cx, "xent"));
    int variant = cx->gpu->xent_variant ? cx->gpu->xent_variant : MT__XENT_DEFAULT;
    if (variant < 1 || variant > MT__XENT_VARIANTS)
        return mt_errorf(MT_ERR_ARG, "xent: xent_variant = %d (0 = default, 1 or 2 = persistent with bulk copies, "
                         "3 = one block per row)", cx->gpu->xent_variant);
    if (N == 0) return MT_OK;
    MT__GPU_DISPATCH(cx, "xent", {
        constexpr int PW = mt__pack_width<T>::value;
        size_t buf = variant <= 2 ? mt__xent_bulk_buf_nbytes<T>(cx, dlogits, logits, V, Vp) : 0;
        if (buf && variant == 1)
            return mt__xent_bulk_launch<T, 1024>(cx, (float *)losses, (T *)dlogits, (const T *)logits, targets,
                                                 dscale, N, V, Vp, buf);
        if (buf && variant == 2)
            return mt__xent_bulk_launch<T, 512>(cx, (float *)losses, (T *)dlogits, (const T *)logits, targets, dscale,
                                                N, V, Vp, buf);
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
