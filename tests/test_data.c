/* tests/test_data.c — mt/data.h: Megatron .bin/.idx files, llm.c files, GPT indices, blending,
 * splits, the index cache and the loader.
 *
 * Expected values in tests/fixtures/megatron_ref.h come from running megatron-core's own code
 * (its compiled helpers and its numpy index builders; see tests/fixtures/megatron_ref.py). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <string.h>

/* Capture error messages to check that they name the file and the field. */
static char g_last_error[2048];
static int g_errors, g_quiet = 1;
static void test_log(int level, const char *msg) {
    if (level >= 3) {
        snprintf(g_last_error, sizeof g_last_error, "%s", msg);
        g_errors++;
    }
    if (!g_quiet || level >= 3) {
        if (!g_quiet) fprintf(stderr, "  log[%d]: %s\n", level, msg);
    }
}
#define MT_LOG_FN(level, msg) test_log(level, msg)
#define MT_DATA_FSYNC 0 /* renames stay atomic; skip the slow fsyncs in tests */

#include "mt/data.h"
#include "mt_test.h"
#include "mt_test_files.h"
#include "fixtures/megatron_ref.h"

static char g_tmp[256];

static void path_of(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_tmp, name); }




static uint64_t cs64(const int64_t *a, int64_t n) {
    uint64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += (uint64_t)a[i] * (uint64_t)(2 * i + 1);
    return s;
}
static uint64_t cs32(const int32_t *a, int64_t n) {
    uint64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += (uint64_t)(int64_t)a[i] * (uint64_t)(2 * i + 1);
    return s;
}

/* Write a dataset with our writer: documents of the given lengths (one sequence each), token t of
 * document d = (d * 1000 + t) % mod. */
static mt_status write_docs(const char *prefix, int dtype, const int *lengths, int n, int mod) {
    mt_indexed_writer w;
    MT_TRY(mt_indexed_writer_open(&w, prefix, dtype));
    for (int d = 0; d < n; d++) {
        int32_t *tok = (int32_t *)malloc(sizeof(int32_t) * (size_t)(lengths[d] + 1));
        int64_t len = lengths[d];
        for (int t = 0; t < lengths[d]; t++) tok[t] = (d * 1000 + t) % mod;
        mt_status s = mt_indexed_writer_add_document(&w, tok, &len, 1);
        free(tok);
        if (s != MT_OK) { mt_indexed_writer_abort(&w); return s; }
    }
    return mt_indexed_writer_finish(&w);
}

/* ------------------------------------------------------------------ numpy RandomState */

static void test_np_random(void) {
    mt_np_random r;
    mt_np_random_seed(&r, 1234);
    for (int i = 0; i < 6; i++) {
        uint32_t v = mt_np_random_next32(&r);
        MT_EXPECT(v == np_raw_1234[i], "draw %d: %u vs numpy %u", i, v, np_raw_1234[i]);
    }
    mt_np_random_seed(&r, 5);
    for (int i = 0; i < 4; i++) {
        uint64_t v = mt_np_random_interval(&r, (uint64_t)1 << 40);
        MT_EXPECT(v == np_iv40_5[i], "64-bit interval %d: %llu vs numpy %llu", i, (unsigned long long)v,
                  (unsigned long long)np_iv40_5[i]);
    }
    int32_t x[10];
    for (int i = 0; i < 10; i++) x[i] = i;
    mt_np_random_seed(&r, 1234);
    mt_np_random_shuffle_i32(&r, x, 10);
    MT_EXPECT(memcmp(x, np_shuffle10_1234, sizeof x) == 0, "shuffle of arange(10) differs from numpy");
    int64_t *y = (int64_t *)malloc(sizeof(int64_t) * 100000);
    for (int i = 0; i < 100000; i++) y[i] = i;
    mt_np_random_seed(&r, 42);
    mt_np_random_shuffle_i64(&r, y, 100000);
    MT_EXPECT(cs64(y, 100000) == NP_SHUFFLE100K_42_CS, "shuffle of arange(100000) checksum %llu vs numpy %llu",
              (unsigned long long)cs64(y, 100000), (unsigned long long)NP_SHUFFLE100K_42_CS);
    free(y);
}

static void test_normalize_and_split(void) {
    double w[20], out[20];
    for (int i = 0; i < 20; i++) w[i] = (double)(i % 7 + 1) / 3.0;
    mt_normalize_weights(w, 20, out);
    for (int i = 0; i < 20; i++) MT_EXPECT(out[i] == norm20[i], "normalised weight %d: %a vs numpy %a", i, out[i], norm20[i]);
    double a[2] = {0.3, 0.7}, b[3] = {1.0, 2.5, 0.25}, o1[3], o2[3];
    mt_normalize_weights(a, 2, o1);
    mt_normalize_weights(o1, 2, o2);
    for (int i = 0; i < 2; i++) MT_EXPECT(o1[i] == b37_w1[i] && o2[i] == b37_w2[i], "0.3/0.7 weight %d", i);
    mt_normalize_weights(b, 3, o1);
    mt_normalize_weights(o1, 3, o2);
    for (int i = 0; i < 3; i++) MT_EXPECT(o1[i] == b3_w1[i] && o2[i] == b3_w2[i], "1/2.5/0.25 weight %d", i);
    for (size_t k = 0; k < sizeof split_cases / sizeof split_cases[0]; k++) {
        int64_t lo = -1, hi = -1;
        mt_status s = mt_split_range(split_cases[k].split, split_cases[k].idx, split_cases[k].n, &lo, &hi);
        MT_EXPECT(s == MT_OK && lo == split_cases[k].b && hi == split_cases[k].e,
                  "--split \"%s\" part %d of %lld: [%lld, %lld) vs Megatron [%lld, %lld)", split_cases[k].split,
                  split_cases[k].idx, (long long)split_cases[k].n, (long long)lo, (long long)hi,
                  (long long)split_cases[k].b, (long long)split_cases[k].e);
    }
    int64_t lo, hi;
    MT_EXPECT(mt_split_range("abc", 0, 10, &lo, &hi) == MT_ERR_ARG, "a split without numbers is an error");
    MT_EXPECT(mt_split_range("1,2,3,4", 0, 10, &lo, &hi) == MT_ERR_ARG, "four parts are an error");
    MT_EXPECT(mt_split_range("0,0,0", 0, 10, &lo, &hi) == MT_ERR_ARG, "all-zero split is an error");
}

/* ------------------------------------------------------------------ GPT indices = Megatron's */

