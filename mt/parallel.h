/* mt/parallel.h — the rank grid: which ranks share a tensor-, context-, data-, pipeline- and
 * expert-parallel group, in Megatron-Core's order tp-cp-ep-dp-pp (tp varies fastest).
 *
 *   mt_parallel_config cfg = {0};
 *   cfg.tp = 2; cfg.pp = 2;                         // 8 ranks -> dp = 2
 *   mt_parallel par;
 *   MT_TRY(mt_parallel_init(&par, world, &cfg));    // collective over the world communicator
 *   mt_comm_all_reduce(par.tp, x, x, n, MT_BF16, MT_SUM, stream);
 *   ...
 *   mt_parallel_free(&par);
 *
 * Defines
 *   mt_parallel_config, mt_parallel_sizes, mt_parallel_resolve
 *   mt_group_kind (MT_GROUP_TP, ...), mt_group_name, mt_parallel_groups (pure: no communicator)
 *   mt_parallel (this rank's coordinates and one mt_comm per group), mt_parallel_init/free,
 *   mt_parallel_comm
 *
 * The grid (parallel_state.py's RankGenerator)
 *   Dense layers: sizes (tp, cp, 1, dp, pp) with dp = world / (tp*cp*pp), so
 *     rank = tp_rank + tp*(cp_rank + cp*(dp_rank + dp*pp_rank)).
 *   Expert layers: sizes (etp, 1, ep, edp, pp) with edp = world / (etp*ep*pp), so
 *     rank = etp_rank + etp*(ep_rank + ep*(edp_rank + edp*pp_rank)).
 *   A group of a set of axes holds the ranks that differ only along those axes; within a group
 *   ranks are ordered with the leftmost axis fastest (dp_cp: cp fastest), and groups are
 *   numbered the same way over the other axes. Group rank = position in that list.
 *   Embedding group: the first and last rank of each pp group (one rank when pp = 1).
 *   Weight gradients of dense layers reduce over dp_cp; of expert layers over edp.
 *
 * Config: zero means the default: tp, cp, ep, pp default to 1; etp defaults to tp (Megatron's
 * expert_tensor_parallel_size = None).
 */
#ifndef MT_PARALLEL_H
#define MT_PARALLEL_H

#include "core.h"
#include "comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_parallel_config {
    int tp;  /* tensor parallel size */
    int cp;  /* context parallel size */
    int ep;  /* expert parallel size */
    int pp;  /* pipeline parallel size */
    int etp; /* expert tensor parallel size (0: same as tp) */
} mt_parallel_config;

/* Resolved sizes: no zeros; dp and edp derived from the world size. */
typedef struct mt_parallel_sizes {
    int world, tp, cp, ep, pp, etp, dp, edp;
} mt_parallel_sizes;

typedef enum {
    MT_GROUP_TP,        /* tensor parallel */
    MT_GROUP_CP,        /* context parallel */
    MT_GROUP_DP,        /* data parallel */
    MT_GROUP_DP_CP,     /* data x context: dense weight gradients */
    MT_GROUP_PP,        /* pipeline */
    MT_GROUP_MP,        /* model parallel: tp x pp */
    MT_GROUP_TP_CP,     /* tensor x context */
    MT_GROUP_TP_DP,     /* tensor x data */
    MT_GROUP_TP_DP_CP,  /* tensor x data x context */
    MT_GROUP_EMBD,      /* first and last pipeline stage (tied embeddings) */
    MT_GROUP_EP,        /* expert parallel */
    MT_GROUP_ETP,       /* expert tensor parallel */
    MT_GROUP_EDP,       /* expert data parallel: expert weight gradients */
    MT_GROUP_ETP_EP,    /* expert tensor x expert */
    MT_GROUP_ETP_EP_PP, /* expert tensor x expert x pipeline */
    MT_GROUP_COUNT
} mt_group_kind;

