/* tests/test_gpt.c — the GPT model: whole-model gradients against finite differences (float64),
 * pipeline stages equal to the single-stage model, layout-independent initialisation, config errors,
 * a few optimizer steps that lower the loss, and the classifier in chunks of rows equal to one chunk. */
#include "megatron.h"
#include "mt_test.h"

static mt_gpt_config tiny_config(void) {
    mt_gpt_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 2; c.n_embd = 8; c.n_head = 2; c.vocab_size = 11; c.padded_vocab = 16; c.max_seq_len = 6;
    c.ffn_hidden = 12; c.init_std = 0.3f; c.seed = 7;
    return c;
}

/* A model stage with initialised weights (values in f64 from the f32 init) and one micro-batch. */
typedef struct fixture {
    mt_ctx cx;
    mt_gpt m;
    mt_arena arena;
    mt_gpt_acts a;
    mt_gpt_scratch s;
} fixture;

/* head: the classifier's chunk of rows (m.head_chunk_rows, 0 = automatic) */
static void fixture_init_head(fixture *f, const mt_gpt_config *cfg, mt_dtype dt, int l0, int l1, int B, int T,
                              int head) {
    memset(f, 0, sizeof *f);
    f->cx.dtype = dt;
    MT_CHECK(mt_gpt_init(&f->cx, &f->m, cfg, NULL, l0, l1));
    f->m.head_chunk_rows = head;
    float *init;
    MT_CHECK(mt_calloc(f->m.num_params * sizeof(float), (void **)&init));
    mt_gpt_init_values(&f->m, init);
    MT_CHECK(mt_copy_from_f32(&f->cx, f->m.param_mem, init, f->m.num_params));
    mt_free(init);
    MT_CHECK(mt_arena_init(&f->arena, f->cx.device, mt_gpt_acts_nbytes(&f->m, B, T, 1)));
    MT_CHECK(mt_gpt_acts_alloc(&f->m, &f->arena, B, T, &f->a, &f->s));
}

static void fixture_init(fixture *f, const mt_gpt_config *cfg, mt_dtype dt, int l0, int l1, int B, int T) {
    fixture_init_head(f, cfg, dt, l0, l1, B, T, 0);
}

static void fixture_free(fixture *f) {
    mt_gpt_acts_free(&f->a);
    mt_arena_free(&f->arena);
    mt_gpt_free(&f->m);
}

static void random_batch(fixture *f, uint64_t seed) {
    int N = f->a.B * f->a.T;
    for (int i = 0; i < N; i++) {
        f->a.tokens[i] = (int32_t)(mt_rng_u32(seed, 1, (uint64_t)i) % (uint32_t)f->m.cfg.vocab_size);
        f->a.targets[i] = (int32_t)(mt_rng_u32(seed, 2, (uint64_t)i) % (uint32_t)f->m.cfg.vocab_size);
    }
}

static double mean_loss_f64(fixture *f) {
    int N = f->a.B * f->a.T;
    double s = 0;
    for (int i = 0; i < N; i++) s += ((double *)f->a.losses)[i];
    return s / N;
}

