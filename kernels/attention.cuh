/* kernels/attention.cuh — fused flash attention (forward and backward) for Hopper, bf16.
 *
 *   size_t ws = mt_flash_attention_bwd_workspace_nbytes(B, T, Hkv, G, D);   // allocate once
 *   MT_TRY(mt_flash_attention_fwd(&cx, out, lse, qkv, B, T, Hkv, G, D, 1));
 *   MT_TRY(mt_flash_attention_bwd(&cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, D, 1, ws_ptr, ws));
 *
 * Defines
 *   mt_flash_attention_fwd, mt_flash_attention_bwd, mt_flash_attention_bwd_workspace_nbytes,
 *   mt_flash_attention_supported
 *
 * Rules
 *   - Layouts (the model's, no transposes): qkv (B, T, Hkv, G+2, D) bf16, per key/value group the
 *     G query heads, then K, then V; out and dout (B, T, H, D) bf16 with head h = g*G + j;
 *     lse (B, H, T) fp32, natural log of sum_j exp(s_ij), s = q.k / sqrt(D); dqkv like qkv.
 *   - dqkv is assigned (=), never accumulated. Every element of out, lse and dqkv is written.
 *   - Head dims 64 and 128 run here; any other D returns MT_ERR_UNSUPPORTED without logging, so
 *     the caller can fall back to the reference kernel. Any T >= 1 (no multiple-of-tile rule).
 *   - Causal means key u is visible to query t when u <= t (same T for queries and keys).
 *   - Backward: dK and dV of a key block are summed over all G heads of the group inside one CTA
 *     (deterministic). dQ is accumulated in fp32 in the workspace with atomic adds from the
 *     key-block CTAs (so dQ's last bits may differ between runs), then scaled and rounded to bf16;
 *     with MT_FLASH_DETERMINISTIC, a separate pass per query block computes dQ instead (bitwise
 *     reproducible, more matrix work).
 *   - The workspace (see mt_flash_attention_bwd_workspace_nbytes) holds delta = rowsum(dout*out)
 *     (B, H, T) fp32 and the dQ accumulator (B, H, T rounded up to 64, D) fp32; the launchers never
 *     allocate.
 *   - All work is asynchronous on cx->stream; pointers must be device memory, 16-byte aligned.
 *
 * Design (FlashAttention-2 on mma.sync m16n8k16 bf16 -> fp32, ldmatrix, cp.async double buffers):
 *   forward   one CTA per (query block of BM rows, head, batch); each warp owns 16*MT query rows,
 *             streams key/value tiles of BN rows through shared memory (two stages), keeps O and
 *             the running max/sum in registers, and writes O through shared memory (16-byte stores).
 *   backward  1) delta = rowsum(dO*O), zero the dQ accumulator;  2) one CTA per (key block of 128
 *             rows, kv group, batch), 8 warps: for each head of the group and each query block of 64
 *             rows, S = Q K^T and dP = dO V^T in 32x32 warp tiles, P = exp(S - lse) and
 *             dS = P (dP - delta) to shared memory, dV += P^T dO and dK += dS^T Q in registers
 *             (32 keys x D/2 per warp, for the whole CTA), dQ += dS K with atomics;
 *             3) dQ accumulator * scale -> bf16 into dqkv. (mt__flash_bwd_kernel is the same
 *             algorithm with 16 keys per warp and P kept in registers; the benchmark times both.)
 *   backward on wgmma (mt__flash_bwd3_run, hd 64, sm_90a; the default for hd 64): the same three
 *             launches; step 2 with Hopper's warpgroup MMA: 2 warpgroups x 64 keys per CTA, keys as
 *             the M dimension so P^T and dS^T stay in registers as the A operand of dV and dK, K/V
 *             resident and Q/dO double-buffered in shared memory (128-byte swizzle), dS^T through
 *             shared memory for dQ (see mt__flash_bwd3_kernel); by default pipelined: a query
 *             block's first products run together with the previous block's dK and dQ
 *             (mt__flash_bwd3p_kernel, Q/dO in three stages).
 *             hd 128: the same tiling with tiles stored as two 64-column halves, dK/dV in two
 *             column halves per warpgroup and dQ columns split between the warpgroups (see
 *             mt__flash_bwd3_128_kernel); by default pipelined: the previous block's dK runs with
 *             a block's first products (mt__flash_bwd3p_128_kernel).
 *   forward on wgmma (mt__flash_fwd_wg_run, sm_90a; the default at every length): warp-specialized,
 *             a producer warpgroup loading key/value tiles of 128 rows into four (hd 64) or three
 *             (hd 128) stages behind mbarriers, two consumer warpgroups x 64 query rows taking turns
 *             at the tensor cores: S = Q K^T from shared memory, O += P V with P from registers
 *             (see mt__flash_fwd4_kernel). At hd 128 the Q/K/V tiles are two 64-column halves.
 *   Shared-memory tiles are rows of D bf16 with 16-byte chunks XOR-swizzled by (row & 7), so that
 *   ldmatrix and cp.async are free of bank conflicts.
 */
#ifndef MT_KERNELS_ATTENTION_CUH
#define MT_KERNELS_ATTENTION_CUH

/* Option: define MT_FLASH_DETERMINISTIC to 1 before including for a bitwise reproducible backward (dQ by
 * a separate pass over key tiles instead of fp32 atomics: about 7/5 of the matrix work, no dQ
 * accumulator in the workspace). */
#ifndef MT_FLASH_DETERMINISTIC
#define MT_FLASH_DETERMINISTIC 0
#endif
/* Option: MT_FLASH_BWD_PIPE 0 runs the wgmma backwards without pipelining across query blocks
 * (mt__flash_bwd3_kernel<64, 1> and mt__flash_bwd3_128_kernel; for comparison). */
#ifndef MT_FLASH_BWD_PIPE
#define MT_FLASH_BWD_PIPE 1
#endif
/* Option: MT_FLASH_BWD_BULK 1 makes the pipelined backwards (hd 64 and 128) add dQ through the copy
 * engine, one bulk reduction per block into a tiled accumulator (their BULK template argument; to
 * compare in the trainer: not yet measured, see kernels/ATTENTION_NOTES.md v21). */
#ifndef MT_FLASH_BWD_BULK
#define MT_FLASH_BWD_BULK 0
#endif

#include "../mt/core.h"
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

/* ------------------------------------------------------------------ device helpers */

__device__ __forceinline__ uint32_t mt__fa_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronous; when !pred, the 16 bytes are zero-filled (nothing read). */
__device__ __forceinline__ void mt__fa_cp16(uint32_t dst, const void *src, bool pred) {
    int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
/* 4 bytes global -> shared, zero-filled when !pred. */
__device__ __forceinline__ void mt__fa_cp4(uint32_t dst, const void *src, bool pred) {
    int n = pred ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void mt__fa_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void mt__fa_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void mt__fa_ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}
__device__ __forceinline__ void mt__fa_ldsm_x4_t(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}

/* c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col) */
__device__ __forceinline__ void mt__fa_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* two floats -> packed bf16x2, `lo` in the low half (the lower column of an mma fragment) */
__device__ __forceinline__ uint32_t mt__fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ float mt__fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* Byte offset of (row, 16-byte chunk) in a swizzled tile whose rows hold COLS bf16 (COLS >= 64). */
template <int COLS>
__device__ __forceinline__ uint32_t mt__fa_swz(int row, int chunk) {
    return (uint32_t)(row * (COLS * 2) + ((chunk ^ (row & 7)) << 4));
}

/* Asynchronously load ROWS rows x D bf16 (global row stride ld elements; rows row0.. of a matrix with
 * `nrows` valid rows; rows past the end are zero-filled) into a swizzled shared tile at s.
 * Thread tid copies chunk tid % (D/8) of rows tid / (D/8) + k * NT/(D/8): one base address per thread. */
template <int ROWS, int D, int NT>
__device__ __forceinline__ void mt__fa_load_tile(uint32_t s, const __nv_bfloat16 *g, size_t ld, int row0, int nrows,
                                                 int tid) {
    constexpr int CPR = D / 8;
    constexpr int RS = NT / CPR; /* rows per pass */
    static_assert(NT % CPR == 0 && ROWS % RS == 0 && RS % 8 == 0, "tile rows must divide among the threads");
    const int c = tid % CPR, r0 = tid / CPR;
    const __nv_bfloat16 *src = g + (size_t)(row0 + r0) * ld + c * 8;
    const uint32_t dst = s + mt__fa_swz<D>(r0, c); /* (r0 + k*RS) & 7 == r0 & 7: same swizzle every pass */
#pragma unroll
    for (int k = 0; k < ROWS / RS; k++) {
        const bool ok = row0 + r0 + k * RS < nrows;
        mt__fa_cp16(dst + k * RS * D * 2, ok ? (const void *)(src + (size_t)k * RS * ld) : (const void *)g, ok);
    }
}

/* ------------------------------------------------------------------ forward */

/* One CTA: BM query rows of head h = blockIdx.y, batch blockIdx.z. NW warps of 16*MT rows each. */
template <int D, int BM, int BN, int NW>
__global__ void __launch_bounds__(NW * 32)
mt__flash_fwd_kernel(__nv_bfloat16 *__restrict__ out, float *__restrict__ lse, const __nv_bfloat16 *__restrict__ qkv,
                     int T, int Hkv, int G, int causal, float scale_log2) {
    constexpr int NT = NW * 32;
    constexpr int MT = BM / (16 * NW);  /* m16 tiles per warp */
    constexpr int NN = BN / 8;          /* n8 tiles of S per row block */
    constexpr int ND = D / 8;           /* n8 tiles of O */
    static_assert(MT >= 1 && MT * 16 * NW == BM, "BM must be 16 * NW * MT");
    static_assert(BN % 16 == 0 && D % 16 == 0 && D >= 64, "tile shapes");
    extern __shared__ __align__(128) unsigned char mt__fa_smem[];
    __nv_bfloat16 *sQ = reinterpret_cast<__nv_bfloat16 *>(mt__fa_smem);
    const uint32_t sQa = mt__fa_smem_addr(sQ);
    const uint32_t sKa = sQa + BM * D * 2;      /* 2 stages of BN x D */
    const uint32_t sVa = sKa + 2 * BN * D * 2;  /* 2 stages of BN x D */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int H = Hkv * G;
    const int mb = causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int g = h / G, j = h - g * G;
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    const __nv_bfloat16 *qb = qkv + (size_t)b * T * ld + ((size_t)g * (G + 2) + j) * D;
    const __nv_bfloat16 *kb = qkv + (size_t)b * T * ld + ((size_t)g * (G + 2) + G) * D;
    const __nv_bfloat16 *vb = kb + D;
    const int m0 = mb * BM;
    const int n_end = causal ? min(T, m0 + BM) : T;
    const int ntiles = (n_end + BN - 1) / BN;
    const int wr0 = m0 + warp * MT * 16; /* first query row of this warp */

    mt__fa_load_tile<BM, D, NT>(sQa, qb, ld, m0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sKa, kb, ld, 0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sVa, vb, ld, 0, T, tid);
    mt__fa_cp_commit();

    float o[MT][ND][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int dn = 0; dn < ND; dn++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mt][dn][e] = 0.f;
        mrow[mt][0] = mrow[mt][1] = -INFINITY;
        lrow[mt][0] = lrow[mt][1] = 0.f;
    }

    for (int t = 0; t < ntiles; t++) {
        const int n0 = t * BN;
        const int st = t & 1;
        if (t + 1 < ntiles) {
            const int s1 = (t + 1) & 1;
            mt__fa_load_tile<BN, D, NT>(sKa + s1 * BN * D * 2, kb, ld, n0 + BN, T, tid);
            mt__fa_load_tile<BN, D, NT>(sVa + s1 * BN * D * 2, vb, ld, n0 + BN, T, tid);
            mt__fa_cp_commit();
            mt__fa_cp_wait<1>();
        } else {
            mt__fa_cp_wait<0>();
        }
        __syncthreads();
        const uint32_t sK = sKa + st * BN * D * 2, sV = sVa + st * BN * D * 2;
        /* causal: a key tile wholly after this warp's last row adds nothing (its barriers still run) */
        if (causal && n0 > wr0 + MT * 16 - 1) {
            __syncthreads();
            continue;
        }

        /* S = Q K^T */
        float s[MT][NN][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nn = 0; nn < NN; nn++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[mt][nn][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                mt__fa_ldsm_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                               sQa + mt__fa_swz<D>(warp * MT * 16 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
            for (int np = 0; np < NN / 2; np++) {
                uint32_t b0, b1, b2, b3;
                mt__fa_ldsm_x4(b0, b1, b2, b3,
                               sK + mt__fa_swz<D>(np * 16 + ((lane >> 4) << 3) + (lane & 7), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mt__fa_mma(s[mt][2 * np], a[mt], b0, b1);
                    mt__fa_mma(s[mt][2 * np + 1], a[mt], b2, b3);
                }
            }
        }

        /* mask: keys past T, and keys after the query when causal */
        if (n0 + BN > T || (causal && n0 + BN - 1 > wr0)) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nn = 0; nn < NN; nn++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int row = wr0 + mt * 16 + (lane >> 2) + (e >> 1) * 8;
                        int col = n0 + nn * 8 + (lane & 3) * 2 + (e & 1);
                        if (col >= T || (causal && col > row)) s[mt][nn][e] = -INFINITY;
                    }
        }

        /* online softmax (base 2, scores scaled by scale*log2(e)) */
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = mrow[mt][r];
#pragma unroll
                for (int nn = 0; nn < NN; nn++) mx = fmaxf(mx, fmaxf(s[mt][nn][2 * r], s[mt][nn][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float ms = (mx == -INFINITY) ? 0.f : mx * scale_log2;
                const float alpha = mt__fa_exp2(mrow[mt][r] * scale_log2 - ms); /* 0 when the old max is -inf */
                mrow[mt][r] = mx;
                float rs = 0.f;
#pragma unroll
                for (int nn = 0; nn < NN; nn++) {
                    float p0 = mt__fa_exp2(fmaf(s[mt][nn][2 * r], scale_log2, -ms));
                    float p1 = mt__fa_exp2(fmaf(s[mt][nn][2 * r + 1], scale_log2, -ms));
                    s[mt][nn][2 * r] = p0;
                    s[mt][nn][2 * r + 1] = p1;
                    rs += p0 + p1;
                }
                lrow[mt][r] = lrow[mt][r] * alpha + rs;
#pragma unroll
                for (int dn = 0; dn < ND; dn++) {
                    o[mt][dn][2 * r] *= alpha;
                    o[mt][dn][2 * r + 1] *= alpha;
                }
            }

        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                a[mt][0] = mt__fa_pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                a[mt][1] = mt__fa_pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                a[mt][2] = mt__fa_pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                a[mt][3] = mt__fa_pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < ND / 2; dp++) {
                uint32_t b0, b1, b2, b3;
                mt__fa_ldsm_x4_t(b0, b1, b2, b3, sV + mt__fa_swz<D>(kk * 16 + (lane & 15), dp * 2 + (lane >> 4)));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mt__fa_mma(o[mt][2 * dp], a[mt], b0, b1);
                    mt__fa_mma(o[mt][2 * dp + 1], a[mt], b2, b3);
                }
            }
        }
        __syncthreads(); /* this stage is refilled by the next iteration's prefetch */
    }

    /* finish: O / l, lse = max*scale + log(l); stage O through this warp's rows of sQ */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = lrow[mt][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int lrow_i = warp * MT * 16 + mt * 16 + (lane >> 2) + r * 8;
            const int row = m0 + lrow_i;
            if ((lane & 3) == 0 && row < T)
                lse[((size_t)b * H + h) * T + row] =
                    l > 0.f ? (mrow[mt][r] * scale_log2 + __log2f(l)) * 0.69314718055994531f : -INFINITY;
#pragma unroll
            for (int dn = 0; dn < ND; dn++) {
                uint32_t v = mt__fa_pack(o[mt][dn][2 * r] * inv, o[mt][dn][2 * r + 1] * inv);
                unsigned char *p = mt__fa_smem + mt__fa_swz<D>(lrow_i, dn) + (lane & 3) * 4;
                *reinterpret_cast<uint32_t *>(p) = v;
            }
        }
    __syncwarp();
    constexpr int WCH = MT * 16 * ND; /* 16-byte chunks of this warp's rows */
#pragma unroll
    for (int it = 0; it < (WCH + 31) / 32; it++) {
        int i = it * 32 + lane;
        if (i < WCH) {
            int r = i / ND, c = i % ND;
            int lr = warp * MT * 16 + r, row = m0 + lr;
            if (row < T) {
                uint4 v = *reinterpret_cast<const uint4 *>(mt__fa_smem + mt__fa_swz<D>(lr, c));
                *reinterpret_cast<uint4 *>(out + (((size_t)b * T + row) * H + h) * D + c * 8) = v;
            }
        }
    }
}

/* ------------------------------------------------------------------ backward */

/* delta (B,H,T) = rowsum(dout * out) in fp32; zero dq_acc (B,H,T,D) unless it is NULL. One thread per 16-byte chunk of a
 * (b, t, h) row; the D/8 lanes of a row (a power of two dividing 32) reduce by shuffles. */
__global__ void mt__flash_bwd_pre_kernel(float *__restrict__ delta, float *__restrict__ dq_acc,
                                         const __nv_bfloat16 *__restrict__ dout, const __nv_bfloat16 *__restrict__ out,
                                         int B, int T, int H, int D) {
    const int CPR = D / 8;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t nrows = (size_t)B * T * H;
    const size_t row = i / CPR; /* (b, t, h); whole rows per warp, so the shuffles below see one row */
    const int c = (int)(i % CPR);
    float acc = 0.f;
    if (row < nrows) {
        uint4 vo = *reinterpret_cast<const uint4 *>(out + row * D + c * 8);
        uint4 vd = *reinterpret_cast<const uint4 *>(dout + row * D + c * 8);
        const __nv_bfloat162 *ho = reinterpret_cast<const __nv_bfloat162 *>(&vo);
        const __nv_bfloat162 *hd = reinterpret_cast<const __nv_bfloat162 *>(&vd);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 fo = __bfloat1622float2(ho[k]), fd = __bfloat1622float2(hd[k]);
            acc = fmaf(fo.x, fd.x, acc);
            acc = fmaf(fo.y, fd.y, acc);
        }
    }
    for (int off = 1; off < CPR; off <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (row < nrows) {
        const int h = (int)(row % H);
        const size_t bt = row / H;
        const int t = (int)(bt % T), b = (int)(bt / T);
        const size_t bht = ((size_t)b * H + h) * T + t;
        if (c == 0) delta[bht] = acc;
        if (dq_acc) {
            float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
            float4 *dst = reinterpret_cast<float4 *>(dq_acc + bht * D + c * 8);
            dst[0] = z;
            dst[1] = z;
        }
    }
}

/* dqkv's query slots = bf16(dq_acc * scale). One thread per 8 elements. */
__global__ void mt__flash_bwd_post_kernel(__nv_bfloat16 *__restrict__ dqkv, const float *__restrict__ dq_acc, int B,
                                          int T, int Hkv, int G, int D, float scale) {
    const int H = Hkv * G, CPR = D / 8;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * T * H * CPR) return;
    const int c = (int)(i % CPR);
    const size_t r = i / CPR;  /* (b, t, h) */
    const int h = (int)(r % H);
    const size_t bt = r / H;
    const int t = (int)(bt % T), b = (int)(bt / T);
    const int g = h / G, j = h - g * G;
    const float4 *src = reinterpret_cast<const float4 *>(dq_acc + (((size_t)b * H + h) * T + t) * D + c * 8);
    float4 x0 = src[0], x1 = src[1];
    uint4 v;
    v.x = mt__fa_pack(x0.x * scale, x0.y * scale);
    v.y = mt__fa_pack(x0.z * scale, x0.w * scale);
    v.z = mt__fa_pack(x1.x * scale, x1.y * scale);
    v.w = mt__fa_pack(x1.z * scale, x1.w * scale);
    *reinterpret_cast<uint4 *>(dqkv + (bt * Hkv + g) * (size_t)(G + 2) * D + (size_t)j * D + c * 8) = v;
}

/* The same from dq_acc in tiles (the pipelined backwards with BULK): tile (b, h, query block qb) of 64 x D
 * floats at ((b H + h) nqb + qb) * 64 D, in the order the backward's 256 threads hold their dQ
 * accumulators: float4 k of thread tid at 1024 k + 4 tid holds rows r = 16 wq + gr, r + 8 and columns
 * c = D/2 wg + 8 k + 2 tq, c + 1 (wg = tid / 128, wq = tid / 32 % 4, gr = tid % 32 / 4, tq = tid % 4),
 * so that the backward stages them in shared memory without bank conflicts and hands each tile to one
 * bulk reduction. One CTA per tile: through shared memory to 16-byte row stores. */
template <int D>
__global__ void __launch_bounds__(256) mt__flash_bwd_post_tiles_kernel(__nv_bfloat16 *__restrict__ dqkv,
                                                                       const float *__restrict__ dq_acc, int T,
                                                                       int Hkv, int G, float scale) {
    constexpr int BM = 64, LD = D + 8; /* smem rows 16 bytes longer: conflict-free both ways */
    __shared__ __align__(16) __nv_bfloat16 tile[BM * LD];
    const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z, H = Hkv * G;
    const int tid = threadIdx.x, wg = tid >> 7, wq = (tid >> 5) & 3, lane = tid & 31, gr = lane >> 2, tq = lane & 3;
    const float *src = dq_acc + (((size_t)b * H + h) * gridDim.x + qb) * (BM * D);
#pragma unroll
    for (int k = 0; k < D / 16; k++) {
        const float4 v = *reinterpret_cast<const float4 *>(src + k * 1024 + tid * 4);
        const int r = wq * 16 + gr, c = wg * (D / 2) + 8 * k + 2 * tq;
        *reinterpret_cast<uint32_t *>(tile + r * LD + c) = mt__fa_pack(v.x * scale, v.y * scale);
        *reinterpret_cast<uint32_t *>(tile + (r + 8) * LD + c) = mt__fa_pack(v.z * scale, v.w * scale);
    }
    __syncthreads();
    const int g = h / G, j = h - g * G;
#pragma unroll
    for (int k = 0; k < BM * D / 8 / 256; k++) {
        const int i = k * 256 + tid, r = i >> 3, c = (i & 7) * 8, t = qb * BM + r;
        __nv_bfloat16 *dst = dqkv + (((size_t)b * T + t) * Hkv + g) * (size_t)(G + 2) * D + (size_t)j * D + c;
        if (t < T) *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(tile + r * LD + c);
    }
}