MT_API const char *mt_group_name(mt_group_kind k) {
    switch (k) {
        case MT_GROUP_TP: return "tp";
        case MT_GROUP_CP: return "cp";
        case MT_GROUP_DP: return "dp";
        case MT_GROUP_DP_CP: return "dp_cp";
        case MT_GROUP_PP: return "pp";
        case MT_GROUP_MP: return "mp";
        case MT_GROUP_TP_CP: return "tp_cp";
        case MT_GROUP_TP_DP: return "tp_dp";
        case MT_GROUP_TP_DP_CP: return "tp_dp_cp";
        case MT_GROUP_EMBD: return "embd";
        case MT_GROUP_EP: return "ep";
        case MT_GROUP_ETP: return "etp";
        case MT_GROUP_EDP: return "edp";
        case MT_GROUP_ETP_EP: return "etp_ep";
        case MT_GROUP_ETP_EP_PP: return "etp_ep_pp";
        default: return "?";
    }
}

/* Checks the config against the world size and fills the resolved sizes. */
MT_API mt_status mt_parallel_resolve(int world, const mt_parallel_config *cfg, mt_parallel_sizes *out) {
    mt_parallel_config c;
    long model, expert;
    memset(out, 0, sizeof *out);
    if (world < 1) return mt_errorf(MT_ERR_ARG, "mt_parallel: world size %d, expected >= 1", world);
    memset(&c, 0, sizeof c);
    if (cfg) c = *cfg;
    if (c.tp < 0 || c.cp < 0 || c.ep < 0 || c.pp < 0 || c.etp < 0)
        return mt_errorf(MT_ERR_ARG, "mt_parallel: negative size in tp=%d cp=%d ep=%d pp=%d etp=%d (0 means default)",
                         c.tp, c.cp, c.ep, c.pp, c.etp);
    if (!c.tp) c.tp = 1;
    if (!c.cp) c.cp = 1;
    if (!c.ep) c.ep = 1;
    if (!c.pp) c.pp = 1;
    if (!c.etp) c.etp = c.tp;
    model = (long)c.tp * c.cp * c.pp;
    expert = (long)c.etp * c.ep * c.pp;
    if (model > world || world % model)
        return mt_errorf(MT_ERR_ARG,
                         "mt_parallel: world size %d is not divisible by tp*cp*pp = %d*%d*%d = %ld (tensor, context "
                         "and pipeline parallel sizes)",
                         world, c.tp, c.cp, c.pp, model);
    if (expert > world || world % expert)
        return mt_errorf(MT_ERR_ARG,
                         "mt_parallel: world size %d is not divisible by etp*ep*pp = %d*%d*%d = %ld (expert tensor, "
                         "expert and pipeline parallel sizes)",
                         world, c.etp, c.ep, c.pp, expert);
    out->world = world;
    out->tp = c.tp; out->cp = c.cp; out->ep = c.ep; out->pp = c.pp; out->etp = c.etp;
    out->dp = (int)(world / model);
    out->edp = (int)(world / expert);
    return MT_OK;
}

/* Megatron's generate_masked_orthogonal_rank_groups over 5 axes (leftmost fastest). */
MT_API void mt__masked_groups(int world, const int size[5], const int mask[5], int *ranks, int *n_groups,
                              int *group_size) {
    int ms[5], mst[5], us[5], ust[5], nm = 0, nu = 0, stride = 1, d, g, i, gs = 1, ng;
    for (d = 0; d < 5; d++) {
        if (mask[d]) { ms[nm] = size[d]; mst[nm++] = stride; gs *= size[d]; }
        else { us[nu] = size[d]; ust[nu++] = stride; }
        stride *= size[d];
    }
    ng = world / gs;
    for (g = 0; g < ng; g++) {
        int base = 0, rem = g;
        for (d = 0; d < nu; d++) { base += (rem % us[d]) * ust[d]; rem /= us[d]; }
        for (i = 0; i < gs; i++) {
            int off = 0, r = i;
            for (d = 0; d < nm; d++) { off += (r % ms[d]) * mst[d]; r /= ms[d]; }
            ranks[g * gs + i] = base + off;
        }
    }
    *n_groups = ng;
    *group_size = gs;
}

