/* mt/comm.h — one collective API (mt_comm) over two backends: NCCL for GPU tensors and host
 * threads for CPU tensors; launch environments (torchrun, Slurm, OpenMPI); a TCP rendezvous.
 *
 *   // CPU: ranks are threads of this process (CI tests every parallel layer this way)
 *   static mt_status body(mt_comm *world, void *arg) {
 *       float x[3] = {1, 2, 3};
 *       return mt_comm_all_reduce(world, x, x, 3, MT_F32, MT_SUM, NULL);   // in place
 *   }
 *   MT_CHECK(mt_host_run(4, 30.0, body, NULL, NULL));                     // 4 ranks, 30 s timeout
 *
 *   // GPU, one process per GPU (torchrun --no-python, srun, mpirun):
 *   mt_launch_info li; MT_CHECK(mt_launch_env(&li));
 *   mt_comm *world; MT_CHECK(mt_comm_nccl_init_launch(&li, 600.0, &world));
 *   // GPU, one process driving every visible GPU (one thread per GPU):
 *   MT_CHECK(mt_nccl_run(0, 600.0, body, NULL, NULL));
 *
 * Defines
 *   mt_reduce_op (MT_SUM, MT_MAX, MT_AVG, MT_MIN), mt_comm (opaque, one per rank per group)
 *   mt_comm_rank, mt_comm_size, mt_comm_name, mt_comm_world_rank, mt_comm_set_timeout
 *   mt_comm_all_reduce, mt_comm_all_gather, mt_comm_reduce_scatter, mt_comm_all_to_all,
 *   mt_comm_all_to_allv, mt_comm_broadcast, mt_comm_barrier, mt_comm_wait
 *   mt_comm_group_start, mt_comm_send, mt_comm_recv, mt_comm_group_end   (batched p2p)
 *   mt_comm_split, mt_comm_abort, mt_comm_destroy
 *   host backend: mt_host_world, mt_host_world_create/destroy, mt_comm_host_init, mt_host_run
 *   launch: mt_launch_info, mt_launch_env, mt_launch_env_from, mt_rendezvous_bcast
 *   NCCL backend (nvcc only): mt_comm_nccl_init_rank, mt_comm_nccl_init_launch, mt_nccl_run,
 *   mt_nccl_get_unique_id, mt_comm_set_blocking_wait, mt_comm_device, mt_comm_nccl
 *
 * Semantics (both backends)
 *   Counts are elements. Collectives are issued by every rank of the group in the same order.
 *   In place as NCCL allows it: all_reduce and broadcast with send == recv; all_gather with
 *   send == recv + rank*count_per_rank; reduce_scatter with recv == send + rank*count_per_rank.
 *   Other overlaps of send and recv are rejected (MT_ERR_ARG).
 *   all_gather: recv (size*count_per_rank), chunk q from rank q. reduce_scatter: send
 *   (size*count_per_rank), rank r receives the reduction of chunk r. all_to_all: chunk q of
 *   send goes to rank q, chunk q of recv comes from rank q. all_to_allv: counts and
 *   displacements in elements, per peer; send_counts[q] on rank r must equal recv_counts[r] on q.
 *   MT_AVG is the sum divided by the group size.
 *   send/recv between mt_comm_group_start/end are batched and cannot deadlock each other
 *   (pipeline exchanges); outside a group each call stands alone.
 *
 * Host backend
 *   Synchronous: every call returns when this rank's part is done; `stream` is ignored.
 *   Reductions load every dtype to fp32, combine ranks in the order 0, 1, ..., n-1 and round
 *   once to nearest even, so every rank gets the same bits on every run. fp8 dtypes move
 *   (gather, all-to-all, broadcast, p2p) but do not reduce (MT_ERR_UNSUPPORTED).
 *   A collective where a peer does not arrive within the timeout returns MT_ERR_TIMEOUT with a
 *   message naming the operation, the group, this rank and the missing ranks; the group is then
 *   unusable (like an aborted NCCL communicator). send is buffered (never blocks); recv waits.
 *
 * NCCL backend (compiled with nvcc only)
 *   Communicators are non-blocking (ncclConfig_t.blocking = 0): every call polls NCCL until the
 *   operation is enqueued, within the timeout. Completion on the GPU is checked by
 *   mt_comm_wait (and by every call when mt_comm_set_blocking_wait(c, 1)): on timeout the
 *   communicator is aborted (ncclCommAbort) and MT_ERR_TIMEOUT names the operation, group and
 *   rank. NCCL_NVLS_ENABLE is set to 0 unless the environment sets it.
 *
 * Options (define before including megatron.h)
 *   MT_COMM_TIMEOUT_S   default timeout in seconds where a caller passes 0, default 300
 */
#ifndef MT_COMM_H
#define MT_COMM_H

#include "core.h"
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <fcntl.h>
#include <unistd.h>
#ifdef __CUDACC__
#include <nccl.h>
#endif

#ifndef MT_COMM_TIMEOUT_S
#define MT_COMM_TIMEOUT_S 300.0
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MT_SUM = 0, MT_MAX = 1, MT_AVG = 2, MT_MIN = 3 } mt_reduce_op;

/* Color for mt_comm_split: this rank joins no child group (its child is NULL). */
#define MT_COMM_NO_COLOR (-1)

typedef struct mt_comm mt_comm;
typedef struct mt__host_group mt__host_group;

typedef enum { MT__COMM_HOST = 0, MT__COMM_NCCL = 1 } mt__comm_backend;

/* Operation kinds, in messages and in the host backend's consistency check. */
typedef enum {
    MT__C_ALL_REDUCE, MT__C_ALL_GATHER, MT__C_REDUCE_SCATTER, MT__C_ALL_TO_ALL, MT__C_ALL_TO_ALLV,
    MT__C_BROADCAST, MT__C_BARRIER, MT__C_SPLIT, MT__C_SEND, MT__C_RECV, MT__C_GROUP, MT__C_WAIT,
    MT__C_INIT, MT__C_DESTROY
} mt__coll_kind;

MT_API const char *mt__coll_name(int k) {
    switch (k) {
        case MT__C_ALL_REDUCE: return "all_reduce";
        case MT__C_ALL_GATHER: return "all_gather";
        case MT__C_REDUCE_SCATTER: return "reduce_scatter";
        case MT__C_ALL_TO_ALL: return "all_to_all";
        case MT__C_ALL_TO_ALLV: return "all_to_allv";
        case MT__C_BROADCAST: return "broadcast";
        case MT__C_BARRIER: return "barrier";
        case MT__C_SPLIT: return "split";
        case MT__C_SEND: return "send";
        case MT__C_RECV: return "recv";
        case MT__C_GROUP: return "group_end";
        case MT__C_WAIT: return "wait";
        case MT__C_INIT: return "init";
        case MT__C_DESTROY: return "destroy";
        default: return "?";
    }
}

MT_API const char *mt_reduce_op_name(mt_reduce_op op) {
    switch (op) {
        case MT_SUM: return "sum";
        case MT_MAX: return "max";
        case MT_AVG: return "avg";
        case MT_MIN: return "min";
        default: return "?";
    }
}

/* A receive queued inside mt_comm_group_start/end (host backend). */
typedef struct mt__host_pending {
    void *buf;
    size_t count;
    mt_dtype dt;
    int peer;
} mt__host_pending;

struct mt_comm {
    int backend;        /* mt__comm_backend */
    int rank, size;     /* in this group */
    int world_rank;     /* in the communicator this one was split from (transitively) */
    char name[32];      /* "world", "tp", ...: used in messages */
    double timeout_s;
    int group_depth;    /* mt_comm_group_start nesting */
    /* host backend */
    mt__host_group *g;
    uint64_t step;      /* barrier crossings so far (same on every rank of the group) */
    mt__host_pending *pending; /* (cap_pending) receives deferred to group_end */
    int n_pending, cap_pending;
#ifdef __CUDACC__
    /* NCCL backend */
    ncclComm_t nccl;
    int device;
    cudaEvent_t ev;     /* recorded after every operation */
    float *scratch;     /* (4) device memory for barrier */
    int blocking_wait;  /* 1: every call waits for the GPU (watchdog) */
    cudaStream_t p2p_stream; /* stream of the last send/recv: group_end records its event there */
    int aborted;
    const char *last_op;
    char abort_msg[256];
    struct mt__nccl_local *local; /* thread mode: this comm's ranks in this process (see below) */
    unsigned n_splits;            /* splits made from this comm so far (same count on every rank) */
#endif
};

MT_API void mt_comm_destroy(mt_comm *c);

MT_API int mt_comm_rank(const mt_comm *c) { return c ? c->rank : -1; }
MT_API int mt_comm_size(const mt_comm *c) { return c ? c->size : 0; }
MT_API int mt_comm_world_rank(const mt_comm *c) { return c ? c->world_rank : -1; }
MT_API const char *mt_comm_name(const mt_comm *c) { return c ? c->name : "(null)"; }
MT_API void mt_comm_set_timeout(mt_comm *c, double timeout_s) {
    if (c) c->timeout_s = timeout_s > 0 ? timeout_s : MT_COMM_TIMEOUT_S;
}

/* "mt_comm all_reduce on group 'tp' (rank 1 of 2, world rank 3)" */
MT_API void mt__comm_where(const mt_comm *c, const char *op, char *buf, size_t n) {
    snprintf(buf, n, "mt_comm %s on group '%s' (rank %d of %d, world rank %d)", op, c->name, c->rank, c->size,
             c->world_rank);
}

MT_API void mt__copy_name(char *dst, size_t n, const char *src) {
    size_t i = 0;
    if (!src) src = "";
    for (; i + 1 < n && src[i]; i++) dst[i] = src[i];
    dst[i] = 0;
}

/* ------------------------------------------------------------------ time */

