#!/bin/sh
# The multi-GPU part of the GPU checks (2+ GPUs): collectives in both launch modes and a killed
# rank, data- and tensor-parallel equivalence, NCCL bandwidth and the trainer's scaling next to the
# PyTorch peers (tp=2 with and without the communication overlap, and the forward's pieces). Build first
# (`make all test-cuda-build`); logs go to $OUT (or build/gpu-logs).
#   sh tests/gpu_multi.sh [comm] [tests] [comm-bench] [scaling] [launch-modes]   (default: all)
#   scaling = dp-scaling tp-scaling torch-ddp (each can be asked for alone). A device call has 10
#   minutes: "comm tests comm-bench", "dp-scaling", "tp-scaling" and "torch-ddp" are each about
#   3-6 minutes of trainer runs (20 iterations each, d48 and 48x1664 ~30 s a run); ask for them in
#   separate calls.
#   ANCHORS=dir   where the peers' scripts are (default ../shared/anchors)
set -u
export NCCL_NVLS_ENABLE=0
out=${OUT:-build/gpu-logs}
mkdir -p "$out"
anchors=${ANCHORS:-../shared/anchors}
what=" ${*:-comm tests comm-bench scaling launch-modes} "
summary="$out/multi_summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
has() { case "$what" in *" $1 "*) return 0 ;; esac; return 1; }
speed() { grep -h '^speed:' "$1" | sed 's/speed: //' || tail -n 3 "$1"; }
ngpu=$(nvidia-smi -L | wc -l)
note "GPUs: $ngpu"

if has comm; then
    sh tests/gpu_comm.sh > "$out/gpu_comm.log" 2>&1
    note "gpu_comm.sh (exit $?): $(grep -h -E 'passed, [0-9]+ failed|PASS|FAIL' "$out/gpu_comm.log" | tr '\n' ' ' | cut -c1-600)"
fi

if has tests; then
    for t in gpu_dp gpu_tp; do
        timeout 150 ./build/$t > "$out/$t.log" 2>&1
        note "$t (exit $?): $(tail -n 1 "$out/$t.log")"
    done
fi

if has comm-bench; then
    ./build/bench_comm > "$out/bench_comm.log" 2>&1
    note "bench_comm: $(grep -h RESULT "$out/bench_comm.log" | tr '\n' ' ')"
    python3 -m torch.distributed.run --nproc_per_node=2 "$anchors/nccl_bw.py" > "$out/nccl_bw.log" 2>&1
    note "nccl_bw.py: $(grep -h -i -E 'all.?reduce|all.?gather|reduce.?scatter' "$out/nccl_bw.log" | tr '\n' ' ' | cut -c1-800)"
fi

common="--bf16 --seq-length 1024 --vocab-size 50304 --train-iters 20 --eval-iters 1 --log-interval 10"
d12="--num-layers 12 --hidden-size 768 --num-attention-heads 12"
d48="--num-layers 48 --hidden-size 1600 --num-attention-heads 25"
if has scaling || has dp-scaling; then
    ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 > "$out/d12_1gpu.log" 2>&1
    note "ours d12 1 GPU: $(speed "$out/d12_1gpu.log")"
    # the second GPU alone: a 2-GPU step is as slow as the slower GPU
    CUDA_VISIBLE_DEVICES=1 ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 > "$out/d12_1gpu_gpu1.log" 2>&1
    note "ours d12 1 GPU (GPU 1): $(speed "$out/d12_1gpu_gpu1.log")"
    ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 --world-size 2 > "$out/d12_2gpu.log" 2>&1
    note "ours d12 2 GPUs (dp=2, one process): $(speed "$out/d12_2gpu.log")"
    ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 --world-size 2 --use-distributed-optimizer > "$out/d12_2gpu_zero1.log" 2>&1
    note "ours d12 2 GPUs (dp=2, ZeRO-1, one process): $(speed "$out/d12_2gpu_zero1.log")"
    # smaller gradient buckets (the default is 40M elements: d12's last two buckets both wait for the
    # end of the backward), and the reduction in line: what the bucketing buys
    for bs in 10000000 20000000; do
        ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 --world-size 2 --ddp-bucket-size $bs > "$out/d12_2gpu_b$bs.log" 2>&1
        note "ours d12 2 GPUs (dp=2, --ddp-bucket-size $bs): $(speed "$out/d12_2gpu_b$bs.log")"
    done
    ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 --world-size 2 --no-dp-comm-overlap > "$out/d12_2gpu_nooverlap.log" 2>&1
    note "ours d12 2 GPUs (dp=2, no dp comm overlap): $(speed "$out/d12_2gpu_nooverlap.log")"
    # where the 2-GPU step loses time: GPU time per op on one GPU and at dp=2 (rank 0), side by side
    ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 --timing > "$out/d12_1gpu_timing.log" 2>&1
    ./build/train_gpt_cuda $common $d12 --micro-batch-size 32 --world-size 2 --timing > "$out/d12_2gpu_timing.log" 2>&1
    note "d12 per-op timing, 1 GPU then dp=2: $out/d12_1gpu_timing.log $out/d12_2gpu_timing.log"
    if has launch-modes; then
        python3 -m torch.distributed.run --no-python --nproc_per_node=2 ./build/train_gpt_cuda $common $d12 \
            --micro-batch-size 32 > "$out/d12_2gpu_torchrun.log" 2>&1
        note "ours d12 2 GPUs (dp=2, torchrun): $(speed "$out/d12_2gpu_torchrun.log")"
    fi
    ./build/train_gpt_cuda $common $d48 --micro-batch-size 8 > "$out/d48_1gpu.log" 2>&1
    note "ours d48 1 GPU: $(speed "$out/d48_1gpu.log")"
    ./build/train_gpt_cuda $common $d48 --micro-batch-size 8 --world-size 2 > "$out/d48_2gpu.log" 2>&1
    note "ours d48 2 GPUs (dp=2): $(speed "$out/d48_2gpu.log")"
    ./build/train_gpt_cuda $common $d48 --micro-batch-size 8 --world-size 2 --use-distributed-optimizer > "$out/d48_2gpu_zero1.log" 2>&1
    note "ours d48 2 GPUs (dp=2, ZeRO-1): $(speed "$out/d48_2gpu_zero1.log")"
    # ZeRO-2 and ZeRO-3: speed, and the memory they free (no full gradient / parameter buffers)
    for sh in optim_grads optim_grads_params; do
        ./build/train_gpt_cuda $common $d48 --micro-batch-size 8 --world-size 2 --data-parallel-sharding-strategy $sh > "$out/d48_2gpu_$sh.log" 2>&1
        note "ours d48 2 GPUs (dp=2, $sh): $(speed "$out/d48_2gpu_$sh.log")"
    done
    # the same with the gradient reduction and the parameter all-gather in line: what the overlap buys
    ./build/train_gpt_cuda $common $d48 --micro-batch-size 8 --world-size 2 --use-distributed-optimizer --no-dp-comm-overlap > "$out/d48_2gpu_zero1_nooverlap.log" 2>&1
    note "ours d48 2 GPUs (dp=2, ZeRO-1, no dp comm overlap): $(speed "$out/d48_2gpu_zero1_nooverlap.log")"
    if has launch-modes; then
        python3 -m torch.distributed.run --no-python --nproc_per_node=2 ./build/train_gpt_cuda $common $d48 \
            --micro-batch-size 8 --use-distributed-optimizer > "$out/d48_2gpu_zero1_torchrun.log" 2>&1
        note "ours d48 2 GPUs (dp=2, ZeRO-1, torchrun): $(speed "$out/d48_2gpu_zero1_torchrun.log")"
    fi
