/* tests/test_data_fuzz.c — randomized corruption of .idx, .bin, llm.c files and index caches.
 *
 * A fixed budget of seeded mutations (bit flips, random bytes, extreme integers at field
 * offsets, truncation, extension); each mutated file is opened and, if accepted, every sequence
 * and every sample is read. Nothing may crash or read out of bounds (the ASan/UBSan build checks
 * that), every rejection must be a clean MT_ERR_FORMAT / MT_ERR_IO naming the file, and an index
 * cache corrupted on disk must be rebuilt. MT_FUZZ_ITERS=<n> scales the budget (default 1). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <string.h>

static char g_last_error[2048];
static void test_log(int level, const char *msg) {
    if (level >= 3) snprintf(g_last_error, sizeof g_last_error, "%s", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)
#define MT_DATA_FSYNC 0 /* renames stay atomic; skip the slow fsyncs in tests */

#include "mt/data.h"
#include "mt_test.h"
#include "mt_test_files.h"

static char g_tmp[256];
static int g_scale = 1;
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static size_t rnd_below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }


/* Mutate `src` (n bytes) into a fresh buffer; *m_len gets the new size. `fields` are offsets of
 * integer fields worth hitting with extreme values. */
static unsigned char *mutate(const unsigned char *src, size_t n, size_t *m_len, const size_t *fields, int nfields) {
    static const uint64_t extremes[] = {0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x7fffffff, 0x80000000u, 0xffffffffu,
                                        0x7fffffffffffffffull, 0x8000000000000000ull, 0xffffffffffffffffull, 34, 1024};
    size_t len = n, cap = n + 64;
    unsigned char *m = (unsigned char *)malloc(cap);
    memcpy(m, src, n);
    int k = 1 + (int)rnd_below(3);
    for (int r = 0; r < k; r++) {
        int op = (int)rnd_below(8);
        if (len == 0) op = 6;
        if (op <= 1) { /* flip a bit */
            size_t at = rnd_below(len);
            m[at] ^= (unsigned char)(1u << rnd_below(8));
        } else if (op == 2) { /* random byte */
            m[rnd_below(len)] = (unsigned char)rnd();
        } else if (op <= 4 && nfields > 0) { /* extreme value at a field, 1/4/8 bytes */
            size_t at = fields[rnd_below((size_t)nfields)];
            int w = (int)(rnd_below(3) == 0 ? 1 : rnd_below(2) ? 4 : 8);
            uint64_t v = extremes[rnd_below(sizeof extremes / sizeof extremes[0])];
            if (rnd_below(2)) v = (uint64_t)(int64_t)(int32_t)(rnd() & 0xffff) - 0x8000u + (uint64_t)m[at];
            for (int b = 0; b < w && at + (size_t)b < len; b++) m[at + (size_t)b] = (unsigned char)(v >> (8 * b));
        } else if (op == 5) { /* truncate */
            len = rnd_below(len + 1);
        } else if (op == 6) { /* extend with random bytes */
            size_t extra = 1 + rnd_below(40);
            if (len + extra > cap) extra = cap - len;
            for (size_t b = 0; b < extra; b++) m[len + b] = (unsigned char)rnd();
            len += extra;
        } else { /* copy a random 8-byte word over another (plausible but wrong values) */
            if (len >= 16) {
                size_t a = rnd_below(len - 8), b = rnd_below(len - 8);
                memmove(m + a, m + b, 8);
            }
        }
    }
    *m_len = len;
    return m;
}

static int g_accepted, g_rejected, g_samples_read;