static void check_gpt_case(const char *name, const int *lengths, int nlen, int64_t beg, int64_t end, int seq_len,
                           int64_t num_samples, uint64_t seed, const int32_t *doc, int64_t ndoc, const int64_t *sample,
                           int64_t nsample2, const int64_t *shuf, int64_t nshuf, int epochs, int separate) {
    char prefix[600];
    mt_indexed ds;
    mt_gpt_index gi;
    mt_gpt_index_config c;
    path_of(prefix, sizeof prefix, name);
    MT_EXPECT(write_docs(prefix, MT_IDX_U16, lengths, nlen, 65536) == MT_OK, "%s: write", name);
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK, "%s: open", name);
    memset(&c, 0, sizeof c);
    c.doc_begin = beg; c.doc_end = end; c.seq_len = seq_len; c.num_samples = num_samples; c.seed = seed; c.no_cache = 1;
    MT_EXPECT(mt_gpt_index_build(&gi, &ds, &c) == MT_OK, "%s: build", name);
    MT_EXPECT(gi.num_epochs == epochs && gi.separate_final_epoch == separate, "%s: epochs %lld separate %d vs Megatron %d %d",
              name, (long long)gi.num_epochs, gi.separate_final_epoch, epochs, separate);
    MT_EXPECT(gi.n_doc_index == ndoc && 2 * (gi.n_samples + 1) == nsample2 && gi.n_samples == nshuf,
              "%s: sizes %lld %lld vs %lld %lld", name, (long long)gi.n_doc_index, (long long)gi.n_samples, (long long)ndoc,
              (long long)nshuf);
    if (gi.n_doc_index == ndoc && gi.n_samples == nshuf) {
        MT_EXPECT(memcmp(gi.doc_index, doc, sizeof(int32_t) * (size_t)ndoc) == 0, "%s: document index differs", name);
        MT_EXPECT(memcmp(gi.sample_index, sample, sizeof(int64_t) * (size_t)nsample2) == 0, "%s: sample index differs", name);
        MT_EXPECT(memcmp(gi.shuffle_index, shuf, sizeof(int64_t) * (size_t)nshuf) == 0, "%s: shuffle index differs", name);
    }
    mt_gpt_index_free(&gi);
    mt_indexed_close(&ds);
}

#define N_OF(a) ((int64_t)(sizeof(a) / sizeof((a)[0])))

static void test_gpt_index_matches_megatron(void) {
    static const int small[6] = {5, 3, 0, 7, 4, 6};
    check_gpt_case("g_sep", small, 6, 0, 6, 4, 20, 1234, g_sep_doc, N_OF(g_sep_doc), g_sep_sample, N_OF(g_sep_sample),
                   g_sep_shuf, N_OF(g_sep_shuf), G_SEP_EPOCHS, G_SEP_SEPARATE);
    check_gpt_case("g_one", small, 6, 0, 6, 4, 0, 1234, g_one_doc, N_OF(g_one_doc), g_one_sample, N_OF(g_one_sample),
                   g_one_shuf, N_OF(g_one_shuf), G_ONE_EPOCHS, G_ONE_SEPARATE);
    check_gpt_case("g_s0", small, 6, 1, 6, 3, 9, 0, g_s0_doc, N_OF(g_s0_doc), g_s0_sample, N_OF(g_s0_sample), g_s0_shuf,
                   N_OF(g_s0_shuf), G_S0_EPOCHS, G_S0_SEPARATE);
    check_gpt_case("g_smax", small, 6, 0, 5, 2, 30, 4294967295ull, g_smax_doc, N_OF(g_smax_doc), g_smax_sample,
                   N_OF(g_smax_sample), g_smax_shuf, N_OF(g_smax_shuf), G_SMAX_EPOCHS, G_SMAX_SEPARATE);

    /* 300 documents, split [10, 290), multi-epoch with and without a separate last epoch */
    int big[300];
    for (int i = 0; i < 300; i++) big[i] = (i * 7919 + 13) % 211;
    char prefix[600];
    mt_indexed ds;
    path_of(prefix, sizeof prefix, "g_big");
    MT_EXPECT(write_docs(prefix, MT_IDX_U16, big, 300, 65536) == MT_OK, "write big");
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK, "open big");
    struct { const char *name; int64_t n, epochs, separate, nsamples; uint64_t cdoc, csample, cshuf; } bigs[] = {
#define BIGCASE(C) {#C, G_##C##_N, G_##C##_EPOCHS, G_##C##_SEPARATE, G_##C##_NSAMPLES, G_##C##_CS_DOC, G_##C##_CS_SAMPLE, G_##C##_CS_SHUF},
        G_BIGCASES(BIGCASE)
#undef BIGCASE
    };
    for (size_t k = 0; k < sizeof bigs / sizeof bigs[0]; k++) {
        mt_gpt_index gi;
        mt_gpt_index_config c;
        memset(&c, 0, sizeof c);
        c.doc_begin = 10; c.doc_end = 290; c.seq_len = 32; c.seed = 1234; c.no_cache = 1;
        c.num_samples = bigs[k].n;
        MT_EXPECT(mt_gpt_index_build(&gi, &ds, &c) == MT_OK, "build %s", bigs[k].name);
        MT_EXPECT(gi.num_epochs == bigs[k].epochs && gi.separate_final_epoch == bigs[k].separate && gi.n_samples == bigs[k].nsamples,
                  "%s: epochs %lld separate %d samples %lld", bigs[k].name, (long long)gi.num_epochs, gi.separate_final_epoch,
                  (long long)gi.n_samples);
        MT_EXPECT(cs32(gi.doc_index, gi.n_doc_index) == bigs[k].cdoc, "%s: document index checksum", bigs[k].name);
        MT_EXPECT(cs64(gi.sample_index, 2 * (gi.n_samples + 1)) == bigs[k].csample, "%s: sample index checksum", bigs[k].name);
        MT_EXPECT(cs64(gi.shuffle_index, gi.n_samples) == bigs[k].cshuf, "%s: shuffle index checksum", bigs[k].name);
        mt_gpt_index_free(&gi);
    }
    mt_indexed_close(&ds);
}

