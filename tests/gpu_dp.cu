/* tests/gpu_dp.cu — mt/ddp.h under NCCL, one process driving 2 GPUs (a thread each).
 *
 *   ./build/gpu_dp            equivalence on 2 GPUs, then step times (skips with a message on < 2 GPUs)
 *   ./build/gpu_dp --no-time  equivalence only
 *
 * Equivalence: for every sharding strategy, 2 GPUs with gradient accumulation (global batch =
 * micro * 2 * 2) train like 1 GPU with the same global batch for 5 steps: lm loss, gradient norm and
 * weights (key biases apart: their exact gradient is zero, see tests/test_dp.c). fp32: relative
 * difference < 1e-4 (GEMMs of other shapes may round differently); bf16 with fp32 gradient
 * reduction: loss within 2e-2.
 * Step time: GPT-2 small (d12), bf16, micro-batch 8 x 1024 tokens, median of 20 steps after 5 of
 * warm-up, 1 GPU against 2 GPUs (weak scaling: the same micro-batch per GPU), gradient reduction
 * overlapped with the backward or not; scaling efficiency = t(1 GPU) / t(2 GPUs).
 */
#include "megatron.h"
#include "mt_test.h"

#define ITERS 5
#define MAXG 8

typedef struct job {
    /* in */
    mt_gpt_config cfg;
    mt_dtype dt;
    int T, micro, n_micro, iters, warmup, timing;
    mt_ddp_config dc;
    /* out (rank 0) */
    double loss[ITERS], gnorm[ITERS];
    float *params;    /* (num_params) */
    size_t num_params;
    mt_param *ptab;
    int n_ptab;
    mt_gpt_config rcfg;
    double step_ms;   /* median */
    mt_ddp_stats stats;
} job;