/* Exercise an opened dataset: read every sequence, build small indices, read every sample. */
static void exercise(const mt_indexed *ds, const char *what) {
    int32_t buf[4096];
    for (int64_t i = 0; i < ds->n_seq; i++) {
        int64_t len = mt_indexed_seq_len(ds, i);
        for (int64_t off = 0; off < len; off += 4096) {
            int64_t cnt = len - off < 4096 ? len - off : 4096;
            mt_status s = mt_indexed_read(ds, i, off, cnt, buf);
            MT_EXPECT(s == MT_OK || s == MT_ERR_FORMAT, "%s: read status %s", what, mt_status_str(s));
            if (s != MT_OK) break;
        }
    }
    if (ds->n_seq == 0) return;
    mt_gpt_index gi;
    mt_gpt_index_config c;
    memset(&c, 0, sizeof c);
    c.doc_begin = 0;
    c.doc_end = ds->n_seq < 100000 ? ds->n_seq : 100000;
    c.seq_len = 1 + (int)rnd_below(12);
    c.num_samples = (int64_t)rnd_below(60);
    c.seed = rnd() & 0xffffffffu;
    c.no_cache = 1;
    mt_status s = mt_gpt_index_build(&gi, ds, &c);
    MT_EXPECT(s == MT_OK || s == MT_ERR_ARG, "%s: index build status %s (%s)", what, mt_status_str(s), g_last_error);
    if (s != MT_OK) return;
    for (int64_t i = 0; i < gi.n_samples && i < 400; i++) {
        mt_status t = mt_gpt_index_sample(&gi, ds, i, c.seq_len, buf);
        MT_EXPECT(t == MT_OK || t == MT_ERR_FORMAT, "%s: sample status %s", what, mt_status_str(t));
        if (t == MT_OK) g_samples_read++;
        MT_EXPECT(t == MT_OK || ds->dtype_code == MT_IDX_I64 || ds->dtype_code == MT_IDX_F32 || ds->dtype_code == MT_IDX_F64,
                  "%s: a sample of validated integer data failed: %s", what, g_last_error);
    }
    mt_gpt_index_free(&gi);
}

static void check_rejection(mt_status s, const char *name, const char *what) {
    MT_EXPECT(s == MT_ERR_FORMAT || s == MT_ERR_IO, "%s: status %s", what, mt_status_str(s));
    MT_EXPECT(strstr(g_last_error, name) != NULL, "%s: message \"%s\" does not name %s", what, g_last_error, name);
}

/* Build the pristine dataset (with empty documents) in dtype `code`. */
static void make_dataset(const char *prefix, int code) {
    mt_indexed_writer w;
    MT_CHECK(mt_indexed_writer_open(&w, prefix, code));
    for (int d = 0; d < 24; d++) {
        int32_t t[40];
        int64_t n = d % 7 == 3 ? 0 : 1 + (d * 13) % 37;
        for (int k = 0; k < n; k++) t[k] = (d * 31 + k) % 120;
        if (d % 5 == 4) MT_CHECK(mt_indexed_writer_add_document(&w, NULL, NULL, 0)); /* empty document */
        MT_CHECK(mt_indexed_writer_add_document(&w, t, &n, 1));
    }
    MT_CHECK(mt_indexed_writer_finish(&w));
}

static void test_corrupt_idx_and_bin(void) {
    const int codes[4] = {MT_IDX_U16, MT_IDX_I32, MT_IDX_F32, MT_IDX_I64};
    for (int ci = 0; ci < 4; ci++) {
        char prefix[512], pidx[600], pbin[600];
        snprintf(prefix, sizeof prefix, "%s/fz%d", g_tmp, codes[ci]);
        snprintf(pidx, sizeof pidx, "%s.idx", prefix);
        snprintf(pbin, sizeof pbin, "%s.bin", prefix);
        make_dataset(prefix, codes[ci]);
        unsigned char *idx, *bin;
        size_t ni = read_bytes(pidx, &idx), nb = read_bytes(pbin, &bin);
        mt_indexed ds;
        MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK, "pristine dataset opens");
        int64_t nseq = ds.n_seq, ndoc = ds.n_doc;
        mt_indexed_close(&ds);
        /* field offsets: header fields, and a few of each array */
        size_t fields[64];
        int nf = 0;
        fields[nf++] = 9; fields[nf++] = 17; fields[nf++] = 18; fields[nf++] = 26;
        for (int k = 0; k < 8; k++) {
            fields[nf++] = 34 + 4 * (size_t)rnd_below((size_t)nseq);
            fields[nf++] = 34 + 4 * (size_t)nseq + 8 * (size_t)rnd_below((size_t)nseq);
            fields[nf++] = 34 + 12 * (size_t)nseq + 8 * (size_t)rnd_below((size_t)ndoc);
        }
        int iters = 1500 * g_scale;
        for (int it = 0; it < iters; it++) {
            size_t mi, mb;
            int target = (int)rnd_below(10); /* 0-6 .idx, 7-8 .bin, 9 both */
            unsigned char *m_idx = target <= 6 || target == 9 ? mutate(idx, ni, &mi, fields, nf) : NULL;
            unsigned char *m_bin = target >= 7 ? mutate(bin, nb, &mb, NULL, 0) : NULL;
            int in_memory = (int)rnd_below(2);
            mt_status s;
            g_last_error[0] = 0;
            if (in_memory) {
                s = mt_indexed_open_memory(&ds, m_idx ? m_idx : idx, m_idx ? mi : ni, m_bin ? m_bin : bin, m_bin ? mb : nb, prefix);
            } else {
                write_bytes(pidx, m_idx ? m_idx : idx, m_idx ? mi : ni);
                write_bytes(pbin, m_bin ? m_bin : bin, m_bin ? mb : nb);
                s = mt_indexed_open(&ds, prefix);
            }
            if (s == MT_OK) {
                g_accepted++;
                exercise(&ds, "mutated dataset");
                mt_indexed_close(&ds);
            } else {
                g_rejected++;
                check_rejection(s, prefix, "mutated dataset");
            }
            free(m_idx);
            free(m_bin);
        }
        free(idx);
        free(bin);
    }
    MT_EXPECT(g_rejected > 0 && g_accepted > 0, "both outcomes seen (%d accepted, %d rejected)", g_accepted, g_rejected);
}

