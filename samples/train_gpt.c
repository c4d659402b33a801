/* samples/train_gpt.c — train a GPT with megatron.h. Copy it and make it yours.
 *
 *   make && ./build/train_gpt                  # CPU: a small GPT learns a digit cipher
 *   ./build/train_gpt_cuda --bf16 ...          # the same source built by nvcc, on the GPU
 *
 * Flags follow Megatron-LM's names (see usage()). With no --data-path it trains on a synthetic
 * corpus it generates itself (enciphering digit strings, one in ten held out) and reports the
 * held-out accuracy at the end.
 */
#define _POSIX_C_SOURCE 200809L
#include "megatron.h"
#include <time.h>
#include <errno.h>

/* ------------------------------------------------------------------ arguments */

typedef struct args {
    mt_gpt_config model;
    int seq_len, micro_batch, global_batch, train_iters, world_size, tp, sequence_parallel, grad_fp32;
    int global_batch_default; /* 1: --global-batch-size not given: micro-batch x data-parallel size */
    int no_tp_comm_overlap; /* tp collectives in line with the GEMMs (to measure what the overlap buys) */
    int tp_comm_chunks;     /* the forward tp GEMMs and collectives in this many pieces of rows (0: the library's default) */
    int tp_comm_sm_margin;  /* GEMMs beside a tp collective planned for this many SMs fewer */
    int ddp_bucket_size;    /* elements per data-parallel gradient bucket (0: the library's default) */
    int no_dp_comm_overlap; /* dp: gradient buckets reduced after the backward, ZeRO-1/2 params gathered in the step */
    int timing;             /* GPU time per op, reported at the end (one host sync per step) */
    int gemm_tune;          /* GPU: time up to N cuBLASLt algorithms per GEMM shape once, keep the fastest */
    const char *gemm_tune_file; /* GPU: the algorithms chosen per shape, read and kept (mt/tune.h) */
    mt_shard_strategy sharding;
    double lr, min_lr, weight_decay, clip_grad, beta1, beta2, eps;
    int warmup_iters, decay_iters;
    const char *decay_style, *split;
    uint64_t seed;
    const char *data_path[16];
    int n_data_path;
    int eval_interval, eval_iters, log_interval;
    int device, dtype_flag; /* dtype_flag: 0 default, 1 fp32, 2 bf16 */
} args;

static void usage(void) {
    fprintf(stderr,
            "usage: train_gpt [flags]      (Megatron-LM flag names; defaults train the synthetic task)\n"
            "  --num-layers N  --hidden-size N  --num-attention-heads N  --num-query-groups N\n"
            "  --ffn-hidden-size N  --seq-length N  --max-position-embeddings N  --vocab-size N\n"
            "  --micro-batch-size N  --global-batch-size N  --train-iters N\n"
            "  --lr X  --min-lr X  --lr-warmup-iters N  --lr-decay-iters N  --lr-decay-style cosine|linear|constant\n"
            "  --weight-decay X  --clip-grad X  --adam-beta1 X  --adam-beta2 X  --adam-eps X  --seed N\n"
            "  --data-path [W] PREFIX...  --split 949,50,1  --eval-interval N  --eval-iters N  --log-interval N\n"
            "  --world-size N  --tensor-model-parallel-size N  --sequence-parallel  --use-distributed-optimizer\n"
            "  --data-parallel-sharding-strategy no_shard|optim|optim_grads|optim_grads_params\n"
            "  --no-tp-comm-overlap  --tp-comm-chunks N   (the forward's tp GEMMs in N pieces of rows, each\n"
            "                   piece's all-reduce under the next one's GEMM, with SP each all-gather under one; default 4)\n"
            "  --tp-comm-sm-margin N   (GPU: GEMMs that run beside a tp collective leave it N SMs; with NCCL_MAX_CTAS=N)\n"
            "  --ddp-bucket-size N   (elements per data-parallel gradient bucket; default max(40M, 1M x dp))\n"
            "  --no-dp-comm-overlap   (gradients reduced after the backward, not bucket by bucket during it;\n"
            "                   the distributed optimizer's parameter all-gather in the step, not under the next forward)\n"
            "  --accumulate-allreduce-grads-in-fp32  --device N  --bf16 | --fp32\n"
            "  --timing   (GPU: time of every op per step, printed after the speed line)\n"
            "  --gemm-tune N   (GPU: time up to N cuBLASLt algorithms per GEMM shape at its first use and keep\n"
            "                   the fastest; faster, but the choice and so the rounding can differ run to run)\n"
            "  --gemm-tune-file PATH   (GPU: the shapes PATH lists run the algorithms it names, without timing; with\n"
            "                   --gemm-tune, new shapes are timed and added, so a second run repeats the first's\n"
            "                   choices; one file per GPU model and cuBLASLt version; several ranks: PATH.rankN)\n");
}

static int fail(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "train_gpt: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    usage();
    return 0;
}

/* Parse an integer >= min for `flag`; say what was wrong otherwise. */
static int parse_int(const char *flag, const char *s, int min, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v > 1000000000L || v < min) {
        fprintf(stderr, "train_gpt: %s needs an integer >= %d, got '%s'\n", flag, min, s);
        return 0;
    }
    *out = (int)v;
    return 1;
}

