/* tests/gpu_tp.cu — tensor and sequence parallelism on GPUs: the tensor-parallel kernels against the
 * CPU reference, and the model at tp = 2 under NCCL against tp = 1.
 *
 *   make test-gpu                 (or ./build/gpu_tp; the model part needs 2 visible GPUs)
 *
 * 1. Kernels (GPU 0), f32 and bf16, inputs rounded to the dtype, outputs poisoned first:
 *    vocab-parallel cross-entropy driven as 4 ranks would (local statistics per column block,
 *    then the finishing pass on each block, in place) against the CPU f32 mt_xent; the row-parallel
 *    epilogue (partial + bias + residual) against the CPU op. Bounds: f32 1e-5, bf16 1e-2.
 * 2. Model (one process, one thread per GPU: mt_nccl_run): tp = 2, with and without sequence
 *    parallelism, against tp = 1 on GPU 0, same weights and batches: f32 lm loss over 5 AdamW
 *    iterations (relative < 1e-5) and the gathered f32 gradients after the first backward
 *    (||tp - tp1|| / ||tp1|| per tensor < 1e-4); bf16 lm loss over 50 iterations (relative < 2e-2).
 *    Head dim 64, so bf16 attention is the flash kernel.
 * 3. The communication overlap (mt/tensor_parallel.h: the backward's, and the row-parallel forward's
 *    pieces), on by default in part 2: each tp = 2
 *    run again with it off (lp.no_comm_overlap), against the run with it on: the same GEMMs and
 *    collectives, only on two streams, so the same numbers are expected; bounds f32 1e-6 (losses and
 *    every rank's gradient buffer), bf16 1e-2 (losses).
 *    And once with lp.comm_sm_margin = 16 (the GEMMs beside a collective planned for 16 SMs fewer:
 *    other cuBLASLt algorithms) against tp = 1, with part 2's bounds.
 */
#include "megatron.h"
#include "mt_test.h"

#define MAXTP 2

static double rel_err(const float *a, const float *b, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(e / fmax(r, 1e-30));
}
static float round_to(float x, mt_dtype dt) { return dt == MT_BF16 ? mt_bf16_to_f32(mt_f32_to_bf16(x)) : x; }

static void *to_dev(const mt_ctx *cx, const float *h, size_t n) {
    void *d = NULL;
    MT_CHECK(mt_device_alloc(cx->device, n * mt_dtype_size(cx->dtype) + 16, &d));
    MT_CHECK(mt_copy_from_f32(cx, d, h, n));
    return d;
}

/* ------------------------------------------------------------------ kernels */

