/* mt/tensor_parallel.h — Megatron's tensor and sequence parallelism (tensor_parallel/layers.py and
 * mappings.py) as a few calls: column- and row-parallel linear layers, the vocab-parallel embedding
 * and cross-entropy, and the collectives between them. mt/gpt.h builds its blocks from these.
 *
 *   mt_parallel grid;  MT_TRY(mt_parallel_init(&grid, world, &pcfg));      // pcfg.tp = 2
 *   mt_layer_par lp;   mt_layer_par_from(&lp, &grid, sequence_parallel);
 *   MT_TRY(mt_gpt_init(&cx, &model, &cfg, &lp, 0, 0));                     // this rank's shards
 *   MT_TRY(mt_column_parallel_fwd(&cx, &lp, out, NULL, x, w, b, gather, N, IC, OC));
 *
 * Layout of the activations. They are (N, C) row-major with N = B*T tokens in (b, t) order. Without
 * sequence parallelism every tp rank holds all N rows of the residual stream (replicated). With it,
 * rank r holds rows [r*N/tp, (r+1)*N/tp) of the flattened tokens. Megatron splits the s of an
 * (s, b, h) tensor; we split the (b, t) rows of our (b, s, h) tensor into contiguous chunks: the same
 * thing when B = 1, and equivalent for the per-token ops that run on the slices (norms, residual
 * adds, dropout); all-gathering the chunks in rank order rebuilds the (B, T, C) tensor that the
 * matmuls and attention use. It needs B*T divisible by tp (not T).
 *
 * Where the collectives are (f forward, b backward; "SP" = with sequence parallelism):
 *   column-parallel linear (qkv, fc, the classifier): weight rows split (OC/tp); input replicated
 *     f: SP all-gathers the input rows (N/tp -> N), in pieces, each under GEMMs
 *     b: dgrad all-reduced (reduce-scattered with SP); SP all-gathers the saved input again for wgrad
 *   row-parallel linear (proj, fc2): weight columns split (IC/tp); output partial per rank
 *     f: partial products all-reduced (reduce-scattered with SP); bias + residual added by one rank
 *        in its GEMM's epilogue, before the sum
 *     b: SP all-gathers the output gradient (so the bias gradient is complete on every rank), in
 *        pieces that land in row order, each under GEMMs
 *   vocab-parallel embedding: rows [vstart, vstart+vcount) of wte; other ids give 0; the position
 *     embedding is added by tp rank 0 only; f: all-reduce (SP: reduce-scatter); b: SP all-gather
 *   vocab-parallel cross-entropy: one all-gather of 3 numbers per token (below); logits never move
 *   norm weights under SP: their gradients are partial sums over this rank's rows; mt/gpt.h
 *     all-reduces each block's (4 vectors of C, one call) inside the backward, before the block's
 *     gradients are reported final, so data-parallel buckets see complete gradients
 * With tp = 1 every call here is the plain op (no extra pass, no copy).
 *
 * Overlap (GPU, NCCL; Megatron's async tensor-parallel all-reduce and its SP variant). The
 * column-parallel backward computes dgrad first, then launches its collective on a side stream
 * (lp.comm_stream, made once by mt_tp_overlap_init; mt_gpt_init does it) and runs the weight
 * gradient GEMM (+ bias gradient) on the compute stream meanwhile:
 *     no SP: all-reduce of dgrad                         behind the wgrad GEMM
 *     SP:    all-gather of the saved input (for wgrad)   behind the dgrad GEMM
 *            reduce-scatter of dgrad                     behind the wgrad GEMM
 * Two events order the streams (compute -> comm before each launch; comm -> compute before the
 * gathered input is used and before returning), so the caller sees the usual in-order semantics,
 * no step allocates or synchronises with the host, CUDA graph capture sees a fork that joins, and
 * tp collectives never run two at a time on one communicator. The side stream has the highest
 * priority. The data-parallel buckets (mt/ddp.h) wait on the compute stream, after the join.
 * In the forward each collective's result is the next op's input, so the layers cut their GEMMs
 * into pieces of rows (lp.comm_chunks): the row-parallel layer sums piece j on the side stream
 * while piece j+1 is computed (all but the last piece's collective hidden), and under SP the
 * column-parallel layer gathers piece j+1 while piece j is computed (the first gather hidden
 * behind the GEMM of this rank's own rows). A persistent GEMM kernel takes every SM, so a
 * collective's kernel beside it can wait for SMs: lp.comm_sm_margin plans the GEMMs that run beside
 * a collective for that many SMs fewer (cuBLASLt's SM count target, what PyTorch calls an SM
 * carveout; pair it with NCCL_MAX_CTAS). lp.no_comm_overlap = 1 keeps everything in line on cx's
 * stream (A/B timing); the host backend always does (it is synchronous), and results are the same
 * either way (the same GEMMs; with an SM margin, GEMMs planned for fewer SMs may round differently).
 *
 * Cross-entropy exchange. Megatron all-reduces the row max (MAX), then the target logit (SUM), then
 * the sum of exp (SUM), with a pass over the logits between the first and the last. Here one pass
 * computes each rank's (max m_q, sum of exp below its own max s_q, target logit or 0), one
 * all-gather collects them, and the finishing pass forms M = max m_q, S = sum s_q e^(m_q - M) in
 * rank order: the same numbers, one collective instead of three, one read of the logits fewer,
 * and the same bits on every rank.
 *
 * Dropout and the RNG (there is no dropout op yet). Random numbers here are counter based
 * (mt_rng_u32(seed, subsequence, index), Philox): a mask drawn from the element's *global* index
 * (global token row = tp_rank*N/tp + local row under SP; global head = tp_rank*H/tp + local head
 * in attention) is identical on every tp rank where activations are replicated and different where
 * they are split, and equal to the tp = 1 mask: no per-rank seed offset (Megatron's CUDA RNG
 * tracker) is needed, so there is no mt_tp_rng_seed.
 *
 * Host backend: it reduces f32/bf16/f16; for f64 (the CPU tests' dtype) mt_tp_all_reduce and
 * mt_tp_reduce_scatter gather the addends and sum them here in rank order, in double.
 *
 * Defines: mt_layer_par, mt_layer_par_from, mt_tp_overlap_init/free, mt_tp_sp, mt_tp_rows, mt_tp_comm_chunks,
 *   mt_tp_all_reduce, mt_tp_all_gather, mt_tp_reduce_scatter, mt_column_parallel_fwd/bwd, mt_row_parallel_fwd/bwd,
 *   mt_vocab_parallel_embedding_fwd/bwd, mt_vocab_parallel_xent
 */
