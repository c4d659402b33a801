/* tests/test_data_tokenizer.c — mt/tokenizer.h: JSON strings, GPT-2 pre-tokenizer, byte-level BPE.
 *
 * tests/fixtures/tokenizer_ref.h holds splits from the `regex` package running GPT-2's pattern and
 * ids from Hugging Face `tokenizers` for a small BPE (see tests/fixtures/tokenizer_ref.py). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char g_last_error[2048];
static void test_log(int level, const char *msg) {
    if (level >= 3) snprintf(g_last_error, sizeof g_last_error, "%s", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)

#include "mt/tokenizer.h"
#include "mt_test.h"
#include "fixtures/tokenizer_ref.h"

static void test_json_strings(void) {
    struct { const char *in; const char *out; } ok[] = {
        {"\"plain\"", "plain"},
        {"\"a\\\"b\\\\c\\/d\"", "a\"b\\c/d"},
        {"\"\\b\\f\\n\\r\\t\"", "\b\f\n\r\t"},
        {"\"caf\\u00e9\"", "caf\xc3\xa9"},
        {"\"\\u65e5\\u672C\"", "\xe6\x97\xa5\xe6\x9c\xac"},
        {"\"\\ud83d\\ude00!\"", "\xf0\x9f\x98\x80!"},        /* surrogate pair */
        {"\"x\\ud83dy\"", "x\xef\xbf\xbdy"},                  /* lone high surrogate -> U+FFFD */
        {"\"\\ude00\"", "\xef\xbf\xbd"},                      /* lone low surrogate */
        {"\"\\u0000z\"", "\0z"},
        {"\"raw \xc3\xa9 utf8\"", "raw \xc3\xa9 utf8"},
    };
    size_t outlen[] = {5, 7, 5, 5, 6, 5, 5, 3, 2, 11};
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
        mt_buf b;
        memset(&b, 0, sizeof b);
        const char *p = ok[k].in, *end = p + strlen(p);
        mt_status s = mt_json_string(&p, end, &b);
        MT_EXPECT(s == MT_OK && p == end && b.len == outlen[k] && memcmp(b.data, ok[k].out, outlen[k]) == 0,
                  "case %zu: %s", k, ok[k].in);
        mt_buf_free(&b);
    }
    const char *bad[] = {"\"unterminated", "\"bad \\q escape\"", "\"\\u12\"", "\"\\u12G4\"", "noquote", "\"trailing \\"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        mt_buf b;
        memset(&b, 0, sizeof b);
        const char *p = bad[k];
        MT_EXPECT(mt_json_string(&p, p + strlen(p), &b) == MT_ERR_FORMAT, "bad case %zu: %s", k, bad[k]);
        mt_buf_free(&b);
    }
    const char *v = "{\"a\": [1, -2.5e3, true, null, {\"b\": \"}\"}], \"c\": {}} tail";
    const char *p = v;
    MT_EXPECT(mt_json_skip_value(&p, v + strlen(v), 0) == MT_OK && !strcmp(p, " tail"), "skip nested value");
    const char *deep = "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                       "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                       "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[";
    p = deep;
    MT_EXPECT(mt_json_skip_value(&p, deep + strlen(deep), 0) == MT_ERR_FORMAT, "depth limit / unterminated");
}

static void test_pretokenizer_matches_regex(void) {
    for (size_t k = 0; k < sizeof pretok_cases / sizeof pretok_cases[0]; k++) {
        const char *t = pretok_cases[k].text;
        size_t n = strlen(t), i = 0;
        int m = 0, ok = 1;
        while (i < n) {
            size_t e = mt_gpt2_pretoken_end(t, n, i);
            if (e <= i || m >= pretok_cases[k].n || (int)e != pretok_cases[k].ends[m]) { ok = 0; break; }
            m++;
            i = e;
        }
        MT_EXPECT(ok && m == pretok_cases[k].n, "case %zu \"%s\": split %d differs (at byte %zu)", k, t, m, i);
    }
    /* invalid UTF-8 still advances */
    const char bad[] = "ab\xff\xfe cd\xc3";
    size_t i = 0, n = sizeof bad - 1;
    int steps = 0;
    while (i < n && steps < 20) { size_t e = mt_gpt2_pretoken_end(bad, n, i); MT_EXPECT(e > i && e <= n, "advance"); i = e; steps++; }
    MT_EXPECT(i == n, "invalid UTF-8 is consumed");
}

