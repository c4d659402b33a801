/* kernels/matmul.cuh — linear layers through cuBLASLt, with fused epilogues.
 *
 *   MT_TRY(mt_matmul_fwd(cx, out, gelu_pre, inp, w, bias, resid, N, IC, OC));   // out = inp @ w^T ...
 *
 * Defines  mt_matmul_fwd_gpu, mt_matmul_bwd_gpu (and mt__lt_matmul, a row-major-free cuBLASLt call
 *          with a per-shape heuristic cache)
 *
 * Rules (as in mt/cpu_ops.inl): inp (N,IC), w (OC,IC), bias (OC), out/resid/gelu_pre (N,OC), all
 * row-major.  Forward: out = inp @ w^T + bias + resid; with gelu_pre, gelu_pre = inp @ w^T + bias and
 * out = gelu(gelu_pre).  Backward: dinp = dout @ w (times gelu'(gelu_pre) when given) is assigned;
 * dw += dout^T @ inp and dbias += column sums of dout accumulate; any output may be NULL.
 *
 * Precision: bf16 A/B/C/D with fp32 accumulation (CUBLAS_COMPUTE_32F); in f32 mode the same compute
 * type with f32 storage, so no TF32 (matches the CPU to ~1e-6).
 * Epilogues: BIAS (or GELU_AUX_BIAS) in the forward, residual as C with beta = 1 (D = out); DGELU on
 * the dinp GEMM; BGRADB on the wgrad GEMM writes the bias gradient to the scratch, a small kernel
 * then adds it into dbias (the epilogue overwrites, the API accumulates).  When cuBLASLt offers no
 * algorithm for an epilogue (or cx->gpu->lt_epilogues == 0) the same result comes from a plain GEMM
 * plus the elementwise kernels: the answer does not depend on which path ran beyond rounding.
 * In f32 (the mode that checks against the CPU) GELU and its gradient always come from the
 * elementwise kernels: cuBLASLt's GELU epilogue need not be accurate to 1e-5.
 * Alignment: in bf16, IC and OC must be multiples of 8 and every pointer 16-byte aligned (N is
 * free); in f32 any size works.  Other shapes return MT_ERR_SHAPE with the sizes.
 */
#ifndef MT_KERNELS_MATMUL_CUH
#define MT_KERNELS_MATMUL_CUH
#include "common.cuh"
#include "elementwise.cuh"

/* ------------------------------------------------------------------ kernels */

/* out (N,OC) += bias (OC), in place: the fallback for the BIAS epilogue. */
template <typename T>
__global__ void mt__add_bias_kernel(T *out, const T *__restrict__ bias, int N, int OC) {
    size_t n = (size_t)N * OC;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = mt__cvt<T>(mt__f(out[i]) + mt__f(bias[i % OC]));
}

/* partial (gridDim.y, OC) = column sums of dout (N,OC) over row chunks of `rows`: stage one of the
 * deterministic bias gradient. */
template <typename T>
__global__ void mt__bias_grad_partial_kernel(float *__restrict__ partial, const T *__restrict__ dout, int N, int OC,
                                             int rows) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    int r0 = blockIdx.y * rows, r1 = r0 + rows < N ? r0 + rows : N;
    float s = 0.0f;
    for (int i = r0; i < r1; i++) s += mt__f(dout[(size_t)i * OC + o]);
    partial[(size_t)blockIdx.y * OC + o] = s;
}

/* dbias (OC) += sum of npart rows of partial (npart, OC) in order; with TP = T, partial is in T
 * (what the BGRADB epilogue wrote), else float. */
template <typename T, typename P>
__global__ void mt__bias_grad_finalize_kernel(T *dbias, const P *__restrict__ partial, int npart, int OC) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    float s = 0.0f;
    for (int k = 0; k < npart; k++) s += mt__f(partial[(size_t)k * OC + o]);
    dbias[o] = mt__cvt<T>(mt__f(dbias[o]) + s);
}

/* ------------------------------------------------------------------ cuBLASLt */

