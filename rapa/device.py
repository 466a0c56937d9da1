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
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # the library's kernels' devices
        raise RapaError(f"--device {name}: not a device rapa runs on (cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RapaError(f"--device {name}: this torch ({torch.__version__}) has no usable "
                            f"CUDA device")
        if not _library.has_cuda_kernels():
            raise RapaError("the rapa library was built without CUDA kernels; rebuild it with "
                            "a CUDA torch and nvcc, or use --device cpu")
    return device
