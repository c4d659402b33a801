/* tests/bench_kernels.cu — per-kernel speed against ceilings measured on the spot (needs a GPU).
 *
 *   make bench       (or: ./build/bench_kernels [reps])
 *
 * Ceilings: device-to-device copy (TB/s, bytes read + bytes written) and a bf16 cuBLASLt GEMM
 * 8192^3 (TFLOP/s).  Then every kernel in bf16 at the d48 shapes (B=8, T=1024, C=1600, 25 heads,
 * V=50304, MLP 4C): memory-bound kernels report TB/s (each input read once + each output written
 * once) and the share of the copy bandwidth, matmuls report TFLOP/s and the share of the GEMM
 * ceiling.  Timing: CUDA events around each call on the op stream, 5 warm-up calls, median of
 * `reps` (default 25).  Events around one call include the gap while the launch reaches the GPU
 * (a few us), which is most of a 26 MB norm; so the norms and the residual are also timed as K
 * calls captured in one CUDA graph over K rotating buffer sets (per-call time: no launch gap and
 * no L2 reuse, as inside a captured training step), and at 65536 rows, a size that fills the chip.
 * Rows starting with two spaces are the previous variant or a part of the row above.
 */
#include "megatron.h"

static mt_ctx g_cx;
static int g_reps = 25;
static double g_copy_tbs, g_gemm_tflops;

__global__ void bench_fill_kernel(void *p, int bf16, size_t n, float scale, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u = (mt_rng_uniform(seed, 7, i) * 2.0f - 1.0f) * scale;
        if (bf16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(u);
        else ((float *)p)[i] = u;
    }
}
__global__ void bench_tokens_kernel(int32_t *p, size_t n, int V, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (int32_t)(mt_rng_u32(seed, 9, i) % (uint32_t)V);
}

