/* tests/test_core.c — mt/core.h: status strings, dtype conversions (exhaustive and random against an
 * independent reference), tensors and views, the arena, the Philox RNG (Random123 known answers,
 * moments, determinism), and the learning-rate schedule. */
#include <float.h>
#include <stdint.h>
#include <string.h>
#include "mt_test.h"

/* Capture what the library logs, so error messages can be checked (and stay off the console). */
static char test_log_msg[1024];
static int test_log_level = -1, test_log_count;
static void test_log(int level, const char *msg) {
    test_log_level = level;
    test_log_count++;
    snprintf(test_log_msg, sizeof test_log_msg, "%s", msg);
}
static void test_log_clear(void) {
    test_log_msg[0] = 0;
    test_log_level = -1;
    test_log_count = 0;
}
#define MT_LOG_FN(level, msg) test_log(level, msg)

/* The sanitizer build compiles without -fopenmp: its `omp` pragmas are meant to be ignored. */
#ifndef _OPENMP
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif
#include "megatron.h"

/* xorshift64* — the tests' own generator, independent of the library's. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd64(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static uint32_t rnd32(void) { return (uint32_t)(rnd64() >> 32); }

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ------------------------------------------------------------------ status, dtypes */

static void test_status_str(void) {
    MT_EXPECT(strcmp(mt_status_str(MT_OK), "ok") == 0, "MT_OK -> '%s'", mt_status_str(MT_OK));
    MT_EXPECT(strcmp(mt_status_str(MT_ERR_OOM), "out of memory") == 0, "OOM -> '%s'", mt_status_str(MT_ERR_OOM));
    for (int s = 0; s < MT_STATUS_COUNT; s++) {
        const char *m = mt_status_str((mt_status)s);
        MT_EXPECT(m && m[0] && strcmp(m, "unknown status") != 0, "status %d has message '%s'", s, m ? m : "(null)");
        for (int r = 0; r < s; r++)
            MT_EXPECT(strcmp(m, mt_status_str((mt_status)r)) != 0, "statuses %d and %d share '%s'", r, s, m);
    }
    MT_EXPECT(MT_STATUS_COUNT == 13, "MT_STATUS_COUNT = %d", (int)MT_STATUS_COUNT);
    MT_EXPECT(strcmp(mt_status_str(MT_STATUS_COUNT), "unknown status") == 0, "out of range -> '%s'",
              mt_status_str(MT_STATUS_COUNT));
    MT_EXPECT(strcmp(mt_status_str((mt_status)-1), "unknown status") == 0, "-1 -> '%s'", mt_status_str((mt_status)-1));

    /* mt_errorf logs at error level and returns its status */
    test_log_clear();
    mt_status st = mt_errorf(MT_ERR_FORMAT, "file %s: field %s expected %d", "a.bin", "magic", 42);
    MT_EXPECT(st == MT_ERR_FORMAT, "mt_errorf returned %d", (int)st);
    MT_EXPECT(test_log_level == MT_LOG_ERROR, "level %d", test_log_level);
    MT_EXPECT(strcmp(test_log_msg, "file a.bin: field magic expected 42") == 0, "logged '%s'", test_log_msg);
}

static void test_dtypes(void) {
    const mt_dtype dt[] = {MT_F32, MT_F64, MT_BF16, MT_F16, MT_FP8E4M3, MT_FP8E5M2};
    const size_t sz[] = {4, 8, 2, 2, 1, 1};
    const char *nm[] = {"f32", "f64", "bf16", "f16", "e4m3", "e5m2"};
    MT_EXPECT(MT_DTYPE_COUNT == 6, "MT_DTYPE_COUNT = %d", (int)MT_DTYPE_COUNT);
    for (int i = 0; i < 6; i++) {
        MT_EXPECT(mt_dtype_size(dt[i]) == sz[i], "size of %s = %zu", nm[i], mt_dtype_size(dt[i]));
        MT_EXPECT(strcmp(mt_dtype_name(dt[i]), nm[i]) == 0, "name %s vs %s", mt_dtype_name(dt[i]), nm[i]);
    }
    MT_EXPECT(mt_dtype_size(MT_DTYPE_COUNT) == 0, "bad dtype has size %zu", mt_dtype_size(MT_DTYPE_COUNT));
    MT_EXPECT(strcmp(mt_dtype_name(MT_DTYPE_COUNT), "?") == 0, "bad dtype name %s", mt_dtype_name(MT_DTYPE_COUNT));
    mt_ctx cx = {0};
    MT_EXPECT(mt_stat_dtype(&cx) == MT_F32, "stat dtype of f32 ctx");
    cx.dtype = MT_F64;
    MT_EXPECT(mt_stat_dtype(&cx) == MT_F64, "stat dtype of f64 ctx");
    cx.dtype = MT_BF16;
    MT_EXPECT(mt_stat_dtype(&cx) == MT_F32, "stat dtype of bf16 ctx");
}

/* ------------------------------------------------------------------ conversions */

/* Independent decoders: value of a 16-bit pattern from its fields, by ldexp. */
static double ref_f16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -24);
    else v = ldexp((double)(1024 + m), e - 25);
    return s ? -v : v;
}
static double ref_bf16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -133);
    else v = ldexp((double)(128 + m), e - 134);
    return s ? -v : v;
}

/* Magnitudes of the positive patterns 0 .. inf_idx, with the Inf pattern standing for the first value
 * past the largest finite one (2^16 for f16, 2^128 for bf16), as IEEE overflow rounding prescribes. */
