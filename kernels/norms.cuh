/* kernels/norms.cuh — LayerNorm and RMSNorm, forward and backward.
 *
 *   MT_TRY(mt_layernorm_fwd_gpu(cx, out, mean, rstd, inp, w, b, N, C));   // via mt_layernorm_fwd
 *
 * Defines  mt_layernorm_fwd_gpu, mt_layernorm_bwd_gpu, mt_rmsnorm_fwd_gpu, mt_rmsnorm_bwd_gpu
 *
 * Rules (as in mt/cpu_ops.inl): eps 1e-5; mean and rstd are float (either may be NULL in the
 * forward); dinp is assigned, plus dresid when given (dresid may alias dinp); dw, db accumulate
 * (+=) and may be NULL.
 *
 * Layout of the work.  Forward: one warp per row (8 rows per 256-thread block) when the row is at
 * most 256 packs (C <= 2048 bf16 / 1024 f32): each lane holds NP raw 16-byte packs, statistics by
 * warp shuffles, no block barrier; wider rows: one thread block per row, the row held in registers
 * (each thread owns NP packs at columns (p*blockDim + tid)*VEC), statistics by a fixed-order block
 * reduction.  cx->gpu->norm_fwd_warp picks the warp-per-row kernel: 6 (default) one-pass (shifted)
 * statistics in blocks of 16 warps, w and b converted once per block into float shared memory;
 * 3 the same in blocks of 8 warps reading w, b from global memory, 3 resident blocks per SM; 2 that
 * at 2 per SM; 1 two passes (mean, then variance); 0 forces one block per row.  LN, 8192 x 1600
 * bf16 on an H200 in a CUDA graph: 18 (6) / 22 (3) / 23 (2) / 22 (1) / 28 (0) us.  Options 4 and 5
 * are persistent (the grid is what fits at once; each warp walks several rows): 4 keeps the next
 * row in a second register set, 5 keeps a ring of rows per warp in shared memory filled by cp.async
 * (16-byte packs; else as 4); measured slower than 3 (kernels/KERNEL_NOTES.md).
 * Vector packs need C % (16/sizeof(T)) == 0 and 16-byte aligned pointers; otherwise the same
 * kernels run with scalar accesses (any C).  Backward (norm_bwd_variant, default 0; the others are
 * kept for comparison):
 *   0  pipelined, for 16-byte packs and rows up to 512 packs (C <= 4096 bf16 / 2048 f32): groups of
 *      threads (several per block, each with its own named barrier) walk rows; a thread owns the
 *      same columns in every row, so dw/db stay in its registers and w is converted once; inp, dout
 *      and dresid are copied by cp.async into a ring of four rows in shared memory, three ahead;
 *      each input is converted once, both row sums reduced behind one barrier per row.  Other
 *      shapes: as 1.
 *   1  one warp per row for rows up to 256 packs (4 warps per block, as many blocks as fit): no
 *      block barrier in the loop, each warp adds its rows' dw/db into its own shared-memory slice.
 *      Wider rows: as 2 with at most 4 blocks per SM.
 *   2-4  one block per row (1, 2 or 4 packs per thread), as many resident blocks as fit, each walking
 *      rows blockIdx.x + k*gridDim.x with the next row prefetched before the current row's
 *      reduction, dw/db in registers.
 *   5  as 0 with two packs per thread from 129 packs on (the first rule), else as 1.
 * Every variant writes one partial row of dw/db per block; a second kernel adds the partial rows
 * in block order to dw/db.
 * Deterministic (the order depends on N, C and the device only), no atomics.
 */
#ifndef MT_KERNELS_NORMS_CUH
#define MT_KERNELS_NORMS_CUH
#include "common.cuh"

#define MT__NORM_EPS 1e-5f
#define MT__NORM_BWD_MAX_BLOCKS 1024
#define MT__NORM_BWD_RING 4 /* row slots per group in the pipelined backward: NS - 1 rows ahead */
#ifndef MT__NORM_FWD_SMEM_WARPS
#define MT__NORM_FWD_SMEM_WARPS 16 /* rows (warps) per block of the forward with w, b in shared memory (norm_fwd_warp 6): 8 or 16 */
#endif
#ifndef MT__NORM_FWD_RING
#define MT__NORM_FWD_RING 3 /* rows in flight per warp in the ring forward (norm_fwd_warp 5) */
#endif

/* ------------------------------------------------------------------ kernels */

template <typename T, int VEC, int NP>
__global__ void mt__layernorm_fwd_kernel(T *__restrict__ out, float *__restrict__ mean, float *__restrict__ rstd,
                                         const T *__restrict__ inp, const T *__restrict__ w,
                                         const T *__restrict__ b, int N, int C) {
    __shared__ float shm[32];
    int row = blockIdx.x;
    if (row >= N) return;
    const T *x = inp + (size_t)row * C;
    float xv[NP][VEC];
    float s[1] = {0.0f};
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
        if (c < C) {
            mt__vec<T, VEC> v = mt__ldcs<T, VEC>(x + c);
#pragma unroll
            for (int k = 0; k < VEC; k++) { xv[p][k] = mt__f(v.v[k]); s[0] += xv[p][k]; }
        } else {
#pragma unroll
            for (int k = 0; k < VEC; k++) xv[p][k] = 0.0f;
        }
    }
    mt__block_sum<1>(s, shm);
    float m = s[0] / (float)C;
    float q[1] = {0.0f};
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
        if (c < C) {
#pragma unroll
            for (int k = 0; k < VEC; k++) { float d = xv[p][k] - m; q[0] += d * d; }
        }
    }
    mt__block_sum<1>(q, shm);
    float r = 1.0f / sqrtf(q[0] / (float)C + MT__NORM_EPS);
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
        if (c < C) {
            mt__vec<T, VEC> wv = mt__ld<T, VEC>(w + c), o;
            mt__vec<T, VEC> bv;
            if (b) bv = mt__ld<T, VEC>(b + c);
#pragma unroll
            for (int k = 0; k < VEC; k++)
                o.v[k] = mt__cvt<T>((xv[p][k] - m) * r * mt__f(wv.v[k]) + (b ? mt__f(bv.v[k]) : 0.0f));
            mt__st<T, VEC>(out + (size_t)row * C + c, o);
        }
    }
    if (threadIdx.x == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

template <typename T, int VEC, int NP>
__global__ void mt__rmsnorm_fwd_kernel(T *__restrict__ out, float *__restrict__ rstd, const T *__restrict__ inp,
                                       const T *__restrict__ w, int N, int C) {
    __shared__ float shm[32];
    int row = blockIdx.x;
    if (row >= N) return;
    const T *x = inp + (size_t)row * C;
    float xv[NP][VEC];
    float s[1] = {0.0f};
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
        if (c < C) {
            mt__vec<T, VEC> v = mt__ldcs<T, VEC>(x + c);
#pragma unroll
            for (int k = 0; k < VEC; k++) { xv[p][k] = mt__f(v.v[k]); s[0] += xv[p][k] * xv[p][k]; }
        } else {
#pragma unroll
            for (int k = 0; k < VEC; k++) xv[p][k] = 0.0f;
        }
    }
    mt__block_sum<1>(s, shm);
    float r = 1.0f / sqrtf(s[0] / (float)C + MT__NORM_EPS);
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
        if (c < C) {
            mt__vec<T, VEC> wv = mt__ld<T, VEC>(w + c), o;
#pragma unroll
            for (int k = 0; k < VEC; k++) o.v[k] = mt__cvt<T>(xv[p][k] * r * mt__f(wv.v[k]));
            mt__st<T, VEC>(out + (size_t)row * C + c, o);
        }
    }
    if (threadIdx.x == 0 && rstd) rstd[row] = r;
}

/* Forward of both norms, one warp per row (RMS = 0: LayerNorm, 1: RMSNorm): the row sits in
 * registers as NP raw packs per lane at columns (p*32 + lane)*VEC, all loads issued before the first
 * use, statistics by warp shuffles (no block barrier, so warps of a block never wait on each other).
 * For rows up to 32*8 packs (C <= 2048 bf16, 1024 f32). */
template <typename T, int VEC, int NP, int RMS>
__global__ void __launch_bounds__(256) mt__norm_fwd_warp_kernel(T *__restrict__ out, float *__restrict__ mean,
                                                                float *__restrict__ rstd, const T *__restrict__ inp,
                                                                const T *__restrict__ w, const T *__restrict__ b,
                                                                int N, int C) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const T *x = inp + (size_t)row * C;
    mt__vec<T, VEC> xv[NP];
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * 32 + lane) * VEC;
        if (c < C) xv[p] = mt__ldcs<T, VEC>(x + c);
    }
    float m = 0.0f;
    if (!RMS) {
        float s = 0.0f;
#pragma unroll
        for (int p = 0; p < NP; p++)
            if ((p * 32 + lane) * VEC < C) {
#pragma unroll
                for (int k = 0; k < VEC; k++) s += mt__f(xv[p].v[k]);
            }
        m = mt__warp_sum(s) / (float)C;
    }
    float q = 0.0f;