#ifndef MT_TENSOR_PARALLEL_H
#define MT_TENSOR_PARALLEL_H
#include "core.h"
#include "comm.h"
#include "parallel.h"
#include "ops.h"
#ifdef __cplusplus
extern "C" {
#endif

/* The forward's pieces of rows by default (mt_layer_par.comm_chunks). */
#ifndef MT_TP_COMM_CHUNKS
#define MT_TP_COMM_CHUNKS 4
#endif
#define MT_TP_EVENTS 4

/* What a layer knows about its parallel context (sizes of 0 mean 1). */
typedef struct mt_layer_par {
    int tp_rank, tp_size;  /* tensor parallel */
    int cp_rank, cp_size;  /* context parallel */
    int ep_rank, ep_size;  /* expert parallel */
    int sequence_parallel; /* norms and residuals on N/tp rows; ignored when tp_size is 1 */
    struct mt_comm *tp, *cp, *ep;
    int no_comm_overlap;   /* 1: every tp collective in line on cx's stream (to measure what the
                              overlap buys); 0 (default): the backward overlaps, see below */
    int comm_chunks;       /* the forward's GEMMs and tp collectives (row-parallel sum, SP all-gather) in
                              this many pieces of rows (0: MT_TP_COMM_CHUNKS; 1: one collective and one
                              GEMM) */
    int comm_sm_margin;    /* GPU, overlapped: GEMMs that run beside a tp collective are planned for this
                              many SMs fewer (mt_ctx.sm_margin), left to the collective; 0 = none */
    void *comm_stream;     /* cudaStream_t of the overlapped tp collectives (mt_tp_overlap_init), or NULL */
    void *comm_ev[MT_TP_EVENTS]; /* cudaEvent_t: [0] compute -> comm stream, [1] comm -> compute stream,
                              [2], [3]: SP norm-gradient buffer 0 / 1 free again (mt/gpt.h) */
} mt_layer_par;

/* The layer context of this rank of the grid (communicators borrowed from p). */
MT_API void mt_layer_par_from(mt_layer_par *lp, const mt_parallel *p, int sequence_parallel) {
    memset(lp, 0, sizeof *lp);
    lp->tp_rank = p->tp_rank; lp->tp_size = p->size.tp;
    lp->cp_rank = p->cp_rank; lp->cp_size = p->size.cp;
    lp->ep_rank = p->ep_rank; lp->ep_size = p->size.ep;
    lp->sequence_parallel = sequence_parallel && p->size.tp > 1;
    lp->tp = p->tp; lp->cp = p->cp; lp->ep = p->ep;
}

/* Destroy what mt_tp_overlap_init created (NULL members skipped). */
MT_API void mt_tp_overlap_free(mt_layer_par *p) {
#ifdef __CUDACC__
    for (int k = 0; k < MT_TP_EVENTS; k++)
        if (p->comm_ev[k]) cudaEventDestroy((cudaEvent_t)p->comm_ev[k]);
    if (p->comm_stream) cudaStreamDestroy((cudaStream_t)p->comm_stream);
#endif
    p->comm_stream = NULL;
    memset(p->comm_ev, 0, sizeof p->comm_ev);
}

/* Create the side stream and the events of the overlapped layers (GPU and tp > 1; otherwise
 * nothing): once, at model build time (mt_gpt_init does it for its copy of the layer context). The
 * stream has the highest priority, so the collective's blocks are scheduled ahead of the GEMM it
 * overlaps as SMs free up. No-op on the CPU. */
MT_API mt_status mt_tp_overlap_init(const mt_ctx *cx, mt_layer_par *p) {
    p->comm_stream = NULL;
    memset(p->comm_ev, 0, sizeof p->comm_ev);
#ifdef __CUDACC__
    if (cx->device.type != MT_CUDA || p->tp_size <= 1) return MT_OK;
    int least = 0, greatest = 0;
    cudaStream_t s;
    cudaError_t e = cudaDeviceGetStreamPriorityRange(&least, &greatest);
    if (e == cudaSuccess) e = cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, greatest);
    if (e != cudaSuccess)
        return mt_errorf(MT_ERR_CUDA, "tp: creating the communication stream: %s", cudaGetErrorString(e));
    p->comm_stream = (void *)s;
    for (int k = 0; k < MT_TP_EVENTS; k++) {
        cudaEvent_t ev;
        e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
        if (e != cudaSuccess) {
            mt_tp_overlap_free(p);
            return mt_errorf(MT_ERR_CUDA, "tp: cudaEventCreate: %s", cudaGetErrorString(e));
        }
        p->comm_ev[k] = (void *)ev;
    }
#else
    (void)cx;
#endif
    return MT_OK;
}

