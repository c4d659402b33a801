/* tests/mt_test_cuda.h — for the GPU tests and benchmarks (nvcc): a CUDA runtime call checked, and
 * (after kernels/attention.cuh) one attention case's device buffers. */
#ifndef MT_TEST_CUDA_H
#define MT_TEST_CUDA_H
#include <stdio.h>
#include <stdlib.h>
#include <cuda_runtime.h>

/* A CUDA runtime call a GPU test cannot go on without: on failure, where and why, then exit 1. */
#define MT_CK(x)                                                                                \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

#ifdef MT_KERNELS_ATTENTION_CUH
/* One attention case on the GPU: qkv (B,T,Hkv,G+2,D) and dout (B,T,H,D) uploaded from host bf16;
 * out, lse, dqkv and the backward's workspace poisoned with NaN, so that every element left
 * unwritten shows. */
typedef struct mt_test_attn {
    void *qkv, *dout, *out, *dqkv, *ws;
    float *lse;
    size_t nqkv, nout, nlse, ws_nbytes;
} mt_test_attn;

static inline void mt_test_attn_init(mt_test_attn *a, int B, int T, int Hkv, int G, int D, const uint16_t *hqkv,
                                     const uint16_t *hdout) {
    a->nqkv = (size_t)B * T * Hkv * (G + 2) * D;
    a->nout = (size_t)B * T * Hkv * G * D;
    a->nlse = (size_t)B * Hkv * G * T;
    a->ws_nbytes = mt_flash_attention_bwd_workspace_nbytes(B, T, Hkv, G, D);
    MT_CK(cudaMalloc(&a->qkv, a->nqkv * 2));
    MT_CK(cudaMalloc(&a->dqkv, a->nqkv * 2));
    MT_CK(cudaMalloc(&a->dout, a->nout * 2));
    MT_CK(cudaMalloc(&a->out, a->nout * 2));
    MT_CK(cudaMalloc((void **)&a->lse, a->nlse * 4));
    MT_CK(cudaMalloc(&a->ws, a->ws_nbytes));
    MT_CK(cudaMemcpy(a->qkv, hqkv, a->nqkv * 2, cudaMemcpyHostToDevice));
    MT_CK(cudaMemcpy(a->dout, hdout, a->nout * 2, cudaMemcpyHostToDevice));
    MT_CK(cudaMemset(a->out, 0xff, a->nout * 2));
    MT_CK(cudaMemset(a->lse, 0xff, a->nlse * 4));
    MT_CK(cudaMemset(a->dqkv, 0xff, a->nqkv * 2));
    MT_CK(cudaMemset(a->ws, 0xff, a->ws_nbytes));
}

static inline void mt_test_attn_free(mt_test_attn *a) {
    MT_CK(cudaFree(a->qkv));
    MT_CK(cudaFree(a->dqkv));
    MT_CK(cudaFree(a->dout));
    MT_CK(cudaFree(a->out));
    MT_CK(cudaFree(a->lse));
    MT_CK(cudaFree(a->ws));
}
#endif

#endif