/* One CTA: BN key rows of kv group blockIdx.y, batch blockIdx.z; NW = BN/16 warps, 16 key rows each.
 * Loops over the G heads of the group and the query blocks (BM rows) that see these keys. With DQ, it
 * also adds dQ into dq_acc (atomics); without, dQ comes from mt__flash_bwd_dq_kernel. */
template <int D, int BM, int BN, bool DQ>
__global__ void __launch_bounds__(BN * 2, 1)
mt__flash_bwd_kernel(__nv_bfloat16 *__restrict__ dqkv, float *__restrict__ dq_acc,
                     const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ lse,
                     const float *__restrict__ delta, const __nv_bfloat16 *__restrict__ qkv, int T, int Hkv, int G,
                     int causal, float scale, float scale_log2) {
    constexpr int NW = BN / 16, NT = NW * 32;
    constexpr int NQ = BM / 8;  /* n8 tiles of S^T (query columns) */
    constexpr int ND = D / 8;
    /* dQ warp tiles: MQ m16 tiles x DW columns; two m16 tiles (32x32 tiles, fewer ldmatrix per mma)
     * when that still covers BM x D with NW warps and leaves >= 32 columns per warp */
    constexpr int MQ = ((BM / 32) >= 1 && NW % (BM / 32) == 0 && D / (NW / (BM / 32 > 0 ? BM / 32 : 1)) >= 32) ? 2 : 1;
    constexpr int WM = BM / (16 * MQ);     /* dQ: warps along the query rows */
    constexpr int WD = NW / WM;            /* dQ: warps along D */
    constexpr int DW = D / WD;             /* dQ: columns per warp */
    static_assert(BM >= 64 && BM % 16 == 0, "BM >= 64 (swizzled dS rows)");
    static_assert(NW % WM == 0 && DW % 16 == 0, "dQ warp tiling");
    extern __shared__ __align__(128) unsigned char mt__fa_smem[];
    const uint32_t base = mt__fa_smem_addr(mt__fa_smem);
    const uint32_t sK = base;                          /* BN x D */
    const uint32_t sV = sK + BN * D * 2;               /* BN x D */
    const uint32_t sQ0 = sV + BN * D * 2;              /* 2 stages of BM x D */
    const uint32_t sO0 = sQ0 + 2 * BM * D * 2;         /* dO, 2 stages of BM x D */
    const uint32_t sS = sO0 + 2 * BM * D * 2;          /* dS^T, BN x BM */
    const uint32_t sL0 = sS + BN * BM * 2;             /* lse, 2 stages of BM floats */
    const uint32_t sD0 = sL0 + 2 * BM * 4;             /* delta, 2 stages of BM floats */
    const float *sLf = reinterpret_cast<const float *>(mt__fa_smem + (sL0 - base));
    const float *sDf = reinterpret_cast<const float *>(mt__fa_smem + (sD0 - base));

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int H = Hkv * G;
    const int nb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int n0 = nb * BN;
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    const size_t ldo = (size_t)H * D;
    const __nv_bfloat16 *grp = qkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
    const int nqb = (T + BM - 1) / BM;
    const int qb0 = causal ? n0 / BM : 0;
    const int per_head = nqb - qb0;
    const int total = G * per_head;
    const int kv_lo = n0 + warp * 16; /* first key row of this warp */

    /* issue the loads of iteration `it` (head j, query block) into stage st */
    auto load_q = [&](int it, int st) {
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        mt__fa_load_tile<BM, D, NT>(sQ0 + st * BM * D * 2, grp + (size_t)jj * D, ld, q0, T, tid);
        mt__fa_load_tile<BM, D, NT>(sO0 + st * BM * D * 2, dout + (size_t)b * T * ldo + (size_t)hh * D, ldo, q0, T,
                                    tid);
        if (tid < BM) {
            const size_t off = ((size_t)b * H + hh) * T;
            const bool ok = q0 + tid < T;
            const int qi = ok ? q0 + tid : 0;
            mt__fa_cp4(sL0 + st * BM * 4 + tid * 4, lse + off + qi, ok);
            mt__fa_cp4(sD0 + st * BM * 4 + tid * 4, delta + off + qi, ok);
        }
    };

    mt__fa_load_tile<BN, D, NT>(sK, grp + (size_t)G * D, ld, n0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sV, grp + (size_t)(G + 1) * D, ld, n0, T, tid);
    load_q(0, 0);
    mt__fa_cp_commit();

    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int dn = 0; dn < ND; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[dn][e] = dv[dn][e] = 0.f;

    for (int it = 0; it < total; it++) {
        const int st = it & 1;
        if (it + 1 < total) {
            load_q(it + 1, st ^ 1);
            mt__fa_cp_commit();
            mt__fa_cp_wait<1>();
        } else {
            mt__fa_cp_wait<0>();
        }
        __syncthreads();
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        const uint32_t sQ = sQ0 + st * BM * D * 2, sO = sO0 + st * BM * D * 2;
        const float *sL = sLf + st * BM, *sDl = sDf + st * BM;

        /* S^T = K Q^T  and  dP^T = V dO^T  (16 key rows x BM query columns per warp) */
        float p[NQ][4], dp[NQ][4];
#pragma unroll
        for (int nq = 0; nq < NQ; nq++)
#pragma unroll
            for (int e = 0; e < 4; e++) p[nq][e] = dp[nq][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t ak[4], av[4];
            mt__fa_ldsm_x4(ak[0], ak[1], ak[2], ak[3], sK + mt__fa_swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
            mt__fa_ldsm_x4(av[0], av[1], av[2], av[3], sV + mt__fa_swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
            for (int np = 0; np < NQ / 2; np++) {
                uint32_t b0, b1, b2, b3;
                const int r = np * 16 + ((lane >> 4) << 3) + (lane & 7), c = kk * 2 + ((lane >> 3) & 1);
                mt__fa_ldsm_x4(b0, b1, b2, b3, sQ + mt__fa_swz<D>(r, c));
                mt__fa_mma(p[2 * np], ak, b0, b1);
                mt__fa_mma(p[2 * np + 1], ak, b2, b3);
                mt__fa_ldsm_x4(b0, b1, b2, b3, sO + mt__fa_swz<D>(r, c));
                mt__fa_mma(dp[2 * np], av, b0, b1);
                mt__fa_mma(dp[2 * np + 1], av, b2, b3);
            }
        }

        /* P^T = exp(S^T * scale - lse), masked; dS^T = P^T * (dP^T - delta) */
        const bool need_mask = (q0 + BM > T) || (kv_lo + 16 > T) || (causal && kv_lo + 15 > q0);
#pragma unroll
        for (int nq = 0; nq < NQ; nq++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qc = nq * 8 + (lane & 3) * 2 + (e & 1);
                const float l2 = sL[qc] * 1.4426950408889634f;
                float sv = p[nq][e];
                if (need_mask) {
                    const int kv = kv_lo + (lane >> 2) + (e >> 1) * 8, q = q0 + qc;
                    if (kv >= T || q >= T || (causal && kv > q)) sv = -INFINITY;
                }
                const float pv = mt__fa_exp2(fmaf(sv, scale_log2, -l2));
                p[nq][e] = pv;
                dp[nq][e] = pv * (dp[nq][e] - sDl[qc]);
            }

        /* dV += P^T dO,  dK += dS^T Q  (k = query rows) */
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) {
            uint32_t ap[4], as[4];
            ap[0] = mt__fa_pack(p[2 * kk][0], p[2 * kk][1]);
            ap[1] = mt__fa_pack(p[2 * kk][2], p[2 * kk][3]);
            ap[2] = mt__fa_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
            ap[3] = mt__fa_pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
            as[0] = mt__fa_pack(dp[2 * kk][0], dp[2 * kk][1]);
            as[1] = mt__fa_pack(dp[2 * kk][2], dp[2 * kk][3]);
            as[2] = mt__fa_pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
            as[3] = mt__fa_pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
            /* dS^T (bf16) to shared memory for dQ: rows = keys, columns = queries */
            if (DQ) {
                const int r0 = warp * 16 + (lane >> 2);
                const int cch = 2 * kk, cin = (lane & 3) * 4;
                unsigned char *sp = mt__fa_smem + (sS - base);
                *reinterpret_cast<uint32_t *>(sp + mt__fa_swz<BM>(r0, cch) + cin) = as[0];
                *reinterpret_cast<uint32_t *>(sp + mt__fa_swz<BM>(r0 + 8, cch) + cin) = as[1];
                *reinterpret_cast<uint32_t *>(sp + mt__fa_swz<BM>(r0, cch + 1) + cin) = as[2];
                *reinterpret_cast<uint32_t *>(sp + mt__fa_swz<BM>(r0 + 8, cch + 1) + cin) = as[3];
            }
#pragma unroll
            for (int dpi = 0; dpi < ND / 2; dpi++) {
                uint32_t b0, b1, b2, b3;
                mt__fa_ldsm_x4_t(b0, b1, b2, b3, sO + mt__fa_swz<D>(kk * 16 + (lane & 15), dpi * 2 + (lane >> 4)));
                mt__fa_mma(dv[2 * dpi], ap, b0, b1);
                mt__fa_mma(dv[2 * dpi + 1], ap, b2, b3);
                mt__fa_ldsm_x4_t(b0, b1, b2, b3, sQ + mt__fa_swz<D>(kk * 16 + (lane & 15), dpi * 2 + (lane >> 4)));
                mt__fa_mma(dk[2 * dpi], as, b0, b1);
                mt__fa_mma(dk[2 * dpi + 1], as, b2, b3);
            }
        }
        if (!DQ) { /* no dQ here; the barrier keeps the next prefetch off this stage until all warps are done */
            __syncthreads();
            continue;
        }
        __syncthreads(); /* dS^T complete */

        /* dQ (BM x D) += dS K: warp -> (MQ m16 tiles, DW columns); fp32 atomics into the accumulator */
        {
            const int wm = warp % WM, d0 = (warp / WM) * DW;
            float acc[MQ][DW / 8][4];
#pragma unroll
            for (int m = 0; m < MQ; m++)
#pragma unroll
                for (int dn = 0; dn < DW / 8; dn++)
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[m][dn][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                uint32_t a[MQ][4];
#pragma unroll
                for (int m = 0; m < MQ; m++)
                    mt__fa_ldsm_x4_t(a[m][0], a[m][1], a[m][2], a[m][3],
                                     sS + mt__fa_swz<BM>(kk * 16 + (lane & 7) + ((lane >> 4) << 3),
                                                         (wm * MQ + m) * 2 + ((lane >> 3) & 1)));
#pragma unroll
                for (int dpi = 0; dpi < DW / 16; dpi++) {
                    uint32_t b0, b1, b2, b3;
                    mt__fa_ldsm_x4_t(b0, b1, b2, b3,
                                     sK + mt__fa_swz<D>(kk * 16 + (lane & 15), d0 / 8 + dpi * 2 + (lane >> 4)));
#pragma unroll
                    for (int m = 0; m < MQ; m++) {
                        mt__fa_mma(acc[m][2 * dpi], a[m], b0, b1);
                        mt__fa_mma(acc[m][2 * dpi + 1], a[m], b2, b3);
                    }
                }
            }
            float *dqh = dq_acc + (((size_t)b * H + hh) * T) * D;
#pragma unroll
            for (int m = 0; m < MQ; m++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int q = q0 + (wm * MQ + m) * 16 + (lane >> 2) + r * 8;
                    if (q < T) {
#pragma unroll
                        for (int dn = 0; dn < DW / 8; dn++) {
                            float *dst = dqh + (size_t)q * D + d0 + dn * 8 + (lane & 3) * 2;
                            atomicAdd(reinterpret_cast<float2 *>(dst),
                                      make_float2(acc[m][dn][2 * r], acc[m][dn][2 * r + 1]));
                        }
                    }
                }
        }
        __syncthreads(); /* sS and this stage are rewritten next iteration */
    }

    /* dK * scale and dV to bf16, staged through this warp's rows of sK / sV, then 16-byte stores */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int lr = warp * 16 + (lane >> 2) + r * 8;
#pragma unroll
        for (int dn = 0; dn < ND; dn++) {
            *reinterpret_cast<uint32_t *>(mt__fa_smem + (sK - base) + mt__fa_swz<D>(lr, dn) + (lane & 3) * 4) =
                mt__fa_pack(dk[dn][2 * r] * scale, dk[dn][2 * r + 1] * scale);
            *reinterpret_cast<uint32_t *>(mt__fa_smem + (sV - base) + mt__fa_swz<D>(lr, dn) + (lane & 3) * 4) =
                mt__fa_pack(dv[dn][2 * r], dv[dn][2 * r + 1]);
        }
    }
    __syncwarp();
    __nv_bfloat16 *dgrp = dqkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
#pragma unroll
    for (int it2 = 0; it2 < (16 * ND) / 32; it2++) {
        const int i = it2 * 32 + lane;
        const int r = i / ND, c = i % ND;
        const int lr = warp * 16 + r, row = n0 + lr;
        if (row < T) {
            uint4 vk = *reinterpret_cast<const uint4 *>(mt__fa_smem + (sK - base) + mt__fa_swz<D>(lr, c));
            uint4 vv = *reinterpret_cast<const uint4 *>(mt__fa_smem + (sV - base) + mt__fa_swz<D>(lr, c));
            __nv_bfloat16 *dst = dgrp + (size_t)row * ld + (size_t)G * D + c * 8;
            *reinterpret_cast<uint4 *>(dst) = vk;
            *reinterpret_cast<uint4 *>(dst + D) = vv;
        }
    }
}

/* Backward with FlashAttention-2's warp layout (an alternative to mt__flash_bwd_kernel, timed by the
 * benchmark): 64 query rows x 128 key rows per step, 8 warps. S and dP in 32x32 warp tiles (2 along
 * queries x 4 along keys), P and dS through shared memory ([q][k], bf16), dV/dK in 32-key x D/2 warp
 * tiles (registers, whole CTA), dQ in 32 x D/4 warp tiles added with atomics. Fewer ldmatrix per mma
 * than the 16-keys-per-warp layout (hd128: ~152 vs 176 per warp and step). */
template <int D>
__global__ void __launch_bounds__(256, 1)
mt__flash_bwd2_kernel(__nv_bfloat16 *__restrict__ dqkv, float *__restrict__ dq_acc,
                      const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ lse,
                      const float *__restrict__ delta, const __nv_bfloat16 *__restrict__ qkv, int T, int Hkv, int G,
                      int causal, float scale, float scale_log2) {
    constexpr int BM = 64, BN = 128, NT = 256;
    constexpr int DV = D / 2; /* dK/dV columns per warp */
    constexpr int DQ = D / 4; /* dQ columns per warp */
    static_assert(D == 64 || D == 128, "head dim");
    extern __shared__ __align__(128) unsigned char mt__fa_smem[];
    const uint32_t base = mt__fa_smem_addr(mt__fa_smem);
    const uint32_t sK = base;                   /* BN x D */
    const uint32_t sV = sK + BN * D * 2;        /* BN x D */
    const uint32_t sQ0 = sV + BN * D * 2;       /* 2 stages of BM x D */
    const uint32_t sO0 = sQ0 + 2 * BM * D * 2;  /* dO, 2 stages */
    const uint32_t sP = sO0 + 2 * BM * D * 2;   /* P, BM x BN ([q][k]) */
    const uint32_t sS = sP + BM * BN * 2;       /* dS, BM x BN ([q][k]) */
    const uint32_t sL0 = sS + BM * BN * 2;      /* lse, 2 stages of BM floats */
    const uint32_t sD0 = sL0 + 2 * BM * 4;      /* delta, 2 stages */
    const float *sLf = reinterpret_cast<const float *>(mt__fa_smem + (sL0 - base));
    const float *sDf = reinterpret_cast<const float *>(mt__fa_smem + (sD0 - base));

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int H = Hkv * G;
    const int nb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int n0 = nb * BN;
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    const size_t ldo = (size_t)H * D;
    const __nv_bfloat16 *grp = qkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
    const int nqb = (T + BM - 1) / BM;
    const int qb0 = causal ? n0 / BM : 0;
    const int per_head = nqb - qb0;
    const int total = G * per_head;
    /* warp tiles */
    const int sq = (warp & 1) * 32, sk = (warp >> 1) * 32;  /* S/dP: query rows sq.., key cols sk.. */
    const int vk = (warp & 3) * 32, vd = (warp >> 2) * DV;  /* dK/dV: key rows vk.., cols vd.. */
    const int qq = (warp & 1) * 32, qd = (warp >> 1) * DQ;  /* dQ: query rows qq.., cols qd.. */

    auto load_q = [&](int it, int st) {
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        mt__fa_load_tile<BM, D, NT>(sQ0 + st * BM * D * 2, grp + (size_t)jj * D, ld, q0, T, tid);
        mt__fa_load_tile<BM, D, NT>(sO0 + st * BM * D * 2, dout + (size_t)b * T * ldo + (size_t)hh * D, ldo, q0, T,
                                    tid);
        if (tid < BM) {
            const size_t off = ((size_t)b * H + hh) * T;
            const bool ok = q0 + tid < T;
            const int qi = ok ? q0 + tid : 0;
            mt__fa_cp4(sL0 + st * BM * 4 + tid * 4, lse + off + qi, ok);
            mt__fa_cp4(sD0 + st * BM * 4 + tid * 4, delta + off + qi, ok);
        }
    };

    mt__fa_load_tile<BN, D, NT>(sK, grp + (size_t)G * D, ld, n0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sV, grp + (size_t)(G + 1) * D, ld, n0, T, tid);
    load_q(0, 0);
    mt__fa_cp_commit();

    float dk[2][DV / 8][4], dv[2][DV / 8][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int dn = 0; dn < DV / 8; dn++)
#pragma unroll
            for (int e = 0; e < 4; e++) dk[m][dn][e] = dv[m][dn][e] = 0.f;

    for (int it = 0; it < total; it++) {
        const int st = it & 1;
        if (it + 1 < total) {
            load_q(it + 1, st ^ 1);
            mt__fa_cp_commit();
            mt__fa_cp_wait<1>();
        } else {
            mt__fa_cp_wait<0>();
        }
        __syncthreads();
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        const uint32_t sQ = sQ0 + st * BM * D * 2, sO = sO0 + st * BM * D * 2;
        const float *sL = sLf + st * BM, *sDl = sDf + st * BM;

        /* S = Q K^T and dP = dO V^T on this warp's 32 x 32 tile */
        {
            float sc[2][4][4], dp[2][4][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) sc[m][n][e] = dp[m][n][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t aq[2][4], ao[2][4];
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    const uint32_t off = mt__fa_swz<D>(sq + m * 16 + (lane & 15), kk * 2 + (lane >> 4));
                    mt__fa_ldsm_x4(aq[m][0], aq[m][1], aq[m][2], aq[m][3], sQ + off);
                    mt__fa_ldsm_x4(ao[m][0], ao[m][1], ao[m][2], ao[m][3], sO + off);
                }
#pragma unroll
                for (int np = 0; np < 2; np++) {
                    uint32_t b0, b1, b2, b3;
                    const uint32_t off =
                        mt__fa_swz<D>(sk + np * 16 + ((lane >> 4) << 3) + (lane & 7), kk * 2 + ((lane >> 3) & 1));
                    mt__fa_ldsm_x4(b0, b1, b2, b3, sK + off);
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        mt__fa_mma(sc[m][2 * np], aq[m], b0, b1);
                        mt__fa_mma(sc[m][2 * np + 1], aq[m], b2, b3);
                    }
                    mt__fa_ldsm_x4(b0, b1, b2, b3, sV + off);
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        mt__fa_mma(dp[m][2 * np], ao[m], b0, b1);
                        mt__fa_mma(dp[m][2 * np + 1], ao[m], b2, b3);
                    }
                }
            }
            /* P = exp2(S c - lse log2e), masked; dS = P (dP - delta); both to shared memory as bf16 */
            const bool need_mask = (q0 + BM > T) || (n0 + BN > T) || (causal && n0 + sk + 31 > q0 + sq);
            unsigned char *pP = mt__fa_smem + (sP - base), *pS = mt__fa_smem + (sS - base);
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int ql = sq + m * 16 + (lane >> 2) + r * 8;
                    const float l2 = sL[ql] * 1.4426950408889634f, dl = sDl[ql];
