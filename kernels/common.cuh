/* kernels/common.cuh — GPU state, error checks, and the small device helpers every kernel uses.
 *
 *   mt_ctx cx = {0};
 *   MT_CHECK(mt_gpu_init(&cx, 0, MT_BF16));   // GPU 0, bf16 weights/activations, fp32 master/stats
 *   ... mt_layernorm_fwd(&cx, ...) ...         // every op now runs on cx.stream
 *   mt_gpu_destroy(&cx);
 *
 * Defines
 *   struct mt_gpu_state        stream, cuBLASLt handle + 32 MiB workspace, cached matmul
 *                              heuristics per shape, device properties, reduction scratch
 *   mt_gpu_init, mt_gpu_destroy, mt_gpu_sync
 *   mt_gpu_timing, mt_gpu_timing_step, mt_gpu_timing_report   GPU time of every op by name and
 *                              shape, from CUDA events around each op (a profile without a profiler)
 *   MT_CUDA_TRY, MT_CUBLAS_TRY   turn a cudaError_t / cublasStatus_t into an mt_status that names
 *                                file:line, the expression and the library's message
 *   MT__LAUNCHED(cx, name)       after every launch: cudaGetLastError (no host sync); with
 *                                MT_GPU_DEBUG_SYNC defined also synchronises the stream, so an
 *                                asynchronous fault is reported at the launch that caused it
 *   mt__vec<T,V>, mt__ld/mt__st, mt__f/mt__cvt   16-byte packs and float <-> storage conversion
 *
 * Options (define before including megatron.h)
 *   MT_GPU_WORKSPACE_NBYTES   cuBLASLt workspace, default 32 MiB
 *   MT_GPU_SCRATCH_NBYTES     scratch for deterministic reductions and the embedding sort,
 *                             default 32 MiB
 *   MT_GPU_DEBUG_SYNC         synchronise after every launch (debugging only)
 *
 * Rules for all kernels: the dtype on the GPU is MT_F32 or MT_BF16 (storage), every reduction
 * accumulates in fp32 (fp64 for sums of squares) in a fixed order, so results are bitwise the
 * same run to run; there are no float atomics.  Stats (mean, rstd, lse, losses, m, v, norms) are
 * float.  No op allocates or synchronises with the host; one mt_gpu_state serves one stream.
 */
#ifndef MT_KERNELS_COMMON_CUH
#define MT_KERNELS_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <stdint.h>
#include "../mt/tune.h"

#ifndef MT_GPU_WORKSPACE_NBYTES
#define MT_GPU_WORKSPACE_NBYTES ((size_t)32 << 20)
#endif
#ifndef MT_GPU_SCRATCH_NBYTES
#define MT_GPU_SCRATCH_NBYTES ((size_t)32 << 20)
#endif
#define MT_GPU_MATMUL_CACHE 64

/* ------------------------------------------------------------------ error checks */

#define MT_CUDA_TRY(expr)                                                                             \
    do {                                                                                              \
        cudaError_t mt__e = (expr);                                                                   \
        if (mt__e != cudaSuccess)                                                                     \
            return mt_errorf(MT_ERR_CUDA, "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #expr,             \
                             cudaGetErrorString(mt__e), cudaGetErrorName(mt__e));                     \
    } while (0)

#define MT_CUBLAS_TRY(expr)                                                                           \
    do {                                                                                              \
        cublasStatus_t mt__b = (expr);                                                                \
        if (mt__b != CUBLAS_STATUS_SUCCESS)                                                           \
            return mt_errorf(MT_ERR_CUBLAS, "%s:%d: %s: %s", __FILE__, __LINE__, #expr,                \
                             cublasLtGetStatusString(mt__b));                                         \
    } while (0)

MT_API mt_status mt__launch_check(const mt_ctx *cx, const char *name, const char *file, int line) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "%s:%d: launching %s: %s", file, line, name, cudaGetErrorString(e));
#ifdef MT_GPU_DEBUG_SYNC
    e = cudaStreamSynchronize((cudaStream_t)cx->stream);
    if (e != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "%s:%d: running %s: %s", file, line, name, cudaGetErrorString(e));
#else
    (void)cx;
#endif
    return MT_OK;
}
#define MT__LAUNCHED(cx, name) MT_TRY(mt__launch_check((cx), (name), __FILE__, __LINE__))

