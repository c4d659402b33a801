/* tests/test_ops.c — mt/ops.h and the CPU reference ops of mt/cpu_ops.inl.
 *
 * Every forward is checked against a naive reference written here; every backward against central
 * finite differences in float64 of a random linear functional L = sum(r * out) of the outputs
 * (so every output element matters), through the dispatcher with an f64 context; the f32 build of
 * each op against the f64 one. Also the gradient rules (weight gradients accumulate, activation
 * gradients are assigned), aliasing that the ops allow, AdamW against a hand-written double
 * reference, the gradient norm and clip coefficient, and dispatch errors.
 *
 * Finite differences: the fourth-order central stencil
 *   g ~ (8 (L(x+h) - L(x-h)) - (L(x+2h) - L(x-2h))) / (12 h),  h = 1e-3 max(1, |x|),
 * whose truncation error (~h^4) and rounding error (~eps |L| / h) are both near 1e-12, far below the
 * 1e-6 tolerance. Relative error of an array is ||g - g_fd|| / ||g_fd||; each element must also
 * satisfy |g - g_fd| <= 1e-6 max(|g_fd|, 1e-4).
 */
#include <stdint.h>
#include <string.h>
#include "mt_test.h"

static char test_log_msg[1024];
static int test_log_count;
static void test_log(int level, const char *msg) {
    (void)level;
    test_log_count++;
    snprintf(test_log_msg, sizeof test_log_msg, "%s", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)

/* The sanitizer build compiles without -fopenmp: its `omp` pragmas are meant to be ignored. */
#ifndef _OPENMP
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif
#include "megatron.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------------ helpers */

/* Finite differences call the forward thousands of times on tiny shapes: run those serially (a
 * parallel region per call only waits on thread wake-ups). Analytic gradients and the f32 runs keep
 * the threads, and test_threads checks that threading does not change any bit. */
static int serial_begin(void) {
#ifdef _OPENMP
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    return nt;
#else
    return 1;
#endif
}
static void serial_end(int nt) {
#ifdef _OPENMP
    omp_set_num_threads(nt);
#else
    (void)nt;
#endif
}

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint64_t rnd64(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static double rnd_u(void) { return (double)(rnd64() >> 11) * (1.0 / 9007199254740992.0); } /* [0,1) */
static double rnd_sym(double s) { return s * (2 * rnd_u() - 1); }
static int rnd_int(int lo, int hi) { return lo + (int)(rnd64() % (uint64_t)(hi - lo + 1)); } /* [lo, hi] */

/* Allocations live until pool_free() at the end of each test (the ASan build checks for leaks). */
static void *pool[512];
static int npool;
static void *palloc(size_t nbytes) {
    void *p = calloc(nbytes ? nbytes : 1, 1);
    if (!p || npool == 512) { fprintf(stderr, "test allocation failed\n"); exit(2); }
    pool[npool++] = p;
    return p;
}
static void pool_free(void) {
    while (npool) free(pool[--npool]);
}
static double *dalloc(size_t n) { return (double *)palloc(n * sizeof(double)); }
static double *drand(size_t n, double scale) {
    double *p = dalloc(n);
    for (size_t i = 0; i < n; i++) p[i] = rnd_sym(scale);
    return p;
}
static double *dcopy(const double *x, size_t n) {
    double *p = dalloc(n);
    memcpy(p, x, n * sizeof(double));
    return p;
}
static float *to_f32(const double *x, size_t n) {
    float *p = (float *)palloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)x[i];
    return p;
}
static void dfill(double *x, size_t n, double v) { for (size_t i = 0; i < n; i++) x[i] = v; }
static void ffill(float *x, size_t n, float v) { for (size_t i = 0; i < n; i++) x[i] = v; }
static double ddot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static double dnorm(const double *a, size_t n) { return sqrt(ddot(a, a, n)); }

/* ||a - b|| / ||b|| */
static double rel_err(const double *a, const double *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) { d += (a[i] - b[i]) * (a[i] - b[i]); s += b[i] * b[i]; }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}
static double rel_err_f32(const float *a, const double *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) { d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); s += b[i] * b[i]; }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}
static int all_finite(const double *a, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(a[i])) return 0;
    return 1;
}

static const mt_ctx CX64 = {.device = {MT_CPU, 0}, .dtype = MT_F64};
static const mt_ctx CX32 = {.device = {MT_CPU, 0}, .dtype = MT_F32};
#define OK(call) MT_EXPECT((call) == MT_OK, "%s failed: %s", #call, test_log_msg)

static double worst_fd, worst_f32, worst_fwd; /* for the summary */
static const double FD_TOL = 1e-6, F32_TOL = 1e-5, FWD_TOL = 1e-12;

/* The loss as a function of the current contents of every array: runs the forward. */
typedef double (*loss_fn)(void);

/* Check the analytic gradient g (n) of the loss with respect to the array p (n) by finite
 * differences, perturbing p in place (and restoring it). */
static void grad_check(const char *what, loss_fn f, double *p, const double *g, size_t n) {
    double *fd = dalloc(n);
    int nt = serial_begin();
    for (size_t i = 0; i < n; i++) {
        double x = p[i], h = 1e-3 * fmax(1.0, fabs(x));
        p[i] = x + h; double a1 = f();
        p[i] = x - h; double b1 = f();
        p[i] = x + 2 * h; double a2 = f();
        p[i] = x - 2 * h; double b2 = f();
        p[i] = x;
        fd[i] = (8 * (a1 - b1) - (a2 - b2)) / (12 * h);
    }
    f(); /* leave the outputs as they are at the unperturbed point */
    serial_end(nt);
    double fdn = dnorm(fd, n), e = rel_err(g, fd, n);
    int bad = 0;
    size_t worst_i = 0;
    double worst_d = -1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(g[i] - fd[i]) / fmax(fabs(fd[i]), 1e-4);
        if (!(d <= FD_TOL)) bad++;
        if (!(d <= worst_d)) { worst_d = d; worst_i = i; }
    }
    MT_EXPECT(fdn > 1e-3, "%s: the gradient is (nearly) zero, norm %g: the check would be empty", what, fdn);
    MT_EXPECT(e < FD_TOL, "%s: relative error %.3g (||g_fd|| = %.4g)", what, e, fdn);
    MT_EXPECT(bad == 0, "%s: %d of %zu elements off, worst [%zu]: %.12g vs fd %.12g", what, bad, n, worst_i,
              g[worst_i], fd[worst_i]);
    if (e > worst_fd) worst_fd = e;
    printf("    %-34s n=%-5zu rel err %.2e\n", what, n, e);
}

static void expect_f32(const char *what, const float *a, const double *b, size_t n) {
    double e = rel_err_f32(a, b, n);
    MT_EXPECT(e < F32_TOL, "%s: f32 vs f64 relative error %.3g", what, e);
    if (e > worst_f32) worst_f32 = e;
}
static void expect_fwd(const char *what, const double *a, const double *ref, size_t n) {
    double e = rel_err(a, ref, n);
    MT_EXPECT(e < FWD_TOL && dnorm(ref, n) > 0, "%s: forward vs naive reference, relative error %.3g", what, e);
    if (e > worst_fwd) worst_fwd = e;
}
/* An activation gradient is assigned: a buffer full of NaN before the backward must not leak. */
static void expect_finite(const char *what, const double *a, size_t n) {
    MT_EXPECT(all_finite(a, n), "%s: NaN poison survived the backward (the gradient was not assigned)", what);
}
/* A weight gradient accumulates: a second backward into the same buffer doubles it. */
static void expect_doubled(const char *what, const double *twice, const double *once, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(twice[i] - 2 * once[i]) / fmax(fabs(once[i]), 1e-300));
    MT_EXPECT(d < 1e-13 && dnorm(once, n) > 0, "%s: second backward did not accumulate (max rel %.3g)", what, d);
}

/* ------------------------------------------------------------------ embedding */

static struct {
    int B, T, C, V, pos_offset, vstart, vcount, P;
    int32_t *tok;
    double *wte, *wpe, *out, *r;
} E;

static double loss_embedding(void) {
    mt_embedding_fwd(&CX64, E.out, E.tok, E.wte, E.wpe, E.B, E.T, E.C, E.pos_offset, E.vstart, E.vcount);
    return ddot(E.r, E.out, (size_t)E.B * E.T * E.C);
}

