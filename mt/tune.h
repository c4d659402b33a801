/* mt/tune.h — the GEMM tuning file: which of cuBLASLt's heuristic algorithms ran fastest for each GEMM
 * shape, so that a tuned run can be repeated with the same algorithms, and so the same rounding
 * (the trainer's --gemm-tune-file; mt_gpu_gemm_tune_file in kernels/matmul.cuh).
 *
 *   mt_gemm_tune_table t;
 *   int stale;
 *   MT_TRY(mt_gemm_tune_load(path, device, library, &t, &stale)); // no file yet: an empty table
 *   int pick = mt_gemm_tune_find(&t, key);                        // -1: not there
 *   MT_TRY(mt_gemm_tune_put(&t, key, pick));
 *   MT_TRY(mt_gemm_tune_save(path, &t));                          // temporary name, fsync, rename
 *   mt_gemm_tune_free(&t);
 *
 * The file is text: the line "megatron.h gemm-tune 1", then "device NAME" and "library VERSION", then a
 * line per shape: the MT_GEMM_TUNE_KEY integers of the GEMM's plan key, then the index of the chosen
 * algorithm among cuBLASLt's heuristic results (in the order cuBLASLt returns them for that key). A
 * file written for another device or library version is not used: load sets *stale, logs why, and
 * returns an empty table for this device, which the next save replaces. A file that cannot be read as
 * this format is an error naming the line, and is left untouched.
 *
 * Defines: MT_GEMM_TUNE_KEY, mt_gemm_tune_table, mt_gemm_tune_init, mt_gemm_tune_load, mt_gemm_tune_find,
 *   mt_gemm_tune_put, mt_gemm_tune_save, mt_gemm_tune_free
 */
#ifndef MT_TUNE_H
#define MT_TUNE_H
#include "data.h" /* mt__atomic_write */
#ifdef __cplusplus
extern "C" {
#endif

#define MT_GEMM_TUNE_KEY 14   /* integers in a GEMM plan key */
#define MT_GEMM_TUNE_PICKS 64 /* picks are below this */

typedef struct mt_gemm_tune_table {
    char device[128], library[64]; /* what the picks were timed on */
    int n, cap;
    int64_t *key; /* (cap, MT_GEMM_TUNE_KEY) */
    int *pick;    /* (cap) */
} mt_gemm_tune_table;

/* An empty table for `device` and `library` (strings without line breaks). */
MT_API mt_status mt_gemm_tune_init(mt_gemm_tune_table *t, const char *device, const char *library) {
    memset(t, 0, sizeof *t);
    if (!device || !library || strpbrk(device, "\r\n") || strpbrk(library, "\r\n") ||
        strlen(device) >= sizeof t->device || strlen(library) >= sizeof t->library)
        return mt_errorf(MT_ERR_ARG, "gemm tune: device '%s' / library '%s': missing, too long or with a line break",
                         device ? device : "(null)", library ? library : "(null)");
    snprintf(t->device, sizeof t->device, "%s", device);
    snprintf(t->library, sizeof t->library, "%s", library);
    return MT_OK;
}

MT_API void mt_gemm_tune_free(mt_gemm_tune_table *t) {
    mt_free(t->key);
    mt_free(t->pick);
    t->key = NULL;
    t->pick = NULL;
    t->n = t->cap = 0;
}

/* The pick stored for `key` (MT_GEMM_TUNE_KEY integers), or -1. */
MT_API int mt_gemm_tune_find(const mt_gemm_tune_table *t, const int64_t *key) {
    for (int i = 0; i < t->n; i++)
        if (!memcmp(t->key + (size_t)i * MT_GEMM_TUNE_KEY, key, sizeof(int64_t) * MT_GEMM_TUNE_KEY)) return t->pick[i];
    return -1;
}

/* Store `pick` for `key`, replacing what was there. */
MT_API mt_status mt_gemm_tune_put(mt_gemm_tune_table *t, const int64_t *key, int pick) {
    if (pick < 0 || pick >= MT_GEMM_TUNE_PICKS)
        return mt_errorf(MT_ERR_ARG, "gemm tune: pick %d outside [0, %d)", pick, MT_GEMM_TUNE_PICKS);
    for (int i = 0; i < t->n; i++)
        if (!memcmp(t->key + (size_t)i * MT_GEMM_TUNE_KEY, key, sizeof(int64_t) * MT_GEMM_TUNE_KEY)) {
            t->pick[i] = pick;
            return MT_OK;
        }
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 32;
        int64_t *k = NULL;
        int *p = NULL;
        MT_TRY(mt_calloc(sizeof(int64_t) * MT_GEMM_TUNE_KEY * (size_t)cap, (void **)&k));
        if (mt_calloc(sizeof(int) * (size_t)cap, (void **)&p) != MT_OK) {
            mt_free(k);
            return MT_ERR_OOM;
        }
        if (t->n) {
            memcpy(k, t->key, sizeof(int64_t) * MT_GEMM_TUNE_KEY * (size_t)t->n);
            memcpy(p, t->pick, sizeof(int) * (size_t)t->n);
        }
        mt_free(t->key);
        mt_free(t->pick);
        t->key = k;
        t->pick = p;
        t->cap = cap;
    }
    memcpy(t->key + (size_t)t->n * MT_GEMM_TUNE_KEY, key, sizeof(int64_t) * MT_GEMM_TUNE_KEY);
    t->pick[t->n++] = pick;
    return MT_OK;
}