MT_API int mt__align_bytes(const void *p) {
    uintptr_t a = (uintptr_t)p;
    if (!p || (a & 15) == 0) return 16;
    if ((a & 7) == 0) return 8;
    if ((a & 3) == 0) return 4;
    return 2;
}

#define MT__GEMM_TUNE_MAX 16

/* Which of nres heuristic results runs fastest here (cx->gpu->gemm_tune > 1, once per shape): each
 * runs once to warm up, then 3 times between events.  The candidates write a scratch copy of D
 * (d_nbytes, zeroed), never D itself, so an accumulating GEMM (C == D, passed as C = NULL) is not
 * applied more than once; aux and the bias-gradient outputs are plain overwrites, written again by
 * the real call.  Falls back to result 0 (the heuristic's choice) when the scratch does not fit, the
 * stream is being captured, or nothing could be timed. */
MT_API int mt__gemm_fastest(const mt_ctx *cx, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la,
                            cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, cublasLtMatrixLayout_t ld,
                            const void *A, const void *B, const void *C, float beta, size_t d_nbytes,
                            const cublasLtMatmulHeuristicResult_t *res, int nres) {
    struct mt_gpu_state *g = cx->gpu;
    cudaStream_t s = MT__STREAM(cx);
    if (mt__stream_capturing(cx)) return 0;
    void *Dt = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int best = 0;
    float best_ms = 0.0f, alpha = 1.0f;
    if (cudaMalloc(&Dt, d_nbytes) != cudaSuccess || cudaMemsetAsync(Dt, 0, d_nbytes, s) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        (void)cudaGetLastError();
        goto done;
    }
    if (!C) C = Dt;
    for (int i = 0; i < nres; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        int ok = 1;
        for (int r = 0; r < 4 && ok; r++) {
            if (r == 1) ok = cudaEventRecord(e0, s) == cudaSuccess;
            ok = ok && cublasLtMatmul(g->lt, desc, &alpha, A, la, B, lb, &beta, C, lc, Dt, ld, &res[i].algo,
                                      g->workspace, g->workspace_nbytes, s) == CUBLAS_STATUS_SUCCESS;
        }
        float ms = 0.0f;
        if (!ok || cudaEventRecord(e1, s) != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess ||
            cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) {
            (void)cudaGetLastError();
            continue;
        }
        if (best_ms == 0.0f || ms < best_ms) { best = i; best_ms = ms; }
    }
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (Dt) { cudaStreamSynchronize(s); cudaFree(Dt); }
    return best;
}

/* Use the GEMM tuning file at `path` (mt/tune.h) from now on: a GEMM shape it lists runs the algorithm it
 * names, without timing; with cx->gpu->gemm_tune > 1, a shape it lacks is timed and added, and the file
 * rewritten (atomically). A file for another GPU or cuBLASLt version is replaced (*stale = 1; logged).
 * *n_loaded: the shapes read. No file yet: an empty table, written at the first tuned shape. path NULL:
 * no file any more. Either way the shapes planned so far are looked up again at their next use. */
MT_API mt_status mt_gpu_gemm_tune_file(const mt_ctx *cx, const char *path, int *n_loaded, int *stale) {
    struct mt_gpu_state *g = cx->gpu;
    *n_loaded = *stale = 0;
    if (g && !path) {
        mt_gemm_tune_free(&g->tune);
        g->tune_path[0] = 0;
        memset(g->plans, 0, sizeof g->plans);
        return MT_OK;
    }
    if (!g || !path[0] || strlen(path) >= sizeof g->tune_path)
        return mt_errorf(MT_ERR_ARG, "gemm tune file: %s", !g ? "no GPU context" : "empty or too long a path");
    char lib[64];
    snprintf(lib, sizeof lib, "cublasLt %zu", cublasLtGetVersion());
    mt_gemm_tune_table t;
    MT_TRY(mt_gemm_tune_load(path, g->name, lib, &t, stale));
    mt_gemm_tune_free(&g->tune);
    g->tune = t;
    snprintf(g->tune_path, sizeof g->tune_path, "%s", path);
    memset(g->plans, 0, sizeof g->plans); /* shapes already planned are looked up again */
    *n_loaded = t.n;
    return MT_OK;
}

