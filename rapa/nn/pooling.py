"""Pool2d: Caffe's pooling (MAX, AVE, STOCHASTIC) and RAPA's mixed pooling, one module."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import IntPair, count, pair, pool_empty_window, pool_out
from ..ops import max_pool, mixed_pool, stochastic_pool

METHODS = ("max", "ave", "stochastic", "mixed")


class Pool2d(torch.nn.Module):
    """Pooling with Caffe's geometry (pooling_layer.cpp): output size rapa.geometry.pool_out
    (ceil mode; the last window starts inside the input or its left padding); input
    (N, C, H, W) -> (N, C, Ho, Wo).

    method:
      - "max": the window's maximum (rapa.max_pool);
      - "ave": the window's sum divided by the window clipped to the padded input;
      - "stochastic": in training one pixel per window, drawn with probability proportional
        to its positive part; at test time sum(w v) / sum(w), w = max(v, 0) (Zeiler & Fergus
        2013; Caffe's STOCHASTIC; rapa.stochastic_pool);
      - "mixed": a * max + (1 - a) * ave with a = 1 / (1 + exp(-mu beta)), beta learned per
        channel (`channels` of them), initialised at `beta_init` or 2 / mu, a bias towards
        max pooling (paper section 2.2; rapa.mixed_pool).
    ValueError names a bad argument.
    """

    def __init__(self, method: str, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, *, channels: Optional[int] = None, mu: float = 10.0,
                 beta_init: Optional[float] = None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"rapa: unknown pooling method {method!r}; known: "
                             f"{', '.join(METHODS)}")
        self.method = method
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"rapa: kernel {self.kernel_size} and stride {self.stride} must "
                             f"be >= 1")
        if min(self.padding) < 0 or any(p >= k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"rapa: pad {self.padding} must be >= 0 and smaller than the "
                             f"kernel {self.kernel_size}")
        if method in ("max", "ave") and any(2 * p > k for p, k in zip(self.padding,
                                                                     self.kernel_size)):
            raise ValueError(f"rapa: pad {self.padding} is more than half the kernel "
                             f"{self.kernel_size}: torch's max and average pooling, which "
                             f"{method.upper()} uses, refuse it (Caffe allows it; STOCHASTIC "
                             f"and MIXED do too)")
        self.beta = None
        if method == "mixed":
            if not (math.isfinite(mu) and mu > 0):
                raise ValueError(f"rapa: mu must be finite and > 0 (the paper: 10), got {mu:g}")
            start = 2.0 / mu if beta_init is None else beta_init
            if not math.isfinite(start):
                raise ValueError(f"rapa: beta_init must be finite, got {start:g}")
            if channels is None:
                raise ValueError("rapa: mixed pooling needs channels (one beta each)")
            channels = count(channels, "channels")
            self.mu = mu
            self.beta = torch.nn.Parameter(torch.full((channels,), float(start)))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(N, C, Ho, Wo) for an input of `input_shape`, without running; ValueError when the
        input does not fit."""
        if len(input_shape) != 4:
            raise ValueError(f"rapa: needs a 4D input (N, C, H, W), got shape {input_shape}")
        n, c, h, w = input_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        if k[0] > h + 2 * p[0] or k[1] > w + 2 * p[1]:
            raise ValueError(f"rapa: kernel {k} is larger than the padded input (input shape "
                             f"{input_shape})")
        if self.beta is not None and c != self.beta.shape[0]:
            raise ValueError(f"rapa: the input has {c} channels, mixed pooling has "
                             f"{self.beta.shape[0]} betas (input shape {input_shape})")
        out_hw = pool_out((h, w), k, s, p)
        if pool_empty_window((h, w), k, s, p):
            # Caffe would pool an empty window there; torch's ceil mode (MAX, AVE) drops it.
            raise ValueError(f"rapa: a stride larger than the kernel without padding leaves "
                             f"Caffe's last window {out_hw} outside the input (input shape "
                             f"{input_shape}); not supported")
        return n, c, *out_hw

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        k, s, p = self.kernel_size, self.stride, self.padding
        if self.method == "max":
            return max_pool(x, k, s, p)
        if self.method == "ave":
            return F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True)
        if self.method == "stochastic":
            return stochastic_pool(x, k, s, p, self.training, generator=generator)
        return mixed_pool(x, self.beta.to(x.dtype), k, s, p, mu=self.mu)

    def extra_repr(self) -> str:
        return (f"{self.method}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}" + (f", mu={self.mu:g}" if self.beta is not None else ""))