static double tab_f16[0x7c01], tab_bf16[0x7f81];
static void build_tables(void) {
    for (int k = 0; k < 0x7c00; k++) tab_f16[k] = ref_f16_value((uint16_t)k);
    tab_f16[0x7c00] = 65536.0;
    for (int k = 0; k < 0x7f80; k++) tab_bf16[k] = ref_bf16_value((uint16_t)k);
    tab_bf16[0x7f80] = ldexp(1.0, 128);
}

/* Round a non-NaN float to the nearest entry of tab (ties to the even pattern), with the sign. */
static uint16_t ref_round(float f, const double *tab, int inf_idx, int k_hint) {
    uint16_t sign = (fbits(f) >> 31) ? 0x8000 : 0;
    double a = fabs((double)f);
    if (a >= tab[inf_idx]) return (uint16_t)(sign | inf_idx);
    int k = k_hint;
    if (k < 0) { /* largest k with tab[k] <= a */
        int lo = 0, hi = inf_idx;  /* tab[lo] <= a < tab[hi] */
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (tab[mid] <= a) lo = mid; else hi = mid;
        }
        k = lo;
    }
    double twice = 2.0 * a, mid = tab[k] + tab[k + 1]; /* both exact in double */
    int r = twice < mid ? k : twice > mid ? k + 1 : ((k & 1) ? k + 1 : k);
    return (uint16_t)(sign | r);
}
static uint16_t ref_f16(float f) { return ref_round(f, tab_f16, 0x7c00, -1); }
static uint16_t ref_bf16(float f) {
    /* truncation toward zero is the top 16 bits; the reference only picks between it and the next */
    return ref_round(f, tab_bf16, 0x7f80, (int)((fbits(f) & 0x7fffffffu) >> 16));
}

static void test_f16_to_f32_exhaustive(void) {
    int bad = 0, nan_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = mt_f16_to_f32((uint16_t)h);
        double r = ref_f16_value((uint16_t)h);
        if (isnan(r)) {
            if (!isnan(f) || (fbits(f) >> 31) != (h >> 15)) nan_bad++;
        } else if ((double)f != r || (fbits(f) >> 31) != (h >> 15)) { /* the sign check catches -0 */
            if (bad++ < 3) MT_EXPECT(0, "f16 %04x -> %.9g, expected %.9g", h, (double)f, r);
        }
    }
    MT_EXPECT(bad == 0, "%d f16 patterns decode wrongly", bad);
    MT_EXPECT(nan_bad == 0, "%d f16 NaN patterns do not decode to NaN of the same sign", nan_bad);
    bad = 0; nan_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = mt_bf16_to_f32((uint16_t)h);
        double r = ref_bf16_value((uint16_t)h);
        if (isnan(r)) {
            if (!isnan(f) || (fbits(f) >> 31) != (h >> 15)) nan_bad++;
        } else if ((double)f != r || (fbits(f) >> 31) != (h >> 15)) {
            if (bad++ < 3) MT_EXPECT(0, "bf16 %04x -> %.9g, expected %.9g", h, (double)f, r);
        }
    }
    MT_EXPECT(bad == 0, "%d bf16 patterns decode wrongly", bad);
    MT_EXPECT(nan_bad == 0, "%d bf16 NaN patterns do not decode to NaN of the same sign", nan_bad);
}

/* to_f32 then back gives the same bits for all 2^16 patterns; a NaN stays a NaN of the same sign,
 * its payload kept and at most the quiet bit added. */
static void test_roundtrip_exhaustive(void) {
    int bad16 = 0, badb = 0, nans16 = 0, nansb = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t r = mt_f32_to_f16(mt_f16_to_f32((uint16_t)h));
        int isnan16 = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (isnan16) {
            nans16++;
            if (r != (h | 0x0200)) {
                if (bad16++ < 3) MT_EXPECT(0, "f16 NaN %04x came back as %04x (expected %04x)", h, r, h | 0x200);
            }
        } else if (r != h) {
            if (bad16++ < 3) MT_EXPECT(0, "f16 %04x came back as %04x", h, r);
        }
        uint16_t rb = mt_f32_to_bf16(mt_bf16_to_f32((uint16_t)h));
        int isnanb = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        if (isnanb) {
            nansb++;
            if (rb != (h | 0x0040)) {
                if (badb++ < 3) MT_EXPECT(0, "bf16 NaN %04x came back as %04x (expected %04x)", h, rb, h | 0x40);
            }
        } else if (rb != h) {
            if (badb++ < 3) MT_EXPECT(0, "bf16 %04x came back as %04x", h, rb);
        }
    }
    MT_EXPECT(bad16 == 0, "%d f16 patterns do not round-trip", bad16);
    MT_EXPECT(badb == 0, "%d bf16 patterns do not round-trip", badb);
    MT_EXPECT(nans16 == 2 * 1023 && nansb == 2 * 127, "NaN counts %d %d", nans16, nansb);
}

