"""The machine-readable training log: one JSON object per line.

{"iter": 200, "phase": "train", "loss": 1.93, "lr": 0.001, "images_per_s": 812.0, "time": 12.5}
{"iter": 1000, "phase": "test", "net": 0, "accuracy": 0.61, "loss": 1.1, "vote_accuracy": 0.64}
"""
from __future__ import annotations

import json
import pathlib

from .fileio import atomic_write_bytes


class TrainLog:
    def __init__(self, path: str | pathlib.Path, resume_iter: int | None):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_iter is None:
            atomic_write_bytes(self.path, b"")
        else:
            # Entries after the snapshot were made by a run that will now be redone.
            kept = [line for line in read_log_lines(self.path) if line["iter"] <= resume_iter
                    and not (line["iter"] == resume_iter and line["phase"] == "test")]
            atomic_write_bytes(self.path, "".join(json.dumps(x) + "\n" for x in kept).encode())
        self._file = open(self.path, "a")

    def write(self, **entry) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_log_lines(path) -> list[dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the log
    return out