/* Sample boundaries and epochs, checked from the definitions rather than from reference values. */
static void test_sample_boundaries_and_epochs(void) {
    int lens[40];
    for (int i = 0; i < 40; i++) lens[i] = i % 9 == 4 ? 0 : 1 + (i * 37) % 23; /* some empty documents */
    char prefix[600];
    mt_indexed ds;
    path_of(prefix, sizeof prefix, "bounds");
    MT_EXPECT(write_docs(prefix, MT_IDX_I32, lens, 40, 1 << 30) == MT_OK, "write");
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK, "open");
    int64_t tokens = 0;
    for (int i = 5; i < 35; i++) tokens += lens[i];
    const int seq_len = 7;
    int64_t want = (3 * tokens) / seq_len - 2; /* needs 3 epochs */
    mt_gpt_index gi;
    mt_gpt_index_config c;
    memset(&c, 0, sizeof c);
    c.doc_begin = 5; c.doc_end = 35; c.seq_len = seq_len; c.num_samples = want; c.seed = 99; c.no_cache = 1;
    MT_EXPECT(mt_gpt_index_build(&gi, &ds, &c) == MT_OK, "build");
    MT_EXPECT(gi.num_epochs == 3, "epochs %lld, expected 3", (long long)gi.num_epochs);
    MT_EXPECT(gi.n_samples >= want && gi.n_samples == (3 * tokens - 1) / seq_len, "samples %lld", (long long)gi.n_samples);
    /* every document of the split appears exactly once per epoch */
    int count[40] = {0};
    for (int64_t i = 0; i < gi.n_doc_index; i++) {
        int d = gi.doc_index[i];
        MT_EXPECT(d >= 5 && d < 35, "document %d outside the split", d);
        if (d >= 5 && d < 35) count[d]++;
    }
    for (int d = 5; d < 35; d++) MT_EXPECT(count[d] == 3, "document %d appears %d times", d, count[d]);
    if (gi.separate_final_epoch) { /* the last epoch is a permutation of the documents on its own */
        int last[40] = {0};
        for (int64_t i = 2 * 30; i < 3 * 30; i++) last[gi.doc_index[i]]++;
        for (int d = 5; d < 35; d++) MT_EXPECT(last[d] == 1, "last epoch holds document %d %d times", d, last[d]);
    }
    /* the shuffle index is a permutation */
    char *seen = (char *)calloc((size_t)gi.n_samples, 1);
    for (int64_t i = 0; i < gi.n_samples; i++) {
        int64_t k = gi.shuffle_index[i];
        MT_EXPECT(k >= 0 && k < gi.n_samples && !seen[k], "shuffle index %lld = %lld", (long long)i, (long long)k);
        if (k >= 0 && k < gi.n_samples) seen[k] = 1;
    }
    free(seen);
    /* unshuffled samples: seq_len + 1 tokens, consecutive samples share one token, and together
     * they are the document-index token stream */
    int64_t *identity = (int64_t *)malloc(sizeof(int64_t) * (size_t)gi.n_samples);
    int64_t *saved = gi.shuffle_index;
    for (int64_t i = 0; i < gi.n_samples; i++) identity[i] = i;
    gi.shuffle_index = identity;
    int32_t *stream = (int32_t *)malloc(sizeof(int32_t) * (size_t)(3 * tokens));
    int64_t ns = 0;
    for (int64_t i = 0; i < gi.n_doc_index; i++) {
        int d = gi.doc_index[i];
        for (int t = 0; t < lens[d]; t++) stream[ns++] = d * 1000 + t;
    }
    int32_t prev[8], cur[8];
    int bad = 0;
    for (int64_t i = 0; i < gi.n_samples; i++) {
        mt_status s = mt_gpt_index_sample(&gi, &ds, i, seq_len, cur);
        if (s != MT_OK) { bad++; break; }
        if (i > 0 && cur[0] != prev[seq_len]) bad++;
        for (int t = 0; t <= seq_len; t++)
            if (cur[t] != stream[i * seq_len + t]) bad++;
        memcpy(prev, cur, sizeof cur);
    }
    MT_EXPECT(bad == 0, "%d sample tokens differ from the document stream", bad);
    gi.shuffle_index = saved;
    free(identity);
    free(stream);
    mt_gpt_index_free(&gi);
    /* one epoch when num_samples = 0; a split with < 2 tokens is an error */
    c.num_samples = 0;
    MT_EXPECT(mt_gpt_index_build(&gi, &ds, &c) == MT_OK && gi.num_epochs == 1 && gi.n_samples == (tokens - 1) / seq_len,
              "one epoch: %lld samples", (long long)gi.n_samples);
    mt_gpt_index_free(&gi);
    c.doc_begin = 4; c.doc_end = 5; /* document 4 is empty */
    MT_EXPECT(mt_gpt_index_build(&gi, &ds, &c) == MT_ERR_ARG, "an empty split is an error");
    mt_indexed_close(&ds);
}

/* ------------------------------------------------------------------ blending = Megatron's */

static void test_blend_matches_megatron(void) {
    mt_blend b;
    int src;
    int64_t j;
    uint64_t cdi = 0, cdsi = 0;
    int64_t counts[3] = {0, 0, 0};
    MT_EXPECT(mt_blend_init(&b, 2, b37_w2, NULL) == MT_OK, "init");
    for (int64_t i = 0; i < 10000; i++) {
        mt_blend_next(&b, &src, &j);
        if (i < 24) MT_EXPECT(src == b37_di_head[i], "0.3/0.7 sample %lld from source %d, Megatron %d", (long long)i, src, b37_di_head[i]);
        cdi += (uint64_t)src * (uint64_t)(2 * i + 1);
        cdsi += (uint64_t)j * (uint64_t)(2 * i + 1);
        counts[src]++;
    }
    MT_EXPECT(cdi == B37_CS_DI && cdsi == B37_CS_DSI, "0.3/0.7 blend checksums differ from Megatron's");
    MT_EXPECT(fabs(counts[0] / 10000.0 - 0.3) < 0.005 && fabs(counts[1] / 10000.0 - 0.7) < 0.005, "shares %lld %lld",
              (long long)counts[0], (long long)counts[1]);
    for (int i = 0; i < 2; i++)
        MT_EXPECT(mt_blend_source_size(10000, b37_w1[i]) == b37_src_size[i], "source %d size %lld vs %lld", i,
                  (long long)mt_blend_source_size(10000, b37_w1[i]), (long long)b37_src_size[i]);
    mt_blend_free(&b);

    MT_EXPECT(mt_blend_init(&b, 3, b3_w2, NULL) == MT_OK, "init 3");
    cdi = cdsi = 0;
    memset(counts, 0, sizeof counts);
    for (int64_t i = 0; i < 10000; i++) {
        mt_blend_next(&b, &src, &j);
        cdi += (uint64_t)src * (uint64_t)(2 * i + 1);
        cdsi += (uint64_t)j * (uint64_t)(2 * i + 1);
        counts[src]++;
    }
    MT_EXPECT(cdi == B3_CS_DI && cdsi == B3_CS_DSI, "3-way blend checksums differ from Megatron's");
    for (int i = 0; i < 3; i++)
        MT_EXPECT(fabs(counts[i] / 10000.0 - b3_w2[i]) < 0.005, "source %d share %.4f vs %.4f", i, counts[i] / 10000.0, b3_w2[i]);
    for (int i = 0; i < 3; i++) MT_EXPECT(mt_blend_source_size(10000, b3_w1[i]) == b3_src_size[i], "3-way source %d size", i);
    mt_blend_free(&b);

    int64_t sizes[3] = {37, 100, 5};
    MT_EXPECT(mt_blend_init(&b, 3, NULL, sizes) == MT_OK, "init exhaustive");
    cdsi = 0;
    int ok = 1;
    for (int64_t i = 0; i < 142; i++) {
        mt_blend_next(&b, &src, &j);
        if (src != bx_di[i]) ok = 0;
        cdsi += (uint64_t)j * (uint64_t)(2 * i + 1);
    }
    MT_EXPECT(ok && cdsi == BX_CS_DSI, "exhaustive blend differs from Megatron's");
    mt_blend_next(&b, &src, &j);
    MT_EXPECT(src == -1, "exhaustive blend ends after every sample");
    mt_blend_free(&b);
}