/* Check one float against the references; returns the number of mismatches (0, 1 or 2). */
static int check_one(float f) {
    int bad = 0;
    uint32_t u = fbits(f);
    uint16_t h = mt_f32_to_f16(f), b = mt_f32_to_bf16(f);
    if (isnan(f)) {
        /* NaN: a quiet NaN with the sign kept */
        int ok16 = (h & 0x7c00) == 0x7c00 && (h & 0x0200) && (h >> 15) == (u >> 31);
        int okb = (b & 0x7f80) == 0x7f80 && (b & 0x0040) && (b >> 15) == (u >> 31);
        if (!ok16) { bad++; if (mt_test_cur_failed < 3) MT_EXPECT(0, "f16 of NaN %08x = %04x", u, h); }
        if (!okb) { bad++; if (mt_test_cur_failed < 3) MT_EXPECT(0, "bf16 of NaN %08x = %04x", u, b); }
        return bad;
    }
    uint16_t rh = ref_f16(f), rb = ref_bf16(f);
    if (h != rh) { bad++; if (mt_test_cur_failed < 3) MT_EXPECT(0, "f16 of %.9g (%08x) = %04x, expected %04x", (double)f, u, h, rh); }
    if (b != rb) { bad++; if (mt_test_cur_failed < 3) MT_EXPECT(0, "bf16 of %.9g (%08x) = %04x, expected %04x", (double)f, u, b, rb); }
    return bad;
}

static void test_conversion_edges(void) {
    /* the reference itself, on hand-checked values */
    MT_EXPECT(ref_f16(65504.0f) == 0x7bff && ref_f16(65520.0f) == 0x7c00 &&
              ref_f16(nextafterf(65520.0f, 0)) == 0x7bff && ref_f16(-65520.0f) == 0xfc00,
              "reference near the f16 overflow boundary");
    MT_EXPECT(ref_f16(ldexpf(1, -25)) == 0 && ref_f16(nextafterf(ldexpf(1, -25), 1)) == 1 &&
              ref_f16(ldexpf(3, -25)) == 2 && ref_f16(-0.0f) == 0x8000 && ref_f16(1.0f) == 0x3c00,
              "reference at the f16 subnormal boundary");
    MT_EXPECT(ref_bf16(1.0f) == 0x3f80 && ref_bf16(bitsf(0x3f808000u)) == 0x3f80 &&
              ref_bf16(bitsf(0x3f818000u)) == 0x3f82 && ref_bf16(FLT_MAX) == 0x7f80 &&
              ref_bf16(bitsf(0x7f7f7fffu)) == 0x7f7f, "reference bf16 ties and overflow");

    const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65505.0f, 65519.0f, nextafterf(65520.0f, 0),
                           65520.0f, nextafterf(65520.0f, INFINITY), 65535.0f, 65536.0f, 1e5f, FLT_MAX,
                           -FLT_MAX, FLT_MIN, -FLT_MIN, bitsf(1), bitsf(0x807fffffu), ldexpf(1, -24),
                           ldexpf(1, -25), nextafterf(ldexpf(1, -25), 0), nextafterf(ldexpf(1, -25), 1),
                           ldexpf(3, -25), ldexpf(5, -25), ldexpf(1, -14), nextafterf(ldexpf(1, -14), 0),
                           ldexpf(1023, -24) + ldexpf(1, -25), ldexpf(1, -15), ldexpf(1, -26), INFINITY,
                           -INFINITY, 3.14159265f, 0.1f, -2.5f, 1.0009765625f /* 1 + 2^-10 */,
                           1.00048828125f /* f16 tie, even below */, 1.00146484375f /* tie, odd below */,
                           bitsf(0x7f7f8000u), bitsf(0x7f7fffffu), bitsf(0x7f7f7fffu), bitsf(0x00008000u)};
    int bad = 0;
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) bad += check_one(edges[i]);
    const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu,
                             0x7f802000u, 0x7fa00000u, 0x7f800100u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) bad += check_one(bitsf(nans[i]));
    MT_EXPECT(bad == 0, "%d edge conversions wrong", bad);
    /* spot values with known answers */
    MT_EXPECT(mt_f32_to_f16(65520.0f) == 0x7c00, "65520 -> %04x", mt_f32_to_f16(65520.0f));
    MT_EXPECT(mt_f32_to_f16(nextafterf(65520.0f, 0)) == 0x7bff, "65519.996 -> %04x",
              mt_f32_to_f16(nextafterf(65520.0f, 0)));
    MT_EXPECT(mt_f32_to_f16(ldexpf(1, -25)) == 0x0000, "2^-25 -> %04x", mt_f32_to_f16(ldexpf(1, -25)));
    MT_EXPECT(mt_f32_to_f16(ldexpf(3, -25)) == 0x0002, "3*2^-25 -> %04x", mt_f32_to_f16(ldexpf(3, -25)));
    MT_EXPECT(mt_f32_to_bf16(bitsf(0x3f808000u)) == 0x3f80, "bf16 tie to even down");
    MT_EXPECT(mt_f32_to_bf16(bitsf(0x3f818000u)) == 0x3f82, "bf16 tie to even up");
}

