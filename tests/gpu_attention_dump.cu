/* tests/gpu_attention_dump.cu — cases for the cross-check of our attention against PyTorch's SDPA.
 *
 *   ./build/gpu_attention_dump DIR && python3 tests/sdpa_compare.py DIR     (tests/gpu_check.sh check)
 *
 * For D in {64, 128}, T in {1, 77, 200, 1024}, causal and not, G in {1, 2} (B = 2, Hkv = 2): fresh
 * random bf16 q, k, v and dout, the library's default forward and backward (mt_flash_attention_fwd /
 * _bwd, what the trainer runs), and one file DIR/case_NN.bin per case:
 *   "MTATTN1\n", int32 B, T, Hkv, G, D, causal (little-endian), then qkv (B,T,Hkv,G+2,D) bf16,
 *   dout (B,T,H,D) bf16, out (B,T,H,D) bf16, lse (B,H,T) fp32 (natural log), dqkv (B,T,Hkv,G+2,D) bf16.
 * This program checks that every output is finite; tests/sdpa_compare.py (on a machine with PyTorch
 * and a GPU, the peer only: the library never needs it) compares out, lse, dQ, dK and dV with SDPA.
 * Without a GPU it writes nothing and reports 0 passed.
 */
#include "megatron.h"
#include "tests/mt_test.h"
#include "tests/mt_test_cuda.h"
#include <errno.h>
#include <sys/stat.h>

static const char *g_dir;
static int g_case = 0;

static void put(FILE *f, const void *dev, size_t nbytes) {
    void *h = malloc(nbytes ? nbytes : 1);
    MT_CK(cudaMemcpy(h, dev, nbytes, cudaMemcpyDeviceToHost));
    MT_EXPECT(fwrite(h, 1, nbytes, f) == nbytes, "short write");
    free(h);
}

/* elements of n bf16 values (dev) that are not finite */
static size_t nonfinite_bf16(const void *dev, size_t n) {
    uint16_t *h = (uint16_t *)malloc(n * 2 + 2);
    MT_CK(cudaMemcpy(h, dev, n * 2, cudaMemcpyDeviceToHost));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(mt_bf16_to_f32(h[i]));
    free(h);
    return bad;
}

static void one_case(int B, int T, int Hkv, int G, int D, int causal) {
    const int H = Hkv * G;
    const size_t nqkv = (size_t)B * T * Hkv * (G + 2) * D, nout = (size_t)B * T * H * D, nlse = (size_t)B * H * T;
    uint16_t *hqkv = (uint16_t *)malloc(nqkv * 2), *hdout = (uint16_t *)malloc(nout * 2);
    const uint64_t seed = 0xa77e0000u + (uint64_t)g_case;
    for (size_t i = 0; i < nqkv; i++) hqkv[i] = mt_f32_to_bf16(mt_rng_normal(seed, 1, i));
    for (size_t i = 0; i < nout; i++) hdout[i] = mt_f32_to_bf16(mt_rng_normal(seed, 2, i));
    mt_test_attn a;
    mt_test_attn_init(&a, B, T, Hkv, G, D, hqkv, hdout); /* outputs NaN-poisoned: every one must be written */
    mt_ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.device = mt_gpu(0);
    cx.dtype = MT_BF16;
    mt_status st = mt_flash_attention_fwd(&cx, a.out, a.lse, a.qkv, B, T, Hkv, G, D, causal);
    if (st == MT_OK)
        st = mt_flash_attention_bwd(&cx, a.dqkv, a.dout, a.out, a.lse, a.qkv, B, T, Hkv, G, D, causal, a.ws,
                                    a.ws_nbytes);
    MT_EXPECT(st == MT_OK, "D=%d T=%d causal=%d G=%d: %s", D, T, causal, G, mt_status_str(st));
    MT_CK(cudaDeviceSynchronize());
    size_t bad = nonfinite_bf16(a.out, nout) + nonfinite_bf16(a.dqkv, nqkv);
    MT_EXPECT(bad == 0, "D=%d T=%d causal=%d G=%d: %zu non-finite outputs", D, T, causal, G, bad);
    char path[512];
    snprintf(path, sizeof path, "%s/case_%02d.bin", g_dir, g_case++);
    FILE *f = fopen(path, "wb");
    MT_EXPECT(f != NULL, "cannot write %s", path);
    if (f) {
        const int32_t hdr[6] = {B, T, Hkv, G, D, causal};
        fwrite("MTATTN1\n", 1, 8, f);
        fwrite(hdr, 4, 6, f);
        put(f, a.qkv, nqkv * 2);
        put(f, a.dout, nout * 2);
        put(f, a.out, nout * 2);
        put(f, a.lse, nlse * 4);
        put(f, a.dqkv, nqkv * 2);
        MT_EXPECT(fclose(f) == 0, "closing %s", path);
    }
    mt_test_attn_free(&a);
    free(hqkv);
    free(hdout);
}

static void test_dump_cases(void) {
    static const int Ts[] = {1, 77, 200, 1024};
    for (int d = 0; d < 2; d++)
        for (int t = 0; t < 4; t++)
            for (int causal = 0; causal < 2; causal++)
                for (int G = 1; G <= 2; G++) one_case(2, Ts[t], 2, G, d ? 128 : 64, causal);
    printf("    %d cases written to %s\n", g_case, g_dir);
}

int main(int argc, char **argv) {
    g_dir = argc > 1 ? argv[1] : "build/attention-cases";
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("gpu_attention_dump: no GPU, nothing written\n");
        printf("gpu_attention_dump: 0 passed, 0 failed\n");
        return 0;
    }
    if (mkdir(g_dir, 0755) != 0 && errno != EEXIST) {
        printf("gpu_attention_dump: cannot create %s: %s\n", g_dir, strerror(errno));
        printf("gpu_attention_dump: 0 passed, 1 failed\n");
        return 1;
    }
    MT_RUN(test_dump_cases);
    return mt_test_summary("gpu_attention_dump");
}