/* ------------------------------------------------------------------ files */

static void test_writer_bytes_match_megatron(void) {
    /* The documents Megatron's IndexedDatasetBuilder wrote: add_document([1,2,3]), add_document([]),
     * add_document([65535, 0]), add_item([7,8]), add_item([9]), end_document(). */
    const int dtypes[2] = {MT_IDX_U16, MT_IDX_I32};
    const unsigned char *want_bin[2] = {mw_u16_bin, mw_i32_bin}, *want_idx[2] = {mw_u16_idx, mw_i32_idx};
    const size_t nbin[2] = {sizeof mw_u16_bin, sizeof mw_i32_bin}, nidx[2] = {sizeof mw_u16_idx, sizeof mw_i32_idx};
    for (int k = 0; k < 2; k++) {
        char prefix[600], p[700];
        mt_indexed_writer w;
        int32_t d0[3] = {1, 2, 3}, d2[2] = {65535, 0}, s0[2] = {7, 8}, s1[1] = {9};
        int64_t l0 = 3, l2 = 2;
        path_of(prefix, sizeof prefix, k ? "mw_i32" : "mw_u16");
        MT_EXPECT(mt_indexed_writer_open(&w, prefix, dtypes[k]) == MT_OK, "open");
        MT_EXPECT(mt_indexed_writer_add_document(&w, d0, &l0, 1) == MT_OK, "doc 0");
        MT_EXPECT(mt_indexed_writer_add_document(&w, NULL, NULL, 0) == MT_OK, "empty doc");
        MT_EXPECT(mt_indexed_writer_add_document(&w, d2, &l2, 1) == MT_OK, "doc 2");
        MT_EXPECT(mt_indexed_writer_add_sequence(&w, s0, 2) == MT_OK && mt_indexed_writer_add_sequence(&w, s1, 1) == MT_OK &&
                      mt_indexed_writer_end_document(&w) == MT_OK, "doc 3");
        MT_EXPECT(mt_indexed_writer_finish(&w) == MT_OK, "finish");
        unsigned char *got;
        snprintf(p, sizeof p, "%s.bin", prefix);
        size_t n = read_bytes(p, &got);
        MT_EXPECT(n == nbin[k] && memcmp(got, want_bin[k], n) == 0, "%s .bin differs from Megatron's (%zu bytes)", prefix, n);
        free(got);
        snprintf(p, sizeof p, "%s.idx", prefix);
        n = read_bytes(p, &got);
        MT_EXPECT(n == nidx[k] && memcmp(got, want_idx[k], n) == 0, "%s .idx differs from Megatron's (%zu bytes)", prefix, n);
        free(got);
        /* and Megatron's bytes read back */
        mt_indexed ds;
        int32_t t[3];
        MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK && ds.n_seq == 4 && ds.n_doc == 5, "read back");
        MT_EXPECT(mt_indexed_doc_index(&ds, 1) == 1 && mt_indexed_doc_index(&ds, 2) == 1 && mt_indexed_doc_index(&ds, 4) == 4,
                  "document indices (with an empty document)");
        MT_EXPECT(mt_indexed_read(&ds, 1, 0, 2, t) == MT_OK && t[0] == 65535 && t[1] == 0, "sequence 1");
        MT_EXPECT(mt_indexed_read(&ds, 3, 0, 1, t) == MT_OK && t[0] == 9, "sequence 3");
        mt_indexed_close(&ds);
    }
    /* tokens that do not fit the dtype are refused, and nothing is left behind */
    char prefix[600];
    mt_indexed_writer w;
    int32_t big = 70000;
    path_of(prefix, sizeof prefix, "refused");
    MT_EXPECT(mt_indexed_writer_open(&w, prefix, MT_IDX_U16) == MT_OK, "open");
    MT_EXPECT(mt_indexed_writer_add_sequence(&w, &big, 1) == MT_ERR_ARG, "70000 does not fit u16");
    mt_indexed_writer_abort(&w);
    MT_EXPECT(count_files_in(g_tmp, "refused") == 0, "abort leaves no files");
}

/* Hand-built .idx/.bin bytes for every dtype code, following Megatron's layout field by field. */
static size_t put_u64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); return 8; }
static size_t put_u32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); return 4; }

static size_t put_token(unsigned char *p, int code, int32_t t) {
    switch (code) {
        case 1: p[0] = (unsigned char)t; return 1;
        case 2: p[0] = (unsigned char)(int8_t)t; return 1;
        case 3: case 8: p[0] = (unsigned char)(t & 255); p[1] = (unsigned char)((t >> 8) & 255); return 2;
        case 4: return put_u32(p, (uint32_t)t);
        case 5: return put_u64(p, (uint64_t)(int64_t)t);
        case 6: { double d = t; uint64_t u; memcpy(&u, &d, 8); return put_u64(p, u); }
        case 7: { float f = (float)t; uint32_t u; memcpy(&u, &f, 4); return put_u32(p, u); }
    }
    return 0;
}

