/* mt/data.h — tokens on disk: Megatron indexed datasets, llm.c token files, GPT sample indices,
 * blending, train/valid/test splits, and a prefetching data loader.
 *
 *   mt_loader_config cfg = {0};
 *   cfg.data_path = "0.3 data/wiki_text_document 0.7 data/web_text_document";
 *   cfg.split = "949,50,1"; cfg.split_index = 0;              // train
 *   cfg.seq_len = 1024; cfg.micro_batch = 8; cfg.dp_rank = rank; cfg.dp_size = world;
 *   cfg.num_samples = train_iters * global_batch; cfg.seed = 1234;
 *   cfg.start_sample = consumed_samples;                      // resume
 *   mt_loader ld;
 *   MT_CHECK(mt_loader_open(&ld, &cfg));
 *   int32_t *tok = ...;                                       // (micro_batch, seq_len + 1)
 *   MT_CHECK(mt_loader_next(&ld, tok));                       // inputs tok[:, :-1], targets tok[:, 1:]
 *   printf("loader wait %.2f ms\n", ld.wait_ms);
 *   mt_loader_close(&ld);
 *
 * Megatron compatibility (megatron/core/datasets, read for the facts; the code here is our own)
 *   - .idx/.bin pairs written by tools/preprocess_data.py read unchanged (all eight dtype codes).
 *   - The document index, sample index and shuffle index are built like GPTDataset's
 *     (numpy RandomState(seed): the same MT19937 stream and the same Fisher-Yates shuffle), so
 *     a seed gives the sample order Megatron gives. Blending uses Megatron's greedy order and
 *     its per-source sample counts ceil(ceil(N*w) * 1.005); --split bookends are rounded like
 *     Megatron's (round half to even).
 *   - Data-parallel rank r reads global samples step*micro_batch*dp + r*micro_batch + b, as
 *     Megatron's pretraining sampler does; resuming from consumed samples is exact.
 *
 * Defines
 *   MT_IDX_DTYPES, mt_idx_dtype_size, mt_idx_dtype_name, mt_idx_optimal_dtype
 *   mt_indexed, mt_indexed_open (Megatron prefix, prefix.bin/.idx, or llm.c .bin), mt_indexed_open_memory,
 *   mt_indexed_close,
 *   mt_indexed_seq_len, mt_indexed_seq_ptr, mt_indexed_doc_index, mt_indexed_read
 *   mt_indexed_writer, mt_indexed_writer_open / _add_sequence / _end_document / _add_document /
 *   _finish / _abort   (atomic: temporary names, fsync, rename)
 *   mt_np_random (numpy's legacy RandomState), mt_np_random_seed / _next32 / _interval / _shuffle_*
 *   mt_split_range (Megatron's --split into document ranges)
 *   mt_gpt_index, mt_gpt_index_config, mt_gpt_index_build / _open (cached) / _load / _load_memory /
 *   _save / _sample / _free, mt_gpt_index_cache_path
 *   mt_normalize_weights, mt_blend_source_size, mt_blend, mt_blend_init / _next / _reset / _free
 *   mt_data_path, mt_parse_data_path, mt_data_path_free
 *   mt_loader_config, mt_loader, mt_loader_open / _next / _acquire / _seek / _close
 *
 * Files and errors
 *   Every field of every file is validated when opened; a bad file gives MT_ERR_FORMAT with a
 *   message naming the file, the field and the expected value. Files are mapped read-only; a
 *   file truncated by another process *while mapped* can still raise SIGBUS (the OS's rule).
 *   Index caches live next to the data as `<prefix>-<key>.mtidx` (or in cfg.cache_dir), keyed by
 *   a hash of every parameter and of the sequence lengths; a stale or corrupt cache is rebuilt.
 *   All writes go to a temporary name, are fsync'd, then renamed into place.
 *
 * Options (define before including)
 *   MT_DATA_FSYNC   1 (default): fsync written files and their directory before/after the rename;
 *                   0 skips the fsyncs (tests on slow shared disks), the renames stay atomic
 *
 * Needs only POSIX headers that glibc declares under -std=c11 (open, mmap, fsync, rename,
 * pthreads); no feature-test macros are required. Assumes a little-endian host (checked).
 */
#ifndef MT_DATA_H
#define MT_DATA_H

#include "core.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef MT_DATA_FSYNC
#define MT_DATA_FSYNC 1
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ small helpers */

MT_API int mt__host_is_le(void) {
    uint32_t one = 1;
    unsigned char c;
    memcpy(&c, &one, 1);
    return c == 1;
}

MT_API int32_t mt__ld_i32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }
MT_API int64_t mt__ld_i64(const unsigned char *p) { int64_t v; memcpy(&v, p, 8); return v; }
MT_API uint64_t mt__ld_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
MT_API uint32_t mt__ld_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* A 64-bit hash over bytes. Every step is a bijection of the state, so a change confined to
 * one 8-byte word always changes the result (used for cache keys and checksums). */
MT_API uint64_t mt__hash64(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    const uint64_t m = 0x9E3779B97F4A7C15ull;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * m;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ w ^ ((uint64_t)n << 59)) * m;
        h ^= h >> 29;
    }
    h = (h ^ (h >> 32)) * 0xD6E8FEB86659FD93ull;
    return h ^ (h >> 32);
}

MT_API mt_status mt__strdup(const char *s, char **out) {
    size_t n = strlen(s);
    MT_TRY(mt_calloc(n + 1, (void **)out));
    memcpy(*out, s, n);
    return MT_OK;
}

/* out = a + b (+ c), freshly allocated. */
MT_API mt_status mt__strcat3(const char *a, const char *b, const char *c, char **out) {
    size_t na = strlen(a), nb = strlen(b), nc = c ? strlen(c) : 0;
    MT_TRY(mt_calloc(na + nb + nc + 1, (void **)out));
    memcpy(*out, a, na);
    memcpy(*out + na, b, nb);
    if (nc) memcpy(*out + na + nb, c, nc);
    return MT_OK;
}

MT_API int mt__ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

