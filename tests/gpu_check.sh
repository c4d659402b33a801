#!/bin/sh
# One device call: every GPU test, the trainer's GPU-vs-CPU checks, and the benchmarks next to the
# PyTorch peers. Build first (`make all test-cuda-build`); logs go to $OUT (or build/gpu-logs) and
# a short summary is printed last.
#   sh tests/gpu_check.sh [check] [precision] [bench] [train-bench] [timing]   (default: check)
#   ANCHORS=dir   where the peers' scripts are (default ../shared/anchors)
set -u
export NCCL_NVLS_ENABLE=0
out=${OUT:-build/gpu-logs}
mkdir -p "$out"
anchors=${ANCHORS:-../shared/anchors}
what=" ${*:-check} "
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
has() { case "$what" in *" $1 "*) return 0 ;; esac; return 1; }

# relative difference of the "lm loss" of two trainer logs, iteration by iteration: the largest,
# the mean, and the largest over 10-iteration windows (batch noise averaged out)
compare_losses() {
    for f in "$1" "$2"; do grep -o 'iteration *[0-9]*/ *[0-9]* | lm loss: [^ ]*' "$f" | sed 's/.*lm loss: //'; echo END; done |
    awk 'BEGIN { k = 0 } /END/ { k++; next } { v[k, n[k]++] = $1 + 0 }
         END { m = n[0] < n[1] ? n[0] : n[1]; worst = 0; sum = 0; wworst = 0
               for (i = 0; i < m; i++) { d = v[0, i] - v[1, i]; d = (d < 0 ? -d : d) / v[0, i]; sum += d; if (d > worst) { worst = d; at = i + 1 } }
               for (i = 0; i + 10 <= m; i++) { a = 0; b = 0; for (j = i; j < i + 10; j++) { a += v[0, j]; b += v[1, j] }
                   d = (a - b) / a; d = d < 0 ? -d : d; if (d > wworst) wworst = d }
               printf "%d iterations: max relative difference %.2e (iteration %d), mean %.2e, max over 10-iteration windows %.2e; last %.6f vs %.6f",
                      m, worst, at, m ? sum / m : 0, wworst, v[0, m - 1], v[1, m - 1] }'
}

nvidia-smi -L

if has check; then
    for t in gpu_kernels gpu_attention; do
        ./build/$t > "$out/$t.log" 2>&1
        note "$t (exit $?): $(tail -n 1 "$out/$t.log")"
    done
    # the attention against PyTorch's SDPA (the peer, where this machine has it)
    ./build/gpu_attention_dump build/attention-cases > "$out/gpu_attention_dump.log" 2>&1
    note "gpu_attention_dump (exit $?): $(tail -n 1 "$out/gpu_attention_dump.log")"
    if python3 -c "import torch" 2>/dev/null; then
        python3 tests/sdpa_compare.py build/attention-cases > "$out/sdpa_compare.log" 2>&1
        note "attention against PyTorch SDPA (exit $?): $(tail -n 1 "$out/sdpa_compare.log")"
    else
        note "attention against PyTorch SDPA: NOT RUN, python3 here has no torch"
    fi
    small="--train-iters 10 --eval-iters 1 --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 48"
    ./build/train_gpt $small > "$out/cpu10.log" 2>&1
    ./build/train_gpt_cuda --fp32 $small > "$out/gpu10.log" 2>&1
    note "fp32 GPU vs CPU: $(compare_losses "$out/cpu10.log" "$out/gpu10.log")"
    # bf16 against fp32 over 100 iterations, reading a byte-level corpus through the data loader:
    # text from a fixed random Markov chain (awk), tokenized by preprocess_data
    corpus=build/gpu-corpus
    mkdir -p "$corpus"
    awk 'BEGIN { srand(7); split("the of and to in is was for on that with as by at from his her they this which", w, " ");
                 for (d = 0; d < 4000; d++) { n = 20 + int(rand() * 60); s = w[1 + int(rand() * 20)]; p = 1;
                   for (i = 0; i < n; i++) { p = (p * 7 + int(rand() * 3)) % 20 + 1; s = s " " w[p] }
                   printf "{\"text\": \"%s.\"}\n", s } }' > "$corpus/corpus.jsonl"
    ./build/preprocess_data --input "$corpus/corpus.jsonl" --output-prefix "$corpus/corpus" --tokenizer-type ByteLevel \
        --append-eod > "$out/preprocess.log" 2>&1
    mid="--data-path $corpus/corpus_text_document --vocab-size 257 --train-iters 100 --num-layers 4 --hidden-size 256 \
         --num-attention-heads 4 --seq-length 256 --micro-batch-size 16 --lr 1e-3 --eval-interval 50 --eval-iters 4"
    ./build/train_gpt_cuda --fp32 $mid > "$out/fp32_100.log" 2>&1
    ./build/train_gpt_cuda --bf16 $mid > "$out/bf16_100.log" 2>&1
    note "bf16 vs fp32 on the GPU (byte corpus): $(compare_losses "$out/fp32_100.log" "$out/bf16_100.log")"
    note "  validation fp32: $(grep -h 'validation loss at iteration 100' "$out/fp32_100.log" | cut -d'|' -f2)" \
         " bf16: $(grep -h 'validation loss at iteration 100' "$out/bf16_100.log" | cut -d'|' -f2)"
    # bad input on the GPU: a GPU that is not there, a model larger than the GPU's memory
    ./build/train_gpt_cuda --device 9 $small > "$out/bad_device.log" 2>&1
    note "bad input --device 9 (exit $?): $(grep -h -i -m1 'error\|requested' "$out/bad_device.log")"
    ./build/train_gpt_cuda --num-layers 96 --hidden-size 16384 --num-attention-heads 128 --seq-length 1024 \
        --train-iters 1 > "$out/bad_oom.log" 2>&1
    note "bad input 96x16384 model (exit $?): $(grep -h -i -m1 'error\|fail\|memory' "$out/bad_oom.log")"
    # the default synthetic run on the GPU, bf16
    ./build/train_gpt_cuda > "$out/default_gpu.log" 2>&1
    note "default run, GPU bf16: $(grep -h -e '^trained' -e 'held-out' "$out/default_gpu.log" | tr '\n' ' ')"