/* ~10 million floats from every class, each checked for f16 and bf16. */
static void test_conversion_random(void) {
    const int n = 10 * 1000 * 1000;
    int bad = 0, counted_nan = 0, counted_inf = 0, counted_sub = 0, counted_tie16 = 0, counted_tieb = 0;
    rng_state = 0x1234567887654321ull;
    for (int i = 0; i < n; i++) {
        uint64_t r = rnd64();
        uint32_t sign = (uint32_t)(r & 1) << 31, m23 = (uint32_t)(r >> 1) & 0x7fffffu;
        int cls = (int)((r >> 24) % 10);
        uint32_t rr = (uint32_t)(r >> 32);
        uint32_t u;
        switch (cls) {
            case 0: u = rnd32(); break;                                        /* any pattern */
            case 1: u = sign | ((uint32_t)(101 + rr % 45) << 23) | m23; break;  /* the f16 exponent range */
            case 2: {                                                           /* f16 ties, and +-1 ulp */
                int k = (int)(rr % 0x7c00);
                float mid = (float)((tab_f16[k] + tab_f16[k + 1]) / 2);
                int d = (int)((r >> 40) % 3) - 1;
                u = sign | (fbits(mid) + (uint32_t)d);
                break;
            }
            case 3: u = sign | (rr & 0x7fff0000u) | 0x8000u; u += (uint32_t)((int)((r >> 20) % 3) - 1); break; /* bf16 ties */
            case 4: u = sign | m23; break;                                     /* float subnormals */
            case 5: u = sign | (0x477de800u + rr % (0x4780e800u - 0x477de800u)); break; /* 65000 .. 66000 */
            case 6: u = sign | ((uint32_t)(100 + rr % 14) << 23) | m23; break; /* f16 subnormal range */
            case 7: u = sign | 0x7f800000u | ((rr >> 28) ? (rr & 0x7fffffu) : 0); break; /* NaN; Inf 1 in 16 */
            case 8: u = sign | ((uint32_t)(250 + rr % 5) << 23) | m23; break;  /* near float max (bf16 overflow) */
            default: u = sign | ((rr % 255) << 23) | m23; break;               /* any finite float */
        }
        float f = bitsf(u);
        if (isnan(f)) counted_nan++;
        else if (isinf(f)) counted_inf++;
        else if ((u & 0x7f800000u) == 0 && (u & 0x7fffffu)) counted_sub++;
        if (cls == 2) counted_tie16++;
        if (cls == 3) counted_tieb++;
        bad += check_one(f);
    }
    MT_EXPECT(bad == 0, "%d of %d random conversions wrong", bad, 2 * n);
    MT_EXPECT(counted_nan > 100000 && counted_inf > 0 && counted_sub > 100000 && counted_tie16 > 100000 &&
              counted_tieb > 100000, "class coverage: nan %d inf %d subnormal %d ties %d %d", counted_nan,
              counted_inf, counted_sub, counted_tie16, counted_tieb);
    printf("    %d random floats, f16 and bf16: %d mismatches (nan %d, inf %d, float subnormal %d)\n", n, bad,
           counted_nan, counted_inf, counted_sub);
}

/* ------------------------------------------------------------------ tensors */

static double tensor_at(const mt_tensor *t, const int64_t *idx) {
    int64_t off = 0;
    for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
    return ((const double *)t->data)[off];
}

static void test_tensor_make(void) {
    double buf[2 * 3 * 5];
    for (int i = 0; i < 30; i++) buf[i] = 100 + i;
    int64_t sh[3] = {2, 3, 5};
    mt_tensor t = mt_tensor_make(buf, MT_F64, mt_cpu(), 3, sh);
    MT_EXPECT(t.ndim == 3 && t.data == buf && t.dtype == MT_F64 && t.device.type == MT_CPU, "fields");
    MT_EXPECT(t.stride[0] == 15 && t.stride[1] == 5 && t.stride[2] == 1, "strides %lld %lld %lld",
              (long long)t.stride[0], (long long)t.stride[1], (long long)t.stride[2]);
    MT_EXPECT(mt_numel(&t) == 30, "numel %lld", (long long)mt_numel(&t));
    MT_EXPECT(mt_nbytes(&t) == 240, "nbytes %zu", mt_nbytes(&t));
    MT_EXPECT(mt_is_contiguous(&t), "fresh tensor is contiguous");
    int64_t idx[3] = {1, 2, 3};
    MT_EXPECT(tensor_at(&t, idx) == 100 + 1 * 15 + 2 * 5 + 3, "value at (1,2,3) = %g", tensor_at(&t, idx));

    uint16_t hb[7];
    int64_t sh1[1] = {7};
    mt_tensor h = mt_tensor_make(hb, MT_BF16, mt_gpu(1), 1, sh1);
    MT_EXPECT(mt_nbytes(&h) == 14 && h.device.type == MT_CUDA && h.device.index == 1, "bf16 gpu tensor");
    mt_tensor s = mt_tensor_make(buf, MT_F32, mt_cpu(), 0, sh);
    MT_EXPECT(s.ndim == 0 && mt_numel(&s) == 1 && mt_nbytes(&s) == 4 && mt_is_contiguous(&s), "scalar tensor");
    int64_t sh7[7] = {1, 1, 1, 1, 1, 2, 3};
    mt_tensor big = mt_tensor_make(buf, MT_F64, mt_cpu(), 7, sh7);
    MT_EXPECT(big.ndim == MT_MAX_DIMS, "ndim clamped to %d, got %d", MT_MAX_DIMS, big.ndim);
}

