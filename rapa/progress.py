"""A progress bar on a terminal (stderr), and nothing where stderr is not one (logs, CI)."""
from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int, label: str, start: int = 0, enabled: bool | None = None,
                 stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label, self.start, self.done = max(total, 1), label, start, start
        self.t0 = time.monotonic()
        self.note = ""
        self._last = 0.0

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        if note:
            self.note = note
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = now - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (f"\r{self.label} [{bar}] {self.done}/{self.total} {_fmt(elapsed)}<{_fmt(eta)} "
                f"{rate:.1f}/s {self.note}")
        self.stream.write(line[:200].ljust(100))
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the bar so that a normal line can be printed."""
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
