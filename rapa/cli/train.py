"""Train a net with a solver prototxt (Caffe's `caffe train`).

Resume with --snapshot FILE.solverstate, or --snapshot auto for the newest complete snapshot
under the solver's snapshot_prefix (starting afresh when there is none). A start that would
overwrite an earlier run's snapshots or log under that prefix is refused; --overwrite removes
them first. Ctrl-C (or SIGTERM, or SIGHUP: a closed terminal) writes a snapshot and stops; a
NaN loss stops without one, keeping the last good snapshot. A closed standard output (`| head`)
does not stop the run: its log file keeps the record.

Data-parallel on N processes (CPUs, GPUs or nodes; batch_size is per process):
  torchrun --nproc-per-node N -m rapa train --solver S
(README: "Training on several processes, GPUs or nodes").
"""
import os
import sys

from ..distributed import speaker
from ..solver import Solver, Stop
from .options import count, word


def add_arguments(p):
    p.add_argument("--solver", required=True, help="solver prototxt")
    p.add_argument("--weights", help="initial weights (.caffemodel; comma-separated list); "
                   "a digital model's weights are mapped onto analog layers (README)")
    p.add_argument("--snapshot", help="resume from this .solverstate, or 'auto': the newest "
                   "complete one under the solver's snapshot_prefix (from iteration 0 if none)")
    p.add_argument("--device", type=word,
                   help="cpu, cuda or cuda:N (default: the solver's solver_mode)")
    p.add_argument("--max-iter", type=count(1), help="override the solver's max_iter")
    p.add_argument("--overwrite", action="store_true",
                   help="remove an earlier run's snapshots and log under the solver's "
                   "snapshot_prefix that this start would overwrite (refused without it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="on CUDA, launch every kernel of every step (the solver's cuda_graph: "
                   "false) instead of replaying the step recorded as a CUDA graph")


def say(message: str) -> None:
    try:
        print(message, flush=True)
    except BrokenPipeError:
        # Standard output closed (`rapa train ... | head`, a dead `tee`): the run goes on, its
        # log file keeps the record; what it would print goes nowhere from now on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(args):
    solver = Solver(args.solver, device=args.device, max_iter=args.max_iter,
                    progress=False if args.no_progress else None,
                    no_cuda_graph=args.no_cuda_graph, say=say)
    try:
        solver.solve(resume=args.snapshot, weights=args.weights, overwrite=args.overwrite)
    except Stop as e:
        leader, who = speaker()
        if leader or not e.shared:  # a stop all processes share is said once
            print(f"rapa train: {who}{e}", file=sys.stderr, flush=True)
        return e.code
    return 0