static void fill(int32_t *tok, int32_t *tgt, int64_t s, int T, int V) {
    for (int t = 0; t < T; t++) {
        tok[t] = (int32_t)(mt_rng_u32(5, 1, (uint64_t)(s * T + t)) % (uint32_t)V);
        tgt[t] = (int32_t)(mt_rng_u32(5, 2, (uint64_t)(s * T + t)) % (uint32_t)V);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define TRY_GO(expr)                  \
    do {                              \
        st = (expr);                  \
        if (st != MT_OK) goto done;   \
    } while (0)

static mt_status rank_body(mt_comm *world, void *arg) {
    job *j = (job *)arg;
    int r = mt_comm_rank(world), dev = mt_comm_device(world);
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    MT_TRY(mt_gpu_init(&cx, dev, j->dt));
    mt_parallel par;
    mt_parallel_config pc;
    memset(&pc, 0, sizeof pc);
    mt_status st = mt_parallel_init(&par, world, &pc);
    if (st != MT_OK) { mt_gpu_destroy(&cx); return st; }
    mt_gpt m;
    mt_ddp d;
    mt_arena ar;
    mt_gpt_acts a;
    mt_gpt_scratch s;
    float *init = NULL, *losses = NULL;
    int32_t *tok = NULL, *tgt = NULL;
    double *times = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    memset(&m, 0, sizeof m);
    memset(&d, 0, sizeof d);
    memset(&ar, 0, sizeof ar);
    memset(&a, 0, sizeof a);
    int B = j->micro, T = j->T, dp = par.size.dp, G = B * dp * j->n_micro, V = j->cfg.vocab_size;
    TRY_GO(mt_gpt_init(&cx, &m, &j->cfg, NULL, 0, 0));
    TRY_GO(mt_calloc(m.num_params * sizeof(float), (void **)&init));
    mt_gpt_init_values(&m, init);
    TRY_GO(mt_copy_from_f32(&cx, m.param_mem, init, m.num_params));
    TRY_GO(mt_ddp_init(&cx, &d, &m, &par, &j->dc, init));
    TRY_GO(mt_arena_init(&ar, cx.device, mt_gpt_acts_nbytes(&m, B, T, 1)));
    TRY_GO(mt_gpt_acts_alloc(&m, &ar, B, T, &a, &s));
    TRY_GO(mt_calloc(sizeof(int32_t) * (size_t)B * T, (void **)&tok));
    TRY_GO(mt_calloc(sizeof(int32_t) * (size_t)B * T, (void **)&tgt));
    TRY_GO(mt_calloc(sizeof(float) * (size_t)B * T, (void **)&losses));
    TRY_GO(mt_calloc(sizeof(double) * (size_t)(j->iters + 1), (void **)&times));
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        st = mt_errorf(MT_ERR_CUDA, "cudaEventCreate");
        goto done;
    }
    {
        mt_optim_hp hp;
        memset(&hp, 0, sizeof hp);
        hp.lr = 1e-3f; hp.weight_decay = 0.1f; hp.clip_grad = 1.0f;
        if (j->timing) {  /* one batch, uploaded once: nothing but the step is timed */
            for (int b = 0; b < B; b++) fill(tok + b * T, tgt + b * T, (int64_t)r * B + b, T, V);
            cudaMemcpy(a.tokens, tok, sizeof(int32_t) * B * T, cudaMemcpyHostToDevice);
            cudaMemcpy(a.targets, tgt, sizeof(int32_t) * B * T, cudaMemcpyHostToDevice);
        }
        for (int it = 0; it < j->warmup + j->iters; it++) {
            double lsum = 0;
            cudaEventRecord(e0, (cudaStream_t)cx.stream);
            for (int mb = 0; mb < j->n_micro; mb++) {
                mt_ddp_set_sync(&d, mb == j->n_micro - 1);
                if (!j->timing) {
                    for (int b = 0; b < B; b++)
                        fill(tok + b * T, tgt + b * T, (int64_t)(it * j->n_micro + mb) * B * dp + (int64_t)par.dp_rank * B + b,
                             T, V);
                    cudaMemcpy(a.tokens, tok, sizeof(int32_t) * B * T, cudaMemcpyHostToDevice);
                    cudaMemcpy(a.targets, tgt, sizeof(int32_t) * B * T, cudaMemcpyHostToDevice);
                }
                TRY_GO(mt_gpt_forward(&cx, &m, &a, &s, 1.0f / (float)((size_t)G * T)));
                if (!j->timing) {
                    TRY_GO(mt_copy_to_f32(&cx, losses, a.losses, MT_F32, (size_t)B * T));
                    for (int i = 0; i < B * T; i++) lsum += losses[i];
                }
                TRY_GO(mt_gpt_backward(&cx, &m, &a, &s, NULL, NULL));
            }
            TRY_GO(mt_ddp_step(&cx, &d, &hp));
            cudaEventRecord(e1, (cudaStream_t)cx.stream);
            if (j->timing) {
                float ms = 0;
                cudaEventSynchronize(e1);
                cudaEventElapsedTime(&ms, e0, e1);
                if (it >= j->warmup) times[it - j->warmup] = ms;
                continue;
            }
            /* the loss of the global batch: a sum over dp ranks (an all-reduce of one double) */
            double *dl = NULL;
            TRY_GO(mt_device_alloc(cx.device, sizeof(double), (void **)&dl));
            cudaMemcpy(dl, &lsum, sizeof(double), cudaMemcpyHostToDevice);
            st = mt_comm_all_reduce(par.dp, dl, dl, 1, MT_F64, MT_SUM, cx.stream);
            cudaMemcpy(&lsum, dl, sizeof(double), cudaMemcpyDeviceToHost);
            mt_device_free(cx.device, dl);
            if (st != MT_OK) goto done;
            if (r == 0) {
                j->loss[it] = lsum / ((double)G * T);
                TRY_GO(mt_ddp_grad_norm(&cx, &d, &j->gnorm[it]));
            }
        }
    }
    if (j->timing) {
        qsort(times, (size_t)j->iters, sizeof(double), cmp_double);
        if (r == 0) j->step_ms = times[j->iters / 2];
    } else {
        TRY_GO(mt_ddp_gather_params(&cx, &d));
        if (r == 0) {
            j->num_params = m.num_params;
            TRY_GO(mt_calloc(sizeof(float) * m.num_params, (void **)&j->params));
            TRY_GO(mt_copy_to_f32(&cx, j->params, m.param_mem, j->dt, m.num_params));
            TRY_GO(mt_calloc(sizeof(mt_param) * (size_t)m.n_params, (void **)&j->ptab));
            memcpy(j->ptab, m.params, sizeof(mt_param) * (size_t)m.n_params);
            j->n_ptab = m.n_params;
            j->rcfg = m.cfg;
        }
    }
    if (r == 0) j->stats = d.stats;
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    mt_free(times);
    mt_free(tok);
    mt_free(tgt);
    mt_free(losses);
    mt_free(init);
    mt_gpt_acts_free(&a);
    mt_arena_free(&ar);
    mt_ddp_free(&d);
    mt_gpt_free(&m);
    mt_parallel_free(&par);
    mt_gpu_destroy(&cx);
    return st;
}

static int run(job *j, int ngpu) {
    mt_status sts[MAXG] = {MT_OK};
    mt_status st = mt_nccl_run(ngpu, 300.0, rank_body, j, sts);
    MT_EXPECT(st == MT_OK, "mt_nccl_run: %s", mt_status_str(st));
    for (int r = 0; r < ngpu; r++) MT_EXPECT(sts[r] == MT_OK, "GPU %d: %s", r, mt_status_str(sts[r]));
    return st == MT_OK;
}

static mt_gpt_config small_config(void) {
    mt_gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 2; c.n_embd = 128; c.n_head = 2; c.vocab_size = 500; c.max_seq_len = 64; c.seed = 3;
    return c;
}

/* weights compared like tests/test_dp.c: key biases apart */
static void compare(const job *got, const job *ref, double tol_loss, double tol_w, const char *what) {
    double wl = 0, wn = 0;
    for (int it = 0; it < ITERS; it++) {
        wl = fmax(wl, fabs(got->loss[it] - ref->loss[it]) / fabs(ref->loss[it]));
        wn = fmax(wn, fabs(got->gnorm[it] - ref->gnorm[it]) / fabs(ref->gnorm[it]));
    }
    int D = ref->rcfg.n_embd / ref->rcfg.n_head, Gq = ref->rcfg.n_head / ref->rcfg.n_kv_head;
    double e2 = 0, r2 = 0;
    for (int k = 0; k < ref->n_ptab; k++) {
        const mt_param *p = &ref->ptab[k];
        int qkv_b = strstr(p->name, "qkv_b") != NULL;
        for (int64_t i = 0; i < p->rows * p->cols; i++) {
            if (qkv_b && i / D % (Gq + 2) == Gq) continue;
            double x = got->params[p->offset + i], y = ref->params[p->offset + i];
            e2 += (x - y) * (x - y);
            r2 += y * y;
            if (x != x) e2 = INFINITY;
        }
    }
    double ww = sqrt(e2 / r2);
    printf("    %-40s loss %.1e  grad norm %.1e  weights %.1e\n", what, wl, wn, ww);
    MT_EXPECT(wl < tol_loss, "%s: loss differs by %.3e", what, wl);
    MT_EXPECT(wn < tol_w, "%s: grad norm differs by %.3e", what, wn);
    MT_EXPECT(ww < tol_w, "%s: weights differ by %.3e", what, ww);
}

static void equivalence(mt_dtype dt) {
    job ref;
    memset(&ref, 0, sizeof ref);
    ref.cfg = small_config(); ref.dt = dt; ref.T = 64; ref.micro = 4; ref.n_micro = 4; ref.iters = ITERS;
    ref.dc.grad_reduce_in_fp32 = dt == MT_BF16;
    if (!run(&ref, 1)) return;
    printf("    %s, 1 GPU: loss %.4f -> %.4f\n", mt_dtype_name(dt), ref.loss[0], ref.loss[ITERS - 1]);
    for (int s = 0; s <= 3; s++) {
        job j;
        memset(&j, 0, sizeof j);
        j.cfg = small_config(); j.dt = dt; j.T = 64; j.micro = 4; j.n_micro = 2; j.iters = ITERS;
        j.dc.strategy = (mt_shard_strategy)s;
        j.dc.bucket_size = 40000;
        j.dc.grad_reduce_in_fp32 = dt == MT_BF16;
        char what[80];
        snprintf(what, sizeof what, "%s 2 GPUs %s%s", mt_dtype_name(dt), mt_shard_strategy_name(j.dc.strategy),
                 j.dc.grad_reduce_in_fp32 ? " (fp32 reduce)" : "");
        if (run(&j, 2)) {
            if (dt == MT_F32) compare(&j, &ref, 1e-4, 1e-4, what);
            else compare(&j, &ref, 2e-2, 1.0, what);
        }
        mt_free(j.params);
        mt_free(j.ptab);
    }
    mt_free(ref.params);
    mt_free(ref.ptab);
}

static void test_gpu_dp_f32(void) { equivalence(MT_F32); }
static void test_gpu_dp_bf16(void) { equivalence(MT_BF16); }

static void test_gpu_dp_step_time(void) {
    mt_gpt_config c;
    memset(&c, 0, sizeof c);  /* GPT-2 small */
    c.n_layer = 12; c.n_embd = 768; c.n_head = 12; c.vocab_size = 50257; c.max_seq_len = 1024;
    job one;
    memset(&one, 0, sizeof one);
    one.cfg = c; one.dt = MT_BF16; one.T = 1024; one.micro = 8; one.n_micro = 1; one.iters = 20; one.warmup = 5;
    one.timing = 1;
    if (!run(&one, 1)) return;
    printf("    d12 bf16, micro-batch 8 x 1024: 1 GPU %.2f ms/step\n", one.step_ms);
    for (int s = 0; s <= 1; s++) {
        for (int ov = 1; ov >= 0; ov--) {
            job j = one;
            j.dc.strategy = (mt_shard_strategy)s;
            j.dc.no_overlap = !ov;
            if (!run(&j, 2)) continue;
            printf("    d12 bf16, 2 GPUs %-8s %-10s %.2f ms/step: scaling efficiency %.1f%%\n",
                   mt_shard_strategy_name(j.dc.strategy), ov ? "overlap" : "no overlap", j.step_ms,
                   100.0 * one.step_ms / j.step_ms);
            MT_EXPECT(j.step_ms > 0, "timed");
        }
    }
}

int main(int argc, char **argv) {
    int ndev = 0, timing = !(argc > 1 && !strcmp(argv[1], "--no-time"));
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 2) {
        cudaGetLastError();
        printf("gpu_dp: %d GPU(s) visible, 2 needed: skipped\ngpu_dp: 0 passed, 0 failed\n", ndev);
        return 0;
    }
    MT_RUN(test_gpu_dp_f32);
    MT_RUN(test_gpu_dp_bf16);
    if (timing) MT_RUN(test_gpu_dp_step_time);
    return mt_test_summary("gpu_dp");
}
