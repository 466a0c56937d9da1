"""Compile-checks every cuda/*.cu with nvcc, without a GPU and without a CUDA build of torch.

    python tools/check_cuda_sources.py [--arch 80 --arch 90] [FILE ...]

The CPU wheel of torch ships the ATen and c10/cuda headers but not the one header that CMake
generates for a CUDA build (c10/cuda/impl/cuda_cmake_macros.h); a stand-in with the same single
definition is written to a temporary folder. Exit status 0 when every file compiles.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_ARCHS = ("80", "90")


def find_nvcc() -> str | None:
    for candidate in ("/usr/local/cuda/bin/nvcc", shutil.which("nvcc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def compile_command(nvcc: str, source: pathlib.Path, archs, stub_dir: str, out: str) -> list:
    import torch
    torch_dir = pathlib.Path(torch.__file__).resolve().parent
    cmd = [nvcc, "-c", str(source), "-o", out, "-std=c++20", "--expt-relaxed-constexpr",
           "-Xcompiler", "-fPIC", f"-I{stub_dir}", f"-I{torch_dir / 'include'}",
           f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
           f"-I{ROOT / 'operators'}", f"-I{ROOT / 'cuda'}"]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd


def check(sources, archs=DEFAULT_ARCHS, jobs: int | None = None) -> dict:
    """Compiles each source; returns {source: (ok, output)}."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (looked in /usr/local/cuda/bin and on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        stub = pathlib.Path(tmp, "c10", "cuda", "impl")
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")

        def one(source):
            cmd = compile_command(nvcc, source, archs, tmp, str(pathlib.Path(tmp, source.stem + ".o")))
            proc = subprocess.run(cmd, capture_output=True, text=True)
            return source, (proc.returncode == 0, proc.stdout + proc.stderr)

        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
            return dict(pool.map(one, sources))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=pathlib.Path)
    parser.add_argument("--arch", action="append", help="SM version, e.g. 80 (repeatable)")
    args = parser.parse_args()
    sources = args.files or sorted((ROOT / "cuda").glob("*.cu"))
    results = check(sources, tuple(args.arch or DEFAULT_ARCHS))
    failed = 0
    for source, (ok, output) in results.items():
        print(f"{'ok    ' if ok else 'FAILED'} {source.relative_to(ROOT) if source.is_absolute() else source}")
        if not ok:
            failed += 1
            print(output)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
