/* mt/ops.h — the ops a model calls: one entry per op that runs on the CPU or the GPU, chosen by
 * the context's device, in the context's dtype.
 *
 *   mt_ctx cx = {0};                 // CPU, float32 (zero means default)
 *   MT_TRY(mt_layernorm_fwd(&cx, out, mean, rstd, x, w, b, N, C));
 *
 * Pointers are void*: weights and activations are in cx->dtype (f32 or f64 on the CPU, f32 or
 * bf16 on the GPU); per-row statistics, losses, optimizer moments and norms are in the "stat"
 * type (double when cx->dtype is f64, float otherwise). On the GPU every pointer is device memory
 * and every call is asynchronous on cx->stream: no op synchronises with the host.
 *
 * Defines
 *   mt_zero, mt_copy, mt_copy_from_f32, mt_copy_to_f32
 *   mt_embedding_fwd/bwd, mt_layernorm_fwd/bwd, mt_rmsnorm_fwd/bwd, mt_matmul_fwd/bwd (bias,
 *   residual and GELU epilogues), mt_gelu_fwd/bwd, mt_swiglu_fwd/bwd, mt_rope_fwd/bwd,
 *   mt_attention_fwd/bwd (+ mt_attention_workspace_nbytes), mt_xent, mt_vocab_xent_local/finish,
 *   mt_bias_residual_fwd, mt_residual_fwd, mt_adamw, mt_sumsq, mt_clip_coef
 *   mt_adamw_tensor, mt_adamw_multi, mt_adamw_multi_plan (+ _init, _step, _free): AdamW over many tensors
 * The rules (weight gradients +=, activation gradients =) and layouts are in mt/cpu_ops.inl.
 */
#ifndef MT_OPS_H
#define MT_OPS_H
#include "core.h"
#include "cpu_ops.h"
#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt__no_gpu(const char *op) {
    return mt_errorf(MT_ERR_UNSUPPORTED, "%s: GPU tensors in a build without CUDA (compile with nvcc)", op);
}
MT_API mt_status mt__bad_cpu_dtype(const mt_ctx *cx, const char *op) {
    return mt_errorf(MT_ERR_UNSUPPORTED, "%s: the CPU backend computes in f32 or f64, not %s", op,
                     mt_dtype_name(cx->dtype));
}

#ifdef __CUDACC__
/* the GPU call, between two timing events when mt_gpu_timing is on (kernels/common.cuh) */
#define MT__GPU_RETURN(cx, call, name, s0, s1, s2)                                   \
    do {                                                                           \
        if (!(cx)->gpu || !(cx)->gpu->timer) return (call);                        \
        int k_ = mt__op_timer_begin(cx, name, s0, s1, s2);                         \
        mt_status st_ = (call);                                                    \
        mt__op_timer_end(cx, k_);                                                  \
        return st_;                                                                \
    } while (0)
#else
#define MT__GPU_RETURN(cx, call, name, s0, s1, s2) return mt__no_gpu(name)
#endif

/* Inside an op: run the GPU launcher, or MT__BODY(R, sfx) for the CPU dtype. s0..s2: the shape
 * under which the op's GPU time is reported (0 0 0: by name only). */
#define MT__DISPATCH_SHAPE(cx, name, s0, s1, s2, gpu_call)                        \
    do {                                                                         \
        if ((cx)->device.type == MT_CUDA) MT__GPU_RETURN(cx, gpu_call, name, s0, s1, s2); \
        if ((cx)->dtype == MT_F32) { MT__BODY(float, f32); return MT_OK; }       \
        if ((cx)->dtype == MT_F64) { MT__BODY(double, f64); return MT_OK; }      \
        return mt__bad_cpu_dtype(cx, name);                                      \
    } while (0)
#define MT__DISPATCH(cx, name, gpu_call) MT__DISPATCH_SHAPE(cx, name, 0, 0, 0, gpu_call)

/* ------------------------------------------------------------------ memory */

MT_API mt_status mt_zero(const mt_ctx *cx, void *p, size_t nbytes) {
    if (cx->device.type == MT_CPU) { memset(p, 0, nbytes); return MT_OK; }
#ifdef __CUDACC__
    cudaError_t e = cudaMemsetAsync(p, 0, nbytes, (cudaStream_t)cx->stream);
    return e == cudaSuccess ? MT_OK : mt_errorf(MT_ERR_CUDA, "mt_zero: %s", cudaGetErrorString(e));
#else
    return mt__no_gpu("mt_zero");
#endif
}

/* dst = src, both on cx's device (asynchronous on the GPU). */
MT_API mt_status mt_copy(const mt_ctx *cx, void *dst, const void *src, size_t nbytes) {
    if (cx->device.type == MT_CPU) { memmove(dst, src, nbytes); return MT_OK; }
#ifdef __CUDACC__
    cudaError_t e = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, (cudaStream_t)cx->stream);
    return e == cudaSuccess ? MT_OK : mt_errorf(MT_ERR_CUDA, "mt_copy: %s", cudaGetErrorString(e));