/* ------------------------------------------------------------------ state */

/* One cached cuBLASLt algorithm: the key is everything the heuristic looked at. */
typedef struct mt__matmul_plan {
    int64_t key[16];
    int nkey;
    int used;
    cublasLtMatmulAlgo_t algo;
} mt__matmul_plan;

struct mt_gpu_state {
    int device;                 /* CUDA ordinal */
    char name[256];             /* device name */
    int sm_count;               /* multiprocessors */
    int cc_major, cc_minor;     /* compute capability */
    size_t l2_nbytes;           /* L2 cache */
    size_t smem_optin_nbytes;   /* max dynamic shared memory per block after opt-in */
    size_t global_nbytes;       /* device memory */
    size_t context_nbytes;      /* device memory in use once the CUDA context exists, before any
                                   allocation of ours (mt_gpu_memory_beyond_context subtracts it) */
    cudaStream_t stream;        /* the stream every op runs on (created here) */
    cublasLtHandle_t lt;        /* cuBLASLt handle */
    void *workspace;            /* (workspace_nbytes) cuBLASLt workspace */
    size_t workspace_nbytes;
    void *scratch;              /* (scratch_nbytes) partial sums, sort buffers; 256-byte aligned */
    size_t scratch_nbytes;
    int lt_epilogues;           /* 1 (default): bias/GELU/dGELU/bias-grad fused into cuBLASLt;
                                   0: plain GEMMs + separate kernels (tests check both) */
    int norm_fwd_warp;          /* norm forwards, when the row fits in a warp: 6 (default) one warp
                                   per row, one-pass statistics, 16 rows per block, w and b as float
                                   in shared memory; 3 the same in blocks of 8 rows reading w, b
                                   from global, 3 blocks per SM; 2 that at 2 blocks per SM; 1 two-pass
                                   statistics; 0: one block per row; 4, 5: persistent warps, the next
                                   row in registers (4) or a ring of rows in shared memory by
                                   cp.async (5) (tests and bench compare them all) */
    int xent_smem;              /* 1 (default): cross-entropy keeps the row in shared memory;
                                   0: re-reads it for the gradient (tests and bench compare both) */
    int xent_variant;           /* kernel variant of the cross-entropy (0 = default; bench compares) */
    int adamw_variant;          /* kernel variant of AdamW (0 = default; bench compares) */
    int norm_bwd_variant;       /* kernel variant of the norm backwards (0 = default; bench compares) */
    int gemm_tune;              /* 0 or 1 (default): each GEMM shape runs cuBLASLt's first heuristic
                                   algorithm (the same one every run); N > 1: the first time a shape
                                   is seen, up to N of the heuristic's algorithms are timed and the
                                   fastest kept (a host sync and a scratch output then; the choice,
                                   and so the rounding, can differ between runs) */
    mt_gemm_tune_table tune;    /* with tune_path: the picks of the GEMM tuning file (mt_gpu_gemm_tune_file) */
    char tune_path[1024];       /* "": no tuning file */
    mt__matmul_plan plans[MT_GPU_MATMUL_CACHE]; /* heuristic cache, round-robin replacement */
    int next_plan;
    struct { const void *fn; int threads, blocks; size_t smem; } occ[16]; /* resident blocks per SM */
    int next_occ;
    struct mt_op_timer *timer;  /* per-op GPU time, NULL unless mt_gpu_timing(cx, 1) */
};