#pragma unroll
                    for (int n = 0; n < 4; n++) {
                        float v[2], w[2];
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            float sv = sc[m][n][2 * r + e];
                            if (need_mask) {
                                const int q = q0 + ql, kv = n0 + sk + n * 8 + (lane & 3) * 2 + e;
                                if (kv >= T || q >= T || (causal && kv > q)) sv = -INFINITY;
                            }
                            v[e] = mt__fa_exp2(fmaf(sv, scale_log2, -l2));
                            w[e] = v[e] * (dp[m][n][2 * r + e] - dl);
                        }
                        const uint32_t off = mt__fa_swz<BN>(ql, (sk >> 3) + n) + (lane & 3) * 4;
                        *reinterpret_cast<uint32_t *>(pP + off) = mt__fa_pack(v[0], v[1]);
                        *reinterpret_cast<uint32_t *>(pS + off) = mt__fa_pack(w[0], w[1]);
                    }
                }
        }
        __syncthreads(); /* P and dS complete */

        /* dV += P^T dO, dK += dS^T Q: this warp's 32 keys x DV columns; A = P^T / dS^T by ldmatrix.trans */
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) {
            uint32_t ap[2][4], as[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++) {
                const uint32_t off =
                    mt__fa_swz<BN>(kk * 16 + (lane & 7) + ((lane >> 4) << 3), ((vk + m * 16) >> 3) + ((lane >> 3) & 1));
                mt__fa_ldsm_x4_t(ap[m][0], ap[m][1], ap[m][2], ap[m][3], sP + off);
                mt__fa_ldsm_x4_t(as[m][0], as[m][1], as[m][2], as[m][3], sS + off);
            }
#pragma unroll
            for (int dpi = 0; dpi < DV / 16; dpi++) {
                uint32_t b0, b1, b2, b3;
                const uint32_t off = mt__fa_swz<D>(kk * 16 + (lane & 15), (vd >> 3) + dpi * 2 + (lane >> 4));
                mt__fa_ldsm_x4_t(b0, b1, b2, b3, sO + off);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    mt__fa_mma(dv[m][2 * dpi], ap[m], b0, b1);
                    mt__fa_mma(dv[m][2 * dpi + 1], ap[m], b2, b3);
                }
                mt__fa_ldsm_x4_t(b0, b1, b2, b3, sQ + off);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    mt__fa_mma(dk[m][2 * dpi], as[m], b0, b1);
                    mt__fa_mma(dk[m][2 * dpi + 1], as[m], b2, b3);
                }
            }
        }

        /* dQ += dS K: this warp's 32 queries x DQ columns; atomics into the fp32 accumulator */
        {
            float acc[2][DQ / 8][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int dn = 0; dn < DQ / 8; dn++)
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[m][dn][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                uint32_t a[2][4];
#pragma unroll
                for (int m = 0; m < 2; m++)
                    mt__fa_ldsm_x4(a[m][0], a[m][1], a[m][2], a[m][3],
                                   sS + mt__fa_swz<BN>(qq + m * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
                for (int dpi = 0; dpi < DQ / 16; dpi++) {
                    uint32_t b0, b1, b2, b3;
                    mt__fa_ldsm_x4_t(b0, b1, b2, b3,
                                     sK + mt__fa_swz<D>(kk * 16 + (lane & 15), (qd >> 3) + dpi * 2 + (lane >> 4)));
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        mt__fa_mma(acc[m][2 * dpi], a[m], b0, b1);
                        mt__fa_mma(acc[m][2 * dpi + 1], a[m], b2, b3);
                    }
                }
            }
            float *dqh = dq_acc + (((size_t)b * H + hh) * T) * D;
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int q = q0 + qq + m * 16 + (lane >> 2) + r * 8;
                    if (q < T) {
#pragma unroll
                        for (int dn = 0; dn < DQ / 8; dn++) {
                            float *dst = dqh + (size_t)q * D + qd + dn * 8 + (lane & 3) * 2;
                            atomicAdd(reinterpret_cast<float2 *>(dst),
                                      make_float2(acc[m][dn][2 * r], acc[m][dn][2 * r + 1]));
                        }
                    }
                }
        }
        __syncthreads(); /* P, dS and this stage are rewritten next iteration */
    }

    /* dK * scale and dV to bf16 through sK / sV (all warps are past their last read), then 16-byte stores */
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int lr = vk + m * 16 + (lane >> 2) + r * 8;
#pragma unroll
            for (int dn = 0; dn < DV / 8; dn++) {
                const uint32_t off = mt__fa_swz<D>(lr, (vd >> 3) + dn) + (lane & 3) * 4;
                *reinterpret_cast<uint32_t *>(mt__fa_smem + (sK - base) + off) =
                    mt__fa_pack(dk[m][dn][2 * r] * scale, dk[m][dn][2 * r + 1] * scale);
                *reinterpret_cast<uint32_t *>(mt__fa_smem + (sV - base) + off) =
                    mt__fa_pack(dv[m][dn][2 * r], dv[m][dn][2 * r + 1]);
            }
        }
    __syncthreads();
    __nv_bfloat16 *dgrp = dqkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
    constexpr int CPR = D / 8;
#pragma unroll
    for (int k = 0; k < BN * CPR / NT; k++) {
        const int i = k * NT + tid, r = i / CPR, c = i % CPR, row = n0 + r;
        if (row < T) {
            __nv_bfloat16 *dst = dgrp + (size_t)row * ld + (size_t)G * D + c * 8;
            *reinterpret_cast<uint4 *>(dst) =
                *reinterpret_cast<const uint4 *>(mt__fa_smem + (sK - base) + mt__fa_swz<D>(r, c));
            *reinterpret_cast<uint4 *>(dst + D) =
                *reinterpret_cast<const uint4 *>(mt__fa_smem + (sV - base) + mt__fa_swz<D>(r, c));
        }
    }
}

/* Deterministic dQ (used when MT_FLASH_DETERMINISTIC): one CTA per (query block of BM rows, head,
 * batch), NW warps of 16*MT rows, key/value tiles of BN rows streamed as in the forward:
 * S = Q K^T, dP = dO V^T, dS = P (dP - delta), dQ += dS K in registers; dQ * scale -> bf16 into dqkv. */
template <int D, int BM, int BN, int NW>
__global__ void __launch_bounds__(NW * 32)
mt__flash_bwd_dq_kernel(__nv_bfloat16 *__restrict__ dqkv, const __nv_bfloat16 *__restrict__ dout,
                        const float *__restrict__ lse, const float *__restrict__ delta,
                        const __nv_bfloat16 *__restrict__ qkv, int T, int Hkv, int G, int causal, float scale,
                        float scale_log2) {
    constexpr int NT = NW * 32;
    constexpr int MT = BM / (16 * NW);
    constexpr int NN = BN / 8;
    constexpr int ND = D / 8;
    static_assert(MT >= 1 && MT * 16 * NW == BM, "BM must be 16 * NW * MT");
    static_assert(BN % 16 == 0 && D % 16 == 0 && D >= 64, "tile shapes");
    extern __shared__ __align__(128) unsigned char mt__fa_smem[];
    const uint32_t sQa = mt__fa_smem_addr(mt__fa_smem);
    const uint32_t sOa = sQa + BM * D * 2;      /* dO */
    const uint32_t sKa = sOa + BM * D * 2;      /* 2 stages of BN x D */
    const uint32_t sVa = sKa + 2 * BN * D * 2;  /* 2 stages of BN x D */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int H = Hkv * G;
    const int mb = causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int g = h / G, j = h - g * G;
    const size_t ld = (size_t)Hkv * (G + 2) * D, ldo = (size_t)H * D;
    const __nv_bfloat16 *qb = qkv + (size_t)b * T * ld + ((size_t)g * (G + 2) + j) * D;
    const __nv_bfloat16 *kb = qkv + (size_t)b * T * ld + ((size_t)g * (G + 2) + G) * D;
    const __nv_bfloat16 *vb = kb + D;
    const __nv_bfloat16 *ob = dout + (size_t)b * T * ldo + (size_t)h * D;
    const int m0 = mb * BM;
    const int n_end = causal ? min(T, m0 + BM) : T;
    const int ntiles = (n_end + BN - 1) / BN;
    const int wr0 = m0 + warp * MT * 16;

    mt__fa_load_tile<BM, D, NT>(sQa, qb, ld, m0, T, tid);
    mt__fa_load_tile<BM, D, NT>(sOa, ob, ldo, m0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sKa, kb, ld, 0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sVa, vb, ld, 0, T, tid);
    mt__fa_cp_commit();

    /* this thread's rows: lse in base 2 (+inf past T, so P = 0 there) and delta */
    float l2[MT][2], dl[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = wr0 + mt * 16 + (lane >> 2) + r * 8;
            const size_t idx = ((size_t)b * H + h) * T + (row < T ? row : 0);
            l2[mt][r] = row < T ? lse[idx] * 1.4426950408889634f : INFINITY;
            dl[mt][r] = row < T ? delta[idx] : 0.f;
        }

    float dq[MT][ND][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int dn = 0; dn < ND; dn++)
#pragma unroll
            for (int e = 0; e < 4; e++) dq[mt][dn][e] = 0.f;

    for (int t = 0; t < ntiles; t++) {
        const int n0 = t * BN;
        const int st = t & 1;
        if (t + 1 < ntiles) {
            const int s1 = (t + 1) & 1;
            mt__fa_load_tile<BN, D, NT>(sKa + s1 * BN * D * 2, kb, ld, n0 + BN, T, tid);
            mt__fa_load_tile<BN, D, NT>(sVa + s1 * BN * D * 2, vb, ld, n0 + BN, T, tid);
            mt__fa_cp_commit();
            mt__fa_cp_wait<1>();
        } else {
            mt__fa_cp_wait<0>();
        }
        __syncthreads();
        const uint32_t sK = sKa + st * BN * D * 2, sV = sVa + st * BN * D * 2;
        if (causal && n0 > wr0 + MT * 16 - 1) {
            __syncthreads();
            continue;
        }

        /* S = Q K^T, dP = dO V^T */
        float sc[MT][NN][4], dp[MT][NN][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nn = 0; nn < NN; nn++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[mt][nn][e] = dp[mt][nn][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t aq[MT][4], ao[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const uint32_t off = mt__fa_swz<D>(warp * MT * 16 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4));
                mt__fa_ldsm_x4(aq[mt][0], aq[mt][1], aq[mt][2], aq[mt][3], sQa + off);
                mt__fa_ldsm_x4(ao[mt][0], ao[mt][1], ao[mt][2], ao[mt][3], sOa + off);
            }
#pragma unroll
            for (int np = 0; np < NN / 2; np++) {
                uint32_t b0, b1, b2, b3;
                const uint32_t off = mt__fa_swz<D>(np * 16 + ((lane >> 4) << 3) + (lane & 7), kk * 2 + ((lane >> 3) & 1));
                mt__fa_ldsm_x4(b0, b1, b2, b3, sK + off);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mt__fa_mma(sc[mt][2 * np], aq[mt], b0, b1);
                    mt__fa_mma(sc[mt][2 * np + 1], aq[mt], b2, b3);
                }
                mt__fa_ldsm_x4(b0, b1, b2, b3, sV + off);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mt__fa_mma(dp[mt][2 * np], ao[mt], b0, b1);
                    mt__fa_mma(dp[mt][2 * np + 1], ao[mt], b2, b3);
                }
            }
        }

        /* P = exp2(S*scale*log2e - lse*log2e), masked; dS = P (dP - delta), kept in sc */
        const bool need_mask = n0 + BN > T || (causal && n0 + BN - 1 > wr0);
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nn = 0; nn < NN; nn++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float sv = sc[mt][nn][e];
                    if (need_mask) {
                        const int row = wr0 + mt * 16 + (lane >> 2) + (e >> 1) * 8;
                        const int col = n0 + nn * 8 + (lane & 3) * 2 + (e & 1);
                        if (col >= T || (causal && col > row)) sv = -INFINITY;
                    }
                    const float pv = mt__fa_exp2(fmaf(sv, scale_log2, -l2[mt][e >> 1]));
                    sc[mt][nn][e] = pv * (dp[mt][nn][e] - dl[mt][e >> 1]);
                }

        /* dQ += dS K */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                a[mt][0] = mt__fa_pack(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
                a[mt][1] = mt__fa_pack(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
                a[mt][2] = mt__fa_pack(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
                a[mt][3] = mt__fa_pack(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dpi = 0; dpi < ND / 2; dpi++) {
                uint32_t b0, b1, b2, b3;
                mt__fa_ldsm_x4_t(b0, b1, b2, b3, sK + mt__fa_swz<D>(kk * 16 + (lane & 15), dpi * 2 + (lane >> 4)));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mt__fa_mma(dq[mt][2 * dpi], a[mt], b0, b1);
                    mt__fa_mma(dq[mt][2 * dpi + 1], a[mt], b2, b3);
                }
            }
        }
        __syncthreads();
    }

    /* dQ * scale -> bf16, staged through this warp's rows of sQ, 16-byte stores into dqkv */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int lr = warp * MT * 16 + mt * 16 + (lane >> 2) + r * 8;
#pragma unroll
            for (int dn = 0; dn < ND; dn++)
                *reinterpret_cast<uint32_t *>(mt__fa_smem + mt__fa_swz<D>(lr, dn) + (lane & 3) * 4) =
                    mt__fa_pack(dq[mt][dn][2 * r] * scale, dq[mt][dn][2 * r + 1] * scale);
        }
    __syncwarp();
    __nv_bfloat16 *dqb = dqkv + (size_t)b * T * ld + ((size_t)g * (G + 2) + j) * D;
    constexpr int WCH = MT * 16 * ND;
#pragma unroll
    for (int it = 0; it < (WCH + 31) / 32; it++) {
        const int i = it * 32 + lane;
        if (i < WCH) {
            const int r = i / ND, c = i % ND;
            const int lr = warp * MT * 16 + r, row = m0 + lr;
            if (row < T)
                *reinterpret_cast<uint4 *>(dqb + (size_t)row * ld + c * 8) =
                    *reinterpret_cast<const uint4 *>(mt__fa_smem + mt__fa_swz<D>(lr, c));
        }
    }
}

/* ------------------------------------------------------------------ backward on Hopper's wgmma (sm_90a) */

/* wgmma (warpgroup matrix multiply, 4 warps = 128 threads issue one m64nNk16 product together).
 * A shared-memory operand is named by a 64-bit descriptor: start address, leading and stride byte
 * offsets (all >> 4) and the swizzle mode (bits 62-63, 1 = 128-byte swizzle). Every tile here is rows
 * of 64 bf16 (128 bytes) whose 16-byte chunks are XOR-swizzled by (row & 7), i.e. mt__fa_swz<64>: on a
 * tile starting at a 1024-byte boundary that is exactly the hardware's 128-byte swizzle. So:
 *   K-major operand (tile rows = M or N, the 64 columns = K): 8-row groups 1024 bytes apart (stride
 *     offset); the k16 step kk starts kk*32 bytes into the rows (the swizzle applies to the address).
 *   MN-major operand (tile rows = K, the 64 columns = M or N; imm-trans 1): 8-row groups along K 1024
 *     bytes apart (stride offset); the k16 step kk starts at row 16*kk, kk*2048 bytes on. One swizzle
 *     atom spans all 64 columns, so the leading offset (between atoms along M/N) is never used. */
__device__ __forceinline__ uint64_t mt__wg_desc(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}
/* The descriptor of the tile `bytes` (a multiple of 16) past the one of d: the start address field
 * (bits 0-13, address / 16) plus bytes / 16. Shared addresses stay below 256 KB, so the field does not
 * overflow: one 64-bit add instead of the mask, shift and or of mt__wg_desc for every k step. */
__device__ __forceinline__ uint64_t mt__wg_desc_at(uint64_t d, uint32_t bytes) { return d + (bytes >> 4); }

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MT__WG_OK 1
#else
#define MT__WG_OK 0
#endif

__device__ __forceinline__ void mt__wg_fence() {
#if MT__WG_OK
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mt__wg_commit() {
#if MT__WG_OK
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void mt__wg_wait() {
#if MT__WG_OK
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/* Make this thread's ordinary shared-memory stores (and completed cp.async) visible to wgmma's reads. */
__device__ __forceinline__ void mt__fence_async_smem() {
#if MT__WG_OK
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
/* The copy engine's bulk reduction: global[dst .. dst + bytes) += shared[src ..) as f32 (bytes a multiple of
 * 16, both 16-byte aligned), in a bulk async-group of the issuing thread; commit, and wait until at most N
 * groups are still reading their shared memory. */
__device__ __forceinline__ void mt__bulk_red_add_f32(float *dst, uint32_t src, uint32_t bytes) {
#if MT__WG_OK
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
                 "r"(bytes)
                 : "memory");
#else
    (void)dst; (void)src; (void)bytes;
#endif
}
__device__ __forceinline__ void mt__bulk_commit() {
#if MT__WG_OK
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void mt__bulk_wait_read() {
#if MT__WG_OK
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
/* Barrier `id` (1..15; 0 is __syncthreads) over `n` threads. */
__device__ __forceinline__ void mt__bar_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

/* d (64x64 fp32, warpgroup accumulator) (+)= A (64x16) * B (16x64), both from shared memory.
 * TA / TB: 0 = K-major, 1 = M/N-major. acc = 0 overwrites d. */
template <int TA, int TB>
__device__ __forceinline__ void mt__wg_ss(float (&d)[32], uint64_t a, uint64_t b, int acc) {
#if MT__WG_OK
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "r"(acc), "n"(TA), "n"(TB));
#endif
}
/* d (64x64 fp32) += A (64x16 bf16, registers: the mma.sync m16n8k16 A fragment of this warp's 16 rows)
 * * B (16x64, shared memory; TB as above). */
template <int TB>
__device__ __forceinline__ void mt__wg_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
#if MT__WG_OK
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, %37;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB));
#endif
}

/* d (64x32 fp32) (+)= A (64x16) * B (16x32), both from shared memory (TA / TB and acc as above). */
template <int TA, int TB>
__device__ __forceinline__ void mt__wg_ss32(float (&d)[16], uint64_t a, uint64_t b, int acc) {
#if MT__WG_OK
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %19, %20;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "r"(acc), "n"(TA), "n"(TB));
#endif
}
/* Pin accumulator registers here: code after a wait may not be moved above it. */
template <int N>
__device__ __forceinline__ void mt__wg_keep(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

/* Add a warpgroup accumulator tile (rows of this warp: r0 and r0 + 8; NJ n8 tiles from column c0) into
 * the fp32 rows `acc` (row stride D). Pairs of lanes swap halves so that each lane adds 4 consecutive
 * floats of one row with one red.global.add.v4.f32 (half the reductions of float2 atomics). Rows at or
 * past T (T >= 1) add zeros to row T-1 instead: the code has no branch, so it may run while wgmma is
 * in flight without the compiler serializing the wgmma. */
template <int NJ, int D>
__device__ __forceinline__ void mt__fa_red_tile(float *acc, const float (&d)[4 * NJ], int r0, int c0, int T,
                                                int lane) {
    const bool odd = lane & 1;
    const int row = odd ? r0 + 8 : r0;
    const bool ok = row < T;
    float *dst = acc + (size_t)(ok ? row : T - 1) * D + c0 + 2 * (lane & 2);
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const float x = odd ? d[4 * j] : d[4 * j + 2], y = odd ? d[4 * j + 1] : d[4 * j + 3];
        const float rx = __shfl_xor_sync(0xffffffffu, x, 1), ry = __shfl_xor_sync(0xffffffffu, y, 1);
        const float v0 = odd ? rx : d[4 * j], v1 = odd ? ry : d[4 * j + 1];
        const float v2 = odd ? d[4 * j + 2] : rx, v3 = odd ? d[4 * j + 3] : ry;
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst + 8 * j), "f"(ok ? v0 : 0.f),
                     "f"(ok ? v1 : 0.f), "f"(ok ? v2 : 0.f), "f"(ok ? v3 : 0.f)
                     : "memory");
    }
}

/* Backward on wgmma, head dim 64. One CTA per (key block of 128 rows, kv group, batch), 2 warpgroups
 * of 64 keys each (256 threads); K and V stay in shared memory; per head of the group and query block
 * of 64 rows (Q, dO, lse, delta double-buffered with cp.async), each warpgroup with its keys as M:
 *   S^T = K Q^T, dP^T = V dO^T               (A = K / V, B = Q / dO, both K-major in shared memory)
 *   P^T = exp(S^T scale - lse) masked, dS^T = P^T (dP^T - delta)         (registers)
 *   dV += P^T dO, dK += dS^T Q                (A = P^T / dS^T from registers, B = dO / Q N-major)
 *   dS^T (bf16) to shared memory, then dQ with A = dS (M-major view of dS^T):
 *     SPLIT 0: each warpgroup dQ_part (64 x D) = dS K over its own 64 keys (B = K, N-major);
 *     SPLIT 1: warpgroup w computes columns 32w..32w+31 of dQ (64 x 32) over all 128 keys, after a CTA
 *              barrier (both dS^T tiles written), with B = K^T, a transposed copy of K made once
 *              (K-major, so a 32-column slice is a plain descriptor): half the atomics of SPLIT 0;
 *   dq_acc += dQ                               (red.global.add.v4.f32, issued during the next iteration)
 * Accumulators (64 x N fp32 per warpgroup: N/2 registers a thread) follow mma.sync's C fragment per
 * warp: element 4j+e is row 16*warp + lane/4 + 8*(e>>1), column 8j + 2*(lane&3) + (e&1). */
