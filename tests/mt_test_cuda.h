/* tests/mt_test_cuda.h — for the GPU tests and benchmarks (nvcc): a CUDA runtime call checked. */
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

#endif
