/* mt/gpt.h — a GPT-2 style model (learned positions, pre-LayerNorm, GELU MLP, tied embeddings),
 * built as pipeline stages from the ops in mt/ops.h.
 *
 *   mt_gpt_config cfg = {0}; cfg.n_layer = 4; cfg.n_embd = 128; cfg.n_head = 4; cfg.vocab_size = 256;
 *   mt_gpt m;   MT_TRY(mt_gpt_init(&cx, &m, &cfg, NULL, 0, 1));   // the whole model as one stage
 *   mt_gpt_acts a; mt_gpt_scratch s;   // from one arena sized by mt_gpt_acts_nbytes
 *   ... copy tokens/targets into a.tokens/a.targets ...
 *   MT_TRY(mt_gpt_forward(&cx, &m, &a, &s, 1.0f / (B * T)));      // losses in a.losses; the head's backward too
 *   MT_TRY(mt_gpt_backward(&cx, &m, &a, &s, NULL, NULL));          // grads += into m.grad_mem
 *
 * The head (last stage) runs in chunks of rows (mt_gpt_head_rows): each chunk's logits, loss,
 * dlogits and classifier backward (wte gradient +=, dL/d(lnf) into s.dln) happen inside the
 * training forward, so one chunk of (rows, Vp) logits exists instead of (B*T, Vp), and the backward
 * starts at the final norm. Hence a training forward on the last stage must be followed by its
 * backward before the next forward there; an evaluation forward (loss_scale 0) computes losses only
 * (mt_gpt_logits: the logits of any rows).
 *
 * Shaped for parallelism:
 *   - a stage holds layers [layer_begin, layer_end); the first stage owns the embedding, the last
 *     the head (a last stage that is not first keeps its own copy of the tied wte);
 *   - a stage's parameters and gradients each live in one contiguous buffer, laid out in backward
 *     order (head first, then layers last to first, then the embedding), each tensor starting on a
 *     64-element boundary, so data parallelism can bucket and shard them;
 *   - the parameter table (mt_param) records each tensor's local shard of the global tensor, so
 *     initialisation depends only on the global index and tp=1 and tp=N start from the same
 *     weights; weights split by rows (column-parallel: qkv, fc, the vocabulary) or by columns
 *     (row-parallel: proj, fc2) over the layer's tensor-parallel group (mt_layer_par).
 *
 * Tensor parallelism (mt_layer_par.tp_size > 1, Megatron's layout; the collectives and the
 * activation layout are described in mt/tensor_parallel.h): each tp rank holds H/tp heads (whole
 * key/value groups of the fused QKV), F/tp of the MLP and Vp/tp rows of the vocabulary. qkv, fc and
 * the classifier are column-parallel, proj and fc2 row-parallel, the embedding and the loss
 * vocab-parallel. Every tp rank of a group is given the same tokens and targets and gets the same
 * per-token losses. With sequence_parallel the residual stream, the norms and their saved inputs hold
 * B*T/tp rows (mt_gpt_rows): rows [tp_rank*B*T/tp, ...) of the (B*T, C) stream, which is also what
 * pipeline stages exchange; the norms' weight gradients (partial per rank) are summed over tp inside
 * the backward, block by block, so every gradient is complete when mt_gpt_backward reports it.
 * A training step needs nothing more than with tp = 1: forward + backward per micro-batch, then the
 * data-parallel reduction and the optimizer, whose clipping norm counts each tensor once
 * (mt_gpt_grad_sumsq: split tensors summed over tp, replicated ones once). On the GPU the
 * column-parallel backwards (qkv, fc, the classifier) hide their tp collectives behind their GEMMs on
 * a side stream that mt_gpt_init creates (mt/tensor_parallel.h); par.no_comm_overlap = 1 (before
 * mt_gpt_init, or in m->par at any time between steps) runs them in line instead.
 *
 * Defines: mt_gpt_config, mt_param, mt_gpt, mt_gpt_block_w, mt_gpt_acts, mt_gpt_scratch,
 *   mt_gpt_config_resolve, mt_gpt_init, mt_gpt_free, mt_gpt_init_values, mt_gpt_rows,
 *   mt_gpt_head_rows, mt_gpt_acts_alloc, mt_gpt_acts_nbytes, mt_gpt_forward, mt_gpt_logits, mt_gpt_backward,
 *   mt_gpt_num_params, mt_gpt_grad_sumsq   (mt_layer_par: mt/tensor_parallel.h)
 */
#ifndef MT_GPT_H
#define MT_GPT_H
#include "core.h"
#include "ops.h"
#include "tensor_parallel.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_gpt_config {
    int n_layer;         /* default 12 */
    int n_embd;          /* C, default 768 */
    int n_head;          /* default 12 */
    int n_kv_head;       /* default n_head (grouped-query attention when smaller) */
    int ffn_hidden;      /* default 4 * n_embd */
    int vocab_size;      /* default 50257 */
    int padded_vocab;    /* default: vocab_size rounded up to a multiple of 128 * tp */
    int max_seq_len;     /* default 1024 */
    float init_std;      /* default 0.02 */
    uint64_t seed;       /* initialisation seed, default 1234 */
} mt_gpt_config;

/* Fill defaults and validate: every message names the value that is wrong. */
MT_API mt_status mt_gpt_config_resolve(mt_gpt_config *c, int tp) {
    if (tp <= 0) tp = 1;
    if (!c->n_layer) c->n_layer = 12;
    if (!c->n_embd) c->n_embd = 768;
    if (!c->n_head) c->n_head = 12;
    if (!c->n_kv_head) c->n_kv_head = c->n_head;
    if (!c->ffn_hidden) c->ffn_hidden = 4 * c->n_embd;
    if (!c->vocab_size) c->vocab_size = 50257;
    if (!c->max_seq_len) c->max_seq_len = 1024;
    if (c->init_std == 0) c->init_std = 0.02f;
    if (!c->seed) c->seed = 1234;
    if (c->n_layer < 0 || c->n_embd < 0 || c->n_head < 0 || c->n_kv_head < 0 || c->ffn_hidden < 0 ||
        c->vocab_size < 0 || c->max_seq_len < 0 || c->padded_vocab < 0)
        return mt_errorf(MT_ERR_ARG, "gpt config: sizes must be positive (layers %d, hidden %d, heads %d, "
                         "kv heads %d, ffn %d, vocab %d, max positions %d)", c->n_layer, c->n_embd, c->n_head,
                         c->n_kv_head, c->ffn_hidden, c->vocab_size, c->max_seq_len);
    if (c->n_embd % c->n_head)
        return mt_errorf(MT_ERR_ARG, "gpt config: hidden size %d is not divisible by the number of heads %d",
                         c->n_embd, c->n_head);
    if (c->n_head % c->n_kv_head)
        return mt_errorf(MT_ERR_ARG, "gpt config: heads %d not divisible by key/value heads %d", c->n_head,
                         c->n_kv_head);
    if (c->n_head % tp)
        return mt_errorf(MT_ERR_ARG, "gpt config: the number of attention heads %d is not divisible by the "
                         "tensor-parallel size %d", c->n_head, tp);
    if (c->n_kv_head % tp)
        return mt_errorf(MT_ERR_ARG, "gpt config: the number of key/value heads %d is not divisible by the "
                         "tensor-parallel size %d", c->n_kv_head, tp);
    if (c->n_embd % tp)
        return mt_errorf(MT_ERR_ARG, "gpt config: the hidden size %d is not divisible by the tensor-parallel size %d",
                         c->n_embd, tp);
    if (c->ffn_hidden % tp)
        return mt_errorf(MT_ERR_ARG, "gpt config: the ffn hidden size %d is not divisible by the tensor-parallel "
                         "size %d", c->ffn_hidden, tp);
    int mult = 128 * tp;
    if (!c->padded_vocab) c->padded_vocab = (c->vocab_size + mult - 1) / mult * mult;
    if (c->padded_vocab < c->vocab_size || c->padded_vocab % tp)
        return mt_errorf(MT_ERR_ARG, "gpt config: padded vocab %d must be >= vocab %d and divisible by tp %d",
                         c->padded_vocab, c->vocab_size, tp);
    return MT_OK;
}

