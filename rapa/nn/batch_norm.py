"""BatchNorm with Caffe's semantics (batch_norm_layer.cpp): no affine part (that is Scale), and
the accumulated statistics kept as Caffe keeps them, so that its .caffemodel blobs load."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import count


class BatchNorm(torch.nn.Module):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1); input (N, C, ...) -> same shape.

    With batch statistics (training), mean and var are the batch's, over every axis but the
    channels (var biased), and the accumulated statistics are updated as Caffe does:
        factor   <- moving_average_fraction * factor + 1
        mean_sum <- moving_average_fraction * mean_sum + mean
        var_sum  <- moving_average_fraction * var_sum + m / (m - 1) * var,   m = N * H * W
    With global statistics, mean = mean_sum / factor and var = var_sum / factor (0 while factor
    is 0), and the gradient is dy / sqrt(var + eps). The buffers `mean_sum`, `var_sum` (C,) and
    `factor` (1,) are Caffe's three blobs, in that order.

    `use_global_stats`: None follows the module's mode (eval: global, train: batch), as
    torch.nn.BatchNorm2d; a BatchNorm layer passes Caffe's rule (its phase, or its prototxt).
    forward's optional `weight` and `bias` (C,) apply y * weight + bias in the same pass: the
    Scale layer that follows a BatchNorm in Caffe's nets, fused as torch's kernel allows.
    """

    def __init__(self, channels: int, eps: float = 1e-5, moving_average_fraction: float = 0.999,
                 use_global_stats: Optional[bool] = None):
        super().__init__()
        channels = count(channels, "channels")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"rapa: eps must be finite and > 0, got {eps:g}")
        if not 0 <= moving_average_fraction <= 1:
            raise ValueError(f"rapa: moving_average_fraction must be in [0, 1], got "
                             f"{moving_average_fraction:g}")
        self.channels, self.eps = channels, eps
        self.moving_average_fraction = moving_average_fraction
        self.use_global_stats = use_global_stats
        self.register_buffer("mean_sum", torch.zeros(channels))
        self.register_buffer("var_sum", torch.zeros(channels))
        self.register_buffer("factor", torch.zeros(1))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 2 or input_shape[1] != self.channels:
            raise ValueError(f"rapa: needs an input (N, {self.channels}, ...) with "
                             f"{self.channels} channels, got shape {input_shape}")
        return tuple(input_shape)

    def global_stats(self) -> tuple[Tensor, Tensor]:
        """The accumulated mean and variance (0 while nothing has been accumulated)."""
        scale = torch.where(self.factor == 0, 0.0, 1.0 / self.factor)
        return self.mean_sum * scale, self.var_sum * scale

    def forward(self, x: Tensor, weight: Optional[Tensor] = None,
                bias: Optional[Tensor] = None) -> Tensor:
        use_global = (not self.training) if self.use_global_stats is None \
            else self.use_global_stats
        if use_global:
            mean, var = self.global_stats()
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        m = x.numel() // self.channels
        if m == 1:  # torch refuses batch statistics of one value; Caffe's result is 0
            y = x * 0
            if weight is not None:
                view = (1, -1) + (1,) * (x.dim() - 2)
                y = y * weight.view(view) + (bias.view(view) if bias is not None else 0)
            batch_mean = x.detach().reshape(self.channels)
            batch_var = torch.zeros_like(self.var_sum)
        else:
            # torch's fused kernel computes the batch statistics; with momentum 1 it leaves
            # them (mean, and var times m / (m - 1)) in these buffers, as Caffe accumulates.
            batch_mean = torch.zeros_like(self.mean_sum)
            batch_var = torch.zeros_like(self.var_sum)
            y = F.batch_norm(x, batch_mean, batch_var, weight, bias, True, 1.0, self.eps)
        with torch.no_grad():
            f = self.moving_average_fraction
            self.factor.mul_(f).add_(1)
            self.mean_sum.mul_(f).add_(batch_mean)
            self.var_sum.mul_(f).add_(batch_var)
        return y

    def extra_repr(self) -> str:
        return (f"{self.channels}, eps={self.eps:g}, moving_average_fraction="
                f"{self.moving_average_fraction:g}, use_global_stats={self.use_global_stats}")