MT_API double mt__now_s(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

MT_API struct timespec mt__abs_time(double t) {
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    if (ts.tv_nsec < 0) ts.tv_nsec = 0;
    return ts;
}

MT_API void mt__sleep_ms(int ms) { poll(NULL, 0, ms); }

/* ------------------------------------------------------------------ host reductions */

MT_API int mt__dtype_reduces(mt_dtype dt) { return dt == MT_F32 || dt == MT_BF16 || dt == MT_F16; }

MT_API void mt__load_f32(mt_dtype dt, const void *p, size_t off, size_t n, float *out) {
    size_t i;
    if (dt == MT_F32) {
        memcpy(out, (const float *)p + off, n * sizeof(float));
    } else if (dt == MT_BF16) {
        const uint16_t *s = (const uint16_t *)p + off;
        for (i = 0; i < n; i++) out[i] = mt_bf16_to_f32(s[i]);
    } else {
        const uint16_t *s = (const uint16_t *)p + off;
        for (i = 0; i < n; i++) out[i] = mt_f16_to_f32(s[i]);
    }
}

MT_API void mt__store_f32(mt_dtype dt, void *p, size_t off, size_t n, const float *in) {
    size_t i;
    if (dt == MT_F32) {
        memcpy((float *)p + off, in, n * sizeof(float));
    } else if (dt == MT_BF16) {
        uint16_t *d = (uint16_t *)p + off;
        for (i = 0; i < n; i++) d[i] = mt_f32_to_bf16(in[i]);
    } else {
        uint16_t *d = (uint16_t *)p + off;
        for (i = 0; i < n; i++) d[i] = mt_f32_to_f16(in[i]);
    }
}

/* dst[dst_off + i] = op over r = 0..nsrc-1 of srcs[r][src_off + i], in fp32, rank order fixed.
 * Safe when dst aliases srcs[k] at the same element (each block is loaded before it is stored). */
MT_API void mt__host_reduce(mt_dtype dt, mt_reduce_op op, const void *const *srcs, int nsrc, size_t src_off,
                            void *dst, size_t dst_off, size_t count) {
    enum { BLK = 256 };
    float acc[BLK], v[BLK];
    size_t b, i, m;
    int r;
    for (b = 0; b < count; b += BLK) {
        m = count - b < (size_t)BLK ? count - b : (size_t)BLK;
        mt__load_f32(dt, srcs[0], src_off + b, m, acc);
        for (r = 1; r < nsrc; r++) {
            mt__load_f32(dt, srcs[r], src_off + b, m, v);
            switch (op) {
                case MT_SUM:
                case MT_AVG:
                    for (i = 0; i < m; i++) acc[i] += v[i];
                    break;
                case MT_MAX: /* NaN wins, so an overflow check by MAX sees it */
                    for (i = 0; i < m; i++) acc[i] = (v[i] > acc[i] || v[i] != v[i]) ? v[i] : acc[i];
                    break;
                case MT_MIN:
                    for (i = 0; i < m; i++) acc[i] = (v[i] < acc[i] || v[i] != v[i]) ? v[i] : acc[i];
                    break;
            }
        }
        if (op == MT_AVG)
            for (i = 0; i < m; i++) acc[i] /= (float)nsrc;
        mt__store_f32(dt, dst, dst_off + b, m, acc);
    }
}

/* ------------------------------------------------------------------ host backend: groups */

typedef struct mt__host_msg {
    struct mt__host_msg *next;
    size_t count;
    mt_dtype dt;
    /* data follows */
} mt__host_msg;

/* What one rank posted for the collective in progress. Peers read it between the arrival
 * barrier and the leave barrier; the owner does not change it in between. */
typedef struct mt__host_slot {
    uint64_t step;             /* barrier crossings by this rank */
    int kind, op, root, color, key, world_rank;
    mt_dtype dt;
    size_t count;
    const void *send;
    void *recv;
    const size_t *sc, *sd, *rc, *rd; /* all_to_allv: (n) each */
    mt__host_group *child;     /* split: the child group created for this rank's color */
} mt__host_slot;

struct mt__host_group {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, refs;
    double timeout_s;
    char name[32];
    int broken;                /* a collective timed out or a rank aborted: the group is unusable */
    mt_status broken_status;   /* MT_ERR_TIMEOUT or MT_ERR_COMM (aborted) */
    char broken_msg[256];
    int *world_ranks;          /* (n) */
    mt__host_slot *slots;      /* (n) */
    mt__host_msg **mq_head;    /* (n*n) messages from src to dst at src*n + dst, FIFO */
    mt__host_msg **mq_tail;    /* (n*n) */
};

MT_API void mt__host_group_free(mt__host_group *g) {
    int i;
    if (!g) return;
    if (g->mq_head) {
        for (i = 0; i < g->n * g->n; i++) {
            mt__host_msg *m = g->mq_head[i];
            while (m) {
                mt__host_msg *next = m->next;
                mt_free(m);
                m = next;
            }
        }
    }
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    mt_free(g->world_ranks);
    mt_free(g->slots);
    mt_free((void *)g->mq_head);
    mt_free((void *)g->mq_tail);
    mt_free(g);
}

MT_API mt_status mt__host_group_new(int n, double timeout_s, const char *name, mt__host_group **out) {
    mt__host_group *g = NULL;
    int i;
    *out = NULL;
    MT_TRY(mt_calloc(sizeof(mt__host_group), (void **)&g));
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->n = n;
    g->timeout_s = timeout_s > 0 ? timeout_s : MT_COMM_TIMEOUT_S;
    mt__copy_name(g->name, sizeof g->name, name);
    if (mt_calloc((size_t)n * sizeof(int), (void **)&g->world_ranks) != MT_OK ||
        mt_calloc((size_t)n * sizeof(mt__host_slot), (void **)&g->slots) != MT_OK ||
        mt_calloc((size_t)n * (size_t)n * sizeof(mt__host_msg *), (void **)&g->mq_head) != MT_OK ||
        mt_calloc((size_t)n * (size_t)n * sizeof(mt__host_msg *), (void **)&g->mq_tail) != MT_OK) {
        mt__host_group_free(g);
        return MT_ERR_OOM;
    }
    for (i = 0; i < n; i++) g->world_ranks[i] = i;
    *out = g;
    return MT_OK;
}

MT_API void mt__host_group_unref(mt__host_group *g) {
    int last;
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) mt__host_group_free(g);
}

MT_API mt_status mt__comm_alloc(mt_comm **out) {
    mt_comm *c = NULL;
    *out = NULL;
    MT_TRY(mt_calloc(sizeof(mt_comm), (void **)&c));
    c->timeout_s = MT_COMM_TIMEOUT_S;
    *out = c;
    return MT_OK;
}

/* The host world: n ranks that will each call mt_comm_host_init once. */
typedef struct mt_host_world {
    mt__host_group *g;
    int *claimed; /* (n) */
} mt_host_world;

MT_API mt_status mt_host_world_create(int nranks, double timeout_s, mt_host_world **out) {
    mt_host_world *w = NULL;
    *out = NULL;
    if (nranks < 1) return mt_errorf(MT_ERR_ARG, "mt_host_world_create: nranks = %d, expected >= 1", nranks);
    MT_TRY(mt_calloc(sizeof(mt_host_world), (void **)&w));
    if (mt_calloc((size_t)nranks * sizeof(int), (void **)&w->claimed) != MT_OK ||
        mt__host_group_new(nranks, timeout_s, "world", &w->g) != MT_OK) {
        mt_free(w->claimed);
        mt_free(w);
        return MT_ERR_OOM;
    }
    w->g->refs = 1; /* the world handle */
    *out = w;
    return MT_OK;
}

/* Drops the world's reference; communicators made from it stay valid until destroyed. */
MT_API void mt_host_world_destroy(mt_host_world *w) {
    if (!w) return;
    mt__host_group_unref(w->g);
    mt_free(w->claimed);
    mt_free(w);
}

/* Called once by the thread of each rank. */
MT_API mt_status mt_comm_host_init(mt_host_world *w, int rank, mt_comm **out) {
    mt_comm *c = NULL;
    *out = NULL;
    if (!w) return mt_errorf(MT_ERR_ARG, "mt_comm_host_init: world is NULL");
    if (rank < 0 || rank >= w->g->n)
        return mt_errorf(MT_ERR_ARG, "mt_comm_host_init: rank %d out of range for a world of %d", rank, w->g->n);
    MT_TRY(mt__comm_alloc(&c));
    pthread_mutex_lock(&w->g->mu);
    if (w->claimed[rank]) {
        pthread_mutex_unlock(&w->g->mu);
        mt_free(c);
        return mt_errorf(MT_ERR_ARG, "mt_comm_host_init: rank %d of the host world was initialised twice", rank);
    }
    w->claimed[rank] = 1;
    w->g->refs++;
    pthread_mutex_unlock(&w->g->mu);
    c->backend = MT__COMM_HOST;
    c->rank = rank;
    c->size = w->g->n;
    c->world_rank = rank;
    c->g = w->g;
    c->timeout_s = w->g->timeout_s;
    mt__copy_name(c->name, sizeof c->name, "world");
    *out = c;
    return MT_OK;
}

/* ------------------------------------------------------------------ host backend: barriers */

/* Arrival: post this rank's slot (filled by the caller) and wait for every rank, at most the
 * timeout. On timeout the group is marked broken and every waiting rank returns the error. */
MT_API mt_status mt__host_arrive(mt_comm *c, const mt__host_slot *mine) {
    mt__host_group *g = c->g;
    char where[160], missing[160];
    double t0 = mt__now_s(), deadline = t0 + c->timeout_s;
    uint64_t target;
    int q, n_arrived = 0, timed_out = 0;
    size_t len = 0;
    mt__comm_where(c, mt__coll_name(mine->kind), where, sizeof where);
    pthread_mutex_lock(&g->mu);
    if (g->broken) {
        pthread_mutex_unlock(&g->mu);
        return mt_errorf(MT_ERR_COMM, "%s: the group is unusable after an earlier failure (%s)", where, g->broken_msg);
    }
    target = c->step + 1;
    {
        mt__host_slot *s = &g->slots[c->rank];
        *s = *mine;
        s->child = NULL;
        s->world_rank = c->world_rank;
        s->step = target;
    }
    c->step = target;
    pthread_cond_broadcast(&g->cv);
    for (;;) {
        n_arrived = 0;
        for (q = 0; q < g->n; q++) n_arrived += g->slots[q].step >= target;
        if (n_arrived == g->n || g->broken) break;
        if (mt__now_s() >= deadline) { timed_out = 1; break; }
        {
            struct timespec ts = mt__abs_time(deadline);
            pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        }
    }
    if (n_arrived == g->n && !g->broken) {
        pthread_mutex_unlock(&g->mu);
        return MT_OK;
    }
    /* Not everyone came: name the ranks that did not (group rank and world rank). */
    missing[0] = 0;
    for (q = 0; q < g->n && len + 24 < sizeof missing; q++) {
        if (g->slots[q].step < target) {
            int k = snprintf(missing + len, sizeof missing - len, "%s%d (world %d)", len ? ", " : "", q,
                             g->world_ranks[q]);
            if (k > 0) len += (size_t)k;
        }
    }
    if (timed_out && !g->broken) {
        g->broken = 1;
        g->broken_status = MT_ERR_TIMEOUT;
        snprintf(g->broken_msg, sizeof g->broken_msg, "%s timed out waiting for rank(s) %s",
                 mt__coll_name(mine->kind), missing);
        pthread_cond_broadcast(&g->cv);
    }
    if (g->broken_status == MT_ERR_COMM) { /* another rank aborted the group while this one waited */
        char why[256];
        memcpy(why, g->broken_msg, sizeof why);
        pthread_mutex_unlock(&g->mu);
        return mt_errorf(MT_ERR_COMM, "%s: %s while waiting for rank(s) %s", where, why, missing);
    }
    pthread_mutex_unlock(&g->mu);
    return mt_errorf(MT_ERR_TIMEOUT, "%s: timed out after %.2f s: rank(s) %s never arrived (%d of %d ranks did)", where,
                     mt__now_s() - t0, missing, n_arrived, g->n);
}

