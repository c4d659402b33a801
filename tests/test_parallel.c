/* tests/test_parallel.c — mt/parallel.h: the rank grid equals Megatron-Core's (tables written out
 * from its algorithm: order tp-cp-ep-dp-pp, mixed radix, leftmost axis fastest), bad configs fail
 * with the values named, and the communicators built on the host backend hold those ranks. */
#include <stdio.h>
#include <string.h>

static _Thread_local char tl_msg[1024];
static _Thread_local int tl_quiet;
static void test_log(int level, const char *msg) {
    if (level >= 3) snprintf(tl_msg, sizeof tl_msg, "%s", msg);
    if (!tl_quiet && level >= 2) fprintf(stderr, "megatron.h: %s\n", msg);
}
#define MT_LOG_FN(level, msg) test_log(level, msg)

#include "mt/parallel.h"
#include "mt_test.h"

#define MAXW 16

static mt_parallel_config config(int tp, int cp, int ep, int pp, int etp) {
    mt_parallel_config c;
    memset(&c, 0, sizeof c);
    c.tp = tp; c.cp = cp; c.ep = ep; c.pp = pp; c.etp = etp;
    return c;
}

/* Compare one kind's groups with a table of n_groups x group_size ranks. */
static void expect_groups(int world, const mt_parallel_config *cfg, mt_group_kind kind, int n_groups, int group_size,
                          const int *want) {
    int ranks[MAXW], ng = -1, gs = -1, i;
    mt_status st = mt_parallel_groups(world, cfg, kind, ranks, &ng, &gs);
    MT_EXPECT(st == MT_OK, "%s: %s", mt_group_name(kind), mt_status_str(st));
    MT_EXPECT(ng == n_groups && gs == group_size, "%s: %d groups of %d, want %d of %d", mt_group_name(kind), ng, gs,
              n_groups, group_size);
    if (ng != n_groups || gs != group_size) return;
    for (i = 0; i < ng * gs; i++) {
        if (ranks[i] != want[i]) {
            MT_EXPECT(0, "%s: group %d position %d is rank %d, want %d", mt_group_name(kind), i / gs, i % gs, ranks[i],
                      want[i]);
            return;
        }
    }
    MT_EXPECT(1, "%s", mt_group_name(kind));
}