static uint64_t g_fill_seed = 1;
static void *dalloc(size_t nbytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, nbytes);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        fprintf(stderr, "bench: cudaMalloc of %.2f GiB failed (%s), %.2f GiB free\n", nbytes / 1073741824.0,
                cudaGetErrorString(e), fr / 1073741824.0);
        exit(1);
    }
    return p;
}
/* n random values in [-scale, scale) of dtype dt */
static void *drand(mt_dtype dt, size_t n, float scale) {
    void *p = dalloc(n * mt_dtype_size(dt));
    bench_fill_kernel<<<1024, 256, 0, (cudaStream_t)g_cx.stream>>>(p, dt == MT_BF16, n, scale, g_fill_seed++);
    return p;
}
static int32_t *dtokens(size_t n, int V) {
    int32_t *p = (int32_t *)dalloc(n * sizeof(int32_t));
    bench_tokens_kernel<<<256, 256, 0, (cudaStream_t)g_cx.stream>>>(p, n, V, g_fill_seed++);
    return p;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median milliseconds of `call` (an expression returning mt_status). */
#define TIME_MS(out_ms, call)                                                          \
    do {                                                                               \
        cudaStream_t s_ = (cudaStream_t)g_cx.stream;                                   \
        cudaEvent_t e0_, e1_;                                                          \
        cudaEventCreate(&e0_);                                                         \
        cudaEventCreate(&e1_);                                                         \
        for (int w_ = 0; w_ < 5; w_++) MT_CHECK(call);                                 \
        float *t_ = (float *)malloc(sizeof(float) * g_reps);                           \
        for (int r_ = 0; r_ < g_reps; r_++) {                                          \
            cudaEventRecord(e0_, s_);                                                  \
            MT_CHECK(call);                                                            \
            cudaEventRecord(e1_, s_);                                                  \
            cudaEventSynchronize(e1_);                                                 \
            cudaEventElapsedTime(&t_[r_], e0_, e1_);                                   \
        }                                                                              \
        qsort(t_, g_reps, sizeof(float), cmp_float);                                   \
        (out_ms) = t_[g_reps / 2];                                                     \
        free(t_);                                                                      \
        cudaEventDestroy(e0_);                                                         \
        cudaEventDestroy(e1_);                                                         \
    } while (0)

/* Median milliseconds per call of K back-to-back calls captured in one CUDA graph: `call` may use
 * k_ (0..K-1) to rotate among K buffer sets, so that repeated calls read memory and not L2, while
 * the launch gaps shrink to what they are inside a captured training step. */
#define TIME_GRAPH_MS(out_ms, K, call)                                                  \
    do {                                                                                \
        cudaStream_t s_ = (cudaStream_t)g_cx.stream;                                    \
        cudaGraph_t g_;                                                                 \
        cudaGraphExec_t ge_;                                                            \
        cudaEvent_t e0_, e1_;                                                           \
        cudaEventCreate(&e0_);                                                          \
        cudaEventCreate(&e1_);                                                          \
        for (int k_ = 0; k_ < (K); k_++) MT_CHECK(call); /* warm-up outside the graph */ \
        MT_CHECK(mt_gpu_sync(&g_cx));                                                   \
        if (cudaStreamBeginCapture(s_, cudaStreamCaptureModeRelaxed) != cudaSuccess) {  \
            fprintf(stderr, "bench: stream capture failed\n");                         \
            exit(1);                                                                    \
        }                                                                               \
        for (int k_ = 0; k_ < (K); k_++) MT_CHECK(call);                                \
        if (cudaStreamEndCapture(s_, &g_) != cudaSuccess ||                             \
            cudaGraphInstantiate(&ge_, g_, 0) != cudaSuccess) {                         \
            fprintf(stderr, "bench: graph capture of %s failed\n", #call);             \
            exit(1);                                                                    \
        }                                                                               \
        for (int w_ = 0; w_ < 3; w_++) cudaGraphLaunch(ge_, s_);                        \
        float *t_ = (float *)malloc(sizeof(float) * g_reps);                            \
        for (int r_ = 0; r_ < g_reps; r_++) {                                           \
            cudaEventRecord(e0_, s_);                                                   \
            cudaGraphLaunch(ge_, s_);                                                   \
            cudaEventRecord(e1_, s_);                                                   \
            cudaEventSynchronize(e1_);                                                  \
            cudaEventElapsedTime(&t_[r_], e0_, e1_);                                    \
            t_[r_] /= (float)(K);                                                       \
        }                                                                               \
        qsort(t_, g_reps, sizeof(float), cmp_float);                                    \
        (out_ms) = t_[g_reps / 2];                                                      \
        free(t_);                                                                       \
        cudaGraphExecDestroy(ge_);                                                      \
        cudaGraphDestroy(g_);                                                           \
        cudaEventDestroy(e0_);                                                          \
        cudaEventDestroy(e1_);                                                          \
        MT_CHECK(mt_gpu_sync(&g_cx));                                                   \
    } while (0)

static void row_mem(const char *name, const char *shape, double ms, double bytes) {
    double tbs = bytes / (ms * 1e-3) / 1e12;
    printf("%-22s %-26s %9.3f %8.2f TB/s %5.0f%% copy\n", name, shape, ms, tbs, 100.0 * tbs / g_copy_tbs);
    fflush(stdout);
}
static void row_flop(const char *name, const char *shape, double ms, double flops) {
    double tf = flops / (ms * 1e-3) / 1e12;
    printf("%-22s %-26s %9.3f %8.1f TF/s %5.0f%% gemm\n", name, shape, ms, tf, 100.0 * tf / g_gemm_tflops);
    fflush(stdout);
}

static mt_status copy_op(void *dst, const void *src, size_t nbytes) {
    cudaError_t e = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, (cudaStream_t)g_cx.stream);
    return e == cudaSuccess ? MT_OK : mt_errorf(MT_ERR_CUDA, "copy: %s", cudaGetErrorString(e));
}

int main(int argc, char **argv) {
    if (argc > 1) g_reps = atoi(argv[1]) > 0 ? atoi(argv[1]) : g_reps;
    MT_CHECK(mt_gpu_init(&g_cx, 0, MT_BF16));
    mt_ctx *cx = &g_cx;
    const size_t B = 8, T = 1024, C = 1600, V = 50304, NH = 25, HD = 64, N = B * T, F = 4 * C;
    const size_t bf = 2, f4 = 4;
    double ms;
    char shape[64];
    printf("bench_kernels: %s, %d SMs, L2 %zu MiB; bf16, d48 shapes (B=%zu T=%zu C=%zu V=%zu), median of %d\n",
           cx->gpu->name, cx->gpu->sm_count, cx->gpu->l2_nbytes >> 20, B, T, C, V, g_reps);
    printf("%-22s %-26s %9s %13s %10s\n", "kernel", "shape", "ms", "achieved", "of ceiling");

    /* ---- ceilings */
    {
        size_t nbytes = (size_t)2 << 30;
        void *a = drand(MT_BF16, nbytes / 2, 1.0f), *b = dalloc(nbytes);
        TIME_MS(ms, copy_op(b, a, nbytes));
        g_copy_tbs = 2.0 * nbytes / (ms * 1e-3) / 1e12;
        printf("%-22s %-26s %9.3f %8.2f TB/s  (ceiling)\n", "copy (d2d)", "2 GiB", ms, g_copy_tbs);
        cudaFree(a);
        cudaFree(b);
    }
    {
        int M = 8192;
        void *x = drand(MT_BF16, (size_t)M * M, 1.0f), *w = drand(MT_BF16, (size_t)M * M, 0.01f);
        void *o = dalloc((size_t)M * M * bf);
        TIME_MS(ms, mt_matmul_fwd(cx, o, NULL, x, w, NULL, NULL, M, M, M));
        g_gemm_tflops = 2.0 * M * M * (double)M / (ms * 1e-3) / 1e12;
        printf("%-22s %-26s %9.3f %8.1f TF/s  (ceiling)\n", "gemm bf16", "8192^3", ms, g_gemm_tflops);
        cudaFree(x);
        cudaFree(w);
        cudaFree(o);
    }

    /* ---- norms, residual.  Each at the d48 size (B*T = 8192 rows) and at 65536 rows; timed three ways:
     * "1 launch" as the rest of the table (events around one call: includes the launch gap),
     * "graph xK" (K calls in a CUDA graph over K rotating buffer sets, per call: no launch gap, no
     * L2 reuse), and for the forwards the previous layout (one block per row) under the same graph. */
    for (int si = 0; si < 2; si++) {
        size_t NR = si == 0 ? N : 65536;
        int K = si == 0 ? 8 : 2; /* 8 x 105 MB or 2 x 840 MB: well beyond L2 */
        size_t n = NR * C;
        void *x[8], *out[8], *g[8], *dres[8];
        float *mean[8], *rstd[8];
        for (int k = 0; k < K; k++) {
            x[k] = drand(MT_BF16, n, 2.0f);
            out[k] = dalloc(n * bf);
            g[k] = drand(MT_BF16, n, 1.0f);
            dres[k] = drand(MT_BF16, n, 1.0f);
            mean[k] = (float *)dalloc(NR * f4);
            rstd[k] = (float *)dalloc(NR * f4);
        }
        void *w = drand(MT_BF16, C, 1.0f), *b = drand(MT_BF16, C, 1.0f);
        void *dw = drand(MT_BF16, C, 1.0f), *db = drand(MT_BF16, C, 1.0f);
        double lnf = 2.0 * n * bf + 2 * C * bf + 2 * NR * f4, lnb = 4.0 * n * bf + 5 * C * bf + 2 * NR * f4;
        double rmf = 2.0 * n * bf + C * bf + NR * f4, rmb = 4.0 * n * bf + 3 * C * bf + NR * f4, res = 3.0 * n * bf;
        int Nn = (int)NR, Cc = (int)C;
        char g1[16];
        snprintf(g1, sizeof g1, "graph x%d", K);
#define NORM_ROW(name, bytes, call)                                         \
        do {                                                                \
            snprintf(shape, sizeof shape, "(%zu, %zu) 1 launch", NR, C);    \
            { const int k_ = 0; (void)k_; TIME_MS(ms, call); }              \
            row_mem(name, shape, ms, bytes);                                \
            snprintf(shape, sizeof shape, "(%zu, %zu) %s", NR, C, g1);      \
            TIME_GRAPH_MS(ms, K, call);                                     \
            row_mem(name, shape, ms, bytes);                                \
        } while (0)
        static const char *fwd_vn[7] = {"", "  (warp/row, 2 passes)", "  (warp/row, 1 pass, x2)",
                                        "  (warp/row, 1 pass, x3)", "  (persistent, regs)", "  (persistent, ring)", ""};
        NORM_ROW("layernorm fwd", lnf, mt_layernorm_fwd(cx, out[k_], mean[k_], rstd[k_], x[k_], w, b, Nn, Cc));
        cx->gpu->norm_fwd_warp = 0;
        snprintf(shape, sizeof shape, "(%zu, %zu) %s", NR, C, g1);
        TIME_GRAPH_MS(ms, K, mt_layernorm_fwd(cx, out[k_], mean[k_], rstd[k_], x[k_], w, b, Nn, Cc));
        row_mem("  (block/row, before)", shape, ms, lnf);
        for (int opt = 1; opt <= 5; opt++) { /* two-pass statistics; one pass at 2 and 3 blocks per SM; persistent */
            cx->gpu->norm_fwd_warp = opt;
            TIME_GRAPH_MS(ms, K, mt_layernorm_fwd(cx, out[k_], mean[k_], rstd[k_], x[k_], w, b, Nn, Cc));
            row_mem(fwd_vn[opt], shape, ms, lnf);
        }
        cx->gpu->norm_fwd_warp = 6; /* the default */
        /* the practical ceiling at this size: a copy of one activation (n bf16 in, n out) */
        snprintf(shape, sizeof shape, "(%zu, %zu) %s", NR, C, g1);
        TIME_GRAPH_MS(ms, K, copy_op(out[k_], x[k_], n * bf));
        row_mem("copy (same size)", shape, ms, 2.0 * n * bf);
        /* the other norm backward variants (0, the default, is the pipelined kernel) */
        static const char *vn[6] = {"", "  (warp/row, before)", "  (block/row, 1 pack)", "  (block/row, 2 packs)",
                                    "  (block/row, 4 packs)", "  (pipelined, 2 packs)"};
        NORM_ROW("layernorm bwd", lnb,
                 mt_layernorm_bwd(cx, dres[k_], dw, db, g[k_], dres[k_], x[k_], w, mean[k_], rstd[k_], Nn, Cc));
        for (int var = 1; var < 6; var++) { /* norm_bwd_variant, as listed in kernels/norms.cuh */
            cx->gpu->norm_bwd_variant = var;
            TIME_GRAPH_MS(ms, K, mt_layernorm_bwd(cx, dres[k_], dw, db, g[k_], dres[k_], x[k_], w, mean[k_], rstd[k_], Nn, Cc));
            row_mem(vn[var], shape, ms, lnb);
        }
        cx->gpu->norm_bwd_variant = 0;
        /* the default's parts: without dw/db (no partial rows, no second kernel); not in place */
        TIME_GRAPH_MS(ms, K, mt_layernorm_bwd(cx, dres[k_], NULL, NULL, g[k_], dres[k_], x[k_], w, mean[k_], rstd[k_], Nn, Cc));
        row_mem("  (no dw/db)", shape, ms, lnb);
        TIME_GRAPH_MS(ms, K, mt_layernorm_bwd(cx, out[k_], dw, db, g[k_], dres[k_], x[k_], w, mean[k_], rstd[k_], Nn, Cc));
        row_mem("  (not in place)", shape, ms, lnb);
        NORM_ROW("rmsnorm fwd", rmf, mt_rmsnorm_fwd(cx, out[k_], rstd[k_], x[k_], w, Nn, Cc));
        cx->gpu->norm_fwd_warp = 0;
        TIME_GRAPH_MS(ms, K, mt_rmsnorm_fwd(cx, out[k_], rstd[k_], x[k_], w, Nn, Cc));
        row_mem("  (block/row, before)", shape, ms, rmf);
        for (int opt = 1; opt <= 5; opt++) {
            cx->gpu->norm_fwd_warp = opt;
            TIME_GRAPH_MS(ms, K, mt_rmsnorm_fwd(cx, out[k_], rstd[k_], x[k_], w, Nn, Cc));
            row_mem(fwd_vn[opt], shape, ms, rmf);
        }
        cx->gpu->norm_fwd_warp = 6; /* the default */
        NORM_ROW("rmsnorm bwd", rmb, mt_rmsnorm_bwd(cx, dres[k_], dw, g[k_], dres[k_], x[k_], w, rstd[k_], Nn, Cc));
        for (int var = 1; var < 6; var++) {
            cx->gpu->norm_bwd_variant = var;
            TIME_GRAPH_MS(ms, K, mt_rmsnorm_bwd(cx, dres[k_], dw, g[k_], dres[k_], x[k_], w, rstd[k_], Nn, Cc));
            row_mem(vn[var], shape, ms, rmb);
        }
        cx->gpu->norm_bwd_variant = 0;
        NORM_ROW("residual", res, mt_residual_fwd(cx, out[k_], x[k_], g[k_], n));
#undef NORM_ROW
        for (int k = 0; k < K; k++) {
            cudaFree(x[k]); cudaFree(out[k]); cudaFree(g[k]); cudaFree(dres[k]); cudaFree(mean[k]); cudaFree(rstd[k]);
        }
        cudaFree(w); cudaFree(b); cudaFree(dw); cudaFree(db);
    }

    /* ---- GELU */
    {
        size_t n = N * F;
        void *x = drand(MT_BF16, n, 3.0f), *g = drand(MT_BF16, n, 1.0f), *out = dalloc(n * bf);
        snprintf(shape, sizeof shape, "(%zu, %zu)", N, F);
        TIME_MS(ms, mt_gelu_fwd(cx, out, x, n));
        row_mem("gelu fwd", shape, ms, 2.0 * n * bf);
        TIME_MS(ms, mt_gelu_bwd(cx, out, x, g, n));
        row_mem("gelu bwd", shape, ms, 3.0 * n * bf);
        /* as the norms: two calls in a graph over two buffer sets (no launch gap, no L2 reuse) */
        void *xs[2] = {x, drand(MT_BF16, n, 3.0f)}, *gs[2] = {g, drand(MT_BF16, n, 1.0f)}, *os[2] = {out, dalloc(n * bf)};
        snprintf(shape, sizeof shape, "(%zu, %zu) graph x2", N, F);
        TIME_GRAPH_MS(ms, 2, mt_gelu_fwd(cx, os[k_], xs[k_], n));
        row_mem("gelu fwd", shape, ms, 2.0 * n * bf);
        TIME_GRAPH_MS(ms, 2, mt_gelu_bwd(cx, os[k_], xs[k_], gs[k_], n));
        row_mem("gelu bwd", shape, ms, 3.0 * n * bf);
        cudaFree(xs[1]); cudaFree(gs[1]); cudaFree(os[1]);
        cudaFree(x); cudaFree(g); cudaFree(out);
    }

    /* ---- embedding */
    {
        void *wte = drand(MT_BF16, V * C, 1.0f), *wpe = drand(MT_BF16, T * C, 1.0f), *out = dalloc(N * C * bf);
        void *dwte = drand(MT_BF16, V * C, 1.0f), *dwpe = drand(MT_BF16, T * C, 1.0f), *g = drand(MT_BF16, N * C, 1.0f);
        int32_t *tok = dtokens(N, (int)V);
        snprintf(shape, sizeof shape, "(%zu, %zu) V=%zu", N, C, V);
        TIME_MS(ms, mt_embedding_fwd(cx, out, tok, wte, wpe, (int)B, (int)T, (int)C, 0, 0, (int)V));
        row_mem("embedding fwd", shape, ms, 2.0 * N * C * bf + T * C * bf + N * 4);
        /* random tokens: ~N distinct rows of dwte read and written, dwpe read and written */
        TIME_MS(ms, mt_embedding_bwd(cx, dwte, dwpe, g, tok, (int)B, (int)T, (int)C, 0, 0, (int)V));
        row_mem("embedding bwd", shape, ms, 3.0 * N * C * bf + 2.0 * T * C * bf + N * 4);
        /* the two halves: dwte (keys, radix sort, per-id sums) and dwpe (sums over the batch) */
        TIME_MS(ms, mt_embedding_bwd(cx, dwte, NULL, g, tok, (int)B, (int)T, (int)C, 0, 0, (int)V));
        row_mem("  dwte only (sort+sum)", shape, ms, 3.0 * N * C * bf + N * 4);
        TIME_MS(ms, mt_embedding_bwd(cx, NULL, dwpe, g, tok, (int)B, (int)T, (int)C, 0, 0, (int)V));
        row_mem("  dwpe only", shape, ms, 1.0 * N * C * bf + 2.0 * T * C * bf);
        /* few distinct ids (a synthetic task, a padding id): long runs, summed over segments */
        int32_t *few = dtokens(N, 12);
        TIME_MS(ms, mt_embedding_bwd(cx, dwte, NULL, g, few, (int)B, (int)T, (int)C, 0, 0, (int)V));
        row_mem("  dwte only, 12 ids", shape, ms, 1.0 * N * C * bf + N * 4);
        cudaFree(few);
        cudaFree(wte); cudaFree(wpe); cudaFree(out); cudaFree(dwte); cudaFree(dwpe); cudaFree(g); cudaFree(tok);
    }

    /* ---- cross-entropy, in place over bf16 logits */
    {
        void *logits = drand(MT_BF16, N * V, 4.0f);
        float *losses = (float *)dalloc(N * f4);
        int32_t *tg = dtokens(N, (int)V);
        snprintf(shape, sizeof shape, "(%zu, %zu)", N, V);
        TIME_MS(ms, mt_xent(cx, losses, logits, logits, tg, 1.0f / N, (int)N, (int)V, (int)V));
        row_mem("xent fwd+bwd", shape, ms, 2.0 * N * V * bf + N * (f4 + 4));
        cx->gpu->xent_smem = 0;
        TIME_MS(ms, mt_xent(cx, losses, logits, logits, tg, 1.0f / N, (int)N, (int)V, (int)V));
        row_mem("  (row re-read, before)", shape, ms, 2.0 * N * V * bf + N * (f4 + 4));
        cx->gpu->xent_smem = 1;
        TIME_MS(ms, mt_xent(cx, losses, NULL, logits, tg, 1.0f / N, (int)N, (int)V, (int)V));
        row_mem("xent fwd only", shape, ms, 1.0 * N * V * bf + N * (f4 + 4));
        /* every variant (cx->gpu->xent_variant, kernels/xent.cuh), the default's again for a fair
         * comparison in the same run; the shape column names the variant */
        for (int var = 1; var <= MT__XENT_VARIANTS; var++) {
            char vname[32];
            cx->gpu->xent_variant = var;
            snprintf(vname, sizeof vname, "  xent v%d fwd+bwd", var);
            TIME_MS(ms, mt_xent(cx, losses, logits, logits, tg, 1.0f / N, (int)N, (int)V, (int)V));
            row_mem(vname, mt__xent_variant_name(var), ms, 2.0 * N * V * bf + N * (f4 + 4));
            snprintf(vname, sizeof vname, "  xent v%d fwd only", var);
            TIME_MS(ms, mt_xent(cx, losses, NULL, logits, tg, 1.0f / N, (int)N, (int)V, (int)V));
            row_mem(vname, mt__xent_variant_name(var), ms, 1.0 * N * V * bf + N * (f4 + 4));
        }
        cx->gpu->xent_variant = 0;
        cudaFree(logits); cudaFree(losses); cudaFree(tg);
    }

    /* ---- matmuls of one d48 block and the head: fwd 2*N*IC*OC, bwd (dinp + dw + dbias) 4*N*IC*OC */
    {
        struct { const char *name; size_t IC, OC; int bias, resid, gelu; } mm[5] = {
            {"qkv", C, 3 * C, 1, 0, 0}, {"attn proj", C, C, 1, 1, 0}, {"fc", C, F, 1, 0, 1},
            {"fc proj", F, C, 1, 1, 0}, {"lm head", C, V, 0, 0, 0}};
        for (int i = 0; i < 5; i++) {
            size_t IC = mm[i].IC, OC = mm[i].OC;
            void *x = drand(MT_BF16, N * IC, 1.0f), *w = drand(MT_BF16, OC * IC, 0.02f);
            void *b = mm[i].bias ? drand(MT_BF16, OC, 0.1f) : NULL, *out = dalloc(N * OC * bf);
            void *res = mm[i].resid ? drand(MT_BF16, N * OC, 1.0f) : NULL, *pre = mm[i].gelu ? dalloc(N * OC * bf) : NULL;
            void *g = drand(MT_BF16, N * OC, 0.01f), *dx = dalloc(N * IC * bf), *dw = drand(MT_BF16, OC * IC, 0.01f);
            void *db = mm[i].bias ? drand(MT_BF16, OC, 0.01f) : NULL;
            /* the backward's dGELU applies to the layer's input: use the fc's gelu_pre for fc proj */
            void *gpre = i == 3 ? drand(MT_BF16, N * IC, 1.0f) : NULL;
            char name[64];
            snprintf(shape, sizeof shape, "%zux%zu -> %zu%s%s", N, IC, OC, b ? " +b" : "", pre ? " gelu" : res ? " +res" : "");
            snprintf(name, sizeof name, "matmul fwd %s", mm[i].name);
            TIME_MS(ms, mt_matmul_fwd(cx, out, pre, x, w, b, res, (int)N, (int)IC, (int)OC));
            row_flop(name, shape, ms, 2.0 * N * IC * OC);
            snprintf(name, sizeof name, "matmul bwd %s", mm[i].name);
            TIME_MS(ms, mt_matmul_bwd(cx, dx, dw, db, g, x, w, gpre, (int)N, (int)IC, (int)OC));
            row_flop(name, shape, ms, 4.0 * N * IC * OC);
            cudaFree(x); cudaFree(w); cudaFree(b); cudaFree(out); cudaFree(res); cudaFree(pre);
            cudaFree(g); cudaFree(dx); cudaFree(dw); cudaFree(db); cudaFree(gpre);
        }
    }

    /* ---- reference attention (the correct one; flash attention is separate) */
    {
        size_t nq = N * NH * 3 * HD, no = N * NH * HD;
        void *qkv = drand(MT_BF16, nq, 1.0f), *out = dalloc(no * bf), *g = drand(MT_BF16, no, 1.0f);
        void *dqkv = dalloc(nq * bf);
        float *lse = (float *)dalloc(B * NH * T * f4);
        double fl = 4.0 * B * NH * (double)T * T * HD / 2; /* causal */
        snprintf(shape, sizeof shape, "B%zu T%zu H%zu D%zu causal", B, T, NH, HD);
        TIME_MS(ms, mt_attention_fwd_gpu(cx, out, lse, qkv, (int)B, (int)T, (int)NH, 1, (int)HD, 1));
        row_flop("attention_ref fwd", shape, ms, fl);
        TIME_MS(ms, mt_attention_bwd_gpu(cx, dqkv, g, out, lse, qkv, (int)B, (int)T, (int)NH, 1, (int)HD, 1));
        row_flop("attention_ref bwd", shape, ms, 2.5 * fl);
        cudaFree(qkv); cudaFree(out); cudaFree(g); cudaFree(dqkv); cudaFree(lse);
    }

    /* ---- AdamW over the d48 parameter count (or what fits): bf16 grad + param, fp32 master, m, v */
    {
        size_t want = 1557611200ull, fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        size_t fit = (size_t)(fr * 0.85) / 16, n = want < fit ? want : fit;
        void *p = drand(MT_BF16, n, 1.0f), *g = drand(MT_BF16, n, 1.0f);
        float *master = (float *)drand(MT_F32, n, 1.0f), *m = (float *)drand(MT_F32, n, 0.1f);
        float *v = (float *)dalloc(n * f4), *acc = (float *)dalloc(f4);
        cudaMemsetAsync(v, 0x3c, n * f4, (cudaStream_t)cx->stream);  /* 0x3c3c3c3c = 0.0115f */
        cudaMemsetAsync(acc, 0x3f, f4, (cudaStream_t)cx->stream);    /* 0x3f3f3f3f = 0.747f */
        mt_adamw_hp hp;
        hp.lr = 1e-4f; hp.beta1 = 0.9f; hp.beta2 = 0.95f; hp.eps = 1e-8f; hp.weight_decay = 0.1f; hp.step = 10;
        snprintf(shape, sizeof shape, "%.3fB params", n / 1e9);
        TIME_MS(ms, mt_adamw(cx, p, master, m, v, g, n, &hp, NULL, 0));
        row_mem("adamw", shape, ms, (2.0 + 2 + 4 * 6) * n);
        TIME_MS(ms, mt_adamw(cx, p, master, m, v, g, n, &hp, acc, 777));
        row_mem("adamw (sr, gscale)", shape, ms, (2.0 + 2 + 4 * 6) * n + 4);
        /* every kernel variant (cx->gpu->adamw_variant, the same bits), v0 again for a fair comparison
         * in the same run; the shape column names the layout (kernels/adamw.cuh) */
        for (int var = 0; var < MT__ADAMW_VARIANTS; var++) {
            char vname[32];
            snprintf(vname, sizeof vname, "  adamw v%d", var);
            cx->gpu->adamw_variant = var;
            TIME_MS(ms, mt_adamw(cx, p, master, m, v, g, n, &hp, NULL, 0));
            row_mem(vname, mt__adamw_variant_name(var), ms, (2.0 + 2 + 4 * 6) * n);
            TIME_MS(ms, mt_adamw(cx, p, master, m, v, g, n, &hp, acc, 777));
            row_mem("    (sr, gscale)", mt__adamw_variant_name(var), ms, (2.0 + 2 + 4 * 6) * n + 4);
        }
        cx->gpu->adamw_variant = 0;
        TIME_MS(ms, mt_sumsq(cx, acc, g, n));
        row_mem("sumsq (grad norm)", shape, ms, 2.0 * n);
        /* the same bytes cut into the d48 model's tensors (wte, wpe, 48 x 12, final norm), each
         * starting 16-byte aligned: mt_adamw_multi (5 launches of <= 128) and a plan (1 launch) */
        {
            static mt_adamw_tensor ts[600];
            size_t sz[12] = {C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C};
            int dec[12] = {0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0};
            int nt = 0;
            size_t off = 0;
            for (int i = 0; i < 2 + 48 * 12 + 2; i++) {
                size_t len = i == 0 ? V * C : i == 1 ? T * C : i >= 2 + 48 * 12 ? C : sz[(i - 2) % 12];
                int d = i < 2 ? 1 : i >= 2 + 48 * 12 ? 0 : dec[(i - 2) % 12];
                if (off + len > n) break;
                mt_adamw_tensor *t = &ts[nt++];
                t->param = (char *)p + off * bf;
                t->master = master + off;
                t->m = m + off;
                t->v = v + off;
                t->grad = (char *)g + off * bf;
                t->n = len;
                t->decay = d;
                off = (off + len + 7) / 8 * 8;
            }
            double used = 0;
            for (int i = 0; i < nt; i++) used += (double)ts[i].n;
            snprintf(shape, sizeof shape, "%d tensors, %.3fB", nt, used / 1e9);
            TIME_MS(ms, mt_adamw_multi(cx, ts, nt, &hp, 0.1f, acc, 777));
            row_mem("adamw_multi (sr,gscale)", shape, ms, (2.0 + 2 + 4 * 6) * used + 4);
            mt_adamw_multi_plan plan;
            MT_CHECK(mt_adamw_multi_plan_init(cx, &plan, ts, nt));
            TIME_MS(ms, mt_adamw_multi_plan_step(cx, &plan, &hp, 0.1f, acc, 777));
            row_mem("adamw plan (1 launch)", shape, ms, (2.0 + 2 + 4 * 6) * used + 4);
            mt_adamw_multi_plan_free(&plan);
        }
        cudaFree(p); cudaFree(g); cudaFree(master); cudaFree(m); cudaFree(v); cudaFree(acc);
    }
    MT_CHECK(mt_gpu_sync(cx));
    mt_gpu_destroy(cx);
    return 0;
}
