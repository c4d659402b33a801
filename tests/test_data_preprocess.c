/* tests/test_data_preprocess.c — samples/preprocess_data.c, run in-process: JSONL and plain text
 * in, Megatron .bin/.idx out, read back with mt/data.h. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <string.h>

static char g_last_error[2048];
static void test_log(int level, const char *msg) {
    if (level >= 3) snprintf(g_last_error, sizeof g_last_error, "%s", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)
#define MT_DATA_FSYNC 0
#define PREPROCESS_NO_MAIN
#include "../samples/preprocess_data.c"
#include "mt_test.h"
#include "mt_test_files.h"
#include "fixtures/tokenizer_ref.h"

static char g_tmp[256];

static void put_file(const char *name, const char *text, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_tmp, name);
    unlink(p);
    FILE *f = fopen(p, "wb");
    fwrite(text, 1, n, f);
    fclose(f);
}

static int run(const char *const *args, int n) {
    char *argv[32];
    char buf[32][512];
    argv[0] = (char *)"preprocess_data";
    for (int i = 0; i < n; i++) {
        /* "@name" is a file in the temporary directory */
        if (args[i][0] == '@') snprintf(buf[i], sizeof buf[i], "%s/%s", g_tmp, args[i] + 1);
        else snprintf(buf[i], sizeof buf[i], "%s", args[i]);
        argv[i + 1] = buf[i];
    }
    return pp_main(n + 1, argv);
}

static int open_out(const char *name, mt_indexed *ds) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_tmp, name);
    return mt_indexed_open(ds, p) == MT_OK;
}


static void test_jsonl_bytelevel(void) {
    const char *jsonl =
        "{\"id\": 1, \"text\": \"Hi\\n\\u00e9\\ud83d\\ude00\", \"meta\": {\"x\": [1, 2]}}\n"
        "{\"text\": \"\"}\n"                              /* empty document */
        "\n"                                               /* blank line: skipped */
        "{\"text\": [\"ab\", \"\", \"c\"], \"title\": \"T\"}\r\n" /* two sequences */
        "{\"title\": \"only\", \"text\": \"z\"}";          /* last line without a newline */
    put_file("in.jsonl", jsonl, strlen(jsonl));
    const char *args[] = {"--input", "@in.jsonl", "--output-prefix", "@out", "--tokenizer-type", "ByteLevel", "--append-eod",
                          "--workers", "2", "--json-keys", "text", "title"};
    MT_EXPECT(run(args, 12) == 1, "a line without \"title\" fails");
    mt_indexed ds;
    MT_EXPECT(!open_out("out_text_document", &ds), "a failed run leaves no output");
    const char *args2[] = {"--input", "@in.jsonl", "--output-prefix", "@out", "--tokenizer-type", "ByteLevel", "--append-eod",
                           "--workers", "2"};
    MT_EXPECT(run(args2, 9) == 0, "run");
    MT_EXPECT(open_out("out_text_document", &ds), "open output");
    MT_EXPECT(ds.dtype_code == MT_IDX_U16 && ds.n_seq == 4 && ds.n_doc == 5, "dtype %d, %lld sequences, %lld document entries",
              ds.dtype_code, (long long)ds.n_seq, (long long)ds.n_doc);
    int64_t want_docs[5] = {0, 1, 1, 3, 4};
    for (int i = 0; i < 5 && ds.n_doc == 5; i++) MT_EXPECT(mt_indexed_doc_index(&ds, i) == want_docs[i], "document_indices[%d]", i);
    int32_t t[16];
    const int32_t d0[] = {'H', 'i', '\n', 0xc3, 0xa9, 0xf0, 0x9f, 0x98, 0x80, 256};
    MT_EXPECT(ds.n_seq == 4 && mt_indexed_seq_len(&ds, 0) == 10 && mt_indexed_read(&ds, 0, 0, 10, t) == MT_OK && !memcmp(t, d0, sizeof d0),
              "document 0: unescaped UTF-8 bytes + EOD");
    MT_EXPECT(ds.n_seq == 4 && mt_indexed_seq_len(&ds, 1) == 2 && mt_indexed_seq_len(&ds, 2) == 2, "array: \"ab\", then \"c\" + EOD");
    MT_EXPECT(ds.n_seq == 4 && mt_indexed_read(&ds, 2, 0, 2, t) == MT_OK && t[0] == 'c' && t[1] == 256, "EOD on the last sequence");
    MT_EXPECT(ds.n_seq == 4 && mt_indexed_read(&ds, 3, 0, 2, t) == MT_OK && t[0] == 'z' && t[1] == 256, "last line");
    mt_indexed_close(&ds);
    /* two keys: two datasets */
    const char *two = "{\"text\": \"ab\", \"title\": \"T\"}\n{\"title\": \"U\", \"text\": \"c\"}\n";
    put_file("two.jsonl", two, strlen(two));
    const char *args3[] = {"--input", "@two.jsonl", "--output-prefix", "@two", "--tokenizer-type", "ByteLevel", "--json-keys", "text", "title"};
    MT_EXPECT(run(args3, 9) == 0, "two keys");
    MT_EXPECT(open_out("two_title_document", &ds) && ds.n_seq == 2 && mt_indexed_read(&ds, 1, 0, 1, t) == MT_OK && t[0] == 'U',
              "title dataset");
    mt_indexed_close(&ds);
    /* a bad line fails and an existing dataset is left as it was */
    const char *bad = "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n";
    put_file("bad.jsonl", bad, strlen(bad));
    const char *args4[] = {"--input", "@bad.jsonl", "--output-prefix", "@out", "--tokenizer-type", "ByteLevel"};
    MT_EXPECT(run(args4, 6) == 1, "bad JSON fails");
    MT_EXPECT(open_out("out_text_document", &ds) && ds.n_seq == 4, "previous output intact");
    mt_indexed_close(&ds);
}

