/* tests/gpu_comm.cu — mt/comm.h under NCCL: every collective against a host reference, splits
 * and the rank grid, the watchdog, and a killed rank.
 *
 *   ./build/gpu_comm                 one process driving every visible GPU (one thread per GPU)
 *   RANK=r WORLD_SIZE=n LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p ./build/gpu_comm
 *                                    one process per GPU (what torchrun, srun, mpirun start)
 *   ... ./build/gpu_comm --kill-rank rank 1 leaves abruptly before a collective (process mode:
 *                                    _exit(1); thread mode: it never calls); the others must get
 *                                    MT_ERR_TIMEOUT (or NCCL's own error) within the timeout
 * tests/gpu_comm.sh runs all three on a machine with 2+ GPUs.
 */
#include <stdio.h>
#include <string.h>

/* error messages are kept per thread, so tests can check what they say */
static thread_local char tl_msg[1024];
static thread_local int tl_quiet;
static void test_log(int level, const char *msg) {
    if (level >= 3) snprintf(tl_msg, sizeof tl_msg, "%s", msg);
    if (!tl_quiet && level >= 1) fprintf(stderr, "megatron.h: %s\n", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)

#include "mt/comm.h"
#include "mt/parallel.h"
#include "mt_test.h"

#define MAXR 8
#define KILL_TIMEOUT_S 10.0

enum { T_COLL, T_UNEVEN, T_SPLIT, T_WAIT, T_KILL, T_COUNT };
static const char *k_test_names[T_COUNT] = {"collectives", "all_to_allv", "split_and_grid", "async_and_wait",
                                            "killed_rank"};

typedef struct {
    int checks[T_COUNT], fails[T_COUNT];
    char first[T_COUNT][1200];
    mt_status status;
    double kill_seconds;
} rank_result;

typedef struct {
    rank_result res[MAXR];
    int kill;
    int process_mode;
    int survivors_done;
} gpu_arg;

#define RCHECK(R, t, cond, ...)                                                                   \
    do {                                                                                          \
        (R)->checks[t]++;                                                                         \
        if (!(cond) && !(R)->fails[t]++) snprintf((R)->first[t], sizeof (R)->first[t], __VA_ARGS__); \
    } while (0)

#define CUDA_OK(call)                                                                             \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                              \
        }                                                                                         \
    } while (0)

/* ------------------------------------------------------------------ values (as in test_comm.c) */

static const mt_dtype k_dtypes[3] = {MT_F32, MT_BF16, MT_F16};

static void put(mt_dtype dt, void *buf, size_t i, float v) {
    if (dt == MT_F32) ((float *)buf)[i] = v;
    else if (dt == MT_BF16) ((uint16_t *)buf)[i] = mt_f32_to_bf16(v);
    else ((uint16_t *)buf)[i] = mt_f32_to_f16(v);
}
static float get(mt_dtype dt, const void *buf, size_t i) {
    if (dt == MT_F32) return ((const float *)buf)[i];
    if (dt == MT_BF16) return mt_bf16_to_f32(((const uint16_t *)buf)[i]);
    return mt_f16_to_f32(((const uint16_t *)buf)[i]);
}
static float rounded(mt_dtype dt, float v) {
    float t[1];
    put(dt, t, 0, v);
    return get(dt, t, 0);
}
static float val(mt_dtype dt, uint64_t seed, int r, size_t i) {
    return rounded(dt, 3.0f * mt_rng_normal(seed, (uint64_t)r, i));
}
static void fill(mt_dtype dt, void *buf, size_t count, uint64_t seed, int r) {
    for (size_t i = 0; i < count; i++) put(dt, buf, i, val(dt, seed, r, i));
}
/* reference in double; also the sum of magnitudes for the tolerance */
static double ref(mt_dtype dt, mt_reduce_op op, int n, uint64_t seed, size_t i, double *mag) {
    double acc = val(dt, seed, 0, i);
    *mag = fabs(acc);
    for (int r = 1; r < n; r++) {
        double v = val(dt, seed, r, i);
        *mag += fabs(v);
        if (op == MT_SUM || op == MT_AVG) acc += v;
        else if (op == MT_MAX) acc = v > acc ? v : acc;
        else acc = v < acc ? v : acc;
    }
    if (op == MT_AVG) {
        acc /= n;
        *mag /= n;
    }
    return acc;
}
/* NCCL reduces in its own order and may round between steps: relative to the magnitudes summed */
static double tol(mt_dtype dt, int n) {
    double u = dt == MT_F32 ? 6e-8 : dt == MT_BF16 ? 4e-3 : 5e-4;
    return 2.0 * u * (n + 1);
}

