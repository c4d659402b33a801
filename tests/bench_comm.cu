/* tests/bench_comm.cu — NCCL bandwidth through mt_comm, in the style of nccl-tests: for bf16
 * sizes 1 MiB .. 1 GiB, the time per operation, algbw = size / time and busbw = algbw * factor
 * (all_reduce 2(n-1)/n; all_gather, reduce_scatter and all_to_all (n-1)/n). Size is the larger
 * buffer: all_gather's output, reduce_scatter's input, all_to_all's send buffer per rank.
 *
 *   ./build/bench_comm               one process, every visible GPU (one thread each)
 *   RANK=r WORLD_SIZE=n LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p ./build/bench_comm
 *                                    one process per GPU
 * With fewer than 2 GPUs it prints a note and exits 0.
 */
#include <stdio.h>
#include <string.h>
#include "mt/comm.h"

typedef struct {
    const char *name;
    int kind; /* 0 all_reduce, 1 all_gather, 2 reduce_scatter, 3 all_to_all */
} bench_op;

static const bench_op k_ops[4] = {{"all_reduce", 0}, {"all_gather", 1}, {"reduce_scatter", 2}, {"all_to_all", 3}};

#define MIN_BYTES ((size_t)1 << 20)
#define MAX_BYTES ((size_t)1 << 30)
#define WARMUP 5

static mt_status run_op(mt_comm *c, int kind, void *a, void *b, size_t count, cudaStream_t s) {
    int n = mt_comm_size(c);
    switch (kind) {
        case 0: return mt_comm_all_reduce(c, a, a, count, MT_BF16, MT_SUM, s);
        case 1: return mt_comm_all_gather(c, a, b, count / (size_t)n, MT_BF16, s);
        case 2: return mt_comm_reduce_scatter(c, a, b, count / (size_t)n, MT_BF16, MT_SUM, s);
        default: return mt_comm_all_to_all(c, a, b, count / (size_t)n, MT_BF16, s);
    }
}

#define CUDA_TRY(call)                                                                                 \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess)                                                                         \
            return mt_errorf(MT_ERR_CUDA, "%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
    } while (0)

typedef struct {
    double ar_busbw_256, ar_busbw_1g;
} bench_result;

static mt_status bench_rank(mt_comm *c, void *argp) {
    bench_result *res = (bench_result *)argp;
    int n = mt_comm_size(c), r = mt_comm_rank(c), k;
    cudaStream_t s;
    cudaEvent_t t0, t1;
    void *a = NULL, *b = NULL;
    CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreate(&t0));
    CUDA_TRY(cudaEventCreate(&t1));
    CUDA_TRY(cudaMalloc(&a, MAX_BYTES));
    CUDA_TRY(cudaMalloc(&b, MAX_BYTES));
    CUDA_TRY(cudaMemsetAsync(a, 0, MAX_BYTES, s));
    CUDA_TRY(cudaMemsetAsync(b, 0, MAX_BYTES, s));
    for (k = 0; k < 4; k++) {
        const bench_op *op = &k_ops[k];
        double factor = op->kind == 0 ? 2.0 * (n - 1) / n : (double)(n - 1) / n;
        if (r == 0) {
            printf("\n# %s (busbw = algbw * %s)\n", op->name, op->kind == 0 ? "2(n-1)/n" : "(n-1)/n");
            printf("# %12s %12s %10s %12s %12s\n", "size(B)", "count", "time(us)", "algbw(GB/s)", "busbw(GB/s)");
        }
        for (size_t bytes = MIN_BYTES; bytes <= MAX_BYTES; bytes *= 2) {
            size_t count = bytes / 2, it, iters = bytes <= ((size_t)16 << 20) ? 100 : bytes <= ((size_t)128 << 20) ? 40 : 20;
            float ms = 0;
            if (op->kind != 0) count -= count % (size_t)n; /* whole chunks per rank */
            for (it = 0; it < WARMUP; it++) MT_TRY(run_op(c, op->kind, a, b, count, s));
            MT_TRY(mt_comm_barrier(c, s)); /* everyone starts together */
            CUDA_TRY(cudaEventRecord(t0, s));
            for (it = 0; it < iters; it++) MT_TRY(run_op(c, op->kind, a, b, count, s));
            CUDA_TRY(cudaEventRecord(t1, s));
            MT_TRY(mt_comm_wait(c, s)); /* watchdog: a hang becomes an error */
            CUDA_TRY(cudaEventElapsedTime(&ms, t0, t1));
            {
                double us = (double)ms * 1000.0 / (double)iters, nb = (double)count * 2.0;
                double algbw = nb / (us * 1e-6) / 1e9, busbw = algbw * factor;
                if (r == 0) printf("  %12zu %12zu %10.1f %12.2f %12.2f\n", (size_t)nb, count, us, algbw, busbw);
                if (r == 0 && op->kind == 0 && bytes == ((size_t)256 << 20)) res->ar_busbw_256 = busbw;
                if (r == 0 && op->kind == 0 && bytes == MAX_BYTES) res->ar_busbw_1g = busbw;
            }
            fflush(stdout);
        }
    }
    cudaFree(a);
    cudaFree(b);
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    cudaStreamDestroy(s);
    return MT_OK;
}

int main(void) {
    bench_result res;
    int version = 0, ndev = 0;
    mt_status st;
    memset(&res, 0, sizeof res);
    ncclGetVersion(&version);
    if (cudaGetDeviceCount(&ndev) != cudaSuccess) {
        cudaGetLastError();
        ndev = 0;
    }
    if (getenv("WORLD_SIZE")) {
        mt_launch_info li;
        mt_comm *world = NULL;
        MT_CHECK(mt_launch_env(&li));
        if (li.world < 2) {
            printf("bench_comm: WORLD_SIZE=%d: needs 2+ ranks, nothing to measure\n", li.world);
            return 0;
        }
        if (li.rank == 0)
            printf("# bench_comm: NCCL %d, %d ranks (one process per GPU, %s), bf16, mean of 20-100 iterations after %d "
                   "warm-up\n", version, li.world, li.launcher, WARMUP);
        MT_CHECK(mt_comm_nccl_init_launch(&li, 600.0, &world));
        st = bench_rank(world, &res);
        mt_comm_destroy(world);
        if (li.rank != 0) return st == MT_OK ? 0 : 1;
    } else {
        if (ndev < 2) {
            printf("bench_comm: %d GPU(s) visible: collectives need 2+, nothing to measure\n", ndev);
            return 0;
        }
        printf("# bench_comm: NCCL %d, %d ranks (one process, one thread per GPU), bf16, mean of 20-100 iterations "
               "after %d warm-up\n", version, ndev, WARMUP);
        st = mt_nccl_run(ndev, 600.0, bench_rank, &res, NULL);
    }
    if (st != MT_OK) {
        fprintf(stderr, "bench_comm: failed: %s\n", mt_status_str(st));
        return 1;
    }
    printf("\nRESULT bf16 all_reduce 256MiB busbw=%.0f GB/s\n", res.ar_busbw_256);
    printf("RESULT bf16 all_reduce 1024MiB busbw=%.0f GB/s\n", res.ar_busbw_1g);
    return 0;
}