#ifdef __cplusplus
extern "C" {
#endif

MT_API void mt_gpu_destroy(mt_ctx *cx);

/* Bytes of device memory in use now beyond what was in use when mt_gpu_init created the context
 * (what this process allocated since: ours, cuBLASLt's, NCCL's; comparable to a framework's
 * allocator statistics, which leave the context out).  0 when it cannot be read. */
MT_API size_t mt_gpu_memory_beyond_context(const mt_ctx *cx) {
    size_t fr = 0, tot = 0;
    if (!cx || !cx->gpu || cudaMemGetInfo(&fr, &tot) != cudaSuccess) return 0;
    return tot - fr > cx->gpu->context_nbytes ? tot - fr - cx->gpu->context_nbytes : 0;
}

/* Select GPU `device_index`, create the stream, cuBLASLt handle, workspace and scratch, and point
 * cx at them: cx->device = mt_gpu(index), cx->dtype = dtype (MT_F32 or MT_BF16). */
MT_API mt_status mt_gpu_init(mt_ctx *cx, int device_index, mt_dtype dtype) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mt_errorf(MT_ERR_CUDA, "mt_gpu_init: GPU %d requested but no CUDA device is usable: %s", device_index,
                         cudaGetErrorString(e));
    }
    if (device_index < 0 || device_index >= count) {
        if (count == 0)
            return mt_errorf(MT_ERR_ARG, "mt_gpu_init: GPU %d requested but this machine has no GPU", device_index);
        return mt_errorf(MT_ERR_ARG, "mt_gpu_init: GPU %d requested but this machine has %d GPU%s (valid: 0..%d)",
                         device_index, count, count == 1 ? "" : "s", count - 1);
    }
    if (dtype != MT_F32 && dtype != MT_BF16)
        return mt_errorf(MT_ERR_UNSUPPORTED, "mt_gpu_init: the GPU computes in f32 or bf16, not %s", mt_dtype_name(dtype));

    struct mt_gpu_state *g = NULL;
    MT_TRY(mt_calloc(sizeof *g, (void **)&g));
    g->device = device_index;
    g->lt_epilogues = 1;
    g->norm_fwd_warp = 6;
    g->xent_smem = 1;
    cx->gpu = g; /* so mt_gpu_destroy can clean up a partial init */
    cx->device = mt_gpu(device_index);
    cx->dtype = dtype;
    cx->stream = NULL;

    mt_status st = MT_OK;
    cudaDeviceProp p;
#define MT__INIT_CUDA(expr)                                                                               \
    do {                                                                                                  \
        cudaError_t mt__e = (expr);                                                                       \
        if (mt__e != cudaSuccess) {                                                                       \
            st = mt_errorf(MT_ERR_CUDA, "mt_gpu_init: GPU %d: %s: %s", device_index, #expr,               \
                           cudaGetErrorString(mt__e));                                                    \
            goto fail;                                                                                    \
        }                                                                                                 \
    } while (0)
    MT__INIT_CUDA(cudaSetDevice(device_index));
    MT__INIT_CUDA(cudaFree(0)); /* the context now, so that its memory can be told apart */
    {
        size_t fr = 0, tot = 0;
        MT__INIT_CUDA(cudaMemGetInfo(&fr, &tot));
        g->context_nbytes = tot - fr;
    }
    MT__INIT_CUDA(cudaGetDeviceProperties(&p, device_index));
    snprintf(g->name, sizeof g->name, "%s", p.name);
    g->sm_count = p.multiProcessorCount;
    g->cc_major = p.major;
    g->cc_minor = p.minor;
    g->l2_nbytes = (size_t)p.l2CacheSize;
    g->smem_optin_nbytes = p.sharedMemPerBlockOptin;
    g->global_nbytes = p.totalGlobalMem;
    /* a blocking stream: ordered with the legacy default stream, so the synchronous copies of
     * mt/ops.h (mt_copy_from_f32/mt_copy_to_f32, cudaMemcpy) see every queued op complete */
    MT__INIT_CUDA(cudaStreamCreate(&g->stream));
    cx->stream = (void *)g->stream;
    {
        cublasStatus_t b = cublasLtCreate(&g->lt);
        if (b != CUBLAS_STATUS_SUCCESS) {
            g->lt = NULL;
            st = mt_errorf(MT_ERR_CUBLAS, "mt_gpu_init: GPU %d: cublasLtCreate: %s", device_index,
                           cublasLtGetStatusString(b));
            goto fail;
        }
    }
    if ((st = mt_device_alloc(cx->device, MT_GPU_WORKSPACE_NBYTES, &g->workspace)) != MT_OK) {
        mt_logf(MT_LOG_ERROR, "mt_gpu_init: GPU %d: the cuBLASLt workspace (%zu MiB) does not fit", device_index,
                (size_t)(MT_GPU_WORKSPACE_NBYTES >> 20));
        goto fail;
    }
    g->workspace_nbytes = MT_GPU_WORKSPACE_NBYTES;
    if ((st = mt_device_alloc(cx->device, MT_GPU_SCRATCH_NBYTES, &g->scratch)) != MT_OK) {
        mt_logf(MT_LOG_ERROR, "mt_gpu_init: GPU %d: the reduction scratch (%zu MiB) does not fit", device_index,
                (size_t)(MT_GPU_SCRATCH_NBYTES >> 20));
        goto fail;
    }
    g->scratch_nbytes = MT_GPU_SCRATCH_NBYTES;
    return MT_OK;