#pragma unroll
    for (int p = 0; p < NP; p++)
        if ((p * 32 + lane) * VEC < C) {
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                float d = mt__f(xv[p].v[k]) - m;
                q += d * d;
            }
        }
    float r = 1.0f / sqrtf(mt__warp_sum(q) / (float)C + MT__NORM_EPS);
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * 32 + lane) * VEC;
        if (c < C) {
            mt__vec<T, VEC> wv = mt__ld<T, VEC>(w + c), bv, o;
            if (!RMS && b) bv = mt__ld<T, VEC>(b + c);
#pragma unroll
            for (int k = 0; k < VEC; k++)
                o.v[k] = mt__cvt<T>((mt__f(xv[p].v[k]) - m) * r * mt__f(wv.v[k]) +
                                    ((!RMS && b) ? mt__f(bv.v[k]) : 0.0f));
            mt__st<T, VEC>(out + (size_t)row * C + c, o);
        }
    }
    if (lane == 0) {
        if (!RMS && mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

/* Forward of both norms, one warp per row, statistics in one pass (cx->gpu->norm_fwd_warp 2 or 3,
 * options; same layout as mt__norm_fwd_warp_kernel): the sums of d = x - K and of d*d, with K the
 * row's first element (shifted data: no cancellation when the mean is large against the spread),
 * go through the same five shuffle steps, so a row waits for one reduction instead of two; the
 * output is x*r - m*r (one FFMA) times w plus b (one FFMA).  MINB resident blocks of 256 threads
 * per SM: 2 (as the two-pass kernel) or 3 (at most 80 registers; a few spills at 8 packs). */
template <typename T, int VEC, int NP, int RMS, int MINB>
__global__ void __launch_bounds__(256, MINB) mt__norm_fwd_warp1p_kernel(T *__restrict__ out, float *__restrict__ mean,
                                                                     float *__restrict__ rstd,
                                                                     const T *__restrict__ inp,
                                                                     const T *__restrict__ w,
                                                                     const T *__restrict__ b, int N, int C) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const T *x = inp + (size_t)row * C;
    mt__vec<T, VEC> xv[NP];
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * 32 + lane) * VEC;
        if (c < C) xv[p] = mt__ldcs<T, VEC>(x + c);
    }
    const float K = RMS ? 0.0f : __shfl_sync(0xffffffffu, mt__f(xv[0].v[0]), 0); /* lane 0 always has column 0 */
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int p = 0; p < NP; p++)
        if ((p * 32 + lane) * VEC < C) {
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                float d = mt__f(xv[p].v[k]) - K;
                if (!RMS) s1 += d;
                s2 = fmaf(d, d, s2);
            }
        }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        if (!RMS) s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    }
    const float dm = s1 / (float)C, m = K + dm;
    const float var = RMS ? s2 / (float)C : fmaxf(s2 / (float)C - dm * dm, 0.0f);
    const float r = 1.0f / sqrtf(var + MT__NORM_EPS), mr = -m * r;
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * 32 + lane) * VEC;
        if (c < C) {
            mt__vec<T, VEC> wv = mt__ld<T, VEC>(w + c), bv, o;
            if (!RMS && b) bv = mt__ld<T, VEC>(b + c);
#pragma unroll
            for (int k = 0; k < VEC; k++)
                o.v[k] = mt__cvt<T>(fmaf(fmaf(mt__f(xv[p].v[k]), r, mr), mt__f(wv.v[k]),
                                         (!RMS && b) ? mt__f(bv.v[k]) : 0.0f));
            mt__stcs<T, VEC>(out + (size_t)row * C + c, o);
        }
    }
    if (lane == 0) {
        if (!RMS && mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

/* Backward of both norms.  RMS = 0: LayerNorm (mean used, partial rows dw then db);
 * RMS = 1: RMSNorm (mean ignored, partial rows dw only).  partial: (gridDim.x, NV, C) or NULL.
 * Each block walks rows blockIdx.x, + gridDim.x, ...; the next row's inp and dout are loaded
 * before the current row's reduction, so loads stay in flight across the barriers. */
template <typename T, int VEC, int NP, int RMS>
__global__ void mt__norm_bwd_kernel(T *dinp, float *__restrict__ partial, const T *__restrict__ dout, const T *dresid,
                                    const T *__restrict__ inp, const T *__restrict__ w,
                                    const float *__restrict__ mean, const float *__restrict__ rstd, int N, int C) {
    constexpr int NV = RMS ? 1 : 2;
    __shared__ float shm[32 * 2];
    float dwacc[NP][VEC], dbacc[NP][VEC];
#pragma unroll
    for (int p = 0; p < NP; p++)
#pragma unroll
        for (int k = 0; k < VEC; k++) dwacc[p][k] = dbacc[p][k] = 0.0f;

    mt__vec<T, VEC> nx[NP], ng[NP], nr[NP]; /* the row being prefetched: inp, dout, dresid */
    float nm = 0.0f, ns = 0.0f;              /* and its mean, rstd */
    int row = blockIdx.x;
    if (row < N) {
#pragma unroll
        for (int p = 0; p < NP; p++) {
            int c = (p * blockDim.x + threadIdx.x) * VEC;
            if (c < C) {
                nx[p] = mt__ldcs<T, VEC>(inp + (size_t)row * C + c);
                ng[p] = mt__ldcs<T, VEC>(dout + (size_t)row * C + c);
                if (dresid) nr[p] = mt__ldcs<T, VEC>(dresid + (size_t)row * C + c);
            }
        }
        nm = RMS ? 0.0f : mean[row];
        ns = rstd[row];
    }
    for (; row < N; row += gridDim.x) {
        size_t off = (size_t)row * C;
        mt__vec<T, VEC> cx[NP], cg[NP], cr[NP];
#pragma unroll
        for (int p = 0; p < NP; p++) { cx[p] = nx[p]; cg[p] = ng[p]; cr[p] = nr[p]; }
        float m = nm, s = ns;
        int next = row + gridDim.x;
        if (next < N) {
#pragma unroll
            for (int p = 0; p < NP; p++) {
                int c = (p * blockDim.x + threadIdx.x) * VEC;
                if (c < C) {
                    nx[p] = mt__ldcs<T, VEC>(inp + (size_t)next * C + c);
                    ng[p] = mt__ldcs<T, VEC>(dout + (size_t)next * C + c);
                    if (dresid) nr[p] = mt__ldcs<T, VEC>(dresid + (size_t)next * C + c);
                }
            }
            nm = RMS ? 0.0f : mean[next];
            ns = rstd[next];
        }
        float xh[NP][VEC], wd[NP][VEC], dv[NP][VEC];
        float acc[2] = {0.0f, 0.0f};
#pragma unroll
        for (int p = 0; p < NP; p++) {
            int c = (p * blockDim.x + threadIdx.x) * VEC;
            if (c < C) {
                mt__vec<T, VEC> wv = mt__ld<T, VEC>(w + c);
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    xh[p][k] = (mt__f(cx[p].v[k]) - m) * s;
                    dv[p][k] = mt__f(cg[p].v[k]);
                    wd[p][k] = mt__f(wv.v[k]) * dv[p][k];
                    acc[0] += wd[p][k];
                    acc[1] += wd[p][k] * xh[p][k];
                }
            } else {
#pragma unroll
                for (int k = 0; k < VEC; k++) xh[p][k] = wd[p][k] = dv[p][k] = 0.0f;
            }
        }
        mt__block_sum<2>(acc, shm);
        float a = RMS ? 0.0f : acc[0] / (float)C, bb = acc[1] / (float)C;
#pragma unroll
        for (int p = 0; p < NP; p++) {
            int c = (p * blockDim.x + threadIdx.x) * VEC;
            if (c < C) {
                mt__vec<T, VEC> o;
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    float g = (wd[p][k] - a - xh[p][k] * bb) * s;
                    o.v[k] = mt__cvt<T>((dresid ? mt__f(cr[p].v[k]) : 0.0f) + g);
                    dwacc[p][k] += xh[p][k] * dv[p][k];
                    dbacc[p][k] += dv[p][k];
                }
                mt__stcs<T, VEC>(dinp + off + c, o);
            }
        }
    }
    if (!partial) return;
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * blockDim.x + threadIdx.x) * VEC;
        if (c < C) {
            float *pw = partial + ((size_t)blockIdx.x * NV) * C + c;
#pragma unroll
            for (int k = 0; k < VEC; k++) pw[k] = dwacc[p][k];
            if (!RMS) {
#pragma unroll
                for (int k = 0; k < VEC; k++) pw[C + k] = dbacc[p][k];
            }
        }
    }
}

/* Backward of both norms, one warp per row, for rows of at most 32*NP packs (C <= 2048 bf16):
 * each lane holds its NP packs of inp, dout and dresid in registers (all loaded before the first
 * use, no block barrier in the loop), the row statistics by warp shuffles.  The dw/db
 * contributions go to the warp's own slice of shared memory, NV x (NP*VEC*32) floats laid out
 * [p][k][lane] so that a warp's accesses hit 32 different banks; the slice belongs to one warp,
 * so no atomics and a fixed order.  At the end the block adds its warps' slices in warp order
 * into one partial row (gridDim.x, NV, C), finished by mt__norm_wgrad_finalize_kernel. */
