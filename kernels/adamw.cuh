/* kernels/adamw.cuh — the optimizer step and the global gradient norm.
 *
 *   MT_TRY(mt_sumsq(cx, norm_sq, grads, n));                 // *norm_sq += sum(g^2), per buffer
 *   MT_TRY(mt_clip_coef(cx, coef, norm_sq, 1.0f));           // on the device, no host sync
 *   MT_TRY(mt_adamw(cx, params, master, m, v, grads, n, &hp, coef, seed));
 *
 * Defines  mt_adamw_gpu, mt_sumsq_gpu, mt_clip_coef_gpu, and the pieces of mt_adamw_multi and
 *          mt_adamw_multi_plan (mt/ops.h): mt__adamw_entry, mt__adamw_batch, mt__adamw_launch
 *
 * AdamW over a flat range of n parameters (call it once over a contiguous parameter buffer, or once
 * per buffer).  param and grad are in cx->dtype; master, m, v are float.  With master (bf16 params):
 * the update runs on the fp32 master copy and param receives it rounded to bf16 — to nearest, or
 * stochastically when seed != 0 with the 32-bit draw mt_rng_u32(seed, hp->step, i) for element i of
 * this call (vary the seed per buffer so that buffers do not share draws).  Without master, param is
 * read and written directly.  gscale (float, on the device, or NULL) multiplies every gradient.
 * 16-byte packs when n's pointers are aligned, the tail element by element.
 *
 * Layout of the work (variant 0, the default): every tensor of a launch is cut into chunks of
 * MT__ADAMW_CHUNK (16384) elements; a persistent grid (resident blocks x SMs) of 256-thread blocks
 * walks the chunks of all tensors (block b: chunks b, b + grid, ...), each thread two groups of 4
 * elements per pass ("quads": grad/param as 8-byte loads, so every fp32 load of m, v, master by a
 * warp is 512 contiguous bytes), all loads issued before the math, streaming loads and stores.
 * Measured on an H200 at 1.558B bf16 params: 11.4 ms, 90% of the copy bandwidth; variant 1, the
 * earlier layout (one 16-byte pack of 8 bf16 per thread: its fp32 halves 32 bytes apart use half of
 * every sector per instruction), 13.9 ms, 74%.  Other layouts (cx->gpu->adamw_variant,
 * MT__ADAMW_VARIANT_LIST below: 16-byte packs, several groups per thread, slices instead of chunks,
 * plain stores)
 * give the same bits; tests/bench_kernels.cu times them all.  The tensor table is a kernel
 * parameter (mt_adamw, mt_adamw_multi: up to MT_ADAMW_MULTI_BATCH tensors per launch) or sits in
 * device memory (mt_adamw_multi_plan: all tensors, one launch, uploaded once).
 * Tensor i of a multi-tensor call rounds with seed + i and decays with wd when its decay flag is
 * set, so it equals mt_adamw on that tensor alone with those two settings, bit for bit.
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
    float lr, beta1, beta2, eps, rbc1, rbc2; /* rbc = 1 / (1 - beta^step) */
    float wd;                                /* weight decay of the tensors with decay = 1 */
    uint64_t seed;                           /* tensor i rounds with seed + seed_off (0: nearest) */
    uint64_t step;
} mt__adamw_args;

/* One parameter tensor of a launch.  chunk0: index of its first MT__ADAMW_CHUNK-element chunk among
 * all chunks of the launch (prefix sum over the tensors before it). */
typedef struct mt__adamw_entry {
    void *param;       /* (n) cx->dtype */
    float *master;     /* (n) fp32 master copy, or NULL */
    float *m, *v;      /* (n) moments */
    const void *grad;  /* (n) cx->dtype */
    size_t n;          /* elements */
    uint64_t seed_off; /* stochastic rounding: this tensor draws with args.seed + seed_off */
    uint32_t chunk0;   /* first chunk of this tensor in the launch */
    int decay;         /* 1: weight decay args.wd applies, 0: none */
    int vec;           /* 1: every pointer 16-byte aligned (packs), 0: element by element */
    int pad_;
} mt__adamw_entry;

