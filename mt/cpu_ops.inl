/* mt/cpu_ops.inl — the CPU reference ops, written once over a real type R and included twice by
 * mt/cpu_ops.h: R = float gives mt_<op>_cpu_f32, R = double gives mt_<op>_cpu_f64 (the float64
 * build is what the finite-difference tests check).
 *
 * Rules (the same as the GPU kernels):
 *   - weight and bias gradients accumulate (+=), so micro-batches add up;
 *   - activation gradients are assigned (=); an optional `dresid` input is added to them
 *     (the residual stream's gradient), and may alias the output;
 *   - N = B*T rows; shapes in comments are row-major.
 * Layout of the fused QKV activation, Megatron's grouped order: (B, T, Hkv, G+2, D) with
 * G = H/Hkv query heads per key/value group, then that group's K and V. Attention output is
 * (B, T, H, D) with head h = g*G + j. Splitting the rows of the QKV weight by tensor-parallel
 * rank therefore hands each rank whole groups.
 */
#ifndef MT_R
#error "define MT_R (float or double) and MT_SFX (f32 or f64) before including cpu_ops.inl"
#endif

#define MT__CAT3(a, b, c) a##b##c
#define MT__XCAT3(a, b, c) MT__CAT3(a, b, c)
#define MT__FN(name) MT__XCAT3(mt_, name, MT_SFX)

/* ---- token + position embedding.  out (B,T,C) = wte[tok] + wpe[pos_offset + t]
 * Only vocabulary rows [vstart, vstart + vcount) live here (vocab-parallel); other ids add 0. */
MT_API void MT__FN(embedding_fwd_cpu_)(MT_R *out, const int32_t *tokens, const MT_R *wte, const MT_R *wpe,
                                       int B, int T, int C, int pos_offset, int vstart, int vcount) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            MT_R *o = out + ((size_t)b * T + t) * C;
            int id = tokens[b * T + t] - vstart;
            const MT_R *we = (id >= 0 && id < vcount) ? wte + (size_t)id * C : NULL;
            const MT_R *pe = wpe ? wpe + (size_t)(pos_offset + t) * C : NULL;
            for (int c = 0; c < C; c++) o[c] = (we ? we[c] : 0) + (pe ? pe[c] : 0);
        }
}

MT_API void MT__FN(embedding_bwd_cpu_)(MT_R *dwte, MT_R *dwpe, const MT_R *dout, const int32_t *tokens,
                                       int B, int T, int C, int pos_offset, int vstart, int vcount) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const MT_R *d = dout + ((size_t)b * T + t) * C;
            int id = tokens[b * T + t] - vstart;
            if (dwte && id >= 0 && id < vcount)
                for (int c = 0; c < C; c++) dwte[(size_t)id * C + c] += d[c];
            if (dwpe)
                for (int c = 0; c < C; c++) dwpe[(size_t)(pos_offset + t) * C + c] += d[c];
        }
}

/* ---- LayerNorm over C (eps 1e-5).  out = (x - mean) * rstd * w + b */
MT_API void MT__FN(layernorm_fwd_cpu_)(MT_R *out, MT_R *mean, MT_R *rstd, const MT_R *inp, const MT_R *w,
                                       const MT_R *bias, int N, int C) {
    for (int i = 0; i < N; i++) {
        const MT_R *x = inp + (size_t)i * C;
        MT_R m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        MT_R s = (MT_R)1 / (MT_R)sqrt((double)(v / C + (MT_R)1e-5));
        for (int c = 0; c < C; c++) out[(size_t)i * C + c] = (x[c] - m) * s * w[c] + (bias ? bias[c] : 0);
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = s;
    }
}

MT_API void MT__FN(layernorm_bwd_cpu_)(MT_R *dinp, MT_R *dw, MT_R *db, const MT_R *dout, const MT_R *dresid,
                                       const MT_R *inp, const MT_R *w, const MT_R *mean, const MT_R *rstd,
                                       int N, int C) {
    for (int i = 0; i < N; i++) {
        const MT_R *x = inp + (size_t)i * C, *d = dout + (size_t)i * C;
        MT_R m = mean[i], s = rstd[i], dnorm_mean = 0, dnorm_norm_mean = 0;
        for (int c = 0; c < C; c++) {
            MT_R xh = (x[c] - m) * s, dn = w[c] * d[c];
            dnorm_mean += dn;
            dnorm_norm_mean += dn * xh;
            if (dw) dw[c] += xh * d[c];
            if (db) db[c] += d[c];
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int c = 0; c < C; c++) {
            MT_R xh = (x[c] - m) * s;
            MT_R g = (w[c] * d[c] - dnorm_mean - xh * dnorm_norm_mean) * s;
            size_t k = (size_t)i * C + c;
            dinp[k] = (dresid ? dresid[k] : 0) + g;
        }
    }
}