template <typename T, int VEC, int NP, int RMS>
__global__ void __launch_bounds__(128) mt__norm_bwd_warp_kernel(T *dinp, float *__restrict__ partial,
                                                                const T *__restrict__ dout, const T *dresid,
                                                                const T *__restrict__ inp, const T *__restrict__ w,
                                                                const float *__restrict__ mean,
                                                                const float *__restrict__ rstd, int N, int C) {
    constexpr int NV = RMS ? 1 : 2, SL = NP * VEC * 32; /* floats per accumulator in a slice */
    extern __shared__ float mt__nbw_acc[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarp = blockDim.x >> 5;
    float *acc = mt__nbw_acc + (size_t)warp * NV * SL;
    for (int j = lane; j < NV * SL; j += 32) acc[j] = 0.0f;
    __syncwarp();
    for (int row = blockIdx.x * nwarp + warp; row < N; row += gridDim.x * nwarp) {
        const size_t off = (size_t)row * C;
        mt__vec<T, VEC> xv[NP], gv[NP], rv[NP];
#pragma unroll
        for (int p = 0; p < NP; p++) {
            int c = (p * 32 + lane) * VEC;
            if (c < C) {
                xv[p] = mt__ldcs<T, VEC>(inp + off + c);
                gv[p] = mt__ldcs<T, VEC>(dout + off + c);
                if (dresid) rv[p] = mt__ldcs<T, VEC>(dresid + off + c);
            }
        }
        const float m = RMS ? 0.0f : mean[row], s = rstd[row];
        float a0 = 0.0f, a1 = 0.0f;
#pragma unroll
        for (int p = 0; p < NP; p++)
            if ((p * 32 + lane) * VEC < C) {
                mt__vec<T, VEC> wv = mt__ld<T, VEC>(w + (p * 32 + lane) * VEC); /* L1-resident */
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    float wd = mt__f(wv.v[k]) * mt__f(gv[p].v[k]);
                    a0 += wd;
                    a1 += wd * (mt__f(xv[p].v[k]) - m) * s;
                }
            }
        const float a = RMS ? 0.0f : mt__warp_sum(a0) / (float)C, bb = mt__warp_sum(a1) / (float)C;
#pragma unroll
        for (int p = 0; p < NP; p++) {
            int c = (p * 32 + lane) * VEC;
            if (c < C) {
                mt__vec<T, VEC> o, wv = mt__ld<T, VEC>(w + c);
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    float g = mt__f(gv[p].v[k]), xh = (mt__f(xv[p].v[k]) - m) * s;
                    float d = (mt__f(wv.v[k]) * g - a - xh * bb) * s;
                    o.v[k] = mt__cvt<T>((dresid ? mt__f(rv[p].v[k]) : 0.0f) + d);
                    acc[(p * VEC + k) * 32 + lane] += xh * g;
                    if (!RMS) acc[SL + (p * VEC + k) * 32 + lane] += g;
                }
                mt__stcs<T, VEC>(dinp + off + c, o);
            }
        }
    }
    if (!partial) return;
    __syncthreads();
    /* column c = (p*32 + lane)*VEC + k  <->  slice index (p*VEC + k)*32 + lane */
    for (int j = threadIdx.x; j < NV * SL; j += blockDim.x) {
        int v = j / SL, r = j % SL, p = r / (VEC * 32), k = (r / 32) % VEC, ln = r % 32;
        int c = (p * 32 + ln) * VEC + k;
        if (c >= C) continue;
        float t = 0.0f;
        for (int q = 0; q < nwarp; q++) t += mt__nbw_acc[(size_t)q * NV * SL + j];
        partial[((size_t)blockIdx.x * NV + v) * C + c] = t;
    }
}

/* Pieces of the pipelined backward: cp.async group commit and wait, a named barrier, and a 16-byte
 * pack <-> floats at one instruction per element (bf16: a shift or a mask per element, two floats
 * packed by one conversion). */
__device__ __forceinline__ void mt__nb_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void mt__nb_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void mt__nb_bar(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }

template <typename T> struct mt__nb_pack;
template <> struct mt__nb_pack<float> {
    static __device__ __forceinline__ void get(const uint4 &u, float (&f)[4]) {
        f[0] = __uint_as_float(u.x); f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z); f[3] = __uint_as_float(u.w);
    }
    static __device__ __forceinline__ uint4 put(const float (&f)[4]) {
        return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
    }
};
template <> struct mt__nb_pack<__nv_bfloat16> {
    static __device__ __forceinline__ void get(const uint4 &u, float (&f)[8]) {
        const unsigned q[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(q[i] << 16);
            f[2 * i + 1] = __uint_as_float(q[i] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ unsigned two(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<unsigned *>(&h);
    }
    static __device__ __forceinline__ uint4 put(const float (&f)[8]) {
        return make_uint4(two(f[0], f[1]), two(f[2], f[3]), two(f[4], f[5]), two(f[6], f[7]));
    }
};

/* Backward of both norms, pipelined through shared memory (16-byte packs only, rows of at most
 * 2*256 packs).  A block is G groups of TG threads (TG a multiple of 32); group g of block b walks
 * rows b*G + g, + gridDim.x*G, ...  Thread t of a group owns the packs at columns (p*TG + t)*VEC,
 * p < NP, for every row: its dw/db contributions stay in registers (no shared-memory accumulators,
 * no atomics), and w is loaded and converted once.  Each group has a ring of NS = 4 row slots in
 * shared memory (inp, dout, dresid of one row each): a thread copies its own packs with cp.async,
 * NS - 1 rows ahead of the row it computes (the copy of a row is issued once the group's barrier
 * shows every thread past the row that held the slot), so two to three rows per group are in
 * flight; no barrier is needed for the data (a thread reads only what it copied).  Per row: one
 * pass converts x and dout
 * once (xh = x*s - m*s, one FFMA), accumulates the two row sums and dw/db, keeps xh and w*dout in
 * registers; both sums are reduced at once by warp shuffles and one exchange behind the group's
 * named barrier (double-buffered, so one barrier per row); a second pass reads dresid and writes
 * dinp.  At the end the block adds its groups' accumulators in group order into one partial row
 * (gridDim.x, NV, C), finished by mt__norm_wgrad_finalize_kernel. */
template <typename T, int NP, int RMS>
__global__ void __launch_bounds__(NP == 1 ? 768 : 512, 1)
    mt__norm_bwd_pipe_kernel(T *dinp, float *__restrict__ partial, const T *__restrict__ dout, const T *dresid,
                             const T *__restrict__ inp, const T *__restrict__ w, const float *__restrict__ mean,
                             const float *__restrict__ rstd, int N, int C, int TG) {
    constexpr int VEC = 16 / (int)sizeof(T), NV = RMS ? 1 : 2, NS = MT__NORM_BWD_RING;
    extern __shared__ __align__(16) unsigned char mt__nbp_smem[];
    __shared__ __align__(16) float2 red[2][64]; /* [row parity][group*8 + warp]: the two row sums */
    const int G = blockDim.x / TG, g = threadIdx.x / TG, t = threadIdx.x - g * TG;
    const int lane = threadIdx.x & 31, nw = TG >> 5;
    /* byte sizes: one row CB, one slot (inp, dout, dresid) SB; the group's ring at shared address sb */
    const unsigned CB = (unsigned)C * (unsigned)sizeof(T), SB = 3u * CB;
    const unsigned sb = (unsigned)__cvta_generic_to_shared(mt__nbp_smem) + (unsigned)g * NS * SB;
    const int NG = gridDim.x * G;
    const bool has_r = dresid != NULL;

    float wf[NP][VEC], dwa[NP][VEC], dba[NP][VEC];
#pragma unroll
    for (int p = 0; p < NP; p++) {
        const int c = (p * TG + t) * VEC;
        if (c < C) mt__nb_pack<T>::get(*reinterpret_cast<const uint4 *>(w + c), wf[p]);
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            if (c >= C) wf[p][k] = 0.0f;
            dwa[p][k] = dba[p][k] = 0.0f;
        }
    }
    /* copies of row `row` (if any) into the slot at shared address `sa`, as one commit group (empty
     * past the end); the thread's pack p sits at byte (p*TG + t)*16 of each row, in global and in
     * shared memory */
    const unsigned PS = (unsigned)TG * 16u, o0 = (unsigned)t * 16u;
    const char *bx = reinterpret_cast<const char *>(inp) + o0, *bg = reinterpret_cast<const char *>(dout) + o0;
    const char *br = reinterpret_cast<const char *>(dresid) + o0;
    auto issue = [&](int row, unsigned sa) {
        if (row < N) {
            const size_t go = (size_t)(unsigned)row * CB;
            const char *px = bx + go, *pg = bg + go, *pr = br + go;
            sa += o0;
#pragma unroll
            for (int p = 0; p < NP; p++) {
                if (o0 + p * PS < CB) {
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa + p * PS), "l"(px + p * PS) : "memory");
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa + CB + p * PS), "l"(pg + p * PS)
                                 : "memory");
                    if (has_r)
                        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa + 2 * CB + p * PS),
                                     "l"(pr + p * PS) : "memory");
                }
            }
        }
        mt__nb_commit();
    };
    auto lds = [](unsigned a) {
        uint4 u;
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w) : "r"(a));
        return u;
    };
    int row = blockIdx.x * G + g;
