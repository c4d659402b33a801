/* megatron.h — a header-only C/CUDA toolkit for training transformers at scale.
 *
 *   #include "megatron.h"      // from one .c (gcc, CPU) or .cu (nvcc, CPU + GPU) file
 *
 * Every function is `static inline` (MT_API); there is no library to build. This file is the
 * index: each header below, in dependency order, with what it defines.
 * SPDX-License-Identifier: MIT
 */
#ifndef MEGATRON_H
#define MEGATRON_H

#include "mt/core.h"      // defines: mt_status, hooks, dtypes + RNE conversions, mt_tensor, mt_arena, Philox RNG
#include "mt/comm.h"      // defines: mt_comm collectives (NCCL; host threads for CPU), split, p2p groups, timeouts, mt_launch_env, TCP rendezvous
#include "mt/parallel.h"  // defines: mt_parallel rank grid (tp-cp-ep-dp-pp, Megatron order), its groups and communicators
#include "mt/data.h"      // defines: mt_indexed (Megatron .bin/.idx, llm.c tokens) + writer, GPT sample indices, blending, --split, mt_loader
#include "mt/tune.h"      // defines: mt_gemm_tune_table, the GEMM tuning file (load, find, put, atomic save)
#include "mt/tokenizer.h" // defines: mt_tokenizer (byte-level; GPT-2 byte-level BPE from vocab.json+merges.txt or tokenizer.json), JSON strings
#include "mt/cpu_ops.h"   // defines: mt_<op>_cpu_f32/_f64 reference ops (embedding, norms, matmul, GELU, SwiGLU, RoPE, attention, xent, AdamW)
#ifdef __CUDACC__
#include "kernels/kernels.cuh"   // defines: mt_gpu_init, mt_<op>_gpu launchers (CUDA kernels, cuBLASLt GEMMs)
#include "kernels/attention.cuh" // defines: mt_flash_attention_fwd/bwd (fused, bf16, head dim 64/128; mma.sync, wgmma backward at hd 64)
#include "kernels/vocab_parallel.cuh" // defines: mt_vocab_xent_local/finish_gpu, mt_bias_residual_gpu (tensor-parallel kernels)
#endif
#include "mt/ops.h"       // defines: mt_<op>_fwd/_bwd dispatching on the context's device and dtype, mt_copy, mt_lr_at
#include "mt/tensor_parallel.h" // defines: mt_layer_par, column/row-parallel linear (backward collectives overlapped: mt_tp_overlap_init/free), vocab-parallel embedding and cross-entropy, tp collectives (sequence parallel)
#include "mt/gpt.h"       // defines: mt_gpt_config, mt_gpt (a pipeline stage, tensor/sequence parallel), its params table, acts, forward/backward
#include "mt/optim.h"     // defines: mt_optim (AdamW, fp32 master weights, on-device global-norm clipping)
#include "mt/ddp.h"       // defines: mt_ddp (data parallel: gradient buckets overlapped with the backward; distributed optimizer ZeRO-1/2/3), mt_ddp_check_batch

#endif /* MEGATRON_H */