static void embedding_case(int B, int T, int C, int V, int pos_offset, int vstart, int vcount) {
    E.B = B; E.T = T; E.C = C; E.V = V; E.pos_offset = pos_offset; E.vstart = vstart; E.vcount = vcount;
    E.P = pos_offset + T + 2; /* rows of wpe */
    size_t n = (size_t)B * T * C;
    E.tok = (int32_t *)palloc(sizeof(int32_t) * (size_t)B * T);
    for (int i = 0; i < B * T; i++) E.tok[i] = rnd_int(0, V - 1);
    E.tok[1] = E.tok[0];                                    /* a repeated token: its rows add up */
    E.tok[B * T - 1] = vstart;                              /* the shard's first and last rows */
    E.tok[B * T - 2] = vstart + vcount - 1;
    E.wte = drand((size_t)vcount * C, 1);
    E.wpe = drand((size_t)E.P * C, 1);
    E.out = dalloc(n);
    E.r = drand(n, 1);
    char name[96];

    /* forward against the naive sum */
    loss_embedding();
    double *ref = dalloc(n);
    for (int i = 0; i < B * T; i++)
        for (int c = 0; c < C; c++) {
            int id = E.tok[i] - vstart;
            ref[(size_t)i * C + c] = ((id >= 0 && id < vcount) ? E.wte[(size_t)id * C + c] : 0) +
                                     E.wpe[(size_t)(pos_offset + i % T) * C + c];
        }
    snprintf(name, sizeof name, "embedding B%d T%d C%d vocab [%d,%d) of %d", B, T, C, vstart, vstart + vcount, V);
    expect_fwd(name, E.out, ref, n);

    double *dwte = dalloc((size_t)vcount * C), *dwpe = dalloc((size_t)E.P * C);
    OK(mt_embedding_bwd(&CX64, dwte, dwpe, E.r, E.tok, B, T, C, pos_offset, vstart, vcount));
    snprintf(name, sizeof name, "embedding dwte (C=%d, V=%d)", C, vcount);
    grad_check(name, loss_embedding, E.wte, dwte, (size_t)vcount * C);
    snprintf(name, sizeof name, "embedding dwpe (T=%d, offset %d)", T, pos_offset);
    grad_check(name, loss_embedding, E.wpe, dwpe, (size_t)E.P * C);

    /* weight gradients accumulate; either may be NULL */
    double *dwte1 = dcopy(dwte, (size_t)vcount * C), *dwpe1 = dcopy(dwpe, (size_t)E.P * C);
    OK(mt_embedding_bwd(&CX64, dwte, NULL, E.r, E.tok, B, T, C, pos_offset, vstart, vcount));
    OK(mt_embedding_bwd(&CX64, NULL, dwpe, E.r, E.tok, B, T, C, pos_offset, vstart, vcount));
    expect_doubled("embedding dwte", dwte, dwte1, (size_t)vcount * C);
    expect_doubled("embedding dwpe", dwpe, dwpe1, (size_t)E.P * C);

    /* no learned positions */
    double *out2 = dalloc(n);
    OK(mt_embedding_fwd(&CX64, out2, E.tok, E.wte, NULL, B, T, C, pos_offset, vstart, vcount));
    for (size_t i = 0; i < n; i++) ref[i] -= E.wpe[(size_t)(pos_offset + (i / C) % T) * C + i % C];
    expect_fwd("embedding without wpe", out2, ref, n);

    /* f32 */
    float *wte32 = to_f32(E.wte, (size_t)vcount * C), *wpe32 = to_f32(E.wpe, (size_t)E.P * C);
    float *out32 = (float *)palloc(n * sizeof(float)), *r32 = to_f32(E.r, n);
    float *dwte32 = (float *)palloc((size_t)vcount * C * sizeof(float)), *dwpe32 = (float *)palloc((size_t)E.P * C * sizeof(float));
    OK(mt_embedding_fwd(&CX32, out32, E.tok, wte32, wpe32, B, T, C, pos_offset, vstart, vcount));
    loss_embedding();
    expect_f32("embedding out", out32, E.out, n);
    OK(mt_embedding_bwd(&CX32, dwte32, dwpe32, r32, E.tok, B, T, C, pos_offset, vstart, vcount));
    expect_f32("embedding dwte", dwte32, dwte1, (size_t)vcount * C);
    expect_f32("embedding dwpe", dwpe32, dwpe1, (size_t)E.P * C);
}

static void test_embedding(void) {
    embedding_case(2, 5, 37, 101, 0, 0, 101);     /* the whole vocabulary */
    embedding_case(2, 5, 6, 101, 3, 40, 30);      /* a vocab-parallel shard, positions offset */
    rng_state ^= 0x77;
    int V = rnd_int(8, 60), vstart = rnd_int(0, V - 5);
    embedding_case(rnd_int(1, 3), rnd_int(3, 7), rnd_int(1, 19), V, rnd_int(0, 4), vstart, rnd_int(1, V - vstart));
    pool_free();
}

/* ------------------------------------------------------------------ LayerNorm, RMSNorm */

static struct {
    int N, C;
    double *inp, *w, *b, *out, *mean, *rstd, *r;
} L;

static double loss_layernorm(void) {
    mt_layernorm_fwd(&CX64, L.out, L.mean, L.rstd, L.inp, L.w, L.b, L.N, L.C);
    return ddot(L.r, L.out, (size_t)L.N * L.C);
}
static double loss_rmsnorm(void) {
    mt_rmsnorm_fwd(&CX64, L.out, L.rstd, L.inp, L.w, L.N, L.C);
    return ddot(L.r, L.out, (size_t)L.N * L.C);
}

static void norm_setup(int N, int C) {
    size_t n = (size_t)N * C;
    L.N = N; L.C = C;
    L.inp = dalloc(n);
    for (int i = 0; i < N; i++) { /* rows with different offsets and scales */
        double off = rnd_sym(2), sc = 0.3 + 2 * rnd_u();
        for (int c = 0; c < C; c++) L.inp[(size_t)i * C + c] = off + sc * rnd_sym(1);
    }
    L.w = drand((size_t)C, 1.5);
    L.b = drand((size_t)C, 1);
    L.out = dalloc(n); L.mean = dalloc((size_t)N); L.rstd = dalloc((size_t)N);
    L.r = drand(n, 1);
}

static void layernorm_case(int N, int C) {
    norm_setup(N, C);
    size_t n = (size_t)N * C;
    char name[96];
    loss_layernorm();
    double *ref = dalloc(n);
    int stat_bad = 0;
    for (int i = 0; i < N; i++) {
        const double *x = L.inp + (size_t)i * C;
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[c] / C;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m) / C;
        for (int c = 0; c < C; c++) ref[(size_t)i * C + c] = (x[c] - m) / sqrt(v + 1e-5) * L.w[c] + L.b[c];
        stat_bad += fabs(L.mean[i] - m) > 1e-13 * (1 + fabs(m)) || fabs(L.rstd[i] * sqrt(v + 1e-5) - 1) > 1e-13;
    }
    snprintf(name, sizeof name, "layernorm N%d C%d", N, C);
    expect_fwd(name, L.out, ref, n);
    MT_EXPECT(stat_bad == 0, "layernorm: %d rows with a wrong mean or rstd", stat_bad);

    double *dinp = dalloc(n), *dw = dalloc((size_t)C), *db = dalloc((size_t)C);
    dfill(dinp, n, NAN);
    OK(mt_layernorm_bwd(&CX64, dinp, dw, db, L.r, NULL, L.inp, L.w, L.mean, L.rstd, N, C));
    expect_finite("layernorm dinp", dinp, n);
    snprintf(name, sizeof name, "layernorm dinp (N=%d, C=%d)", N, C);
    grad_check(name, loss_layernorm, L.inp, dinp, n);
    grad_check("layernorm dw", loss_layernorm, L.w, dw, (size_t)C);
    grad_check("layernorm db", loss_layernorm, L.b, db, (size_t)C);

    /* with dresid, separate and aliased; dw, db accumulate */
    double *dres = drand(n, 1), *dinp2 = dalloc(n), *dw1 = dcopy(dw, (size_t)C), *db1 = dcopy(db, (size_t)C);
    dfill(dinp2, n, NAN);
    OK(mt_layernorm_bwd(&CX64, dinp2, dw, db, L.r, dres, L.inp, L.w, L.mean, L.rstd, N, C));
    double *want = dalloc(n);
    for (size_t i = 0; i < n; i++) want[i] = dinp[i] + dres[i];
    MT_EXPECT(rel_err(dinp2, want, n) < 1e-15, "layernorm: dinp with dresid is not dresid + dinp");
    expect_doubled("layernorm dw", dw, dw1, (size_t)C);
    expect_doubled("layernorm db", db, db1, (size_t)C);
    double *alias = dcopy(dres, n);
    OK(mt_layernorm_bwd(&CX64, alias, NULL, NULL, L.r, alias, L.inp, L.w, L.mean, L.rstd, N, C));
    MT_EXPECT(rel_err(alias, want, n) < 1e-15, "layernorm: dresid aliasing dinp gives a different answer");

    /* f32 */
    float *inp32 = to_f32(L.inp, n), *w32 = to_f32(L.w, (size_t)C), *b32 = to_f32(L.b, (size_t)C), *r32 = to_f32(L.r, n);
    float *out32 = (float *)palloc(n * 4), *m32 = (float *)palloc((size_t)N * 4), *s32 = (float *)palloc((size_t)N * 4);
    float *dinp32 = (float *)palloc(n * 4), *dw32 = (float *)palloc((size_t)C * 4), *db32 = (float *)palloc((size_t)C * 4);
    OK(mt_layernorm_fwd(&CX32, out32, m32, s32, inp32, w32, b32, N, C));
    expect_f32("layernorm out", out32, L.out, n);
    expect_f32("layernorm rstd", s32, L.rstd, (size_t)N);
    OK(mt_layernorm_bwd(&CX32, dinp32, dw32, db32, r32, NULL, inp32, w32, m32, s32, N, C));
    expect_f32("layernorm dinp", dinp32, dinp, n);
    expect_f32("layernorm dw", dw32, dw1, (size_t)C);
    expect_f32("layernorm db", db32, db1, (size_t)C);
}