#define MT__ADAMW_CHUNK 16384 /* elements per work item: a multiple of every pack width */
#ifndef MT_ADAMW_MULTI_BATCH
#define MT_ADAMW_MULTI_BATCH 128 /* tensors per launch of mt_adamw_multi (kernel parameter table) */
#endif

/* The table of one mt_adamw_multi launch, passed by value (a __grid_constant__ kernel parameter:
 * no allocation, no copy of our own; 128 x 64 bytes < the 32 KB parameter limit of CUDA 12.1+). */
typedef struct mt__adamw_batch {
    int count;
    uint32_t nchunks;
    mt__adamw_entry e[MT_ADAMW_MULTI_BATCH];
} mt__adamw_batch;

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

/* One element: returns the new parameter; updates m, v in place.  Reciprocals of the bias
 * corrections are precomputed and the quotient is one MUFU.RCP + FMUL (__fdividef, 2 ulp): the
 * update agrees with the fp64 CPU reference to ~1e-7 relative. */
__device__ __forceinline__ float mt__adamw_elem(float p, float g, float &m, float &v, const mt__adamw_args &a,
                                                float wd) {
    m = a.beta1 * m + (1.0f - a.beta1) * g;
    v = a.beta2 * v + (1.0f - a.beta2) * g * g;
    float mhat = m * a.rbc1, vhat = v * a.rbc2;
    return p - a.lr * (__fdividef(mhat, sqrtf(vhat) + a.eps) + wd * p);
}

/* ---- Variants of the AdamW launch (cx->gpu->adamw_variant): the same arithmetic per element, laid
 * out differently over the threads and the memory system, so that one benchmark run
 * (tests/bench_kernels.cu) can pick what the hardware wants.  Every variant gives the same bits as
 * variant 0 (tests/gpu_kernels.cu checks it): an element's update depends only on its own inputs and
 * index, never on which thread or iteration handles it, and the split between packs and the
 * element-by-element tail is the same in all of them.
 *
 *   group  elements a thread takes at one address: a 16-byte pack of grad (8 for bf16, 4 for f32),
 *          or 4 ("quads").  With 8 bf16 per thread, the fp32 arrays are read as two 16-byte halves
 *          32 bytes apart: one warp load instruction then touches every 32-byte sector of 1 KB but
 *          uses half of each, and the other half comes with the next instruction (twice the sector
 *          requests to L1/L2, half-sector stores).  Quads read grad/param as 8-byte loads and every
 *          fp32 load of a warp is 512 contiguous bytes.  (f32: the pack is already 4.)
 *   groups groups per thread per iteration, all their loads issued before any math (8 bf16 with a
 *          master copy: 7 16-byte loads in flight per thread; 2 packs: 14)
 *   item   the work item a block takes: a whole MT__ADAMW_CHUNK chunk (the block walks it in
 *          passes), or a slice of one pass (256 threads x groups x group elements): consecutive
 *          blocks then take consecutive slices and the grid sweeps a narrow window of each array, as
 *          a grid-stride loop does (fewer DRAM pages and TLB entries open at once)
 *   ld/st  cs: streaming (evict-first) loads or stores; wb: plain ones (the residual add's stores)
 *   grid   persistent (resident blocks x SMs, each block loops) or one work item per block
 *
 *   X(variant, group (0: the pack), groups, slice, ld cs, st cs, persistent, name) */
#define MT__ADAMW_VARIANT_LIST(X)                                \
    X(0, 4, 2, 0, 1, 1, 1, "chunk, quad x2, cs/cs")              \
    X(1, 0, 1, 0, 1, 1, 1, "chunk, pack x1, cs/cs")              \
    X(2, 0, 2, 0, 1, 1, 1, "chunk, pack x2, cs/cs")              \
    X(3, 4, 2, 1, 1, 0, 1, "slice, quad x2, cs/wb")              \
    X(4, 4, 4, 1, 1, 0, 1, "slice, quad x4, cs/wb")