static void test_tensor_views(void) {
    double buf[4 * 6];
    for (int i = 0; i < 24; i++) buf[i] = i * 1.5 - 7;
    int64_t sh[2] = {4, 6};
    mt_tensor t = mt_tensor_make(buf, MT_F64, mt_cpu(), 2, sh), v = t, w = t, n = t, tr = t;

    /* view with -1 */
    int64_t vs[3] = {2, -1, 3};
    MT_EXPECT(mt_view(&t, 3, vs, &v) == MT_OK, "view (2,-1,3)");
    MT_EXPECT(v.ndim == 3 && v.shape[0] == 2 && v.shape[1] == 4 && v.shape[2] == 3, "inferred shape %lld",
              (long long)v.shape[1]);
    MT_EXPECT(v.stride[0] == 12 && v.stride[1] == 3 && v.stride[2] == 1 && v.data == buf, "view strides");
    int64_t i3[3] = {1, 2, 1};
    MT_EXPECT(tensor_at(&v, i3) == buf[12 + 6 + 1], "view value");
    int64_t vs1[1] = {-1};
    MT_EXPECT(mt_view(&t, 1, vs1, &w) == MT_OK && w.shape[0] == 24, "flatten with -1");

    /* bad shapes */
    test_log_clear();
    int64_t bad1[2] = {5, 5};
    MT_EXPECT(mt_view(&t, 2, bad1, &w) == MT_ERR_SHAPE, "25 != 24 elements");
    MT_EXPECT(strstr(test_log_msg, "24") != NULL && strstr(test_log_msg, "25") != NULL,
              "message names both sizes: '%s'", test_log_msg);
    int64_t bad2[3] = {-1, -1, 6};
    MT_EXPECT(mt_view(&t, 3, bad2, &w) == MT_ERR_SHAPE, "two -1");
    int64_t bad3[2] = {5, -1};
    MT_EXPECT(mt_view(&t, 2, bad3, &w) == MT_ERR_SHAPE, "-1 does not divide");
    int64_t bad4[2] = {0, -1};
    MT_EXPECT(mt_view(&t, 2, bad4, &w) == MT_ERR_SHAPE, "zero with -1");
    int64_t bad5[7] = {1, 1, 1, 1, 1, 4, 6};
    MT_EXPECT(mt_view(&t, 7, bad5, &w) == MT_ERR_SHAPE, "ndim 7");
    MT_EXPECT(mt_view(&t, -1, bad5, &w) == MT_ERR_SHAPE, "ndim -1");
    MT_EXPECT(test_log_level == MT_LOG_ERROR, "errors are logged at error level");

    /* narrow along rows keeps contiguity; along columns it does not */
    MT_EXPECT(mt_narrow(&t, 0, 1, 2, &n) == MT_OK, "narrow rows");
    MT_EXPECT(n.shape[0] == 2 && n.shape[1] == 6 && n.data == buf + 6 && mt_is_contiguous(&n), "row slice");
    MT_EXPECT(mt_narrow(&t, 1, 2, 3, &n) == MT_OK, "narrow cols");
    MT_EXPECT(n.shape[0] == 4 && n.shape[1] == 3 && n.stride[0] == 6 && !mt_is_contiguous(&n), "col slice");
    int bad = 0;
    for (int64_t r = 0; r < 4; r++)
        for (int64_t c = 0; c < 3; c++) {
            int64_t ix[2] = {r, c};
            if (tensor_at(&n, ix) != buf[r * 6 + 2 + c]) bad++;
        }
    MT_EXPECT(bad == 0, "%d narrowed values wrong", bad);
    int64_t fl[1] = {12};
    MT_EXPECT(mt_view(&n, 1, fl, &w) == MT_ERR_SHAPE, "view of a non-contiguous slice is refused");
    MT_EXPECT(mt_narrow(&t, 1, 4, 3, &w) == MT_ERR_SHAPE, "narrow past the end");
    MT_EXPECT(mt_narrow(&t, 1, -1, 2, &w) == MT_ERR_SHAPE, "negative start");
    MT_EXPECT(mt_narrow(&t, 1, 0, -1, &w) == MT_ERR_SHAPE, "negative length");
    MT_EXPECT(mt_narrow(&t, 2, 0, 1, &w) == MT_ERR_SHAPE, "dim out of range");
    MT_EXPECT(mt_narrow(&t, 1, 6, 0, &w) == MT_OK && w.shape[1] == 0 && mt_numel(&w) == 0, "empty slice");

    /* transpose: values through strides; a narrow of a transpose */
    MT_EXPECT(mt_transpose(&t, 0, 1, &tr) == MT_OK, "transpose");
    MT_EXPECT(tr.shape[0] == 6 && tr.shape[1] == 4 && tr.stride[0] == 1 && tr.stride[1] == 6 &&
              !mt_is_contiguous(&tr), "transposed shape and strides");
    bad = 0;
    for (int64_t r = 0; r < 6; r++)
        for (int64_t c = 0; c < 4; c++) {
            int64_t ix[2] = {r, c};
            if (tensor_at(&tr, ix) != buf[c * 6 + r]) bad++;
        }
    MT_EXPECT(bad == 0, "%d transposed values wrong", bad);
    MT_EXPECT(mt_narrow(&tr, 1, 1, 2, &n) == MT_OK && n.data == buf + 6, "narrow of transpose");
    int64_t ix2[2] = {5, 1};
    MT_EXPECT(tensor_at(&n, ix2) == buf[2 * 6 + 5], "value of narrowed transpose");
    MT_EXPECT(mt_transpose(&t, 0, 2, &w) == MT_ERR_SHAPE, "transpose dim out of range");
    MT_EXPECT(mt_transpose(&tr, 1, 0, &w) == MT_OK && mt_is_contiguous(&w) && w.stride[0] == 6, "transpose back");

    /* 3-d: transpose (0,2) then read everything */
    int64_t sh3[3] = {2, 3, 4};
    mt_tensor t3 = mt_tensor_make(buf, MT_F64, mt_cpu(), 3, sh3), t3t = t3;
    MT_EXPECT(mt_transpose(&t3, 0, 2, &t3t) == MT_OK && t3t.shape[0] == 4 && t3t.shape[2] == 2, "3-d transpose");
    bad = 0;
    for (int64_t a = 0; a < 4; a++)
        for (int64_t b = 0; b < 3; b++)
            for (int64_t c = 0; c < 2; c++) {
                int64_t ix[3] = {a, b, c};
                if (tensor_at(&t3t, ix) != buf[c * 12 + b * 4 + a]) bad++;
            }
    MT_EXPECT(bad == 0, "%d 3-d transposed values wrong", bad);
    /* size-1 dims with any stride are still contiguous */
    int64_t sh4[3] = {4, 1, 6};
    mt_tensor t4 = mt_tensor_make(buf, MT_F64, mt_cpu(), 3, sh4);
    t4.stride[1] = 12345;
    MT_EXPECT(mt_is_contiguous(&t4), "size-1 dims do not break contiguity");
}