/* A barrier after arrival: every rank is present, so it only waits for the others' copies. */
MT_API void mt__host_step(mt_comm *c) {
    mt__host_group *g = c->g;
    uint64_t target = c->step + 1;
    int q, all;
    pthread_mutex_lock(&g->mu);
    g->slots[c->rank].step = target;
    c->step = target;
    pthread_cond_broadcast(&g->cv);
    for (;;) {
        all = 1;
        for (q = 0; q < g->n; q++) all &= g->slots[q].step >= target;
        if (all) break;
        pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
}

/* After arrival: every rank checks that all called the same collective with the same shape. */
MT_API mt_status mt__host_check_match(mt_comm *c) {
    const mt__host_slot *s = c->g->slots;
    char where[160];
    int q;
    for (q = 1; q < c->size; q++) {
        int bad = s[q].kind != s[0].kind || s[q].dt != s[0].dt || s[q].count != s[0].count || s[q].op != s[0].op ||
                  s[q].root != s[0].root;
        if (bad) {
            mt__comm_where(c, mt__coll_name(s[c->rank].kind), where, sizeof where);
            return mt_errorf(MT_ERR_COMM,
                             "%s: ranks disagree: rank 0 called %s(count %zu, %s, op %d, root %d), rank %d called "
                             "%s(count %zu, %s, op %d, root %d)",
                             where, mt__coll_name(s[0].kind), s[0].count, mt_dtype_name(s[0].dt), s[0].op, s[0].root,
                             q, mt__coll_name(s[q].kind), s[q].count, mt_dtype_name(s[q].dt), s[q].op, s[q].root);
        }
    }
    return MT_OK;
}

MT_API int mt__overlap(const void *a, size_t na, const void *b, size_t nb) {
    const char *pa = (const char *)a, *pb = (const char *)b;
    if (!na || !nb) return 0;
    return pa < pb + nb && pb < pa + na;
}

MT_API mt_status mt__check_buf(mt_comm *c, int kind, const void *p, size_t count, const char *what) {
    char where[160];
    if (!c) return mt_errorf(MT_ERR_ARG, "mt_comm %s: communicator is NULL", mt__coll_name(kind));
    if (count && !p) {
        mt__comm_where(c, mt__coll_name(kind), where, sizeof where);
        return mt_errorf(MT_ERR_ARG, "%s: %s is NULL with count %zu", where, what, count);
    }
    return MT_OK;
}

MT_API mt_status mt__check_dtype(mt_comm *c, int kind, mt_dtype dt, int reduces) {
    char where[160];
    if ((int)dt < 0 || (int)dt >= MT_DTYPE_COUNT) {
        mt__comm_where(c, mt__coll_name(kind), where, sizeof where);
        return mt_errorf(MT_ERR_ARG, "%s: unknown dtype %d", where, (int)dt);
    }
    if (reduces && c->backend == MT__COMM_HOST && !mt__dtype_reduces(dt)) {
        mt__comm_where(c, mt__coll_name(kind), where, sizeof where);
        return mt_errorf(MT_ERR_UNSUPPORTED, "%s: the host backend reduces f32, bf16 and f16, not %s", where,
                         mt_dtype_name(dt));
    }
    return MT_OK;
}

MT_API mt_status mt__check_op(mt_comm *c, int kind, mt_reduce_op op) {
    char where[160];
    if ((int)op < (int)MT_SUM || (int)op > (int)MT_MIN) {
        mt__comm_where(c, mt__coll_name(kind), where, sizeof where);
        return mt_errorf(MT_ERR_ARG, "%s: unknown reduce op %d", where, (int)op);
    }
    return MT_OK;
}

MT_API mt_status mt__overlap_error(mt_comm *c, int kind) {
    char where[160];
    mt__comm_where(c, mt__coll_name(kind), where, sizeof where);
    return mt_errorf(MT_ERR_ARG, "%s: send and recv overlap in a way the operation does not allow in place", where);
}

MT_API void mt__host_slot_init(mt__host_slot *s, int kind) {
    memset(s, 0, sizeof *s);
    s->kind = kind;
}

/* ------------------------------------------------------------------ host backend: collectives */

MT_API mt_status mt__host_all_reduce(mt_comm *c, const void *send, void *recv, size_t count, mt_dtype dt,
                                     mt_reduce_op op) {
    mt__host_group *g = c->g;
    mt__host_slot me;
    const void **srcs = NULL;
    size_t ds = mt_dtype_size(dt), lo, hi;
    int n = c->size, r = c->rank, q;
    mt_status st;
    if (send != recv && mt__overlap(send, count * ds, recv, count * ds)) return mt__overlap_error(c, MT__C_ALL_REDUCE);
    MT_TRY(mt_calloc((size_t)n * sizeof(void *), (void **)&srcs));
    mt__host_slot_init(&me, MT__C_ALL_REDUCE);
    me.dt = dt; me.count = count; me.op = (int)op; me.send = send; me.recv = recv;
    st = mt__host_arrive(c, &me);
    if (st != MT_OK) { mt_free((void *)srcs); return st; }
    st = mt__host_check_match(c);
    if (st == MT_OK) {
        /* Each rank reduces its 1/n of the elements into its recv, then copies the others'. */
        for (q = 0; q < n; q++) srcs[q] = g->slots[q].send;
        lo = count * (size_t)r / (size_t)n;
        hi = count * (size_t)(r + 1) / (size_t)n;
        mt__host_reduce(dt, op, srcs, n, lo, recv, lo, hi - lo);
        mt__host_step(c);
        for (q = 0; q < n; q++) {
            if (q == r) continue;
            lo = count * (size_t)q / (size_t)n;
            hi = count * (size_t)(q + 1) / (size_t)n;
            if (hi > lo) memcpy((char *)recv + lo * ds, (const char *)g->slots[q].recv + lo * ds, (hi - lo) * ds);
        }
    }
    /* On a mismatch every rank saw the same thing and skips to this last barrier, which is the
     * only one every collective has after arrival. */
    mt__host_step(c);
    mt_free((void *)srcs);
    return st;
}

MT_API mt_status mt__host_reduce_scatter(mt_comm *c, const void *send, void *recv, size_t cpr, mt_dtype dt,
                                         mt_reduce_op op) {
    mt__host_group *g = c->g;
    mt__host_slot me;
    const void **srcs = NULL;
    size_t ds = mt_dtype_size(dt);
    int n = c->size, r = c->rank, q;
    mt_status st;
    int in_place = (const char *)recv == (const char *)send + (size_t)r * cpr * ds;
    if (!in_place && mt__overlap(send, (size_t)n * cpr * ds, recv, cpr * ds))
        return mt__overlap_error(c, MT__C_REDUCE_SCATTER);
    MT_TRY(mt_calloc((size_t)n * sizeof(void *), (void **)&srcs));
    mt__host_slot_init(&me, MT__C_REDUCE_SCATTER);
    me.dt = dt; me.count = cpr; me.op = (int)op; me.send = send; me.recv = recv;
    st = mt__host_arrive(c, &me);
    if (st != MT_OK) { mt_free((void *)srcs); return st; }
    st = mt__host_check_match(c);
    if (st == MT_OK) {
        for (q = 0; q < n; q++) srcs[q] = g->slots[q].send;
        mt__host_reduce(dt, op, srcs, n, (size_t)r * cpr, recv, 0, cpr);
    }
    mt__host_step(c);
    mt_free((void *)srcs);
    return st;
}

MT_API mt_status mt__host_all_gather(mt_comm *c, const void *send, void *recv, size_t cpr, mt_dtype dt) {
    mt__host_group *g = c->g;
    mt__host_slot me;
    size_t ds = mt_dtype_size(dt), nb = cpr * ds;
    int n = c->size, r = c->rank, q;
    mt_status st;
    int in_place = (const char *)send == (const char *)recv + (size_t)r * nb;
    if (!in_place && mt__overlap(send, nb, recv, (size_t)n * nb)) return mt__overlap_error(c, MT__C_ALL_GATHER);
    mt__host_slot_init(&me, MT__C_ALL_GATHER);
    me.dt = dt; me.count = cpr; me.send = send; me.recv = recv;
    MT_TRY(mt__host_arrive(c, &me));
    st = mt__host_check_match(c);
    if (st == MT_OK && nb) {
        for (q = 0; q < n; q++) {
            if (q == r && in_place) continue;
            memcpy((char *)recv + (size_t)q * nb, g->slots[q].send, nb);
        }
    }
    mt__host_step(c);
    return st;
}

MT_API mt_status mt__host_all_to_all(mt_comm *c, const void *send, void *recv, size_t cpr, mt_dtype dt) {
    mt__host_group *g = c->g;
    mt__host_slot me;
    size_t ds = mt_dtype_size(dt), nb = cpr * ds;
    int n = c->size, r = c->rank, q;
    mt_status st;
    if (mt__overlap(send, (size_t)n * nb, recv, (size_t)n * nb)) return mt__overlap_error(c, MT__C_ALL_TO_ALL);
    mt__host_slot_init(&me, MT__C_ALL_TO_ALL);
    me.dt = dt; me.count = cpr; me.send = send; me.recv = recv;
    MT_TRY(mt__host_arrive(c, &me));
    st = mt__host_check_match(c);
    if (st == MT_OK && nb) {
        for (q = 0; q < n; q++)
            memcpy((char *)recv + (size_t)q * nb, (const char *)g->slots[q].send + (size_t)r * nb, nb);
    }
    mt__host_step(c);
    return st;
}

MT_API mt_status mt__host_all_to_allv(mt_comm *c, const void *send, const size_t *sc, const size_t *sd, void *recv,
                                      const size_t *rc, const size_t *rd, mt_dtype dt) {
    mt__host_group *g = c->g;
    mt__host_slot me;
    size_t ds = mt_dtype_size(dt), send_end = 0, recv_end = 0;
    int n = c->size, r = c->rank, p, q;
    mt_status st;
    char where[160];
    for (q = 0; q < n; q++) {
        if (sc[q] && sd[q] + sc[q] > send_end) send_end = sd[q] + sc[q];
        if (rc[q] && rd[q] + rc[q] > recv_end) recv_end = rd[q] + rc[q];
    }
    if (send_end && !send) return mt__check_buf(c, MT__C_ALL_TO_ALLV, send, send_end, "send");
    if (recv_end && !recv) return mt__check_buf(c, MT__C_ALL_TO_ALLV, recv, recv_end, "recv");
    if (mt__overlap(send, send_end * ds, recv, recv_end * ds)) return mt__overlap_error(c, MT__C_ALL_TO_ALLV);
    mt__host_slot_init(&me, MT__C_ALL_TO_ALLV);
    me.dt = dt; me.send = send; me.recv = recv; me.sc = sc; me.sd = sd; me.rc = rc; me.rd = rd;
    MT_TRY(mt__host_arrive(c, &me));
    st = mt__host_check_match(c);
    /* Every rank checks every pair, so all return the same status. */
    for (p = 0; p < n && st == MT_OK; p++) {
        for (q = 0; q < n; q++) {
            if (g->slots[p].sc[q] != g->slots[q].rc[p]) {
                mt__comm_where(c, "all_to_allv", where, sizeof where);
                st = mt_errorf(MT_ERR_SHAPE, "%s: rank %d sends %zu elements to rank %d, which expects %zu", where, p,
                               g->slots[p].sc[q], q, g->slots[q].rc[p]);
                break;
            }
        }
    }
    if (st == MT_OK) {
        for (q = 0; q < n; q++) {
            if (!rc[q]) continue;
            memcpy((char *)recv + rd[q] * ds, (const char *)g->slots[q].send + g->slots[q].sd[r] * ds, rc[q] * ds);
        }
    }
    mt__host_step(c);
    return st;
}

MT_API mt_status mt__host_broadcast(mt_comm *c, void *buf, size_t count, mt_dtype dt, int root) {
    mt__host_slot me;
    mt_status st;
    mt__host_slot_init(&me, MT__C_BROADCAST);
    me.dt = dt; me.count = count; me.root = root; me.send = buf; me.recv = buf;
    MT_TRY(mt__host_arrive(c, &me));
    st = mt__host_check_match(c);
    if (st == MT_OK && c->rank != root && count)
        memcpy(buf, c->g->slots[root].send, count * mt_dtype_size(dt));
    mt__host_step(c);
    return st;
}

MT_API mt_status mt__host_barrier(mt_comm *c) {
    mt__host_slot me;
    mt_status st;
    mt__host_slot_init(&me, MT__C_BARRIER);
    MT_TRY(mt__host_arrive(c, &me));
    st = mt__host_check_match(c);
    mt__host_step(c);
    return st;
}

MT_API mt_status mt__host_split(mt_comm *c, int color, int key, const char *name, mt_comm **child) {
    mt__host_group *g = c->g, *cg = NULL;
    mt__host_slot me;
    mt_comm *out = NULL;
    mt_status st;
    int n = c->size, q, m = 0, my_idx = 0, leader = -1;
    int *members = NULL;
    MT_TRY(mt__comm_alloc(&out));
    if (mt_calloc((size_t)n * sizeof(int), (void **)&members) != MT_OK) { mt_free(out); return MT_ERR_OOM; }
    mt__host_slot_init(&me, MT__C_SPLIT);
    me.color = color < 0 ? MT_COMM_NO_COLOR : color;
    me.key = key;
    st = mt__host_arrive(c, &me);
    if (st != MT_OK) { mt_free(members); mt_free(out); return st; }
    st = mt__host_check_match(c);
    if (st == MT_OK && color >= 0) {
        /* Members of my color ordered by (key, parent rank): insertion sort, n is small. */
        for (q = 0; q < n; q++) {
            int i;
            if (g->slots[q].color != color) continue;
            i = m++;
            while (i > 0 && (g->slots[members[i - 1]].key > g->slots[q].key)) {
                members[i] = members[i - 1];
                i--;
            }
            members[i] = q;
        }
        for (q = 0; q < m; q++)
            if (members[q] == c->rank) my_idx = q;
        leader = members[0];
        pthread_mutex_lock(&g->mu);
        if (!g->slots[leader].child) {
            if (mt__host_group_new(m, g->timeout_s, name ? name : "split", &g->slots[leader].child) != MT_OK)
                st = MT_ERR_OOM;
        }
        cg = g->slots[leader].child;
        if (cg) {
            cg->refs++;
            cg->world_ranks[my_idx] = c->world_rank;
        }
        pthread_mutex_unlock(&g->mu);
    }
    mt__host_step(c);
    mt_free(members);
    if (st != MT_OK || color < 0) {
        mt_free(out);
        *child = NULL;
        return st;
    }
    out->backend = MT__COMM_HOST;
    out->rank = my_idx;
    out->size = m;
    out->world_rank = c->world_rank;
    out->g = cg;
    out->timeout_s = c->timeout_s;
    mt__copy_name(out->name, sizeof out->name, name ? name : "split");
    *child = out;
    return MT_OK;
}

/* ------------------------------------------------------------------ host backend: p2p */

MT_API mt_status mt__host_send(mt_comm *c, const void *buf, size_t count, mt_dtype dt, int peer) {
    mt__host_group *g = c->g;
    mt__host_msg *m = NULL;
    size_t nb = count * mt_dtype_size(dt), slot = (size_t)c->rank * (size_t)g->n + (size_t)peer;
    MT_TRY(mt_calloc(sizeof(mt__host_msg) + nb, (void **)&m));
    m->count = count;
    m->dt = dt;
    if (nb) memcpy(m + 1, buf, nb);
    pthread_mutex_lock(&g->mu);
    if (g->mq_tail[slot]) g->mq_tail[slot]->next = m;
    else g->mq_head[slot] = m;
    g->mq_tail[slot] = m;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return MT_OK;
}

MT_API mt_status mt__host_recv_now(mt_comm *c, void *buf, size_t count, mt_dtype dt, int peer) {
    mt__host_group *g = c->g;
    mt__host_msg *m;
    char where[160];
    double t0 = mt__now_s(), deadline = t0 + c->timeout_s;
    size_t slot = (size_t)peer * (size_t)g->n + (size_t)c->rank;
    pthread_mutex_lock(&g->mu);
    while (!g->mq_head[slot]) {
        if (mt__now_s() >= deadline) {
            pthread_mutex_unlock(&g->mu);
            mt__comm_where(c, "recv", where, sizeof where);
            return mt_errorf(MT_ERR_TIMEOUT,
                             "%s: timed out after %.2f s waiting for rank %d (world %d) to send %zu x %s", where,
                             mt__now_s() - t0, peer, g->world_ranks[peer], count, mt_dtype_name(dt));
        }
        {
            struct timespec ts = mt__abs_time(deadline);
            pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        }
    }
    m = g->mq_head[slot];
    g->mq_head[slot] = m->next;
    if (!m->next) g->mq_tail[slot] = NULL;
    pthread_mutex_unlock(&g->mu);
    if (m->count != count || m->dt != dt) {
        mt__comm_where(c, "recv", where, sizeof where);
        mt_errorf(MT_ERR_SHAPE, "%s: expected %zu x %s from rank %d, which sent %zu x %s", where, count,
                  mt_dtype_name(dt), peer, m->count, mt_dtype_name(m->dt));
        mt_free(m);
        return MT_ERR_SHAPE;
    }
    if (count) memcpy(buf, m + 1, count * mt_dtype_size(dt));
    mt_free(m);
    return MT_OK;
}

MT_API mt_status mt__host_recv(mt_comm *c, void *buf, size_t count, mt_dtype dt, int peer) {
    if (c->group_depth == 0) return mt__host_recv_now(c, buf, count, dt, peer);
    if (c->n_pending == c->cap_pending) {
        int cap = c->cap_pending ? 2 * c->cap_pending : 8;
        mt__host_pending *p = NULL;
        MT_TRY(mt_calloc((size_t)cap * sizeof(mt__host_pending), (void **)&p));
        if (c->n_pending) memcpy(p, c->pending, (size_t)c->n_pending * sizeof(mt__host_pending));
        mt_free(c->pending);
        c->pending = p;
        c->cap_pending = cap;
    }
    c->pending[c->n_pending].buf = buf;
    c->pending[c->n_pending].count = count;
    c->pending[c->n_pending].dt = dt;
    c->pending[c->n_pending].peer = peer;
    c->n_pending++;
    return MT_OK;
}

MT_API mt_status mt__host_group_end(mt_comm *c) {
    mt_status st = MT_OK;
    int i;
    for (i = 0; i < c->n_pending; i++) {
        mt__host_pending *p = &c->pending[i];
        if (st == MT_OK) st = mt__host_recv_now(c, p->buf, p->count, p->dt, p->peer);
    }
    c->n_pending = 0;
    return st;
}

/* ------------------------------------------------------------------ host backend: spawning ranks */

typedef mt_status (*mt_rank_fn)(mt_comm *world, void *arg);

typedef struct mt__host_thread {
    mt_host_world *w;
    int rank;
    mt_rank_fn fn;
    void *arg;
    mt_status status;
    pthread_t tid;
} mt__host_thread;

MT_API void *mt__host_thread_main(void *p) {
    mt__host_thread *t = (mt__host_thread *)p;
    mt_comm *c = NULL;
    t->status = mt_comm_host_init(t->w, t->rank, &c);
    if (t->status == MT_OK) {
        t->status = t->fn(c, t->arg);
        mt_comm_destroy(c);
    }
    return NULL;
}

/* Runs fn(world comm of rank r, arg) on nranks threads and waits for all. Returns the status of
 * the lowest failing rank (MT_OK if none); statuses (nranks), if not NULL, gets every rank's. */
MT_API mt_status mt_host_run(int nranks, double timeout_s, mt_rank_fn fn, void *arg, mt_status *statuses) {
    mt_host_world *w = NULL;
    mt__host_thread *t = NULL;
    mt_status st = MT_OK;
    int r, started = 0;
    if (!fn) return mt_errorf(MT_ERR_ARG, "mt_host_run: fn is NULL");
    MT_TRY(mt_host_world_create(nranks, timeout_s, &w));
    if (mt_calloc((size_t)nranks * sizeof(mt__host_thread), (void **)&t) != MT_OK) {
        mt_host_world_destroy(w);
        return MT_ERR_OOM;
    }
    for (r = 0; r < nranks; r++) {
        t[r].w = w;
        t[r].rank = r;
        t[r].fn = fn;
        t[r].arg = arg;
        if (pthread_create(&t[r].tid, NULL, mt__host_thread_main, &t[r]) != 0) {
            st = mt_errorf(MT_ERR_INTERNAL, "mt_host_run: could not start the thread of rank %d of %d", r, nranks);
            break;
        }
        started++;
    }
    for (r = 0; r < started; r++) pthread_join(t[r].tid, NULL);
    for (r = 0; r < nranks; r++) {
        mt_status s = r < started ? t[r].status : MT_ERR_INTERNAL;
        if (statuses) statuses[r] = s;
        if (st == MT_OK && s != MT_OK) st = s;
    }
    mt_free(t);
    mt_host_world_destroy(w);
    return st;
}

/* ------------------------------------------------------------------ launch environment */

/* Who launched this process and where rank 0 listens. local_rank and local_world are -1 when
 * the launcher did not say. */
typedef struct mt_launch_info {
    int rank, world, local_rank, local_world;
    char master_addr[256];
    int master_port;          /* MASTER_PORT as given (or derived) */
    int rendezvous_port;      /* where mt_rendezvous_bcast listens: see mt_launch_env */
    char launcher[16];        /* "torchrun", "openmpi", "slurm" or "none" */
} mt_launch_info;

typedef const char *(*mt_getenv_fn)(const char *name, void *ctx);

MT_API const char *mt__getenv_default(const char *name, void *ctx) {
    (void)ctx;
    return getenv(name);
}

/* A whole-string integer in [lo, hi]; otherwise an error naming the variable and its value. */
MT_API mt_status mt__env_int(const char *var, const char *val, long lo, long hi, int *out) {
    char *end = NULL;
    long v;
    if (!val || !*val) return mt_errorf(MT_ERR_ARG, "launch: %s is not set", var);
    errno = 0;
    v = strtol(val, &end, 10);
    while (end && (*end == ' ' || *end == '\n')) end++;
    if (errno || !end || *end || v < lo || v > hi)
        return mt_errorf(MT_ERR_ARG, "launch: %s=%s is not an integer in [%ld, %ld]", var, val, lo, hi);
    *out = (int)v;
    return MT_OK;
}

/* First host of a Slurm node list: "gpu[003-006,9],login1" -> "gpu003"; "a-[1-2]-ib" -> "a-1-ib". */
MT_API mt_status mt_slurm_first_host(const char *list, char *out, size_t n) {
    size_t o = 0;
    const char *p = list;
    if (!list || !*list) return mt_errorf(MT_ERR_ARG, "launch: empty Slurm node list");
    while (*p && *p != ',') {
        if (*p == '[') {
            p++;
            while (*p && *p != '-' && *p != ',' && *p != ']') {
                if (o + 1 < n) out[o++] = *p;
                p++;
            }
            while (*p && *p != ']') p++;
            if (*p == ']') p++;
            continue;
        }
        if (o + 1 < n) out[o++] = *p;
        p++;
    }
    out[o] = 0;
    if (!o) return mt_errorf(MT_ERR_ARG, "launch: cannot read a host name from the Slurm node list '%s'", list);
    return MT_OK;
}

/* Reads the launcher's variables through `get` (tests pass their own table):
 *   torchrun / torchelastic: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
 *   OpenMPI: OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE, plus MASTER_ADDR, MASTER_PORT
 *   Slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR defaults to the first host of
 *          SLURM_JOB_NODELIST, MASTER_PORT to 20000 + SLURM_JOB_ID % 10000
 *   none of these: one process, rank 0 of 1.
 * MASTER_PORT defaults to 29500 (torchrun's default). Under torchrun the agent's store already
 * listens on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True), so the rendezvous uses
 * MASTER_PORT + 1; MT_RENDEZVOUS_PORT overrides both. */
MT_API mt_status mt_launch_env_from(mt_getenv_fn get, void *ctx, mt_launch_info *out) {
    const char *rank_v, *world_v, *local_v, *lworld_v, *addr, *port, *s;
    const char *rank_n, *world_n, *local_n, *lworld_n;
    char host[256];
    memset(out, 0, sizeof *out);
    out->local_rank = out->local_world = -1;
    if (!get) get = mt__getenv_default;
    if (get("RANK", ctx) || get("WORLD_SIZE", ctx)) {
        rank_n = "RANK"; world_n = "WORLD_SIZE"; local_n = "LOCAL_RANK"; lworld_n = "LOCAL_WORLD_SIZE";
        mt__copy_name(out->launcher, sizeof out->launcher, "torchrun");
    } else if (get("OMPI_COMM_WORLD_RANK", ctx) || get("OMPI_COMM_WORLD_SIZE", ctx)) {
        rank_n = "OMPI_COMM_WORLD_RANK"; world_n = "OMPI_COMM_WORLD_SIZE";
        local_n = "OMPI_COMM_WORLD_LOCAL_RANK"; lworld_n = "OMPI_COMM_WORLD_LOCAL_SIZE";
        mt__copy_name(out->launcher, sizeof out->launcher, "openmpi");
    } else if (get("SLURM_PROCID", ctx) && get("SLURM_NTASKS", ctx)) {
        rank_n = "SLURM_PROCID"; world_n = "SLURM_NTASKS"; local_n = "SLURM_LOCALID"; lworld_n = "";
        mt__copy_name(out->launcher, sizeof out->launcher, "slurm");
    } else {
        out->rank = 0; out->world = 1; out->local_rank = 0; out->local_world = 1;
        mt__copy_name(out->launcher, sizeof out->launcher, "none");
        addr = get("MASTER_ADDR", ctx);
        mt__copy_name(out->master_addr, sizeof out->master_addr, addr && *addr ? addr : "127.0.0.1");
        port = get("MASTER_PORT", ctx);
        out->master_port = 29500;
        if (port && *port) MT_TRY(mt__env_int("MASTER_PORT", port, 1, 65535, &out->master_port));
        out->rendezvous_port = out->master_port;
        return MT_OK;
    }
    rank_v = get(rank_n, ctx);
    world_v = get(world_n, ctx);
    if (!rank_v || !*rank_v) return mt_errorf(MT_ERR_ARG, "launch (%s): %s is not set (%s=%s)", out->launcher, rank_n, world_n, world_v ? world_v : "");
    if (!world_v || !*world_v) return mt_errorf(MT_ERR_ARG, "launch (%s): %s is not set (%s=%s)", out->launcher, world_n, rank_n, rank_v);
    MT_TRY(mt__env_int(world_n, world_v, 1, 1L << 24, &out->world));
    MT_TRY(mt__env_int(rank_n, rank_v, 0, 1L << 24, &out->rank));
    if (out->rank >= out->world)
        return mt_errorf(MT_ERR_ARG, "launch (%s): %s=%d is out of range for %s=%d", out->launcher, rank_n, out->rank,
                         world_n, out->world);
    local_v = get(local_n, ctx);
    if (local_v && *local_v) MT_TRY(mt__env_int(local_n, local_v, 0, 1L << 16, &out->local_rank));
    lworld_v = *lworld_n ? get(lworld_n, ctx) : NULL;
    if (lworld_v && *lworld_v) MT_TRY(mt__env_int(lworld_n, lworld_v, 1, 1L << 16, &out->local_world));

    addr = get("MASTER_ADDR", ctx);
    if (addr && *addr) {
        mt__copy_name(out->master_addr, sizeof out->master_addr, addr);
    } else if (out->world == 1) {
        mt__copy_name(out->master_addr, sizeof out->master_addr, "127.0.0.1");
    } else if (!strcmp(out->launcher, "slurm") && (((s = get("SLURM_JOB_NODELIST", ctx)) && *s) ||
                                                   ((s = get("SLURM_NODELIST", ctx)) && *s))) {
        MT_TRY(mt_slurm_first_host(s, host, sizeof host));
        mt__copy_name(out->master_addr, sizeof out->master_addr, host);
    } else {
        return mt_errorf(MT_ERR_ARG,
                         "launch (%s): MASTER_ADDR is not set (%s=%d of %s=%d): set MASTER_ADDR to the host of rank 0 "
                         "and MASTER_PORT to a free port on it (mpirun: -x MASTER_ADDR=host -x MASTER_PORT=29500)",
                         out->launcher, rank_n, out->rank, world_n, out->world);
    }
    port = get("MASTER_PORT", ctx);
    if (port && *port) {
        MT_TRY(mt__env_int("MASTER_PORT", port, 1, 65535, &out->master_port));
    } else if (!strcmp(out->launcher, "slurm") && (s = get("SLURM_JOB_ID", ctx)) && *s) {
        int job = 0;
        MT_TRY(mt__env_int("SLURM_JOB_ID", s, 0, 2147483647L, &job));
        out->master_port = 20000 + job % 10000;
    } else {
        out->master_port = 29500;
    }
    out->rendezvous_port = out->master_port;
    s = get("TORCHELASTIC_USE_AGENT_STORE", ctx);
    if (s && (!strcmp(s, "True") || !strcmp(s, "true") || !strcmp(s, "1")))
        out->rendezvous_port = out->master_port < 65535 ? out->master_port + 1 : out->master_port - 1;
    s = get("MT_RENDEZVOUS_PORT", ctx);
    if (s && *s) MT_TRY(mt__env_int("MT_RENDEZVOUS_PORT", s, 1, 65535, &out->rendezvous_port));
    return MT_OK;
}

MT_API mt_status mt_launch_env(mt_launch_info *out) { return mt_launch_env_from(NULL, NULL, out); }

/* ------------------------------------------------------------------ TCP rendezvous */

#define MT__RDV_MAGIC 0x6d74726eu /* "mtrn" */

/* addr -> IPv4 address. Numeric addresses and "localhost" always work; host names need
 * getaddrinfo, which a strict -std=c11 build does not declare (use -std=gnu11 or define
 * _POSIX_C_SOURCE 200809L before including megatron.h). */
MT_API mt_status mt__resolve_ipv4(const char *addr, int port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (!addr || !*addr) return mt_errorf(MT_ERR_ARG, "rendezvous: MASTER_ADDR is not set (MASTER_PORT=%d)", port);
    if (!strcmp(addr, "localhost")) addr = "127.0.0.1";
    if (inet_pton(AF_INET, addr, &sa->sin_addr) == 1) return MT_OK;
#ifdef AI_PASSIVE
    {
        struct addrinfo hints, *res = NULL;
        int e;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        e = getaddrinfo(addr, NULL, &hints, &res);
        if (e != 0 || !res)
            return mt_errorf(MT_ERR_COMM, "rendezvous: cannot resolve MASTER_ADDR=%s: %s", addr, gai_strerror(e));
        sa->sin_addr = ((struct sockaddr_in *)(void *)res->ai_addr)->sin_addr;
        freeaddrinfo(res);
        return MT_OK;
    }
#else
    return mt_errorf(MT_ERR_UNSUPPORTED,
                     "rendezvous: MASTER_ADDR=%s is a host name, and this build has no getaddrinfo (compile with "
                     "-std=gnu11 or define _POSIX_C_SOURCE 200809L first), or give an IPv4 address",
                     addr);
#endif
}

/* Wait until fd is readable (events POLLIN) or writable (POLLOUT), at most until deadline. */
MT_API int mt__poll_fd(int fd, short events, double deadline) {
    struct pollfd p;
    double left = deadline - mt__now_s();
    int ms = left <= 0 ? 0 : (int)(left * 1000.0) + 1;
    p.fd = fd;
    p.events = events;
    p.revents = 0;
    return poll(&p, 1, ms) > 0 ? 1 : 0;
}

MT_API int mt__send_all(int fd, const void *buf, size_t n, double deadline) {
    const char *p = (const char *)buf;
    int flags = 0;
#ifdef MSG_NOSIGNAL
    flags = MSG_NOSIGNAL;
#endif
    while (n) {
        ssize_t k;
        if (!mt__poll_fd(fd, POLLOUT, deadline)) return -1;
        k = send(fd, p, n, flags);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

MT_API int mt__recv_all(int fd, void *buf, size_t n, double deadline) {
    char *p = (char *)buf;
    while (n) {
        ssize_t k;
        if (!mt__poll_fd(fd, POLLIN, deadline)) return -1;
        k = recv(fd, p, n, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Rank 0 sends blob (nbytes) to every other rank over TCP. Rank 0 listens on port (all
 * interfaces); the others connect to addr:port, retrying until timeout_s. Errors name the
 * address, the port and the ranks that did not show up. */
MT_API mt_status mt_rendezvous_bcast(const char *addr, int port, int rank, int world, void *blob, size_t nbytes,
                                     double timeout_s) {
    struct sockaddr_in sa;
    double t0 = mt__now_s(), deadline;
    uint32_t hello[4], reply[2];
    int fd = -1, one = 1;
    if (timeout_s <= 0) timeout_s = MT_COMM_TIMEOUT_S;
    deadline = t0 + timeout_s;
    if (world < 1 || rank < 0 || rank >= world)
        return mt_errorf(MT_ERR_ARG, "rendezvous: rank %d out of range for world size %d", rank, world);
    if (port < 1 || port > 65535)
        return mt_errorf(MT_ERR_ARG, "rendezvous: MASTER_PORT=%d is not a port number (1..65535)", port);
    if (nbytes > (1u << 20)) return mt_errorf(MT_ERR_ARG, "rendezvous: %zu bytes is too large a blob", nbytes);
    if (world == 1) return MT_OK;
    if (rank == 0) {
        int *fds = NULL, n_in = 0, q;
        char missing[200];
        size_t len = 0;
        mt_status st = MT_OK;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)port);
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
        if (!addr || !*addr) return mt_errorf(MT_ERR_ARG, "rendezvous: MASTER_ADDR is not set (MASTER_PORT=%d)", port);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return mt_errorf(MT_ERR_COMM, "rendezvous: socket() failed: %s", strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            int e = errno;
            close(fd);
            if (e == EADDRINUSE)
                return mt_errorf(MT_ERR_COMM,
                                 "rendezvous: port in use: rank 0 cannot listen on MASTER_PORT=%d (MASTER_ADDR=%s): %s; "
                                 "another job or a stale process holds it: choose another MASTER_PORT",
                                 port, addr, strerror(e));
            return mt_errorf(MT_ERR_COMM, "rendezvous: rank 0 cannot bind MASTER_PORT=%d (MASTER_ADDR=%s): %s", port,
                             addr, strerror(e));
        }
        if (listen(fd, world < 128 ? world : 128) != 0) {
            int e = errno;
            close(fd);
            return mt_errorf(MT_ERR_COMM, "rendezvous: listen on MASTER_PORT=%d failed: %s", port, strerror(e));
        }
        if (mt_calloc((size_t)world * sizeof(int), (void **)&fds) != MT_OK) { close(fd); return MT_ERR_OOM; }
        for (q = 0; q < world; q++) fds[q] = -1;
        while (n_in < world - 1) {
            int cfd;
            if (!mt__poll_fd(fd, POLLIN, deadline)) break;
            cfd = accept(fd, NULL, NULL);
            if (cfd < 0) continue;
            /* A peer has until the deadline (and at least 1 s) to say who it is. */
            if (mt__recv_all(cfd, hello, sizeof hello, deadline > mt__now_s() + 1 ? deadline : mt__now_s() + 1) != 0 ||
                ntohl(hello[0]) != MT__RDV_MAGIC) {
                close(cfd); /* not one of ours */
                continue;
            }
            q = (int)ntohl(hello[1]);
            if ((int)ntohl(hello[2]) != world || ntohl(hello[3]) != (uint32_t)nbytes || q <= 0 || q >= world ||
                fds[q] >= 0) {
                st = mt_errorf(MT_ERR_COMM,
                               "rendezvous at port %d: a peer says it is rank %d of %d (blob %u bytes); rank 0 expects "
                               "ranks 1..%d of %d (blob %zu bytes) once each",
                               port, q, (int)ntohl(hello[2]), (unsigned)ntohl(hello[3]), world - 1, world, nbytes);
                close(cfd);
                break;
            }
            fds[q] = cfd;
            n_in++;
        }
        if (st == MT_OK && n_in < world - 1) {
            missing[0] = 0;
            for (q = 1; q < world && len + 12 < sizeof missing; q++) {
                if (fds[q] < 0) {
                    int k = snprintf(missing + len, sizeof missing - len, "%s%d", len ? ", " : "", q);
                    if (k > 0) len += (size_t)k;
                }
            }
            st = mt_errorf(MT_ERR_TIMEOUT,
                           "rendezvous: rank 0 waited %.1f s on MASTER_PORT=%d (MASTER_ADDR=%s) and %d of %d ranks "
                           "connected; missing rank(s) %s",
                           mt__now_s() - t0, port, addr, n_in + 1, world, missing);
        }
        for (q = 1; q < world && st == MT_OK; q++) {
            reply[0] = htonl(MT__RDV_MAGIC);
            reply[1] = htonl((uint32_t)nbytes);
            if (mt__send_all(fds[q], reply, sizeof reply, deadline) != 0 ||
                mt__send_all(fds[q], blob, nbytes, deadline) != 0)
                st = mt_errorf(MT_ERR_COMM, "rendezvous: rank 0 could not send to rank %d: %s", q, strerror(errno));
        }
        for (q = 0; q < world; q++)
            if (fds[q] >= 0) close(fds[q]);
        mt_free(fds);
        close(fd);
        return st;
    }
    /* rank > 0: connect with retries */
    MT_TRY(mt__resolve_ipv4(addr, port, &sa));
    {
        int last_err = 0, connected = 0;
        while (!connected) {
            int e = 0, flags;
            socklen_t el = sizeof e;
            if (mt__now_s() >= deadline) break;
            fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0) return mt_errorf(MT_ERR_COMM, "rendezvous: socket() failed: %s", strerror(errno));
            flags = fcntl(fd, F_GETFL, 0);
            fcntl(fd, F_SETFL, flags | O_NONBLOCK);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
                connected = 1;
            } else if (errno == EINPROGRESS) {
                double d = mt__now_s() + 2.0 < deadline ? mt__now_s() + 2.0 : deadline;
                if (mt__poll_fd(fd, POLLOUT, d) && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)
                    connected = 1;
                else
                    last_err = e ? e : ETIMEDOUT;
            } else {
                last_err = errno;
            }
            if (!connected) {
                close(fd);
                fd = -1;
                mt__sleep_ms(50);
            } else {
                fcntl(fd, F_SETFL, flags);
            }
        }
        if (!connected)
            return mt_errorf(MT_ERR_TIMEOUT,
                             "rendezvous: rank %d of %d could not reach rank 0 at MASTER_ADDR=%s MASTER_PORT=%d within "
                             "%.1f s (last error: %s)",
                             rank, world, addr, port, timeout_s, last_err ? strerror(last_err) : "none");
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    hello[0] = htonl(MT__RDV_MAGIC);
    hello[1] = htonl((uint32_t)rank);
    hello[2] = htonl((uint32_t)world);
    hello[3] = htonl((uint32_t)nbytes);
    if (mt__send_all(fd, hello, sizeof hello, deadline) != 0 || mt__recv_all(fd, reply, sizeof reply, deadline) != 0 ||
        ntohl(reply[0]) != MT__RDV_MAGIC || ntohl(reply[1]) != (uint32_t)nbytes ||
        mt__recv_all(fd, blob, nbytes, deadline) != 0) {
        close(fd);
        return mt_errorf(MT_ERR_COMM,
                         "rendezvous: rank %d of %d connected to MASTER_ADDR=%s MASTER_PORT=%d but got no valid reply "
                         "from rank 0 within %.1f s (is another program on that port?)",
                         rank, world, addr, port, timeout_s);
    }
    close(fd);
    return MT_OK;
}

/* ------------------------------------------------------------------ NCCL backend */

#ifdef __CUDACC__

MT_API ncclDataType_t mt__nccl_dtype(mt_dtype dt) {
    switch (dt) {
        case MT_F32: return ncclFloat32;
        case MT_F64: return ncclFloat64;
        case MT_BF16: return ncclBfloat16;
        case MT_F16: return ncclFloat16;
#if defined(NCCL_VERSION_CODE) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 24, 0)
        case MT_FP8E4M3: return ncclFloat8e4m3;
        case MT_FP8E5M2: return ncclFloat8e5m2;
#else
        case MT_FP8E4M3: return ncclUint8;
        case MT_FP8E5M2: return ncclUint8;
#endif
        default: return ncclUint8;
    }
}

MT_API ncclRedOp_t mt__nccl_op(mt_reduce_op op) {
    switch (op) {
        case MT_SUM: return ncclSum;
        case MT_MAX: return ncclMax;
        case MT_AVG: return ncclAvg;
        case MT_MIN: return ncclMin;
        default: return ncclSum;
    }
}

MT_API ncclConfig_t mt__nccl_config(void) {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    return cfg;
}

MT_API void mt__nccl_abort(mt_comm *c, const char *why) {
    if (!c->nccl || c->aborted) return;
    ncclCommAbort(c->nccl);
    c->nccl = NULL;
    c->aborted = 1;
    mt__copy_name(c->abort_msg, sizeof c->abort_msg, why);
}

MT_API void mt__poll_pause(int *spins) {
    if (++*spins < 200) return;
    usleep(*spins < 2000 ? 20 : 200);
}

/* Poll a non-blocking communicator until its last call is done (not ncclInProgress). */
MT_API mt_status mt__nccl_ready(mt_comm *c, ncclComm_t comm, const char *op, double t0) {
    char where[160];
    int spins = 0;
    for (;;) {
        ncclResult_t ae = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(comm, &ae);
        if (r == ncclSuccess && ae == ncclSuccess) return MT_OK;
        if (r != ncclSuccess || ae != ncclInProgress) {
            mt__comm_where(c, op, where, sizeof where);
            mt_errorf(MT_ERR_NCCL, "%s: %s (%s)", where, ncclGetErrorString(r != ncclSuccess ? r : ae),
                      ncclGetLastError(comm));
            if (comm == c->nccl) mt__nccl_abort(c, "NCCL reported an error");
            else ncclCommAbort(comm);
            return MT_ERR_NCCL;
        }
        if (mt__now_s() - t0 > c->timeout_s) {
            mt__comm_where(c, op, where, sizeof where);
            mt_errorf(MT_ERR_TIMEOUT,
                      "%s: NCCL did not finish issuing the operation within %.2f s (a peer did not join); "
                      "communicator aborted",
                      where, c->timeout_s);
            if (comm == c->nccl) mt__nccl_abort(c, "timed out");
            else ncclCommAbort(comm);
            return MT_ERR_TIMEOUT;
        }
        mt__poll_pause(&spins);
    }
}

/* Wait until c->ev has completed on the GPU, watching NCCL's async errors and the timeout. */
MT_API mt_status mt__nccl_wait_event(mt_comm *c, const char *op) {
    char where[160];
    double t0 = mt__now_s();
    int spins = 0;
    for (;;) {
        ncclResult_t ae = ncclSuccess;
        cudaError_t q = cudaEventQuery(c->ev);
        if (q == cudaSuccess) return MT_OK;
        if (q != cudaErrorNotReady) {
            cudaGetLastError();
            mt__comm_where(c, op, where, sizeof where);
            return mt_errorf(MT_ERR_CUDA, "%s: %s", where, cudaGetErrorString(q));
        }
        if (ncclCommGetAsyncError(c->nccl, &ae) != ncclSuccess || (ae != ncclSuccess && ae != ncclInProgress)) {
            mt__comm_where(c, op, where, sizeof where);
            mt_errorf(MT_ERR_NCCL, "%s: %s (%s); communicator aborted", where, ncclGetErrorString(ae),
                      ncclGetLastError(c->nccl));
            mt__nccl_abort(c, "NCCL reported an error");
            return MT_ERR_NCCL;
        }
        if (mt__now_s() - t0 > c->timeout_s) {
            mt__comm_where(c, op, where, sizeof where);
            mt_errorf(MT_ERR_TIMEOUT,
                      "%s: timed out after %.2f s waiting for the GPU: a peer rank died or called a different "
                      "operation; communicator aborted",
                      where, mt__now_s() - t0);
            mt__nccl_abort(c, "timed out");
            return MT_ERR_TIMEOUT;
        }
        mt__poll_pause(&spins);
    }
}

MT_API mt_status mt__nccl_usable(mt_comm *c, const char *op) {
    char where[160];
    if (c->aborted || !c->nccl) {
        mt__comm_where(c, op, where, sizeof where);
        return mt_errorf(MT_ERR_COMM, "%s: the communicator was aborted earlier (%s)", where, c->abort_msg);
    }
    return MT_OK;
}

/* After an NCCL call: wait until it is enqueued; record the event; wait for the GPU if asked. */
MT_API mt_status mt__nccl_after(mt_comm *c, const char *op, ncclResult_t r, cudaStream_t s, double t0) {
    char where[160];
    c->last_op = op;
    if (r != ncclSuccess && r != ncclInProgress) {
        mt__comm_where(c, op, where, sizeof where);
        return mt_errorf(MT_ERR_NCCL, "%s: %s (%s)", where, ncclGetErrorString(r), ncclGetLastError(c->nccl));
    }
    if (c->group_depth > 0) return MT_OK; /* issued at group_end */
    MT_TRY(mt__nccl_ready(c, c->nccl, op, t0));
    if (cudaEventRecord(c->ev, s) != cudaSuccess) {
        cudaError_t e = cudaGetLastError();
        mt__comm_where(c, op, where, sizeof where);
        return mt_errorf(MT_ERR_CUDA, "%s: cudaEventRecord: %s", where, cudaGetErrorString(e));
    }
    if (c->blocking_wait) return mt__nccl_wait_event(c, op);
    return MT_OK;
}

/* Thread mode (mt_nccl_run: every rank a thread of this process) needs one host-side rendezvous
 * NCCL does not give: destroying a communicator whose ranks share the process frees buffers that the
 * other GPUs have mapped, and that free waits for those GPUs to go idle. A rank that has finished its
 * own destroy and already queued the next collective on another communicator (which waits for this
 * rank) would keep its GPU busy forever: deadlock. So in thread mode mt_comm_destroy returns only
 * when every rank of the communicator has destroyed its handle. The ranks of one communicator find
 * their shared mt__nccl_local by (the parent's, the parent's split count, color) in a process-wide
 * list; the world communicator's is made by mt_nccl_run. Process mode (one rank per process) has
 * none (local = NULL). */
typedef struct mt__nccl_local {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int members, refs, destroyed;
    const struct mt__nccl_local *parent; /* registry key: parent, split number, color */
    unsigned split;
    int color;
    struct mt__nccl_local *next;
} mt__nccl_local;

static pthread_mutex_t mt__nccl_local_mu = PTHREAD_MUTEX_INITIALIZER;
static mt__nccl_local *mt__nccl_local_list;

/* The shared record of (parent, split, color), made by the first rank to ask; NULL when out of memory
 * (the rendezvous is then skipped). */
MT_API mt__nccl_local *mt__nccl_local_get(const mt__nccl_local *parent, unsigned split, int color, int members) {
    mt__nccl_local *l;
    pthread_mutex_lock(&mt__nccl_local_mu);
    for (l = mt__nccl_local_list; l; l = l->next)
        if (parent && l->parent == parent && l->split == split && l->color == color) break;
    if (!l && (l = (mt__nccl_local *)calloc(1, sizeof *l)) != NULL) {
        pthread_mutex_init(&l->mu, NULL);
        pthread_cond_init(&l->cv, NULL);
        l->members = members;
        l->parent = parent;
        l->split = split;
        l->color = color;
        l->next = mt__nccl_local_list;
        mt__nccl_local_list = l;
    }
    if (l) l->refs++;
    pthread_mutex_unlock(&mt__nccl_local_mu);
    return l;
}

/* Called by each rank after destroying its handle: wait (at most timeout_s) until all have, then
 * drop this rank's reference. Children's records never outlive their parent's users, so the
 * (parent, split) key is not reused while a child record exists. */
MT_API void mt__nccl_local_leave(mt__nccl_local *l, double timeout_s) {
    struct timespec ts;
    double t0 = mt__now_s();
    int last;
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    if (++l->destroyed >= l->members) pthread_cond_broadcast(&l->cv);
    while (l->destroyed < l->members && mt__now_s() - t0 < timeout_s) {
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
    }
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_lock(&mt__nccl_local_mu);
    last = --l->refs == 0;
    if (last) {
        mt__nccl_local **pp = &mt__nccl_local_list;
        while (*pp && *pp != l) pp = &(*pp)->next;
        if (*pp) *pp = l->next;
    }
    pthread_mutex_unlock(&mt__nccl_local_mu);
    if (last) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        free(l);
    }
}

MT_API mt_status mt__nccl_finish_init(mt_comm *c, int device, double timeout_s, const char *name) {
    char where[160];
    int n = 0, r = 0;
    c->backend = MT__COMM_NCCL;
    c->device = device;
    c->timeout_s = timeout_s > 0 ? timeout_s : MT_COMM_TIMEOUT_S;
    mt__copy_name(c->name, sizeof c->name, name);
    ncclCommCount(c->nccl, &n);
    ncclCommUserRank(c->nccl, &r);
    c->size = n;
    c->rank = r;
    if (cudaEventCreateWithFlags(&c->ev, cudaEventDisableTiming) != cudaSuccess ||
        cudaMalloc((void **)&c->scratch, 4 * sizeof(float)) != cudaSuccess) {
        cudaError_t e = cudaGetLastError();
        mt__comm_where(c, "init", where, sizeof where);
        return mt_errorf(MT_ERR_CUDA, "%s: %s", where, cudaGetErrorString(e));
    }
    cudaMemset(c->scratch, 0, 4 * sizeof(float));
    return MT_OK;
}

MT_API void mt__nccl_env_defaults(void) {
    /* NVLink SHARP (multicast) is off unless the user asks: it reserves memory per communicator
     * and is not available on every system. Set once, before NCCL's threads read the environment. */
    if (!getenv("NCCL_NVLS_ENABLE")) setenv("NCCL_NVLS_ENABLE", "0", 0);
}

MT_API mt_status mt_nccl_get_unique_id(ncclUniqueId *id) {
    ncclResult_t r;
    mt__nccl_env_defaults();
    r = ncclGetUniqueId(id);
    if (r != ncclSuccess) return mt_errorf(MT_ERR_NCCL, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    return MT_OK;
}

/* One rank of a world communicator on GPU `device` (this thread's current device afterwards).
 * Every rank passes the same id (from mt_nccl_get_unique_id on one of them). */
MT_API mt_status mt_comm_nccl_init_rank(int device, int rank, int world, const ncclUniqueId *id, double timeout_s,
                                        mt_comm **out) {
    mt_comm *c = NULL;
    ncclConfig_t cfg = mt__nccl_config();
    ncclResult_t r;
    cudaError_t e;
    double t0 = mt__now_s();
    mt_status st;
    *out = NULL;
    mt__nccl_env_defaults();
    if (world < 1 || rank < 0 || rank >= world)
        return mt_errorf(MT_ERR_ARG, "mt_comm_nccl_init_rank: rank %d out of range for world %d", rank, world);
    e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mt_errorf(MT_ERR_CUDA, "mt_comm_nccl_init_rank: rank %d: cudaSetDevice(%d): %s", rank, device,
                         cudaGetErrorString(e));
    }
    MT_TRY(mt__comm_alloc(&c));
    c->backend = MT__COMM_NCCL;
    c->rank = rank;
    c->size = world;
    c->world_rank = rank;
    c->device = device;
    c->timeout_s = timeout_s > 0 ? timeout_s : MT_COMM_TIMEOUT_S;
    mt__copy_name(c->name, sizeof c->name, "world");
    r = ncclCommInitRankConfig(&c->nccl, world, *id, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        mt_errorf(MT_ERR_NCCL, "mt_comm init on group 'world' (rank %d of %d, GPU %d): %s (%s)", rank, world, device,
                  ncclGetErrorString(r), ncclGetLastError(c->nccl));
        if (c->nccl) ncclCommAbort(c->nccl);
        mt_free(c);
        return MT_ERR_NCCL;
    }
    st = mt__nccl_ready(c, c->nccl, "init", t0);
    if (st == MT_OK) st = mt__nccl_finish_init(c, device, timeout_s, "world");
    c->world_rank = c->rank;
    if (st != MT_OK) {
        mt_comm_destroy(c);
        return st;
    }
    *out = c;
    return MT_OK;
}

/* One process per GPU: GPU = LOCAL_RANK (or rank % visible GPUs when the launcher gives none);
 * rank 0 makes the NCCL id and sends it to the others over the TCP rendezvous. */
MT_API mt_status mt_comm_nccl_init_launch(const mt_launch_info *li, double timeout_s, mt_comm **out) {
    ncclUniqueId id;
    int ndev = 0, device;
    cudaError_t e;
    *out = NULL;
    memset(&id, 0, sizeof id);
    e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev < 1) {
        cudaGetLastError();
        return mt_errorf(MT_ERR_CUDA, "mt_comm_nccl_init_launch: rank %d of %d sees no GPU (%s)", li->rank, li->world,
                         e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    device = li->local_rank >= 0 ? li->local_rank : li->rank % ndev;
    if (device >= ndev)
        return mt_errorf(MT_ERR_ARG,
                         "mt_comm_nccl_init_launch: rank %d has local rank %d but only %d GPU(s) are visible "
                         "(launch at most %d processes per node, or check CUDA_VISIBLE_DEVICES)",
                         li->rank, device, ndev, ndev);
    e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mt_errorf(MT_ERR_CUDA, "mt_comm_nccl_init_launch: cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
    }
    if (li->rank == 0) MT_TRY(mt_nccl_get_unique_id(&id));
    MT_TRY(mt_rendezvous_bcast(li->master_addr, li->rendezvous_port, li->rank, li->world, &id, sizeof id, timeout_s));
    return mt_comm_nccl_init_rank(device, li->rank, li->world, &id, timeout_s, out);
}

typedef struct mt__nccl_thread {
    int rank, n;
    const ncclUniqueId *id;
    double timeout_s;
    mt_rank_fn fn;
    void *arg;
    mt_status status;
    pthread_t tid;
    mt__nccl_local *local; /* the world communicator's ranks in this process */
} mt__nccl_thread;

MT_API void *mt__nccl_thread_main(void *p) {
    mt__nccl_thread *t = (mt__nccl_thread *)p;
    mt_comm *c = NULL;
    t->status = mt_comm_nccl_init_rank(t->rank, t->rank, t->n, t->id, t->timeout_s, &c);
    if (t->status != MT_OK) mt__nccl_local_leave(t->local, 0);
    if (t->status == MT_OK) {
        c->local = t->local;
        t->status = t->fn(c, t->arg);
        mt_comm_destroy(c);
    }
    return NULL;
}

/* One process driving ngpus GPUs (0: all visible), one thread per GPU: thread r has GPU r as its
 * current device and calls fn(its world communicator, arg). Statuses as in mt_host_run. */
MT_API mt_status mt_nccl_run(int ngpus, double timeout_s, mt_rank_fn fn, void *arg, mt_status *statuses) {
    ncclUniqueId id;
    mt__nccl_thread *t = NULL;
    mt_status st = MT_OK;
    int ndev = 0, r, started = 0;
    mt__nccl_local *local;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        ndev = 0;
    }
    if (ngpus <= 0) ngpus = ndev;
    if (ngpus < 1 || ngpus > ndev)
        return mt_errorf(MT_ERR_ARG, "mt_nccl_run: %d GPU(s) requested, %d visible", ngpus, ndev);
    MT_TRY(mt_nccl_get_unique_id(&id));
    MT_TRY(mt_calloc((size_t)ngpus * sizeof(mt__nccl_thread), (void **)&t));
    local = mt__nccl_local_get(NULL, 0, 0, ngpus); /* a new record (no parent): the world's */
    if (local) local->refs = ngpus;                 /* one reference per rank, no thread runs yet */
    for (r = 0; r < ngpus; r++) {
        t[r].local = local;
        t[r].rank = r;
        t[r].n = ngpus;
        t[r].id = &id;
        t[r].timeout_s = timeout_s;
        t[r].fn = fn;
        t[r].arg = arg;
        if (pthread_create(&t[r].tid, NULL, mt__nccl_thread_main, &t[r]) != 0) {
            st = mt_errorf(MT_ERR_INTERNAL, "mt_nccl_run: could not start the thread of GPU %d", r);
            break;
        }
        started++;
    }
    for (r = started; r < ngpus; r++) mt__nccl_local_leave(local, 0); /* the references of threads never started */
    for (r = 0; r < started; r++) pthread_join(t[r].tid, NULL);
    for (r = 0; r < ngpus; r++) {
        mt_status s = r < started ? t[r].status : MT_ERR_INTERNAL;
        if (statuses) statuses[r] = s;
        if (st == MT_OK && s != MT_OK) st = s;
    }
    mt_free(t);
    return st;
}

/* 1: every call on c waits for the GPU to finish it (watchdog on each op; slower, for tests
 * and debugging). 0 (default): calls return once enqueued; use mt_comm_wait to check. */
MT_API void mt_comm_set_blocking_wait(mt_comm *c, int on) {
    if (c) c->blocking_wait = on;
}
MT_API int mt_comm_device(const mt_comm *c) { return c && c->backend == MT__COMM_NCCL ? c->device : -1; }
MT_API ncclComm_t mt_comm_nccl(const mt_comm *c) { return c && c->backend == MT__COMM_NCCL ? c->nccl : NULL; }

#endif /* __CUDACC__ */

/* ------------------------------------------------------------------ the API (dispatch) */

#ifdef __CUDACC__
#define MT__NCCL_CALL(c, kind, call, stream)                                               \
    do {                                                                                   \
        double mt__t0 = mt__now_s();                                                       \
        MT_TRY(mt__nccl_usable((c), mt__coll_name(kind)));                                 \
        return mt__nccl_after((c), mt__coll_name(kind), (call), (cudaStream_t)(stream), mt__t0); \
    } while (0)
#endif

MT_API mt_status mt_comm_all_reduce(mt_comm *c, const void *send, void *recv, size_t count, mt_dtype dt,
                                    mt_reduce_op op, void *stream) {
    MT_TRY(mt__check_buf(c, MT__C_ALL_REDUCE, send, count, "send"));
    MT_TRY(mt__check_buf(c, MT__C_ALL_REDUCE, recv, count, "recv"));
    MT_TRY(mt__check_dtype(c, MT__C_ALL_REDUCE, dt, 1));
    MT_TRY(mt__check_op(c, MT__C_ALL_REDUCE, op));
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL)
        MT__NCCL_CALL(c, MT__C_ALL_REDUCE,
                      ncclAllReduce(send, recv, count, mt__nccl_dtype(dt), mt__nccl_op(op), c->nccl, (cudaStream_t)stream),
                      stream);
#endif
    (void)stream;
    return mt__host_all_reduce(c, send, recv, count, dt, op);
}

MT_API mt_status mt_comm_all_gather(mt_comm *c, const void *send, void *recv, size_t count_per_rank, mt_dtype dt,
                                    void *stream) {
    MT_TRY(mt__check_buf(c, MT__C_ALL_GATHER, send, count_per_rank, "send"));
    MT_TRY(mt__check_buf(c, MT__C_ALL_GATHER, recv, count_per_rank, "recv"));
    MT_TRY(mt__check_dtype(c, MT__C_ALL_GATHER, dt, 0));
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL)
        MT__NCCL_CALL(c, MT__C_ALL_GATHER,
                      ncclAllGather(send, recv, count_per_rank, mt__nccl_dtype(dt), c->nccl, (cudaStream_t)stream),
                      stream);
#endif
    (void)stream;
    return mt__host_all_gather(c, send, recv, count_per_rank, dt);
}