/* ------------------------------------------------------------------ one rank's checks */

typedef struct {
    mt_comm *c;
    cudaStream_t s;
    int n, r;
    rank_result *R;
    void *d_send, *d_recv;  /* device buffers, big enough for every check */
    char *h_send, *h_recv;  /* host staging */
    size_t cap;             /* bytes of each */
} ctx;

static void to_dev(ctx *x, void *d, const void *h, size_t nb) {
    if (nb) CUDA_OK(cudaMemcpyAsync(d, h, nb, cudaMemcpyHostToDevice, x->s));
}
static void to_host(ctx *x, void *h, const void *d, size_t nb) {
    if (nb) CUDA_OK(cudaMemcpyAsync(h, d, nb, cudaMemcpyDeviceToHost, x->s));
    CUDA_OK(cudaStreamSynchronize(x->s));
}
static void poison(ctx *x, void *d, size_t nb) { CUDA_OK(cudaMemsetAsync(d, 0xff, nb, x->s)); }

static void check_all_reduce(ctx *x, mt_dtype dt, size_t count, uint64_t seed) {
    size_t ds = mt_dtype_size(dt), nb = count * ds;
    for (int op = 0; op < 4; op++) {
        for (int in_place = 0; in_place < 2; in_place++) {
            uint64_t sd = seed + (uint64_t)op;
            fill(dt, x->h_send, count, sd, x->r);
            to_dev(x, x->d_send, x->h_send, nb);
            if (!in_place) poison(x, x->d_recv, nb);
            void *out = in_place ? x->d_send : x->d_recv;
            mt_status st = mt_comm_all_reduce(x->c, x->d_send, out, count, dt, (mt_reduce_op)op, x->s);
            RCHECK(x->R, T_COLL, st == MT_OK, "all_reduce %s %s: %s: %s", mt_dtype_name(dt),
                   mt_reduce_op_name((mt_reduce_op)op), mt_status_str(st), tl_msg);
            to_host(x, x->h_recv, out, nb);
            double worst = 0;
            size_t wi = 0;
            for (size_t i = 0; i < count; i++) {
                double mag, want = ref(dt, (mt_reduce_op)op, x->n, sd, i, &mag);
                double err = fabs(get(dt, x->h_recv, i) - want) / (mag + 1e-3);
                if (op == MT_MAX || op == MT_MIN) err = get(dt, x->h_recv, i) == (float)want ? 0 : 1;
                if (!(err <= worst)) { worst = err; wi = i; }
            }
            RCHECK(x->R, T_COLL, worst <= tol(dt, x->n), "all_reduce %s %s count %zu in_place %d: [%zu] = %g, err %.3g",
                   mt_dtype_name(dt), mt_reduce_op_name((mt_reduce_op)op), count, in_place, wi, get(dt, x->h_recv, wi),
                   worst);
        }
    }
}

static void check_reduce_scatter(ctx *x, mt_dtype dt, size_t cpr, uint64_t seed) {
    size_t ds = mt_dtype_size(dt), total = cpr * (size_t)x->n;
    for (int op = 0; op < 4; op += 2) { /* sum and avg */
        for (int in_place = 0; in_place < 2; in_place++) {
            uint64_t sd = seed + 10 + (uint64_t)op;
            fill(dt, x->h_send, total, sd, x->r);
            to_dev(x, x->d_send, x->h_send, total * ds);
            poison(x, x->d_recv, cpr * ds);
            void *out = in_place ? (void *)((char *)x->d_send + (size_t)x->r * cpr * ds) : x->d_recv;
            mt_status st = mt_comm_reduce_scatter(x->c, x->d_send, out, cpr, dt, (mt_reduce_op)op, x->s);
            RCHECK(x->R, T_COLL, st == MT_OK, "reduce_scatter: %s: %s", mt_status_str(st), tl_msg);
            to_host(x, x->h_recv, out, cpr * ds);
            double worst = 0;
            for (size_t i = 0; i < cpr; i++) {
                double mag, want = ref(dt, (mt_reduce_op)op, x->n, sd, (size_t)x->r * cpr + i, &mag);
                double err = fabs(get(dt, x->h_recv, i) - want) / (mag + 1e-3);
                if (!(err <= worst)) worst = err;
            }
            RCHECK(x->R, T_COLL, worst <= tol(dt, x->n), "reduce_scatter %s %s cpr %zu in_place %d: err %.3g",
                   mt_dtype_name(dt), mt_reduce_op_name((mt_reduce_op)op), cpr, in_place, worst);
        }
    }
}