/* ------------------------------------------------------------------ parameters */

enum { MT_INIT_ZEROS, MT_INIT_ONES, MT_INIT_NORMAL, MT_INIT_NORMAL_RESID };
enum { MT_SPLIT_NONE, MT_SPLIT_ROWS, MT_SPLIT_COLS };

typedef struct mt_param {
    char name[40];         /* e.g. "layers.3.fc.weight" */
    size_t offset;         /* elements from the start of the stage's buffer (multiple of 64) */
    int64_t rows, cols;    /* local shape (cols = 1 for vectors) */
    int64_t grows, gcols;  /* global shape */
    int64_t row0, col0;    /* where the local shard starts in the global tensor */
    int split;             /* MT_SPLIT_*: how tensor parallelism cuts it */
    int init;              /* MT_INIT_* */
    int decay;             /* weight decay applies (2-D weights) */
    int tied;              /* the tied embedding: its gradient is summed over the embedding group */
    uint64_t init_id;      /* RNG subsequence; the same whatever the layout */
} mt_param;

/* Per-layer weights (or gradients); shapes are local to this tensor-parallel rank:
 * QKV = (H + 2*Hkv) * D / tp, F = ffn_hidden / tp. */
typedef struct mt_gpt_block_w {
    void *ln1_w, *ln1_b;    /* (C) */
    void *qkv_w, *qkv_b;    /* (QKV, C), (QKV) */
    void *proj_w, *proj_b;  /* (C, H*D/tp), (C) */
    void *ln2_w, *ln2_b;    /* (C) */
    void *fc_w, *fc_b;      /* (F, C), (F) */
    void *fc2_w, *fc2_b;    /* (C, F), (C) */
} mt_gpt_block_w;

typedef struct mt_gpt_w {
    void *wte;              /* (Vp/tp, C) token embedding, tied with the classifier */
    void *wpe;              /* (max_seq_len, C) */
    void *lnf_w, *lnf_b;    /* (C) */
    mt_gpt_block_w *blocks; /* (layer_end - layer_begin) */
} mt_gpt_w;

struct mt_gpt;

/* Callbacks that parallel wrappers (data parallelism, ZeRO) install; NULL members are skipped. */
typedef struct mt_gpt_hooks {
    void *user;
    /* During mt_gpt_backward, each time more gradients are final: the first n_ready elements of
     * grad_mem (backward order), so a bucket's reduction can start while the backward goes on. */
    mt_status (*grads_ready)(void *user, const struct mt_gpt *m, size_t n_ready);
    /* Before layer `layer`'s forward (backward = 0) or backward (1): ZeRO-3 gathers its weights here. */
    mt_status (*before_block)(void *user, const struct mt_gpt *m, int layer, int backward);
    /* Before the forward first reads elements [lo, hi) of param_mem: the embedding's, each block's
     * (ready[] gives the ranges), the head's. ZeRO-1/2 wait here for the all-gather of the parameters
     * that the last step updated, started on a side stream after the step (mt/ddp.h). */
    mt_status (*params_needed)(void *user, const struct mt_gpt *m, size_t lo, size_t hi);
} mt_gpt_hooks;

/* One pipeline stage of the model (the whole model when there is one stage). */
typedef struct mt_gpt {
    mt_gpt_config cfg;
    mt_layer_par par;
    mt_device device;
    mt_dtype dtype;
    int layer_begin, layer_end;  /* this stage's layers */
    int first, last;             /* has the embedding / has the head */
    /* local sizes */
    int C, D, H, Hkv, G, QKV, F, Vp, vstart;
    int n_params;
    mt_param *params;            /* (n_params) */
    size_t num_params;           /* elements in param_mem and grad_mem, padding included */
    void *param_mem, *grad_mem;  /* (num_params) in dtype, on device */
    mt_gpt_w w, g;               /* pointers into param_mem and grad_mem */
    size_t *ready;               /* (nl + 2) gradient elements final after the head, after each
                                    block (last to first) and after the embedding */
    void *tp_buf;                /* (2, 4, C) sequence parallel: a block's norm gradients before their sum
                                    over tp (mt__gpt_sp_stage), in two halves used in turn */
    int head_chunk_rows;         /* last stage: rows of logits that exist at once (mt_gpt_head_rows);
                                    0 = automatic. Set after mt_gpt_init, before sizing the arena */
    mt_gpt_hooks hooks;
} mt_gpt;

/* The block's parameter list, backward order: X(field, global rows, global cols, split, init). */
#define MT_GPT_BLOCK_PARAMS(X)                                  \
    X(fc2_b, C, 1, MT_SPLIT_NONE, MT_INIT_ZEROS)                \
    X(fc2_w, C, FF, MT_SPLIT_COLS, MT_INIT_NORMAL_RESID)        \
    X(fc_b, FF, 1, MT_SPLIT_ROWS, MT_INIT_ZEROS)                \
    X(fc_w, FF, C, MT_SPLIT_ROWS, MT_INIT_NORMAL)               \
    X(ln2_b, C, 1, MT_SPLIT_NONE, MT_INIT_ZEROS)                \
    X(ln2_w, C, 1, MT_SPLIT_NONE, MT_INIT_ONES)                 \
    X(proj_b, C, 1, MT_SPLIT_NONE, MT_INIT_ZEROS)               \
    X(proj_w, C, HD, MT_SPLIT_COLS, MT_INIT_NORMAL_RESID)       \
    X(qkv_b, QKV, 1, MT_SPLIT_ROWS, MT_INIT_ZEROS)              \
    X(qkv_w, QKV, C, MT_SPLIT_ROWS, MT_INIT_NORMAL)             \
    X(ln1_b, C, 1, MT_SPLIT_NONE, MT_INIT_ZEROS)                \
    X(ln1_w, C, 1, MT_SPLIT_NONE, MT_INIT_ONES)

