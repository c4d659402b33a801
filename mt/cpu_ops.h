/* mt/cpu_ops.h — plain-C reference implementations of every op, in float and in double.
 *
 *   mt_layernorm_fwd_cpu_f32(out, mean, rstd, x, w, b, N, C);     // what the GPU is checked against
 *   mt_layernorm_fwd_cpu_f64(...);                                 // what finite differences check
 *
 * Defines, each as _cpu_f32 and _cpu_f64: embedding_fwd/bwd, layernorm_fwd/bwd, rmsnorm_fwd/bwd,
 * matmul_fwd/bwd, gelu_fwd/bwd, swiglu_fwd/bwd, rope, attention_fwd/bwd, xent (fused softmax
 * cross-entropy forward + backward), vocab_xent_local/finish (vocab-parallel cross-entropy),
 * bias_residual (row-parallel epilogue), residual_fwd/bwd, adamw, sumsq. The rules and layouts are at
 * the top of mt/cpu_ops.inl. Matmuls and attention use OpenMP when compiled with -fopenmp.
 */
#ifndef MT_CPU_OPS_H
#define MT_CPU_OPS_H
#include "core.h"
#ifdef __cplusplus
extern "C" {
#endif

#define MT_R float
#define MT_SFX f32
#include "cpu_ops.inl"
#undef MT_R
#undef MT_SFX

#define MT_R double
#define MT_SFX f64
#include "cpu_ops.inl"
#undef MT_R
#undef MT_SFX

#ifdef __cplusplus
}
#endif
#endif