#define MT__ADAMW_COUNT_(id, g, u, sl, lc, sc, pe, name) +1
#define MT__ADAMW_VARIANTS (0 MT__ADAMW_VARIANT_LIST(MT__ADAMW_COUNT_)) /* variants 0 .. this - 1 */
#define MT__ADAMW_THREADS 256                                         /* threads per block, every variant */

template <int VAR> struct mt__adamw_cfg;
#define MT__ADAMW_CFG_(id, g, u, sl, lc, sc, pe, name)                                                   \
    template <> struct mt__adamw_cfg<id> {                                                               \
        static constexpr int GROUP = g, GROUPS = u;                                                      \
        static constexpr bool SLICE = sl, LDCS = lc, STCS = sc, PERSIST = pe;                            \
    };
MT__ADAMW_VARIANT_LIST(MT__ADAMW_CFG_)
#undef MT__ADAMW_CFG_

/* name of variant v for reports ("?" when out of range) */
MT_API const char *mt__adamw_variant_name(int v) {
#define MT__ADAMW_NAME_(id, g, u, sl, lc, sc, pe, name) if (v == id) return name;
    MT__ADAMW_VARIANT_LIST(MT__ADAMW_NAME_)
#undef MT__ADAMW_NAME_
    return "?";
}

/* Work items of variant VAR over dtype T: G elements per group, ELEMS per item (a whole chunk, or a
 * slice of one pass of the block over a chunk). */
template <typename T, int VAR>
struct mt__adamw_item {
    typedef mt__adamw_cfg<VAR> C;
    static constexpr int G = C::GROUP ? C::GROUP : mt__pack_width<T>::value;
    static constexpr size_t ELEMS = C::SLICE ? (size_t)MT__ADAMW_THREADS * G * C::GROUPS : (size_t)MT__ADAMW_CHUNK;
    static constexpr uint32_t PER_CHUNK = (uint32_t)(MT__ADAMW_CHUNK / ELEMS);
    static_assert(MT__ADAMW_CHUNK % ELEMS == 0, "a work item must tile a chunk");
    static_assert(G % 4 == 0 && mt__pack_width<T>::value % G == 0, "a group is a multiple of 4 inside a pack");
};

/* V elements of T (8 or 16 bytes), streaming (CS) or plain */
template <typename T, int V, bool CS>
__device__ __forceinline__ mt__vec<T, V> mt__adamw_ld(const T *p) {
    static_assert(sizeof(T) * V == 8 || sizeof(T) * V == 16, "8- or 16-byte vectors");
    if constexpr (!CS) {
        return mt__ld<T, V>(p);
    } else if constexpr (sizeof(T) * V == 16) {
        return mt__ldcs<T, V>(p);
    } else {
        uint2 r = __ldcs(reinterpret_cast<const uint2 *>(p));
        return *reinterpret_cast<mt__vec<T, V> *>(&r);
    }
}
template <typename T, int V, bool CS>
__device__ __forceinline__ void mt__adamw_st(T *p, const mt__vec<T, V> &x) {
    static_assert(sizeof(T) * V == 8 || sizeof(T) * V == 16, "8- or 16-byte vectors");
    if constexpr (!CS) mt__st<T, V>(p, x);
    else if constexpr (sizeof(T) * V == 16) mt__stcs<T, V>(p, x);
    else __stcs(reinterpret_cast<uint2 *>(p), *reinterpret_cast<const uint2 *>(&x));
}

/* U groups of G elements at e0, e0 + S, ..., e0 + (U-1) S with S = MT__ADAMW_THREADS * G (a warp's
 * loads stay contiguous).  Every load of the U groups is issued before any math.  Random draws of the
 * group at e (a multiple of 4): one Philox call per 4 elements, counter e / 4 + c — the same numbers
 * as mt_rng_u32(seed, step, i) for its elements i. */