/* Parse a number in [lo, hi) for `flag`. */
static int parse_double(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v < hi)) {
        fprintf(stderr, "train_gpt: %s needs a number in [%g, %g), got '%s'\n", flag, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_args(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    /* the default run: small enough to learn the synthetic task in about a minute on 2 CPU cores */
    a->model.n_layer = 2; a->model.n_embd = 64; a->model.n_head = 4; a->model.vocab_size = 0;
    a->seq_len = 48; a->micro_batch = 16; a->global_batch = 0; a->train_iters = 400;
    a->lr = 3e-3; a->min_lr = 3e-4; a->warmup_iters = 30; a->decay_iters = 0; a->decay_style = "cosine";
    a->weight_decay = 0.1; a->clip_grad = 1.0; a->beta1 = 0.9; a->beta2 = 0.95; a->eps = 1e-8;
    a->seed = 1234; a->world_size = 1; a->tp = 1; a->log_interval = 1; a->eval_iters = 0; a->eval_interval = 0;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) { usage(); exit(0); }
        if (!strcmp(f, "--bf16")) { a->dtype_flag = 2; continue; }
        if (!strcmp(f, "--fp32")) { a->dtype_flag = 1; continue; }
        if (!strcmp(f, "--sequence-parallel")) { a->sequence_parallel = 1; continue; }
        if (!strcmp(f, "--no-tp-comm-overlap")) { a->no_tp_comm_overlap = 1; continue; }
        if (!strcmp(f, "--no-dp-comm-overlap")) { a->no_dp_comm_overlap = 1; continue; }
        if (!strcmp(f, "--timing")) { a->timing = 1; continue; }
        if (!strcmp(f, "--use-distributed-optimizer")) { a->sharding = MT_SHARD_OPTIM; continue; }
        if (!strcmp(f, "--accumulate-allreduce-grads-in-fp32")) { a->grad_fp32 = 1; continue; }
        if (!strcmp(f, "--data-path")) {
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                if (a->n_data_path == 16) { fprintf(stderr, "train_gpt: --data-path takes at most 16 values\n"); return 0; }
                a->data_path[a->n_data_path++] = argv[++i];
            }
            if (!a->n_data_path) return fail("%s needs a value%s", f, "");
            continue;
        }
        if (strncmp(f, "--", 2) != 0) return fail("unexpected argument '%s'%s", f, "");
        if (i + 1 >= argc) return fail("%s needs a value%s", f, "");
        const char *v = argv[++i];
        int ok = 1;
        if (!strcmp(f, "--num-layers")) ok = parse_int(f, v, 1, &a->model.n_layer);
        else if (!strcmp(f, "--hidden-size")) ok = parse_int(f, v, 1, &a->model.n_embd);
        else if (!strcmp(f, "--num-attention-heads")) ok = parse_int(f, v, 1, &a->model.n_head);
        else if (!strcmp(f, "--num-query-groups")) ok = parse_int(f, v, 1, &a->model.n_kv_head);
        else if (!strcmp(f, "--ffn-hidden-size")) ok = parse_int(f, v, 1, &a->model.ffn_hidden);
        else if (!strcmp(f, "--max-position-embeddings")) ok = parse_int(f, v, 1, &a->model.max_seq_len);
        else if (!strcmp(f, "--vocab-size")) ok = parse_int(f, v, 1, &a->model.vocab_size);
        else if (!strcmp(f, "--seq-length")) ok = parse_int(f, v, 1, &a->seq_len);
        else if (!strcmp(f, "--micro-batch-size")) ok = parse_int(f, v, 1, &a->micro_batch);
        else if (!strcmp(f, "--global-batch-size")) ok = parse_int(f, v, 1, &a->global_batch);
        else if (!strcmp(f, "--train-iters")) ok = parse_int(f, v, 1, &a->train_iters);
        else if (!strcmp(f, "--lr-warmup-iters")) ok = parse_int(f, v, 0, &a->warmup_iters);
        else if (!strcmp(f, "--lr-decay-iters")) ok = parse_int(f, v, 0, &a->decay_iters);
        else if (!strcmp(f, "--eval-interval")) ok = parse_int(f, v, 0, &a->eval_interval);
        else if (!strcmp(f, "--eval-iters")) ok = parse_int(f, v, 0, &a->eval_iters);
        else if (!strcmp(f, "--log-interval")) ok = parse_int(f, v, 1, &a->log_interval);
        else if (!strcmp(f, "--gemm-tune")) ok = parse_int(f, v, 0, &a->gemm_tune);
        else if (!strcmp(f, "--gemm-tune-file")) a->gemm_tune_file = v;
        else if (!strcmp(f, "--world-size")) ok = parse_int(f, v, 1, &a->world_size);
        else if (!strcmp(f, "--tensor-model-parallel-size")) ok = parse_int(f, v, 1, &a->tp);
        else if (!strcmp(f, "--tp-comm-chunks")) ok = parse_int(f, v, 1, &a->tp_comm_chunks);
        else if (!strcmp(f, "--tp-comm-sm-margin")) ok = parse_int(f, v, 0, &a->tp_comm_sm_margin);
        else if (!strcmp(f, "--ddp-bucket-size")) ok = parse_int(f, v, 1, &a->ddp_bucket_size);
        else if (!strcmp(f, "--data-parallel-sharding-strategy")) {
            if (mt_shard_strategy_parse(v, &a->sharding) != MT_OK)
                return fail("bad value '%s' for %s (no_shard, optim, optim_grads or optim_grads_params)", v, f);
        }
        else if (!strcmp(f, "--device")) ok = parse_int(f, v, 0, &a->device);
        else if (!strcmp(f, "--seed")) { int s; ok = parse_int(f, v, 0, &s); a->seed = (uint64_t)s; }
        else if (!strcmp(f, "--lr")) ok = parse_double(f, v, 1e-30, 1e30, &a->lr);
        else if (!strcmp(f, "--min-lr")) ok = parse_double(f, v, 0, 1e30, &a->min_lr);
        else if (!strcmp(f, "--weight-decay")) ok = parse_double(f, v, 0, 1e30, &a->weight_decay);
        else if (!strcmp(f, "--clip-grad")) ok = parse_double(f, v, 0, 1e30, &a->clip_grad);
        else if (!strcmp(f, "--adam-beta1")) ok = parse_double(f, v, 0, 1, &a->beta1);
        else if (!strcmp(f, "--adam-beta2")) ok = parse_double(f, v, 0, 1, &a->beta2);
        else if (!strcmp(f, "--adam-eps")) ok = parse_double(f, v, 1e-30, 1, &a->eps);
        else if (!strcmp(f, "--split")) a->split = v;
        else if (!strcmp(f, "--lr-decay-style")) {
            if (strcmp(v, "cosine") && strcmp(v, "linear") && strcmp(v, "constant"))
                return fail("bad value '%s' for %s (cosine, linear or constant)", v, f);
            a->decay_style = v;
        } else return fail("unknown flag '%s'%s", f, "");
        if (!ok) { usage(); return 0; }
    }
    if (!a->model.max_seq_len) a->model.max_seq_len = a->seq_len;
    if (a->seq_len > a->model.max_seq_len) {
        fprintf(stderr, "train_gpt: --seq-length %d exceeds --max-position-embeddings %d\n", a->seq_len,
                a->model.max_seq_len);
        return 0;
    }
    a->global_batch_default = !a->global_batch;
    if (!a->global_batch) a->global_batch = a->micro_batch * (a->world_size / a->tp > 0 ? a->world_size / a->tp : 1);
    if (!a->decay_iters) a->decay_iters = a->train_iters;
    return 1;
}

