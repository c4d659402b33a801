/* mt/core.h — status codes, logging and allocation hooks, dtypes, tensors, arenas, RNG.
 *
 *   mt_status st = mt_arena_init(&arena, mt_cpu(), 64 << 20);
 *   if (st != MT_OK) return st;          // the detail was already logged
 *   float *x; MT_TRY(mt_arena_alloc(&arena, n * sizeof(float), (void **)&x));
 *
 * Defines
 *   mt_status, MT_TRY, MT_CHECK, mt_status_str, mt_errorf, mt_logf
 *   MT_MALLOC / MT_FREE / MT_LOG_FN   compile-time hooks (define before including)
 *   mt_dtype, MT_DTYPES, mt_dtype_size, mt_dtype_name, mt_f32_to_bf16, mt_bf16_to_f32,
 *   mt_f32_to_f16, mt_f16_to_f32
 *   mt_device, mt_tensor, mt_tensor_make, mt_numel, mt_nbytes, mt_is_contiguous,
 *   mt_view, mt_narrow, mt_transpose
 *   mt_arena (bump allocator, CPU or GPU), mt_arena_init/alloc/mark/reset/free
 *   mt_philox4x32, mt_rng_u32, mt_rng_uniform, mt_rng_normal   (same bits on CPU and GPU)
 *   mt_ctx (device, dtype, stream: where and how ops run), mt_stat_dtype, mt_adamw_hp
 *
 * Options (define before including megatron.h)
 *   MT_MALLOC(n), MT_FREE(p)   host allocation, default malloc/free
 *   MT_LOG_FN(level, msg)      where messages go, default stderr (level >= MT_LOG_LEVEL)
 *   MT_LOG_LEVEL               minimum level printed by the default hook, default MT_LOG_INFO
 */
#ifndef MT_CORE_H
#define MT_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define MT_HD __host__ __device__
#else
#define MT_HD
#endif

#ifndef MT_API
#define MT_API static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ status */

#define MT_STATUSES(X)                                   \
    X(MT_OK, "ok")                                       \
    X(MT_ERR_ARG, "invalid argument")                    \
    X(MT_ERR_SHAPE, "shape or size mismatch")            \
    X(MT_ERR_OOM, "out of memory")                       \
    X(MT_ERR_IO, "i/o error")                            \
    X(MT_ERR_FORMAT, "bad file format")                  \
    X(MT_ERR_UNSUPPORTED, "unsupported")                 \
    X(MT_ERR_CUDA, "CUDA error")                         \
    X(MT_ERR_CUBLAS, "cuBLAS error")                     \
    X(MT_ERR_NCCL, "NCCL error")                         \
    X(MT_ERR_COMM, "communication error")                \
    X(MT_ERR_TIMEOUT, "timed out")                       \
    X(MT_ERR_INTERNAL, "internal error")

typedef enum {
#define MT__X(name, msg) name,
    MT_STATUSES(MT__X)
#undef MT__X
    MT_STATUS_COUNT
} mt_status;

MT_API const char *mt_status_str(mt_status s) {
    switch (s) {
#define MT__X(name, msg) case name: return msg;
        MT_STATUSES(MT__X)
#undef MT__X
        default: return "unknown status";
    }
}

/* Propagate a failure to the caller. */
#define MT_TRY(expr)                          \
    do {                                      \
        mt_status mt__s = (expr);             \
        if (mt__s != MT_OK) return mt__s;     \
    } while (0)