/* Sequence parallelism in effect. */
MT_API int mt_tp_sp(const mt_layer_par *p) { return p->sequence_parallel && p->tp_size > 1; }

/* Rows of the residual stream this rank holds for N tokens. */
MT_API int mt_tp_rows(const mt_layer_par *p, int N) { return mt_tp_sp(p) ? N / p->tp_size : N; }

/* Pieces the forward cuts `rows` rows into (at least one row each): the row-parallel layer its
 * rows, the SP column-parallel layer every rank's slice. */
MT_API int mt_tp_comm_chunks(const mt_layer_par *p, int rows) {
    int k = p->comm_chunks > 0 ? p->comm_chunks : MT_TP_COMM_CHUNKS;
    return k < rows ? k : rows > 0 ? rows : 1;
}

/* ------------------------------------------------------------------ collectives over tp */

MT_API int mt__tp_host_f64(const mt_layer_par *p, mt_dtype dt) {
    return p->tp->backend == MT__COMM_HOST && dt == MT_F64;
}

/* buf (count, dt) = its sum over the tp group, in place. */
MT_API mt_status mt_tp_all_reduce(const mt_ctx *cx, const mt_layer_par *p, void *buf, size_t count, mt_dtype dt) {
    if (p->tp_size <= 1 || count == 0) return MT_OK;
    if (mt__tp_host_f64(p, dt)) {
        double *all = NULL, *x = (double *)buf;
        MT_TRY(mt_calloc(sizeof(double) * count * (size_t)p->tp_size, (void **)&all));
        mt_status st = mt_comm_all_gather(p->tp, buf, all, count, dt, NULL);
        for (size_t i = 0; st == MT_OK && i < count; i++) {
            double s = 0;
            for (int q = 0; q < p->tp_size; q++) s += all[(size_t)q * count + i];
            x[i] = s;
        }
        mt_free(all);
        return st;
    }
    return mt_comm_all_reduce(p->tp, buf, buf, count, dt, MT_SUM, cx->stream);
}

/* full (tp * count_per_rank) = every rank's `local` chunk in rank order; in place when
 * local == full + tp_rank * count_per_rank. */
MT_API mt_status mt_tp_all_gather(const mt_ctx *cx, const mt_layer_par *p, void *full, const void *local,
                                  size_t count_per_rank, mt_dtype dt) {
    return mt_comm_all_gather(p->tp, local, full, count_per_rank, dt, cx->stream);
}

/* local (count_per_rank) = chunk tp_rank of the sum over ranks of full (tp * count_per_rank); in place
 * when local == full + tp_rank * count_per_rank. */
