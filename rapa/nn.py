"""torch.nn modules over the rapa operators: what a net builder instantiates per layer."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .ops import IntPair, _pair, mixed_pool, stochastic_pool, tiled_conv
from .tiling import TilingScheme, make_scheme


class TiledConv2d(torch.nn.Module):
    """A convolution whose kernel matrix is replicated onto tiles that learn independently.

    `tiling` is a scheme name (rapa.tiling.SCHEMES) or a TilingScheme instance. Each replica is
    initialised independently, as torch.nn.Conv2d initialises its one kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, bias: bool = True,
                 tiling: Union[str, TilingScheme] = "none", num_tiles: int = 1):
        super().__init__()
        self.scheme = make_scheme(tiling, num_tiles) if isinstance(tiling, str) else tiling
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        kh, kw = self.kernel_size
        replicas = self.scheme.num_kernels
        self.weight = torch.nn.Parameter(torch.empty(replicas, out_channels, in_channels, kh, kw))
        self.bias = torch.nn.Parameter(torch.empty(replicas, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.weight.shape[2] * self.weight.shape[3] * self.weight.shape[4]
        bound = 1.0 / math.sqrt(fan_in)
        for t in range(self.weight.shape[0]):
            torch.nn.init.kaiming_uniform_(self.weight[t], a=math.sqrt(5))
        if self.bias is not None:
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        assignment = self.scheme.assign(n, out_h, out_w, training=self.training, device=x.device,
                                        generator=generator)
        region = self.scheme.region(h, w, x.device)
        return tiled_conv(x, self.weight, self.bias, assignment, self.stride, self.padding, region)


class MixedPool2d(torch.nn.Module):
    """Learnable mixture of max and average pooling, one beta per channel (paper section 2.2):
    a = 1 / (1 + exp(-mu beta)), initialised at beta = 2 / mu (a bias towards max pooling)."""

    def __init__(self, channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, mu: float = 10.0, beta_init: Optional[float] = None):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.mu = kernel_size, stride, padding, mu
        start = 2.0 / mu if beta_init is None else beta_init
        self.beta = torch.nn.Parameter(torch.full((channels,), float(start)))

    def forward(self, x: Tensor) -> Tensor:
        return mixed_pool(x, self.beta.to(x.dtype), self.kernel_size, self.stride, self.padding,
                          mu=self.mu)


class StochasticPool2d(torch.nn.Module):
    """Stochastic pooling: sampled in training mode, probability-weighted at test time."""

    def __init__(self, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return stochastic_pool(x, self.kernel_size, self.stride, self.padding, self.training,
                               generator=generator)
