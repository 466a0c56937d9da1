"""Shared test fixtures: every op is tested on the CPU and, where present, on CUDA."""
import os
import subprocess
import sys

import pytest
import torch

import rapa
from rapa import _library

CUDA_READY = torch.cuda.is_available() and _library.has_cuda_kernels()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not CUDA_READY, reason="needs a GPU and a CUDA build of the operator library")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs on every run; the seed is printed, and shown when a test fails."""
    seed = torch.seed()  # draws a new nondeterministic seed and seeds all devices with it
    print(f"torch seed {seed}")
    return seed


def run_with_cpu_isa(isa: str, code: str) -> None:
    """Runs `code` in a fresh interpreter whose CPU kernels are narrowed by RAPA_CPU_ISA=isa (it
    is read once per process), with tests/ importable; fails with its stderr."""
    env = dict(os.environ, RAPA_CPU_ISA=isa)
    tests = os.path.dirname(__file__)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