#undef MT__INIT_CUDA
fail:
    mt_gpu_destroy(cx);
    return st;
}

/* Wait for everything queued on cx's stream (for tests, checkpoints and the end of a run). */
MT_API mt_status mt_gpu_sync(const mt_ctx *cx) {
    MT_CUDA_TRY(cudaStreamSynchronize((cudaStream_t)cx->stream));
    return MT_OK;
}

#ifdef __cplusplus
}
#endif

/* ------------------------------------------------------------------ per-op timing */

/* GPU time per op, for finding where a step goes without a profiler.  mt_gpu_timing(cx, 1) turns
 * it on: from then every op of mt/ops.h records a CUDA event before and after itself on cx's stream
 * (a few microseconds of host time per op; nothing else changes).  mt_gpu_timing_step waits for the
 * stream and adds each op's elapsed time to its row (name + up to 3 shape numbers: matmuls and
 * attention give theirs); mt_gpu_timing_report prints the rows, largest first, per step and as a
 * share of a step time the caller measured; what no op accounts for (launch gaps, copies, memsets,
 * collectives, host waits) is the last row.  mt_gpu_timing(cx, 0) frees it.  Ops issued while the
 * stream is being captured into a CUDA graph are not timed (counted in the report's "not timed").
 *
 *   MT_TRY(mt_gpu_timing(&cx, 1));
 *   for (...) { step(); MT_TRY(mt_gpu_timing_step(&cx)); }   // each step: a host sync
 *   mt_gpu_timing_report(&cx, stdout, mean_step_ms);
 */
#define MT__TIMER_ROWS 64
#define MT__TIMER_PAIRS 4096 /* ops per step at most (more are not timed, and counted) */
typedef struct mt_op_timer {
    const char *name[MT__TIMER_ROWS];
    int shape[MT__TIMER_ROWS][3];
    double ms[MT__TIMER_ROWS];
    long calls[MT__TIMER_ROWS];
    int rows, steps;
    long dropped;
    cudaEvent_t ev[2 * MT__TIMER_PAIRS];
    int row_of[MT__TIMER_PAIRS]; /* the row of each pending pair */
    int pending, created;        /* pairs recorded this step; events created so far */
} mt_op_timer;

static inline void mt__op_timer_free(mt_op_timer *t) {
    if (!t) return;
    for (int i = 0; i < t->created; i++) cudaEventDestroy(t->ev[i]);
    mt_free(t);
}

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_gpu_timing(const mt_ctx *cx, int on) {
    if (!cx->gpu) return mt_errorf(MT_ERR_ARG, "mt_gpu_timing: cx has no GPU state (call mt_gpu_init first)");
    if (!on) {
        if (cx->gpu->timer) cudaStreamSynchronize((cudaStream_t)cx->stream);
        mt__op_timer_free(cx->gpu->timer);
        cx->gpu->timer = NULL;
        return MT_OK;
    }
    if (!cx->gpu->timer) MT_TRY(mt_calloc(sizeof(mt_op_timer), (void **)&cx->gpu->timer));
    return MT_OK;
}

/* 1 while cx's stream is being captured into a CUDA graph (or the query fails): no host syncs,
 * event timing or allocations then. */