template <int D, int SPLIT>
__global__ void __launch_bounds__(256, 1)
mt__flash_bwd3_kernel(__nv_bfloat16 *__restrict__ dqkv, float *__restrict__ dq_acc,
                      const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ lse,
                      const float *__restrict__ delta, const __nv_bfloat16 *__restrict__ qkv, int T, int Hkv, int G,
                      int causal, float scale, float scale_log2) {
    static_assert(D == 64, "the wgmma backward is written for head dim 64 (one 128-byte swizzle atom per row)");
    constexpr int BM = 64, BN = 128, NT = 256, TILE = 64 * D * 2; /* bytes of a 64-row tile */
#if MT__WG_OK
    extern __shared__ __align__(1024) unsigned char mt__fa_smem3[];
    const uint32_t raw = mt__fa_smem_addr(mt__fa_smem3);
    const uint32_t base = (raw + 1023u) & ~1023u; /* the 128-byte swizzle repeats every 1024 bytes */
    unsigned char *smem = mt__fa_smem3 + (base - raw);
    const uint32_t sK = base;              /* 128 x D: warpgroup w's keys at sK + w*TILE */
    const uint32_t sV = sK + 2 * TILE;     /* 128 x D */
    const uint32_t sQ0 = sV + 2 * TILE;    /* 2 stages of 64 x D */
    const uint32_t sO0 = sQ0 + 2 * TILE;   /* dO, 2 stages */
    const uint32_t sS0 = sO0 + 2 * TILE;   /* dS^T of warpgroup w ([key][query]) at sS0 + w*TILE */
    const uint32_t sKT = sS0 + 2 * TILE;   /* SPLIT: K^T, D x 128 keys as two D x 64 tiles (keys 64h..) */
    const uint32_t sL0 = sKT + (SPLIT ? 2 * TILE : 0); /* lse, 2 stages of 64 floats */
    const uint32_t sD0 = sL0 + 2 * BM * 4;  /* delta, 2 stages */
    const float *sLf = reinterpret_cast<const float *>(smem + (sL0 - base));
    const float *sDf = reinterpret_cast<const float *>(smem + (sD0 - base));

    const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127, wq = (tid >> 5) & 3, lane = tid & 31;
    const int gr = lane >> 2, tq = lane & 3;
    const int H = Hkv * G;
    const int nb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int n0 = nb * BN, kv0 = n0 + wg * 64; /* first key of the CTA, of this warpgroup */
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    const size_t ldo = (size_t)H * D;
    const __nv_bfloat16 *grp = qkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
    const int nqb = (T + BM - 1) / BM;
    const int qb0 = causal ? n0 / BM : 0;
    const int per_head = nqb - qb0;
    const int total = G * per_head;
    const uint32_t sKw = sK + wg * TILE, sVw = sV + wg * TILE, sSw = sS0 + wg * TILE;

    /* Q, dO, lse and delta of iteration `it` into stage st. Without branches (it is issued while wgmma
     * runs): threads 0-63 copy lse, 64-127 delta, 128-255 repeat them (same bytes to the same place). */
    auto load_q = [&](int it, int st) {
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        mt__fa_load_tile<BM, D, NT>(sQ0 + st * TILE, grp + (size_t)jj * D, ld, q0, T, tid);
        mt__fa_load_tile<BM, D, NT>(sO0 + st * TILE, dout + (size_t)b * T * ldo + (size_t)hh * D, ldo, q0, T, tid);
        const int r = tid & (BM - 1), which = (tid >> 6) & 1;
        const bool ok = q0 + r < T;
        const float *src = (which ? delta : lse) + ((size_t)b * H + hh) * T + (ok ? q0 + r : 0);
        mt__fa_cp4((which ? sD0 : sL0) + st * BM * 4 + r * 4, src, ok);
    };

    mt__fa_load_tile<BN, D, NT>(sK, grp + (size_t)G * D, ld, n0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sV, grp + (size_t)(G + 1) * D, ld, n0, T, tid);
    load_q(0, 0);
    mt__fa_cp_commit();
    if (SPLIT) { /* K^T: element (d, key) at tile key/64, row d, column key%64; two keys per 4-byte store */
        mt__fa_cp_wait<0>();
        __syncthreads();
#pragma unroll 4
        for (int k = 0; k < BN * D / 2 / NT; k++) {
            const int i = k * NT + tid, d = i % D, key = 2 * (i / D);
            const unsigned short lo =
                *reinterpret_cast<const unsigned short *>(smem + mt__fa_swz<64>(key, d >> 3) + (d & 7) * 2);
            const unsigned short hi =
                *reinterpret_cast<const unsigned short *>(smem + mt__fa_swz<64>(key + 1, d >> 3) + (d & 7) * 2);
            const int kc = key & 63;
            *reinterpret_cast<uint32_t *>(smem + (sKT - base) + (key >> 6) * TILE + mt__fa_swz<64>(d, kc >> 3) +
                                          (kc & 7) * 2) = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        /* made visible to wgmma by the fence and barrier at the top of the first iteration */
    }

    float dk[32], dv[32], s[32], dp[32], dq[32]; /* SPLIT: dQ in dq[0..15] */
    float(&dq16)[16] = *reinterpret_cast<float(*)[16]>(dq);
#pragma unroll
    for (int i = 0; i < 32; i++) dk[i] = dv[i] = s[i] = dp[i] = dq[i] = 0.f;
    /* The dQ of an iteration is added to dq_acc during the next one, while its first products run:
     * pend = its first accumulator row, pend_rows = its rows before T. Before the first iteration, the
     * zeros in dq go to a valid place (no branch). */
    float *pend = dq_acc + ((size_t)b * H + (size_t)g * G) * T * D + (size_t)qb0 * BM * D;
    int pend_rows = T - qb0 * BM;
    auto flush = [&]() {
        if (SPLIT) mt__fa_red_tile<4, D>(pend, dq16, wq * 16 + gr, wg * 32, pend_rows, lane);
        else mt__fa_red_tile<8, D>(pend, dq, wq * 16 + gr, 0, pend_rows, lane);
    };

    for (int it = 0; it < total; it++) {
        const int st = it & 1;
        mt__fa_cp_wait<0>();     /* this stage (and, the first time, K and V) has landed */
        mt__fence_async_smem();  /* ... and is visible to wgmma */
        __syncthreads();         /* everyone's copies done; everyone is past the previous iteration */
        auto prefetch = [&]() {  /* the next stage, free now (the last iteration reloads itself there) */
            load_q(it + 1 < total ? it + 1 : it, st ^ 1);
            mt__fa_cp_commit();
        };
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        const uint32_t sQ = sQ0 + st * TILE, sO = sO0 + st * TILE;
        const float *sL = sLf + st * BM, *sDl = sDf + st * BM;
        /* a warpgroup whose keys are all past T or (causal) after every query of the block adds nothing;
         * warpgroup 0 (keys n0.., n0 <= q0) always has work */
        const bool act = !(kv0 >= T || (causal && kv0 > q0 + BM - 1));
        float *dqh = dq_acc + (((size_t)b * H + hh) * T + q0) * D; /* row q0 of this head's accumulator */
        /* Each run of wgmma below completes (wait_group 0) inside its own branch: none is in flight
         * where the paths join, so the compiler never has to serialize them. */
        if (!SPLIT && !act) {
            prefetch();
            flush();
#pragma unroll
            for (int i = 0; i < 32; i++) dq[i] = 0.f; /* flushed: the next flush adds nothing */
            continue;
        }
        if (act) {
            /* S^T = K Q^T, dP^T = V dO^T (two groups: P^T is computed while dP^T is still running);
             * meanwhile the next stage's copies and the previous dQ's reductions are issued */
            mt__wg_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                mt__wg_ss<0, 0>(s, mt__wg_desc(sKw + kk * 32), mt__wg_desc(sQ + kk * 32), kk);
            mt__wg_commit();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                mt__wg_ss<0, 0>(dp, mt__wg_desc(sVw + kk * 32), mt__wg_desc(sO + kk * 32), kk);
            mt__wg_commit();
            prefetch();
            flush();
            mt__wg_wait<1>();
            mt__wg_keep(s);

            /* P^T = exp2(S^T c - lse log2e), masked, kept in s; bf16 A fragments; then dV += P^T dO */
            const bool need_mask = (q0 + BM > T) || (kv0 + 64 > T) || (causal && kv0 + 63 > q0);
            const int kr = kv0 + wq * 16 + gr; /* key row of elements 0, 1 (+8 for 2, 3) */
            uint32_t pa[4][4], da[4][4];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int qc = 8 * j + 2 * tq;
                const float2 l = *reinterpret_cast<const float2 *>(sL + qc);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float sv = s[4 * j + e];
                    if (need_mask) {
                        const int kv = kr + (e >> 1) * 8, q = q0 + qc + (e & 1);
                        if (kv >= T || q >= T || (causal && kv > q)) sv = -INFINITY;
                    }
                    s[4 * j + e] = mt__fa_exp2(fmaf(sv, scale_log2, -((e & 1) ? l.y : l.x) * 1.4426950408889634f));
                }
                pa[j >> 1][(j & 1) * 2 + 0] = mt__fa_pack(s[4 * j], s[4 * j + 1]);
                pa[j >> 1][(j & 1) * 2 + 1] = mt__fa_pack(s[4 * j + 2], s[4 * j + 3]);
            }
            mt__wg_fence();
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) mt__wg_rs<1>(dv, pa[kk], mt__wg_desc(sO + kk * 2048));
            mt__wg_commit();
            mt__wg_wait<1>(); /* dP^T is done (dV may still run) */
            mt__wg_keep(dp);

            /* dS^T = P^T (dP^T - delta): bf16 A fragments, and to this warpgroup's [key][query] tile */
            {
                const int rl = wq * 16 + gr;
                unsigned char *p = smem + (sSw - base);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const float2 dl = *reinterpret_cast<const float2 *>(sDl + 8 * j + 2 * tq);
                    const uint32_t lo = mt__fa_pack(s[4 * j] * (dp[4 * j] - dl.x), s[4 * j + 1] * (dp[4 * j + 1] - dl.y));
                    const uint32_t hi =
                        mt__fa_pack(s[4 * j + 2] * (dp[4 * j + 2] - dl.x), s[4 * j + 3] * (dp[4 * j + 3] - dl.y));
                    da[j >> 1][(j & 1) * 2 + 0] = lo;
                    da[j >> 1][(j & 1) * 2 + 1] = hi;
                    *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl, j) + tq * 4) = lo;
                    *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl + 8, j) + tq * 4) = hi;
                }
            }

            /* dK += dS^T Q (k = query rows) */
            mt__wg_fence();
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) mt__wg_rs<1>(dk, da[kk], mt__wg_desc(sQ + kk * 2048));
            if (!SPLIT) {
                /* dQ_part (64 queries x D) = dS K over this warpgroup's 64 keys */
                mt__fence_async_smem();
                mt__bar_sync(2 + wg, 128); /* the whole dS^T tile is written */
#pragma unroll
                for (int kk = 0; kk < 64 / 16; kk++)
                    mt__wg_ss<1, 1>(dq, mt__wg_desc(sSw + kk * 2048), mt__wg_desc(sKw + kk * 2048), kk);
            }
            mt__wg_commit();
            mt__wg_wait<0>();
            mt__wg_keep(dk);
            mt__wg_keep(dv);
        } else { /* SPLIT, warpgroup 1 idle: its dS^T is zero (warpgroup 0 still reads it for dQ) */
            prefetch();
            flush();
            unsigned char *p = smem + (sSw - base);
#pragma unroll
            for (int k = 0; k < 4; k++)
                *reinterpret_cast<uint4 *>(p + (k * 128 + wtid) * 16) = make_uint4(0u, 0u, 0u, 0u);
        }

        if (SPLIT) {
            /* dQ[:, 32w..32w+31] (64 queries x 32) = dS K over the 128 keys */
            mt__fence_async_smem();
            mt__bar_sync(1, 256); /* both dS^T tiles are written */
            const uint32_t bt = sKT + wg * 32 * 128; /* rows d = 32w.. of K^T */
            mt__wg_fence();
#pragma unroll
            for (int kk = 0; kk < 128 / 16; kk++)
                mt__wg_ss32<1, 0>(dq16, mt__wg_desc(sS0 + (kk >> 2) * TILE + (kk & 3) * 2048),
                                  mt__wg_desc(bt + (kk >> 2) * TILE + (kk & 3) * 32), kk);
            mt__wg_commit();
            mt__wg_wait<0>();
            mt__wg_keep(dq16);
        } else {
            mt__wg_keep(dq);
        }
        pend = dqh;
        pend_rows = T - q0;
    }
    flush();
    mt__fa_cp_wait<0>(); /* the last iteration's (unused) prefetch must land before the CTA may exit */

    /* dK * scale and dV to bf16 through this warpgroup's own rows of sK / sV (only it reads them, and its
     * products are complete), then 16-byte stores */
    if (kv0 < T) {
        unsigned char *pk = smem + (sKw - base), *pv = smem + (sVw - base);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int rl = wq * 16 + gr + r * 8;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const uint32_t off = mt__fa_swz<64>(rl, j) + tq * 4;
                *reinterpret_cast<uint32_t *>(pk + off) =
                    mt__fa_pack(dk[4 * j + 2 * r] * scale, dk[4 * j + 2 * r + 1] * scale);
                *reinterpret_cast<uint32_t *>(pv + off) = mt__fa_pack(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1]);
            }
        }
        mt__bar_sync(2 + wg, 128);
        __nv_bfloat16 *dgrp = dqkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
#pragma unroll
        for (int k = 0; k < 64 * 8 / 128; k++) {
            const int i = k * 128 + wtid, r = i >> 3, c = i & 7, row = kv0 + r;
            if (row < T) {
                __nv_bfloat16 *dst = dgrp + (size_t)row * ld + (size_t)G * D + c * 8;
                *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(pk + mt__fa_swz<64>(r, c));
                *reinterpret_cast<uint4 *>(dst + D) = *reinterpret_cast<const uint4 *>(pv + mt__fa_swz<64>(r, c));
            }
        }
    }
#else
    (void)dqkv; (void)dq_acc; (void)dout; (void)lse; (void)delta; (void)qkv; (void)T; (void)Hkv; (void)G;
    (void)causal; (void)scale; (void)scale_log2;
#endif
}

/* Mask this thread's part of a warpgroup's 64-key x 64-query S^T accumulator: element 4j+e is key
 * kr + 8*(e>>1) and query qc + 8j + (e&1) (kr: the thread's first key row, qc: its first query
 * column); keys or queries at or past T, and with causal keys after the query, become -inf.  The
 * pipelined backwards call it behind a test of the whole block: inside the exponential loop the
 * compiler predicated it, and its ~250 instructions ran on every block, masked or not. */
__device__ __forceinline__ void mt__fa_mask_st(float (&s)[32], int kr, int qc, int T, int causal) {
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int kv = kr + (e >> 1) * 8, q = qc + 8 * j + (e & 1);
            if (kv >= T || q >= T || (causal && kv > q)) s[4 * j + e] = -INFINITY;
        }
}

/* The pipelined backwards with BULK: a thread's N dQ accumulators (its wgmma fragments; 256 threads, N =
 * D / 4) into buffer buf of 64 x D-float buffers at sdq, float4 k at 1024 k + 4 tid (the tile order of
 * mt__flash_bwd_post_tiles_kernel): consecutive threads write consecutive 16 bytes. */
template <int N>
__device__ __forceinline__ void mt__fa_stage_dq(unsigned char *sdq, int buf, const float (&dq)[N], int tid) {
    float *p = reinterpret_cast<float *>(sdq) + buf * (256 * N) + tid * 4;
#pragma unroll
    for (int k = 0; k < N / 4; k++)
        *reinterpret_cast<float4 *>(p + k * 1024) = make_float4(dq[4 * k], dq[4 * k + 1], dq[4 * k + 2], dq[4 * k + 3]);
}

/* Backward on wgmma, head dim 64, pipelined across query blocks (mt__flash_bwd3p_run; the hd 64
 * default unless MT_FLASH_BWD_PIPE is 0).  The products and tiles of mt__flash_bwd3_kernel<D, 1>, in
 * another order.  That kernel drains every product of a block before the next block starts, so the
 * tensor cores idle while the warpgroups compute P^T and dS^T.  Here block it's S^T = K Q^T and
 * dP^T = V dO^T go in together with block it-1's dK += dS^T Q and dQ = dS K (its dS^T kept as
 * register fragments and in shared memory), so P^T is computed while three products run and dS^T
 * while two do (dQ of it-1, dV of it).  Every product still completes inside its iteration: a
 * wgmma in flight across the loop's back edge makes ptxas serialize them all (C7514).  What that
 * needs: Q/dO/lse/delta in 3 stages (block it-1's Q is read during block it while block it+1 is
 * prefetched), dS^T in 2 buffers, the first block's "previous" products on zeros, the last block's
 * after the loop, and no branch on whether a warpgroup has work (a warpgroup whose keys all lie
 * after the block or past T computes masked zeros).  The mask runs only on blocks that need it
 * (mt__fa_mask_st) and the wgmma descriptors are a base per tile plus a constant per k step
 * (mt__wg_desc_at): an unmasked block issues ~680 instructions per thread, down from ~970.  lse and
 * delta are read into registers while the products run, and the dQ reductions are issued after the
 * block's fence and barrier, which would otherwise wait for them (kernels/ATTENTION_NOTES.md v19).
 * BULK (not the default; written, not yet run on a GPU: ATTENTION_NOTES.md v21): instead of 4
 * red.global.add.v4 per thread and block, the threads stage dQ in shared memory (two buffers) and one
 * thread hands the block's 16 KB to the copy engine (cp.reduce.async.bulk .add.f32) into an accumulator
 * kept in 64-row tiles (mt__flash_bwd_post_tiles_kernel converts it).
 * ptxas, sm_90a: 242 registers, no spills, 133,632 B of dynamic shared memory (BULK: 166,400). */
template <int D, bool BULK>
__global__ void __launch_bounds__(256, 1)
mt__flash_bwd3p_kernel(__nv_bfloat16 *__restrict__ dqkv, float *__restrict__ dq_acc,
                       const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ lse,
                       const float *__restrict__ delta, const __nv_bfloat16 *__restrict__ qkv, int T, int Hkv, int G,
                       int causal, float scale, float scale_log2) {
    static_assert(D == 64, "the pipelined wgmma backward is written for head dim 64");
    constexpr int BM = 64, BN = 128, NT = 256, TILE = 64 * D * 2, NS = 3;
#if MT__WG_OK
    extern __shared__ __align__(1024) unsigned char mt__fa_smem3p[];
    const uint32_t raw = mt__fa_smem_addr(mt__fa_smem3p);
    const uint32_t base = (raw + 1023u) & ~1023u;
    unsigned char *smem = mt__fa_smem3p + (base - raw);
    const uint32_t sK = base;              /* 128 x D: warpgroup w's keys at sK + w*TILE */
    const uint32_t sV = sK + 2 * TILE;     /* 128 x D */
    const uint32_t sQ0 = sV + 2 * TILE;    /* NS stages of 64 x D */
    const uint32_t sO0 = sQ0 + NS * TILE;  /* dO, NS stages */
    const uint32_t sS0 = sO0 + NS * TILE;  /* dS^T, 2 buffers of 2 tiles ([key][query], warpgroup w's at +w*TILE) */
    const uint32_t sKT = sS0 + 4 * TILE;   /* K^T, D x 128 keys as two D x 64 tiles */
    const uint32_t sL0 = sKT + 2 * TILE;   /* lse, NS stages of 64 floats */
    const uint32_t sD0 = sL0 + NS * BM * 4; /* delta, NS stages; BULK: then dQ, 2 buffers of 64 x 64 floats */
    const float *sLf = reinterpret_cast<const float *>(smem + (sL0 - base));
    const float *sDf = reinterpret_cast<const float *>(smem + (sD0 - base));

    const int tid = threadIdx.x, wg = tid >> 7, wq = (tid >> 5) & 3, lane = tid & 31;
    const int gr = lane >> 2, tq = lane & 3;
    const int H = Hkv * G;
    const int nb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int n0 = nb * BN, kv0 = n0 + wg * 64;
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    const size_t ldo = (size_t)H * D;
    const __nv_bfloat16 *grp = qkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
    const int nqb = (T + BM - 1) / BM;
    const int qb0 = causal ? n0 / BM : 0;
    const int per_head = nqb - qb0;
    const int total = G * per_head;
    const uint32_t sKw = sK + wg * TILE, sVw = sV + wg * TILE;

    auto load_q = [&](int it, int st) { /* as in mt__flash_bwd3_kernel */
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        mt__fa_load_tile<BM, D, NT>(sQ0 + st * TILE, grp + (size_t)jj * D, ld, q0, T, tid);
        mt__fa_load_tile<BM, D, NT>(sO0 + st * TILE, dout + (size_t)b * T * ldo + (size_t)hh * D, ldo, q0, T, tid);
        const int r = tid & (BM - 1), which = (tid >> 6) & 1;
        const bool ok = q0 + r < T;
        const float *src = (which ? delta : lse) + ((size_t)b * H + hh) * T + (ok ? q0 + r : 0);
        mt__fa_cp4((which ? sD0 : sL0) + st * BM * 4 + r * 4, src, ok);
    };

    mt__fa_load_tile<BN, D, NT>(sK, grp + (size_t)G * D, ld, n0, T, tid);
    mt__fa_load_tile<BN, D, NT>(sV, grp + (size_t)(G + 1) * D, ld, n0, T, tid);
    load_q(0, 0);
    mt__fa_cp_commit();
    mt__fa_cp_wait<0>();
    __syncthreads();
#pragma unroll 4
    for (int k = 0; k < BN * D / 2 / NT; k++) { /* K^T as in mt__flash_bwd3_kernel */
        const int i = k * NT + tid, d = i % D, key = 2 * (i / D);
        const unsigned short lo =
            *reinterpret_cast<const unsigned short *>(smem + mt__fa_swz<64>(key, d >> 3) + (d & 7) * 2);
        const unsigned short hi =
            *reinterpret_cast<const unsigned short *>(smem + mt__fa_swz<64>(key + 1, d >> 3) + (d & 7) * 2);
        const int kc = key & 63;
        *reinterpret_cast<uint32_t *>(smem + (sKT - base) + (key >> 6) * TILE + mt__fa_swz<64>(d, kc >> 3) +
                                      (kc & 7) * 2) = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    { /* dS^T buffer 1 as zeros: the first block's "previous block" products (below) read it */
        uint4 *z = reinterpret_cast<uint4 *>(smem + (sS0 + 2 * TILE - base));
#pragma unroll
        for (int k = 0; k < 2 * TILE / 16 / NT; k++) z[k * NT + tid] = make_uint4(0u, 0u, 0u, 0u);
    }
    mt__fence_async_smem();
    __syncthreads();

    float dk[32], dv[32], dq16[16];
    uint32_t da[4][4]; /* dS^T of the previous block, bf16 A fragments (its dK product's A operand) */
#pragma unroll
    for (int i = 0; i < 32; i++) dk[i] = dv[i] = 0.f;
#pragma unroll
    for (int i = 0; i < 16; i++) dq16[i] = 0.f;
#pragma unroll
    for (int i = 0; i < 16; i++) da[i >> 2][i & 3] = 0u;
    /* the previous block: its dQ rows, Q stage and dS^T buffer (before the first: zeros, added to a valid row) */
    float *pend = dq_acc + ((size_t)b * H + (size_t)g * G) * T * D + (size_t)qb0 * BM * D;
    int pend_rows = T - qb0 * BM, pst = 0, pbuf = 1;
    if constexpr (BULK) pend = dq_acc + (((size_t)b * H + (size_t)g * G) * nqb + qb0) * (BM * D);
    /* dK += dS^T Q and dQ[:, 32w..32w+31] = dS K (128 keys, both warpgroups' dS^T tiles) of the block
     * in stage pstage, dS^T buffer pb: two groups */
    const uint64_t dK = mt__wg_desc(sKw), dV = mt__wg_desc(sVw), dQ0 = mt__wg_desc(sQ0), dO0 = mt__wg_desc(sO0);
    const uint64_t dS0 = mt__wg_desc(sS0), dKT = mt__wg_desc(sKT + wg * 32 * 128);
    auto issue_dk_dq = [&](int pstage, int pb) {
        mt__wg_fence();
        const uint64_t q = mt__wg_desc_at(dQ0, pstage * TILE);
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) mt__wg_rs<1>(dk, da[kk], mt__wg_desc_at(q, kk * 2048));
        mt__wg_commit();
        const uint64_t a = mt__wg_desc_at(dS0, pb * 2 * TILE);
#pragma unroll
        for (int kk = 0; kk < 128 / 16; kk++)
            mt__wg_ss32<1, 0>(dq16, mt__wg_desc_at(a, (kk >> 2) * TILE + (kk & 3) * 2048),
                              mt__wg_desc_at(dKT, (kk >> 2) * TILE + (kk & 3) * 32), kk);
        mt__wg_commit();
    };

    /* Block it: S^T and dP^T, then the previous block's dK and dQ, all queued at once; P^T is computed
     * while dP^T, dK, dQ run, dS^T while dQ and dV run. Everything completes inside the iteration
     * (nothing in flight across the loop's back edge, where the compiler would serialize wgmma). */
    for (int it = 0; it < total; it++) {
        const int st = it % NS, nst = (it + 1) % NS;
        float s[32], dp[32];
#pragma unroll
        for (int i = 0; i < 32; i++) s[i] = dp[i] = 0.f;
        const uint64_t dQs = mt__wg_desc_at(dQ0, st * TILE), dOs = mt__wg_desc_at(dO0, st * TILE);
        mt__wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            mt__wg_ss<0, 0>(s, mt__wg_desc_at(dK, kk * 32), mt__wg_desc_at(dQs, kk * 32), kk);
        mt__wg_commit();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            mt__wg_ss<0, 0>(dp, mt__wg_desc_at(dV, kk * 32), mt__wg_desc_at(dOs, kk * 32), kk);
        mt__wg_commit();
        issue_dk_dq(pst, pbuf);
        /* the next block into the stage read two blocks ago (done before the last barrier); no branch
         * while wgmma runs: the last block loads itself again, unused */
        load_q(it + 1 < total ? it + 1 : it, nst);
        mt__fa_cp_commit();
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        const float *sL = sLf + st * BM, *sDl = sDf + st * BM;
        /* lse and delta of this thread's query columns, read while the products run (read after the
         * waits below, their latency behind the busy shared memory stalled every warp) */
        float2 lq[8], dl[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            lq[j] = *reinterpret_cast<const float2 *>(sL + 8 * j + 2 * tq);
            dl[j] = *reinterpret_cast<const float2 *>(sDl + 8 * j + 2 * tq);
        }

        mt__wg_wait<3>(); /* S^T done (dP^T, dK, dQ may run) */
        mt__wg_keep(s);
        /* P^T = exp2(S^T c - lse log2e), masked (all of it when this warpgroup's keys are after the block or past T) */
        if ((q0 + BM > T) || (kv0 + 64 > T) || (causal && kv0 + 63 > q0)) /* behind a branch: see mt__fa_mask_st */
            mt__fa_mask_st(s, kv0 + wq * 16 + gr, q0 + 2 * tq, T, causal);
        uint32_t pa[4][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float2 l = lq[j];
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[4 * j + e] =
                    mt__fa_exp2(fmaf(s[4 * j + e], scale_log2, -((e & 1) ? l.y : l.x) * 1.4426950408889634f));
            pa[j >> 1][(j & 1) * 2 + 0] = mt__fa_pack(s[4 * j], s[4 * j + 1]);
            pa[j >> 1][(j & 1) * 2 + 1] = mt__fa_pack(s[4 * j + 2], s[4 * j + 3]);
        }
        mt__wg_fence();
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) mt__wg_rs<1>(dv, pa[kk], mt__wg_desc_at(dOs, kk * 2048));
        mt__wg_commit();
        mt__wg_wait<2>(); /* dP^T and the previous dK done (its dQ and this dV may run): da is free */
        mt__wg_keep(dp);

        /* dS^T = P^T (dP^T - delta): bf16 A fragments, and to this warpgroup's tile of buffer it & 1 */
        {
            const int rl = wq * 16 + gr;
            unsigned char *p = smem + (sS0 + (it & 1) * 2 * TILE + wg * TILE - base);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const uint32_t lo =
                    mt__fa_pack(s[4 * j] * (dp[4 * j] - dl[j].x), s[4 * j + 1] * (dp[4 * j + 1] - dl[j].y));
                const uint32_t hi =
                    mt__fa_pack(s[4 * j + 2] * (dp[4 * j + 2] - dl[j].x), s[4 * j + 3] * (dp[4 * j + 3] - dl[j].y));
                da[j >> 1][(j & 1) * 2 + 0] = lo;
                da[j >> 1][(j & 1) * 2 + 1] = hi;
                *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl, j) + tq * 4) = lo;
                *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl + 8, j) + tq * 4) = hi;
            }
        }
        mt__wg_wait<0>(); /* the previous dQ and this dV */
        mt__wg_keep(dq16);
        mt__wg_keep(dv);
        mt__wg_keep(dk);
        if constexpr (BULK) {
            /* the previous block's dQ to buffer it & 1, whose reduction (two blocks ago) has read it: thread
             * 0 waited for that before the last barrier; now it waits for the last block's, for the next */
            mt__fa_stage_dq<16>(smem + (sD0 + NS * BM * 4 - base), it & 1, dq16, tid);
            if (tid == 0) mt__bulk_wait_read<0>();
        }
        /* the next block: its stage has landed (each thread's copies), this block's dS^T tiles (and the
         * staged dQ) are visible to wgmma and the copy engine, every warpgroup is past this block's products */
        mt__fa_cp_wait<0>();
        mt__fence_async_smem();
        __syncthreads();
        if constexpr (BULK) {
            /* the previous block's dQ (none before the first) added by the copy engine: one operation */
            if (tid == 0 && it > 0) {
                mt__bulk_red_add_f32(pend, sD0 + NS * BM * 4 + (it & 1) * (BM * D * 4), BM * D * 4);
                mt__bulk_commit();
            }
            pend = dq_acc + (((size_t)b * H + hh) * nqb + q0 / BM) * (BM * D);
        } else {
            /* the previous block's dQ into dq_acc, after the fence: a fence waits for this thread's
             * outstanding reductions, so issued before it they stalled every warp for their round trip */
            mt__fa_red_tile<4, D>(pend, dq16, wq * 16 + gr, wg * 32, pend_rows, lane);
            pend = dq_acc + (((size_t)b * H + hh) * T + q0) * D;
        }
        pend_rows = T - q0;
        pst = st;
        pbuf = it & 1;
    }
    issue_dk_dq(pst, pbuf); /* the last block's */
    mt__wg_wait<0>();
    mt__wg_keep(dk);
    mt__wg_keep(dq16);
    if constexpr (BULK) {
        mt__fa_stage_dq<16>(smem + (sD0 + NS * BM * 4 - base), total & 1, dq16, tid);
        mt__fence_async_smem();
        __syncthreads();
        if (tid == 0) {
            mt__bulk_red_add_f32(pend, sD0 + NS * BM * 4 + (total & 1) * (BM * D * 4), BM * D * 4);
            mt__bulk_commit();
            mt__bulk_wait_read<0>(); /* before the block's shared memory goes */
        }
    } else {
        mt__fa_red_tile<4, D>(pend, dq16, wq * 16 + gr, wg * 32, pend_rows, lane);
    }
    mt__fa_cp_wait<0>();

    /* dK * scale and dV to bf16 through this warpgroup's own rows of sK / sV, then 16-byte stores */
    if (kv0 < T) {
        unsigned char *pk = smem + (sKw - base), *pv = smem + (sVw - base);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int rl = wq * 16 + gr + r * 8;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const uint32_t off = mt__fa_swz<64>(rl, j) + tq * 4;
                *reinterpret_cast<uint32_t *>(pk + off) =
                    mt__fa_pack(dk[4 * j + 2 * r] * scale, dk[4 * j + 2 * r + 1] * scale);
                *reinterpret_cast<uint32_t *>(pv + off) = mt__fa_pack(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1]);
            }
        }
        mt__bar_sync(2 + wg, 128);
        const int wtid = tid & 127;
        __nv_bfloat16 *dgrp = dqkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