static void test_handbuilt_fixtures_all_dtypes(void) {
    /* 3 documents: [ {seq 0: 4 tokens}, {} (empty), {seq 1: 0 tokens, seq 2: 3 tokens} ] */
    const int32_t toks_signed[7] = {1, -2, 100, 0, 7, -128, 127};
    const int32_t toks_unsigned[7] = {1, 2, 100, 0, 7, 128, 255};
    const int lens[3] = {4, 0, 3};
    for (int code = 1; code <= 8; code++) {
        for (int mm = 0; mm < 2; mm++) {
            unsigned char idx[256], bin[256];
            size_t ni = 0, nb = 0;
            int es = mt_idx_dtype_size(code);
            const int32_t *toks = (code == 1 || code == 8) ? toks_unsigned : toks_signed;
            memcpy(idx, "MMIDIDX\0\0", 9); ni = 9;
            ni += put_u64(idx + ni, 1);
            idx[ni++] = (unsigned char)code;
            ni += put_u64(idx + ni, 3); /* sequences */
            ni += put_u64(idx + ni, 4); /* document indices */
            for (int s = 0; s < 3; s++) ni += put_u32(idx + ni, (uint32_t)lens[s]);
            int64_t ptr = 0;
            for (int s = 0; s < 3; s++) { ni += put_u64(idx + ni, (uint64_t)ptr); ptr += lens[s] * es; }
            ni += put_u64(idx + ni, 0);
            ni += put_u64(idx + ni, 1);
            ni += put_u64(idx + ni, 1);
            ni += put_u64(idx + ni, 3);
            if (mm) for (int s = 0; s < 3; s++) idx[ni++] = 0; /* multimodal modes */
            for (int t = 0; t < 7; t++) nb += put_token(bin + nb, code, toks[t]);
            char prefix[600], p[700], nm[32];
            snprintf(nm, sizeof nm, "hand_%d_%d", code, mm);
            path_of(prefix, sizeof prefix, nm);
            snprintf(p, sizeof p, "%s.idx", prefix);
            write_bytes(p, idx, ni);
            snprintf(p, sizeof p, "%s.bin", prefix);
            write_bytes(p, bin, nb);
            mt_indexed ds;
            int32_t out[8];
            MT_EXPECT(mt_indexed_open(&ds, p /* the .bin name works too */) == MT_OK, "dtype %d: open", code);
            MT_EXPECT(ds.dtype_code == code && ds.n_seq == 3 && ds.n_doc == 4 && ds.multimodal == mm, "dtype %d: header", code);
            MT_EXPECT(mt_indexed_seq_len(&ds, 1) == 0, "dtype %d: empty sequence", code);
            MT_EXPECT(mt_indexed_read(&ds, 0, 0, 4, out) == MT_OK && mt_indexed_read(&ds, 2, 0, 3, out + 4) == MT_OK,
                      "dtype %d: read", code);
            MT_EXPECT(memcmp(out, toks, sizeof(int32_t) * 7) == 0, "dtype %d (%s): tokens %d %d %d %d %d %d %d", code,
                      mt_idx_dtype_name(code), out[0], out[1], out[2], out[3], out[4], out[5], out[6]);
            MT_EXPECT(mt_indexed_read(&ds, 2, 1, 1, out) == MT_OK && out[0] == toks[5], "dtype %d: offset read", code);
            MT_EXPECT(mt_indexed_read(&ds, 2, 1, 3, out) == MT_ERR_ARG, "dtype %d: read past a sequence is refused", code);
            mt_indexed_close(&ds);
        }
    }
}

static void test_roundtrip_every_dtype(void) {
    for (int code = 1; code <= 8; code++) {
        char prefix[600];
        char name[32];
        snprintf(name, sizeof name, "rt_%d", code);
        path_of(prefix, sizeof prefix, name);
        int lens[25];
        for (int i = 0; i < 25; i++) lens[i] = (i * 13) % 11; /* includes empty documents */
        int mod = code <= 2 ? 100 : code == 3 ? 30000 : 60000;
        MT_EXPECT(write_docs(prefix, code, lens, 25, mod) == MT_OK, "write dtype %d", code);
        mt_indexed ds;
        MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK && ds.n_seq == 25 && ds.n_doc == 26, "open dtype %d", code);
        int bad = 0;
        for (int d = 0; d < 25 && ds.n_seq == 25; d++) {
            int32_t out[16];
            if (mt_indexed_seq_len(&ds, d) != lens[d] || mt_indexed_read(&ds, d, 0, lens[d], out) != MT_OK) { bad++; continue; }
            for (int t = 0; t < lens[d]; t++) bad += out[t] != (d * 1000 + t) % mod;
        }
        MT_EXPECT(bad == 0, "dtype %d: %d tokens differ after the round trip", code, bad);
        mt_indexed_close(&ds);
    }
    /* rewriting over an existing dataset replaces it whole */
    char prefix[600];
    int lens2[2] = {3, 4};
    path_of(prefix, sizeof prefix, "rt_4");
    MT_EXPECT(write_docs(prefix, MT_IDX_I32, lens2, 2, 1000000) == MT_OK, "rewrite");
    mt_indexed ds;
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK && ds.n_seq == 2, "rewritten dataset has 2 sequences");
    mt_indexed_close(&ds);
    MT_EXPECT(count_files_in(g_tmp, ".tmp") == 0, "no temporary files are left behind");
}

static void test_llmc_files(void) {
    char path[600];
    path_of(path, sizeof path, "llmc_train.bin");
    const int n = 3000;
    unsigned char *buf = (unsigned char *)calloc(1, 1024 + 2 * n);
    int32_t hdr[3] = {20240520, 1, n};
    memcpy(buf, hdr, sizeof hdr);
    for (int i = 0; i < n; i++) { uint16_t t = (uint16_t)((i * 31) % 50257); memcpy(buf + 1024 + 2 * i, &t, 2); }
    write_bytes(path, buf, 1024 + 2 * n);
    mt_indexed ds;
    MT_EXPECT(mt_indexed_open(&ds, path) == MT_OK, "open llm.c file");
    MT_EXPECT(ds.kind == MT_INDEXED_LLMC && ds.n_seq == 1 && mt_indexed_seq_len(&ds, 0) == n, "one sequence of %d tokens", n);
    int32_t out[5];
    MT_EXPECT(mt_indexed_read(&ds, 0, 100, 5, out) == MT_OK && out[0] == (100 * 31) % 50257 && out[4] == (104 * 31) % 50257,
              "llm.c tokens");
    mt_indexed_close(&ds);
    /* the loader reads it as a single-document stream */
    mt_loader_config cfg;
    memset(&cfg, 0, sizeof cfg);
    const char *paths[1] = {path};
    cfg.paths = paths; cfg.n_paths = 1; cfg.split = "100,0,0"; cfg.seq_len = 64; cfg.micro_batch = 2;
    cfg.num_samples = 40; cfg.seed = 1234; cfg.no_cache = 1;
    mt_loader ld;
    int32_t tok[2 * 65];
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK, "loader over an llm.c file");
    MT_EXPECT(mt_loader_next(&ld, tok) == MT_OK, "next");
    int ok = 1;
    for (int b = 0; b < 2; b++)
        for (int t = 1; t < 65; t++) { /* consecutive tokens of the stream */
            int prev = tok[b * 65 + t - 1], cur = tok[b * 65 + t];
            if (cur != (prev + 31) % 50257) ok = 0;
        }
    MT_EXPECT(ok, "llm.c samples are contiguous runs of the token stream");
    mt_loader_close(&ld);
    /* a wrong size is an error naming the field */
    write_bytes(path, buf, 1024 + 2 * n - 1);
    MT_EXPECT(mt_indexed_open(&ds, path) == MT_ERR_FORMAT && strstr(g_last_error, "llmc_train.bin") &&
                  strstr(g_last_error, "token count"), "truncated llm.c file: %s", g_last_error);
    hdr[1] = 2;
    memcpy(buf, hdr, sizeof hdr);
    write_bytes(path, buf, 1024 + 2 * n);
    MT_EXPECT(mt_indexed_open(&ds, path) == MT_ERR_FORMAT && strstr(g_last_error, "version"), "llm.c version 2: %s", g_last_error);
    free(buf);
}