/* ---- RMSNorm over C (eps 1e-5).  out = x * rstd * w,  rstd = 1/sqrt(mean(x^2) + eps) */
MT_API void MT__FN(rmsnorm_fwd_cpu_)(MT_R *out, MT_R *rstd, const MT_R *inp, const MT_R *w, int N, int C) {
    for (int i = 0; i < N; i++) {
        const MT_R *x = inp + (size_t)i * C;
        MT_R ss = 0;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        MT_R s = (MT_R)1 / (MT_R)sqrt((double)(ss / C + (MT_R)1e-5));
        for (int c = 0; c < C; c++) out[(size_t)i * C + c] = x[c] * s * w[c];
        if (rstd) rstd[i] = s;
    }
}

MT_API void MT__FN(rmsnorm_bwd_cpu_)(MT_R *dinp, MT_R *dw, const MT_R *dout, const MT_R *dresid, const MT_R *inp,
                                     const MT_R *w, const MT_R *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        const MT_R *x = inp + (size_t)i * C, *d = dout + (size_t)i * C;
        MT_R s = rstd[i], dot = 0;
        for (int c = 0; c < C; c++) {
            dot += w[c] * d[c] * x[c] * s;
            if (dw) dw[c] += x[c] * s * d[c];
        }
        dot /= C;
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            dinp[k] = (dresid ? dresid[k] : 0) + s * (w[c] * d[c] - x[c] * s * dot);
        }
    }
}

/* ---- linear.  out (N,OC) = inp (N,IC) @ w (OC,IC)^T + bias (OC) + resid (N,OC); bias, resid optional */
MT_API void MT__FN(matmul_fwd_cpu_)(MT_R *out, const MT_R *inp, const MT_R *w, const MT_R *bias, const MT_R *resid,
                                    int N, int IC, int OC) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            const MT_R *x = inp + (size_t)i * IC, *wr = w + (size_t)o * IC;
            MT_R acc = bias ? bias[o] : 0;
            for (int k = 0; k < IC; k++) acc += x[k] * wr[k];
            size_t idx = (size_t)i * OC + o;
            out[idx] = acc + (resid ? resid[idx] : 0);
        }
}

/* dinp (N,IC) = dout @ w;  dw (OC,IC) += dout^T @ inp;  dbias (OC) += sum_rows dout.  Any output may be NULL. */
MT_API void MT__FN(matmul_bwd_cpu_)(MT_R *dinp, MT_R *dw, MT_R *dbias, const MT_R *dout, const MT_R *inp,
                                    const MT_R *w, int N, int IC, int OC) {
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) {
            MT_R *dx = dinp + (size_t)i * IC;
            for (int k = 0; k < IC; k++) dx[k] = 0;
            for (int o = 0; o < OC; o++) {
                MT_R g = dout[(size_t)i * OC + o];
                const MT_R *wr = w + (size_t)o * IC;
                for (int k = 0; k < IC; k++) dx[k] += g * wr[k];
            }
        }
    }
    if (dw || dbias) {
#pragma omp parallel for schedule(static)
        for (int o = 0; o < OC; o++) {
            MT_R *dwr = dw ? dw + (size_t)o * IC : NULL;
            MT_R bsum = 0;
            for (int i = 0; i < N; i++) {
                MT_R g = dout[(size_t)i * OC + o];
                bsum += g;
                if (dwr) {
                    const MT_R *x = inp + (size_t)i * IC;
                    for (int k = 0; k < IC; k++) dwr[k] += g * x[k];
                }
            }
            if (dbias) dbias[o] += bsum;
        }
    }
}

/* ---- GELU, tanh approximation */
MT_API void MT__FN(gelu_fwd_cpu_)(MT_R *out, const MT_R *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = (MT_R)(0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
    }
}

MT_API void MT__FN(gelu_bwd_cpu_)(MT_R *dinp, const MT_R *inp, const MT_R *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x = inp[i], u = 0.7978845608028654 * (x + 0.044715 * x * x * x), th = tanh(u);
        double du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] = (MT_R)(dout[i] * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du));
    }
}

