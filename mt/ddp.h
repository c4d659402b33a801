/* mt/ddp.h — data parallelism and the distributed optimizer (ZeRO-1/2/3) over one mt_gpt stage.
 *
 *   int n_micro;  MT_TRY(mt_ddp_check_batch(global_batch, micro_batch, par.size.dp, &n_micro));
 *   mt_ddp_config dc = {0};  dc.strategy = MT_SHARD_OPTIM;        // --use-distributed-optimizer
 *   mt_ddp ddp;   MT_TRY(mt_ddp_init(&cx, &ddp, &model, &par, &dc, host_init));
 *   for (mb = 0; mb < n_micro; mb++) {
 *       mt_ddp_set_sync(&ddp, mb == n_micro - 1);                  // communicate on the last only
 *       MT_TRY(mt_gpt_forward(&cx, &model, &acts, &scratch, 1.0f / global_tokens));
 *       MT_TRY(mt_gpt_backward(&cx, &model, &acts, &scratch, NULL, NULL)); // buckets launch inside
 *   }
 *   MT_TRY(mt_ddp_step(&cx, &ddp, &hp));   // finish, clip by the global norm, AdamW, gather params
 *
 * Strategies (--data-parallel-sharding-strategy; mt_shard_strategy_parse reads the names)
 *   no_shard            DDP: every rank all-reduces every gradient and updates every parameter.
 *   optim               ZeRO-1 (--use-distributed-optimizer): rank r owns 1/dp of every bucket: the
 *                       gradients are reduce-scattered, AdamW runs on the shard only (fp32 master
 *                       for 16-bit params, m and v for the shard only), the params are all-gathered.
 *   optim_grads         ZeRO-2: as optim, and only the shard's gradients are kept across
 *                       micro-batches: a bucket per group (the head, each block, the embedding);
 *                       every micro-batch's buckets are reduce-scattered as soon as they are
 *                       ready and added into a shard accumulator (1/dp of the buffer). The model
 *                       has no full gradient buffer: a block's gradients go to one of two slots,
 *                       zeroed again once its bucket is reduced (see "Memory").
 *   optim_grads_params  ZeRO-3: as optim_grads, and the model has no full parameter buffer either:
 *                       this rank keeps its pieces, and a layer's parameters are all-gathered into
 *                       a slot before its forward or backward (mt_gpt_hooks.before_block; on the
 *                       GPU one layer ahead); the embedding and head ("root") groups stay gathered.
 *
 * Layout. mt_gpt keeps params and grads in one buffer each, in backward order, every tensor
 * 64-element aligned. This layer splits that buffer into buckets: bucket ends are multiples of
 * unit = lcm(dp, 128) elements, placed at the last point where the backward has made every
 * gradient before them final (mt_gpt.ready, one per block) once the bucket holds bucket_size
 * elements (default max(40M, 1M*dp), like Megatron). Buckets may cut a tensor: a bucket's
 * reduction needs only that every element in it is final. Megatron pads each bucket end; here only
 * the buffer end needs padding, so mt_ddp_init reallocates the model's param and grad buffers once
 * with their length rounded up to a multiple of unit (contents kept, m->w and m->g rebound;
 * pointers taken before are stale). ZeRO-2/3 lay the buffers out again with every group starting
 * at a multiple of unit (m->params[].offset, m->ready and m->num_params change), and cut a bucket
 * at every group, so that a bucket is one group and can live apart from the others.
 * Shards: rank r owns [start + r*s, start + (r+1)*s) of each bucket, s = (end - start) / dp; its
 * optimizer state is those pieces back to back. AdamW runs per (tensor ∩ shard) range ("runs":
 * adjacent ranges with the same weight-decay and norm flags merged), so per-tensor weight decay
 * stays right when a shard cuts a tensor.
 *
 * Reduction. Default MT_SUM, with the loss scaled by 1 / (tokens in the global batch): exact for
 * any dp, and the same gradient sum the single-rank trainer accumulates. cfg.average = 1 uses
 * MT_AVG instead (loss scaled per rank). Every bucket's collective is issued from the
 * grads_ready hook while the backward goes on; on the GPU on a side stream that waits on an
 * event recorded on the compute stream, and the compute stream waits on the side stream in
 * mt_ddp_finish (no host sync anywhere in a step). grad_reduce_in_fp32 (16-bit grads): each
 * bucket is cast into an fp32 buffer and reduced there; the optimizer reads the fp32 sum (cast back
 * to the param dtype for mt_adamw, which takes grads in the param dtype). Accumulation over
 * micro-batches happens in the model's gradient buffer (its dtype) for no_shard/optim, and in the
 * fp32 shard accumulator for ZeRO-2/3. The host backend does not reduce f64: f64 buckets (CPU
 * tests) reduce here by all-to-all or all-gather and a sum in rank order (mt_ddp_all_reduce).
 *
 * Parameter all-gather (optim, optim_grads; Megatron's overlap_param_gather). mt_ddp_step ends
 * with every bucket's all-gather issued on the comm stream, in the order the next forward reads
 * them (the embedding's bucket first: the buffer is in backward order), each followed by an event;
 * the forward's params_needed hook makes the compute stream wait for the buckets of the embedding,
 * of each block and of the head just before it reads them. So the gathers run under the forward,
 * and only the first bucket's is exposed. The gathers go through their own copy of the dp group
 * (mt_comm_split at init, not sharing resources), so that a dp collective on the compute stream
 * (the trainer's loss) never waits for them on the same NCCL communicator. On the CPU the
 * gathers are deferred into the same hook and the parts not yet gathered are NaN, so a read
 * before its gather shows in the tests. mt_ddp_gather_params (before reading weights outside a
 * forward) and the next mt_ddp_step settle whatever is pending. cfg.no_overlap gathers in line.
 *
 * ZeRO-3's gathers go through the same copy of the dp group: the next layer's on the comm stream
 * (ahead), the rest on the compute stream, which first waits for any gathered ahead, so the copy is
 * never busy on two streams at once. NCCL does not promise that two operations of one communicator
 * on two streams make progress together; through the dp group itself a layer's gather could wait
 * for (or hold up) the gradient reductions.
 *
 * Not done yet: with pp > 1 the tied embedding's gradient must be summed over the embedding group
 * before its bucket is reduced here (a pipeline schedule's job, not wired).
 *
 * Global gradient-norm clipping: sum of squares over this rank's reduced gradients (its shards
 * when sharded), skipping tp duplicates on tp ranks > 0 and the tied embedding copy of a last
 * stage that is not first (mt_param_in_norm), all-reduced over dp (sharded only), tp and pp, on
 * the device. mt_ddp_grad_norm reads it back (a sync) for logging.
 *
 * Memory (mt_ddp_stats; all of it allocated, none simulated)
 *   optim: master (16-bit params) + m + v for the shard only; the model's buffers stay full.
 *   optim_grads: the reduced shard (acc, 1/dp) plus the gradient storage: the head's and the
 *     embedding's groups (the tied wte gets its head part in the forward and its embedding part at
 *     the end) and two block slots (a block's bucket is being reduced on the comm stream while the
 *     next block's backward writes the other slot; a slot is used again only after an event says
 *     it was reduced and zeroed). grad_store_nbytes against padded * dtype for the full buffer.
 *   optim_grads_params: as optim_grads, and the parameters are this rank's pieces of every bucket
 *     (what AdamW updates), the root groups gathered after each step, and two block slots: the
 *     block that runs, and on the GPU the next one (l + 1 in a forward, l - 1 in a backward)
 *     gathered ahead on the comm stream meanwhile (cfg.no_overlap: each block just before it
 *     runs). A block still in its slot is not gathered again (the forward's last block is the
 *     backward's first). mt_ddp_gather_params makes a full buffer for as long as someone reads
 *     the weights (freed at the next forward or step).
 *
 * Defines: mt_shard_strategy (MT_SHARD_*), mt_shard_strategy_parse/name, mt_ddp_config,
 *   mt_ddp_bucket, mt_ddp_run, mt_ddp_stats, mt_ddp, mt_ddp_check_batch, mt_ddp_init, mt_ddp_free,
 *   mt_ddp_set_sync, mt_ddp_finish, mt_ddp_step, mt_ddp_grad_norm, mt_ddp_gather_params, mt_ddp_all_reduce
 */
#ifndef MT_DDP_H
#define MT_DDP_H
#include "core.h"
#include "comm.h"
#include "parallel.h"
#include "gpt.h"
#include "optim.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MT_SHARD_NONE = 0,               /* no_shard */
    MT_SHARD_OPTIM = 1,              /* optim (ZeRO-1) */
    MT_SHARD_OPTIM_GRADS = 2,        /* optim_grads (ZeRO-2) */
    MT_SHARD_OPTIM_GRADS_PARAMS = 3  /* optim_grads_params (ZeRO-3) */
} mt_shard_strategy;

MT_API const char *mt_shard_strategy_name(mt_shard_strategy s) {
    switch (s) {
        case MT_SHARD_NONE: return "no_shard";
        case MT_SHARD_OPTIM: return "optim";
        case MT_SHARD_OPTIM_GRADS: return "optim_grads";
        case MT_SHARD_OPTIM_GRADS_PARAMS: return "optim_grads_params";
        default: return "?";
    }
}