#pragma unroll
        for (int k = 0; k < 64 * 8 / 128; k++) {
            const int i = k * 128 + wtid, r = i >> 3, c = i & 7, row = kv0 + r;
            if (row < T) {
                __nv_bfloat16 *dst = dgrp + (size_t)row * ld + (size_t)G * D + c * 8;
                *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(pk + mt__fa_swz<64>(r, c));
                *reinterpret_cast<uint4 *>(dst + D) = *reinterpret_cast<const uint4 *>(pv + mt__fa_swz<64>(r, c));
            }
        }
    }
#else
    (void)dqkv; (void)dq_acc; (void)dout; (void)lse; (void)delta; (void)qkv; (void)T; (void)Hkv; (void)G;
    (void)causal; (void)scale; (void)scale_log2;
#endif
}

/* ------------------------------------------------------------------ backward on wgmma, head dim 128 (variant) */

/* Tiles whose rows hold 128 bf16 (256 bytes, two 128-byte swizzle atoms) are stored as two 64-column
 * halves: half h (columns 64h..64h+63) of a ROWS-row tile starts ROWS*128 bytes after half 0 and is an
 * ordinary mt__fa_swz<64> tile. Element (r, c) lies at (c >> 6)*ROWS*128 + mt__fa_swz<64>(r, (c & 63) >> 3)
 * + (c & 7)*2. So every wgmma operand of mt__flash_bwd3_128_kernel is one atom wide and uses
 * mt__wg_desc exactly as the hd 64 kernel does; only the start addresses differ (half bases are
 * multiples of 1024 bytes, so each half is swizzle-aligned).
 * Load ROWS rows x 128 bf16 (global row stride ld; rows row0.. of `nrows`, the rest zero-filled) into
 * that layout. Thread tid copies chunk tid % 16 of rows tid / 16 + k * NT/16 (one row's 256 bytes are
 * read by 16 consecutive threads). */
template <int ROWS, int NT>
__device__ __forceinline__ void mt__fa_load_tile_h(uint32_t s, const __nv_bfloat16 *g, size_t ld, int row0, int nrows,
                                                   int tid) {
    constexpr int RS = NT / 16; /* rows per pass */
    static_assert(NT % 16 == 0 && ROWS % RS == 0 && RS % 8 == 0, "tile rows must divide among the threads");
    const int c = tid & 15, r0 = tid >> 4;
    const __nv_bfloat16 *src = g + (size_t)(row0 + r0) * ld + c * 8;
    const uint32_t dst = s + (uint32_t)(c >> 3) * (ROWS * 128) + mt__fa_swz<64>(r0, c & 7); /* same swizzle every pass */
#pragma unroll
    for (int k = 0; k < ROWS / RS; k++) {
        const bool ok = row0 + r0 + k * RS < nrows;
        mt__fa_cp16(dst + k * RS * 128, ok ? (const void *)(src + (size_t)k * RS * ld) : (const void *)g, ok);
    }
}

/* Backward on wgmma, head dim 128 (mt__flash_bwd3_128_run, the hd 128 default where it can run; the
 * mma.sync FA2-layout backward otherwise). The same algorithm as mt__flash_bwd3_kernel: one CTA per (key block of
 * 128 rows, kv group, batch), 2 warpgroups of 64 keys (256 threads), keys as M; per head of the group
 * and query block of 64 rows (Q, dO, lse, delta double-buffered with cp.async):
 *   S^T = K Q^T, dP^T = V dO^T        m64n64, k over 128 dims: 8 steps, 4 in each half of K/V and Q/dO
 *   P^T, dS^T in registers as in the hd 64 kernel
 *   dV[h] += P^T dO[:, 64h..],  dK[h] += dS^T Q[:, 64h..]   for the halves h = 0, 1 (A from registers,
 *                                       B = half h of dO / Q, N-major: the hd 64 descriptor)
 *   dS^T (bf16) to shared memory; after a CTA barrier, warpgroup w computes dQ[:, 64w..64w+63] (64 x 64)
 *   over the 128 keys: A = dS (M-major view of the two dS^T tiles), B = half w of K, which is already a
 *   [key][dim] tile with keys along k (N-major): no transposed copy of K is needed;
 *   dq_acc += dQ at once (red.global.add.v4.f32).
 * Why this tiling: per thread, dK and dV (64 keys x 128 dims per warpgroup) take 2 x 64 fp32 registers;
 * S^T and dP^T 32 each; P^T as bf16 A fragments 16: 208 at the peak (while dV runs and dP^T is read),
 * within the 255 of one 256-thread CTA per SM. 3 warpgroups would leave 168 registers a thread, less
 * than dK + dV alone; query blocks of 32 would still need M = 64 for dQ (wgmma's fixed M) and halve
 * the work per S/dP product. The dQ of a block is added right after its product (the hd 64 kernel
 * defers that to the next iteration, which here would keep 32 more registers live across S and dP).
 * Shared memory: K, V 32 KB each, Q and dO 2 x 16 KB each, dS^T 16 KB, lse/delta 1 KB (+1 KB for
 * alignment): 146 KB. */
__global__ void __launch_bounds__(256, 1)
mt__flash_bwd3_128_kernel(__nv_bfloat16 *__restrict__ dqkv, float *__restrict__ dq_acc,
                          const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ lse,
                          const float *__restrict__ delta, const __nv_bfloat16 *__restrict__ qkv, int T, int Hkv,
                          int G, int causal, float scale, float scale_log2) {
    constexpr int D = 128, BM = 64, BN = 128, NT = 256;
    constexpr uint32_t HK = BN * 128;  /* bytes of one 64-column half of a 128-row tile (K, V) */
    constexpr uint32_t HQ = BM * 128;  /* ... of a 64-row tile (Q, dO); also one dS^T tile */
#if MT__WG_OK
    extern __shared__ __align__(1024) unsigned char mt__fa_smem4[];
    const uint32_t raw = mt__fa_smem_addr(mt__fa_smem4);
    const uint32_t base = (raw + 1023u) & ~1023u;
    unsigned char *smem = mt__fa_smem4 + (base - raw);
    const uint32_t sK = base;            /* 128 x 128, halves HK apart; warpgroup w's keys at + w*HQ */
    const uint32_t sV = sK + 2 * HK;     /* 128 x 128 */
    const uint32_t sQ0 = sV + 2 * HK;    /* 2 stages of 64 x 128 (2*HQ bytes each) */
    const uint32_t sO0 = sQ0 + 4 * HQ;   /* dO, 2 stages */
    const uint32_t sS0 = sO0 + 4 * HQ;   /* dS^T of warpgroup w ([key][query], 64 x 64) at sS0 + w*HQ */
    const uint32_t sL0 = sS0 + 2 * HQ;   /* lse, 2 stages of 64 floats */
    const uint32_t sD0 = sL0 + 2 * BM * 4; /* delta, 2 stages */
    const float *sLf = reinterpret_cast<const float *>(smem + (sL0 - base));
    const float *sDf = reinterpret_cast<const float *>(smem + (sD0 - base));

    const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127, wq = (tid >> 5) & 3, lane = tid & 31;
    const int gr = lane >> 2, tq = lane & 3;
    const int H = Hkv * G;
    const int nb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int n0 = nb * BN, kv0 = n0 + wg * 64;
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    const size_t ldo = (size_t)H * D;
    const __nv_bfloat16 *grp = qkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
    const int nqb = (T + BM - 1) / BM;
    const int qb0 = causal ? n0 / BM : 0;
    const int per_head = nqb - qb0;
    const int total = G * per_head;
    const uint32_t sKw = sK + wg * HQ, sVw = sV + wg * HQ, sSw = sS0 + wg * HQ;

    auto load_q = [&](int it, int st) { /* as in mt__flash_bwd3_kernel */
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        mt__fa_load_tile_h<BM, NT>(sQ0 + st * 2 * HQ, grp + (size_t)jj * D, ld, q0, T, tid);
        mt__fa_load_tile_h<BM, NT>(sO0 + st * 2 * HQ, dout + (size_t)b * T * ldo + (size_t)hh * D, ldo, q0, T, tid);
        const int r = tid & (BM - 1), which = (tid >> 6) & 1;
        const bool ok = q0 + r < T;
        const float *src = (which ? delta : lse) + ((size_t)b * H + hh) * T + (ok ? q0 + r : 0);
        mt__fa_cp4((which ? sD0 : sL0) + st * BM * 4 + r * 4, src, ok);
    };

    mt__fa_load_tile_h<BN, NT>(sK, grp + (size_t)G * D, ld, n0, T, tid);
    mt__fa_load_tile_h<BN, NT>(sV, grp + (size_t)(G + 1) * D, ld, n0, T, tid);
    load_q(0, 0);
    mt__fa_cp_commit();

    /* S^T, dP^T and dQ are declared where they are produced: their first product overwrites them (acc 0),
     * so nothing of theirs is live from one iteration to the next */
    float dk[2][32], dv[2][32];
#pragma unroll
    for (int i = 0; i < 32; i++) dk[0][i] = dk[1][i] = dv[0][i] = dv[1][i] = 0.f;

    for (int it = 0; it < total; it++) {
        const int st = it & 1;
        mt__fa_cp_wait<0>();
        mt__fence_async_smem();
        __syncthreads(); /* this stage is visible; everyone is past the previous iteration's products */
        auto prefetch = [&]() { /* the next stage (the last iteration reloads itself), issued while wgmma runs */
            load_q(it + 1 < total ? it + 1 : it, st ^ 1);
            mt__fa_cp_commit();
        };
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        const uint32_t sQ = sQ0 + st * 2 * HQ, sO = sO0 + st * 2 * HQ;
        const float *sL = sLf + st * BM, *sDl = sDf + st * BM;
        const bool act = !(kv0 >= T || (causal && kv0 > q0 + BM - 1)); /* warpgroup 0 always has work */
        float *dqh = dq_acc + (((size_t)b * H + hh) * T + q0) * D;
        if (act) {
            /* S^T = K Q^T, dP^T = V dO^T: k step kk reads half kk/4, 32*(kk%4) bytes into the rows */
            float s[32], dp[32];
            mt__wg_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                mt__wg_ss<0, 0>(s, mt__wg_desc(sKw + (kk >> 2) * HK + (kk & 3) * 32),
                                mt__wg_desc(sQ + (kk >> 2) * HQ + (kk & 3) * 32), kk);
            mt__wg_commit();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                mt__wg_ss<0, 0>(dp, mt__wg_desc(sVw + (kk >> 2) * HK + (kk & 3) * 32),
                                mt__wg_desc(sO + (kk >> 2) * HQ + (kk & 3) * 32), kk);
            mt__wg_commit();
            prefetch();
            mt__wg_wait<1>();
            mt__wg_keep(s);

            /* P^T = exp2(S^T c - lse log2e), masked, kept in s; bf16 A fragments; dV[h] += P^T dO[:, 64h..] */
            const bool need_mask = (q0 + BM > T) || (kv0 + 64 > T) || (causal && kv0 + 63 > q0);
            const int kr = kv0 + wq * 16 + gr;
            uint32_t pa[4][4], da[4][4];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int qc = 8 * j + 2 * tq;
                const float2 l = *reinterpret_cast<const float2 *>(sL + qc);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float sv = s[4 * j + e];
                    if (need_mask) {
                        const int kv = kr + (e >> 1) * 8, q = q0 + qc + (e & 1);
                        if (kv >= T || q >= T || (causal && kv > q)) sv = -INFINITY;
                    }
                    s[4 * j + e] = mt__fa_exp2(fmaf(sv, scale_log2, -((e & 1) ? l.y : l.x) * 1.4426950408889634f));
                }
                pa[j >> 1][(j & 1) * 2 + 0] = mt__fa_pack(s[4 * j], s[4 * j + 1]);
                pa[j >> 1][(j & 1) * 2 + 1] = mt__fa_pack(s[4 * j + 2], s[4 * j + 3]);
            }
            mt__wg_fence();
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int kk = 0; kk < BM / 16; kk++) mt__wg_rs<1>(dv[h], pa[kk], mt__wg_desc(sO + h * HQ + kk * 2048));
            mt__wg_commit();
            mt__wg_wait<1>(); /* dP^T is done (dV may still run) */
            mt__wg_keep(dp);

            /* dS^T = P^T (dP^T - delta): bf16 A fragments, and to this warpgroup's [key][query] tile */
            {
                const int rl = wq * 16 + gr;
                unsigned char *p = smem + (sSw - base);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const float2 dl = *reinterpret_cast<const float2 *>(sDl + 8 * j + 2 * tq);
                    const uint32_t lo = mt__fa_pack(s[4 * j] * (dp[4 * j] - dl.x), s[4 * j + 1] * (dp[4 * j + 1] - dl.y));
                    const uint32_t hi =
                        mt__fa_pack(s[4 * j + 2] * (dp[4 * j + 2] - dl.x), s[4 * j + 3] * (dp[4 * j + 3] - dl.y));
                    da[j >> 1][(j & 1) * 2 + 0] = lo;
                    da[j >> 1][(j & 1) * 2 + 1] = hi;
                    *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl, j) + tq * 4) = lo;
                    *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl + 8, j) + tq * 4) = hi;
                }
            }

            /* dK[h] += dS^T Q[:, 64h..] (k = query rows) */
            mt__wg_fence();
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int kk = 0; kk < BM / 16; kk++) mt__wg_rs<1>(dk[h], da[kk], mt__wg_desc(sQ + h * HQ + kk * 2048));
            mt__wg_commit();
            mt__wg_wait<0>();
            mt__wg_keep(dk[0]);
            mt__wg_keep(dk[1]);
            mt__wg_keep(dv[0]);
            mt__wg_keep(dv[1]);
        } else { /* warpgroup 1 idle: its dS^T is zero (warpgroup 0 still reads it for dQ) */
            prefetch();
            unsigned char *p = smem + (sSw - base);
#pragma unroll
            for (int k = 0; k < 4; k++)
                *reinterpret_cast<uint4 *>(p + (k * 128 + wtid) * 16) = make_uint4(0u, 0u, 0u, 0u);
        }

        /* dQ[:, 64w..64w+63] (64 queries x 64) = dS K over the 128 keys: k step kk = keys 16kk.., rows
         * 16*(kk%4) of dS^T tile kk/4 (M-major A) and rows 16kk of half w of K (N-major B) */
        mt__fence_async_smem();
        mt__bar_sync(1, 256); /* both dS^T tiles are written */
        float dq[32];
        mt__wg_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)
            mt__wg_ss<1, 1>(dq, mt__wg_desc(sS0 + (kk >> 2) * HQ + (kk & 3) * 2048),
                            mt__wg_desc(sK + wg * HK + kk * 2048), kk);
        mt__wg_commit();
        mt__wg_wait<0>();
        mt__wg_keep(dq);
        mt__fa_red_tile<8, D>(dqh, dq, wq * 16 + gr, wg * 64, T - q0, lane);
    }
    mt__fa_cp_wait<0>(); /* the last iteration's (unused) prefetch must land before the CTA may exit */
    __syncthreads();     /* every warpgroup's dQ products (which read all of K) are done */

    /* dK * scale and dV to bf16 through this warpgroup's own rows of sK / sV, then 16-byte stores */
    if (kv0 < T) {
        unsigned char *pk = smem + (sKw - base), *pv = smem + (sVw - base);
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int rl = wq * 16 + gr + r * 8;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const uint32_t off = h * HK + mt__fa_swz<64>(rl, j) + tq * 4;
                    *reinterpret_cast<uint32_t *>(pk + off) =
                        mt__fa_pack(dk[h][4 * j + 2 * r] * scale, dk[h][4 * j + 2 * r + 1] * scale);
                    *reinterpret_cast<uint32_t *>(pv + off) = mt__fa_pack(dv[h][4 * j + 2 * r], dv[h][4 * j + 2 * r + 1]);
                }
            }
        mt__bar_sync(2 + wg, 128);
        __nv_bfloat16 *dgrp = dqkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