MT_API mt_status mt_comm_reduce_scatter(mt_comm *c, const void *send, void *recv, size_t count_per_rank, mt_dtype dt,
                                        mt_reduce_op op, void *stream) {
    MT_TRY(mt__check_buf(c, MT__C_REDUCE_SCATTER, send, count_per_rank, "send"));
    MT_TRY(mt__check_buf(c, MT__C_REDUCE_SCATTER, recv, count_per_rank, "recv"));
    MT_TRY(mt__check_dtype(c, MT__C_REDUCE_SCATTER, dt, 1));
    MT_TRY(mt__check_op(c, MT__C_REDUCE_SCATTER, op));
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL)
        MT__NCCL_CALL(c, MT__C_REDUCE_SCATTER,
                      ncclReduceScatter(send, recv, count_per_rank, mt__nccl_dtype(dt), mt__nccl_op(op), c->nccl,
                                        (cudaStream_t)stream),
                      stream);
#endif
    (void)stream;
    return mt__host_reduce_scatter(c, send, recv, count_per_rank, dt, op);
}

#ifdef __CUDACC__
/* all_to_allv (and all_to_all) as grouped send/recv: NCCL's own pattern for it. */
MT_API mt_status mt__nccl_all_to_allv(mt_comm *c, int kind, const void *send, const size_t *sc, const size_t *sd,
                                      void *recv, const size_t *rc, const size_t *rd, size_t cpr, mt_dtype dt,
                                      cudaStream_t s) {
    double t0 = mt__now_s();
    size_t ds = mt_dtype_size(dt);
    ncclDataType_t nt = mt__nccl_dtype(dt);
    ncclResult_t r = ncclSuccess;
    int q;
    MT_TRY(mt__nccl_usable(c, mt__coll_name(kind)));
    ncclGroupStart();
    for (q = 0; q < c->size && (r == ncclSuccess || r == ncclInProgress); q++) {
        size_t n_s = sc ? sc[q] : cpr, o_s = sd ? sd[q] : (size_t)q * cpr;
        size_t n_r = rc ? rc[q] : cpr, o_r = rd ? rd[q] : (size_t)q * cpr;
        if (n_s) r = ncclSend((const char *)send + o_s * ds, n_s, nt, q, c->nccl, s);
        if (n_r && (r == ncclSuccess || r == ncclInProgress))
            r = ncclRecv((char *)recv + o_r * ds, n_r, nt, q, c->nccl, s);
    }
    {
        ncclResult_t r2 = ncclGroupEnd();
        if (r == ncclSuccess || r == ncclInProgress) r = r2;
    }
    return mt__nccl_after(c, mt__coll_name(kind), r, s, t0);
}
#endif