MT_API mt_status mt_shard_strategy_parse(const char *name, mt_shard_strategy *out) {
    for (int s = 0; s <= 3; s++)
        if (name && !strcmp(name, mt_shard_strategy_name((mt_shard_strategy)s))) {
            *out = (mt_shard_strategy)s;
            return MT_OK;
        }
    return mt_errorf(MT_ERR_ARG, "--data-parallel-sharding-strategy '%s': expected no_shard, optim, optim_grads or "
                     "optim_grads_params", name ? name : "(null)");
}

typedef struct mt_ddp_config {
    mt_shard_strategy strategy;  /* default no_shard */
    size_t bucket_size;          /* elements per bucket; 0 = max(40M, 1M * dp) */
    int grad_reduce_in_fp32;     /* 16-bit grads are reduced (and, sharded, accumulated) in fp32 */
    int average;                 /* 1: MT_AVG in the collective; 0 (default): MT_SUM */
    int no_overlap;              /* 1: no_shard/optim reduce every bucket in mt_ddp_finish,
                                    optim/optim_grads gather the updated params inside mt_ddp_step,
                                    and ZeRO-3 gathers a layer only when it runs (no prefetch) */
} mt_ddp_config;

typedef struct mt_ddp_bucket {
    size_t start, end;    /* elements [start, end) of the padded buffers; (end - start) % nshard == 0 */
    size_t shard;         /* (end - start) / nshard: the piece each rank owns */
    size_t soff;          /* where this rank's piece starts in the shard-state buffers */
    int group;            /* ZeRO-2/3: the one group it holds (mt__ddp_group: 0 head, 1.. blocks, nl+1
                             embedding) */
} mt_ddp_bucket;

/* A range this rank updates: one (tensor ∩ own piece), merged with its neighbours when flags match. */
typedef struct mt_ddp_run {
    size_t off;    /* elements from the start of param_mem / grad_mem */
    size_t n;
    size_t soff;   /* elements from the start of the shard-state buffers */
    int decay;     /* weight decay applies */
    int in_norm;   /* counts in the global gradient norm on this rank */
} mt_ddp_run;

typedef struct mt_ddp_stats {
    size_t num_params;        /* elements of the model's buffers before padding (64-aligned tensors) */
    size_t padded_params;     /* after padding the end to lcm(dp, 128) */
    size_t shard_params;      /* elements this rank updates (padded / dp; all of them for no_shard) */
    size_t optim_nbytes;      /* allocated here for optimizer state: fp32 master + m + v */
    size_t grad_shard_nbytes; /* ZeRO-2/3 shard accumulator */
    size_t comm_nbytes;       /* fp32 reduction buffer, f64 host scratch */
    size_t pad_nbytes;        /* bytes the padding added to the model's param + grad buffers */
    size_t root_params;       /* ZeRO-2/3: elements of the head's and embedding's groups (kept whole) */
    size_t slot_params;       /* ZeRO-2/3: elements of a block slot (the largest block) */
    size_t param_store_nbytes;/* the model's parameters on this rank: the full buffer, or ZeRO-3's
                                 own pieces + root groups + two block slots */
    size_t grad_store_nbytes; /* its gradients: the full buffer, or ZeRO-2/3's root groups + two block
                                 slots (the reduced shard is grad_shard_nbytes) */
} mt_ddp_stats;

typedef struct mt_ddp {
    mt_ddp_config cfg;
    mt_gpt *m;
    mt_ctx cx;                /* the compute context (stream of the forward/backward) */
    mt_ctx ccx;               /* the same on the communication stream */
    mt_comm *dp, *tp, *pp;    /* gradient group (dp x cp), tensor and pipeline groups; NULL = size 1 */
    int nshard, rank;         /* shards per bucket (dp for sharded strategies, else 1), this rank's */
    size_t unit;              /* lcm(dp, 128) */
    size_t padded;            /* elements in the padded buffers */
    size_t nshard_elems;      /* elements in the shard-state buffers */
    int n_buckets;
    mt_ddp_bucket *buckets;   /* (n_buckets), backward order */
    int n_runs;
    mt_ddp_run *runs;         /* (n_runs) */
    mt_adamw_multi_plan plan; /* AdamW over every run in one launch; built at the first step */
    int plan_ready;
    mt_dtype pdt, rdt;        /* param/grad dtype, reduction dtype */
    float *master;            /* (nshard_elems) fp32 master weights for 16-bit params, else NULL */
    void *mom, *var;          /* (nshard_elems) Adam moments, stat type */
    void *acc;                /* (nshard_elems) ZeRO-2/3 gradient shard, rdt */
    void *rbuf;               /* (padded) fp32 reduction buffer (grad_reduce_in_fp32 with 16-bit grads) */
    void *scratch;            /* host f64 reductions: (scratch_n) doubles */
    size_t scratch_n;
    void *scalars;            /* 2 stat-type scalars on the device: norm squared, clip coefficient */
    int step;
    int sync;                 /* this micro-batch's backward communicates (no_shard/optim) */
    int next_bucket;          /* first bucket not launched in the current backward */
    int reduced;              /* no_shard/optim: the gradients of this step were reduced */
    mt_ddp_stats stats;
    /* ZeRO-2/3 (mt__ddp_real_grads): the model's gradients live here, not in a full buffer: the
     * head's and the embedding's groups in groot, each block's in one of two slots (block group gi
     * in slot gi & 1) from its backward until its bucket is reduce-scattered. ZeRO-3
     * (mt__ddp_real_params) also its parameters: this rank's pieces (pshard), the root groups
     * gathered (proot), and two block slots (block group gi in pslot[gi & 1]): the block being
     * computed, and the next one, gathered ahead on the GPU (pslot_pending, pslot_ev). */
    size_t max_block;         /* elements of the largest block group */
    void *groot[2], *gslot[2];
    void *gslot_ev[2];        /* cudaEvent_t: slot s reduced and zeroed again (comm stream) */
    void *gcast;              /* (nshard_elems) pdt: reduced fp32 gradients cast back for AdamW */
    void *pshard, *proot[2], *pslot[2];
    int pslot_block[2];       /* local block gathered (or being gathered) in pslot[s], -1: none */
    int pslot_pending[2];     /* GPU: that gather was issued ahead and not yet waited for */
    void *pslot_ev[2];        /* cudaEvent_t: slot s's gather done (comm stream) */
    int materialized;         /* ZeRO-3: mt_ddp_gather_params made a full param_mem, bound in the model */
    void *comm_stream;        /* cudaStream_t (GPU) */
    void **events;            /* (n_buckets) cudaEvent_t: bucket ready on the compute stream */
    void *ev_done;            /* cudaEvent_t: the comm stream's work so far */
    /* ZeRO-1/2 parameter all-gather overlapped with the next forward (mt__ddp_late_gather) */
    mt_comm *pcomm;           /* GPU: a copy of the dp group for parameter gathers only (these, and
                                 ZeRO-3's, which then do not queue behind the gradient reductions) */
    void **gev;               /* (n_buckets) cudaEvent_t: bucket b gathered on the comm stream */
    char *pending;            /* (n_buckets) 1: gather issued (GPU) or due (CPU), not yet waited for */
} mt_ddp;

/* ------------------------------------------------------------------ batch validation */

/* The trainer's check of the batch sizes: global = micro * dp * n_micro. */
MT_API mt_status mt_ddp_check_batch(int global_batch, int micro_batch, int dp, int *n_micro) {
    if (n_micro) *n_micro = 0;
    if (micro_batch <= 0 || dp <= 0 || global_batch <= 0)
        return mt_errorf(MT_ERR_ARG, "batch: --global-batch-size %d, --micro-batch-size %d and data-parallel size %d "
                         "must be positive", global_batch, micro_batch, dp);
    if (global_batch % ((long)micro_batch * dp))
        return mt_errorf(MT_ERR_ARG, "batch: --global-batch-size %d is not divisible by --micro-batch-size %d x "
                         "data-parallel size %d = %ld (expected a multiple of %ld, e.g. %ld)", global_batch, micro_batch,
                         dp, (long)micro_batch * dp, (long)micro_batch * dp,
                         ((long)global_batch / ((long)micro_batch * dp) + 1) * micro_batch * dp);
    if (n_micro) *n_micro = global_batch / (micro_batch * dp);
    return MT_OK;
}

/* ------------------------------------------------------------------ conversions (CPU and GPU) */

MT_HD static inline double mt__ddp_load(int dt, const void *p, size_t i) {
    switch (dt) {
        case MT_F32: return ((const float *)p)[i];
        case MT_F64: return ((const double *)p)[i];
        case MT_BF16: return mt_bf16_to_f32(((const uint16_t *)p)[i]);
        case MT_F16: return mt_f16_to_f32(((const uint16_t *)p)[i]);
        default: return 0;
    }
}

MT_HD static inline void mt__ddp_store(int dt, void *p, size_t i, double v) {
    switch (dt) {
        case MT_F32: ((float *)p)[i] = (float)v; break;
        case MT_F64: ((double *)p)[i] = v; break;
        case MT_BF16: ((uint16_t *)p)[i] = mt_f32_to_bf16((float)v); break;
        case MT_F16: ((uint16_t *)p)[i] = mt_f32_to_f16((float)v); break;
        default: break;
    }
}

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
/* dst (DD) = src (DS), or dst += src; in fp32 unless one side is f64. Each element once. */
template <int DD, int DS>
__global__ void mt__ddp_convert_kernel(void *dst, const void *src, size_t n, int accumulate) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if (DD == MT_F64 || DS == MT_F64) {
            double v = mt__ddp_load(DS, src, i);
            if (accumulate) v += mt__ddp_load(DD, dst, i);
            mt__ddp_store(DD, dst, i, v);
        } else {
            float v = (float)mt__ddp_load(DS, src, i);
            if (accumulate) v += (float)mt__ddp_load(DD, dst, i);
            mt__ddp_store(DD, dst, i, (double)v);
        }
    }
}