static void rmsnorm_case(int N, int C) {
    norm_setup(N, C);
    size_t n = (size_t)N * C;
    char name[96];
    loss_rmsnorm();
    double *ref = dalloc(n);
    for (int i = 0; i < N; i++) {
        const double *x = L.inp + (size_t)i * C;
        double ms = 0;
        for (int c = 0; c < C; c++) ms += x[c] * x[c] / C;
        for (int c = 0; c < C; c++) ref[(size_t)i * C + c] = x[c] / sqrt(ms + 1e-5) * L.w[c];
    }
    snprintf(name, sizeof name, "rmsnorm N%d C%d", N, C);
    expect_fwd(name, L.out, ref, n);

    double *dinp = dalloc(n), *dw = dalloc((size_t)C);
    dfill(dinp, n, NAN);
    OK(mt_rmsnorm_bwd(&CX64, dinp, dw, L.r, NULL, L.inp, L.w, L.rstd, N, C));
    expect_finite("rmsnorm dinp", dinp, n);
    snprintf(name, sizeof name, "rmsnorm dinp (N=%d, C=%d)", N, C);
    grad_check(name, loss_rmsnorm, L.inp, dinp, n);
    grad_check("rmsnorm dw", loss_rmsnorm, L.w, dw, (size_t)C);

    double *dres = drand(n, 1), *want = dalloc(n), *dw1 = dcopy(dw, (size_t)C), *alias = dcopy(dres, n);
    for (size_t i = 0; i < n; i++) want[i] = dinp[i] + dres[i];
    OK(mt_rmsnorm_bwd(&CX64, alias, dw, L.r, alias, L.inp, L.w, L.rstd, N, C));
    MT_EXPECT(rel_err(alias, want, n) < 1e-15, "rmsnorm: dinp with (aliased) dresid is not dresid + dinp");
    expect_doubled("rmsnorm dw", dw, dw1, (size_t)C);

    float *inp32 = to_f32(L.inp, n), *w32 = to_f32(L.w, (size_t)C), *r32 = to_f32(L.r, n);
    float *out32 = (float *)palloc(n * 4), *s32 = (float *)palloc((size_t)N * 4);
    float *dinp32 = (float *)palloc(n * 4), *dw32 = (float *)palloc((size_t)C * 4);
    OK(mt_rmsnorm_fwd(&CX32, out32, s32, inp32, w32, N, C));
    expect_f32("rmsnorm out", out32, L.out, n);
    OK(mt_rmsnorm_bwd(&CX32, dinp32, dw32, r32, NULL, inp32, w32, s32, N, C));
    expect_f32("rmsnorm dinp", dinp32, dinp, n);
    expect_f32("rmsnorm dw", dw32, dw1, (size_t)C);
}

static void test_layernorm(void) {
    layernorm_case(7, 37);
    layernorm_case(rnd_int(1, 6), rnd_int(2, 50));
    pool_free();
}
static void test_rmsnorm(void) {
    rmsnorm_case(7, 37);
    rmsnorm_case(rnd_int(1, 6), rnd_int(2, 50));
    pool_free();
}

/* ------------------------------------------------------------------ matmul */

static struct {
    int N, IC, OC, F;
    double *inp, *w, *bias, *resid, *out, *r;
    double *w2, *b2, *pre, *h; /* GELU chain: inp -(w, bias, GELU)-> h (N,F) -(w2, b2)-> out (N,OC) */
} M;

static double loss_matmul(void) {
    mt_matmul_fwd(&CX64, M.out, NULL, M.inp, M.w, M.bias, M.resid, M.N, M.IC, M.OC);
    return ddot(M.r, M.out, (size_t)M.N * M.OC);
}
static double loss_mlp(void) {
    mt_matmul_fwd(&CX64, M.h, M.pre, M.inp, M.w, M.bias, NULL, M.N, M.IC, M.F);
    mt_matmul_fwd(&CX64, M.out, NULL, M.h, M.w2, M.b2, NULL, M.N, M.F, M.OC);
    return ddot(M.r, M.out, (size_t)M.N * M.OC);
}

static void matmul_case(int N, int IC, int OC) {
    M.N = N; M.IC = IC; M.OC = OC;
    size_t ni = (size_t)N * IC, no = (size_t)N * OC, nw = (size_t)OC * IC;
    M.inp = drand(ni, 1); M.w = drand(nw, 0.5); M.bias = drand((size_t)OC, 1); M.resid = drand(no, 1);
    M.out = dalloc(no); M.r = drand(no, 1);
    char name[96];
    loss_matmul();
    double *ref = dalloc(no);
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = M.bias[o] + M.resid[(size_t)i * OC + o];
            for (int k = 0; k < IC; k++) s += M.inp[(size_t)i * IC + k] * M.w[(size_t)o * IC + k];
            ref[(size_t)i * OC + o] = s;
        }
    snprintf(name, sizeof name, "matmul N%d IC%d OC%d", N, IC, OC);
    expect_fwd(name, M.out, ref, no);

    double *dinp = dalloc(ni), *dw = dalloc(nw), *db = dalloc((size_t)OC);
    dfill(dinp, ni, NAN);
    OK(mt_matmul_bwd(&CX64, dinp, dw, db, M.r, M.inp, M.w, NULL, N, IC, OC));
    expect_finite("matmul dinp", dinp, ni);
    snprintf(name, sizeof name, "matmul dinp (N=%d IC=%d OC=%d)", N, IC, OC);
    grad_check(name, loss_matmul, M.inp, dinp, ni);
    grad_check("matmul dw", loss_matmul, M.w, dw, nw);
    grad_check("matmul dbias", loss_matmul, M.bias, db, (size_t)OC);
    grad_check("matmul dresid (= dout)", loss_matmul, M.resid, M.r, no);

    /* accumulation, and each output may be NULL */
    double *dw1 = dcopy(dw, nw), *db1 = dcopy(db, (size_t)OC), *dinp1 = dcopy(dinp, ni);
    OK(mt_matmul_bwd(&CX64, NULL, dw, NULL, M.r, M.inp, M.w, NULL, N, IC, OC));
    OK(mt_matmul_bwd(&CX64, NULL, NULL, db, M.r, M.inp, M.w, NULL, N, IC, OC));
    expect_doubled("matmul dw", dw, dw1, nw);
    expect_doubled("matmul dbias", db, db1, (size_t)OC);
    dfill(dinp, ni, NAN);
    OK(mt_matmul_bwd(&CX64, dinp, NULL, NULL, M.r, M.inp, M.w, NULL, N, IC, OC));
    MT_EXPECT(rel_err(dinp, dinp1, ni) == 0, "matmul dinp alone differs");
    /* no bias, no residual */
    double *o2 = dalloc(no);
    OK(mt_matmul_fwd(&CX64, o2, NULL, M.inp, M.w, NULL, NULL, N, IC, OC));
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) ref[(size_t)i * OC + o] -= M.bias[o] + M.resid[(size_t)i * OC + o];
    expect_fwd("matmul without bias and resid", o2, ref, no);

    float *inp32 = to_f32(M.inp, ni), *w32 = to_f32(M.w, nw), *b32 = to_f32(M.bias, (size_t)OC);
    float *res32 = to_f32(M.resid, no), *r32 = to_f32(M.r, no), *out32 = (float *)palloc(no * 4);
    float *dinp32 = (float *)palloc(ni * 4), *dw32 = (float *)palloc(nw * 4), *db32 = (float *)palloc((size_t)OC * 4);
    OK(mt_matmul_fwd(&CX32, out32, NULL, inp32, w32, b32, res32, N, IC, OC));
    loss_matmul();
    expect_f32("matmul out", out32, M.out, no);
    OK(mt_matmul_bwd(&CX32, dinp32, dw32, db32, r32, inp32, w32, NULL, N, IC, OC));
    expect_f32("matmul dinp", dinp32, dinp1, ni);
    expect_f32("matmul dw", dw32, dw1, nw);
    expect_f32("matmul dbias", db32, db1, (size_t)OC);
}