static void check_all_gather(ctx *x, mt_dtype dt, size_t cpr, uint64_t seed) {
    size_t ds = mt_dtype_size(dt), total = cpr * (size_t)x->n;
    for (int in_place = 0; in_place < 2; in_place++) {
        fill(dt, x->h_send, cpr, seed + 20, x->r);
        poison(x, x->d_recv, total * ds);
        const void *src = x->d_send;
        if (in_place) {
            src = (char *)x->d_recv + (size_t)x->r * cpr * ds;
            to_dev(x, (void *)src, x->h_send, cpr * ds);
        } else {
            to_dev(x, x->d_send, x->h_send, cpr * ds);
        }
        mt_status st = mt_comm_all_gather(x->c, src, x->d_recv, cpr, dt, x->s);
        RCHECK(x->R, T_COLL, st == MT_OK, "all_gather: %s: %s", mt_status_str(st), tl_msg);
        to_host(x, x->h_recv, x->d_recv, total * ds);
        size_t bad = 0;
        for (size_t i = 0; i < total; i++)
            if (get(dt, x->h_recv, i) != val(dt, seed + 20, (int)(i / cpr), i % cpr)) bad++;
        RCHECK(x->R, T_COLL, bad == 0, "all_gather %s cpr %zu in_place %d: %zu wrong", mt_dtype_name(dt), cpr, in_place,
               bad);
    }
}

static void check_all_to_all(ctx *x, mt_dtype dt, size_t cpr, uint64_t seed) {
    size_t ds = mt_dtype_size(dt), total = cpr * (size_t)x->n, bad = 0;
    fill(dt, x->h_send, total, seed + 30, x->r);
    to_dev(x, x->d_send, x->h_send, total * ds);
    poison(x, x->d_recv, total * ds);
    mt_status st = mt_comm_all_to_all(x->c, x->d_send, x->d_recv, cpr, dt, x->s);
    RCHECK(x->R, T_COLL, st == MT_OK, "all_to_all: %s: %s", mt_status_str(st), tl_msg);
    to_host(x, x->h_recv, x->d_recv, total * ds);
    for (int q = 0; q < x->n; q++)
        for (size_t i = 0; i < cpr; i++)
            if (get(dt, x->h_recv, (size_t)q * cpr + i) != val(dt, seed + 30, q, (size_t)x->r * cpr + i)) bad++;
    RCHECK(x->R, T_COLL, bad == 0, "all_to_all %s cpr %zu: %zu wrong", mt_dtype_name(dt), cpr, bad);
}

static void check_broadcast(ctx *x, mt_dtype dt, size_t count, uint64_t seed) {
    size_t ds = mt_dtype_size(dt);
    for (int root = 0; root < x->n; root += (x->n > 1 ? x->n - 1 : 1)) {
        if (x->r == root) {
            fill(dt, x->h_send, count, seed + 50, root);
            to_dev(x, x->d_send, x->h_send, count * ds);
        } else {
            poison(x, x->d_send, count * ds);
        }
        mt_status st = mt_comm_broadcast(x->c, x->d_send, count, dt, root, x->s);
        RCHECK(x->R, T_COLL, st == MT_OK, "broadcast: %s: %s", mt_status_str(st), tl_msg);
        to_host(x, x->h_recv, x->d_send, count * ds);
        size_t bad = 0;
        for (size_t i = 0; i < count; i++)
            if (get(dt, x->h_recv, i) != val(dt, seed + 50, root, i)) bad++;
        RCHECK(x->R, T_COLL, bad == 0, "broadcast %s root %d: %zu wrong", mt_dtype_name(dt), root, bad);
    }
}