/* Each corruption gives MT_ERR_FORMAT with a message naming the file and the field. */
static void test_validation_messages(void) {
    char prefix[600], pidx[700], pbin[700];
    int lens[4] = {3, 0, 5, 2};
    path_of(prefix, sizeof prefix, "val");
    snprintf(pidx, sizeof pidx, "%s.idx", prefix);
    snprintf(pbin, sizeof pbin, "%s.bin", prefix);
    MT_EXPECT(write_docs(prefix, MT_IDX_U16, lens, 4, 60000) == MT_OK, "write");
    unsigned char *idx, *bin;
    size_t ni = read_bytes(pidx, &idx), nb = read_bytes(pbin, &bin);
    /* layout: header 34, lengths 4*4 at 34, pointers 4*8 at 50, documents 5*8 at 82, size 122 */
    MT_EXPECT(ni == 122, "idx size %zu", ni);
    struct { const char *what; size_t off; int nbytes; uint64_t value; size_t truncate; const char *field; } cases[] = {
        {"truncated header", 0, 0, 0, 20, "truncated"},
        {"wrong magic", 0, 1, 'X', 0, "magic"},
        {"bad version", 9, 8, 2, 0, "version"},
        {"bad dtype code", 17, 1, 9, 0, "dtype code"},
        {"dtype code 0", 17, 1, 0, 0, "dtype code"},
        {"sequence count overflow", 18, 8, 0x4000000000000000ull, 0, "sequence count"},
        {"sequence count too large", 18, 8, 5, 0, "document count"},
        {"document count overflow", 26, 8, 0xffffffffffffffffull, 0, "document count"},
        {"truncated body", 0, 0, 0, 100, "document count"},
        {"negative length", 34 + 4, 4, 0xffffffffull, 0, "sequence_lengths[1]"},
        {"length past the .bin", 34 + 8, 4, 1000, 0, "sequence_pointers[2]"},
        {"length that overflows", 34 + 8, 4, 0x7fffffff, 0, "sequence_pointers[2]"},
        {"pointer past the .bin", 50 + 24, 8, 4096, 0, "sequence_pointers[3]"},
        {"negative pointer", 50 + 8, 8, 0xfffffffffffffff0ull, 0, "sequence_pointers[1]"},
        {"huge pointer", 50 + 8, 8, 0x7ffffffffffffff0ull, 0, "sequence_pointers[1]"},
        {"first document index", 82, 8, 1, 0, "document_indices[0]"},
        {"documents not monotone", 82 + 16, 8, 0, 0, "not monotone"},
        {"document past the sequences", 82 + 24, 8, 9, 0, "document_indices[3]"},
        {"last document index", 82 + 32, 8, 3, 0, "document_indices[4]"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        unsigned char *m = (unsigned char *)malloc(ni);
        memcpy(m, idx, ni);
        for (int b = 0; b < cases[k].nbytes; b++) m[cases[k].off + (size_t)b] = (unsigned char)(cases[k].value >> (8 * b));
        write_bytes(pidx, m, cases[k].truncate ? cases[k].truncate : ni);
        free(m);
        mt_indexed ds;
        g_last_error[0] = 0;
        mt_status s = mt_indexed_open(&ds, prefix);
        MT_EXPECT(s == MT_ERR_FORMAT, "%s: status %s", cases[k].what, mt_status_str(s));
        MT_EXPECT(strstr(g_last_error, "val.idx") && strstr(g_last_error, cases[k].field), "%s: message \"%s\" lacks \"%s\"",
                  cases[k].what, g_last_error, cases[k].field);
    }
    write_bytes(pidx, idx, ni);
    write_bytes(pbin, bin, nb - 1); /* .bin one byte short */
    mt_indexed ds;
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_ERR_FORMAT && strstr(g_last_error, "val.bin"), "short .bin: %s", g_last_error);
    unlink(pbin);
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_ERR_IO && strstr(g_last_error, "val.bin"), "missing .bin: %s", g_last_error);
    free(idx);
    free(bin);
}

/* ------------------------------------------------------------------ cache */

static void test_index_cache(void) {
    int lens[50];
    for (int i = 0; i < 50; i++) lens[i] = 3 + (i * 17) % 29;
    char prefix[600];
    path_of(prefix, sizeof prefix, "cached");
    MT_EXPECT(write_docs(prefix, MT_IDX_U16, lens, 50, 60000) == MT_OK, "write");
    mt_indexed ds;
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK, "open");
    mt_gpt_index_config c;
    memset(&c, 0, sizeof c);
    c.doc_begin = 0; c.doc_end = 47; c.seq_len = 16; c.num_samples = 200; c.seed = 1234;
    mt_gpt_index a, b, ref;
    MT_EXPECT(mt_gpt_index_open(&a, &ds, &c) == MT_OK && !a.from_cache, "first open builds");
    MT_EXPECT(count_files_in(g_tmp, "cached-") == 1, "one cache file next to the data");
    MT_EXPECT(mt_gpt_index_open(&b, &ds, &c) == MT_OK && b.from_cache, "second open reads the cache");
    c.no_cache = 1;
    MT_EXPECT(mt_gpt_index_build(&ref, &ds, &c) == MT_OK, "reference build");
    c.no_cache = 0;
    MT_EXPECT(b.n_samples == ref.n_samples && b.n_doc_index == ref.n_doc_index &&
                  memcmp(b.doc_index, ref.doc_index, 4 * (size_t)ref.n_doc_index) == 0 &&
                  memcmp(b.sample_index, ref.sample_index, 16 * (size_t)(ref.n_samples + 1)) == 0 &&
                  memcmp(b.shuffle_index, ref.shuffle_index, 8 * (size_t)ref.n_samples) == 0,
              "cached indices equal the built ones");
    mt_gpt_index_free(&a);
    mt_gpt_index_free(&b);
    /* corrupt one byte of the payload: rebuilt, rewritten, then read again */
    char cpath[700];
    char *cp = NULL;
    MT_EXPECT(mt_gpt_index_cache_path(&ds, &c, &cp) == MT_OK, "cache path");
    snprintf(cpath, sizeof cpath, "%s", cp);
    mt_free(cp);
    unsigned char *bytes;
    size_t n = read_bytes(cpath, &bytes);
    bytes[n / 2] ^= 0x10;
    write_bytes(cpath, bytes, n);
    MT_EXPECT(mt_gpt_index_load(&a, cpath, &ds, &c) == MT_ERR_FORMAT && strstr(g_last_error, "checksum"),
              "corrupt cache: %s", g_last_error);
    MT_EXPECT(mt_gpt_index_open(&a, &ds, &c) == MT_OK && !a.from_cache, "corrupt cache is rebuilt");
    MT_EXPECT(memcmp(a.shuffle_index, ref.shuffle_index, 8 * (size_t)ref.n_samples) == 0, "rebuilt indices are right");
    mt_gpt_index_free(&a);
    MT_EXPECT(mt_gpt_index_open(&a, &ds, &c) == MT_OK && a.from_cache, "rewritten cache is read");
    mt_gpt_index_free(&a);
    /* truncated: rebuilt */
    write_bytes(cpath, bytes, n - 8);
    MT_EXPECT(mt_gpt_index_open(&a, &ds, &c) == MT_OK && !a.from_cache, "truncated cache is rebuilt");
    mt_gpt_index_free(&a);
    free(bytes);
    /* another parameter: another file (a stale cache is never used) */
    c.seed = 1235;
    MT_EXPECT(mt_gpt_index_open(&a, &ds, &c) == MT_OK && !a.from_cache, "new seed builds");
    MT_EXPECT(count_files_in(g_tmp, "cached-") == 2, "a second cache file");
    mt_gpt_index_free(&a);
    /* a cache whose key is someone else's is refused as stale */
    char *p2 = NULL;
    mt_gpt_index_cache_path(&ds, &c, &p2);
    c.seed = 1234;
    MT_EXPECT(mt_gpt_index_load(&a, p2, &ds, &c) == MT_ERR_FORMAT && strstr(g_last_error, "stale"), "stale key: %s", g_last_error);
    mt_free(p2);
    /* cache_dir */
    char dir[600];
    path_of(dir, sizeof dir, "");
    c.cache_dir = dir;
    c.seq_len = 8;
    MT_EXPECT(mt_gpt_index_open(&a, &ds, &c) == MT_OK, "cache_dir");
    mt_gpt_index_free(&a);
    MT_EXPECT(count_files_in(g_tmp, "cached-") == 3, "cache written in cache_dir");
    mt_gpt_index_free(&ref);
    mt_indexed_close(&ds);
}