/* The backward of the whole model equals central differences of the mean loss, every parameter. */
static void test_gpt_gradients_fd(void) {
    mt_gpt_config cfg = tiny_config();
    fixture f;
    int B = 2, T = 5, N = B * T;
    fixture_init(&f, &cfg, MT_F64, 0, 0, B, T);
    random_batch(&f, 3);
    MT_CHECK(mt_gpt_forward(&f.cx, &f.m, &f.a, &f.s, 1.0f / N));
    MT_CHECK(mt_gpt_backward(&f.cx, &f.m, &f.a, &f.s, NULL, NULL));
    double *p = (double *)f.m.param_mem, *g = (double *)f.m.grad_mem;
    double err2 = 0, ref2 = 0, worst = 0;
    int checked = 0;
    for (int i = 0; i < f.m.n_params; i++) {
        const mt_param *pp = &f.m.params[i];
        for (int64_t k = 0; k < pp->rows * pp->cols; k++) {
            size_t j = pp->offset + (size_t)k;
            double save = p[j], h = 1e-5;
            p[j] = save + h;
            MT_CHECK(mt_gpt_forward(&f.cx, &f.m, &f.a, &f.s, 0.0f));
            double lp = mean_loss_f64(&f);
            p[j] = save - h;
            MT_CHECK(mt_gpt_forward(&f.cx, &f.m, &f.a, &f.s, 0.0f));
            double lm = mean_loss_f64(&f);
            p[j] = save;
            double fd = (lp - lm) / (2 * h), d = fabs(fd - g[j]);
            err2 += d * d;
            ref2 += fd * fd;
            double rel = d / fmax(fabs(fd), 1e-6);
            if (rel > worst && fabs(fd) > 1e-6) worst = rel;
            checked++;
        }
    }
    double rel = sqrt(err2 / ref2);
    printf("    %d parameters: ||g - fd|| / ||fd|| = %.2e, worst element %.2e\n", checked, rel, worst);
    MT_EXPECT(rel < 1e-6, "whole-model gradient rel error %.3e", rel);
    MT_EXPECT(worst < 1e-4, "worst element rel error %.3e", worst);
    MT_EXPECT(checked > 1000, "checked %d parameters", checked);
    fixture_free(&f);
}

static const mt_param *find_param(const mt_gpt *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (!strcmp(m->params[i].name, name)) return &m->params[i];
    return NULL;
}

/* Two pipeline stages (layers [0,1) and [1,3)) give the loss and gradients of the one-stage model. */
static void test_gpt_pipeline_stages(void) {
    mt_gpt_config cfg = tiny_config();
    cfg.n_layer = 3;
    int B = 2, T = 6, N = B * T;
    fixture one, s0, s1;
    fixture_init(&one, &cfg, MT_F64, 0, 0, B, T);
    fixture_init(&s0, &cfg, MT_F64, 0, 1, B, T);
    fixture_init(&s1, &cfg, MT_F64, 1, 3, B, T);
    MT_EXPECT(s0.m.first && !s0.m.last && !s1.m.first && s1.m.last, "stage roles");
    random_batch(&one, 11);
    memcpy(s0.a.tokens, one.a.tokens, sizeof(int32_t) * N);
    memcpy(s1.a.targets, one.a.targets, sizeof(int32_t) * N);
    /* the one-stage model */
    MT_CHECK(mt_gpt_forward(&one.cx, &one.m, &one.a, &one.s, 1.0f / N));
    MT_CHECK(mt_gpt_backward(&one.cx, &one.m, &one.a, &one.s, NULL, NULL));
    /* the pipeline: send the residual stream forward, its gradient back */
    size_t act_bytes = (size_t)N * cfg.n_embd * sizeof(double);
    double *dx;
    MT_CHECK(mt_calloc(act_bytes, (void **)&dx));
    MT_CHECK(mt_gpt_forward(&s0.cx, &s0.m, &s0.a, &s0.s, 1.0f / N));
    memcpy(s1.a.res[0], s0.a.res[1], act_bytes);
    MT_CHECK(mt_gpt_forward(&s1.cx, &s1.m, &s1.a, &s1.s, 1.0f / N));
    MT_CHECK(mt_gpt_backward(&s1.cx, &s1.m, &s1.a, &s1.s, NULL, dx));
    MT_CHECK(mt_gpt_backward(&s0.cx, &s0.m, &s0.a, &s0.s, dx, NULL));
    MT_EXPECT_REL(mean_loss_f64(&s1), mean_loss_f64(&one), 1e-12, 1e-30);
    /* every parameter of the one-stage model has the same value and gradient in its stage; the tied
     * wte's gradient is the sum over the first and last stage (the embedding group's all-reduce) */
    double max_rel = 0;
    int compared = 0;
    for (int i = 0; i < one.m.n_params; i++) {
        const mt_param *p = &one.m.params[i];
        const mt_param *q0 = find_param(&s0.m, p->name), *q1 = find_param(&s1.m, p->name);
        MT_EXPECT(q0 || q1, "parameter %s in no stage", p->name);
        for (int64_t k = 0; k < p->rows * p->cols; k++) {
            double want = ((double *)one.m.grad_mem)[p->offset + k], got = 0;
            if (q0) got += ((double *)s0.m.grad_mem)[q0->offset + k];
            if (q1) got += ((double *)s1.m.grad_mem)[q1->offset + k];
            const mt_param *q = q0 ? q0 : q1;
            const fixture *fs = q0 ? &s0 : &s1;
            MT_EXPECT(((double *)fs->m.param_mem)[q->offset + k] == ((double *)one.m.param_mem)[p->offset + k],
                      "%s[%lld] initialised differently", p->name, (long long)k);
            double rel = fabs(got - want) / fmax(fabs(want), 1e-12);
            if (rel > max_rel) max_rel = rel;
            compared++;
        }
    }
    printf("    %d gradients compared, max rel diff %.2e\n", compared, max_rel);
    MT_EXPECT(max_rel < 1e-10, "pipeline gradients differ by %.3e", max_rel);
    mt_free(dx);
    fixture_free(&one); fixture_free(&s0); fixture_free(&s1);
}

