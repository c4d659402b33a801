/* mt/optim.h — AdamW over a stage's parameter buffer, with global gradient-norm clipping.
 *
 *   mt_optim opt;  MT_TRY(mt_optim_init(&cx, &opt, &model, host_init));
 *   ... forward/backward: gradients in model.grad_mem ...
 *   mt_optim_hp hp = {0}; hp.lr = lr; hp.weight_decay = 0.1f; hp.clip_grad = 1.0f;
 *   MT_TRY(mt_optim_step(&cx, &opt, &model, &hp));   // clips, updates, zeroes the gradients
 *
 * The gradient norm and the clip coefficient stay on the device: a step needs no host sync.
 * mt_optim_grad_norm reads the last norm back (a sync) for logging.
 * Weight decay applies to 2-D weights only (mt_param.decay), not to biases and norm weights.
 *
 * Defines: mt_optim_hp, mt_optim, mt_optim_init, mt_optim_step, mt_optim_grad_norm, mt_optim_free,
 *   mt_optim_resolve_hp, mt_param_in_norm (shared with mt/ddp.h)
 */
#ifndef MT_OPTIM_H
#define MT_OPTIM_H
#include "gpt.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_optim_hp {
    float lr;
    float beta1, beta2, eps;   /* defaults 0.9, 0.95, 1e-8 */
    float weight_decay;        /* default 0 */
    float clip_grad;           /* max global norm; 0 = no clipping */
} mt_optim_hp;

typedef struct mt_optim {
    size_t n;        /* elements, = the model's num_params */
    float *master;   /* (n) fp32 master weights when the params are bf16; NULL otherwise */
    void *m, *v;     /* (n) Adam moments (stat type) */
    void *scalars;   /* 2 stat-type scalars on the device: [0] gradient norm squared, [1] clip coefficient */
    int step;
    mt_device device;
    mt_adamw_multi_plan plan; /* every parameter tensor: one AdamW launch per step on the GPU */
} mt_optim;

/* AdamW hyper-parameters for step `step` (1-based) with the defaults filled in; weight_decay is
 * hp->weight_decay (set it to 0 for the params without decay). */
MT_API void mt_optim_resolve_hp(const mt_optim_hp *hp, int step, mt_adamw_hp *out) {
    out->lr = hp->lr;
    out->beta1 = hp->beta1 != 0 ? hp->beta1 : 0.9f;
    out->beta2 = hp->beta2 != 0 ? hp->beta2 : 0.95f;
    out->eps = hp->eps != 0 ? hp->eps : 1e-8f;
    out->weight_decay = hp->weight_decay;
    out->step = step;
}

MT_API mt_status mt_optim_init(const mt_ctx *cx, mt_optim *o, const mt_gpt *m, const float *host_init) {
    memset(o, 0, sizeof *o);
    o->n = m->num_params;
    o->device = cx->device;
    size_t ss = mt_dtype_size(mt_stat_dtype(cx));
    MT_TRY(mt_device_alloc(cx->device, o->n * ss, &o->m));
    MT_TRY(mt_device_alloc(cx->device, o->n * ss, &o->v));
    MT_TRY(mt_device_alloc(cx->device, 2 * ss, &o->scalars));
    MT_TRY(mt_zero(cx, o->m, o->n * ss));
    MT_TRY(mt_zero(cx, o->v, o->n * ss));
    if (cx->dtype == MT_BF16 || cx->dtype == MT_F16) {
        MT_TRY(mt_device_alloc(cx->device, o->n * sizeof(float), (void **)&o->master));
        mt_ctx f32 = *cx;
        f32.dtype = MT_F32;
        MT_TRY(mt_copy_from_f32(&f32, o->master, host_init, o->n));
    }
    /* the table of tensors for the one-launch AdamW (weight decay on the 2-D weights only) */
    size_t es = mt_dtype_size(cx->dtype);
    mt_adamw_tensor *t = NULL;
    MT_TRY(mt_calloc(sizeof *t * (size_t)(m->n_params > 0 ? m->n_params : 1), (void **)&t));
    for (int i = 0; i < m->n_params; i++) {
        const mt_param *p = &m->params[i];
        size_t off = p->offset;
        t[i].param = (char *)m->param_mem + off * es;
        t[i].master = o->master ? o->master + off : NULL;
        t[i].m = (char *)o->m + off * ss;
        t[i].v = (char *)o->v + off * ss;
        t[i].grad = (const char *)m->grad_mem + off * es;
        t[i].n = (size_t)(p->rows * p->cols);
        t[i].decay = p->decay;
    }
    mt_status st = mt_adamw_multi_plan_init(cx, &o->plan, t, m->n_params);
    mt_free(t);
    return st;
}

MT_API void mt_optim_free(mt_optim *o) {
    mt_adamw_multi_plan_free(&o->plan);
    mt_device_free(o->device, o->master);
    mt_device_free(o->device, o->m);
    mt_device_free(o->device, o->v);
    mt_device_free(o->device, o->scalars);
    memset(o, 0, sizeof *o);
}

/* Clip by the global norm of all gradients, one AdamW step, zero the gradients. */
MT_API mt_status mt_optim_step(const mt_ctx *cx, mt_optim *o, mt_gpt *m, const mt_optim_hp *hp_in) {
    size_t es = mt_dtype_size(cx->dtype), ss = mt_dtype_size(mt_stat_dtype(cx));
    char *norm_sq = (char *)o->scalars, *coef = norm_sq + ss;
    MT_TRY(mt_gpt_grad_sumsq(cx, m, norm_sq));  /* tp > 1: split tensors summed over tp, replicated ones once */
    MT_TRY(mt_clip_coef(cx, coef, norm_sq, hp_in->clip_grad));
    o->step++;
    mt_adamw_hp hp;
    mt_optim_resolve_hp(hp_in, o->step, &hp);
    MT_TRY(mt_adamw_multi_plan_step(cx, &o->plan, &hp, hp_in->weight_decay, coef, 0));
    return mt_zero(cx, m->grad_mem, o->n * es);
}

/* 1 when p's gradient counts in the global norm on this rank: a tensor-parallel duplicate
 * (split == MT_SPLIT_NONE) counts on tp rank 0 only, and the tied embedding only on the first
 * stage (a last stage that is not first holds a copy), so a sum over all ranks counts each once. */
MT_API int mt_param_in_norm(const mt_gpt *m, const mt_param *p) {
    if (p->split == MT_SPLIT_NONE && m->par.tp_size > 1 && m->par.tp_rank != 0) return 0;
    if (p->tied && !m->first) return 0;
    return 1;
}

/* The gradient norm of the last step (before clipping). Synchronises with the device. */
MT_API mt_status mt_optim_grad_norm(const mt_ctx *cx, const mt_optim *o, double *norm) {
    float v = 0;
    MT_TRY(mt_copy_to_f32(cx, &v, o->scalars, mt_stat_dtype(cx), 1));
    *norm = sqrt((double)v);
    return MT_OK;
}

#ifdef __cplusplus
}
#endif
#endif
