/* tests/bench_attention.cu — TFLOP/s of the fused flash attention (kernels/attention.cuh).
 *
 * The FlashAttention papers' setting, as ../shared/anchors/sdpa_bench.py measures PyTorch:
 * bf16, B*T = 16384 tokens, H*D = 2048, MHA (G = 1), hd 64 and 128, T = 1024..8192, causal and not.
 * FLOPs: forward 4*B*H*T*T*D, halved when causal; backward 2.5x forward; fwd+bwd 3.5x forward.
 * Each figure is the median of ITERS timed runs (CUDA events around each run) after warm-up;
 * backward is timed on its own (it includes its delta and dQ conversion kernels), fwd+bwd is one
 * forward plus one backward. Prints lines shaped like sdpa_bench.py's, then a table.
 * Then the same kernels with other tile shapes (causal only), to choose the defaults.
 *   ./build/bench_attention [iters] [--no-variants] [--only NAME]   (--only: the variants whose name contains NAME)
 */
#if defined(__has_include)
#if __has_include("kernels/kernels.cuh")
#include "megatron.h"
#define MT_BENCH_HAVE_MEGATRON 1
#endif
#endif
#ifndef MT_BENCH_HAVE_MEGATRON
#include "mt/core.h"
#endif
#include "kernels/attention.cuh"
#include "tests/mt_test_cuda.h"


/* x[i] = bf16(stdev * normal(seed, i)) on the device */
__global__ void bench_fill_bf16(__nv_bfloat16 *x, size_t n, float stdev, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(stdev * mt_rng_normal(seed, 3, i));
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    const mt_ctx *cx;
    void *out, *dout, *qkv, *dqkv, *ws;
    float *lse;
    size_t ws_nbytes;
    int B, T, Hkv, G, D, causal;
} bench_args;

static void run_fwd(const bench_args *a) {
    MT_CHECK(mt_flash_attention_fwd(a->cx, a->out, a->lse, a->qkv, a->B, a->T, a->Hkv, a->G, a->D, a->causal));
}
static void run_bwd(const bench_args *a) {
    MT_CHECK(mt_flash_attention_bwd(a->cx, a->dqkv, a->dout, a->out, a->lse, a->qkv, a->B, a->T, a->Hkv, a->G, a->D,
                                    a->causal, a->ws, a->ws_nbytes));
}
static void run_both(const bench_args *a) {
    run_fwd(a);
    run_bwd(a);
}

/* median milliseconds of fn over iters runs, after warm-up */
static float time_ms(void (*fn)(const bench_args *), const bench_args *a, int iters) {
    cudaStream_t s = (cudaStream_t)a->cx->stream;
    cudaEvent_t e0, e1;
    MT_CK(cudaEventCreate(&e0));
    MT_CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++) fn(a);
    MT_CK(cudaStreamSynchronize(s));
    float *ms = (float *)malloc(sizeof(float) * iters);
    for (int i = 0; i < iters; i++) {
        MT_CK(cudaEventRecord(e0, s));
        fn(a);
        MT_CK(cudaEventRecord(e1, s));
        MT_CK(cudaEventSynchronize(e1));
        MT_CK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    qsort(ms, iters, sizeof(float), cmp_float);
    float med = ms[iters / 2];
    free(ms);
    MT_CK(cudaEventDestroy(e0));
    MT_CK(cudaEventDestroy(e1));
    return med;
}

/* ---- tile-shape variants (causal): the same kernels with other (BM, BN, warps), each checked
 * against the default shape's result on the same inputs (relative error, bf16 level expected). */
typedef mt_status (*fwd_fn)(const mt_ctx *, void *, float *, const void *, int, int, int, int, int);
typedef mt_status (*bwd_fn)(const mt_ctx *, void *, const void *, const void *, const float *, const void *, int, int,
                            int, int, int, float *, float *);