/* Pipeline exchange: one group sends to both ring neighbours and receives from both. */
static void check_p2p(ctx *x, mt_dtype dt, size_t count, uint64_t seed) {
    size_t ds = mt_dtype_size(dt), nb = count * ds;
    int next = (x->r + 1) % x->n, prev = (x->r + x->n - 1) % x->n;
    char *d_s1 = (char *)x->d_send, *d_s2 = d_s1 + nb, *d_r1 = (char *)x->d_recv, *d_r2 = d_r1 + nb;
    fill(dt, x->h_send, count, seed + 60, x->r);
    fill(dt, x->h_send + nb, count, seed + 61, x->r);
    to_dev(x, d_s1, x->h_send, 2 * nb);
    poison(x, d_r1, 2 * nb);
    mt_status st = mt_comm_group_start(x->c);
    if (st == MT_OK) st = mt_comm_recv(x->c, d_r1, count, dt, prev, x->s);
    if (st == MT_OK) st = mt_comm_recv(x->c, d_r2, count, dt, next, x->s);
    if (st == MT_OK) st = mt_comm_send(x->c, d_s1, count, dt, next, x->s);
    if (st == MT_OK) st = mt_comm_send(x->c, d_s2, count, dt, prev, x->s);
    mt_status st2 = mt_comm_group_end(x->c);
    RCHECK(x->R, T_COLL, st == MT_OK && st2 == MT_OK, "p2p group: %s / %s: %s", mt_status_str(st), mt_status_str(st2),
           tl_msg);
    to_host(x, x->h_recv, d_r1, 2 * nb);
    size_t bad = 0;
    for (size_t i = 0; i < count; i++) {
        if (get(dt, x->h_recv, i) != val(dt, seed + 60, prev, i)) bad++;
        if (get(dt, x->h_recv + nb, i) != val(dt, seed + 61, next, i)) bad++;
    }
    RCHECK(x->R, T_COLL, bad == 0, "p2p %s count %zu: %zu wrong", mt_dtype_name(dt), count, bad);
}

static size_t a2av_count(int s, int d) { return (size_t)((3 * s + 5 * d + 1) % 4) * 1001; }

static void check_all_to_allv(ctx *x, mt_dtype dt, uint64_t seed) {
    size_t ds = mt_dtype_size(dt), sc[MAXR], sd[MAXR], rc[MAXR], rd[MAXR], s_end = 0, r_end = 0, bad = 0;
    for (int q = 0; q < x->n; q++) {
        sc[q] = a2av_count(x->r, q); sd[q] = s_end; s_end += sc[q] + 3;
        rc[q] = a2av_count(q, x->r); rd[q] = r_end; r_end += rc[q] + 5;
    }
    for (int q = 0; q < x->n; q++)
        for (size_t j = 0; j < sc[q]; j++) put(dt, x->h_send, sd[q] + j, val(dt, seed + 40, x->r, (size_t)q * 4096 + j));
    to_dev(x, x->d_send, x->h_send, s_end * ds);
    poison(x, x->d_recv, r_end * ds);
    mt_status st = mt_comm_all_to_allv(x->c, x->d_send, sc, sd, x->d_recv, rc, rd, dt, x->s);
    RCHECK(x->R, T_UNEVEN, st == MT_OK, "all_to_allv: %s: %s", mt_status_str(st), tl_msg);
    to_host(x, x->h_recv, x->d_recv, r_end * ds);
    for (int q = 0; q < x->n; q++) {
        for (size_t j = 0; j < rc[q]; j++)
            if (get(dt, x->h_recv, rd[q] + j) != val(dt, seed + 40, q, (size_t)x->r * 4096 + j)) bad++;
        /* the gap after each block keeps its poison */
        if (((unsigned char *)x->h_recv)[(rd[q] + rc[q]) * ds] != 0xff) bad++;
    }
    RCHECK(x->R, T_UNEVEN, bad == 0, "all_to_allv %s: %zu wrong", mt_dtype_name(dt), bad);
}

/* Split: even/odd colors, rank 0 left out of another split, and the whole grid (tp = n). */
/* GPU_COMM_SPLIT_PARTS (bits, default 7): 1 the odd/even split, 2 the split without rank 0
 * (MT_COMM_NO_COLOR), 4 the rank grid; for bisecting what a later check depends on */
static int split_parts(void) {
    const char *e = getenv("GPU_COMM_SPLIT_PARTS");
    return e ? atoi(e) : 7;
}

