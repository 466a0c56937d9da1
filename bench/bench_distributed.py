"""Data-parallel training: what one step exchanges (bytes per layer) and what it costs, against
one process, in one run.

Each case trains a solver's net with its own data for a few iterations, once in one process and
once in N processes (gloo on the CPU, NCCL on CUDA; launched here as torchrun would, one
process per rank), through rapa.solver.Solver, and reports per step: the bytes each process
sends (digital gradients all-reduced, analog update rows all-gathered), the time spent in the
exchange, and images/s of the whole run (all processes) over one process's.

    python bench/bench_distributed.py [--processes 2] [--iters 30] [--device cpu]
        [--solver prototxt/cifar10/random_max_short_solver.prototxt ...]

Run from the repository root after `make run` (it reads data/cifar10). On a CPU the processes
share the cores: N processes of one thread each against one process of one thread.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import socket
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_ops import bench_device  # noqa: E402  (bench/ is on the path when run as a script)

SOLVERS = ["prototxt/cifar10/random_max_short_solver.prototxt",
           "prototxt/cifar10/random_max_rpu_short_solver.prototxt",
           "prototxt/cifar10/none_max_rpu_short_solver.prototxt"]


def bench_solver(source: str, folder: str, iters: int) -> str:
    """The solver `source` with no tests, no snapshots, no display, `iters` iterations."""
    from rapa.proto import pb
    from rapa.prototxt import read_text
    sp = read_text(source, pb.SolverParameter())
    sp.max_iter = iters
    sp.test_interval, sp.test_initialization, sp.snapshot = iters + 1, False, 0
    sp.snapshot_after_train, sp.display = False, 0
    sp.snapshot_prefix = os.path.join(folder, "bench")
    # The committed solvers name their nets from the repository's root; the data their nets
    # read is found from the folder this runs in (the root after `make run`, or another).
    sp.net = os.path.abspath(sp.net if os.path.exists(sp.net) else ROOT / sp.net)
    path = os.path.join(folder, "solver.prototxt")
    with open(path, "w") as f:
        from google.protobuf import text_format
        f.write(text_format.MessageToString(sp))
    return path


def worker(rank: int, world: int, port: int, solver_path: str, device: str, out: dict):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from rapa.solver import Solver
    solver = Solver(solver_path, device=device, say=lambda m: None, progress=False)
    sent, exchange, steps, waiting = {}, [], [], [0.0]
    share, step_sum = solver._share, solver.group.sum

    def timed_share():
        if not sent:
            for b in solver.params:
                if b.arrays is not None:
                    entries = b.arrays.exchanged()
                    sent[b.name] = sum(t.numel() * t.element_size() for entry in entries
                                       for t in ([entry] if isinstance(entry, torch.Tensor)
                                                 else entry))
                elif b.blob.grad is not None:
                    sent[b.name] = b.blob.grad.numel() * b.blob.grad.element_size()
        sync()
        t0 = time.perf_counter()
        share()
        sync()
        exchange.append(time.perf_counter() - t0 + waiting[0])
        waiting[0] = 0.0
        steps.append(time.perf_counter())

    def timed_sum(values):
        t0 = time.perf_counter()
        result = step_sum(values)
        waiting[0] += time.perf_counter() - t0
        return result

    def sync():
        if solver.device.type == "cuda":
            torch.cuda.synchronize(solver.device)

    solver._share, solver.group.sum = timed_share, timed_sum
    solver.solve()
    if rank == 0:
        warm = 3  # the first steps: allocations, the readers filling up
        span = steps[-1] - steps[warm - 1]
        batch = sum(layer.batch_size for layer in solver.net.data_layers())
        out.update(images_per_s=(len(steps) - warm) * batch * world / span,
                   exchange_ms=1e3 * sum(exchange[warm:]) / (len(steps) - warm),
                   step_ms=1e3 * span / (len(steps) - warm), sent=sent)


def run(solver_path: str, world: int, device: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(world, port, solver_path, device, out), nprocs=world)
        return dict(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--solver", nargs="*", default=SOLVERS)
    args = p.parse_args()
    bench_device(args.device)
    print(f"torch {torch.__version__}, {args.device}, {os.cpu_count()} cores, "
          f"{args.iters} iterations per run")
    print("| solver | layer | bytes each process puts in per step (all-reduce buffer or "
          "all-gather share) |")
    print("| --- | --- | --- |")
    rows = []
    for source in args.solver:
        with tempfile.TemporaryDirectory() as folder:
            path = bench_solver(source, folder, args.iters)
            one = run(path, 1, args.device)
            many = run(path, args.processes, args.device)
        name = pathlib.Path(source).stem
        for layer, size in many["sent"].items():
            print(f"| {name} | {layer} | {size:,} |")
        print(f"| {name} | all | {sum(many['sent'].values()):,} |")
        rows.append((name, one, many))
    n = args.processes
    print()
    print(f"| solver | 1 process: images/s, ms/step | {n} processes: images/s, ms/step, of "
          f"which exchange | images/s ratio {n} / 1 |")
    print("| --- | --- | --- | --- |")
    for name, one, many in rows:
        print(f"| {name} | {one['images_per_s']:.0f}, {one['step_ms']:.1f} | "
              f"{many['images_per_s']:.0f}, {many['step_ms']:.1f}, {many['exchange_ms']:.1f} | "
              f"{many['images_per_s'] / one['images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