typedef struct { const char *name; int D; fwd_fn f; bwd_fn b; } variant;
static const variant g_variants[] = {
    {"fwd 128x64 w4 (default)", 64, mt__flash_fwd_run<64, 128, 64, 4>, NULL},
    {"fwd 128x64 w8", 64, mt__flash_fwd_run<64, 128, 64, 8>, NULL},
    {"fwd 64x64 w4", 64, mt__flash_fwd_run<64, 64, 64, 4>, NULL},
    {"fwd 128x128 w8", 64, mt__flash_fwd_run<64, 128, 128, 8>, NULL},
    {"fwd 128x128 w4", 64, mt__flash_fwd_run<64, 128, 128, 4>, NULL},
    {"bwd 16-keys/warp 64x128 w8", 64, NULL, mt__flash_bwd_run<64, 64, 128, false>},
    {"bwd 16-keys/warp 128x128 w8", 64, NULL, mt__flash_bwd_run<64, 128, 128, false>},
    {"bwd 16-keys/warp 64x64 w4", 64, NULL, mt__flash_bwd_run<64, 64, 64, false>},
    {"bwd 16-keys/warp determ.", 64, NULL, mt__flash_bwd_run<64, 64, 128, true>},
    {"bwd FA2 layout", 64, NULL, mt__flash_bwd2_run<64>},
    {"fwd 128x64 w4 (fallback)", 128, mt__flash_fwd_run<128, 128, 64, 4>, NULL},
    {"fwd 128x64 w8", 128, mt__flash_fwd_run<128, 128, 64, 8>, NULL},
    {"fwd 64x64 w4", 128, mt__flash_fwd_run<128, 64, 64, 4>, NULL},
    {"fwd 128x128 w8", 128, mt__flash_fwd_run<128, 128, 128, 8>, NULL},
    {"fwd 128x32 w4", 128, mt__flash_fwd_run<128, 128, 32, 4>, NULL},
    {"bwd 16-keys/warp 64x128 w8", 128, NULL, mt__flash_bwd_run<128, 64, 128, false>},
    {"bwd 16-keys/warp 64x64 w4", 128, NULL, mt__flash_bwd_run<128, 64, 64, false>},
    {"bwd 16-keys/warp determ.", 128, NULL, mt__flash_bwd_run<128, 64, 128, true>},
    {"bwd FA2 layout (fallback)", 128, NULL, mt__flash_bwd2_run<128>},
    /* last, so that the rows above are printed even if these fault */
    {"bwd wgmma pipelined (default)", 64, NULL, mt__flash_bwd3p_run<64>},
    {"bwd wgmma pipelined bulk dQ", 64, NULL, mt__flash_bwd3p_run<64, true>},
    {"bwd wgmma not pipelined", 64, NULL, mt__flash_bwd3_cfg_run<64, 1>},
    {"bwd wgmma own-keys", 64, NULL, mt__flash_bwd3_cfg_run<64, 0>},
    {"bwd wgmma pipelined (default)", 128, NULL, mt__flash_bwd3p_128_run<>},
    {"bwd wgmma pipelined bulk dQ", 128, NULL, mt__flash_bwd3p_128_run<true>},
    {"bwd wgmma not pipelined", 128, NULL, mt__flash_bwd3_128_run},
    /* the wgmma forward: the default (warp-specialized, mt__flash_fwd4_kernel), then one change each */
    {"fwd wgmma (default)", 64, mt__flash_fwd_wg_run<64>, NULL},
    {"fwd wgmma persistent", 64, mt__flash_fwd4_run<64, 128, 4, 1, 2, 1>, NULL},
    {"fwd wgmma CTA per item", 64, mt__flash_fwd4_run<64, 128, 4, 1, 1, 0>, NULL},
    {"fwd wgmma persistent 1 Q", 64, mt__flash_fwd4_run<64, 128, 4, 1, 1, 1>, NULL},
    {"fwd wgmma no ping-pong", 64, mt__flash_fwd4_run<64, 128, 4, 0, 1, 0>, NULL},
    {"fwd wgmma (default)", 128, mt__flash_fwd_wg_run<128>, NULL},
    {"fwd wgmma persistent", 128, mt__flash_fwd4_run<128, 128, 3, 1, 1, 1>, NULL},
    {"fwd wgmma persistent 2 Q 2 st", 128, mt__flash_fwd4_run<128, 128, 2, 1, 2, 1>, NULL},
    {"fwd wgmma no ping-pong", 128, mt__flash_fwd4_run<128, 128, 3, 0, 1, 0>, NULL},
};

static const variant *g_cur_variant;
static void run_variant(const bench_args *a) {
    if (g_cur_variant->f) {
        MT_CHECK(g_cur_variant->f(a->cx, a->out, a->lse, a->qkv, a->B, a->T, a->Hkv, a->G, a->causal));
    } else {
        float *delta, *dq_acc;
        mt__fa_ws_split(a->ws, a->B, a->T, a->Hkv, a->G, &delta, &dq_acc);
        MT_CHECK(g_cur_variant->b(a->cx, a->dqkv, a->dout, a->out, a->lse, a->qkv, a->B, a->T, a->Hkv, a->G,
                                  a->causal, delta, dq_acc));
    }
}

/* ||x - y|| / ||y|| of two bf16 device arrays of n elements (host side) */
static double rel_diff(const void *x, const void *y, size_t n) {
    uint16_t *hx = (uint16_t *)malloc(n * 2), *hy = (uint16_t *)malloc(n * 2);
    MT_CK(cudaMemcpy(hx, x, n * 2, cudaMemcpyDeviceToHost));
    MT_CK(cudaMemcpy(hy, y, n * 2, cudaMemcpyDeviceToHost));
    double a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        double u = mt_bf16_to_f32(hx[i]), v = mt_bf16_to_f32(hy[i]);
        a += (u - v) * (u - v);
        b += v * v;
    }
    free(hx);
    free(hy);
    return b > 0 ? sqrt(a / b) : sqrt(a);
}

static const char *g_only = NULL; /* --only S: only the variants whose name contains S, no main table */
static void run_variants(const mt_ctx *cx, void *qkv, void *dqkv, void *out, void *dout, float *lse, void *ws,
                         size_t ws_nbytes, int iters) {
    static const int Ts[] = {1024, 2048, 4096, 8192};
    const size_t tokens = 16384, width = 2048;
    void *ref;
    MT_CK(cudaMalloc(&ref, tokens * width * 3 * 2));
    printf("\nvariants, causal, TFLOP/s at T = 1024 / 2048 / 4096 / 8192 (rel. diff vs default at T=1024)\n");
    for (size_t vi = 0; vi < sizeof g_variants / sizeof g_variants[0]; vi++) {
        const variant *v = &g_variants[vi];
        if (g_only && !strstr(v->name, g_only)) continue;
        g_cur_variant = v;
        { /* a variant this GPU or build cannot run (the wgmma ones off Hopper) is skipped */
            bench_args a;
            memset(&a, 0, sizeof a);
            a.cx = cx; a.out = out; a.dout = dout; a.qkv = qkv; a.dqkv = dqkv; a.ws = ws; a.lse = lse;
            a.ws_nbytes = ws_nbytes;
            a.T = Ts[0]; a.B = (int)(tokens / a.T); a.D = v->D; a.Hkv = (int)(width / v->D); a.G = 1; a.causal = 1;
            float *delta, *dq_acc;
            mt__fa_ws_split(ws, a.B, a.T, a.Hkv, a.G, &delta, &dq_acc);
            const mt_status st = v->f ? v->f(cx, out, lse, qkv, a.B, a.T, a.Hkv, a.G, 1)
                                      : v->b(cx, dqkv, dout, out, lse, qkv, a.B, a.T, a.Hkv, a.G, 1, delta, dq_acc);
            if (st == MT_ERR_UNSUPPORTED) {
                printf("  hd%-3d %-26s skipped: needs an sm_90a build on a compute capability 9.x GPU\n", v->D, v->name);
                continue;
            }
        }
        double tf[4], diff = 0;
        for (int ti = 0; ti < 4; ti++) {
            bench_args a;
            a.cx = cx; a.out = out; a.dout = dout; a.qkv = qkv; a.dqkv = dqkv; a.ws = ws; a.lse = lse;
            a.ws_nbytes = ws_nbytes;
            a.T = Ts[ti]; a.B = (int)(tokens / a.T); a.D = v->D; a.Hkv = (int)(width / v->D); a.G = 1; a.causal = 1;
            const size_t n_out = tokens * width, n_qkv = n_out * 3;
            if (ti == 0) { /* reference result from the default shapes, then this variant's */
                run_fwd(&a);
                if (v->f) {
                    MT_CK(cudaMemcpy(ref, out, n_out * 2, cudaMemcpyDeviceToDevice));
                    run_variant(&a);
                    MT_CK(cudaDeviceSynchronize());
                    diff = rel_diff(out, ref, n_out);
                } else {
                    run_bwd(&a);
                    MT_CK(cudaMemcpy(ref, dqkv, n_qkv * 2, cudaMemcpyDeviceToDevice));
                    run_variant(&a);
                    MT_CK(cudaDeviceSynchronize());
                    diff = rel_diff(dqkv, ref, n_qkv);
                }
            } else if (!v->f) {
                run_fwd(&a); /* lse and out for this T */
            }
            const double f = 4.0 * a.B * a.Hkv * (double)a.T * a.T * a.D / 2 * (v->f ? 1.0 : 2.5);
            tf[ti] = f / time_ms(run_variant, &a, iters) / 1e9;
        }
        printf("  hd%-3d %-26s %4.0f %4.0f %4.0f %4.0f   (%.1e)\n", v->D, v->name, tf[0], tf[1], tf[2], tf[3], diff);
        fflush(stdout);
    }
    MT_CK(cudaFree(ref));
}

int main(int argc, char **argv) {
    int iters = 20, variants = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-variants")) variants = 0;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) g_only = argv[++i];
        else iters = atoi(argv[i]);
    }
    if (iters < 1) iters = 1;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("bench_attention: no GPU, skipped\n");
        return 0;
    }
    cudaDeviceProp prop;
    MT_CK(cudaGetDeviceProperties(&prop, 0));
    printf("bench_attention: %s, %d SMs; bf16, B*T=16384, H*D=2048, G=1; median of %d runs\n", prop.name,
           prop.multiProcessorCount, iters);

    const size_t tokens = 16384, width = 2048;
    const size_t max_qkv = tokens * width * 3, max_out = tokens * width;
    void *qkv, *dqkv, *out, *dout, *ws;
    float *lse;
    MT_CK(cudaMalloc(&qkv, max_qkv * 2));
    MT_CK(cudaMalloc(&dqkv, max_qkv * 2));
    MT_CK(cudaMalloc(&out, max_out * 2));
    MT_CK(cudaMalloc(&dout, max_out * 2));
    MT_CK(cudaMalloc((void **)&lse, tokens * 128 * 4));
    size_t ws_nbytes = mt_flash_attention_bwd_workspace_nbytes(1, (int)tokens, 2048 / 64, 1, 64);
    size_t w2 = mt_flash_attention_bwd_workspace_nbytes(1, (int)tokens, 2048 / 128, 1, 128);
    if (w2 > ws_nbytes) ws_nbytes = w2;
    MT_CK(cudaMalloc(&ws, ws_nbytes));
    bench_fill_bf16<<<1024, 256>>>((__nv_bfloat16 *)qkv, max_qkv, 1.0f, 11);
    bench_fill_bf16<<<1024, 256>>>((__nv_bfloat16 *)dout, max_out, 1.0f, 12);
    MT_CK(cudaGetLastError());
    MT_CK(cudaDeviceSynchronize());

    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.device = mt_gpu(0);
    cx.dtype = MT_BF16;
    cudaStream_t stream;
    MT_CK(cudaStreamCreate(&stream));
    cx.stream = (void *)stream;

    static const int Ds[] = {64, 128}, Ts[] = {1024, 2048, 4096, 8192};
    double res[2][4][2][3];
    for (int di = 0; di < (g_only ? 0 : 2); di++)
        for (int ti = 0; ti < 4; ti++)
            for (int ci = 0; ci < 2; ci++) {
                const int D = Ds[di], T = Ts[ti], causal = ci == 0;
                bench_args a;
                a.cx = &cx; a.out = out; a.dout = dout; a.qkv = qkv; a.dqkv = dqkv; a.ws = ws; a.lse = lse;
                a.ws_nbytes = ws_nbytes;
                a.B = (int)(tokens / T); a.T = T; a.Hkv = (int)(width / D); a.G = 1; a.D = D; a.causal = causal;
                const double f = 4.0 * a.B * a.Hkv * (double)T * T * D / (causal ? 2 : 1);
                const float t_fwd = time_ms(run_fwd, &a, iters);
                const float t_bwd = time_ms(run_bwd, &a, iters);
                const float t_both = time_ms(run_both, &a, iters);
                res[di][ti][ci][0] = f / t_fwd / 1e9;
                res[di][ti][ci][1] = 2.5 * f / t_bwd / 1e9;
                res[di][ti][ci][2] = 3.5 * f / t_both / 1e9;
                printf("RESULT mt_flash hd=%d T=%d causal=%d fwd=%.0f bwd=%.0f fwd+bwd=%.0f TFLOP/s"
                       "  (%.3f / %.3f / %.3f ms)\n",
                       D, T, causal, res[di][ti][ci][0], res[di][ti][ci][1], res[di][ti][ci][2], t_fwd, t_bwd,
                       t_both);
                fflush(stdout);
            }
    if (!g_only) printf("\n| TFLOP/s fwd / bwd / fwd+bwd | causal | non-causal |\n|---|---|---|\n");
    for (int di = 0; di < (g_only ? 0 : 2); di++)
        for (int ti = 0; ti < 4; ti++)
            printf("| hd%d T=%d | %.0f / %.0f / %.0f | %.0f / %.0f / %.0f |\n", Ds[di], Ts[ti], res[di][ti][0][0],
                   res[di][ti][0][1], res[di][ti][0][2], res[di][ti][1][0], res[di][ti][1][1], res[di][ti][1][2]);
    if (variants) run_variants(&cx, qkv, dqkv, out, dout, lse, ws, ws_nbytes, iters);
    MT_CK(cudaStreamDestroy(stream));
    cudaFree(qkv); cudaFree(dqkv); cudaFree(out); cudaFree(dout); cudaFree(lse); cudaFree(ws);
    return 0;
}