MT_API mt_status mt_tp_reduce_scatter(const mt_ctx *cx, const mt_layer_par *p, void *local, const void *full,
                                      size_t count_per_rank, mt_dtype dt) {
    if (mt__tp_host_f64(p, dt)) {
        double *mine = NULL, *y = (double *)local;
        size_t n = count_per_rank;
        MT_TRY(mt_calloc(sizeof(double) * n * (size_t)p->tp_size, (void **)&mine));
        mt_status st = mt_comm_all_to_all(p->tp, full, mine, n, dt, NULL); /* chunk tp_rank of every rank */
        for (size_t i = 0; st == MT_OK && i < n; i++) {
            double s = 0;
            for (int q = 0; q < p->tp_size; q++) s += mine[(size_t)q * n + i];
            y[i] = s;
        }
        mt_free(mine);
        return st;
    }
    return mt_comm_reduce_scatter(p->tp, full, local, count_per_rank, dt, MT_SUM, cx->stream);
}

/* ------------------------------------------------------------------ the overlapped backward (GPU) */

/* The backward overlaps its tp collectives with GEMMs: NCCL backend on the GPU, streams made by
 * mt_tp_overlap_init, and not switched off. The host backend is synchronous and stays in line. */
MT_API int mt__tp_overlap(const mt_ctx *cx, const mt_layer_par *p) {
    return p->tp_size > 1 && p->tp && p->comm_stream && !p->no_comm_overlap && cx->device.type == MT_CUDA &&
           p->tp->backend == MT__COMM_NCCL;
}

/* Record event k on `stream` (the work queued on it so far). */
MT_API mt_status mt__tp_record(const mt_layer_par *p, int k, void *stream) {
#ifdef __CUDACC__
    cudaError_t e = cudaEventRecord((cudaEvent_t)p->comm_ev[k], (cudaStream_t)stream);
    if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "tp: cudaEventRecord: %s", cudaGetErrorString(e));
#else
    (void)p; (void)k; (void)stream;
#endif
    return MT_OK;
}

/* `stream` waits for event k's latest record (no host sync; legal under CUDA graph capture). */
MT_API mt_status mt__tp_wait(const mt_layer_par *p, int k, void *stream) {
#ifdef __CUDACC__
    cudaError_t e = cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)p->comm_ev[k], 0);
    if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "tp: cudaStreamWaitEvent: %s", cudaGetErrorString(e));
#else
    (void)p; (void)k; (void)stream;
#endif
    return MT_OK;
}

/* `to` waits for the work queued on `from` so far, through event k (0: compute -> comm, 1: comm ->
 * compute; 2, 3: mt/gpt.h's SP staging halves). */
MT_API mt_status mt__tp_order(const mt_layer_par *p, int k, void *from, void *to) {
    MT_TRY(mt__tp_record(p, k, from));
    return mt__tp_wait(p, k, to);
}

/* The contexts of an overlapped layer: *cc for its collectives (the side stream), *beside for the
 * GEMMs that run while one is in flight (the SM margin); both plain copies of cx when not
 * overlapped. Returns whether the layer overlaps (mt__tp_overlap). */
MT_API int mt__tp_contexts(const mt_ctx *cx, const mt_layer_par *p, mt_ctx *cc, mt_ctx *beside) {
    int ov = mt__tp_overlap(cx, p);
    *cc = *cx;
    *beside = *cx;
    if (ov) {
        cc->stream = p->comm_stream;
        beside->sm_margin = p->comm_sm_margin;
    }
    return ov;
}

/* Piece j of k of `rows` rows: [*r0, *r0 + *n). */
MT_API void mt__tp_piece(int rows, int k, int j, int *r0, int *n) {
    *r0 = (int)((int64_t)rows * j / k);
    *n = (int)((int64_t)rows * (j + 1) / k) - *r0;
}

/* ------------------------------------------------------------------ linear layers */

/* out and gelu_pre rows [r0, r0 + n) of a column-parallel layer, from their input rows x. */
MT_API mt_status mt__tp_col_rows(const mt_ctx *cx, void *out, void *gelu_pre, const void *x, const void *w,
                                 const void *b, int r0, int n, int IC, int OC) {
    size_t off = (size_t)r0 * OC * mt_dtype_size(cx->dtype);
    return mt_matmul_fwd(cx, (char *)out + off, gelu_pre ? (char *)gelu_pre + off : NULL, x, w, b, NULL, n, IC, OC);
}