/* ------------------------------------------------------------------ arena */

static void test_arena(void) {
    mt_arena a;
    const size_t cap = 4096;
    MT_EXPECT(mt_arena_init(&a, mt_cpu(), cap) == MT_OK, "init");
    MT_EXPECT(a.capacity == cap && a.used == 0 && a.peak == 0 && a.base != NULL, "fresh arena");
    void *p1, *p2, *p3, *p4;
    MT_EXPECT(mt_arena_alloc(&a, 10, &p1) == MT_OK, "alloc 10");
    MT_EXPECT(mt_arena_alloc(&a, 300, &p2) == MT_OK, "alloc 300");
    MT_EXPECT(mt_arena_alloc(&a, 1, &p3) == MT_OK, "alloc 1");
    size_t o1 = (size_t)((char *)p1 - a.base), o2 = (size_t)((char *)p2 - a.base), o3 = (size_t)((char *)p3 - a.base);
    MT_EXPECT(o1 == 0 && o2 == 256 && o3 == 768, "offsets %zu %zu %zu (256-byte steps)", o1, o2, o3);
    MT_EXPECT(o1 % MT_ARENA_ALIGN == 0 && o2 % MT_ARENA_ALIGN == 0 && o3 % MT_ARENA_ALIGN == 0, "aligned offsets");
    MT_EXPECT(a.used == 769 && a.peak == 769, "used %zu peak %zu", a.used, a.peak);
    memset(p2, 0xab, 300); /* the memory is usable (ASan checks the bounds) */

    size_t mark = mt_arena_mark(&a);
    MT_EXPECT(mt_arena_alloc(&a, 2000, &p4) == MT_OK, "alloc 2000");
    MT_EXPECT(a.used == 1024 + 2000 && a.peak == 3024, "used %zu peak %zu", a.used, a.peak);
    mt_arena_reset(&a, mark);
    MT_EXPECT(a.used == 769 && a.peak == 3024, "reset keeps the peak: used %zu peak %zu", a.used, a.peak);
    void *p5;
    MT_EXPECT(mt_arena_alloc(&a, 2000, &p5) == MT_OK && p5 == p4, "after reset the same block comes back");

    /* overflow: OOM, NULL, sizes in the message, nothing changed */
    test_log_clear();
    size_t used_before = a.used;
    void *p6 = &a;
    mt_status st = mt_arena_alloc(&a, 5000, &p6);
    MT_EXPECT(st == MT_ERR_OOM, "overflow gives %s", mt_status_str(st));
    MT_EXPECT(p6 == NULL, "overflow sets the pointer to NULL");
    MT_EXPECT(a.used == used_before, "overflow leaves the arena as it was");
    MT_EXPECT(test_log_level == MT_LOG_ERROR && strstr(test_log_msg, "5000") && strstr(test_log_msg, "4096"),
              "message names the request and the capacity: '%s'", test_log_msg);
    /* exactly filling the arena works; one more byte does not */
    mt_arena_reset(&a, 0);
    MT_EXPECT(mt_arena_alloc(&a, cap, &p6) == MT_OK && a.used == cap, "exact fit");
    MT_EXPECT(mt_arena_alloc(&a, 0, &p6) == MT_OK, "zero bytes at the end fit");
    MT_EXPECT(mt_arena_alloc(&a, 1, &p6) == MT_ERR_OOM, "one byte past the end");
    mt_arena_reset(&a, 1);
    MT_EXPECT(mt_arena_alloc(&a, SIZE_MAX - 8, &p6) == MT_ERR_OOM && a.used == 1, "a request that wraps size_t");
    mt_arena_free(&a);
    MT_EXPECT(a.base == NULL && a.capacity == 0, "free clears the arena");

    /* a zeroed arena only measures: NULL pointers, the bytes a real one would need */
    mt_arena meas;
    memset(&meas, 0, sizeof meas);
    void *q = &meas;
    MT_EXPECT(mt_arena_alloc(&meas, 10, &q) == MT_OK && q == NULL, "measuring alloc returns NULL");
    MT_EXPECT(mt_arena_alloc(&meas, 1000, &q) == MT_OK && mt_arena_alloc(&meas, 3, &q) == MT_OK, "measuring allocs");
    MT_EXPECT(meas.used == 256 + 1024 + 3 && meas.peak == meas.used, "measured %zu bytes (peak %zu)", meas.used, meas.peak);
    size_t need = meas.used;
    mt_arena_reset(&meas, 256);
    MT_EXPECT(meas.used == 256 && meas.peak == need, "measuring reset keeps the peak");
    mt_arena real;
    MT_EXPECT(mt_arena_init(&real, mt_cpu(), need) == MT_OK, "init with the measured size");
    MT_EXPECT(mt_arena_alloc(&real, 10, &q) == MT_OK && mt_arena_alloc(&real, 1000, &q) == MT_OK &&
              mt_arena_alloc(&real, 3, &q) == MT_OK && q != NULL && real.used == need,
              "the measured size fits the same allocations exactly");
    mt_arena_free(&real);

    /* a GPU arena in a CPU build says why it cannot exist */
    test_log_clear();
    st = mt_arena_init(&a, mt_gpu(0), 1024);
    MT_EXPECT(st == MT_ERR_UNSUPPORTED && a.base == NULL, "GPU arena without CUDA: %s", mt_status_str(st));
    MT_EXPECT(strstr(test_log_msg, "nvcc") != NULL, "message: '%s'", test_log_msg);

    /* mt_calloc zeroes */
    unsigned char *z = NULL;
    MT_EXPECT(mt_calloc(1000, (void **)&z) == MT_OK && z != NULL, "calloc");
    int nz = 0;
    for (int i = 0; i < 1000; i++) nz += z[i] != 0;
    MT_EXPECT(nz == 0, "%d non-zero bytes", nz);
    mt_free(z);
    mt_free(NULL);
}