/* The float32 model agrees with the float64 one, and AdamW steps lower the loss on a fixed batch. */
static void test_gpt_f32_and_training(void) {
    mt_gpt_config cfg = tiny_config();
    cfg.init_std = 0.02f;
    int B = 2, T = 6, N = B * T;
    fixture f32, f64;
    fixture_init(&f32, &cfg, MT_F32, 0, 0, B, T);
    fixture_init(&f64, &cfg, MT_F64, 0, 0, B, T);
    random_batch(&f32, 5);
    random_batch(&f64, 5);
    /* losses only: a training forward would already add the head's gradient */
    MT_CHECK(mt_gpt_forward(&f32.cx, &f32.m, &f32.a, &f32.s, 0.0f));
    MT_CHECK(mt_gpt_forward(&f64.cx, &f64.m, &f64.a, &f64.s, 0.0f));
    double l32 = 0;
    for (int i = 0; i < N; i++) l32 += ((float *)f32.a.losses)[i];
    l32 /= N;
    MT_EXPECT_REL(l32, mean_loss_f64(&f64), 1e-6, 1e-30);
    MT_EXPECT(fabs(mean_loss_f64(&f64) - log(11.0)) < 0.1, "initial loss %.4f is near ln(V) %.4f",
              mean_loss_f64(&f64), log(11.0));
    float *init;
    MT_CHECK(mt_calloc(f64.m.num_params * sizeof(float), (void **)&init));
    mt_gpt_init_values(&f64.m, init);
    mt_optim opt;
    MT_CHECK(mt_optim_init(&f64.cx, &opt, &f64.m, init));
    mt_free(init);
    double first = mean_loss_f64(&f64), last = first;
    for (int step = 0; step < 30; step++) {
        MT_CHECK(mt_gpt_forward(&f64.cx, &f64.m, &f64.a, &f64.s, 1.0f / N));
        last = mean_loss_f64(&f64);
        MT_CHECK(mt_gpt_backward(&f64.cx, &f64.m, &f64.a, &f64.s, NULL, NULL));
        mt_optim_hp hp = {0};
        hp.lr = 1e-2f; hp.weight_decay = 0.1f; hp.clip_grad = 1.0f;
        MT_CHECK(mt_optim_step(&f64.cx, &opt, &f64.m, &hp));
        double gn;
        MT_CHECK(mt_optim_grad_norm(&f64.cx, &opt, &gn));
        MT_EXPECT(gn > 0 && isfinite(gn), "grad norm %g", gn);
    }
    printf("    30 AdamW steps on one batch: loss %.4f -> %.4f\n", first, last);
    MT_EXPECT(last < 0.5 * first, "loss %.4f did not halve from %.4f", last, first);
    double zero = 0;
    for (size_t i = 0; i < f64.m.num_params; i++) zero += fabs(((double *)f64.m.grad_mem)[i]);
    MT_EXPECT(zero == 0, "gradients are zeroed after the step (sum |g| = %g)", zero);
    mt_optim_free(&opt);
    fixture_free(&f32); fixture_free(&f64);
}