/* The groups of one kind, without any communicator: group g is ranks[g*group_size ..
 * (g+1)*group_size), in group-rank order. `ranks` must hold `world` ints. */
MT_API mt_status mt_parallel_groups(int world, const mt_parallel_config *cfg, mt_group_kind kind, int *ranks,
                                    int *n_groups, int *group_size) {
    mt_parallel_sizes s;
    int dense[5], expert[5], mask[5] = {0, 0, 0, 0, 0};
    const int *size = dense;
    enum { TP = 0, CP = 1, EP = 2, DP = 3, PP = 4 };
    *n_groups = *group_size = 0;
    MT_TRY(mt_parallel_resolve(world, cfg, &s));
    dense[TP] = s.tp; dense[CP] = s.cp; dense[EP] = 1; dense[DP] = s.dp; dense[PP] = s.pp;
    expert[TP] = s.etp; expert[CP] = 1; expert[EP] = s.ep; expert[DP] = s.edp; expert[PP] = s.pp;
    switch (kind) {
        case MT_GROUP_TP: mask[TP] = 1; break;
        case MT_GROUP_CP: mask[CP] = 1; break;
        case MT_GROUP_DP: mask[DP] = 1; break;
        case MT_GROUP_DP_CP: mask[DP] = mask[CP] = 1; break;
        case MT_GROUP_PP: mask[PP] = 1; break;
        case MT_GROUP_MP: mask[TP] = mask[PP] = 1; break;
        case MT_GROUP_TP_CP: mask[TP] = mask[CP] = 1; break;
        case MT_GROUP_TP_DP: mask[TP] = mask[DP] = 1; break;
        case MT_GROUP_TP_DP_CP: mask[TP] = mask[DP] = mask[CP] = 1; break;
        case MT_GROUP_EMBD: {
            int g, ng = 0, gs = 0;
            mask[PP] = 1;
            mt__masked_groups(world, dense, mask, ranks, &ng, &gs);
            /* keep the first and the last rank of each pipeline group */
            for (g = 0; g < ng; g++) {
                int first = ranks[g * gs], last = ranks[g * gs + gs - 1];
                if (gs == 1) {
                    ranks[g] = first;
                } else {
                    ranks[2 * g] = first;
                    ranks[2 * g + 1] = last;
                }
            }
            *n_groups = ng;
            *group_size = gs == 1 ? 1 : 2;
            return MT_OK;
        }
        case MT_GROUP_EP: size = expert; mask[EP] = 1; break;
        case MT_GROUP_ETP: size = expert; mask[TP] = 1; break;
        case MT_GROUP_EDP: size = expert; mask[DP] = 1; break;
        case MT_GROUP_ETP_EP: size = expert; mask[TP] = mask[EP] = 1; break;
        case MT_GROUP_ETP_EP_PP: size = expert; mask[TP] = mask[EP] = mask[PP] = 1; break;
        default: return mt_errorf(MT_ERR_ARG, "mt_parallel_groups: unknown group kind %d", (int)kind);
    }
    mt__masked_groups(world, size, mask, ranks, n_groups, group_size);
    return MT_OK;
}

/* This rank's place in the grid and its communicators (owned; NULL for a group this rank is not
 * in, which happens only for embd). Every comm's rank is this rank's position in the group. */
typedef struct mt_parallel {
    mt_parallel_sizes size;
    int rank;                                    /* in the world communicator */
    int tp_rank, cp_rank, dp_rank, pp_rank;      /* dense grid coordinates */
    int etp_rank, ep_rank, edp_rank;             /* expert grid coordinates */
    int is_first_stage, is_last_stage, in_embd;  /* pipeline position; member of the embd group */
    mt_comm *world;                              /* not owned */
    mt_comm *tp, *cp, *dp, *dp_cp, *pp, *mp, *tp_cp, *tp_dp, *tp_dp_cp, *embd;
    mt_comm *ep, *etp, *edp, *etp_ep, *etp_ep_pp;
} mt_parallel;