MT_API mt_status mt_comm_all_to_all(mt_comm *c, const void *send, void *recv, size_t count_per_rank, mt_dtype dt,
                                    void *stream) {
    MT_TRY(mt__check_buf(c, MT__C_ALL_TO_ALL, send, count_per_rank, "send"));
    MT_TRY(mt__check_buf(c, MT__C_ALL_TO_ALL, recv, count_per_rank, "recv"));
    MT_TRY(mt__check_dtype(c, MT__C_ALL_TO_ALL, dt, 0));
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        if (c->group_depth > 0) {
            char where[160];
            mt__comm_where(c, "all_to_all", where, sizeof where);
            return mt_errorf(MT_ERR_ARG, "%s: not allowed inside mt_comm_group_start/end", where);
        }
        return mt__nccl_all_to_allv(c, MT__C_ALL_TO_ALL, send, NULL, NULL, recv, NULL, NULL, count_per_rank, dt,
                                    (cudaStream_t)stream);
    }
#endif
    (void)stream;
    return mt__host_all_to_all(c, send, recv, count_per_rank, dt);
}

MT_API mt_status mt_comm_all_to_allv(mt_comm *c, const void *send, const size_t *send_counts,
                                     const size_t *send_displs, void *recv, const size_t *recv_counts,
                                     const size_t *recv_displs, mt_dtype dt, void *stream) {
    if (!c) return mt_errorf(MT_ERR_ARG, "mt_comm all_to_allv: communicator is NULL");
    if (!send_counts || !send_displs || !recv_counts || !recv_displs) {
        char where[160];
        mt__comm_where(c, "all_to_allv", where, sizeof where);
        return mt_errorf(MT_ERR_ARG, "%s: counts and displacements must not be NULL", where);
    }
    MT_TRY(mt__check_dtype(c, MT__C_ALL_TO_ALLV, dt, 0));
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        if (c->group_depth > 0) {
            char where[160];
            mt__comm_where(c, "all_to_allv", where, sizeof where);
            return mt_errorf(MT_ERR_ARG, "%s: not allowed inside mt_comm_group_start/end", where);
        }
        return mt__nccl_all_to_allv(c, MT__C_ALL_TO_ALLV, send, send_counts, send_displs, recv, recv_counts,
                                    recv_displs, 0, dt, (cudaStream_t)stream);
    }