/* 16 GPUs, tp=2, cp=2, pp=2 -> dp=2. rank = tp + 2*cp + 4*dp + 8*pp. */
static void test_world16_tp2_cp2_pp2(void) {
    mt_parallel_config c = config(2, 2, 0, 2, 0);
    static const int tp[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static const int cp[] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
    static const int dp[] = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};
    static const int dp_cp[] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
    static const int pp[] = {0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15};
    static const int mp[] = {0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15};
    static const int tp_cp[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static const int tp_dp[] = {0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15};
    static const int tp_dp_cp[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static const int embd[] = {0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15};
    /* expert grid: etp = tp = 2, ep = 1, edp = 16 / (2*1*2) = 4: rank = etp + 2*edp + 8*pp */
    static const int edp[] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
    static const int ep[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static const int etp_ep_pp[] = {0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15};
    mt_parallel_sizes s;
    MT_EXPECT(mt_parallel_resolve(16, &c, &s) == MT_OK && s.dp == 2 && s.etp == 2 && s.edp == 4 && s.ep == 1,
              "sizes dp %d etp %d edp %d", s.dp, s.etp, s.edp);
    expect_groups(16, &c, MT_GROUP_TP, 8, 2, tp);
    expect_groups(16, &c, MT_GROUP_CP, 8, 2, cp);
    expect_groups(16, &c, MT_GROUP_DP, 8, 2, dp);
    expect_groups(16, &c, MT_GROUP_DP_CP, 4, 4, dp_cp);
    expect_groups(16, &c, MT_GROUP_PP, 8, 2, pp);
    expect_groups(16, &c, MT_GROUP_MP, 4, 4, mp);
    expect_groups(16, &c, MT_GROUP_TP_CP, 4, 4, tp_cp);
    expect_groups(16, &c, MT_GROUP_TP_DP, 4, 4, tp_dp);
    expect_groups(16, &c, MT_GROUP_TP_DP_CP, 2, 8, tp_dp_cp);
    expect_groups(16, &c, MT_GROUP_EMBD, 8, 2, embd);
    expect_groups(16, &c, MT_GROUP_ETP, 8, 2, tp);
    expect_groups(16, &c, MT_GROUP_EP, 16, 1, ep);
    expect_groups(16, &c, MT_GROUP_EDP, 4, 4, edp);
    expect_groups(16, &c, MT_GROUP_ETP_EP, 8, 2, tp);
    expect_groups(16, &c, MT_GROUP_ETP_EP_PP, 4, 4, etp_ep_pp);
}

/* `--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2` on 8 GPUs: rank = tp + 2*dp + 4*pp. */
static void test_world8_tp2_pp2(void) {
    mt_parallel_config c = config(2, 0, 0, 2, 0);
    static const int tp[] = {0, 1, 2, 3, 4, 5, 6, 7};
    static const int dp[] = {0, 2, 1, 3, 4, 6, 5, 7};
    static const int pp[] = {0, 4, 1, 5, 2, 6, 3, 7};
    static const int mp[] = {0, 1, 4, 5, 2, 3, 6, 7};
    static const int cp[] = {0, 1, 2, 3, 4, 5, 6, 7};
    expect_groups(8, &c, MT_GROUP_TP, 4, 2, tp);
    expect_groups(8, &c, MT_GROUP_DP, 4, 2, dp);
    expect_groups(8, &c, MT_GROUP_DP_CP, 4, 2, dp);
    expect_groups(8, &c, MT_GROUP_PP, 4, 2, pp);
    expect_groups(8, &c, MT_GROUP_MP, 2, 4, mp);
    expect_groups(8, &c, MT_GROUP_EMBD, 4, 2, pp);
    expect_groups(8, &c, MT_GROUP_CP, 8, 1, cp);
}

/* Expert grids. */
static void test_expert_grids(void) {
    {   /* 8 GPUs, tp=2, ep=2, etp defaults to tp: edp = 2; rank = etp + 2*ep + 4*edp */
        mt_parallel_config c = config(2, 0, 2, 0, 0);
        static const int etp[] = {0, 1, 2, 3, 4, 5, 6, 7};
        static const int ep[] = {0, 2, 1, 3, 4, 6, 5, 7};
        static const int edp[] = {0, 4, 1, 5, 2, 6, 3, 7};
        static const int etp_ep[] = {0, 1, 2, 3, 4, 5, 6, 7};
        expect_groups(8, &c, MT_GROUP_ETP, 4, 2, etp);
        expect_groups(8, &c, MT_GROUP_EP, 4, 2, ep);
        expect_groups(8, &c, MT_GROUP_EDP, 4, 2, edp);
        expect_groups(8, &c, MT_GROUP_ETP_EP, 2, 4, etp_ep);
        expect_groups(8, &c, MT_GROUP_ETP_EP_PP, 2, 4, etp_ep);
    }
    {   /* 16 GPUs, tp=2, pp=2, ep=4, etp=1: edp = 2; rank = ep + 4*edp + 8*pp */
        mt_parallel_config c = config(2, 0, 4, 2, 1);
        static const int ep[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        static const int edp[] = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};
        static const int etp[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        static const int etp_ep_pp[] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
        static const int pp[] = {0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15};
        expect_groups(16, &c, MT_GROUP_EP, 4, 4, ep);
        expect_groups(16, &c, MT_GROUP_EDP, 8, 2, edp);
        expect_groups(16, &c, MT_GROUP_ETP, 16, 1, etp);
        expect_groups(16, &c, MT_GROUP_ETP_EP_PP, 2, 8, etp_ep_pp);
        expect_groups(16, &c, MT_GROUP_PP, 8, 2, pp);
    }
}

/* pp=4: the embedding group is the first and the last stage only. */
static void test_embedding_group(void) {
    mt_parallel_config c = config(2, 0, 0, 4, 0);
    static const int pp[] = {0, 2, 4, 6, 1, 3, 5, 7};
    static const int embd[] = {0, 6, 1, 7};
    static const int embd1[] = {0, 1, 2, 3};
    mt_parallel_config c1 = config(0, 0, 0, 0, 0);
    expect_groups(8, &c, MT_GROUP_PP, 2, 4, pp);
    expect_groups(8, &c, MT_GROUP_EMBD, 2, 2, embd);
    expect_groups(4, &c1, MT_GROUP_EMBD, 4, 1, embd1); /* pp = 1: every rank alone */
}

/* Every valid config up to 16 ranks: each kind partitions the world (embd aside), sizes are the
 * products, group position = the coordinate formula, dense and expert pp groups agree. */
static void test_grid_properties(void) {
    int world, tp, cp, pp, ep, etp, k, n_configs = 0, bad = 0;
    for (world = 1; world <= MAXW; world++)
    for (tp = 1; tp <= world; tp++)
    for (cp = 1; cp <= world; cp++)
    for (pp = 1; pp <= world; pp++)
    for (ep = 1; ep <= world; ep++)
    for (etp = 0; etp <= 2; etp++) {
        mt_parallel_config c = config(tp, cp, ep, pp, etp);
        mt_parallel_sizes s;
        int ranks[MAXW], pp_dense[MAXW], seen[MAXW], ng, gs, i;
        if (world % (tp * cp * pp) || world % ((etp ? etp : tp) * ep * pp)) continue;
        n_configs++;
        MT_EXPECT(mt_parallel_resolve(world, &c, &s) == MT_OK, "resolve");
        for (k = 0; k < MT_GROUP_COUNT; k++) {
            int want_gs = 1;
            if (mt_parallel_groups(world, &c, (mt_group_kind)k, ranks, &ng, &gs) != MT_OK) { bad++; continue; }
            switch (k) {
                case MT_GROUP_TP: want_gs = s.tp; break;
                case MT_GROUP_CP: want_gs = s.cp; break;
                case MT_GROUP_DP: want_gs = s.dp; break;
                case MT_GROUP_DP_CP: want_gs = s.dp * s.cp; break;
                case MT_GROUP_PP: want_gs = s.pp; break;
                case MT_GROUP_MP: want_gs = s.tp * s.pp; break;
                case MT_GROUP_TP_CP: want_gs = s.tp * s.cp; break;
                case MT_GROUP_TP_DP: want_gs = s.tp * s.dp; break;
                case MT_GROUP_TP_DP_CP: want_gs = s.tp * s.dp * s.cp; break;
                case MT_GROUP_EMBD: want_gs = s.pp > 1 ? 2 : 1; break;
                case MT_GROUP_EP: want_gs = s.ep; break;
                case MT_GROUP_ETP: want_gs = s.etp; break;
                case MT_GROUP_EDP: want_gs = s.edp; break;
                case MT_GROUP_ETP_EP: want_gs = s.etp * s.ep; break;
                case MT_GROUP_ETP_EP_PP: want_gs = s.etp * s.ep * s.pp; break;
            }
            if (gs != want_gs) bad++;
            memset(seen, 0, sizeof seen);
            for (i = 0; i < ng * gs; i++) {
                int r = ranks[i], pos = i % gs;
                if (r < 0 || r >= world) { bad++; break; }
                seen[r]++;
                /* the position in the group is the rank's coordinate along the group's axes */
                if (k == MT_GROUP_TP && pos != r % s.tp) bad++;
                if (k == MT_GROUP_CP && pos != r / s.tp % s.cp) bad++;
                if (k == MT_GROUP_DP && pos != r / (s.tp * s.cp) % s.dp) bad++;
                if (k == MT_GROUP_PP && pos != r / (s.tp * s.cp * s.dp)) bad++;
                if (k == MT_GROUP_DP_CP && pos != r / s.tp % (s.cp * s.dp)) bad++;
                if (k == MT_GROUP_EP && pos != r / s.etp % s.ep) bad++;
                if (k == MT_GROUP_EDP && pos != r / (s.etp * s.ep) % s.edp) bad++;
                if (k == MT_GROUP_PP) pp_dense[i] = r;
            }
            if (k != MT_GROUP_EMBD) {
                if (ng * gs != world) bad++;
                for (i = 0; i < world; i++) bad += seen[i] != 1;
            }
        }
        /* Megatron asserts the expert grid's pp groups equal the dense grid's. */
        {
            int ex[MAXW], eng = 0, egs = 0, size[5], mask[5] = {0, 0, 0, 0, 1};
            size[0] = s.etp; size[1] = 1; size[2] = s.ep; size[3] = s.edp; size[4] = s.pp;
            mt__masked_groups(world, size, mask, ex, &eng, &egs);
            if (memcmp(ex, pp_dense, (size_t)world * sizeof(int)) != 0) bad++;
        }
    }
    MT_EXPECT(bad == 0, "%d property violations", bad);
    MT_EXPECT(n_configs > 200, "only %d configs checked", n_configs);
}

static void test_bad_configs(void) {
    mt_parallel_sizes s;
    mt_parallel_config c;
    int ranks[MAXW], ng, gs;
    mt_status st;
    tl_quiet = 1;
    c = config(2, 2, 0, 2, 0);
    st = mt_parallel_resolve(12, &c, &s);
    MT_EXPECT(st == MT_ERR_ARG && strstr(tl_msg, "world size 12 is not divisible by tp*cp*pp = 2*2*2 = 8"), "%s", tl_msg);
    st = mt_parallel_groups(12, &c, MT_GROUP_TP, ranks, &ng, &gs);
    MT_EXPECT(st == MT_ERR_ARG && ng == 0 && gs == 0, "groups of a bad config");
    c = config(2, 0, 3, 0, 0);
    st = mt_parallel_resolve(8, &c, &s);
    MT_EXPECT(st == MT_ERR_ARG && strstr(tl_msg, "world size 8 is not divisible by etp*ep*pp = 2*3*1 = 6"), "%s", tl_msg);
    c = config(16, 0, 0, 0, 0);
    st = mt_parallel_resolve(8, &c, &s);
    MT_EXPECT(st == MT_ERR_ARG && strstr(tl_msg, "tp*cp*pp = 16*1*1 = 16"), "%s", tl_msg);
    c = config(-2, 0, 0, 0, 0);
    st = mt_parallel_resolve(8, &c, &s);
    MT_EXPECT(st == MT_ERR_ARG && strstr(tl_msg, "tp=-2"), "%s", tl_msg);
    st = mt_parallel_resolve(0, NULL, &s);
    MT_EXPECT(st == MT_ERR_ARG && strstr(tl_msg, "world size 0"), "%s", tl_msg);
    st = mt_parallel_resolve(3, NULL, &s);
    MT_EXPECT(st == MT_OK && s.dp == 3 && s.tp == 1, "NULL config is all defaults");
    tl_quiet = 0;
}

/* ------------------------------------------------------------------ live grids on host threads */

typedef struct {
    int world;
    mt_parallel_config cfg;
    int fails[MAXW], checks[MAXW];
    mt_status init_status[MAXW];
    char first[MAXW][1200];
} live_arg;

#define LCHECK(a, r, cond, ...)                                                                        \
    do {                                                                                               \
        (a)->checks[r]++;                                                                              \
        if (!(cond) && !(a)->fails[r]++) snprintf((a)->first[r], sizeof (a)->first[r], __VA_ARGS__); \
    } while (0)

static mt_status live_body(mt_comm *world, void *argp) {
    live_arg *a = (live_arg *)argp;
    int r = mt_comm_rank(world), k, ranks[MAXW], got[MAXW], ng, gs, g, i;
    mt_parallel par;
    mt_status st;
    if (r < 0 || r >= MAXW) return MT_ERR_INTERNAL;
    tl_quiet = 1;
    st = mt_parallel_init(&par, world, &a->cfg);
    tl_quiet = 0;
    a->init_status[r] = st;
    if (st != MT_OK) return st;
    LCHECK(a, r, par.rank == r && par.world == world, "rank");
    for (k = 0; k < MT_GROUP_COUNT; k++) {
        mt_comm *c = mt_parallel_comm(&par, (mt_group_kind)k);
        int my_g = -1, my_pos = -1;
        mt_parallel_groups(a->world, &a->cfg, (mt_group_kind)k, ranks, &ng, &gs);
        for (g = 0; g < ng; g++)
            for (i = 0; i < gs; i++)
                if (ranks[g * gs + i] == r) { my_g = g; my_pos = i; }
        if (my_g < 0) {
            LCHECK(a, r, c == NULL, "%s: rank %d is in no group but has a communicator", mt_group_name((mt_group_kind)k), r);
            continue;
        }
        LCHECK(a, r, c && mt_comm_size(c) == gs && mt_comm_rank(c) == my_pos && !strcmp(mt_comm_name(c), mt_group_name((mt_group_kind)k)),
               "%s: comm rank %d size %d name %s, want %d of %d", mt_group_name((mt_group_kind)k), mt_comm_rank(c),
               mt_comm_size(c), mt_comm_name(c), my_pos, gs);
        if (!c) continue;
        /* gather the world ranks over the group: exactly the table's group, in order */
        st = mt_comm_all_gather(c, &r, got, 1, MT_F32, NULL); /* 4-byte payload copied as is */
        LCHECK(a, r, st == MT_OK, "%s all_gather: %s", mt_group_name((mt_group_kind)k), mt_status_str(st));
        for (i = 0; i < gs; i++)
            LCHECK(a, r, got[i] == ranks[my_g * gs + i], "%s: member %d is world rank %d, want %d",
                   mt_group_name((mt_group_kind)k), i, got[i], ranks[my_g * gs + i]);
    }
    LCHECK(a, r, par.tp_rank == mt_comm_rank(par.tp) && par.dp_rank == mt_comm_rank(par.dp) &&
                     par.pp_rank == mt_comm_rank(par.pp) && par.cp_rank == mt_comm_rank(par.cp) &&
                     par.ep_rank == mt_comm_rank(par.ep) && par.edp_rank == mt_comm_rank(par.edp) &&
                     par.etp_rank == mt_comm_rank(par.etp),
           "coordinates differ from group ranks");
    LCHECK(a, r, par.is_first_stage == (par.pp_rank == 0) && par.in_embd == (par.embd != NULL), "stage flags");
    /* a dense weight gradient reduced over dp_cp: every member gets the same sum */
    {
        float x = (float)(r + 1), want = 0;
        mt_parallel_groups(a->world, &a->cfg, MT_GROUP_DP_CP, ranks, &ng, &gs);
        for (g = 0; g < ng; g++)
            for (i = 0; i < gs; i++)
                if (ranks[g * gs + i] == r)
                    for (k = 0; k < gs; k++) want += (float)(ranks[g * gs + k] + 1);
        st = mt_comm_all_reduce(par.dp_cp, &x, &x, 1, MT_F32, MT_SUM, NULL);
        LCHECK(a, r, st == MT_OK && x == want, "dp_cp sum %g want %g", x, want);
    }
    mt_parallel_free(&par);
    LCHECK(a, r, par.tp == NULL && par.etp_ep_pp == NULL, "free clears the communicators");
    return MT_OK;
}

static void run_live(int world, mt_parallel_config cfg) {
    live_arg *a = NULL;
    int r;
    mt_status st;
    MT_CHECK(mt_calloc(sizeof(live_arg), (void **)&a));
    a->world = world;
    a->cfg = cfg;
    st = mt_host_run(world, 20.0, live_body, a, NULL);
    MT_EXPECT(st == MT_OK, "world %d: %s", world, mt_status_str(st));
    for (r = 0; r < world; r++) {
        MT_EXPECT(a->fails[r] == 0 && a->checks[r] > 0, "world %d rank %d: %d of %d failed: %s", world, r, a->fails[r],
                  a->checks[r], a->first[r]);
    }
    mt_free(a);
}

static void test_live_world16_tp2_cp2_pp2(void) { run_live(16, config(2, 2, 0, 2, 0)); }
static void test_live_world8_tp2_pp2_ep2(void) { run_live(8, config(2, 0, 2, 2, 1)); }
static void test_live_world8_pp4(void) { run_live(8, config(2, 0, 0, 4, 0)); }
static void test_live_world1(void) { run_live(1, config(0, 0, 0, 0, 0)); }

static void test_live_bad_config(void) {
    live_arg *a = NULL;
    int r;
    mt_status st, sts[6];
    MT_CHECK(mt_calloc(sizeof(live_arg), (void **)&a));
    a->world = 6;
    a->cfg = config(4, 0, 0, 0, 0);
    st = mt_host_run(6, 5.0, live_body, a, sts);
    MT_EXPECT(st == MT_ERR_ARG, "world 6 tp 4: %s", mt_status_str(st));
    for (r = 0; r < 6; r++) MT_EXPECT(sts[r] == MT_ERR_ARG, "rank %d: %s", r, mt_status_str(sts[r]));
    mt_free(a);
}

int main(void) {
    MT_RUN(test_world16_tp2_cp2_pp2);
    MT_RUN(test_world8_tp2_pp2);
    MT_RUN(test_expert_grids);
    MT_RUN(test_embedding_group);
    MT_RUN(test_grid_properties);
    MT_RUN(test_bad_configs);
    MT_RUN(test_live_world16_tp2_cp2_pp2);
    MT_RUN(test_live_world8_tp2_pp2_ep2);
    MT_RUN(test_live_world8_pp4);
    MT_RUN(test_live_world1);
    MT_RUN(test_live_bad_config);
    return mt_test_summary("test_parallel");
}
