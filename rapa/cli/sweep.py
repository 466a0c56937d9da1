"""Run several solvers, N at a time, each in its own process; then the results table.

Each solver runs as `rapa train --solver S --snapshot auto --no-progress` (its output in
PREFIX_train.out next to its snapshots), so a rerun of the same command continues unfinished
runs from their newest snapshots and skips finished ones. N > 1 suits a GPU that one batch-10
net leaves mostly idle; on a CPU each process gets cores / N threads. On a cluster, submit one
`rapa train --solver S --snapshot auto` per solver to the scheduler instead, then run
`rapa table` on the logs. Ctrl-C (SIGINT, SIGTERM, SIGHUP) is passed on to the runs once: each
stops with its snapshot, and none starts after it.
"""
import concurrent.futures
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from ..analysis.table import format_table, table_row
from ..data.prefetch import STOP_SIGNALS
from ..errors import RapaError
from ..proto import pb
from ..prototxt import read_text
from ..snapshot import latest_snapshot
from .options import count, word


def add_arguments(p):
    p.add_argument("solvers", nargs="+", help="solver prototxt files")
    p.add_argument("--jobs", type=count(), default=1, help="runs at a time (default 1)")
    p.add_argument("--device", type=word, help="passed to every rapa train (cpu, cuda, cuda:N)")
    p.add_argument("--window", type=count(), default=5, help="rapa table's window (default 5)")


def run_files(solver: str) -> tuple[str, pathlib.Path, int]:
    """(snapshot prefix, log path, max_iter) of a solver file, as rapa train names them."""
    sp = read_text(solver, pb.SolverParameter())
    prefix = sp.snapshot_prefix or str(pathlib.Path(solver).with_suffix(""))
    return prefix, pathlib.Path(sp.log_file or f"{prefix}_log.jsonl"), sp.max_iter


def finished(prefix: str, max_iter: int) -> bool:
    newest = latest_snapshot(prefix)
    if newest is None:
        return False
    state = pb.SolverState.FromString(newest.read_bytes())
    return state.iter >= max_iter


def last_line(path: pathlib.Path) -> str:
    """The last non-empty line of a run's output (its error message), or a pointer to it."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    return lines[-1].strip() if lines else f"see {path}"


def run(args):
    if args.jobs < 1:
        raise RapaError("--jobs must be >= 1")
    if args.window < 1:
        raise RapaError("--window must be >= 1")
    named = {}  # resolved path -> the first way it was written
    for s in args.solvers:
        key = pathlib.Path(s).resolve()
        if key in named:
            raise RapaError(f"{s} is named twice" +
                            (f" (also as {named[key]})" if named[key] != s else ""))
        named[key] = s
    runs = [(s, *run_files(s)) for s in args.solvers]
    for what, index in (("snapshot_prefix", 1), ("log_file", 2)):
        seen = {}
        for r in runs:  # paths as the runs will open them, from this working folder
            where = pathlib.Path(os.path.abspath(r[index]))
            if where in seen:
                raise RapaError(f"{seen[where]} and {r[0]} have the same {what} ({r[index]}): "
                                f"they would overwrite each other's files")
            seen[where] = r[0]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    # The children run this very rapa, not a ./rapa of the working folder: -P keeps the folder
    # off their path, PYTHONPATH puts this package's first.
    home = str(pathlib.Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
    lock = threading.RLock()  # (the signal handler takes it in the main thread too)
    running: set = set()  # the runs' processes, each leading a process group of its own
    stopped: list = []    # the stop signal, once one came

    def say(message):
        with lock:
            print(message, flush=True)

    def one(solver, prefix, log, max_iter):
        if finished(prefix, max_iter):
            say(f"{solver}: finished already")
            return 0
        out = pathlib.Path(f"{prefix}_train.out")
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-P", "-m", "rapa", "train", "--solver", solver, "--snapshot",
                   "auto", "--no-progress"] + (["--device", args.device] if args.device else [])
        t0 = time.monotonic()
        with lock:
            if stopped:  # not started after a stop
                return None
            with open(out, "a") as f:  # the child holds its own copy of the file
                run = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
            running.add(run)
            say(f"{solver}: started (output {out})")
        code = run.wait()
        with lock:
            running.discard(run)
        took = f"after {time.monotonic() - t0:.0f} s"
        if code == 0:
            say(f"{solver}: finished {took}")
        else:
            say(f"{solver}: stopped with exit code {code} {took}: {last_line(out)}")
        return code

    def forward(signum, frame):
        # The runs have process groups of their own (a terminal's Ctrl-C reaches this process
        # alone): each gets the signal once, and stops as rapa train does, with its snapshot.
        with lock:
            first = not stopped
            stopped.append(signal.Signals(signum).name)
            for run in running if first else ():
                try:
                    os.killpg(run.pid, signum)
                except ProcessLookupError:
                    pass

    old = {s: signal.signal(s, forward) for s in sorted(STOP_SIGNALS)}
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(lambda r: one(*r), runs))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    logs = [r[2] for r in runs if r[2].is_file()]
    if logs:
        rows = []
        for log in logs:
            try:
                rows.append(table_row(log, args.window))
            except RapaError as e:
                say(f"(no table row: {e})")
        if rows:
            print(format_table(rows))
    if stopped:
        print(f"rapa sweep: {stopped[0]}: the runs stopped with their snapshots; rerun the same "
              f"command to continue them", file=sys.stderr, flush=True)
        return 130
    failed = [r[0] for r, c in zip(runs, codes) if c]
    if failed:
        raise RapaError(f"{len(failed)} run(s) did not finish: {', '.join(failed)}; rerun the "
                        f"same command to continue them")
    return 0