#pragma unroll
    for (int j = 0; j < NS - 1; j++) issue(row + j * NG, sb + j * SB);
    float m = 0.0f, s = 0.0f;
    if (row < N) { m = RMS ? 0.0f : mean[row]; s = rstd[row]; }
    int par = 0;
    unsigned sx = sb, sp = sb + (NS - 1) * SB; /* the slot of this row; of the previous row */
    const float invC = 1.0f / (float)C;
    for (; row < N; row += NG) {
        float nm = 0.0f, ns = 0.0f;
        if (row + NG < N) { nm = RMS ? 0.0f : mean[row + NG]; ns = rstd[row + NG]; }
        mt__nb_wait<NS - 2>(); /* this row's copies have landed (the next NS - 2 rows may be in flight) */
        const float ms = RMS ? 0.0f : -m * s;
        float xh[NP][VEC], wd[NP][VEC], a0 = 0.0f, a1 = 0.0f;
#pragma unroll
        for (int p = 0; p < NP; p++) {
            const unsigned o = (unsigned)(p * TG + t) * 16u;
            if (o < CB) {
                float xv[VEC], gv[VEC];
                mt__nb_pack<T>::get(lds(sx + o), xv);
                mt__nb_pack<T>::get(lds(sx + CB + o), gv);
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    xh[p][k] = RMS ? xv[k] * s : fmaf(xv[k], s, ms);
                    wd[p][k] = wf[p][k] * gv[k];
                    if (!RMS) a0 += wd[p][k];
                    a1 = fmaf(wd[p][k], xh[p][k], a1);
                    dwa[p][k] = fmaf(xh[p][k], gv[k], dwa[p][k]);
                    if (!RMS) dba[p][k] += gv[k];
                }
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            if (!RMS) a0 += __shfl_xor_sync(0xffffffffu, a0, o);
            a1 += __shfl_xor_sync(0xffffffffu, a1, o);
        }
        if (lane == 0) red[par][g * 8 + (t >> 5)] = make_float2(a0, a1);
        mt__nb_bar(1 + g, TG);
        /* every thread of the group is past the previous row: its slot takes row + (NS - 1) rows */
        issue(row + (NS - 1) * NG, sp);
        float2 tot = make_float2(0.0f, 0.0f); /* warps in order, two per 16-byte load */
#pragma unroll
        for (int i = 0; i < 8; i += 2)
            if (i < nw) {
                const float4 v = *reinterpret_cast<const float4 *>(&red[par][g * 8 + i]);
                tot.x += v.x;
                tot.y += v.y;
                if (i + 1 < nw) {
                    tot.x += v.z;
                    tot.y += v.w;
                }
            }
        /* dinp = dresid + (w*dout - a - xh*bb)*s  =  w*dout*s + (xh*(-bb*s) + (dresid - a*s)) */
        const float cA = RMS ? 0.0f : -(tot.x * invC) * s, cB = -(tot.y * invC) * s;
        char *gd = reinterpret_cast<char *>(dinp) + (size_t)row * CB;
#pragma unroll
        for (int p = 0; p < NP; p++) {
            const unsigned o = (unsigned)(p * TG + t) * 16u;
            if (o < CB) {
                float rv[VEC], ov[VEC];
                if (has_r) mt__nb_pack<T>::get(lds(sx + 2 * CB + o), rv);
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    float base = has_r ? (RMS ? rv[k] : rv[k] + cA) : cA;
                    ov[k] = fmaf(wd[p][k], s, fmaf(xh[p][k], cB, base));
                }
                uint4 u = mt__nb_pack<T>::put(ov);
                __stcs(reinterpret_cast<int4 *>(gd + o), *reinterpret_cast<int4 *>(&u));
            }
        }
        par ^= 1;
        sp = sx;
        sx = sx + SB == sb + NS * SB ? sb : sx + SB;
        m = nm;
        s = ns;
    }
    mt__nb_wait<0>();
    if (!partial) return;
    /* the block's groups in order: group 0 adds groups 1..G-1 (stored over the ring) to its own */
    __syncthreads();
    float *acc = reinterpret_cast<float *>(mt__nbp_smem);
    if (g > 0) {
#pragma unroll
        for (int p = 0; p < NP; p++) {
            const int c = (p * TG + t) * VEC;
            if (c < C) {
                float *a = acc + (size_t)(g - 1) * NV * C + c;
#pragma unroll
                for (int k = 0; k < VEC; k += 4) {
                    *reinterpret_cast<float4 *>(a + k) = make_float4(dwa[p][k], dwa[p][k + 1], dwa[p][k + 2], dwa[p][k + 3]);
                    if (!RMS)
                        *reinterpret_cast<float4 *>(a + C + k) =
                            make_float4(dba[p][k], dba[p][k + 1], dba[p][k + 2], dba[p][k + 3]);
                }
            }
        }
    }
    __syncthreads();
    if (g > 0) return;
#pragma unroll
    for (int p = 0; p < NP; p++) {
        const int c = (p * TG + t) * VEC;
        if (c < C) {
            for (int q = 1; q < G; q++) {
                const float *a = acc + (size_t)(q - 1) * NV * C + c;
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    dwa[p][k] += a[k];
                    if (!RMS) dba[p][k] += a[C + k];
                }
            }
            float *pw = partial + (size_t)blockIdx.x * NV * C + c;
#pragma unroll
            for (int k = 0; k < VEC; k += 4) {
                *reinterpret_cast<float4 *>(pw + k) = make_float4(dwa[p][k], dwa[p][k + 1], dwa[p][k + 2], dwa[p][k + 3]);
                if (!RMS)
                    *reinterpret_cast<float4 *>(pw + C + k) =
                        make_float4(dba[p][k], dba[p][k + 1], dba[p][k + 2], dba[p][k + 3]);
            }
        }
    }
}

/* Pieces of the persistent forwards (cx->gpu->norm_fwd_warp 4 and 5): the statistics and the
 * output of one row held as NP packs per lane at columns (p*32 + lane)*VEC, the same arithmetic as
 * mt__norm_fwd_warp1p_kernel (shifted one-pass sums, one shuffle reduction, two FFMAs per output). */
template <typename T, int VEC>
__device__ __forceinline__ void mt__nfw_unpack(const mt__vec<T, VEC> &v, float (&f)[VEC]) {
    if constexpr (VEC * sizeof(T) == 16) { /* one instruction per element (bf16: shift or mask) */
        mt__nb_pack<T>::get(*reinterpret_cast<const uint4 *>(&v), f);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; k++) f[k] = mt__f(v.v[k]);
    }
}
template <typename T, int VEC, int NP, int RMS>
__device__ __forceinline__ void mt__nfw_stats(const mt__vec<T, VEC> (&xv)[NP], int lane, int C, float &m, float &r) {
    const float K = RMS ? 0.0f : __shfl_sync(0xffffffffu, mt__f(xv[0].v[0]), 0); /* lane 0 always has column 0 */
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int p = 0; p < NP; p++)
        if ((p * 32 + lane) * VEC < C) {
            float f[VEC];
            mt__nfw_unpack<T, VEC>(xv[p], f);
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                float d = f[k] - K;
                if (!RMS) s1 += d;
                s2 = fmaf(d, d, s2);
            }
        }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        if (!RMS) s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    }
    const float dm = s1 / (float)C;
    m = K + dm;
    const float var = RMS ? s2 / (float)C : fmaxf(s2 / (float)C - dm * dm, 0.0f);
    r = 1.0f / sqrtf(var + MT__NORM_EPS);
}
template <typename T, int VEC, int NP, int RMS>
__device__ __forceinline__ void mt__nfw_out(const mt__vec<T, VEC> (&xv)[NP], T *__restrict__ o, const T *__restrict__ w,
                                            const T *__restrict__ b, int lane, int C, float m, float r) {
    const float mr = -m * r;
#pragma unroll
    for (int p = 0; p < NP; p++) {
        int c = (p * 32 + lane) * VEC;
        if (c < C) {
            mt__vec<T, VEC> ov;
            float xf[VEC], wf[VEC], bf[VEC];
            mt__nfw_unpack<T, VEC>(xv[p], xf);
            mt__nfw_unpack<T, VEC>(mt__ld<T, VEC>(w + c), wf); /* w, b: 2 x C x sizeof(T), L1-resident */
            if (!RMS && b) mt__nfw_unpack<T, VEC>(mt__ld<T, VEC>(b + c), bf);
#pragma unroll
            for (int k = 0; k < VEC; k++)
                ov.v[k] = mt__cvt<T>(fmaf(fmaf(xf[k], r, mr), wf[k], (!RMS && b) ? bf[k] : 0.0f));
            mt__stcs<T, VEC>(o + c, ov);
        }
    }
}

/* Forward of both norms, persistent warps with the next row in a second register set
 * (cx->gpu->norm_fwd_warp 4).  At 8192 x 1600 bf16 the one-row-per-warp kernels run ~2.6 rows per
 * resident warp: every warp loads, waits a full DRAM round trip, reduces, stores, and the last
 * partial wave of blocks drains with few bytes in flight.  Here the grid is what fits at once
 * (balanced so that every warp gets the same number of rows, +-1), warp gw walks rows gw, gw + NW,
 * ..., and the loads of row + NW are issued before row's reduction and stores, so each warp keeps a
 * row in flight while it computes.  Any C up to 32*NP*VEC, VEC 1 included.  Launch bounds: 5
 * blocks of 4 warps per SM (127 registers and 4 blocks without).  ptxas, sm_90a, bf16 VEC 8 NP 8
 * (C = 1600): LayerNorm 96 registers, RMSNorm 93, no spills, no shared memory. */
template <typename T, int VEC, int NP, int RMS>
__global__ void __launch_bounds__(128, 5) mt__norm_fwd_warp_pipe_kernel(T *__restrict__ out, float *__restrict__ mean,
                                                                     float *__restrict__ rstd,
                                                                     const T *__restrict__ inp,
                                                                     const T *__restrict__ w,
                                                                     const T *__restrict__ b, int N, int C) {
    const int lane = threadIdx.x & 31, NW = gridDim.x * (blockDim.x >> 5);
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    mt__vec<T, VEC> nv[NP]; /* the row in flight */
    if (row < N) {
        const T *x = inp + (size_t)row * C;
#pragma unroll
        for (int p = 0; p < NP; p++) {
            int c = (p * 32 + lane) * VEC;
            if (c < C) nv[p] = mt__ldcs<T, VEC>(x + c);
        }
    }
    for (; row < N; row += NW) {
        mt__vec<T, VEC> xv[NP];
#pragma unroll
        for (int p = 0; p < NP; p++) xv[p] = nv[p];
        if (row + NW < N) {
            const T *x = inp + (size_t)(row + NW) * C;
#pragma unroll
            for (int p = 0; p < NP; p++) {
                int c = (p * 32 + lane) * VEC;
                if (c < C) nv[p] = mt__ldcs<T, VEC>(x + c);
            }
        }
        float m, r;
        mt__nfw_stats<T, VEC, NP, RMS>(xv, lane, C, m, r);
        mt__nfw_out<T, VEC, NP, RMS>(xv, out + (size_t)row * C, w, b, lane, C, m, r);
        if (lane == 0) {
            if (!RMS && mean) mean[row] = m;
            if (rstd) rstd[row] = r;
        }
    }
}