static void test_tp_kernels(void) {
    mt_ctx base;
    memset(&base, 0, sizeof base);
    MT_CHECK(mt_gpu_init(&base, 0, MT_F32));
    enum { N = 37, V = 1000, VP = 1024, TP = 4, VL = VP / TP };
    for (int k = 0; k < 2; k++) {
        mt_ctx cx = base;
        cx.dtype = k ? MT_BF16 : MT_F32;
        double tol = k ? 1e-2 : 1e-5;
        mt_ctx cpu;
        memset(&cpu, 0, sizeof cpu);
        float *logits = (float *)calloc(N * VP, sizeof(float)), *ref_d = (float *)calloc(N * VP, sizeof(float));
        float ref_l[N], got_l[TP][N], *got_d = (float *)calloc(N * VP, sizeof(float)), *blk = (float *)calloc(N * VL, sizeof(float));
        int32_t tg[N];
        for (int i = 0; i < N * VP; i++) logits[i] = round_to(4.0f * mt_rng_normal(21, (uint64_t)k, (uint64_t)i), cx.dtype);
        for (int i = 0; i < N; i++) tg[i] = (int32_t)(mt_rng_u32(21, 9, (uint64_t)i) % V);
        tg[1] = -1; tg[2] = V - 1; tg[3] = VL;
        MT_CHECK(mt_xent(&cpu, ref_l, ref_d, logits, tg, 0.5f, N, V, VP));
        int32_t *dtg = NULL;
        MT_CHECK(mt_device_alloc(cx.device, sizeof tg, (void **)&dtg));
        cudaMemcpy(dtg, tg, sizeof tg, cudaMemcpyHostToDevice);
        void *all = NULL, *losses = NULL, *x[TP];
        MT_CHECK(mt_device_alloc(cx.device, sizeof(float) * TP * 3 * N, &all));
        MT_CHECK(mt_device_alloc(cx.device, sizeof(float) * N, &losses));
        cudaMemset(all, 0xff, sizeof(float) * TP * 3 * N); /* NaN poison */
        for (int q = 0; q < TP; q++) {
            for (int i = 0; i < N; i++) memcpy(&blk[i * VL], &logits[i * VP + q * VL], sizeof(float) * VL);
            x[q] = to_dev(&cx, blk, N * VL);
            MT_CHECK(mt_vocab_xent_local(&cx, (float *)all + q * 3 * N, x[q], dtg, N, V, VL, q * VL));
        }
        for (int q = 0; q < TP; q++) {
            cudaMemset(losses, 0xff, sizeof(float) * N);
            MT_CHECK(mt_vocab_xent_finish(&cx, losses, x[q], x[q], dtg, all, 0.5f, N, V, VL, q * VL, TP));
            MT_CHECK(mt_copy_to_f32(&cx, got_l[q], losses, MT_F32, N));
            MT_CHECK(mt_copy_to_f32(&cx, blk, x[q], cx.dtype, N * VL));
            for (int i = 0; i < N; i++) memcpy(&got_d[i * VP + q * VL], &blk[i * VL], sizeof(float) * VL);
        }
        double el = 0;
        for (int q = 0; q < TP; q++) el = fmax(el, rel_err(got_l[q], ref_l, N));
        double ed = rel_err(got_d, ref_d, (size_t)N * VP);
        printf("    vocab_xent %s: losses %.2e, dlogits %.2e (bound %.0e)\n", mt_dtype_name(cx.dtype), el, ed, tol);
        MT_EXPECT(el < tol && ed < tol, "vocab-parallel xent %s: losses %.3e dlogits %.3e", mt_dtype_name(cx.dtype), el, ed);
        /* the row-parallel epilogue: out = partial + bias + resid, odd C (scalar path) and C = 64 */
        for (int C = 63; C <= 64; C++) {
            int R = 29;
            float *p = (float *)calloc(R * C, sizeof(float)), *b = (float *)calloc(C, sizeof(float));
            float *r = (float *)calloc(R * C, sizeof(float)), *want = (float *)calloc(R * C, sizeof(float));
            float *got = (float *)calloc(R * C, sizeof(float));
            for (int i = 0; i < R * C; i++) {
                p[i] = round_to(mt_rng_normal(22, 1, (uint64_t)i), cx.dtype);
                r[i] = round_to(mt_rng_normal(22, 2, (uint64_t)i), cx.dtype);
            }
            for (int i = 0; i < C; i++) b[i] = round_to(mt_rng_normal(22, 3, (uint64_t)i), cx.dtype);
            MT_CHECK(mt_bias_residual_fwd(&cpu, want, p, b, r, R, C));
            void *dp = to_dev(&cx, p, R * C), *db = to_dev(&cx, b, C), *dr = to_dev(&cx, r, R * C);
            MT_CHECK(mt_bias_residual_fwd(&cx, dp, dp, db, dr, R, C));
            MT_CHECK(mt_copy_to_f32(&cx, got, dp, cx.dtype, (size_t)R * C));
            double e = rel_err(got, want, (size_t)R * C);
            MT_EXPECT(e < tol, "bias_residual %s C=%d: %.3e", mt_dtype_name(cx.dtype), C, e);
            mt_device_free(cx.device, dp); mt_device_free(cx.device, db); mt_device_free(cx.device, dr);
            free(p); free(b); free(r); free(want); free(got);
        }
        for (int q = 0; q < TP; q++) mt_device_free(cx.device, x[q]);
        mt_device_free(cx.device, all); mt_device_free(cx.device, losses); mt_device_free(cx.device, dtg);
        free(logits); free(ref_d); free(got_d); free(blk);
    }
    mt_gpu_destroy(&base);
}

