#!/usr/bin/env bash
# Every check that needs a GPU, in one go, for a machine with one GPU and torch with CUDA:
#
#   bash bench/gpu_checks.sh OUT [PYTHON]
#
# make test-gpu (the library built with its CUDA kernels, every CUDA test case), then the
# benchmarks on cuda with short rounds: the tiled convolution against cuDNN at batch 10 and 100,
# the nets, the analog nets (each also with its step as a CUDA graph), rapa train end to end
# (the main job's solver, 3000 iterations, data included) with its step as a CUDA graph, the
# RPU net's solver graphed, the data path alone with threads and processes, the HIC nets,
# data-parallel training with 2 processes on the one GPU (NCCL) against one process (FP, RPU
# and HIC nets), rapa train without a graph and with 4 data worker processes, and 1, 2, 4 and
# 8 runs at once on the one GPU. They run in that order, the most wanted first, within a
# budget of GPU_CHECKS_SECONDS (default 540, so that one call of 10 minutes holds it all): a
# step is cut where the budget ends, and the steps after it are skipped, each said in one
# line. GPU_CHECKS_STEPS="test_gpu bench_analog ..." runs only the steps named. Every step's
# output goes to OUT/gpu_checks.log (one file, headed by the step's name and command), and its
# last lines to the terminal; a failing step does not stop the others. PYTHON (python3) must
# have the packages of the Makefile's PY_DEPS (lmdb included: the benchmarks write small
# LMDBs when data/cifar10 is missing); nothing is installed but the library.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_checks.sh OUT [PYTHON]}
PY=${2:-python3}
BUDGET=${GPU_CHECKS_SECONDS:-540}
ONLY=${GPU_CHECKS_STEPS:-}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac  # steps cd
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_checks.log
: > "$LOG"
cd "$(dirname "$0")/.."  # the repository's root, wherever this is called from
export PYTHONUNBUFFERED=1

# step NAME COMMAND...: runs COMMAND within what is left of the budget.
step() {
    local name=$1 start=$SECONDS rc left=$((BUDGET - SECONDS)) part
    shift
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    if [ $left -lt 15 ]; then
        echo "== $name: skipped (the budget of $BUDGET s is spent)" | tee -a "$LOG"
        return
    fi
    echo "== $name: $*" | tee -a "$LOG"
    part=$(mktemp)
    timeout -k 10 $left "$@" > "$part" 2>&1
    rc=$?
    cat "$part" >> "$LOG"
    [ $rc = 124 ] && echo "   cut at the end of the budget ($BUDGET s)" | tee -a "$LOG"
    echo "   exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
    tail -n 12 "$part"
    rm -f "$part"
}

"$PY" -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_checks.sh: torch ' + \
    torch.__version__ + ' sees no GPU'); print('torch', torch.__version__, 'GPU', \
    torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG" || exit 1
step test_gpu make test-gpu PYTHON="$PY"
step bench_ops_b10 "$PY" bench/bench_ops.py --device cuda --batch 10
step bench_ops_b100 "$PY" bench/bench_ops.py --device cuda --batch 100
step bench_nets "$PY" bench/bench_nets.py --device cuda --skip-data
step bench_analog "$PY" bench/bench_analog.py --device cuda --seconds 3 --rounds 2 --profile 3
# The solvers read data/cifar10 from the folder they run in: the real data where `make run`
# converted it, else a small random tree in a temporary folder. rapa train runs in a folder of
# its own (its snapshots must not meet make run's), on a copy of the nets.
ROOT=$(pwd)
RUN_IN=$ROOT
if [ ! -d data/cifar10 ]; then
    RUN_IN=$(mktemp -d)
    "$PY" -c "import pathlib, sys; sys.path.insert(0, 'tests'); from datasets import cifar_tree; \
        cifar_tree(pathlib.Path('$RUN_IN'), n_train=2000, n_test=100)"
fi
TRAIN_IN=$(mktemp -d)
ln -s "$RUN_IN/data" "$TRAIN_IN/data"
cp -r "$ROOT/prototxt" "$TRAIN_IN/prototxt"
train() {  # train NAME SOLVER ITERATIONS [FLAGS...]: images/s at each display and at the end
    local name=$1 solver=$2 iters=$3
    shift 3
    rm -rf "$TRAIN_IN/snapshots"
    local run="'$PY' -m rapa train --solver $solver --device cuda --max-iter $iters --no-progress"
    step "$name" bash -c "cd '$TRAIN_IN' && $run $*"
}
train train_graphed prototxt/cifar10/random_max_short_solver.prototxt 3000
train train_rpu_graphed prototxt/cifar10/random_max_rpu_short_solver.prototxt 1000
step bench_data "$PY" bench/bench_nets.py --device cuda --skip-nets --data-threads 1 \
    --data-processes 2 4 8
step bench_hic "$PY" bench/bench_hic.py --device cuda --seconds 3 --rounds 2
SOLVERS="$ROOT/prototxt/cifar10/random_max_short_solver.prototxt \
    $ROOT/prototxt/cifar10/random_max_rpu_short_solver.prototxt \
    $ROOT/prototxt/cifar10/none_max_rpu_short_solver.prototxt \
    $ROOT/prototxt/cifar10/none_max_hic_short_solver.prototxt"
step bench_distributed bash -c "cd '$RUN_IN' && '$PY' '$ROOT/bench/bench_distributed.py' \
    --device cuda --processes 2 --iters 30 --solver $SOLVERS"
train train_eager prototxt/cifar10/random_max_short_solver.prototxt 3000 --no-cuda-graph
# Once more graphed, its training batches prepared by 4 worker processes instead of the one
# thread (data_param.processes).
sed -i 's|source: "data/cifar10/cifar10_train_lmdb"|& processes: 4|' \
    "$TRAIN_IN/prototxt/cifar10/random_max.prototxt"
train train_processes prototxt/cifar10/random_max_short_solver.prototxt 3000
step bench_concurrent "$PY" bench/bench_concurrent.py --device cuda --runs 1 2 4 8 --iters 2000
echo "gpu_checks.sh: done in $SECONDS s; the whole output is in $LOG" | tee -a "$LOG"