/* The GELU epilogue of mt_matmul_fwd, and mt_matmul_bwd's gelu_pre argument, through a two-layer MLP. */
static void mlp_case(int N, int IC, int F, int OC) {
    M.N = N; M.IC = IC; M.F = F; M.OC = OC;
    size_t ni = (size_t)N * IC, nh = (size_t)N * F, no = (size_t)N * OC;
    M.inp = drand(ni, 1); M.w = drand((size_t)F * IC, 0.7); M.bias = drand((size_t)F, 1);
    M.w2 = drand((size_t)OC * F, 0.5); M.b2 = drand((size_t)OC, 1);
    M.pre = dalloc(nh); M.h = dalloc(nh); M.out = dalloc(no); M.r = drand(no, 1);
    char name[96];
    loss_mlp();
    double *ref = dalloc(nh), *gref = dalloc(nh);
    for (int i = 0; i < N; i++)
        for (int f = 0; f < F; f++) {
            double s = M.bias[f];
            for (int k = 0; k < IC; k++) s += M.inp[(size_t)i * IC + k] * M.w[(size_t)f * IC + k];
            ref[(size_t)i * F + f] = s;
            gref[(size_t)i * F + f] = 0.5 * s * (1 + tanh(sqrt(2 / 3.141592653589793) * (s + 0.044715 * s * s * s)));
        }
    expect_fwd("matmul+GELU epilogue: gelu_pre", M.pre, ref, nh);
    snprintf(name, sizeof name, "matmul+GELU N%d IC%d F%d", N, IC, F);
    expect_fwd(name, M.h, gref, nh);

    double *dpre = dalloc(nh), *dx = dalloc(ni), *dw = dalloc((size_t)F * IC), *db = dalloc((size_t)F);
    double *dw2 = dalloc((size_t)OC * F), *db2 = dalloc((size_t)OC);
    dfill(dpre, nh, NAN); dfill(dx, ni, NAN);
    OK(mt_matmul_bwd(&CX64, dpre, dw2, db2, M.r, M.h, M.w2, M.pre, N, F, OC));
    OK(mt_matmul_bwd(&CX64, dx, dw, db, dpre, M.inp, M.w, NULL, N, IC, F));
    expect_finite("mlp dpre", dpre, nh);
    snprintf(name, sizeof name, "mlp dinp via gelu_pre (F=%d)", F);
    grad_check(name, loss_mlp, M.inp, dx, ni);
    grad_check("mlp dw_fc", loss_mlp, M.w, dw, (size_t)F * IC);
    grad_check("mlp dbias_fc", loss_mlp, M.bias, db, (size_t)F);
    grad_check("mlp dw_proj", loss_mlp, M.w2, dw2, (size_t)OC * F);
    grad_check("mlp dbias_proj", loss_mlp, M.b2, db2, (size_t)OC);

    /* f32 through the same path */
    float *x32 = to_f32(M.inp, ni), *w32 = to_f32(M.w, (size_t)F * IC), *b32 = to_f32(M.bias, (size_t)F);
    float *w232 = to_f32(M.w2, (size_t)OC * F), *b232 = to_f32(M.b2, (size_t)OC), *r32 = to_f32(M.r, no);
    float *pre32 = (float *)palloc(nh * 4), *h32 = (float *)palloc(nh * 4), *out32 = (float *)palloc(no * 4);
    float *dpre32 = (float *)palloc(nh * 4), *dw232 = (float *)palloc((size_t)OC * F * 4), *db232 = (float *)palloc((size_t)OC * 4);
    OK(mt_matmul_fwd(&CX32, h32, pre32, x32, w32, b32, NULL, N, IC, F));
    OK(mt_matmul_fwd(&CX32, out32, NULL, h32, w232, b232, NULL, N, F, OC));
    loss_mlp();
    expect_f32("mlp h", h32, M.h, nh);
    expect_f32("mlp out", out32, M.out, no);
    OK(mt_matmul_bwd(&CX32, dpre32, dw232, db232, r32, h32, w232, pre32, N, F, OC));
    expect_f32("mlp dpre", dpre32, dpre, nh);
    expect_f32("mlp dw_proj", dw232, dw2, (size_t)OC * F);

    /* a GELU epilogue takes no residual */
    test_log_count = 0;
    MT_EXPECT(mt_matmul_fwd(&CX64, M.h, M.pre, M.inp, M.w, M.bias, M.pre, N, IC, F) == MT_ERR_ARG &&
              test_log_count == 1 && strstr(test_log_msg, "residual"), "GELU epilogue with a residual: '%s'", test_log_msg);
}

static void test_matmul(void) {
    matmul_case(7, 37, 19);
    matmul_case(rnd_int(1, 9), rnd_int(1, 23), rnd_int(1, 23));
    pool_free();
}
static void test_matmul_gelu(void) {
    mlp_case(7, 37, 23, 11);
    mlp_case(rnd_int(1, 5), rnd_int(2, 13), rnd_int(2, 17), rnd_int(1, 9));
    pool_free();
}

/* ------------------------------------------------------------------ GELU, SwiGLU, residual */

static struct {
    size_t n;
    int N, F;
    double *inp, *out, *r, *b;
} P;

static double loss_gelu(void) {
    mt_gelu_fwd(&CX64, P.out, P.inp, P.n);
    return ddot(P.r, P.out, P.n);
}
static double loss_swiglu(void) {
    mt_swiglu_fwd(&CX64, P.out, P.inp, P.N, P.F);
    return ddot(P.r, P.out, (size_t)P.N * P.F);
}
static double loss_residual(void) {
    mt_residual_fwd(&CX64, P.out, P.inp, P.b, P.n);
    return ddot(P.r, P.out, P.n);
}

static void test_gelu(void) {
    size_t n = 111;
    P.n = n; P.inp = drand(n, 5); P.out = dalloc(n); P.r = drand(n, 1);
    P.inp[0] = 0; P.inp[1] = -8; P.inp[2] = 8; P.inp[3] = -0.5;
    loss_gelu();
    double *ref = dalloc(n);
    for (size_t i = 0; i < n; i++) {
        double x = P.inp[i];
        ref[i] = 0.5 * x * (1 + tanh(sqrt(2 / 3.141592653589793) * (x + 0.044715 * x * x * x)));
    }
    expect_fwd("gelu", P.out, ref, n);
    MT_EXPECT(P.out[0] == 0 && fabs(P.out[1]) < 1e-13 && fabs(P.out[2] - 8) < 1e-13, "gelu(0), gelu(-8), gelu(8)");
    double *dinp = dalloc(n);
    dfill(dinp, n, NAN);
    OK(mt_gelu_bwd(&CX64, dinp, P.inp, P.r, n));
    expect_finite("gelu dinp", dinp, n);
    grad_check("gelu dinp (n=111, x in [-8, 8])", loss_gelu, P.inp, dinp, n);
    float *x32 = to_f32(P.inp, n), *r32 = to_f32(P.r, n), *o32 = (float *)palloc(n * 4), *d32 = (float *)palloc(n * 4);
    OK(mt_gelu_fwd(&CX32, o32, x32, n));
    loss_gelu();
    expect_f32("gelu out", o32, P.out, n);
    OK(mt_gelu_bwd(&CX32, d32, x32, r32, n));
    expect_f32("gelu dinp", d32, dinp, n);
    /* in place: dinp aliasing dout (as the matmul epilogue uses it) */
    double *alias = dcopy(P.r, n);
    OK(mt_gelu_bwd(&CX64, alias, P.inp, alias, n));
    MT_EXPECT(rel_err(alias, dinp, n) == 0, "gelu bwd in place differs");
    pool_free();
}