/* A vocabulary built by hand: the 256 byte symbols, then a few merged symbols. */
static void build_hand_vocab(mt_buf *vocab, mt_buf *merges, const char *const *extra, int n_extra, const char *merge_lines) {
    char tmp[64];
    mt_buf_push(vocab, "{", 1);
    for (int b = 0; b < 256; b++) {
        char u8[4];
        int k = mt_utf8_encode(mt_gpt2_byte_to_unicode(b), u8);
        mt_buf_push(vocab, b ? ", \"" : "\"", b ? 3 : 1);
        if (b == '"' || b == '\\') mt_buf_push(vocab, "\\", 1);
        mt_buf_push(vocab, u8, (size_t)k);
        snprintf(tmp, sizeof tmp, "\": %d", b);
        mt_buf_push(vocab, tmp, strlen(tmp));
    }
    for (int i = 0; i < n_extra; i++) {
        snprintf(tmp, sizeof tmp, ", \"%s\": %d", extra[i], 256 + i);
        mt_buf_push(vocab, tmp, strlen(tmp));
    }
    mt_buf_push(vocab, "}", 1);
    mt_buf_push(merges, "#version: 0.2\n", 14);
    mt_buf_push(merges, merge_lines, strlen(merge_lines));
}

static int encode_eq(const mt_tokenizer *tk, const char *text, const int32_t *want, int nwant) {
    mt_tok_state st;
    mt_i32buf ids;
    memset(&st, 0, sizeof st);
    memset(&ids, 0, sizeof ids);
    int ok = mt_tokenizer_encode(tk, &st, text, strlen(text), &ids) == MT_OK && (int)ids.len == nwant &&
             (nwant == 0 || memcmp(ids.data, want, sizeof(int32_t) * (size_t)nwant) == 0);
    if (!ok) {
        fprintf(stderr, "    \"%s\" ->", text);
        for (size_t i = 0; i < ids.len; i++) fprintf(stderr, " %d", ids.data[i]);
        fprintf(stderr, "\n");
    }
    mt_tok_state_free(&st);
    mt_i32buf_free(&ids);
    return ok;
}