static inline mt_status mt__ddp_convert_gpu(const mt_ctx *cx, mt_dtype dd, void *dst, mt_dtype ds, const void *src,
                                            size_t n, int accumulate) {
    size_t want = (n + 255) / 256, cap = cx->gpu ? (size_t)cx->gpu->sm_count * 8 : 1024;
    unsigned grid = (unsigned)(want < 1 ? 1 : want > cap ? cap : want);
    cudaStream_t s = (cudaStream_t)cx->stream;
#define MT__DDP_K(a, b)                                                                    \
    if (dd == a && ds == b) {                                                              \
        mt__ddp_convert_kernel<a, b><<<grid, 256, 0, s>>>(dst, src, n, accumulate);        \
        goto launched;                                                                     \
    }
#define MT__DDP_KS(a) MT__DDP_K(a, MT_F32) MT__DDP_K(a, MT_F64) MT__DDP_K(a, MT_BF16) MT__DDP_K(a, MT_F16)
    MT__DDP_KS(MT_F32) MT__DDP_KS(MT_F64) MT__DDP_KS(MT_BF16) MT__DDP_KS(MT_F16)
#undef MT__DDP_KS
#undef MT__DDP_K
    return mt_errorf(MT_ERR_UNSUPPORTED, "ddp: no conversion from %s to %s", mt_dtype_name(ds), mt_dtype_name(dd));
launched : {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: convert kernel: %s", cudaGetErrorString(e));
    return MT_OK;
}
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* dst (dd) = src (ds), or += with accumulate; n elements on cx's device, on cx's stream. */
MT_API mt_status mt__ddp_convert(const mt_ctx *cx, mt_dtype dd, void *dst, mt_dtype ds, const void *src, size_t n,
                                 int accumulate) {
    if (n == 0) return MT_OK;
    if (cx->device.type == MT_CUDA) {
#ifdef __CUDACC__
        return mt__ddp_convert_gpu(cx, dd, dst, ds, src, n, accumulate);
#else
        return mt__no_gpu("ddp convert");
#endif
    }
    if (dd == MT_F32 && ds == MT_F32 && accumulate) {
        float *d = (float *)dst;
        const float *s = (const float *)src;
        for (size_t i = 0; i < n; i++) d[i] += s[i];
    } else if (dd == MT_F64 && ds == MT_F64 && accumulate) {
        double *d = (double *)dst;
        const double *s = (const double *)src;
        for (size_t i = 0; i < n; i++) d[i] += s[i];
    } else {
        int f64 = dd == MT_F64 || ds == MT_F64;
        for (size_t i = 0; i < n; i++) {
            double v = mt__ddp_load(ds, src, i);
            if (accumulate) v = f64 ? v + mt__ddp_load(dd, dst, i) : (double)((float)v + (float)mt__ddp_load(dd, dst, i));
            mt__ddp_store(dd, dst, i, v);
        }
    }
    return MT_OK;
}

/* ------------------------------------------------------------------ collectives */

/* 1 when c reduces dt itself (the host backend does not reduce f64). */
MT_API int mt__ddp_native(const mt_comm *c, mt_dtype dt) { return dt != MT_F64 || c->backend != MT__COMM_HOST; }

/* In-place reduce-scatter of buf (n * cpr elements of dt) over c: rank r's chunk ends up at
 * buf + r * cpr. Host f64: all-to-all into the scratch, then a sum in rank order. */
MT_API mt_status mt__ddp_reduce_scatter(mt_ddp *d, mt_comm *c, void *buf, size_t cpr, mt_dtype dt, void *stream) {
    int n = mt_comm_size(c), r = mt_comm_rank(c);
    mt_reduce_op op = d->cfg.average ? MT_AVG : MT_SUM;
    size_t es = mt_dtype_size(dt);
    if (n <= 1 || cpr == 0) return MT_OK;
    if (mt__ddp_native(c, dt))
        return mt_comm_reduce_scatter(c, buf, (char *)buf + (size_t)r * cpr * es, cpr, dt, op, stream);
    if (d->scratch_n < (size_t)n * cpr)
        return mt_errorf(MT_ERR_INTERNAL, "ddp: f64 scratch of %zu elements, bucket needs %zu", d->scratch_n, n * cpr);
    MT_TRY(mt_comm_all_to_all(c, buf, d->scratch, cpr, MT_F64, stream));
    const double *s = (const double *)d->scratch;
    double *out = (double *)buf + (size_t)r * cpr;
    for (size_t i = 0; i < cpr; i++) {
        double v = s[i];
        for (int q = 1; q < n; q++) v += s[(size_t)q * cpr + i];
        out[i] = op == MT_AVG ? v / n : v;
    }
    return MT_OK;
}

/* In-place all-reduce of buf (count elements of dt, on d's device) over c (d's dp, tp or pp group,
 * or any group of the same ranks' grid), SUM or AVG; on the GPU asynchronous on `stream`. Unlike
 * mt_comm_all_reduce it also sums f64 on the host backend (by all-gathers of scratch-sized chunks
 * and a sum in rank order), so a trainer can use it for f64 losses on the CPU. */
MT_API mt_status mt_ddp_all_reduce(mt_ddp *d, mt_comm *c, void *buf, size_t count, mt_dtype dt, mt_reduce_op op,
                                   void *stream) {
    int n = mt_comm_size(c);
    if (n <= 1 || count == 0) return MT_OK;
    if (mt__ddp_native(c, dt)) return mt_comm_all_reduce(c, buf, buf, count, dt, op, stream);
    if (op != MT_SUM && op != MT_AVG)
        return mt_errorf(MT_ERR_UNSUPPORTED, "ddp all-reduce of f64 on the host backend: %s (sum and avg only)",
                         mt_reduce_op_name(op));
    size_t chunk = d->scratch_n / (size_t)n;
    if (chunk == 0)
        return mt_errorf(MT_ERR_INTERNAL, "ddp: f64 scratch of %zu elements for %d ranks", d->scratch_n, n);
    double *x = (double *)buf;
    const double *s = (const double *)d->scratch;
    for (size_t off = 0; off < count; off += chunk) {
        size_t k = count - off < chunk ? count - off : chunk;
        MT_TRY(mt_comm_all_gather(c, x + off, d->scratch, k, dt, stream));
        for (size_t i = 0; i < k; i++) {
            double v = s[i];
            for (int q = 1; q < n; q++) v += s[(size_t)q * k + i];
            x[off + i] = op == MT_AVG ? v / n : v;
        }
    }
    return MT_OK;
}

/* ------------------------------------------------------------------ streams (GPU) */

/* The comm stream waits for the compute stream's work so far (bucket b's gradients). */
MT_API mt_status mt__ddp_comm_waits_compute(mt_ddp *d, int b) {
#ifdef __CUDACC__
    if (d->cx.device.type == MT_CUDA) {
        cudaEvent_t ev = (cudaEvent_t)d->events[b];
        cudaError_t e = cudaEventRecord(ev, (cudaStream_t)d->cx.stream);
        if (e == cudaSuccess) e = cudaStreamWaitEvent((cudaStream_t)d->comm_stream, ev, 0);
        if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: bucket %d event: %s", b, cudaGetErrorString(e));
    }
#endif
    (void)d; (void)b;
    return MT_OK;
}

/* The compute stream waits for everything issued on the comm stream so far (no host sync). */
MT_API mt_status mt__ddp_compute_waits_comm(mt_ddp *d) {
#ifdef __CUDACC__
    if (d->cx.device.type == MT_CUDA) {
        cudaEvent_t ev = (cudaEvent_t)d->ev_done;
        cudaError_t e = cudaEventRecord(ev, (cudaStream_t)d->comm_stream);
        if (e == cudaSuccess) e = cudaStreamWaitEvent((cudaStream_t)d->cx.stream, ev, 0);
        if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: comm event: %s", cudaGetErrorString(e));
    }
#endif
    (void)d;
    return MT_OK;
}

MT_API size_t mt__ddp_gcd(size_t a, size_t b) {
    while (b) { size_t t = a % b; a = b; b = t; }
    return a;
}

MT_API mt_status mt__ddp_alloc(mt_ddp *d, size_t nbytes, void **out, size_t *counter) {
    MT_TRY(mt_device_alloc(d->cx.device, nbytes, out));
    MT_TRY(mt_zero(&d->cx, *out, nbytes));
    if (counter) *counter += nbytes;
    return MT_OK;
}

/* ------------------------------------------------------------------ ZeRO-2/3 storage */

/* Group gi of the buffer layout, [*lo, *hi): 0 the head, 1..nl the blocks from the stage's last to
 * its first (local block l is group nl - l), nl + 1 the embedding (mt_gpt.ready). */
MT_API void mt__ddp_group(const mt_gpt *m, int gi, size_t *lo, size_t *hi) {
    *lo = gi ? m->ready[gi - 1] : 0;
    *hi = m->ready[gi];
}

/* ZeRO-2/3: the model's gradients live in the group storage; ZeRO-3: its parameters too. */
MT_API int mt__ddp_real_grads(const mt_ddp *d) { return d->cfg.strategy >= MT_SHARD_OPTIM_GRADS; }
MT_API int mt__ddp_real_params(const mt_ddp *d) { return d->cfg.strategy == MT_SHARD_OPTIM_GRADS_PARAMS; }

/* Where group gi's gradients (params = 0) or ZeRO-3's parameters (params = 1) live. */
MT_API char *mt__ddp_home(const mt_ddp *d, int gi, int params) {
    int nl = d->m->layer_end - d->m->layer_begin;
    if (params) return (char *)(gi == 0 ? d->proot[0] : gi == nl + 1 ? d->proot[1] : d->pslot[gi & 1]);
    return (char *)(gi == 0 ? d->groot[0] : gi == nl + 1 ? d->groot[1] : d->gslot[gi & 1]);
}

/* Where bucket b's gradients are. */
MT_API char *mt__ddp_grads_of(const mt_ddp *d, int b) {
    if (mt__ddp_real_grads(d)) return mt__ddp_home(d, d->buckets[b].group, 0);
    return (char *)d->m->grad_mem + d->buckets[b].start * mt_dtype_size(d->pdt);
}

/* Point the model's gradients (and with `params` its weights) at the group storage. */
MT_API void mt__ddp_bind_groups(mt_ddp *d, int grads, int params) {
    mt_gpt *m = d->m;
    int nl = m->layer_end - m->layer_begin;
    for (int gi = 0; gi <= nl + 1; gi++) {
        size_t lo, hi;
        mt__ddp_group(m, gi, &lo, &hi);
        if (grads) mt__gpt_bind_range(m, mt__ddp_home(d, gi, 0), lo, hi, &m->g);
        if (params) mt__gpt_bind_range(m, mt__ddp_home(d, gi, 1), lo, hi, &m->w);
    }
}

/* ZeRO-3: bucket b's group from every rank's piece, into dst (its whole length). */
MT_API mt_status mt__ddp_gather_group(mt_ddp *d, int b, char *dst) {
    const mt_ddp_bucket *bk = &d->buckets[b];
    size_t es = mt_dtype_size(d->pdt);
    const char *mine = (const char *)d->pshard + bk->soff * es;
    mt_comm *c = d->pcomm ? d->pcomm : d->dp; /* GPU: not behind the comm stream's reductions */
    if (mt_comm_size(c) > 1) return mt_comm_all_gather(c, mine, dst, bk->shard, d->pdt, d->cx.stream);
    return mt_copy(&d->cx, dst, mine, bk->shard * es);
}

/* ZeRO-3 on the GPU: the compute stream waits for any slot gathered ahead, so that the split-off
 * group is never used on two streams at once (a no-op when nothing is pending). */
MT_API mt_status mt__ddp_slots_settle(mt_ddp *d) {
#ifdef __CUDACC__
    for (int k = 0; k < 2; k++)
        if (d->pslot_pending[k]) {
            cudaError_t e = cudaStreamWaitEvent((cudaStream_t)d->cx.stream, (cudaEvent_t)d->pslot_ev[k], 0);
            if (e != cudaSuccess)
                return mt_errorf(MT_ERR_CUDA, "ddp: waiting for a slot gather: %s", cudaGetErrorString(e));
            d->pslot_pending[k] = 0;
        }
#endif
    (void)d;
    return MT_OK;
}

/* ZeRO-3: the head's and the embedding's groups gathered again (after each update). */
MT_API mt_status mt__ddp_gather_roots(mt_ddp *d) {
    int nl = d->m->layer_end - d->m->layer_begin;
    MT_TRY(mt__ddp_slots_settle(d));
    for (int b = 0; b < d->n_buckets; b++) {
        int gi = d->buckets[b].group;
        if (gi == 0 || gi == nl + 1) MT_TRY(mt__ddp_gather_group(d, b, mt__ddp_home(d, gi, 1)));
    }
    d->pslot_block[0] = d->pslot_block[1] = -1; /* stale */
    return MT_OK;
}

/* ZeRO-3 after mt_ddp_gather_params: back to the slot (the full buffer freed; a sync). */
MT_API void mt__ddp_unmaterialize(mt_ddp *d) {
    if (!d->materialized) return;
    mt_device_free(d->m->device, d->m->param_mem);
    d->m->param_mem = NULL;
    mt__ddp_bind_groups(d, 0, 1);
    d->materialized = 0;
}

/* ZeRO-3: start gathering local block l's parameters into its slot. On the GPU ahead (ahead = 1:
 * on the comm stream, after the compute stream's work so far, which last read that slot; waited for
 * in mt__ddp_slot_block), else on the compute stream. */
MT_API mt_status mt__ddp_fill_slot(mt_ddp *d, int l, int ahead) {
    int gi = d->m->layer_end - d->m->layer_begin - l, s = gi & 1;
    mt_ctx cx = d->cx;
    if (!ahead) MT_TRY(mt__ddp_slots_settle(d));
    if (ahead) {
#ifdef __CUDACC__
        MT_TRY(mt__ddp_comm_waits_compute(d, 0));
        d->cx.stream = d->comm_stream; /* mt__ddp_gather_group issues on d->cx's stream */
#endif
    }
    mt_status st = MT_OK;
    for (int b = 0; st == MT_OK && b < d->n_buckets; b++)
        if (d->buckets[b].group == gi) st = mt__ddp_gather_group(d, b, (char *)d->pslot[s]);
    d->cx = cx;
    MT_TRY(st);
#ifdef __CUDACC__
    if (ahead) {
        cudaError_t e = cudaEventRecord((cudaEvent_t)d->pslot_ev[s], (cudaStream_t)d->comm_stream);
        if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: slot gather event: %s", cudaGetErrorString(e));
    }
#endif
    d->pslot_block[s] = l;
    d->pslot_pending[s] = ahead;
    return MT_OK;
}

/* ZeRO-3: local block l's parameters ready in their slot for the compute stream, then (on the GPU,
 * overlap on) the next block's gathered ahead: l + 1 in a forward, l - 1 in a backward. A block
 * still in its slot is not gathered again (the forward's last block is the backward's first). */
MT_API mt_status mt__ddp_slot_block(mt_ddp *d, int l, int backward) {
    int nl = d->m->layer_end - d->m->layer_begin, s = (nl - l) & 1, next = backward ? l - 1 : l + 1;
    mt__ddp_unmaterialize(d);
    if (d->pslot_block[s] != l) MT_TRY(mt__ddp_fill_slot(d, l, 0));
    MT_TRY(mt__ddp_slots_settle(d)); /* this block's slot, if it was gathered ahead */
#ifdef __CUDACC__
    if (d->cx.device.type == MT_CUDA && !d->cfg.no_overlap && next >= 0 && next < nl &&
        d->pslot_block[(nl - next) & 1] != next)
        MT_TRY(mt__ddp_fill_slot(d, next, 1));
#endif
    (void)next;
    return MT_OK;
}

/* ------------------------------------------------------------------ gradient buckets */

/* Reduce bucket b of the current backward (on the comm stream). */
MT_API mt_status mt__ddp_launch(mt_ddp *d, int b) {
    mt_ddp_bucket *bk = &d->buckets[b];
    size_t n = bk->end - bk->start, es = mt_dtype_size(d->pdt), rs = mt_dtype_size(d->rdt);
    char *g = mt__ddp_grads_of(d, b), *buf = g;
    MT_TRY(mt__ddp_comm_waits_compute(d, b));
    if (d->rbuf) { /* fp32 reduction (ZeRO-2/3: a bucket-sized buffer, one bucket after another) */
        buf = (char *)d->rbuf + (mt__ddp_real_grads(d) ? 0 : bk->start * rs);
        MT_TRY(mt__ddp_convert(&d->ccx, d->rdt, buf, d->pdt, g, n, 0));
    }
    if (d->cfg.strategy == MT_SHARD_NONE)
        return mt_ddp_all_reduce(d, d->dp, buf, n, d->rdt, d->cfg.average ? MT_AVG : MT_SUM, d->comm_stream);
    MT_TRY(mt__ddp_reduce_scatter(d, d->dp, buf, bk->shard, d->rdt, d->comm_stream));
    if (d->cfg.strategy >= MT_SHARD_OPTIM_GRADS) {
        /* keep only the shard: accumulate it, free the bucket (zero it for the next backward) */
        MT_TRY(mt__ddp_convert(&d->ccx, d->rdt, (char *)d->acc + bk->soff * rs, d->rdt,
                               buf + (size_t)d->rank * bk->shard * rs, bk->shard, 1));
        MT_TRY(mt_zero(&d->ccx, g, n * es));
#ifdef __CUDACC__
        int nl = d->m->layer_end - d->m->layer_begin, gi = bk->group;
        if (d->cx.device.type == MT_CUDA && gi > 0 && gi <= nl) { /* the block slot is free again */
            cudaError_t e = cudaEventRecord((cudaEvent_t)d->gslot_ev[gi & 1], (cudaStream_t)d->comm_stream);
            if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: slot event: %s", cudaGetErrorString(e));
        }
#endif
    }
    return MT_OK;
}

/* mt_gpt_hooks.grads_ready: launch every bucket whose gradients are all final. */
MT_API mt_status mt__ddp_grads_ready(void *user, const mt_gpt *m, size_t n_ready) {
    mt_ddp *d = (mt_ddp *)user;
    int every = d->cfg.strategy >= MT_SHARD_OPTIM_GRADS, last = n_ready >= m->num_params;
    if (!every && (!d->sync || d->cfg.no_overlap)) return MT_OK;
    if (!every && d->reduced)
        return mt_errorf(MT_ERR_ARG, "ddp: a second backward with sync on before mt_ddp_step: the gradients of this "
                         "step were already reduced (set sync only on the last micro-batch)");
    while (d->next_bucket < d->n_buckets && (last || d->buckets[d->next_bucket].end <= n_ready)) {
        MT_TRY(mt__ddp_launch(d, d->next_bucket));
        d->next_bucket++;
    }
    if (last) {
        d->next_bucket = 0;
        if (every) MT_TRY(mt__ddp_compute_waits_comm(d));  /* the next backward writes the zeroed buckets */
        else d->reduced = 1;
    }
    return MT_OK;
}

/* Communicate this micro-batch's gradients (no_shard/optim); call before each backward.
 * ZeRO-2/3 reduce every micro-batch whatever the flag. */
MT_API void mt_ddp_set_sync(mt_ddp *d, int sync) { d->sync = sync; }

/* After the last micro-batch's backward: launch what the hooks did not (no_overlap) and make the
 * compute stream wait for the communication. Idempotent; mt_ddp_step calls it. */
MT_API mt_status mt_ddp_finish(const mt_ctx *cx, mt_ddp *d) {
    (void)cx;
    if (d->cfg.strategy <= MT_SHARD_OPTIM && !d->reduced) {
        for (int b = d->next_bucket; b < d->n_buckets; b++) MT_TRY(mt__ddp_launch(d, b));
        d->next_bucket = 0;
        d->reduced = 1;
    }
    return mt__ddp_compute_waits_comm(d);
}

/* ------------------------------------------------------------------ ZeRO-1/2 parameter gathering */

MT_API mt_status mt__ddp_gather_bucket(mt_ddp *d, int b) {
    mt_ddp_bucket *bk = &d->buckets[b];
    size_t es = mt_dtype_size(d->pdt);
    char *p = (char *)d->m->param_mem + bk->start * es;
    if (mt_comm_size(d->dp) <= 1) return MT_OK;
    return mt_comm_all_gather(d->dp, p + (size_t)d->rank * bk->shard * es, p, bk->shard, d->pdt, d->cx.stream);
}

/* The other ranks' pieces of bucket b are stale until gathered: on the CPU they are poisoned with
 * NaN so that computing with them cannot go unnoticed. */
MT_API void mt__ddp_release_bucket(mt_ddp *d, int b) {
    mt_ddp_bucket *bk = &d->buckets[b];
    size_t es = mt_dtype_size(d->pdt);
    char *p = (char *)d->m->param_mem;
    if (d->cx.device.type != MT_CPU || d->nshard <= 1) return;
    size_t own0 = bk->start + (size_t)d->rank * bk->shard, own1 = own0 + bk->shard;
    memset(p + bk->start * es, 0xff, (own0 - bk->start) * es);
    memset(p + own1 * es, 0xff, (bk->end - own1) * es);
}

/* ZeRO-1/2 with the overlap: the step's parameter all-gathers wait for the next forward. */
MT_API int mt__ddp_late_gather(const mt_ddp *d) {
    return d->nshard > 1 && !d->cfg.no_overlap &&
           (d->cfg.strategy == MT_SHARD_OPTIM || d->cfg.strategy == MT_SHARD_OPTIM_GRADS);
}

/* Issue every bucket's all-gather after the step, the forward's first bucket first: on the GPU on
 * the comm stream (after the compute stream's update), each followed by its event; on the CPU
 * nothing runs yet, and the other ranks' pieces are poisoned until mt__ddp_settle gathers them. */
MT_API mt_status mt__ddp_issue_gathers(mt_ddp *d) {
#ifdef __CUDACC__
    if (d->cx.device.type == MT_CUDA) {
        MT_TRY(mt__ddp_comm_waits_compute(d, d->n_buckets - 1));
        size_t es = mt_dtype_size(d->pdt);
        for (int b = d->n_buckets - 1; b >= 0; b--) {
            mt_ddp_bucket *bk = &d->buckets[b];
            char *p = (char *)d->m->param_mem + bk->start * es;
            MT_TRY(mt_comm_all_gather(d->pcomm, p + (size_t)d->rank * bk->shard * es, p, bk->shard, d->pdt,
                                      d->comm_stream));
            cudaError_t e = cudaEventRecord((cudaEvent_t)d->gev[b], (cudaStream_t)d->comm_stream);
            if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: gather event: %s", cudaGetErrorString(e));
            d->pending[b] = 1;
        }
        return MT_OK;
    }
#endif
    for (int b = 0; b < d->n_buckets; b++) {
        mt__ddp_release_bucket(d, b);
        d->pending[b] = 1;
    }
    return MT_OK;
}

/* The compute stream may read bucket b's parameters from here on: it waits for the bucket's gather
 * (GPU), or the gather runs now (CPU). */
MT_API mt_status mt__ddp_settle(mt_ddp *d, int b) {
    if (!d->pending || !d->pending[b]) return MT_OK;
    d->pending[b] = 0;
#ifdef __CUDACC__
    if (d->cx.device.type == MT_CUDA) {
        cudaError_t e = cudaStreamWaitEvent((cudaStream_t)d->cx.stream, (cudaEvent_t)d->gev[b], 0);
        if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: waiting for a gather: %s", cudaGetErrorString(e));
        return MT_OK;
    }
#endif
    return mt__ddp_gather_bucket(d, b);
}

/* mt_gpt_hooks.params_needed: settle the buckets that hold any of [lo, hi). */
MT_API mt_status mt__ddp_params_needed(void *user, const mt_gpt *m, size_t lo, size_t hi) {
    mt_ddp *d = (mt_ddp *)user;
    (void)m;
    for (int b = 0; b < d->n_buckets; b++)
        if (d->buckets[b].start < hi && lo < d->buckets[b].end) MT_TRY(mt__ddp_settle(d, b));
    return MT_OK;
}

/* mt_gpt_hooks.before_block (ZeRO-2/3): ZeRO-3 gathers the layer's parameters into the slot; before
 * a backward the compute stream waits until the layer's gradient slot is free (its previous
 * bucket reduced and zeroed on the comm stream). */
MT_API mt_status mt__ddp_before_block(void *user, const mt_gpt *m, int layer, int backward) {
    mt_ddp *d = (mt_ddp *)user;
    int l = layer - m->layer_begin, gi = m->layer_end - m->layer_begin - l;
    if (mt__ddp_real_params(d)) MT_TRY(mt__ddp_slot_block(d, l, backward));
#ifdef __CUDACC__
    if (backward && mt__ddp_real_grads(d) && d->cx.device.type == MT_CUDA) {
        cudaError_t e = cudaStreamWaitEvent((cudaStream_t)d->cx.stream, (cudaEvent_t)d->gslot_ev[gi & 1], 0);
        if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "ddp: waiting for a slot: %s", cudaGetErrorString(e));
    }
#endif
    (void)backward;
    (void)gi;
    return MT_OK;
}

