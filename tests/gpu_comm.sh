#!/bin/sh
# NCCL tests of mt/comm.h on one machine with 2+ GPUs, in both launch modes:
#   1. one process driving every visible GPU (one thread per GPU)
#   2. one process per GPU with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
#      LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), as torchrun --no-python would start them
#   3. killed rank: rank 1 exits abruptly before a collective; every other rank must report
#      the failure (MT_ERR_TIMEOUT) within its timeout and exit 0; then the same in thread mode
# Usage: sh tests/gpu_comm.sh        (N=<gpus> and MASTER_PORT=<port> override the defaults)
# Per-rank logs of the process modes go to build/gpu_comm.<mode>.rank<r>.log.
set -u
cd "$(dirname "$0")/.." || exit 1
make --no-print-directory build/gpu_comm || exit 1
N=${N:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [ "$N" -lt 2 ]; then
    echo "gpu_comm.sh: needs 2+ GPUs, found $N: skipped"
    exit 0
fi
PORT=${MASTER_PORT:-$((20000 + $$ % 20000))}
LIMIT=${LIMIT:-300} # seconds any one process may take before it counts as hung
fail=0

# launch MODE PORT [ARGS]: start N processes, wait for all, leave their exit codes in build/
launch() {
    mode=$1; port=$2; shift 2
    pids=""
    r=0
    while [ "$r" -lt "$N" ]; do
        RANK=$r WORLD_SIZE=$N LOCAL_RANK=$r LOCAL_WORLD_SIZE=$N MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
            timeout "$LIMIT" ./build/gpu_comm "$@" >"build/gpu_comm.$mode.rank$r.log" 2>&1 &
        pids="$pids $!"
        r=$((r + 1))
    done
    r=0
    for p in $pids; do
        wait "$p"
        echo $? >"build/gpu_comm.$mode.rank$r.rc"
        r=$((r + 1))
    done
}

show() { # show MODE: print each rank's log with its exit code
    r=0
    while [ "$r" -lt "$N" ]; do
        echo "-- rank $r (exit $(cat "build/gpu_comm.$1.rank$r.rc"))"
        cat "build/gpu_comm.$1.rank$r.log"
        r=$((r + 1))
    done
}

echo "== 1. one process, $N GPUs, one thread each"
if ! timeout "$LIMIT" ./build/gpu_comm; then
    echo "  FAIL thread mode"
    fail=1
    echo "== 1b. (diagnosis) thread mode again, the non-blocking check first, NCCL warnings on"
    GPU_COMM_ASYNC_FIRST=1 GPU_COMM_TIMEOUT=30 NCCL_DEBUG=WARN timeout "$LIMIT" ./build/gpu_comm
    echo "== 1c. (diagnosis) thread mode, default order, NCCL warnings on"
    GPU_COMM_TIMEOUT=30 NCCL_DEBUG=WARN timeout "$LIMIT" ./build/gpu_comm
    for parts in 1 2 4; do
        echo "== 1e. (diagnosis) thread mode, only part $parts of the split check before the non-blocking one"
        GPU_COMM_SPLIT_PARTS=$parts GPU_COMM_TIMEOUT=30 timeout "$LIMIT" ./build/gpu_comm
    done
fi

echo "== 2. $N processes, torchrun-style environment, MASTER_PORT=$PORT"
launch procs "$PORT"
show procs
r=0
while [ "$r" -lt "$N" ]; do
    [ "$(cat build/gpu_comm.procs.rank$r.rc)" = 0 ] || { echo "  FAIL process mode rank $r"; fail=1; }
    r=$((r + 1))
done

echo "== 3a. $N processes, rank 1 killed before a collective, MASTER_PORT=$((PORT + 2))"
launch kill "$((PORT + 2))" --kill-rank
show kill
r=0
while [ "$r" -lt "$N" ]; do
    rc=$(cat "build/gpu_comm.kill.rank$r.rc")
    if [ "$r" = 1 ]; then
        [ "$rc" = 1 ] || { echo "  FAIL killed rank exited with $rc, expected 1"; fail=1; }
    else
        [ "$rc" = 0 ] || { echo "  FAIL survivor rank $r exited with $rc (124: hung past ${LIMIT} s)"; fail=1; }
    fi
    r=$((r + 1))
done

echo "== 3b. one process, $N GPUs, rank 1 never joins a collective"
timeout "$LIMIT" ./build/gpu_comm --kill-rank || { echo "  FAIL thread mode with an absent rank"; fail=1; }

if [ "$fail" = 0 ]; then echo "gpu_comm.sh: all modes passed"; else echo "gpu_comm.sh: FAILED"; fi
exit "$fail"
