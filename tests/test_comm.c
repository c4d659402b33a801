/* tests/test_comm.c — mt/comm.h on the host backend (ranks are threads): every collective for
 * world sizes 1..8 against a serial reference, split groups working at the same time, timeouts,
 * mismatched calls; the launch environment and the TCP rendezvous on 127.0.0.1. */
#include <stdio.h>
#include <string.h>

/* Error messages are captured per thread so tests can check what they say. */
static _Thread_local char tl_msg[1024];
static _Thread_local int tl_quiet;
static void test_log(int level, const char *msg) {
    if (level >= 3) snprintf(tl_msg, sizeof tl_msg, "%s", msg);
    if (!tl_quiet && level >= 2) fprintf(stderr, "megatron.h: %s\n", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)

#include "mt/comm.h"
#include "mt_test.h"

/* ------------------------------------------------------------------ per-rank bookkeeping */

#define MAXR 8
typedef struct {
    int checks, fails;
    char first[1400];
} rank_log;

#define RCHECK(L, cond, ...)                                                          \
    do {                                                                              \
        (L)->checks++;                                                                \
        if (!(cond) && !(L)->fails++) snprintf((L)->first, sizeof (L)->first, __VA_ARGS__); \
    } while (0)

static void expect_logs(const rank_log *logs, int n, const char *what) {
    int r, checks = 0;
    for (r = 0; r < n; r++) {
        checks += logs[r].checks;
        MT_EXPECT(logs[r].fails == 0, "%s: rank %d of %d: %d failures, first: %s", what, r, n, logs[r].fails,
                  logs[r].first);
    }
    MT_EXPECT(checks > 0, "%s: no checks ran", what);
}

static int contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* ------------------------------------------------------------------ values */

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
static int same_bits(mt_dtype dt, const void *a, size_t i, const void *b, size_t j) {
    return !memcmp((const char *)a + i * mt_dtype_size(dt), (const char *)b + j * mt_dtype_size(dt), mt_dtype_size(dt));
}

/* The input of rank r, element i: normal(0, 3) rounded to dt. */
static float val(mt_dtype dt, uint64_t seed, int r, size_t i) {
    return rounded(dt, 3.0f * mt_rng_normal(seed, (uint64_t)r, i));
}
static void fill(mt_dtype dt, void *buf, size_t count, uint64_t seed, int r) {
    size_t i;
    for (i = 0; i < count; i++) put(dt, buf, i, val(dt, seed, r, i));
}

/* Serial reference: fp32, ranks in order, one rounding at the end (what every rank must get). */
static float ref_reduce(mt_dtype dt, mt_reduce_op op, int n, uint64_t seed, size_t i) {
    float acc = val(dt, seed, 0, i);
    int r;
    for (r = 1; r < n; r++) {
        float v = val(dt, seed, r, i);
        if (op == MT_SUM || op == MT_AVG) acc += v;
        else if (op == MT_MAX) acc = v > acc ? v : acc;
        else acc = v < acc ? v : acc;
    }
    if (op == MT_AVG) acc /= (float)n;
    return rounded(dt, acc);
}
/* The same in double: a sanity bound that the reduction is the right one. */
static double ref_sum_f64(mt_dtype dt, int n, uint64_t seed, size_t i, double *abs_sum) {
    double s = 0;
    int r;
    *abs_sum = 0;
    for (r = 0; r < n; r++) {
        s += val(dt, seed, r, i);
        *abs_sum += fabs((double)val(dt, seed, r, i));
    }
    return s;
}

static void *xalloc(size_t nbytes) {
    void *p = NULL;
    MT_CHECK(mt_calloc(nbytes, &p));
    return p;
}

/* ------------------------------------------------------------------ every collective, n = 1..8 */

typedef struct {
    rank_log log[MAXR];
} coll_arg;

static rank_log *log_of(void *argp, const mt_comm *c) {
    int r = mt_comm_rank(c);
    return &((coll_arg *)argp)->log[r >= 0 && r < MAXR ? r : 0];
}

static const size_t k_counts[3] = {1, 7, 301};

static void check_all_reduce(mt_comm *c, rank_log *L, mt_dtype dt, size_t count, uint64_t seed) {
    int n = mt_comm_size(c), r = mt_comm_rank(c), op, in_place;
    size_t ds = mt_dtype_size(dt), i;
    char *send = (char *)xalloc(count * ds), *recv = (char *)xalloc(count * ds), *want = (char *)xalloc(count * ds);
    for (op = 0; op < 4; op++) {
        for (in_place = 0; in_place < 2; in_place++) {
            mt_status st;
            fill(dt, send, count, seed + (uint64_t)op, r);
            memset(recv, 0xff, count * ds);
            st = mt_comm_all_reduce(c, send, in_place ? send : recv, count, dt, (mt_reduce_op)op, NULL);
            RCHECK(L, st == MT_OK, "all_reduce %s %s status %s", mt_dtype_name(dt), mt_reduce_op_name((mt_reduce_op)op),
                   mt_status_str(st));
            for (i = 0; i < count; i++) put(dt, want, i, ref_reduce(dt, (mt_reduce_op)op, n, seed + (uint64_t)op, i));
            for (i = 0; i < count; i++) {
                const char *got = in_place ? send : recv;
                if (!same_bits(dt, got, i, want, i)) {
                    RCHECK(L, 0, "all_reduce %s %s n=%d count=%zu in_place=%d: [%zu] = %g, want %g", mt_dtype_name(dt),
                           mt_reduce_op_name((mt_reduce_op)op), n, count, in_place, i, get(dt, got, i), get(dt, want, i));
                    break;
                }
            }
            RCHECK(L, i == count, "all_reduce mismatch");
            if (op == MT_SUM) {
                /* the sum is the sum: within rounding of the double reference */
                double a, s = ref_sum_f64(dt, n, seed, 0, &a);
                float got = get(dt, in_place ? send : recv, 0);
                double eps = dt == MT_F32 ? 6e-8 : dt == MT_BF16 ? 4e-3 : 5e-4;
                RCHECK(L, fabs(got - s) <= eps * (a + 1) * 2, "all_reduce sum %g vs f64 %g", got, s);
            }
        }
    }
    mt_free(send);
    mt_free(recv);
    mt_free(want);
}

static void check_reduce_scatter(mt_comm *c, rank_log *L, mt_dtype dt, size_t cpr, uint64_t seed) {
    int n = mt_comm_size(c), r = mt_comm_rank(c), in_place, op;
    size_t ds = mt_dtype_size(dt), i, total = cpr * (size_t)n;
    char *send = (char *)xalloc(total * ds), *recv = (char *)xalloc(cpr * ds);
    for (op = 0; op < 4; op += 1) {
        for (in_place = 0; in_place < 2; in_place++) {
            char *out;
            mt_status st;
            fill(dt, send, total, seed + 10 + (uint64_t)op, r);
            memset(recv, 0xff, cpr * ds);
            out = in_place ? send + (size_t)r * cpr * ds : recv;
            st = mt_comm_reduce_scatter(c, send, out, cpr, dt, (mt_reduce_op)op, NULL);
            RCHECK(L, st == MT_OK, "reduce_scatter status %s", mt_status_str(st));
            for (i = 0; i < cpr; i++) {
                float want = ref_reduce(dt, (mt_reduce_op)op, n, seed + 10 + (uint64_t)op, (size_t)r * cpr + i);
                char w[4];
                put(dt, w, 0, want);
                if (!same_bits(dt, out, i, w, 0)) {
                    RCHECK(L, 0, "reduce_scatter %s %s n=%d cpr=%zu in_place=%d: [%zu] = %g, want %g",
                           mt_dtype_name(dt), mt_reduce_op_name((mt_reduce_op)op), n, cpr, in_place, i, get(dt, out, i),
                           want);
                    break;
                }
            }
            RCHECK(L, i == cpr, "reduce_scatter mismatch");
        }
    }
    mt_free(send);
    mt_free(recv);
}

static void check_all_gather(mt_comm *c, rank_log *L, mt_dtype dt, size_t cpr, uint64_t seed) {
    int n = mt_comm_size(c), r = mt_comm_rank(c), in_place, q;
    size_t ds = mt_dtype_size(dt), i, total = cpr * (size_t)n;
    char *send = (char *)xalloc(cpr * ds), *recv = (char *)xalloc(total * ds);
    for (in_place = 0; in_place < 2; in_place++) {
        const char *src = send;
        mt_status st;
        memset(recv, 0xff, total * ds);
        fill(dt, send, cpr, seed + 20, r);
        if (in_place) {
            fill(dt, recv + (size_t)r * cpr * ds, cpr, seed + 20, r);
            src = recv + (size_t)r * cpr * ds;
        }
        st = mt_comm_all_gather(c, src, recv, cpr, dt, NULL);
        RCHECK(L, st == MT_OK, "all_gather status %s", mt_status_str(st));
        for (q = 0; q < n; q++) {
            for (i = 0; i < cpr; i++) {
                float want = val(dt, seed + 20, q, i), got = get(dt, recv, (size_t)q * cpr + i);
                if (got != want) {
                    RCHECK(L, 0, "all_gather %s n=%d in_place=%d: chunk %d [%zu] = %g, want %g", mt_dtype_name(dt), n,
                           in_place, q, i, got, want);
                    q = n;
                    break;
                }
            }
        }
        RCHECK(L, 1, "all_gather");
    }
    mt_free(send);
    mt_free(recv);
}

static void check_all_to_all(mt_comm *c, rank_log *L, mt_dtype dt, size_t cpr, uint64_t seed) {
    int n = mt_comm_size(c), r = mt_comm_rank(c), q, bad = 0;
    size_t ds = mt_dtype_size(dt), i, total = cpr * (size_t)n;
    char *send = (char *)xalloc(total * ds), *recv = (char *)xalloc(total * ds);
    mt_status st;
    fill(dt, send, total, seed + 30, r);
    memset(recv, 0xff, total * ds);
    st = mt_comm_all_to_all(c, send, recv, cpr, dt, NULL);
    RCHECK(L, st == MT_OK, "all_to_all status %s", mt_status_str(st));
    /* chunk q of recv = chunk r of rank q's send */
    for (q = 0; q < n && !bad; q++)
        for (i = 0; i < cpr && !bad; i++)
            if (get(dt, recv, (size_t)q * cpr + i) != val(dt, seed + 30, q, (size_t)r * cpr + i)) bad = 1;
    RCHECK(L, !bad, "all_to_all %s n=%d cpr=%zu: wrong chunk %d element %zu", mt_dtype_name(dt), n, cpr, q - 1,
           i ? i - 1 : 0);
    mt_free(send);
    mt_free(recv);
}

/* Uneven splits: rank s sends (3s + 5d + 1) % 4 elements to rank d (some zero), with gaps. */
static size_t a2av_count(int s, int d) { return (size_t)((3 * s + 5 * d + 1) % 4) * 3; }

static void check_all_to_allv(mt_comm *c, rank_log *L, mt_dtype dt, uint64_t seed) {
    int n = mt_comm_size(c), r = mt_comm_rank(c), q, bad = 0;
    size_t ds = mt_dtype_size(dt), sc[MAXR], sd[MAXR], rc[MAXR], rd[MAXR], s_end = 0, r_end = 0, j;
    char *send, *recv;
    mt_status st;
    for (q = 0; q < n; q++) {
        sc[q] = a2av_count(r, q);
        sd[q] = s_end;
        s_end += sc[q] + 1;
        rc[q] = a2av_count(q, r);
        rd[q] = r_end;
        r_end += rc[q] + 2;
    }
    send = (char *)xalloc(s_end * ds + 1);
    recv = (char *)xalloc(r_end * ds + 1);
    for (q = 0; q < n; q++)
        for (j = 0; j < sc[q]; j++) put(dt, send, sd[q] + j, val(dt, seed + 40, r, (size_t)q * 64 + j));
    memset(recv, 0x7f, r_end * ds);
    st = mt_comm_all_to_allv(c, send, sc, sd, recv, rc, rd, dt, NULL);
    RCHECK(L, st == MT_OK, "all_to_allv status %s", mt_status_str(st));
    for (q = 0; q < n && !bad; q++)
        for (j = 0; j < rc[q] && !bad; j++)
            if (get(dt, recv, rd[q] + j) != val(dt, seed + 40, q, (size_t)r * 64 + j)) bad = 1;
    RCHECK(L, !bad, "all_to_allv %s n=%d: wrong data from rank %d", mt_dtype_name(dt), n, q - 1);
    /* the gaps between displacements are untouched */
    for (q = 0; q < n; q++) {
        const unsigned char *gap = (const unsigned char *)recv + (rd[q] + rc[q]) * ds;
        RCHECK(L, gap[0] == 0x7f, "all_to_allv wrote outside recv_counts (rank %d gap %d)", r, q);
    }
    mt_free(send);
    mt_free(recv);
}

static void check_broadcast(mt_comm *c, rank_log *L, mt_dtype dt, size_t count, uint64_t seed) {
    int n = mt_comm_size(c), r = mt_comm_rank(c), root;
    size_t ds = mt_dtype_size(dt), i;
    char *buf = (char *)xalloc(count * ds);
    for (root = 0; root < n; root += (n > 2 ? n - 1 : 1)) {
        mt_status st;
        if (r == root) fill(dt, buf, count, seed + 50, root);
        else memset(buf, 0xff, count * ds);
        st = mt_comm_broadcast(c, buf, count, dt, root, NULL);
        RCHECK(L, st == MT_OK, "broadcast status %s", mt_status_str(st));
        for (i = 0; i < count; i++)
            if (get(dt, buf, i) != val(dt, seed + 50, root, i)) break;
        RCHECK(L, i == count, "broadcast %s n=%d root=%d: [%zu] wrong", mt_dtype_name(dt), n, root, i);
    }
    mt_free(buf);
}

/* Pipeline-style exchange: in one group, send to both ring neighbours and receive from both. */
static void check_p2p(mt_comm *c, rank_log *L, mt_dtype dt, size_t count, uint64_t seed) {
    int n = mt_comm_size(c), r = mt_comm_rank(c), next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t ds = mt_dtype_size(dt), i;
    char *s1 = (char *)xalloc(count * ds), *s2 = (char *)xalloc(count * ds + ds);
    char *r1 = (char *)xalloc(count * ds), *r2 = (char *)xalloc(count * ds + ds);
    mt_status st = MT_OK;
    fill(dt, s1, count, seed + 60, r);
    fill(dt, s2, count + 1, seed + 61, r);
    MT_CHECK(mt_comm_group_start(c));
    /* receives first: inside a group the order does not matter */
    if (st == MT_OK) st = mt_comm_recv(c, r1, count, dt, prev, NULL);
    if (st == MT_OK) st = mt_comm_recv(c, r2, count + 1, dt, next, NULL);
    if (st == MT_OK) st = mt_comm_send(c, s1, count, dt, next, NULL);
    if (st == MT_OK) st = mt_comm_send(c, s2, count + 1, dt, prev, NULL);
    {
        mt_status st2 = mt_comm_group_end(c);
        if (st == MT_OK) st = st2;
    }
    RCHECK(L, st == MT_OK, "p2p status %s", mt_status_str(st));
    for (i = 0; i < count; i++)
        if (get(dt, r1, i) != val(dt, seed + 60, prev, i)) break;
    RCHECK(L, i == count, "p2p from prev: [%zu] wrong (n=%d)", i, n);
    for (i = 0; i < count + 1; i++)
        if (get(dt, r2, i) != val(dt, seed + 61, next, i)) break;
    RCHECK(L, i == count + 1, "p2p from next: [%zu] wrong (n=%d)", i, n);
    /* outside a group: a send returns at once, so send-then-recv does not deadlock here */
    st = mt_comm_send(c, s1, count, dt, next, NULL);
    if (st == MT_OK) st = mt_comm_recv(c, r1, count, dt, prev, NULL);
    RCHECK(L, st == MT_OK, "ungrouped p2p status %s", mt_status_str(st));
    for (i = 0; i < count; i++)
        if (get(dt, r1, i) != val(dt, seed + 60, prev, i)) break;
    RCHECK(L, i == count, "ungrouped p2p: [%zu] wrong", i);
    mt_free(s1);
    mt_free(s2);
    mt_free(r1);
    mt_free(r2);
}

static mt_status coll_body(mt_comm *c, void *argp) {
    coll_arg *a = (coll_arg *)argp;
    rank_log *L = log_of(a, c);
    int d, k;
    for (d = 0; d < 3; d++) {
        for (k = 0; k < 3; k++) {
            uint64_t seed = 1000u * (uint64_t)(d + 1) + 100u * (uint64_t)k + (uint64_t)mt_comm_size(c);
            size_t count = k_counts[k];
            check_all_reduce(c, L, k_dtypes[d], count, seed);
            check_reduce_scatter(c, L, k_dtypes[d], count, seed);
            check_all_gather(c, L, k_dtypes[d], count, seed);
            check_all_to_all(c, L, k_dtypes[d], count, seed);
            check_broadcast(c, L, k_dtypes[d], count, seed);
            check_p2p(c, L, k_dtypes[d], count, seed);
        }
        check_all_to_allv(c, L, k_dtypes[d], 77 + (uint64_t)d);
    }
    RCHECK(L, mt_comm_barrier(c, NULL) == MT_OK, "barrier");
    return MT_OK;
}

static void test_collectives_all_sizes(void) {
    int n;
    for (n = 1; n <= MAXR; n++) {
        coll_arg a;
        mt_status st;
        char what[32];
        memset(&a, 0, sizeof a);
        st = mt_host_run(n, 20.0, coll_body, &a, NULL);
        MT_EXPECT(st == MT_OK, "n=%d: %s", n, mt_status_str(st));
        snprintf(what, sizeof what, "n=%d", n);
        expect_logs(a.log, n, what);
    }
}

/* A larger all-reduce: crosses the reduction block size and uneven per-rank chunks. */
static mt_status big_body(mt_comm *c, void *argp) {
    rank_log *L = log_of(argp, c);
    check_all_reduce(c, L, MT_BF16, 10007, 4242);
    check_reduce_scatter(c, L, MT_F32, 1031, 4343);
    return MT_OK;
}

static void test_larger_counts(void) {
    coll_arg a;
    memset(&a, 0, sizeof a);
    MT_EXPECT(mt_host_run(5, 20.0, big_body, &a, NULL) == MT_OK, "run");
    expect_logs(a.log, 5, "large counts n=5");
}

/* fp8 moves but does not reduce on the host; overlapping buffers are refused. */
static mt_status dtype_body(mt_comm *c, void *argp) {
    rank_log *L = log_of(argp, c);
    int n = mt_comm_size(c), r = mt_comm_rank(c), q;
    uint8_t s[3], out[3 * MAXR], buf[8];
    mt_status st;
    for (q = 0; q < 3; q++) s[q] = (uint8_t)(16 * r + q);
    st = mt_comm_all_gather(c, s, out, 3, MT_FP8E4M3, NULL);
    RCHECK(L, st == MT_OK, "fp8 all_gather: %s", mt_status_str(st));
    for (q = 0; q < 3 * n; q++) RCHECK(L, out[q] == (uint8_t)(16 * (q / 3) + q % 3), "fp8 gather [%d]", q);
    tl_quiet = 1;
    st = mt_comm_all_reduce(c, s, s, 3, MT_FP8E5M2, MT_SUM, NULL);
    RCHECK(L, st == MT_ERR_UNSUPPORTED && contains(tl_msg, "e5m2"), "fp8 all_reduce: %s (%s)", mt_status_str(st), tl_msg);
    st = mt_comm_all_to_all(c, buf, buf, 1, MT_FP8E4M3, NULL);
    RCHECK(L, st == MT_ERR_ARG && contains(tl_msg, "overlap"), "in-place all_to_all accepted: %s", mt_status_str(st));
    st = mt_comm_all_reduce(c, buf, buf + 2, 2, MT_BF16, MT_SUM, NULL);
    RCHECK(L, st == MT_ERR_ARG && contains(tl_msg, "overlap"), "partly overlapping all_reduce: %s", mt_status_str(st));
    st = mt_comm_broadcast(c, buf, 1, MT_F32, n, NULL);
    RCHECK(L, st == MT_ERR_ARG && contains(tl_msg, "root"), "bad root: %s", mt_status_str(st));
    st = mt_comm_send(c, buf, 1, MT_F32, -1, NULL);
    RCHECK(L, st == MT_ERR_ARG && contains(tl_msg, "peer -1"), "bad peer: %s", mt_status_str(st));
    st = mt_comm_all_reduce(c, NULL, buf, 1, MT_F32, MT_SUM, NULL);
    RCHECK(L, st == MT_ERR_ARG && contains(tl_msg, "send is NULL"), "NULL send: %s", mt_status_str(st));
    tl_quiet = 0;
    /* the group still works after argument errors (they fail before any rank waits) */
    st = mt_comm_barrier(c, NULL);
    RCHECK(L, st == MT_OK, "barrier after argument errors: %s", mt_status_str(st));
    return MT_OK;
}

static void test_dtypes_and_arguments(void) {
    coll_arg a;
    memset(&a, 0, sizeof a);
    MT_EXPECT(mt_host_run(1, 5.0, dtype_body, &a, NULL) == MT_OK, "run n=1");
    expect_logs(a.log, 1, "n=1");
    memset(&a, 0, sizeof a);
    MT_EXPECT(mt_host_run(3, 5.0, dtype_body, &a, NULL) == MT_OK, "run n=3");
    expect_logs(a.log, 3, "n=3");
}

/* ------------------------------------------------------------------ split groups */

/* A 2 x (n/2) grid: tp = pairs of neighbours, dp = same parity. Both kinds of group run
 * collectives at the same time, interleaved, many times. */
static mt_status split_body(mt_comm *w, void *argp) {
    rank_log *L = log_of(argp, w);
    int n = mt_comm_size(w), r = mt_comm_rank(w), it, q;
    mt_comm *tp = NULL, *dp = NULL, *rev = NULL, *part = NULL, *sub = NULL;
    mt_status st;
    st = mt_comm_split(w, r / 2, r, "tp", &tp);
    RCHECK(L, st == MT_OK && tp, "split tp: %s", mt_status_str(st));
    st = mt_comm_split(w, r % 2, r, "dp", &dp);
    RCHECK(L, st == MT_OK && dp, "split dp: %s", mt_status_str(st));
    if (!tp || !dp) return MT_ERR_INTERNAL;
    RCHECK(L, mt_comm_size(tp) == 2 && mt_comm_rank(tp) == r % 2, "tp rank %d size %d", mt_comm_rank(tp), mt_comm_size(tp));
    RCHECK(L, mt_comm_size(dp) == n / 2 && mt_comm_rank(dp) == r / 2, "dp rank %d size %d", mt_comm_rank(dp),
           mt_comm_size(dp));
    RCHECK(L, !strcmp(mt_comm_name(tp), "tp") && mt_comm_world_rank(dp) == r, "names and world ranks");
    for (it = 0; it < 40; it++) {
        float x[3], y[3], want_tp = 0, want_dp = 0;
        for (q = 0; q < 3; q++) x[q] = y[q] = (float)((r + 1) * (it + 1) + q);
        for (q = 0; q < n; q++) {
            if (q / 2 == r / 2) want_tp += (float)((q + 1) * (it + 1));
            if (q % 2 == r % 2) want_dp += (float)((q + 1) * (it + 1));
        }
        if ((it + r) % 3 == 0) mt__sleep_ms(0); /* shuffle the timing a little */
        st = mt_comm_all_reduce(tp, x, x, 3, MT_F32, MT_SUM, NULL);
        RCHECK(L, st == MT_OK && x[0] == want_tp && x[2] == want_tp + 4, "tp all_reduce it %d: %g want %g", it, x[0],
               want_tp);
        st = mt_comm_all_reduce(dp, y, y, 3, MT_F32, MT_SUM, NULL);
        RCHECK(L, st == MT_OK && y[0] == want_dp && y[1] == want_dp + (float)(n / 2), "dp all_reduce it %d: %g want %g",
               it, y[0], want_dp);
    }
    /* keys order the child: reversed keys reverse the ranks */
    st = mt_comm_split(w, 7, n - r, "rev", &rev);
    RCHECK(L, st == MT_OK && rev && mt_comm_rank(rev) == n - 1 - r && mt_comm_size(rev) == n, "reversed split");
    /* MT_COMM_NO_COLOR: rank 0 gets no child; equal keys keep the parent order */
    st = mt_comm_split(w, r == 0 ? MT_COMM_NO_COLOR : 1, 0, "part", &part);
    RCHECK(L, st == MT_OK, "split with no color: %s", mt_status_str(st));
    if (r == 0) RCHECK(L, part == NULL, "rank 0 got a child");
    else RCHECK(L, part && mt_comm_rank(part) == r - 1 && mt_comm_size(part) == n - 1, "part rank");
    if (part) {
        int v = r, gathered[MAXR];
        st = mt_comm_all_gather(part, &v, gathered, 1, MT_F32, NULL); /* 4-byte payload, any bits */
        RCHECK(L, st == MT_OK, "part all_gather");
        for (q = 0; q < n - 1; q++) RCHECK(L, gathered[q] == q + 1, "part gathered[%d] = %d", q, gathered[q]);
    }
    /* split of a split */
    st = mt_comm_split(dp, 0, -mt_comm_rank(dp), "dp.rev", &sub);
    RCHECK(L, st == MT_OK && sub && mt_comm_rank(sub) == n / 2 - 1 - r / 2, "split of a split");
    if (sub) {
        float one = (float)(r + 1);
        st = mt_comm_all_reduce(sub, &one, &one, 1, MT_F32, MT_MAX, NULL);
        RCHECK(L, st == MT_OK && one == (float)(n - 1 - (r % 2 == 0 ? 1 : 0) + 1), "dp.rev max %g", one);
    }
    mt_comm_destroy(sub);
    mt_comm_destroy(part);
    mt_comm_destroy(rev);
    mt_comm_destroy(dp);
    mt_comm_destroy(tp);
    return MT_OK;
}

static void test_split_concurrent(void) {
    int n;
    for (n = 2; n <= MAXR; n += 2) {
        coll_arg a;
        char what[32];
        memset(&a, 0, sizeof a);
        MT_EXPECT(mt_host_run(n, 20.0, split_body, &a, NULL) == MT_OK, "run n=%d", n);
        snprintf(what, sizeof what, "split n=%d", n);
        expect_logs(a.log, n, what);
    }
}

/* ------------------------------------------------------------------ timeouts and mismatches */

typedef struct {
    mt_status st[MAXR], st2[MAXR];
    double seconds[MAXR];
    char msg[MAXR][1024], msg2[MAXR][1024];
} fail_arg;

/* The last rank never joins; the others must time out quickly with a message that says who. */
static mt_status absent_body(mt_comm *c, void *argp) {
    fail_arg *a = (fail_arg *)argp;
    int r = mt_comm_rank(c), n = mt_comm_size(c);
    float x[5] = {1, 2, 3, 4, 5};
    double t0;
    if (r == n - 1) return MT_OK;
    tl_quiet = 1;
    t0 = mt__now_s();
    a->st[r] = mt_comm_all_reduce(c, x, x, 5, MT_F32, MT_SUM, NULL);
    a->seconds[r] = mt__now_s() - t0;
    snprintf(a->msg[r], sizeof a->msg[r], "%s", tl_msg);
    a->st2[r] = mt_comm_barrier(c, NULL);
    snprintf(a->msg2[r], sizeof a->msg2[r], "%s", tl_msg);
    tl_quiet = 0;
    return MT_OK;
}

static void test_timeout_absent_rank(void) {
    fail_arg a;
    int r;
    memset(&a, 0, sizeof a);
    MT_EXPECT(mt_host_run(3, 0.5, absent_body, &a, NULL) == MT_OK, "run");
    for (r = 0; r < 2; r++) {
        char want[64];
        MT_EXPECT(a.st[r] == MT_ERR_TIMEOUT, "rank %d: %s", r, mt_status_str(a.st[r]));
        MT_EXPECT(a.seconds[r] >= 0.45 && a.seconds[r] < 5.0, "rank %d waited %.3f s for a 0.5 s timeout", r,
                  a.seconds[r]);
        snprintf(want, sizeof want, "(rank %d of 3", r);
        MT_EXPECT(contains(a.msg[r], "all_reduce") && contains(a.msg[r], "group 'world'") && contains(a.msg[r], want) &&
                      contains(a.msg[r], "rank(s) 2 (world 2) never arrived"),
                  "rank %d message: %s", r, a.msg[r]);
        /* the group is now unusable, and says why */
        MT_EXPECT(a.st2[r] == MT_ERR_COMM && contains(a.msg2[r], "unusable") && contains(a.msg2[r], "barrier"),
                  "rank %d after timeout: %s: %s", r, mt_status_str(a.st2[r]), a.msg2[r]);
    }
}

/* A receive on a split group "pp" whose peer never sends. */
static mt_status recv_timeout_body(mt_comm *w, void *argp) {
    fail_arg *a = (fail_arg *)argp;
    int r = mt_comm_rank(w);
    mt_comm *pp = NULL;
    float buf[4];
    double t0;
    MT_TRY(mt_comm_split(w, 0, r, "pp", &pp));
    mt_comm_set_timeout(pp, 0.3);
    if (r == 1) {
        tl_quiet = 1;
        t0 = mt__now_s();
        a->st[r] = mt_comm_recv(pp, buf, 4, MT_BF16, 0, NULL);
        a->seconds[r] = mt__now_s() - t0;
        snprintf(a->msg[r], sizeof a->msg[r], "%s", tl_msg);
        tl_quiet = 0;
    }
    mt_comm_destroy(pp);
    return MT_OK;
}

static void test_timeout_recv(void) {
    fail_arg a;
    memset(&a, 0, sizeof a);
    MT_EXPECT(mt_host_run(2, 5.0, recv_timeout_body, &a, NULL) == MT_OK, "run");
    MT_EXPECT(a.st[1] == MT_ERR_TIMEOUT, "recv: %s", mt_status_str(a.st[1]));
    MT_EXPECT(a.seconds[1] >= 0.25 && a.seconds[1] < 5.0, "recv waited %.3f s for 0.3 s", a.seconds[1]);
    MT_EXPECT(contains(a.msg[1], "recv on group 'pp' (rank 1 of 2") && contains(a.msg[1], "rank 0 (world 0) to send 4 x bf16"),
              "message: %s", a.msg[1]);
}

/* Rank 0 aborts the group: rank 1, waiting in a barrier or arriving later, fails at once. */
static mt_status abort_body(mt_comm *c, void *argp) {
    fail_arg *a = (fail_arg *)argp;
    int r = mt_comm_rank(c);
    double t0 = mt__now_s();
    if (r == 0) {
        mt__sleep_ms(50); /* let rank 1 start waiting */
        mt_comm_abort(c);
        return MT_OK;
    }
    tl_quiet = 1;
    a->st[r] = mt_comm_barrier(c, NULL);
    a->seconds[r] = mt__now_s() - t0;
    snprintf(a->msg[r], sizeof a->msg[r], "%s", tl_msg);
    a->st2[r] = mt_comm_barrier(c, NULL);
    snprintf(a->msg2[r], sizeof a->msg2[r], "%s", tl_msg);
    tl_quiet = 0;
    return MT_OK;
}

static void test_abort(void) {
    fail_arg a;
    memset(&a, 0, sizeof a);
    MT_EXPECT(mt_host_run(2, 30.0, abort_body, &a, NULL) == MT_OK, "run");
    MT_EXPECT(a.st[1] == MT_ERR_COMM && a.seconds[1] < 5.0 && contains(a.msg[1], "rank 0 aborted the group") &&
                  contains(a.msg[1], "barrier"),
              "waiting rank: %s after %.2f s: %s", mt_status_str(a.st[1]), a.seconds[1], a.msg[1]);
    MT_EXPECT(a.st2[1] == MT_ERR_COMM && contains(a.msg2[1], "unusable"), "later call: %s: %s", mt_status_str(a.st2[1]),
              a.msg2[1]);
}

/* Ranks that call different collectives, or all_to_allv with counts that do not match. */
static mt_status mismatch_body(mt_comm *c, void *argp) {
    fail_arg *a = (fail_arg *)argp;
    int r = mt_comm_rank(c);
    float x[10] = {0}, y[20] = {0};
    size_t sc[2], sd[2] = {0, 5}, rc[2], rd[2] = {0, 5};
    tl_quiet = 1;
    if (r == 0) a->st[r] = mt_comm_all_reduce(c, x, x, 5, MT_F32, MT_SUM, NULL);
    else a->st[r] = mt_comm_all_gather(c, x, y, 5, MT_F32, NULL);
    snprintf(a->msg[r], sizeof a->msg[r], "%s", tl_msg);
    sc[0] = 2; sc[1] = 3;
    rc[0] = rc[1] = r == 0 ? 2 : 3; /* what the others send to r */
    if (r == 1) rc[1] = 4;          /* rank 1 expects 4 from rank 1, which sends 3 */
    a->st2[r] = mt_comm_all_to_allv(c, x, sc, sd, y, rc, rd, MT_F32, NULL);
    snprintf(a->msg2[r], sizeof a->msg2[r], "%s", tl_msg);
    tl_quiet = 0;
    return MT_OK;
}

static void test_mismatched_calls(void) {
    fail_arg a;
    int r;
    memset(&a, 0, sizeof a);
    MT_EXPECT(mt_host_run(2, 5.0, mismatch_body, &a, NULL) == MT_OK, "run");
    for (r = 0; r < 2; r++) {
        MT_EXPECT(a.st[r] == MT_ERR_COMM && contains(a.msg[r], "ranks disagree") && contains(a.msg[r], "all_gather"),
                  "rank %d: %s: %s", r, mt_status_str(a.st[r]), a.msg[r]);
        MT_EXPECT(a.st2[r] == MT_ERR_SHAPE && contains(a.msg2[r], "rank 1 sends 3 elements to rank 1, which expects 4"),
                  "rank %d a2av: %s: %s", r, mt_status_str(a.st2[r]), a.msg2[r]);
    }
}

/* ------------------------------------------------------------------ launch environment */

static const char *table_get(const char *name, void *ctx) {
    const char *const *kv = (const char *const *)ctx;
    for (; kv[0]; kv += 2)
        if (!strcmp(kv[0], name)) return kv[1];
    return NULL;
}

static mt_status launch(const char *const *kv, mt_launch_info *li) {
    mt_status st;
    tl_quiet = 1;
    tl_msg[0] = 0;
    st = mt_launch_env_from(table_get, (void *)kv, li);
    tl_quiet = 0;
    return st;
}

static void test_launch_env(void) {
    mt_launch_info li;
    char host[64];
    mt_status st;
    {
        static const char *const kv[] = {"RANK", "3", "WORLD_SIZE", "8", "LOCAL_RANK", "1", "LOCAL_WORLD_SIZE", "4",
                                         "MASTER_ADDR", "10.1.2.3", "MASTER_PORT", "29400", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_OK && li.rank == 3 && li.world == 8 && li.local_rank == 1 && li.local_world == 4 &&
                      !strcmp(li.master_addr, "10.1.2.3") && li.master_port == 29400 && li.rendezvous_port == 29400 &&
                      !strcmp(li.launcher, "torchrun"),
                  "torchrun: %s rank %d world %d local %d addr %s port %d", mt_status_str(st), li.rank, li.world,
                  li.local_rank, li.master_addr, li.master_port);
    }
    {   /* torchrun's agent store holds MASTER_PORT: the rendezvous moves next door */
        static const char *const kv[] = {"RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "node1", "MASTER_PORT", "29500",
                                         "TORCHELASTIC_USE_AGENT_STORE", "True", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_OK && li.master_port == 29500 && li.rendezvous_port == 29501, "agent store: port %d/%d",
                  li.master_port, li.rendezvous_port);
    }
    {
        static const char *const kv[] = {"RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "a", "MT_RENDEZVOUS_PORT",
                                         "31000", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_OK && li.master_port == 29500 && li.rendezvous_port == 31000, "override: %d/%d",
                  li.master_port, li.rendezvous_port);
    }
    {
        static const char *const kv[] = {"SLURM_PROCID", "5", "SLURM_NTASKS", "16", "SLURM_LOCALID", "1",
                                         "SLURM_JOB_NODELIST", "gpu[003-006,9],login1", "SLURM_JOB_ID", "123456", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_OK && li.rank == 5 && li.world == 16 && li.local_rank == 1 &&
                      !strcmp(li.master_addr, "gpu003") && li.master_port == 23456 && !strcmp(li.launcher, "slurm"),
                  "slurm: %s rank %d addr %s port %d", mt_status_str(st), li.rank, li.master_addr, li.master_port);
    }
    {
        static const char *const kv[] = {"OMPI_COMM_WORLD_RANK", "2", "OMPI_COMM_WORLD_SIZE", "4",
                                         "OMPI_COMM_WORLD_LOCAL_RANK", "0", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_ERR_ARG && contains(tl_msg, "MASTER_ADDR is not set") &&
                      contains(tl_msg, "OMPI_COMM_WORLD_RANK=2") && contains(tl_msg, "OMPI_COMM_WORLD_SIZE=4"),
                  "openmpi without MASTER_ADDR: %s: %s", mt_status_str(st), tl_msg);
    }
    {
        static const char *const kv[] = {"OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2",
                                         "OMPI_COMM_WORLD_LOCAL_RANK", "1", "MASTER_ADDR", "127.0.0.1", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_OK && li.rank == 1 && li.local_rank == 1 && li.master_port == 29500 &&
                      !strcmp(li.launcher, "openmpi"),
                  "openmpi: %s", mt_status_str(st));
    }
    {
        static const char *const kv[] = {"RANK", "1", "WORLD_SIZE", "2", "MASTER_PORT", "29500", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_ERR_ARG && contains(tl_msg, "MASTER_ADDR is not set") && contains(tl_msg, "RANK=1"),
                  "torchrun without MASTER_ADDR: %s", tl_msg);
    }
    {
        static const char *const kv[] = {"RANK", "4", "WORLD_SIZE", "4", "MASTER_ADDR", "h", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_ERR_ARG && contains(tl_msg, "RANK=4 is out of range for WORLD_SIZE=4"), "%s", tl_msg);
    }
    {
        static const char *const kv[] = {"RANK", "one", "WORLD_SIZE", "4", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_ERR_ARG && contains(tl_msg, "RANK=one is not an integer"), "%s", tl_msg);
    }
    {
        static const char *const kv[] = {"RANK", "0", NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_ERR_ARG && contains(tl_msg, "WORLD_SIZE is not set"), "%s", tl_msg);
    }
    {
        static const char *const kv[] = {"RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "h", "MASTER_PORT", "70000",
                                         NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_ERR_ARG && contains(tl_msg, "MASTER_PORT=70000"), "%s", tl_msg);
    }
    {
        static const char *const kv[] = {NULL};
        st = launch(kv, &li);
        MT_EXPECT(st == MT_OK && li.rank == 0 && li.world == 1 && !strcmp(li.launcher, "none"), "no launcher");
    }
    MT_EXPECT(mt_slurm_first_host("a-[1-2]-ib,b", host, sizeof host) == MT_OK && !strcmp(host, "a-1-ib"), "%s", host);
    MT_EXPECT(mt_slurm_first_host("node7", host, sizeof host) == MT_OK && !strcmp(host, "node7"), "%s", host);
    MT_EXPECT(mt_slurm_first_host("n[07,09]", host, sizeof host) == MT_OK && !strcmp(host, "n07"), "%s", host);
}

/* ------------------------------------------------------------------ TCP rendezvous */

/* A port nothing listens on right now (bound to 0, read back, closed). */
static int free_port(void) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        return 0;
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

typedef struct {
    const char *addr;
    int port, rank, world, delay_ms;
    double timeout_s;
    unsigned char blob[128];
    mt_status st;
    char msg[1024];
    pthread_t tid;
} rdv_arg;

static void *rdv_thread(void *p) {
    rdv_arg *a = (rdv_arg *)p;
    if (a->delay_ms) mt__sleep_ms(a->delay_ms);
    tl_quiet = 1;
    tl_msg[0] = 0;
    a->st = mt_rendezvous_bcast(a->addr, a->port, a->rank, a->world, a->blob, sizeof a->blob, a->timeout_s);
    snprintf(a->msg, sizeof a->msg, "%s", tl_msg);
    return NULL;
}

static void run_rdv(rdv_arg *a, int n) {
    int r;
    for (r = 0; r < n; r++) pthread_create(&a[r].tid, NULL, rdv_thread, &a[r]);
    for (r = 0; r < n; r++) pthread_join(a[r].tid, NULL);
}

static void test_rendezvous(void) {
    rdv_arg a[4];
    int r, i, port = free_port();
    MT_EXPECT(port > 0, "no free port");
    memset(a, 0, sizeof a);
    for (r = 0; r < 4; r++) {
        a[r].addr = r == 2 ? "localhost" : "127.0.0.1";
        a[r].port = port;
        a[r].rank = r;
        a[r].world = 4;
        a[r].timeout_s = 10.0;
        a[r].delay_ms = r == 0 ? 150 : 0; /* the others start first and retry */
        for (i = 0; i < 128; i++) a[r].blob[i] = r == 0 ? (unsigned char)(i * 7 + 3) : 0;
    }
    run_rdv(a, 4);
    for (r = 0; r < 4; r++) {
        int ok = 1;
        for (i = 0; i < 128; i++) ok &= a[r].blob[i] == (unsigned char)(i * 7 + 3);
        MT_EXPECT(a[r].st == MT_OK && ok, "rank %d: %s %s", r, mt_status_str(a[r].st), a[r].msg);
    }
}

static void test_rendezvous_errors(void) {
    rdv_arg a[3];
    int port, fd, one = 1;
    char want[64];
    struct sockaddr_in sa;
    /* port in use: something already listens there */
    port = free_port();
    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    MT_EXPECT(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 4) == 0, "could not occupy port %d", port);
    memset(a, 0, sizeof a);
    a[0].addr = "127.0.0.1"; a[0].port = port; a[0].rank = 0; a[0].world = 2; a[0].timeout_s = 1.0;
    run_rdv(a, 1);
    snprintf(want, sizeof want, "MASTER_PORT=%d", port);
    MT_EXPECT(a[0].st == MT_ERR_COMM && contains(a[0].msg, "port in use") && contains(a[0].msg, want),
              "port in use: %s: %s", mt_status_str(a[0].st), a[0].msg);
    close(fd);

    /* missing MASTER_ADDR */
    memset(a, 0, sizeof a);
    a[0].addr = ""; a[0].port = 29500; a[0].rank = 1; a[0].world = 2; a[0].timeout_s = 1.0;
    run_rdv(a, 1);
    MT_EXPECT(a[0].st == MT_ERR_ARG && contains(a[0].msg, "MASTER_ADDR is not set") && contains(a[0].msg, "MASTER_PORT=29500"),
              "missing MASTER_ADDR: %s: %s", mt_status_str(a[0].st), a[0].msg);

    /* nobody listens: a peer gives up after its timeout and names where it tried */
    port = free_port();
    memset(a, 0, sizeof a);
    a[0].addr = "127.0.0.1"; a[0].port = port; a[0].rank = 1; a[0].world = 2; a[0].timeout_s = 0.3;
    run_rdv(a, 1);
    snprintf(want, sizeof want, "MASTER_ADDR=127.0.0.1 MASTER_PORT=%d", port);
    MT_EXPECT(a[0].st == MT_ERR_TIMEOUT && contains(a[0].msg, want) && contains(a[0].msg, "rank 1 of 2"),
              "unreachable: %s: %s", mt_status_str(a[0].st), a[0].msg);

    /* rank 2 of 3 never comes: rank 0 names it, rank 1 is told */
    port = free_port();
    memset(a, 0, sizeof a);
    for (one = 0; one < 2; one++) {
        a[one].addr = "127.0.0.1"; a[one].port = port; a[one].rank = one; a[one].world = 3; a[one].timeout_s = 0.5;
    }
    run_rdv(a, 2);
    MT_EXPECT(a[0].st == MT_ERR_TIMEOUT && contains(a[0].msg, "missing rank(s) 2") && contains(a[0].msg, "2 of 3"),
              "rank 0: %s: %s", mt_status_str(a[0].st), a[0].msg);
    MT_EXPECT(a[1].st != MT_OK, "rank 1 got a reply from a failed rendezvous");
}

int main(void) {
    MT_RUN(test_collectives_all_sizes);
    MT_RUN(test_larger_counts);
    MT_RUN(test_dtypes_and_arguments);
    MT_RUN(test_split_concurrent);
    MT_RUN(test_timeout_absent_rank);
    MT_RUN(test_timeout_recv);
    MT_RUN(test_mismatched_calls);
    MT_RUN(test_abort);
    MT_RUN(test_launch_env);
    MT_RUN(test_rendezvous);
    MT_RUN(test_rendezvous_errors);
    return mt_test_summary("test_comm");
}
