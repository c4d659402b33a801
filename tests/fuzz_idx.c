/* tests/fuzz_idx.c — libFuzzer target for the .idx/.bin parser, the llm.c reader and the index
 * cache reader of mt/data.h.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz_idx.c -o build/fuzz_idx -lm -lpthread
 *   mkdir -p build/fuzz_corpus && ./build/fuzz_idx -max_total_time=60 build/fuzz_corpus
 *
 * Input: byte 0 picks the target (0 Megatron pair, 1 llm.c file, 2 index cache), bytes 1-2 the
 * .idx length (little-endian) for target 0; the rest is the file content (.idx then .bin). Every
 * accepted input is read completely: all sequences, a small GPT index, all its samples. */
#include <stdint.h>
#include <stddef.h>

static void fuzz_log(int level, const char *msg) { (void)level; (void)msg; }
#define MT_LOG_FN(level, msg) fuzz_log(level, msg)
#include "mt/data.h"

static void fuzz_exercise(const mt_indexed *ds, const uint8_t *knobs) {
    int32_t buf[1024];
    for (int64_t i = 0; i < ds->n_seq; i++) {
        int64_t len = mt_indexed_seq_len(ds, i);
        for (int64_t off = 0; off < len; off += 1024) {
            int64_t cnt = len - off < 1024 ? len - off : 1024;
            if (mt_indexed_read(ds, i, off, cnt, buf) != MT_OK) break;
        }
    }
    if (ds->n_seq == 0) return;
    mt_gpt_index gi;
    mt_gpt_index_config c;
    memset(&c, 0, sizeof c);
    c.doc_end = ds->n_seq < 4096 ? ds->n_seq : 4096;
    c.seq_len = 1 + knobs[0] % 16;
    c.num_samples = knobs[1] % 64;
    c.seed = knobs[2];
    c.no_cache = 1;
    if (mt_gpt_index_build(&gi, ds, &c) != MT_OK) return;
    for (int64_t i = 0; i < gi.n_samples && i < 256; i++)
        if (mt_gpt_index_sample(&gi, ds, i, c.seq_len, buf) != MT_OK) __builtin_trap(); /* built from validated data */
    mt_gpt_index_free(&gi);
}

/* A valid dataset for the cache target, built once in memory. */
static unsigned char g_idx[34 + 12 * 6 + 8 * 7], g_bin[2 * 40];
static int g_ready;
static void fuzz_setup(void) {
    int lens[6] = {7, 0, 9, 5, 11, 8}, n = 6, off = 0;
    uint64_t v;
    memcpy(g_idx, "MMIDIDX\x00\x00", 9);
    v = 1; memcpy(g_idx + 9, &v, 8);
    g_idx[17] = MT_IDX_U16;
    v = (uint64_t)n; memcpy(g_idx + 18, &v, 8);
    v = (uint64_t)n + 1; memcpy(g_idx + 26, &v, 8);
    for (int i = 0; i < n; i++) {
        int32_t l = lens[i];
        int64_t p = 2 * off, d = i + 1;
        memcpy(g_idx + 34 + 4 * i, &l, 4);
        memcpy(g_idx + 34 + 4 * n + 8 * i, &p, 8);
        memcpy(g_idx + 34 + 12 * n + 8 * (i + 1), &d, 8);
        off += l;
    }
    memset(g_idx + 34 + 12 * n, 0, 8);
    for (int i = 0; i < 40; i++) { uint16_t t = (uint16_t)(i * 3); memcpy(g_bin + 2 * i, &t, 2); }
    g_ready = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 6) return 0;
    if (!g_ready) fuzz_setup();
    const uint8_t *knobs = data + 1;
    int mode = data[0] % 3;
    size_t split = (size_t)data[4] | ((size_t)data[5] << 8);
    data += 6;
    size -= 6;
    if (split > size) split = size;
    mt_indexed ds;
    if (mode == 0 || mode == 1) {
        /* exact-size copies so that any overread is caught */
        unsigned char *a = (unsigned char *)malloc(split ? split : 1), *b = (unsigned char *)malloc(size - split ? size - split : 1);
        memcpy(a, data, split);
        memcpy(b, data + split, size - split);
        mt_status s = mode == 0 ? mt_indexed_open_memory(&ds, a, split, b, size - split, "fuzz")
                                : mt_indexed_open_memory(&ds, NULL, 0, b, size - split, "fuzz");
        if (s == MT_OK) {
            fuzz_exercise(&ds, knobs);
            mt_indexed_close(&ds);
        }
        free(a);
        free(b);
    } else {
        mt_gpt_index gi;
        mt_gpt_index_config c;
        int32_t buf[32];
        if (mt_indexed_open_memory(&ds, g_idx, sizeof g_idx, g_bin, sizeof g_bin, "fixed") != MT_OK) __builtin_trap();
        memset(&c, 0, sizeof c);
        c.doc_begin = knobs[0] % 2;
        c.doc_end = 6;
        c.seq_len = 1 + knobs[1] % 8;
        c.num_samples = knobs[2] % 32;
        c.seed = 1234;
        unsigned char *m;
        size_t msize = size;
        mt_gpt_index ref;
        if ((knobs[3] & 1) && mt_gpt_index_build(&ref, &ds, &c) == MT_OK) {
            /* reseal: a correct header and checksums around fuzzed content, so the content checks
             * (and the sample reader's own checks) are what stands between the input and memory */
            size_t dbytes = (size_t)ref.n_doc_index * 4, padn = (8 - dbytes % 8) % 8;
            size_t sbytes = (size_t)(ref.n_samples + 1) * 16, shbytes = (size_t)ref.n_samples * 8;
            uint32_t u;
            uint64_t h;
            msize = 64 + dbytes + padn + sbytes + shbytes;
            m = (unsigned char *)calloc(1, msize);
            memcpy(m + 64, data, size < msize - 64 ? size : msize - 64);
            memcpy(m, "MTGPTIDX", 8);
            u = 1; memcpy(m + 8, &u, 4);
            u = (uint32_t)ref.separate_final_epoch; memcpy(m + 12, &u, 4);
            memcpy(m + 16, &ref.key, 8);
            memcpy(m + 24, &ref.num_epochs, 8);
            memcpy(m + 32, &ref.n_doc_index, 8);
            memcpy(m + 40, &ref.n_samples, 8);
            h = mt__hash64(1, m + 64, dbytes);
            h = mt__hash64(h, m + 64 + dbytes, padn);
            h = mt__hash64(h, m + 64 + dbytes + padn, sbytes);
            h = mt__hash64(h, m + 64 + dbytes + padn + sbytes, shbytes);
            memcpy(m + 48, &h, 8);
            h = mt__hash64(2, m, 56);
            memcpy(m + 56, &h, 8);
            mt_gpt_index_free(&ref);
        } else {
            m = (unsigned char *)malloc(size ? size : 1);
            memcpy(m, data, size);
        }
        if (mt_gpt_index_load_memory(&gi, m, msize, "fuzz-cache", &ds, &c) == MT_OK) {
            for (int64_t i = 0; i < gi.n_samples; i++) (void)mt_gpt_index_sample(&gi, &ds, i, c.seq_len, buf);
            mt_gpt_index_free(&gi);
        }
        free(m);
        mt_indexed_close(&ds);
    }
    return 0;
}
