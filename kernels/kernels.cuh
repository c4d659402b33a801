/* kernels/kernels.cuh — the CUDA backend: every op of mt/ops.h on the GPU.  megatron.h includes this
 * file under nvcc only, after mt/core.h and mt/cpu_ops.h and before mt/ops.h, whose dispatchers call
 * the mt_<op>_gpu launchers defined here with the same arguments as the CPU reference.
 *
 *   mt_ctx cx = {0};
 *   MT_CHECK(mt_gpu_init(&cx, 0, MT_BF16));     // kernels/common.cuh
 *
 * Files, in include order
 *   common.cuh         mt_gpu_state, mt_gpu_init/destroy/sync, error checks, packs, block reductions
 *   elementwise.cuh    embedding fwd/bwd, GELU, SwiGLU, residual, RoPE
 *   norms.cuh          LayerNorm, RMSNorm fwd/bwd
 *   matmul.cuh         cuBLASLt linear layers with bias/GELU/dGELU/bias-grad epilogues
 *   xent.cuh           fused softmax cross-entropy
 *   adamw.cuh          AdamW (fp32 master, stochastic rounding), sum of squares, clip coefficient
 *   attention_ref.cuh  reference attention fwd/bwd (any D <= 256, causal or not, GQA)
 */
#ifndef MT_KERNELS_CUH
#define MT_KERNELS_CUH
#include "../mt/core.h"
#include "common.cuh"
#include "elementwise.cuh"
#include "norms.cuh"
#include "matmul.cuh"
#include "xent.cuh"
#include "adamw.cuh"
#include "attention_ref.cuh"
#endif /* MT_KERNELS_CUH */