#else
    return mt__no_gpu("mt_copy");
#endif
}

/* dst (n, cx->dtype, on cx's device) = src (n floats on the host), rounding to nearest even.
 * Synchronous: for initialisation and checkpoints, not for the step. */
MT_API mt_status mt_copy_from_f32(const mt_ctx *cx, void *dst, const float *src, size_t n) {
    size_t es = mt_dtype_size(cx->dtype);
    void *stage = dst;
    if (cx->device.type == MT_CUDA || cx->dtype != MT_F32) {
        if (cx->device.type == MT_CUDA) MT_TRY(mt_calloc(n * es, &stage));
        for (size_t i = 0; i < n; i++) {
            switch (cx->dtype) {
                case MT_F32: ((float *)stage)[i] = src[i]; break;
                case MT_F64: ((double *)stage)[i] = src[i]; break;
                case MT_BF16: ((uint16_t *)stage)[i] = mt_f32_to_bf16(src[i]); break;
                case MT_F16: ((uint16_t *)stage)[i] = mt_f32_to_f16(src[i]); break;
                default:
                    if (stage != dst) mt_free(stage);
                    return mt_errorf(MT_ERR_UNSUPPORTED, "mt_copy_from_f32: dtype %s", mt_dtype_name(cx->dtype));
            }
        }
    } else {
        memcpy(dst, src, n * es);
    }
    if (cx->device.type == MT_CUDA) {
#ifdef __CUDACC__
        cudaError_t e = cudaMemcpy(dst, stage, n * es, cudaMemcpyHostToDevice);
        mt_free(stage);
        if (e != cudaSuccess) return mt_errorf(MT_ERR_CUDA, "mt_copy_from_f32: %s", cudaGetErrorString(e));
#else
        return mt__no_gpu("mt_copy_from_f32");
#endif
    }
    return MT_OK;
}

/* dst (n floats on the host) = src (n, `dtype`, on cx's device).  Synchronous. */
MT_API mt_status mt_copy_to_f32(const mt_ctx *cx, float *dst, const void *src, mt_dtype dtype, size_t n) {
    size_t es = mt_dtype_size(dtype);
    const void *host = src;
    (void)es;
    void *stage = NULL;
    if (cx->device.type == MT_CUDA) {
#ifdef __CUDACC__
        MT_TRY(mt_calloc(n * es, &stage));
        cudaError_t e = cudaMemcpy(stage, src, n * es, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) {
            mt_free(stage);
            return mt_errorf(MT_ERR_CUDA, "mt_copy_to_f32: %s", cudaGetErrorString(e));
        }
        host = stage;
#else
        return mt__no_gpu("mt_copy_to_f32");
#endif
    }
    mt_status st = MT_OK;
    for (size_t i = 0; i < n && st == MT_OK; i++) {
        switch (dtype) {
            case MT_F32: dst[i] = ((const float *)host)[i]; break;
            case MT_F64: dst[i] = (float)((const double *)host)[i]; break;
            case MT_BF16: dst[i] = mt_bf16_to_f32(((const uint16_t *)host)[i]); break;
            case MT_F16: dst[i] = mt_f16_to_f32(((const uint16_t *)host)[i]); break;
            default: st = mt_errorf(MT_ERR_UNSUPPORTED, "mt_copy_to_f32: dtype %s", mt_dtype_name(dtype));
        }
    }
    mt_free(stage);
    return st;
}

/* ------------------------------------------------------------------ layers */

/* out (B,T,C) = wte[tokens] + wpe[pos_offset + t]; vocab rows [vstart, vstart+vcount) are local;
 * wpe may be NULL (no learned positions). */
MT_API mt_status mt_embedding_fwd(const mt_ctx *cx, void *out, const int32_t *tokens, const void *wte,
                                  const void *wpe, int B, int T, int C, int pos_offset, int vstart, int vcount) {
#define MT__BODY(R, sfx) \
    mt_embedding_fwd_cpu_##sfx((R *)out, tokens, (const R *)wte, (const R *)wpe, B, T, C, pos_offset, vstart, vcount)
    MT__DISPATCH(cx, "embedding_fwd",
                 mt_embedding_fwd_gpu(cx, out, tokens, wte, wpe, B, T, C, pos_offset, vstart, vcount));
#undef MT__BODY
}