/* Column-parallel linear: w is this rank's OC/tp rows of the global (OC, IC) weight, b its OC/tp.
 * inp: (N, IC) replicated, or this rank's (N/tp, IC) rows under SP, all-gathered through `gather`
 * (N, IC) first. out (N, OC/tp), gelu_pre as in mt_matmul_fwd. N is the micro-batch's B*T.
 *
 * Under SP the all-gather goes in the row-parallel forward's pieces (mt_tp_comm_chunks): piece j
 * gathers rows [r0, r0 + n) of every rank's slice into `gather` (rank after rank), and the GEMMs of
 * those rows follow it. This rank's own rows need no gather, so their GEMM comes first; overlapped
 * (mt__tp_overlap), the gathers run on the side stream, the first under that GEMM and each next one
 * under the previous piece's GEMMs. `gather` is left in that piece order (scratch only). */
MT_API mt_status mt_column_parallel_fwd(const mt_ctx *cx, const mt_layer_par *p, void *out, void *gelu_pre,
                                        const void *inp, const void *w, const void *b, void *gather, int N, int IC,
                                        int OC) {
    if (!mt_tp_sp(p)) return mt_matmul_fwd(cx, out, gelu_pre, inp, w, b, NULL, N, IC, OC);
    mt_ctx cc, beside; /* where the gathers go; the GEMMs that run beside one */
    int tp = p->tp_size, me = p->tp_rank, rows = N / tp, ov = mt__tp_contexts(cx, p, &cc, &beside);
    int k = mt_tp_comm_chunks(p, rows), r0, n;
    size_t es = mt_dtype_size(cx->dtype);
    if (ov) MT_TRY(mt__tp_order(p, 0, cx->stream, cc.stream)); /* inp is final and `gather` free */
    MT_TRY(mt__tp_col_rows(&beside, out, gelu_pre, inp, w, b, me * rows, rows, IC, OC));
    for (int j = 0; j < k; j++) {
        mt__tp_piece(rows, k, j, &r0, &n);
        char *g = (char *)gather + (size_t)tp * r0 * IC * es; /* (tp, n, IC) */
        MT_TRY(mt_tp_all_gather(&cc, p, g, (const char *)inp + (size_t)r0 * IC * es, (size_t)n * IC, cx->dtype));
        if (ov) MT_TRY(mt__tp_order(p, 1, cc.stream, cx->stream));
        for (int q = 0; q < tp; q++)
            if (q != me)
                MT_TRY(mt__tp_col_rows(j + 1 < k ? &beside : cx, out, gelu_pre, g + (size_t)q * n * IC * es, w, b,
                                       q * rows + r0, n, IC, OC));
    }
    return MT_OK;
}

/* Its backward. dout (N, OC/tp); inp as in the forward (re-gathered into `gather` under SP); dw, db +=.
 * dinp: an (N, IC) buffer that receives this rank's partial dgrad; on return *dinp_local points at
 * dL/dinp as this rank holds inp: all of dinp (summed over tp), or under SP the (N/tp, IC) chunk of
 * dinp at row tp_rank*N/tp (reduce-scattered in place). */