/* ------------------------------------------------------------------ the synthetic task */

/* Encipher a string of 5 digits, each digit d becoming (7d + 3) mod 10: "31415>40108\n" is one
 * example of 12 tokens ('0'-'9' are 0-9, '>' 10, newline 11). The model must find the digit that
 * sits 6 places back (attention) and map it (MLP). One string in ten is held out of training; the
 * held-out accuracy is the fraction of them the model enciphers exactly by greedy decoding. */
enum { TASK_DIGITS = 5, TASK_LEN = 2 * TASK_DIGITS + 2, TASK_SEP = 10, TASK_NL = 11, TASK_VOCAB = 12,
       TASK_STRINGS = 100000, TASK_EVAL = 1000 };

static int task_held_out(uint32_t x) { return (x * 2654435761u >> 16) % 10 == 0; }

static void task_write(int32_t *t, uint32_t x) {
    for (int i = TASK_DIGITS - 1; i >= 0; i--, x /= 10) t[i] = (int32_t)(x % 10);
    t[TASK_DIGITS] = TASK_SEP;
    for (int i = 0; i < TASK_DIGITS; i++) t[TASK_DIGITS + 1 + i] = (7 * t[i] + 3) % 10;
    t[TASK_LEN - 1] = TASK_NL;
}

/* One row of T+1 tokens: examples laid end to end from position 0, drawn from (seed, sub), held-out
 * strings skipped; when slot >= 0, example number `slot` is string `x_slot` instead (evaluation). */
static void task_row(int32_t *row, int T, uint64_t seed, uint64_t sub, int slot, uint32_t x_slot) {
    uint64_t k = 0;
    for (int e = 0; e * TASK_LEN < T + 1; e++) {
        uint32_t x = x_slot;
        if (e != slot) do x = mt_rng_u32(seed, sub, k++) % TASK_STRINGS; while (task_held_out(x));
        int32_t p[TASK_LEN];
        task_write(p, x);
        for (int i = 0; i < TASK_LEN && e * TASK_LEN + i < T + 1; i++) row[e * TASK_LEN + i] = p[i];
    }
}

/* B rows holding global samples first, first+1, ...: each is drawn from (seed, sample index), so
 * the data does not depend on how samples are spread over ranks and micro-batches. */
static void task_batch(int32_t *rows, int B, int T, uint64_t seed, uint64_t first) {
    for (int r = 0; r < B; r++) task_row(rows + (size_t)r * (T + 1), T, seed, first + (uint64_t)r, -1, 0);
}

/* ------------------------------------------------------------------ helpers */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The host side of a batch upload: inputs then targets, pinned on the GPU so that the copy is
 * asynchronous; `copied` marks when the GPU has read it, so it is not overwritten before. */
typedef struct staging {
    int32_t *buf; /* (2, B, T) */
#ifdef __CUDACC__
    cudaEvent_t copied;
#endif
} staging;

/* Host memory the GPU copies to or from asynchronously: pinned in the GPU build on a GPU. */
static mt_status host_alloc(const mt_ctx *cx, size_t nbytes, void **p) {
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        if (cudaMallocHost(p, nbytes) != cudaSuccess)
            return mt_errorf(MT_ERR_CUDA, "train_gpt: %zu bytes of pinned host memory", nbytes);
        return MT_OK;
    }
#endif
    (void)cx;
    return mt_calloc(nbytes, p);
}
static void host_free(const mt_ctx *cx, void *p) {
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        if (p) cudaFreeHost(p);
        return;
    }
#endif
    (void)cx;
    mt_free(p);
}

static mt_status staging_init(const mt_ctx *cx, staging *s, size_t n) {
    memset(s, 0, sizeof *s);
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA && cudaEventCreateWithFlags(&s->copied, cudaEventDisableTiming) != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "train_gpt: creating an event failed");
#endif
    return host_alloc(cx, sizeof(int32_t) * n, (void **)&s->buf);
}

static void staging_free(const mt_ctx *cx, staging *s) {
#ifdef __CUDACC__
    if (s->copied) cudaEventDestroy(s->copied);
#endif
    host_free(cx, s->buf);
}

/* Split rows of T+1 tokens into inputs (first T) and targets (last T) on the model's device.  On the
 * GPU the copies are queued on the stream: the host does not wait for the GPU here (only, if it is
 * far ahead, for the previous upload to have been read). */
static mt_status upload_batch(const mt_ctx *cx, mt_gpt_acts *a, const int32_t *rows, staging *stg) {
    int B = a->B, T = a->T;
    int32_t *h = stg->buf;
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA && cudaEventSynchronize(stg->copied) != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "waiting for the previous batch upload failed");
#endif
    for (int r = 0; r < B; r++) {
        memcpy(h + (size_t)r * T, rows + (size_t)r * (T + 1), sizeof(int32_t) * T);
        memcpy(h + (size_t)(B + r) * T, rows + (size_t)r * (T + 1) + 1, sizeof(int32_t) * T);
    }
    if (cx->device.type == MT_CPU) {
        memcpy(a->tokens, h, sizeof(int32_t) * B * T);
        memcpy(a->targets, h + (size_t)B * T, sizeof(int32_t) * B * T);
        return MT_OK;
    }
#ifdef __CUDACC__
    cudaStream_t st = (cudaStream_t)cx->stream;
    if (cudaMemcpyAsync(a->tokens, h, sizeof(int32_t) * B * T, cudaMemcpyHostToDevice, st) != cudaSuccess ||
        cudaMemcpyAsync(a->targets, h + (size_t)B * T, sizeof(int32_t) * B * T, cudaMemcpyHostToDevice, st) !=
            cudaSuccess ||
        cudaEventRecord(stg->copied, st) != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "copying a batch to the GPU failed");
    return MT_OK;
