"""Loads librapa_ops, the compiled operator library, into PyTorch's operator registry."""
from __future__ import annotations

import pathlib

import torch

_HERE = pathlib.Path(__file__).resolve().parent


def library_path() -> pathlib.Path:
    """The path of the built operator library inside the package."""
    candidates = sorted(_HERE.glob("librapa_ops*.so"))
    if not candidates:
        raise ImportError(
            f"rapa: the operator library librapa_ops*.so is missing from {_HERE}. Build it with "
            "`pip install --no-build-isolation -e .` in the repository root (see README.md).")
    return candidates[0]


def load() -> None:
    if hasattr(torch.ops.rapa, "tiled_conv"):
        return
    torch.ops.load_library(str(library_path()))


def has_cuda_kernels() -> bool:
    """True when the library was built with the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("rapa::tiled_conv", "CUDA")