MT_API mt_status mt_column_parallel_bwd(const mt_ctx *cx, const mt_layer_par *p, void *dinp, void *dw, void *db,
                                        const void *dout, const void *inp, const void *w, void *gather, int N,
                                        int IC, int OC, void **dinp_local) {
    const void *x = inp;
    size_t rows = (size_t)mt_tp_rows(p, N);
    *dinp_local = dinp;
    if (mt__tp_overlap(cx, p)) {
        /* Megatron's overlap. The collectives go on p->comm_stream, forked from cx's stream by event 0
         * (recorded after everything queued so far: the inputs are final and `gather` is free); cx's
         * stream waits on event 1 where it needs their results, so nothing is left running on the
         * side stream when this returns (the next tp collective, and a CUDA graph capture, may
         * follow on cx's stream).
         *   SP:    all-gather inp -> gather   || dgrad GEMM
         *          reduce-scatter dgrad       || wgrad GEMM (+ bias grad) on the gathered inp
         *   no SP: all-reduce dgrad           || wgrad GEMM (+ bias grad) */
        mt_ctx cc, beside; /* the collectives' stream; the GEMMs that run beside one */
        void *cs = cx->stream; /* the compute stream */
        mt__tp_contexts(cx, p, &cc, &beside);
        if (mt_tp_sp(p)) {
            MT_TRY(mt__tp_order(p, 0, cs, cc.stream));
            MT_TRY(mt_tp_all_gather(&cc, p, gather, inp, rows * IC, cx->dtype));
            MT_TRY(mt__tp_record(p, 1, cc.stream)); /* the gathered input, for wgrad */
            x = gather;
        }
        MT_TRY(mt_matmul_bwd(mt_tp_sp(p) ? &beside : cx, dinp, NULL, NULL, dout, x, w, NULL, N, IC, OC));
        MT_TRY(mt__tp_order(p, 0, cs, cc.stream));
        if (mt_tp_sp(p)) {
            *dinp_local = (char *)dinp + (size_t)p->tp_rank * rows * IC * mt_dtype_size(cx->dtype);
            MT_TRY(mt_tp_reduce_scatter(&cc, p, *dinp_local, dinp, rows * IC, cx->dtype));
            MT_TRY(mt__tp_wait(p, 1, cs));
        } else {
            MT_TRY(mt_tp_all_reduce(&cc, p, dinp, (size_t)N * IC, cx->dtype));
        }
        MT_TRY(mt_matmul_bwd(&beside, NULL, dw, db, dout, x, w, NULL, N, IC, OC));
        return mt__tp_order(p, 1, cc.stream, cs);
    }
    if (mt_tp_sp(p)) {
        MT_TRY(mt_tp_all_gather(cx, p, gather, inp, rows * IC, cx->dtype));
        x = gather;
    }
    MT_TRY(mt_matmul_bwd(cx, dinp, dw, db, dout, x, w, NULL, N, IC, OC));
    if (p->tp_size <= 1) return MT_OK;
    if (!mt_tp_sp(p)) return mt_tp_all_reduce(cx, p, dinp, (size_t)N * IC, cx->dtype);
    *dinp_local = (char *)dinp + (size_t)p->tp_rank * rows * IC * mt_dtype_size(cx->dtype);
    return mt_tp_reduce_scatter(cx, p, *dinp_local, dinp, rows * IC, cx->dtype);
}

/* Row-parallel linear: w is this rank's IC/tp columns of the global (OC, IC) weight; inp (N, IC/tp).
 * out = sum over tp of inp @ w^T, + bias + resid, in the rows this rank holds: (N, OC), or (N/tp, OC)
 * under SP where resid is (N/tp, OC) too. `partial` (N, OC): the SP workspace (unused otherwise, the
 * sum forms in out). With tp = 1 this is one GEMM with the bias and residual in its epilogue.
 *
 * The collective makes the whole sum: one rank adds the bias and the residual in its GEMM's epilogue
 * (tp rank 0 without SP; under SP each rank to the rows it keeps), the others their plain partial
 * products, so no pass follows the collective. The GEMM and its collective go in pieces of rows
 * (p->comm_chunks, 0: MT_TP_COMM_CHUNKS): overlapped (mt__tp_overlap), piece j's collective runs on
 * the side stream under piece j+1's GEMM and only the last piece's is exposed. Under SP a piece is
 * the same range of rows [r0, r0 + n) of every rank's slice: one GEMM per slice, written rank after
 * rank into `partial`, so that the piece's reduce-scatter leaves rows [r0, r0 + n) of this rank's
 * slice in out. In line, or on the host backend, the same pieces run one after the other: the
 * result does not depend on the overlap. */
MT_API mt_status mt_row_parallel_fwd(const mt_ctx *cx, const mt_layer_par *p, void *out, const void *inp,
                                     const void *w, const void *bias, const void *resid, void *partial, int N,
                                     int IC, int OC) {
    if (p->tp_size <= 1) return mt_matmul_fwd(cx, out, NULL, inp, w, bias, resid, N, IC, OC);
    mt_ctx cc, beside; /* where the collectives go; the GEMMs that run beside one */
    int tp = p->tp_size, sp = mt_tp_sp(p), rows = mt_tp_rows(p, N), ov = mt__tp_contexts(cx, p, &cc, &beside);
    int k = mt_tp_comm_chunks(p, rows), r0, n;
    size_t es = mt_dtype_size(cx->dtype);
    for (int j = 0; j < k; j++) {
        mt__tp_piece(rows, k, j, &r0, &n);
        const mt_ctx *gx = j > 0 ? &beside : cx; /* piece j - 1's collective is running */
        char *o = (char *)out + (size_t)r0 * OC * es;
        const char *res = resid ? (const char *)resid + (size_t)r0 * OC * es : NULL;
        if (!sp) {
            int adds = p->tp_rank == 0;
            MT_TRY(mt_matmul_fwd(gx, o, NULL, (const char *)inp + (size_t)r0 * IC * es, w, adds ? bias : NULL,
                                 adds ? res : NULL, n, IC, OC));
        } else {
            char *part = (char *)partial + (size_t)tp * r0 * OC * es; /* (tp, n, OC): rank q's rows q-th */
            for (int q = 0; q < tp; q++) {
                int adds = q == p->tp_rank;
                MT_TRY(mt_matmul_fwd(gx, part + (size_t)q * n * OC * es, NULL,
                                     (const char *)inp + ((size_t)q * rows + r0) * IC * es, w, adds ? bias : NULL,
                                     adds ? res : NULL, n, IC, OC));
            }
        }
        if (ov) {
            MT_TRY(mt__tp_order(p, 0, cx->stream, cc.stream));
        }
        if (!sp) MT_TRY(mt_tp_all_reduce(&cc, p, o, (size_t)n * OC, cx->dtype));
        else MT_TRY(mt_tp_reduce_scatter(&cc, p, o, (char *)partial + (size_t)tp * r0 * OC * es, (size_t)n * OC,
                                         cx->dtype));
    }
    if (!ov) return MT_OK;
    return mt__tp_order(p, 1, cc.stream, cx->stream);
}