/* dwte += scatter(dout), dwpe += sum over the batch (either may be NULL). */
MT_API mt_status mt_embedding_bwd(const mt_ctx *cx, void *dwte, void *dwpe, const void *dout, const int32_t *tokens,
                                  int B, int T, int C, int pos_offset, int vstart, int vcount) {
#define MT__BODY(R, sfx) \
    mt_embedding_bwd_cpu_##sfx((R *)dwte, (R *)dwpe, (const R *)dout, tokens, B, T, C, pos_offset, vstart, vcount)
    MT__DISPATCH(cx, "embedding_bwd",
                 mt_embedding_bwd_gpu(cx, dwte, dwpe, dout, tokens, B, T, C, pos_offset, vstart, vcount));
#undef MT__BODY
}

/* out (N,C) = LayerNorm(inp) * w + b; mean, rstd (N, stat type) saved for the backward. */
MT_API mt_status mt_layernorm_fwd(const mt_ctx *cx, void *out, void *mean, void *rstd, const void *inp,
                                  const void *w, const void *b, int N, int C) {
#define MT__BODY(R, sfx) \
    mt_layernorm_fwd_cpu_##sfx((R *)out, (R *)mean, (R *)rstd, (const R *)inp, (const R *)w, (const R *)b, N, C)
    MT__DISPATCH(cx, "layernorm_fwd", mt_layernorm_fwd_gpu(cx, out, mean, rstd, inp, w, b, N, C));
#undef MT__BODY
}

/* dinp = dresid + d(LN)/d(inp)·dout (dresid may be NULL or alias dinp); dw, db +=. */
MT_API mt_status mt_layernorm_bwd(const mt_ctx *cx, void *dinp, void *dw, void *db, const void *dout,
                                  const void *dresid, const void *inp, const void *w, const void *mean,
                                  const void *rstd, int N, int C) {
#define MT__BODY(R, sfx)                                                                                \
    mt_layernorm_bwd_cpu_##sfx((R *)dinp, (R *)dw, (R *)db, (const R *)dout, (const R *)dresid,         \
                               (const R *)inp, (const R *)w, (const R *)mean, (const R *)rstd, N, C)
    MT__DISPATCH(cx, "layernorm_bwd",
                 mt_layernorm_bwd_gpu(cx, dinp, dw, db, dout, dresid, inp, w, mean, rstd, N, C));
#undef MT__BODY
}

MT_API mt_status mt_rmsnorm_fwd(const mt_ctx *cx, void *out, void *rstd, const void *inp, const void *w, int N,
                                int C) {
#define MT__BODY(R, sfx) mt_rmsnorm_fwd_cpu_##sfx((R *)out, (R *)rstd, (const R *)inp, (const R *)w, N, C)
    MT__DISPATCH(cx, "rmsnorm_fwd", mt_rmsnorm_fwd_gpu(cx, out, rstd, inp, w, N, C));
#undef MT__BODY
}

MT_API mt_status mt_rmsnorm_bwd(const mt_ctx *cx, void *dinp, void *dw, const void *dout, const void *dresid,
                                const void *inp, const void *w, const void *rstd, int N, int C) {
#define MT__BODY(R, sfx)                                                                                 \
    mt_rmsnorm_bwd_cpu_##sfx((R *)dinp, (R *)dw, (const R *)dout, (const R *)dresid, (const R *)inp,     \
                             (const R *)w, (const R *)rstd, N, C)
    MT__DISPATCH(cx, "rmsnorm_bwd", mt_rmsnorm_bwd_gpu(cx, dinp, dw, dout, dresid, inp, w, rstd, N, C));
#undef MT__BODY
}

/* Linear layer with epilogues:
 *   gelu_pre == NULL:  out = inp @ w^T + bias + resid        (bias, resid optional)
 *   gelu_pre != NULL:  gelu_pre = inp @ w^T + bias; out = gelu(gelu_pre)   (resid must be NULL)
 * inp (N,IC), w (OC,IC), bias (OC), out, resid, gelu_pre (N,OC). */
MT_API mt_status mt_matmul_fwd(const mt_ctx *cx, void *out, void *gelu_pre, const void *inp, const void *w,
                               const void *bias, const void *resid, int N, int IC, int OC) {
    if (gelu_pre && resid) return mt_errorf(MT_ERR_ARG, "matmul_fwd: a GELU epilogue takes no residual");
#define MT__BODY(R, sfx)                                                                                     \
    do {                                                                                                     \
        mt_matmul_fwd_cpu_##sfx(gelu_pre ? (R *)gelu_pre : (R *)out, (const R *)inp, (const R *)w,           \
                                (const R *)bias, (const R *)resid, N, IC, OC);                               \
        if (gelu_pre) mt_gelu_fwd_cpu_##sfx((R *)out, (const R *)gelu_pre, (size_t)N * OC);                  \
    } while (0)
    MT__DISPATCH_SHAPE(cx, "matmul_fwd", N, IC, OC, mt_matmul_fwd_gpu(cx, out, gelu_pre, inp, w, bias, resid, N, IC, OC));