/* ------------------------------------------------------------------ the model */

static mt_gpt_config gpu_config(void) {
    mt_gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 2; c.n_embd = 256; c.n_head = 4; c.n_kv_head = 2; c.ffn_hidden = 640;
    c.vocab_size = 1000; c.max_seq_len = 128; c.init_std = 0.02f; c.seed = 5;
    return c;
}

typedef struct run {
    mt_gpt_config cfg;
    mt_dtype dt;
    int tp, sp, no_overlap, sm_margin, B, T, iters;
    double loss[MAXTP][64];
    float *grads[MAXTP];
    size_t n_grads[MAXTP];
    int overlapped[MAXTP];  /* the backward took the overlapped path (mt__tp_overlap) */
    mt_param *table[MAXTP];
    int n_params[MAXTP];
} run;

static mt_status rank_main(mt_comm *world, void *arg) {
    run *r = (run *)arg;
    int rank = mt_comm_rank(world);
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    MT_TRY(mt_gpu_init(&cx, rank, r->dt));
    mt_parallel grid;
    mt_parallel_config pc;
    memset(&pc, 0, sizeof pc);
    pc.tp = r->tp;
    MT_TRY(mt_parallel_init(&grid, world, &pc));
    mt_layer_par lp;
    mt_layer_par_from(&lp, &grid, r->sp);
    lp.no_comm_overlap = r->no_overlap;
    lp.comm_sm_margin = r->sm_margin;
    mt_gpt m;
    MT_TRY(mt_gpt_init(&cx, &m, &r->cfg, &lp, 0, 0));
    r->overlapped[rank] = mt__tp_overlap(&cx, &m.par);
    float *init = (float *)calloc(m.num_params, sizeof(float));
    mt_gpt_init_values(&m, init);
    MT_TRY(mt_copy_from_f32(&cx, m.param_mem, init, m.num_params));
    mt_optim opt;
    MT_TRY(mt_optim_init(&cx, &opt, &m, init));
    free(init);
    int B = r->B, T = r->T, N = B * T;
    mt_arena ar;
    mt_gpt_acts a;
    mt_gpt_scratch s;
    MT_TRY(mt_arena_init(&ar, cx.device, mt_gpt_acts_nbytes(&m, B, T, 1)));
    MT_TRY(mt_gpt_acts_alloc(&m, &ar, B, T, &a, &s));
    int32_t *tok = (int32_t *)calloc(N, 4), *tgt = (int32_t *)calloc(N, 4);
    float *losses = (float *)calloc(N, sizeof(float));
    for (int it = 0; it < r->iters; it++) {
        for (int i = 0; i < N; i++) {
            tok[i] = (int32_t)(mt_rng_u32(300 + it % 4, 1, (uint64_t)i) % (uint32_t)r->cfg.vocab_size);
            tgt[i] = (int32_t)(mt_rng_u32(300 + it % 4, 2, (uint64_t)i) % (uint32_t)r->cfg.vocab_size);
        }
        cudaMemcpy(a.tokens, tok, 4 * (size_t)N, cudaMemcpyHostToDevice);
        cudaMemcpy(a.targets, tgt, 4 * (size_t)N, cudaMemcpyHostToDevice);
        MT_TRY(mt_gpt_forward(&cx, &m, &a, &s, 1.0f / N));
        MT_TRY(mt_gpt_backward(&cx, &m, &a, &s, NULL, NULL));
        MT_TRY(mt_copy_to_f32(&cx, losses, a.losses, MT_F32, (size_t)N));
        double l = 0;
        for (int i = 0; i < N; i++) l += losses[i];
        r->loss[rank][it] = l / N;
        if (it == 0 && r->dt == MT_F32) {
            r->grads[rank] = (float *)calloc(m.num_params, sizeof(float));
            r->n_grads[rank] = m.num_params;
            MT_TRY(mt_copy_to_f32(&cx, r->grads[rank], m.grad_mem, m.dtype, m.num_params));
        }
        mt_optim_hp hp;
        memset(&hp, 0, sizeof hp);
        hp.lr = 1e-3f; hp.weight_decay = 0.1f; hp.clip_grad = 1.0f;
        MT_TRY(mt_optim_step(&cx, &opt, &m, &hp));
    }
    MT_TRY(mt_comm_wait(lp.tp ? lp.tp : world, cx.stream));
    r->table[rank] = (mt_param *)calloc(m.n_params, sizeof(mt_param));
    memcpy(r->table[rank], m.params, sizeof(mt_param) * m.n_params);
    r->n_params[rank] = m.n_params;
    free(tok); free(tgt); free(losses);
    mt_optim_free(&opt);
    mt_gpt_acts_free(&a);
    mt_arena_free(&ar);
    mt_gpt_free(&m);
    mt_parallel_free(&grid);
    mt_gpu_destroy(&cx);
    return MT_OK;
}