template <typename T, bool MASTER, int G, int U, bool LDCS, bool STCS>
__device__ __forceinline__ void mt__adamw_groups(T *param, const T *grad, float *master, float *m, float *v,
                                                 size_t e0, const mt__adamw_args &a, float gs, float wd, bool sr,
                                                 const uint32_t key[2]) {
    constexpr int NC = G / 4;
    constexpr size_t S = (size_t)MT__ADAMW_THREADS * G;
    mt__vec<T, G> gv[U], pv[U], out[U];
    mt__vec<float, 4> m4[U][NC], v4[U][NC], p4[U][NC];
#pragma unroll
    for (int u = 0; u < U; u++) {
        size_t e = e0 + u * S;
        gv[u] = mt__adamw_ld<T, G, LDCS>(grad + e);
        if (!MASTER) pv[u] = mt__adamw_ld<T, G, LDCS>(param + e);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            m4[u][c] = mt__adamw_ld<float, 4, LDCS>(m + e + 4 * c);
            v4[u][c] = mt__adamw_ld<float, 4, LDCS>(v + e + 4 * c);
            if (MASTER) p4[u][c] = mt__adamw_ld<float, 4, LDCS>(master + e + 4 * c);
        }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
        size_t e = e0 + u * S;
        uint32_t rnd[G];
#pragma unroll
        for (int k = 0; k < G; k++) rnd[k] = 0;
        if (sr) {
#pragma unroll
            for (int c = 0; c < NC; c++) {
                uint64_t q = (e >> 2) + c;
                uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), (uint32_t)a.step, (uint32_t)(a.step >> 32)};
                uint32_t r4[4];
                mt_philox4x32(ctr, key, r4);
#pragma unroll
                for (int k = 0; k < 4; k++) rnd[4 * c + k] = r4[k];
            }
        }
#pragma unroll
        for (int k = 0; k < G; k++) {
            float &mk = m4[u][k / 4].v[k % 4], &vk = v4[u][k / 4].v[k % 4];
            float p = MASTER ? p4[u][k / 4].v[k % 4] : mt__f(pv[u].v[k]);
            p = mt__adamw_elem(p, mt__f(gv[u].v[k]) * gs, mk, vk, a, wd);
            if (MASTER) p4[u][k / 4].v[k % 4] = p;
            out[u].v[k] = mt__round_param<T>(p, rnd[k], sr);
        }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
        size_t e = e0 + u * S;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            mt__adamw_st<float, 4, STCS>(m + e + 4 * c, m4[u][c]);
            mt__adamw_st<float, 4, STCS>(v + e + 4 * c, v4[u][c]);
            if (MASTER) mt__adamw_st<float, 4, STCS>(master + e + 4 * c, p4[u][c]);
        }
        mt__adamw_st<T, G, STCS>(param + e, out[u]);
    }
}

/* Elements [s, e) of tensor t (s a multiple of the pack width VEC; e == t.n or a multiple of VEC), by
 * the block's MT__ADAMW_THREADS threads.  When t.vec, the first (e - s) / VEC * VEC elements in groups
 * of G (U per thread per iteration while U fit, then one), the rest element by element; when not
 * (some pointer not 16-byte aligned), all element by element. */