static void test_corrupt_llmc(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/fz_llmc.bin", g_tmp);
    const int n = 700;
    size_t len = 1024 + 2 * n;
    unsigned char *f = (unsigned char *)calloc(1, len);
    int32_t hdr[3] = {20240520, 1, n};
    memcpy(f, hdr, sizeof hdr);
    for (int i = 0; i < n; i++) { uint16_t t = (uint16_t)(i * 7); memcpy(f + 1024 + 2 * i, &t, 2); }
    size_t fields[4] = {0, 4, 8, 12};
    int acc = 0, rej = 0;
    for (int it = 0; it < 600 * g_scale; it++) {
        size_t ml;
        unsigned char *m = mutate(f, len, &ml, fields, 4);
        mt_indexed ds;
        mt_status s;
        g_last_error[0] = 0;
        if (it % 2) s = mt_indexed_open_memory(&ds, NULL, 0, m, ml, path);
        else { write_bytes(path, m, ml); s = mt_indexed_open(&ds, path); }
        if (s == MT_OK) { acc++; exercise(&ds, "mutated llm.c file"); mt_indexed_close(&ds); }
        else { rej++; check_rejection(s, "fz_llmc", "mutated llm.c file"); }
        free(m);
    }
    free(f);
    MT_EXPECT(acc > 0 && rej > 0, "llm.c: %d accepted, %d rejected", acc, rej);
}

/* Recompute the cache checksums after a mutation: an adversarial corruption that only the
 * content checks (and the sample reader's own checks) can catch. */
static void reseal_cache(unsigned char *d, size_t n, int64_t ndoc, int64_t nsamples) {
    size_t dbytes = (size_t)ndoc * 4, padn = (8 - dbytes % 8) % 8;
    size_t s_bytes = (size_t)(nsamples + 1) * 16, sh_bytes = (size_t)nsamples * 8;
    if (n != 64 + dbytes + padn + s_bytes + sh_bytes) return; /* a size change is caught anyway */
    uint64_t h = mt__hash64(1, d + 64, dbytes);
    h = mt__hash64(h, d + 64 + dbytes, padn);
    h = mt__hash64(h, d + 64 + dbytes + padn, s_bytes);
    h = mt__hash64(h, d + 64 + dbytes + padn + s_bytes, sh_bytes);
    memcpy(d + 48, &h, 8);
    h = mt__hash64(2, d, 56);
    memcpy(d + 56, &h, 8);
}