static void swiglu_case(int N, int F) {
    P.N = N; P.F = F;
    size_t ni = (size_t)N * 2 * F, no = (size_t)N * F;
    P.inp = drand(ni, 3); P.out = dalloc(no); P.r = drand(no, 1);
    loss_swiglu();
    double *ref = dalloc(no);
    for (int i = 0; i < N; i++)
        for (int f = 0; f < F; f++) {
            double g = P.inp[(size_t)i * 2 * F + f], u = P.inp[(size_t)i * 2 * F + F + f];
            ref[(size_t)i * F + f] = g * u / (1 + exp(-g));
        }
    char name[96];
    snprintf(name, sizeof name, "swiglu N%d F%d", N, F);
    expect_fwd(name, P.out, ref, no);
    double *dinp = dalloc(ni);
    dfill(dinp, ni, NAN);
    OK(mt_swiglu_bwd(&CX64, dinp, P.inp, P.r, N, F));
    expect_finite("swiglu dinp", dinp, ni);
    snprintf(name, sizeof name, "swiglu dinp (N=%d, F=%d)", N, F);
    grad_check(name, loss_swiglu, P.inp, dinp, ni);
    float *x32 = to_f32(P.inp, ni), *r32 = to_f32(P.r, no), *o32 = (float *)palloc(no * 4), *d32 = (float *)palloc(ni * 4);
    OK(mt_swiglu_fwd(&CX32, o32, x32, N, F));
    loss_swiglu();
    expect_f32("swiglu out", o32, P.out, no);
    OK(mt_swiglu_bwd(&CX32, d32, x32, r32, N, F));
    expect_f32("swiglu dinp", d32, dinp, ni);
}

static void test_swiglu(void) {
    swiglu_case(7, 13);
    swiglu_case(rnd_int(1, 5), rnd_int(1, 20));
    pool_free();
}

static void test_residual(void) {
    size_t n = 259;
    P.n = n; P.inp = drand(n, 1); P.b = drand(n, 1); P.out = dalloc(n); P.r = drand(n, 1);
    loss_residual();
    double *ref = dalloc(n);
    for (size_t i = 0; i < n; i++) ref[i] = P.inp[i] + P.b[i];
    expect_fwd("residual", P.out, ref, n);
    /* the backward accumulates into both inputs' gradients */
    double *da = drand(n, 1), *db = dalloc(n), *da0 = dcopy(da, n);
    mt_residual_bwd_cpu_f64(da, db, P.r, n);
    grad_check("residual db", loss_residual, P.b, db, n);
    for (size_t i = 0; i < n; i++) da[i] -= da0[i];
    grad_check("residual da (after the prior value)", loss_residual, P.inp, da, n);
    mt_residual_bwd_cpu_f64(NULL, db, P.r, n);
    double *db1 = dcopy(P.r, n);
    expect_doubled("residual db", db, db1, n);
    float *a32 = to_f32(P.inp, n), *b32 = to_f32(P.b, n), *o32 = (float *)palloc(n * 4);
    OK(mt_residual_fwd(&CX32, o32, a32, b32, n));
    expect_f32("residual out", o32, P.out, n);
    pool_free();
}

/* ------------------------------------------------------------------ RoPE */

static struct {
    int B, T, Hkv, G, D, pos_offset;
    float theta;
    double *inp, *out, *r;
} R;

static double loss_rope(void) {
    mt_rope_fwd(&CX64, R.out, R.inp, R.B, R.T, R.Hkv, R.G, R.D, R.pos_offset, R.theta);
    return ddot(R.r, R.out, (size_t)R.B * R.T * R.Hkv * (R.G + 2) * R.D);
}

static void rope_case(int B, int T, int Hkv, int G, int D, int pos_offset, float theta) {
    R.B = B; R.T = T; R.Hkv = Hkv; R.G = G; R.D = D; R.pos_offset = pos_offset; R.theta = theta;
    size_t n = (size_t)B * T * Hkv * (G + 2) * D;
    R.inp = drand(n, 1); R.out = dalloc(n); R.r = drand(n, 1);
    loss_rope();
    double *ref = dalloc(n);
    int half = D / 2;
    for (int bt = 0; bt < B * T; bt++)
        for (int hj = 0; hj < Hkv * (G + 2); hj++) {
            size_t base = ((size_t)bt * Hkv * (G + 2) + hj) * D;
            int j = hj % (G + 2), pos = pos_offset + bt % T;
            for (int i = 0; i < half; i++) {
                double x0 = R.inp[base + i], x1 = R.inp[base + half + i];
                double a = pos / pow((double)theta, 2.0 * i / D);
                if (j == G + 1) a = 0; /* V is not rotated */
                ref[base + i] = x0 * cos(a) - x1 * sin(a);
                ref[base + half + i] = x0 * sin(a) + x1 * cos(a);
            }
        }
    char name[96];
    snprintf(name, sizeof name, "rope B%d T%d Hkv%d G%d D%d offset %d", B, T, Hkv, G, D, pos_offset);
    expect_fwd(name, R.out, ref, n);

    double *dinp = dalloc(n);
    dfill(dinp, n, NAN);
    OK(mt_rope_bwd(&CX64, dinp, R.r, B, T, Hkv, G, D, pos_offset, theta));
    expect_finite("rope dinp", dinp, n);
    snprintf(name, sizeof name, "rope dinp (G=%d, D=%d, offset %d)", G, D, pos_offset);
    grad_check(name, loss_rope, R.inp, dinp, n);

    /* the backward is the inverse: bwd(fwd(x)) = x; in place works */
    double *y = dcopy(R.inp, n);
    OK(mt_rope_fwd(&CX64, y, y, B, T, Hkv, G, D, pos_offset, theta));
    MT_EXPECT(rel_err(y, R.out, n) == 0, "rope in place differs");
    OK(mt_rope_bwd(&CX64, y, y, B, T, Hkv, G, D, pos_offset, theta));
    MT_EXPECT(rel_err(y, R.inp, n) < 1e-15, "rope bwd(fwd(x)) != x: %g", rel_err(y, R.inp, n));

    float *x32 = to_f32(R.inp, n), *r32 = to_f32(R.r, n), *o32 = (float *)palloc(n * 4), *d32 = (float *)palloc(n * 4);
    OK(mt_rope_fwd(&CX32, o32, x32, B, T, Hkv, G, D, pos_offset, theta));
    expect_f32("rope out", o32, R.out, n);
    OK(mt_rope_bwd(&CX32, d32, r32, B, T, Hkv, G, D, pos_offset, theta));
    expect_f32("rope dinp", d32, dinp, n);
}

static void test_rope(void) {
    rope_case(2, 5, 2, 2, 6, 3, 10000.0f);
    rope_case(1, 7, 1, 1, 8, 0, 500.0f);
    rope_case(rnd_int(1, 2), rnd_int(1, 6), rnd_int(1, 3), rnd_int(1, 3), 2 * rnd_int(1, 5), rnd_int(0, 9), 10000.0f);
    pool_free();
}

/* ------------------------------------------------------------------ attention */

static struct {
    int B, T, Hkv, G, D, causal;
    double *qkv, *out, *lse, *r;
} A;

static double loss_attention(void) {
    mt_attention_fwd(&CX64, A.out, A.lse, A.qkv, A.B, A.T, A.Hkv, A.G, A.D, A.causal);
    return ddot(A.r, A.out, (size_t)A.B * A.T * A.Hkv * A.G * A.D);
}