template <typename T, bool MASTER, int G, int U, bool LDCS, bool STCS>
__device__ __forceinline__ void mt__adamw_range(const mt__adamw_entry &t, size_t s, size_t e,
                                                const mt__adamw_args &a, float gs) {
    constexpr int VEC = mt__pack_width<T>::value;
    constexpr size_t S = (size_t)MT__ADAMW_THREADS * G;
    T *param = (T *)t.param;
    const T *grad = (const T *)t.grad;
    float *master = t.master, *m = t.m, *v = t.v;
    const uint64_t seed = a.seed ? a.seed + t.seed_off : 0;
    const bool sr = sizeof(T) == 2 && seed != 0;
    const float wd = t.decay ? a.wd : 0.0f;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    size_t pe = t.vec ? s + (e - s) / VEC * VEC : s; /* end of the packed part */
    size_t e0 = s + (size_t)threadIdx.x * G;
    for (; e0 + (U - 1) * S < pe; e0 += U * S)
        mt__adamw_groups<T, MASTER, G, U, LDCS, STCS>(param, grad, master, m, v, e0, a, gs, wd, sr, key);
    if constexpr (U > 1) /* the last < U groups of this thread */
        for (; e0 < pe; e0 += S)
            mt__adamw_groups<T, MASTER, G, 1, LDCS, STCS>(param, grad, master, m, v, e0, a, gs, wd, sr, key);
    /* the rest (the < VEC tail, or the whole range when not aligned): one element per thread */
    for (size_t i = pe + threadIdx.x; i < e; i += MT__ADAMW_THREADS) {
        float mm = m[i], vv = v[i];
        float p = MASTER ? master[i] : mt__f(param[i]);
        p = mt__adamw_elem(p, mt__f(grad[i]) * gs, mm, vv, a, wd);
        m[i] = mm;
        v[i] = vv;
        if (MASTER) master[i] = p;
        param[i] = mt__round_param<T>(p, sr ? mt_rng_u32(seed, a.step, i) : 0u, sr);
    }
}

/* The grid walks the work items of `count` tensors: block b takes items b, b + gridDim.x, ...; item
 * indices grow, so after a binary search for the first one the tensor index only moves forward (a
 * linear walk over the table).  Items past the end of a tensor (slices of its last chunk) are empty. */
template <typename T, bool MASTER, int VAR>
__device__ __forceinline__ void mt__adamw_tensors(const mt__adamw_entry *tab, int count, uint32_t nchunks,
                                                  const mt__adamw_args &a, const float *gscale) {
    typedef mt__adamw_cfg<VAR> C;
    typedef mt__adamw_item<T, VAR> I;
    float gs = gscale ? *gscale : 1.0f;
    uint64_t items = (uint64_t)nchunks * I::PER_CHUNK;
    if ((uint64_t)blockIdx.x >= items) return;
    int t = 0, hi = count - 1; /* the last tensor whose chunk0 <= the first chunk (tab[0].chunk0 = 0) */
    uint32_t c_first = (uint32_t)(blockIdx.x / I::PER_CHUNK);
    while (t < hi) {
        int mid = (t + hi + 1) >> 1;
        if (tab[mid].chunk0 <= c_first) t = mid;
        else hi = mid - 1;
    }
    for (uint64_t w = blockIdx.x; w < items; w += gridDim.x) {
        uint32_t c = (uint32_t)(w / I::PER_CHUNK);
        while (t + 1 < count && tab[t + 1].chunk0 <= c) t++;
        const mt__adamw_entry &te = tab[t];
        size_t s = (size_t)(c - te.chunk0) * MT__ADAMW_CHUNK + (size_t)(w % I::PER_CHUNK) * I::ELEMS;
        if (s >= te.n) continue;
        size_t e = s + I::ELEMS < te.n ? s + I::ELEMS : te.n;
        mt__adamw_range<T, MASTER, I::G, C::GROUPS, C::LDCS, C::STCS>(te, s, e, a, gs);
    }
}

/* table in kernel parameter space (mt_adamw, mt_adamw_multi) */
template <typename T, bool MASTER, int VAR>
__global__ void __launch_bounds__(MT__ADAMW_THREADS)
    mt__adamw_batch_kernel(const __grid_constant__ mt__adamw_batch b, mt__adamw_args a,
                           const float *__restrict__ gscale) {
    mt__adamw_tensors<T, MASTER, VAR>(b.e, b.count, b.nchunks, a, gscale);
}