/* One line of `f` without its line break into buf; 0 at the end of the file. A line that does not fit,
 * or a NUL byte, is an error. */
MT_API mt_status mt__tune_line(FILE *f, const char *path, int lineno, char *buf, size_t size, int *got) {
    *got = 0;
    if (!fgets(buf, (int)size, f)) {
        if (ferror(f)) return mt_errorf(MT_ERR_IO, "%s: read error at line %d", path, lineno);
        return MT_OK;
    }
    size_t n = strlen(buf);
    if (n == size - 1 && buf[n - 1] != '\n' && !feof(f))
        return mt_errorf(MT_ERR_FORMAT, "%s: line %d is longer than %zu bytes", path, lineno, size - 2);
    if (n && buf[n - 1] == '\n') buf[--n] = 0;
    *got = 1;
    return MT_OK;
}

/* Read `path` into *t (initialised here) for `device` and `library`. No file: an empty table. A file
 * for another device or library: *stale = 1 (0 otherwise), logged, and an empty table. */
MT_API mt_status mt_gemm_tune_load(const char *path, const char *device, const char *library, mt_gemm_tune_table *t,
                                   int *stale) {
    *stale = 0;
    MT_TRY(mt_gemm_tune_init(t, device, library));
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return MT_OK;
        return mt_errorf(MT_ERR_IO, "gemm tune file %s: %s", path, strerror(errno));
    }
    char line[1024];
    mt_status st = MT_OK;
    int got = 0, lineno = 0;
    static const char *const head[3] = {"megatron.h gemm-tune 1", "device ", "library "};
    for (int h = 0; h < 3 && st == MT_OK; h++) {
        st = mt__tune_line(f, path, ++lineno, line, sizeof line, &got);
        if (st != MT_OK) break;
        int ok = got && (h == 0 ? !strcmp(line, head[0]) : !strncmp(line, head[h], strlen(head[h])));
        if (!ok) {
            st = mt_errorf(MT_ERR_FORMAT, "%s: line %d should be%s '%s...', found '%.60s' (not a gemm tune file?)",
                           path, lineno, h == 0 ? " exactly" : "", head[h], got ? line : "(end of file)");
        } else if (h > 0 && strcmp(line + strlen(head[h]), h == 1 ? device : library)) {
            mt_logf(MT_LOG_WARN, "gemm tune file %s was written for %s '%s', this run has '%s': not used, tuning afresh",
                    path, h == 1 ? "device" : "library", line + strlen(head[h]), h == 1 ? device : library);
            *stale = 1;
            fclose(f);
            return MT_OK;
        }
    }
    while (st == MT_OK) {
        st = mt__tune_line(f, path, ++lineno, line, sizeof line, &got);
        if (st != MT_OK || !got) break;
        int64_t key[MT_GEMM_TUNE_KEY], v = 0;
        char *p = line, *end = NULL;
        int k;
        for (k = 0; k <= MT_GEMM_TUNE_KEY; k++) {
            errno = 0;
            v = strtoll(p, &end, 10);
            if (end == p || errno) break;
            if (k < MT_GEMM_TUNE_KEY) key[k] = v;
            p = end;
        }
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (k <= MT_GEMM_TUNE_KEY || *p)
            st = mt_errorf(MT_ERR_FORMAT, "%s: line %d: expected %d integers (a GEMM key and its pick), found '%.80s'",
                           path, lineno, MT_GEMM_TUNE_KEY + 1, line);
        else if (v < 0 || v >= MT_GEMM_TUNE_PICKS)
            st = mt_errorf(MT_ERR_FORMAT, "%s: line %d: pick %lld outside [0, %d)", path, lineno, (long long)v,
                           MT_GEMM_TUNE_PICKS);
        else
            st = mt_gemm_tune_put(t, key, (int)v);
    }
    fclose(f);
    if (st != MT_OK) mt_gemm_tune_free(t);
    return st;
}

/* Write *t to `path` atomically (a temporary name, fsync, rename). */
MT_API mt_status mt_gemm_tune_save(const char *path, const mt_gemm_tune_table *t) {
    size_t cap = 512 + (size_t)t->n * (MT_GEMM_TUNE_KEY + 1) * 22, len = 0;
    char *buf = NULL;
    MT_TRY(mt_calloc(cap, (void **)&buf));
    len += (size_t)snprintf(buf + len, cap - len, "megatron.h gemm-tune 1\ndevice %s\nlibrary %s\n", t->device,
                            t->library);
    for (int i = 0; i < t->n; i++) {
        for (int k = 0; k < MT_GEMM_TUNE_KEY; k++)
            len += (size_t)snprintf(buf + len, cap - len, "%lld ", (long long)t->key[(size_t)i * MT_GEMM_TUNE_KEY + k]);
        len += (size_t)snprintf(buf + len, cap - len, "%d\n", t->pick[i]);
    }
    const void *bufs[1] = {buf};
    size_t sizes[1] = {len};
    mt_status st = mt__atomic_write(path, 1, bufs, sizes);
    mt_free(buf);
    return st;
}

#ifdef __cplusplus
}
#endif
#endif