#undef MT__BODY
}

/* dinp (N,IC) = dout @ w, then times gelu'(gelu_pre) when gelu_pre (N,IC) is given (the backward of
 * the GELU that produced inp); dw (OC,IC) += dout^T @ inp; dbias (OC) += column sums of dout.
 * dinp, dw, dbias may each be NULL. */
MT_API mt_status mt_matmul_bwd(const mt_ctx *cx, void *dinp, void *dw, void *dbias, const void *dout,
                               const void *inp, const void *w, const void *gelu_pre, int N, int IC, int OC) {
#define MT__BODY(R, sfx)                                                                                     \
    do {                                                                                                     \
        mt_matmul_bwd_cpu_##sfx((R *)dinp, (R *)dw, (R *)dbias, (const R *)dout, (const R *)inp,             \
                                (const R *)w, N, IC, OC);                                                    \
        if (dinp && gelu_pre)                                                                                \
            mt_gelu_bwd_cpu_##sfx((R *)dinp, (const R *)gelu_pre, (const R *)dinp, (size_t)N * IC);          \
    } while (0)
    MT__DISPATCH_SHAPE(cx, "matmul_bwd", N, IC, OC, mt_matmul_bwd_gpu(cx, dinp, dw, dbias, dout, inp, w, gelu_pre, N, IC, OC));
#undef MT__BODY
}

MT_API mt_status mt_gelu_fwd(const mt_ctx *cx, void *out, const void *inp, size_t n) {
#define MT__BODY(R, sfx) mt_gelu_fwd_cpu_##sfx((R *)out, (const R *)inp, n)
    MT__DISPATCH(cx, "gelu_fwd", mt_gelu_fwd_gpu(cx, out, inp, n));
#undef MT__BODY
}

MT_API mt_status mt_gelu_bwd(const mt_ctx *cx, void *dinp, const void *inp, const void *dout, size_t n) {
#define MT__BODY(R, sfx) mt_gelu_bwd_cpu_##sfx((R *)dinp, (const R *)inp, (const R *)dout, n)
    MT__DISPATCH(cx, "gelu_bwd", mt_gelu_bwd_gpu(cx, dinp, inp, dout, n));
#undef MT__BODY
}

MT_API mt_status mt_swiglu_fwd(const mt_ctx *cx, void *out, const void *inp, int N, int F) {
#define MT__BODY(R, sfx) mt_swiglu_fwd_cpu_##sfx((R *)out, (const R *)inp, N, F)
    MT__DISPATCH(cx, "swiglu_fwd", mt_swiglu_fwd_gpu(cx, out, inp, N, F));
#undef MT__BODY
}

MT_API mt_status mt_swiglu_bwd(const mt_ctx *cx, void *dinp, const void *inp, const void *dout, int N, int F) {
#define MT__BODY(R, sfx) mt_swiglu_bwd_cpu_##sfx((R *)dinp, (const R *)inp, (const R *)dout, N, F)
    MT__DISPATCH(cx, "swiglu_bwd", mt_swiglu_bwd_gpu(cx, dinp, inp, dout, N, F));
#undef MT__BODY
}

/* RoPE on the fused QKV activation (B,T,Hkv,G+2,D), in place allowed; backward rotates back. */
MT_API mt_status mt_rope_fwd(const mt_ctx *cx, void *out, const void *inp, int B, int T, int Hkv, int G, int D,
                             int pos_offset, float theta) {
#define MT__BODY(R, sfx) mt_rope_cpu_##sfx((R *)out, (const R *)inp, B, T, Hkv, G, D, pos_offset, theta, 1)
    MT__DISPATCH(cx, "rope_fwd", mt_rope_gpu(cx, out, inp, B, T, Hkv, G, D, pos_offset, theta, 1));
#undef MT__BODY
}

MT_API mt_status mt_rope_bwd(const mt_ctx *cx, void *dinp, const void *dout, int B, int T, int Hkv, int G, int D,
                             int pos_offset, float theta) {
#define MT__BODY(R, sfx) mt_rope_cpu_##sfx((R *)dinp, (const R *)dout, B, T, Hkv, G, D, pos_offset, theta, -1)
    MT__DISPATCH(cx, "rope_bwd", mt_rope_gpu(cx, dinp, dout, B, T, Hkv, G, D, pos_offset, theta, -1));
#undef MT__BODY
}

#ifdef __CUDACC__
/* The GPU picks the fused flash attention (kernels/attention.cuh) for bf16 with head dim 64 or 128,
 * and the simple reference kernel (kernels/attention_ref.cuh) otherwise (fp32 checks, other D). */
MT_API int mt__use_flash(const mt_ctx *cx, int D) { return cx->dtype == MT_BF16 && (D == 64 || D == 128); }