/* Forward of both norms, persistent warps with a ring of NS rows per warp in shared memory
 * (cx->gpu->norm_fwd_warp 5; 16-byte packs only, rows up to 256 packs), after the pipelined
 * backward: each lane copies its own packs of row + j*NW (j < NS) by cp.async into slot j, so NS
 * rows per warp are in flight without holding registers.  Per row: wait for its copy group, read the
 * lane's packs from shared memory into registers, reduce; once the reduction is done every read of
 * that slot has completed (the sums depend on them), so the slot takes row + NS*NW before the
 * output is computed and stored.  A lane reads only bytes it copied itself: no barrier at all.
 * Grid balanced as in the register variant.  ptxas, sm_90a, bf16 NP 8 (C = 1600): 64 registers
 * (LayerNorm 8 B spilled, RMSNorm 4 B), dynamic shared memory 4 warps x NS rows x C x 2 B = 38,400 B at
 * NS = 3 (5 blocks per SM). */
template <typename T, int NP, int RMS, int NS>
__global__ void __launch_bounds__(128) mt__norm_fwd_ring_kernel(T *__restrict__ out, float *__restrict__ mean,
                                                                float *__restrict__ rstd, const T *__restrict__ inp,
                                                                const T *__restrict__ w, const T *__restrict__ b,
                                                                int N, int C) {
    constexpr int VEC = 16 / (int)sizeof(T);
    extern __shared__ __align__(16) unsigned char mt__nfr_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, NW = gridDim.x * (blockDim.x >> 5);
    const unsigned CB = (unsigned)C * (unsigned)sizeof(T), o0 = (unsigned)lane * 16u;
    const unsigned sb = (unsigned)__cvta_generic_to_shared(mt__nfr_smem) + (unsigned)warp * NS * CB;
    const char *bx = reinterpret_cast<const char *>(inp) + o0;
    auto issue = [&](int r, unsigned sa) { /* one commit group, empty past the end */
        if (r < N) {
            const char *px = bx + (size_t)(unsigned)r * CB;
            sa += o0;
#pragma unroll
            for (int p = 0; p < NP; p++)
                if (o0 + p * 512u < CB)
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa + p * 512u), "l"(px + p * 512u)
                                 : "memory");
        }
        mt__nb_commit();
    };
    int row = blockIdx.x * (blockDim.x >> 5) + warp;
#pragma unroll
    for (int j = 0; j < NS; j++) issue(row + j * NW, sb + j * CB);
    unsigned sx = sb;
    for (; row < N; row += NW) {
        mt__nb_wait<NS - 1>(); /* this row's group has landed; the next NS - 1 may be in flight */
        mt__vec<T, VEC> xv[NP];
#pragma unroll
        for (int p = 0; p < NP; p++)
            if (o0 + p * 512u < CB) {
                uint4 u;
                asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w) : "r"(sx + o0 + p * 512u) : "memory");
                xv[p] = *reinterpret_cast<mt__vec<T, VEC> *>(&u);
            }
        float m, r;
        mt__nfw_stats<T, VEC, NP, RMS>(xv, lane, C, m, r);
        issue(row + NS * NW, sx);
        mt__nfw_out<T, VEC, NP, RMS>(xv, out + (size_t)row * C, w, b, lane, C, m, r);
        if (lane == 0) {
            if (!RMS && mean) mean[row] = m;
            if (rstd) rstd[row] = r;
        }
        sx = sx + CB == sb + NS * CB ? sb : sx + CB;
    }
    mt__nb_wait<0>();
}

/* Forward of both norms, one warp per row, w and b (LayerNorm) converted once per block into float
 * shared memory (cx->gpu->norm_fwd_warp 6, the default; rows up to 256 packs).  Why: the warp-per-row
 * kernels are close to issue-bound, and variant 3 loads w and b from global memory for every row and
 * converts them (PRMT + shift per bf16 element), and its code for "b given" and "b NULL" is two copies
 * of each pack.  Here a block of MT__NORM_FWD_SMEM_WARPS (16) warps issues its rows' loads first,
 * then converts w and b once (C floats each, <= 16 KB; NULL b as zeros, so the output loop has one
 * path) and meets at one barrier while the rows are in flight; the output reads them back as float4
 * (LDS.128, laid out [h][pack][4] so a warp's reads are conflict-free).  Statistics as in variant 3
 * (shifted one-pass sums, one shuffle reduction), 1/C once and rsqrtf instead of two IEEE divisions
 * and a sqrt; x unpacked at one instruction per element (shift or mask).  x is unpacked again for the
 * output: keeping it as floats took 128 registers (16 warps/SM) for 4 fewer instructions per pack.
 * Based on variant 3, not on the persistent 4: 4 holds two rows of packs (96 registers, 20
 * warps/SM) and was slower; this one fits in 64 registers, so 2 blocks = 32 warps per SM.
 * ptxas, sm_90a, bf16 VEC 8 NP 8 (C = 1600): LayerNorm 64 registers, RMSNorm 64, no spills, 1
 * barrier, dynamic shared memory 12,800 B (LN) / 6,400 B (RMS) per block; f32 VEC 4 NP 8: 56 / 54.
 * SASS per row of C = 1600 bf16 (warp instructions issued, pack 7 and the slow paths of the
 * divisions not taken, divided by C/32 = 50 elements per lane): LayerNorm ~710 = 14.2 per element
 * (variant 3: ~990 = 19.9), RMSNorm ~540 = 10.8 (variant 3: ~710 = 14.2); per pack of 8: 32
 * statistics + 36 output (LN; variant 3: 32 + ~65), 16 + 34 (RMS; variant 3: 16 + 47). */
template <typename T, int VEC, int NP, int RMS>
__global__ void __launch_bounds__(MT__NORM_FWD_SMEM_WARPS * 32, 32 / MT__NORM_FWD_SMEM_WARPS)
mt__norm_fwd_smem_kernel(T *__restrict__ out, float *__restrict__ mean, float *__restrict__ rstd,
                         const T *__restrict__ inp, const T *__restrict__ w, const T *__restrict__ b, int N, int C) {
    constexpr int NWB = MT__NORM_FWD_SMEM_WARPS; /* rows (warps) per block */
    extern __shared__ __align__(16) float mt__nfs_wb[]; /* w, then b (LayerNorm): C floats each */
    const int lane = threadIdx.x & 31, row = blockIdx.x * NWB + (threadIdx.x >> 5);
    const size_t lo = (size_t)row * C + lane * VEC; /* the lane's first element; pack p at + p*32*VEC */
    const int rem = C - lane * VEC;                  /* the lane has pack p when p*32*VEC < rem */
    mt__vec<T, VEC> xv[NP];
    if (row < N) { /* the row's loads first: the staging below overlaps their round trip */
#pragma unroll
        for (int p = 0; p < NP; p++)
            if (p * 32 * VEC < rem) xv[p] = mt__ldcs<T, VEC>(inp + lo + p * 32 * VEC);
    }
    if constexpr (VEC >= 4) { /* 16-byte packs: floats 4h..4h+3 of pack P at float4 [h][P], h < VEC/4 */
        const int npk = C / VEC;
        float4 *sw = reinterpret_cast<float4 *>(mt__nfs_wb), *sb = sw + C / 4;
#pragma unroll 1
        for (int P = threadIdx.x; P < npk; P += NWB * 32) {
            float f[VEC], g[VEC];
            mt__nfw_unpack<T, VEC>(mt__ld<T, VEC>(w + P * VEC), f);
            if (!RMS) {
                if (b) mt__nfw_unpack<T, VEC>(mt__ld<T, VEC>(b + P * VEC), g);
                else {
#pragma unroll
                    for (int k = 0; k < VEC; k++) g[k] = 0.0f;
                }
            }
#pragma unroll
            for (int h = 0; h < VEC / 4; h++) {
                sw[h * npk + P] = make_float4(f[4 * h], f[4 * h + 1], f[4 * h + 2], f[4 * h + 3]);
                if (!RMS) sb[h * npk + P] = make_float4(g[4 * h], g[4 * h + 1], g[4 * h + 2], g[4 * h + 3]);
            }
        }
    } else {
#pragma unroll 1
        for (int c = threadIdx.x; c < C; c += NWB * 32) {
            mt__nfs_wb[c] = mt__f(w[c]);
            if (!RMS) mt__nfs_wb[C + c] = b ? mt__f(b[c]) : 0.0f;
        }
    }
    __syncthreads();
    if (row >= N) return;
    const float K = RMS ? 0.0f : __shfl_sync(0xffffffffu, mt__f(xv[0].v[0]), 0); /* lane 0 always has column 0 */
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int p = 0; p < NP; p++)
        if (p * 32 * VEC < rem) {
            float f[VEC];
            mt__nfw_unpack<T, VEC>(xv[p], f);
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                float d = f[k] - K;
                if (!RMS) s1 += d;
                s2 = fmaf(d, d, s2);
            }
        }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        if (!RMS) s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    }
    const float ic = 1.0f / (float)C, dm = s1 * ic, m = K + dm; /* one division, rsqrtf: ~35 fewer instructions */
    const float var = RMS ? s2 * ic : fmaxf(s2 * ic - dm * dm, 0.0f);
    const float r = rsqrtf(var + MT__NORM_EPS), mr = -m * r;
