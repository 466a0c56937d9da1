#!/usr/bin/env bash
# Every check that needs a GPU, in one go, for a machine with one GPU and torch with CUDA:
#
#   bash bench/gpu_checks.sh OUT [PYTHON]
#
# make test-gpu (the library built with its CUDA kernels, every CUDA test case), then the
# benchmarks on cuda with short rounds: the tiled convolution against cuDNN at batch 10 and 100,
# the nets, the analog and HIC nets, and data-parallel training with 2 processes on the one GPU
# (NCCL) against one process (FP, RPU and HIC nets), and rapa train end to end (the main job's
# solver, 3000 iterations, data included) with its step as a CUDA graph and without, and with
# 4 data worker processes, and 1, 2, 4 and 8 such runs at once on the one GPU; the data path
# alone with threads and processes. Each step's output goes to OUT/<step>.txt (12 files) and its last lines to the terminal; a failing step does not stop the others. PYTHON (python3) must have
# the packages of the Makefile's PY_DEPS (lmdb included: the benchmarks write small LMDBs when
# data/cifar10 is missing); nothing is installed but the library.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_checks.sh OUT [PYTHON]}
PY=${2:-python3}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac  # steps cd
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."  # the repository's root, wherever this is called from
export PYTHONUNBUFFERED=1

step() {
    local name=$1 start=$SECONDS rc
    shift
    echo "== $name: $*"
    "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    echo "   exit $rc after $((SECONDS - start)) s"
    tail -n 12 "$OUT/$name.txt"
}

"$PY" -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_checks.sh: torch ' + \
    torch.__version__ + ' sees no GPU'); print('torch', torch.__version__, 'GPU', \
    torch.cuda.get_device_name())" || exit 1
step test_gpu make test-gpu PYTHON="$PY"
step bench_ops_b10 "$PY" bench/bench_ops.py --device cuda --batch 10
step bench_ops_b100 "$PY" bench/bench_ops.py --device cuda --batch 100
step bench_nets "$PY" bench/bench_nets.py --device cuda --skip-data
step bench_data "$PY" bench/bench_nets.py --device cuda --skip-nets --data-threads 1 \
    --data-processes 2 4 8
step bench_analog "$PY" bench/bench_analog.py --device cuda --seconds 3 --rounds 2 --profile 3
step bench_hic "$PY" bench/bench_hic.py --device cuda --seconds 3 --rounds 2
# bench_distributed's solvers read data/cifar10 from the folder it runs in: the real data
# where `make run` converted it, else a small random tree in a temporary folder.
ROOT=$(pwd)
RUN_IN=$ROOT
if [ ! -d data/cifar10 ]; then
    RUN_IN=$(mktemp -d)
    "$PY" -c "import pathlib, sys; sys.path.insert(0, 'tests'); from datasets import cifar_tree; \
        cifar_tree(pathlib.Path('$RUN_IN'), n_train=2000, n_test=100)"
fi
SOLVERS="$ROOT/prototxt/cifar10/random_max_short_solver.prototxt \
    $ROOT/prototxt/cifar10/random_max_rpu_short_solver.prototxt \
    $ROOT/prototxt/cifar10/none_max_rpu_short_solver.prototxt \
    $ROOT/prototxt/cifar10/none_max_hic_short_solver.prototxt"
step bench_distributed bash -c "cd '$RUN_IN' && '$PY' '$ROOT/bench/bench_distributed.py' \
    --device cuda --processes 2 --iters 30 --solver $SOLVERS"
# rapa train in a folder of its own (its snapshots must not meet make run's): the main job's
# solver for 3000 iterations, images/s at each display (500), with the step graphed and not.
# And once more graphed, its training batches prepared by 4 worker processes instead of the
# one thread (data_param.processes, in a copy of the nets).
TRAIN_IN=$(mktemp -d)
ln -s "$RUN_IN/data" "$TRAIN_IN/data"
cp -r "$ROOT/prototxt" "$TRAIN_IN/prototxt"
for mode in graphed eager processes; do
    flag=$([ $mode = eager ] && echo --no-cuda-graph)
    if [ $mode = processes ]; then
        sed -i 's|source: "data/cifar10/cifar10_train_lmdb"|& processes: 4|' \
            "$TRAIN_IN/prototxt/cifar10/random_max.prototxt"
        rm -rf "$TRAIN_IN/snapshots"
    fi
    step train_$mode bash -c "cd '$TRAIN_IN' && '$PY' -m rapa train --solver \
        prototxt/cifar10/random_max_short_solver.prototxt --device cuda --max-iter 3000 \
        --no-progress $flag"
done
step bench_concurrent "$PY" bench/bench_concurrent.py --device cuda --runs 1 2 4 8 --iters 2000