static void check_split(ctx *x) {
    mt_comm *half = NULL, *part = NULL;
    int r = x->r, n = x->n, parts = split_parts();
    mt_status st = MT_OK;
    if (parts & 1) {
        st = mt_comm_split(x->c, r % 2, -r, "half", &half);
        RCHECK(x->R, T_SPLIT, st == MT_OK && half, "split: %s: %s", mt_status_str(st), tl_msg);
    }
    if (half) {
        int members = (n - r % 2 + 1) / 2;
        RCHECK(x->R, T_SPLIT, mt_comm_size(half) == members && mt_comm_rank(half) == members - 1 - r / 2,
               "half: rank %d of %d", mt_comm_rank(half), mt_comm_size(half));
        float *d = (float *)x->d_send, v = (float)(r + 1), want = 0;
        for (int q = r % 2; q < n; q += 2) want += (float)(q + 1);
        to_dev(x, d, &v, sizeof v);
        st = mt_comm_all_reduce(half, d, d, 1, MT_F32, MT_SUM, x->s);
        to_host(x, &v, d, sizeof v);
        RCHECK(x->R, T_SPLIT, st == MT_OK && v == want, "half all_reduce %g want %g (%s)", v, want, mt_status_str(st));
    }
    if (parts & 2) {
        st = mt_comm_split(x->c, r == 0 ? MT_COMM_NO_COLOR : 0, r, "part", &part);
        RCHECK(x->R, T_SPLIT, st == MT_OK && (r == 0) == (part == NULL), "split without rank 0: %s",
               mt_status_str(st));
    }
    mt_comm_destroy(part);
    mt_comm_destroy(half);
    if (!(parts & 4)) return;

    /* the rank grid with every rank in one tensor-parallel group (n ranks) */
    mt_parallel_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.tp = n;
    mt_parallel par;
    st = mt_parallel_init(&par, x->c, &cfg);
    RCHECK(x->R, T_SPLIT, st == MT_OK, "mt_parallel_init tp=%d: %s: %s", n, mt_status_str(st), tl_msg);
    if (st == MT_OK) {
        RCHECK(x->R, T_SPLIT, mt_comm_size(par.tp) == n && mt_comm_rank(par.tp) == r && mt_comm_size(par.dp) == 1,
               "grid sizes");
        float *d = (float *)x->d_send, v[2] = {(float)(r + 1), (float)(r + 1)};
        to_dev(x, d, v, sizeof v);
        st = mt_comm_all_reduce(par.tp, d, d, 1, MT_F32, MT_MAX, x->s);
        if (st == MT_OK) st = mt_comm_all_reduce(par.dp_cp, d + 1, d + 1, 1, MT_F32, MT_SUM, x->s);
        to_host(x, v, d, sizeof v);
        RCHECK(x->R, T_SPLIT, st == MT_OK && v[0] == (float)n && v[1] == (float)(r + 1), "grid reductions %g %g", v[0], v[1]);
        mt_parallel_free(&par);
    }
}

/* Calls return once enqueued (no blocking wait); mt_comm_wait checks the stream afterwards. */
static void check_async(ctx *x) {
    size_t count = (size_t)1 << 22;
    mt_comm_set_blocking_wait(x->c, 0);
    CUDA_OK(cudaMemsetAsync(x->d_send, 0, count * 2, x->s));
    mt_status st = MT_OK;
    for (int i = 0; i < 8 && st == MT_OK; i++)
        st = mt_comm_all_reduce(x->c, x->d_send, x->d_send, count, MT_BF16, MT_SUM, x->s);
    RCHECK(x->R, T_WAIT, st == MT_OK, "async all_reduce: %s", mt_status_str(st));
    st = mt_comm_wait(x->c, x->s);
    RCHECK(x->R, T_WAIT, st == MT_OK, "mt_comm_wait: %s: %s", mt_status_str(st), tl_msg);
    RCHECK(x->R, T_WAIT, cudaStreamQuery(x->s) == cudaSuccess, "stream not idle after mt_comm_wait");
    st = mt_comm_barrier(x->c, x->s);
    RCHECK(x->R, T_WAIT, st == MT_OK, "barrier: %s", mt_status_str(st));
    mt_comm_set_blocking_wait(x->c, 1);
}

static void ctx_init(ctx *x, mt_comm *c, rank_result *R, size_t cap) {
    memset(x, 0, sizeof *x);
    x->c = c;
    x->n = mt_comm_size(c);
    x->r = mt_comm_rank(c);
    x->R = R;
    x->cap = cap;
    CUDA_OK(cudaStreamCreate(&x->s));
    CUDA_OK(cudaMalloc(&x->d_send, cap));
    CUDA_OK(cudaMalloc(&x->d_recv, cap));
    x->h_send = (char *)malloc(cap);
    x->h_recv = (char *)malloc(cap);
}
static void ctx_free(ctx *x) {
    cudaFree(x->d_send);
    cudaFree(x->d_recv);
    cudaStreamDestroy(x->s);
    free(x->h_send);
    free(x->h_recv);
}