#endif
    (void)stream;
    return mt__host_all_to_allv(c, send, send_counts, send_displs, recv, recv_counts, recv_displs, dt);
}

MT_API mt_status mt_comm_broadcast(mt_comm *c, void *buf, size_t count, mt_dtype dt, int root, void *stream) {
    MT_TRY(mt__check_buf(c, MT__C_BROADCAST, buf, count, "buf"));
    MT_TRY(mt__check_dtype(c, MT__C_BROADCAST, dt, 0));
    if (root < 0 || root >= c->size) {
        char where[160];
        mt__comm_where(c, "broadcast", where, sizeof where);
        return mt_errorf(MT_ERR_ARG, "%s: root %d out of range", where, root);
    }
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL)
        MT__NCCL_CALL(c, MT__C_BROADCAST,
                      ncclBroadcast(buf, buf, count, mt__nccl_dtype(dt), root, c->nccl, (cudaStream_t)stream), stream);
#endif
    (void)stream;
    return mt__host_broadcast(c, buf, count, dt, root);
}

MT_API mt_status mt_comm_group_start(mt_comm *c) {
    if (!c) return mt_errorf(MT_ERR_ARG, "mt_comm group_start: communicator is NULL");
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        ncclResult_t r;
        MT_TRY(mt__nccl_usable(c, "group_start"));
        r = ncclGroupStart();
        if (r != ncclSuccess) return mt_errorf(MT_ERR_NCCL, "ncclGroupStart: %s", ncclGetErrorString(r));
    }