/* For samples and tests only: print where and why, then exit. Library code never exits. */
#define MT_CHECK(expr)                                                                  \
    do {                                                                                \
        mt_status mt__s = (expr);                                                       \
        if (mt__s != MT_OK) {                                                           \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,        \
                    mt_status_str(mt__s));                                              \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

/* ------------------------------------------------------------------ logging and allocation */

typedef enum { MT_LOG_DEBUG = 0, MT_LOG_INFO = 1, MT_LOG_WARN = 2, MT_LOG_ERROR = 3 } mt_log_level;

#ifndef MT_LOG_LEVEL
#define MT_LOG_LEVEL MT_LOG_INFO
#endif

MT_API void mt__log_default(int level, const char *msg) {
    static const char *names[] = {"debug", "info", "warning", "error"};
    if (level < MT_LOG_LEVEL) return;
    fprintf(stderr, "megatron.h: %s: %s\n", names[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}

#ifndef MT_LOG_FN
#define MT_LOG_FN(level, msg) mt__log_default(level, msg)
#endif
#ifndef MT_MALLOC
#define MT_MALLOC(n) malloc(n)
#define MT_FREE(p) free(p)
#endif

MT_API void mt_vlogf(int level, const char *fmt, va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    MT_LOG_FN(level, buf);
}

MT_API void mt_logf(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    mt_vlogf(level, fmt, ap);
    va_end(ap);
}

/* Log an error message with the details (file, field, expected value) and return `s`. */
MT_API mt_status mt_errorf(mt_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    mt_vlogf(MT_LOG_ERROR, fmt, ap);
    va_end(ap);
    return s;
}

/* Host allocation through the hook; zeroed; failure names the size. */
MT_API mt_status mt_calloc(size_t nbytes, void **out) {
    *out = NULL;
    if (nbytes == 0) nbytes = 1;
    void *p = MT_MALLOC(nbytes);
    if (!p) return mt_errorf(MT_ERR_OOM, "host allocation of %zu bytes failed", nbytes);
    memset(p, 0, nbytes);
    *out = p;
    return MT_OK;
}

MT_API void mt_free(void *p) {
    if (p) MT_FREE(p);
}

/* ------------------------------------------------------------------ dtypes */

/* X(ENUM, suffix, storage type, size in bytes) */
#define MT_DTYPES(X)                   \
    X(MT_F32, f32, float, 4)           \
    X(MT_F64, f64, double, 8)          \
    X(MT_BF16, bf16, uint16_t, 2)      \
    X(MT_F16, f16, uint16_t, 2)        \
    X(MT_FP8E4M3, e4m3, uint8_t, 1)    \
    X(MT_FP8E5M2, e5m2, uint8_t, 1)

typedef enum {
#define MT__X(e, sfx, T, sz) e,
    MT_DTYPES(MT__X)
#undef MT__X
    MT_DTYPE_COUNT
} mt_dtype;

MT_API size_t mt_dtype_size(mt_dtype t) {
    switch (t) {
#define MT__X(e, sfx, T, sz) case e: return sz;
        MT_DTYPES(MT__X)
#undef MT__X
        default: return 0;
    }
}

MT_API const char *mt_dtype_name(mt_dtype t) {
    switch (t) {
#define MT__X(e, sfx, T, sz) case e: return #sfx;
        MT_DTYPES(MT__X)
#undef MT__X
        default: return "?";
    }
}

MT_HD static inline uint32_t mt__f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
MT_HD static inline float mt__bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* float -> bf16, round to nearest even; NaN stays NaN (quiet), Inf stays Inf. */
MT_HD static inline uint16_t mt_f32_to_bf16(float f) {
    uint32_t u = mt__f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
MT_HD static inline float mt_bf16_to_f32(uint16_t h) { return mt__bits_f32((uint32_t)h << 16); }

/* float -> IEEE half, round to nearest even, subnormals and overflow to Inf handled. */
MT_HD static inline uint16_t mt_f32_to_f16(float f) {
    uint32_t u = mt__f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  /* NaN */
    if (a >= 0x47800000u) {  /* >= 65536: Inf, or rounds to Inf */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (a >= 0x38800000u) {  /* normal half range: exponent >= -14 */
        uint32_t mant = a + 0xfffu + ((a >> 13) & 1u);  /* RNE at bit 13 */
        mant -= 0x38000000u;                              /* rebias 127 -> 15 */
        uint32_t h = mant >> 13;
        return (uint16_t)(sign | (h > 0x7c00u ? 0x7c00u : h));
    }
    if (a < 0x33000000u) return (uint16_t)sign; /* < 2^-25: rounds to zero (2^-25 ties to even 0) */
    {   /* subnormal half: value = m * 2^-24 */
        uint32_t e = a >> 23;                  /* 102..112 */
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;              /* bits to drop from the 24-bit mantissa */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
}

MT_HD static inline float mt_f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return mt__bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        if (m == 0) return mt__bits_f32(sign);
        /* subnormal: m * 2^-24, exact in float */
        float v = (float)m * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return mt__bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* ------------------------------------------------------------------ devices and tensors */

typedef enum { MT_CPU = 0, MT_CUDA = 1 } mt_device_type;
typedef struct {
    mt_device_type type;
    int index; /* GPU ordinal; 0 for the CPU */
} mt_device;

MT_API mt_device mt_cpu(void) { mt_device d = {MT_CPU, 0}; return d; }
MT_API mt_device mt_gpu(int index) { mt_device d = {MT_CUDA, index}; return d; }

#define MT_MAX_DIMS 6

/* A strided view of memory it does not own. Strides count elements. */
typedef struct mt_tensor {
    void *data;
    mt_dtype dtype;
    mt_device device;
    int ndim;
    int64_t shape[MT_MAX_DIMS];
    int64_t stride[MT_MAX_DIMS];
} mt_tensor;

MT_API mt_tensor mt_tensor_make(void *data, mt_dtype dtype, mt_device dev, int ndim, const int64_t *shape) {
    mt_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = dev;
    t.ndim = ndim < 0 ? 0 : ndim > MT_MAX_DIMS ? MT_MAX_DIMS : ndim;
    int64_t s = 1;
    for (int i = t.ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = s;
        s *= shape[i];
    }
    return t;
}

MT_API int64_t mt_numel(const mt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}
MT_API size_t mt_nbytes(const mt_tensor *t) { return (size_t)mt_numel(t) * mt_dtype_size(t->dtype); }

MT_API int mt_is_contiguous(const mt_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return 0;
        s *= t->shape[i];
    }
    return 1;
}

/* Reshape a contiguous tensor (one dimension may be -1). */
MT_API mt_status mt_view(const mt_tensor *t, int ndim, const int64_t *shape, mt_tensor *out) {
    if (!mt_is_contiguous(t)) return mt_errorf(MT_ERR_SHAPE, "mt_view: tensor is not contiguous");
    if (ndim < 0 || ndim > MT_MAX_DIMS) return mt_errorf(MT_ERR_SHAPE, "mt_view: ndim %d out of range", ndim);
    int64_t sh[MT_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        sh[i] = shape[i];
        if (shape[i] < -1) return mt_errorf(MT_ERR_SHAPE, "mt_view: dimension %d has size %lld", i, (long long)shape[i]);
        if (shape[i] == -1) {
            if (infer >= 0) return mt_errorf(MT_ERR_SHAPE, "mt_view: more than one -1 in shape");
            infer = i;
        } else {
            known *= shape[i];
        }
    }
    int64_t n = mt_numel(t);
    if (infer >= 0) sh[infer] = known ? n / known : 0;
    int64_t m = 1;
    for (int i = 0; i < ndim; i++) m *= sh[i];
    if (m != n) return mt_errorf(MT_ERR_SHAPE, "mt_view: %lld elements cannot take a shape of %lld", (long long)n, (long long)m);
    *out = mt_tensor_make(t->data, t->dtype, t->device, ndim, sh);
    return MT_OK;
}

/* The slice [start, start+len) along `dim`, sharing memory. */
MT_API mt_status mt_narrow(const mt_tensor *t, int dim, int64_t start, int64_t len, mt_tensor *out) {
    if (dim < 0 || dim >= t->ndim) return mt_errorf(MT_ERR_SHAPE, "mt_narrow: dim %d out of range for ndim %d", dim, t->ndim);
    if (start < 0 || len < 0 || start + len > t->shape[dim])
        return mt_errorf(MT_ERR_SHAPE, "mt_narrow: [%lld, %lld) outside dim %d of size %lld", (long long)start,
                         (long long)(start + len), dim, (long long)t->shape[dim]);
    *out = *t;
    out->data = (char *)t->data + (size_t)(start * t->stride[dim]) * mt_dtype_size(t->dtype);
    out->shape[dim] = len;
    return MT_OK;
}

MT_API mt_status mt_transpose(const mt_tensor *t, int d0, int d1, mt_tensor *out) {
    if (d0 < 0 || d1 < 0 || d0 >= t->ndim || d1 >= t->ndim)
        return mt_errorf(MT_ERR_SHAPE, "mt_transpose: dims %d,%d out of range for ndim %d", d0, d1, t->ndim);
    *out = *t;
    out->shape[d0] = t->shape[d1]; out->shape[d1] = t->shape[d0];
    out->stride[d0] = t->stride[d1]; out->stride[d1] = t->stride[d0];
    return MT_OK;
}

/* ------------------------------------------------------------------ device memory */

MT_API mt_status mt_device_alloc(mt_device dev, size_t nbytes, void **out) {
    *out = NULL;
    if (dev.type == MT_CPU) return mt_calloc(nbytes, out);
#ifdef __CUDACC__
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMalloc(out, nbytes ? nbytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        *out = NULL;
        return mt_errorf(MT_ERR_OOM, "GPU %d: allocating %.1f MiB failed (%s); %.1f MiB free of %.1f MiB", dev.index,
                         nbytes / 1048576.0, cudaGetErrorString(e), free_b / 1048576.0, total_b / 1048576.0);
    }
    return MT_OK;
#else
    (void)nbytes;
    return mt_errorf(MT_ERR_UNSUPPORTED, "GPU allocation requested in a build without CUDA (compile with nvcc)");
#endif
}

MT_API void mt_device_free(mt_device dev, void *p) {
    if (!p) return;
    if (dev.type == MT_CPU) { mt_free(p); return; }
#ifdef __CUDACC__
    cudaFree(p);
#endif
}

/* ------------------------------------------------------------------ arena */

/* A bump allocator over one block (activations live here: one allocation at start, none per step). */
typedef struct mt_arena {
    mt_device device;
    void *block;     /* the allocation */
    char *base;      /* block rounded up to MT_ARENA_ALIGN */
    size_t capacity; /* bytes */
    size_t used;     /* bytes */
    size_t peak;     /* high-water mark, bytes */
} mt_arena;

#define MT_ARENA_ALIGN 256

MT_API mt_status mt_arena_init(mt_arena *a, mt_device dev, size_t capacity) {
    memset(a, 0, sizeof *a);
    a->device = dev;
    MT_TRY(mt_device_alloc(dev, capacity + MT_ARENA_ALIGN, &a->block));
    a->base = (char *)a->block + (MT_ARENA_ALIGN - (uintptr_t)a->block % MT_ARENA_ALIGN) % MT_ARENA_ALIGN;
    a->capacity = capacity;
    return MT_OK;
}

/* An arena whose base is NULL (a zeroed struct) only measures: allocations return NULL and count
 * bytes, so `used` after a dry run is the capacity to ask for. */
MT_API mt_status mt_arena_alloc(mt_arena *a, size_t nbytes, void **out) {
    size_t off = (a->used + MT_ARENA_ALIGN - 1) & ~(size_t)(MT_ARENA_ALIGN - 1);
    if (!a->base) {
        *out = NULL;
        a->used = off + nbytes;
        if (a->used > a->peak) a->peak = a->used;
        return MT_OK;
    }
    if (off + nbytes > a->capacity || off + nbytes < off) {
        *out = NULL;
        return mt_errorf(MT_ERR_OOM, "arena: request of %zu bytes does not fit (%zu of %zu bytes used)", nbytes,
                         a->used, a->capacity);
    }
    *out = a->base + off;
    a->used = off + nbytes;
    if (a->used > a->peak) a->peak = a->used;
    return MT_OK;
}

MT_API size_t mt_arena_mark(const mt_arena *a) { return a->used; }
MT_API void mt_arena_reset(mt_arena *a, size_t mark) { a->used = mark; }
MT_API void mt_arena_free(mt_arena *a) {
    mt_device_free(a->device, a->block);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------ counter-based RNG */

/* Philox4x32-10 (Salmon et al., SC'11): 4 x 32-bit outputs for a 128-bit counter and 64-bit key.
 * Pure integer arithmetic, so the CPU and the GPU produce the same bits. */
MT_HD static inline void mt_philox4x32(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4]) {
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* The i-th 32-bit random number of stream (seed, subsequence). */
MT_HD static inline uint32_t mt_rng_u32(uint64_t seed, uint64_t subseq, uint64_t i) {
    uint32_t ctr[4] = {(uint32_t)(i >> 2), (uint32_t)(i >> 34), (uint32_t)subseq, (uint32_t)(subseq >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t out[4];
    mt_philox4x32(ctr, key, out);
    return out[i & 3];
}

/* Uniform in [0, 1) with 24 random bits (exactly representable, identical on CPU and GPU). */
MT_HD static inline float mt_rng_uniform(uint64_t seed, uint64_t subseq, uint64_t i) {
    return (float)(mt_rng_u32(seed, subseq, i) >> 8) * (1.0f / 16777216.0f);
}

/* Standard normal by Box-Muller over elements 2i and 2i+1 (computed in double). */
MT_HD static inline float mt_rng_normal(uint64_t seed, uint64_t subseq, uint64_t i) {
    double u1 = ((double)(mt_rng_u32(seed, subseq, 2 * i) >> 8) + 1.0) * (1.0 / 16777217.0);
    double u2 = (double)(mt_rng_u32(seed, subseq, 2 * i + 1) >> 8) * (1.0 / 16777216.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ------------------------------------------------------------------ execution context */

struct mt_gpu_state; /* kernels/common.cuh: cuBLASLt handle, workspace, device properties */

typedef struct mt_ctx {
    mt_device device;          /* default: the CPU */
    mt_dtype dtype;            /* weights and activations; default f32 */
    void *stream;              /* cudaStream_t on the GPU; NULL = default stream */
    struct mt_gpu_state *gpu;  /* set by mt_gpu_init on the GPU */
    int sm_margin;             /* GPU: GEMMs leave this many SMs to work running beside them (the
                                  communication kernels of an overlapped collective); 0 = none */
} mt_ctx;

MT_API mt_dtype mt_stat_dtype(const mt_ctx *cx) { return cx->dtype == MT_F64 ? MT_F64 : MT_F32; }

typedef struct mt_adamw_hp {
    float lr, beta1, beta2, eps, weight_decay;
    int step;  /* 1-based, for bias correction */
} mt_adamw_hp;

#ifdef __cplusplus
}
#endif
#endif /* MT_CORE_H */