static void test_bpe_hand_checked(void) {
    /* "\xc4\xa0" is U+0120, GPT-2's symbol for the space byte */
    const char *extra[] = {"he", "ll", "hell", "hello", "\xc4\xa0w", "or", "\xc4\xa0wor", "el", "<|endoftext|>"};
    /*                     256   257   258     259      260          261   262           263   264 */
    mt_buf v, m;
    memset(&v, 0, sizeof v);
    memset(&m, 0, sizeof m);
    build_hand_vocab(&v, &m, extra, 9, "h e\nl l\nhe ll\nhell o\n\xc4\xa0 w\no r\n\xc4\xa0w or\ne l\n");
    mt_tokenizer tk;
    MT_EXPECT(mt_tokenizer_load_gpt2_memory(&tk, v.data, v.len, m.data, m.len) == MT_OK, "load: %s", g_last_error);
    MT_EXPECT(tk.vocab_size == 265 && tk.eod == 264, "vocab %lld eod %d", (long long)tk.vocab_size, tk.eod);
    /* "hello": he(0) -> ll(1) -> hell(2) -> hello(3); " world": Ġw(4) -> or(5) -> Ġwor(6), then l, d */
    const int32_t w1[] = {259, 262, 'l', 'd'};
    MT_EXPECT(encode_eq(&tk, "hello world", w1, 4), "hello world");
    /* "hel": "h e" (rank 0) beats "e l" (rank 7) */
    const int32_t w2[] = {256, 'l'};
    MT_EXPECT(encode_eq(&tk, "hel", w2, 2), "hel");
    /* "xel": only "e l" applies */
    const int32_t w3[] = {'x', 263};
    MT_EXPECT(encode_eq(&tk, "xel", w3, 2), "xel");
    /* "lll": leftmost first among equal ranks */
    const int32_t w4[] = {257, 'l'};
    MT_EXPECT(encode_eq(&tk, "lll", w4, 2), "lll");
    /* "llll": two merges, and " w" alone */
    const int32_t w5[] = {257, 257, 260};
    MT_EXPECT(encode_eq(&tk, "llll w", w5, 3), "llll w");
    /* "<|endoftext|>" in text is text, not the special id (as in Megatron's GPT2BPETokenizer) */
    const int32_t w6[] = {'<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't', '|', '>'};
    MT_EXPECT(encode_eq(&tk, "<|endoftext|>", w6, 13), "special token text");
    /* bytes: a non-ASCII byte maps to its byte id */
    const int32_t w7[] = {0xc3, 0xa9};
    MT_EXPECT(encode_eq(&tk, "\xc3\xa9", w7, 2), "utf-8 bytes");
    unsigned char out[8];
    MT_EXPECT(mt_tokenizer_token_bytes(&tk, 262, out, 8) == 4 && !memcmp(out, " wor", 4), "decode \xc4\xa0wor");
    MT_EXPECT(mt_tokenizer_token_bytes(&tk, 264, out, 8) == 13 && !memcmp(out, "<|endof", 7), "special token decodes as its text");
    MT_EXPECT(mt_tokenizer_token_bytes(&tk, 265, out, 8) == -1, "unknown id");
    mt_tokenizer_close(&tk);
    /* a merge naming a missing symbol is an error naming the file */
    m.len = 0;
    mt_buf_push(&m, "h e\nq z\n", 8);
    MT_EXPECT(mt_tokenizer_load_gpt2_memory(&tk, v.data, v.len, m.data, m.len) == MT_ERR_FORMAT && strstr(g_last_error, "merges.txt"),
              "bad merge: %s", g_last_error);
    mt_buf_free(&v);
    mt_buf_free(&m);
}

static void check_bpe_cases(const mt_tokenizer *tk, const char *what) {
    mt_tok_state st;
    memset(&st, 0, sizeof st);
    int bad = 0;
    for (int rep = 0; rep < 2; rep++) /* twice: the second pass runs from the word cache */
        for (size_t k = 0; k < sizeof bpe_cases / sizeof bpe_cases[0]; k++) {
            mt_i32buf ids;
            memset(&ids, 0, sizeof ids);
            const char *t = bpe_cases[k].text;
            if (mt_tokenizer_encode(tk, &st, t, strlen(t), &ids) != MT_OK || (int)ids.len != bpe_cases[k].n ||
                memcmp(ids.data, bpe_cases[k].ids, sizeof(int32_t) * ids.len) != 0) {
                bad++;
                if (bad < 4) fprintf(stderr, "    %s: case %zu \"%s\" differs\n", what, k, t);
            }
            /* byte-level BPE is lossless */
            unsigned char buf[4096];
            size_t n = 0;
            for (size_t i = 0; i < ids.len; i++) {
                int c = mt_tokenizer_token_bytes(tk, ids.data[i], buf + n, (int)(sizeof buf - n));
                if (c < 0) { bad++; break; }
                n += (size_t)c;
            }
            if (n != strlen(t) || memcmp(buf, t, n) != 0) bad++;
            mt_i32buf_free(&ids);
        }
    MT_EXPECT(bad == 0, "%s: %d of %zu encodings differ from Hugging Face tokenizers", what, bad, 2 * sizeof bpe_cases / sizeof bpe_cases[0]);
    mt_tok_state_free(&st);
}

static void test_bpe_matches_hf_tokenizers(void) {
    mt_tokenizer tk;
    MT_EXPECT(mt_tokenizer_load_gpt2_memory(&tk, bpe_vocab_json, strlen(bpe_vocab_json), bpe_merges_txt, strlen(bpe_merges_txt)) == MT_OK,
              "load vocab.json + merges.txt: %s", g_last_error);
    MT_EXPECT(tk.vocab_size == BPE_VOCAB_SIZE, "vocab size %lld", (long long)tk.vocab_size);
    check_bpe_cases(&tk, "vocab.json + merges.txt");
    mt_tokenizer_close(&tk);
    /* the same model as a tokenizer.json */
    char path[256];
    const char *base = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/mt_test_tok_%ld.json", base && base[0] ? base : "/tmp", (long)getpid());
    FILE *f = fopen(path, "wb");
    fwrite(bpe_tokenizer_json, 1, strlen(bpe_tokenizer_json), f);
    fclose(f);
    MT_EXPECT(mt_tokenizer_open_hf(&tk, path) == MT_OK, "load tokenizer.json: %s", g_last_error);
    MT_EXPECT(tk.vocab_size == BPE_VOCAB_SIZE && tk.eod == 0, "tokenizer.json vocab %lld eod %d", (long long)tk.vocab_size, tk.eod);
    check_bpe_cases(&tk, "tokenizer.json");
    mt_tokenizer_close(&tk);
    unlink(path);
    MT_EXPECT(mt_tokenizer_open_hf(&tk, path) == MT_ERR_IO, "missing tokenizer.json");
}

static void test_byte_tokenizer(void) {
    mt_tokenizer tk;
    mt_tok_state st;
    mt_i32buf ids;
    memset(&st, 0, sizeof st);
    memset(&ids, 0, sizeof ids);
    MT_EXPECT(mt_tokenizer_open_bytes(&tk) == MT_OK && tk.vocab_size == 257 && tk.eod == 256, "byte tokenizer");
    MT_EXPECT(mt_tokenizer_encode(&tk, &st, "A\xff\n", 3, &ids) == MT_OK && ids.len == 3 && ids.data[0] == 65 && ids.data[1] == 255 &&
                  ids.data[2] == 10, "bytes are ids");
    mt_i32buf_free(&ids);
    mt_tok_state_free(&st);
    mt_tokenizer_close(&tk);
}

int main(void) {
    MT_RUN(test_json_strings);
    MT_RUN(test_pretokenizer_matches_regex);
    MT_RUN(test_bpe_hand_checked);
    MT_RUN(test_bpe_matches_hf_tokenizers);
    MT_RUN(test_byte_tokenizer);
    return mt_test_summary("test_data_tokenizer");
}