MT_API mt_status mt__attention_fwd_gpu(const mt_ctx *cx, void *out, void *lse, const void *qkv, int B, int T,
                                       int Hkv, int G, int D, int causal) {
    if (mt__use_flash(cx, D)) return mt_flash_attention_fwd(cx, out, (float *)lse, qkv, B, T, Hkv, G, D, causal);
    return mt_attention_fwd_gpu(cx, out, lse, qkv, B, T, Hkv, G, D, causal);
}

MT_API mt_status mt__attention_bwd_gpu(const mt_ctx *cx, void *dqkv, const void *dout, const void *out,
                                       const void *lse, const void *qkv, int B, int T, int Hkv, int G, int D,
                                       int causal, void *ws, size_t ws_nbytes) {
    if (mt__use_flash(cx, D)) {
        if (!ws || ws_nbytes < mt_flash_attention_bwd_workspace_nbytes(B, T, Hkv, G, D))
            return mt_errorf(MT_ERR_ARG, "attention_bwd: workspace of %zu bytes, flash attention needs %zu "
                             "(mt_attention_workspace_nbytes)", ws_nbytes,
                             mt_flash_attention_bwd_workspace_nbytes(B, T, Hkv, G, D));
        return mt_flash_attention_bwd(cx, dqkv, dout, out, (const float *)lse, qkv, B, T, Hkv, G, D, causal, ws,
                                      ws_nbytes);
    }
    return mt_attention_bwd_gpu(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, D, causal);
}
#endif

/* Bytes of device workspace mt_attention_bwd needs for these sizes (0 on the CPU). */
MT_API size_t mt_attention_workspace_nbytes(const mt_ctx *cx, int B, int T, int Hkv, int G, int D) {
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA && mt__use_flash(cx, D)) return mt_flash_attention_bwd_workspace_nbytes(B, T, Hkv, G, D);
#endif
    (void)cx; (void)B; (void)T; (void)Hkv; (void)G; (void)D;
    return 0;
}

/* qkv (B,T,Hkv,G+2,D) -> out (B,T,H,D), lse (B,H,T, stat type); H = Hkv*G. */
MT_API mt_status mt_attention_fwd(const mt_ctx *cx, void *out, void *lse, const void *qkv, int B, int T, int Hkv,
                                  int G, int D, int causal) {
#define MT__BODY(R, sfx) mt_attention_fwd_cpu_##sfx((R *)out, (R *)lse, (const R *)qkv, B, T, Hkv, G, D, causal)
    MT__DISPATCH_SHAPE(cx, "attention_fwd", T, Hkv * G, D,
                       mt__attention_fwd_gpu(cx, out, lse, qkv, B, T, Hkv, G, D, causal));
#undef MT__BODY
}

/* dqkv (B,T,Hkv,G+2,D) from dout (B,T,H,D), the forward's out and lse, and qkv.  Assigns dqkv.
 * ws: device workspace of mt_attention_workspace_nbytes (NULL/0 on the CPU). */
MT_API mt_status mt_attention_bwd(const mt_ctx *cx, void *dqkv, const void *dout, const void *out, const void *lse,
                                  const void *qkv, int B, int T, int Hkv, int G, int D, int causal, void *ws,
                                  size_t ws_nbytes) {
    (void)ws;
    (void)ws_nbytes;
#define MT__BODY(R, sfx)                                                                                      \
    mt_attention_bwd_cpu_##sfx((R *)dqkv, (const R *)dout, (const R *)out, (const R *)lse, (const R *)qkv, B, \
                               T, Hkv, G, D, causal)
    MT__DISPATCH_SHAPE(cx, "attention_bwd", T, Hkv * G, D,
                       mt__attention_bwd_gpu(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, D, causal, ws, ws_nbytes));
#undef MT__BODY
}

/* Softmax cross-entropy fused forward + backward over logits (N,Vp), the first V columns real.
 * losses (N, stat type); dlogits = (softmax - onehot) * dscale (may alias logits; NULL = forward only).
 * A target < 0 is ignored. */
MT_API mt_status mt_xent(const mt_ctx *cx, void *losses, void *dlogits, const void *logits, const int32_t *targets,
                         float dscale, int N, int V, int Vp) {
#define MT__BODY(R, sfx) \
    mt_xent_cpu_##sfx((R *)losses, (R *)dlogits, (const R *)logits, targets, (R)dscale, N, V, Vp)
    MT__DISPATCH(cx, "xent", mt_xent_gpu(cx, losses, dlogits, logits, targets, dscale, N, V, Vp));
#undef MT__BODY
}