static void attention_case(int B, int T, int Hkv, int G, int D, int causal) {
    A.B = B; A.T = T; A.Hkv = Hkv; A.G = G; A.D = D; A.causal = causal;
    int H = Hkv * G;
    size_t nq = (size_t)B * T * Hkv * (G + 2) * D, no = (size_t)B * T * H * D, nl = (size_t)B * H * T;
    A.qkv = drand(nq, 1.5); A.out = dalloc(no); A.lse = dalloc(nl); A.r = drand(no, 1);
    loss_attention();
    /* naive reference */
    double *ref = dalloc(no), *lref = dalloc(nl), *p = dalloc((size_t)T);
    size_t row = (size_t)Hkv * (G + 2) * D;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / G, j = h % G;
            for (int t = 0; t < T; t++) {
                const double *q = A.qkv + ((size_t)b * T + t) * row + ((size_t)g * (G + 2) + j) * D;
                double mx = -INFINITY, z = 0;
                for (int u = 0; u < T; u++) {
                    const double *k = A.qkv + ((size_t)b * T + u) * row + ((size_t)g * (G + 2) + G) * D;
                    p[u] = (causal && u > t) ? -INFINITY : ddot(q, k, (size_t)D) / sqrt((double)D);
                    mx = fmax(mx, p[u]);
                }
                for (int u = 0; u < T; u++) z += exp(p[u] - mx);
                lref[((size_t)b * H + h) * T + t] = mx + log(z);
                for (int i = 0; i < D; i++) {
                    double s = 0;
                    for (int u = 0; u < T; u++)
                        s += exp(p[u] - mx) / z * A.qkv[((size_t)b * T + u) * row + ((size_t)g * (G + 2) + G + 1) * D + i];
                    ref[(((size_t)b * T + t) * H + h) * D + i] = s;
                }
            }
        }
    char name[96];
    snprintf(name, sizeof name, "attention B%d T%d Hkv%d G%d D%d %s", B, T, Hkv, G, D, causal ? "causal" : "full");
    expect_fwd(name, A.out, ref, no);
    expect_fwd("attention lse", A.lse, lref, nl);

    double *dqkv = dalloc(nq);
    dfill(dqkv, nq, NAN);
    OK(mt_attention_bwd(&CX64, dqkv, A.r, A.out, A.lse, A.qkv, B, T, Hkv, G, D, causal, NULL, 0));
    expect_finite("attention dqkv", dqkv, nq);
    snprintf(name, sizeof name, "attention dqkv (G=%d, %s)", G, causal ? "causal" : "non-causal");
    grad_check(name, loss_attention, A.qkv, dqkv, nq);

    float *q32 = to_f32(A.qkv, nq), *r32 = to_f32(A.r, no), *o32 = (float *)palloc(no * 4);
    float *l32 = (float *)palloc(nl * 4), *d32 = (float *)palloc(nq * 4);
    ffill(d32, nq, NAN);
    OK(mt_attention_fwd(&CX32, o32, l32, q32, B, T, Hkv, G, D, causal));
    loss_attention();
    expect_f32("attention out", o32, A.out, no);
    expect_f32("attention lse", l32, A.lse, nl);
    OK(mt_attention_bwd(&CX32, d32, r32, o32, l32, q32, B, T, Hkv, G, D, causal, NULL, 0));
    expect_f32("attention dqkv", d32, dqkv, nq);
}

static void test_attention(void) {
    for (int causal = 1; causal >= 0; causal--)
        for (int G = 1; G <= 2; G++) attention_case(2, 5, 2, G, 6, causal);
    attention_case(1, 4, 1, 3, 5, 1); /* odd head dim, three query heads per group */
    attention_case(rnd_int(1, 2), rnd_int(1, 7), rnd_int(1, 3), rnd_int(1, 3), rnd_int(1, 8), (int)(rnd64() & 1));
    pool_free();
}

/* ------------------------------------------------------------------ cross-entropy */

static struct {
    int N, V, Vp;
    double dscale;
    int32_t *tgt;
    double *logits, *losses;
} X;

/* dscale * (sum of the losses): the loss whose gradient mt_xent returns */
static double loss_xent(void) {
    mt_xent(&CX64, X.losses, NULL, X.logits, X.tgt, (float)X.dscale, X.N, X.V, X.Vp);
    double s = 0;
    for (int i = 0; i < X.N; i++) s += X.losses[i];
    return s * X.dscale;
}

static void xent_case(int N, int V, int Vp) {
    X.N = N; X.V = V; X.Vp = Vp; X.dscale = 0.375; /* exact in float */
    size_t n = (size_t)N * Vp;
    X.tgt = (int32_t *)palloc(sizeof(int32_t) * (size_t)N);
    for (int i = 0; i < N; i++) X.tgt[i] = rnd_int(0, V - 1);
    if (N > 2) { X.tgt[1] = -1; X.tgt[2] = V - 1; }
    X.logits = dalloc(n); X.losses = dalloc((size_t)N);
    for (int i = 0; i < N; i++)
        for (int v = 0; v < Vp; v++) X.logits[(size_t)i * Vp + v] = v < V ? rnd_sym(4) : NAN; /* padding unread */
    loss_xent();
    double *lref = dalloc((size_t)N);
    for (int i = 0; i < N; i++) {
        double mx = -INFINITY, z = 0;
        const double *x = X.logits + (size_t)i * Vp;
        for (int v = 0; v < V; v++) mx = fmax(mx, x[v]);
        for (int v = 0; v < V; v++) z += exp(x[v] - mx);
        lref[i] = X.tgt[i] < 0 ? 0 : mx + log(z) - x[X.tgt[i]];
    }
    char name[96];
    snprintf(name, sizeof name, "xent N%d V%d Vp%d", N, V, Vp);
    expect_fwd(name, X.losses, lref, (size_t)N);

    double *dl = dalloc(n);
    dfill(dl, n, NAN);
    OK(mt_xent(&CX64, X.losses, dl, X.logits, X.tgt, (float)X.dscale, N, V, Vp));
    expect_fwd("xent losses with dlogits", X.losses, lref, (size_t)N);
    expect_finite("xent dlogits", dl, n);
    int pad_bad = 0, ign_bad = 0;
    for (int i = 0; i < N; i++)
        for (int v = 0; v < Vp; v++) {
            if (v >= V && dl[(size_t)i * Vp + v] != 0) pad_bad++;
            if (X.tgt[i] < 0 && dl[(size_t)i * Vp + v] != 0) ign_bad++;
        }
    MT_EXPECT(pad_bad == 0, "xent: %d padded columns with a non-zero gradient", pad_bad);
    MT_EXPECT(N <= 2 || (ign_bad == 0 && X.losses[1] == 0), "xent: ignored target has loss %g and %d non-zero grads",
              X.losses[1], ign_bad);
    /* finite differences over the real columns (the padding is NaN and must stay unread) */
    double *g = dalloc((size_t)N * V);
    for (int i = 0; i < N; i++)
        for (int v = 0; v < V; v++) g[(size_t)i * V + v] = dl[(size_t)i * Vp + v];
    {
        double *fd = dalloc((size_t)N * V);
        int nt = serial_begin();
        for (int i = 0; i < N; i++)
            for (int v = 0; v < V; v++) {
                double *px = &X.logits[(size_t)i * Vp + v], x = *px, h = 1e-3 * fmax(1.0, fabs(x));
                *px = x + h; double a1 = loss_xent();
                *px = x - h; double b1 = loss_xent();
                *px = x + 2 * h; double a2 = loss_xent();
                *px = x - 2 * h; double b2 = loss_xent();
                *px = x;
                fd[(size_t)i * V + v] = (8 * (a1 - b1) - (a2 - b2)) / (12 * h);
            }
        loss_xent();
        serial_end(nt);
        double e = rel_err(g, fd, (size_t)N * V);
        int bad = 0;
        for (size_t k = 0; k < (size_t)N * V; k++) bad += !(fabs(g[k] - fd[k]) <= FD_TOL * fmax(fabs(fd[k]), 1e-4));
        MT_EXPECT(e < FD_TOL && bad == 0 && dnorm(fd, (size_t)N * V) > 1e-3, "xent dlogits: rel err %.3g, %d bad", e, bad);
        if (e > worst_fd) worst_fd = e;
        snprintf(name, sizeof name, "xent dlogits (N=%d, V=%d, Vp=%d)", N, V, Vp);
        printf("    %-34s n=%-5d rel err %.2e\n", name, N * V, e);
    }
    /* each row's gradient sums to zero (softmax minus one-hot) */
    double rowsum = 0;
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int v = 0; v < V; v++) s += dl[(size_t)i * Vp + v];
        rowsum = fmax(rowsum, fabs(s));
    }
    MT_EXPECT(rowsum < 1e-15, "xent: a gradient row sums to %g", rowsum);

    /* dlogits aliasing logits */
    double *alias = dcopy(X.logits, n), *al = dalloc((size_t)N);
    OK(mt_xent(&CX64, al, alias, alias, X.tgt, (float)X.dscale, N, V, Vp));
    MT_EXPECT(rel_err(alias, dl, n) == 0 && rel_err(al, X.losses, (size_t)N) == 0, "xent: in place differs");

    float *l32 = to_f32(X.logits, n), *loss32 = (float *)palloc((size_t)N * 4), *d32 = (float *)palloc(n * 4);
    OK(mt_xent(&CX32, loss32, d32, l32, X.tgt, (float)X.dscale, N, V, Vp));
    expect_f32("xent losses", loss32, X.losses, (size_t)N);
    expect_f32("xent dlogits", d32, dl, n);
}