MT_API int mt__stream_capturing(const mt_ctx *cx) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    return cudaStreamIsCapturing((cudaStream_t)cx->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone;
}

/* Before an op: the row of (name, shape), its start event recorded; -1 when not timed. */
MT_API int mt__op_timer_begin(const mt_ctx *cx, const char *name, int s0, int s1, int s2) {
    mt_op_timer *t = cx->gpu ? cx->gpu->timer : NULL;
    if (!t) return -1;
    if (mt__stream_capturing(cx)) {
        t->dropped++; /* inside a CUDA graph capture: a timestamp would never be taken */
        return -1;
    }
    int r = 0;
    while (r < t->rows && !(t->name[r] == name && t->shape[r][0] == s0 && t->shape[r][1] == s1 &&
                            t->shape[r][2] == s2)) r++;
    if (r == t->rows) {
        if (r == MT__TIMER_ROWS) { t->dropped++; return -1; }
        t->name[r] = name;
        t->shape[r][0] = s0; t->shape[r][1] = s1; t->shape[r][2] = s2;
        t->rows++;
    }
    int k = t->pending;
    if (k == MT__TIMER_PAIRS) { t->dropped++; return -1; }
    while (t->created < 2 * k + 2) {
        if (cudaEventCreate(&t->ev[t->created]) != cudaSuccess) { t->dropped++; return -1; }
        t->created++;
    }
    if (cudaEventRecord(t->ev[2 * k], (cudaStream_t)cx->stream) != cudaSuccess) { t->dropped++; return -1; }
    t->row_of[k] = r;
    t->pending++;
    return k;
}

MT_API void mt__op_timer_end(const mt_ctx *cx, int k) {
    if (k >= 0) cudaEventRecord(cx->gpu->timer->ev[2 * k + 1], (cudaStream_t)cx->stream);
}

/* The end of a step: wait for the stream, add every pending op's time to its row. */
MT_API mt_status mt_gpu_timing_step(const mt_ctx *cx) {
    mt_op_timer *t = cx->gpu ? cx->gpu->timer : NULL;
    if (!t) return MT_OK;
    cudaError_t e = cudaStreamSynchronize((cudaStream_t)cx->stream);
    if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "mt_gpu_timing_step: %s", cudaGetErrorString(e));
    for (int k = 0; k < t->pending; k++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, t->ev[2 * k], t->ev[2 * k + 1]) != cudaSuccess) { t->dropped++; continue; }
        t->ms[t->row_of[k]] += ms;
        t->calls[t->row_of[k]]++;
    }
    t->pending = 0;
    t->steps++;
    return MT_OK;
}

/* Forget what was added so far (e.g. after warm-up steps). */
MT_API void mt_gpu_timing_reset(const mt_ctx *cx) {
    mt_op_timer *t = cx->gpu ? cx->gpu->timer : NULL;
    if (!t) return;
    for (int r = 0; r < t->rows; r++) { t->ms[r] = 0; t->calls[r] = 0; }
    t->steps = 0;
    t->dropped = 0;
}

/* The rows, largest first: calls and milliseconds per step, and the share of step_ms (the caller's
 * step time, e.g. its mean over the same steps; 0 leaves the shares out). */