/* The field of p that holds the communicator of a group kind. */
MT_API mt_comm **mt__parallel_slot(mt_parallel *p, mt_group_kind k) {
    switch (k) {
        case MT_GROUP_TP: return &p->tp;
        case MT_GROUP_CP: return &p->cp;
        case MT_GROUP_DP: return &p->dp;
        case MT_GROUP_DP_CP: return &p->dp_cp;
        case MT_GROUP_PP: return &p->pp;
        case MT_GROUP_MP: return &p->mp;
        case MT_GROUP_TP_CP: return &p->tp_cp;
        case MT_GROUP_TP_DP: return &p->tp_dp;
        case MT_GROUP_TP_DP_CP: return &p->tp_dp_cp;
        case MT_GROUP_EMBD: return &p->embd;
        case MT_GROUP_EP: return &p->ep;
        case MT_GROUP_ETP: return &p->etp;
        case MT_GROUP_EDP: return &p->edp;
        case MT_GROUP_ETP_EP: return &p->etp_ep;
        case MT_GROUP_ETP_EP_PP: return &p->etp_ep_pp;
        default: return NULL;
    }
}

MT_API mt_comm *mt_parallel_comm(mt_parallel *p, mt_group_kind k) {
    mt_comm **s = mt__parallel_slot(p, k);
    return s ? *s : NULL;
}

MT_API void mt_parallel_free(mt_parallel *p) {
    int k;
    if (!p) return;
    for (k = 0; k < MT_GROUP_COUNT; k++) {
        mt_comm **s = mt__parallel_slot(p, (mt_group_kind)k);
        if (s && *s) {
            mt_comm_destroy(*s);
            *s = NULL;
        }
    }
}

/* Collective over `world` (every rank calls it with the same cfg): one split per group kind. */
MT_API mt_status mt_parallel_init(mt_parallel *p, mt_comm *world, const mt_parallel_config *cfg) {
    int *ranks = NULL, n = mt_comm_size(world), r = mt_comm_rank(world), k;
    mt_status st = MT_OK;
    memset(p, 0, sizeof *p);
    if (!world) return mt_errorf(MT_ERR_ARG, "mt_parallel_init: world communicator is NULL");
    MT_TRY(mt_parallel_resolve(n, cfg, &p->size));
    p->world = world;
    p->rank = r;
    p->tp_rank = r % p->size.tp;
    p->cp_rank = r / p->size.tp % p->size.cp;
    p->dp_rank = r / (p->size.tp * p->size.cp) % p->size.dp;
    p->pp_rank = r / (p->size.tp * p->size.cp * p->size.dp);
    p->etp_rank = r % p->size.etp;
    p->ep_rank = r / p->size.etp % p->size.ep;
    p->edp_rank = r / (p->size.etp * p->size.ep) % p->size.edp;
    p->is_first_stage = p->pp_rank == 0;
    p->is_last_stage = p->pp_rank == p->size.pp - 1;
    p->in_embd = p->is_first_stage || p->is_last_stage;
    MT_TRY(mt_calloc((size_t)n * sizeof(int), (void **)&ranks));
    for (k = 0; k < MT_GROUP_COUNT; k++) {
        int ng = 0, gs = 0, g, i, color = MT_COMM_NO_COLOR, key = 0;
        st = mt_parallel_groups(n, cfg, (mt_group_kind)k, ranks, &ng, &gs);
        if (st != MT_OK) break;
        for (g = 0; g < ng; g++)
            for (i = 0; i < gs; i++)
                if (ranks[g * gs + i] == r) { color = g; key = i; }
        st = mt_comm_split(world, color, key, mt_group_name((mt_group_kind)k), mt__parallel_slot(p, (mt_group_kind)k));
        if (st != MT_OK) break;
    }
    mt_free(ranks);
    if (st != MT_OK) {
        mt_parallel_free(p);
        return st;
    }
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* MT_PARALLEL_H */