/* Vocab-parallel cross-entropy (mt/tensor_parallel.h drives it), rules in mt/cpu_ops.inl: this rank
 * holds logit columns [vstart, vstart + Vl) of (N, Vp), the first V global columns real.
 * Local part: stats (3, N, stat type) = this rank's row max, sum of exp below it, and target logit. */
MT_API mt_status mt_vocab_xent_local(const mt_ctx *cx, void *stats, const void *logits, const int32_t *targets,
                                     int N, int V, int Vl, int vstart) {
#define MT__BODY(R, sfx) mt_vocab_xent_local_cpu_##sfx((R *)stats, (const R *)logits, targets, N, V, Vl, vstart)
    MT__DISPATCH(cx, "vocab_xent_local", mt_vocab_xent_local_gpu(cx, stats, logits, targets, N, V, Vl, vstart));
#undef MT__BODY
}

/* Finishing part, from all (tp, 3, N): every rank's stats in rank order. losses (N, stat type);
 * dlogits (N, Vl) = (softmax - onehot) * dscale on the local columns (may alias logits; NULL = forward only). */
MT_API mt_status mt_vocab_xent_finish(const mt_ctx *cx, void *losses, void *dlogits, const void *logits,
                                      const int32_t *targets, const void *all, float dscale, int N, int V, int Vl,
                                      int vstart, int tp) {
#define MT__BODY(R, sfx)                                                                                       \
    mt_vocab_xent_finish_cpu_##sfx((R *)losses, (R *)dlogits, (const R *)logits, targets, (const R *)all,     \
                                   (R)dscale, N, V, Vl, vstart, tp)
    MT__DISPATCH(cx, "vocab_xent_finish",
                 mt_vocab_xent_finish_gpu(cx, losses, dlogits, logits, targets, all, dscale, N, V, Vl, vstart, tp));
#undef MT__BODY
}

/* out (N,C) = inp + bias (C) + resid (N,C): a row-parallel linear's epilogue once its partial products are
 * summed over tp. bias, resid may be NULL; out may alias inp. */
MT_API mt_status mt_bias_residual_fwd(const mt_ctx *cx, void *out, const void *inp, const void *bias,
                                      const void *resid, int N, int C) {
#define MT__BODY(R, sfx) \
    mt_bias_residual_cpu_##sfx((R *)out, (const R *)inp, (const R *)bias, (const R *)resid, N, C)
    MT__DISPATCH(cx, "bias_residual_fwd", mt_bias_residual_gpu(cx, out, inp, bias, resid, N, C));
#undef MT__BODY
}

MT_API mt_status mt_residual_fwd(const mt_ctx *cx, void *out, const void *a, const void *b, size_t n) {
#define MT__BODY(R, sfx) mt_residual_fwd_cpu_##sfx((R *)out, (const R *)a, (const R *)b, n)
    MT__DISPATCH(cx, "residual_fwd", mt_residual_fwd_gpu(cx, out, a, b, n));
#undef MT__BODY
}

/* ------------------------------------------------------------------ optimizer pieces */

/* One AdamW step over n parameters.
 *   param (cx->dtype): the weights the model uses; master (f32): the fp32 copy when param is bf16,
 *   NULL when param is itself f32/f64; m, v (stat type); grad (cx->dtype).
 *   gscale: a stat-type scalar on the device that multiplies the gradients (the clip coefficient
 *   from mt_clip_coef), or NULL.  seed: for stochastic rounding of bf16 params (0 = nearest). */
MT_API mt_status mt_adamw(const mt_ctx *cx, void *param, float *master, void *m, void *v, const void *grad, size_t n,
                          const mt_adamw_hp *hp, const void *gscale, uint64_t seed) {
#define MT__BODY(R, sfx)                                                                                 \
    mt_adamw_cpu_##sfx((R *)param, (R *)m, (R *)v, (const R *)grad, n, hp->lr, hp->beta1, hp->beta2,     \
                       hp->eps, hp->weight_decay, hp->step, gscale ? (double)*(const R *)gscale : 1.0)
    (void)master;
    (void)seed;
    MT__DISPATCH(cx, "adamw", mt_adamw_gpu(cx, param, master, m, v, grad, n, hp, gscale, seed));
#undef MT__BODY
}

/* One parameter tensor of a multi-tensor AdamW step (pointers as for mt_adamw). */
typedef struct mt_adamw_tensor {
    void *param;      /* (n) cx->dtype */
    float *master;    /* (n) f32 master copy when param is bf16, else NULL (all tensors alike) */
    void *m, *v;      /* (n) stat type */
    const void *grad; /* (n) cx->dtype */
    size_t n;         /* elements */
    int decay;        /* 1: weight decay `wd` applies (matrices, embeddings); 0: none (biases, norms) */
} mt_adamw_tensor;