/* ------------------------------------------------------------------ --data-path and the loader */

static void test_parse_data_path(void) {
    mt_data_path dp;
    const char *a1[] = {"0.3", "data/a", "0.7", "data/b"};
    MT_EXPECT(mt_parse_data_path(a1, 4, &dp) == MT_OK && dp.n == 2 && dp.weights && dp.weights[0] == 0.3 &&
                  dp.weights[1] == 0.7 && !strcmp(dp.paths[0], "data/a") && !strcmp(dp.paths[1], "data/b"),
              "argv-style weighted");
    mt_data_path_free(&dp);
    const char *a2[] = {"  1 x  2\ty "};
    MT_EXPECT(mt_parse_data_path(a2, 1, &dp) == MT_OK && dp.n == 2 && dp.weights[1] == 2 && !strcmp(dp.paths[1], "y"),
              "one string");
    mt_data_path_free(&dp);
    const char *a3[] = {"only/prefix"};
    MT_EXPECT(mt_parse_data_path(a3, 1, &dp) == MT_OK && dp.n == 1 && !dp.weights, "single prefix");
    mt_data_path_free(&dp);
    const char *a4[] = {"a", "b", "c"};
    MT_EXPECT(mt_parse_data_path(a4, 3, &dp) == MT_OK && dp.n == 3 && !dp.weights, "unweighted list");
    mt_data_path_free(&dp);
    const char *a5[] = {"0.5", "a", "b", "c"};
    MT_EXPECT(mt_parse_data_path(a5, 4, &dp) == MT_ERR_ARG, "mixed weights are an error");
    const char *a6[] = {"-1", "a", "2", "b"};
    MT_EXPECT(mt_parse_data_path(a6, 4, &dp) == MT_ERR_ARG, "negative weight is an error");
    MT_EXPECT(mt_parse_data_path(a6, 0, &dp) == MT_ERR_ARG, "nothing is an error");
}

static void test_loader_ranks_resume_prefetch(void) {
    int lens[120];
    for (int i = 0; i < 120; i++) lens[i] = 1 + (i * 29) % 61;
    char prefix[600];
    path_of(prefix, sizeof prefix, "ld");
    MT_EXPECT(write_docs(prefix, MT_IDX_U16, lens, 120, 60000) == MT_OK, "write");
    const int seq = 16, mb = 3, dp = 2, steps = 12;
    mt_loader_config cfg;
    memset(&cfg, 0, sizeof cfg);
    const char *paths[1] = {prefix};
    cfg.paths = paths; cfg.n_paths = 1; cfg.split = "90,10,0"; cfg.seq_len = seq; cfg.micro_batch = mb;
    cfg.dp_size = dp; cfg.num_samples = 300; cfg.seed = 1234; cfg.no_cache = 1;
    /* reference: the GPT index of the train split */
    mt_indexed ds;
    mt_gpt_index gi;
    mt_gpt_index_config gc;
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK, "open");
    memset(&gc, 0, sizeof gc);
    MT_EXPECT(mt_split_range("90,10,0", 0, 120, &gc.doc_begin, &gc.doc_end) == MT_OK && gc.doc_end == 108, "split");
    gc.seq_len = seq; gc.num_samples = 300; gc.seed = 1234; gc.no_cache = 1;
    MT_EXPECT(mt_gpt_index_build(&gi, &ds, &gc) == MT_OK, "index");
    int32_t tok[3 * 17], want[17];
    for (int pf = -1; pf <= 3; pf += 2) {
        for (int r = 0; r < dp; r++) {
            mt_loader ld;
            cfg.prefetch = pf;
            cfg.dp_rank = r;
            cfg.start_sample = 0;
            MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK, "loader open (prefetch %d)", pf);
            int bad = 0;
            for (int st = 0; st < steps; st++) {
                if (mt_loader_next(&ld, tok) != MT_OK) { bad++; break; }
                for (int b = 0; b < mb; b++) {
                    int64_t g = (int64_t)st * mb * dp + (int64_t)r * mb + b; /* Megatron's sampler */
                    mt_gpt_index_sample(&gi, &ds, g, seq, want);
                    bad += memcmp(tok + b * (seq + 1), want, sizeof want) != 0;
                }
                MT_EXPECT(ld.wait_ms >= 0, "wait_ms");
            }
            MT_EXPECT(bad == 0, "rank %d prefetch %d: %d micro-batch rows differ from global samples", r, pf, bad);
            MT_EXPECT(ld.consumed_samples == (int64_t)steps * mb * dp, "consumed %lld", (long long)ld.consumed_samples);
            /* resume: a new loader from the consumed count continues identically */
            mt_loader ld2;
            int32_t tok2[3 * 17];
            cfg.start_sample = ld.consumed_samples;
            MT_EXPECT(mt_loader_open(&ld2, &cfg) == MT_OK, "resume open");
            MT_EXPECT(mt_loader_next(&ld, tok) == MT_OK && mt_loader_next(&ld2, tok2) == MT_OK && !memcmp(tok, tok2, sizeof tok),
                      "resumed loader continues the same stream");
            /* seek back to the start */
            MT_EXPECT(mt_loader_seek(&ld2, (int64_t)r * 0) == MT_OK && mt_loader_next(&ld2, tok2) == MT_OK, "seek");
            mt_gpt_index_sample(&gi, &ds, (int64_t)r * mb, seq, want);
            MT_EXPECT(!memcmp(tok2, want, sizeof want), "after seek(0) the first row is global sample %d", r * mb);
            const int32_t *ptr = NULL;
            MT_EXPECT(mt_loader_acquire(&ld2, &ptr) == MT_OK && ptr != NULL, "acquire");
            mt_loader_close(&ld2);
            mt_loader_close(&ld);
        }
    }
    /* vocabulary check and argument errors */
    mt_loader ld;
    cfg.start_sample = 0; cfg.dp_rank = 0; cfg.vocab_size = 100; cfg.prefetch = 0;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK, "open with vocab check");
    MT_EXPECT(mt_loader_next(&ld, tok) == MT_ERR_FORMAT && strstr(g_last_error, "vocabulary"), "token >= vocab: %s", g_last_error);
    MT_EXPECT(mt_loader_next(&ld, tok) == MT_ERR_FORMAT, "the error is sticky");
    mt_loader_close(&ld);
    cfg.vocab_size = 0;
    cfg.dp_rank = 2;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_ERR_ARG, "dp_rank >= dp_size");
    cfg.dp_rank = 0;
    cfg.split = "100,0,0"; cfg.split_index = 1;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_ERR_ARG && strstr(g_last_error, "valid"), "empty valid split: %s", g_last_error);
    mt_gpt_index_free(&gi);
    mt_indexed_close(&ds);
}

