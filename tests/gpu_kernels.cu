/* tests/gpu_kernels.cu — every GPU op against the CPU float32 reference (needs a GPU).
 *
 *   make test-gpu            (or: nvcc ... tests/gpu_kernels.cu && ./build/gpu_kernels)
 *   MT_TEST_SEED=123 ./build/gpu_kernels     reproduce a run (the seed is printed first)
 *
 * Each op runs in f32 and in bf16 on fresh random inputs (rounded to the dtype first, so the CPU
 * reference sees exactly what the GPU sees); outputs are poisoned with NaN bytes before the call,
 * accumulated gradients start from random values.  One line per check: op, dtype, case, relative
 * error ||gpu - ref|| / ||ref|| and the bound (f32 < 1e-5, bf16 < 1e-2).  Odd sizes run through the
 * scalar paths; shapes the GPU refuses (bf16 matmul dims not multiples of 8) must fail cleanly.
 */
#include <stdio.h>
/* the last error message is kept, so the bad-input tests can check what it says */
static char g_msg[1024];
static void test_log(int level, const char *msg) {
    if (level >= 3) snprintf(g_msg, sizeof g_msg, "%s", msg);
    if (level >= 1) fprintf(stderr, "megatron.h: %s\n", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)
#include "megatron.h"
#include "mt_test.h"
#include <dirent.h>
#include <unistd.h>
#include "mt_test_files.h"
#include <time.h>

static mt_ctx g_cx;        /* f32 context; bf16 shares its stream and state */
static uint64_t g_seed;    /* fresh per run unless MT_TEST_SEED is set */
static uint64_t g_stream_id;

#define MAX_ALLOCS 256
static void *g_dev[MAX_ALLOCS];
static void *g_host[MAX_ALLOCS];
static int g_ndev, g_nhost;

static mt_ctx ctx_of(mt_dtype dt) {
    mt_ctx c = g_cx;
    c.dtype = dt;
    return c;
}
static double tol_of(mt_dtype dt) { return dt == MT_BF16 ? 1e-2 : 1e-5; }

static float round_to(float x, mt_dtype dt) { return dt == MT_BF16 ? mt_bf16_to_f32(mt_f32_to_bf16(x)) : x; }

static void *hmalloc(size_t nbytes) {
    void *p = calloc(nbytes ? nbytes : 1, 1);
    if (!p) { fprintf(stderr, "host allocation of %zu bytes failed\n", nbytes); exit(1); }
    if (g_nhost < MAX_ALLOCS) g_host[g_nhost++] = p;
    return p;
}
static void *dmalloc(size_t nbytes) {
    void *p = NULL;
    if (cudaMalloc(&p, nbytes ? nbytes : 1) != cudaSuccess) { fprintf(stderr, "cudaMalloc %zu failed\n", nbytes); exit(1); }
    if (g_ndev < MAX_ALLOCS) g_dev[g_ndev++] = p;
    return p;
}
static void free_all(void) {
    cudaDeviceSynchronize();
    for (int i = 0; i < g_ndev; i++) cudaFree(g_dev[i]);
    for (int i = 0; i < g_nhost; i++) free(g_host[i]);
    g_ndev = g_nhost = 0;
}

/* n normal(0, scale) values, rounded to dt */
static float *hrand(size_t n, float scale, mt_dtype dt) {
    float *h = (float *)hmalloc(n * sizeof(float));
    uint64_t sub = g_stream_id++;
    for (size_t i = 0; i < n; i++) h[i] = round_to(scale * mt_rng_normal(g_seed, sub, i), dt);
    return h;
}
static float *hcopy(const float *src, size_t n) {
    float *h = (float *)hmalloc(n * sizeof(float));
    memcpy(h, src, n * sizeof(float));
    return h;
}
/* device copy of h in dtype dt (stats: MT_F32) */
static void *dup_dev(mt_dtype dt, const float *h, size_t n) {
    void *d = dmalloc(n * mt_dtype_size(dt));
    mt_ctx c = ctx_of(dt);
    MT_CHECK(mt_copy_from_f32(&c, d, h, n));
    return d;
}
/* overwrite device buffer d (dtype dt) with h again */
static void reupload(void *d, mt_dtype dt, const float *h, size_t n) {
    mt_ctx c = ctx_of(dt);
    MT_CHECK(mt_copy_from_f32(&c, d, h, n));
}
static void *poison_dev(mt_dtype dt, size_t n) {
    void *d = dmalloc(n * mt_dtype_size(dt));
    cudaMemset(d, 0xff, n * mt_dtype_size(dt)); /* NaN in f32 and bf16 */
    return d;
}
static float *down(const void *d, mt_dtype dt, size_t n) {
    MT_CHECK(mt_gpu_sync(&g_cx));
    float *h = (float *)hmalloc(n * sizeof(float));
    MT_CHECK(mt_copy_to_f32(&g_cx, h, d, dt, n));
    return h;
}
static int32_t *dup_tokens(const int32_t *h, size_t n) {
    int32_t *d = (int32_t *)dmalloc(n * sizeof(int32_t));
    cudaMemcpy(d, h, n * sizeof(int32_t), cudaMemcpyHostToDevice);
    return d;
}
static double relerr(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}
/* print and check one comparison */
static void check(const char *op, mt_dtype dt, const char *what, const float *gpu, const float *ref, size_t n,
                  double tol) {
    double e = relerr(gpu, ref, n);
    printf("    %-14s %-5s %-34s rel err %.2e (< %.0e)\n", op, mt_dtype_name(dt), what, e, tol);
    MT_EXPECT(e < tol, "%s %s %s: rel err %.3e >= %.0e", op, mt_dtype_name(dt), what, e, tol);
}
static void check_dev(const char *op, mt_dtype dt, const char *what, const void *d, mt_dtype ddt, const float *ref,
                      size_t n, double tol) {
    check(op, dt, what, down(d, ddt, n), ref, n, tol);
}

static const mt_dtype DTYPES[2] = {MT_F32, MT_BF16};

/* ------------------------------------------------------------------ embedding */

/* Tokens: random over V (short runs once sorted), or "few": 70 % one id, 20 % the last local id,
 * 5 % not local, 5 % random, so that runs cover many segments of the backward's sorted positions. */
static void test_embedding(void) {
    const int Cs[2] = {64, 37};
    for (int few = 0; few < 2; few++)
    for (int di = 0; di < 2; di++)
        for (int ci = 0; ci < 2; ci++) {
            mt_dtype dt = DTYPES[di];
            mt_ctx cx = ctx_of(dt);
            int B = few ? 4 : 3, T = few ? 301 : 37, C = Cs[ci], V = 50, vstart = 10, vcount = 30, pos_off = 5;
            size_t BT = (size_t)B * T;
            int32_t *tok = (int32_t *)hmalloc(BT * sizeof(int32_t));
            for (size_t i = 0; i < BT; i++) {
                uint32_t r = mt_rng_u32(g_seed, g_stream_id, i);
                tok[i] = (int32_t)(r % V);
                if (few) {
                    uint32_t u = (r >> 8) % 100;
                    tok[i] = u < 70 ? vstart + 2 : u < 90 ? vstart + vcount - 1 : u < 95 ? V - 1 : tok[i];
                }
            }
            g_stream_id++;
            tok[1] = tok[5] = tok[7] = vstart + 3; /* repeats */
            int32_t *dtok = dup_tokens(tok, BT);
            float *wte = hrand((size_t)vcount * C, 1.0f, dt), *wpe = hrand((size_t)(T + pos_off) * C, 1.0f, dt);
            void *dwte = dup_dev(dt, wte, (size_t)vcount * C), *dwpe = dup_dev(dt, wpe, (size_t)(T + pos_off) * C);
            void *dout = poison_dev(dt, BT * C);
            float *ref = (float *)hmalloc(BT * C * sizeof(float));
            char what[64];
            mt_embedding_fwd_cpu_f32(ref, tok, wte, wpe, B, T, C, pos_off, vstart, vcount);
            MT_CHECK(mt_embedding_fwd(&cx, dout, dtok, dwte, dwpe, B, T, C, pos_off, vstart, vcount));
            snprintf(what, sizeof what, "fwd C=%d", C);
            check_dev("embedding", dt, what, dout, dt, ref, BT * C, tol_of(dt));
            mt_embedding_fwd_cpu_f32(ref, tok, wte, NULL, B, T, C, pos_off, vstart, vcount);
            MT_CHECK(mt_embedding_fwd(&cx, dout, dtok, dwte, NULL, B, T, C, pos_off, vstart, vcount));
            snprintf(what, sizeof what, "fwd C=%d no wpe", C);
            check_dev("embedding", dt, what, dout, dt, ref, BT * C, tol_of(dt));

            /* backward: += into random gradients; run twice for determinism */
            float *g = hrand(BT * C, 1.0f, dt);
            float *gw0 = hrand((size_t)vcount * C, 1.0f, dt), *gp0 = hrand((size_t)(T + pos_off) * C, 1.0f, dt);
            float *gw = hcopy(gw0, (size_t)vcount * C), *gp = hcopy(gp0, (size_t)(T + pos_off) * C);
            mt_embedding_bwd_cpu_f32(gw, gp, g, tok, B, T, C, pos_off, vstart, vcount);
            void *dg = dup_dev(dt, g, BT * C);
            void *dgw = dup_dev(dt, gw0, (size_t)vcount * C), *dgp = dup_dev(dt, gp0, (size_t)(T + pos_off) * C);
            MT_CHECK(mt_embedding_bwd(&cx, dgw, dgp, dg, dtok, B, T, C, pos_off, vstart, vcount));
            float *r1 = down(dgw, dt, (size_t)vcount * C);
            snprintf(what, sizeof what, "bwd dwte C=%d%s", C, few ? " few ids" : "");
            check("embedding", dt, what, r1, gw, (size_t)vcount * C, tol_of(dt));
            snprintf(what, sizeof what, "bwd dwpe C=%d", C);
            check_dev("embedding", dt, what, dgp, dt, gp, (size_t)(T + pos_off) * C, tol_of(dt));
            void *dgw2 = dup_dev(dt, gw0, (size_t)vcount * C);
            MT_CHECK(mt_embedding_bwd(&cx, dgw2, NULL, dg, dtok, B, T, C, pos_off, vstart, vcount));
            float *r2 = down(dgw2, dt, (size_t)vcount * C);
            MT_EXPECT(memcmp(r1, r2, (size_t)vcount * C * sizeof(float)) == 0, "embedding bwd not deterministic");
        }
    free_all();
}

/* ------------------------------------------------------------------ norms */

static void test_layernorm(void) {
    const int Cs[3] = {1600, 768, 37};
    for (int di = 0; di < 2; di++)
        for (int ci = 0; ci < 3; ci++) {
            mt_dtype dt = DTYPES[di];
            mt_ctx cx = ctx_of(dt);
            int N = ci == 0 ? 3001 : 67, C = Cs[ci]; /* 3001 rows: several rows per backward block */
            size_t n = (size_t)N * C;
            char what[64];
            float *x = hrand(n, 1.0f, dt), *w = hrand(C, 1.0f, dt), *b = hrand(C, 1.0f, dt);
            for (size_t i = 0; i < n; i++) x[i] = round_to(x[i] + 0.5f, dt); /* non-zero mean */
            float *out = (float *)hmalloc(n * 4), *mean = (float *)hmalloc(N * 4), *rstd = (float *)hmalloc(N * 4);
            mt_layernorm_fwd_cpu_f32(out, mean, rstd, x, w, b, N, C);
            void *dx = dup_dev(dt, x, n), *dw = dup_dev(dt, w, C), *db = dup_dev(dt, b, C);
            void *dout = poison_dev(dt, n), *dmean = poison_dev(MT_F32, N), *drstd = poison_dev(MT_F32, N);
            static const char *fwd_name[7] = {"block/row", "warp/row", "warp/row 1-pass", "warp/row 1-pass x3",
                                              "persistent regs", "persistent ring", "w,b in smem"};
            for (int warp = 6; warp >= 0; warp--) { /* norm_fwd_warp: w,b in smem, persistent, 1 pass, warp per row, block per row */
                cx.gpu->norm_fwd_warp = warp;
                cudaMemset(dout, 0xff, n * mt_dtype_size(dt));
                cudaMemset(dmean, 0xff, N * 4);
                cudaMemset(drstd, 0xff, N * 4);
                MT_CHECK(mt_layernorm_fwd(&cx, dout, dmean, drstd, dx, dw, db, N, C));
                snprintf(what, sizeof what, "fwd out C=%d %s", C, fwd_name[warp]);
                check_dev("layernorm", dt, what, dout, dt, out, n, tol_of(dt));
                snprintf(what, sizeof what, "fwd mean C=%d %s", C, fwd_name[warp]);
                check_dev("layernorm", dt, what, dmean, MT_F32, mean, N, 1e-5);
                snprintf(what, sizeof what, "fwd rstd C=%d %s", C, fwd_name[warp]);
                check_dev("layernorm", dt, what, drstd, MT_F32, rstd, N, 1e-5);
            }
            cx.gpu->norm_fwd_warp = 6; /* the default */

            /* backward: dinp = dresid + ..., dw, db += ; then in place (dresid == dinp) */
            float *g = hrand(n, 1.0f, dt), *res = hrand(n, 1.0f, dt);
            float *dw0 = hrand(C, 1.0f, dt), *db0 = hrand(C, 1.0f, dt);
            float *rdx = (float *)hmalloc(n * 4), *rdw = hcopy(dw0, C), *rdb = hcopy(db0, C);
            mt_layernorm_bwd_cpu_f32(rdx, rdw, rdb, g, res, x, w, mean, rstd, N, C);
            void *dg = dup_dev(dt, g, n), *dres = dup_dev(dt, res, n), *ddx = poison_dev(dt, n);
            void *ddw = dup_dev(dt, dw0, C), *ddb = dup_dev(dt, db0, C);
            void *dmean_ref = dup_dev(MT_F32, mean, N), *drstd_ref = dup_dev(MT_F32, rstd, N);
            for (int var = 0; var < 6; var++) { /* norm_bwd_variant, as listed in kernels/norms.cuh */
                cx.gpu->norm_bwd_variant = var;
                cudaMemset(ddx, 0xff, n * mt_dtype_size(dt));
                reupload(ddw, dt, dw0, C);
                reupload(ddb, dt, db0, C);
                MT_CHECK(mt_layernorm_bwd(&cx, ddx, ddw, ddb, dg, dres, dx, dw, dmean_ref, drstd_ref, N, C));
                snprintf(what, sizeof what, "bwd dinp N=%d C=%d v%d", N, C, var);
                check_dev("layernorm", dt, what, ddx, dt, rdx, n, tol_of(dt));
                snprintf(what, sizeof what, "bwd dw N=%d C=%d v%d", N, C, var);
                check_dev("layernorm", dt, what, ddw, dt, rdw, C, tol_of(dt));
                snprintf(what, sizeof what, "bwd db N=%d C=%d v%d", N, C, var);
                check_dev("layernorm", dt, what, ddb, dt, rdb, C, tol_of(dt));
            }
            cx.gpu->norm_bwd_variant = 0;
            /* in place, no weight grads */
            MT_CHECK(mt_layernorm_bwd(&cx, dres, NULL, NULL, dg, dres, dx, dw, dmean_ref, drstd_ref, N, C));
            snprintf(what, sizeof what, "bwd dinp in place C=%d", C);
            check_dev("layernorm", dt, what, dres, dt, rdx, n, tol_of(dt));
            /* determinism of the weight gradients */
            void *ddw2 = dup_dev(dt, dw0, C), *ddb2 = dup_dev(dt, db0, C);
            MT_CHECK(mt_layernorm_bwd(&cx, ddx, ddw2, ddb2, dg, NULL, dx, dw, dmean_ref, drstd_ref, N, C));
            void *ddw3 = dup_dev(dt, dw0, C), *ddb3 = dup_dev(dt, db0, C);
            MT_CHECK(mt_layernorm_bwd(&cx, ddx, ddw3, ddb3, dg, NULL, dx, dw, dmean_ref, drstd_ref, N, C));
            float *a2 = down(ddw2, dt, C), *a3 = down(ddw3, dt, C);
            MT_EXPECT(memcmp(a2, a3, C * sizeof(float)) == 0, "layernorm bwd dw not deterministic");
        }
    free_all();
}

static void test_rmsnorm(void) {
    const int Cs[3] = {1600, 512, 37};
    for (int di = 0; di < 2; di++)
        for (int ci = 0; ci < 3; ci++) {
            mt_dtype dt = DTYPES[di];
            mt_ctx cx = ctx_of(dt);
            int N = ci == 0 ? 3001 : 67, C = Cs[ci];
            size_t n = (size_t)N * C;
            char what[64];
            float *x = hrand(n, 1.0f, dt), *w = hrand(C, 1.0f, dt);
            float *out = (float *)hmalloc(n * 4), *rstd = (float *)hmalloc(N * 4);
            mt_rmsnorm_fwd_cpu_f32(out, rstd, x, w, N, C);
            void *dx = dup_dev(dt, x, n), *dw = dup_dev(dt, w, C);
            void *dout = poison_dev(dt, n), *drstd = poison_dev(MT_F32, N);
            static const char *fwd_name[7] = {"block/row", "warp/row", "warp/row 1-pass", "warp/row 1-pass x3",
                                              "persistent regs", "persistent ring", "w,b in smem"};
            for (int warp = 6; warp >= 0; warp--) {
                cx.gpu->norm_fwd_warp = warp;
                cudaMemset(dout, 0xff, n * mt_dtype_size(dt));
                cudaMemset(drstd, 0xff, N * 4);
                MT_CHECK(mt_rmsnorm_fwd(&cx, dout, drstd, dx, dw, N, C));
                snprintf(what, sizeof what, "fwd out C=%d %s", C, fwd_name[warp]);
                check_dev("rmsnorm", dt, what, dout, dt, out, n, tol_of(dt));
                snprintf(what, sizeof what, "fwd rstd C=%d %s", C, fwd_name[warp]);
                check_dev("rmsnorm", dt, what, drstd, MT_F32, rstd, N, 1e-5);
            }
            cx.gpu->norm_fwd_warp = 6; /* the default */

            float *g = hrand(n, 1.0f, dt), *res = hrand(n, 1.0f, dt), *dw0 = hrand(C, 1.0f, dt);
            float *rdx = (float *)hmalloc(n * 4), *rdw = hcopy(dw0, C);
            mt_rmsnorm_bwd_cpu_f32(rdx, rdw, g, res, x, w, rstd, N, C);
            void *dg = dup_dev(dt, g, n), *dres = dup_dev(dt, res, n), *ddx = poison_dev(dt, n);
            void *ddw = dup_dev(dt, dw0, C), *drstd_ref = dup_dev(MT_F32, rstd, N);
            for (int var = 0; var < 6; var++) {
                cx.gpu->norm_bwd_variant = var;
                cudaMemset(ddx, 0xff, n * mt_dtype_size(dt));
                reupload(ddw, dt, dw0, C);
                MT_CHECK(mt_rmsnorm_bwd(&cx, ddx, ddw, dg, dres, dx, dw, drstd_ref, N, C));
                snprintf(what, sizeof what, "bwd dinp N=%d C=%d v%d", N, C, var);
                check_dev("rmsnorm", dt, what, ddx, dt, rdx, n, tol_of(dt));
                snprintf(what, sizeof what, "bwd dw N=%d C=%d v%d", N, C, var);
                check_dev("rmsnorm", dt, what, ddw, dt, rdw, C, tol_of(dt));
            }
            cx.gpu->norm_bwd_variant = 0;
        }
    free_all();
}

/* ------------------------------------------------------------------ matmul */

static int g_gemm_tune; /* cx.gpu->gemm_tune for run_matmul_case */
static int g_sm_margin; /* cx.sm_margin for run_matmul_case */

static void run_matmul_case(mt_dtype dt, int fused, int N, int IC, int OC, int use_bias, int use_resid, int use_gelu) {
    mt_ctx cx = ctx_of(dt);
    cx.gpu->lt_epilogues = fused;
    cx.gpu->gemm_tune = g_gemm_tune;
    cx.sm_margin = g_sm_margin;
    char what[96];
    const char *tag = fused ? "lt" : "sep";
    size_t ni = (size_t)N * IC, no = (size_t)N * OC, nw = (size_t)OC * IC;
    float scale = 1.0f / sqrtf((float)IC);
    float *x = hrand(ni, 1.0f, dt), *w = hrand(nw, scale, dt), *b = use_bias ? hrand(OC, 1.0f, dt) : NULL;
    float *r = use_resid ? hrand(no, 1.0f, dt) : NULL;
    float *pre = (float *)hmalloc(no * 4), *out = (float *)hmalloc(no * 4);
    mt_matmul_fwd_cpu_f32(use_gelu ? pre : out, x, w, b, r, N, IC, OC);
    if (use_gelu) mt_gelu_fwd_cpu_f32(out, pre, no);
    void *dx = dup_dev(dt, x, ni), *dw = dup_dev(dt, w, nw), *db = b ? dup_dev(dt, b, OC) : NULL;
    void *dr = r ? dup_dev(dt, r, no) : NULL, *dout = poison_dev(dt, no), *dpre = use_gelu ? poison_dev(dt, no) : NULL;
    MT_CHECK(mt_matmul_fwd(&cx, dout, dpre, dx, dw, db, dr, N, IC, OC));
    snprintf(what, sizeof what, "fwd %s N%d IC%d OC%d%s%s%s", tag, N, IC, OC, use_bias ? " +b" : "",
             use_resid ? " +res" : "", use_gelu ? " gelu" : "");
    check_dev("matmul", dt, what, dout, dt, out, no, tol_of(dt));
    if (use_gelu) {
        snprintf(what, sizeof what, "fwd %s N%d gelu_pre", tag, N);
        check_dev("matmul", dt, what, dpre, dt, pre, no, tol_of(dt));
    }

    /* backward: dinp (with dGELU when use_gelu: gelu_pre of the layer below, shape (N, IC)) */
    float *g = hrand(no, 1.0f, dt), *gpre = use_gelu ? hrand(ni, 1.0f, dt) : NULL;
    float *dw0 = hrand(nw, 1.0f, dt), *db0 = hrand(OC, 1.0f, dt);
    float *rdx = (float *)hmalloc(ni * 4), *rdw = hcopy(dw0, nw), *rdb = hcopy(db0, OC);
    mt_matmul_bwd_cpu_f32(rdx, rdw, use_bias ? rdb : NULL, g, x, w, N, IC, OC);
    if (use_gelu) mt_gelu_bwd_cpu_f32(rdx, gpre, rdx, ni);
    void *dg = dup_dev(dt, g, no), *dgpre = gpre ? dup_dev(dt, gpre, ni) : NULL, *ddx = poison_dev(dt, ni);
    void *ddw = dup_dev(dt, dw0, nw), *ddb = dup_dev(dt, db0, OC);
    MT_CHECK(mt_matmul_bwd(&cx, ddx, ddw, use_bias ? ddb : NULL, dg, dx, dw, dgpre, N, IC, OC));
    snprintf(what, sizeof what, "bwd %s dinp%s", tag, use_gelu ? " dgelu" : "");
    check_dev("matmul", dt, what, ddx, dt, rdx, ni, tol_of(dt));
    snprintf(what, sizeof what, "bwd %s dw +=", tag);
    check_dev("matmul", dt, what, ddw, dt, rdw, nw, tol_of(dt));
    if (use_bias) {
        snprintf(what, sizeof what, "bwd %s dbias +=", tag);
        check_dev("matmul", dt, what, ddb, dt, rdb, OC, tol_of(dt));
        /* bias gradient alone (no dw): the separate kernel */
        float *rdb2 = hcopy(db0, OC);
        mt_matmul_bwd_cpu_f32(NULL, NULL, rdb2, g, x, w, N, IC, OC);
        void *ddb2 = dup_dev(dt, db0, OC);
        MT_CHECK(mt_matmul_bwd(&cx, NULL, NULL, ddb2, dg, dx, dw, NULL, N, IC, OC));
        snprintf(what, sizeof what, "bwd %s dbias only", tag);
        check_dev("matmul", dt, what, ddb2, dt, rdb2, OC, tol_of(dt));
    }
    cx.gpu->lt_epilogues = 1;
    cx.gpu->gemm_tune = 0;
}

/* The persistent forwards (norm_fwd_warp 4, 5) with enough rows that every warp walks several and the
 * ring of rows wraps around, and the forward with w, b in shared memory (6: many blocks, the last one
 * partial), at widths that take every pack count (C = 2048 bf16 fills 8 packs per lane) and the
 * scalar path (odd C). */
static void test_norm_fwd_persistent(void) {
    const int Cs[4] = {1600, 2048, 1000, 37};
    for (int di = 0; di < 2; di++)
        for (int ci = 0; ci < 4; ci++) {
            mt_dtype dt = DTYPES[di];
            mt_ctx cx = ctx_of(dt);
            int C = Cs[ci], N = 20000 + 1001 * ci + 17; /* 6+ rows per warp on a 132-SM part */
            if (dt == MT_F32 && C > 1024) continue;     /* wider than a warp row in f32: block per row */
            size_t n = (size_t)N * C;
            char what[64];
            float *x = hrand(n, 1.0f, dt), *w = hrand(C, 1.0f, dt), *b = hrand(C, 1.0f, dt);
            for (size_t i = 0; i < n; i++) x[i] = round_to(x[i] + 0.5f, dt);
            float *out = (float *)hmalloc(n * 4), *mean = (float *)hmalloc(N * 4), *rstd = (float *)hmalloc(N * 4);
            float *rout = (float *)hmalloc(n * 4), *rrstd = (float *)hmalloc(N * 4);
            mt_layernorm_fwd_cpu_f32(out, mean, rstd, x, w, b, N, C);
            mt_rmsnorm_fwd_cpu_f32(rout, rrstd, x, w, N, C);
            void *dx = dup_dev(dt, x, n), *dw = dup_dev(dt, w, C), *db = dup_dev(dt, b, C);
            void *dout = poison_dev(dt, n), *dmean = poison_dev(MT_F32, N), *drstd = poison_dev(MT_F32, N);
            for (int warp = 4; warp <= 6; warp++) {
                cx.gpu->norm_fwd_warp = warp;
                cudaMemset(dout, 0xff, n * mt_dtype_size(dt));
                cudaMemset(dmean, 0xff, N * 4);
                cudaMemset(drstd, 0xff, N * 4);
                MT_CHECK(mt_layernorm_fwd(&cx, dout, dmean, drstd, dx, dw, db, N, C));
                snprintf(what, sizeof what, "fwd out N=%d C=%d v%d", N, C, warp);
                check_dev("layernorm", dt, what, dout, dt, out, n, tol_of(dt));
                snprintf(what, sizeof what, "fwd mean N=%d C=%d v%d", N, C, warp);
                check_dev("layernorm", dt, what, dmean, MT_F32, mean, N, 1e-5);
                snprintf(what, sizeof what, "fwd rstd N=%d C=%d v%d", N, C, warp);
                check_dev("layernorm", dt, what, drstd, MT_F32, rstd, N, 1e-5);
                cudaMemset(dout, 0xff, n * mt_dtype_size(dt));
                cudaMemset(drstd, 0xff, N * 4);
                MT_CHECK(mt_rmsnorm_fwd(&cx, dout, drstd, dx, dw, N, C));
                snprintf(what, sizeof what, "fwd out N=%d C=%d v%d", N, C, warp);
                check_dev("rmsnorm", dt, what, dout, dt, rout, n, tol_of(dt));
                snprintf(what, sizeof what, "fwd rstd N=%d C=%d v%d", N, C, warp);
                check_dev("rmsnorm", dt, what, drstd, MT_F32, rrstd, N, 1e-5);
            }
            cx.gpu->norm_fwd_warp = 6; /* the default */
            free_all();
        }
}

static void test_matmul(void) {
    for (int di = 0; di < 2; di++) {
        mt_dtype dt = DTYPES[di];
        for (int fused = 1; fused >= 0; fused--) {
            run_matmul_case(dt, fused, 37, 64, 96, 1, 0, 0);   /* odd N, bias */
            run_matmul_case(dt, fused, 37, 64, 96, 1, 1, 0);   /* bias + residual */
            run_matmul_case(dt, fused, 37, 64, 96, 0, 1, 0);   /* residual only */
            run_matmul_case(dt, fused, 64, 128, 256, 1, 0, 1); /* GELU epilogue */
            run_matmul_case(dt, fused, 37, 96, 64, 0, 0, 1);   /* GELU without bias */
        }
        free_all();
    }
    /* gemm_tune 8: each new shape times several algorithms on a scratch output first; the results,
     * the accumulating dw (C == D) and the residual included, must be the same as untuned. Then an
     * SM margin (GEMMs beside a collective): planned for 32 SMs fewer, the same results. */
    for (int variant = 0; variant < 2; variant++) {
        g_gemm_tune = variant == 0 ? 8 : 0;
        g_sm_margin = variant == 1 ? 32 : 0;
        for (int di = 0; di < 2; di++) {
            run_matmul_case(DTYPES[di], 1, 300, 256, 384, 1, 1, 0);
            run_matmul_case(DTYPES[di], 1, 300, 384, 512, 1, 0, 1);
            free_all();
        }
    }
    g_gemm_tune = 0;
    g_sm_margin = 0;
    /* the tuning file (mt_gpu_gemm_tune_file): tuned shapes are written to it; read back, its picks run
     * without timing (the file is not rewritten) and give correct results */
    {
        const char *path = "build/gpu_kernels.tune";
        mt_ctx cx = ctx_of(MT_BF16);
        int n = -1, stale = -1;
        unlink(path);
        MT_CHECK(mt_gpu_gemm_tune_file(&cx, path, &n, &stale));
        MT_EXPECT(n == 0 && stale == 0, "no tune file yet: %d shapes, stale %d", n, stale);
        g_gemm_tune = 8;
        run_matmul_case(MT_BF16, 1, 300, 256, 384, 1, 1, 0);
        g_gemm_tune = 0;
        unsigned char *a = NULL, *b = NULL;
        size_t na = read_bytes(path, &a);
        mt_gemm_tune_table t;
        MT_CHECK(mt_gemm_tune_load(path, cx.gpu->name, cx.gpu->tune.library, &t, &stale));
        MT_EXPECT(t.n >= 3 && stale == 0, "tuned shapes written: %d (fwd, dinp, dw), stale %d", t.n, stale);
        mt_gemm_tune_free(&t);
        MT_CHECK(mt_gpu_gemm_tune_file(&cx, path, &n, &stale));
        run_matmul_case(MT_BF16, 1, 300, 256, 384, 1, 1, 0);
        size_t nb = read_bytes(path, &b);
        MT_EXPECT(n >= 3 && na > 0 && na == nb && !memcmp(a, b, na), "the file read (%d shapes) is used as it is", n);
        free(a);
        free(b);
        MT_CHECK(mt_gpu_gemm_tune_file(&cx, NULL, &n, &stale));
        MT_EXPECT(!cx.gpu->tune_path[0] && cx.gpu->tune.n == 0, "path NULL: no tuning file any more");
        unlink(path);
        free_all();
    }
    /* f32 takes any size */
    run_matmul_case(MT_F32, 1, 37, 33, 45, 1, 1, 0);
    run_matmul_case(MT_F32, 1, 37, 33, 45, 1, 0, 1);
    free_all();
    /* bf16 refuses IC/OC not multiples of 8, with a clear error */
    {
        mt_ctx cx = ctx_of(MT_BF16);
        void *a = dmalloc(4096), *b = dmalloc(4096), *c = dmalloc(4096);
        printf("    matmul         bf16  expecting an error for IC=33:\n");
        mt_status st = mt_matmul_fwd(&cx, c, NULL, a, b, NULL, NULL, 5, 33, 16);
        MT_EXPECT(st == MT_ERR_SHAPE, "bf16 IC=33 gave %s", mt_status_str(st));
        free_all();
    }
}

/* ------------------------------------------------------------------ elementwise */

static void test_gelu_residual(void) {
    for (int di = 0; di < 2; di++) {
        mt_dtype dt = DTYPES[di];
        mt_ctx cx = ctx_of(dt);
        size_t es = mt_dtype_size(dt);
        for (int unaligned = 0; unaligned < 2; unaligned++) {
            size_t n = 100003, off = unaligned; /* odd length: tail; offset 1 element: scalar path */
            const char *tag = unaligned ? "n=100003 unaligned" : "n=100003";
            float *x = hrand(n, 2.0f, dt), *g = hrand(n, 1.0f, dt), *y = hrand(n, 1.0f, dt);
            float *out = (float *)hmalloc(n * 4), *dx = (float *)hmalloc(n * 4), *sum = (float *)hmalloc(n * 4);
            mt_gelu_fwd_cpu_f32(out, x, n);
            mt_gelu_bwd_cpu_f32(dx, x, g, n);
            mt_residual_fwd_cpu_f32(sum, x, y, n);
            char *bx = (char *)dup_dev(dt, x, n), *bg = (char *)dup_dev(dt, g, n), *by = (char *)dup_dev(dt, y, n);
            void *dxv = dmalloc((n + 1) * es), *dgv = dmalloc((n + 1) * es), *dyv = dmalloc((n + 1) * es);
            cudaMemcpy((char *)dxv + off * es, bx, n * es, cudaMemcpyDeviceToDevice);
            cudaMemcpy((char *)dgv + off * es, bg, n * es, cudaMemcpyDeviceToDevice);
            cudaMemcpy((char *)dyv + off * es, by, n * es, cudaMemcpyDeviceToDevice);
            char *dout = (char *)poison_dev(dt, n + 1) + off * es, *ddx = (char *)poison_dev(dt, n + 1) + off * es;
            char *dsum = (char *)poison_dev(dt, n + 1) + off * es;
            void *xin = (char *)dxv + off * es, *gin = (char *)dgv + off * es, *yin = (char *)dyv + off * es;
            MT_CHECK(mt_gelu_fwd(&cx, dout, xin, n));
            MT_CHECK(mt_gelu_bwd(&cx, ddx, xin, gin, n));
            MT_CHECK(mt_residual_fwd(&cx, dsum, xin, yin, n));
            check_dev("gelu", dt, tag, dout, dt, out, n, tol_of(dt));
            check_dev("gelu_bwd", dt, tag, ddx, dt, dx, n, tol_of(dt));
            check_dev("residual", dt, tag, dsum, dt, sum, n, tol_of(dt));
            /* gelu_bwd in place (dinp == dout), as the matmul fallback uses it */
            MT_CHECK(mt_gelu_bwd(&cx, gin, xin, gin, n));
            check_dev("gelu_bwd", dt, unaligned ? "in place unaligned" : "in place", gin, dt, dx, n, tol_of(dt));
        }
        free_all();
    }
}

static void test_swiglu(void) {
    const int Fs[2] = {64, 37};
    for (int di = 0; di < 2; di++)
        for (int fi = 0; fi < 2; fi++) {
            mt_dtype dt = DTYPES[di];
            mt_ctx cx = ctx_of(dt);
            int N = 37, F = Fs[fi];
            size_t ni = (size_t)N * 2 * F, no = (size_t)N * F;
            char what[64];
            float *x = hrand(ni, 2.0f, dt), *g = hrand(no, 1.0f, dt);
            float *out = (float *)hmalloc(no * 4), *dx = (float *)hmalloc(ni * 4);
            mt_swiglu_fwd_cpu_f32(out, x, N, F);
            mt_swiglu_bwd_cpu_f32(dx, x, g, N, F);
            void *dxv = dup_dev(dt, x, ni), *dg = dup_dev(dt, g, no), *dout = poison_dev(dt, no), *ddx = poison_dev(dt, ni);
            MT_CHECK(mt_swiglu_fwd(&cx, dout, dxv, N, F));
            MT_CHECK(mt_swiglu_bwd(&cx, ddx, dxv, dg, N, F));
            snprintf(what, sizeof what, "fwd N=%d F=%d", N, F);
            check_dev("swiglu", dt, what, dout, dt, out, no, tol_of(dt));
            snprintf(what, sizeof what, "bwd N=%d F=%d", N, F);
            check_dev("swiglu", dt, what, ddx, dt, dx, ni, tol_of(dt));
        }
    free_all();
}

static void test_rope(void) {
    for (int di = 0; di < 2; di++) {
        mt_dtype dt = DTYPES[di];
        mt_ctx cx = ctx_of(dt);
        int B = 2, T = 37, Hkv = 3, G = 2, D = 64, pos = 1000;
        float theta = 10000.0f;
        size_t n = (size_t)B * T * Hkv * (G + 2) * D;
        float *x = hrand(n, 1.0f, dt), *out = (float *)hmalloc(n * 4), *back = (float *)hmalloc(n * 4);
        mt_rope_cpu_f32(out, x, B, T, Hkv, G, D, pos, theta, 1);
        mt_rope_cpu_f32(back, x, B, T, Hkv, G, D, pos, theta, -1);
        void *dx = dup_dev(dt, x, n), *dout = poison_dev(dt, n);
        MT_CHECK(mt_rope_fwd(&cx, dout, dx, B, T, Hkv, G, D, pos, theta));
        check_dev("rope", dt, "fwd B2 T37 Hkv3 G2 D64 pos 1000", dout, dt, out, n, tol_of(dt));
        MT_CHECK(mt_rope_bwd(&cx, dout, dx, B, T, Hkv, G, D, pos, theta));
        check_dev("rope", dt, "bwd", dout, dt, back, n, tol_of(dt));
        MT_CHECK(mt_rope_fwd(&cx, dx, dx, B, T, Hkv, G, D, pos, theta));
        check_dev("rope", dt, "fwd in place", dx, dt, out, n, tol_of(dt));
        free_all();
    }
}

/* ------------------------------------------------------------------ attention */

static void run_attention_case(mt_dtype dt, int B, int T, int Hkv, int G, int D, int causal) {
    mt_ctx cx = ctx_of(dt);
    int H = Hkv * G;
    size_t nq = (size_t)B * T * Hkv * (G + 2) * D, no = (size_t)B * T * H * D, nl = (size_t)B * H * T;
    char what[96];
    float *qkv = hrand(nq, 1.0f, dt);
    float *out = (float *)hmalloc(no * 4), *lse = (float *)hmalloc(nl * 4);
    mt_attention_fwd_cpu_f32(out, lse, qkv, B, T, Hkv, G, D, causal);
    void *dqkv_in = dup_dev(dt, qkv, nq), *dout = poison_dev(dt, no), *dlse = poison_dev(MT_F32, nl);
    MT_CHECK(mt_attention_fwd_gpu(&cx, dout, dlse, dqkv_in, B, T, Hkv, G, D, causal));
    snprintf(what, sizeof what, "fwd out B%d T%d Hkv%d G%d D%d %s", B, T, Hkv, G, D, causal ? "causal" : "full");
    check_dev("attention", dt, what, dout, dt, out, no, tol_of(dt));
    snprintf(what, sizeof what, "fwd lse D%d %s", D, causal ? "causal" : "full");
    check_dev("attention", dt, what, dlse, MT_F32, lse, nl, 1e-5);

    /* backward from the reference's out/lse (rounded to dt), so it is checked on its own */
    for (size_t i = 0; i < no; i++) out[i] = round_to(out[i], dt);
    float *g = hrand(no, 1.0f, dt), *dq = (float *)hmalloc(nq * 4);
    mt_attention_bwd_cpu_f32(dq, g, out, lse, qkv, B, T, Hkv, G, D, causal);
    void *dg = dup_dev(dt, g, no), *dout_ref = dup_dev(dt, out, no), *dlse_ref = dup_dev(MT_F32, lse, nl);
    void *ddq = poison_dev(dt, nq);
    MT_CHECK(mt_attention_bwd_gpu(&cx, ddq, dg, dout_ref, dlse_ref, dqkv_in, B, T, Hkv, G, D, causal));
    snprintf(what, sizeof what, "bwd dqkv D%d %s", D, causal ? "causal" : "full");
    check_dev("attention", dt, what, ddq, dt, dq, nq, tol_of(dt));
}

static void test_attention(void) {
    for (int di = 0; di < 2; di++) {
        mt_dtype dt = DTYPES[di];
        run_attention_case(dt, 2, 37, 2, 3, 40, 1);
        run_attention_case(dt, 2, 37, 2, 3, 40, 0);
        run_attention_case(dt, 1, 64, 2, 1, 64, 1);
        run_attention_case(dt, 1, 33, 1, 2, 128, 1);
        run_attention_case(dt, 1, 17, 1, 1, 256, 0);
        free_all();
    }
}

/* ------------------------------------------------------------------ cross-entropy */

/* Every cross-entropy variant (cx->gpu->xent_variant; variant 3 also with the row re-read) against
 * one reference per case.  Cases: a padded row with a partial last pack; odd V = Vp (scalar packs:
 * variants 1 and 2 fall back to 3); and two of many rows, so that the persistent variants run
 * several rows per block through both row buffers (mbarrier parities 0 and 1), with rows of two and
 * of four bulk chunks, the last one partial.  Targets include V - 1, 0 and ignored ones (-1, and
 * V + 7 on the GPU where the reference gets -1).  Each variant: dlogits out of place, forward only,
 * then in place on a fresh copy of the logits; every output poisoned first. */
static void test_xent(void) {
    static const struct { int N, V, Vp; } cases[4] = {
        {37, 1003, 1008}, {37, 1001, 1001}, {600, 19999, 20000}, {400, 50257, 50304}};
    static const struct { int variant, smem; const char *tag, *name; } cfgs[4] = {
        {1, 1, "v1", "persistent, bulk copies, 1024 threads"},
        {2, 1, "v2", "persistent, bulk copies, 512 threads"},
        {3, 1, "v3", "one block per row, row in shared memory"},
        {3, 0, "v3 re-read", "one block per row, row re-read"}};
    for (int k = 0; k < 4; k++) printf("    (cross-entropy %-10s %s)\n", cfgs[k].tag, cfgs[k].name);
    for (int di = 0; di < 2; di++)
        for (int ci = 0; ci < 4; ci++) {
            mt_dtype dt = DTYPES[di];
            mt_ctx cx = ctx_of(dt);
            int N = cases[ci].N, V = cases[ci].V, Vp = cases[ci].Vp;
            size_t n = (size_t)N * Vp, nbytes = n * mt_dtype_size(dt);
            char what[96];
            float *x = hrand(n, 3.0f, dt);
            int32_t *tg = (int32_t *)hmalloc(N * sizeof(int32_t)), *tg_ref = (int32_t *)hmalloc(N * sizeof(int32_t));
            for (int i = 0; i < N; i++) tg[i] = (int32_t)(mt_rng_u32(g_seed, g_stream_id, i) % V);
            g_stream_id++;
            tg[3] = -1;
            tg[10] = -1;
            tg[0] = V - 1;
            tg[N - 1] = 0;
            memcpy(tg_ref, tg, N * sizeof(int32_t));
            tg[5] = V + 7; /* out of range: ignored like a negative target */
            tg_ref[5] = -1;
            float dscale = 1.0f / N;
            float *loss = (float *)hmalloc(N * 4), *dl = (float *)hmalloc(n * 4);
            mt_xent_cpu_f32(loss, dl, x, tg_ref, dscale, N, V, Vp);
            int32_t *dtg = dup_tokens(tg, N);
            void *dx = dup_dev(dt, x, n), *dxw = dmalloc(nbytes), *ddl = dmalloc(nbytes);
            void *dloss = dmalloc(N * 4), *dloss2 = dmalloc(N * 4);
            for (int k = 0; k < 4; k++) {
                cx.gpu->xent_variant = cfgs[k].variant;
                cx.gpu->xent_smem = cfgs[k].smem;
                const char *t = cfgs[k].tag;
                cudaMemset(dloss, 0xff, N * 4); /* NaN */
                cudaMemset(ddl, 0xff, nbytes);
                MT_CHECK(mt_xent(&cx, dloss, ddl, dx, dtg, dscale, N, V, Vp));
                snprintf(what, sizeof what, "%s losses N=%d V=%d Vp=%d", t, N, V, Vp);
                check_dev("xent", dt, what, dloss, MT_F32, loss, N, 1e-5);
                snprintf(what, sizeof what, "%s dlogits N=%d V=%d Vp=%d", t, N, V, Vp);
                check_dev("xent", dt, what, ddl, dt, dl, n, tol_of(dt));
                cudaMemset(dloss2, 0xff, N * 4);
                MT_CHECK(mt_xent(&cx, dloss2, NULL, dx, dtg, dscale, N, V, Vp));
                snprintf(what, sizeof what, "%s losses, forward only", t);
                check_dev("xent", dt, what, dloss2, MT_F32, loss, N, 1e-5);
                cudaMemcpy(dxw, dx, nbytes, cudaMemcpyDeviceToDevice);
                cudaMemset(dloss, 0xff, N * 4);
                MT_CHECK(mt_xent(&cx, dloss, dxw, dxw, dtg, dscale, N, V, Vp));
                snprintf(what, sizeof what, "%s losses, in place", t);
                check_dev("xent", dt, what, dloss, MT_F32, loss, N, 1e-5);
                snprintf(what, sizeof what, "%s dlogits in place", t);
                check_dev("xent", dt, what, dxw, dt, dl, n, tol_of(dt));
            }
            free_all();
        }
    g_cx.gpu->xent_variant = 0;
    g_cx.gpu->xent_smem = 1;
    /* a variant that does not exist is refused */
    g_cx.gpu->xent_variant = 9;
    MT_EXPECT(mt_xent(&g_cx, g_cx.gpu->scratch, NULL, g_cx.gpu->scratch, (const int32_t *)g_cx.gpu->scratch, 1.0f, 1,
                      4, 4) == MT_ERR_ARG,
              "xent_variant 9 accepted");
    g_cx.gpu->xent_variant = 0;
}

/* ------------------------------------------------------------------ optimizer */

static void test_adamw(void) {
    size_t n = 100003;
    mt_adamw_hp hp;
    hp.lr = 0.05f;
    hp.beta1 = 0.9f;
    hp.beta2 = 0.95f;
    hp.eps = 1e-8f;
    hp.weight_decay = 0.1f;
    hp.step = 3;
    float gsv = 0.5f;
    for (int di = 0; di < 2; di++) {
        mt_dtype dt = DTYPES[di];
        mt_ctx cx = ctx_of(dt);
        float *p0 = hrand(n, 1.0f, MT_F32), *g = hrand(n, 1.0f, dt), *m0 = hrand(n, 0.1f, MT_F32);
        float *v0 = hrand(n, 0.1f, MT_F32);
        for (size_t i = 0; i < n; i++) v0[i] = v0[i] * v0[i];
        float *pr = hcopy(p0, n), *mr = hcopy(m0, n), *vr = hcopy(v0, n);
        mt_adamw_cpu_f32(pr, mr, vr, g, n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, hp.step, gsv);
        float *dref = (float *)hmalloc(n * 4), *dgot = (float *)hmalloc(n * 4);
        void *dgs = dup_dev(MT_F32, &gsv, 1), *dg = dup_dev(dt, g, n);
        void *dm = dup_dev(MT_F32, m0, n), *dv = dup_dev(MT_F32, v0, n);
        for (size_t i = 0; i < n; i++) dref[i] = pr[i] - p0[i];
        if (dt == MT_F32) {
            void *dp = dup_dev(MT_F32, p0, n);
            MT_CHECK(mt_adamw(&cx, dp, NULL, dm, dv, dg, n, &hp, dgs, 0));
            float *got = down(dp, MT_F32, n);
            for (size_t i = 0; i < n; i++) dgot[i] = got[i] - p0[i];
            check("adamw", dt, "param update n=100003", dgot, dref, n, 1e-5);
        } else {
            /* bf16 params from fp32 master, round to nearest */
            void *dp = poison_dev(MT_BF16, n), *dmaster = dup_dev(MT_F32, p0, n);
            MT_CHECK(mt_adamw(&cx, dp, (float *)dmaster, dm, dv, dg, n, &hp, dgs, 0));
            float *got = down(dmaster, MT_F32, n);
            for (size_t i = 0; i < n; i++) dgot[i] = got[i] - p0[i];
            check("adamw", dt, "master update n=100003", dgot, dref, n, 1e-5);
            check_dev("adamw", dt, "bf16 param (nearest)", dp, MT_BF16, pr, n, tol_of(dt));
            /* stochastic rounding: each value one of its two bf16 neighbours, unbiased, reproducible */
            void *dp2 = poison_dev(MT_BF16, n), *dp3 = poison_dev(MT_BF16, n);
            void *dmaster2 = dup_dev(MT_F32, p0, n), *dm2 = dup_dev(MT_F32, m0, n), *dv2 = dup_dev(MT_F32, v0, n);
            MT_CHECK(mt_adamw(&cx, dp2, (float *)dmaster2, dm2, dv2, dg, n, &hp, dgs, 12345));
            void *dmaster3 = dup_dev(MT_F32, p0, n), *dm3 = dup_dev(MT_F32, m0, n), *dv3 = dup_dev(MT_F32, v0, n);
            MT_CHECK(mt_adamw(&cx, dp3, (float *)dmaster3, dm3, dv3, dg, n, &hp, dgs, 12345));
            float *sr = down(dp2, MT_BF16, n), *sr3 = down(dp3, MT_BF16, n), *ms = down(dmaster2, MT_F32, n);
            size_t bad = 0, up = 0, inexact = 0;
            double bias = 0, mag = 0;
            for (size_t i = 0; i < n; i++) {
                uint16_t lo = (uint16_t)(mt__f32_bits(ms[i]) >> 16);
                float a = mt_bf16_to_f32(lo), b = mt_bf16_to_f32((uint16_t)(lo + 1));
                if (sr[i] != a && sr[i] != b) bad++;
                if (a != ms[i]) {
                    inexact++;
                    if (sr[i] == b) up++;
                }
                bias += (double)sr[i] - ms[i];
                mag += fabs((double)sr[i] - ms[i]);
            }
            printf("    %-14s %-5s %-34s %zu of %zu rounded away from zero, |bias| %.3f of mean error\n", "adamw", "bf16",
                   "stochastic rounding", up, inexact, mag > 0 ? fabs(bias) / mag : 0.0);
            MT_EXPECT(bad == 0, "%zu stochastic roundings outside the two neighbours", bad);
            MT_EXPECT(up > inexact / 4 && up < inexact * 3 / 4, "stochastic rounding went up %zu of %zu times", up,
                      inexact);
            MT_EXPECT(mag > 0 && fabs(bias) / mag < 0.05, "stochastic rounding biased: %.3g of %.3g", bias, mag);
            MT_EXPECT(memcmp(sr, sr3, n * sizeof(float)) == 0, "stochastic rounding not reproducible with one seed");
        }
        check_dev("adamw", dt, "m", dm, MT_F32, mr, n, 1e-5);
        check_dev("adamw", dt, "v", dv, MT_F32, vr, n, 1e-5);
        free_all();
    }
}

/* Multi-tensor AdamW: 131 tensors (two launches of mt_adamw_multi, one of the plan), sizes across
 * chunk boundaries, one of 0 elements, one starting off 16-byte alignment; against the CPU per tensor,
 * and bit for bit against mt_adamw per tensor (decay flag -> wd, seed + i). */
static void test_adamw_multi(void) {
    const int NT = 131;
    size_t sizes[131], offs[131], total = 0;
    for (int i = 0; i < NT; i++) sizes[i] = (size_t)((i * 37) % 101) + 1;
    sizes[3] = 40003;  /* three chunks, odd tail */
    sizes[7] = 16384;  /* exactly one chunk */
    sizes[8] = 0;
    sizes[20] = 70001;
    sizes[NT - 1] = 33;
    for (int i = 0; i < NT; i++) {
        total = (total + 7) / 8 * 8 + (i == 5 ? 1 : 0); /* tensor 5 is not 16-byte aligned */
        offs[i] = total;
        total += sizes[i];
    }
    mt_adamw_hp hp;
    hp.lr = 0.05f; hp.beta1 = 0.9f; hp.beta2 = 0.95f; hp.eps = 1e-8f; hp.weight_decay = 123.0f; /* unused */
    hp.step = 4;
    float wd = 0.1f, gsv = 0.7f;
    for (int di = 0; di < 2; di++)
        for (int sri = 0; sri < (di == 1 ? 2 : 1); sri++) {
            mt_dtype dt = DTYPES[di];
            mt_ctx cx = ctx_of(dt);
            int master = dt == MT_BF16;
            uint64_t seed = sri ? 4242 : 0;
            float *p0 = hrand(total, 1.0f, master ? MT_F32 : dt), *g = hrand(total, 1.0f, dt);
            float *m0 = hrand(total, 0.1f, MT_F32), *v0 = hrand(total, 0.1f, MT_F32);
            for (size_t i = 0; i < total; i++) v0[i] = v0[i] * v0[i];
            float *pr = hcopy(p0, total), *mr = hcopy(m0, total), *vr = hcopy(v0, total);
            for (int i = 0; i < NT; i++)
                mt_adamw_cpu_f32(pr + offs[i], mr + offs[i], vr + offs[i], g + offs[i], sizes[i], hp.lr, hp.beta1,
                                 hp.beta2, hp.eps, (i % 3) ? wd : 0.0f, hp.step, gsv);
            void *dgs = dup_dev(MT_F32, &gsv, 1), *dg = dup_dev(dt, g, total);
            /* three copies of the state: multi, plan, one call per tensor */
            void *dp[3], *dmaster[3], *dm[3], *dv[3];
            for (int k = 0; k < 3; k++) {
                dp[k] = master ? poison_dev(dt, total) : dup_dev(dt, p0, total);
                dmaster[k] = master ? dup_dev(MT_F32, p0, total) : NULL;
                dm[k] = dup_dev(MT_F32, m0, total);
                dv[k] = dup_dev(MT_F32, v0, total);
            }
            size_t es = mt_dtype_size(dt);
            mt_adamw_tensor ts[3][131];
            for (int k = 0; k < 3; k++)
                for (int i = 0; i < NT; i++) {
                    mt_adamw_tensor *t = &ts[k][i];
                    t->param = (char *)dp[k] + offs[i] * es;
                    t->master = master ? (float *)dmaster[k] + offs[i] : NULL;
                    t->m = (float *)dm[k] + offs[i];
                    t->v = (float *)dv[k] + offs[i];
                    t->grad = (const char *)dg + offs[i] * es;
                    t->n = sizes[i];
                    t->decay = (i % 3) != 0;
                }
            MT_CHECK(mt_adamw_multi(&cx, ts[0], NT, &hp, wd, dgs, seed));
            mt_adamw_multi_plan plan;
            MT_CHECK(mt_adamw_multi_plan_init(&cx, &plan, ts[1], NT));
            MT_CHECK(mt_adamw_multi_plan_step(&cx, &plan, &hp, wd, dgs, seed));
            for (int i = 0; i < NT; i++) {
                mt_adamw_hp h1 = hp;
                h1.weight_decay = ts[2][i].decay ? wd : 0.0f;
                MT_CHECK(mt_adamw(&cx, ts[2][i].param, ts[2][i].master, ts[2][i].m, ts[2][i].v, ts[2][i].grad,
                                  sizes[i], &h1, dgs, seed ? seed + (uint64_t)i : 0));
            }
            const char *tag = master ? (seed ? "multi, bf16 master, sr" : "multi, bf16 master") : "multi";
            float *upd = down(master ? dmaster[0] : dp[0], MT_F32, total);
            float *dref = (float *)hmalloc(total * 4);
            for (size_t i = 0; i < total; i++) {
                upd[i] -= p0[i];
                dref[i] = pr[i] - p0[i];
            }
            char what[64];
            snprintf(what, sizeof what, "%s: update, 131 tensors", tag);
            check("adamw_multi", dt, what, upd, dref, total, 1e-5);
            check_dev("adamw_multi", dt, "m", dm[0], MT_F32, mr, total, 1e-5);
            check_dev("adamw_multi", dt, "v", dv[0], MT_F32, vr, total, 1e-5);
            if (master) { /* the gaps between tensors keep their poison: compare the tensors only */
                float *got = down(dp[0], dt, total), *gc = (float *)hmalloc(total * 4), *rc = (float *)hmalloc(total * 4);
                size_t k = 0;
                for (int i = 0; i < NT; i++)
                    for (size_t j = 0; j < sizes[i]; j++, k++) {
                        gc[k] = got[offs[i] + j];
                        rc[k] = pr[offs[i] + j];
                    }
                check("adamw_multi", dt, "bf16 param (every tensor written)", gc, rc, k, tol_of(dt));
            }
            /* plan and per-tensor calls: bitwise the same as the multi call */
            float *a0 = down(dp[0], dt, total), *a1 = down(dp[1], dt, total), *a2 = down(dp[2], dt, total);
            float *b0 = down(dm[0], MT_F32, total), *b1 = down(dm[1], MT_F32, total), *b2 = down(dm[2], MT_F32, total);
            float *c0 = down(dv[0], MT_F32, total), *c1 = down(dv[1], MT_F32, total), *c2 = down(dv[2], MT_F32, total);
            int same_plan = !memcmp(a0, a1, total * 4) && !memcmp(b0, b1, total * 4) && !memcmp(c0, c1, total * 4);
            int same_single = !memcmp(a0, a2, total * 4) && !memcmp(b0, b2, total * 4) && !memcmp(c0, c2, total * 4);
            if (master) {
                float *d0 = down(dmaster[0], MT_F32, total), *d1 = down(dmaster[1], MT_F32, total);
                float *d2 = down(dmaster[2], MT_F32, total);
                same_plan = same_plan && !memcmp(d0, d1, total * 4);
                same_single = same_single && !memcmp(d0, d2, total * 4);
            }
            printf("    %-14s %-5s %-34s plan %s, per-tensor mt_adamw %s\n", "adamw_multi", mt_dtype_name(dt), tag,
                   same_plan ? "identical" : "DIFFERENT", same_single ? "identical" : "DIFFERENT");
            MT_EXPECT(same_plan, "adamw_multi_plan_step differs from adamw_multi (%s)", tag);
            MT_EXPECT(same_single, "adamw_multi differs from per-tensor adamw (%s)", tag);
            mt_adamw_multi_plan_free(&plan);
            free_all();
        }
    /* mixing tensors with and without a master copy is refused */
    mt_adamw_tensor bad[2];
    memset(bad, 0, sizeof bad);
    float dummy = 0;
    bad[0].master = &dummy;
    bad[0].n = bad[1].n = 1;
    mt_ctx cx = ctx_of(MT_BF16);
    MT_EXPECT(mt_adamw_multi(&cx, bad, 2, &hp, wd, NULL, 0) == MT_ERR_ARG, "mixed master copies accepted");
}

/* AdamW kernel variants (cx->gpu->adamw_variant, tests/bench_kernels.cu times them): each one bit for
 * bit against variant 0 on fresh random inputs — param, master, m, v — through mt_adamw_multi (table
 * in kernel parameters) and a plan (table in device memory).  Tensors of odd sizes across chunk and
 * slice boundaries, one empty, one starting off 16-byte alignment; params poisoned when there is a
 * master copy.  Settings: f32; bf16 without master, stochastic rounding; bf16 + master, nearest,
 * no gscale; bf16 + master, stochastic rounding. */
static void *down_bytes(const void *d, size_t nbytes) {
    MT_CHECK(mt_gpu_sync(&g_cx));
    void *h = hmalloc(nbytes);
    cudaMemcpy(h, d, nbytes, cudaMemcpyDeviceToHost);
    return h;
}
static void test_adamw_variants(void) {
    const int NT = 8;
    const size_t sizes[8] = {100003, 16384, 1, 40001, 0, 33, 2049, 70001};
    size_t offs[8], total = 0;
    for (int i = 0; i < NT; i++) {
        total = (total + 7) / 8 * 8 + (i == 3 ? 1 : 0); /* tensor 3 is not 16-byte aligned */
        offs[i] = total;
        total += sizes[i];
    }
    mt_adamw_hp hp;
    hp.lr = 0.05f; hp.beta1 = 0.9f; hp.beta2 = 0.95f; hp.eps = 1e-8f; hp.weight_decay = 0.0f; /* unused */
    hp.step = 5;
    float wd = 0.1f, gsv = 0.6f;
    const mt_dtype cdt[4] = {MT_F32, MT_BF16, MT_BF16, MT_BF16};
    const int cmaster[4] = {0, 0, 1, 1}, cgs[4] = {1, 1, 0, 1};
    const uint64_t cseed[4] = {0, 99, 0, 777};
    for (int var = 1; var < MT__ADAMW_VARIANTS; var++) {
        int same_all = 1;
        for (int ci = 0; ci < 4; ci++) {
            mt_dtype dt = cdt[ci];
            mt_ctx cx = ctx_of(dt);
            int master = cmaster[ci];
            size_t es = mt_dtype_size(dt);
            float *p0 = hrand(total, 1.0f, master ? MT_F32 : dt), *g = hrand(total, 1.0f, dt);
            float *m0 = hrand(total, 0.1f, MT_F32), *v0 = hrand(total, 0.1f, MT_F32);
            for (size_t i = 0; i < total; i++) v0[i] = v0[i] * v0[i];
            void *dgs = cgs[ci] ? dup_dev(MT_F32, &gsv, 1) : NULL, *dg = dup_dev(dt, g, total);
            /* three copies of the state: variant 0 (multi), variant var (multi), variant var (plan) */
            void *dp[3], *dmaster[3], *dm[3], *dv[3];
            mt_adamw_tensor ts[3][8];
            for (int k = 0; k < 3; k++) {
                dp[k] = master ? poison_dev(dt, total) : dup_dev(dt, p0, total);
                dmaster[k] = master ? dup_dev(MT_F32, p0, total) : NULL;
                dm[k] = dup_dev(MT_F32, m0, total);
                dv[k] = dup_dev(MT_F32, v0, total);
                for (int i = 0; i < NT; i++) {
                    mt_adamw_tensor *t = &ts[k][i];
                    t->param = (char *)dp[k] + offs[i] * es;
                    t->master = master ? (float *)dmaster[k] + offs[i] : NULL;
                    t->m = (float *)dm[k] + offs[i];
                    t->v = (float *)dv[k] + offs[i];
                    t->grad = (const char *)dg + offs[i] * es;
                    t->n = sizes[i];
                    t->decay = (i % 3) != 0;
                }
            }
            g_cx.gpu->adamw_variant = 0;
            MT_CHECK(mt_adamw_multi(&cx, ts[0], NT, &hp, wd, dgs, cseed[ci]));
            g_cx.gpu->adamw_variant = var;
            MT_CHECK(mt_adamw_multi(&cx, ts[1], NT, &hp, wd, dgs, cseed[ci]));
            mt_adamw_multi_plan plan;
            MT_CHECK(mt_adamw_multi_plan_init(&cx, &plan, ts[2], NT));
            MT_CHECK(mt_adamw_multi_plan_step(&cx, &plan, &hp, wd, dgs, cseed[ci]));
            g_cx.gpu->adamw_variant = 0;
            int same[3] = {1, 1, 1}; /* [k]: copy k equals copy 0 */
            for (int k = 1; k < 3; k++) {
                void *bufs[3][4] = {{dp[0], dmaster[0], dm[0], dv[0]}, {dp[1], dmaster[1], dm[1], dv[1]},
                                    {dp[2], dmaster[2], dm[2], dv[2]}};
                size_t nb[4] = {total * es, master ? total * 4 : 0, total * 4, total * 4};
                for (int b = 0; b < 4; b++)
                    if (nb[b] && memcmp(down_bytes(bufs[0][b], nb[b]), down_bytes(bufs[k][b], nb[b]), nb[b]))
                        same[k] = 0;
            }
            MT_EXPECT(same[1], "adamw variant %d (%s) differs from variant 0: multi, %s, master %d, seed %llu, gscale %d",
                      var, mt__adamw_variant_name(var), mt_dtype_name(dt), master, (unsigned long long)cseed[ci], cgs[ci]);
            MT_EXPECT(same[2], "adamw variant %d (%s) differs from variant 0: plan, %s, master %d, seed %llu, gscale %d",
                      var, mt__adamw_variant_name(var), mt_dtype_name(dt), master, (unsigned long long)cseed[ci], cgs[ci]);
            same_all = same_all && same[1] && same[2];
            mt_adamw_multi_plan_free(&plan);
            free_all();
        }
        printf("    %-14s v%d %-31s multi + plan, 4 settings: %s to v0\n", "adamw_variant", var,
               mt__adamw_variant_name(var), same_all ? "identical" : "DIFFERENT");
    }
}

static void test_sumsq_clip(void) {
    for (int di = 0; di < 2; di++) {
        mt_dtype dt = DTYPES[di];
        mt_ctx cx = ctx_of(dt);
        size_t n = 1000003;
        float *x = hrand(n, 1.0f, dt);
        float acc0 = 1.5f, ref = acc0 + (float)mt_sumsq_cpu_f32(x, n);
        void *dx = dup_dev(dt, x, n), *dacc = dup_dev(MT_F32, &acc0, 1), *dacc2 = dup_dev(MT_F32, &acc0, 1);
        MT_CHECK(mt_sumsq(&cx, dacc, dx, n));
        MT_CHECK(mt_sumsq(&cx, dacc2, dx, n));
        float *got = down(dacc, MT_F32, 1), *got2 = down(dacc2, MT_F32, 1);
        check("sumsq", dt, "n=1000003 (+= 1.5)", got, &ref, 1, 1e-5);
        MT_EXPECT(got[0] == got2[0], "sumsq not deterministic: %.9g vs %.9g", got[0], got2[0]);
        /* unaligned start, scalar path */
        float acc1 = 0.0f, ref1 = (float)mt_sumsq_cpu_f32(x + 1, n - 1);
        void *dacc3 = dup_dev(MT_F32, &acc1, 1);
        MT_CHECK(mt_sumsq(&cx, dacc3, (char *)dx + mt_dtype_size(dt), n - 1));
        check_dev("sumsq", dt, "unaligned", dacc3, MT_F32, &ref1, 1, 1e-5);
        free_all();
    }
    mt_ctx cx = ctx_of(MT_F32);
    float ns = 16.0f, maxn[3] = {1.0f, 10.0f, 0.0f};
    for (int i = 0; i < 3; i++) {
        void *dns = dup_dev(MT_F32, &ns, 1), *dc = poison_dev(MT_F32, 1);
        MT_CHECK(mt_clip_coef(&cx, dc, dns, maxn[i]));
        float *got = down(dc, MT_F32, 1);
        double c = maxn[i] > 0 ? maxn[i] / (4.0 + 1e-6) : 1.0;
        float ref = (float)(c < 1 ? c : 1);
        char what[64];
        snprintf(what, sizeof what, "norm 4, max_norm %g", maxn[i]);
        check("clip_coef", MT_F32, what, got, &ref, 1, 1e-6);
    }
    free_all();
}

static void test_init_errors(void) {
    mt_ctx bad = {};
    int count = 0;
    cudaGetDeviceCount(&count);
    printf("    expecting an error for GPU %d of %d:\n", count + 3, count);
    mt_status st = mt_gpu_init(&bad, count + 3, MT_BF16);
    MT_EXPECT(st == MT_ERR_ARG, "mt_gpu_init of a missing GPU gave %s", mt_status_str(st));
    MT_EXPECT(bad.gpu == NULL && bad.device.type == MT_CPU, "failed init left state behind");
    MT_EXPECT(strstr(g_msg, "requested") && strstr(g_msg, "GPU"), "message: %s", g_msg);

    /* out of memory at start: an arena larger than the GPU names the request and what is free */
    size_t total = 0, fr = 0;
    cudaMemGetInfo(&fr, &total);
    mt_arena big;
    printf("    expecting an out-of-memory error for an arena of %.0f GiB:\n", 2.0 * total / 1073741824.0);
    st = mt_arena_init(&big, g_cx.device, 2 * total);
    MT_EXPECT(st == MT_ERR_OOM, "arena twice the GPU's memory gave %s", mt_status_str(st));
    MT_EXPECT(strstr(g_msg, "MiB free of"), "message: %s", g_msg);
    cudaGetLastError();

    /* a model too large for the arena it is given: the request and the arena's size in the message */
    mt_arena small;
    MT_CHECK(mt_arena_init(&small, g_cx.device, (size_t)1 << 20));
    void *p = NULL;
    printf("    expecting an arena overflow:\n");
    st = mt_arena_alloc(&small, (size_t)3 << 20, &p);
    MT_EXPECT(st == MT_ERR_OOM && p == NULL, "3 MiB from a 1 MiB arena gave %s", mt_status_str(st));
    MT_EXPECT(strstr(g_msg, "3145728") && strstr(g_msg, "1048576"), "message: %s", g_msg);
    mt_arena_free(&small);
}

/* Per-op timing (mt_gpu_timing): one row per (op, shape) with the right call counts and positive
 * times, outputs bitwise the same as untimed, the report names every row, off frees it. */
static void test_op_timing(void) {
    mt_ctx cx = ctx_of(MT_BF16);
    const int N = 512, IC = 256, OC = 384;
    float *x = hrand((size_t)N * IC, 1.0f, MT_BF16), *w = hrand((size_t)OC * IC, 0.05f, MT_BF16);
    void *dx = dup_dev(MT_BF16, x, (size_t)N * IC), *dw = dup_dev(MT_BF16, w, (size_t)OC * IC);
    void *d0 = poison_dev(MT_BF16, (size_t)N * OC), *d1 = poison_dev(MT_BF16, (size_t)N * OC);
    void *dw2 = dup_dev(MT_BF16, w, (size_t)IC * IC), *d2 = poison_dev(MT_BF16, (size_t)N * IC);
    MT_CHECK(mt_matmul_fwd(&cx, d0, NULL, dx, dw, NULL, NULL, N, IC, OC)); /* untimed */
    MT_CHECK(mt_gpu_timing(&cx, 1));
    for (int i = 0; i < 3; i++) MT_CHECK(mt_matmul_fwd(&cx, d1, NULL, dx, dw, NULL, NULL, N, IC, OC));
    for (int i = 0; i < 2; i++) MT_CHECK(mt_gelu_fwd(&cx, d2, dx, (size_t)N * IC));
    MT_CHECK(mt_matmul_fwd(&cx, d2, NULL, dx, dw2, NULL, NULL, N, IC, IC));
    MT_CHECK(mt_gpu_timing_step(&cx));
    const mt_op_timer *t = cx.gpu->timer;
    MT_EXPECT(t && t->rows == 3 && t->steps == 1, "rows %d steps %d", t ? t->rows : -1, t ? t->steps : -1);
    if (t && t->rows == 3) {
        const long want[3] = {3, 2, 1};
        const int oc[3] = {OC, 0, IC};
        for (int r = 0; r < 3; r++) {
            MT_EXPECT(t->calls[r] == want[r], "row %d (%s): %ld calls, want %ld", r, t->name[r], t->calls[r], want[r]);
            MT_EXPECT(t->ms[r] > 0 && t->ms[r] < 1000, "row %d (%s): %g ms", r, t->name[r], t->ms[r]);
            MT_EXPECT(t->shape[r][2] == oc[r], "row %d (%s): shape %d %d %d", r, t->name[r], t->shape[r][0],
                      t->shape[r][1], t->shape[r][2]);
        }
        MT_EXPECT(!strcmp(t->name[0], "matmul_fwd") && !strcmp(t->name[1], "gelu_fwd"), "rows %s, %s", t->name[0],
                  t->name[1]);
    }
    size_t n = (size_t)N * OC * 2;
    unsigned char *h0 = (unsigned char *)hmalloc(n), *h1 = (unsigned char *)hmalloc(n);
    cudaMemcpy(h0, d0, n, cudaMemcpyDeviceToHost);
    cudaMemcpy(h1, d1, n, cudaMemcpyDeviceToHost);
    MT_EXPECT(memcmp(h0, h1, n) == 0, "a timed matmul differs from the untimed one");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    mt_gpu_timing_report(&cx, f, 1.0);
    fclose(f);
    MT_EXPECT(buf && strstr(buf, "matmul_fwd") && strstr(buf, "gelu_fwd") && strstr(buf, "not in an op"),
              "report:\n%s", buf ? buf : "(none)");
    free(buf);
    MT_CHECK(mt_gpu_timing(&cx, 0));
    MT_EXPECT(cx.gpu->timer == NULL, "timing off left the timer");
    free_all();
}

int main(void) {
    const char *s = getenv("MT_TEST_SEED");
    g_seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
    printf("gpu_kernels: seed %llu (MT_TEST_SEED to repeat)\n", (unsigned long long)g_seed);
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("gpu_kernels: no GPU: every test skipped\n");
        printf("gpu_kernels: 0 passed, 1 failed\n");
        return 1;
    }
    MT_CHECK(mt_gpu_init(&g_cx, 0, MT_F32));
    printf("gpu_kernels: %s, %d SMs\n", g_cx.gpu->name, g_cx.gpu->sm_count);
    MT_RUN(test_embedding);
    MT_RUN(test_layernorm);
    MT_RUN(test_rmsnorm);
    MT_RUN(test_norm_fwd_persistent);
    MT_RUN(test_matmul);
    MT_RUN(test_gelu_residual);
    MT_RUN(test_swiglu);
    MT_RUN(test_rope);
    MT_RUN(test_attention);
    MT_RUN(test_xent);
    MT_RUN(test_adamw);
    MT_RUN(test_adamw_multi);
    MT_RUN(test_adamw_variants);
    MT_RUN(test_sumsq_clip);
    MT_RUN(test_op_timing);
    MT_RUN(test_init_errors);
    mt_gpu_destroy(&g_cx);
    return mt_test_summary("gpu_kernels");
}
