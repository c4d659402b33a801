/* tests/test_tp.c — tensor and sequence parallelism on the host backend (ranks are threads).
 *
 * tp = 2 and 4, with and without sequence parallelism, in f64 and f32, against tp = 1 on the same
 * weights and batches: the lm loss of 5 AdamW iterations (with gradient clipping active), the
 * gradients after the first backward (every shard gathered by parameter name) and the parameters
 * after the last step; the vocab-parallel cross-entropy and bias-residual ops against the single-
 * rank ones; activation memory under sequence parallelism; and the bad-input errors.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* keep the last error message, to check that it names the value that is wrong */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char last_log[1024];
static void test_log(int level, const char *msg) {
    pthread_mutex_lock(&log_mu);
    size_t n = strlen(msg) < sizeof last_log - 1 ? strlen(msg) : sizeof last_log - 1;
    memcpy(last_log, msg, n);
    last_log[n] = 0;
    pthread_mutex_unlock(&log_mu);
    if (level >= 3 && getenv("MT_TEST_VERBOSE")) fprintf(stderr, "%s\n", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)
#include "megatron.h"
#include "mt_test.h"

static int log_has(const char *s) {
    pthread_mutex_lock(&log_mu);
    int ok = strstr(last_log, s) != NULL;
    pthread_mutex_unlock(&log_mu);
    return ok;
}

/* Odd-ish sizes: D = 3, G = 2, F/tp = 5 at tp = 4, 3 vocabulary columns of padding on the last of
 * 4 ranks (and none real on no rank), 3 rows per rank under sequence parallelism at tp = 4. */
static mt_gpt_config tp_config(void) {
    mt_gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 2; c.n_embd = 24; c.n_head = 8; c.n_kv_head = 4; c.ffn_hidden = 20;
    c.vocab_size = 45; c.padded_vocab = 48; c.max_seq_len = 8; c.init_std = 0.2f; c.seed = 11;
    return c;
}

#define ITERS 5
#define MAXTP 4

typedef struct run {
    /* in */
    mt_gpt_config cfg;
    mt_dtype dt;
    int tp, sp, B, T;
    int head;  /* m.head_chunk_rows: the classifier in chunks of this many rows (0 automatic) */
    int chunks; /* lp.comm_chunks: the row-parallel forward's pieces (0: the default) */
    /* out, per rank */
    double loss[MAXTP][ITERS], gnorm[MAXTP][ITERS];
    double *grads[MAXTP], *params[MAXTP]; /* grads after the first backward, params after the last step */
    mt_param *table[MAXTP];
    int n_params[MAXTP];
    size_t act_rows[MAXTP];
} run;

static double load(const void *p, mt_dtype dt, size_t i) {
    return dt == MT_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

static mt_status copy_out(const mt_gpt *m, mt_dtype dt, const void *src, double **dst) {
    MT_TRY(mt_calloc(sizeof(double) * m->num_params, (void **)dst));
    for (size_t i = 0; i < m->num_params; i++) (*dst)[i] = load(src, dt, i);
    return MT_OK;
}

static mt_status rank_main(mt_comm *world, void *arg) {
    run *r = (run *)arg;
    int rank = mt_comm_rank(world);
    mt_parallel grid;
    mt_parallel_config pc;
    memset(&pc, 0, sizeof pc);
    pc.tp = r->tp;
    MT_TRY(mt_parallel_init(&grid, world, &pc));
    mt_layer_par lp;
    mt_layer_par_from(&lp, &grid, r->sp);
    lp.comm_chunks = r->chunks;
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.dtype = r->dt;
    mt_gpt m;
    MT_TRY(mt_gpt_init(&cx, &m, &r->cfg, &lp, 0, 0));
    m.head_chunk_rows = r->head;
    float *init;
    MT_TRY(mt_calloc(sizeof(float) * m.num_params, (void **)&init));
    mt_gpt_init_values(&m, init);
    MT_TRY(mt_copy_from_f32(&cx, m.param_mem, init, m.num_params));
    mt_optim opt;
    MT_TRY(mt_optim_init(&cx, &opt, &m, init));
    mt_free(init);
    int B = r->B, T = r->T, N = B * T;
    mt_arena ar;
    mt_gpt_acts a;
    mt_gpt_scratch s;
    MT_TRY(mt_arena_init(&ar, cx.device, mt_gpt_acts_nbytes(&m, B, T, 1)));
    MT_TRY(mt_gpt_acts_alloc(&m, &ar, B, T, &a, &s));
    r->act_rows[rank] = (size_t)mt_gpt_rows(&m, B, T);
    for (int it = 0; it < ITERS; it++) {
        for (int i = 0; i < N; i++) { /* the same batch on every tp rank (and every iteration: the loss falls) */
            a.tokens[i] = (int32_t)(mt_rng_u32(100, 1, (uint64_t)i) % (uint32_t)r->cfg.vocab_size);
            a.targets[i] = (int32_t)(mt_rng_u32(100, 2, (uint64_t)i) % (uint32_t)r->cfg.vocab_size);
        }
        a.targets[3] = -1; /* an ignored position */
        MT_TRY(mt_gpt_forward(&cx, &m, &a, &s, 1.0f / N));
        double l = 0;
        for (int i = 0; i < N; i++) l += load(a.losses, r->dt, (size_t)i);
        r->loss[rank][it] = l / (N - 1);
        MT_TRY(mt_gpt_backward(&cx, &m, &a, &s, NULL, NULL));
        if (it == 0) MT_TRY(copy_out(&m, r->dt, m.grad_mem, &r->grads[rank]));
        mt_optim_hp hp;
        memset(&hp, 0, sizeof hp);
        hp.lr = 2e-2f; hp.weight_decay = 0.1f; hp.clip_grad = 0.5f; /* the norm is about 1: clipping is active */
        MT_TRY(mt_optim_step(&cx, &opt, &m, &hp));
        MT_TRY(mt_optim_grad_norm(&cx, &opt, &r->gnorm[rank][it]));
    }
    MT_TRY(copy_out(&m, r->dt, m.param_mem, &r->params[rank]));
    MT_TRY(mt_calloc(sizeof(mt_param) * (size_t)m.n_params, (void **)&r->table[rank]));
    memcpy(r->table[rank], m.params, sizeof(mt_param) * (size_t)m.n_params);
    r->n_params[rank] = m.n_params;
    mt_optim_free(&opt);
    mt_gpt_acts_free(&a);
    mt_arena_free(&ar);
    mt_gpt_free(&m);
    mt_parallel_free(&grid);
    return MT_OK;
}

static void run_free(run *r) {
    for (int q = 0; q < MAXTP; q++) {
        mt_free(r->grads[q]);
        mt_free(r->params[q]);
        mt_free(r->table[q]);
    }
}

static int do_run_opts(run *r, const mt_gpt_config *cfg, mt_dtype dt, int tp, int sp, int B, int T, int head,
                       int chunks) {
    memset(r, 0, sizeof *r);
    r->cfg = *cfg; r->dt = dt; r->tp = tp; r->sp = sp; r->B = B; r->T = T; r->head = head; r->chunks = chunks;
    mt_status st = mt_host_run(tp, 60.0, rank_main, r, NULL);
    MT_EXPECT(st == MT_OK, "tp=%d sp=%d head %d chunks %d %s run: %s", tp, sp, head, chunks, mt_dtype_name(dt),
              mt_status_str(st));
    return st == MT_OK;
}

static int do_run(run *r, const mt_gpt_config *cfg, mt_dtype dt, int tp, int sp, int B, int T) {
    return do_run_opts(r, cfg, dt, tp, sp, B, T, 0, 0);
}

static const mt_param *find(const mt_param *t, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(t[i].name, name)) return &t[i];
    return NULL;
}

/* The value of global element (row, col) of tensor `name` in a rank's table and values, or NAN when
 * the rank does not hold it. */
static double held_in(const mt_param *table, int n, const double *vals, const char *name, int64_t row, int64_t col) {
    const mt_param *p = find(table, n, name);
    if (!p || row < p->row0 || row >= p->row0 + p->rows || col < p->col0 || col >= p->col0 + p->cols) return NAN;
    return vals[p->offset + (size_t)((row - p->row0) * p->cols + (col - p->col0))];
}
static double held(const run *r, int q, double *const *vals, const char *name, int64_t row, int64_t col) {
    return held_in(r->table[q], r->n_params[q], vals[q], name, row, col);
}

/* max over every element of every tensor of the tp=1 run of |tp value - tp=1 value| / scale, where
 * scale is the tensor's largest tp=1 magnitude; every rank that holds an element (all of them for a
 * replicated tensor) must agree. Rows >= `rows_limit` of wte are skipped (padding) when set. */
static double gathered_diff(const run *one, double *const *one_vals, const run *r, double *const *vals, int *covered) {
    double worst = 0;
    *covered = 1;
    const mt_param *t = one->table[0];
    for (int i = 0; i < one->n_params[0]; i++) {
        const mt_param *p = &t[i];
        double scale = 1e-30;
        for (int64_t k = 0; k < p->rows * p->cols; k++) scale = fmax(scale, fabs(one_vals[0][p->offset + (size_t)k]));
        for (int64_t row = 0; row < p->grows; row++)
            for (int64_t col = 0; col < p->gcols; col++) {
                double want = one_vals[0][p->offset + (size_t)(row * p->cols + col)];
                int holders = 0;
                for (int q = 0; q < r->tp; q++) {
                    double got = held(r, q, vals, p->name, row, col);
                    if (isnan(got)) continue;
                    holders++;
                    worst = fmax(worst, fabs(got - want) / scale);
                }
                if (holders != (p->split == MT_SPLIT_NONE ? r->tp : 1)) *covered = 0;
            }
    }
    return worst;
}

static void check_against(const run *one, const run *r, double loss_tol, double grad_tol, double param_tol) {
    double worst_loss = 0, worst_norm = 0;
    for (int q = 0; q < r->tp; q++)
        for (int it = 0; it < ITERS; it++) {
            worst_loss = fmax(worst_loss, fabs(r->loss[q][it] - one->loss[0][it]) / fabs(one->loss[0][it]));
            worst_norm = fmax(worst_norm, fabs(r->gnorm[q][it] - one->gnorm[0][it]) / one->gnorm[0][it]);
        }
    int cov_g, cov_p;
    double dg = gathered_diff(one, one->grads, r, r->grads, &cov_g);
    double dp = gathered_diff(one, one->params, r, r->params, &cov_p);
    char pieces[48] = "";
    if (r->chunks) snprintf(pieces, sizeof pieces, " (forward collectives in %d piece%s)", r->chunks, r->chunks > 1 ? "s" : "");
    printf("    %s tp=%d%s%s%s: lm loss %.6f .. %.6f, max rel diff %.1e; grad norm %.1e; gathered grads %.1e, params after "
           "%d steps %.1e\n", mt_dtype_name(r->dt), r->tp, r->sp ? " +SP" : "", r->head ? " +head chunks" : "",
           pieces,
           one->loss[0][0], one->loss[0][ITERS - 1],
           worst_loss, worst_norm, dg, ITERS, dp);
    MT_EXPECT(worst_loss < loss_tol, "%s tp=%d sp=%d: lm loss rel diff %.3e", mt_dtype_name(r->dt), r->tp, r->sp,
              worst_loss);
    MT_EXPECT(worst_norm < loss_tol, "%s tp=%d sp=%d: grad norm rel diff %.3e", mt_dtype_name(r->dt), r->tp, r->sp,
              worst_norm);
    MT_EXPECT(dg < grad_tol, "%s tp=%d sp=%d: gathered gradients differ by %.3e", mt_dtype_name(r->dt), r->tp, r->sp, dg);
    if (param_tol > 0)
        MT_EXPECT(dp < param_tol, "%s tp=%d sp=%d: parameters differ by %.3e", mt_dtype_name(r->dt), r->tp, r->sp, dp);
    MT_EXPECT(cov_g && cov_p, "every element held by exactly its owners");
    size_t N = (size_t)r->B * r->T;
    MT_EXPECT(r->act_rows[0] == (r->sp ? N / r->tp : N), "rows of the residual stream %zu", r->act_rows[0]);
}

static void tp_matrix(mt_dtype dt, double loss_tol, double grad_tol, double param_tol) {
    mt_gpt_config cfg = tp_config();
    int B = 2, T = 6;
    run one, r;
    if (!do_run(&one, &cfg, dt, 1, 0, B, T)) return;
    MT_EXPECT(one.loss[0][ITERS - 1] < one.loss[0][0], "loss falls: %.4f -> %.4f", one.loss[0][0],
              one.loss[0][ITERS - 1]);
    for (int tp = 2; tp <= 4; tp *= 2)
        for (int sp = 0; sp <= 1; sp++) {
            if (do_run(&r, &cfg, dt, tp, sp, B, T)) check_against(&one, &r, loss_tol, grad_tol, param_tol);
            run_free(&r);
        }
    /* the vocab-parallel head in chunks of 5 of the 12 rows (per-chunk loss statistics) */
    if (do_run_opts(&r, &cfg, dt, 2, 0, B, T, 5, 0)) check_against(&one, &r, loss_tol, grad_tol, param_tol);
    run_free(&r);
    /* the forward collectives in one piece, and in 5 uneven ones (12 rows; 6 per rank under SP) */
    for (int sp = 0; sp <= 1; sp++)
        for (int chunks = 1; chunks <= 5; chunks += 4) {
            if (do_run_opts(&r, &cfg, dt, 2, sp, B, T, 0, chunks)) check_against(&one, &r, loss_tol, grad_tol, param_tol);
            run_free(&r);
        }
    run_free(&one);
}

/* f64: the exact arithmetic except for summation order */
static void test_tp_equals_tp1_f64(void) { tp_matrix(MT_F64, 1e-12, 1e-10, 1e-8); }

/* f32: the tolerance for the loss (host reductions are in f32, in rank order). Parameters are
 * compared through the loss only: Adam turns the f32 rounding noise of gradients that are zero in
 * exact arithmetic (the key bias: softmax does not see a shift) into steps of about lr. */
static void test_tp_equals_tp1_f32(void) { tp_matrix(MT_F32, 1e-5, 1e-5, 0); }

/* Megatron's default vocabulary padding, a multiple of 128*tp: tp=1 and tp=2 pad differently, the
 * loss does not change. */
static void test_tp_default_padding(void) {
    mt_gpt_config cfg = tp_config();
    cfg.padded_vocab = 0;
    cfg.n_layer = 1;
    run one, r;
    if (!do_run(&one, &cfg, MT_F64, 1, 0, 1, 8)) return;
    if (do_run(&r, &cfg, MT_F64, 2, 1, 1, 8)) {
        const mt_param *w1 = find(one.table[0], one.n_params[0], "wte"), *w2 = find(r.table[0], r.n_params[0], "wte");
        MT_EXPECT(w1 && w2 && w1->grows == 128 && w2->grows == 256 && w2->rows == 128, "padded vocab 128 / 256");
        double worst = 0;
        for (int it = 0; it < ITERS; it++) worst = fmax(worst, fabs(r.loss[0][it] - one.loss[0][it]) / one.loss[0][it]);
        MT_EXPECT(worst < 1e-12, "lm loss rel diff %.3e", worst);
    }
    run_free(&r);
    run_free(&one);
}

/* Pipeline stages under tensor and sequence parallelism: every tp rank runs stage [0, 1) and stage
 * [1, 3) one after the other over the same tp group, handing its mt_gpt_rows rows of the residual
 * stream forward and their gradient back, as a pair of pipeline ranks would. The loss and the
 * gathered gradients equal the one-stage tp = 1 model's (the tied wte: the sum over both stages). */
typedef struct pp_run {
    mt_gpt_config cfg;
    int tp, sp, B, T;
    double loss;
    double *g[2][MAXTP];
    mt_param *table[2][MAXTP];
    int n[2][MAXTP];
} pp_run;

static mt_status pp_main(mt_comm *world, void *arg) {
    pp_run *r = (pp_run *)arg;
    int q = mt_comm_rank(world), B = r->B, T = r->T, N = B * T;
    mt_layer_par lp;
    memset(&lp, 0, sizeof lp);
    lp.tp_size = r->tp; lp.tp_rank = q; lp.tp = r->tp > 1 ? world : NULL; lp.sequence_parallel = r->sp;
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.dtype = MT_F64;
    mt_gpt m[2];
    mt_arena ar[2];
    mt_gpt_acts a[2];
    mt_gpt_scratch s[2];
    for (int k = 0; k < 2; k++) {
        MT_TRY(mt_gpt_init(&cx, &m[k], &r->cfg, &lp, k ? 1 : 0, k ? 3 : 1));
        float *init;
        MT_TRY(mt_calloc(sizeof(float) * m[k].num_params, (void **)&init));
        mt_gpt_init_values(&m[k], init);
        MT_TRY(mt_copy_from_f32(&cx, m[k].param_mem, init, m[k].num_params));
        mt_free(init);
        MT_TRY(mt_arena_init(&ar[k], cx.device, mt_gpt_acts_nbytes(&m[k], B, T, 1)));
        MT_TRY(mt_gpt_acts_alloc(&m[k], &ar[k], B, T, &a[k], &s[k]));
    }
    for (int i = 0; i < N; i++) {
        a[0].tokens[i] = (int32_t)(mt_rng_u32(7, 1, (uint64_t)i) % (uint32_t)r->cfg.vocab_size);
        a[1].targets[i] = (int32_t)(mt_rng_u32(7, 2, (uint64_t)i) % (uint32_t)r->cfg.vocab_size);
    }
    size_t rows = (size_t)mt_gpt_rows(&m[0], B, T), nbytes = rows * (size_t)r->cfg.n_embd * sizeof(double);
    double *dx;
    MT_TRY(mt_calloc(nbytes, (void **)&dx));
    MT_TRY(mt_gpt_forward(&cx, &m[0], &a[0], &s[0], 1.0f / N));
    memcpy(a[1].res[0], a[0].res[1], nbytes); /* the pipeline's send: this rank's rows only */
    MT_TRY(mt_gpt_forward(&cx, &m[1], &a[1], &s[1], 1.0f / N));
    MT_TRY(mt_gpt_backward(&cx, &m[1], &a[1], &s[1], NULL, dx));
    MT_TRY(mt_gpt_backward(&cx, &m[0], &a[0], &s[0], dx, NULL));
    if (q == 0) {
        r->loss = 0;
        for (int i = 0; i < N; i++) r->loss += ((double *)a[1].losses)[i] / N;
    }
    mt_free(dx);
    for (int k = 0; k < 2; k++) {
        MT_TRY(copy_out(&m[k], MT_F64, m[k].grad_mem, &r->g[k][q]));
        MT_TRY(mt_calloc(sizeof(mt_param) * (size_t)m[k].n_params, (void **)&r->table[k][q]));
        memcpy(r->table[k][q], m[k].params, sizeof(mt_param) * (size_t)m[k].n_params);
        r->n[k][q] = m[k].n_params;
        mt_gpt_acts_free(&a[k]);
        mt_arena_free(&ar[k]);
        mt_gpt_free(&m[k]);
    }
    return MT_OK;
}

static void pp_free(pp_run *r) {
    for (int k = 0; k < 2; k++)
        for (int q = 0; q < MAXTP; q++) {
            mt_free(r->g[k][q]);
            mt_free(r->table[k][q]);
        }
}

static void test_tp_pipeline_stages(void) {
    mt_gpt_config cfg = tp_config();
    cfg.n_layer = 3;
    pp_run one, r;
    memset(&one, 0, sizeof one);
    one.cfg = cfg; one.tp = 1; one.B = 2; one.T = 6;
    MT_CHECK(mt_host_run(1, 60.0, pp_main, &one, NULL));
    for (int tp = 2; tp <= 4; tp *= 2) {
        memset(&r, 0, sizeof r);
        r.cfg = cfg; r.tp = tp; r.sp = 1; r.B = 2; r.T = 6;
        MT_CHECK(mt_host_run(tp, 60.0, pp_main, &r, NULL));
        double worst = 0;
        int missing = 0, compared = 0;
        for (int k0 = 0; k0 < 2; k0++) /* every tensor of the tp=1 stages */
            for (int i = 0; i < one.n[k0][0]; i++) {
                const mt_param *p = &one.table[k0][0][i];
                if (k0 == 1 && !strcmp(p->name, "wte")) continue; /* the tied copy: summed below */
                double scale = 1e-30;
                for (int64_t e = 0; e < p->rows * p->cols; e++) scale = fmax(scale, fabs(one.g[k0][0][p->offset + (size_t)e]));
                for (int64_t row = 0; row < p->grows; row++)
                    for (int64_t col = 0; col < p->gcols; col++) {
                        double want = 0, got = 0;
                        for (int k = 0; k < 2; k++) {
                            double w = held_in(one.table[k][0], one.n[k][0], one.g[k][0], p->name, row, col);
                            if (!isnan(w)) want += w;
                            int found = 0;
                            for (int q = 0; q < tp && !found; q++) {
                                double v = held_in(r.table[k][q], r.n[k][q], r.g[k][q], p->name, row, col);
                                if (!isnan(v)) { got += v; found = 1; }
                            }
                            if (found == isnan(w)) missing++;
                        }
                        worst = fmax(worst, fabs(got - want) / scale);
                        compared++;
                    }
            }
        printf("    tp=%d +SP, 2 pipeline stages: loss %.10f vs %.10f, %d gradients, max diff %.1e\n", tp, r.loss, one.loss,
               compared, worst);
        MT_EXPECT_REL(r.loss, one.loss, 1e-12, 1e-30);
        MT_EXPECT(worst < 1e-10 && missing == 0 && compared > 1000, "tp=%d stages: diff %.3e, %d missing", tp, worst,
                  missing);
        pp_free(&r);
    }
    pp_free(&one);
}

/* The vocab-parallel cross-entropy, driven as the tp ranks would, equals mt_xent; bias-residual. */
static void test_tp_ops(void) {
    enum { N = 7, V = 45, VP = 48, TP = 4, VL = VP / TP };
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.dtype = MT_F64;
    double logits[N * VP], ref_loss[N], ref_d[N * VP], all[TP * 3 * N], loss[TP][N], d[N * VP];
    int32_t tg[N];
    for (int i = 0; i < N * VP; i++) logits[i] = 3.0 * mt_rng_normal(5, 0, (uint64_t)i);
    for (int i = 0; i < N; i++) tg[i] = (int32_t)(mt_rng_u32(5, 1, (uint64_t)i) % V);
    tg[2] = -1;      /* ignored */
    tg[4] = V - 1;   /* on the last rank, next to the padding */
    tg[5] = 0;
    MT_CHECK(mt_xent(&cx, ref_loss, ref_d, logits, tg, 0.25f, N, V, VP));
    double x[TP][N * VL];
    for (int q = 0; q < TP; q++) {
        for (int i = 0; i < N; i++) memcpy(&x[q][i * VL], &logits[i * VP + q * VL], sizeof(double) * VL);
        MT_CHECK(mt_vocab_xent_local(&cx, all + q * 3 * N, x[q], tg, N, V, VL, q * VL));
    }
    double worst = 0;
    for (int q = 0; q < TP; q++) {
        MT_CHECK(mt_vocab_xent_finish(&cx, loss[q], x[q], x[q], tg, all, 0.25f, N, V, VL, q * VL, TP));  /* in place */
        for (int i = 0; i < N; i++) {
            worst = fmax(worst, fabs(loss[q][i] - ref_loss[i]));
            memcpy(&d[i * VP + q * VL], &x[q][i * VL], sizeof(double) * VL);
        }
    }
    for (int i = 0; i < N * VP; i++) worst = fmax(worst, fabs(d[i] - ref_d[i]));
    MT_EXPECT(worst < 1e-13, "vocab-parallel xent vs xent: %.3e", worst);
    MT_EXPECT(loss[0][2] == 0 && ref_loss[2] == 0 && d[2 * VP] == 0, "an ignored target gives loss 0 and gradient 0");
    MT_EXPECT(ref_loss[4] > 0 && d[4 * VP + V] == 0, "padding columns get no gradient");
    /* bias + residual, in place */
    double out[6] = {1, 2, 3, 4, 5, 6}, bias[3] = {10, 20, 30}, res[6] = {100, 200, 300, 400, 500, 600};
    MT_CHECK(mt_bias_residual_fwd(&cx, out, out, bias, res, 2, 3));
    MT_EXPECT(out[0] == 111 && out[4] == 525 && out[5] == 636, "bias_residual %g %g %g", out[0], out[4], out[5]);
    MT_CHECK(mt_bias_residual_fwd(&cx, out, out, NULL, NULL, 2, 3));
    MT_EXPECT(out[0] == 111, "bias_residual without bias and residual is a copy");
}

/* One micro-batch's activations (n_acts = 2 minus n_acts = 1: no scratch) shrink as predicted: tp
 * halves the per-head and MLP buffers, sequence parallelism then halves the residual and norm ones.
 * Sizes chosen so every buffer is a multiple of the arena's 256-byte alignment. */
typedef struct mem_run { mt_gpt_config cfg; int sp; size_t acts[2]; } mem_run;

static mt_status mem_main(mt_comm *world, void *arg) {
    mem_run *r = (mem_run *)arg;
    mt_layer_par lp;
    memset(&lp, 0, sizeof lp);
    lp.tp_size = mt_comm_size(world); lp.tp_rank = mt_comm_rank(world); lp.tp = world; lp.sequence_parallel = r->sp;
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    mt_gpt m;
    MT_TRY(mt_gpt_init(&cx, &m, &r->cfg, &lp, 0, 0));
    if (lp.tp_rank == 0) r->acts[0] = mt_gpt_acts_nbytes(&m, 2, 64, 2) - mt_gpt_acts_nbytes(&m, 2, 64, 1);
    mt_gpt_free(&m);
    return MT_OK;
}

static void test_tp_activation_memory(void) {
    mem_run r1, r2, r2s;
    memset(&r1, 0, sizeof r1);
    r1.cfg = tp_config();
    r1.cfg.n_embd = 32; r1.cfg.n_head = 4; r1.cfg.n_kv_head = 4; r1.cfg.ffn_hidden = 128; r1.cfg.max_seq_len = 64;
    r2 = r1; r2s = r1; r2s.sp = 1;
    MT_CHECK(mt_host_run(1, 30.0, mem_main, &r1, NULL));
    MT_CHECK(mt_host_run(2, 30.0, mem_main, &r2, NULL));
    MT_CHECK(mt_host_run(2, 30.0, mem_main, &r2s, NULL));
    size_t N = 128, C = 32, L = 2, F = 128, QKV = 3 * C, H = 4, es = 4;
    size_t split = L * (N * QKV + N * C + N * H + 2 * N * F) * es;                /* qkv, atty, lse, fch x2 */
    size_t rows = ((L + 1 + 3 * L + 1) * N * C + (4 * L + 2) * N) * es;          /* res, ln1, r, ln2, lnf; stats */
    printf("    one micro-batch of activations: tp=1 %zu B, tp=2 %zu B, tp=2+SP %zu B\n", r1.acts[0], r2.acts[0],
           r2s.acts[0]);
    MT_EXPECT(r1.acts[0] - r2.acts[0] == split / 2, "tp=2 saves half of the split buffers: %zu vs %zu",
              r1.acts[0] - r2.acts[0], split / 2);
    MT_EXPECT(r2.acts[0] - r2s.acts[0] == rows / 2, "sequence parallel saves half of the row buffers: %zu vs %zu",
              r2.acts[0] - r2s.acts[0], rows / 2);
}

/* Bad input: sizes that tp does not divide, B*T that tp does not divide under sequence parallelism,
 * a missing communicator. */
typedef struct bad_run { int B, T; mt_status acts_st; } bad_run;

static mt_status bad_main(mt_comm *world, void *arg) {
    bad_run *r = (bad_run *)arg;
    mt_layer_par lp;
    memset(&lp, 0, sizeof lp);
    lp.tp_size = mt_comm_size(world); lp.tp_rank = mt_comm_rank(world); lp.tp = world; lp.sequence_parallel = 1;
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    mt_gpt_config cfg = tp_config();
    mt_gpt m;
    MT_TRY(mt_gpt_init(&cx, &m, &cfg, &lp, 0, 0));
    mt_arena measure;
    mt_gpt_acts a;
    mt_gpt_scratch s;
    memset(&measure, 0, sizeof measure);
    mt_status st = mt_gpt_acts_alloc(&m, &measure, r->B, r->T, &a, &s);
    if (lp.tp_rank == 0) r->acts_st = st;
    mt_gpt_free(&m);
    return MT_OK;
}

static void test_tp_bad_input(void) {
    mt_gpt_config c = tp_config();
    c.n_head = 6; c.n_kv_head = 6; c.n_embd = 24;
    MT_EXPECT(mt_gpt_config_resolve(&c, 4) == MT_ERR_ARG && log_has("attention heads 6") && log_has("size 4"),
              "heads: %s", last_log);
    c = tp_config();
    c.n_kv_head = 2;
    MT_EXPECT(mt_gpt_config_resolve(&c, 4) == MT_ERR_ARG && log_has("key/value heads 2"), "kv heads: %s", last_log);
    c = tp_config();
    c.ffn_hidden = 18;
    MT_EXPECT(mt_gpt_config_resolve(&c, 4) == MT_ERR_ARG && log_has("ffn hidden size 18"), "ffn: %s", last_log);
    c = tp_config();
    c.padded_vocab = 50;
    MT_EXPECT(mt_gpt_config_resolve(&c, 4) == MT_ERR_ARG && log_has("padded vocab 50"), "vocab: %s", last_log);
    c = tp_config();
    MT_EXPECT(mt_gpt_config_resolve(&c, 4) == MT_OK, "the test config resolves at tp 4");
    /* tp > 1 without its communicator */
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    mt_layer_par lp;
    memset(&lp, 0, sizeof lp);
    lp.tp_size = 2;
    mt_gpt m;
    MT_EXPECT(mt_gpt_init(&cx, &m, &c, &lp, 0, 0) == MT_ERR_ARG && log_has("tp communicator"), "no comm: %s", last_log);
    mt_gpt_free(&m);
    /* sequence parallel: B*T = 1*5 over tp = 2 */
    bad_run br = {1, 5, MT_OK};
    MT_CHECK(mt_host_run(2, 30.0, bad_main, &br, NULL));
    MT_EXPECT(br.acts_st == MT_ERR_ARG && log_has("B*T = 1*5") && log_has("tensor-parallel size 2"), "SP rows: %s",
              last_log);
    br.B = 2; br.acts_st = MT_ERR_INTERNAL;
    MT_CHECK(mt_host_run(2, 30.0, bad_main, &br, NULL));
    MT_EXPECT(br.acts_st == MT_OK, "B*T = 2*5 splits over tp = 2");
}

int main(void) {
    MT_RUN(test_tp_ops);
    MT_RUN(test_tp_equals_tp1_f64);
    MT_RUN(test_tp_equals_tp1_f32);
    MT_RUN(test_tp_default_padding);
    MT_RUN(test_tp_pipeline_stages);
    MT_RUN(test_tp_activation_memory);
    MT_RUN(test_tp_bad_input);
    return mt_test_summary("test_tp");
}