MT_API mt_status mt__adamw_multi_check(const mt_adamw_tensor *tensors, int n) {
    if (n < 0 || (n > 0 && !tensors)) return mt_errorf(MT_ERR_ARG, "adamw_multi: %d tensors at %p", n, (const void *)tensors);
    for (int i = 1; i < n; i++)
        if ((tensors[i].master == NULL) != (tensors[0].master == NULL))
            return mt_errorf(MT_ERR_ARG, "adamw_multi: tensor %d %s a master copy but tensor 0 %s", i,
                             tensors[i].master ? "has" : "lacks", tensors[0].master ? "has" : "lacks");
    return MT_OK;
}

/* AdamW over n tensors: hp_base gives lr, betas, eps and step (its weight_decay is not used); tensor i
 * decays with wd when tensors[i].decay, and rounds stochastically with seed + i (seed 0: nearest).
 * Equal, bit for bit, to mt_adamw on each tensor with those settings.  On the GPU one launch per
 * MT_ADAMW_MULTI_BATCH (128) tensors, the table passed as a kernel parameter: no allocation and no
 * copy.  For one launch over any number of tensors keep a mt_adamw_multi_plan. */
MT_API mt_status mt_adamw_multi(const mt_ctx *cx, const mt_adamw_tensor *tensors, int n, const mt_adamw_hp *hp_base,
                                float wd, const void *gscale, uint64_t seed) {
    MT_TRY(mt__adamw_multi_check(tensors, n));
    if (!hp_base) return mt_errorf(MT_ERR_ARG, "adamw_multi: hp_base is NULL");
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        mt__adamw_args a;
        MT_TRY(mt__adamw_make_args(hp_base, wd, seed, &a));
        int has_master = n > 0 && tensors[0].master != NULL;
        mt__adamw_batch b;
        b.count = 0;
        b.nchunks = 0;
        for (int i = 0; i < n; i++) {
            const mt_adamw_tensor *t = &tensors[i];
            mt__adamw_entry e;
            mt__adamw_entry_set(&e, t->param, t->master, t->m, t->v, t->grad, t->n, (uint64_t)i, t->decay);
            MT_TRY(mt__adamw_batch_add(cx, &b, has_master, &a, gscale, &e));
        }
        return mt__adamw_launch(cx, &b, NULL, b.count, b.nchunks, has_master, &a, gscale);
    }
#endif
    for (int i = 0; i < n; i++) {
        const mt_adamw_tensor *t = &tensors[i];
        mt_adamw_hp hp = *hp_base;
        hp.weight_decay = t->decay ? wd : 0.0f;
        MT_TRY(mt_adamw(cx, t->param, t->master, t->m, t->v, t->grad, t->n, &hp, gscale, seed ? seed + (uint64_t)i : 0));
    }
    return MT_OK;
}

/* The tensor list of a model, kept for every step: on the GPU the table sits in device memory
 * (uploaded once by mt_adamw_multi_plan_init), so a step is one launch with no copy. */
typedef struct mt_adamw_multi_plan {
    mt_device device;          /* where the table lives */
    int count;                 /* tensors */
    int has_master;            /* 1: every tensor has a master copy */
    uint32_t nchunks;          /* GPU work items over all tensors */
    void *table;               /* GPU: (count) device-side entries; CPU: (count) mt_adamw_tensor copy */
} mt_adamw_multi_plan;

MT_API void mt_adamw_multi_plan_free(mt_adamw_multi_plan *plan) {
    if (plan->table) mt_device_free(plan->device, plan->table);
    memset(plan, 0, sizeof *plan);
}

/* Build the plan for `n` tensors (synchronous: at start-up, not in the step). */
MT_API mt_status mt_adamw_multi_plan_init(const mt_ctx *cx, mt_adamw_multi_plan *plan, const mt_adamw_tensor *tensors,
                                          int n) {
    memset(plan, 0, sizeof *plan);
    (void)cx;
    MT_TRY(mt__adamw_multi_check(tensors, n));
    plan->count = n;
    plan->has_master = n > 0 && tensors[0].master != NULL;
    plan->device = mt_cpu();
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        if (n == 0) return MT_OK;
        mt__adamw_entry *h = NULL;
        MT_TRY(mt_calloc(sizeof(mt__adamw_entry) * (size_t)n, (void **)&h));
        uint64_t chunks = 0;
        for (int i = 0; i < n; i++) {
            const mt_adamw_tensor *t = &tensors[i];
            mt__adamw_entry_set(&h[i], t->param, t->master, t->m, t->v, t->grad, t->n, (uint64_t)i, t->decay);
            h[i].chunk0 = (uint32_t)chunks;
            chunks += mt__adamw_chunks(t->n);
        }
        mt_status st = MT_OK;
        if (chunks > 0xffffffffull) st = mt_errorf(MT_ERR_UNSUPPORTED, "adamw_multi_plan: %llu chunks", (unsigned long long)chunks);
        if (st == MT_OK) st = mt_device_alloc(cx->device, sizeof(mt__adamw_entry) * (size_t)n, &plan->table);
        if (st == MT_OK) {
            plan->device = cx->device;
            cudaError_t e = cudaMemcpy(plan->table, h, sizeof(mt__adamw_entry) * (size_t)n, cudaMemcpyHostToDevice);
            if (e != cudaSuccess) st = mt_errorf(MT_ERR_CUDA, "adamw_multi_plan: %s", cudaGetErrorString(e));
        }
        mt_free(h);
        plan->nchunks = (uint32_t)chunks;
        if (st != MT_OK) mt_adamw_multi_plan_free(plan);
        return st;
    }