/* ---- SwiGLU.  inp (N, 2F) = [gate | up];  out (N,F) = silu(gate) * up */
MT_API void MT__FN(swiglu_fwd_cpu_)(MT_R *out, const MT_R *inp, int N, int F) {
    for (int i = 0; i < N; i++)
        for (int f = 0; f < F; f++) {
            double g = inp[(size_t)i * 2 * F + f], u = inp[(size_t)i * 2 * F + F + f];
            out[(size_t)i * F + f] = (MT_R)(g / (1.0 + exp(-g)) * u);
        }
}

MT_API void MT__FN(swiglu_bwd_cpu_)(MT_R *dinp, const MT_R *inp, const MT_R *dout, int N, int F) {
    for (int i = 0; i < N; i++)
        for (int f = 0; f < F; f++) {
            double g = inp[(size_t)i * 2 * F + f], u = inp[(size_t)i * 2 * F + F + f];
            double sg = 1.0 / (1.0 + exp(-g)), d = dout[(size_t)i * F + f];
            dinp[(size_t)i * 2 * F + f] = (MT_R)(d * u * sg * (1.0 + g * (1.0 - sg)));
            dinp[(size_t)i * 2 * F + F + f] = (MT_R)(d * g * sg);
        }
}

/* ---- RoPE on the fused QKV activation (B, T, Hkv, G+2, D): rotates the G query heads and the key
 * head of each group, copies V. Pairs (i, i + D/2) rotate by angle pos * theta^(-2i/D), pos =
 * pos_offset + t. `dir` = +1 forward, -1 backward (the inverse rotation). out may alias inp. */
MT_API void MT__FN(rope_cpu_)(MT_R *out, const MT_R *inp, int B, int T, int Hkv, int G, int D, int pos_offset,
                              double theta, int dir) {
    int half = D / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int g = 0; g < Hkv; g++)
                for (int j = 0; j < G + 2; j++) {
                    size_t base = ((((size_t)b * T + t) * Hkv + g) * (G + 2) + j) * D;
                    if (j == G + 1) {  /* V */
                        for (int i = 0; i < D; i++) out[base + i] = inp[base + i];
                        continue;
                    }
                    for (int i = 0; i < half; i++) {
                        double ang = (double)(pos_offset + t) * pow(theta, -2.0 * i / D);
                        double c = cos(ang), s = dir * sin(ang);
                        double x0 = inp[base + i], x1 = inp[base + i + half];
                        out[base + i] = (MT_R)(x0 * c - x1 * s);
                        out[base + i + half] = (MT_R)(x0 * s + x1 * c);
                    }
                }
}

/* ---- attention.  qkv (B,T,Hkv,G+2,D) -> out (B,T,H,D), lse (B,H,T) = log sum_j exp(s_ij), scale 1/sqrt(D).
 * The backward recomputes the probabilities from lse, as the fused GPU kernel does. */
MT_API void MT__FN(attention_fwd_cpu_)(MT_R *out, MT_R *lse, const MT_R *qkv, int B, int T, int Hkv, int G, int D,
                                       int causal) {
    int H = Hkv * G;
    size_t row = (size_t)Hkv * (G + 2) * D;
    double scale = 1.0 / sqrt((double)D);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / G, j = h % G;
            double *s = (double *)MT_MALLOC(sizeof(double) * (size_t)T);
            for (int t = 0; t < T; t++) {
                const MT_R *q = qkv + ((size_t)b * T + t) * row + ((size_t)g * (G + 2) + j) * D;
                int tend = causal ? t + 1 : T;
                double mx = -INFINITY, sum = 0;
                for (int u = 0; u < tend; u++) {
                    const MT_R *k = qkv + ((size_t)b * T + u) * row + ((size_t)g * (G + 2) + G) * D;
                    double dot = 0;
                    for (int i = 0; i < D; i++) dot += (double)q[i] * k[i];
                    s[u] = dot * scale;
                    if (s[u] > mx) mx = s[u];
                }
                for (int u = 0; u < tend; u++) sum += exp(s[u] - mx);
                double l = mx + log(sum);
                for (int u = 0; u < tend; u++) s[u] = exp(s[u] - l);
                MT_R *o = out + (((size_t)b * T + t) * H + h) * D;
                for (int i = 0; i < D; i++) {
                    double acc = 0;
                    for (int u = 0; u < tend; u++)
                        acc += s[u] * qkv[((size_t)b * T + u) * row + ((size_t)g * (G + 2) + G + 1) * D + i];
                    o[i] = (MT_R)acc;
                }
                lse[((size_t)b * H + h) * T + t] = (MT_R)l;
            }
            MT_FREE(s);
        }
}