/* Make every parameter valid on every rank in m->param_mem (ZeRO-1/2 between a step and the next
 * forward: their gathers settled; ZeRO-3: a full buffer allocated and gathered, bound in the model
 * until its next forward or step frees it again; a no-op otherwise): before a checkpoint or
 * reading the weights. */
MT_API mt_status mt_ddp_gather_params(const mt_ctx *cx, mt_ddp *d) {
    mt_gpt *m = d->m;
    size_t es = mt_dtype_size(d->pdt);
    int nl = m->layer_end - m->layer_begin;
    for (int b = 0; b < d->n_buckets; b++) MT_TRY(mt__ddp_settle(d, b));
    if (!mt__ddp_real_params(d) || d->materialized) return MT_OK;
    MT_TRY(mt__ddp_slots_settle(d));
    MT_TRY(mt__ddp_alloc(d, d->padded * es, &m->param_mem, NULL));
    for (int b = 0; b < d->n_buckets; b++) {
        const mt_ddp_bucket *bk = &d->buckets[b];
        char *dst = (char *)m->param_mem + bk->start * es;
        if (bk->group == 0 || bk->group == nl + 1)
            MT_TRY(mt_copy(cx, dst, mt__ddp_home(d, bk->group, 1), (bk->end - bk->start) * es));
        else
            MT_TRY(mt__ddp_gather_group(d, b, dst));
    }
    mt__gpt_bind(m, (char *)m->param_mem, &m->w);
    d->materialized = 1;
    return MT_OK;
}