/* ------------------------------------------------------------------ RNG */

static void test_philox_kat(void) {
    /* Random123 kat_vectors, "philox4x32 10" lines: counter, key, expected output */
    const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
        {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du, 0x41c83b0eu,
         0xa20bc7c6u, 0x6d5451fdu},
        {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u, 0x94fdccebu,
         0x5001e420u, 0x24126ea1u},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        mt_philox4x32(kat[i], kat[i] + 4, out);
        for (int j = 0; j < 4; j++)
            MT_EXPECT(out[j] == kat[i][6 + j], "vector %d word %d: %08x, expected %08x", i, j, out[j], kat[i][6 + j]);
    }
    /* the stream layout: element i of (seed, subseq) is word i%4 of the block at counter
     * (i/4 low, i/4 high, subseq low, subseq high), key (seed low, seed high) */
    const uint64_t seed = 0x0123456789abcdefull, sub = 0xfedcba9876543210ull;
    const uint64_t is[] = {0, 1, 2, 3, 4, 7, 1000001, (1ull << 34) + 5, 0xffffffffffull};
    for (size_t k = 0; k < sizeof is / sizeof is[0]; k++) {
        uint64_t i = is[k];
        uint32_t ctr[4] = {(uint32_t)(i / 4), (uint32_t)((i / 4) >> 32), (uint32_t)sub, (uint32_t)(sub >> 32)};
        uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, out[4];
        mt_philox4x32(ctr, key, out);
        MT_EXPECT(mt_rng_u32(seed, sub, i) == out[i % 4], "element %llu", (unsigned long long)i);
    }
    MT_EXPECT(mt_rng_u32(0, 0, 0) == 0x6627e8d5u && mt_rng_u32(0, 0, 3) == 0x9b00dbd8u, "stream (0,0) starts with the KAT");
}