/* Parameter count, layout alignment and config validation. */
static void test_gpt_config(void) {
    mt_gpt_config c;
    memset(&c, 0, sizeof c);
    MT_EXPECT(mt_gpt_config_resolve(&c, 1) == MT_OK, "defaults resolve");
    MT_EXPECT(c.n_layer == 12 && c.n_embd == 768 && c.n_head == 12 && c.padded_vocab == 50304, "GPT-2 small defaults");
    /* GPT-2 small: 124.4M parameters with the padded vocab, 123.6M without positions */
    MT_EXPECT(mt_gpt_num_params(&c, 1) == 124475904, "params %lld", (long long)mt_gpt_num_params(&c, 1));
    mt_gpt_config bad = c;
    bad.n_embd = 770;
    MT_EXPECT(mt_gpt_config_resolve(&bad, 1) == MT_ERR_ARG, "hidden not divisible by heads");
    bad = c;
    bad.n_head = -1;
    MT_EXPECT(mt_gpt_config_resolve(&bad, 1) == MT_ERR_ARG, "negative heads");
    bad = c;
    MT_EXPECT(mt_gpt_config_resolve(&bad, 5) == MT_ERR_ARG, "tp 5 does not divide 12 heads");
    mt_gpt_config t = tiny_config();
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    mt_gpt m;
    MT_EXPECT(mt_gpt_init(&cx, &m, &t, NULL, 1, 1) == MT_ERR_ARG, "empty stage rejected");
    MT_CHECK(mt_gpt_init(&cx, &m, &t, NULL, 0, 0));
    int aligned = 1;
    for (int i = 0; i < m.n_params; i++) aligned &= m.params[i].offset % 64 == 0;
    MT_EXPECT(aligned, "every tensor starts on a 64-element boundary");
    MT_EXPECT(!strcmp(m.params[0].name, "lnf.bias") && !strcmp(m.params[m.n_params - 1].name, "wte"),
              "backward order: head first (%s), embedding last (%s)", m.params[0].name, m.params[m.n_params - 1].name);
    mt_gpt_free(&m);
}

/* The hooks: grads_ready reports a growing prefix of the gradient buffer that ends with all of it,
 * and every gradient in the reported prefix is final (equal to its value after the backward). */
typedef struct hook_log {
    size_t ready[16];
    int n_ready, n_before_fwd, n_before_bwd;
    double *snap; /* gradient values at each report */
    size_t snap_n;
} hook_log;

static mt_status on_ready(void *user, const mt_gpt *m, size_t n_ready) {
    hook_log *h = (hook_log *)user;
    if (h->n_ready < 16) {
        memcpy(h->snap + (size_t)h->n_ready * h->snap_n, m->grad_mem, sizeof(double) * h->snap_n);
        h->ready[h->n_ready++] = n_ready;
    }
    return MT_OK;
}

static mt_status on_block(void *user, const mt_gpt *m, int layer, int backward) {
    hook_log *h = (hook_log *)user;
    (void)m; (void)layer;
    if (backward) h->n_before_bwd++; else h->n_before_fwd++;
    return MT_OK;
}