#pragma unroll
        for (int k = 0; k < 64 * 16 / 128; k++) {
            const int i = k * 128 + wtid, r = i >> 4, c = i & 15, row = kv0 + r;
            if (row < T) {
                const uint32_t off = (c >> 3) * HK + mt__fa_swz<64>(r, c & 7);
                __nv_bfloat16 *dst = dgrp + (size_t)row * ld + (size_t)G * D + c * 8;
                *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(pk + off);
                *reinterpret_cast<uint4 *>(dst + D) = *reinterpret_cast<const uint4 *>(pv + off);
            }
        }
    }
#else
    (void)dqkv; (void)dq_acc; (void)dout; (void)lse; (void)delta; (void)qkv; (void)T; (void)Hkv; (void)G;
    (void)causal; (void)scale; (void)scale_log2;
#endif
}

/* ------------------------------------------------------------------ forward on wgmma, head dims 64 and 128 */

/* d (64x128 fp32, warpgroup accumulator) (+)= A (64x16) * B (16x128), both from shared memory (TA / TB
 * and acc as in mt__wg_ss). Element 4j+e of d: row 16*warp + lane/4 + 8*(e>>1), column 8j + 2*(lane&3)
 * + (e&1), j = 0..15. */
template <int TA, int TB>
__device__ __forceinline__ void mt__wg_ss128(float (&d)[64], uint64_t a, uint64_t b, int acc) {
#if MT__WG_OK
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "
        "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
        "%62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(a), "l"(b), "r"(acc), "n"(TA), "n"(TB));
#endif
}
/* S products of either width: m64n64 (d[32]) or m64n128 (d[64]). */
template <int TA, int TB>
__device__ __forceinline__ void mt__wg_ssn(float (&d)[32], uint64_t a, uint64_t b, int acc) {
    mt__wg_ss<TA, TB>(d, a, b, acc);
}
template <int TA, int TB>
__device__ __forceinline__ void mt__wg_ssn(float (&d)[64], uint64_t a, uint64_t b, int acc) {
    mt__wg_ss128<TA, TB>(d, a, b, acc);
}

/* The descriptor of an N-major B operand 128 columns wide stored as two 64-column halves `half` bytes
 * apart (each half as in mt__wg_desc). For the 128-byte swizzle in the M/N-major form the leading
 * byte offset is the distance between swizzle atoms along M/N (CUTLASS's canonical
 * ((8,8,m),(8,k)):((1,8,LBO),(64,SBO)) in elements); mt__wg_desc leaves it at 1 because there it is
 * never used. `half` must be a multiple of 16 below 256 KB. */
__device__ __forceinline__ uint64_t mt__wg_desc2(uint32_t saddr, uint32_t half) {
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)((half >> 4) & 0x3FFFu) << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}
/* d (64x128 fp32) += A (64x16 bf16, registers, as in mt__wg_rs) * B (16x128, shared memory; TB as in
 * mt__wg_ss; for TB = 1 a descriptor from mt__wg_desc2). */
template <int TB>
__device__ __forceinline__ void mt__wg_rs128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
#if MT__WG_OK
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "
        "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
        "%62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, %69;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB));
#endif
}

/* A ROWS x D tile in the wgmma layout: D = 64 one mt__fa_swz<64> tile, D = 128 two 64-column halves
 * ROWS*128 bytes apart (mt__fa_load_tile_h). Either way element (r, c) is at (c >> 6)*ROWS*128 +
 * mt__fa_swz<64>(r, (c & 63) >> 3) + (c & 7)*2. */
template <int ROWS, int D, int NT>
__device__ __forceinline__ void mt__fa_load_tile_wg(uint32_t s, const __nv_bfloat16 *g, size_t ld, int row0, int nrows,
                                                    int tid) {
    static_assert(D == 64 || D == 128, "wgmma tiles are one or two 128-byte swizzle atoms wide");
    if constexpr (D == 64)
        mt__fa_load_tile<ROWS, 64, NT>(s, g, ld, row0, nrows, tid);
    else
        mt__fa_load_tile_h<ROWS, NT>(s, g, ld, row0, nrows, tid);
}

/* mbarriers (shared-memory transaction counters with a phase bit) and the other pieces of a
 * warp-specialized kernel: a producer warpgroup loads, consumer warpgroups compute, and the two sides
 * meet only at barriers of the stage they share. sm_90a only, like wgmma (empty elsewhere). */
__device__ __forceinline__ void mt__mbar_init(uint32_t bar, int count) {
#if MT__WG_OK
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
/* Make the initialised barriers visible to the other threads (and the async units) of the CTA. */
__device__ __forceinline__ void mt__mbar_fence_init() {
#if MT__WG_OK
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
/* Wait until the phase of parity `parity` of barrier `bar` has completed. */
__device__ __forceinline__ void mt__mbar_wait(uint32_t bar, uint32_t parity) {
#if MT__WG_OK
    asm volatile("{\n.reg .pred p;\nMT_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra MT_WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
#endif
}
__device__ __forceinline__ void mt__mbar_arrive(uint32_t bar) {
#if MT__WG_OK
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
#endif
}
/* Arrive on `bar` once every cp.async this thread has issued so far has landed (the barrier's count
 * includes this arrival: .noinc). */
__device__ __forceinline__ void mt__mbar_cp_arrive(uint32_t bar) {
#if MT__WG_OK
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
/* Named barrier `id` over `n` threads without waiting (the other side waits with mt__bar_sync). */
__device__ __forceinline__ void mt__bar_arrive(int id, int n) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
/* This warpgroup's registers per thread lowered / raised to N (a multiple of 8, 24..256). */
template <int N>
__device__ __forceinline__ void mt__setmaxnreg_dec() {
#if MT__WG_OK
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void mt__setmaxnreg_inc() {
#if MT__WG_OK
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

/* Forward on wgmma, head dims 64 and 128, warp-specialized (mt__flash_fwd4_run; through
 * mt__flash_fwd_wg_run the default on Hopper). A work item is (query block of 128 rows, head, batch);
 * a CTA takes items blockIdx.x, + gridDim.x, ..., heaviest query blocks first when causal. With one
 * CTA per item the grid scheduler balances the load; with one CTA per SM (persistent) the producer
 * loads the next item's K_0 and Q while the consumers finish the current one, so a CTA's fill and
 * its output no longer stand alone (+9 to +13 % at hd 64, T = 1024; kernels/ATTENTION_NOTES.md v20).
 * Three warpgroups (384 threads):
 *   warpgroup 0, the producer (72 registers a thread): per item Q into one of QB buffers and K_0 (Q
 *     first for the CTA's first item; for later ones K_0 first, as Q waits until the consumers have
 *     written out the item that used its buffer), then for t = 1.. K_t and V_{t-1} into NS stages
 *     with cp.async (stages and their phases count on across items); each thread arrives on the
 *     stage's "full" barrier when its copies have landed (cp.async.mbarrier.arrive), and waits on
 *     the stage's "empty" barrier before it overwrites a slot. K and V have barriers of their own:
 *     K_t's slot is free as soon as S_t is done, V_t's only after O += P_t V_t, one tile later.
 *   warpgroups 1 and 2, the consumers (216 registers), 64 query rows each, queries as M. Per key
 *     tile t, each consumer:
 *       S_t = Q K_t^T          m64nBN, A = Q, B = K (both K-major, D/16 k16 steps over the head dim;
 *                              at D = 128 steps 0-3 read the first 64-column half, 4-7 the second)
 *       O += P_{t-1} V_{t-1}   issued right behind S_t: A = P from registers (bf16), B = V (N-major,
 *                              BN/16 k16 steps over the keys; at D = 128 one m64n128 product whose B
 *                              spans both halves, mt__wg_desc2)
 *       wait for S_t: release K_t's slot; mask (tails, causal diagonal), running row max,
 *                              P_t = exp2(S_t c - m) and row sums
 *       wait for the product:  release V_{t-1}'s slot; O *= exp2(m_old c - m_new), P_t packed to bf16
 *                              A fragments (behind a barrier of the warpgroup: without it ptxas
 *                              hoists this wait above the exponentials)
 *     and after the last tile O += P V once more. The empty barriers count all 256 consumer threads.
 * PP (ping-pong, FlashAttention-3's schedule): a consumer issues its products only after the other
 * one has issued its own (named barriers 2 and 3, 256 threads: one side waits, the other arrives),
 * so the two softmaxes alternate and the tensor cores always have one warpgroup's products queued;
 * without PP both consumers run freely.
 * Nothing else is shared: no CTA barrier after the start. The consumers see the producer's copies
 * after the full barrier and a proxy fence (cp.async writes through the generic proxy, wgmma reads
 * through the async one). Causal: key tiles past the block's last row are never visited, both
 * consumers visit the same tiles (so the phases of the ping-pong stay paired; the diagonal tile is
 * masked), and blocks run heaviest first. O / l goes out through the consumer's rows of the Q tile
 * (16-byte stores); lse = (m c + log2 l) ln 2. No atomics: the result is the same on every run.
 * Registers per consumer thread: S BN/2 fp32, O D/2, P BN/4 (bf16 pairs). Shared memory: QB x Q
 * 128 x D, NS x (K, V) BN x D bf16, 4 NS + 2 QB barriers, 1 KB for alignment (D = 128, BN = 128,
 * NS = 3, QB = 1: 225 KB of the 227 KB an SM allows). The same loop with every thread loading and a
 * CTA barrier per tile (mt__flash_fwd3_kernel, the default before) is in the history at commit
 * 76731c6. Per item the consumers start from O = 0, release V's last slot too, and after writing out
 * release the Q buffer; each item's ping-pong starts and ends as described above, so the named
 * barriers stay paired. */
/* Registers a thread: 384 threads start with 168 each (65,536 / 384, in steps of 8); the producer gives
 * back what the consumers take, and setmaxnreg.inc waits until the CTA's pool has it, so
 * PREG + 2 CREG must stay within 3 x 168. */
#define MT__FWD4_PREG 72
#define MT__FWD4_CREG 216
static_assert(MT__FWD4_PREG + 2 * MT__FWD4_CREG <= 3 * 168, "the consumers would wait forever for registers");
template <int D, int BN, int NS, int PP, int QB>
__global__ void __launch_bounds__(384, 1)
mt__flash_fwd4_kernel(__nv_bfloat16 *__restrict__ out, float *__restrict__ lse, const __nv_bfloat16 *__restrict__ qkv,
                      int B, int T, int Hkv, int G, int causal, float scale_log2) {
    static_assert(D == 64 || D == 128, "the wgmma forward is written for head dims 64 and 128");
    static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128 rows (S is m64n64 or m64n128)");
    static_assert(NS >= 2, "at least two stages");
    static_assert(QB == 1 || QB == 2, "one or two Q buffers");
    constexpr int BM = 128, KT = BN * D * 2; /* bytes of a K or V tile */
    constexpr uint32_t HQ = BM * 128, HK = BN * 128;
#if MT__WG_OK
    extern __shared__ __align__(1024) unsigned char mt__fa_smem4[];
    const uint32_t raw = mt__fa_smem_addr(mt__fa_smem4);
    const uint32_t base = (raw + 1023u) & ~1023u;
    unsigned char *smem = mt__fa_smem4 + (base - raw);
    const uint32_t sQ0 = base, sKV = sQ0 + QB * BM * D * 2; /* stage s: K at sKV + s*2*KT, V KT bytes later */
    const uint32_t bars = sKV + NS * 2 * KT; /* fullK[NS], fullV[NS], emptyK[NS], emptyV[NS], fullQ[QB], emptyQ[QB] */
    auto full_k = [&](int s) { return bars + 8u * (uint32_t)s; };
    auto full_v = [&](int s) { return bars + 8u * (uint32_t)(NS + s); };
    auto empty_k = [&](int s) { return bars + 8u * (uint32_t)(2 * NS + s); };
    auto empty_v = [&](int s) { return bars + 8u * (uint32_t)(3 * NS + s); };
    auto full_q = [&](int q) { return bars + 8u * (uint32_t)(4 * NS + q); };
    auto empty_q = [&](int q) { return bars + 8u * (uint32_t)(4 * NS + QB + q); };

    const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127;
    const int H = Hkv * G;
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    /* the work items (query block, head, batch): this CTA takes items blockIdx.x, + gridDim.x, ...
     * With one CTA per item, the query blocks of a head follow each other (the heaviest first when
     * causal), so that CTAs running together share K and V in L2 and the grid scheduler balances the
     * load. Persistent, all heads' heaviest query blocks come first, so that each CTA's share of the
     * work is about even. */
    const int nmb = (T + BM - 1) / BM, per = H * B, nitems = nmb * per;
    const bool by_head = (int)gridDim.x >= nitems;
    struct item { int h, b, m0, ntiles; };
    auto get = [&](int w) {
        item x;
        const int mi = by_head ? w % nmb : w / per, rest = by_head ? w / nmb : w % per;
        x.m0 = (causal ? nmb - 1 - mi : mi) * BM;
        x.h = rest % H;
        x.b = rest / H;
        const int n_end = causal ? min(T, x.m0 + BM) : T;
        x.ntiles = (n_end + BN - 1) / BN;
        return x;
    };
    const int w_first = (int)blockIdx.x, w_step = (int)gridDim.x;

    if (tid == 0) {
        for (int s = 0; s < NS; s++) {
            mt__mbar_init(full_k(s), 128);
            mt__mbar_init(full_v(s), 128);
            mt__mbar_init(empty_k(s), 256);
            mt__mbar_init(empty_v(s), 256);
        }
        for (int q = 0; q < QB; q++) {
            mt__mbar_init(full_q(q), 128);
            mt__mbar_init(empty_q(q), 256);
        }
        mt__mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) { /* ------------------------------------------------ producer */
        mt__setmaxnreg_dec<MT__FWD4_PREG>();
        int tb = 0; /* key tiles of the items before this one: stage and phase count on across items */
        for (int w = w_first, li = 0; w < nitems; w += w_step, li++) {
            const item x = get(w);
            const int g = x.h / G, jh = x.h - g * G;
            const __nv_bfloat16 *qb = qkv + (size_t)x.b * T * ld + ((size_t)g * (G + 2) + jh) * D;
            const __nv_bfloat16 *kb = qkv + (size_t)x.b * T * ld + ((size_t)g * (G + 2) + G) * D;
            const __nv_bfloat16 *vb = kb + D;
            /* Q: ahead of K_0 for a CTA's first item; behind it otherwise, as with one Q buffer it waits
             * for the previous item's output */
            auto load_q = [&]() {
                const int q = li % QB, u = li / QB;
                if (u > 0) mt__mbar_wait(empty_q(q), (uint32_t)(u - 1) & 1u);
                mt__fa_load_tile_wg<BM, D, 128>(sQ0 + (uint32_t)q * BM * D * 2, qb, ld, x.m0, T, wtid);
                mt__mbar_cp_arrive(full_q(q));
            };
            if (li == 0) load_q();
            for (int t = 0; t <= x.ntiles; t++) {
                if (t < x.ntiles) { /* K_t */
                    const int s = (tb + t) % NS, u = (tb + t) / NS;
                    if (u > 0) mt__mbar_wait(empty_k(s), (uint32_t)(u - 1) & 1u);
                    mt__fa_load_tile_wg<BN, D, 128>(sKV + (uint32_t)s * 2 * KT, kb, ld, t * BN, T, wtid);
                    mt__mbar_cp_arrive(full_k(s));
                }
                if (t == 0 && li > 0) load_q();
                if (t > 0) { /* V_{t-1} */
                    const int s = (tb + t - 1) % NS, u = (tb + t - 1) / NS;
                    if (u > 0) mt__mbar_wait(empty_v(s), (uint32_t)(u - 1) & 1u);
                    mt__fa_load_tile_wg<BN, D, 128>(sKV + (uint32_t)s * 2 * KT + KT, vb, ld, (t - 1) * BN, T, wtid);
                    mt__mbar_cp_arrive(full_v(s));
                }
            }
            tb += x.ntiles;
        }
        mt__fa_cp_wait<0>();
        return;
    }

    /* ---------------------------------------------------------------- consumers */
    mt__setmaxnreg_inc<MT__FWD4_CREG>();
    const int c = wg - 1, wq = (wtid >> 5) & 3, lane = tid & 31, gr = lane >> 2, tq = lane & 3;

    float s[BN / 2], o[D / 2], mrow[2], lrow[2], alpha[2];
    uint32_t pa[BN / 16][4];
    int tb = 0;
    for (int w = w_first, li = 0; w < nitems; w += w_step, li++) {
        const item x = get(w);
        const int h = x.h, b = x.b, ntiles = x.ntiles, w0 = x.m0 + c * 64, qbuf = li % QB;
        const uint32_t sQw = sQ0 + (uint32_t)qbuf * BM * D * 2 + c * 64 * 128;
#pragma unroll
        for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] = 0.f;
        mrow[0] = mrow[1] = -INFINITY;
        lrow[0] = lrow[1] = 0.f;
        alpha[0] = alpha[1] = 0.f;

        const uint64_t dQw = mt__wg_desc(sQw);
        auto qk = [&](uint32_t sK) {
            const uint64_t dK = mt__wg_desc(sK);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                mt__wg_ssn<0, 0>(s, mt__wg_desc_at(dQw, (kk >> 2) * HQ + (kk & 3) * 32),
                                 mt__wg_desc_at(dK, (kk >> 2) * HK + (kk & 3) * 32), kk);
        };
        auto pv = [&](uint32_t sV) {
            const uint64_t dV = D == 128 ? mt__wg_desc2(sV, HK) : mt__wg_desc(sV);
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                if constexpr (D == 128) mt__wg_rs128<1>(o, pa[kk], mt__wg_desc_at(dV, kk * 2048));
                else mt__wg_rs<1>(*reinterpret_cast<float(*)[32]>(o), pa[kk], mt__wg_desc_at(dV, kk * 2048));
            }
        };
        auto softmax = [&](int t) {
            const int n0 = t * BN;
            if (n0 + BN > T || (causal && n0 + BN - 1 > w0)) {
                const int r0 = w0 + wq * 16 + gr;
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int row = r0 + (e >> 1) * 8, col = n0 + 8 * j + 2 * tq + (e & 1);
                        if (col >= T || (causal && col > row)) s[4 * j + e] = -INFINITY;
                    }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = mrow[r];
#pragma unroll
                for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float ms = (mx == -INFINITY) ? 0.f : mx * scale_log2;
                alpha[r] = mt__fa_exp2(mrow[r] * scale_log2 - ms);
                mrow[r] = mx;
                float rs = 0.f;
#pragma unroll
                for (int j = 0; j < BN / 8; j++) {
                    const float p0 = mt__fa_exp2(fmaf(s[4 * j + 2 * r], scale_log2, -ms));
                    const float p1 = mt__fa_exp2(fmaf(s[4 * j + 2 * r + 1], scale_log2, -ms));
                    s[4 * j + 2 * r] = p0;
                    s[4 * j + 2 * r + 1] = p1;
                    rs += p0 + p1;
                }
                lrow[r] = lrow[r] * alpha[r] + rs;
            }
        };
        auto rescale_pack = [&]() {
#pragma unroll
            for (int i = 0; i < D / 2; i++) o[i] *= alpha[(i >> 1) & 1];
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                pa[j >> 1][(j & 1) * 2 + 0] = mt__fa_pack(s[4 * j], s[4 * j + 1]);
                pa[j >> 1][(j & 1) * 2 + 1] = mt__fa_pack(s[4 * j + 2], s[4 * j + 3]);
            }
        };
        /* the ping-pong: wait for this consumer's turn to issue, and hand the turn over after issuing.
         * Consumer 0 goes first (consumer 1 arrives once up front); each issues ntiles + 1 times and
         * consumer 1 skips its last hand-over, so every barrier phase gets exactly 256 threads. */
        auto turn_wait = [&]() { if constexpr (PP) mt__bar_sync(2 + c, 256); };
        auto turn_pass = [&](bool last) { if constexpr (PP) if (!(last && c == 1)) mt__bar_arrive(3 - c, 256); };
        /* stage and phase of this item's key tile t (counting on from the items before) */
        auto sK = [&](int t) { return sKV + (uint32_t)((tb + t) % NS) * 2 * KT; };
        auto sV = [&](int t) { return sKV + (uint32_t)((tb + t) % NS) * 2 * KT + KT; };
        auto st = [&](int t) { return (tb + t) % NS; };
        auto ph = [&](int t) { return (uint32_t)((tb + t) / NS) & 1u; };

        if constexpr (PP) if (c == 1) mt__bar_arrive(2, 256);
        mt__mbar_wait(full_q(qbuf), (uint32_t)(li / QB) & 1u);
        mt__mbar_wait(full_k(st(0)), ph(0));
        mt__fence_async_smem();
        turn_wait();
        mt__wg_fence();
        qk(sK(0));
        mt__wg_commit();
        turn_pass(false);
        mt__wg_wait<0>();
        mt__wg_keep(s);
        mt__mbar_arrive(empty_k(st(0)));
        softmax(0);
        rescale_pack();

        for (int t = 1; t < ntiles; t++) {
            mt__mbar_wait(full_k(st(t)), ph(t));
            mt__mbar_wait(full_v(st(t - 1)), ph(t - 1));
            mt__fence_async_smem();
            turn_wait();
            mt__wg_fence();
            qk(sK(t));
            mt__wg_commit();
            pv(sV(t - 1));
            mt__wg_commit();
            turn_pass(false);
            mt__wg_wait<1>(); /* S_t is done: K_t's slot is free */
            mt__wg_keep(s);
            mt__mbar_arrive(empty_k(st(t)));
            softmax(t);
            mt__wg_keep(s);
            mt__bar_sync(4 + c, 128); /* keeps the wait for O += P V below the softmax (see above) */
            mt__wg_wait<0>();
            mt__wg_keep(o);
            mt__mbar_arrive(empty_v(st(t - 1)));
            rescale_pack();
        }
        {   /* O += P V of the last tile */
            mt__mbar_wait(full_v(st(ntiles - 1)), ph(ntiles - 1));
            mt__fence_async_smem();
            turn_wait();
            mt__wg_fence();
            pv(sV(ntiles - 1));
            mt__wg_commit();
            turn_pass(true);
            mt__wg_wait<0>();
            mt__wg_keep(o);
            mt__mbar_arrive(empty_v(st(ntiles - 1))); /* the next item's loads reuse it */
        }

        /* O / l into this consumer's rows of the Q tile (only its products read them), 16-byte stores */
        {
            unsigned char *pq = smem + (sQw - base);
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float l = lrow[r];
                l += __shfl_xor_sync(0xffffffffu, l, 1);
                l += __shfl_xor_sync(0xffffffffu, l, 2);
                const float inv = l > 0.f ? 1.f / l : 0.f;
                const int rl = wq * 16 + gr + r * 8, row = w0 + rl;
                if (tq == 0 && row < T)
                    lse[((size_t)b * H + h) * T + row] =
                        l > 0.f ? (mrow[r] * scale_log2 + __log2f(l)) * 0.69314718055994531f : -INFINITY;
#pragma unroll
                for (int j = 0; j < D / 8; j++)
                    *reinterpret_cast<uint32_t *>(pq + (j >> 3) * HQ + mt__fa_swz<64>(rl, j & 7) + tq * 4) =
                        mt__fa_pack(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
            }
            mt__bar_sync(4 + c, 128);
#pragma unroll
            for (int k = 0; k < 64 * (D / 8) / 128; k++) {
                const int i = k * 128 + wtid, r = i / (D / 8), cc = i % (D / 8), row = w0 + r;
                if (row < T)
                    *reinterpret_cast<uint4 *>(out + (((size_t)b * T + row) * H + h) * D + cc * 8) =
                        *reinterpret_cast<const uint4 *>(pq + (cc >> 3) * HQ + mt__fa_swz<64>(r, cc & 7));
            }
        }
        mt__mbar_arrive(empty_q(qbuf)); /* the output has left this item's Q buffer */
        tb += ntiles;
    }
#else
    (void)out; (void)lse; (void)qkv; (void)B; (void)T; (void)Hkv; (void)G; (void)causal; (void)scale_log2;
#endif
}

/* The hd 128 backward pipelined (mt__flash_bwd3p_128_run; the hd 128 default unless MT_FLASH_BWD_PIPE
 * is 0; H200 causal 240/290/324/341 TFLOP/s at T = 1024..8192 against the plain kernel's
 * 206/241/264/279): mt__flash_bwd3_128_kernel's tiles and products, with block it-1's
 * dK[h] += dS^T Q[:, 64h..] queued together with block it's S^T and dP^T, so P^T is computed while
 * dP^T and that dK run.  The dK product reads dS^T from shared memory (A K-major: the [key][query]
 * tile), so no dS^T registers stay live across blocks; dQ stays inside its block (deferring it too
 * would keep 32 more accumulators live next to S^T and dP^T).  As in mt__flash_bwd3p_kernel: Q/dO/
 * lse/delta in 3 stages, dS^T in 2 buffers, the first block's "previous" dK on a zeroed buffer, the
 * last block's after the loop, nothing in flight across the back edge, and no branch on whether a
 * warpgroup has work (masked zeros instead); the mask and descriptors as there; a block's dQ
 * reductions are issued after the next block's fence and barrier (v19).  BULK (not the default; not yet
 * run on a GPU, kernels/ATTENTION_NOTES.md v21): dQ staged in shared memory at the next block's start
 * (one 32 KB buffer) and added by the copy engine after that block's mid barrier, one operation per
 * block, into the tiled accumulator.  ptxas, sm_90a: 241 registers, no spills; shared memory 194.5 KB
 * (BULK: 226.5 KB). */
template <bool BULK>
__global__ void __launch_bounds__(256, 1)
mt__flash_bwd3p_128_kernel(__nv_bfloat16 *__restrict__ dqkv, float *__restrict__ dq_acc,
                           const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ lse,
                           const float *__restrict__ delta, const __nv_bfloat16 *__restrict__ qkv, int T, int Hkv,
                           int G, int causal, float scale, float scale_log2) {
    constexpr int D = 128, BM = 64, BN = 128, NT = 256, NS = 3;
    constexpr uint32_t HK = BN * 128;  /* bytes of one 64-column half of a 128-row tile (K, V) */
    constexpr uint32_t HQ = BM * 128;  /* ... of a 64-row tile (Q, dO); also one dS^T tile */
#if MT__WG_OK
    extern __shared__ __align__(1024) unsigned char mt__fa_smem5[];
    const uint32_t raw = mt__fa_smem_addr(mt__fa_smem5);
    const uint32_t base = (raw + 1023u) & ~1023u;
    unsigned char *smem = mt__fa_smem5 + (base - raw);
    const uint32_t sK = base;             /* 128 x 128, halves HK apart; warpgroup w's keys at + w*HQ */
    const uint32_t sV = sK + 2 * HK;      /* 128 x 128 */
    const uint32_t sQ0 = sV + 2 * HK;     /* NS stages of 64 x 128 (2*HQ bytes each) */
    const uint32_t sO0 = sQ0 + NS * 2 * HQ; /* dO, NS stages */
    const uint32_t sS0 = sO0 + NS * 2 * HQ; /* dS^T, 2 buffers of 2 tiles (warpgroup w's at + w*HQ) */
    const uint32_t sL0 = sS0 + 4 * HQ;    /* lse, NS stages of 64 floats */
    const uint32_t sD0 = sL0 + NS * BM * 4; /* delta, NS stages; BULK: then dQ, 64 x 128 floats */
    const float *sLf = reinterpret_cast<const float *>(smem + (sL0 - base));
    const float *sDf = reinterpret_cast<const float *>(smem + (sD0 - base));

    const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127, wq = (tid >> 5) & 3, lane = tid & 31;
    const int gr = lane >> 2, tq = lane & 3;
    const int H = Hkv * G;
    const int nb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int n0 = nb * BN, kv0 = n0 + wg * 64;
    const size_t ld = (size_t)Hkv * (G + 2) * D;
    const size_t ldo = (size_t)H * D;
    const __nv_bfloat16 *grp = qkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
    const int nqb = (T + BM - 1) / BM;
    const int qb0 = causal ? n0 / BM : 0;
    const int per_head = nqb - qb0;
    const int total = G * per_head;
    const uint32_t sKw = sK + wg * HQ, sVw = sV + wg * HQ;

    auto load_q = [&](int it, int st) { /* as in mt__flash_bwd3_128_kernel */
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        mt__fa_load_tile_h<BM, NT>(sQ0 + st * 2 * HQ, grp + (size_t)jj * D, ld, q0, T, tid);
        mt__fa_load_tile_h<BM, NT>(sO0 + st * 2 * HQ, dout + (size_t)b * T * ldo + (size_t)hh * D, ldo, q0, T, tid);
        const int r = tid & (BM - 1), which = (tid >> 6) & 1;
        const bool ok = q0 + r < T;
        const float *src = (which ? delta : lse) + ((size_t)b * H + hh) * T + (ok ? q0 + r : 0);
        mt__fa_cp4((which ? sD0 : sL0) + st * BM * 4 + r * 4, src, ok);
    };

    mt__fa_load_tile_h<BN, NT>(sK, grp + (size_t)G * D, ld, n0, T, tid);
    mt__fa_load_tile_h<BN, NT>(sV, grp + (size_t)(G + 1) * D, ld, n0, T, tid);
    load_q(0, 0);
    mt__fa_cp_commit();
    { /* dS^T buffer 1 as zeros: the first block's "previous" dK reads it */
        uint4 *z = reinterpret_cast<uint4 *>(smem + (sS0 + 2 * HQ - base));
#pragma unroll
        for (int k = 0; k < 2 * HQ / 16 / NT; k++) z[k * NT + tid] = make_uint4(0u, 0u, 0u, 0u);
    }

    float dk[2][32], dv[2][32];
#pragma unroll
    for (int i = 0; i < 32; i++) dk[0][i] = dk[1][i] = dv[0][i] = dv[1][i] = 0.f;
    int pst = 0, pbuf = 1; /* the previous block's Q stage and dS^T buffer */
    /* descriptors as a base plus a constant per k step (mt__wg_desc_at) */
    const uint64_t dKw = mt__wg_desc(sKw), dVw = mt__wg_desc(sVw), dKh = mt__wg_desc(sK + wg * HK);
    auto issue_dk = [&](int pstage, int pb) { /* dK[h] += dS^T Q[:, 64h..] of that block, one group */
        const uint64_t da = mt__wg_desc(sS0 + pb * 2 * HQ + wg * HQ), dq = mt__wg_desc(sQ0 + pstage * 2 * HQ);
        mt__wg_fence();
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++)
                mt__wg_ss<0, 1>(dk[h], mt__wg_desc_at(da, kk * 32), mt__wg_desc_at(dq, h * HQ + kk * 2048), 1);
        mt__wg_commit();
    };

    float dq[32];           /* the previous block's dQ[:, 64w..64w+63], added to dq_acc at dqh */
    float *dqh = dq_acc;
    int q0p = 0;
    unsigned char *sdq = smem + (sD0 + NS * BM * 4 - base); /* BULK */
    for (int it = 0; it < total; it++) {
        const int st = it % NS;
        mt__fa_cp_wait<0>();
        mt__fence_async_smem();
        if (BULK && tid == 0) mt__bulk_wait_read<0>(); /* the last block's dQ has left the buffer */
        __syncthreads(); /* this stage and the previous dS^T are visible; everyone is past the previous products */
        /* the previous block's dQ, after the fence: a fence waits for this thread's outstanding
         * reductions, so issued before it they stalled every warp for their round trip */
        if constexpr (BULK) {
            if (it > 0) mt__fa_stage_dq<32>(sdq, 0, dq, tid); /* to the copy engine after the barrier below */
        } else {
            if (it > 0) mt__fa_red_tile<8, D>(dqh, dq, wq * 16 + gr, wg * 64, T - q0p, lane);
        }
        const int jj = it / per_head, q0 = (qb0 + it % per_head) * BM, hh = g * G + jj;
        const uint32_t sSb = sS0 + (it & 1) * 2 * HQ;
        const uint64_t dQs = mt__wg_desc(sQ0 + st * 2 * HQ), dOs = mt__wg_desc(sO0 + st * 2 * HQ);
        const uint64_t dSb = mt__wg_desc(sSb);
        const float *sL = sLf + st * BM, *sDl = sDf + st * BM;
        float s[32], dp[32];
#pragma unroll
        for (int i = 0; i < 32; i++) s[i] = dp[i] = 0.f;
        mt__wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            mt__wg_ss<0, 0>(s, mt__wg_desc_at(dKw, (kk >> 2) * HK + (kk & 3) * 32),
                            mt__wg_desc_at(dQs, (kk >> 2) * HQ + (kk & 3) * 32), kk);
        mt__wg_commit();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            mt__wg_ss<0, 0>(dp, mt__wg_desc_at(dVw, (kk >> 2) * HK + (kk & 3) * 32),
                            mt__wg_desc_at(dOs, (kk >> 2) * HQ + (kk & 3) * 32), kk);
        mt__wg_commit();
        issue_dk(pst, pbuf);
        /* the next block into the stage read two blocks ago; the last block loads itself again, unused */
        load_q(it + 1 < total ? it + 1 : it, (it + 1) % NS);
        mt__fa_cp_commit();
        mt__wg_wait<2>(); /* S^T done (dP^T and the previous dK may run) */
        mt__wg_keep(s);

        /* P^T = exp2(S^T c - lse log2e), masked (all of it for a warpgroup whose keys are after the block or past T) */
        if ((q0 + BM > T) || (kv0 + 64 > T) || (causal && kv0 + 63 > q0)) /* behind a branch: see mt__fa_mask_st */
            mt__fa_mask_st(s, kv0 + wq * 16 + gr, q0 + 2 * tq, T, causal);
        uint32_t pa[4][4];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float2 l = *reinterpret_cast<const float2 *>(sL + 8 * j + 2 * tq);
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[4 * j + e] =
                    mt__fa_exp2(fmaf(s[4 * j + e], scale_log2, -((e & 1) ? l.y : l.x) * 1.4426950408889634f));
            pa[j >> 1][(j & 1) * 2 + 0] = mt__fa_pack(s[4 * j], s[4 * j + 1]);
            pa[j >> 1][(j & 1) * 2 + 1] = mt__fa_pack(s[4 * j + 2], s[4 * j + 3]);
        }
        mt__wg_fence();
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) mt__wg_rs<1>(dv[h], pa[kk], mt__wg_desc_at(dOs, h * HQ + kk * 2048));
        mt__wg_commit();
        mt__wg_wait<2>(); /* dP^T done (the previous dK and this dV may run) */
        mt__wg_keep(dp);

        /* dS^T = P^T (dP^T - delta) to this warpgroup's tile of buffer it & 1 */
        {
            const int rl = wq * 16 + gr;
            unsigned char *p = smem + (sSb + wg * HQ - base);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float2 dl = *reinterpret_cast<const float2 *>(sDl + 8 * j + 2 * tq);
                const uint32_t lo = mt__fa_pack(s[4 * j] * (dp[4 * j] - dl.x), s[4 * j + 1] * (dp[4 * j + 1] - dl.y));
                const uint32_t hi =
                    mt__fa_pack(s[4 * j + 2] * (dp[4 * j + 2] - dl.x), s[4 * j + 3] * (dp[4 * j + 3] - dl.y));
                *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl, j) + tq * 4) = lo;
                *reinterpret_cast<uint32_t *>(p + mt__fa_swz<64>(rl + 8, j) + tq * 4) = hi;
            }
        }
        /* dQ[:, 64w..64w+63] = dS K over the 128 keys, once both dS^T tiles are written */
        mt__fence_async_smem();
        mt__bar_sync(1, 256);
        if (BULK && tid == 0 && it > 0) { /* the previous block's dQ, staged above */
            mt__bulk_red_add_f32(dqh, sD0 + NS * BM * 4, BM * D * 4);
            mt__bulk_commit();
        }