/* ------------------------------------------------------------------ init */

/* The model's buffers in this layer's layout, d->padded elements (a multiple of unit), contents
 * kept. With `aligned` (ZeRO-2/3, a bucket per group) every group (mt__ddp_group) starts at a
 * multiple of unit and its tensors move with it: m->params[].offset, m->ready and m->num_params
 * follow, and m's pointers are bound again. Otherwise only the end is padded. */
MT_API mt_status mt__ddp_layout(mt_ddp *d, mt_gpt *m, int aligned) {
    int nl = m->layer_end - m->layer_begin, ng = nl + 2;
    size_t es = mt_dtype_size(m->dtype), u = d->unit, pos = 0, *start = NULL;
    void *p = NULL, *g = NULL;
    MT_TRY(mt_calloc(sizeof(size_t) * (size_t)ng, (void **)&start));
    for (int gi = 0; gi < ng; gi++) { /* where each group goes */
        size_t lo, hi;
        mt__ddp_group(m, gi, &lo, &hi);
        start[gi] = aligned ? pos : lo;
        pos = aligned ? (pos + hi - lo + u - 1) / u * u : hi;
    }
    d->padded = (pos + u - 1) / u * u;
    mt_status st = MT_OK;
    if (!aligned && d->padded == m->num_params) goto done;
    st = mt__ddp_alloc(d, d->padded * es, &p, NULL);
    if (st == MT_OK) st = mt__ddp_alloc(d, d->padded * es, &g, NULL);
    for (int k = 0, gi = 0; st == MT_OK && k < m->n_params; k++) {
        mt_param *q = &m->params[k];
        size_t lo, hi, n = (size_t)(q->rows * q->cols) * es, to;
        while (mt__ddp_group(m, gi, &lo, &hi), q->offset >= hi) gi++;
        to = start[gi] + (q->offset - lo);
        st = mt_copy(&d->cx, (char *)p + to * es, (char *)m->param_mem + q->offset * es, n);
        if (st == MT_OK) st = mt_copy(&d->cx, (char *)g + to * es, (char *)m->grad_mem + q->offset * es, n);
    }
#ifdef __CUDACC__
    if (st == MT_OK && m->device.type == MT_CUDA && cudaStreamSynchronize((cudaStream_t)d->cx.stream) != cudaSuccess)
        st = mt_errorf(MT_ERR_CUDA, "ddp: laying out the model buffers: %s", cudaGetErrorString(cudaGetLastError()));
#endif
    if (st != MT_OK) {
        mt_device_free(m->device, p);
        mt_device_free(m->device, g);
        goto done;
    }
    if (aligned) {
        for (int k = 0, gi = 0; k < m->n_params; k++) {
            size_t lo, hi;
            while (mt__ddp_group(m, gi, &lo, &hi), m->params[k].offset >= hi) gi++;
            m->params[k].offset = start[gi] + (m->params[k].offset - lo);
        }
        for (int gi = 0; gi < ng; gi++) m->ready[gi] = gi + 1 < ng ? start[gi + 1] : d->padded;
    }
    d->stats.pad_nbytes = 2 * (d->padded - m->num_params) * es;
    if (aligned) m->num_params = d->padded;
    mt_device_free(m->device, m->param_mem);
    mt_device_free(m->device, m->grad_mem);
    m->param_mem = p;
    m->grad_mem = g;
    mt__gpt_bind(m, (char *)p, &m->w);
    mt__gpt_bind(m, (char *)g, &m->g);
done:
    mt_free(start);
    return st;
}