static int do_run_margin(run *r, mt_dtype dt, int tp, int sp, int no_overlap, int sm_margin, int iters) {
    memset(r, 0, sizeof *r);
    r->cfg = gpu_config(); r->dt = dt; r->tp = tp; r->sp = sp; r->no_overlap = no_overlap; r->sm_margin = sm_margin;
    r->B = 4; r->T = 64; r->iters = iters;
    mt_status st = mt_nccl_run(tp, 120.0, rank_main, r, NULL);
    MT_EXPECT(st == MT_OK, "tp=%d sp=%d overlap %s SM margin %d %s: %s", tp, sp, no_overlap ? "off" : "on", sm_margin,
              mt_dtype_name(dt), mt_status_str(st));
    return st == MT_OK;
}
static int do_run(run *r, mt_dtype dt, int tp, int sp, int no_overlap, int iters) {
    return do_run_margin(r, dt, tp, sp, no_overlap, 0, iters);
}

static void run_free(run *r) {
    for (int q = 0; q < MAXTP; q++) { free(r->grads[q]); free(r->table[q]); }
}

/* per tensor ||gathered tp grads - tp1 grads|| / ||tp1 grads||, the worst tensor */
static double grads_diff(const run *one, const run *r) {
    double worst = 0;
    for (int i = 0; i < one->n_params[0]; i++) {
        const mt_param *p = &one->table[0][i];
        double e = 0, n = 0;
        for (int q = 0; q < r->tp; q++) {
            const mt_param *h = NULL;
            for (int j = 0; j < r->n_params[q]; j++)
                if (!strcmp(r->table[q][j].name, p->name)) h = &r->table[q][j];
            if (!h) return INFINITY;
            for (int64_t a = 0; a < h->rows; a++)
                for (int64_t b = 0; b < h->cols; b++) {
                    double want = one->grads[0][p->offset + (size_t)((h->row0 + a) * p->cols + h->col0 + b)];
                    double got = r->grads[q][h->offset + (size_t)(a * h->cols + b)];
                    e += (got - want) * (got - want);
                    n += want * want;
                }
        }
        if (n > 0) worst = fmax(worst, sqrt(e / n));
    }
    return worst;
}

/* r (tp = 2) against one (tp = 1): lm loss over every iteration (relative < tol) and, in f32, the
 * gathered gradients after the first backward (< 1e-4 per tensor). */