#else
    return MT_ERR_UNSUPPORTED;
#endif
}

/* Greedy-decode the cipher of n_eval held-out strings and return the fraction exactly right.
 * Each row holds training examples as context, then the held-out prompt "ddddd>" in the last slot
 * where a whole example fits. */
static double task_accuracy(const mt_ctx *cx, const mt_gpt *m, mt_gpt_acts *a, mt_gpt_scratch *s, int32_t *rows,
                            staging *stg, float *logits_row, void *row_buf, uint64_t seed, uint32_t n_eval) {
    int B = a->B, T = a->T, right = 0, total = 0;
    int slot = (T - TASK_LEN + 2) / TASK_LEN, sep = slot * TASK_LEN + TASK_DIGITS;
    uint32_t *held, n_held = 0;
    int *ok;
    if (mt_calloc(sizeof(uint32_t) * n_eval, (void **)&held) || mt_calloc(sizeof(int) * B, (void **)&ok)) return -1;
    for (uint32_t x = 0; x < TASK_STRINGS && n_held < n_eval; x += 7)  /* a spread of held-out strings */
        if (task_held_out(x)) held[n_held++] = x;
    for (uint32_t start = 0; start < n_held; start += (uint32_t)B) {
        for (int r = 0; r < B; r++) {
            task_row(rows + (size_t)r * (T + 1), T, seed ^ 0x5eedULL, start + (uint64_t)r, slot, held[(start + r) % n_held]);
            ok[r] = 1;
        }
        for (int d = 0; d < TASK_DIGITS; d++) {  /* predict digit d after the separator */
            if (upload_batch(cx, a, rows, stg) != MT_OK || mt_gpt_forward(cx, m, a, s, 0.0f) != MT_OK) return -1;
            int have0 = 0, have_n = 0; /* the forward keeps one chunk of logits: recompute the rows read */
            void *have = NULL;
            for (int r = 0; r < B; r++) {
                int at = r * T + sep + d;
                size_t es = mt_dtype_size(cx->dtype);
                if (at < have0 || at >= have0 + have_n) {
                    have0 = at;
                    have_n = B * T - at < s->head_rows ? B * T - at : s->head_rows;
                    if (mt_gpt_logits(cx, m, a, s, have0, have_n, &have) != MT_OK) return -1;
                }
                const void *row = (char *)have + (size_t)(at - have0) * m->Vp * es;
                if (m->par.tp_size > 1) { /* each tensor-parallel rank holds Vp/tp of the vocabulary */
                    if (mt_comm_all_gather(m->par.tp, row, row_buf, (size_t)m->Vp, cx->dtype, cx->stream) != MT_OK) return -1;
                    row = row_buf;
                }
                mt_copy_to_f32(cx, logits_row, row, cx->dtype, (size_t)m->cfg.vocab_size);
                int best = 0;
                for (int v = 1; v < m->cfg.vocab_size; v++) best = logits_row[v] > logits_row[best] ? v : best;
                int32_t *next = &rows[(size_t)r * (T + 1) + sep + d + 1];
                if (best != *next) ok[r] = 0;  /* the row holds the right answer: compare, then overwrite */
                *next = best;
            }
        }
        for (int r = 0; r < B && start + (uint32_t)r < n_held; r++) { right += ok[r]; total++; }
    }
    mt_free(held);
    mt_free(ok);
    return total ? (double)right / total : 0;
}

/* The world size must split into tensor-parallel groups, and the global batch into micro-batches
 * over the data-parallel ranks. */
static int validate_world(const args *a, int world) {
    if (world % a->tp) {
        fprintf(stderr, "train_gpt: world size %d is not divisible by --tensor-model-parallel-size %d\n", world, a->tp);
        return 0;
    }
    int dp = world / a->tp;
    if (a->global_batch % (a->micro_batch * dp)) {
        fprintf(stderr, "train_gpt: --global-batch-size %d is not divisible by --micro-batch-size %d x data-parallel "
                        "size %d\n", a->global_batch, a->micro_batch, dp);
        return 0;
    }
    return 1;
}

/* " | loader wait (ms): x" for the line of an iteration that read files. */
static const char *loader_note(const mt_loader *ld) {
    static char buf[64];
    snprintf(buf, sizeof buf, " | loader wait (ms): %.2f", ld->total_wait_ms / (ld->steps ? ld->steps : 1));
    return buf;
}

/* The validation loss: the mean per-token loss over `iters` micro-batches of the valid split. */
static mt_status evaluate(const mt_ctx *cx, const mt_gpt *m, mt_gpt_acts *a, mt_gpt_scratch *s, mt_loader *valid,
                          int32_t *rows, staging *stg, int iters, float *loss_host, int it, int talk) {
    size_t N = (size_t)a->B * a->T;
    double sum = 0;
    for (int i = 0; i < iters; i++) {
        MT_TRY(mt_loader_next(valid, rows));
        MT_TRY(upload_batch(cx, a, rows, stg));
        MT_TRY(mt_gpt_forward(cx, m, a, s, 0.0f));
        MT_TRY(mt_copy_to_f32(cx, loss_host, a->losses, mt_stat_dtype(cx), N));
        for (size_t k = 0; k < N; k++) sum += loss_host[k];
    }
    if (talk) printf("validation loss at iteration %d | lm loss: %.6E | over %d micro-batches\n", it, sum / ((double)N * iters), iters);
    return MT_OK;
}

/* A step's per-token losses, squared gradient norm and time, on their way back to the host.  On the
 * GPU the copies are queued behind the step (into pinned memory) with an event after them, so the
 * host can queue the next step before reading this one, and a step's time is the GPU time between
 * two such events (or from the last mark: the start, an evaluation).  Three slots: the step being
 * read, the one queued after it, and the one before it (its event is where the time starts). */
typedef struct readback {
    void *host[3]; /* per slot: n per-token losses, then the squared norm, all of type dtype */
    size_t n;
    mt_dtype dtype;
    int from_mark;           /* the next step's time starts at the mark */
    double mark_ms, last_ms; /* the CPU's clock */
#ifdef __CUDACC__
    cudaEvent_t done[3], mark;
#endif
} readback;