/* Rows [r0, r0 + n) of every rank's slice of an SP tensor into their places in `full` (N, C) (rank
 * q's slice at row q * rows), from this rank's `local` (rows, C): it sends its rows to every other
 * rank and receives theirs, in one group. An all-gather that lands in row order, which NCCL's
 * all-gather (rank after rank, contiguous) cannot do for a piece. */
MT_API mt_status mt__tp_gather_rows(const mt_ctx *cc, const mt_layer_par *p, void *full, const void *local, int rows,
                                    int r0, int n, int C) {
    size_t es = mt_dtype_size(cc->dtype), cnt = (size_t)n * C;
    mt_status st = mt_comm_group_start(p->tp);
    for (int q = 0; q < p->tp_size && st == MT_OK; q++) {
        if (q == p->tp_rank) continue;
        st = mt_comm_send(p->tp, (const char *)local + (size_t)r0 * C * es, cnt, cc->dtype, q, cc->stream);
        if (st == MT_OK)
            st = mt_comm_recv(p->tp, (char *)full + ((size_t)q * rows + r0) * C * es, cnt, cc->dtype, q, cc->stream);
    }
    mt_status end = mt_comm_group_end(p->tp);
    return st != MT_OK ? st : end;
}

/* dinp rows [r0, r0 + n) of a row-parallel layer from the output gradient's rows d (and gelu_pre's). */
MT_API mt_status mt__tp_dgrad_rows(const mt_ctx *cx, void *dinp, const void *d, const void *inp, const void *w,
                                   const void *gelu_pre, int r0, int n, int IC, int OC) {
    size_t off = (size_t)r0 * IC * mt_dtype_size(cx->dtype);
    return mt_matmul_bwd(cx, (char *)dinp + off, NULL, NULL, d, (const char *)inp + off, w,
                         gelu_pre ? (const char *)gelu_pre + off : NULL, n, IC, OC);
}

/* Its backward. dout: dL/dout as this rank holds it ((N, OC) or (N/tp, OC), all-gathered into
 * `gather` (N, OC) under SP). dinp (N, IC/tp) = dout @ w (times gelu'(gelu_pre) when given, as in
 * mt_matmul_bwd); dw, dbias +=, dbias complete on every rank.
 *
 * Under SP the gather goes in the forward's pieces (mt_tp_comm_chunks), each exchanged in row order
 * (mt__tp_gather_rows), and dinp is computed piece by piece as they arrive, this rank's own rows
 * first (they need no exchange); overlapped, the exchanges run on the side stream under those
 * GEMMs. The weight and bias gradients then come from one GEMM over the whole gathered dout. */
MT_API mt_status mt_row_parallel_bwd(const mt_ctx *cx, const mt_layer_par *p, void *dinp, void *dw, void *dbias,
                                     const void *dout, const void *inp, const void *w, const void *gelu_pre,
                                     void *gather, int N, int IC, int OC) {
    if (!mt_tp_sp(p)) return mt_matmul_bwd(cx, dinp, dw, dbias, dout, inp, w, gelu_pre, N, IC, OC);
    mt_ctx cc, beside; /* where the exchanges go; the GEMMs that run beside one */
    int tp = p->tp_size, me = p->tp_rank, rows = N / tp, ov = mt__tp_contexts(cx, p, &cc, &beside);
    int k = mt_tp_comm_chunks(p, rows), r0, n;
    size_t es = mt_dtype_size(cx->dtype);
    if (ov) MT_TRY(mt__tp_order(p, 0, cx->stream, cc.stream)); /* dout is final and `gather` free */
    MT_TRY(mt_copy(cx, (char *)gather + (size_t)me * rows * OC * es, dout, (size_t)rows * OC * es));
    MT_TRY(mt__tp_dgrad_rows(&beside, dinp, dout, inp, w, gelu_pre, me * rows, rows, IC, OC));
    for (int j = 0; j < k; j++) {
        mt__tp_piece(rows, k, j, &r0, &n);
        MT_TRY(mt__tp_gather_rows(&cc, p, gather, dout, rows, r0, n, OC));
        if (ov) MT_TRY(mt__tp_order(p, 1, cc.stream, cx->stream));
        for (int q = 0; q < tp; q++)
            if (q != me)
                MT_TRY(mt__tp_dgrad_rows(j + 1 < k ? &beside : cx, dinp,
                                         (const char *)gather + ((size_t)q * rows + r0) * OC * es, inp, w, gelu_pre,
                                         q * rows + r0, n, IC, OC));
    }
    return mt_matmul_bwd(cx, NULL, dw, dbias, gather, inp, w, NULL, N, IC, OC);
}