/* D (m,n, column-major, ldd) = alpha * op(A) @ op(B) + beta * C, with an epilogue, in cuBLASLt's
 * column-major terms.  C may be NULL (beta must be 0) or alias D.  When `unsupported` is given and
 * cuBLASLt has no algorithm, sets *unsupported = 1 and returns MT_OK without running anything. */
MT_API mt_status mt__lt_matmul(const mt_ctx *cx, const char *what, cudaDataType_t dt, int transa, int transb, int m,
                               int n, int k, const void *A, int lda, const void *B, int ldb, const void *C,
                               float beta, void *D, int ldd, cublasLtEpilogue_t epi, const void *bias, void *aux,
                               int64_t aux_ld, int *unsupported) {
    struct mt_gpu_state *g = cx->gpu;
    if (unsupported) *unsupported = 0;
    if (!C) { C = D; beta = 0.0f; }
    float alpha = 1.0f;
    cublasOperation_t opa = transa ? CUBLAS_OP_T : CUBLAS_OP_N, opb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    mt_status st = MT_OK;
    cublasStatus_t b = CUBLAS_STATUS_SUCCESS;
    int64_t key[16] = {(int64_t)dt, transa, transb, m, n, k, lda, ldb, ldd, (int64_t)epi, beta != 0.0f,
                       mt__align_bytes(A) | mt__align_bytes(B) << 5 | mt__align_bytes(C) << 10 |
                           mt__align_bytes(D) << 15 | mt__align_bytes(bias) << 20 | (int64_t)mt__align_bytes(aux) << 25,
                       aux_ld, C == D, 0, 0};
    /* an SM margin: cuBLASLt plans the GEMM for fewer SMs (its own plan; the tuning file is not used) */
    int sm_target = cx->sm_margin > 0 && cx->sm_margin < g->sm_count ? g->sm_count - cx->sm_margin : 0;
    key[MT_GEMM_TUNE_KEY] = sm_target;
    const int nkey = MT_GEMM_TUNE_KEY + 1;
    int hit = -1;
#define MT__LT(call)                                                                                     \
    do {                                                                                                 \
        b = (call);                                                                                      \
        if (b != CUBLAS_STATUS_SUCCESS) {                                                                \
            st = mt_errorf(MT_ERR_CUBLAS, "%s:%d: %s: %s: %s", __FILE__, __LINE__, what, #call,           \
                           cublasLtGetStatusString(b));                                                  \
            goto done;                                                                                   \
        }                                                                                                \
    } while (0)
    MT__LT(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    MT__LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    MT__LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    MT__LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (bias) MT__LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (sm_target)
        MT__LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sm_target,
                                              sizeof sm_target));
    if (aux) {
        MT__LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
        MT__LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld));
    }
    MT__LT(cublasLtMatrixLayoutCreate(&la, dt, transa ? k : m, transa ? m : k, lda));
    MT__LT(cublasLtMatrixLayoutCreate(&lb, dt, transb ? n : k, transb ? k : n, ldb));
    MT__LT(cublasLtMatrixLayoutCreate(&lc, dt, m, n, ldd));
    MT__LT(cublasLtMatrixLayoutCreate(&ld, dt, m, n, ldd));

    for (int i = 0; i < MT_GPU_MATMUL_CACHE && hit < 0; i++)
        if (g->plans[i].used && g->plans[i].nkey == nkey && memcmp(g->plans[i].key, key, sizeof(int64_t) * nkey) == 0)
            hit = i;
    if (hit < 0) {
        cublasLtMatmulHeuristicResult_t res[MT__GEMM_TUNE_MAX];
        int nres = 0, want = g->gemm_tune > 1 ? (g->gemm_tune < MT__GEMM_TUNE_MAX ? g->gemm_tune : MT__GEMM_TUNE_MAX) : 1;
        const int filed = g->tune_path[0] && !sm_target; /* shapes the tuning file covers */
        const int listed = filed ? mt_gemm_tune_find(&g->tune, key) : -1; /* the tuning file's pick */
        if (listed >= want) want = listed < MT__GEMM_TUNE_MAX ? listed + 1 : MT__GEMM_TUNE_MAX;
        memset(res, 0, sizeof res);
        MT__LT(cublasLtMatmulPreferenceCreate(&pref));
        size_t ws = g->workspace_nbytes;
        MT__LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        b = cublasLtMatmulAlgoGetHeuristic(g->lt, desc, la, lb, lc, ld, pref, want, res, &nres);
        if (b != CUBLAS_STATUS_SUCCESS || nres == 0) {
            if (unsupported) {
                *unsupported = 1;
                goto done;
            }
            st = mt_errorf(MT_ERR_CUBLAS,
                           "%s: cuBLASLt has no algorithm for %s m=%d n=%d k=%d (lda %d, ldb %d, ldd %d, epilogue %d): %s",
                           what, dt == CUDA_R_16BF ? "bf16" : "f32", m, n, k, lda, ldb, ldd, (int)epi,
                           b != CUBLAS_STATUS_SUCCESS ? cublasLtGetStatusString(b) : "no result");
            goto done;
        }
        hit = g->next_plan;
        g->next_plan = (g->next_plan + 1) % MT_GPU_MATMUL_CACHE;
        memcpy(g->plans[hit].key, key, sizeof key);
        g->plans[hit].nkey = nkey;
        /* the tuning file's pick; else the heuristic's first, or with gemm_tune the fastest of those it
         * offered (then added to the tuning file, if there is one) */
        int pick = 0;
        if (listed >= 0 && listed < nres && res[listed].state == CUBLAS_STATUS_SUCCESS) {
            pick = listed;
        } else if (nres > 1) {
            pick = mt__gemm_fastest(cx, desc, la, lb, lc, ld, A, B, C == D ? NULL : C, beta,
                                    (size_t)ldd * n * (dt == CUDA_R_16BF ? 2 : 4), res, nres);
            if (filed) {
                st = mt_gemm_tune_put(&g->tune, key, pick);
                if (st == MT_OK) st = mt_gemm_tune_save(g->tune_path, &g->tune);
                if (st != MT_OK) goto done;
            }
        }
        g->plans[hit].algo = res[pick].algo;
        g->plans[hit].used = 1;
    }
    MT__LT(cublasLtMatmul(g->lt, desc, &alpha, A, la, B, lb, &beta, C, lc, D, ld, &g->plans[hit].algo, g->workspace,
                          g->workspace_nbytes, MT__STREAM(cx)));