#pragma unroll
    for (int p = 0; p < NP; p++)
        if (p * 32 * VEC < rem) {
            float f[VEC], wf[VEC], bf[VEC];
            mt__nfw_unpack<T, VEC>(xv[p], f); /* again: cheaper than 32 more registers (see above) */
            if constexpr (VEC >= 4) {
                const float4 *sw = reinterpret_cast<const float4 *>(mt__nfs_wb) + p * 32 + lane, *sb = sw + C / 4;
                const int npk = C / VEC;
#pragma unroll
                for (int h = 0; h < VEC / 4; h++) {
                    const float4 u = sw[h * npk];
                    wf[4 * h] = u.x; wf[4 * h + 1] = u.y; wf[4 * h + 2] = u.z; wf[4 * h + 3] = u.w;
                    if (!RMS) {
                        const float4 v = sb[h * npk];
                        bf[4 * h] = v.x; bf[4 * h + 1] = v.y; bf[4 * h + 2] = v.z; bf[4 * h + 3] = v.w;
                    }
                }
            } else {
                wf[0] = mt__nfs_wb[p * 32 + lane];
                if (!RMS) bf[0] = mt__nfs_wb[C + p * 32 + lane];
            }
            mt__vec<T, VEC> ov;
#pragma unroll
            for (int k = 0; k < VEC; k++) ov.v[k] = mt__cvt<T>(fmaf(fmaf(f[k], r, mr), wf[k], RMS ? 0.0f : bf[k]));
            mt__stcs<T, VEC>(out + lo + p * 32 * VEC, ov);
        }
    if (lane == 0) {
        if (!RMS && mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

/* dw[c] += sum over blocks of partial[blk][0][c]; db likewise from partial[blk][1][c] (NV == 2).
 * Block (32, 32): x = column, y = a stride-32 slice of the blocks, summed with four independent
 * accumulators (four loads in flight per thread), then a fixed-order sum over y. */
template <typename T>
__global__ void mt__norm_wgrad_finalize_kernel(T *dw, T *db, const float *__restrict__ partial, int nblk, int NV,
                                               int C) {
    __shared__ float sh[2][32][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float a0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, a1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c < C) {
        int k = threadIdx.y;
        for (; k + 96 < nblk; k += 128) {
#pragma unroll
            for (int u = 0; u < 4; u++) a0[u] += partial[((size_t)(k + 32 * u) * NV) * C + c];
            if (NV == 2) {
#pragma unroll
                for (int u = 0; u < 4; u++) a1[u] += partial[((size_t)(k + 32 * u) * NV + 1) * C + c];
            }
        }
#pragma unroll
        for (int u = 0; u < 3; u++) { /* at most three rows of the slice remain */
            if (k + 32 * u < nblk) {
                a0[u] += partial[((size_t)(k + 32 * u) * NV) * C + c];
                if (NV == 2) a1[u] += partial[((size_t)(k + 32 * u) * NV + 1) * C + c];
            }
        }
    }
    sh[0][threadIdx.y][threadIdx.x] = (a0[0] + a0[1]) + (a0[2] + a0[3]);
    sh[1][threadIdx.y][threadIdx.x] = (a1[0] + a1[1]) + (a1[2] + a1[3]);
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t0 = 0.0f, t1 = 0.0f;
        for (int y = 0; y < 32; y++) { t0 += sh[0][y][threadIdx.x]; t1 += sh[1][y][threadIdx.x]; }
        if (dw) dw[c] = mt__cvt<T>(mt__f(dw[c]) + t0);
        if (db) db[c] = mt__cvt<T>(mt__f(db[c]) + t1);
    }
}

/* ------------------------------------------------------------------ launchers */

/* Threads per row-block and packs per thread for a row of C elements in packs of `vec`. */
MT_API mt_status mt__row_geom(const char *op, int C, int vec, int max_threads, int *np, int *threads) {
    int packs = (C + vec - 1) / vec, n = 1;
    while (n < 8 && (packs + n - 1) / n > max_threads) n *= 2;
    int t = (packs + n - 1) / n;
    if (t > max_threads)
        return mt_errorf(MT_ERR_UNSUPPORTED, "%s: C = %d is too wide for one block per row (max %d)", op, C,
                         max_threads * 8 * vec);
    t = (t + 31) / 32 * 32;
    *np = n;
    *threads = t;
    return MT_OK;
}

/* Packs per lane for the warp-per-row forward: 1 and *np in {1, 2, 4, 8} when the row fits. */
MT_API int mt__warp_np(int C, int vec, int *np) {
    int packs = (C + vec - 1) / vec, n = 1;
    while (n < 8 && n * 32 < packs) n *= 2;
    if (n * 32 < packs) return 0;
    *np = n;
    return 1;
}

/* Launch KERNEL<T, VEC, NP, EXTRA...> for VEC in {pack width, 1} and NP in {1, 2, 4, 8}. */
#define MT__ROW_LAUNCH(vec, np, KERNEL, grid, threads, stream, ...)                              \
    do {                                                                                         \
        constexpr int PW = mt__pack_width<T>::value;                                             \
        if ((vec) == PW) {                                                                       \
            switch (np) {                                                                        \
                case 1: KERNEL(PW, 1)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;          \
                case 2: KERNEL(PW, 2)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;          \
                case 4: KERNEL(PW, 4)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;          \
                default: KERNEL(PW, 8)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;         \
            }                                                                                    \
        } else {                                                                                 \
            switch (np) {                                                                        \
                case 1: KERNEL(1, 1)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;           \
                case 2: KERNEL(1, 2)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;           \
                case 4: KERNEL(1, 4)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;           \
                default: KERNEL(1, 8)<<<grid, threads, 0, stream>>>(__VA_ARGS__); break;          \
            }                                                                                    \
        }                                                                                        \
    } while (0)
/* *occ = resident blocks per SM of the KERNEL(VEC, NP) instance that MT__ROW_LAUNCH would pick */
#define MT__ROW_OCC(vec, np, KERNEL, threads, occ)                                                          \
    do {                                                                                                    \
        constexpr int PW = mt__pack_width<T>::value;                                                        \
        if ((vec) == PW) {                                                                                  \
            switch (np) {                                                                                   \
                case 1: *(occ) = mt__occupancy(cx, (const void *)KERNEL(PW, 1), threads); break; \
                case 2: *(occ) = mt__occupancy(cx, (const void *)KERNEL(PW, 2), threads); break; \
                case 4: *(occ) = mt__occupancy(cx, (const void *)KERNEL(PW, 4), threads); break; \
                default: *(occ) = mt__occupancy(cx, (const void *)KERNEL(PW, 8), threads); break; \
            }                                                                                               \
        } else {                                                                                            \
            switch (np) {                                                                                   \
                case 1: *(occ) = mt__occupancy(cx, (const void *)KERNEL(1, 1), threads); break;  \
                case 2: *(occ) = mt__occupancy(cx, (const void *)KERNEL(1, 2), threads); break;  \
                case 4: *(occ) = mt__occupancy(cx, (const void *)KERNEL(1, 4), threads); break;  \
                default: *(occ) = mt__occupancy(cx, (const void *)KERNEL(1, 8), threads); break; \
            }                                                                                               \
        }                                                                                                   \
    } while (0)
#define MT__LNF(V, P) mt__layernorm_fwd_kernel<T, V, P>
#define MT__RMSF(V, P) mt__rmsnorm_fwd_kernel<T, V, P>
#define MT__LNB(V, P) mt__norm_bwd_kernel<T, V, P, 0>
#define MT__RMSB(V, P) mt__norm_bwd_kernel<T, V, P, 1>

/* The persistent forwards (norm_fwd_warp 4: next row in registers; 5: ring of rows in shared memory,
 * 16-byte packs only, else as 4).  Grid: the warps that fit at once, cut down so that every warp
 * walks the same number of rows (+-1): at 8192 rows a warp of 2640 would otherwise run 3 or 4 rows
 * and the fourth round would run with 10 % of the warps. */
template <typename T, int RMS>
static inline mt_status mt__norm_fwd_pipe_launch(const mt_ctx *cx, int opt, int vec, int np, void *out, void *mean,
                                                 void *rstd, const void *inp, const void *w, const void *b, int N,
                                                 int C) {
    constexpr int PW = mt__pack_width<T>::value, NS = MT__NORM_FWD_RING;
    const void *fn = NULL;
    size_t smem = 0;
    if (opt == 5 && vec == PW) {
        smem = (size_t)4 * NS * C * sizeof(T); /* 4 warps x NS rows */
        if (smem + 1024 > cx->gpu->smem_optin_nbytes) opt = 4;
    } else {
        opt = 4;
    }
    if (opt == 5) {
#define MT__NFR_FN(P) (const void *)mt__norm_fwd_ring_kernel<T, P, RMS, NS>
        fn = np == 1 ? MT__NFR_FN(1) : np == 2 ? MT__NFR_FN(2) : np == 4 ? MT__NFR_FN(4) : MT__NFR_FN(8);
#undef MT__NFR_FN
        if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
            return mt_errorf(MT_ERR_CUDA, "norm fwd: cudaFuncSetAttribute: %s", cudaGetErrorString(cudaGetLastError()));
    } else {
        smem = 0;
#define MT__NFP_FN(V, P) (const void *)mt__norm_fwd_warp_pipe_kernel<T, V, P, RMS>
        if (vec == PW) fn = np == 1 ? MT__NFP_FN(PW, 1) : np == 2 ? MT__NFP_FN(PW, 2) : np == 4 ? MT__NFP_FN(PW, 4) : MT__NFP_FN(PW, 8);
        else fn = np == 1 ? MT__NFP_FN(1, 1) : np == 2 ? MT__NFP_FN(1, 2) : np == 4 ? MT__NFP_FN(1, 4) : MT__NFP_FN(1, 8);
#undef MT__NFP_FN
    }
    const int occ = mt__occupancy_smem(cx, fn, 128, smem);
    const long maxw = (long)cx->gpu->sm_count * occ * 4;
    const long per = (N + maxw - 1) / maxw, warps = (N + per - 1) / per; /* rows per warp, warps */
    const int nblk = (int)((warps + 3) / 4);
    void *args[] = {&out, &mean, &rstd, (void *)&inp, (void *)&w, (void *)&b, &N, &C};
    if (cudaLaunchKernel(fn, dim3(nblk), dim3(128), args, smem, MT__STREAM(cx)) != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "norm fwd: launch: %s", cudaGetErrorString(cudaGetLastError()));
    MT__LAUNCHED(cx, opt == 5 ? "mt__norm_fwd_ring_kernel" : "mt__norm_fwd_warp_pipe_kernel");
    return MT_OK;
}

/* The warp-per-row forwards of both norms (RMS = 0: LayerNorm, 1: RMSNorm) as cx->gpu->norm_fwd_warp
 * picks them; *done = 0 when the option is 0 or the row is too wide for a warp. */
template <typename T, int RMS>
static inline mt_status mt__norm_fwd_warp_launch(const mt_ctx *cx, int vec, void *out, void *mean, void *rstd,
                                                 const void *inp, const void *w, const void *b, int N, int C,
                                                 int *done) {
    int np = 1, opt = cx->gpu->norm_fwd_warp;
    *done = 0;
    if (!opt || !mt__warp_np(C, vec, &np)) return MT_OK;
    if (opt == 4 || opt == 5) {
        MT_TRY((mt__norm_fwd_pipe_launch<T, RMS>(cx, opt, vec, np, out, mean, rstd, inp, w, b, N, C)));
        *done = 1;
        return MT_OK;
    }
    if (opt == 6) { /* w (and b) as float in dynamic shared memory: C floats each, <= 16 KB */
        constexpr int NWB = MT__NORM_FWD_SMEM_WARPS;
        const size_t smem = (size_t)(RMS ? 1 : 2) * C * sizeof(float);
#define MT__NFS(V, P) mt__norm_fwd_smem_kernel<T, V, P, RMS>
        if (vec == mt__pack_width<T>::value) {
            constexpr int PW = mt__pack_width<T>::value;
            switch (np) {
                case 1: MT__NFS(PW, 1)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
                case 2: MT__NFS(PW, 2)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
                case 4: MT__NFS(PW, 4)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
                default: MT__NFS(PW, 8)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
            }
        } else {
            switch (np) {
                case 1: MT__NFS(1, 1)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
                case 2: MT__NFS(1, 2)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
                case 4: MT__NFS(1, 4)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
                default: MT__NFS(1, 8)<<<mt__cdiv(N, NWB), NWB * 32, smem, MT__STREAM(cx)>>>((T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C); break;
            }
        }
#undef MT__NFS
        MT__LAUNCHED(cx, "mt__norm_fwd_smem_kernel");
        *done = 1;
        return MT_OK;
    }
#define MT__NFW(V, P) mt__norm_fwd_warp_kernel<T, V, P, RMS>
#define MT__NFW1(V, P) mt__norm_fwd_warp1p_kernel<T, V, P, RMS, 2>
#define MT__NFW13(V, P) mt__norm_fwd_warp1p_kernel<T, V, P, RMS, 3>
    if (opt == 3)
        MT__ROW_LAUNCH(vec, np, MT__NFW13, mt__cdiv(N, 8), 256, MT__STREAM(cx), (T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C);
    else if (opt == 2)
        MT__ROW_LAUNCH(vec, np, MT__NFW1, mt__cdiv(N, 8), 256, MT__STREAM(cx), (T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C);
    else
        MT__ROW_LAUNCH(vec, np, MT__NFW, mt__cdiv(N, 8), 256, MT__STREAM(cx), (T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C);
#undef MT__NFW13
#undef MT__NFW1
#undef MT__NFW
    MT__LAUNCHED(cx, opt >= 2 ? "mt__norm_fwd_warp1p_kernel" : "mt__norm_fwd_warp_kernel");
    *done = 1;
    return MT_OK;
}

template <typename T>
static inline mt_status mt__layernorm_fwd_launch(const mt_ctx *cx, void *out, void *mean, void *rstd, const void *inp,
                                                 const void *w, const void *b, int N, int C) {
    constexpr int PW = mt__pack_width<T>::value;
    int vec = (C % PW == 0 && mt__al16(out) && mt__al16(inp) && mt__al16(w) && mt__al16(b)) ? PW : 1;
    int np = 1, threads = 32, done = 0;
    MT_TRY((mt__norm_fwd_warp_launch<T, 0>(cx, vec, out, mean, rstd, inp, w, b, N, C, &done)));
    if (done) return MT_OK;
    MT_TRY(mt__row_geom("layernorm_fwd", C, vec, 1024, &np, &threads));
    MT__ROW_LAUNCH(vec, np, MT__LNF, N, threads, MT__STREAM(cx), (T *)out, (float *)mean, (float *)rstd,
                   (const T *)inp, (const T *)w, (const T *)b, N, C);
    MT__LAUNCHED(cx, "mt__layernorm_fwd_kernel");
    return MT_OK;
}

template <typename T>
static inline mt_status mt__rmsnorm_fwd_launch(const mt_ctx *cx, void *out, void *rstd, const void *inp,
                                               const void *w, int N, int C) {
    constexpr int PW = mt__pack_width<T>::value;
    int vec = (C % PW == 0 && mt__al16(out) && mt__al16(inp) && mt__al16(w)) ? PW : 1;
    int np = 1, threads = 32, done = 0;
    MT_TRY((mt__norm_fwd_warp_launch<T, 1>(cx, vec, out, NULL, rstd, inp, w, NULL, N, C, &done)));
    if (done) return MT_OK;
    MT_TRY(mt__row_geom("rmsnorm_fwd", C, vec, 1024, &np, &threads));
    MT__ROW_LAUNCH(vec, np, MT__RMSF, N, threads, MT__STREAM(cx), (T *)out, (float *)rstd, (const T *)inp,
                   (const T *)w, N, C);
    MT__LAUNCHED(cx, "mt__rmsnorm_fwd_kernel");
    return MT_OK;
}

/* dw/db += the column sums of nblk partial rows (when either is wanted). */
template <typename T>
static inline mt_status mt__norm_finalize(const mt_ctx *cx, int rms, void *dw, void *db, const float *partial,
                                          int nblk, int C) {
    if (!dw && !db) return MT_OK;
    dim3 blk(32, 32);
    mt__norm_wgrad_finalize_kernel<T><<<mt__cdiv(C, 32), blk, 0, MT__STREAM(cx)>>>(
        (T *)dw, rms ? (T *)NULL : (T *)db, partial, nblk, rms ? 1 : 2, C);
    MT__LAUNCHED(cx, "mt__norm_wgrad_finalize_kernel");
    return MT_OK;
}

/* The pipelined backward (mt__norm_bwd_pipe_kernel) when it applies: 16-byte packs, at most 512
 * packs per row, the ring of G groups fitting in shared memory.  One pack per thread up to 256 packs,
 * two above (np1 = 1: two from 129 packs on).  *done = 0 when it does not apply. */
template <typename T>
static inline mt_status mt__norm_bwd_pipe_launch(const mt_ctx *cx, const char *op, int rms, int np1, int *done,
                                                 void *dinp, void *dw, void *db, const void *dout,
                                                 const void *dresid, const void *inp, const void *w,
                                                 const void *mean, const void *rstd, int N, int C) {
    constexpr int PW = mt__pack_width<T>::value;
    *done = 0;
    int packs = C / PW;
    /* packs per thread: one up to 256 packs, two above (measured at C = 1600 bf16 on an H200, LN
     * 8192 rows: one 34 us, two 37 us); np1 = 1 (variant 5): two from 129 packs on, the first rule */
    if (packs > 512) return MT_OK;
    int np = packs <= (np1 ? 128 : 256) ? 1 : 2;
    int tg = ((packs + np - 1) / np + 31) / 32 * 32;
    int groups = (np == 1 ? 768 : 512) / tg;
    if (groups > 8) groups = 8;
    size_t limit = cx->gpu->smem_optin_nbytes > 1024 ? cx->gpu->smem_optin_nbytes - 1024 : 0; /* static shm */
    size_t per_group = (size_t)MT__NORM_BWD_RING * 3 * C * sizeof(T); /* slots x (inp, dout, dresid) */
    while (groups > 1 && groups * per_group > limit) groups--;
    if (groups * per_group > limit) return MT_OK;
    size_t smem = groups * per_group;
    const void *fn = np == 1 ? (rms ? (const void *)mt__norm_bwd_pipe_kernel<T, 1, 1> : (const void *)mt__norm_bwd_pipe_kernel<T, 1, 0>)
                             : (rms ? (const void *)mt__norm_bwd_pipe_kernel<T, 2, 1> : (const void *)mt__norm_bwd_pipe_kernel<T, 2, 0>);
    if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "%s: cudaFuncSetAttribute: %s", op, cudaGetErrorString(cudaGetLastError()));
    int threads = groups * tg, NV = rms ? 1 : 2;
    int occ = mt__occupancy_smem(cx, fn, threads, smem);
    int nblk = cx->gpu->sm_count * occ;
    if (nblk > (N + groups - 1) / groups) nblk = (N + groups - 1) / groups;
    size_t per_blk = (size_t)NV * C * sizeof(float);
    int want = dw || db;
    if (want && (size_t)nblk * per_blk > cx->gpu->scratch_nbytes) nblk = (int)(cx->gpu->scratch_nbytes / per_blk);
    if (nblk < 1)
        return mt_errorf(MT_ERR_UNSUPPORTED, "%s: C = %d needs %zu bytes of scratch, have %zu", op, C, per_blk,
                         cx->gpu->scratch_nbytes);
    float *partial = want ? (float *)cx->gpu->scratch : NULL;
    void *args[] = {&dinp, &partial, (void *)&dout, (void *)&dresid, (void *)&inp, (void *)&w, (void *)&mean,
                    (void *)&rstd, &N, &C, &tg};
    if (cudaLaunchKernel(fn, dim3(nblk), dim3(threads), args, smem, MT__STREAM(cx)) != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "%s: launch: %s", op, cudaGetErrorString(cudaGetLastError()));
    MT__LAUNCHED(cx, "mt__norm_bwd_pipe_kernel");
    *done = 1;
    return mt__norm_finalize<T>(cx, rms, dw, db, partial, nblk, C);
}

/* Shared body of the two backwards.  rms: 0 LayerNorm, 1 RMSNorm.  cx->gpu->norm_bwd_variant:
 *   0  pipelined (two packs per thread past 128 packs) where it applies, else as 1
 *   1  warp per row where the row fits (at most 256 packs), else block per row (at most 4 per SM)
 *   2  block per row, up to 512 threads with one pack each, all resident blocks
 *   3  block per row, up to 128 threads, 2 packs per thread;  4: up to 64 threads, 4 packs
 *   5  pipelined with one pack per thread (rows up to 256 packs), else as 1 */
template <typename T>
static inline mt_status mt__norm_bwd_launch(const mt_ctx *cx, const char *op, int rms, void *dinp, void *dw, void *db,
                                            const void *dout, const void *dresid, const void *inp, const void *w,
                                            const void *mean, const void *rstd, int N, int C) {
    constexpr int PW = mt__pack_width<T>::value;
    int NV = rms ? 1 : 2;
    int vec = (C % PW == 0 && mt__al16(dinp) && mt__al16(dout) && mt__al16(dresid) && mt__al16(inp) && mt__al16(w))
                  ? PW : 1;
    int np = 1, threads = 32;
    int want = dw || db;
    size_t per_blk = (size_t)NV * C * sizeof(float);
    int var = cx->gpu->norm_bwd_variant;
    if (var < 0 || var > 5) var = 0;
    if ((var == 0 || var == 5) && vec == PW) {
        int done = 0;
        MT_TRY(mt__norm_bwd_pipe_launch<T>(cx, op, rms, var == 5, &done, dinp, dw, db, dout, dresid, inp, w, mean,
                                           rstd, N, C));
        if (done) return MT_OK;
    }
    if ((var == 0 || var == 1 || var == 5) && mt__warp_np(C, vec, &np)) {
        /* one warp per row, 4 warps per block, as many blocks as fit at once */
        size_t smem = (size_t)4 * NV * np * vec * 32 * sizeof(float);
        const void *fn = NULL;
#define MT__NBW_FN(V, P) (rms ? (const void *)mt__norm_bwd_warp_kernel<T, V, P, 1> : (const void *)mt__norm_bwd_warp_kernel<T, V, P, 0>)
        if (vec == PW) fn = np == 1 ? MT__NBW_FN(PW, 1) : np == 2 ? MT__NBW_FN(PW, 2) : np == 4 ? MT__NBW_FN(PW, 4) : MT__NBW_FN(PW, 8);
        else fn = np == 1 ? MT__NBW_FN(1, 1) : np == 2 ? MT__NBW_FN(1, 2) : np == 4 ? MT__NBW_FN(1, 4) : MT__NBW_FN(1, 8);
#undef MT__NBW_FN
        if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
            return mt_errorf(MT_ERR_CUDA, "%s: cudaFuncSetAttribute: %s", op, cudaGetErrorString(cudaGetLastError()));
        int occ = mt__occupancy_smem(cx, fn, 128, smem);
        int nblk = cx->gpu->sm_count * occ;
        if (nblk > (N + 3) / 4) nblk = (N + 3) / 4;
        if (want && (size_t)nblk * per_blk > cx->gpu->scratch_nbytes) nblk = (int)(cx->gpu->scratch_nbytes / per_blk);
        if (nblk < 1)
            return mt_errorf(MT_ERR_UNSUPPORTED, "%s: C = %d needs %zu bytes of scratch, have %zu", op, C, per_blk,
                             cx->gpu->scratch_nbytes);
        float *partial = want ? (float *)cx->gpu->scratch : NULL;
        void *args[] = {&dinp, &partial, (void *)&dout, (void *)&dresid, (void *)&inp, (void *)&w, (void *)&mean,
                        (void *)&rstd, &N, &C};
        if (cudaLaunchKernel(fn, dim3(nblk), dim3(128), args, smem, MT__STREAM(cx)) != cudaSuccess)
            return mt_errorf(MT_ERR_CUDA, "%s: launch: %s", op, cudaGetErrorString(cudaGetLastError()));
        MT__LAUNCHED(cx, "mt__norm_bwd_warp_kernel");
        return mt__norm_finalize<T>(cx, rms, dw, db, partial, nblk, C);
    }
    /* block per row: up to 512 threads, one pack each (variant 3: up to 128 threads, variant 4: up
     * to 64, with 2 or 4 packs per thread in flight) */
    int maxt = var == 3 ? 128 : var == 4 ? 64 : 512;
    MT_TRY(mt__row_geom(op, C, vec, maxt, &np, &threads));
    /* as many blocks as fit on the GPU at once (each then walks ~N/nblk rows), at most 1024: the
     * partition, hence the summation order, depends only on N, C and the device */
    int occ = 0;
    if (rms) MT__ROW_OCC(vec, np, MT__RMSB, threads, &occ);
    else MT__ROW_OCC(vec, np, MT__LNB, threads, &occ);
    /* resident blocks per SM used: all that fit, at most 4 when a default falls back here */
    int cap = (var >= 2 && var <= 4) ? (1 << 20) : 4;
    if (occ < 1) occ = 1;
    int nblk = cx->gpu->sm_count * (occ < cap ? occ : cap);
    if (nblk > MT__NORM_BWD_MAX_BLOCKS) nblk = MT__NORM_BWD_MAX_BLOCKS;
    if (nblk > N) nblk = N;
    if (want && (size_t)nblk * per_blk > cx->gpu->scratch_nbytes) nblk = (int)(cx->gpu->scratch_nbytes / per_blk);
    if (nblk < 1)
        return mt_errorf(MT_ERR_UNSUPPORTED, "%s: C = %d needs %zu bytes of scratch, have %zu", op, C, per_blk,
                         cx->gpu->scratch_nbytes);
    float *partial = want ? (float *)cx->gpu->scratch : NULL;
    if (rms)
        MT__ROW_LAUNCH(vec, np, MT__RMSB, nblk, threads, MT__STREAM(cx), (T *)dinp, partial, (const T *)dout,
                       (const T *)dresid, (const T *)inp, (const T *)w, (const float *)mean, (const float *)rstd, N, C);
    else
        MT__ROW_LAUNCH(vec, np, MT__LNB, nblk, threads, MT__STREAM(cx), (T *)dinp, partial, (const T *)dout,
                       (const T *)dresid, (const T *)inp, (const T *)w, (const float *)mean, (const float *)rstd, N, C);
    MT__LAUNCHED(cx, "mt__norm_bwd_kernel");
    return mt__norm_finalize<T>(cx, rms, dw, db, partial, nblk, C);
}

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_layernorm_fwd_gpu(const mt_ctx *cx, void *out, void *mean, void *rstd, const void *inp,
                                      const void *w, const void *b, int N, int C) {
    if (N <= 0 || C <= 0) return N == 0 ? MT_OK : mt_errorf(MT_ERR_SHAPE, "layernorm_fwd: N = %d, C = %d", N, C);
    MT__GPU_DISPATCH(cx, "layernorm_fwd", return mt__layernorm_fwd_launch<T>(cx, out, mean, rstd, inp, w, b, N, C));
    return MT_OK;
}

MT_API mt_status mt_rmsnorm_fwd_gpu(const mt_ctx *cx, void *out, void *rstd, const void *inp, const void *w, int N,
                                    int C) {
    if (N <= 0 || C <= 0) return N == 0 ? MT_OK : mt_errorf(MT_ERR_SHAPE, "rmsnorm_fwd: N = %d, C = %d", N, C);
    MT__GPU_DISPATCH(cx, "rmsnorm_fwd", return mt__rmsnorm_fwd_launch<T>(cx, out, rstd, inp, w, N, C));
    return MT_OK;
}

MT_API mt_status mt__norm_bwd_gpu(const mt_ctx *cx, const char *op, int rms, void *dinp, void *dw, void *db,
                                  const void *dout, const void *dresid, const void *inp, const void *w,
                                  const void *mean, const void *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return N == 0 ? MT_OK : mt_errorf(MT_ERR_SHAPE, "%s: N = %d, C = %d", op, N, C);
    MT__GPU_DISPATCH(cx, op,
                     return mt__norm_bwd_launch<T>(cx, op, rms, dinp, dw, db, dout, dresid, inp, w, mean, rstd, N, C));
    return MT_OK;
}

MT_API mt_status mt_layernorm_bwd_gpu(const mt_ctx *cx, void *dinp, void *dw, void *db, const void *dout,
                                      const void *dresid, const void *inp, const void *w, const void *mean,
                                      const void *rstd, int N, int C) {
    if (!mean || !rstd) return mt_errorf(MT_ERR_ARG, "layernorm_bwd: mean and rstd from the forward are required");
    return mt__norm_bwd_gpu(cx, "layernorm_bwd", 0, dinp, dw, db, dout, dresid, inp, w, mean, rstd, N, C);
}

MT_API mt_status mt_rmsnorm_bwd_gpu(const mt_ctx *cx, void *dinp, void *dw, const void *dout, const void *dresid,
                                    const void *inp, const void *w, const void *rstd, int N, int C) {
    if (!rstd) return mt_errorf(MT_ERR_ARG, "rmsnorm_bwd: rstd from the forward is required");
    return mt__norm_bwd_gpu(cx, "rmsnorm_bwd", 1, dinp, dw, NULL, dout, dresid, inp, w, NULL, rstd, N, C);
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_NORMS_CUH */