/* dqkv (B,T,Hkv,G+2,D) = d(out)/d(qkv) applied to dout (B,T,H,D).  Assigns dqkv. */
MT_API void MT__FN(attention_bwd_cpu_)(MT_R *dqkv, const MT_R *dout, const MT_R *out, const MT_R *lse,
                                       const MT_R *qkv, int B, int T, int Hkv, int G, int D, int causal) {
    int H = Hkv * G;
    size_t row = (size_t)Hkv * (G + 2) * D;
    double scale = 1.0 / sqrt((double)D);
    memset(dqkv, 0, sizeof(MT_R) * (size_t)B * T * row);
    /* heads of one group write the same dK/dV rows: parallelise over (b, g) only */
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < Hkv; g++)
            for (int j = 0; j < G; j++) {
                int h = g * G + j;
                for (int t = 0; t < T; t++) {
                    size_t qoff = ((size_t)b * T + t) * row + ((size_t)g * (G + 2) + j) * D;
                    const MT_R *q = qkv + qoff;
                    const MT_R *dO = dout + (((size_t)b * T + t) * H + h) * D;
                    const MT_R *O = out + (((size_t)b * T + t) * H + h) * D;
                    double l = lse[((size_t)b * H + h) * T + t], delta = 0;
                    for (int i = 0; i < D; i++) delta += (double)dO[i] * O[i];
                    int tend = causal ? t + 1 : T;
                    for (int u = 0; u < tend; u++) {
                        size_t koff = ((size_t)b * T + u) * row + ((size_t)g * (G + 2) + G) * D, voff = koff + D;
                        double dot = 0, dp = 0;
                        for (int i = 0; i < D; i++) dot += (double)q[i] * qkv[koff + i];
                        double p = exp(dot * scale - l);
                        for (int i = 0; i < D; i++) dp += (double)dO[i] * qkv[voff + i];
                        double ds = p * (dp - delta) * scale;
                        for (int i = 0; i < D; i++) {
                            dqkv[voff + i] += (MT_R)(p * dO[i]);
                            dqkv[qoff + i] += (MT_R)(ds * qkv[koff + i]);
                            dqkv[koff + i] += (MT_R)(ds * q[i]);
                        }
                    }
                }
            }
}

/* ---- softmax cross-entropy, forward and backward in one pass over each row of logits (N, Vp).
 * Columns >= V are padding (ignored, gradient 0). A target < 0 is ignored (loss 0, gradient 0).
 * losses (N) = lse - logit[target];  dlogits = (softmax - onehot) * dscale, may alias logits, may be NULL. */
MT_API void MT__FN(xent_cpu_)(MT_R *losses, MT_R *dlogits, const MT_R *logits, const int32_t *targets, MT_R dscale,
                              int N, int V, int Vp) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const MT_R *x = logits + (size_t)i * Vp;
        int tgt = targets[i];
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
        for (int v = 0; v < V; v++) sum += exp(x[v] - mx);
        double l = mx + log(sum);
        double xt = tgt >= 0 ? (double)x[tgt] : 0;
        losses[i] = tgt >= 0 ? (MT_R)(l - xt) : 0;
        if (!dlogits) continue;
        MT_R *d = dlogits + (size_t)i * Vp;
        for (int v = 0; v < Vp; v++) {
            double p = v < V ? exp(x[v] - l) : 0;
            d[v] = tgt >= 0 ? (MT_R)((p - (v == tgt ? 1.0 : 0.0)) * dscale) : 0;
        }
    }
}