#pragma unroll
        for (int i = 0; i < 32; i++) dq[i] = 0.f;
        mt__wg_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)
            mt__wg_ss<1, 1>(dq, mt__wg_desc_at(dSb, (kk >> 2) * HQ + (kk & 3) * 2048),
                            mt__wg_desc_at(dKh, kk * 2048), kk);
        mt__wg_commit();
        mt__wg_wait<0>();
        mt__wg_keep(dq);
        mt__wg_keep(dk[0]);
        mt__wg_keep(dk[1]);
        mt__wg_keep(dv[0]);
        mt__wg_keep(dv[1]);
        dqh = BULK ? dq_acc + (((size_t)b * H + hh) * nqb + q0 / BM) * (BM * D)
                   : dq_acc + (((size_t)b * H + hh) * T + q0) * D;
        q0p = q0;
        pst = st;
        pbuf = it & 1;
    }
    mt__fa_cp_wait<0>();
    mt__fence_async_smem();
    if (BULK && tid == 0) mt__bulk_wait_read<0>();
    __syncthreads(); /* the last dS^T tiles are visible; every warpgroup's dQ products (all of K) are done */
    if constexpr (BULK) {
        if (total > 0) mt__fa_stage_dq<32>(sdq, 0, dq, tid);
        mt__fence_async_smem();
        __syncthreads();
        if (tid == 0 && total > 0) {
            mt__bulk_red_add_f32(dqh, sD0 + NS * BM * 4, BM * D * 4);
            mt__bulk_commit();
            mt__bulk_wait_read<0>(); /* before the block's shared memory goes */
        }
    } else {
        if (total > 0) mt__fa_red_tile<8, D>(dqh, dq, wq * 16 + gr, wg * 64, T - q0p, lane);
    }
    issue_dk(pst, pbuf); /* the last block's dK */
    mt__wg_wait<0>();
    mt__wg_keep(dk[0]);
    mt__wg_keep(dk[1]);

    /* dK * scale and dV to bf16 through this warpgroup's own rows of sK / sV, then 16-byte stores */
    if (kv0 < T) {
        unsigned char *pk = smem + (sKw - base), *pv = smem + (sVw - base);
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int rl = wq * 16 + gr + r * 8;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const uint32_t off = h * HK + mt__fa_swz<64>(rl, j) + tq * 4;
                    *reinterpret_cast<uint32_t *>(pk + off) =
                        mt__fa_pack(dk[h][4 * j + 2 * r] * scale, dk[h][4 * j + 2 * r + 1] * scale);
                    *reinterpret_cast<uint32_t *>(pv + off) = mt__fa_pack(dv[h][4 * j + 2 * r], dv[h][4 * j + 2 * r + 1]);
                }
            }
        mt__bar_sync(2 + wg, 128);
        __nv_bfloat16 *dgrp = dqkv + (size_t)b * T * ld + (size_t)g * (G + 2) * D;
#pragma unroll
        for (int k = 0; k < 64 * 16 / 128; k++) {
            const int i = k * 128 + wtid, r = i >> 4, c = i & 15, row = kv0 + r;
            if (row < T) {
                const uint32_t off = (c >> 3) * HK + mt__fa_swz<64>(r, c & 7);
                __nv_bfloat16 *dst = dgrp + (size_t)row * ld + (size_t)G * D + c * 8;
                *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(pk + off);
                *reinterpret_cast<uint4 *>(dst + D) = *reinterpret_cast<const uint4 *>(pv + off);
            }
        }
    }
#else
    (void)dqkv; (void)dq_acc; (void)dout; (void)lse; (void)delta; (void)qkv; (void)T; (void)Hkv; (void)G;
    (void)causal; (void)scale; (void)scale_log2;
#endif
}

/* ------------------------------------------------------------------ launchers */

/* Default tile shapes per head dim (forward: BM query rows, BN key rows, NW warps; backward: BWD2
 * picks mt__flash_bwd2_run (64 x 128, FlashAttention-2's warp layout) or mt__flash_bwd_run with 16
 * keys per warp at (BWD_BM, BWD_BN); MT_FLASH_DETERMINISTIC runs mt__flash_bwd_run at 64 x 128 with
 * its separate dQ pass). mt__flash_fwd_run / mt__flash_bwd_run take any valid shape (the benchmark
 * times a few). */
template <int D> struct mt__fa_cfg;
template <> struct mt__fa_cfg<64> {
    /* BWD2: 2 = the wgmma backward (sm_90a builds on compute capability 9.x; mt__flash_bwd3_run
     * falls back by itself otherwise), 1 = the FA2-layout backward, 0 = the 16-keys-per-warp one at
     * (BWD_BM, BWD_BN).  Causal hd 64 on an H100, TFLOP/s at T = 1024/2048/4096/8192: wgmma
     * 167/202/226/245, 16 keys per warp 64x64 165/191/209/215, FA2 layout 139/161/179/189; on an
     * H200 the pipelined wgmma 187/229/258/277 against the plain wgmma's 173/206/230/243.
     * FWD_WG_T: from this sequence length on, the wgmma forward (mt__flash_fwd_wg_run, same fallback):
     * every length since it is warp-specialized (H200 causal, T = 1024: 255 TFLOP/s against
     * mma.sync's 234; the CTA-barrier wgmma forward before it was level with mma.sync there). */
    enum { FWD_BM = 128, FWD_BN = 64, FWD_NW = 4, BWD_BM = 64, BWD_BN = 64, BWD2 = 2, FWD_WG_T = 1 };
};
template <> struct mt__fa_cfg<128> {
    /* BWD2 3 = the hd 128 wgmma backward (mt__flash_bwd3p_128_run, pipelined across query blocks, or
     * mt__flash_bwd3_128_run when MT_FLASH_BWD_PIPE is 0; same fallback to the FA2 layout); H100 causal,
     * not pipelined: 195/235/261/281 against the FA2 layout's 180/215/238/254; H200 pipelined
     * 240/290/324/341 against not pipelined 206/241/264/279. The wgmma forward at
     * every length: 303/360/395/422 against mma.sync's 245/275/295/293. */
    enum { FWD_BM = 128, FWD_BN = 64, FWD_NW = 4, BWD_BM = 64, BWD_BN = 128, BWD2 = 3, FWD_WG_T = 1 };
};

template <int D, int BM, int BN>
static inline size_t mt__fa_fwd_smem() {
    return (size_t)(BM + 4 * BN) * D * 2;
}
template <int D, int BM, int BN>
static inline size_t mt__fa_bwd_smem() {
    return (size_t)2 * BN * D * 2 + (size_t)4 * BM * D * 2 + (size_t)BN * BM * 2 + (size_t)4 * BM * 4;
}

static inline mt_status mt__fa_cuda(const char *where) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "%s: %s", where, cudaGetErrorString(e));
    return MT_OK;
}

/* Whether wgmma kernel k can run here: a GPU of compute capability 9.x and sm_90a code for it in
 * this build. MT_ERR_UNSUPPORTED (quiet: the caller falls back to mma.sync) when not. */
static inline mt_status mt__wg_runnable(const void *k, const char *what, int *sms = NULL) {
    int dev = 0, major = 0;
    cudaFuncAttributes fa;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaFuncGetAttributes(&fa, k) != cudaSuccess ||
        (sms && cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess))
        return mt__fa_cuda(what);
    if (major != 9 || fa.binaryVersion < 90 || fa.binaryVersion >= 100) return MT_ERR_UNSUPPORTED;
    return MT_OK;
}

template <int D, int BM, int BN, int NW>
static inline mt_status mt__flash_fwd_run(const mt_ctx *cx, void *out, float *lse, const void *qkv, int B, int T,
                                          int Hkv, int G, int causal) {
    const size_t smem = mt__fa_fwd_smem<D, BM, BN>();
    void (*k)(__nv_bfloat16 *, float *, const __nv_bfloat16 *, int, int, int, int, float) =
        mt__flash_fwd_kernel<D, BM, BN, NW>;
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
        return mt__fa_cuda("mt_flash_attention_fwd: cudaFuncSetAttribute");
    dim3 grid((T + BM - 1) / BM, Hkv * G, B);
    const float scale_log2 = (float)(1.4426950408889634 / sqrt((double)D));
    k<<<grid, NW * 32, smem, (cudaStream_t)cx->stream>>>((__nv_bfloat16 *)out, lse, (const __nv_bfloat16 *)qkv, T,
                                                        Hkv, G, causal, scale_log2);
    return mt__fa_cuda("mt_flash_attention_fwd");
}

/* Backward with key blocks of BN rows and query blocks of BM rows. DET: dQ by mt__flash_bwd_dq_kernel
 * (query blocks of 64 rows, 4 warps, key tiles of 64) instead of atomics; dq_acc is then unused. */
