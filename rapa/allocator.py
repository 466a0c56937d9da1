"""Keep freed memory in the process for reuse instead of handing it back to the system.

glibc serves every allocation above 32 MB (and, until its threshold adapts, above 128 kB) with
a fresh mmap and returns it with munmap when freed, so each of a training step's large buffers
(conv2's patch rows at batch 128 are 105 MB) is paged in again on every step: zeroed by the
kernel one 4 kB page fault at a time. On a 2-core CPU that was more than half of an analog
training step (a step took 1.0 s, and 0.45 s without it). With mmap off and the heap never
trimmed, a freed buffer is reused as it is (torch's 64-byte aligned buffers after a few steps,
once glibc's bins hold some). The process keeps its peak memory and a few freed buffers besides, as a caching
allocator would: the analog Full net's benchmark at batch 128 peaked at 1.49 GB resident
instead of 1.14 GB, and ran 2.3 times as fast.

The `rapa` command and the benchmarks call keep_freed_memory() at start. A program that imports
rapa as a library decides for itself: call it, or set glibc's own environment variables
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes> before it starts. RAPA_SYSTEM_MALLOC=1
leaves glibc's defaults in place (to measure the difference).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2 ** 31 - 1  # a size_t in glibc, an int in mallopt: the largest int

# The same settings through glibc's environment variables, for a child process.
KEEP_FREED_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Turns glibc's mmap allocations and heap trimming off for this process. Returns whether
    it did (False off glibc, or with RAPA_SYSTEM_MALLOC=1)."""
    if os.environ.get("RAPA_SYSTEM_MALLOC") == "1":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    return ok