/* Buckets: ends at multiples of unit, at a ready point once the bucket holds bucket_size elements
 * (ZeRO-2/3: at every ready point, aligned, so a bucket is one group); the last ends at the padded
 * length. */
MT_API mt_status mt__ddp_make_buckets(mt_ddp *d) {
    const mt_gpt *m = d->m;
    int nl = m->layer_end - m->layer_begin, nb = 0;
    size_t start = 0;
    MT_TRY(mt_calloc(sizeof(mt_ddp_bucket) * (size_t)(nl + 2), (void **)&d->buckets));
    for (int i = 0; i <= nl + 1; i++) {
        size_t e = i == nl + 1 ? d->padded : m->ready[i] / d->unit * d->unit;
        int cut = d->cfg.strategy >= MT_SHARD_OPTIM_GRADS || e - start >= d->cfg.bucket_size || i == nl + 1;
        if (e <= start || !cut) continue;
        mt_ddp_bucket *bk = &d->buckets[nb++];
        bk->start = start;
        bk->end = e;
        bk->shard = (e - start) / (size_t)d->nshard;
        bk->group = i;
        start = e;
    }
    d->n_buckets = nb;
    /* this rank's pieces, back to back */
    size_t soff = 0;
    for (int b = 0; b < nb; b++) {
        d->buckets[b].soff = soff;
        soff += d->buckets[b].shard;
    }
    d->nshard_elems = soff;
    return MT_OK;
}

/* Runs: (tensor ∩ own piece), each tensor with the padding after it; merged when contiguous. */
MT_API mt_status mt__ddp_make_runs(mt_ddp *d) {
    const mt_gpt *m = d->m;
    int cap = m->n_params + d->n_buckets + 1, n = 0;
    MT_TRY(mt_calloc(sizeof(mt_ddp_run) * (size_t)cap, (void **)&d->runs));
    for (int b = 0; b < d->n_buckets; b++) {
        const mt_ddp_bucket *bk = &d->buckets[b];
        size_t p0 = bk->start + (size_t)d->rank * bk->shard, p1 = p0 + bk->shard;
        int first_in_bucket = n;
        for (int i = 0; i < m->n_params; i++) {
            const mt_param *p = &m->params[i];
            size_t t0 = p->offset, t1 = i + 1 < m->n_params ? m->params[i + 1].offset : m->num_params;
            size_t lo = t0 > p0 ? t0 : p0, hi = t1 < p1 ? t1 : p1;
            if (lo >= hi) continue;
            int decay = p->decay, in_norm = mt_param_in_norm(m, p);
            mt_ddp_run *prev = n > first_in_bucket ? &d->runs[n - 1] : NULL;
            if (prev && prev->off + prev->n == lo && prev->decay == decay && prev->in_norm == in_norm) {
                prev->n += hi - lo;
                continue;
            }
            if (n >= cap) return mt_errorf(MT_ERR_INTERNAL, "ddp: more than %d runs", cap);
            mt_ddp_run *r = &d->runs[n++];
            r->off = lo;
            r->n = hi - lo;
            r->soff = bk->soff + (lo - p0);
            r->decay = decay;
            r->in_norm = in_norm;
        }
    }
    d->n_runs = n;
    return MT_OK;
}

MT_API void mt_ddp_free(mt_ddp *d) {
    mt_device dev = d->cx.device;
    if (d->m && (d->m->hooks.user == (void *)d)) memset(&d->m->hooks, 0, sizeof d->m->hooks);
    mt_device_free(dev, d->master);
    mt_device_free(dev, d->mom);
    mt_device_free(dev, d->var);
    mt_device_free(dev, d->acc);
    mt_device_free(dev, d->rbuf);
    mt_device_free(dev, d->scalars);
    for (int k = 0; k < 2; k++) {
        mt_device_free(dev, d->groot[k]);
        mt_device_free(dev, d->gslot[k]);
        mt_device_free(dev, d->proot[k]);
    }
    mt_device_free(dev, d->gcast);
    mt_device_free(dev, d->pshard);
    mt_device_free(dev, d->pslot[0]);
    mt_device_free(dev, d->pslot[1]);
    mt_free(d->scratch);
#ifdef __CUDACC__
    if (d->events)
        for (int b = 0; b < d->n_buckets; b++)
            if (d->events[b]) cudaEventDestroy((cudaEvent_t)d->events[b]);
    if (d->ev_done) cudaEventDestroy((cudaEvent_t)d->ev_done);
    if (d->gev)
        for (int b = 0; b < d->n_buckets; b++)
            if (d->gev[b]) cudaEventDestroy((cudaEvent_t)d->gev[b]);
    for (int k = 0; k < 2; k++) {
        if (d->gslot_ev[k]) cudaEventDestroy((cudaEvent_t)d->gslot_ev[k]);
        if (d->pslot_ev[k]) cudaEventDestroy((cudaEvent_t)d->pslot_ev[k]);
    }
    if (d->comm_stream) cudaStreamDestroy((cudaStream_t)d->comm_stream);
#endif
    if (d->pcomm) mt_comm_destroy(d->pcomm);
    mt_free(d->gev);
    mt_free(d->pending);
    mt_free(d->events);
    mt_free(d->buckets);
    mt_free(d->runs);
    mt_adamw_multi_plan_free(&d->plan);
    memset(d, 0, sizeof *d);
}

/* ZeRO-2/3: the model's gradients (ZeRO-3: and parameters) move from its full buffers, which are
 * freed, into the group storage of mt_ddp. */