static void test_text_lines(void) {
    const char *txt = "first line\r\n\n   \nsecond\nthird";
    put_file("in.txt", txt, strlen(txt));
    const char *args[] = {"--input", "@in.txt", "--output-prefix", "@txt", "--tokenizer-type", "ByteLevel"};
    MT_EXPECT(run(args, 6) == 0, "run");
    mt_indexed ds;
    MT_EXPECT(open_out("txt_text_document", &ds) && ds.n_seq == 3 && ds.n_doc == 4, "three documents");
    MT_EXPECT(ds.n_seq == 3 && mt_indexed_seq_len(&ds, 0) == 10 && mt_indexed_seq_len(&ds, 2) == 5, "lengths (\\r dropped)");
    mt_indexed_close(&ds);
}

static void test_bpe_many_workers(void) {
    /* the trained BPE of tokenizer_ref.h, as files */
    put_file("vocab.json", bpe_vocab_json, strlen(bpe_vocab_json));
    put_file("merges.txt", bpe_merges_txt, strlen(bpe_merges_txt));
    put_file("tokenizer.json", bpe_tokenizer_json, strlen(bpe_tokenizer_json));
    /* one JSONL line per case, JSON-escaped */
    mt_buf j;
    memset(&j, 0, sizeof j);
    size_t ncase = sizeof bpe_cases / sizeof bpe_cases[0];
    for (int rep = 0; rep < 3; rep++)
        for (size_t k = 0; k < ncase; k++) {
            const unsigned char *t = (const unsigned char *)bpe_cases[k].text;
            mt_buf_push(&j, "{\"text\": \"", 10);
            for (; *t; t++) {
                char e[8];
                if (*t == '"' || *t == '\\') { e[0] = '\\'; e[1] = (char)*t; mt_buf_push(&j, e, 2); }
                else if (*t < 0x20) { snprintf(e, sizeof e, "\\u%04x", *t); mt_buf_push(&j, e, 6); }
                else mt_buf_push(&j, t, 1);
            }
            mt_buf_push(&j, "\"}\n", 3);
        }
    put_file("bpe.jsonl", j.data, j.len);
    mt_buf_free(&j);
    for (int variant = 0; variant < 2; variant++) {
        const char *a0[] = {"--input", "@bpe.jsonl", "--output-prefix", "@bpe", "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file",
                            "@vocab.json", "--merge-file", "@merges.txt", "--append-eod", "--workers", "3", "--chunk-bytes", "200"};
        const char *a1[] = {"--input", "@bpe.jsonl", "--output-prefix", "@bpe", "--tokenizer-type", "HuggingFaceTokenizer",
                            "--tokenizer-file", "@tokenizer.json", "--append-eod", "--workers", "4", "--chunk-bytes", "100"};
        MT_EXPECT(variant == 0 ? run(a0, 15) == 0 : run(a1, 13) == 0, "run variant %d", variant);
        mt_indexed ds;
        MT_EXPECT(open_out("bpe_text_document", &ds), "open");
        int bad = 0;
        int64_t seq = 0;
        for (int rep = 0; rep < 3; rep++)
            for (size_t k = 0; k < ncase; k++) {
                if (bpe_cases[k].n == 0) continue; /* empty text: empty document, no sequence */
                int32_t t[128];
                if (seq >= ds.n_seq || mt_indexed_seq_len(&ds, seq) != bpe_cases[k].n + 1 ||
                    mt_indexed_read(&ds, seq, 0, bpe_cases[k].n + 1, t) != MT_OK ||
                    memcmp(t, bpe_cases[k].ids, sizeof(int32_t) * (size_t)bpe_cases[k].n) != 0 || t[bpe_cases[k].n] != 0)
                    bad++;
                seq++;
            }
        MT_EXPECT(bad == 0 && seq == ds.n_seq && ds.n_doc == 3 * (int64_t)ncase + 1,
                  "variant %d: %d documents differ from Hugging Face tokenizers (%lld sequences)", variant, bad, (long long)ds.n_seq);
        mt_indexed_close(&ds);
    }
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/mt_test_pp_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }
    MT_RUN(test_jsonl_bytelevel);
    MT_RUN(test_text_lines);
    MT_RUN(test_bpe_many_workers);
    rm_tree(g_tmp);
    return mt_test_summary("test_data_preprocess");
}