#undef MT__LT
done:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return st;
}

/* bf16 needs IC, OC multiples of 8 and 16-byte aligned pointers (cuBLASLt's fast paths and the
 * epilogues' aux leading dimension). */
MT_API mt_status mt__matmul_check(const mt_ctx *cx, const char *op, int N, int IC, int OC, const void *p0,
                                  const void *p1, const void *p2, const void *p3, const void *p4) {
    if (N < 0 || IC <= 0 || OC <= 0) return mt_errorf(MT_ERR_SHAPE, "%s: N = %d, IC = %d, OC = %d", op, N, IC, OC);
    if (cx->dtype == MT_BF16) {
        if (IC % 8 || OC % 8)
            return mt_errorf(MT_ERR_SHAPE, "%s: in bf16, IC (%d) and OC (%d) must be multiples of 8 (pad the layer)",
                             op, IC, OC);
        if (!mt__al16(p0) || !mt__al16(p1) || !mt__al16(p2) || !mt__al16(p3) || !mt__al16(p4))
            return mt_errorf(MT_ERR_ARG, "%s: in bf16 every matrix and vector must be 16-byte aligned", op);
    }
    return MT_OK;
}

/* dbias (OC) += column sums of dout (N,OC), deterministic, through the scratch. */
MT_API mt_status mt__bias_grad_gpu(const mt_ctx *cx, void *dbias, const void *dout, int N, int OC) {
    MT__GPU_DISPATCH(cx, "matmul_bwd (bias)", {
        int rows = 64;
        int npart = (N + rows - 1) / rows;
        while ((size_t)npart * OC * sizeof(float) > cx->gpu->scratch_nbytes) {
            rows *= 2;
            npart = (N + rows - 1) / rows;
        }
        float *partial = (float *)cx->gpu->scratch;
        dim3 grid(mt__cdiv(OC, 128), npart);
        mt__bias_grad_partial_kernel<T><<<grid, 128, 0, MT__STREAM(cx)>>>(partial, (const T *)dout, N, OC, rows);
        MT__LAUNCHED(cx, "mt__bias_grad_partial_kernel");
        mt__bias_grad_finalize_kernel<T, float><<<mt__cdiv(OC, 128), 128, 0, MT__STREAM(cx)>>>((T *)dbias, partial,
                                                                                            npart, OC);
        MT__LAUNCHED(cx, "mt__bias_grad_finalize_kernel");
    });
    return MT_OK;
}