static void check_vs_tp1(const run *one, const run *r, double tol, const char *label) {
    double worst = 0;
    for (int q = 0; q < 2; q++)
        for (int it = 0; it < r->iters; it++)
            worst = fmax(worst, fabs(r->loss[q][it] - one->loss[0][it]) / one->loss[0][it]);
    double dg = r->dt == MT_F32 ? grads_diff(one, r) : 0;
    printf("    %s tp=2%s%s: lm loss %.5f -> %.5f over %d iterations, max rel diff %.2e; gathered grads %.2e\n",
           mt_dtype_name(r->dt), r->sp ? " +SP" : "", label, one->loss[0][0], one->loss[0][r->iters - 1], r->iters,
           worst, dg);
    MT_EXPECT(worst < tol, "%s tp=2 sp=%d%s: loss rel diff %.3e", mt_dtype_name(r->dt), r->sp, label, worst);
    MT_EXPECT(dg < 1e-4, "%s tp=2 sp=%d%s: gradients differ by %.3e", mt_dtype_name(r->dt), r->sp, label, dg);
}

static void test_tp_model(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 2) {
        cudaGetLastError();
        printf("    skipped: the model test needs 2 GPUs, %d visible\n", ndev);
        MT_EXPECT(1, "skipped");
        return;
    }
    for (int k = 0; k < 2; k++) {
        mt_dtype dt = k ? MT_BF16 : MT_F32;
        int iters = k ? 50 : 5;
        double tol = k ? 2e-2 : 1e-5;
        run one, r;
        if (!do_run(&one, dt, 1, 0, 0, iters)) return;
        for (int sp = 0; sp <= 1; sp++) {
            if (do_run(&r, dt, 2, sp, 0, iters)) {
                check_vs_tp1(&one, &r, tol, "");
                MT_EXPECT(r.overlapped[0] && r.overlapped[1], "tp=2 sp=%d: the backward did not overlap", sp);
                run off;
                if (do_run(&off, dt, 2, sp, 1, iters)) {
                    MT_EXPECT(!off.overlapped[0] && !off.overlapped[1], "tp=2 sp=%d: overlap not switched off", sp);
                    double lo = 0, go = 0, bound = dt == MT_F32 ? 1e-6 : 1e-2;
                    for (int q = 0; q < 2; q++) {
                        for (int it = 0; it < iters; it++)
                            lo = fmax(lo, fabs(r.loss[q][it] - off.loss[q][it]) / off.loss[q][it]);
                        if (dt == MT_F32)
                            go = r.n_grads[q] == off.n_grads[q]
                                     ? fmax(go, rel_err(r.grads[q], off.grads[q], r.n_grads[q])) : INFINITY;
                    }
                    printf("    %s tp=2%s: overlap on vs off: loss max rel diff %.2e, grads %.2e (bound %.0e)\n",
                           mt_dtype_name(dt), sp ? " +SP" : "", lo, go, bound);
                    MT_EXPECT(lo < bound, "%s tp=2 sp=%d: overlap on/off losses differ by %.3e", mt_dtype_name(dt),
                              sp, lo);
                    MT_EXPECT(go < bound, "%s tp=2 sp=%d: overlap on/off gradients differ by %.3e",
                              mt_dtype_name(dt), sp, go);
                }
                run_free(&off);
                /* GEMMs beside the collectives planned for 16 SMs fewer: other algorithms, the same model */
                run sm;
                if (do_run_margin(&sm, dt, 2, sp, 0, 16, iters)) check_vs_tp1(&one, &sm, tol, ", SM margin 16");
                run_free(&sm);
            }
            run_free(&r);
        }
        run_free(&one);
    }
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("gpu_tp: no GPU visible, nothing tested\n");
        return 1;
    }
    MT_RUN(test_tp_kernels);
    MT_RUN(test_tp_model);
    return mt_test_summary("gpu_tp");
}
