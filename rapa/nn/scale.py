"""Scale: Caffe's elementwise scale (and optional bias) over a span of axes (scale_layer.cpp)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

Filler = Callable[[Tensor], None]


class Scale(torch.nn.Module):
    """y = x * scale + bias, the scale (and bias) of shape `shape` covering the axes
    [axis, axis + len(shape)) of x and broadcast over the others; input of any shape -> same.

    With `shape` given, the scale is a learned parameter (filled by `scale_filler`, default 1)
    and forward takes x; with `shape=None` the scale is forward's second argument (Caffe's
    Scale with two bottoms) and only the bias, if any, is learned, of `bias_shape`. The bias is
    filled by `bias_filler` (default 0). A scalar scale has shape () and any axis.
    """

    def __init__(self, shape: Optional[tuple[int, ...]], axis: int = 1, bias: bool = False,
                 bias_shape: Optional[tuple[int, ...]] = None,
                 scale_filler: Optional[Filler] = None, bias_filler: Optional[Filler] = None):
        super().__init__()
        if axis < 0:
            raise ValueError(f"rapa: axis must be >= 0 (canonical), got {axis}")
        self.axis = axis
        self.weight = None
        if shape is not None:
            self.weight = torch.nn.Parameter(torch.ones(tuple(shape)))
            if scale_filler is not None:
                with torch.no_grad():
                    scale_filler(self.weight)
            bias_shape = tuple(shape)
        elif bias and bias_shape is None:
            raise ValueError("rapa: a bias with a scale given at forward needs bias_shape")
        self.bias = None
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(tuple(bias_shape)))
            if bias_filler is not None:
                with torch.no_grad():
                    bias_filler(self.bias)

    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        # Caffe: a scalar scale applies from axis 0, whatever axis says.
        axis = 0 if t.dim() == 0 else self.axis
        if axis + t.dim() > x.dim() or tuple(x.shape[axis:axis + t.dim()]) != tuple(t.shape):
            raise ValueError(f"rapa: a scale of shape {tuple(t.shape)} does not fit an input of "
                             f"shape {tuple(x.shape)} from axis {axis}")
        return t.view(*t.shape, *([1] * (x.dim() - axis - t.dim())))

    def output_shape(self, input_shape: tuple[int, ...],
                     scale_shape: Optional[tuple[int, ...]] = None) -> tuple[int, ...]:
        """The input's shape, once the scale's shape is checked against it."""
        shape = tuple(self.weight.shape) if self.weight is not None else tuple(scale_shape)
        probe = torch.empty(input_shape, device="meta")
        self._view(torch.empty(shape, device="meta"), probe)
        if self.bias is not None:
            self._view(torch.empty(tuple(self.bias.shape), device="meta"), probe)
        return tuple(input_shape)

    def forward(self, x: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        w = self.weight if scale is None else scale
        if self.axis == 1 and w.dim() == 1 and x.dim() >= 2 and x.shape[1] == w.shape[0]:
            # One scale per channel: torch's batch-norm kernel with mean 0, variance 1 and no
            # eps computes x * w + b, and its backward fuses the three gradients into one pass
            # (about half the time of a multiply-add and its backward here).
            c = w.shape[0]
            return F.batch_norm(x, x.new_zeros(c), x.new_ones(c), w, self.bias, False, 0.0, 0.0)
        s = self._view(w, x)
        if self.bias is None:
            return x * s
        return torch.addcmul(self._view(self.bias, x), x, s)

    def extra_repr(self) -> str:
        shape = tuple(self.weight.shape) if self.weight is not None else "given"
        return f"scale={shape}, axis={self.axis}, bias={self.bias is not None}"