fi
if has scaling || has tp-scaling; then
    # tensor parallelism needs the heads divisible by tp: d48's width with 26 heads of 64
    d48tp="--num-layers 48 --hidden-size 1664 --num-attention-heads 26"
    ./build/train_gpt_cuda $common $d48tp --micro-batch-size 8 > "$out/d48tp_1gpu.log" 2>&1
    note "ours 48x1664 1 GPU: $(speed "$out/d48tp_1gpu.log")"
    ./build/train_gpt_cuda $common $d48tp --micro-batch-size 8 --world-size 2 --tensor-model-parallel-size 2 > "$out/d48tp_tp2.log" 2>&1
    note "ours 48x1664 tp=2: $(speed "$out/d48tp_tp2.log")"
    ./build/train_gpt_cuda $common $d48tp --micro-batch-size 8 --world-size 2 --tensor-model-parallel-size 2 --sequence-parallel > "$out/d48tp_tp2sp.log" 2>&1
    note "ours 48x1664 tp=2 + SP: $(speed "$out/d48tp_tp2sp.log")"
    # the forward's tp GEMMs in 1, 2 and 8 pieces (4 above): what cutting them costs and hides
    for k in 1 2 8; do
        ./build/train_gpt_cuda $common $d48tp --micro-batch-size 8 --world-size 2 --tensor-model-parallel-size 2 --tp-comm-chunks $k > "$out/d48tp_tp2_chunks$k.log" 2>&1
        note "ours 48x1664 tp=2, --tp-comm-chunks $k: $(speed "$out/d48tp_tp2_chunks$k.log")"
    done
    # GEMMs beside a tp collective planned for 16 / 32 SMs fewer, NCCL held to as many CTAs
    for sm in 16 32; do
        NCCL_MAX_CTAS=$sm ./build/train_gpt_cuda $common $d48tp --micro-batch-size 8 --world-size 2 --tensor-model-parallel-size 2 --tp-comm-sm-margin $sm > "$out/d48tp_tp2_sm$sm.log" 2>&1
        note "ours 48x1664 tp=2, --tp-comm-sm-margin $sm, NCCL_MAX_CTAS=$sm: $(speed "$out/d48tp_tp2_sm$sm.log")"
    done
    # the same two with the tp collectives in line: what the overlap buys
    ./build/train_gpt_cuda $common $d48tp --micro-batch-size 8 --world-size 2 --tensor-model-parallel-size 2 --no-tp-comm-overlap > "$out/d48tp_tp2_nooverlap.log" 2>&1
    note "ours 48x1664 tp=2, no tp comm overlap: $(speed "$out/d48tp_tp2_nooverlap.log")"
    ./build/train_gpt_cuda $common $d48tp --micro-batch-size 8 --world-size 2 --tensor-model-parallel-size 2 --sequence-parallel --no-tp-comm-overlap > "$out/d48tp_tp2sp_nooverlap.log" 2>&1
    note "ours 48x1664 tp=2 + SP, no tp comm overlap: $(speed "$out/d48tp_tp2sp_nooverlap.log")"
fi
if has scaling || has torch-ddp; then
    PYTHONUNBUFFERED=1 python3 -m torch.distributed.run --nproc_per_node=2 "$anchors/torch_gpt.py" d12 d48 > "$out/torch_ddp.log" 2>&1
    grep RESULT "$out/torch_ddp.log" | tee -a "$summary"
fi

for f in "$out"/*.log; do echo "==== $f"; cat "$f"; done > "$out/multi_all.txt"
echo "==== summary"
cat "$summary"