static const size_t k_counts[3] = {1, 4099, ((size_t)1 << 18) + 3};

static mt_status rank_main(mt_comm *c, void *argp) {
    gpu_arg *a = (gpu_arg *)argp;
    int r = mt_comm_rank(c);
    rank_result *R = &a->res[r >= 0 && r < MAXR ? r : 0];
    ctx x;
    ctx_init(&x, c, R, (size_t)MAXR * (((size_t)1 << 20) + 64) * 4);
    mt_comm_set_blocking_wait(c, 1); /* every call is watched until the GPU finishes it */

    if (a->kill) {
        double t0;
        mt_comm_set_timeout(c, KILL_TIMEOUT_S);
        /* warm up: connections made, then rank 1 leaves */
        mt_status st = mt_comm_all_reduce(c, x.d_send, x.d_send, (size_t)1 << 20, MT_F32, MT_SUM, x.s);
        RCHECK(R, T_KILL, st == MT_OK, "warm-up all_reduce: %s", mt_status_str(st));
        if (r == 1) {
            if (a->process_mode) {
                fprintf(stderr, "gpu_comm: rank 1 exits abruptly now (as if killed)\n");
                fflush(stderr);
                _exit(1);
            }
            /* thread mode: never joins the collective; leaves once the others have given up */
            while (__atomic_load_n(&a->survivors_done, __ATOMIC_SEQ_CST) < mt_comm_size(c) - 1) usleep(1000);
            mt_comm_abort(c);
            RCHECK(R, T_KILL, 1, "absent rank");
            ctx_free(&x);
            return MT_OK;
        }
        tl_quiet = 1;
        t0 = mt__now_s();
        st = mt_comm_all_reduce(c, x.d_send, x.d_send, (size_t)1 << 20, MT_F32, MT_SUM, x.s);
        R->kill_seconds = mt__now_s() - t0;
        tl_quiet = 0;
        fprintf(stderr, "gpu_comm: rank %d: survivor got %s after %.2f s: %s\n", r, mt_status_str(st), R->kill_seconds,
                tl_msg);
        RCHECK(R, T_KILL, st == MT_ERR_TIMEOUT || st == MT_ERR_NCCL, "survivor got %s", mt_status_str(st));
        RCHECK(R, T_KILL, R->kill_seconds <= KILL_TIMEOUT_S + 10.0, "took %.1f s for a %.0f s timeout", R->kill_seconds,
               KILL_TIMEOUT_S);
        RCHECK(R, T_KILL, strstr(tl_msg, "all_reduce") && strstr(tl_msg, "group 'world'"), "message: %s", tl_msg);
        /* the communicator is unusable afterwards and says so */
        tl_quiet = 1;
        st = mt_comm_barrier(c, x.s);
        tl_quiet = 0;
        RCHECK(R, T_KILL, st == MT_ERR_COMM && strstr(tl_msg, "aborted"), "after abort: %s: %s", mt_status_str(st), tl_msg);
        cudaGetLastError();
        __atomic_add_fetch(&a->survivors_done, 1, __ATOMIC_SEQ_CST);
        ctx_free(&x);
        return MT_OK;
    }

    /* GPU_COMM_ASYNC_FIRST=1: the non-blocking check before any other (isolates it from the
     * communicators that check_split creates and destroys) */
    int async_first = getenv("GPU_COMM_ASYNC_FIRST") && atoi(getenv("GPU_COMM_ASYNC_FIRST"));
    if (async_first) check_async(&x);
    for (int d = 0; d < 3; d++) {
        for (int k = 0; k < 3; k++) {
            uint64_t seed = 100u * (uint64_t)(d + 1) + 10u * (uint64_t)k;
            size_t count = k_counts[k];
            check_all_reduce(&x, k_dtypes[d], count, seed);
            check_reduce_scatter(&x, k_dtypes[d], count, seed);
            check_all_gather(&x, k_dtypes[d], count, seed);
            check_all_to_all(&x, k_dtypes[d], count, seed);
            check_broadcast(&x, k_dtypes[d], count, seed);
            check_p2p(&x, k_dtypes[d], count, seed);
        }
        check_all_to_allv(&x, k_dtypes[d], 7 + (uint64_t)d);
    }
    check_split(&x);
    if (!async_first) check_async(&x);
    ctx_free(&x);
    return MT_OK;
}

