"""The device a tool runs on, named by the user, checked once with an error that says why."""
from __future__ import annotations

import torch

from . import _library
from .errors import RapaError


def device_named(name: str) -> torch.device:
    """torch.device(name) when this torch and the rapa library can run there."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RapaError(f"--device {name}: not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RapaError(f"--device {name}: this torch has no usable CUDA device")
        if not _library.has_cuda_kernels():
            raise RapaError("the rapa library was built without CUDA kernels; rebuild it with "
                            "a CUDA torch and nvcc, or use --device cpu")
    return device