MT_API mt_status mt__ddp_own_storage(mt_ddp *d, mt_gpt *m) {
    int nl = m->layer_end - m->layer_begin;
    size_t es = mt_dtype_size(d->pdt), lo, hi, n[2];
    d->pslot_block[0] = d->pslot_block[1] = -1;
    for (int gi = 1; gi <= nl; gi++) {
        mt__ddp_group(m, gi, &lo, &hi);
        if (hi - lo > d->max_block) d->max_block = hi - lo;
    }
    mt__ddp_group(m, 0, &lo, &hi);
    n[0] = hi - lo;
    mt__ddp_group(m, nl + 1, &lo, &hi);
    n[1] = hi - lo;
    for (int k = 0; k < 2; k++) {
        MT_TRY(mt__ddp_alloc(d, (n[k] ? n[k] : 1) * es, &d->groot[k], &d->stats.grad_store_nbytes));
        MT_TRY(mt__ddp_alloc(d, (d->max_block ? d->max_block : 1) * es, &d->gslot[k], &d->stats.grad_store_nbytes));
    }
    if (d->rdt != d->pdt) MT_TRY(mt__ddp_alloc(d, d->nshard_elems * es, &d->gcast, &d->stats.comm_nbytes));
    if (mt__ddp_real_params(d)) {
        MT_TRY(mt__ddp_alloc(d, d->nshard_elems * es, &d->pshard, &d->stats.param_store_nbytes));
        for (int b = 0; b < d->n_buckets; b++) {
            const mt_ddp_bucket *bk = &d->buckets[b];
            MT_TRY(mt_copy(&d->cx, (char *)d->pshard + bk->soff * es,
                           (char *)m->param_mem + (bk->start + (size_t)d->rank * bk->shard) * es, bk->shard * es));
        }
        for (int k = 0; k < 2; k++) {
            MT_TRY(mt__ddp_alloc(d, (n[k] ? n[k] : 1) * es, &d->proot[k], &d->stats.param_store_nbytes));
            MT_TRY(mt_copy(&d->cx, d->proot[k], (char *)m->param_mem + (k ? m->ready[nl] : 0) * es, n[k] * es));
        }
        for (int k = 0; k < 2; k++)
            MT_TRY(mt__ddp_alloc(d, (d->max_block ? d->max_block : 1) * es, &d->pslot[k],
                                 &d->stats.param_store_nbytes));
        mt_device_free(m->device, m->param_mem); /* (on the GPU after the copies: cudaFree waits) */
        m->param_mem = NULL;
    }
    mt_device_free(m->device, m->grad_mem);
    m->grad_mem = NULL;
    mt__ddp_bind_groups(d, 1, mt__ddp_real_params(d));
    d->stats.root_params = n[0] + n[1];
    d->stats.slot_params = d->max_block;
    return MT_OK;
}

/* Set up data parallelism for model stage m. par: the rank grid (gradients reduce over its dp_cp
 * group, the norm over dp_cp, tp and pp); NULL = one rank. host_init: the num_params floats the
 * params were initialised from (the fp32 master of 16-bit params starts there); NULL reads them
 * back from m->param_mem. Installs m->hooks; lays out m's buffers again (see the layout notes
 * above). With ZeRO-2/3 the model's gradients (ZeRO-3: and weights) then live in this mt_ddp: after
 * mt_ddp_free the model has none (ZeRO-3 keeps its weights if mt_ddp_gather_params ran last).
 * Collective over the dp group on the GPU with ZeRO-1/2/3 (the parameter gathers' communicator is
 * split off the dp group). */
MT_API mt_status mt_ddp_init(const mt_ctx *cx, mt_ddp *d, mt_gpt *m, const mt_parallel *par,
                             const mt_ddp_config *cfg, const float *host_init) {
    memset(d, 0, sizeof *d);
    if (cfg) d->cfg = *cfg;
    d->cx = *cx;
    d->ccx = *cx;
    d->m = m;
    if (par) {
        d->dp = par->dp_cp;
        d->tp = par->tp;
        d->pp = par->pp;
    }
    int dp = d->dp ? mt_comm_size(d->dp) : 1;
    if ((int)d->cfg.strategy < 0 || (int)d->cfg.strategy > 3)
        return mt_errorf(MT_ERR_ARG, "ddp: unknown sharding strategy %d", (int)d->cfg.strategy);
    if (m->device.type != cx->device.type || m->dtype != cx->dtype)
        return mt_errorf(MT_ERR_ARG, "ddp: the context (%s on %s) is not the model's (%s on %s)",
                         mt_dtype_name(cx->dtype), cx->device.type == MT_CUDA ? "GPU" : "CPU",
                         mt_dtype_name(m->dtype), m->device.type == MT_CUDA ? "GPU" : "CPU");
    if (m->hooks.grads_ready || m->hooks.before_block || m->hooks.params_needed)
        return mt_errorf(MT_ERR_ARG, "ddp: the model's hooks are already installed (one mt_ddp per model)");
    if (!d->cfg.bucket_size) d->cfg.bucket_size = (size_t)(dp > 40 ? dp : 40) * 1000000;
    d->nshard = d->cfg.strategy == MT_SHARD_NONE ? 1 : dp;
    d->rank = d->nshard > 1 ? mt_comm_rank(d->dp) : 0;
    d->unit = (size_t)dp * 128 / mt__ddp_gcd((size_t)dp, 128);
    d->pdt = m->dtype;
    int sixteen = d->pdt == MT_BF16 || d->pdt == MT_F16;
    d->rdt = d->cfg.grad_reduce_in_fp32 && sixteen ? MT_F32 : d->pdt;
    mt_status st = MT_OK;
    size_t *old_off = NULL; /* the tensors' offsets before mt__ddp_layout, to read host_init */
#define MT__DDP_TRY(expr) do { st = (expr); if (st != MT_OK) goto fail; } while (0)
    MT__DDP_TRY(mt_calloc(sizeof(size_t) * (size_t)m->n_params + 1, (void **)&old_off));
    for (int k = 0; k < m->n_params; k++) old_off[k] = m->params[k].offset;
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        cudaStream_t s;
        if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
            st = mt_errorf(MT_ERR_CUDA, "ddp: creating the comm stream: %s", cudaGetErrorString(cudaGetLastError()));
            goto fail;
        }
        d->comm_stream = (void *)s;
        d->ccx.stream = d->comm_stream;
    }
#endif
    MT__DDP_TRY(mt__ddp_layout(d, m, d->cfg.strategy >= MT_SHARD_OPTIM_GRADS));
    MT__DDP_TRY(mt__ddp_make_buckets(d));
    MT__DDP_TRY(mt__ddp_make_runs(d));
    {
        size_t ss = mt_dtype_size(mt_stat_dtype(cx)), ne = d->nshard_elems;
        MT__DDP_TRY(mt__ddp_alloc(d, ne * ss, &d->mom, &d->stats.optim_nbytes));
        MT__DDP_TRY(mt__ddp_alloc(d, ne * ss, &d->var, &d->stats.optim_nbytes));
        MT__DDP_TRY(mt__ddp_alloc(d, 2 * ss, &d->scalars, NULL));
        if (d->cfg.strategy >= MT_SHARD_OPTIM_GRADS)
            MT__DDP_TRY(mt__ddp_alloc(d, ne * mt_dtype_size(d->rdt), &d->acc, &d->stats.grad_shard_nbytes));
        if (d->rdt != d->pdt) { /* ZeRO-2/3 convert one bucket at a time */
            size_t most = 0;
            for (int b = 0; b < d->n_buckets; b++)
                if (d->buckets[b].end - d->buckets[b].start > most) most = d->buckets[b].end - d->buckets[b].start;
            most = d->cfg.strategy >= MT_SHARD_OPTIM_GRADS ? most : d->padded;
            MT__DDP_TRY(mt__ddp_alloc(d, most * 4, &d->rbuf, &d->stats.comm_nbytes));
        }
        if (sixteen) {
            float *host = NULL, *shard = NULL;
            MT__DDP_TRY(mt__ddp_alloc(d, ne * sizeof(float), (void **)&d->master, &d->stats.optim_nbytes));
            MT__DDP_TRY(mt_calloc(d->padded * sizeof(float), (void **)&host));
            st = mt_calloc(ne * sizeof(float) + 1, (void **)&shard);
            for (int k = 0; st == MT_OK && host_init && k < m->n_params; k++) /* in the new layout */
                memcpy(host + m->params[k].offset, host_init + old_off[k],
                       sizeof(float) * (size_t)(m->params[k].rows * m->params[k].cols));
            if (st == MT_OK && !host_init) st = mt_copy_to_f32(cx, host, m->param_mem, d->pdt, m->num_params);
            for (int b = 0; st == MT_OK && b < d->n_buckets; b++) {
                const mt_ddp_bucket *bk = &d->buckets[b];
                memcpy(shard + bk->soff, host + bk->start + (size_t)d->rank * bk->shard, bk->shard * sizeof(float));
            }
            if (st == MT_OK) {
                mt_ctx f32 = *cx;
                f32.dtype = MT_F32;
                st = mt_copy_from_f32(&f32, d->master, shard, ne);
            }
            mt_free(host);
            mt_free(shard);
            if (st != MT_OK) goto fail;
        }
    }
    {   /* host backend reductions of f64 (the CPU tests): a bucket-sized scratch */
        int world = par && par->world ? mt_comm_size(par->world) : 1;
        if (d->pdt == MT_F64 && cx->device.type == MT_CPU) {
            size_t most = (size_t)world + 1;
            for (int b = 0; b < d->n_buckets; b++)
                if (d->buckets[b].end - d->buckets[b].start > most) most = d->buckets[b].end - d->buckets[b].start;
            d->scratch_n = most;
            MT__DDP_TRY(mt_calloc(most * sizeof(double), &d->scratch));
            d->stats.comm_nbytes += most * sizeof(double);
        }
    }
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        MT__DDP_TRY(mt_calloc(sizeof(void *) * (size_t)d->n_buckets, (void **)&d->events));
        for (int b = 0; b < d->n_buckets; b++) {
            cudaEvent_t ev;
            if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
                st = mt_errorf(MT_ERR_CUDA, "ddp: cudaEventCreate: %s", cudaGetErrorString(cudaGetLastError()));
                goto fail;
            }
            d->events[b] = (void *)ev;
        }
        cudaEvent_t ev;
        if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
            st = mt_errorf(MT_ERR_CUDA, "ddp: cudaEventCreate: %s", cudaGetErrorString(cudaGetLastError()));
            goto fail;
        }
        d->ev_done = (void *)ev;
        if (mt__ddp_late_gather(d)) {
            MT__DDP_TRY(mt_calloc(sizeof(void *) * (size_t)d->n_buckets, (void **)&d->gev));
            for (int b = 0; b < d->n_buckets; b++) {
                if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
                    st = mt_errorf(MT_ERR_CUDA, "ddp: cudaEventCreate: %s", cudaGetErrorString(cudaGetLastError()));
                    goto fail;
                }
                d->gev[b] = (void *)ev;
            }
        }
        if (mt__ddp_late_gather(d) || (d->cfg.strategy == MT_SHARD_OPTIM_GRADS_PARAMS && d->nshard > 1))
            MT__DDP_TRY(mt_comm_split(d->dp, 0, mt_comm_rank(d->dp), "dp-params", &d->pcomm));
        for (int k = 0; k < 4 && d->cfg.strategy >= MT_SHARD_OPTIM_GRADS; k++) {
            if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
                st = mt_errorf(MT_ERR_CUDA, "ddp: cudaEventCreate: %s", cudaGetErrorString(cudaGetLastError()));
                goto fail;
            }
            if (k < 2) d->gslot_ev[k] = (void *)ev;
            else d->pslot_ev[k - 2] = (void *)ev;
        }
    }