static void test_xent(void) {
    xent_case(7, 101, 104);
    xent_case(3, 5, 5);
    int V = rnd_int(2, 40);
    xent_case(rnd_int(1, 6), V, V + rnd_int(0, 3));
    pool_free();
}

/* ------------------------------------------------------------------ AdamW, norms */

typedef struct { double lr, b1, b2, eps, wd; } adam_ref_hp;

/* The textbook AdamW step (Loshchilov & Hutter, with PyTorch's placement of the bias corrections). */
static void adamw_ref(double *p, double *m, double *v, const double *g, size_t n, adam_ref_hp hp, int t, double gs) {
    for (size_t i = 0; i < n; i++) {
        double gi = g[i] * gs;
        m[i] = hp.b1 * m[i] + (1 - hp.b1) * gi;
        v[i] = hp.b2 * v[i] + (1 - hp.b2) * gi * gi;
        double mhat = m[i] / (1 - pow(hp.b1, t)), vhat = v[i] / (1 - pow(hp.b2, t));
        p[i] = p[i] * (1 - hp.lr * hp.wd) - hp.lr * mhat / (sqrt(vhat) + hp.eps);
    }
}

static void test_adamw(void) {
    const size_t n = 53;
    const adam_ref_hp rh = {3e-2, 0.9, 0.95, 1e-8, 0.1};
    mt_adamw_hp hp = {0};
    hp.lr = (float)rh.lr; hp.beta1 = (float)rh.b1; hp.beta2 = (float)rh.b2; hp.eps = (float)rh.eps;
    hp.weight_decay = (float)rh.wd;
    adam_ref_hp fh = {hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay}; /* what the op actually receives */

    /* step 1 has a closed form: m_hat = g, v_hat = g^2, so the update is lr * (sign(g) + wd * p) (eps aside) */
    double *p = drand(n, 1), *m = dalloc(n), *v = dalloc(n), *g = drand(n, 1);
    double *p0 = dcopy(p, n);
    hp.step = 1;
    OK(mt_adamw(&CX64, p, NULL, m, v, g, n, &hp, NULL, 0));
    double e1 = 0;
    for (size_t i = 0; i < n; i++) {
        double want = p0[i] - fh.lr * (g[i] / (fabs(g[i]) + fh.eps) + fh.wd * p0[i]);
        e1 = fmax(e1, fabs(p[i] - want) / fabs(want));
    }
    MT_EXPECT(e1 < 1e-14, "AdamW step 1 vs closed form: %g", e1);

    /* several steps with gradient scale (a stat-type scalar on the device), against the reference */
    double *pr = dcopy(p0, n), *mr = dalloc(n), *vr = dalloc(n);
    memcpy(p, p0, n * sizeof(double)); dfill(m, n, 0); dfill(v, n, 0);
    float *p32 = to_f32(p0, n), *m32 = (float *)palloc(n * 4), *v32 = (float *)palloc(n * 4);
    double maxe = 0, maxe32 = 0, moved = 0;
    for (int t = 1; t <= 6; t++) {
        double gs = t % 2 ? 0.5 : 1.0;
        g = drand(n, 2);
        for (size_t i = 0; i < n; i++) g[i] = (float)g[i]; /* the same gradients for f32 and f64 */
        hp.step = t;
        double gscale = gs;
        float gscale32 = (float)gs;
        float *g32 = to_f32(g, n);
        OK(mt_adamw(&CX64, p, NULL, m, v, g, n, &hp, t % 2 ? &gscale : NULL, 0));
        OK(mt_adamw(&CX32, p32, NULL, m32, v32, g32, n, &hp, t % 2 ? &gscale32 : NULL, 0));
        double *gf = dalloc(n);
        for (size_t i = 0; i < n; i++) gf[i] = g32[i];
        adamw_ref(pr, mr, vr, gf, n, fh, t, gs);
        maxe = fmax(maxe, rel_err(p, pr, n));
        maxe = fmax(maxe, fmax(rel_err(m, mr, n), rel_err(v, vr, n)));
        maxe32 = fmax(maxe32, rel_err_f32(p32, pr, n));
    }
    moved = rel_err(p, p0, n);
    MT_EXPECT(maxe < 1e-14, "AdamW f64 vs reference over 6 steps: %g", maxe);
    MT_EXPECT(maxe32 < 1e-6, "AdamW f32 vs reference over 6 steps: %g", maxe32);
    MT_EXPECT(moved > 1e-2, "AdamW moved the parameters by only %g", moved);
    printf("    adamw: f64 vs reference %.2e, f32 vs reference %.2e over 6 steps\n", maxe, maxe32);

    /* without weight decay and with zero gradient, nothing moves */
    mt_adamw_hp hz = hp;
    hz.weight_decay = 0; hz.step = 1;
    double *pz = drand(n, 1), *pz0 = dcopy(pz, n), *mz = dalloc(n), *vz = dalloc(n), *gz = dalloc(n);
    OK(mt_adamw(&CX64, pz, NULL, mz, vz, gz, n, &hz, NULL, 0));
    MT_EXPECT(rel_err(pz, pz0, n) == 0, "zero gradient without weight decay changed the parameters");
    /* with weight decay and zero gradient: pure decay p *= 1 - lr * wd */
    hz.weight_decay = hp.weight_decay;
    OK(mt_adamw(&CX64, pz, NULL, mz, vz, gz, n, &hz, NULL, 0));
    for (size_t i = 0; i < n; i++) pz0[i] *= 1 - fh.lr * fh.wd;
    MT_EXPECT(rel_err(pz, pz0, n) < 1e-15, "decoupled weight decay alone: %g", rel_err(pz, pz0, n));
    pool_free();
}

static void test_norms(void) {
    const size_t n = 1001;
    double *x = drand(n, 3), s = 0;
    for (size_t i = 0; i < n; i++) s += x[i] * x[i];
    double acc = 2.5;
    OK(mt_sumsq(&CX64, &acc, x, n));
    MT_EXPECT_REL(acc, 2.5 + s, 1e-14, 1e-300);
    OK(mt_sumsq(&CX64, &acc, x, n)); /* accumulates */
    MT_EXPECT_REL(acc, 2.5 + 2 * s, 1e-14, 1e-300);
    float *x32 = to_f32(x, n), acc32 = 0;
    double s32 = 0;
    for (size_t i = 0; i < n; i++) s32 += (double)x32[i] * x32[i];
    OK(mt_sumsq(&CX32, &acc32, x32, n));
    MT_EXPECT_REL(acc32, s32, 1e-7, 1e-300);

    double nsq = 16, coef = -1;
    OK(mt_clip_coef(&CX64, &coef, &nsq, 1.0f));
    MT_EXPECT_REL(coef, 1.0 / (4 + 1e-6), 1e-15, 1e-300);
    OK(mt_clip_coef(&CX64, &coef, &nsq, 10.0f));
    MT_EXPECT(coef == 1.0, "norm below max gives %g", coef);
    OK(mt_clip_coef(&CX64, &coef, &nsq, 0.0f));
    MT_EXPECT(coef == 1.0, "max_norm 0 (no clipping) gives %g", coef);
    OK(mt_clip_coef(&CX64, &coef, &nsq, -1.0f));
    MT_EXPECT(coef == 1.0, "max_norm < 0 gives %g", coef);
    float nsq32 = 100, coef32 = -1;
    OK(mt_clip_coef(&CX32, &coef32, &nsq32, 2.5f));
    MT_EXPECT_REL(coef32, 0.25, 1e-6, 1e-300);

    /* clipping end to end: the clipped gradient has norm max_norm */
    double *g = drand(n, 1), gn = 0, c = 0;
    OK(mt_sumsq(&CX64, &gn, g, n));
    OK(mt_clip_coef(&CX64, &c, &gn, 0.5f));
    MT_EXPECT_REL(c * sqrt(gn), 0.5, 1e-5, 1e-300);
    pool_free();
}