/* ------------------------------------------------------------------ main */

static gpu_arg g_arg;
static int g_lo, g_hi; /* the ranks whose results this process checks */

static void expect_test(int t) {
    int checks = 0;
    for (int r = g_lo; r < g_hi; r++) {
        const rank_result *R = &g_arg.res[r];
        checks += R->checks[t];
        MT_EXPECT(R->fails[t] == 0, "rank %d: %s: %d of %d failed; first: %s", r, k_test_names[t], R->fails[t],
                  R->checks[t], R->first[t]);
        MT_EXPECT(R->status == MT_OK, "rank %d ended with %s", r, mt_status_str(R->status));
    }
    MT_EXPECT(checks > 0, "%s: nothing ran", k_test_names[t]);
}
static void test_collectives(void) { expect_test(T_COLL); }
static void test_all_to_allv(void) { expect_test(T_UNEVEN); }
static void test_split_and_grid(void) { expect_test(T_SPLIT); }
static void test_async_and_wait(void) { expect_test(T_WAIT); }
static void test_killed_rank(void) { expect_test(T_KILL); }

/* seconds a collective may take before it counts as hung: GPU_COMM_TIMEOUT, default 120 */
static double timeout_s(void) {
    const char *e = getenv("GPU_COMM_TIMEOUT");
    return e && atof(e) > 0 ? atof(e) : 120.0;
}

int main(int argc, char **argv) {
    char name[64];
    mt_status statuses[MAXR];
    g_arg.kill = argc > 1 && !strcmp(argv[1], "--kill-rank");
    if (getenv("WORLD_SIZE")) {
        /* one process per GPU */
        mt_launch_info li;
        mt_comm *world = NULL;
        g_arg.process_mode = 1;
        MT_CHECK(mt_launch_env(&li));
        snprintf(name, sizeof name, "gpu_comm_rank%d", li.rank);
        printf("%s: process mode (%s), rank %d of %d, local rank %d, rendezvous %s:%d\n", name, li.launcher, li.rank,
               li.world, li.local_rank, li.master_addr, li.rendezvous_port);
        fflush(stdout);
        if (li.world > MAXR) {
            printf("%s: at most %d ranks: skipped\n%s: 0 passed, 0 failed\n", name, MAXR, name);
            return 0;
        }
        if (g_arg.kill && li.world < 2) {
            printf("%s: --kill-rank needs 2+ ranks: skipped\n%s: 0 passed, 0 failed\n", name, name);
            return 0;
        }
        MT_CHECK(mt_comm_nccl_init_launch(&li, timeout_s(), &world));
        g_lo = li.rank;
        g_hi = li.rank + 1;
        mt_status st = rank_main(world, &g_arg);
        g_arg.res[li.rank].status = st;
        mt_comm_destroy(world);
    } else {
        int ndev = 0;
        snprintf(name, sizeof name, "gpu_comm");
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
            cudaGetLastError();
            printf("gpu_comm: no GPU visible: skipped\ngpu_comm: 0 passed, 0 failed\n");
            return 0;
        }
        if (ndev > MAXR) ndev = MAXR;
        if (g_arg.kill && ndev < 2) {
            printf("gpu_comm: --kill-rank needs 2+ GPUs: skipped\ngpu_comm: 0 passed, 0 failed\n");
            return 0;
        }
        printf("gpu_comm: one process, %d GPU(s), one thread each\n", ndev);
        fflush(stdout);
        g_lo = 0;
        g_hi = ndev;
        mt_status st = mt_nccl_run(ndev, timeout_s(), rank_main, &g_arg, statuses);
        for (int r = 0; r < ndev; r++) g_arg.res[r].status = statuses[r];
        MT_EXPECT(st == MT_OK || g_arg.kill, "mt_nccl_run: %s", mt_status_str(st));
    }
    if (g_arg.kill) {
        MT_RUN(test_killed_rank);
    } else {
        MT_RUN(test_collectives);
        MT_RUN(test_all_to_allv);
        MT_RUN(test_split_and_grid);
        MT_RUN(test_async_and_wait);
    }
    return mt_test_summary(name);
}