#endif
    if (d->cfg.strategy >= MT_SHARD_OPTIM_GRADS) MT__DDP_TRY(mt__ddp_own_storage(d, m));
    if (!mt__ddp_real_params(d)) d->stats.param_store_nbytes = d->padded * mt_dtype_size(d->pdt);
    if (!mt__ddp_real_grads(d)) d->stats.grad_store_nbytes = d->padded * mt_dtype_size(d->pdt);
    if (mt__ddp_late_gather(d)) MT__DDP_TRY(mt_calloc((size_t)d->n_buckets, (void **)&d->pending));
    d->stats.num_params = m->num_params;
    d->stats.padded_params = d->padded;
    d->stats.shard_params = d->nshard_elems;
    d->sync = 1;
    m->hooks.user = d;
    m->hooks.grads_ready = mt__ddp_grads_ready;
    if (d->pending) m->hooks.params_needed = mt__ddp_params_needed;
    if (mt__ddp_real_grads(d)) m->hooks.before_block = mt__ddp_before_block;
#undef MT__DDP_TRY
    mt_free(old_off);
    return MT_OK;
fail:
    mt_free(old_off);
    mt_ddp_free(d);
    return st;
}

/* ------------------------------------------------------------------ the optimizer step */

/* Where run r's reduced gradient is, in rdt. */
MT_API void *mt__ddp_reduced_grad(const mt_ddp *d, const mt_ddp_run *r) {
    size_t rs = mt_dtype_size(d->rdt);
    if (d->acc) return (char *)d->acc + r->soff * rs;
    if (d->rbuf) return (char *)d->rbuf + r->off * rs;
    return (char *)d->m->grad_mem + r->off * rs;
}

/* The AdamW table: one entry per run (its params, master, moments, and the gradient AdamW reads:
 * the reduced one, or its copy cast back into grad_mem when the reduction ran in another dtype). */
MT_API mt_status mt__ddp_make_plan(const mt_ctx *cx, mt_ddp *d) {
    size_t es = mt_dtype_size(d->pdt), ss = mt_dtype_size(mt_stat_dtype(cx));
    mt_adamw_tensor *t = NULL;
    MT_TRY(mt_calloc(sizeof *t * (size_t)(d->n_runs > 0 ? d->n_runs : 1), (void **)&t));
    for (int i = 0; i < d->n_runs; i++) {
        const mt_ddp_run *r = &d->runs[i];
        t[i].param = mt__ddp_real_params(d) ? (char *)d->pshard + r->soff * es : (char *)d->m->param_mem + r->off * es;
        t[i].master = d->master ? d->master + r->soff : NULL;
        t[i].m = (char *)d->mom + r->soff * ss;
        t[i].v = (char *)d->var + r->soff * ss;
        t[i].grad = d->rdt == d->pdt ? mt__ddp_reduced_grad(d, r)
                    : d->gcast       ? (const void *)((char *)d->gcast + r->soff * es)
                                     : (const void *)((char *)d->m->grad_mem + r->off * es);
        t[i].n = r->n;
        t[i].decay = r->decay;
    }
    mt_status st = mt_adamw_multi_plan_init(cx, &d->plan, t, d->n_runs);
    mt_free(t);
    if (st == MT_OK) d->plan_ready = 1;
    return st;
}

/* finish; global gradient norm and clip coefficient (on the device); AdamW on this rank's runs;
 * all-gather the updated params (ZeRO-3: the root only); zero the gradients. No host sync. */
MT_API mt_status mt_ddp_step(const mt_ctx *cx, mt_ddp *d, const mt_optim_hp *hp_in) {
    mt_gpt *m = d->m;
    size_t es = mt_dtype_size(d->pdt), ss = mt_dtype_size(mt_stat_dtype(cx));
    char *norm_sq = (char *)d->scalars, *coef = norm_sq + ss;
    mt_ctx rcx = *cx;
    rcx.dtype = d->rdt;
    MT_TRY(mt_ddp_finish(cx, d));
    for (int b = 0; b < d->n_buckets; b++) MT_TRY(mt__ddp_settle(d, b)); /* the last step's gathers */
    mt__ddp_unmaterialize(d); /* ZeRO-3: the update goes to this rank's pieces */
    /* the global norm: this rank's reduced gradients, then over shards, tp and pp */
    MT_TRY(mt_zero(cx, norm_sq, ss));
    for (int i = 0; i < d->n_runs; i++)
        if (d->runs[i].in_norm) MT_TRY(mt_sumsq(&rcx, norm_sq, mt__ddp_reduced_grad(d, &d->runs[i]), d->runs[i].n));
    mt_dtype sdt = mt_stat_dtype(cx);
    if (d->nshard > 1) MT_TRY(mt_ddp_all_reduce(d, d->dp, norm_sq, 1, sdt, MT_SUM, cx->stream));
    if (d->tp) MT_TRY(mt_ddp_all_reduce(d, d->tp, norm_sq, 1, sdt, MT_SUM, cx->stream));
    if (d->pp) MT_TRY(mt_ddp_all_reduce(d, d->pp, norm_sq, 1, sdt, MT_SUM, cx->stream));
    MT_TRY(mt_clip_coef(cx, coef, norm_sq, hp_in->clip_grad));
    /* AdamW over every run in one launch (grads in the param dtype: cast back from fp32 first where needed) */
    d->step++;
    mt_adamw_hp hp;
    mt_optim_resolve_hp(hp_in, d->step, &hp);
    if (d->rdt != d->pdt)
        for (int i = 0; i < d->n_runs; i++)
            MT_TRY(mt__ddp_convert(cx, d->pdt,
                                   d->gcast ? (char *)d->gcast + d->runs[i].soff * es
                                            : (char *)m->grad_mem + d->runs[i].off * es,
                                   d->rdt, mt__ddp_reduced_grad(d, &d->runs[i]), d->runs[i].n, 0));
    if (!d->plan_ready) MT_TRY(mt__ddp_make_plan(cx, d));
    MT_TRY(mt_adamw_multi_plan_step(cx, &d->plan, &hp, hp_in->weight_decay, coef, 0));
    /* parameters: everyone's updated pieces (ZeRO-1/2: under the next forward; ZeRO-3: the root
     * groups now, a block's just before it runs) */
    if (mt__ddp_real_params(d)) {
        MT_TRY(mt__ddp_gather_roots(d));
    } else if (mt__ddp_late_gather(d)) {
        MT_TRY(mt__ddp_issue_gathers(d));
    } else if (d->nshard > 1) {
        for (int b = 0; b < d->n_buckets; b++) MT_TRY(mt__ddp_gather_bucket(d, b));
    }
    /* gradients: zero for the next step (ZeRO-2/3's group storage is zeroed as each bucket goes) */
    if (d->acc) MT_TRY(mt_zero(cx, d->acc, d->nshard_elems * mt_dtype_size(d->rdt)));
    else MT_TRY(mt_zero(cx, m->grad_mem, d->padded * es));
    d->reduced = 0;
    d->next_bucket = 0;
    return MT_OK;
}

/* The global gradient norm of the last step, before clipping. Synchronises with the device. */
MT_API mt_status mt_ddp_grad_norm(const mt_ctx *cx, const mt_ddp *d, double *norm) {
    float v = 0;
    if (cx->device.type == MT_CPU && mt_stat_dtype(cx) == MT_F64) {
        *norm = sqrt(*(const double *)d->scalars);
        return MT_OK;
    }
    MT_TRY(mt_copy_to_f32(cx, &v, d->scalars, mt_stat_dtype(cx), 1));
    *norm = sqrt((double)v);
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_DDP_H */