static void test_loader_blend(void) {
    /* source A tokens < 30000, source B tokens >= 30000: a sample tells its source */
    int la[200], lb[300];
    for (int i = 0; i < 200; i++) la[i] = 5 + (i * 7) % 40;
    for (int i = 0; i < 300; i++) lb[i] = 3 + (i * 11) % 50;
    char pa[600], pb[600];
    path_of(pa, sizeof pa, "blendA");
    path_of(pb, sizeof pb, "blendB");
    MT_EXPECT(write_docs(pa, MT_IDX_U16, la, 200, 30000) == MT_OK, "write A");
    {
        mt_indexed_writer w;
        MT_EXPECT(mt_indexed_writer_open(&w, pb, MT_IDX_U16) == MT_OK, "open B");
        for (int d = 0; d < 300; d++) {
            int32_t t[64];
            int64_t n = lb[d];
            for (int k = 0; k < lb[d]; k++) t[k] = 30000 + (d * 37 + k) % 30000;
            mt_indexed_writer_add_document(&w, t, &n, 1);
        }
        MT_EXPECT(mt_indexed_writer_finish(&w) == MT_OK, "finish B");
    }
    char dpath[1400];
    snprintf(dpath, sizeof dpath, "0.3 %s 0.7 %s", pa, pb);
    mt_loader_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.data_path = dpath; cfg.split = "949,50,1"; cfg.seq_len = 8; cfg.micro_batch = 10; cfg.num_samples = 10000;
    cfg.seed = 1234;
    mt_loader ld;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK, "open blended loader");
    MT_EXPECT(ld.num_samples == 3000 + 7000, "blended size %lld", (long long)ld.num_samples);
    MT_EXPECT(ld.src[0].gi.n_samples >= b37_src_size[0] && ld.src[1].gi.n_samples >= b37_src_size[1],
              "sources built for Megatron's sizes");
    int64_t from_a = 0, order_ok = 1;
    int32_t tok[10 * 9];
    mt_blend ref;
    mt_blend_init(&ref, 2, b37_w2, NULL);
    for (int st = 0; st < 1000; st++) {
        if (mt_loader_next(&ld, tok) != MT_OK) { order_ok = 0; break; }
        for (int b = 0; b < 10; b++) {
            int src, is_a = tok[b * 9] < 30000;
            int64_t j;
            mt_blend_next(&ref, &src, &j);
            from_a += is_a;
            if (src != !is_a) order_ok = 0;
        }
    }
    MT_EXPECT(order_ok, "samples come from sources in Megatron's blend order");
    MT_EXPECT(fabs((double)from_a / 10000.0 - 0.3) < 0.005, "source A share %.4f over 10000 samples", (double)from_a / 10000.0);
    MT_EXPECT(ld.total_wait_ms >= 0 && ld.steps == 1000, "steps %lld", (long long)ld.steps);
    mt_blend_free(&ref);
    mt_loader_close(&ld);
    /* resume a blend in the middle: same micro-batch as the uninterrupted stream */
    int32_t t1[90], t2[90];
    cfg.start_sample = 4990;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK && mt_loader_next(&ld, t1) == MT_OK, "resume blend");
    mt_loader_close(&ld);
    cfg.start_sample = 0;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK && mt_loader_seek(&ld, 4990) == MT_OK && mt_loader_next(&ld, t2) == MT_OK,
              "seek blend");
    MT_EXPECT(!memcmp(t1, t2, sizeof t1), "resumed blend equals the seeked one");
    mt_loader_close(&ld);
    /* unweighted: each source one epoch, exhaustive when num_samples = 0 */
    snprintf(dpath, sizeof dpath, "%s %s", pa, pb);
    cfg.num_samples = 0;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK && ld.num_samples == ld.src[0].size + ld.src[1].size, "unweighted blend");
    mt_loader_close(&ld);
    cfg.num_samples = 50;
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_OK && ld.num_samples == 50, "unweighted blend with a size");
    mt_loader_close(&ld);
    snprintf(dpath, sizeof dpath, "0.5 %s 0 %s", pa, pb);
    MT_EXPECT(mt_loader_open(&ld, &cfg) == MT_ERR_ARG, "zero weight is an error (as in Megatron)");
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/mt_test_data_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }
    if (getenv("MT_TEST_VERBOSE")) g_quiet = 0;
    MT_RUN(test_np_random);
    MT_RUN(test_normalize_and_split);
    MT_RUN(test_gpt_index_matches_megatron);
    MT_RUN(test_sample_boundaries_and_epochs);
    MT_RUN(test_blend_matches_megatron);
    MT_RUN(test_writer_bytes_match_megatron);
    MT_RUN(test_handbuilt_fixtures_all_dtypes);
    MT_RUN(test_roundtrip_every_dtype);
    MT_RUN(test_llmc_files);
    MT_RUN(test_validation_messages);
    MT_RUN(test_index_cache);
    MT_RUN(test_parse_data_path);
    MT_RUN(test_loader_ranks_resume_prefetch);
    MT_RUN(test_loader_blend);
    rm_tree(g_tmp);
    return mt_test_summary("test_data");
}