/* table in device memory (mt_adamw_multi_plan: uploaded once) */
template <typename T, bool MASTER, int VAR>
__global__ void __launch_bounds__(MT__ADAMW_THREADS)
    mt__adamw_table_kernel(const mt__adamw_entry *__restrict__ tab, int count, uint32_t nchunks, mt__adamw_args a,
                           const float *__restrict__ gscale) {
    mt__adamw_tensors<T, MASTER, VAR>(tab, count, nchunks, a, gscale);
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

/* ---- AdamW launchers.  mt_adamw_gpu is a launch over one tensor; mt_adamw_multi (mt/ops.h) fills a
 * mt__adamw_batch of up to MT_ADAMW_MULTI_BATCH tensors per launch; a mt_adamw_multi_plan keeps the
 * table in device memory and runs every tensor in one launch. */

MT_API mt_status mt__adamw_make_args(const mt_adamw_hp *hp, float wd, uint64_t seed, mt__adamw_args *a) {
    if (!hp || hp->step < 1) return mt_errorf(MT_ERR_ARG, "adamw: hp->step must be >= 1 (got %d)", hp ? hp->step : 0);
    a->lr = hp->lr;
    a->beta1 = hp->beta1;
    a->beta2 = hp->beta2;
    a->eps = hp->eps;
    a->rbc1 = (float)(1.0 / (1.0 - pow((double)hp->beta1, hp->step)));
    a->rbc2 = (float)(1.0 / (1.0 - pow((double)hp->beta2, hp->step)));
    a->wd = wd;
    a->seed = seed;
    a->step = (uint64_t)hp->step;
    return MT_OK;
}

/* Fill one table entry (chunk0 is set by the caller). */
MT_API void mt__adamw_entry_set(mt__adamw_entry *e, void *param, float *master, void *m, void *v, const void *grad,
                                size_t n, uint64_t seed_off, int decay) {
    e->param = param;
    e->master = master;
    e->m = (float *)m;
    e->v = (float *)v;
    e->grad = grad;
    e->n = n;
    e->seed_off = seed_off;
    e->chunk0 = 0;
    e->decay = decay ? 1 : 0;
    e->vec = mt__al16(param) && mt__al16(master) && mt__al16(m) && mt__al16(v) && mt__al16(grad);
    e->pad_ = 0;
}

MT_API uint32_t mt__adamw_chunks(size_t n) { return (uint32_t)((n + MT__ADAMW_CHUNK - 1) / MT__ADAMW_CHUNK); }

/* Launch variant VAR over the table: `batch` (by value) when non-NULL, else `dtab` (device memory).
 * Persistent variants: one wave of resident blocks (at most one per work item); the others one block
 * per work item (capped at 2^31 - 1 blocks; the kernel loops over the rest). */
template <typename T, int VAR>
static inline mt_status mt__adamw_launch_v(const mt_ctx *cx, const mt__adamw_batch *batch, const mt__adamw_entry *dtab,
                                           int count, uint32_t nchunks, int has_master, const mt__adamw_args *a,
                                           const void *gscale) {
    const void *fn = batch ? (has_master ? (const void *)mt__adamw_batch_kernel<T, true, VAR>
                                         : (const void *)mt__adamw_batch_kernel<T, false, VAR>)
                           : (has_master ? (const void *)mt__adamw_table_kernel<T, true, VAR>
                                         : (const void *)mt__adamw_table_kernel<T, false, VAR>);
    uint64_t items = (uint64_t)nchunks * mt__adamw_item<T, VAR>::PER_CHUNK, grid = 0x7fffffffu;
    if (mt__adamw_cfg<VAR>::PERSIST)
        grid = (uint64_t)cx->gpu->sm_count * mt__occupancy(cx, fn, MT__ADAMW_THREADS);
    if (grid > items) grid = items;
    cudaStream_t st = MT__STREAM(cx);
    const float *gs = (const float *)gscale;
    const unsigned nb = (unsigned)grid, nt = MT__ADAMW_THREADS;
    if (batch && has_master) mt__adamw_batch_kernel<T, true, VAR><<<nb, nt, 0, st>>>(*batch, *a, gs);
    else if (batch) mt__adamw_batch_kernel<T, false, VAR><<<nb, nt, 0, st>>>(*batch, *a, gs);
    else if (has_master) mt__adamw_table_kernel<T, true, VAR><<<nb, nt, 0, st>>>(dtab, count, nchunks, *a, gs);
    else mt__adamw_table_kernel<T, false, VAR><<<nb, nt, 0, st>>>(dtab, count, nchunks, *a, gs);
    MT__LAUNCHED(cx, "mt__adamw_kernel");
    return MT_OK;
}

template <typename T>
static inline mt_status mt__adamw_launch_t(const mt_ctx *cx, const mt__adamw_batch *batch, const mt__adamw_entry *dtab,
                                           int count, uint32_t nchunks, int has_master, const mt__adamw_args *a,
                                           const void *gscale) {
    if (nchunks == 0) return MT_OK;
    switch (cx->gpu->adamw_variant) {
#define MT__ADAMW_CASE_(id, g, u, sl, lc, sc, pe, name) \
    case id: return mt__adamw_launch_v<T, id>(cx, batch, dtab, count, nchunks, has_master, a, gscale);
        MT__ADAMW_VARIANT_LIST(MT__ADAMW_CASE_)
#undef MT__ADAMW_CASE_
    default:
        return mt_errorf(MT_ERR_ARG, "adamw: cx->gpu->adamw_variant = %d (expected 0 .. %d)", cx->gpu->adamw_variant,
                         MT__ADAMW_VARIANTS - 1);
    }
}

MT_API mt_status mt__adamw_launch(const mt_ctx *cx, const mt__adamw_batch *batch, const mt__adamw_entry *dtab,
                                  int count, uint32_t nchunks, int has_master, const mt__adamw_args *a,
                                  const void *gscale) {
    MT__GPU_DISPATCH(cx, "adamw", return mt__adamw_launch_t<T>(cx, batch, dtab, count, nchunks, has_master, a, gscale));
    return MT_OK;
}

/* Append a tensor to `b` (its launch is pending); launch and empty `b` first when it is full.
 * All tensors of one batch have a master copy or none have (has_master). */
MT_API mt_status mt__adamw_batch_add(const mt_ctx *cx, mt__adamw_batch *b, int has_master, const mt__adamw_args *a,
                                     const void *gscale, const mt__adamw_entry *e) {
    if (e->n == 0) return MT_OK;
    if (b->count == MT_ADAMW_MULTI_BATCH) {
        MT_TRY(mt__adamw_launch(cx, b, NULL, b->count, b->nchunks, has_master, a, gscale));
        b->count = 0;
        b->nchunks = 0;
    }
    mt__adamw_entry *d = &b->e[b->count++];
    *d = *e;
    d->chunk0 = b->nchunks;
    b->nchunks += mt__adamw_chunks(e->n);
    return MT_OK;
}

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_adamw_gpu(const mt_ctx *cx, void *param, float *master, void *m, void *v, const void *grad,
                              size_t n, const mt_adamw_hp *hp, const void *gscale, uint64_t seed) {
    mt__adamw_args a;
    MT_TRY(mt__adamw_make_args(hp, hp ? hp->weight_decay : 0.0f, seed, &a));
    if (n == 0) return MT_OK;
    mt__adamw_batch b;
    b.count = 0;
    b.nchunks = 0;
    mt__adamw_entry e;
    mt__adamw_entry_set(&e, param, master, m, v, grad, n, 0, 1);
    MT_TRY(mt__adamw_batch_add(cx, &b, master != NULL, &a, gscale, &e));
    return mt__adamw_launch(cx, &b, NULL, b.count, b.nchunks, master != NULL, &a, gscale);
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