#endif
    if (n == 0) return MT_OK;
    MT_TRY(mt_calloc(sizeof(mt_adamw_tensor) * (size_t)n, &plan->table));
    memcpy(plan->table, tensors, sizeof(mt_adamw_tensor) * (size_t)n);
    return MT_OK;
}

/* One AdamW step over the plan's tensors: the same result as mt_adamw_multi over them. */
MT_API mt_status mt_adamw_multi_plan_step(const mt_ctx *cx, const mt_adamw_multi_plan *plan,
                                          const mt_adamw_hp *hp_base, float wd, const void *gscale, uint64_t seed) {
    if (!hp_base) return mt_errorf(MT_ERR_ARG, "adamw_multi_plan_step: hp_base is NULL");
    if (plan->count == 0) return MT_OK;
    if (plan->device.type != cx->device.type)
        return mt_errorf(MT_ERR_ARG, "adamw_multi_plan_step: the plan was built for the %s, cx runs on the %s",
                         plan->device.type == MT_CUDA ? "GPU" : "CPU", cx->device.type == MT_CUDA ? "GPU" : "CPU");
#ifdef __CUDACC__
    if (cx->device.type == MT_CUDA) {
        mt__adamw_args a;
        MT_TRY(mt__adamw_make_args(hp_base, wd, seed, &a));
        int k = mt__op_timer_begin(cx, "adamw", 0, 0, 0);
        mt_status st = mt__adamw_launch(cx, NULL, (const mt__adamw_entry *)plan->table, plan->count, plan->nchunks,
                                        plan->has_master, &a, gscale);
        mt__op_timer_end(cx, k);
        return st;
    }
#endif
    return mt_adamw_multi(cx, (const mt_adamw_tensor *)plan->table, plan->count, hp_base, wd, gscale, seed);
}

/* *acc (stat type, on the device) += sum of squares of x (n, cx->dtype).  Deterministic. */
MT_API mt_status mt_sumsq(const mt_ctx *cx, void *acc, const void *x, size_t n) {
#define MT__BODY(R, sfx) *(R *)acc += (R)mt_sumsq_cpu_##sfx((const R *)x, n)
    MT__DISPATCH(cx, "sumsq", mt_sumsq_gpu(cx, acc, x, n));
#undef MT__BODY
}

/* *coef = min(1, max_norm / (sqrt(*norm_sq) + 1e-6)); 1 when max_norm <= 0.  Stat-type scalars. */
MT_API mt_status mt_clip_coef(const mt_ctx *cx, void *coef, const void *norm_sq, float max_norm) {
#define MT__BODY(R, sfx)                                                                      \
    do {                                                                                      \
        double c = max_norm > 0 ? max_norm / (sqrt((double)*(const R *)norm_sq) + 1e-6) : 1.0; \
        *(R *)coef = (R)(c < 1.0 ? c : 1.0);                                                  \
    } while (0)
    MT__DISPATCH(cx, "clip_coef", mt_clip_coef_gpu(cx, coef, norm_sq, max_norm));
#undef MT__BODY
}

/* ------------------------------------------------------------------ schedule */

/* Learning rate at iteration `it` (0-based): linear warmup over `warmup` iterations to lr_max, then
 * decay to lr_min by `style` ("cosine", "linear" or "constant") until `decay_iters`. */
MT_API double mt_lr_at(int it, int warmup, int decay_iters, double lr_max, double lr_min, const char *style) {
    if (warmup > 0 && it < warmup) return lr_max * (it + 1) / warmup;
    if (style && strcmp(style, "constant") == 0) return lr_max;
    if (it >= decay_iters) return lr_min;
    double frac = (double)(it - warmup) / (double)(decay_iters - warmup > 0 ? decay_iters - warmup : 1);
    double coeff = (style && strcmp(style, "linear") == 0) ? 1.0 - frac : 0.5 * (1.0 + cos(3.141592653589793 * frac));
    return lr_min + coeff * (lr_max - lr_min);
}

#ifdef __cplusplus
}
#endif
#endif