MT_API double mt__now_ms(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* count * elem bytes, zeroed, with overflow checks; `what` names the array in messages. */
MT_API mt_status mt__alloc_array(int64_t count, size_t elem, void **out, const char *what) {
    *out = NULL;
    if (count < 0 || (uint64_t)count > (uint64_t)SIZE_MAX / elem)
        return mt_errorf(MT_ERR_OOM, "%s: %lld elements of %zu bytes do not fit in memory", what, (long long)count, elem);
    return mt_calloc((size_t)count * elem, out);
}

/* A read-only memory map of a whole file (empty files map to data = NULL, size = 0). */
typedef struct mt__map {
    const unsigned char *data;
    size_t size;  /* bytes */
    int borrowed; /* caller-owned memory (the *_memory functions): not unmapped */
} mt__map;

MT_API mt_status mt__map_open(mt__map *m, const char *path) {
    struct stat st;
    int fd;
    m->data = NULL;
    m->size = 0;
    m->borrowed = 0;
    fd = open(path, O_RDONLY);
    if (fd < 0) return mt_errorf(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mt_errorf(MT_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mt_errorf(MT_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return mt_errorf(MT_ERR_IO, "%s: size %lld cannot be mapped", path, (long long)st.st_size);
    }
    m->size = (size_t)st.st_size;
    if (m->size > 0) {
        void *p = mmap(NULL, m->size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            m->size = 0;
            return mt_errorf(MT_ERR_IO, "%s: cannot map %zu bytes: %s", path, (size_t)st.st_size, strerror(e));
        }
        m->data = (const unsigned char *)p;
    }
    close(fd);
    return MT_OK;
}

MT_API void mt__map_close(mt__map *m) {
    if (m->data && !m->borrowed) munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
    m->borrowed = 0;
}

MT_API mt_status mt__write_all(int fd, const void *buf, size_t n, const char *path) {
    const char *p = (const char *)buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return mt_errorf(MT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return MT_OK;
}

/* Create `final_path`'s temporary sibling `<final_path>.tmp<pid>-<n>` exclusively. */
MT_API mt_status mt__open_temp(const char *final_path, char **tmp_path, int *fd_out) {
    char suffix[64];
    int attempt;
    *tmp_path = NULL;
    *fd_out = -1;
    for (attempt = 0; attempt < 100; attempt++) {
        int fd;
        snprintf(suffix, sizeof suffix, ".tmp%ld-%d", (long)getpid(), attempt);
        MT_TRY(mt__strcat3(final_path, suffix, NULL, tmp_path));
        fd = open(*tmp_path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            *fd_out = fd;
            return MT_OK;
        }
        if (errno != EEXIST) {
            mt_status s = mt_errorf(MT_ERR_IO, "%s: cannot create: %s", *tmp_path, strerror(errno));
            mt_free(*tmp_path);
            *tmp_path = NULL;
            return s;
        }
        mt_free(*tmp_path);
        *tmp_path = NULL;
    }
    return mt_errorf(MT_ERR_IO, "%s: no free temporary name", final_path);
}

/* fsync the directory holding `path` so a rename survives a crash (best effort). */
MT_API void mt__fsync_dir_of(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    int fd;
    if (!slash) {
        dir[0] = '.';
        dir[1] = 0;
    } else {
        size_t n = (size_t)(slash - path);
        if (n == 0) n = 1;
        if (n >= sizeof dir) return;
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    if (!MT_DATA_FSYNC) return;
    fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* Flush, fsync and close a temporary file, then rename it over `final_path`. On failure the
 * temporary file is removed and `final_path` is untouched. */
MT_API mt_status mt__commit_temp(int fd, char *tmp_path, const char *final_path) {
    mt_status s = MT_OK;
    if (MT_DATA_FSYNC && fsync(fd) != 0) s = mt_errorf(MT_ERR_IO, "%s: fsync failed: %s", tmp_path, strerror(errno));
    if (close(fd) != 0 && s == MT_OK) s = mt_errorf(MT_ERR_IO, "%s: close failed: %s", tmp_path, strerror(errno));
    if (s == MT_OK && rename(tmp_path, final_path) != 0)
        s = mt_errorf(MT_ERR_IO, "cannot rename %s to %s: %s", tmp_path, final_path, strerror(errno));
    if (s != MT_OK) unlink(tmp_path);
    else mt__fsync_dir_of(final_path);
    mt_free(tmp_path);
    return s;
}

/* Write `n` buffers to `path` atomically. */
MT_API mt_status mt__atomic_write(const char *path, int n, const void *const *bufs, const size_t *sizes) {
    char *tmp = NULL;
    int fd = -1, i;
    MT_TRY(mt__open_temp(path, &tmp, &fd));
    for (i = 0; i < n; i++) {
        mt_status s = mt__write_all(fd, bufs[i], sizes[i], tmp);
        if (s != MT_OK) {
            close(fd);
            unlink(tmp);
            mt_free(tmp);
            return s;
        }
    }
    return mt__commit_temp(fd, tmp, path);
}

/* ------------------------------------------------------------------ Megatron dtype codes */

/* X(code, name, bytes) — the codes of megatron/core/datasets/indexed_dataset.py DType. */
#define MT_IDX_DTYPES(X) \
    X(1, u8, 1)          \
    X(2, i8, 1)          \
    X(3, i16, 2)         \
    X(4, i32, 4)         \
    X(5, i64, 8)         \
    X(6, f64, 8)         \
    X(7, f32, 4)         \
    X(8, u16, 2)

enum { MT_IDX_U8 = 1, MT_IDX_I8 = 2, MT_IDX_I16 = 3, MT_IDX_I32 = 4, MT_IDX_I64 = 5, MT_IDX_F64 = 6, MT_IDX_F32 = 7, MT_IDX_U16 = 8 };

MT_API int mt_idx_dtype_size(int code) {
    switch (code) {
#define MT__X(c, name, sz) case c: return sz;
        MT_IDX_DTYPES(MT__X)
#undef MT__X
        default: return 0;
    }
}

MT_API const char *mt_idx_dtype_name(int code) {
    switch (code) {
#define MT__X(c, name, sz) case c: return #name;
        MT_IDX_DTYPES(MT__X)
#undef MT__X
        default: return "?";
    }
}

/* What Megatron's preprocessor writes for a vocabulary: uint16 below 65500, else int32. */
MT_API int mt_idx_optimal_dtype(int64_t vocab_size) { return vocab_size < 65500 ? MT_IDX_U16 : MT_IDX_I32; }

/* ------------------------------------------------------------------ indexed dataset reader */

#define MT_IDX_HEADER_BYTES 34
#define MT_LLMC_MAGIC 20240520
#define MT_LLMC_HEADER_BYTES 1024

enum { MT_INDEXED_MEGATRON = 0, MT_INDEXED_LLMC = 1 };

/* A memory-mapped token dataset: Megatron's prefix.idx + prefix.bin, or one llm.c token file
 * (which reads as one sequence in one document). */
typedef struct mt_indexed {
    char *path_idx;   /* for messages; the .bin for llm.c files */
    char *path_bin;
    int kind;         /* MT_INDEXED_MEGATRON or MT_INDEXED_LLMC */
    int dtype_code;   /* Megatron dtype code 1..8 (llm.c: MT_IDX_U16) */
    int elem_size;    /* bytes per token */
    int multimodal;   /* the .idx carries a modes array */
    int64_t n_seq;    /* sequences */
    int64_t n_doc;    /* entries of document_indices (documents + 1) */
    int64_t llmc_ntok;
    mt__map idx, bin;
    const unsigned char *lengths;  /* int32[n_seq], possibly unaligned */
    const unsigned char *pointers; /* int64[n_seq], byte offsets into .bin */
    const unsigned char *docs;     /* int64[n_doc] */
} mt_indexed;

MT_API int64_t mt_indexed_seq_len(const mt_indexed *ds, int64_t i) {
    if (ds->kind == MT_INDEXED_LLMC) return ds->llmc_ntok;
    return mt__ld_i32(ds->lengths + 4 * (size_t)i);
}
MT_API int64_t mt_indexed_seq_ptr(const mt_indexed *ds, int64_t i) {
    if (ds->kind == MT_INDEXED_LLMC) return MT_LLMC_HEADER_BYTES;
    return mt__ld_i64(ds->pointers + 8 * (size_t)i);
}
MT_API int64_t mt_indexed_doc_index(const mt_indexed *ds, int64_t i) {
    if (ds->kind == MT_INDEXED_LLMC) return i == 0 ? 0 : 1;
    return mt__ld_i64(ds->docs + 8 * (size_t)i);
}

MT_API void mt_indexed_close(mt_indexed *ds) {
    mt__map_close(&ds->idx);
    mt__map_close(&ds->bin);
    mt_free(ds->path_idx);
    mt_free(ds->path_bin);
    memset(ds, 0, sizeof *ds);
}

/* Validate an llm.c token file already mapped in ds->bin. */
MT_API mt_status mt__indexed_check_llmc(mt_indexed *ds) {
    const char *p = ds->path_bin;
    int32_t magic, version, ntok;
    if (ds->bin.size < MT_LLMC_HEADER_BYTES)
        return mt_errorf(MT_ERR_FORMAT, "%s: truncated llm.c header: %zu bytes, expected at least %d", p, ds->bin.size,
                         MT_LLMC_HEADER_BYTES);
    magic = mt__ld_i32(ds->bin.data);
    version = mt__ld_i32(ds->bin.data + 4);
    ntok = mt__ld_i32(ds->bin.data + 8);
    if (magic != MT_LLMC_MAGIC)
        return mt_errorf(MT_ERR_FORMAT, "%s: header[0] (magic) = %d, expected %d (llm.c token file)", p, magic, MT_LLMC_MAGIC);
    if (version != 1)
        return mt_errorf(MT_ERR_FORMAT, "%s: header[1] (version) = %d, expected 1 (uint16 tokens)", p, version);
    if (ntok < 0) return mt_errorf(MT_ERR_FORMAT, "%s: header[2] (token count) = %d is negative", p, ntok);
    if ((uint64_t)ds->bin.size != (uint64_t)MT_LLMC_HEADER_BYTES + 2u * (uint64_t)ntok)
        return mt_errorf(MT_ERR_FORMAT, "%s: header[2] (token count) = %d needs a file of %llu bytes, the file has %zu", p,
                         ntok, (unsigned long long)(MT_LLMC_HEADER_BYTES + 2ull * (uint64_t)ntok), ds->bin.size);
    ds->kind = MT_INDEXED_LLMC;
    ds->dtype_code = MT_IDX_U16;
    ds->elem_size = 2;
    ds->n_seq = 1;
    ds->n_doc = 2;
    ds->llmc_ntok = ntok;
    return MT_OK;
}

/* Validate a Megatron .idx (mapped in ds->idx) against its .bin (mapped in ds->bin). */
MT_API mt_status mt__indexed_check_megatron(mt_indexed *ds) {
    const char *pi = ds->path_idx, *pb = ds->path_bin;
    const unsigned char *h = ds->idx.data;
    uint64_t version, nseq, ndoc, need, body;
    int code, esz;
    int64_t i, prev;
    if (ds->idx.size < MT_IDX_HEADER_BYTES)
        return mt_errorf(MT_ERR_FORMAT, "%s: truncated header: %zu bytes, expected at least %d", pi, ds->idx.size,
                         MT_IDX_HEADER_BYTES);
    if (memcmp(h, "MMIDIDX\x00\x00", 9) != 0)
        return mt_errorf(MT_ERR_FORMAT, "%s: wrong magic: expected \"MMIDIDX\\x00\\x00\" (a Megatron mmap .idx file)", pi);
    version = mt__ld_u64(h + 9);
    if (version != 1)
        return mt_errorf(MT_ERR_FORMAT, "%s: field version = %llu, expected 1", pi, (unsigned long long)version);
    code = h[17];
    esz = mt_idx_dtype_size(code);
    if (esz == 0)
        return mt_errorf(MT_ERR_FORMAT,
                         "%s: field dtype code = %d, expected 1..8 (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16)",
                         pi, code);
    nseq = mt__ld_u64(h + 18);
    ndoc = mt__ld_u64(h + 26);
    body = (uint64_t)ds->idx.size - MT_IDX_HEADER_BYTES;
    if (nseq > body / 12)
        return mt_errorf(MT_ERR_FORMAT,
                         "%s: field sequence count = %llu needs %.0f bytes of lengths and pointers, the file has %llu "
                         "after the header (truncated or corrupt)",
                         pi, (unsigned long long)nseq, 12.0 * (double)nseq, (unsigned long long)body);
    if (ndoc > (body - 12 * nseq) / 8)
        return mt_errorf(MT_ERR_FORMAT,
                         "%s: field document count = %llu with sequence count %llu needs %.0f bytes, the file has %zu "
                         "(truncated or corrupt)",
                         pi, (unsigned long long)ndoc, (unsigned long long)nseq,
                         (double)MT_IDX_HEADER_BYTES + 12.0 * (double)nseq + 8.0 * (double)ndoc, ds->idx.size);
    need = MT_IDX_HEADER_BYTES + 12 * nseq + 8 * ndoc;
    if ((uint64_t)ds->idx.size == need) ds->multimodal = 0;
    else if ((uint64_t)ds->idx.size == need + nseq) ds->multimodal = 1;
    else
        return mt_errorf(MT_ERR_FORMAT,
                         "%s: size %zu bytes, expected %llu (or %llu with modes) for %llu sequences and %llu document "
                         "indices",
                         pi, ds->idx.size, (unsigned long long)need, (unsigned long long)(need + nseq),
                         (unsigned long long)nseq, (unsigned long long)ndoc);
    if (ndoc < 1)
        return mt_errorf(MT_ERR_FORMAT, "%s: field document count = 0, expected at least 1 (document_indices starts with 0)", pi);
    ds->dtype_code = code;
    ds->elem_size = esz;
    ds->n_seq = (int64_t)nseq;
    ds->n_doc = (int64_t)ndoc;
    ds->lengths = h + MT_IDX_HEADER_BYTES;
    ds->pointers = ds->lengths + 4 * nseq;
    ds->docs = ds->pointers + 8 * nseq;
    for (i = 0; i < ds->n_seq; i++) {
        int64_t len = mt__ld_i32(ds->lengths + 4 * (size_t)i);
        int64_t ptr = mt__ld_i64(ds->pointers + 8 * (size_t)i);
        uint64_t nbytes;
        if (len < 0)
            return mt_errorf(MT_ERR_FORMAT, "%s: sequence_lengths[%lld] = %lld is negative", pi, (long long)i, (long long)len);
        nbytes = (uint64_t)len * (uint64_t)esz;
        if (ptr < 0 || (uint64_t)ptr > (uint64_t)ds->bin.size || nbytes > (uint64_t)ds->bin.size - (uint64_t)ptr)
            return mt_errorf(MT_ERR_FORMAT,
                             "%s: sequence_pointers[%lld] = %lld with sequence_lengths[%lld] = %lld x %d bytes runs past "
                             "the end of %s (%zu bytes)",
                             pi, (long long)i, (long long)ptr, (long long)i, (long long)len, esz, pb, ds->bin.size);
    }
    prev = mt__ld_i64(ds->docs);
    if (prev != 0) return mt_errorf(MT_ERR_FORMAT, "%s: document_indices[0] = %lld, expected 0", pi, (long long)prev);
    for (i = 1; i < ds->n_doc; i++) {
        int64_t d = mt__ld_i64(ds->docs + 8 * (size_t)i);
        if (d < prev)
            return mt_errorf(MT_ERR_FORMAT, "%s: document_indices not monotone: [%lld] = %lld < [%lld] = %lld", pi,
                             (long long)i, (long long)d, (long long)(i - 1), (long long)prev);
        if (d > ds->n_seq)
            return mt_errorf(MT_ERR_FORMAT, "%s: document_indices[%lld] = %lld exceeds the sequence count %lld", pi,
                             (long long)i, (long long)d, (long long)ds->n_seq);
        prev = d;
    }
    if (prev != ds->n_seq)
        return mt_errorf(MT_ERR_FORMAT, "%s: document_indices[%lld] (last) = %lld, expected the sequence count %lld", pi,
                         (long long)(ds->n_doc - 1), (long long)prev, (long long)ds->n_seq);
    return MT_OK;
}

/* Open `path`: a Megatron prefix (reads path.idx + path.bin), one of those two file names, or an
 * llm.c token file (detected by its header magic). Validates everything before returning. */
MT_API mt_status mt_indexed_open(mt_indexed *ds, const char *path) {
    struct stat st;
    mt_status s;
    memset(ds, 0, sizeof *ds);
    if (!mt__host_is_le()) return mt_errorf(MT_ERR_UNSUPPORTED, "%s: indexed datasets are little-endian; this host is not", path);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        unsigned char head[4] = {0, 0, 0, 0};
        int fd = open(path, O_RDONLY);
        ssize_t got = 0;
        if (fd >= 0) {
            got = read(fd, head, 4);
            close(fd);
        }
        if (got == 4 && mt__ld_i32(head) == MT_LLMC_MAGIC && !mt__ends_with(path, ".idx")) {
            MT_TRY(mt__strdup(path, &ds->path_bin));
            s = mt__strdup(path, &ds->path_idx);
            if (s == MT_OK) s = mt__map_open(&ds->bin, path);
            if (s == MT_OK) s = mt__indexed_check_llmc(ds);
            if (s != MT_OK) mt_indexed_close(ds);
            return s;
        }
        if (mt__ends_with(path, ".bin") || mt__ends_with(path, ".idx")) {
            size_t n = strlen(path) - 4;
            char *prefix = NULL;
            MT_TRY(mt_calloc(n + 1, (void **)&prefix));
            memcpy(prefix, path, n);
            s = mt__strcat3(prefix, ".idx", NULL, &ds->path_idx);
            if (s == MT_OK) s = mt__strcat3(prefix, ".bin", NULL, &ds->path_bin);
            mt_free(prefix);
            if (s != MT_OK) { mt_indexed_close(ds); return s; }
            if (mt__ends_with(path, ".bin") && stat(ds->path_idx, &st) != 0) {
                s = mt_errorf(MT_ERR_FORMAT, "%s: not an llm.c token file (header magic %d, expected %d) and %s does not exist",
                              path, got == 4 ? mt__ld_i32(head) : -1, MT_LLMC_MAGIC, ds->path_idx);
                mt_indexed_close(ds);
                return s;
            }
        }
    }
    if (!ds->path_idx) {
        s = mt__strcat3(path, ".idx", NULL, &ds->path_idx);
        if (s == MT_OK) s = mt__strcat3(path, ".bin", NULL, &ds->path_bin);
        if (s != MT_OK) { mt_indexed_close(ds); return s; }
    }
    ds->kind = MT_INDEXED_MEGATRON;
    s = mt__map_open(&ds->idx, ds->path_idx);
    if (s == MT_OK) s = mt__map_open(&ds->bin, ds->path_bin);
    if (s == MT_OK) s = mt__indexed_check_megatron(ds);
    if (s != MT_OK) mt_indexed_close(ds);
    return s;
}

/* The same from bytes in memory (kept by the caller until close): `idx`/`bin` as the two files
 * would hold them, or `idx` = NULL and `bin` an llm.c token file. `name` is used in messages. */
MT_API mt_status mt_indexed_open_memory(mt_indexed *ds, const void *idx, size_t idx_size, const void *bin, size_t bin_size,
                                        const char *name) {
    mt_status s;
    memset(ds, 0, sizeof *ds);
    if (!mt__host_is_le()) return mt_errorf(MT_ERR_UNSUPPORTED, "%s: indexed datasets are little-endian; this host is not", name);
    s = mt__strcat3(name, idx ? ".idx" : "", NULL, &ds->path_idx);
    if (s == MT_OK) s = mt__strcat3(name, idx ? ".bin" : "", NULL, &ds->path_bin);
    if (s != MT_OK) { mt_indexed_close(ds); return s; }
    ds->bin.data = (const unsigned char *)bin;
    ds->bin.size = bin ? bin_size : 0;
    ds->bin.borrowed = 1;
    if (idx) {
        ds->idx.data = (const unsigned char *)idx;
        ds->idx.size = idx_size;
        ds->idx.borrowed = 1;
        ds->kind = MT_INDEXED_MEGATRON;
        s = mt__indexed_check_megatron(ds);
    } else {
        s = mt__indexed_check_llmc(ds);
    }
    if (s != MT_OK) mt_indexed_close(ds);
    return s;
}

/* Tokens [offset, offset + count) of sequence `seq`, converted to int32. Float and int64 tokens
 * that are not integers representable in int32 are an error naming the position. */
MT_API mt_status mt_indexed_read(const mt_indexed *ds, int64_t seq, int64_t offset, int64_t count, int32_t *out) {
    const unsigned char *p;
    int64_t len, i;
    if (seq < 0 || seq >= ds->n_seq)
        return mt_errorf(MT_ERR_ARG, "%s: sequence %lld out of range [0, %lld)", ds->path_bin, (long long)seq,
                         (long long)ds->n_seq);
    len = mt_indexed_seq_len(ds, seq);
    if (offset < 0 || count < 0 || offset > len || count > len - offset)
        return mt_errorf(MT_ERR_ARG, "%s: tokens [%lld, %lld) outside sequence %lld of length %lld", ds->path_bin,
                         (long long)offset, (long long)(offset + count), (long long)seq, (long long)len);
    if (count == 0) return MT_OK;
    p = ds->bin.data + mt_indexed_seq_ptr(ds, seq) + (size_t)offset * (size_t)ds->elem_size;
    switch (ds->dtype_code) {
        case MT_IDX_U8: for (i = 0; i < count; i++) out[i] = p[i]; break;
        case MT_IDX_I8: for (i = 0; i < count; i++) out[i] = (int8_t)p[i]; break;
        case MT_IDX_I16:
            for (i = 0; i < count; i++) { int16_t v; memcpy(&v, p + 2 * i, 2); out[i] = v; }
            break;
        case MT_IDX_U16:
            for (i = 0; i < count; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); out[i] = v; }
            break;
        case MT_IDX_I32: memcpy(out, p, (size_t)count * 4); break;
        case MT_IDX_I64:
            for (i = 0; i < count; i++) {
                int64_t v;
                memcpy(&v, p + 8 * i, 8);
                if (v < INT32_MIN || v > INT32_MAX)
                    return mt_errorf(MT_ERR_FORMAT, "%s: token %lld of sequence %lld = %lld does not fit in int32",
                                     ds->path_bin, (long long)(offset + i), (long long)seq, (long long)v);
                out[i] = (int32_t)v;
            }
            break;
        case MT_IDX_F32:
        case MT_IDX_F64:
            for (i = 0; i < count; i++) {
                double v;
                if (ds->dtype_code == MT_IDX_F32) { float f; memcpy(&f, p + 4 * i, 4); v = f; }
                else memcpy(&v, p + 8 * i, 8);
                if (!(v >= -2147483648.0 && v <= 2147483647.0) || v != floor(v))
                    return mt_errorf(MT_ERR_FORMAT, "%s: token %lld of sequence %lld = %g is not an int32 token id",
                                     ds->path_bin, (long long)(offset + i), (long long)seq, v);
                out[i] = (int32_t)v;
            }
            break;
        default: return mt_errorf(MT_ERR_INTERNAL, "%s: dtype code %d", ds->path_bin, ds->dtype_code);
    }
    return MT_OK;
}

/* ------------------------------------------------------------------ indexed dataset writer */

/* Writes prefix.bin / prefix.idx the way Megatron's IndexedDatasetBuilder does, byte for byte.
 * Both files are written under temporary names and renamed into place only by _finish (the .bin
 * first, then the .idx); _abort or a failure leaves any existing files untouched. */
typedef struct mt_indexed_writer {
    char *path_bin, *path_idx, *tmp_bin;
    int fd_bin;
    int dtype_code, elem_size;
    unsigned char *buf; /* staging for .bin writes */
    size_t buf_used, buf_cap;
    int32_t *lengths; /* (n_seq,) */
    int64_t n_seq, cap_seq;
    int64_t *docs; /* (n_doc,) starts with 0 */
    int64_t n_doc, cap_doc;
    int64_t bin_bytes;
} mt_indexed_writer;

MT_API void mt_indexed_writer_abort(mt_indexed_writer *w) {
    if (w->fd_bin >= 0) close(w->fd_bin);
    if (w->tmp_bin) unlink(w->tmp_bin);
    mt_free(w->tmp_bin);
    mt_free(w->path_bin);
    mt_free(w->path_idx);
    mt_free(w->buf);
    mt_free(w->lengths);
    mt_free(w->docs);
    memset(w, 0, sizeof *w);
    w->fd_bin = -1;
}

MT_API mt_status mt_indexed_writer_open(mt_indexed_writer *w, const char *prefix, int dtype_code) {
    mt_status s;
    memset(w, 0, sizeof *w);
    w->fd_bin = -1;
    if (mt_idx_dtype_size(dtype_code) == 0)
        return mt_errorf(MT_ERR_ARG, "%s: dtype code %d, expected 1..8", prefix, dtype_code);
    if (!mt__host_is_le()) return mt_errorf(MT_ERR_UNSUPPORTED, "%s: indexed datasets are little-endian; this host is not", prefix);
    w->dtype_code = dtype_code;
    w->elem_size = mt_idx_dtype_size(dtype_code);
    w->buf_cap = (size_t)1 << 20;
    s = mt__strcat3(prefix, ".bin", NULL, &w->path_bin);
    if (s == MT_OK) s = mt__strcat3(prefix, ".idx", NULL, &w->path_idx);
    if (s == MT_OK) s = mt_calloc(w->buf_cap, (void **)&w->buf);
    if (s == MT_OK) { w->cap_seq = 1024; s = mt__alloc_array(w->cap_seq, 4, (void **)&w->lengths, "writer lengths"); }
    if (s == MT_OK) { w->cap_doc = 1024; s = mt__alloc_array(w->cap_doc, 8, (void **)&w->docs, "writer documents"); }
    if (s == MT_OK) s = mt__open_temp(w->path_bin, &w->tmp_bin, &w->fd_bin);
    if (s != MT_OK) { mt_indexed_writer_abort(w); return s; }
    w->docs[0] = 0;
    w->n_doc = 1;
    return MT_OK;
}

MT_API mt_status mt__grow(void **arr, int64_t *cap, int64_t need, size_t elem, const char *what) {
    void *p;
    int64_t nc;
    if (need <= *cap) return MT_OK;
    nc = *cap * 2 > need ? *cap * 2 : need;
    MT_TRY(mt__alloc_array(nc, elem, &p, what));
    memcpy(p, *arr, (size_t)*cap * elem);
    mt_free(*arr);
    *arr = p;
    *cap = nc;
    return MT_OK;
}

MT_API mt_status mt__writer_flush(mt_indexed_writer *w) {
    mt_status s = mt__write_all(w->fd_bin, w->buf, w->buf_used, w->tmp_bin);
    w->buf_used = 0;
    return s;
}

/* Append one sequence of `n` tokens (Megatron's add_item). Tokens must fit the dtype. */
MT_API mt_status mt_indexed_writer_add_sequence(mt_indexed_writer *w, const int32_t *tokens, int64_t n) {
    int64_t i;
    int es = w->elem_size;
    if (n < 0 || n > INT32_MAX) return mt_errorf(MT_ERR_ARG, "%s: sequence of %lld tokens (int32 lengths)", w->path_bin, (long long)n);
    for (i = 0; i < n; i++) {
        int32_t t = tokens[i];
        unsigned char b[8];
        int ok = 1;
        switch (w->dtype_code) {
            case MT_IDX_U8: ok = t >= 0 && t <= 255; b[0] = (unsigned char)t; break;
            case MT_IDX_I8: ok = t >= -128 && t <= 127; { int8_t v = (int8_t)t; memcpy(b, &v, 1); } break;
            case MT_IDX_I16: ok = t >= -32768 && t <= 32767; { int16_t v = (int16_t)t; memcpy(b, &v, 2); } break;
            case MT_IDX_U16: ok = t >= 0 && t <= 65535; { uint16_t v = (uint16_t)t; memcpy(b, &v, 2); } break;
            case MT_IDX_I32: memcpy(b, &t, 4); break;
            case MT_IDX_I64: { int64_t v = t; memcpy(b, &v, 8); } break;
            case MT_IDX_F32: { float v = (float)t; ok = (int32_t)v == t; memcpy(b, &v, 4); } break;
            case MT_IDX_F64: { double v = t; memcpy(b, &v, 8); } break;
            default: ok = 0;
        }
        if (!ok)
            return mt_errorf(MT_ERR_ARG, "%s: token %d does not fit dtype %s", w->path_bin, t, mt_idx_dtype_name(w->dtype_code));
        if (w->buf_used + (size_t)es > w->buf_cap) MT_TRY(mt__writer_flush(w));
        memcpy(w->buf + w->buf_used, b, (size_t)es);
        w->buf_used += (size_t)es;
    }
    MT_TRY(mt__grow((void **)&w->lengths, &w->cap_seq, w->n_seq + 1, 4, "writer lengths"));
    w->lengths[w->n_seq++] = (int32_t)n;
    w->bin_bytes += n * es;
    return MT_OK;
}

/* Close the current document (Megatron's end_document): appends the sequence count. */
MT_API mt_status mt_indexed_writer_end_document(mt_indexed_writer *w) {
    MT_TRY(mt__grow((void **)&w->docs, &w->cap_doc, w->n_doc + 1, 8, "writer documents"));
    w->docs[w->n_doc++] = w->n_seq;
    return MT_OK;
}

/* Megatron's add_document: `n_lengths` sequences whose tokens lie back to back in `tokens`,
 * then end the document. n_lengths = 0 makes an empty document. */
MT_API mt_status mt_indexed_writer_add_document(mt_indexed_writer *w, const int32_t *tokens, const int64_t *lengths,
                                                int64_t n_lengths) {
    int64_t i, off = 0;
    for (i = 0; i < n_lengths; i++) {
        MT_TRY(mt_indexed_writer_add_sequence(w, tokens + off, lengths[i]));
        off += lengths[i];
    }
    return mt_indexed_writer_end_document(w);
}

/* Write the .idx, fsync both files and rename them into place. Frees the writer. */
MT_API mt_status mt_indexed_writer_finish(mt_indexed_writer *w) {
    unsigned char hdr[MT_IDX_HEADER_BYTES];
    uint64_t v;
    int64_t *ptrs = NULL, i, cur = 0;
    const void *bufs[4];
    size_t sizes[4];
    mt_status s = mt__writer_flush(w);
    if (s == MT_OK) s = mt__alloc_array(w->n_seq, 8, (void **)&ptrs, "writer pointers");
    if (s != MT_OK) { mt_indexed_writer_abort(w); return s; }
    for (i = 0; i < w->n_seq; i++) {
        ptrs[i] = cur;
        cur += (int64_t)w->lengths[i] * w->elem_size;
    }
    memcpy(hdr, "MMIDIDX\x00\x00", 9);
    v = 1; memcpy(hdr + 9, &v, 8);
    hdr[17] = (unsigned char)w->dtype_code;
    v = (uint64_t)w->n_seq; memcpy(hdr + 18, &v, 8);
    v = (uint64_t)w->n_doc; memcpy(hdr + 26, &v, 8);
    bufs[0] = hdr; sizes[0] = sizeof hdr;
    bufs[1] = w->lengths; sizes[1] = (size_t)w->n_seq * 4;
    bufs[2] = ptrs; sizes[2] = (size_t)w->n_seq * 8;
    bufs[3] = w->docs; sizes[3] = (size_t)w->n_doc * 8;
    /* .bin first: a reader never sees a new .idx without its .bin. */
    s = mt__commit_temp(w->fd_bin, w->tmp_bin, w->path_bin);
    w->fd_bin = -1;
    w->tmp_bin = NULL;
    if (s == MT_OK) s = mt__atomic_write(w->path_idx, 4, bufs, sizes);
    mt_free(ptrs);
    mt_indexed_writer_abort(w);
    return s;
}

/* ------------------------------------------------------------------ numpy's RandomState */

/* MT19937 seeded and drawn exactly as numpy.random.RandomState(seed) (legacy seeding with an
 * integer seed), with its bounded integers and its in-place Fisher-Yates shuffle. */
typedef struct mt_np_random {
    uint32_t key[624];
    int pos;
} mt_np_random;

MT_API void mt_np_random_seed(mt_np_random *r, uint32_t seed) {
    int i;
    for (i = 0; i < 624; i++) {
        r->key[i] = seed;
        seed = 1812433253u * (seed ^ (seed >> 30)) + (uint32_t)i + 1u;
    }
    r->pos = 624;
}

MT_API void mt__np_random_gen(mt_np_random *r) {
    uint32_t *k = r->key, y;
    int i;
    for (i = 0; i < 624 - 397; i++) {
        y = (k[i] & 0x80000000u) | (k[i + 1] & 0x7fffffffu);
        k[i] = k[i + 397] ^ (y >> 1) ^ ((0u - (y & 1u)) & 0x9908b0dfu);
    }
    for (; i < 623; i++) {
        y = (k[i] & 0x80000000u) | (k[i + 1] & 0x7fffffffu);
        k[i] = k[i + 397 - 624] ^ (y >> 1) ^ ((0u - (y & 1u)) & 0x9908b0dfu);
    }
    y = (k[623] & 0x80000000u) | (k[0] & 0x7fffffffu);
    k[623] = k[396] ^ (y >> 1) ^ ((0u - (y & 1u)) & 0x9908b0dfu);
    r->pos = 0;
}

MT_API uint32_t mt_np_random_next32(mt_np_random *r) {
    uint32_t y;
    if (r->pos == 624) mt__np_random_gen(r);
    y = r->key[r->pos++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* A uniform integer in [0, max] by masked rejection (numpy's random_interval). */
MT_API uint64_t mt_np_random_interval(mt_np_random *r, uint64_t max) {
    uint64_t mask = max, v;
    if (max == 0) return 0;
    mask |= mask >> 1; mask |= mask >> 2; mask |= mask >> 4;
    mask |= mask >> 8; mask |= mask >> 16; mask |= mask >> 32;
    if (max <= 0xffffffffull) {
        while ((v = (mt_np_random_next32(r) & mask)) > max) {}
    } else {
        for (;;) {
            uint64_t hi = mt_np_random_next32(r);
            v = ((hi << 32) | mt_np_random_next32(r)) & mask;
            if (v <= max) break;
        }
    }
    return v;
}

/* RandomState.shuffle of a 1-D array: for i = n-1 .. 1, swap x[i] with x[interval(i)]. */
MT_API void mt_np_random_shuffle_i32(mt_np_random *r, int32_t *x, int64_t n) {
    int64_t i;
    for (i = n - 1; i >= 1; i--) {
        int64_t j = (int64_t)mt_np_random_interval(r, (uint64_t)i);
        int32_t t = x[i]; x[i] = x[j]; x[j] = t;
    }
}
MT_API void mt_np_random_shuffle_i64(mt_np_random *r, int64_t *x, int64_t n) {
    int64_t i;
    for (i = n - 1; i >= 1; i--) {
        int64_t j = (int64_t)mt_np_random_interval(r, (uint64_t)i);
        int64_t t = x[i]; x[i] = x[j]; x[j] = t;
    }
}

/* ------------------------------------------------------------------ weights and splits */

/* numpy's float64 sum (pairwise summation, 8-way unrolled blocks of 128) — so normalised
 * weights carry the same bits as Megatron's `normalize`. */
MT_API double mt__np_pairwise_sum(const double *a, int64_t n) {
    if (n < 8) {
        double res = 0.;
        int64_t i;
        for (i = 0; i < n; i++) res += a[i];
        return res;
    } else if (n <= 128) {
        double r[8], res;
        int64_t i;
        for (i = 0; i < 8; i++) r[i] = a[i];
        for (i = 8; i < n - (n % 8); i += 8) {
            r[0] += a[i + 0]; r[1] += a[i + 1]; r[2] += a[i + 2]; r[3] += a[i + 3];
            r[4] += a[i + 4]; r[5] += a[i + 5]; r[6] += a[i + 6]; r[7] += a[i + 7];
        }
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    } else {
        int64_t n2 = n / 2;
        n2 -= n2 % 8;
        return mt__np_pairwise_sum(a, n2) + mt__np_pairwise_sum(a + n2, n - n2);
    }
}

/* out[i] = w[i] / sum(w), the sum taken as numpy takes it. */
MT_API void mt_normalize_weights(const double *w, int n, double *out) {
    double s = mt__np_pairwise_sum(w, n);
    int i;
    for (i = 0; i < n; i++) out[i] = w[i] / s;
}

/* Parse Megatron's --split ("949,50,1", "98/2/0", "99,1") and return document range
 * [*begin, *end) of part `split_index` (0 train, 1 valid, 2 test) out of n_docs documents.
 * A part whose share is zero is empty. */
MT_API mt_status mt_split_range(const char *split, int split_index, int64_t n_docs, int64_t *begin, int64_t *end) {
    double v[3] = {0, 0, 0}, norm[3], lo, hi;
    int n = 0, i;
    const char *p = split;
    *begin = *end = 0;
    if (split_index < 0 || split_index > 2) return mt_errorf(MT_ERR_ARG, "split index %d, expected 0 (train), 1 (valid) or 2 (test)", split_index);
    while (*p) {
        if ((*p >= '0' && *p <= '9') || *p == '.') {
            char *e;
            double x = strtod(p, &e);
            if (e == p) return mt_errorf(MT_ERR_ARG, "--split \"%s\": cannot read a number at \"%s\"", split, p);
            if (n == 3) return mt_errorf(MT_ERR_ARG, "--split \"%s\": more than 3 parts", split);
            v[n++] = x;
            p = e;
        } else if (*p == '-') {
            return mt_errorf(MT_ERR_ARG, "--split \"%s\": negative parts are not allowed", split);
        } else {
            p++;
        }
    }
    if (n == 0) return mt_errorf(MT_ERR_ARG, "--split \"%s\": no numbers (expected e.g. 949,50,1)", split);
    for (i = 0; i < 3; i++)
        if (!(v[i] >= 0) || v[i] > 1e300) return mt_errorf(MT_ERR_ARG, "--split \"%s\": part %d is not a finite number >= 0", split, i);
    if (!(v[0] + v[1] + v[2] > 0)) return mt_errorf(MT_ERR_ARG, "--split \"%s\": all parts are zero", split);
    mt_normalize_weights(v, 3, norm);
    lo = 0;
    for (i = 0; i < split_index; i++) lo = lo + norm[i];
    hi = lo + norm[split_index];
    if (hi <= lo) return MT_OK; /* Megatron builds no dataset for this part */
    /* Python's round(): half to even, as nearbyint does in the default rounding mode. */
    *begin = (int64_t)nearbyint(lo * (double)n_docs);
    *end = (int64_t)nearbyint(hi * (double)n_docs);
    if (*begin < 0) *begin = 0;
    if (*end > n_docs) *end = n_docs;
    if (*end < *begin) *end = *begin;
    return MT_OK;
}

/* ------------------------------------------------------------------ GPT sample indices */

typedef struct mt_gpt_index_config {
    int64_t doc_begin, doc_end; /* the documents (sequences) of this split: [begin, end) */
    int seq_len;                /* tokens per sample are seq_len + 1 */
    int64_t num_samples;        /* samples wanted; 0 = one epoch */
    uint64_t seed;              /* numpy RandomState seed (< 2^32); Megatron's default is 1234 */
    const char *cache_dir;      /* NULL = next to the data */
    int no_cache;               /* 1 = neither read nor write a cache */
} mt_gpt_index_config;

typedef struct mt_gpt_index {
    int32_t *doc_index;     /* (n_doc_index,) document ids, tiled over epochs and shuffled */
    int64_t *sample_index;  /* (n_samples + 1, 2) (position in doc_index, token offset) */
    int64_t *shuffle_index; /* (n_samples,) a permutation of samples */
    int64_t n_doc_index, n_samples, num_epochs, tokens_per_epoch;
    int separate_final_epoch;
    int from_cache;   /* 1 when read from the on-disk cache */
    uint64_t key;     /* hash of all parameters and the sequence lengths */
    mt__map map;      /* the cache file when from_cache */
} mt_gpt_index;

MT_API void mt_gpt_index_free(mt_gpt_index *gi) {
    if (gi->from_cache || gi->map.data) mt__map_close(&gi->map);
    else {
        mt_free(gi->doc_index);
        mt_free(gi->sample_index);
        mt_free(gi->shuffle_index);
    }
    memset(gi, 0, sizeof *gi);
}

/* The sizes Megatron derives from the parameters (no allocation). */
typedef struct mt__gpt_plan {
    int64_t ndocs, tokens, num_epochs, n_doc_index, n_samples, n_first_shuffle;
    int separate;
} mt__gpt_plan;

MT_API mt_status mt__gpt_plan_make(const mt_indexed *ds, const mt_gpt_index_config *c, mt__gpt_plan *pl) {
    const char *p = ds->path_idx;
    int64_t i, requested;
    memset(pl, 0, sizeof *pl);
    if (c->doc_begin < 0 || c->doc_end < c->doc_begin || c->doc_end > ds->n_seq)
        return mt_errorf(MT_ERR_ARG, "%s: document range [%lld, %lld) outside [0, %lld)", p, (long long)c->doc_begin,
                         (long long)c->doc_end, (long long)ds->n_seq);
    if (c->seq_len < 1) return mt_errorf(MT_ERR_ARG, "%s: seq_len = %d, expected >= 1", p, c->seq_len);
    if (c->num_samples < 0) return mt_errorf(MT_ERR_ARG, "%s: num_samples = %lld is negative", p, (long long)c->num_samples);
    if (c->seed > 0xffffffffull)
        return mt_errorf(MT_ERR_ARG, "seed %llu: numpy RandomState seeds must be below 2^32", (unsigned long long)c->seed);
    if (c->doc_end - c->doc_begin > INT32_MAX)
        return mt_errorf(MT_ERR_ARG, "%s: %lld documents in one split (the document index holds int32 ids)", p,
                         (long long)(c->doc_end - c->doc_begin));
    pl->ndocs = c->doc_end - c->doc_begin;
    for (i = c->doc_begin; i < c->doc_end; i++) pl->tokens += mt_indexed_seq_len(ds, i);
    if (pl->tokens < 2)
        return mt_errorf(MT_ERR_ARG, "%s: documents [%lld, %lld) hold %lld tokens; a sample needs at least 2", p,
                         (long long)c->doc_begin, (long long)c->doc_end, (long long)pl->tokens);
    if (c->num_samples > (INT64_MAX - 1) / c->seq_len)
        return mt_errorf(MT_ERR_ARG, "%s: num_samples %lld x seq_len %d overflows", p, (long long)c->num_samples, c->seq_len);
    requested = c->num_samples * c->seq_len + 1;
    pl->num_epochs = c->num_samples == 0 ? 1 : (requested + pl->tokens - 1) / pl->tokens;
    if (pl->num_epochs < 1) pl->num_epochs = 1;
    if (pl->num_epochs > INT64_MAX / pl->tokens || pl->num_epochs > INT64_MAX / (pl->ndocs ? pl->ndocs : 1))
        return mt_errorf(MT_ERR_ARG, "%s: %lld epochs overflow the index", p, (long long)pl->num_epochs);
    pl->n_doc_index = pl->num_epochs * pl->ndocs;
    pl->n_samples = (pl->num_epochs * pl->tokens - 1) / c->seq_len;
    pl->n_first_shuffle = pl->n_samples;
    pl->separate = 0;
    if (pl->num_epochs > 1) {
        int64_t sans = ((pl->num_epochs - 1) * pl->tokens - 1) / c->seq_len;
        int64_t from_final = c->num_samples - sans;
        int64_t per_epoch = (pl->tokens - 1) / c->seq_len;
        pl->separate = from_final < (int64_t)(0.80 * (double)per_epoch);
        if (pl->separate) pl->n_first_shuffle = sans;
    }
    return MT_OK;
}

MT_API uint64_t mt__gpt_key(const mt_indexed *ds, const mt_gpt_index_config *c) {
    char desc[256];
    uint64_t h;
    snprintf(desc, sizeof desc, "megatron.h GPT indices v1 docs=[%lld,%lld) seq_len=%d num_samples=%lld seed=%llu dtype=%d",
             (long long)c->doc_begin, (long long)c->doc_end, c->seq_len, (long long)c->num_samples,
             (unsigned long long)c->seed, ds->dtype_code);
    h = mt__hash64(0x6d742d6770742d31ull, desc, strlen(desc));
    if (ds->kind == MT_INDEXED_LLMC) {
        h = mt__hash64(h, &ds->llmc_ntok, 8);
    } else if (c->doc_end > c->doc_begin) {
        h = mt__hash64(h, ds->lengths + 4 * (size_t)c->doc_begin, 4 * (size_t)(c->doc_end - c->doc_begin));
    }
    return h;
}

/* Build the three indices in memory, as GPTDataset does. */
MT_API mt_status mt_gpt_index_build(mt_gpt_index *gi, const mt_indexed *ds, const mt_gpt_index_config *c) {
    mt__gpt_plan pl;
    mt_np_random rng;
    int64_t i, e, nd;
    int64_t sidx, pos, off;
    mt_status s;
    memset(gi, 0, sizeof *gi);
    MT_TRY(mt__gpt_plan_make(ds, c, &pl));
    nd = pl.ndocs;
    s = mt__alloc_array(pl.n_doc_index, 4, (void **)&gi->doc_index, "document index");
    if (s == MT_OK) s = mt__alloc_array(2 * (pl.n_samples + 1), 8, (void **)&gi->sample_index, "sample index");
    if (s == MT_OK) s = mt__alloc_array(pl.n_samples, 8, (void **)&gi->shuffle_index, "shuffle index");
    if (s != MT_OK) { mt_gpt_index_free(gi); return s; }
    gi->n_doc_index = pl.n_doc_index;
    gi->n_samples = pl.n_samples;
    gi->num_epochs = pl.num_epochs;
    gi->tokens_per_epoch = pl.tokens;
    gi->separate_final_epoch = pl.separate;
    gi->key = mt__gpt_key(ds, c);

    /* Document index: documents tiled over epochs, shuffled (the last epoch on its own). */
    for (e = 0; e < pl.num_epochs; e++)
        for (i = 0; i < nd; i++) gi->doc_index[e * nd + i] = (int32_t)(c->doc_begin + i);
    mt_np_random_seed(&rng, (uint32_t)c->seed);
    if (!pl.separate) {
        mt_np_random_shuffle_i32(&rng, gi->doc_index, pl.n_doc_index);
    } else {
        mt_np_random_shuffle_i32(&rng, gi->doc_index, (pl.num_epochs - 1) * nd);
        mt_np_random_shuffle_i32(&rng, gi->doc_index + (pl.num_epochs - 1) * nd, nd);
    }

    /* Sample index: seq_len + 1 tokens per sample, consecutive samples share one token. */
    pos = 0;
    off = 0;
    gi->sample_index[0] = 0;
    gi->sample_index[1] = 0;
    for (sidx = 1; sidx <= pl.n_samples; sidx++) {
        int64_t remaining = (int64_t)c->seq_len + 1;
        while (remaining != 0) {
            int64_t doc_len = mt_indexed_seq_len(ds, gi->doc_index[pos]) - off;
            remaining -= doc_len;
            if (remaining <= 0) {
                off += remaining + doc_len - 1;
                remaining = 0;
            } else {
                if (pos == pl.n_doc_index - 1) {
                    if (sidx != pl.n_samples) {
                        mt_gpt_index_free(gi);
                        return mt_errorf(MT_ERR_INTERNAL, "%s: ran out of documents at sample %lld of %lld", ds->path_idx,
                                         (long long)sidx, (long long)pl.n_samples);
                    }
                    off = mt_indexed_seq_len(ds, gi->doc_index[pos]) - 1;
                    break;
                }
                pos++;
                off = 0;
            }
        }
        gi->sample_index[2 * sidx] = pos;
        gi->sample_index[2 * sidx + 1] = off;
    }

    /* Shuffle index: a permutation of samples (the separate last epoch shuffled on its own). */
    for (i = 0; i < pl.n_samples; i++) gi->shuffle_index[i] = i;
    mt_np_random_shuffle_i64(&rng, gi->shuffle_index, pl.n_first_shuffle);
    if (pl.n_first_shuffle < pl.n_samples)
        mt_np_random_shuffle_i64(&rng, gi->shuffle_index + pl.n_first_shuffle, pl.n_samples - pl.n_first_shuffle);
    return MT_OK;
}

/* Sample `i` (in shuffled order): seq_len + 1 tokens into `out`. Checks every index it follows, so
 * a corrupt cache cannot make it read outside the data or write past `out`. */
MT_API mt_status mt_gpt_index_sample(const mt_gpt_index *gi, const mt_indexed *ds, int64_t i, int seq_len, int32_t *out) {
    int64_t k, p0, o0, p1, o1, p, need = (int64_t)seq_len + 1, got = 0;
    if (i < 0 || i >= gi->n_samples)
        return mt_errorf(MT_ERR_ARG, "%s: sample %lld out of range [0, %lld)", ds->path_idx, (long long)i, (long long)gi->n_samples);
    k = gi->shuffle_index[i];
    if (k < 0 || k >= gi->n_samples)
        return mt_errorf(MT_ERR_FORMAT, "%s: shuffle_index[%lld] = %lld out of range", ds->path_idx, (long long)i, (long long)k);
    p0 = gi->sample_index[2 * k];
    o0 = gi->sample_index[2 * k + 1];
    p1 = gi->sample_index[2 * k + 2];
    o1 = gi->sample_index[2 * k + 3];
    if (p0 < 0 || p1 < p0 || p1 >= gi->n_doc_index || o0 < 0 || o1 < 0)
        return mt_errorf(MT_ERR_FORMAT, "%s: sample_index[%lld..%lld] = (%lld,%lld)..(%lld,%lld) is not a valid span",
                         ds->path_idx, (long long)k, (long long)(k + 1), (long long)p0, (long long)o0, (long long)p1, (long long)o1);
    for (p = p0; p <= p1; p++) {
        int64_t doc = gi->doc_index[p], len, beg, cnt;
        if (doc < 0 || doc >= ds->n_seq)
            return mt_errorf(MT_ERR_FORMAT, "%s: doc_index[%lld] = %lld out of range", ds->path_idx, (long long)p, (long long)doc);
        len = mt_indexed_seq_len(ds, doc);
        beg = p == p0 ? o0 : 0;
        cnt = p < p1 ? len - beg : o1 + 1 - beg;
        if (beg > len || cnt < 0 || cnt > len - beg || cnt > need - got)
            return mt_errorf(MT_ERR_FORMAT, "%s: sample %lld spans tokens that do not add up to %lld (document %lld)",
                             ds->path_idx, (long long)i, (long long)need, (long long)doc);
        MT_TRY(mt_indexed_read(ds, doc, beg, cnt, out + got));
        got += cnt;
    }
    if (got != need)
        return mt_errorf(MT_ERR_FORMAT, "%s: sample %lld has %lld tokens, expected %lld", ds->path_idx, (long long)i,
                         (long long)got, (long long)need);
    return MT_OK;
}

/* Cache file layout (little-endian):
 *   0 "MTGPTIDX"  8 u32 version (1)  12 u32 flags (bit 0: separate final epoch)  16 u64 key
 *   24 i64 num_epochs  32 i64 n_doc_index  40 i64 n_samples  48 u64 payload hash  56 u64 header hash
 *   64 int32 doc_index[n_doc_index], zero padding to 8 bytes, int64 sample_index[2 (n_samples + 1)],
 *      int64 shuffle_index[n_samples] */
#define MT__GPTIDX_HEADER 64

MT_API mt_status mt_gpt_index_cache_path(const mt_indexed *ds, const mt_gpt_index_config *c, char **out) {
    char suffix[64];
    const char *base = ds->kind == MT_INDEXED_LLMC ? ds->path_bin : ds->path_idx;
    size_t n = strlen(base) - (ds->kind == MT_INDEXED_LLMC ? 0 : 4); /* strip ".idx" */
    char *prefix = NULL;
    mt_status s;
    snprintf(suffix, sizeof suffix, "-%016llx.mtidx", (unsigned long long)mt__gpt_key(ds, c));
    MT_TRY(mt_calloc(n + 1, (void **)&prefix));
    memcpy(prefix, base, n);
    if (c->cache_dir && c->cache_dir[0]) {
        const char *slash = strrchr(prefix, '/');
        s = mt__strcat3(c->cache_dir, "/", slash ? slash + 1 : prefix, out);
        if (s == MT_OK) {
            char *t = *out;
            s = mt__strcat3(t, suffix, NULL, out);
            mt_free(t);
        }
    } else {
        s = mt__strcat3(prefix, suffix, NULL, out);
    }
    mt_free(prefix);
    return s;
}

MT_API mt_status mt_gpt_index_save(const mt_gpt_index *gi, const char *path) {
    unsigned char hdr[MT__GPTIDX_HEADER], pad[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const void *bufs[5];
    size_t sizes[5];
    uint32_t u;
    uint64_t h;
    size_t dbytes = (size_t)gi->n_doc_index * 4, padn = (8 - dbytes % 8) % 8;
    memset(hdr, 0, sizeof hdr);
    memcpy(hdr, "MTGPTIDX", 8);
    u = 1; memcpy(hdr + 8, &u, 4);
    u = (uint32_t)gi->separate_final_epoch; memcpy(hdr + 12, &u, 4);
    memcpy(hdr + 16, &gi->key, 8);
    memcpy(hdr + 24, &gi->num_epochs, 8);
    memcpy(hdr + 32, &gi->n_doc_index, 8);
    memcpy(hdr + 40, &gi->n_samples, 8);
    h = mt__hash64(1, gi->doc_index, dbytes);
    h = mt__hash64(h, pad, padn);
    h = mt__hash64(h, gi->sample_index, (size_t)(gi->n_samples + 1) * 16);
    h = mt__hash64(h, gi->shuffle_index, (size_t)gi->n_samples * 8);
    memcpy(hdr + 48, &h, 8);
    h = mt__hash64(2, hdr, 56);
    memcpy(hdr + 56, &h, 8);
    bufs[0] = hdr; sizes[0] = sizeof hdr;
    bufs[1] = gi->doc_index; sizes[1] = dbytes;
    bufs[2] = pad; sizes[2] = padn;
    bufs[3] = gi->sample_index; sizes[3] = (size_t)(gi->n_samples + 1) * 16;
    bufs[4] = gi->shuffle_index; sizes[4] = (size_t)gi->n_samples * 8;
    return mt__atomic_write(path, 5, bufs, sizes);
}

/* Validate cache bytes (already in gi->map) against the parameters they must come from. */
MT_API mt_status mt__gpt_index_check(mt_gpt_index *gi, const char *path, const mt_indexed *ds, const mt_gpt_index_config *c) {
    mt__gpt_plan pl;
    const unsigned char *d;
    uint64_t key, h, need;
    size_t dbytes, padn;
    int64_t i, nd;
    mt_status s;
    s = mt__gpt_plan_make(ds, c, &pl);
    if (s != MT_OK) { mt__map_close(&gi->map); memset(gi, 0, sizeof *gi); return s; }
    key = mt__gpt_key(ds, c);
    d = gi->map.data;
    s = MT_ERR_FORMAT;
#define MT__BAD(...) do { mt_errorf(MT_ERR_FORMAT, __VA_ARGS__); mt__map_close(&gi->map); memset(gi, 0, sizeof *gi); return s; } while (0)
    if (gi->map.size < MT__GPTIDX_HEADER) MT__BAD("%s: truncated header: %zu bytes, expected at least %d", path, gi->map.size, MT__GPTIDX_HEADER);
    if (memcmp(d, "MTGPTIDX", 8) != 0) MT__BAD("%s: wrong magic, expected \"MTGPTIDX\"", path);
    if ((uintptr_t)d % 8 != 0) MT__BAD("%s: index cache bytes are not 8-byte aligned in memory", path);
    if (mt__ld_u32(d + 8) != 1) MT__BAD("%s: field version = %u, expected 1", path, mt__ld_u32(d + 8));
    if (mt__ld_u64(d + 56) != mt__hash64(2, d, 56)) MT__BAD("%s: header checksum mismatch", path);
    if (mt__ld_u64(d + 16) != key) MT__BAD("%s: field key = %016llx, expected %016llx (stale)", path,
                                           (unsigned long long)mt__ld_u64(d + 16), (unsigned long long)key);
    if (mt__ld_u32(d + 12) != (uint32_t)pl.separate) MT__BAD("%s: field flags = %u, expected %d", path, mt__ld_u32(d + 12), pl.separate);
    if (mt__ld_i64(d + 24) != pl.num_epochs) MT__BAD("%s: field num_epochs = %lld, expected %lld", path, (long long)mt__ld_i64(d + 24), (long long)pl.num_epochs);
    if (mt__ld_i64(d + 32) != pl.n_doc_index) MT__BAD("%s: field n_doc_index = %lld, expected %lld", path, (long long)mt__ld_i64(d + 32), (long long)pl.n_doc_index);
    if (mt__ld_i64(d + 40) != pl.n_samples) MT__BAD("%s: field n_samples = %lld, expected %lld", path, (long long)mt__ld_i64(d + 40), (long long)pl.n_samples);
    dbytes = (size_t)pl.n_doc_index * 4;
    padn = (8 - dbytes % 8) % 8;
    need = MT__GPTIDX_HEADER + dbytes + padn + (uint64_t)(pl.n_samples + 1) * 16 + (uint64_t)pl.n_samples * 8;
    if ((uint64_t)gi->map.size != need) MT__BAD("%s: size %zu bytes, expected %llu", path, gi->map.size, (unsigned long long)need);
    h = mt__hash64(1, d + MT__GPTIDX_HEADER, dbytes);
    h = mt__hash64(h, d + MT__GPTIDX_HEADER + dbytes, padn);
    h = mt__hash64(h, d + MT__GPTIDX_HEADER + dbytes + padn, (size_t)(pl.n_samples + 1) * 16);
    h = mt__hash64(h, d + MT__GPTIDX_HEADER + dbytes + padn + (size_t)(pl.n_samples + 1) * 16, (size_t)pl.n_samples * 8);
    if (h != mt__ld_u64(d + 48)) MT__BAD("%s: payload checksum mismatch (corrupt)", path);
    gi->doc_index = (int32_t *)(void *)(d + MT__GPTIDX_HEADER);
    gi->sample_index = (int64_t *)(void *)(d + MT__GPTIDX_HEADER + dbytes + padn);
    gi->shuffle_index = gi->sample_index + 2 * (pl.n_samples + 1);
    gi->n_doc_index = pl.n_doc_index;
    gi->n_samples = pl.n_samples;
    gi->num_epochs = pl.num_epochs;
    gi->tokens_per_epoch = pl.tokens;
    gi->separate_final_epoch = pl.separate;
    gi->key = key;
    gi->from_cache = 1;
    /* Contents: a checksum can match by chance or by intent; every index is checked once. */
    nd = pl.n_doc_index;
    for (i = 0; i < nd; i++)
        if (gi->doc_index[i] < c->doc_begin || gi->doc_index[i] >= c->doc_end)
            MT__BAD("%s: doc_index[%lld] = %d outside [%lld, %lld)", path, (long long)i, gi->doc_index[i],
                    (long long)c->doc_begin, (long long)c->doc_end);
    for (i = 0; i <= pl.n_samples; i++) {
        int64_t p = gi->sample_index[2 * i], o = gi->sample_index[2 * i + 1];
        if (p < 0 || p >= nd || o < 0 || o > mt_indexed_seq_len(ds, gi->doc_index[p]) ||
            (i > 0 && p < gi->sample_index[2 * i - 2]))
            MT__BAD("%s: sample_index[%lld] = (%lld, %lld) invalid", path, (long long)i, (long long)p, (long long)o);
    }
    for (i = 0; i < pl.n_samples; i++)
        if (gi->shuffle_index[i] < 0 || gi->shuffle_index[i] >= pl.n_samples)
            MT__BAD("%s: shuffle_index[%lld] = %lld outside [0, %lld)", path, (long long)i,
                    (long long)gi->shuffle_index[i], (long long)pl.n_samples);
#undef MT__BAD
    return MT_OK;
}

/* Read and validate a cache file against the parameters it must have been built from. */
MT_API mt_status mt_gpt_index_load(mt_gpt_index *gi, const char *path, const mt_indexed *ds, const mt_gpt_index_config *c) {
    memset(gi, 0, sizeof *gi);
    MT_TRY(mt__map_open(&gi->map, path));
    return mt__gpt_index_check(gi, path, ds, c);
}

/* The same from cache bytes in memory (kept by the caller until mt_gpt_index_free). */
MT_API mt_status mt_gpt_index_load_memory(mt_gpt_index *gi, const void *data, size_t size, const char *name,
                                          const mt_indexed *ds, const mt_gpt_index_config *c) {
    memset(gi, 0, sizeof *gi);
    gi->map.data = (const unsigned char *)data;
    gi->map.size = size;
    gi->map.borrowed = 1;
    if (!data) return mt_errorf(MT_ERR_FORMAT, "%s: empty index cache", name);
    return mt__gpt_index_check(gi, name, ds, c);
}

/* Load the indices from the cache next to the data, or build them and write the cache. A stale
 * cache has another name (the key covers every parameter and the lengths); a corrupt one is
 * rebuilt. A cache that cannot be written (read-only data) is only a warning. */
MT_API mt_status mt_gpt_index_open(mt_gpt_index *gi, const mt_indexed *ds, const mt_gpt_index_config *c) {
    char *path = NULL;
    struct stat st;
    mt_status s;
    if (c->no_cache) return mt_gpt_index_build(gi, ds, c);
    MT_TRY(mt_gpt_index_cache_path(ds, c, &path));
    if (stat(path, &st) == 0) {
        s = mt_gpt_index_load(gi, path, ds, c);
        if (s == MT_OK) { mt_free(path); return MT_OK; }
        mt_logf(MT_LOG_WARN, "%s: index cache unusable; rebuilding it", path);
    }
    s = mt_gpt_index_build(gi, ds, c);
    if (s == MT_OK && mt_gpt_index_save(gi, path) != MT_OK)
        mt_logf(MT_LOG_WARN, "%s: could not write the index cache; continuing without it", path);
    mt_free(path);
    return s;
}

/* ------------------------------------------------------------------ blending */

/* Samples Megatron asks of each source of a weighted blend of N samples:
 * ceil(ceil(N * w) * (1 + 0.005)), w normalised. */
MT_API int64_t mt_blend_source_size(int64_t n, double w) {
    return (int64_t)ceil(ceil((double)n * w) * (1.0 + 0.005));
}

/* Megatron's blending order as a stream: sample i goes to the source whose weight * max(i, 1)
 * minus samples taken so far is largest (first such source on ties). With `sizes` (unweighted
 * blends) it is Megatron's exhaustive variant: weights = sizes / total, and a source drops out
 * once it has given all its samples. */
typedef struct mt_blend {
    int n;
    double *weights;  /* (n,) normalised */
    int64_t *sizes;   /* (n,) exhaustive mode, else NULL */
    int64_t *count;   /* (n,) samples taken so far */
    int64_t index;    /* samples emitted */
    int64_t total;    /* exhaustive mode: sum of sizes */
} mt_blend;

MT_API void mt_blend_free(mt_blend *b) {
    mt_free(b->weights);
    mt_free(b->sizes);
    mt_free(b->count);
    memset(b, 0, sizeof *b);
}

MT_API void mt_blend_reset(mt_blend *b) {
    memset(b->count, 0, sizeof(int64_t) * (size_t)b->n);
    b->index = 0;
}

/* weights: normalised (mt_normalize_weights) when sizes == NULL; ignored otherwise. */
MT_API mt_status mt_blend_init(mt_blend *b, int n, const double *weights, const int64_t *sizes) {
    int i;
    mt_status s;
    memset(b, 0, sizeof *b);
    if (n < 1 || n > 32767) return mt_errorf(MT_ERR_ARG, "blend of %d sources, expected 1..32767", n);
    b->n = n;
    s = mt__alloc_array(n, sizeof(double), (void **)&b->weights, "blend weights");
    if (s == MT_OK) s = mt__alloc_array(n, 8, (void **)&b->count, "blend counts");
    if (s == MT_OK && sizes) s = mt__alloc_array(n, 8, (void **)&b->sizes, "blend sizes");
    if (s != MT_OK) { mt_blend_free(b); return s; }
    if (sizes) {
        for (i = 0; i < n; i++) {
            if (sizes[i] < 0) { mt_blend_free(b); return mt_errorf(MT_ERR_ARG, "blend: source %d has size %lld", i, (long long)sizes[i]); }
            b->sizes[i] = sizes[i];
            b->total += sizes[i];
        }
        for (i = 0; i < n; i++) b->weights[i] = b->total ? (double)sizes[i] / (double)b->total : 0;
    } else {
        for (i = 0; i < n; i++) {
            if (!(weights[i] >= 0 && weights[i] <= 1)) {
                mt_blend_free(b);
                return mt_errorf(MT_ERR_ARG, "blend: weight %d = %g, expected a normalised weight in [0, 1]", i, weights[i]);
            }
            b->weights[i] = weights[i];
        }
    }
    return MT_OK;
}

/* The source of the next sample and its index within that source. In exhaustive mode, returns
 * src = -1 once every source is spent. */
MT_API void mt_blend_next(mt_blend *b, int *src, int64_t *src_sample) {
    double x = b->index > 1 ? (double)b->index : 1.0;
    int best = -1, i;
    double best_err = -1.7976931348623157e308;
    for (i = 0; i < b->n; i++) {
        double err;
        if (b->sizes && b->count[i] >= b->sizes[i]) continue;
        err = b->weights[i] * x - (double)b->count[i];
        if (best < 0 || err > best_err) { best = i; best_err = err; }
    }
    *src = best;
    *src_sample = best >= 0 ? b->count[best] : -1;
    if (best >= 0) b->count[best]++;
    b->index++;
}

/* ------------------------------------------------------------------ --data-path */

typedef struct mt_data_path {
    int n;           /* sources */
    char **paths;    /* (n,) */
    double *weights; /* (n,) as given (not normalised), or NULL when none were given */
    char *storage;
} mt_data_path;

MT_API void mt_data_path_free(mt_data_path *dp) {
    mt_free(dp->paths);
    mt_free(dp->weights);
    mt_free(dp->storage);
    memset(dp, 0, sizeof *dp);
}

MT_API int mt__parse_weight(const char *s, double *out) {
    char *e;
    double v;
    if (!*s) return 0;
    v = strtod(s, &e);
    if (*e != 0) return 0;
    *out = v;
    return 1;
}

/* Megatron's --data-path: "prefix", "w1 prefix1 w2 prefix2 ...", or "prefix1 prefix2 ..."
 * (unweighted: each source contributes one epoch, Megatron's exhaustive blend). Each of the
 * `nargs` strings may hold several whitespace-separated items. */
MT_API mt_status mt_parse_data_path(const char *const *args, int nargs, mt_data_path *out) {
    size_t total = 0;
    int a, count = 0, i, all_w = 1, any_w = 0;
    char *p;
    mt_status s;
    memset(out, 0, sizeof *out);
    for (a = 0; a < nargs; a++) total += strlen(args[a]) + 1;
    MT_TRY(mt_calloc(total + 1, (void **)&out->storage));
    p = out->storage;
    for (a = 0; a < nargs; a++) {
        size_t n = strlen(args[a]);
        memcpy(p, args[a], n);
        p[n] = ' ';
        p += n + 1;
    }
    /* split in place on whitespace */
    for (p = out->storage; *p; p++) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') *p = 0;
        else if (p == out->storage || p[-1] == 0) count++;
    }
    if (count == 0) { mt_data_path_free(out); return mt_errorf(MT_ERR_ARG, "--data-path: no paths given"); }
    {
        char **items = NULL;
        int k = 0;
        char *end = out->storage + total;
        s = mt__alloc_array(count, sizeof(char *), (void **)&items, "data path items");
        if (s != MT_OK) { mt_data_path_free(out); return s; }
        for (p = out->storage; p < end; p++)
            if (*p && (p == out->storage || p[-1] == 0)) items[k++] = p;
        if (count % 2 == 0) {
            for (i = 0; i < count; i += 2) {
                double w;
                if (mt__parse_weight(items[i], &w)) any_w = 1;
                else all_w = 0;
            }
        } else {
            all_w = 0;
        }
        if (count % 2 == 0 && any_w && !all_w) {
            mt_free(items);
            mt_data_path_free(out);
            return mt_errorf(MT_ERR_ARG, "--data-path: some weights are numbers and some are not; expected \"w1 prefix1 w2 prefix2 ...\"");
        }
        if (count % 2 == 0 && all_w) {
            out->n = count / 2;
            s = mt__alloc_array(out->n, sizeof(char *), (void **)&out->paths, "data paths");
            if (s == MT_OK) s = mt__alloc_array(out->n, sizeof(double), (void **)&out->weights, "data weights");
            if (s != MT_OK) { mt_free(items); mt_data_path_free(out); return s; }
            for (i = 0; i < out->n; i++) {
                mt__parse_weight(items[2 * i], &out->weights[i]);
                out->paths[i] = items[2 * i + 1];
                if (!(out->weights[i] >= 0) || out->weights[i] > 1e300) {
                    double w = out->weights[i];
                    mt_free(items);
                    mt_data_path_free(out);
                    return mt_errorf(MT_ERR_ARG, "--data-path: weight %d = %g, expected a finite number >= 0", i, w);
                }
            }
            mt_free(items);
        } else {
            out->n = count;
            out->paths = items;
        }
    }
    return MT_OK;
}

/* ------------------------------------------------------------------ loader */

typedef struct mt_loader_config {
    const char *const *paths; /* (n_paths,) prefixes (or llm.c .bin files); or use data_path */
    const double *weights;    /* (n_paths,) any scale, or NULL (unweighted: one epoch each) */
    int n_paths;
    const char *data_path;    /* alternative to paths: "0.3 prefixA 0.7 prefixB" */
    const char *split;        /* "949,50,1"; NULL = Megatron's default "969,30,1" */
    int split_index;          /* 0 train, 1 valid, 2 test */
    int seq_len;              /* a sample is seq_len + 1 tokens */
    int micro_batch;          /* samples per rank per call */
    int dp_rank, dp_size;     /* dp_size 0 = 1 */
    int64_t num_samples;      /* global samples wanted (train_iters * global_batch); 0 = one epoch */
    uint64_t seed;            /* numpy RandomState seed; Megatron's default is 1234 */
    int64_t start_sample;     /* resume: global samples already consumed */
    int prefetch;             /* batches prepared ahead on a host thread; 0 = 2, < 0 = no thread */
    int vocab_size;           /* > 0: tokens >= vocab_size are an error */
    const char *cache_dir;    /* index caches; NULL = next to the data */
    int no_cache;             /* 1 = do not read or write index caches */
    int pinned;               /* CUDA builds: page-locked batch buffers (for mt_loader_acquire) */
} mt_loader_config;

typedef struct mt__loader_source {
    mt_indexed ds;
    mt_gpt_index gi;
    int64_t doc_begin, doc_end;
    int64_t size; /* samples this source serves */
} mt__loader_source;

typedef struct mt_loader {
    /* read-only for callers */
    double wait_ms;            /* time the last next/acquire call waited for data */
    double total_wait_ms;      /* sum over all calls */
    int64_t steps;             /* calls served */
    int64_t consumed_samples;  /* global samples consumed (resume from this) */
    int64_t num_samples;       /* global samples before the order wraps around */
    int n_sources;
    int seq_len, micro_batch, dp_rank, dp_size, vocab_size;
    /* internals */
    mt__loader_source *src;    /* (n_sources,) */
    mt_blend blend;
    int blended;
    int64_t base;              /* global sample of the first batch since the last seek */
    int n_slots;
    int32_t **slots;           /* (n_slots,) each (micro_batch, seq_len + 1) */
    mt_status *slot_status;    /* (n_slots,) */
    int64_t n_filled, n_taken;
    int held;                  /* an acquired slot is still lent to the caller */
    int threaded, stop, pinned;
    mt_status sticky;          /* first error, returned by every later call */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv_ready, cv_free;
} mt_loader;

/* Global sample g -> (source, sample of that source). Only the producer calls this. */
MT_API mt_status mt__loader_locate(mt_loader *ld, int64_t g, int *src, int64_t *j) {
    int64_t gg = g % ld->num_samples;
    if (!ld->blended) {
        *src = 0;
        *j = gg;
        return MT_OK;
    }
    if (gg < ld->blend.index) mt_blend_reset(&ld->blend);
    for (;;) {
        int s;
        int64_t k, at = ld->blend.index;
        mt_blend_next(&ld->blend, &s, &k);
        if (at == gg) {
            if (s < 0 || k >= ld->src[s].size)
                return mt_errorf(MT_ERR_INTERNAL, "loader: blended sample %lld maps to source %d sample %lld beyond its %lld",
                                 (long long)gg, s, (long long)k, s >= 0 ? (long long)ld->src[s].size : 0LL);
            *src = s;
            *j = k;
            return MT_OK;
        }
    }
}

MT_API mt_status mt__loader_fill(mt_loader *ld, int64_t seq, int32_t *buf) {
    int b, stride = ld->seq_len + 1;
    int64_t first = ld->base + seq * (int64_t)ld->micro_batch * ld->dp_size + (int64_t)ld->dp_rank * ld->micro_batch;
    for (b = 0; b < ld->micro_batch; b++) {
        int s = 0, t;
        int64_t j = 0;
        int32_t *out = buf + (size_t)b * (size_t)stride;
        MT_TRY(mt__loader_locate(ld, first + b, &s, &j));
        MT_TRY(mt_gpt_index_sample(&ld->src[s].gi, &ld->src[s].ds, j, ld->seq_len, out));
        for (t = 0; t < stride; t++)
            if (out[t] < 0 || (ld->vocab_size > 0 && out[t] >= ld->vocab_size))
                return mt_errorf(MT_ERR_FORMAT, "%s: sample %lld token %d = %d outside the vocabulary [0, %d)",
                                 ld->src[s].ds.path_bin, (long long)j, t, out[t], ld->vocab_size);
    }
    return MT_OK;
}

MT_API void *mt__loader_main(void *arg) {
    mt_loader *ld = (mt_loader *)arg;
    pthread_mutex_lock(&ld->mu);
    for (;;) {
        int64_t seq;
        int slot;
        mt_status st;
        while (!ld->stop && ld->n_filled - ld->n_taken >= ld->n_slots) pthread_cond_wait(&ld->cv_free, &ld->mu);
        if (ld->stop) break;
        seq = ld->n_filled;
        slot = (int)(seq % ld->n_slots);
        pthread_mutex_unlock(&ld->mu);
        st = mt__loader_fill(ld, seq, ld->slots[slot]);
        pthread_mutex_lock(&ld->mu);
        ld->slot_status[slot] = st;
        ld->n_filled++;
        pthread_cond_broadcast(&ld->cv_ready);
        if (st != MT_OK) break;
    }
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}

MT_API mt_status mt__loader_start(mt_loader *ld) {
    ld->n_filled = ld->n_taken = 0;
    ld->held = 0;
    ld->stop = 0;
    if (!ld->threaded) return MT_OK;
    if (pthread_create(&ld->thread, NULL, mt__loader_main, ld) != 0)
        return mt_errorf(MT_ERR_INTERNAL, "loader: cannot start the prefetch thread");
    return MT_OK;
}

MT_API void mt__loader_stop(mt_loader *ld) {
    if (!ld->threaded || !ld->slots) return;
    pthread_mutex_lock(&ld->mu);
    ld->stop = 1;
    pthread_cond_broadcast(&ld->cv_free);
    pthread_mutex_unlock(&ld->mu);
    pthread_join(ld->thread, NULL);
}

MT_API void mt_loader_close(mt_loader *ld) {
    int i;
    if (ld->threaded && ld->slots && !ld->stop) mt__loader_stop(ld);
    if (ld->threaded) {
        pthread_mutex_destroy(&ld->mu);
        pthread_cond_destroy(&ld->cv_ready);
        pthread_cond_destroy(&ld->cv_free);
    }
    if (ld->slots) {
        for (i = 0; i < ld->n_slots; i++) {
#ifdef __CUDACC__
            if (ld->pinned) { if (ld->slots[i]) cudaFreeHost(ld->slots[i]); continue; }
#endif
            mt_free(ld->slots[i]);
        }
    }
    mt_free(ld->slots);
    mt_free(ld->slot_status);
    if (ld->src) {
        for (i = 0; i < ld->n_sources; i++) {
            mt_gpt_index_free(&ld->src[i].gi);
            mt_indexed_close(&ld->src[i].ds);
        }
    }
    mt_free(ld->src);
    mt_blend_free(&ld->blend);
    memset(ld, 0, sizeof *ld);
}

/* Restart the sample stream at global sample `sample` (as if opened with start_sample). */
MT_API mt_status mt_loader_seek(mt_loader *ld, int64_t sample) {
    if (sample < 0) return mt_errorf(MT_ERR_ARG, "loader: seek to sample %lld", (long long)sample);
    mt__loader_stop(ld);
    ld->base = sample;
    ld->consumed_samples = sample;
    ld->sticky = MT_OK;
    return mt__loader_start(ld);
}

/* Sources and blending as Megatron's BlendedMegatronDatasetBuilder sets them up:
 *   one unweighted path: that dataset, num_samples samples (0 = one epoch);
 *   weights w: w1 = normalize(w); source i built for ceil(ceil(N w1_i) * 1.005) samples; blended
 *     size sum_i ceil(N w1_i); greedy order over normalize(w1) (BlendedDataset normalises again);
 *   several unweighted paths: each one epoch; with N > 0 the greedy order over the normalised
 *     epoch sizes, size min(N, total); with N = 0 the exhaustive order over everything. */
MT_API mt_status mt__loader_open_sources(mt_loader *ld, const mt_loader_config *cfg, const char *const *paths,
                                         const double *weights, int n) {
    const char *split = cfg->split ? cfg->split : "969,30,1";
    double *w1 = NULL, *w2 = NULL;
    int64_t *sizes = NULL, N = cfg->num_samples;
    int i;
    mt_status s;
    MT_TRY(mt__alloc_array(n, sizeof(mt__loader_source), (void **)&ld->src, "loader sources"));
    ld->n_sources = n;
    s = mt__alloc_array(n, sizeof(double), (void **)&w1, "loader weights");
    if (s == MT_OK) s = mt__alloc_array(n, sizeof(double), (void **)&w2, "loader weights");
    if (s == MT_OK) s = mt__alloc_array(n, 8, (void **)&sizes, "loader sizes");
    if (s == MT_OK && weights) {
        for (i = 0; i < n && s == MT_OK; i++)
            if (!(weights[i] > 0) || weights[i] > 1e300)
                s = mt_errorf(MT_ERR_ARG, "data path %s: weight %g, expected a finite number > 0", paths[i], weights[i]);
        if (s == MT_OK && N <= 0)
            s = mt_errorf(MT_ERR_ARG, "loader: a weighted blend needs num_samples > 0 (Megatron: weights need a size)");
        if (s == MT_OK) {
            mt_normalize_weights(weights, n, w1);
            mt_normalize_weights(w1, n, w2);
        }
    }
    for (i = 0; i < n && s == MT_OK; i++) {
        mt__loader_source *src = &ld->src[i];
        mt_gpt_index_config gc;
        memset(&gc, 0, sizeof gc);
        s = mt_indexed_open(&src->ds, paths[i]);
        if (s != MT_OK) break;
        s = mt_split_range(split, cfg->split_index, src->ds.n_seq, &src->doc_begin, &src->doc_end);
        if (s != MT_OK) break;
        if (src->doc_end <= src->doc_begin) {
            s = mt_errorf(MT_ERR_ARG, "%s: --split %s leaves no documents for %s (the dataset has %lld)", paths[i], split,
                          cfg->split_index == 0 ? "train" : cfg->split_index == 1 ? "valid" : "test", (long long)src->ds.n_seq);
            break;
        }
        gc.doc_begin = src->doc_begin;
        gc.doc_end = src->doc_end;
        gc.seq_len = cfg->seq_len;
        gc.seed = cfg->seed;
        gc.cache_dir = cfg->cache_dir;
        gc.no_cache = cfg->no_cache;
        if (weights) gc.num_samples = mt_blend_source_size(N, w1[i]);
        else gc.num_samples = n == 1 ? N : 0;
        s = mt_gpt_index_open(&src->gi, &src->ds, &gc);
        if (s != MT_OK) break;
        src->size = src->gi.n_samples;
        sizes[i] = src->size;
        mt_logf(MT_LOG_INFO, "data: %s documents [%lld, %lld): %lld tokens per epoch, %lld epochs, %lld samples%s", paths[i],
                (long long)src->doc_begin, (long long)src->doc_end, (long long)src->gi.tokens_per_epoch,
                (long long)src->gi.num_epochs, (long long)src->gi.n_samples, src->gi.from_cache ? " (cached indices)" : "");
    }
    if (s == MT_OK) {
        if (weights) {
            ld->blended = 1;
            ld->num_samples = 0;
            for (i = 0; i < n; i++) ld->num_samples += (int64_t)ceil((double)N * w1[i]);
            s = mt_blend_init(&ld->blend, n, w2, NULL);
        } else if (n == 1) {
            ld->blended = 0;
            ld->num_samples = ld->src[0].size;
        } else if (N > 0) {
            int64_t total = 0;
            for (i = 0; i < n; i++) { w1[i] = (double)sizes[i]; total += sizes[i]; }
            mt_normalize_weights(w1, n, w2);
            ld->blended = 1;
            ld->num_samples = N < total ? N : total;
            s = mt_blend_init(&ld->blend, n, w2, NULL);
        } else {
            ld->blended = 1;
            s = mt_blend_init(&ld->blend, n, NULL, sizes);
            ld->num_samples = ld->blend.total;
        }
    }
    mt_free(w1);
    mt_free(w2);
    mt_free(sizes);
    return s;
}

/* Open every source, build or load its indices, and start the prefetch thread. */
MT_API mt_status mt_loader_open(mt_loader *ld, const mt_loader_config *cfg) {
    mt_data_path dp;
    int i;
    mt_status s;
    size_t slot_bytes;
    memset(ld, 0, sizeof *ld);
    memset(&dp, 0, sizeof dp);
    if (cfg->seq_len < 1) return mt_errorf(MT_ERR_ARG, "loader: seq_len = %d, expected >= 1", cfg->seq_len);
    if (cfg->micro_batch < 1) return mt_errorf(MT_ERR_ARG, "loader: micro_batch = %d, expected >= 1", cfg->micro_batch);
    ld->dp_size = cfg->dp_size ? cfg->dp_size : 1;
    if (ld->dp_size < 1 || cfg->dp_rank < 0 || cfg->dp_rank >= ld->dp_size)
        return mt_errorf(MT_ERR_ARG, "loader: dp_rank %d of dp_size %d", cfg->dp_rank, ld->dp_size);
    if (cfg->start_sample < 0) return mt_errorf(MT_ERR_ARG, "loader: start_sample = %lld", (long long)cfg->start_sample);
    ld->dp_rank = cfg->dp_rank;
    ld->seq_len = cfg->seq_len;
    ld->micro_batch = cfg->micro_batch;
    ld->vocab_size = cfg->vocab_size;
    if (cfg->paths && cfg->n_paths > 0) {
        s = mt__loader_open_sources(ld, cfg, cfg->paths, cfg->weights, cfg->n_paths);
    } else if (cfg->data_path) {
        const char *arg = cfg->data_path;
        s = mt_parse_data_path(&arg, 1, &dp);
        if (s == MT_OK) s = mt__loader_open_sources(ld, cfg, (const char *const *)dp.paths, dp.weights, dp.n);
        mt_data_path_free(&dp);
    } else {
        s = mt_errorf(MT_ERR_ARG, "loader: no data (set paths/n_paths or data_path)");
    }
    if (s != MT_OK) { mt_loader_close(ld); return s; }
    if (ld->num_samples <= 0) { mt_loader_close(ld); return mt_errorf(MT_ERR_ARG, "loader: no samples"); }

    ld->threaded = cfg->prefetch >= 0;
    ld->n_slots = cfg->prefetch > 0 ? cfg->prefetch + 1 : cfg->prefetch == 0 ? 3 : 1;
    slot_bytes = (size_t)ld->micro_batch * (size_t)(ld->seq_len + 1) * sizeof(int32_t);
    s = mt__alloc_array(ld->n_slots, sizeof(int32_t *), (void **)&ld->slots, "loader slots");
    if (s == MT_OK) s = mt__alloc_array(ld->n_slots, sizeof(mt_status), (void **)&ld->slot_status, "loader slots");
    for (i = 0; i < ld->n_slots && s == MT_OK; i++) {
#ifdef __CUDACC__
        if (cfg->pinned) {
            ld->pinned = 1;
            if (cudaHostAlloc((void **)&ld->slots[i], slot_bytes, cudaHostAllocDefault) != cudaSuccess) {
                ld->slots[i] = NULL;
                s = mt_errorf(MT_ERR_CUDA, "loader: cudaHostAlloc of %zu bytes failed", slot_bytes);
            }
            continue;
        }
#endif
        s = mt_calloc(slot_bytes, (void **)&ld->slots[i]);
    }
    if (s != MT_OK) { ld->threaded = 0; mt_loader_close(ld); return s; }
    if (ld->threaded) {
        pthread_mutex_init(&ld->mu, NULL);
        pthread_cond_init(&ld->cv_ready, NULL);
        pthread_cond_init(&ld->cv_free, NULL);
    }
    ld->base = cfg->start_sample;
    ld->consumed_samples = cfg->start_sample;
    s = mt__loader_start(ld);
    if (s != MT_OK) { ld->stop = 1; mt_loader_close(ld); return s; }
    return MT_OK;
}

/* The next micro-batch of this rank, (micro_batch, seq_len + 1) tokens, in a loader-owned buffer
 * (page-locked when cfg.pinned in a CUDA build) that stays valid until the next acquire/next/seek
 * call: copy it or cudaMemcpyAsync from it and synchronise before the next call. */
MT_API mt_status mt_loader_acquire(mt_loader *ld, const int32_t **tokens) {
    double t0 = mt__now_ms();
    mt_status st;
    int slot;
    *tokens = NULL;
    if (ld->sticky != MT_OK) return ld->sticky;
    if (!ld->threaded) {
        st = mt__loader_fill(ld, ld->n_taken, ld->slots[0]);
        ld->wait_ms = mt__now_ms() - t0;
        ld->total_wait_ms += ld->wait_ms;
        if (st != MT_OK) { ld->sticky = st; return st; }
        ld->n_taken++;
        *tokens = ld->slots[0];
    } else {
        pthread_mutex_lock(&ld->mu);
        if (ld->held) {
            ld->held = 0;
            ld->n_taken++;
            pthread_cond_broadcast(&ld->cv_free);
        }
        while (ld->n_filled <= ld->n_taken) pthread_cond_wait(&ld->cv_ready, &ld->mu);
        slot = (int)(ld->n_taken % ld->n_slots);
        st = ld->slot_status[slot];
        ld->held = 1;
        pthread_mutex_unlock(&ld->mu);
        ld->wait_ms = mt__now_ms() - t0;
        ld->total_wait_ms += ld->wait_ms;
        if (st != MT_OK) { ld->sticky = st; return st; }
        *tokens = ld->slots[slot];
    }
    ld->steps++;
    ld->consumed_samples += (int64_t)ld->micro_batch * ld->dp_size;
    return MT_OK;
}

/* The next micro-batch of this rank copied into `tokens` (micro_batch, seq_len + 1). */
MT_API mt_status mt_loader_next(mt_loader *ld, int32_t *tokens) {
    const int32_t *src;
    MT_TRY(mt_loader_acquire(ld, &src));
    memcpy(tokens, src, (size_t)ld->micro_batch * (size_t)(ld->seq_len + 1) * sizeof(int32_t));
    if (ld->threaded) {
        pthread_mutex_lock(&ld->mu);
        ld->held = 0;
        ld->n_taken++;
        pthread_cond_broadcast(&ld->cv_free);
        pthread_mutex_unlock(&ld->mu);
    }
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_DATA_H */