static mt_status readback_init(const mt_ctx *cx, readback *r, size_t n) {
    memset(r, 0, sizeof *r);
    r->n = n;
    r->dtype = mt_stat_dtype(cx);
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA)
        for (int e = 0; e < 4; e++)
            if (cudaEventCreate(e < 3 ? &r->done[e] : &r->mark) != cudaSuccess)
                return mt_errorf(MT_ERR_CUDA, "train_gpt: creating an event failed");
#endif
    for (int s = 0; s < 3; s++) MT_TRY(host_alloc(cx, (n + 1) * mt_dtype_size(r->dtype), &r->host[s]));
    return MT_OK;
}

/* The next step's time starts here (queued on the GPU's stream; the CPU's clock otherwise). */
static mt_status readback_mark(const mt_ctx *cx, readback *r) {
    r->from_mark = 1;
    r->mark_ms = now_ms();
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA && cudaEventRecord(r->mark, (cudaStream_t)cx->stream) != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "train_gpt: recording an event failed");
#endif
    (void)cx;
    return MT_OK;
}

/* Queue the copies of step `it`'s results (per-token losses on the device, the squared norm). */
static mt_status readback_start(const mt_ctx *cx, readback *r, int it, const void *losses, const void *norm2) {
    size_t es = mt_dtype_size(r->dtype);
    char *h = (char *)r->host[it % 3];
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        cudaStream_t st = (cudaStream_t)cx->stream;
        if (cudaMemcpyAsync(h, losses, r->n * es, cudaMemcpyDeviceToHost, st) != cudaSuccess ||
            cudaMemcpyAsync(h + r->n * es, norm2, es, cudaMemcpyDeviceToHost, st) != cudaSuccess ||
            cudaEventRecord(r->done[it % 3], st) != cudaSuccess)
            return mt_errorf(MT_ERR_CUDA, "train_gpt: queueing the loss read-back of iteration %d failed", it + 1);
        return MT_OK;
    }
#endif
    (void)cx;
    memcpy(h, losses, r->n * es);
    memcpy(h + r->n * es, norm2, es);
    return MT_OK;
}

/* Wait for step `it`'s copies (steps are read in order); its mean loss, gradient norm and time. */
static mt_status readback_wait(const mt_ctx *cx, readback *r, int it, double *loss, double *gnorm, double *ms) {
    double t = now_ms();
    *ms = t - (r->from_mark ? r->mark_ms : r->last_ms); /* the CPU's clock; the GPU's events below */
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        float gpu_ms = 0;
        if (cudaEventSynchronize(r->done[it % 3]) != cudaSuccess ||
            cudaEventElapsedTime(&gpu_ms, r->from_mark ? r->mark : r->done[(it + 2) % 3], r->done[it % 3]) !=
                cudaSuccess)
            return mt_errorf(MT_ERR_CUDA, "train_gpt: iteration %d failed on the GPU: %s", it + 1,
                             cudaGetErrorString(cudaGetLastError()));
        *ms = gpu_ms;
    }
#endif
    (void)cx;
    r->from_mark = 0;
    r->last_ms = t;
    const void *h = r->host[it % 3];
    const double *hd = (const double *)h;
    const float *hf = (const float *)h;
    double sum = 0;
    for (size_t i = 0; i < r->n; i++) sum += r->dtype == MT_F64 ? hd[i] : hf[i];
    *loss = sum / (double)r->n;
    *gnorm = sqrt(r->dtype == MT_F64 ? hd[r->n] : hf[r->n]); /* after the losses: the squared norm */
    return MT_OK;
}

static void readback_free(const mt_ctx *cx, readback *r) {
#ifdef __CUDACC__
    for (int e = 0; e < 4; e++) {
        cudaEvent_t ev = e < 3 ? r->done[e] : r->mark;
        if (ev) cudaEventDestroy(ev);
    }
#endif
    for (int s = 0; s < 3; s++) host_free(cx, r->host[s]);
}

/* The median step time after the first two iterations, tokens/s, MFU (6N + 12·L·C·T FLOPs per
 * token, N without position embeddings, against an H100's 989 dense bf16 TFLOP/s) and peak memory. */
static void print_speed(const args *a, const mt_gpt_config *c, double *step_ms, const mt_ctx *cx) {
    int gpu = cx->device.type == MT_CUDA;
    int skip = a->train_iters > 4 ? 2 : 0, n = a->train_iters - skip;
    double *v = step_ms + skip;
    for (int i = 1; i < n; i++)  /* insertion sort: n is small */
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) { double t = v[j]; v[j] = v[j - 1]; v[j - 1] = t; }
    double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    double tok_s = a->global_batch * (double)a->seq_len / (med / 1e3);
    double flops = 6.0 * (double)mt_gpt_num_params(c, 0) + 12.0 * c->n_layer * c->n_embd * (double)a->seq_len;
    double peak_gib = 0, ours_gib = 0;
#ifdef __CUDACC__
    size_t free_b = 0, total_b = 0;
    if (gpu && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) peak_gib = (double)(total_b - free_b) / (1 << 30);
    if (gpu) ours_gib = (double)mt_gpu_memory_beyond_context(cx) / (1 << 30);
#endif
    printf("speed: median step %.2f ms | %.0f tokens/s | %.1f TFLOP/s | MFU %.1f%% of 989 TFLOP/s", med, tok_s,
           tok_s * flops / 1e12, 100.0 * tok_s * flops / 989e12);
    /* memory allocates once at start, so "now" is the peak; beyond the context is what compares
     * with a framework's allocator statistics */
    if (gpu) printf(" | device memory in use %.2f GiB (%.2f GiB beyond the CUDA context)", peak_gib, ours_gib);
    printf("\n");
}

/* ------------------------------------------------------------------ main */

/* One rank of the run: everything from the data to the last iteration. `world` is NULL for a
 * single rank, else a communicator over all ranks (threads on the CPU, NCCL on GPUs). */
typedef struct run_args {
    const args *a;
    int device;           /* this process's GPU (torchrun: LOCAL_RANK), or the first of its threads' */
    int thread_per_gpu;   /* one process drives several GPUs: rank r uses GPU device + r */
} run_args;