#endif
    c->group_depth++;
    return MT_OK;
}

/* Ends the group: the batched sends and receives run together (host: the receives wait here).
 * With NCCL they are issued on the streams given to them; the completion event that
 * mt_comm_set_blocking_wait and mt_comm_wait watch is recorded on the last one's stream. */
MT_API mt_status mt_comm_group_end(mt_comm *c) {
    if (!c) return mt_errorf(MT_ERR_ARG, "mt_comm group_end: communicator is NULL");
    if (c->group_depth <= 0) {
        char where[160];
        mt__comm_where(c, "group_end", where, sizeof where);
        return mt_errorf(MT_ERR_ARG, "%s: no matching mt_comm_group_start", where);
    }
    c->group_depth--;
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        double t0 = mt__now_s();
        ncclResult_t r = ncclGroupEnd();
        return mt__nccl_after(c, "group_end", r, c->p2p_stream, t0); /* inside an outer group: checks r only */
    }
#endif
    if (c->group_depth > 0) return MT_OK;
    return mt__host_group_end(c);
}

MT_API mt_status mt__check_peer(mt_comm *c, int kind, int peer) {
    char where[160];
    if (peer < 0 || peer >= c->size) {
        mt__comm_where(c, mt__coll_name(kind), where, sizeof where);
        return mt_errorf(MT_ERR_ARG, "%s: peer %d out of range", where, peer);
    }
    return MT_OK;
}

