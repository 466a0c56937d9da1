"""LRN: Caffe's local response normalization, across channels or within a channel."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import count

NORM_REGIONS = ("across_channels", "within_channel")


class LRN(torch.nn.Module):
    """Caffe's LRN (lrn_layer.cpp), input (N, C, H, W) -> the same shape.

    across_channels: x / (k + alpha/n * sum over n neighbouring channels of x^2)^beta
                     (torch.nn.functional.local_response_norm);
    within_channel:  x / (1 + alpha * mean over an n x n spatial window of x^2)^beta, the window
                     zero-padded by (n-1)/2 and the mean always over n^2 pixels (Caffe's AVE
                     pooling); Caffe does not use k here.
    `local_size` n must be odd (ValueError otherwise).
    """

    def __init__(self, local_size: int = 5, alpha: float = 1.0, beta: float = 0.75,
                 k: float = 1.0, norm_region: str = "across_channels"):
        super().__init__()
        if count(local_size, "local_size") % 2 == 0:
            raise ValueError(f"rapa: local_size must be odd, got {local_size}")
        if not all(math.isfinite(v) for v in (alpha, beta, k)):
            raise ValueError(f"rapa: alpha, beta and k must be finite, got {alpha}, {beta}, {k}")
        if norm_region not in NORM_REGIONS:
            raise ValueError(f"rapa: unknown norm_region {norm_region!r}; known: "
                             f"{', '.join(NORM_REGIONS)}")
        self.size, self.alpha, self.beta, self.k = local_size, alpha, beta, k
        self.within = norm_region == "within_channel"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4:
            raise ValueError(f"rapa: needs a 4D input (N, C, H, W), got shape {input_shape}")
        return tuple(input_shape)

    def forward(self, x: Tensor) -> Tensor:
        if not self.within:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        pad = (self.size - 1) // 2
        mean_sq = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)

    def extra_repr(self) -> str:
        region = "within_channel" if self.within else "across_channels"
        return f"{self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g}, {region}"