static void test_rng_moments(void) {
    const int n = 1000000;
    double s = 0, s2 = 0, mn = 1, mx = 0;
    int non_grid = 0;
    for (int i = 0; i < n; i++) {
        float u = mt_rng_uniform(42, 7, (uint64_t)i);
        s += u; s2 += (double)u * u;
        if (u < mn) mn = u;
        if (u > mx) mx = u;
        float sc = u * 16777216.0f;
        if (sc != floorf(sc)) non_grid++;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    MT_EXPECT(mn >= 0 && mx < 1 && mn < 1e-4 && mx > 1 - 1e-4, "uniform range [%g, %g]", mn, mx);
    MT_EXPECT(fabs(mean - 0.5) < 3e-3, "uniform mean %.6f", mean);       /* std error 2.9e-4 */
    MT_EXPECT(fabs(var - 1.0 / 12) < 1e-3, "uniform var %.6f", var);
    MT_EXPECT(non_grid == 0, "%d uniforms are not multiples of 2^-24", non_grid);
    printf("    uniform: mean %.6f var %.6f (1/12 = %.6f)\n", mean, var, 1.0 / 12);

    double z1 = 0, z2 = 0, z4 = 0;
    int nonfinite = 0, beyond = 0;
    for (int i = 0; i < n; i++) {
        double z = mt_rng_normal(1234, 0, (uint64_t)i);
        if (!isfinite(z)) nonfinite++;
        if (fabs(z) > 1.959964) beyond++;
        z1 += z; z2 += z * z; z4 += z * z * z * z;
    }
    double m1 = z1 / n, m2 = z2 / n - m1 * m1, k4 = z4 / n;
    MT_EXPECT(nonfinite == 0, "%d non-finite normals", nonfinite);
    MT_EXPECT(fabs(m1) < 5e-3, "normal mean %.6f", m1);                  /* std error 1e-3 */
    MT_EXPECT(fabs(m2 - 1) < 1e-2, "normal var %.6f", m2);               /* std error 1.4e-3 */
    MT_EXPECT(fabs(k4 - 3) < 0.05, "normal 4th moment %.4f", k4);        /* std error 1e-2 */
    MT_EXPECT(fabs((double)beyond / n - 0.05) < 2e-3, "P(|z| > 1.96) = %.5f", (double)beyond / n);
    printf("    normal: mean %.6f var %.6f kurtosis %.4f\n", m1, m2, k4);
}

static void test_rng_determinism(void) {
    int same = 0, diff_sub = 0, diff_seed = 0, diff_i = 0;
    for (uint64_t i = 0; i < 1000; i++) {
        uint32_t a = mt_rng_u32(99, 3, i);
        same += a == mt_rng_u32(99, 3, i);
        diff_sub += a != mt_rng_u32(99, 4, i);
        diff_seed += a != mt_rng_u32(100, 3, i);
        diff_i += a != mt_rng_u32(99, 3, i + 1);
    }
    MT_EXPECT(same == 1000, "same seed/subseq/offset gives the same number (%d of 1000)", same);
    MT_EXPECT(diff_sub >= 998 && diff_seed >= 998 && diff_i >= 998, "streams differ: %d %d %d", diff_sub,
              diff_seed, diff_i);
    MT_EXPECT(mt_rng_uniform(5, 6, 7) == mt_rng_uniform(5, 6, 7) && mt_rng_normal(5, 6, 7) == mt_rng_normal(5, 6, 7),
              "uniform and normal are pure functions");
    MT_EXPECT(mt_rng_normal(5, 6, 7) != mt_rng_normal(5, 7, 7), "normal differs across subsequences");
    /* high bits of the seed and subsequence matter */
    MT_EXPECT(mt_rng_u32(1ull << 40, 0, 0) != mt_rng_u32(0, 0, 0), "seed high word used");
    MT_EXPECT(mt_rng_u32(0, 1ull << 40, 0) != mt_rng_u32(0, 0, 0), "subsequence high word used");
    MT_EXPECT(mt_rng_u32(0, 0, 1ull << 36) != mt_rng_u32(0, 0, 0), "offset high word used");
    /* bit balance of the raw stream */
    long ones = 0;
    for (uint64_t i = 0; i < 100000; i++) ones += __builtin_popcount(mt_rng_u32(7, 0, i));
    double frac = ones / (32.0 * 100000);
    MT_EXPECT(fabs(frac - 0.5) < 2e-3, "fraction of one bits %.5f", frac);
}

/* ------------------------------------------------------------------ LR schedule */

static void test_lr_schedule(void) {
    const double mx = 6e-4, mn = 6e-5;
    /* warmup: linear, reaching lr_max at the last warmup iteration */
    MT_EXPECT_REL(mt_lr_at(0, 10, 100, mx, mn, "cosine"), mx / 10, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(4, 10, 100, mx, mn, "cosine"), mx * 5 / 10, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(9, 10, 100, mx, mn, "cosine"), mx, 1e-12, 1e-30);
    /* cosine: lr_max at the end of warmup, the mean at the midpoint, lr_min at decay_iters and after */
    MT_EXPECT_REL(mt_lr_at(10, 10, 100, mx, mn, "cosine"), mx, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(55, 10, 100, mx, mn, "cosine"), (mx + mn) / 2, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(100, 10, 100, mx, mn, "cosine"), mn, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(500, 10, 100, mx, mn, "cosine"), mn, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(32, 10, 100, mx, mn, "cosine"),
                  mn + 0.5 * (1 + cos(3.141592653589793 * 22 / 90.0)) * (mx - mn), 1e-12, 1e-30);
    /* monotone decrease after warmup */
    int nonmono = 0;
    for (int it = 10; it < 100; it++)
        nonmono += mt_lr_at(it + 1, 10, 100, mx, mn, "cosine") > mt_lr_at(it, 10, 100, mx, mn, "cosine");
    MT_EXPECT(nonmono == 0, "%d increases in the cosine decay", nonmono);
    /* NULL style means cosine */
    MT_EXPECT_REL(mt_lr_at(55, 10, 100, mx, mn, NULL), (mx + mn) / 2, 1e-12, 1e-30);
    /* linear */
    MT_EXPECT_REL(mt_lr_at(10, 10, 110, mx, mn, "linear"), mx, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(35, 10, 110, mx, mn, "linear"), mx - 0.25 * (mx - mn), 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(60, 10, 110, mx, mn, "linear"), (mx + mn) / 2, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(110, 10, 110, mx, mn, "linear"), mn, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(3, 10, 110, mx, mn, "linear"), mx * 4 / 10, 1e-12, 1e-30);
    /* constant: lr_max after warmup, also past decay_iters */
    MT_EXPECT_REL(mt_lr_at(50, 10, 100, mx, mn, "constant"), mx, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(1000, 10, 100, mx, mn, "constant"), mx, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(1, 4, 100, mx, mn, "constant"), mx / 2, 1e-12, 1e-30);
    /* no warmup */
    MT_EXPECT_REL(mt_lr_at(0, 0, 100, mx, mn, "cosine"), mx, 1e-12, 1e-30);
    MT_EXPECT_REL(mt_lr_at(50, 0, 100, mx, mn, "cosine"), (mx + mn) / 2, 1e-12, 1e-30);
    /* decay_iters == warmup: no division by zero, lr_min after warmup */
    double l = mt_lr_at(10, 10, 10, mx, mn, "cosine");
    MT_EXPECT(isfinite(l) && l == mn, "degenerate schedule gives %g", l);
}

int main(void) {
    build_tables();
    MT_RUN(test_status_str);
    MT_RUN(test_dtypes);
    MT_RUN(test_f16_to_f32_exhaustive);
    MT_RUN(test_roundtrip_exhaustive);
    MT_RUN(test_conversion_edges);
    MT_RUN(test_conversion_random);
    MT_RUN(test_tensor_make);
    MT_RUN(test_tensor_views);
    MT_RUN(test_arena);
    MT_RUN(test_philox_kat);
    MT_RUN(test_rng_moments);
    MT_RUN(test_rng_determinism);
    MT_RUN(test_lr_schedule);
    return mt_test_summary("test_core");
}