MT_API mt_status mt_comm_send(mt_comm *c, const void *buf, size_t count, mt_dtype dt, int peer, void *stream) {
    MT_TRY(mt__check_buf(c, MT__C_SEND, buf, count, "buf"));
    MT_TRY(mt__check_dtype(c, MT__C_SEND, dt, 0));
    MT_TRY(mt__check_peer(c, MT__C_SEND, peer));
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        c->p2p_stream = (cudaStream_t)stream; /* group_end records its completion event here */
        MT__NCCL_CALL(c, MT__C_SEND, ncclSend(buf, count, mt__nccl_dtype(dt), peer, c->nccl, (cudaStream_t)stream),
                      stream);
    }
#endif
    (void)stream;
    return mt__host_send(c, buf, count, dt, peer);
}

MT_API mt_status mt_comm_recv(mt_comm *c, void *buf, size_t count, mt_dtype dt, int peer, void *stream) {
    MT_TRY(mt__check_buf(c, MT__C_RECV, buf, count, "buf"));
    MT_TRY(mt__check_dtype(c, MT__C_RECV, dt, 0));
    MT_TRY(mt__check_peer(c, MT__C_RECV, peer));
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        c->p2p_stream = (cudaStream_t)stream;
        MT__NCCL_CALL(c, MT__C_RECV, ncclRecv(buf, count, mt__nccl_dtype(dt), peer, c->nccl, (cudaStream_t)stream),
                      stream);
    }
#endif
    (void)stream;
    return mt__host_recv(c, buf, count, dt, peer);
}

/* Every rank waits for every other. With NCCL: an all-reduce of one float on `stream`, then the
 * host waits for it (watchdog and timeout as mt_comm_wait). */
MT_API mt_status mt_comm_barrier(mt_comm *c, void *stream) {
    if (!c) return mt_errorf(MT_ERR_ARG, "mt_comm barrier: communicator is NULL");
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        double t0 = mt__now_s();
        MT_TRY(mt__nccl_usable(c, "barrier"));
        MT_TRY(mt__nccl_after(c, "barrier",
                              ncclAllReduce(c->scratch, c->scratch, 1, ncclFloat32, ncclSum, c->nccl,
                                            (cudaStream_t)stream),
                              (cudaStream_t)stream, t0));
        return c->blocking_wait ? MT_OK : mt__nccl_wait_event(c, "barrier");
    }
#endif
    (void)stream;
    return mt__host_barrier(c);
}

/* Block the host until the work on `stream` so far (this communicator's operations included) is
 * done, at most the timeout; on timeout the NCCL communicator is aborted (MT_ERR_TIMEOUT).
 * Host backend: nothing to wait for. */
MT_API mt_status mt_comm_wait(mt_comm *c, void *stream) {
    if (!c) return mt_errorf(MT_ERR_ARG, "mt_comm wait: communicator is NULL");
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        char op[48];
        MT_TRY(mt__nccl_usable(c, "wait"));
        if (cudaEventRecord(c->ev, (cudaStream_t)stream) != cudaSuccess) {
            cudaError_t e = cudaGetLastError();
            return mt_errorf(MT_ERR_CUDA, "mt_comm wait on group '%s': cudaEventRecord: %s", c->name,
                             cudaGetErrorString(e));
        }
        snprintf(op, sizeof op, "wait (after %s)", c->last_op ? c->last_op : "nothing");
        return mt__nccl_wait_event(c, op);
    }
#endif
    (void)stream;
    return MT_OK;
}

/* Collective over parent: ranks with the same color form a child group, ordered by (key, parent
 * rank); color < 0 (MT_COMM_NO_COLOR) gives *child = NULL. `name` ("tp", "dp", ...) is the
 * child's name in messages. */
MT_API mt_status mt_comm_split(mt_comm *parent, int color, int key, const char *name, mt_comm **child) {
    if (!child) return mt_errorf(MT_ERR_ARG, "mt_comm split: child is NULL");
    *child = NULL;
    if (!parent) return mt_errorf(MT_ERR_ARG, "mt_comm split: parent communicator is NULL");
#ifdef __CUDACC__
    if (parent->backend == MT__COMM_NCCL) {
        ncclConfig_t cfg = mt__nccl_config();
        ncclComm_t nc = NULL;
        ncclResult_t r;
        mt_comm *c = NULL;
        double t0 = mt__now_s();
        unsigned split;
        mt_status st;
        MT_TRY(mt__nccl_usable(parent, "split"));
        cudaSetDevice(parent->device); /* the child's event and scratch live on the parent's GPU */
        r = ncclCommSplit(parent->nccl, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &nc, &cfg);
        split = parent->n_splits++;
        if (r != ncclSuccess && r != ncclInProgress) return mt__nccl_after(parent, "split", r, 0, t0);
        MT_TRY(mt__nccl_ready(parent, parent->nccl, "split", t0));
        if (color < 0 || !nc) return MT_OK;
        MT_TRY(mt__comm_alloc(&c));
        c->nccl = nc;
        c->world_rank = parent->world_rank;
        c->timeout_s = parent->timeout_s;
        c->blocking_wait = parent->blocking_wait;
        mt__copy_name(c->name, sizeof c->name, name ? name : "split");
        c->backend = MT__COMM_NCCL;
        st = mt__nccl_ready(c, nc, "split", t0);
        if (st == MT_OK) st = mt__nccl_finish_init(c, parent->device, parent->timeout_s, name ? name : "split");
        if (st == MT_OK && parent->local && c->size > 1) c->local = mt__nccl_local_get(parent->local, split, color, c->size);
        if (st != MT_OK) {
            mt_comm_destroy(c);
            return st;
        }
        *child = c;
        return MT_OK;
    }
#endif
    return mt__host_split(parent, color, key, name, child);
}

/* Give up on a communicator (a peer failed, the trainer is shutting down after an error): NCCL
 * communicators are aborted (ncclCommAbort, which also stops their kernels); a host group is
 * marked unusable, so its other ranks' next collectives fail at once. Destroy it afterwards. */
MT_API void mt_comm_abort(mt_comm *c) {
    if (!c) return;
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        mt__nccl_abort(c, "aborted by the caller");
        return;
    }
#endif
    if (c->g) {
        pthread_mutex_lock(&c->g->mu);
        if (!c->g->broken) {
            c->g->broken = 1;
            c->g->broken_status = MT_ERR_COMM;
            snprintf(c->g->broken_msg, sizeof c->g->broken_msg, "rank %d aborted the group", c->rank);
        }
        pthread_cond_broadcast(&c->g->cv);
        pthread_mutex_unlock(&c->g->mu);
    }
}

MT_API void mt_comm_destroy(mt_comm *c) {
    if (!c) return;
#ifdef __CUDACC__
    if (c->backend == MT__COMM_NCCL) {
        if (c->nccl && !c->aborted) {
            double t0 = mt__now_s();
            ncclResult_t r = ncclCommFinalize(c->nccl);
            if (r == ncclSuccess || r == ncclInProgress) {
                if (mt__nccl_ready(c, c->nccl, "destroy", t0) == MT_OK) ncclCommDestroy(c->nccl);
            } else {
                ncclCommAbort(c->nccl);
            }
            c->nccl = NULL;
        }
        if (c->ev) cudaEventDestroy(c->ev);
        if (c->scratch) cudaFree(c->scratch);
        mt__nccl_local_leave(c->local, c->timeout_s); /* thread mode: until every rank has destroyed it */
        mt_free(c);
        return;
    }
#endif
    mt_free(c->pending);
    mt__host_group_unref(c->g);
    mt_free(c);
}

#ifdef __cplusplus
}
#endif
#endif /* MT_COMM_H */
