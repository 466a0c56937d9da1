"""Several trainings on one device at once: the aggregate images/s of N `rapa train` runs.

    python bench/bench_concurrent.py [--device cuda] [--runs 1 2 4 8] [--iters 2000]
                                     [--solver prototxt/cifar10/random_max_short_solver.prototxt]

The paper's nets at batch 10 use a small part of a large GPU, and a sweep over schemes, tile
counts and seeds is many such runs (`rapa sweep --jobs N` starts N at a time). For each N in
--runs this starts N processes of `rapa train` on the solver together, each in a folder of its
own (its own log; no tests, no snapshots, a display every --iters / 8 iterations), and reads
each run's images/s from its log: the aggregate is the sum over the runs of their median
speed after the first display (start-up and warm-up excluded). Ratios are against N = 1.
Each run gets cores / N threads (OMP_NUM_THREADS, unless set). One measurement per N: on a
machine that other work shares, repeat it (a run that loses a core to another job slows by
far more than its share). On a GPU, CUDA MPS (`nvidia-cuda-mps-control -d`), where the machine allows it, lets the
processes' kernels run side by side instead of time-sliced; the table says whether it ran.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rapa.prototxt import read_text  # noqa: E402
from rapa.proto import pb  # noqa: E402
from rapa.trainlog import read_log_lines  # noqa: E402
from bench_nets import data_tree  # noqa: E402  (bench/ is on the path when run as a script)
from bench_ops import bench_device  # noqa: E402


def run_folder(solver: pathlib.Path, iters: int, data: pathlib.Path) -> pathlib.Path:
    """A folder with the data and prototxt linked and the solver rewritten: iters iterations,
    no tests, no snapshots, a display every iters / 8."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="rapa-concurrent-"))
    (folder / "data").symlink_to(data / "data")
    (folder / "prototxt").symlink_to(ROOT / "prototxt")
    sp = read_text(solver, pb.SolverParameter())
    for field in ("test_iter", "test_interval", "test_net", "test_state", "snapshot"):
        sp.ClearField(field)
    sp.max_iter, sp.display = iters, max(1, iters // 8)
    sp.snapshot_after_train = False
    sp.snapshot_prefix = str(folder / "run")
    sp.log_file = str(folder / "log.jsonl")
    (folder / "solver.prototxt").write_text(str(sp))
    return folder


def median_speed(folder: pathlib.Path) -> float:
    speeds = [e["images_per_s"] for e in read_log_lines(folder / "log.jsonl")
              if e.get("phase") == "train"][1:]
    if not speeds:
        raise SystemExit(f"bench_concurrent: {folder}/log.jsonl has no display after the first")
    return statistics.median(speeds)


def mps_running() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "MPS" in out.stdout and "Enabled" in out.stdout.split("MPS", 1)[1][:200]


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--solver", default=str(ROOT / "prototxt/cifar10/random_max_short_solver"
                                                   ".prototxt"))
    args = p.parse_args()
    bench_device(args.device)
    solver = pathlib.Path(args.solver).resolve()
    data = data_tree()
    batch = next(layer.data_param.batch_size for layer in read_text(
        ROOT / read_text(solver, pb.SolverParameter()).net, pb.NetParameter()).layer
        if layer.type == "Data")
    print(f"Concurrent rapa train runs of {solver.name} on {args.device} (batch {batch}, "
          f"{args.iters} iterations each{', MPS' if mps_running() else ''})")
    print(f"{'runs':>5} {'images/s per run':>17} {'aggregate':>10} {'vs 1 run':>9} "
          f"{'wall s':>7}")
    base = None
    for n in args.runs:
        folders = [run_folder(solver, args.iters, data) for _ in range(n)]
        # The CPU's cores shared out (N runs of all cores each would spin against each other);
        # a GPU's host threads only launch.
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
        start = time.perf_counter()
        procs = [subprocess.Popen(
            [sys.executable, "-m", "rapa", "train", "--solver", "solver.prototxt", "--device",
             args.device, "--no-progress"], cwd=f, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads})
            for f in folders]
        try:
            for proc, f in zip(procs, folders):
                _, err = proc.communicate()
                if proc.returncode:
                    raise SystemExit(f"bench_concurrent: a run failed: {err.strip()[-500:]}")
            wall = time.perf_counter() - start
            speeds = [median_speed(f) for f in folders]
        finally:
            for proc in procs:  # the others, where one failed
                proc.kill()
                proc.wait()
            for f in folders:
                shutil.rmtree(f, ignore_errors=True)
        total = sum(speeds)
        base = base or total
        print(f"{n:>5} {statistics.median(speeds):>17.0f} {total:>10.0f} {total / base:>9.2f} "
              f"{wall:>7.1f}")


if __name__ == "__main__":
    main()