static void test_corrupt_cache(void) {
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s/fzc", g_tmp);
    make_dataset(prefix, MT_IDX_U16);
    mt_indexed ds;
    MT_EXPECT(mt_indexed_open(&ds, prefix) == MT_OK, "open");
    mt_gpt_index_config c;
    memset(&c, 0, sizeof c);
    c.doc_begin = 2; c.doc_end = 23; c.seq_len = 5; c.num_samples = 150; c.seed = 77;
    mt_gpt_index gi;
    MT_EXPECT(mt_gpt_index_open(&gi, &ds, &c) == MT_OK && !gi.from_cache, "build + write cache");
    int64_t ndoc = gi.n_doc_index, nsamp = gi.n_samples;
    mt_gpt_index_free(&gi);
    char *cpath = NULL;
    MT_EXPECT(mt_gpt_index_cache_path(&ds, &c, &cpath) == MT_OK, "cache path");
    unsigned char *bytes;
    size_t n = read_bytes(cpath, &bytes);
    MT_EXPECT(n > 64, "cache size %zu", n);
    size_t fields[48];
    int nf = 0;
    for (size_t o = 8; o < 64; o += 4) fields[nf++] = o;
    for (int k = 0; k < 10; k++) fields[nf++] = 64 + 4 * rnd_below((size_t)ndoc);
    for (int k = 0; k < 10; k++) fields[nf++] = 64 + (size_t)ndoc * 4 + ((size_t)ndoc % 2) * 4 + 8 * rnd_below((size_t)(2 * nsamp + 2));
    int acc = 0, rej = 0, resealed_rej = 0;
    /* aligned scratch for in-memory loads */
    uint64_t *aligned = (uint64_t *)malloc(n + 128);
    for (int it = 0; it < 3000 * g_scale; it++) {
        size_t ml;
        unsigned char *m = mutate(bytes, n, &ml, fields, nf);
        int reseal = (int)rnd_below(2);
        if (reseal) reseal_cache(m, ml, ndoc, nsamp);
        memcpy(aligned, m, ml);
        g_last_error[0] = 0;
        mt_status s = mt_gpt_index_load_memory(&gi, aligned, ml, "fzc-cache", &ds, &c);
        if (s == MT_OK) {
            acc++;
            int32_t buf[8];
            for (int64_t i = 0; i < gi.n_samples; i++) {
                mt_status t = mt_gpt_index_sample(&gi, &ds, i, c.seq_len, buf);
                MT_EXPECT(t == MT_OK || t == MT_ERR_FORMAT, "sample from a mutated cache: %s", mt_status_str(t));
            }
            mt_gpt_index_free(&gi);
        } else {
            rej++;
            if (reseal) resealed_rej++;
            check_rejection(s, "fzc-cache", "mutated cache");
        }
        free(m);
    }
    MT_EXPECT(rej > 0 && resealed_rej > 0, "cache: %d accepted, %d rejected (%d after resealing)", acc, rej, resealed_rej);
    free(aligned);
    /* on disk: every corrupt cache is rebuilt and the result equals a fresh build */
    mt_gpt_index ref;
    c.no_cache = 1;
    MT_EXPECT(mt_gpt_index_build(&ref, &ds, &c) == MT_OK, "reference");
    c.no_cache = 0;
    int wrong = 0;
    for (int it = 0; it < 12; it++) {
        size_t ml;
        unsigned char *m = mutate(bytes, n, &ml, fields, nf);
        if (rnd_below(2)) reseal_cache(m, ml, ndoc, nsamp);
        write_bytes(cpath, m, ml);
        free(m);
        mt_status s = mt_gpt_index_open(&gi, &ds, &c);
        MT_EXPECT(s == MT_OK, "open over a corrupt cache: %s", mt_status_str(s));
        if (s == MT_OK) {
            if (gi.n_samples != ref.n_samples || memcmp(gi.shuffle_index, ref.shuffle_index, 8 * (size_t)ref.n_samples) ||
                memcmp(gi.sample_index, ref.sample_index, 16 * (size_t)(ref.n_samples + 1)) ||
                memcmp(gi.doc_index, ref.doc_index, 4 * (size_t)ref.n_doc_index)) {
                /* accepted content must at least be valid; a resealed in-range edit may pass */
                wrong += !gi.from_cache;
            }
            mt_gpt_index_free(&gi);
        }
    }
    MT_EXPECT(wrong == 0, "%d rebuilt caches differ from a fresh build", wrong);
    mt_gpt_index_free(&ref);
    mt_free(cpath);
    free(bytes);
    mt_indexed_close(&ds);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    const char *sc = getenv("MT_FUZZ_ITERS");
    if (sc && atoi(sc) > 0) g_scale = atoi(sc);
    snprintf(g_tmp, sizeof g_tmp, "%s/mt_test_fuzz_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }
    MT_RUN(test_corrupt_idx_and_bin);
    MT_RUN(test_corrupt_llmc);
    MT_RUN(test_corrupt_cache);
    printf("  (%d mutated datasets accepted and fully read, %d rejected cleanly; %d samples read)\n", g_accepted, g_rejected,
           g_samples_read);
    rm_tree(g_tmp);
    return mt_test_summary("test_data_fuzz");
}