/* ------------------------------------------------------------------ threads */

#ifdef _OPENMP
/* The OpenMP ops give the same bits with 1 thread and with several (each output has one writer and
 * a fixed order of summation): a race in the attention backward's dK/dV would show here. */
static void test_threads(void) {
    int nt = omp_get_max_threads() < 2 ? 2 : omp_get_max_threads();
    const int N = 33, IC = 40, OC = 29, B = 3, T = 9, Hkv = 3, G = 2, D = 8, V = 57;
    size_t nq = (size_t)B * T * Hkv * (G + 2) * D, no = (size_t)B * T * Hkv * G * D, nl = (size_t)B * Hkv * G * T;
    double *x = drand((size_t)N * IC, 1), *w = drand((size_t)OC * IC, 1), *bias = drand((size_t)OC, 1);
    double *dout = drand((size_t)N * OC, 1), *qkv = drand(nq, 1.5), *dO = drand(no, 1), *lg = drand((size_t)N * V, 3);
    int32_t tg[33];
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 4 ? -1 : rnd_int(0, V - 1);
    double *res[2][9];
    for (int pass = 0; pass < 2; pass++) {
        omp_set_num_threads(pass ? nt : 1);
        double **r = res[pass];
        r[0] = dalloc((size_t)N * OC); r[1] = dalloc((size_t)N * IC); r[2] = dalloc((size_t)OC * IC);
        r[3] = dalloc((size_t)OC); r[4] = dalloc(no); r[5] = dalloc(nl); r[6] = dalloc(nq);
        r[7] = dalloc((size_t)N); r[8] = dalloc((size_t)N * V);
        OK(mt_matmul_fwd(&CX64, r[0], NULL, x, w, bias, NULL, N, IC, OC));
        OK(mt_matmul_bwd(&CX64, r[1], r[2], r[3], dout, x, w, NULL, N, IC, OC));
        for (int causal = 0; causal < 2; causal++) {
            OK(mt_attention_fwd(&CX64, r[4], r[5], qkv, B, T, Hkv, G, D, causal));
            OK(mt_attention_bwd(&CX64, r[6], dO, r[4], r[5], qkv, B, T, Hkv, G, D, causal, NULL, 0));
        }
        OK(mt_xent(&CX64, r[7], r[8], lg, tg, 0.5f, N, V, V));
    }
    omp_set_num_threads(nt);
    const size_t sz[9] = {(size_t)N * OC, (size_t)N * IC, (size_t)OC * IC, (size_t)OC, no, nl, nq, (size_t)N, (size_t)N * V};
    const char *nm[9] = {"matmul out", "matmul dinp", "matmul dw", "matmul dbias", "attention out", "attention lse",
                         "attention dqkv", "xent losses", "xent dlogits"};
    for (int k = 0; k < 9; k++)
        MT_EXPECT(memcmp(res[0][k], res[1][k], sz[k] * sizeof(double)) == 0 && dnorm(res[0][k], sz[k]) > 0,
                  "%s: %d threads differ from 1", nm[k], nt);
    pool_free();
}
#endif

/* ------------------------------------------------------------------ dispatch, memory */

static void test_dispatch_errors(void) {
    double a[4] = {1, 2, 3, 4}, b[4] = {0}, st[1];
    mt_ctx bf = {0};
    bf.dtype = MT_BF16;
    test_log_count = 0;
    MT_EXPECT(mt_layernorm_fwd(&bf, b, st, st, a, a, a, 1, 4) == MT_ERR_UNSUPPORTED, "bf16 on the CPU");
    MT_EXPECT(test_log_count == 1 && strstr(test_log_msg, "bf16") && strstr(test_log_msg, "layernorm"),
              "message: '%s'", test_log_msg);
    MT_EXPECT(b[0] == 0 && b[3] == 0, "nothing written on error");
    mt_ctx gpu = {0};
    gpu.device = mt_gpu(0);
    MT_EXPECT(mt_gelu_fwd(&gpu, b, a, 4) == MT_ERR_UNSUPPORTED, "GPU in a CPU build");
    MT_EXPECT(strstr(test_log_msg, "nvcc") != NULL, "message: '%s'", test_log_msg);
    MT_EXPECT(mt_zero(&gpu, b, 8) == MT_ERR_UNSUPPORTED, "mt_zero on the GPU in a CPU build");
    /* a default (zeroed) context is the CPU in f32 */
    mt_ctx dflt = {0};
    float xf[3] = {-1, 0, 2}, yf[3] = {9, 9, 9};
    MT_EXPECT(mt_gelu_fwd(&dflt, yf, xf, 3) == MT_OK && yf[1] == 0 && fabsf(yf[2] - 1.9545977f) < 1e-6f,
              "zeroed ctx runs f32 on the CPU: %g", (double)yf[2]);
}

static void test_memory(void) {
    const size_t n = 77;
    float *src = (float *)palloc(n * 4), *back = (float *)palloc(n * 4);
    for (size_t i = 0; i < n; i++) src[i] = (float)rnd_sym(100);
    src[0] = 1.00390625f;               /* 1 + 2^-8: a bf16 tie, rounds to 1 */
    const mt_dtype dts[] = {MT_F32, MT_F64, MT_BF16, MT_F16};
    for (int k = 0; k < 4; k++) {
        mt_ctx cx = {0};
        cx.dtype = dts[k];
        void *dst = palloc(n * 8);
        OK(mt_copy_from_f32(&cx, dst, src, n));
        OK(mt_copy_to_f32(&cx, back, dst, dts[k], n));
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            float want = dts[k] == MT_BF16 ? mt_bf16_to_f32(mt_f32_to_bf16(src[i]))
                         : dts[k] == MT_F16 ? mt_f16_to_f32(mt_f32_to_f16(src[i])) : src[i];
            bad += back[i] != want;
        }
        MT_EXPECT(bad == 0, "copy through %s: %d values wrong", mt_dtype_name(dts[k]), bad);
        if (dts[k] == MT_BF16) MT_EXPECT(back[0] == 1.0f, "bf16 tie to even: %.9g", (double)back[0]);
    }
    mt_ctx cx = {0};
    MT_EXPECT(mt_copy_from_f32(&cx, back, src, 0) == MT_OK, "empty copy");
    cx.dtype = MT_FP8E4M3;
    MT_EXPECT(mt_copy_from_f32(&cx, back, src, n) == MT_ERR_UNSUPPORTED, "fp8 copy is unsupported for now");
    mt_ctx c64 = CX64;
    double z[5] = {1, 2, 3, 4, 5};
    OK(mt_zero(&c64, z + 1, 3 * sizeof(double)));
    MT_EXPECT(z[0] == 1 && z[1] == 0 && z[3] == 0 && z[4] == 5, "mt_zero touches exactly its range");
    pool_free();
}

int main(void) {
    MT_RUN(test_embedding);
    MT_RUN(test_layernorm);
    MT_RUN(test_rmsnorm);
    MT_RUN(test_matmul);
    MT_RUN(test_matmul_gelu);
    MT_RUN(test_gelu);
    MT_RUN(test_swiglu);
    MT_RUN(test_residual);
    MT_RUN(test_rope);
    MT_RUN(test_attention);
    MT_RUN(test_xent);
    MT_RUN(test_adamw);
    MT_RUN(test_norms);
#ifdef _OPENMP
    MT_RUN(test_threads);
#else
    printf("  skip test_threads: built without -fopenmp (the sanitizer build), the ops run serially\n");
#endif
    MT_RUN(test_dispatch_errors);
    MT_RUN(test_memory);
    printf("  worst relative errors: backward vs finite differences %.2e (limit %.0e), f32 vs f64 %.2e (limit "
           "%.0e), forward vs naive %.2e\n",
           worst_fd, FD_TOL, worst_f32, F32_TOL, worst_fwd);
    return mt_test_summary("test_ops");
}