static mt_status train(mt_comm *world, void *arg) {
    const run_args *ra = (const run_args *)arg;
    const args *ap = ra->a;
    args a = *ap;
    int synthetic = a.n_data_path == 0, rank = world ? mt_comm_rank(world) : 0;
    int talk = rank == 0; /* only the first rank prints */

    /* 1. The rank grid: tensor parallel (tp), then data parallel (dp) over what is left. */
    mt_parallel par;
    memset(&par, 0, sizeof par);
    par.size.tp = par.size.dp = par.size.cp = par.size.pp = 1;
    if (world) {
        mt_parallel_config pc = {0};
        pc.tp = a.tp;
        MT_TRY(mt_parallel_init(&par, world, &pc));
    }
    int dp = par.size.dp, dp_rank = par.dp_rank;
    mt_layer_par lp;
    memset(&lp, 0, sizeof lp);
    if (world) mt_layer_par_from(&lp, &par, a.sequence_parallel);
    lp.no_comm_overlap = a.no_tp_comm_overlap;
    lp.comm_chunks = a.tp_comm_chunks;
    lp.comm_sm_margin = a.tp_comm_sm_margin;

    /* 2. The data: Megatron .bin/.idx (or llm.c) token files, or the synthetic task; each dp rank
     * reads its own micro-batches of every global batch. */
    mt_loader train_data, valid_data;
    memset(&train_data, 0, sizeof train_data);
    memset(&valid_data, 0, sizeof valid_data);
    if (!synthetic) {
        mt_data_path dpath;
        MT_TRY(mt_parse_data_path(a.data_path, a.n_data_path, &dpath));
        mt_loader_config lc;
        memset(&lc, 0, sizeof lc);
        lc.paths = (const char *const *)dpath.paths; lc.weights = dpath.weights; lc.n_paths = dpath.n;
        lc.split = a.split; lc.seq_len = a.seq_len; lc.micro_batch = a.micro_batch; lc.seed = a.seed;
        lc.vocab_size = a.model.vocab_size; lc.dp_rank = dp_rank; lc.dp_size = dp;
        lc.num_samples = (int64_t)a.train_iters * a.global_batch;
        mt_status st = mt_loader_open(&train_data, &lc);
        if (st == MT_OK && a.eval_iters > 0 && a.eval_interval > 0) {
            lc.split_index = 1;
            lc.num_samples = (int64_t)(a.train_iters / a.eval_interval + 1) * a.eval_iters * a.micro_batch * dp;
            st = mt_loader_open(&valid_data, &lc);
        }
        mt_data_path_free(&dpath);
        MT_TRY(st);
    }

    /* 3. Where to run: the GPU when this is the nvcc build and one is present. */
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.dtype = MT_F32;
#ifdef __CUDACC__
    int n_gpu = 0;
    if (cudaGetDeviceCount(&n_gpu) != cudaSuccess) n_gpu = 0;
    if (n_gpu > 0 || a.device > 0)
        MT_TRY(mt_gpu_init(&cx, ra->device + (ra->thread_per_gpu ? rank : 0), a.dtype_flag == 1 ? MT_F32 : MT_BF16));
    else if (talk) fprintf(stderr, "train_gpt: no GPU found, running on the CPU\n");
    if (a.timing && cx.device.type == MT_CUDA) MT_TRY(mt_gpu_timing(&cx, 1));
    if (cx.gpu) cx.gpu->gemm_tune = a.gemm_tune;
    if (cx.gpu && a.gemm_tune_file) {
        char path[1024];
        int n_read = 0, stale = 0;
        if (world && mt_comm_size(world) > 1) snprintf(path, sizeof path, "%s.rank%d", a.gemm_tune_file, rank);
        else snprintf(path, sizeof path, "%s", a.gemm_tune_file);
        MT_TRY(mt_gpu_gemm_tune_file(&cx, path, &n_read, &stale));
        if (talk)
            printf("gemm tune file %s: %d shapes%s\n", path, n_read,
                   stale ? " (it was for another GPU or cuBLASLt: tuning afresh)" : "");
    }
#else
    if (a.dtype_flag == 2 && talk) fprintf(stderr, "train_gpt: --bf16 needs the GPU build; the CPU computes in fp32\n");
#endif
    if (a.gemm_tune_file && !cx.gpu && talk)
        fprintf(stderr, "train_gpt: --gemm-tune-file is for GPU GEMMs; this run is on the CPU, so it is not read\n");
    if (a.timing && cx.device.type != MT_CUDA && talk)
        fprintf(stderr, "train_gpt: --timing times GPU ops; this run is on the CPU, so there is no op report\n");

    /* 4. The model (one pipeline stage holding every layer), its optimizer, and one arena. */
    int B = a.micro_batch, T = a.seq_len, n_micro = a.global_batch / (a.micro_batch * dp);
    mt_gpt model;
    MT_TRY(mt_gpt_init(&cx, &model, &a.model, &lp, 0, 0));
    float *init;
    MT_TRY(mt_calloc(model.num_params * sizeof(float), (void **)&init));
    mt_gpt_init_values(&model, init);
    MT_TRY(mt_copy_from_f32(&cx, model.param_mem, init, model.num_params));
    mt_optim opt; /* one rank: AdamW over the model; several: data parallelism and its optimizer */
    mt_ddp ddp;
    memset(&opt, 0, sizeof opt);
    memset(&ddp, 0, sizeof ddp);
    if (world) {
        mt_ddp_config dc;
        memset(&dc, 0, sizeof dc);
        dc.strategy = a.sharding;
        dc.grad_reduce_in_fp32 = a.grad_fp32;
        dc.no_overlap = a.no_dp_comm_overlap;
        dc.bucket_size = (size_t)a.ddp_bucket_size;
        MT_TRY(mt_ddp_init(&cx, &ddp, &model, &par, &dc, init));
    } else {
        MT_TRY(mt_optim_init(&cx, &opt, &model, init));
    }
    mt_free(init);
    mt_arena arena;
    MT_TRY(mt_arena_init(&arena, cx.device, mt_gpt_acts_nbytes(&model, B, T, 1) + (size_t)n_micro * B * T * 8 +
                                               (size_t)a.model.padded_vocab * 8 + 4096));
    mt_gpt_acts acts;
    mt_gpt_scratch scratch;
    MT_TRY(mt_gpt_acts_alloc(&model, &arena, B, T, &acts, &scratch));
    void *losses; /* (n_micro, B*T) per-token losses of the step, read back once per step */
    MT_TRY(mt__take(&arena, (size_t)n_micro * B * T, mt_stat_dtype(&cx), &losses));
    readback rb;
    MT_TRY(readback_init(&cx, &rb, (size_t)n_micro * B * T));
    int32_t *rows;
    staging stg;
    float *loss_host, *logits_row;
    MT_TRY(mt_calloc(sizeof(int32_t) * B * (T + 1), (void **)&rows));
    MT_TRY(staging_init(&cx, &stg, (size_t)2 * B * T));
    MT_TRY(mt_calloc(sizeof(float) * n_micro * B * T, (void **)&loss_host));
    MT_TRY(mt_calloc(sizeof(float) * a.model.padded_vocab, (void **)&logits_row));
    void *row_buf; /* one row of logits over the whole vocabulary (tensor parallelism gathers it here) */
    MT_TRY(mt__take(&arena, (size_t)a.model.padded_vocab, cx.dtype, &row_buf));
    if (talk) {
        printf("model: %d layers, hidden %d, %d heads, vocab %d (padded %d), seq %d: %.3fM parameters on %s (%s)\n",
               a.model.n_layer, a.model.n_embd, a.model.n_head, a.model.vocab_size, a.model.padded_vocab, T,
               mt_gpt_num_params(&model.cfg, 1) / 1e6, cx.device.type == MT_CUDA ? "GPU" : "CPU",
               mt_dtype_name(cx.dtype));
        char tp_note[96] = "";
        if (par.size.tp > 1)
            snprintf(tp_note, sizeof tp_note, ", forward collectives in %d pieces%s",
                     mt_tp_comm_chunks(&model.par, mt_tp_rows(&model.par, B * T)),
                     model.par.no_comm_overlap ? ", collectives not overlapped" : "");
        printf("ranks: %d (tensor parallel %d%s%s, data parallel %d, %s)\n", world ? mt_comm_size(world) : 1,
               par.size.tp, model.par.sequence_parallel ? " with sequence parallelism" : "", tp_note, dp,
               world ? mt_shard_strategy_name(a.sharding) : "one rank");
        printf("batch: %d x %d tokens (micro-batch %d, %d accumulation steps), %d iterations, %s\n", a.global_batch,
               T, B, n_micro, a.train_iters,
               synthetic ? "synthetic task: encipher 5 digits (1 string in 10 held out)" : "data");
    }

    /* 5. Train.  On the GPU the host queues step it before it reads step it-1's loss and norm (so the
     * GPU never waits for the host between steps); before an evaluation, the last step, or with
     * --timing it reads each step right after queueing it. */
    double first_loss = 0, last_loss = 0, t_start = now_ms(), *step_ms;
    MT_TRY(mt_calloc(sizeof(double) * a.train_iters, (void **)&step_ms));
    size_t sb = mt_dtype_size(mt_stat_dtype(&cx)), nb = (size_t)B * T;
    int timing_skip = a.train_iters > 4 ? 2 : 0, ahead = cx.device.type == MT_CUDA && !a.timing, next_read = 0;
    MT_TRY(readback_mark(&cx, &rb));
    for (int it = 0; it < a.train_iters; it++) {
        mt_optim_hp hp = {0};
        hp.lr = (float)mt_lr_at(it, a.warmup_iters, a.decay_iters, a.lr, a.min_lr, a.decay_style);
        hp.beta1 = (float)a.beta1; hp.beta2 = (float)a.beta2; hp.eps = (float)a.eps;
        hp.weight_decay = (float)a.weight_decay; hp.clip_grad = (float)a.clip_grad;
        for (int mb = 0; mb < n_micro; mb++) {
            if (world) mt_ddp_set_sync(&ddp, mb == n_micro - 1);  /* communicate on the last micro-batch */
            /* Megatron's order: micro-batch mb of step it is global samples it*G + mb*dp*B + dp_rank*B + b */
            if (synthetic) task_batch(rows, B, T, a.seed, (uint64_t)it * a.global_batch + ((uint64_t)mb * dp + dp_rank) * B);
            else MT_TRY(mt_loader_next(&train_data, rows));
            MT_TRY(upload_batch(&cx, &acts, rows, &stg));
            MT_TRY(mt_gpt_forward(&cx, &model, &acts, &scratch, 1.0f / ((float)a.global_batch * T)));
            MT_TRY(mt_copy(&cx, (char *)losses + mb * nb * sb, acts.losses, nb * sb));
            MT_TRY(mt_gpt_backward(&cx, &model, &acts, &scratch, NULL, NULL));
        }
        if (world) MT_TRY(mt_ddp_step(&cx, &ddp, &hp));  /* reduce, clip by the global norm, AdamW, gather */
        else MT_TRY(mt_optim_step(&cx, &opt, &model, &hp));
        if (dp > 1) /* every rank logs the loss over the whole global batch */
            MT_TRY(mt_comm_all_reduce(par.dp, losses, losses, n_micro * nb, mt_stat_dtype(&cx), MT_AVG, cx.stream));
        MT_TRY(readback_start(&cx, &rb, it, losses, world ? ddp.scalars : opt.scalars));

        int eval_now = !synthetic && valid_data.seq_len && ((it + 1) % a.eval_interval == 0 || it + 1 == a.train_iters);
        int last_read = ahead && !eval_now && it + 1 < a.train_iters ? it - 1 : it;
        for (; next_read <= last_read; next_read++) { /* the steps whose results are due, in order */
            int r = next_read;
            double loss = 0, gnorm = 0;
            MT_TRY(readback_wait(&cx, &rb, r, &loss, &gnorm, &step_ms[r]));
#ifdef __CUDACC__
            MT_TRY(mt_gpu_timing_step(&cx));             /* nothing unless --timing */
            if (r + 1 == timing_skip) mt_gpu_timing_reset(&cx); /* the warm-up steps print_speed skips too */
#endif
            if (r == 0) first_loss = loss;
            last_loss = loss;
            if (talk && ((r + 1) % a.log_interval == 0 || r == 0 || r + 1 == a.train_iters))
                printf("iteration %6d/%6d | lm loss: %.6E | grad norm: %.4f | lr: %.4E | elapsed time per iteration "
                       "(ms): %.1f | tokens/s: %.0f%s\n", r + 1, a.train_iters, loss, gnorm,
                       mt_lr_at(r, a.warmup_iters, a.decay_iters, a.lr, a.min_lr, a.decay_style), step_ms[r],
                       a.global_batch * (double)T / (step_ms[r] / 1e3), synthetic ? "" : loader_note(&train_data));
            if (talk) fflush(stdout);
        }
        if (eval_now) {
            MT_TRY(evaluate(&cx, &model, &acts, &scratch, &valid_data, rows, &stg, a.eval_iters, loss_host, it + 1, talk));
            MT_TRY(readback_mark(&cx, &rb)); /* the evaluation is not part of the next step's time */
        }
    }
    double total_s = (now_ms() - t_start) / 1e3;
    if (talk) {
        printf("trained %d iterations in %.1f s: lm loss %.4f -> %.4f\n", a.train_iters, total_s, first_loss, last_loss);
        double mean_ms = 0;
        for (int i = timing_skip; i < a.train_iters; i++) mean_ms += step_ms[i] / (a.train_iters - timing_skip);
        print_speed(&a, &model.cfg, step_ms, &cx);
#ifdef __CUDACC__
        mt_gpu_timing_report(&cx, stdout, mean_ms);
#endif
    }
    mt_free(step_ms);
    if (world) MT_TRY(mt_ddp_gather_params(&cx, &ddp));  /* ZeRO-3 holds shards, ZeRO-1/2 gathers wait for a forward */
    if (synthetic) { /* every rank takes part: tensor-parallel ranks compute the forward together */
        uint32_t n_eval = a.eval_iters > 0 && a.eval_iters * B < TASK_EVAL ? (uint32_t)(a.eval_iters * B) : TASK_EVAL;
        double acc = task_accuracy(&cx, &model, &acts, &scratch, rows, &stg, logits_row, row_buf, a.seed, n_eval);
        if (acc < 0) return MT_ERR_INTERNAL;
        if (talk) printf("held-out accuracy: %.1f%% of %u held-out strings enciphered exactly\n", 100.0 * acc, n_eval);
    }
    if (!synthetic) mt_loader_close(&train_data);
    if (valid_data.seq_len) mt_loader_close(&valid_data);
    mt_free(rows); staging_free(&cx, &stg); mt_free(loss_host); mt_free(logits_row);
    readback_free(&cx, &rb);
    mt_gpt_acts_free(&acts);
    mt_arena_free(&arena);
    if (world) mt_ddp_free(&ddp);
    else mt_optim_free(&opt);
    mt_gpt_free(&model);
    if (world) mt_parallel_free(&par);
    return MT_OK;
}