/* ------------------------------------------------------------------ launchers */

#ifdef __cplusplus
extern "C" {
#endif

MT_API mt_status mt_matmul_fwd_gpu(const mt_ctx *cx, void *out, void *gelu_pre, const void *inp, const void *w,
                                   const void *bias, const void *resid, int N, int IC, int OC) {
    const char *op = "matmul_fwd";
    MT_TRY(mt__gpu_check(cx, op));
    MT_TRY(mt__matmul_check(cx, op, N, IC, OC, out, gelu_pre, inp, w, bias));
    if (!mt__al16(resid) && cx->dtype == MT_BF16) return mt_errorf(MT_ERR_ARG, "%s: resid must be 16-byte aligned", op);
    if (gelu_pre && resid) return mt_errorf(MT_ERR_ARG, "%s: a GELU epilogue takes no residual", op);
    if (N == 0) return MT_OK;
    cudaDataType_t dt = cx->dtype == MT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    int fuse = cx->gpu->lt_epilogues, unsup = 0;
    /* column-major view: D (OC, N) = W^T-stored (IC, OC) transposed @ inp (IC, N) */
    if (gelu_pre) {
        if (fuse && cx->dtype == MT_BF16 && OC % 8 == 0) {
            MT_TRY(mt__lt_matmul(cx, op, dt, 1, 0, OC, N, IC, w, IC, inp, IC, NULL, 0.0f, out, OC,
                                 bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX, bias, gelu_pre,
                                 OC, &unsup));
            if (!unsup) return MT_OK;
        }
        int bunsup = 1;
        if (bias && fuse)
            MT_TRY(mt__lt_matmul(cx, op, dt, 1, 0, OC, N, IC, w, IC, inp, IC, NULL, 0.0f, gelu_pre, OC,
                                 CUBLASLT_EPILOGUE_BIAS, bias, NULL, 0, &bunsup));
        if (!bias || bunsup) {
            MT_TRY(mt__lt_matmul(cx, op, dt, 1, 0, OC, N, IC, w, IC, inp, IC, NULL, 0.0f, gelu_pre, OC,
                                 CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, NULL));
            if (bias) {
                MT__GPU_DISPATCH(cx, op, {
                    mt__add_bias_kernel<T><<<mt__cdiv((size_t)N * OC, 256) < 65536 ? mt__cdiv((size_t)N * OC, 256)
                                                                                   : 65536,
                                             256, 0, MT__STREAM(cx)>>>((T *)gelu_pre, (const T *)bias, N, OC);
                });
                MT__LAUNCHED(cx, "mt__add_bias_kernel");
            }
        }
        return mt_gelu_fwd_gpu(cx, out, gelu_pre, (size_t)N * OC);
    }
    if (bias && fuse) {
        MT_TRY(mt__lt_matmul(cx, op, dt, 1, 0, OC, N, IC, w, IC, inp, IC, resid, 1.0f, out, OC, CUBLASLT_EPILOGUE_BIAS,
                             bias, NULL, 0, &unsup));
        if (!unsup) return MT_OK;
    }
    MT_TRY(mt__lt_matmul(cx, op, dt, 1, 0, OC, N, IC, w, IC, inp, IC, resid, 1.0f, out, OC, CUBLASLT_EPILOGUE_DEFAULT,
                         NULL, NULL, 0, NULL));
    if (bias) {
        MT__GPU_DISPATCH(cx, op, {
            mt__add_bias_kernel<T><<<mt__cdiv((size_t)N * OC, 256) < 65536 ? mt__cdiv((size_t)N * OC, 256) : 65536,
                                     256, 0, MT__STREAM(cx)>>>((T *)out, (const T *)bias, N, OC);
        });
        MT__LAUNCHED(cx, "mt__add_bias_kernel");
    }
    return MT_OK;
}

MT_API mt_status mt_matmul_bwd_gpu(const mt_ctx *cx, void *dinp, void *dw, void *dbias, const void *dout,
                                   const void *inp, const void *w, const void *gelu_pre, int N, int IC, int OC) {
    const char *op = "matmul_bwd";
    MT_TRY(mt__gpu_check(cx, op));
    MT_TRY(mt__matmul_check(cx, op, N, IC, OC, dinp, dw, dbias, dout, inp));
    if (cx->dtype == MT_BF16 && (!mt__al16(w) || !mt__al16(gelu_pre)))
        return mt_errorf(MT_ERR_ARG, "%s: in bf16 every matrix and vector must be 16-byte aligned", op);
    if (N == 0) return MT_OK;
    cudaDataType_t dt = cx->dtype == MT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    int fuse = cx->gpu->lt_epilogues, unsup = 0;
    if (dinp) {
        /* D (IC, N) = W-stored (IC, OC) @ dout (OC, N) */
        unsup = 1;
        if (gelu_pre && fuse && cx->dtype == MT_BF16 && IC % 8 == 0)
            MT_TRY(mt__lt_matmul(cx, op, dt, 0, 0, IC, N, OC, w, IC, dout, OC, NULL, 0.0f, dinp, IC,
                                 CUBLASLT_EPILOGUE_DGELU, NULL, (void *)gelu_pre, IC, &unsup));
        if (unsup) {
            MT_TRY(mt__lt_matmul(cx, op, dt, 0, 0, IC, N, OC, w, IC, dout, OC, NULL, 0.0f, dinp, IC,
                                 CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, NULL));
            if (gelu_pre) MT_TRY(mt_gelu_bwd_gpu(cx, dinp, gelu_pre, dinp, (size_t)N * IC));
        }
    }
    if (dw) {
        /* D (IC, OC) += inp (IC, N) @ dout^T (N, OC); the bias gradient (OC) from B's k-reduction */
        unsup = 1;
        size_t bg_nbytes = (size_t)OC * mt_dtype_size(cx->dtype);
        if (dbias && fuse && bg_nbytes <= cx->gpu->scratch_nbytes) {
            MT_TRY(mt__lt_matmul(cx, op, dt, 0, 1, IC, OC, N, inp, IC, dout, OC, dw, 1.0f, dw, IC,
                                 CUBLASLT_EPILOGUE_BGRADB, cx->gpu->scratch, NULL, 0, &unsup));
            if (!unsup) {
                MT__GPU_DISPATCH(cx, op, {
                    mt__bias_grad_finalize_kernel<T, T><<<mt__cdiv(OC, 128), 128, 0, MT__STREAM(cx)>>>(
                        (T *)dbias, (const T *)cx->gpu->scratch, 1, OC);
                });
                MT__LAUNCHED(cx, "mt__bias_grad_finalize_kernel");
                return MT_OK;
            }
        }
        MT_TRY(mt__lt_matmul(cx, op, dt, 0, 1, IC, OC, N, inp, IC, dout, OC, dw, 1.0f, dw, IC,
                             CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, NULL));
    }
    if (dbias) MT_TRY(mt__bias_grad_gpu(cx, dbias, dout, N, OC));
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_KERNELS_MATMUL_CUH */