MT_API void mt_gpu_timing_report(const mt_ctx *cx, FILE *f, double step_ms) {
    mt_op_timer *t = cx->gpu ? cx->gpu->timer : NULL;
    if (!t || t->steps == 0) return;
    int order[MT__TIMER_ROWS];
    double sum = 0;
    for (int r = 0; r < t->rows; r++) { order[r] = r; sum += t->ms[r]; }
    for (int i = 1; i < t->rows; i++)
        for (int j = i; j > 0 && t->ms[order[j]] > t->ms[order[j - 1]]; j--) {
            int x = order[j]; order[j] = order[j - 1]; order[j - 1] = x;
        }
    fprintf(f, "GPU time per step by op (mean of %d steps; shape: matmul N IC OC, attention T H D)\n",
            t->steps);
    fprintf(f, "  %-18s %-22s %8s %10s %7s\n", "op", "shape", "calls", "ms", "share");
    for (int i = 0; i < t->rows; i++) {
        int r = order[i];
        char shape[64] = "";
        if (t->shape[r][0] || t->shape[r][1] || t->shape[r][2])
            snprintf(shape, sizeof shape, "%d %d %d", t->shape[r][0], t->shape[r][1], t->shape[r][2]);
        double ms = t->ms[r] / t->steps;
        fprintf(f, "  %-18s %-22s %8.1f %10.3f", t->name[r], shape, (double)t->calls[r] / t->steps, ms);
        if (step_ms > 0) fprintf(f, " %6.1f%%", 100.0 * ms / step_ms);
        fprintf(f, "\n");
    }
    double ops_ms = sum / t->steps;
    fprintf(f, "  %-18s %-22s %8s %10.3f", "ops in all", "", "", ops_ms);
    if (step_ms > 0) {
        fprintf(f, " %6.1f%%\n", 100.0 * ops_ms / step_ms);
        fprintf(f, "  %-18s %-22s %8s %10.3f %6.1f%%\n", "not in an op", "", "", step_ms - ops_ms,
                100.0 * (step_ms - ops_ms) / step_ms);
        fprintf(f, "  %-18s %-22s %8s %10.3f\n", "step (wall)", "", "", step_ms);
    } else {
        fprintf(f, "\n");
    }
    if (t->dropped)
        fprintf(f, "  (%ld op calls not timed: more than %d rows or %d ops per step, or inside a graph capture)\n",
                t->dropped, MT__TIMER_ROWS, MT__TIMER_PAIRS);
}

/* Free everything mt_gpu_init created; cx goes back to the CPU defaults. Safe on a partial init. */
MT_API void mt_gpu_destroy(mt_ctx *cx) {
    struct mt_gpu_state *g = cx->gpu;
    if (g) {
        if (g->stream) cudaStreamSynchronize(g->stream);
        mt__op_timer_free(g->timer);
        if (g->lt) cublasLtDestroy(g->lt);
        if (g->workspace) cudaFree(g->workspace);
        if (g->scratch) cudaFree(g->scratch);
        if (g->stream) cudaStreamDestroy(g->stream);
        mt_gemm_tune_free(&g->tune);
        mt_free(g);
    }
    cx->gpu = NULL;
    cx->stream = NULL;
    cx->device = mt_cpu();
}

#ifdef __cplusplus
}
#endif

/* ------------------------------------------------------------------ launcher helpers */

/* Every launcher starts with this: a GPU state, and the dtype it can compute in. */
MT_API mt_status mt__gpu_check(const mt_ctx *cx, const char *op) {
    if (!cx->gpu) return mt_errorf(MT_ERR_ARG, "%s: cx has no GPU state (call mt_gpu_init first)", op);
    if (cx->dtype != MT_F32 && cx->dtype != MT_BF16)
        return mt_errorf(MT_ERR_UNSUPPORTED, "%s: the GPU computes in f32 or bf16, not %s", op, mt_dtype_name(cx->dtype));
    return MT_OK;
}

/* Run the body (the remaining arguments) with T bound to the storage type of cx->dtype (float or __nv_bfloat16). */
#define MT__GPU_DISPATCH(cx, op, ...)                                   \
    do {                                                                \
        MT_TRY(mt__gpu_check((cx), (op)));                              \
        if ((cx)->dtype == MT_BF16) {                                   \
            typedef __nv_bfloat16 T;                                    \
            __VA_ARGS__;                                                \
        } else {                                                        \
            typedef float T;                                            \
            __VA_ARGS__;                                                \
        }                                                               \
    } while (0)

#define MT__STREAM(cx) ((cudaStream_t)(cx)->stream)

/* 1 when p is NULL or 16-byte aligned. */
MT_API int mt__al16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

MT_API unsigned mt__cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

/* Blocks for a grid-stride loop over `npk` items of 256 threads: enough to fill the GPU several
 * times over, at least 1. */
MT_API unsigned mt__ew_grid(const mt_ctx *cx, size_t npk) {
    size_t want = (npk + 255) / 256, cap = (size_t)cx->gpu->sm_count * 16;
    if (want > cap) want = cap;
    return want ? (unsigned)want : 1u;
}