int main(int argc, char **argv) {
    args a;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a log file (or a launcher's pipe) gets each line as it is made */
    if (!parse_args(argc, argv, &a)) return 1;
    int synthetic = a.n_data_path == 0;
    if (synthetic && !a.model.vocab_size) a.model.vocab_size = TASK_VOCAB;
    if (synthetic && a.model.vocab_size < TASK_VOCAB) {
        fprintf(stderr, "train_gpt: the synthetic task needs --vocab-size >= %d\n", TASK_VOCAB);
        return 1;
    }
    if (synthetic && a.seq_len < 2 * TASK_LEN) {
        fprintf(stderr, "train_gpt: the synthetic task needs --seq-length >= %d (got %d)\n", 2 * TASK_LEN, a.seq_len);
        return 1;
    }
    if (mt_gpt_config_resolve(&a.model, a.tp) != MT_OK) return 1;
    if (!a.model.padded_vocab || a.model.vocab_size < 128) a.model.padded_vocab = (a.model.vocab_size + 7) / 8 * 8;
    run_args ra = {&a, a.device, 0};

    /* Launched by torchrun, Slurm or mpirun: one process per GPU, ranks from the environment. */
    if (getenv("WORLD_SIZE") || getenv("OMPI_COMM_WORLD_SIZE") || getenv("SLURM_NTASKS")) {
#ifdef __CUDACC__
        mt_launch_info li;
        mt_comm *world;
        if (mt_launch_env(&li) != MT_OK) return 1;
        a.world_size = li.world;
        if (a.global_batch_default) a.global_batch = a.micro_batch * (li.world / a.tp > 0 ? li.world / a.tp : 1);
        ra.device = li.local_rank;
        if (!validate_world(&a, li.world)) return 1;
        if (mt_comm_nccl_init_launch(&li, 300.0, &world) != MT_OK) return 1;
        mt_status st = train(world, &ra);
        mt_comm_destroy(world);
        return st == MT_OK ? 0 : 1;
#else
        fprintf(stderr, "train_gpt: launched as one of several processes (WORLD_SIZE is set): that needs the GPU build "
                        "(build/train_gpt_cuda); the CPU build runs ranks as threads with --world-size N\n");
        return 1;
#endif
    }
    if (!validate_world(&a, a.world_size)) return 1;
    if (a.world_size == 1) return train(NULL, &ra) == MT_OK ? 0 : 1;
#ifdef __CUDACC__
    int n_gpu = 0;
    if (cudaGetDeviceCount(&n_gpu) == cudaSuccess && n_gpu > 0) {  /* one process, one thread per GPU */
        if (a.world_size > n_gpu) {
            fprintf(stderr, "train_gpt: --world-size %d but this machine has %d GPUs\n", a.world_size, n_gpu);
            return 1;
        }
        ra.thread_per_gpu = 1;
        return mt_nccl_run(a.world_size, 300.0, train, &ra, NULL) == MT_OK ? 0 : 1;
    }
#endif
    return mt_host_run(a.world_size, 300.0, train, &ra, NULL) == MT_OK ? 0 : 1;  /* ranks as CPU threads */
}
