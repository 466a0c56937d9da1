"""The machine-readable training log: one JSON object per line.

{"iter": 200, "phase": "train", "epoch": 0.04, "loss": 1.93, "lr": 0.001, "images_per_s": 812.0}
{"iter": 5000, "phase": "test", "net": 0, "accuracy": 0.61, "loss": 1.1, "accuracy_vote": 0.64,
 "epoch": 1.0, "train_accuracy": 0.58}

Test lines carry each output of the test net, `<output>_vote` for the majority of test_votes
passes, the epoch (training images seen / records of the training database) and the top-1
accuracy of the training batches since the previous test. A log given as a symbolic link is
written through it (to its target).
"""
from __future__ import annotations

import json
import pathlib

from .errors import RapaError
from .fileio import atomic_write_bytes


class TrainLog:
    def __init__(self, path: str | pathlib.Path, resume_iter: int | None):
        self.path = pathlib.Path(path).resolve()  # through a link: rewriting it keeps the link
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
    """The entries of a log (none if it does not exist). Only the last line may be cut (by a
    crash: it is left out). Raises RapaError for a file that is not a log: not text, a line
    that is not a JSON object with an integer 'iter', a value other than a number (besides
    'phase'), or an unreadable line before the last."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise RapaError(f"{path}: not a training log (not text)") from None
    out = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and (out or line.lstrip().startswith("{")):
                break  # a line cut by a crash ends the log
            raise RapaError(f"{path}:{number}: not a JSON line (only the last line of a log "
                            f"can be cut short)") from None
        if not isinstance(entry, dict) or type(entry.get("iter")) is not int:
            raise RapaError(f"{path}:{number}: not a training log line (a JSON object with "
                            f"'iter')")
        for key, value in entry.items():
            if key != "phase" and type(value) not in (int, float):
                raise RapaError(f"{path}:{number}: '{key}' is {json.dumps(value)}, not a number")
        out.append(entry)
    return out


def accuracy_key(entries: list[dict], log) -> str:
    """The accuracy output of a log's test lines: the first key naming an accuracy (not a vote
    or the training accuracy)."""
    for key in entries[0]:
        if "acc" in key.lower() and not key.endswith("_vote") and key != "train_accuracy":
            return key
    raise RapaError(f"{log}: its test lines hold no accuracy (keys: {', '.join(entries[0])})")