fi

if has check || has precision; then
    # bf16 against fp32 where the training itself is calm. On the byte corpus above both runs show
    # grad-norm spikes (2-4 against the clip at 1) at different iterations, at lr 1e-3 and at 3e-4
    # alike, and single iterations then differ by a few percent in either precision's favour. Here:
    # that corpus with 4x the batch (less gradient noise), and the default synthetic task.
    corpus=build/gpu-corpus
    big="--data-path $corpus/corpus_text_document --vocab-size 257 --train-iters 100 --num-layers 4 --hidden-size 256 \
         --num-attention-heads 4 --seq-length 256 --micro-batch-size 64 --lr 3e-4 --eval-interval 100 --eval-iters 2"
    ./build/train_gpt_cuda --fp32 $big > "$out/fp32_100_mb64.log" 2>&1
    ./build/train_gpt_cuda --bf16 $big > "$out/bf16_100_mb64.log" 2>&1
    note "bf16 vs fp32 on the GPU (byte corpus, batch 64, lr 3e-4): $(compare_losses "$out/fp32_100_mb64.log" "$out/bf16_100_mb64.log")"
    ./build/train_gpt_cuda --fp32 --train-iters 100 > "$out/fp32_100_synth.log" 2>&1
    ./build/train_gpt_cuda --bf16 --train-iters 100 > "$out/bf16_100_synth.log" 2>&1
    note "bf16 vs fp32 on the GPU (default synthetic task): $(compare_losses "$out/fp32_100_synth.log" "$out/bf16_100_synth.log")"
fi

if has bench; then
    ./build/bench_kernels > "$out/bench_kernels.log" 2>&1
    note "bench_kernels exit $?"
    ./build/bench_attention > "$out/bench_attention.log" 2>&1
    note "bench_attention exit $?"
    python3 "$anchors/sdpa_bench.py" flash > "$out/sdpa_flash.log" 2>&1
    python3 "$anchors/sdpa_bench.py" > "$out/sdpa_default.log" 2>&1
fi

if has train-bench; then
    # the default; then --gemm-tune 16 (cuBLASLt algorithms timed once per shape), its choices written
    # to a tuning file; then that file replayed without timing (the same algorithms: a repeatable run)
    rm -f build/gemm-tune-*.txt
    for mode in default tune replay; do
        for cfg in "d12 12 768 12 32" "d24 24 1024 16 16" "d48 48 1600 25 8"; do
            set -- $cfg
            case $mode in
                default) extra="" ;;
                tune) extra="--gemm-tune 16 --gemm-tune-file build/gemm-tune-$1.txt" ;;
                replay) extra="--gemm-tune-file build/gemm-tune-$1.txt" ;;
            esac
            ./build/train_gpt_cuda --bf16 --num-layers $2 --hidden-size $3 --num-attention-heads $4 --micro-batch-size $5 \
                --seq-length 1024 --vocab-size 50304 --train-iters 20 --eval-iters 1 --log-interval 5 $extra \
                > "$out/train_$1_$mode.log" 2>&1
            note "ours $1 B=$5 $mode: $(grep -h '^speed:' "$out/train_$1_$mode.log" || tail -n 2 "$out/train_$1_$mode.log")"
        done
    done
    note "tuning files: $(wc -l build/gemm-tune-*.txt 2>/dev/null | tr -s ' ' | tr '\n' ';')"
    PYTHONUNBUFFERED=1 python3 "$anchors/torch_gpt.py" d12 d24 d48 > "$out/torch_gpt.log" 2>&1
    grep RESULT "$out/torch_gpt.log" | tee -a "$summary"
fi

if has timing; then
    # where a step goes: GPU time per op (--timing: events around every op, one sync per step; a
    # separate run so that the speed lines above are untouched)
    for cfg in "d12 12 768 12 32" "d48 48 1600 25 8"; do
        set -- $cfg
        ./build/train_gpt_cuda --bf16 --num-layers $2 --hidden-size $3 --num-attention-heads $4 --micro-batch-size $5 \
            --seq-length 1024 --vocab-size 50304 --train-iters 12 --eval-iters 1 --log-interval 12 --timing \
            > "$out/timing_$1.log" 2>&1
        note "op times $1: $(grep -h -A40 '^GPU time per step' "$out/timing_$1.log" | grep -e 'ops in all' -e 'not in an op' -e 'step (wall)' | tr -s ' ' | tr '\n' ';')"
    done
fi

# every log in one file (the device call brings back few files), the summary last
for f in "$out"/*.log; do echo "==== $f"; cat "$f"; done > "$out/all.txt"
echo "==== summary"
cat "$summary"
