"""The paper's results table (Tables 1 and 2): per training log, the best test error, each
value the average over `window` consecutive test points (epochs, when the solver tests every
epoch), with the training error over the same window in parentheses, and the best
majority-vote test error where the log has one."""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import Optional

from ..errors import RapaError
from ..trainlog import accuracy_key, read_log_lines


@dataclass
class TableRow:
    name: str
    test_error: float             # %, the best window's mean
    train_error: Optional[float]  # %, over the same window (None: not logged)
    vote_error: Optional[float]   # %, the best window's mean of the vote error
    window: int                   # test points averaged (fewer than asked if the log is short)
    epochs: Optional[float]       # where the best window ends
    tests: int                    # test points in the log


def best_window(values: list[float], window: int) -> tuple[float, int]:
    """The smallest mean of `window` consecutive values, and where that window starts."""
    window = min(window, len(values))
    means = [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]
    start = min(range(len(means)), key=means.__getitem__)
    return means[start], start


def table_row(log, window: int = 5, key: Optional[str] = None) -> TableRow:
    path = pathlib.Path(log)
    if not path.is_file():
        raise RapaError(f"{log}: no such file")
    lines = read_log_lines(path)
    tests = [x for x in lines if x.get("phase") == "test" and x.get("net", 0) == 0]
    if not tests:
        raise RapaError(f"{log}: no test lines (the solver tests every test_interval)")
    key = key or accuracy_key(tests, log)
    points = [x for x in tests if key in x]
    if not points:
        raise RapaError(f"{log}: no test line has '{key}'")
    bad = next((x for x in points if not 0 <= x[key] <= 1
                or not 0 <= x.get(f"{key}_vote", 0) <= 1
                or not 0 <= x.get("train_accuracy", 0) <= 1), None)
    if bad is not None:  # NaN fails too
        raise RapaError(f"{log}: '{key}' at iteration {bad['iter']} is not an accuracy in "
                        f"[0, 1] (choose the accuracy output with --key)")
    errors = [100 * (1 - x[key]) for x in points]
    best, start = best_window(errors, window)
    used = points[start:start + min(window, len(points))]
    train = [100 * (1 - x["train_accuracy"]) for x in used if "train_accuracy" in x]
    votes = [100 * (1 - x[f"{key}_vote"]) for x in points if f"{key}_vote" in x]
    vote = best_window(votes, window)[0] if votes else None
    name = path.name.removesuffix(".jsonl").removesuffix("_log")
    # A test before any training batch (test_initialization) has no training error.
    return TableRow(name, best, sum(train) / len(train) if train else None,
                    vote, len(used), used[-1].get("epoch"), len(points))


def format_table(rows: list[TableRow], markdown: bool = False) -> str:
    def cell(row):
        train = f" ({row.train_error:.1f})" if row.train_error is not None else ""
        return f"{row.test_error:.1f}{train}"

    def vote(row):
        return f"{row.vote_error:.1f}" if row.vote_error is not None else "-"

    def epochs(row):
        return "-" if row.epochs is None or not math.isfinite(row.epochs) else f"{row.epochs:g}"
    header = ("net", "test (train) error %", "vote error %", "window", "best by epoch", "tests")
    body = [(r.name, cell(r), vote(r), str(r.window), epochs(r), str(r.tests)) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
                     for line in [header, *body])