/* ---- residual.  out = a + b;  backward: da += dout, db += dout */
MT_API void MT__FN(residual_fwd_cpu_)(MT_R *out, const MT_R *a, const MT_R *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
MT_API void MT__FN(residual_bwd_cpu_)(MT_R *da, MT_R *db, const MT_R *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}

/* ---- vocab-parallel softmax cross-entropy (tensor parallelism). This rank holds the logit columns
 * [vstart, vstart + Vl) of the padded vocabulary; global columns >= V are padding. Two parts, with the
 * tp group's exchange between them (mt/tensor_parallel.h), so the full logits are never gathered:
 *   local:  stats (3, N): [0][i] max over the local real columns (-inf when there are none),
 *           [1][i] sum of exp(x - that max) (0 when none), [2][i] the target's logit when the target
 *           is one of the local columns, else 0;
 *   finish: all (tp, 3, N), every rank's stats in rank order: M = max_q m_q, S = sum_q s_q e^(m_q - M),
 *           xt = sum_q t_q (one rank holds the target); losses (N) = M + log S - xt; dlogits over the
 *           local columns = (exp(x - M) / S - onehot) * dscale, 0 in padding (may alias logits, or NULL).
 * A target < 0 or >= V is ignored: loss 0, gradient row 0. */
MT_API void MT__FN(vocab_xent_local_cpu_)(MT_R *stats, const MT_R *logits, const int32_t *targets, int N, int V,
                                          int Vl, int vstart) {
    int nreal = V - vstart < Vl ? (V - vstart > 0 ? V - vstart : 0) : Vl;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const MT_R *x = logits + (size_t)i * Vl;
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < nreal; v++) mx = x[v] > mx ? x[v] : mx;
        for (int v = 0; v < nreal; v++) sum += exp(x[v] - mx);
        int t = targets[i] - vstart;
        stats[i] = (MT_R)mx;
        stats[(size_t)N + i] = (MT_R)sum;
        stats[2 * (size_t)N + i] = targets[i] >= 0 && targets[i] < V && t >= 0 && t < Vl ? x[t] : 0;
    }
}

MT_API void MT__FN(vocab_xent_finish_cpu_)(MT_R *losses, MT_R *dlogits, const MT_R *logits, const int32_t *targets,
                                           const MT_R *all, MT_R dscale, int N, int V, int Vl, int vstart, int tp) {
    int nreal = V - vstart < Vl ? (V - vstart > 0 ? V - vstart : 0) : Vl;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        double M = -INFINITY, S = 0, xt = 0;
        for (int q = 0; q < tp; q++) M = all[(size_t)q * 3 * N + i] > M ? all[(size_t)q * 3 * N + i] : M;
        for (int q = 0; q < tp; q++) {
            double m = all[(size_t)q * 3 * N + i];
            if (m != -INFINITY) S += all[(size_t)q * 3 * N + N + i] * exp(m - M);
            xt += all[(size_t)q * 3 * N + 2 * (size_t)N + i];
        }
        double l = M + log(S);
        int tgt = targets[i], ok = tgt >= 0 && tgt < V;
        losses[i] = ok ? (MT_R)(l - xt) : 0;
        if (!dlogits) continue;
        const MT_R *x = logits + (size_t)i * Vl;
        MT_R *d = dlogits + (size_t)i * Vl;
        for (int v = 0; v < Vl; v++) {
            double p = v < nreal ? exp(x[v] - l) : 0;
            d[v] = ok ? (MT_R)((p - (vstart + v == tgt ? 1.0 : 0.0)) * dscale) : 0;
        }
    }
}

/* ---- the epilogue of a row-parallel linear, after its partial products were summed over tp:
 * out (N,C) = inp + bias (C) + resid (N,C); bias, resid may be NULL; out may alias inp. */
MT_API void MT__FN(bias_residual_cpu_)(MT_R *out, const MT_R *inp, const MT_R *bias, const MT_R *resid, int N,
                                       int C) {
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            out[k] = inp[k] + (bias ? bias[c] : 0) + (resid ? resid[k] : 0);
        }
}

/* ---- AdamW (decoupled weight decay), bias-corrected, step t >= 1. grad is multiplied by grad_scale
 * first (clipping, loss scale). */
MT_API void MT__FN(adamw_cpu_)(MT_R *param, MT_R *m, MT_R *v, const MT_R *grad, size_t n, double lr, double beta1,
                               double beta2, double eps, double wd, int t, double grad_scale) {
    double bc1 = 1.0 - pow(beta1, t), bc2 = 1.0 - pow(beta2, t);
    for (size_t i = 0; i < n; i++) {
        double g = grad[i] * grad_scale;
        double mi = beta1 * m[i] + (1.0 - beta1) * g;
        double vi = beta2 * v[i] + (1.0 - beta2) * g * g;
        m[i] = (MT_R)mi;
        v[i] = (MT_R)vi;
        double p = param[i];
        param[i] = (MT_R)(p - lr * ((mi / bc1) / (sqrt(vi / bc2) + eps) + wd * p));
    }
}

/* ---- sum of squares (for the global gradient norm), accumulated in double */
MT_API double MT__FN(sumsq_cpu_)(const MT_R *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

#undef MT__FN
#undef MT__XCAT3
#undef MT__CAT3