static void test_gpt_hooks(void) {
    mt_gpt_config cfg = tiny_config();
    fixture f;
    int B = 2, T = 5, N = B * T;
    fixture_init(&f, &cfg, MT_F64, 0, 0, B, T);
    random_batch(&f, 9);
    hook_log h;
    memset(&h, 0, sizeof h);
    h.snap_n = f.m.num_params;
    MT_CHECK(mt_calloc(sizeof(double) * 16 * h.snap_n, (void **)&h.snap));
    f.m.hooks.user = &h;
    f.m.hooks.grads_ready = on_ready;
    f.m.hooks.before_block = on_block;
    MT_CHECK(mt_gpt_forward(&f.cx, &f.m, &f.a, &f.s, 1.0f / N));
    MT_CHECK(mt_gpt_backward(&f.cx, &f.m, &f.a, &f.s, NULL, NULL));
    MT_EXPECT(h.n_before_fwd == cfg.n_layer && h.n_before_bwd == cfg.n_layer, "before_block %d/%d times",
              h.n_before_fwd, h.n_before_bwd);
    MT_EXPECT(h.n_ready == cfg.n_layer + 2, "grads_ready called %d times", h.n_ready);
    MT_EXPECT(h.ready[h.n_ready - 1] == f.m.num_params, "last report covers the buffer");
    int monotone = 1, final_ok = 1;
    const double *g = (const double *)f.m.grad_mem;
    for (int i = 0; i < h.n_ready; i++) {
        if (i && h.ready[i] < h.ready[i - 1]) monotone = 0;
        for (size_t k = 0; k < h.ready[i]; k++)
            if (h.snap[(size_t)i * h.snap_n + k] != g[k]) final_ok = 0;
    }
    MT_EXPECT(monotone, "reported prefixes grow");
    MT_EXPECT(final_ok, "every reported gradient is already final");
    mt_free(h.snap);
    fixture_free(&f);
}

static double at(const fixture *f, const void *p, size_t i) {
    return f->m.dtype == MT_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
}

/* The head in chunks of rows that do not divide B*T (20 of 48) gives the losses and every gradient
 * of the head in one chunk, in f64 and f32 (float reordering only); the scratch holds 20 rows of
 * logits; an evaluation forward leaves the gradients alone, mt_gpt_logits recomputes any rows, and
 * a backward after it is refused. */