template <int D, int BM, int BN, bool DET>
static inline mt_status mt__flash_bwd_run(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                          const float *lse, const void *qkv, int B, int T, int Hkv, int G, int causal,
                                          float *delta, float *dq_acc) {
    const int H = Hkv * G;
    cudaStream_t s = (cudaStream_t)cx->stream;
    const float scale = (float)(1.0 / sqrt((double)D));
    const float scale_log2 = (float)(1.4426950408889634 / sqrt((double)D));
    {
        const size_t n = (size_t)B * T * H * (D / 8);
        mt__flash_bwd_pre_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>(
            delta, DET ? (float *)NULL : dq_acc, (const __nv_bfloat16 *)dout, (const __nv_bfloat16 *)out, B, T, H, D);
        MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: delta"));
    }
    {
        const size_t smem = mt__fa_bwd_smem<D, BM, BN>();
        void (*k)(__nv_bfloat16 *, float *, const __nv_bfloat16 *, const float *, const float *,
                  const __nv_bfloat16 *, int, int, int, int, float, float) = mt__flash_bwd_kernel<D, BM, BN, !DET>;
        if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
            return mt__fa_cuda("mt_flash_attention_bwd: cudaFuncSetAttribute");
        dim3 grid((T + BN - 1) / BN, Hkv, B);
        k<<<grid, BN * 2, smem, s>>>((__nv_bfloat16 *)dqkv, dq_acc, (const __nv_bfloat16 *)dout, lse, delta,
                                     (const __nv_bfloat16 *)qkv, T, Hkv, G, causal, scale, scale_log2);
        MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: main"));
    }
    if (DET) {
        enum { QBM = 64, QBN = 64, QNW = 4 };
        const size_t smem = (size_t)(2 * QBM + 4 * QBN) * D * 2;
        void (*k)(__nv_bfloat16 *, const __nv_bfloat16 *, const float *, const float *, const __nv_bfloat16 *, int,
                  int, int, int, float, float) = mt__flash_bwd_dq_kernel<D, QBM, QBN, QNW>;
        if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
            return mt__fa_cuda("mt_flash_attention_bwd: cudaFuncSetAttribute");
        dim3 grid((T + QBM - 1) / QBM, H, B);
        k<<<grid, QNW * 32, smem, s>>>((__nv_bfloat16 *)dqkv, (const __nv_bfloat16 *)dout, lse, delta,
                                       (const __nv_bfloat16 *)qkv, T, Hkv, G, causal, scale, scale_log2);
        MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: dq"));
    } else {
        const size_t n = (size_t)B * T * H * (D / 8);
        mt__flash_bwd_post_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((__nv_bfloat16 *)dqkv, dq_acc, B, T,
                                                                             Hkv, G, D, scale);
        MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: dq"));
    }
    return MT_OK;
}

/* The backward through mt__flash_bwd2_kernel (FlashAttention-2's warp layout; atomics for dQ). */
template <int D>
static inline mt_status mt__flash_bwd2_run(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                           const float *lse, const void *qkv, int B, int T, int Hkv, int G, int causal,
                                           float *delta, float *dq_acc) {
    const int H = Hkv * G;
    cudaStream_t s = (cudaStream_t)cx->stream;
    const float scale = (float)(1.0 / sqrt((double)D));
    const float scale_log2 = (float)(1.4426950408889634 / sqrt((double)D));
    const size_t n = (size_t)B * T * H * (D / 8);
    mt__flash_bwd_pre_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>(
        delta, dq_acc, (const __nv_bfloat16 *)dout, (const __nv_bfloat16 *)out, B, T, H, D);
    MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: delta"));
    const size_t smem = (size_t)2 * 128 * D * 2 + (size_t)4 * 64 * D * 2 + (size_t)2 * 64 * 128 * 2 + 4 * 64 * 4;
    void (*k)(__nv_bfloat16 *, float *, const __nv_bfloat16 *, const float *, const float *, const __nv_bfloat16 *,
              int, int, int, int, float, float) = mt__flash_bwd2_kernel<D>;
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
        return mt__fa_cuda("mt_flash_attention_bwd: cudaFuncSetAttribute");
    dim3 grid((T + 127) / 128, Hkv, B);
    k<<<grid, 256, smem, s>>>((__nv_bfloat16 *)dqkv, dq_acc, (const __nv_bfloat16 *)dout, lse, delta,
                              (const __nv_bfloat16 *)qkv, T, Hkv, G, causal, scale, scale_log2);
    MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: main"));
    mt__flash_bwd_post_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((__nv_bfloat16 *)dqkv, dq_acc, B, T, Hkv, G,
                                                                         D, scale);
    return mt__fa_cuda("mt_flash_attention_bwd: dq");
}

typedef void (*mt__flash_bwd3_fn)(__nv_bfloat16 *, float *, const __nv_bfloat16 *, const float *, const float *,
                                  const __nv_bfloat16 *, int, int, int, int, float, float);

/* delta and the zeroed dQ accumulator, wgmma backward kernel k (one CTA per 128 keys, kv group and
 * batch, smem bytes of dynamic shared memory), dQ to bf16; tiles: the accumulator in 64-row tiles
 * (mt__flash_bwd_post_tiles_kernel), else in rows. MT_ERR_UNSUPPORTED unless the build has sm_90a code
 * and the GPU is of compute capability 9.x. */
template <int D>
static inline mt_status mt__flash_bwd3_go(const mt_ctx *cx, mt__flash_bwd3_fn k, size_t smem, void *dqkv,
                                          const void *dout, const void *out, const float *lse, const void *qkv, int B,
                                          int T, int Hkv, int G, int causal, float *delta, float *dq_acc,
                                          bool tiles = false) {
    const int H = Hkv * G;
    cudaStream_t s = (cudaStream_t)cx->stream;
    const float scale = (float)(1.0 / sqrt((double)D));
    const float scale_log2 = (float)(1.4426950408889634 / sqrt((double)D));
    MT_TRY(mt__wg_runnable((const void *)k, "mt_flash_attention_bwd (wgmma): device query"));
    const size_t n = (size_t)B * T * H * (D / 8), nqb = (size_t)(T + 63) / 64;
    mt__flash_bwd_pre_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>(
        delta, tiles ? (float *)NULL : dq_acc, (const __nv_bfloat16 *)dout, (const __nv_bfloat16 *)out, B, T, H, D);
    MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: delta"));
    if (tiles && cudaMemsetAsync(dq_acc, 0, (size_t)B * H * nqb * 64 * D * 4, s) != cudaSuccess)
        return mt__fa_cuda("mt_flash_attention_bwd: zeroing the dQ tiles");
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
        return mt__fa_cuda("mt_flash_attention_bwd: cudaFuncSetAttribute");
    dim3 grid((T + 127) / 128, Hkv, B);
    k<<<grid, 256, smem, s>>>((__nv_bfloat16 *)dqkv, dq_acc, (const __nv_bfloat16 *)dout, lse, delta,
                              (const __nv_bfloat16 *)qkv, T, Hkv, G, causal, scale, scale_log2);
    MT_TRY(mt__fa_cuda("mt_flash_attention_bwd: main"));
    if (tiles)
        mt__flash_bwd_post_tiles_kernel<D><<<dim3((unsigned)nqb, H, B), 256, 0, s>>>((__nv_bfloat16 *)dqkv, dq_acc, T,
                                                                                     Hkv, G, scale);
    else
        mt__flash_bwd_post_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((__nv_bfloat16 *)dqkv, dq_acc, B, T, Hkv,
                                                                             G, D, scale);
    return mt__fa_cuda("mt_flash_attention_bwd: dq");
}

/* The backward through mt__flash_bwd3_kernel<D, SPLIT> (wgmma, head dim 64; atomics for dQ). */
template <int D, int SPLIT>
static inline mt_status mt__flash_bwd3_cfg_run(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                           const float *lse, const void *qkv, int B, int T, int Hkv, int G, int causal,
                                           float *delta, float *dq_acc) {
    /* alignment slack; K, V, Q x2, dO x2, dS^T x2 (64-row tiles); lse, delta x2; SPLIT: K^T */
    const size_t smem = 1024 + (size_t)(SPLIT ? 12 : 10) * 64 * D * 2 + 4 * 64 * 4;
    return mt__flash_bwd3_go<D>(cx, mt__flash_bwd3_kernel<D, SPLIT>, smem, dqkv, dout, out, lse, qkv, B, T, Hkv, G,
                                causal, delta, dq_acc);
}
/* The pipelined one (mt__flash_bwd3p_kernel); BULK: dQ staged in shared memory and added to a tiled
 * accumulator by the copy engine, one operation per block, instead of red.global.add from registers. */
template <int D, bool BULK = MT_FLASH_BWD_BULK != 0>
static inline mt_status mt__flash_bwd3p_run(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                            const float *lse, const void *qkv, int B, int T, int Hkv, int G, int causal,
                                            float *delta, float *dq_acc) {
    /* alignment slack; K, V (2 tiles each), Q x3, dO x3, dS^T 2 x 2, K^T 2; lse, delta x3; BULK: dQ x2 (fp32) */
    const size_t smem = 1024 + (size_t)16 * 64 * D * 2 + 2 * 3 * 64 * 4 + (BULK ? (size_t)2 * 64 * D * 4 : 0);
    return mt__flash_bwd3_go<D>(cx, mt__flash_bwd3p_kernel<D, BULK>, smem, dqkv, dout, out, lse, qkv, B, T, Hkv, G,
                                causal, delta, dq_acc, BULK);
}
/* The hd 64 wgmma backward: pipelined unless MT_FLASH_BWD_PIPE is 0 (then dQ columns split across the
 * warpgroups, products drained every block). */
template <int D>
static inline mt_status mt__flash_bwd3_run(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                           const float *lse, const void *qkv, int B, int T, int Hkv, int G, int causal,
                                           float *delta, float *dq_acc) {
    if (MT_FLASH_BWD_PIPE)
        return mt__flash_bwd3p_run<D>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    return mt__flash_bwd3_cfg_run<D, 1>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
}

/* The wgmma backwards for head dim 128: the pipelined mt__flash_bwd3p_128_kernel (the default) and
 * mt__flash_bwd3_128_kernel (MT_FLASH_BWD_PIPE=0; the tests and the benchmark run both). Same
 * arguments and workspace as the other backwards; MT_ERR_UNSUPPORTED unless the build has sm_90a code
 * and the GPU is of compute capability 9.x. */
static inline mt_status mt__flash_bwd3_128_run(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                               const float *lse, const void *qkv, int B, int T, int Hkv, int G,
                                               int causal, float *delta, float *dq_acc) {
    enum { D = 128 };
    /* alignment slack; K, V (128 x D each), Q x2, dO x2 (64 x D), dS^T x2 (64 x 64); lse, delta x2 */
    const size_t smem = 1024 + (size_t)2 * 128 * D * 2 + (size_t)4 * 64 * D * 2 + (size_t)2 * 64 * 64 * 2 + 4 * 64 * 4;
    return mt__flash_bwd3_go<D>(cx, mt__flash_bwd3_128_kernel, smem, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal,
                                delta, dq_acc);
}
template <bool BULK = MT_FLASH_BWD_BULK != 0>
static inline mt_status mt__flash_bwd3p_128_run(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                                const float *lse, const void *qkv, int B, int T, int Hkv, int G,
                                                int causal, float *delta, float *dq_acc) {
    enum { D = 128 };
    /* alignment slack; K, V (128 x D each), Q x3, dO x3 (64 x D), dS^T 2 x 2 (64 x 64); lse, delta x3; BULK:
     * dQ (64 x D fp32) */
    const size_t smem = 1024 + (size_t)2 * 128 * D * 2 + (size_t)6 * 64 * D * 2 + (size_t)4 * 64 * 64 * 2 + 6 * 64 * 4 +
                        (BULK ? (size_t)64 * D * 4 : 0);
    return mt__flash_bwd3_go<D>(cx, mt__flash_bwd3p_128_kernel<BULK>, smem, dqkv, dout, out, lse, qkv, B, T, Hkv, G,
                                causal, delta, dq_acc, BULK);
}

/* The warp-specialized forward, mt__flash_fwd4_kernel<D, BN, NS, PP, QB>. It needs an sm_90a build and a GPU
 * of compute capability 9.x (like the wgmma backwards); on anything else this returns
 * MT_ERR_UNSUPPORTED with nothing launched, and the caller falls back to mma.sync. */
template <int D, int BN, int NS, int PP, int QB>
static inline mt_status mt__flash_fwd4_go(const mt_ctx *cx, void *out, float *lse, const void *qkv, int B, int T,
                                          int Hkv, int G, int causal, int ctas) {
    void (*k)(__nv_bfloat16 *, float *, const __nv_bfloat16 *, int, int, int, int, int, float) =
        mt__flash_fwd4_kernel<D, BN, NS, PP, QB>;
    int sms = 0; /* SMs: the persistent grid's size */
    MT_TRY(mt__wg_runnable((const void *)k, "mt_flash_attention_fwd (wgmma, warp-specialized): device query", &sms));
    /* alignment slack; Q (128 rows, QB buffers); NS stages of K and V (BN rows each); 4 NS + 2 QB barriers */
    constexpr size_t smem = 1024 + (size_t)(QB * 128 + NS * 2 * BN) * D * 2 + 8 * (4 * NS + 2 * QB);
    static_assert(smem <= 227 * 1024, "over the 227 KB of shared memory per block");
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
        return mt__fa_cuda("mt_flash_attention_fwd (wgmma, warp-specialized): cudaFuncSetAttribute");
    const size_t items = (size_t)((T + 127) / 128) * Hkv * G * B;
    /* ctas > 0: that many CTAs; 0: persistent, one per SM; < 0: one per item */
    size_t n = ctas > 0 ? (size_t)ctas : ctas == 0 ? (size_t)sms : items;
    if (n > items) n = items;
    if (n > 0x7fffffffu) return mt_errorf(MT_ERR_UNSUPPORTED, "mt_flash_attention_fwd: %zu work items", items);
    const dim3 grid((unsigned)n);
    const float scale_log2 = (float)(1.4426950408889634 / sqrt((double)D));
    k<<<grid, 384, smem, (cudaStream_t)cx->stream>>>((__nv_bfloat16 *)out, lse, (const __nv_bfloat16 *)qkv, B, T, Hkv,
                                                     G, causal, scale_log2);
    return mt__fa_cuda("mt_flash_attention_fwd (wgmma, warp-specialized)");
}
/* PERS 1: persistent, one CTA per SM looping over the work items; 0: one CTA per item (the grid
 * scheduler balances them). mt__flash_fwd4_go's ctas > 0 asks for that many CTAs (the tests ask for
 * fewer, so that every CTA loops over several items). */
template <int D, int BN, int NS, int PP, int QB, int PERS>
static inline mt_status mt__flash_fwd4_run(const mt_ctx *cx, void *out, float *lse, const void *qkv, int B, int T,
                                           int Hkv, int G, int causal) {
    return mt__flash_fwd4_go<D, BN, NS, PP, QB>(cx, out, lse, qkv, B, T, Hkv, G, causal, PERS ? 0 : -1);
}
/* The wgmma forward, the default at every length where it can run: warp-specialized with the
 * ping-pong (mt__flash_fwd4_kernel), key/value tiles of 128 rows, hd 64 in four stages, hd 128 in
 * three. H200, causal, T = 1024..8192, in one call: hd 64 255/322/369/401 TFLOP/s against
 * the CTA-barrier kernel it replaced at 239/289/323/345 and mma.sync's 234 at T = 1024; hd 128
 * 362/460/532/575 against 308/365/401/432 (kernels/ATTENTION_NOTES.md v17). Since v20, hd 64 below
 * T = 4096 runs persistent with two Q buffers (+9 to +13 % at T = 1024, +4 to +6 % at 2048; at 4096
 * and up one CTA per item, within 2 %); hd 128 one CTA per item everywhere: its persistent variants
 * were slower, and the loop over items costs it ~4 % at T = 1024 against the one-item kernel before. */
template <int D>
static inline mt_status mt__flash_fwd_wg_run(const mt_ctx *cx, void *out, float *lse, const void *qkv, int B, int T,
                                           int Hkv, int G, int causal) {
    if constexpr (D == 64) {
        if (T < 4096) return mt__flash_fwd4_run<64, 128, 4, 1, 2, 1>(cx, out, lse, qkv, B, T, Hkv, G, causal);
        return mt__flash_fwd4_run<64, 128, 4, 1, 1, 0>(cx, out, lse, qkv, B, T, Hkv, G, causal);
    } else {
        return mt__flash_fwd4_run<D, 128, 3, 1, 1, 0>(cx, out, lse, qkv, B, T, Hkv, G, causal);
    }
}

template <int D>
static inline mt_status mt__flash_fwd_launch(const mt_ctx *cx, void *out, float *lse, const void *qkv, int B, int T,
                                             int Hkv, int G, int causal) {
    typedef mt__fa_cfg<D> C;
    if constexpr (C::FWD_WG_T != 0)
        if (T >= C::FWD_WG_T) {
            mt_status st = mt__flash_fwd_wg_run<D>(cx, out, lse, qkv, B, T, Hkv, G, causal);
            if (st != MT_ERR_UNSUPPORTED) return st; /* not an sm_90a build on a 9.x GPU: mma.sync below */
        }
    return mt__flash_fwd_run<D, C::FWD_BM, C::FWD_BN, C::FWD_NW>(cx, out, lse, qkv, B, T, Hkv, G, causal);
}
template <int D>
static inline mt_status mt__flash_bwd_launch(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                             const float *lse, const void *qkv, int B, int T, int Hkv, int G,
                                             int causal, float *delta, float *dq_acc) {
    typedef mt__fa_cfg<D> C;
    if (MT_FLASH_DETERMINISTIC)
        return mt__flash_bwd_run<D, 64, 128, true>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal,
                                                                delta, dq_acc);
    if constexpr (C::BWD2 == 2) {
        mt_status st = mt__flash_bwd3_run<D>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
        if (st != MT_ERR_UNSUPPORTED) return st; /* not an sm_90a build on a 9.x GPU: mma.sync below */
    }
    if constexpr (C::BWD2 == 3) {
        mt_status st = MT_FLASH_BWD_PIPE
                           ? mt__flash_bwd3p_128_run(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc)
                           : mt__flash_bwd3_128_run(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
        if (st != MT_ERR_UNSUPPORTED) return st; /* as above: the FA2 layout below */
    }
    if (C::BWD2 == 0)
        return mt__flash_bwd_run<D, C::BWD_BM, C::BWD_BN, false>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal,
                                                                 delta, dq_acc);
    return mt__flash_bwd2_run<D>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
}

MT_API int mt_flash_attention_supported(int D) { return D == 64 || D == 128; }

MT_API mt_status mt__fa_check(const char *op, int B, int T, int Hkv, int G, int D) {
    if (B < 0 || T < 0 || Hkv < 1 || G < 1 || D < 1)
        return mt_errorf(MT_ERR_ARG, "%s: bad sizes B=%d T=%d Hkv=%d G=%d D=%d", op, B, T, Hkv, G, D);
    if (!mt_flash_attention_supported(D)) return MT_ERR_UNSUPPORTED; /* quiet: the caller falls back */
    if ((size_t)Hkv * G > 65535 || B > 65535)
        return mt_errorf(MT_ERR_UNSUPPORTED, "%s: H=%d or B=%d over the grid limit 65535", op, Hkv * G, B);
    return MT_OK;
}

MT_API int mt__fa_misaligned(const void *p) { return ((uintptr_t)p & 15u) != 0; }

/* Bytes of workspace mt_flash_attention_bwd needs: delta (B,H,T) fp32, 256-aligned, then (unless
 * MT_FLASH_DETERMINISTIC) the dQ accumulator, (B,H,T,D) fp32 with T rounded up to 64 (the hd 64 default
 * keeps it in 64-row tiles). */
MT_API size_t mt_flash_attention_bwd_workspace_nbytes(int B, int T, int Hkv, int G, int D) {
    const size_t rows = (size_t)B * T * Hkv * G, tiled = (size_t)B * ((T + 63) / 64 * 64) * Hkv * G;
    return ((rows * 4 + 255) & ~(size_t)255) + (MT_FLASH_DETERMINISTIC ? 0 : tiled * (size_t)D * 4);
}

/* The workspace as delta (B,H,T) fp32 and the dQ accumulator (B,H,T,D) fp32. */
MT_API void mt__fa_ws_split(void *ws, int B, int T, int Hkv, int G, float **delta, float **dq_acc) {
    const size_t rows = (size_t)B * T * Hkv * G;
    *delta = (float *)ws;
    *dq_acc = (float *)((char *)ws + ((rows * 4 + 255) & ~(size_t)255));
}

/* out (B,T,H,D) bf16 and lse (B,H,T) fp32 from qkv (B,T,Hkv,G+2,D) bf16. */
MT_API mt_status mt_flash_attention_fwd(const mt_ctx *cx, void *out, float *lse, const void *qkv, int B, int T,
                                        int Hkv, int G, int D, int causal) {
    MT_TRY(mt__fa_check("mt_flash_attention_fwd", B, T, Hkv, G, D));
    if (B == 0 || T == 0) return MT_OK;
    if (!out || !lse || !qkv || mt__fa_misaligned(out) || mt__fa_misaligned(qkv))
        return mt_errorf(MT_ERR_ARG, "mt_flash_attention_fwd: null or misaligned pointer (16-byte alignment)");
    causal = causal ? 1 : 0;
    if (D == 64) return mt__flash_fwd_launch<64>(cx, out, lse, qkv, B, T, Hkv, G, causal);
    return mt__flash_fwd_launch<128>(cx, out, lse, qkv, B, T, Hkv, G, causal);
}

/* dqkv (B,T,Hkv,G+2,D) bf16, assigned, from dout, the forward's out and lse, and qkv. */
MT_API mt_status mt_flash_attention_bwd(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                        const float *lse, const void *qkv, int B, int T, int Hkv, int G, int D,
                                        int causal, void *workspace, size_t workspace_nbytes) {
    MT_TRY(mt__fa_check("mt_flash_attention_bwd", B, T, Hkv, G, D));
    if (B == 0 || T == 0) return MT_OK;
    const size_t need = mt_flash_attention_bwd_workspace_nbytes(B, T, Hkv, G, D);
    if (!workspace || workspace_nbytes < need)
        return mt_errorf(MT_ERR_ARG, "mt_flash_attention_bwd: workspace of %zu bytes, need %zu", workspace_nbytes,
                         need);
    if (!dqkv || !dout || !out || !lse || !qkv || mt__fa_misaligned(dqkv) || mt__fa_misaligned(dout) ||
        mt__fa_misaligned(out) || mt__fa_misaligned(qkv) || mt__fa_misaligned(workspace))
        return mt_errorf(MT_ERR_ARG, "mt_flash_attention_bwd: null or misaligned pointer (16-byte alignment)");
    causal = causal ? 1 : 0;
    float *delta, *dq_acc;
    mt__fa_ws_split(workspace, B, T, Hkv, G, &delta, &dq_acc);
    if (D == 64) return mt__flash_bwd_launch<64>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    return mt__flash_bwd_launch<128>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
}

#endif /* MT_KERNELS_ATTENTION_CUH */
