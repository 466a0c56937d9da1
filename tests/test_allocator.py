"""rapa.allocator: a large buffer freed and allocated again is reused, not paged in anew."""
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, torch
from rapa.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 64 * 2 ** 20 // 4  # 64 MB: above glibc's largest mmap threshold (32 MB)
for _ in range(12):  # glibc's bins hold a few freed buffers before one is reused
    torch.empty(n).fill_(1)
before = faults()
for _ in range(5):
    torch.empty(n).fill_(1)
print(kept, (faults() - before) / 5 / (n * 4 / 4096))
"""


def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""}, check=True).stdout.split()
    return out[0] == "True", float(out[1])


def test_kept_memory_is_reused_without_page_faults():
    kept, faults_per_page = probe("keep")
    if not kept:
        pytest.skip("not glibc: nothing to set")
    # Page faults per 4 kB page of the buffer, per allocation: none once memory is kept ...
    assert faults_per_page < 0.05
    # ... and about one with glibc's defaults (the 64 MB buffer is mmapped and unmapped each time).
    _, faults_system = probe("system")
    assert faults_system > 0.5
