"""TiledConv2d: a convolution whose kernel matrix is replicated onto tiles (RAPA), on digital
or on simulated analog arrays; with one tile, an ordinary convolution."""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..analog import HICConfig, RPUConfig, analog_conv, make_arrays
from ..geometry import IntPair, conv_out, count, pair
from ..ops import tiled_conv
from ..tiling import NoTiling, TilingScheme, make_scheme

Filler = Callable[[Tensor], None]


def _kaiming_uniform(replica: Tensor) -> None:
    """torch.nn.Conv2d's default initialisation of one kernel (O, C, kh, kw)."""
    torch.nn.init.kaiming_uniform_(replica, a=math.sqrt(5))


class TiledConv2d(torch.nn.Module):
    """A 2-D convolution whose kernel matrix is replicated onto T tiles that learn
    independently; output pixel (n, y, x) is computed by the tile that the tiling scheme assigns
    it (Rasch et al. 2019, section 2.1; `rapa.tiling`).

    Shapes: input (N, C, H, W) -> output (N, O, Ho, Wo) with Ho, Wo = rapa.geometry.conv_out
    (Caffe's and torch's formula). Parameters:
      - untiled (`tiling="none"`): weight (O, C / groups, kh, kw), bias (O,): torch's and
        Caffe's layouts, computed by F.conv2d (groups and dilation allowed);
      - tiled: weight (T, O, C, kh, kw), bias (T, O), T = scheme.num_kernels (1 for
        perforated), computed by rapa.tiled_conv (no groups, no dilation).
    `tiling` is a scheme name (rapa.tiling.SCHEMES) with `num_tiles`, or a TilingScheme.

    `rpu_config` puts every replica on its own simulated analog array (rapa.analog, paper
    section 3.2): products through the arrays' periphery (rapa.analog_mvm), and no weight
    gradient: the backward pass records the rows for the arrays' pulsed update, which the
    optimizer's step applies (rapa.sgd.SGD, or `arrays.apply_update(weight, lr)`). The bias
    stays digital. Not modelled: groups, dilation, schemes that read regions (image_pad).
    A HICConfig (rapa.analog.hic) puts every replica on hybrid binary + multi-level PCM
    arrays instead, trained through a digital accumulator by the same optimizer's step.

    `weight_filler(replica)` fills one replica (O, C / groups, kh, kw) in place and is called
    once per replica, each drawn on its own (default: torch.nn.Conv2d's initialisation);
    `bias_filler(bias)` fills the whole bias. With weight scaling the arrays then map the
    filled weights onto conductances. Bad arguments raise ValueError naming them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, bias: bool = True,
                 tiling: Union[str, TilingScheme] = "none", num_tiles: int = 1,
                 rpu_config: Optional[Union[RPUConfig, HICConfig]] = None,
                 weight_filler: Optional[Filler] = None, bias_filler: Optional[Filler] = None):
        super().__init__()
        self.in_channels = in_channels = count(in_channels, "in_channels")
        self.out_channels = out_channels = count(out_channels, "out_channels")
        self.groups = groups = count(groups, "group")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise ValueError("rapa: kernel_size, stride and dilation must be >= 1")
        if min(self.padding) < 0:
            raise ValueError(f"rapa: padding must be >= 0, got {self.padding}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"rapa: group {groups} must divide the input channels "
                             f"({in_channels}) and num_output ({out_channels})")
        self.scheme = make_scheme(tiling, num_tiles) if isinstance(tiling, str) else tiling
        self.tiled = not isinstance(self.scheme, NoTiling)
        simple = groups == 1 and self.dilation == (1, 1)
        if self.tiled and not simple:
            raise ValueError("rapa: a tiled convolution supports neither group nor dilation")
        if rpu_config is not None and not simple:
            raise ValueError("rapa: an analog convolution supports neither group nor dilation")
        if rpu_config is not None and self.scheme.reads_regions:
            raise ValueError(f"rapa: tiling '{self.scheme.name}' reads other regions as zero, "
                             f"which analog arrays do not model; use image_overlap")
        kh, kw = self.kernel_size
        if self.tiled:
            replicas = self.scheme.num_kernels
            wshape, bshape = (replicas, out_channels, in_channels, kh, kw), (replicas, out_channels)
        else:
            wshape, bshape = (out_channels, in_channels // groups, kh, kw), (out_channels,)
        self.weight = torch.nn.Parameter(torch.empty(wshape))
        self.bias = torch.nn.Parameter(torch.empty(bshape)) if bias else None
        with torch.no_grad():
            for replica in (self.weight if self.tiled else [self.weight]):
                (weight_filler or _kaiming_uniform)(replica)
            if self.bias is not None:
                if bias_filler is not None:
                    bias_filler(self.bias)
                else:  # torch.nn.Conv2d's: uniform within 1/sqrt(fan_in)
                    bound = 1.0 / math.sqrt(math.prod(wshape[-3:]))
                    torch.nn.init.uniform_(self.bias, -bound, bound)
        self.arrays = None
        if rpu_config is not None:
            self.arrays = make_arrays(rpu_config, tuple(self.weight3().shape))
            self.arrays.map_(self.weight3())

    def weight3(self) -> Tensor:
        """The weight as T arrays of O x K, K in (c, ky, kx) order: a view."""
        w = self.weight
        return w.view(-1, self.out_channels, math.prod(w.shape[-3:]))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(N, O, Ho, Wo) for an input of `input_shape`, without running; ValueError when the
        input does not fit (channels, kernel larger than the padded input, tiling)."""
        if len(input_shape) != 4:
            raise ValueError(f"rapa: needs a 4D input (N, C, H, W), got shape {input_shape}")
        n, c, h, w = input_shape
        if c != self.in_channels:
            raise ValueError(f"rapa: the input has {c} channels, the convolution takes "
                             f"{self.in_channels} (input shape {input_shape})")
        out_hw = tuple(conv_out(s, k, st, p, d) for s, k, st, p, d in zip(
            (h, w), self.kernel_size, self.stride, self.padding, self.dilation))
        if min(out_hw) < 1:
            raise ValueError(f"rapa: kernel {self.kernel_size} with pad {self.padding} does not "
                             f"fit the input {h}x{w} (input shape {input_shape})")
        if n * self.out_channels * out_hw[0] * out_hw[1] > 2**31 - 1:  # the kernels' indices
            raise ValueError(f"rapa: an output of {n}x{self.out_channels}x{out_hw[0]}x"
                             f"{out_hw[1]} is too large (over 2^31 - 1 values; pad {self.padding}"
                             f", num_output {self.out_channels})")
        self.scheme.check((h, w), out_hw)
        patches, tiles = out_hw[0] * out_hw[1], self.scheme.num_tiles
        if tiles > patches:  # the analog time model would claim a speed-up never realised
            raise ValueError(f"rapa: tiling '{self.scheme.name}' has {tiles} tiles, but the "
                             f"output has {patches} patches ({out_hw[0]}x{out_hw[1]}) per "
                             f"image: {tiles - patches} tiles would never be used")
        return n, self.out_channels, *out_hw

    def state_blobs(self) -> list[Tensor]:
        """What a model file keeps besides weight and bias: the scheme's fixed partition, the
        arrays' device draws and scales (in that order)."""
        return self.scheme.state_blobs() + (self.arrays.state_blobs() if self.arrays else [])

    def state_blob_problem(self, index: int, value: Tensor) -> Optional[str]:
        """Why `value` cannot be state blob `index` (the scheme's, then the arrays'), or None."""
        own = len(self.scheme.state_blobs())
        if index < own:
            return self.scheme.state_problem(index, value)
        return self.arrays.state_problem(index - own, value) if self.arrays else None

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if not self.tiled and self.arrays is None:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                            self.groups)
        # Shapes by index, so that a wrong input reaches the op's check, which names it.
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        out_h, out_w = (conv_out(s, k, st, p) for s, k, st, p in
                        zip((h, w), self.kernel_size, self.stride, self.padding))
        assignment = None
        if self.tiled:
            assignment = self.scheme.assign(n, out_h, out_w, training=self.training,
                                            device=x.device, generator=generator)
        # After assign: random_fixed draws its partition at the first call.
        capacity = self.scheme.tile_capacity(n, out_h, out_w, training=self.training)
        if self.arrays is not None:
            return analog_conv(x, self.weight3(), self.bias, assignment, self.kernel_size,
                               self.stride, self.padding, self.arrays, capacity)
        return tiled_conv(x, self.weight, self.bias, assignment, self.stride, self.padding,
                          self.scheme.region(h, w, x.device), tile_capacity=capacity)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.groups != 1 or self.dilation != (1, 1):
            s += f", dilation={self.dilation}, groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False") + \
            (", analog" if self.arrays is not None else "")