/* Blocks of `fn` with `threads` threads that fit on one SM at once (cached; at least 1). */
/* Resident blocks per SM of kernel fn with `threads` threads and `smem` bytes of dynamic shared
 * memory (cached per GPU state). */
MT_API int mt__occupancy_smem(const mt_ctx *cx, const void *fn, int threads, size_t smem) {
    struct mt_gpu_state *g = cx->gpu;
    for (int i = 0; i < 16; i++)
        if (g->occ[i].fn == fn && g->occ[i].threads == threads && g->occ[i].smem == smem) return g->occ[i].blocks;
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, threads, smem) != cudaSuccess) {
        cudaGetLastError();
        blocks = 1;
    }
    if (blocks < 1) blocks = 1;
    int i = g->next_occ;
    g->next_occ = (i + 1) % 16;
    g->occ[i].fn = fn;
    g->occ[i].threads = threads;
    g->occ[i].blocks = blocks;
    g->occ[i].smem = smem;
    return blocks;
}
MT_API int mt__occupancy(const mt_ctx *cx, const void *fn, int threads) {
    return mt__occupancy_smem(cx, fn, threads, 0);
}

/* ------------------------------------------------------------------ device helpers */

/* V elements of T, aligned to their total size: with V*sizeof(T) == 16 a load is one LDG.128. */
template <typename T, int V>
struct alignas(sizeof(T) * V) mt__vec {
    T v[V];
};

template <typename T, int V>
__device__ __forceinline__ mt__vec<T, V> mt__ld(const T *p) {
    return *reinterpret_cast<const mt__vec<T, V> *>(p);
}
/* Streaming load (read once, evict first) */
template <typename T, int V>
__device__ __forceinline__ mt__vec<T, V> mt__ldcs(const T *p) {
    if constexpr (sizeof(T) * V == 16) {
        int4 r = __ldcs(reinterpret_cast<const int4 *>(p));
        return *reinterpret_cast<mt__vec<T, V> *>(&r);
    } else {
        return *reinterpret_cast<const mt__vec<T, V> *>(p);
    }
}
template <typename T, int V>
__device__ __forceinline__ void mt__st(T *p, const mt__vec<T, V> &x) {
    *reinterpret_cast<mt__vec<T, V> *>(p) = x;
}
/* Streaming store (written once, not read again soon) */
template <typename T, int V>
__device__ __forceinline__ void mt__stcs(T *p, const mt__vec<T, V> &x) {
    if constexpr (sizeof(T) * V == 16) {
        __stcs(reinterpret_cast<int4 *>(p), *reinterpret_cast<const int4 *>(&x));
    } else {
        *reinterpret_cast<mt__vec<T, V> *>(p) = x;
    }
}

__device__ __forceinline__ float mt__f(float x) { return x; }
__device__ __forceinline__ float mt__f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T mt__cvt(float x);
template <> __device__ __forceinline__ float mt__cvt<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 mt__cvt<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* Elements per 16-byte pack */
template <typename T> struct mt__pack_width { static constexpr int value = 16 / (int)sizeof(T); };

__device__ __forceinline__ float mt__warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double mt__warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float mt__warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum NV values over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
 * the totals.  Fixed order: butterfly within warps, then warp 0..W-1 in order.  `shm` holds 32*NV
 * floats; the call ends with a barrier so shm may be reused right after. */
template <int NV>
__device__ __forceinline__ void mt__block_sum(float (&v)[NV], float *shm) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int i = 0; i < NV; i++) v[i] = mt__warp_sum(v[i]);
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < NV; i++) shm[warp * NV + i] = v[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < NV; i++) {
        float s = 0.0f;
        for (int w = 0; w < nw; w++) s += shm[w * NV + i];
        v[i] = s;
    }
    __syncthreads();
}

__device__ __forceinline__ float mt__block_max(float v, float *shm) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = mt__warp_max(v);
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < nw; w++) m = fmaxf(m, shm[w]);
    __syncthreads();
    return m;
}

#endif /* MT_KERNELS_COMMON_CUH */