MT_API mt_status mt__gpt_add_param(mt_gpt *m, const char *name, int64_t grows, int64_t gcols, int split, int init,
                                   int tied, uint64_t init_id) {
    int tp = m->par.tp_size, r = m->par.tp_rank;
    mt_param *p = &m->params[m->n_params++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->grows = grows; p->gcols = gcols;
    p->rows = split == MT_SPLIT_ROWS ? grows / tp : grows;
    p->cols = split == MT_SPLIT_COLS ? gcols / tp : gcols;
    p->row0 = split == MT_SPLIT_ROWS ? r * p->rows : 0;
    p->col0 = split == MT_SPLIT_COLS ? r * p->cols : 0;
    p->split = split; p->init = init; p->decay = gcols > 1; p->tied = tied; p->init_id = init_id;
    p->offset = m->num_params;
    m->num_params += ((size_t)(p->rows * p->cols) + 63) / 64 * 64;
    return MT_OK;
}

/* Point the weights (or gradients) whose elements start in [lo, hi) of the buffer layout at `base`,
 * which holds elements [lo, ...): a tensor at offset o goes to base + (o - lo). */
MT_API void mt__gpt_bind_range(const mt_gpt *m, char *base, size_t lo, size_t hi, mt_gpt_w *w) {
    size_t es = mt_dtype_size(m->dtype);
    int k = 0;
#define MT__AT(ptr)                                                          \
    do {                                                                     \
        size_t o = m->params[k++].offset;                                    \
        if (o >= lo && o < hi) (ptr) = base + (o - lo) * es;                 \
    } while (0)
    if (m->last) { MT__AT(w->lnf_b); MT__AT(w->lnf_w); }
    if (m->last && !m->first) MT__AT(w->wte);
    for (int l = m->layer_end - 1; l >= m->layer_begin; l--) {
        mt_gpt_block_w *b = &w->blocks[l - m->layer_begin];
#define MT__X(field, R, Cc, split, init) MT__AT(b->field);
        MT_GPT_BLOCK_PARAMS(MT__X)
#undef MT__X
    }
    if (m->first) { MT__AT(w->wpe); MT__AT(w->wte); }
#undef MT__AT
}

/* Resolve the pointers of weights (or gradients) into `base`, a whole buffer. */
MT_API void mt__gpt_bind(const mt_gpt *m, char *base, mt_gpt_w *w) { mt__gpt_bind_range(m, base, 0, SIZE_MAX, w); }

/* Build stage [layer_begin, layer_end) (layer_end 0 = all layers); allocates params and grads
 * on cx's device in cx's dtype (uninitialised: see mt_gpt_init_values). */
MT_API mt_status mt_gpt_init(const mt_ctx *cx, mt_gpt *m, const mt_gpt_config *cfg, const mt_layer_par *par,
                             int layer_begin, int layer_end) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (par) m->par = *par;
    m->par.comm_stream = NULL; /* this model's own, made below */
    memset(m->par.comm_ev, 0, sizeof m->par.comm_ev);
    if (m->par.tp_size <= 0) m->par.tp_size = 1;
    if (m->par.cp_size <= 0) m->par.cp_size = 1;
    if (m->par.ep_size <= 0) m->par.ep_size = 1;
    MT_TRY(mt_gpt_config_resolve(&m->cfg, m->par.tp_size));
    const mt_gpt_config *c = &m->cfg;
    if (layer_end == 0) layer_end = c->n_layer;
    if (layer_begin < 0 || layer_end > c->n_layer || layer_begin >= layer_end)
        return mt_errorf(MT_ERR_ARG, "gpt: stage layers [%d, %d) outside [0, %d)", layer_begin, layer_end,
                         c->n_layer);
    if (m->par.cp_size > 1 || m->par.ep_size > 1)
        return mt_errorf(MT_ERR_UNSUPPORTED, "gpt: context/expert parallel sizes %d/%d: only 1 so far",
                         m->par.cp_size, m->par.ep_size);
    int tp = m->par.tp_size;
    if (tp > 1 && (!m->par.tp || mt_comm_size(m->par.tp) != tp || mt_comm_rank(m->par.tp) != m->par.tp_rank))
        return mt_errorf(MT_ERR_ARG, "gpt: tensor-parallel rank %d of %d needs the tp communicator of that group "
                         "(par.tp is %s of size %d, rank %d)", m->par.tp_rank, tp, m->par.tp ? "a group" : "NULL",
                         mt_comm_size(m->par.tp), mt_comm_rank(m->par.tp));
    if (tp == 1 && (m->par.tp_rank != 0)) return mt_errorf(MT_ERR_ARG, "gpt: tp rank %d of 1", m->par.tp_rank);
    if (tp == 1) m->par.sequence_parallel = 0;
    m->device = cx->device;
    m->dtype = cx->dtype;
    m->layer_begin = layer_begin; m->layer_end = layer_end;
    m->first = layer_begin == 0; m->last = layer_end == c->n_layer;
    m->C = c->n_embd; m->D = c->n_embd / c->n_head;
    m->H = c->n_head / tp; m->Hkv = c->n_kv_head / tp; m->G = m->H / m->Hkv;
    m->QKV = (m->H + 2 * m->Hkv) * m->D; m->F = c->ffn_hidden / tp;
    m->Vp = c->padded_vocab / tp; m->vstart = m->par.tp_rank * m->Vp;

    int nl = layer_end - layer_begin;
    MT_TRY(mt_calloc(sizeof(mt_param) * (size_t)(12 * nl + 5), (void **)&m->params));
    int64_t C = m->C, FF = c->ffn_hidden, HD = (int64_t)c->n_head * m->D;
    int64_t QKV = (int64_t)(c->n_head + 2 * c->n_kv_head) * m->D, V = c->padded_vocab;
    char name[40];
    /* init ids: 0 wte, 1 wpe, 2-3 lnf, 16 + 16*l + k for layer l's k-th tensor */
    if (m->last) {
        mt__gpt_add_param(m, "lnf.bias", C, 1, MT_SPLIT_NONE, MT_INIT_ZEROS, 0, 3);
        mt__gpt_add_param(m, "lnf.weight", C, 1, MT_SPLIT_NONE, MT_INIT_ONES, 0, 2);
    }
    if (m->last && !m->first) mt__gpt_add_param(m, "wte", V, C, MT_SPLIT_ROWS, MT_INIT_NORMAL, 1, 0);
    for (int l = layer_end - 1; l >= layer_begin; l--) {
        int k = 0;
#define MT__X(field, R, Cc, split, init)                                                   \
        snprintf(name, sizeof name, "layers.%d.%s", l, #field);                            \
        mt__gpt_add_param(m, name, R, Cc, split, init, 0, 16 + 16 * (uint64_t)l + (uint64_t)k++);
        MT_GPT_BLOCK_PARAMS(MT__X)
#undef MT__X
    }
    if (m->first) {
        mt__gpt_add_param(m, "wpe", c->max_seq_len, C, MT_SPLIT_NONE, MT_INIT_NORMAL, 0, 1);
        mt__gpt_add_param(m, "wte", V, C, MT_SPLIT_ROWS, MT_INIT_NORMAL, 1, 0);
    }
    MT_TRY(mt_calloc(sizeof(size_t) * (size_t)(nl + 2), (void **)&m->ready));
    {   /* head params, then 12 per block, then the embedding's: where each group ends */
        int k = (m->last ? 2 : 0) + (m->last && !m->first ? 1 : 0);
        m->ready[0] = k ? m->params[k - 1].offset + ((size_t)(m->params[k - 1].rows * m->params[k - 1].cols) + 63) / 64 * 64 : 0;
        for (int b = 1; b <= nl; b++) {
            k += 12;
            const mt_param *p = &m->params[k - 1];
            m->ready[b] = p->offset + ((size_t)(p->rows * p->cols) + 63) / 64 * 64;
        }
        m->ready[nl + 1] = m->num_params;
    }
    size_t nbytes = m->num_params * mt_dtype_size(m->dtype);
    MT_TRY(mt_calloc(sizeof(mt_gpt_block_w) * (size_t)nl, (void **)&m->w.blocks));
    MT_TRY(mt_calloc(sizeof(mt_gpt_block_w) * (size_t)nl, (void **)&m->g.blocks));
    MT_TRY(mt_device_alloc(m->device, nbytes, &m->param_mem));
    MT_TRY(mt_device_alloc(m->device, nbytes, &m->grad_mem));
    MT_TRY(mt_zero(cx, m->param_mem, nbytes));
    MT_TRY(mt_zero(cx, m->grad_mem, nbytes));
    mt__gpt_bind(m, (char *)m->param_mem, &m->w);
    mt__gpt_bind(m, (char *)m->grad_mem, &m->g);
    if (mt_tp_sp(&m->par)) MT_TRY(mt_device_alloc(m->device, 8 * (size_t)m->C * mt_dtype_size(m->dtype), &m->tp_buf));
    return mt_tp_overlap_init(cx, &m->par); /* the backward's side stream for tp collectives (GPU, tp > 1) */
}

MT_API void mt_gpt_free(mt_gpt *m) {
    mt_device_free(m->device, m->param_mem);
    mt_device_free(m->device, m->grad_mem);
    mt_free(m->w.blocks);
    mt_free(m->g.blocks);
    mt_free(m->params);
    mt_free(m->ready);
    mt_device_free(m->device, m->tp_buf);
    mt_tp_overlap_free(&m->par);
    memset(m, 0, sizeof *m);
}

/* Parameters of the whole model (not of this stage), without padding; `with_wpe` 0 gives the N of
 * the 6N + 12·L·C·T FLOP count. */
MT_API int64_t mt_gpt_num_params(const mt_gpt_config *c, int with_wpe) {
    int64_t C = c->n_embd, D = C / c->n_head, QKV = (int64_t)(c->n_head + 2 * c->n_kv_head) * D;
    int64_t HD = (int64_t)c->n_head * D, F = c->ffn_hidden;
    int64_t per_layer = 4 * C + QKV * C + QKV + C * HD + C + F * C + F + C * F + C;
    return (int64_t)c->padded_vocab * C + (with_wpe ? (int64_t)c->max_seq_len * C : 0) + 2 * C +
           c->n_layer * per_layer;
}

/* Threads for the one-off host initialisation: the machine's cores shared by the ranks of this node.
 * Launchers set OMP_NUM_THREADS=1 for each process (torchrun does), which would leave a 1.5B-parameter
 * model drawing its normals on one core for minutes; the local world size is read from the launcher's
 * variables instead (torchrun, Open MPI, Slurm; 1 when none). */
MT_API int mt__init_threads(void) {
#ifdef _OPENMP
    const char *vars[3] = {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"};
    int local = 1, n;
    for (int i = 0; i < 3; i++)
        if (getenv(vars[i]) && (local = atoi(getenv(vars[i]))) >= 1) break;
    if (local < 1) local = 1;
    n = omp_get_num_procs() / local;
    return n < 1 ? 1 : n;
#else
    return 1;
#endif
}

/* GPT-2 initialisation into a host buffer (num_params floats): N(0, 0.02) weights, residual
 * projections N(0, 0.02/sqrt(2L)), zero biases, unit norm weights. Each value is drawn from
 * (seed, param id, global element index), so any stage/tensor-parallel layout gets the same weights. */
MT_API void mt_gpt_init_values(const mt_gpt *m, float *host) {
    memset(host, 0, sizeof(float) * m->num_params);
    double resid_std = m->cfg.init_std / sqrt(2.0 * m->cfg.n_layer);
    int nt = mt__init_threads();
    (void)nt;
    for (int i = 0; i < m->n_params; i++) {
        const mt_param *p = &m->params[i];
        float *dst = host + p->offset;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t r = 0; r < p->rows; r++)
            for (int64_t c = 0; c < p->cols; c++) {
                uint64_t gi = (uint64_t)((p->row0 + r) * p->gcols + p->col0 + c);
                float v = 0;
                if (p->init == MT_INIT_ONES) v = 1.0f;
                else if (p->init == MT_INIT_NORMAL) v = m->cfg.init_std * mt_rng_normal(m->cfg.seed, p->init_id, gi);
                else if (p->init == MT_INIT_NORMAL_RESID) v = (float)(resid_std * mt_rng_normal(m->cfg.seed, p->init_id, gi));
                dst[r * p->cols + c] = v;
            }
    }
}

/* ------------------------------------------------------------------ activations */

/* Saved for the backward, one set per micro-batch in flight. N = B*T rows; R = the rows of the
 * residual stream this rank holds (N, or N/tp under sequence parallelism: mt_gpt_rows); sizes local
 * to the tp rank (QKV, H, F as in mt_gpt). "stat" buffers are in the stat type (float, or double for
 * f64). */
typedef struct mt_gpt_block_acts {
    void *ln1, *ln1_mean, *ln1_rstd;  /* (R,C), (R), (R) */
    void *qkv;                        /* (N, QKV) = (B,T,Hkv,G+2,D) */
    void *atty, *lse;                 /* (N, H*D), (B,H,T) */
    void *r;                          /* (R,C) residual after attention */
    void *ln2, *ln2_mean, *ln2_rstd;  /* (R,C), (R), (R) */
    void *fch, *fch_gelu;             /* (N,F) before and after GELU */
} mt_gpt_block_acts;

typedef struct mt_gpt_acts {
    int B, T;
    int32_t *tokens, *targets;  /* (N) on the device: the first stage reads tokens, the last targets */
    void **res;                 /* (nl+1) residual streams (R,C): res[0] enters the stage, res[nl] leaves */
    mt_gpt_block_acts *blocks;  /* (nl) */
    void *lnf, *lnf_mean, *lnf_rstd;  /* (R,C), (R), (R) */
    void *losses;               /* (N) per-token loss (stat type), the same on every tp rank */
} mt_gpt_acts;

/* Working memory shared by all micro-batches (not kept between forward and backward, except
 * dln on the last stage: its forward leaves dL/d(lnf) there for its backward). */
typedef struct mt_gpt_scratch {
    void *logits;      /* (head_rows, Vp) one chunk of logits, dlogits in place while training (Vp local:
                          this rank's vocab columns); mt_gpt_logits recomputes any rows */
    void *dres, *dr;   /* (R,C) gradient of the residual stream, and of the mid-block residual */
    void *dln;         /* (N,C) a column-parallel layer's dgrad before its reduction over tp; on the last
                          stage the forward's classifier backward fills it (rows at dlnf) */
    void *dqkv;        /* (N, QKV) */
    void *datty;       /* (N, H*D) */
    void *dfch;        /* (N, F) */
    void *gather;      /* (N,C) sequence parallel only: all-gathered rows, row-parallel partial sums */
    void *xent_stats;  /* (tp, 3, head_rows) stat type, tp > 1 on the last stage: vocab-parallel loss
                          statistics of one chunk */
    void *attn_ws;     /* attention backward workspace (GPU flash attention), attn_ws_nbytes */
    size_t attn_ws_nbytes;
    int head_rows;     /* rows of logits allocated (mt_gpt_head_rows at mt_gpt_acts_alloc) */
    void *dlnf;        /* set by a training forward on the last stage: dL/d(lnf) as this rank holds
                          lnf, inside dln; the backward starts there and clears it */
} mt_gpt_scratch;

/* Rows of the (B*T, C) residual stream this rank holds: B*T, or B*T/tp under sequence parallelism
 * (rows [tp_rank*B*T/tp, (tp_rank+1)*B*T/tp)); pipeline stages send and receive this many. */
MT_API int mt_gpt_rows(const mt_gpt *m, int B, int T) { return mt_tp_rows(&m->par, B * T); }

/* The last stage runs the classifier in chunks of rows so that only one chunk of logits exists
 * (s->logits is (rows, Vp), not (B*T, Vp): 3.1 GiB at d12 with B = 32, T = 1024 in bf16).
 * m->head_chunk_rows when set (any positive count, at most B*T); automatic: all B*T rows when their
 * logits fit in MT_GPT_HEAD_BYTES, else the fewest even chunks that fit, rounded up to a multiple
 * of 128 rows. 256 MiB leaves GEMMs of >= 2048 rows x 50304 x C in bf16 (full speed on an H100),
 * so the split costs little more than one extra read and write of the wte gradient per chunk.
 * Sequence parallelism: the column-parallel head all-gathers the whole sequence's rows and
 * reduce-scatters their gradient, which a chunk of rows does not map onto: one chunk of B*T. */
#ifndef MT_GPT_HEAD_BYTES
#define MT_GPT_HEAD_BYTES ((size_t)256 << 20)
#endif
MT_API int mt_gpt_head_rows(const mt_gpt *m, int B, int T) {
    size_t N = (size_t)B * T, row = (size_t)m->Vp * mt_dtype_size(m->dtype), k, r;
    if (mt_tp_sp(&m->par) || N == 0) return (int)N;
    if (m->head_chunk_rows > 0) return (size_t)m->head_chunk_rows < N ? m->head_chunk_rows : (int)N;
    if (N * row <= MT_GPT_HEAD_BYTES) return (int)N;
    k = (N * row + MT_GPT_HEAD_BYTES - 1) / MT_GPT_HEAD_BYTES;
    r = ((N + k - 1) / k + 127) / 128 * 128;
    return (int)(r < N ? r : N);
}

MT_API mt_status mt__take(mt_arena *a, size_t count, mt_dtype dt, void **out) {
    return mt_arena_alloc(a, count * mt_dtype_size(dt), out);
}

/* Carve one micro-batch's activations (acts) and, when s != NULL, the shared scratch out of `a`.
 * With a measuring arena ({0}) this only counts: see mt_gpt_acts_nbytes. */
MT_API mt_status mt_gpt_acts_alloc(const mt_gpt *m, mt_arena *ar, int B, int T, mt_gpt_acts *a, mt_gpt_scratch *s) {
    mt_dtype dt = m->dtype, st = m->dtype == MT_F64 ? MT_F64 : MT_F32;
    size_t N = (size_t)B * T, C = (size_t)m->C, R;
    int nl = m->layer_end - m->layer_begin, tp = m->par.tp_size;
    memset(a, 0, sizeof *a);
    a->B = B; a->T = T;
    if (B <= 0 || T <= 0 || T > m->cfg.max_seq_len)
        return mt_errorf(MT_ERR_ARG, "gpt: micro-batch %d x sequence %d (max sequence %d)", B, T, m->cfg.max_seq_len);
    if (mt_tp_sp(&m->par) && N % (size_t)tp)
        return mt_errorf(MT_ERR_ARG, "gpt: sequence parallelism splits the micro-batch's B*T = %d*%d = %zu tokens "
                         "over the tensor-parallel size %d, which does not divide them", B, T, N, tp);
    R = (size_t)mt_gpt_rows(m, B, T);
    if (ar->base) {  /* the host-side pointer tables */
        MT_TRY(mt_calloc(sizeof(void *) * (size_t)(nl + 1), (void **)&a->res));
        MT_TRY(mt_calloc(sizeof(mt_gpt_block_acts) * (size_t)nl, (void **)&a->blocks));
    }
    MT_TRY(mt_arena_alloc(ar, N * 4, (void **)&a->tokens));
    MT_TRY(mt_arena_alloc(ar, N * 4, (void **)&a->targets));
    for (int l = 0; l <= nl; l++) {
        void *p;
        MT_TRY(mt__take(ar, R * C, dt, &p));
        if (a->res) a->res[l] = p;
    }
    for (int l = 0; l < nl; l++) {
        mt_gpt_block_acts tmp, *b = a->blocks ? &a->blocks[l] : &tmp;
        MT_TRY(mt__take(ar, R * C, dt, &b->ln1));
        MT_TRY(mt__take(ar, R, st, &b->ln1_mean));
        MT_TRY(mt__take(ar, R, st, &b->ln1_rstd));
        MT_TRY(mt__take(ar, N * m->QKV, dt, &b->qkv));
        MT_TRY(mt__take(ar, N * m->H * m->D, dt, &b->atty));
        MT_TRY(mt__take(ar, N * m->H, st, &b->lse));
        MT_TRY(mt__take(ar, R * C, dt, &b->r));
        MT_TRY(mt__take(ar, R * C, dt, &b->ln2));
        MT_TRY(mt__take(ar, R, st, &b->ln2_mean));
        MT_TRY(mt__take(ar, R, st, &b->ln2_rstd));
        MT_TRY(mt__take(ar, N * m->F, dt, &b->fch));
        MT_TRY(mt__take(ar, N * m->F, dt, &b->fch_gelu));
    }
    if (m->last) {
        MT_TRY(mt__take(ar, R * C, dt, &a->lnf));
        MT_TRY(mt__take(ar, R, st, &a->lnf_mean));
        MT_TRY(mt__take(ar, R, st, &a->lnf_rstd));
        MT_TRY(mt__take(ar, N, st, &a->losses));
    }
    if (s) {
        memset(s, 0, sizeof *s);
        s->head_rows = m->last ? mt_gpt_head_rows(m, B, T) : 0;
        if (m->last) MT_TRY(mt__take(ar, (size_t)s->head_rows * m->Vp, dt, &s->logits));
        MT_TRY(mt__take(ar, R * C, dt, &s->dres));
        MT_TRY(mt__take(ar, R * C, dt, &s->dr));
        MT_TRY(mt__take(ar, N * C, dt, &s->dln));
        MT_TRY(mt__take(ar, N * m->QKV, dt, &s->dqkv));
        MT_TRY(mt__take(ar, N * m->H * m->D, dt, &s->datty));
        MT_TRY(mt__take(ar, N * m->F, dt, &s->dfch));
        if (mt_tp_sp(&m->par)) MT_TRY(mt__take(ar, N * C, dt, &s->gather));
        if (m->last && tp > 1) MT_TRY(mt__take(ar, (size_t)tp * 3 * s->head_rows, st, &s->xent_stats));
        mt_ctx cx;
        memset(&cx, 0, sizeof cx);
        cx.device = m->device;
        cx.dtype = m->dtype;
        s->attn_ws_nbytes = mt_attention_workspace_nbytes(&cx, B, T, m->Hkv, m->G, m->D);
        if (s->attn_ws_nbytes) MT_TRY(mt_arena_alloc(ar, s->attn_ws_nbytes, &s->attn_ws));
    }
    return MT_OK;
}

MT_API void mt_gpt_acts_free(mt_gpt_acts *a) {
    mt_free(a->res);
    mt_free(a->blocks);
    a->res = NULL;
    a->blocks = NULL;
}

/* Bytes of arena that `n_acts` micro-batches of activations plus one scratch need. */
MT_API size_t mt_gpt_acts_nbytes(const mt_gpt *m, int B, int T, int n_acts) {
    mt_arena measure;
    mt_gpt_acts a;
    mt_gpt_scratch s;
    memset(&measure, 0, sizeof measure);
    for (int i = 0; i < n_acts; i++)
        if (mt_gpt_acts_alloc(m, &measure, B, T, &a, i == 0 ? &s : NULL) != MT_OK) return 0;
    return measure.used + MT_ARENA_ALIGN;
}

/* ------------------------------------------------------------------ forward and backward */

/* One transformer block:  r = x + proj(attn(LN1(x)));  y = r + fc2(gelu(fc(LN2(r)))).
 * x, r, y and the norms hold this rank's R rows (mt_gpt_rows); qkv and fc are column-parallel, proj
 * and fc2 row-parallel over the tp group, attention runs on this rank's heads (mt/tensor_parallel.h:
 * with tp = 1 each of these is the plain fused GEMM). */
MT_API mt_status mt_gpt_block_fwd(const mt_ctx *cx, const mt_gpt *m, const mt_gpt_block_w *w, mt_gpt_block_acts *a,
                                  const void *x, void *y, mt_gpt_scratch *s, int B, int T) {
    const mt_layer_par *p = &m->par;
    int N = B * T, R = mt_tp_rows(p, N), C = m->C, HD = m->H * m->D;
    MT_TRY(mt_layernorm_fwd(cx, a->ln1, a->ln1_mean, a->ln1_rstd, x, w->ln1_w, w->ln1_b, R, C));
    MT_TRY(mt_column_parallel_fwd(cx, p, a->qkv, NULL, a->ln1, w->qkv_w, w->qkv_b, s->gather, N, C, m->QKV));
    MT_TRY(mt_attention_fwd(cx, a->atty, a->lse, a->qkv, B, T, m->Hkv, m->G, m->D, 1));
    MT_TRY(mt_row_parallel_fwd(cx, p, a->r, a->atty, w->proj_w, w->proj_b, x, s->gather, N, HD, C));
    MT_TRY(mt_layernorm_fwd(cx, a->ln2, a->ln2_mean, a->ln2_rstd, a->r, w->ln2_w, w->ln2_b, R, C));
    MT_TRY(mt_column_parallel_fwd(cx, p, a->fch_gelu, a->fch, a->ln2, w->fc_w, w->fc_b, s->gather, N, C, m->F));
    MT_TRY(mt_row_parallel_fwd(cx, p, y, a->fch_gelu, w->fc2_w, w->fc2_b, a->r, s->gather, N, m->F, C));
    return MT_OK;
}

/* Its backward: dres holds dL/dy on entry and dL/dx on return; weight gradients += into g. */
MT_API mt_status mt_gpt_block_bwd(const mt_ctx *cx, const mt_gpt *m, const mt_gpt_block_w *w, mt_gpt_block_w *g,
                                  const mt_gpt_block_acts *a, const void *x, mt_gpt_scratch *s, int B, int T) {
    const mt_layer_par *p = &m->par;
    int N = B * T, R = mt_tp_rows(p, N), C = m->C, HD = m->H * m->D;
    void *dln; /* dL/d(norm output) in this rank's rows, inside s->dln */
    MT_TRY(mt_row_parallel_bwd(cx, p, s->dfch, g->fc2_w, g->fc2_b, s->dres, a->fch_gelu, w->fc2_w, a->fch, s->gather,
                               N, m->F, C));
    MT_TRY(mt_column_parallel_bwd(cx, p, s->dln, g->fc_w, g->fc_b, s->dfch, a->ln2, w->fc_w, s->gather, N, C, m->F,
                                  &dln));
    MT_TRY(mt_layernorm_bwd(cx, s->dr, g->ln2_w, g->ln2_b, dln, s->dres, a->r, w->ln2_w, a->ln2_mean, a->ln2_rstd,
                            R, C));
    MT_TRY(mt_row_parallel_bwd(cx, p, s->datty, g->proj_w, g->proj_b, s->dr, a->atty, w->proj_w, NULL, s->gather, N,
                               HD, C));
    MT_TRY(mt_attention_bwd(cx, s->dqkv, s->datty, a->atty, a->lse, a->qkv, B, T, m->Hkv, m->G, m->D, 1, s->attn_ws,
                            s->attn_ws_nbytes));
    MT_TRY(mt_column_parallel_bwd(cx, p, s->dln, g->qkv_w, g->qkv_b, s->dqkv, a->ln1, w->qkv_w, s->gather, N, C,
                                  m->QKV, &dln));
    MT_TRY(mt_layernorm_bwd(cx, s->dres, g->ln1_w, g->ln1_b, dln, s->dr, x, w->ln1_w, a->ln1_mean, a->ln1_rstd, R,
                            C));
    return MT_OK;
}

/* Sequence parallelism: a norm's weight and bias gradients from one micro-batch cover this rank's rows
 * only. The backward sends them to half h of m->tp_buf instead (stage: point the n vectors at it,
 * zeroed), then sums them over tp and adds them to the gradients (commit: up to 4 of them,
 * NULL-terminated). So data-parallel buckets, gradient accumulation and the optimizer see complete,
 * tp-identical gradients; the trainer calls nothing. Overlapped (mt__tp_overlap), the commit runs on
 * the tp side stream while the next block's backward goes on (the blocks use the halves in turn,
 * and a half is zeroed again only after its commit: event 2 + h); mt__gpt_sp_join makes the compute
 * stream wait for it before the block's gradients are reported final, and at the backward's end. */
MT_API mt_status mt__gpt_sp_stage(const mt_ctx *cx, const mt_gpt *m, int h, void **v[], int n) {
    size_t es = mt_dtype_size(m->dtype);
    char *buf = (char *)m->tp_buf + (size_t)h * 4 * m->C * es;
    if (mt__tp_overlap(cx, &m->par)) MT_TRY(mt__tp_wait(&m->par, 2 + h, cx->stream));
    for (int k = 0; k < n; k++) *v[k] = buf + (size_t)k * m->C * es;
    return mt_zero(cx, buf, (size_t)n * m->C * es);
}

MT_API mt_status mt__gpt_sp_commit(const mt_ctx *cx, const mt_gpt *m, int h, void *g0, void *g1, void *g2, void *g3) {
    void *g[4] = {g0, g1, g2, g3};
    int n = g3 ? 4 : g2 ? 3 : g1 ? 2 : 1, ov = mt__tp_overlap(cx, &m->par);
    size_t es = mt_dtype_size(m->dtype);
    char *buf = (char *)m->tp_buf + (size_t)h * 4 * m->C * es;
    mt_ctx cc = *cx;
    if (ov) {
        cc.stream = m->par.comm_stream;
        MT_TRY(mt__tp_order(&m->par, 0, cx->stream, cc.stream));
    }
    MT_TRY(mt_tp_all_reduce(&cc, &m->par, buf, (size_t)n * m->C, m->dtype));
    for (int k = 0; k < n; k++) MT_TRY(mt_residual_fwd(&cc, g[k], g[k], buf + (size_t)k * m->C * es, (size_t)m->C));
    return ov ? mt__tp_record(&m->par, 2 + h, cc.stream) : MT_OK;
}

/* The compute stream waits for the commits issued so far (no-op when they ran in line). */
MT_API mt_status mt__gpt_sp_join(const mt_ctx *cx, const mt_gpt *m) {
    if (!mt_tp_sp(&m->par) || !mt__tp_overlap(cx, &m->par)) return MT_OK;
    return mt__tp_order(&m->par, 1, m->par.comm_stream, cx->stream);
}

/* The last stage's classifier and loss, one chunk of rows [r0, r0 + n) at a time (mt_gpt_head_rows):
 * logits, per-token losses, and when training dlogits in place and at once the chunk's classifier
 * backward (its rows of dL/d(lnf) into s->dln, the wte gradient +=), so that the chunk's logits
 * can be overwritten by the next. Under SP the one chunk is all rows (r0 = 0, lnf this rank's). */
MT_API mt_status mt__gpt_head(const mt_ctx *cx, const mt_gpt *m, mt_gpt_acts *a, mt_gpt_scratch *s, float loss_scale) {
    const mt_layer_par *p = &m->par;
    int N = a->B * a->T, C = m->C, rows = mt_gpt_head_rows(m, a->B, a->T);
    size_t es = mt_dtype_size(m->dtype), ss = mt_dtype_size(mt_stat_dtype(cx));
    s->dlnf = NULL;
    if (rows > s->head_rows)
        return mt_errorf(MT_ERR_ARG, "gpt forward: the head takes %d rows at a time, the scratch has logits for %d "
                         "(allocate it for this micro-batch and head_chunk_rows)", rows, s->head_rows);
    for (int r0 = 0; r0 < N; r0 += rows) {
        int n = N - r0 < rows ? N - r0 : rows;
        const void *x = (const char *)a->lnf + (size_t)r0 * C * es;
        void *dln;
        MT_TRY(mt_column_parallel_fwd(cx, p, s->logits, NULL, x, m->w.wte, NULL, s->gather, n, C, m->Vp));
        MT_TRY(mt_vocab_parallel_xent(cx, p, (char *)a->losses + (size_t)r0 * ss, loss_scale != 0 ? s->logits : NULL,
                                      s->logits, a->targets + r0, loss_scale, s->xent_stats, n, m->cfg.vocab_size,
                                      m->Vp, m->vstart));
        if (loss_scale == 0) continue;
        MT_TRY(mt_column_parallel_bwd(cx, p, (char *)s->dln + (size_t)r0 * C * es, m->g.wte, NULL, s->logits, x,
                                      m->w.wte, s->gather, n, C, m->Vp, &dln));
        if (r0 == 0) s->dlnf = dln; /* SP: this rank's rows of the reduce-scattered whole */
    }
    return MT_OK;
}

/* The stage's forward for one micro-batch. The first stage embeds a->tokens into a->res[0]; other
 * stages expect the previous stage's output already in a->res[0]. The last stage computes per-token
 * losses into a->losses; with loss_scale != 0 (e.g. 1/(tokens in the global batch), which scales
 * dlogits) it also runs the classifier's backward (mt__gpt_head): the wte gradient is added here
 * and dL/d(lnf) left in s->dln, so on the last stage this forward must be followed by its backward
 * for the same micro-batch before another forward (pipeline schedules: the last stage's backward
 * follows its forward directly). loss_scale 0 means forward only (evaluation), gradients untouched;
 * s->logits then holds the last chunk's logits, mt_gpt_logits any rows. */
MT_API mt_status mt_gpt_forward(const mt_ctx *cx, const mt_gpt *m, mt_gpt_acts *a, mt_gpt_scratch *s,
                                float loss_scale) {
    const mt_layer_par *p = &m->par;
    int B = a->B, T = a->T, N = B * T, R = mt_tp_rows(p, N), C = m->C, nl = m->layer_end - m->layer_begin;
    mt_gpt_hooks h = m->hooks;
    if (m->first) {
        if (h.params_needed) MT_TRY(h.params_needed(h.user, m, m->ready[nl], m->ready[nl + 1]));
        MT_TRY(mt_vocab_parallel_embedding_fwd(cx, p, a->res[0], a->tokens, m->w.wte, m->w.wpe, s->gather, B, T, C, 0,
                                               m->vstart, m->Vp));
    }
    for (int l = 0; l < nl; l++) {
        if (h.before_block) MT_TRY(h.before_block(h.user, m, m->layer_begin + l, 0));
        if (h.params_needed) MT_TRY(h.params_needed(h.user, m, m->ready[nl - 1 - l], m->ready[nl - l]));
        MT_TRY(mt_gpt_block_fwd(cx, m, &m->w.blocks[l], &a->blocks[l], a->res[l], a->res[l + 1], s, B, T));
    }
    if (!m->last) return MT_OK;
    if (h.params_needed) MT_TRY(h.params_needed(h.user, m, 0, m->ready[0])); /* lnf; a later stage's wte copy */
    MT_TRY(mt_layernorm_fwd(cx, a->lnf, a->lnf_mean, a->lnf_rstd, a->res[nl], m->w.lnf_w, m->w.lnf_b, R, C));
    return mt__gpt_head(cx, m, a, s, loss_scale);
}

/* Logits of rows [r0, r0 + n) of the last forward's micro-batch (n <= s->head_rows), recomputed from
 * a->lnf into s->logits (the forward keeps one chunk at most, as dlogits when training); *out points
 * at row r0's Vp local logits. Under SP the head computes all rows at once (all-gathering lnf: every
 * tp rank calls this alike), so this does too. */
MT_API mt_status mt_gpt_logits(const mt_ctx *cx, const mt_gpt *m, const mt_gpt_acts *a, mt_gpt_scratch *s, int r0,
                               int n, void **out) {
    int N = a->B * a->T, sp = mt_tp_sp(&m->par);
    size_t es = mt_dtype_size(m->dtype);
    if (!m->last || r0 < 0 || n <= 0 || r0 + n > N || n > s->head_rows)
        return mt_errorf(MT_ERR_ARG, "gpt logits: rows [%d, %d) of %d, %d at a time%s", r0, r0 + n, N, s->head_rows,
                         m->last ? "" : ", and this stage has no head");
    MT_TRY(mt_column_parallel_fwd(cx, &m->par, s->logits, NULL, (const char *)a->lnf + (sp ? 0 : (size_t)r0 * m->C * es),
                                  m->w.wte, NULL, s->gather, sp ? N : n, m->C, m->Vp));
    *out = (char *)s->logits + (sp ? (size_t)r0 * m->Vp * es : 0);
    return MT_OK;
}

/* The stage's backward for the micro-batch of `a`, right after its training forward on the last
 * stage (which did the classifier's part: it starts from s->dlnf). dout: dL/d(output) (R,C) from
 * the next stage (NULL on the last stage). dx: where to write dL/d(input) (R,C) for the previous
 * stage (NULL on the first stage). Gradients += into m->grad_mem. */
MT_API mt_status mt_gpt_backward(const mt_ctx *cx, mt_gpt *m, const mt_gpt_acts *a, mt_gpt_scratch *s,
                                 const void *dout, void *dx) {
    const mt_layer_par *p = &m->par;
    int B = a->B, T = a->T, N = B * T, R = mt_tp_rows(p, N), C = m->C, nl = m->layer_end - m->layer_begin;
    size_t nbytes = (size_t)R * C * mt_dtype_size(m->dtype);
    if (m->last) {
        void *dln = s->dlnf, *dw = m->g.lnf_w, *db = m->g.lnf_b, **stage[2] = {&dw, &db};
        if (!dln)
            return mt_errorf(MT_ERR_ARG, "gpt backward: the last stage's forward of this micro-batch ran with loss "
                             "scale 0 (evaluation) or not at all: no gradient to start from");
        s->dlnf = NULL;
        if (mt_tp_sp(p)) MT_TRY(mt__gpt_sp_stage(cx, m, 0, stage, 2));
        MT_TRY(mt_layernorm_bwd(cx, s->dres, dw, db, dln, NULL, a->res[nl], m->w.lnf_w, a->lnf_mean, a->lnf_rstd, R,
                                C));
        if (mt_tp_sp(p)) MT_TRY(mt__gpt_sp_commit(cx, m, 0, m->g.lnf_w, m->g.lnf_b, NULL, NULL));
    } else {
        if (!dout) return mt_errorf(MT_ERR_ARG, "gpt backward: a stage that is not last needs dout");
        MT_TRY(mt_copy(cx, s->dres, dout, nbytes));
    }
    if (m->hooks.grads_ready) {
        MT_TRY(mt__gpt_sp_join(cx, m));
        MT_TRY(m->hooks.grads_ready(m->hooks.user, m, m->ready[0]));
    }
    for (int l = nl - 1; l >= 0; l--) {
        int h = (nl - l) & 1; /* the SP buffer half: the head's was 0 */
        if (m->hooks.before_block) MT_TRY(m->hooks.before_block(m->hooks.user, m, m->layer_begin + l, 1));
        mt_gpt_block_w g = m->g.blocks[l], *gl = &m->g.blocks[l]; /* (after the hook: it may move them) */
        void **stage[4] = {&g.ln1_w, &g.ln1_b, &g.ln2_w, &g.ln2_b};
        if (mt_tp_sp(p)) MT_TRY(mt__gpt_sp_stage(cx, m, h, stage, 4));
        MT_TRY(mt_gpt_block_bwd(cx, m, &m->w.blocks[l], &g, &a->blocks[l], a->res[l], s, B, T));
        if (mt_tp_sp(p)) MT_TRY(mt__gpt_sp_commit(cx, m, h, gl->ln1_w, gl->ln1_b, gl->ln2_w, gl->ln2_b));
        if (m->hooks.grads_ready) {
            MT_TRY(mt__gpt_sp_join(cx, m));
            MT_TRY(m->hooks.grads_ready(m->hooks.user, m, m->ready[nl - l]));
        }
    }
    MT_TRY(mt__gpt_sp_join(cx, m));
    if (m->first)
        MT_TRY(mt_vocab_parallel_embedding_bwd(cx, p, m->g.wte, m->g.wpe, s->dres, a->tokens, s->gather, B, T, C, 0,
                                               m->vstart, m->Vp));
    else if (dx)
        MT_TRY(mt_copy(cx, dx, s->dres, nbytes));
    if (m->hooks.grads_ready) MT_TRY(m->hooks.grads_ready(m->hooks.user, m, m->ready[nl + 1]));
    return MT_OK;
}

/* *norm_sq (a stat-type scalar on the device) = the squared norm of this stage's gradients with every
 * tensor counted once across tensor parallelism: split tensors' sums of squares are summed over tp,
 * replicated tensors (identical on every tp rank, the norms' too under sequence parallelism) are
 * added once. Collective over tp when tp > 1; one pass over the buffer
 * when tp = 1. Runs of neighbouring tensors of the same kind are summed in one call (the padding
 * between tensors is zero). */
MT_API mt_status mt_gpt_grad_sumsq(const mt_ctx *cx, const mt_gpt *m, void *norm_sq) {
    size_t es = mt_dtype_size(m->dtype);
    MT_TRY(mt_zero(cx, norm_sq, mt_dtype_size(mt_stat_dtype(cx))));
    if (m->par.tp_size <= 1) return mt_sumsq(cx, norm_sq, m->grad_mem, m->num_params);
    for (int pass = 0; pass < 2; pass++) { /* 0: split tensors, then the all-reduce; 1: replicated ones */
        for (int i = 0; i < m->n_params;) {
            int split = m->params[i].split != MT_SPLIT_NONE, j = i;
            while (j < m->n_params && (m->params[j].split != MT_SPLIT_NONE) == split) j++;
            const mt_param *last = &m->params[j - 1];
            size_t begin = m->params[i].offset, end = last->offset + (size_t)(last->rows * last->cols);
            if (split == (pass == 0)) MT_TRY(mt_sumsq(cx, norm_sq, (const char *)m->grad_mem + begin * es, end - begin));
            i = j;
        }
        if (pass == 0) MT_TRY(mt_tp_all_reduce(cx, &m->par, norm_sq, 1, mt_stat_dtype(cx)));
    }
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif
