/* tests/gpu_attention.cu — the fused flash attention (kernels/attention.cuh) against the CPU reference.
 *
 * For T in {1, 7, 64, 129, 257, 1000}, D in {64, 128}, causal and not, G in {1, 2, 4}: fresh random
 * bf16 inputs, outputs and workspace poisoned with NaN first, forward and backward on the GPU, and
 * the float reference (mt_attention_fwd_cpu_f32 / mt_attention_bwd_cpu_f32, double accumulation)
 * on the same bf16-rounded inputs. Passes when ||x - ref|| / ||ref|| < 1e-2 for out, lse, dq, dk, dv
 * and every element is finite. The deterministic backward (MT_FLASH_DETERMINISTIC's path) is checked
 * the same way and must be bitwise reproducible; the default one must give bitwise identical dK/dV;
 * the alternative backward (16 keys per warp, P in registers) is checked against the reference too,
 * and so is the wgmma backward (Hopper only: at hd 64 the pipelined default, its bulk-dQ option and
 * mt__flash_bwd3_cfg_run in both of its configurations, at hd 128 the default and the option not
 * pipelined), whose dK/dV
 * must also be bitwise identical
 * between two runs. The wgmma forward (Hopper only: mt__flash_fwd_wg_run at hd 64 and 128, and the other
 * tile configurations the benchmark times) is checked against the reference too (out and lse) and must
 * give bitwise identical results in two runs.
 * Also: an unsupported head dim returns MT_ERR_UNSUPPORTED, a short workspace is refused.
 */
#if defined(__has_include)
#if __has_include("kernels/kernels.cuh")
#include "megatron.h"
#define MT_TEST_HAVE_MEGATRON 1
#endif
#endif
#ifndef MT_TEST_HAVE_MEGATRON
#include "mt/core.h"
#include "mt/cpu_ops.h"
#endif
#include "kernels/attention.cuh"
#include "tests/mt_test.h"
#include "tests/mt_test_cuda.h"

static uint64_t g_seed = 0x5eed0001;

/* n bf16-rounded normals * stdev, as floats (host) and as bf16 (host staging). */
static void fill_bf16(float *f, uint16_t *h, size_t n, float stdev, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        h[i] = mt_f32_to_bf16(stdev * mt_rng_normal(seed, 7, i));
        f[i] = mt_bf16_to_f32(h[i]);
    }
}

/* ||x - ref|| / ||ref|| over a strided gather; *nonfinite counts NaN/Inf in x. When ||ref|| is 0 the
 * result is the rms of x (it must then be ~0 too). */
typedef struct { double err, ref_norm; size_t nonfinite; } relerr;
static relerr rel_error(const float *x, const float *ref, size_t n) {
    relerr r = {0, 0, 0};
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) r.nonfinite++;
        double d = (double)x[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    r.ref_norm = sqrt(den);
    r.err = den > 1e-12 * (double)n ? sqrt(num / den) : sqrt(num / (double)(n ? n : 1));
    if (r.nonfinite) r.err = NAN;
    return r;
}

/* slot s of (B,T,Hkv,G+2,D): rows of D for s in [s0, s1) of every group, gathered */
static void gather_slots(float *dst, const float *qkv, int B, int T, int Hkv, int G, int D, int s0, int s1) {
    size_t k = 0;
    for (size_t bt = 0; bt < (size_t)B * T; bt++)
        for (int g = 0; g < Hkv; g++)
            for (int s = s0; s < s1; s++)
                for (int i = 0; i < D; i++) dst[k++] = qkv[((bt * Hkv + g) * (G + 2) + s) * D + i];
}

/* the deterministic backward (MT_FLASH_DETERMINISTIC's path) with the default tile shapes */
static mt_status bwd_deterministic(const mt_ctx *cx, void *dqkv, const void *dout, const void *out, const float *lse,
                                   const void *qkv, int B, int T, int Hkv, int G, int D, int causal, void *ws) {
    float *delta, *dq_acc;
    mt__fa_ws_split(ws, B, T, Hkv, G, &delta, &dq_acc);
    if (D == 64)
        return mt__flash_bwd_run<64, mt__fa_cfg<64>::BWD_BM, mt__fa_cfg<64>::BWD_BN, true>(
            cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    return mt__flash_bwd_run<128, mt__fa_cfg<128>::BWD_BM, mt__fa_cfg<128>::BWD_BN, true>(
        cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
}

/* the alternative backward with 16 keys per warp (mt__flash_bwd_kernel, atomic dQ) */
static mt_status bwd_alt_layout(const mt_ctx *cx, void *dqkv, const void *dout, const void *out, const float *lse,
                                const void *qkv, int B, int T, int Hkv, int G, int D, int causal, void *ws) {
    float *delta, *dq_acc;
    mt__fa_ws_split(ws, B, T, Hkv, G, &delta, &dq_acc);
    if (D == 64)
        return mt__flash_bwd_run<64, mt__fa_cfg<64>::BWD_BM, mt__fa_cfg<64>::BWD_BN, false>(
            cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    return mt__flash_bwd_run<128, mt__fa_cfg<128>::BWD_BM, mt__fa_cfg<128>::BWD_BN, false>(
        cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
}

/* the wgmma backward in configuration v: 0 = hd 64's default (mt__flash_bwd3_run: pipelined across
 * query blocks unless MT_FLASH_BWD_PIPE is 0), 1 = hd 64 with dQ per warpgroup over its own keys, 2 =
 * hd 128 not pipelined (mt__flash_bwd3_128_run), 3 = hd 64 not pipelined (dQ columns split across the
 * warpgroups), 4 = hd 128's default, pipelined (mt__flash_bwd3p_128_run), 5 and 6 = the pipelined ones
 * at hd 64 and 128 with dQ staged in shared memory and added by the copy engine into a tiled
 * accumulator (their BULK option). Each runs at its own head dim (wgmma_head_dim) on compute capability
 * 9.x, else MT_ERR_UNSUPPORTED. */
#define N_WGMMA 7
static const char *const g_wgmma_names[N_WGMMA] = {"wgmma", "wgmma own-keys", "wgmma hd128 not pipelined",
                                                   "wgmma not pipelined", "wgmma hd128", "wgmma bulk dQ",
                                                   "wgmma hd128 bulk dQ"};
static int wgmma_head_dim(int v) { return v == 2 || v == 4 || v == 6 ? 128 : 64; }
static mt_status bwd_wgmma(int v, const mt_ctx *cx, void *dqkv, const void *dout, const void *out, const float *lse,
                           const void *qkv, int B, int T, int Hkv, int G, int D, int causal, void *ws) {
    float *delta, *dq_acc;
    mt__fa_ws_split(ws, B, T, Hkv, G, &delta, &dq_acc);
    if (D != wgmma_head_dim(v)) return MT_ERR_UNSUPPORTED;
    if (v == 0) return mt__flash_bwd3_run<64>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    if (v == 1) return mt__flash_bwd3_cfg_run<64, 0>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    if (v == 3) return mt__flash_bwd3_cfg_run<64, 1>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    if (v == 4) return mt__flash_bwd3p_128_run<>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    if (v == 6)
        return mt__flash_bwd3p_128_run<true>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    if (v == 5)
        return mt__flash_bwd3p_run<64, true>(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
    return mt__flash_bwd3_128_run(cx, dqkv, dout, out, lse, qkv, B, T, Hkv, G, causal, delta, dq_acc);
}
static int g_wgmma_ran = 0, g_wgmma_skipped = 0;

/* the wgmma forward configurations (mt__flash_fwd4_kernel<D, BN, NS, PP, QB>), each at its head dim: the
 * default, and the benchmark's other configurations */
typedef mt_status (*fwd_wg_fn)(const mt_ctx *, void *, float *, const void *, int, int, int, int, int);
typedef struct { const char *name; int D; fwd_wg_fn f; } fwd_wg_cfg;
/* a persistent configuration on 3 CTAs, so that every case loops over several work items */
template <int D, int NS, int QB>
static mt_status fwd_pers(const mt_ctx *cx, void *out, float *lse, const void *qkv, int B, int T, int Hkv, int G,
                          int causal) {
    return mt__flash_fwd4_go<D, 128, NS, 1, QB>(cx, out, lse, qkv, B, T, Hkv, G, causal, 3);
}
static const fwd_wg_cfg g_fwd_wg[] = {
    {"wgmma fwd", 64, mt__flash_fwd_wg_run<64>},
    {"wgmma fwd persistent", 64, fwd_pers<64, 4, 2>},
    {"wgmma fwd persistent 1 Q", 64, fwd_pers<64, 4, 1>},
    {"wgmma fwd CTA per item", 64, mt__flash_fwd4_run<64, 128, 4, 1, 1, 0>},
    {"wgmma fwd no ping-pong", 64, mt__flash_fwd4_run<64, 128, 4, 0, 1, 0>},
    {"wgmma fwd", 128, mt__flash_fwd_wg_run<128>},
    {"wgmma fwd persistent", 128, fwd_pers<128, 3, 1>},
    {"wgmma fwd persistent 2 Q 2 stages", 128, fwd_pers<128, 2, 2>},
    {"wgmma fwd no ping-pong", 128, mt__flash_fwd4_run<128, 128, 3, 0, 1, 0>},
};
#define N_FWD_WG ((int)(sizeof g_fwd_wg / sizeof g_fwd_wg[0]))
static int g_fwd_wg_ran = 0, g_fwd_wg_skipped = 0;

static void run_case(int B, int T, int Hkv, int G, int D, int causal, double *worst) {
    const int H = Hkv * G;
    const size_t nqkv = (size_t)B * T * Hkv * (G + 2) * D, nout = (size_t)B * T * H * D, nlse = (size_t)B * H * T;
    float *qkv = (float *)malloc(nqkv * 4), *dout = (float *)malloc(nout * 4);
    uint16_t *hqkv = (uint16_t *)malloc(nqkv * 2), *hdout = (uint16_t *)malloc(nout * 2);
    float *ref_out = (float *)malloc(nout * 4), *ref_lse = (float *)malloc(nlse * 4);
    float *ref_dqkv = (float *)malloc(nqkv * 4);
    float *gout = (float *)malloc(nout * 4), *glse = (float *)malloc(nlse * 4), *gdqkv = (float *)malloc(nqkv * 4);
    uint16_t *hbuf = (uint16_t *)malloc((nqkv > nout ? nqkv : nout) * 2);
    const uint64_t seed = g_seed++;
    fill_bf16(qkv, hqkv, nqkv, 1.5f, seed * 2);
    fill_bf16(dout, hdout, nout, 1.0f, seed * 2 + 1);

    mt_test_attn dev; /* the device buffers, outputs NaN-poisoned */
    mt_test_attn_init(&dev, B, T, Hkv, G, D, hqkv, hdout);
    void *d_qkv = dev.qkv, *d_out = dev.out, *d_dout = dev.dout, *d_dqkv = dev.dqkv, *d_ws = dev.ws;
    float *d_lse = dev.lse;
    const size_t ws = dev.ws_nbytes;

    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.device = mt_gpu(0);
    cx.dtype = MT_BF16;
    mt_status st = mt_flash_attention_fwd(&cx, d_out, d_lse, d_qkv, B, T, Hkv, G, D, causal);
    MT_EXPECT(st == MT_OK, "fwd status %s", mt_status_str(st));
    st = mt_flash_attention_bwd(&cx, d_dqkv, d_dout, d_out, d_lse, d_qkv, B, T, Hkv, G, D, causal, d_ws, ws);
    MT_EXPECT(st == MT_OK, "bwd status %s", mt_status_str(st));
    MT_CK(cudaDeviceSynchronize());
    MT_CK(cudaGetLastError());

    MT_CK(cudaMemcpy(hbuf, d_out, nout * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < nout; i++) gout[i] = mt_bf16_to_f32(hbuf[i]);
    MT_CK(cudaMemcpy(glse, d_lse, nlse * 4, cudaMemcpyDeviceToHost));
    MT_CK(cudaMemcpy(hbuf, d_dqkv, nqkv * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < nqkv; i++) gdqkv[i] = mt_bf16_to_f32(hbuf[i]);

    /* the wgmma forward (Hopper) in each configuration of this head dim, twice on fresh poison in its own
     * buffers: out and lse bitwise identical between the runs, checked against the reference below */
    float *gout3[N_FWD_WG] = {NULL}, *glse3[N_FWD_WG] = {NULL};
    for (int v = 0; v < N_FWD_WG; v++) {
        if (g_fwd_wg[v].D != D) continue;
        void *d_out3;
        float *d_lse3;
        MT_CK(cudaMalloc(&d_out3, nout * 2));
        MT_CK(cudaMalloc((void **)&d_lse3, nlse * 4));
        uint16_t *h1 = (uint16_t *)malloc(nout * 2), *h2 = (uint16_t *)malloc(nout * 2);
        float *l1 = (float *)malloc(nlse * 4), *l2 = (float *)malloc(nlse * 4);
        for (int rep = 0; rep < 2; rep++) {
            MT_CK(cudaMemset(d_out3, 0xff, nout * 2));
            MT_CK(cudaMemset(d_lse3, 0xff, nlse * 4));
            st = g_fwd_wg[v].f(&cx, d_out3, d_lse3, d_qkv, B, T, Hkv, G, causal);
            if (st == MT_ERR_UNSUPPORTED) break;
            MT_EXPECT(st == MT_OK, "%s status %s", g_fwd_wg[v].name, mt_status_str(st));
            MT_CK(cudaDeviceSynchronize());
            MT_CK(cudaGetLastError());
            MT_CK(cudaMemcpy(rep ? h2 : h1, d_out3, nout * 2, cudaMemcpyDeviceToHost));
            MT_CK(cudaMemcpy(rep ? l2 : l1, d_lse3, nlse * 4, cudaMemcpyDeviceToHost));
        }
        if (st == MT_ERR_UNSUPPORTED) {
            g_fwd_wg_skipped++;
        } else {
            g_fwd_wg_ran++;
            size_t nd = 0;
            for (size_t i = 0; i < nout; i++) nd += h1[i] != h2[i];
            for (size_t i = 0; i < nlse; i++) nd += memcmp(&l1[i], &l2[i], 4) != 0;
            MT_EXPECT(nd == 0, "%s: out/lse differ between two runs in %zu elements", g_fwd_wg[v].name, nd);
            gout3[v] = (float *)malloc(nout * 4);
            glse3[v] = (float *)malloc(nlse * 4);
            for (size_t i = 0; i < nout; i++) gout3[v][i] = mt_bf16_to_f32(h1[i]);
            memcpy(glse3[v], l1, nlse * 4);
        }
        free(h1); free(h2); free(l1); free(l2);
        cudaFree(d_out3);
        cudaFree(d_lse3);
    }

    /* deterministic backward, twice on fresh poison: all of dqkv bitwise identical */
    float *gdqkv_det = (float *)malloc(nqkv * 4);
    {
        uint16_t *h1 = (uint16_t *)malloc(nqkv * 2), *h2 = (uint16_t *)malloc(nqkv * 2);
        for (int rep = 0; rep < 2; rep++) {
            MT_CK(cudaMemset(d_dqkv, 0xff, nqkv * 2));
            MT_CK(cudaMemset(d_ws, 0xff, ws));
            st = bwd_deterministic(&cx, d_dqkv, d_dout, d_out, d_lse, d_qkv, B, T, Hkv, G, D, causal, d_ws);
            MT_EXPECT(st == MT_OK, "deterministic bwd status %s", mt_status_str(st));
            MT_CK(cudaDeviceSynchronize());
            MT_CK(cudaMemcpy(rep ? h2 : h1, d_dqkv, nqkv * 2, cudaMemcpyDeviceToHost));
        }
        size_t nd = 0;
        for (size_t i = 0; i < nqkv; i++) nd += h1[i] != h2[i];
        MT_EXPECT(nd == 0, "deterministic backward differs between two runs in %zu elements", nd);
        for (size_t i = 0; i < nqkv; i++) gdqkv_det[i] = mt_bf16_to_f32(h1[i]);
        free(h1);
        free(h2);
    }

    /* the alternative (16 keys per warp) backward on fresh poison */
    float *gdqkv_alt = (float *)malloc(nqkv * 4);
    {
        uint16_t *h1 = (uint16_t *)malloc(nqkv * 2);
        MT_CK(cudaMemset(d_dqkv, 0xff, nqkv * 2));
        MT_CK(cudaMemset(d_ws, 0xff, ws));
        st = bwd_alt_layout(&cx, d_dqkv, d_dout, d_out, d_lse, d_qkv, B, T, Hkv, G, D, causal, d_ws);
        MT_EXPECT(st == MT_OK, "16-keys-per-warp bwd status %s", mt_status_str(st));
        MT_CK(cudaDeviceSynchronize());
        MT_CK(cudaMemcpy(h1, d_dqkv, nqkv * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < nqkv; i++) gdqkv_alt[i] = mt_bf16_to_f32(h1[i]);
        free(h1);
    }

    /* the wgmma backward (Hopper) in each configuration of this head dim, twice on fresh poison: dK/dV
     * bitwise identical */
    float *gdqkv_wg[N_WGMMA] = {NULL};
    for (int v = 0; v < N_WGMMA; v++) {
        if (wgmma_head_dim(v) != D) continue;
        uint16_t *h1 = (uint16_t *)malloc(nqkv * 2), *h2 = (uint16_t *)malloc(nqkv * 2);
        for (int rep = 0; rep < 2; rep++) {
            MT_CK(cudaMemset(d_dqkv, 0xff, nqkv * 2));
            MT_CK(cudaMemset(d_ws, 0xff, ws));
            st = bwd_wgmma(v, &cx, d_dqkv, d_dout, d_out, d_lse, d_qkv, B, T, Hkv, G, D, causal, d_ws);
            if (st == MT_ERR_UNSUPPORTED) break;
            MT_EXPECT(st == MT_OK, "%s bwd status %s", g_wgmma_names[v], mt_status_str(st));
            MT_CK(cudaDeviceSynchronize());
            MT_CK(cudaGetLastError());
            MT_CK(cudaMemcpy(rep ? h2 : h1, d_dqkv, nqkv * 2, cudaMemcpyDeviceToHost));
        }
        if (st == MT_ERR_UNSUPPORTED) {
            g_wgmma_skipped++;
        } else {
            g_wgmma_ran++;
            size_t nd = 0;
            for (size_t bt = 0; bt < (size_t)B * T; bt++)
                for (int g = 0; g < Hkv; g++)
                    for (size_t i = 0; i < (size_t)2 * D; i++) {
                        size_t k = ((bt * Hkv + g) * (G + 2) + G) * D + i;
                        nd += h1[k] != h2[k];
                    }
            MT_EXPECT(nd == 0, "%s backward: dK/dV differ between two runs in %zu elements", g_wgmma_names[v], nd);
            gdqkv_wg[v] = (float *)malloc(nqkv * 4);
            for (size_t i = 0; i < nqkv; i++) gdqkv_wg[v][i] = mt_bf16_to_f32(h1[i]);
        }
        free(h1);
        free(h2);
    }

    /* second backward on fresh poison: dK/dV must be bitwise identical (one CTA per key block) */
    uint16_t *hbuf2 = (uint16_t *)malloc(nqkv * 2);
    MT_CK(cudaMemset(d_dqkv, 0xff, nqkv * 2));
    MT_CK(cudaMemset(d_ws, 0xff, ws));
    st = mt_flash_attention_bwd(&cx, d_dqkv, d_dout, d_out, d_lse, d_qkv, B, T, Hkv, G, D, causal, d_ws, ws);
    MT_CK(cudaDeviceSynchronize());
    MT_CK(cudaMemcpy(hbuf2, d_dqkv, nqkv * 2, cudaMemcpyDeviceToHost));
    size_t kv_diff = 0;
    for (size_t bt = 0; bt < (size_t)B * T; bt++)
        for (int g = 0; g < Hkv; g++)
            for (size_t i = 0; i < (size_t)2 * D; i++) {
                size_t k = ((bt * Hkv + g) * (G + 2) + G) * D + i;
                kv_diff += hbuf[k] != hbuf2[k];
            }
    MT_EXPECT(kv_diff == 0, "dK/dV differ between two runs in %zu elements", kv_diff);
    free(hbuf2);

    mt_attention_fwd_cpu_f32(ref_out, ref_lse, qkv, B, T, Hkv, G, D, causal);
    mt_attention_bwd_cpu_f32(ref_dqkv, dout, ref_out, ref_lse, qkv, B, T, Hkv, G, D, causal);

    relerr e_out = rel_error(gout, ref_out, nout);
    relerr e_lse = rel_error(glse, ref_lse, nlse);
    relerr e_out3[N_FWD_WG], e_lse3[N_FWD_WG];
    for (int v = 0; v < N_FWD_WG; v++) {
        e_out3[v].err = e_lse3[v].err = 0;
        e_out3[v].nonfinite = e_lse3[v].nonfinite = 0;
        if (gout3[v]) {
            e_out3[v] = rel_error(gout3[v], ref_out, nout);
            e_lse3[v] = rel_error(glse3[v], ref_lse, nlse);
        }
        free(gout3[v]);
        free(glse3[v]);
    }
    const size_t nq = (size_t)B * T * Hkv * G * D, nk = (size_t)B * T * Hkv * D;
    float *a = (float *)calloc(nq, 4), *r = (float *)calloc(nq, 4);
    gather_slots(a, gdqkv, B, T, Hkv, G, D, 0, G);
    gather_slots(r, ref_dqkv, B, T, Hkv, G, D, 0, G);
    relerr e_dq = rel_error(a, r, nq);
    gather_slots(a, gdqkv, B, T, Hkv, G, D, G, G + 1);
    gather_slots(r, ref_dqkv, B, T, Hkv, G, D, G, G + 1);
    relerr e_dk = rel_error(a, r, nk);
    gather_slots(a, gdqkv, B, T, Hkv, G, D, G + 1, G + 2);
    gather_slots(r, ref_dqkv, B, T, Hkv, G, D, G + 1, G + 2);
    relerr e_dv = rel_error(a, r, nk);
    relerr e_det[3], e_alt[3], e_wg[N_WGMMA][3];
    for (int w = 0; w < 3; w++) {
        const int s0 = w == 0 ? 0 : w == 1 ? G : G + 1, s1 = w == 0 ? G : s0 + 1;
        gather_slots(r, ref_dqkv, B, T, Hkv, G, D, s0, s1);
        gather_slots(a, gdqkv_det, B, T, Hkv, G, D, s0, s1);
        e_det[w] = rel_error(a, r, w == 0 ? nq : nk);
        gather_slots(a, gdqkv_alt, B, T, Hkv, G, D, s0, s1);
        e_alt[w] = rel_error(a, r, w == 0 ? nq : nk);
        for (int v = 0; v < N_WGMMA; v++) {
            e_wg[v][w].err = 0;
            e_wg[v][w].nonfinite = 0;
            if (gdqkv_wg[v]) {
                gather_slots(a, gdqkv_wg[v], B, T, Hkv, G, D, s0, s1);
                e_wg[v][w] = rel_error(a, r, w == 0 ? nq : nk);
            }
        }
    }
    for (int v = 0; v < N_WGMMA; v++) free(gdqkv_wg[v]);
    free(gdqkv_det);
    free(gdqkv_alt);
    free(a);
    free(r);

    const double tol = 1e-2;
    char tag[96];
    snprintf(tag, sizeof tag, "B=%d T=%d Hkv=%d G=%d D=%d causal=%d", B, T, Hkv, G, D, causal);
    MT_EXPECT(e_out.err < tol, "%s: out rel err %.3g (%zu non-finite)", tag, e_out.err, e_out.nonfinite);
    MT_EXPECT(e_lse.err < tol, "%s: lse rel err %.3g (%zu non-finite)", tag, e_lse.err, e_lse.nonfinite);
    for (int v = 0; v < N_FWD_WG; v++) {
        MT_EXPECT(e_out3[v].err < tol, "%s: %s out rel err %.3g (%zu non-finite)", tag, g_fwd_wg[v].name, e_out3[v].err,
                  e_out3[v].nonfinite);
        MT_EXPECT(e_lse3[v].err < tol, "%s: %s lse rel err %.3g (%zu non-finite)", tag, g_fwd_wg[v].name, e_lse3[v].err,
                  e_lse3[v].nonfinite);
    }
    MT_EXPECT(e_dq.err < tol, "%s: dq rel err %.3g (%zu non-finite)", tag, e_dq.err, e_dq.nonfinite);
    MT_EXPECT(e_dk.err < tol, "%s: dk rel err %.3g (%zu non-finite)", tag, e_dk.err, e_dk.nonfinite);
    MT_EXPECT(e_dv.err < tol, "%s: dv rel err %.3g (%zu non-finite)", tag, e_dv.err, e_dv.nonfinite);
    for (int w = 0; w < 3; w++) {
        MT_EXPECT(e_det[w].err < tol, "%s: deterministic d%c rel err %.3g (%zu non-finite)", tag, "qkv"[w],
                  e_det[w].err, e_det[w].nonfinite);
        MT_EXPECT(e_alt[w].err < tol, "%s: 16-keys-per-warp d%c rel err %.3g (%zu non-finite)", tag, "qkv"[w],
                  e_alt[w].err, e_alt[w].nonfinite);
        for (int v = 0; v < N_WGMMA; v++)
            MT_EXPECT(e_wg[v][w].err < tol, "%s: %s d%c rel err %.3g (%zu non-finite)", tag, g_wgmma_names[v],
                      "qkv"[w], e_wg[v][w].err, e_wg[v][w].nonfinite);
    }
    printf("    %-40s out %.2e lse %.2e dq %.2e dk %.2e dv %.2e", tag, e_out.err, e_lse.err, e_dq.err, e_dk.err,
           e_dv.err);
    for (int v = 0; v < N_FWD_WG; v++)
        if (g_fwd_wg[v].D == D) { /* the first configuration of this head dim (all are checked above) */
            printf("  wgmma fwd out %.2e lse %.2e", e_out3[v].err, e_lse3[v].err);
            break;
        }
    for (int v = 0; v < N_WGMMA; v++)
        if (gdqkv_wg[v]) {
            printf("  %s dq %.2e dk %.2e dv %.2e", g_wgmma_names[v], e_wg[v][0].err, e_wg[v][1].err, e_wg[v][2].err);
            break;
        }
    printf("\n");
    double m = e_out.err;
    if (!(m >= e_lse.err)) m = e_lse.err;
    for (int v = 0; v < N_FWD_WG; v++) {
        if (!(m >= e_out3[v].err)) m = e_out3[v].err;
        if (!(m >= e_lse3[v].err)) m = e_lse3[v].err;
    }
    if (!(m >= e_dq.err)) m = e_dq.err;
    if (!(m >= e_dk.err)) m = e_dk.err;
    if (!(m >= e_dv.err)) m = e_dv.err;
    for (int w = 0; w < 3; w++) {
        if (!(m >= e_det[w].err)) m = e_det[w].err;
        if (!(m >= e_alt[w].err)) m = e_alt[w].err;
        for (int v = 0; v < N_WGMMA; v++)
            if (!(m >= e_wg[v][w].err)) m = e_wg[v][w].err;
    }
    if (!(*worst >= m)) *worst = m;

    mt_test_attn_free(&dev);
    free(qkv); free(dout); free(hqkv); free(hdout); free(ref_out); free(ref_lse); free(ref_dqkv);
    free(gout); free(glse); free(gdqkv); free(hbuf);
}

static void sweep(int D) {
    static const int Ts[] = {1, 7, 64, 129, 257, 1000};
    double worst = 0;
    g_wgmma_ran = g_wgmma_skipped = 0;
    g_fwd_wg_ran = g_fwd_wg_skipped = 0;
    for (int ti = 0; ti < 6; ti++)
        for (int G = 1; G <= 4; G *= 2)
            for (int causal = 1; causal >= 0; causal--) {
                int T = Ts[ti];
                int B = T >= 1000 ? 1 : 2, Hkv = T >= 1000 ? 1 : 2;
                run_case(B, T, Hkv, G, D, causal, &worst);
            }
    printf("    D=%d: worst relative error %.3g\n", D, worst);
    if (g_wgmma_skipped) printf("    wgmma backward skipped in %d cases: not a compute capability 9.x GPU\n", g_wgmma_skipped);
    else printf("    wgmma backward checked in %d case x configuration runs\n", g_wgmma_ran);
    if (g_fwd_wg_skipped) printf("    wgmma forward skipped in %d cases: not a compute capability 9.x GPU\n", g_fwd_wg_skipped);
    else printf("    wgmma forward checked in %d case x configuration runs\n", g_fwd_wg_ran);
}

static void test_flash_attention_d64(void) { sweep(64); }
static void test_flash_attention_d128(void) { sweep(128); }

static void test_flash_attention_args(void) {
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.device = mt_gpu(0);
    cx.dtype = MT_BF16;
    void *p;
    MT_CK(cudaMalloc(&p, 1 << 20));
    mt_status st = mt_flash_attention_fwd(&cx, p, (float *)p, p, 1, 16, 1, 1, 96, 1);
    MT_EXPECT(st == MT_ERR_UNSUPPORTED, "D=96 forward gave %s", mt_status_str(st));
    st = mt_flash_attention_bwd(&cx, p, p, p, (const float *)p, p, 1, 16, 1, 1, 96, 1, p, 1 << 20);
    MT_EXPECT(st == MT_ERR_UNSUPPORTED, "D=96 backward gave %s", mt_status_str(st));
    size_t need = mt_flash_attention_bwd_workspace_nbytes(1, 16, 1, 1, 64);
    st = mt_flash_attention_bwd(&cx, p, p, p, (const float *)p, p, 1, 16, 1, 1, 64, 1, p, need - 4);
    MT_EXPECT(st == MT_ERR_ARG, "short workspace gave %s", mt_status_str(st));
    MT_EXPECT(mt_flash_attention_supported(64) && mt_flash_attention_supported(128) && !mt_flash_attention_supported(80),
              "supported head dims");
    MT_CK(cudaFree(p));
}

int main(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("gpu_attention: no GPU, skipped\n");
        printf("gpu_attention: 0 passed, 0 failed\n");
        return 0;
    }
    MT_RUN(test_flash_attention_args);
    MT_RUN(test_flash_attention_d64);
    MT_RUN(test_flash_attention_d128);
    return mt_test_summary("gpu_attention");
}
