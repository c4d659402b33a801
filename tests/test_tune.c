/* tests/test_tune.c — mt/tune.h, the GEMM tuning file: a table saved and read back equal, a file for
 * another device or library not used, malformed files refused with the line named and left as they
 * were, no temporary file left behind, a missing file read as an empty table. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_last[2048];
static int g_warned;
static void test_log(int level, const char *msg) {
    if (level >= 2) snprintf(g_last, sizeof g_last, "%s", msg);
    if (level == 2) g_warned++;
}
#define MT_LOG_FN(level, msg) test_log(level, msg)
#define MT_DATA_FSYNC 0

#include "mt/tune.h"
#include "mt_test.h"
#include "mt_test_files.h"

static char g_tmp[256];

static void key_of(int64_t *key, int i) {
    for (int k = 0; k < MT_GEMM_TUNE_KEY; k++) /* a negative and a large value among them */
        key[k] = (int64_t)(i * 100 + k) * (k == 3 ? -1 : 1) + (k == 5 ? 8192 : 0);
}

static void test_tune_roundtrip(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/tune.txt", g_tmp);
    mt_gemm_tune_table t, u;
    int stale = -1;
    MT_CHECK(mt_gemm_tune_load(path, "NVIDIA H200", "cublasLt 130100", &t, &stale));
    MT_EXPECT(t.n == 0 && stale == 0, "no file: an empty table (%d entries, stale %d)", t.n, stale);
    int64_t key[MT_GEMM_TUNE_KEY];
    for (int i = 0; i < 40; i++) { /* past the first growth */
        key_of(key, i);
        MT_CHECK(mt_gemm_tune_put(&t, key, i % 16));
    }
    key_of(key, 7);
    MT_CHECK(mt_gemm_tune_put(&t, key, 15)); /* replaces */
    MT_EXPECT(t.n == 40 && mt_gemm_tune_find(&t, key) == 15, "put replaces a key's pick (%d entries)", t.n);
    MT_EXPECT(mt_gemm_tune_put(&t, key, MT_GEMM_TUNE_PICKS) == MT_ERR_ARG &&
                  mt_gemm_tune_put(&t, key, -1) == MT_ERR_ARG,
              "picks outside [0, %d) refused", MT_GEMM_TUNE_PICKS);
    MT_CHECK(mt_gemm_tune_save(path, &t));
    int left = count_files_in(g_tmp, "");
    MT_EXPECT(left == 1, "only the file is left in the folder (%d entries)", left);
    MT_CHECK(mt_gemm_tune_load(path, "NVIDIA H200", "cublasLt 130100", &u, &stale));
    int same = u.n == t.n && stale == 0;
    for (int i = 0; same && i < 40; i++) {
        key_of(key, i);
        same = mt_gemm_tune_find(&u, key) == mt_gemm_tune_find(&t, key);
    }
    key_of(key, 40);
    MT_EXPECT(same && mt_gemm_tune_find(&u, key) == -1, "read back equal: %d entries, an unknown key not found", u.n);
    mt_gemm_tune_free(&u);
    /* another device, another library: not used, logged */
    g_warned = 0;
    MT_CHECK(mt_gemm_tune_load(path, "NVIDIA H100 80GB HBM3", "cublasLt 130100", &u, &stale));
    MT_EXPECT(stale == 1 && u.n == 0 && g_warned == 1 && strstr(g_last, "NVIDIA H200"),
              "a file for another device: stale %d, %d entries, warning '%s'", stale, u.n, g_last);
    MT_EXPECT(!strcmp(u.device, "NVIDIA H100 80GB HBM3"), "the empty table is for this device ('%s')", u.device);
    mt_gemm_tune_free(&u);
    MT_CHECK(mt_gemm_tune_load(path, "NVIDIA H200", "cublasLt 120900", &u, &stale));
    MT_EXPECT(stale == 1 && u.n == 0, "a file for another library version: stale %d, %d entries", stale, u.n);
    mt_gemm_tune_free(&u);
    mt_gemm_tune_free(&t);
    MT_EXPECT(mt_gemm_tune_init(&t, "a\nb", "x") == MT_ERR_ARG, "a device name with a line break refused");
    unlink(path);
}

/* Each malformed file: MT_ERR_FORMAT naming the file and line, and the file left as it was. */
static void test_tune_malformed(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/bad.txt", g_tmp);
    static const struct { const char *text, *needle; } cases[] = {
        {"megatron.h gemm-tune 2\ndevice D\nlibrary L\n", "line 1"},
        {"", "line 1"},
        {"megatron.h gemm-tune 1\nlibrary L\n", "line 2"},
        {"megatron.h gemm-tune 1\ndevice D\n", "line 3"},
        {"megatron.h gemm-tune 1\ndevice D\nlibrary L\n1 2 3\n", "line 4"},
        {"megatron.h gemm-tune 1\ndevice D\nlibrary L\n0 1 2 3 4 5 6 7 8 9 10 11 12 13 1 9\n", "line 4"},
        {"megatron.h gemm-tune 1\ndevice D\nlibrary L\n0 1 2 3 4 5 6 7 8 9 10 11 12 13 1\n0 1 2 3 4 5 6 7 8 9 10 11 "
         "12 13 64\n", "line 5"},
        {"megatron.h gemm-tune 1\ndevice D\nlibrary L\n0 1 2 3 4 5 6 7 8 9 10 11 12 13 x\n", "line 4"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = strlen(cases[c].text);
        MT_CHECK(write_bytes(path, cases[c].text, n) ? MT_OK : MT_ERR_IO);
        mt_gemm_tune_table t;
        int stale = 0;
        g_last[0] = 0;
        mt_status st = mt_gemm_tune_load(path, "D", "L", &t, &stale);
        unsigned char *back = NULL;
        size_t m = read_bytes(path, &back);
        MT_EXPECT(st == MT_ERR_FORMAT && strstr(g_last, path) && strstr(g_last, cases[c].needle),
                  "case %zu: status %s, message '%s' (wanted %s)", c, mt_status_str(st), g_last, cases[c].needle);
        MT_EXPECT(m == n && (n == 0 || !memcmp(back, cases[c].text, n)), "case %zu: the file is left as it was", c);
        free(back);
    }
    /* a good file with a Windows line end and spaces is read */
    const char *ok = "megatron.h gemm-tune 1\ndevice D\nlibrary L\n0 1 2 3 4 5 6 7 8 9 10 11 12 13  3 \r\n";
    MT_CHECK(write_bytes(path, ok, strlen(ok)) ? MT_OK : MT_ERR_IO);
    mt_gemm_tune_table t;
    int stale = 0;
    MT_CHECK(mt_gemm_tune_load(path, "D", "L", &t, &stale));
    int64_t key[MT_GEMM_TUNE_KEY];
    for (int k = 0; k < MT_GEMM_TUNE_KEY; k++) key[k] = k;
    MT_EXPECT(t.n == 1 && mt_gemm_tune_find(&t, key) == 3, "trailing blanks and CR accepted (%d entries)", t.n);
    mt_gemm_tune_free(&t);
    unlink(path);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/mt_test_tune_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    MT_RUN(test_tune_roundtrip);
    MT_RUN(test_tune_malformed);
    rm_tree(g_tmp);
    return mt_test_summary("test_tune");
}