static void test_gpt_head_chunks(void) {
    mt_gpt_config cfg = tiny_config();
    cfg.max_seq_len = 8;
    int B = 6, T = 8, N = B * T;
    for (int d = 0; d < 2; d++) {
        mt_dtype dt = d ? MT_F32 : MT_F64;
        fixture one, ch;
        fixture_init_head(&one, &cfg, dt, 0, 0, B, T, N);
        fixture_init_head(&ch, &cfg, dt, 0, 0, B, T, 20);
        size_t es = mt_dtype_size(dt);
        MT_EXPECT(one.s.head_rows == N && ch.s.head_rows == 20, "head rows %d, %d", one.s.head_rows, ch.s.head_rows);
        MT_EXPECT(mt_gpt_acts_nbytes(&one.m, B, T, 1) - mt_gpt_acts_nbytes(&ch.m, B, T, 1) >= (size_t)(N - 20) *
                  ch.m.Vp * es - MT_ARENA_ALIGN, "scratch smaller by 28 rows of logits");
        random_batch(&one, 21);
        memcpy(ch.a.tokens, one.a.tokens, sizeof(int32_t) * N);
        memcpy(ch.a.targets, one.a.targets, sizeof(int32_t) * N);
        ch.a.targets[7] = one.a.targets[7] = -1; /* an ignored position */
        for (int step = 0; step < 2; step++) { /* two micro-batches: the wte gradient accumulates */
            MT_CHECK(mt_gpt_forward(&one.cx, &one.m, &one.a, &one.s, 1.0f / N));
            MT_CHECK(mt_gpt_backward(&one.cx, &one.m, &one.a, &one.s, NULL, NULL));
            MT_CHECK(mt_gpt_forward(&ch.cx, &ch.m, &ch.a, &ch.s, 1.0f / N));
            MT_CHECK(mt_gpt_backward(&ch.cx, &ch.m, &ch.a, &ch.s, NULL, NULL));
        }
        double worst_loss = 0, worst_grad = 0;
        for (int i = 0; i < N; i++) {
            double want = at(&one, one.a.losses, (size_t)i), got = at(&ch, ch.a.losses, (size_t)i);
            worst_loss = fmax(worst_loss, fabs(got - want) / fmax(fabs(want), 1e-30));
        }
        for (int i = 0; i < one.m.n_params; i++) { /* per tensor: max |diff| / max |gradient| */
            const mt_param *p = &one.m.params[i];
            double dmax = 0, gmax = 0;
            for (int64_t k = 0; k < p->rows * p->cols; k++) {
                double want = at(&one, one.m.grad_mem, p->offset + (size_t)k);
                dmax = fmax(dmax, fabs(at(&ch, ch.m.grad_mem, p->offset + (size_t)k) - want));
                gmax = fmax(gmax, fabs(want));
            }
            MT_EXPECT(gmax > 0, "%s has a gradient", p->name);
            worst_grad = fmax(worst_grad, dmax / gmax);
        }
        printf("    %s, chunks of 20 of %d rows vs one: losses %.2e, gradients %.2e (max rel)\n", mt_dtype_name(dt), N,
               worst_loss, worst_grad);
        MT_EXPECT(worst_loss < 1e-5 && worst_grad < 1e-5, "%s chunked head: losses %.3e gradients %.3e",
                  mt_dtype_name(dt), worst_loss, worst_grad);
        /* evaluation: same losses, gradients untouched, any row's logits, no backward after it */
        size_t gbytes = ch.m.num_params * es;
        void *g0;
        MT_CHECK(mt_calloc(gbytes, &g0));
        memcpy(g0, ch.m.grad_mem, gbytes);
        MT_CHECK(mt_gpt_forward(&ch.cx, &ch.m, &ch.a, &ch.s, 0.0f));
        MT_CHECK(mt_gpt_forward(&one.cx, &one.m, &one.a, &one.s, 0.0f));
        MT_EXPECT(!memcmp(g0, ch.m.grad_mem, gbytes), "an evaluation forward leaves the gradients alone");
        double worst_eval = 0, worst_logit = 0;
        for (int i = 0; i < N; i++) {
            double want = at(&one, one.a.losses, (size_t)i);
            worst_eval = fmax(worst_eval, fabs(at(&ch, ch.a.losses, (size_t)i) - want) / fmax(fabs(want), 1e-30));
        }
        void *row = NULL;
        MT_CHECK(mt_gpt_logits(&ch.cx, &ch.m, &ch.a, &ch.s, 13, 20, &row));
        for (int v = 0; v < 20 * ch.m.Vp; v++) {  /* one's s.logits: all rows of the evaluation forward */
            double want = at(&one, one.s.logits, (size_t)13 * one.m.Vp + (size_t)v);
            if (v % ch.m.Vp < cfg.vocab_size) worst_logit = fmax(worst_logit, fabs(at(&ch, row, (size_t)v) - want));
        }
        MT_EXPECT(worst_eval < 1e-5 && worst_logit < 1e-5, "evaluation: losses %.3e, logits %.3e", worst_eval,
                  worst_logit);
        MT_EXPECT(mt_gpt_logits(&ch.cx, &ch.m, &ch.a, &ch.s, 40, 20, &row) == MT_ERR_ARG, "rows past B*T refused");
        MT_EXPECT(mt_gpt_backward(&ch.cx, &ch.m, &ch.a, &ch.s, NULL, NULL) == MT_ERR_ARG,
                  "a backward after an evaluation forward is refused");
        mt_free(g0);
        fixture_free(&one); fixture_free(&ch);
    }
}

int main(void) {
    MT_RUN(test_gpt_config);
    MT_RUN(test_gpt_gradients_fd);
    MT_RUN(test_gpt_pipeline_stages);
    MT_RUN(test_gpt_f32_and_training);
    MT_RUN(test_gpt_hooks);
    MT_RUN(test_gpt_head_chunks);
    return mt_test_summary("test_gpt");
}