/* ------------------------------------------------------------------ vocab parallel */

/* out = wte[tokens] + wpe[pos_offset + t] in the rows this rank holds ((B*T, C), or (B*T/tp, C) under
 * SP); wte holds vocab rows [vstart, vstart + vcount); `partial` (B*T, C): SP workspace. */
MT_API mt_status mt_vocab_parallel_embedding_fwd(const mt_ctx *cx, const mt_layer_par *p, void *out,
                                                 const int32_t *tokens, const void *wte, const void *wpe,
                                                 void *partial, int B, int T, int C, int pos_offset, int vstart,
                                                 int vcount) {
    if (p->tp_size <= 1) return mt_embedding_fwd(cx, out, tokens, wte, wpe, B, T, C, pos_offset, vstart, vcount);
    int N = B * T;
    void *dst = mt_tp_sp(p) ? partial : out;
    MT_TRY(mt_embedding_fwd(cx, dst, tokens, wte, p->tp_rank == 0 ? wpe : NULL, B, T, C, pos_offset, vstart, vcount));
    if (mt_tp_sp(p)) return mt_tp_reduce_scatter(cx, p, out, partial, (size_t)N / p->tp_size * C, cx->dtype);
    return mt_tp_all_reduce(cx, p, out, (size_t)N * C, cx->dtype);
}

/* Its backward: dout as this rank holds it (all-gathered into `gather` (B*T, C) under SP); dwte (local
 * rows) and dwpe += (dwpe complete on every rank). */
MT_API mt_status mt_vocab_parallel_embedding_bwd(const mt_ctx *cx, const mt_layer_par *p, void *dwte, void *dwpe,
                                                 const void *dout, const int32_t *tokens, void *gather, int B,
                                                 int T, int C, int pos_offset, int vstart, int vcount) {
    const void *d = dout;
    if (mt_tp_sp(p)) {
        MT_TRY(mt_tp_all_gather(cx, p, gather, dout, (size_t)B * T / p->tp_size * C, cx->dtype));
        d = gather;
    }
    return mt_embedding_bwd(cx, dwte, dwpe, d, tokens, B, T, C, pos_offset, vstart, vcount);
}

/* Softmax cross-entropy over logits split by vocabulary columns: logits (N, Vl) are this rank's
 * columns [vstart, vstart + Vl) of the padded vocabulary, the first V global columns real. losses (N,
 * stat type, the same on every rank); dlogits = (softmax - onehot) * dscale on the local columns (may
 * alias logits; NULL = forward only); targets (N) global ids, < 0 or >= V ignored. stats: workspace of
 * tp * 3 * N stat-type elements. With tp = 1 this is mt_xent. */
MT_API mt_status mt_vocab_parallel_xent(const mt_ctx *cx, const mt_layer_par *p, void *losses, void *dlogits,
                                        const void *logits, const int32_t *targets, float dscale, void *stats,
                                        int N, int V, int Vl, int vstart) {
    if (p->tp_size <= 1) return mt_xent(cx, losses, dlogits, logits, targets, dscale, N, V, Vl);
    mt_dtype st = mt_stat_dtype(cx);
    void *mine = (char *)stats + (size_t)p->tp_rank * 3 * N * mt_dtype_size(st);
    MT_TRY(mt_vocab_xent_local(cx, mine, logits, targets, N, V, Vl, vstart));
    MT_TRY(mt_tp_all_gather(cx, p, stats, mine, (size_t)3 * N, st));
    return mt_vocab_xent_finish(cx, losses, dlogits, logits, targets, stats, dscale, N, V, Vl, vstart, p->tp_size);
}

#ifdef __cplusplus
}
#endif
#endif /* MT_TENSOR_PARALLEL_H */
