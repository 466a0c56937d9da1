"""Tiling schemes of RAPA-ConvNets (paper section 2.1): who computes which patch.

A scheme maps the output positions of a convolution to the tiles (kernel replicas) that
compute them, producing what rapa.tiled_conv takes: an int64 assignment (N, Ho, Wo) and, for
"image w/pad", a region map (H, W). Schemes are torch.nn.Modules so that state they draw once
(random fixed) is saved and loaded with the model's state_dict.

Tile formulas (q = sqrt(num_tiles), y, x output row and column, Ho x Wo output size):
  image w/overlap, image w/pad: t = floor(q x / Wo) + q floor(q y / Ho)
  alternate:                    t = (x mod q) + q (y mod q)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .ops import random_assign


class TilingScheme(torch.nn.Module):
    """Base class. `num_tiles` is the paper's nt; `num_kernels` the replicas the weight holds."""

    name = "base"
    # Whether a tile reads the pixels of other regions as zero (region() gives a map).
    reads_regions = False

    def __init__(self, num_tiles: int):
        super().__init__()
        if not isinstance(num_tiles, int) or num_tiles < 1:
            raise ValueError(f"rapa: tiling '{self.name}' needs num_tiles, an integer >= 1, got "
                             f"{num_tiles!r}")
        self.num_tiles = num_tiles

    @property
    def num_kernels(self) -> int:
        return self.num_tiles

    def check(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        """ValueError naming what does not fit when the scheme cannot tile a convolution with
        input size in_hw and output size out_hw (e.g. a block scheme and indivisible sides)."""

    def prepare(self, out_hw: tuple[int, int], device: torch.device = torch.device("cpu"),
                generator: Optional[torch.Generator] = None) -> None:
        """Draw what the scheme keeps for this output size, once: random_fixed's partition
        (a layer's set-up calls it, so that the partition exists before it is saved or
        loaded); other schemes keep nothing."""

    def state_blobs(self) -> list[Tensor]:
        """What the scheme keeps and a model file saves (random_fixed's partition)."""
        return []

    def state_problem(self, index: int, value: Tensor) -> Optional[str]:
        """Why `value` cannot be state blob `index` (a model file's), or None."""
        return None

    def assign(self, batch: int, out_h: int, out_w: int, *, training: bool,
               device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
        raise NotImplementedError

    def region(self, in_h: int, in_w: int, device: torch.device) -> Optional[Tensor]:
        """Region of each input pixel, or None when patches read across regions."""
        return None

    def tile_capacity(self, batch: int, out_h: int, out_w: int, *,
                      training: bool) -> Optional[int]:
        """The most patches one kernel gets in a batch of `assign`'s (rapa.tiled_conv's
        tile_capacity), known without looking at the assignment: every patch, unless the
        scheme knows better; None where it is not known (random_fixed under torch.compile)."""
        return batch * out_h * out_w

    def extra_repr(self) -> str:
        return f"num_tiles={self.num_tiles}"

    def _square_side(self) -> int:
        q = math.isqrt(self.num_tiles)
        if q * q != self.num_tiles:
            raise ValueError(
                f"rapa: tiling '{self.name}' needs a square number of tiles (4, 9, 16, ...), got "
                f"{self.num_tiles}; the 'random' scheme works for any count")
        return q


class NoTiling(TilingScheme):
    """One kernel computes every patch: an ordinary convolution."""

    name = "none"

    def __init__(self, num_tiles: int = 1):
        super().__init__(num_tiles)
        if num_tiles != 1:
            raise ValueError(f"rapa: tiling 'none' has exactly 1 tile, got {num_tiles}")

    def assign(self, batch, out_h, out_w, *, training, device, generator=None):
        return torch.zeros((batch, out_h, out_w), dtype=torch.int64, device=device)


def _check_blocks(height: int, width: int, q: int, what: str, scheme: str) -> None:
    if height % q or width % q:
        raise ValueError(
            f"rapa: tiling '{scheme}' with {q * q} tiles needs the {what} sides divisible by "
            f"{q}, got {height}x{width}")


def _block_capacity(batch: int, height: int, width: int, q: int) -> int:
    """The patches of the largest of q x q blocks (or residues) over a batch: ceil(h / q) x
    ceil(w / q) per image."""
    return batch * -(-height // q) * -(-width // q)


def _block_map(height: int, width: int, q: int, what: str, scheme: str, device) -> Tensor:
    _check_blocks(height, width, q, what, scheme)
    y = torch.arange(height, device=device) * q // height
    x = torch.arange(width, device=device) * q // width
    return x.view(1, width) + q * y.view(height, 1)


class ImageOverlap(TilingScheme):
    """Image-based tiling: tile t computes the patches of the t-th q x q block of the image;
    border patches read pixels of the neighbouring blocks ("image w/overlap")."""

    name = "image_overlap"

    def __init__(self, num_tiles: int):
        super().__init__(num_tiles)
        self._square_side()  # refused now, not at the first call

    def check(self, in_hw, out_hw):
        _check_blocks(*out_hw, self._square_side(), "output", self.name)

    def assign(self, batch, out_h, out_w, *, training, device, generator=None):
        tiles = _block_map(out_h, out_w, self._square_side(), "output", self.name, device)
        return tiles.expand(batch, out_h, out_w).contiguous()

    def tile_capacity(self, batch, out_h, out_w, *, training):
        return _block_capacity(batch, out_h, out_w, self._square_side())


class ImagePad(ImageOverlap):
    """Image-based tiling where a tile reads the pixels of other blocks as zero, as if each block
    were a separate padded sub-image ("image w/pad")."""

    name = "image_pad"
    reads_regions = True

    def check(self, in_hw, out_hw):
        super().check(in_hw, out_hw)
        _check_blocks(*in_hw, self._square_side(), "input", self.name)

    def region(self, in_h, in_w, device):
        return _block_map(in_h, in_w, self._square_side(), "input", self.name, device)


class Alternate(TilingScheme):
    """Neighbouring patches go to different tiles: t = (x mod q) + q (y mod q)."""

    name = "alternate"

    def __init__(self, num_tiles: int):
        super().__init__(num_tiles)
        self._square_side()

    def check(self, in_hw, out_hw):
        self._square_side()

    def assign(self, batch, out_h, out_w, *, training, device, generator=None):
        q = self._square_side()
        y = torch.arange(out_h, device=device) % q
        x = torch.arange(out_w, device=device) % q
        return (x.view(1, out_w) + q * y.view(out_h, 1)).expand(batch, out_h, out_w).contiguous()

    def tile_capacity(self, batch, out_h, out_w, *, training):
        return _block_capacity(batch, out_h, out_w, self._square_side())


class RandomFixed(TilingScheme):
    """One balanced random partition, drawn at the first call and kept (in the state_dict)."""

    name = "random_fixed"

    def __init__(self, num_tiles: int):
        super().__init__(num_tiles)
        self.register_buffer("partition", torch.empty((0,), dtype=torch.int64))

    def check(self, in_hw, out_hw):
        if self.partition.numel() and tuple(self.partition.shape) != tuple(out_hw):
            raise ValueError(
                f"rapa: tiling 'random_fixed' drew its partition for a {tuple(self.partition.shape)}"
                f" output, but this input gives {out_hw[0]}x{out_hw[1]}")

    def prepare(self, out_hw, device=torch.device("cpu"), generator=None):
        if self.partition.numel() == 0:
            self.partition = random_assign(1, *out_hw, self.num_tiles, generator=generator,
                                           device=device)[0]

    def state_blobs(self):
        return [self.partition]

    def tile_capacity(self, batch, out_h, out_w, *, training):
        if torch.compiler.is_compiling():
            return None  # not known without reading the partition (a graph break)
        # The largest group of the partition (a loaded one need not be balanced), counted
        # once per partition: the count is kept with the tensor it counted (held, so no other
        # tensor can take its place) and its _version (moved by any torch write into it).
        part = self.partition
        counted = getattr(self, "_counted", None)
        if counted is None or counted[0] is not part or counted[1] != part._version:
            largest = int(torch.bincount(part.reshape(-1).cpu(), minlength=self.num_tiles)
                          .max()) if part.numel() else 0
            self._counted = counted = (part, part._version, largest)
        return batch * counted[2]

    def state_problem(self, index, value):
        bad = ~torch.isfinite(value) | (value != value.round()) | (value < 0) | (
            value >= self.num_tiles)
        if bad.any():
            return (f"the partition must hold tile numbers 0 to {self.num_tiles - 1}, got "
                    f"{value[bad].flatten()[0].item():g}")
        return None

    def assign(self, batch, out_h, out_w, *, training, device, generator=None):
        self.prepare((out_h, out_w), device, generator)  # used outside a net: the first call
        self.check((0, 0), (out_h, out_w))
        return self.partition.to(device).expand(batch, out_h, out_w).contiguous()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "partition"
        if key in state_dict:  # the saved partition decides the shape
            self.partition = torch.empty_like(state_dict[key], device=self.partition.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Random(TilingScheme):
    """A new balanced random partition for every image, in training and at test time."""

    name = "random"

    def assign(self, batch, out_h, out_w, *, training, device, generator=None):
        return random_assign(batch, out_h, out_w, self.num_tiles, generator=generator,
                             device=device)

    def tile_capacity(self, batch, out_h, out_w, *, training):
        return batch * -(-out_h * out_w // self.num_tiles)  # balanced: at most the ceiling


class Perforated(TilingScheme):
    """One kernel; in training only np/nt random patches per image are computed (the rest are
    dropped: output 0, no gradient); at test time all of them."""

    name = "perforated"

    @property
    def num_kernels(self) -> int:
        return 1

    def assign(self, batch, out_h, out_w, *, training, device, generator=None):
        if not training:
            return torch.zeros((batch, out_h, out_w), dtype=torch.int64, device=device)
        groups = random_assign(batch, out_h, out_w, self.num_tiles, generator=generator,
                               device=device)
        return torch.where(groups == 0, 0, -1)

    def tile_capacity(self, batch, out_h, out_w, *, training):
        if not training:
            return batch * out_h * out_w
        return batch * -(-out_h * out_w // self.num_tiles)  # group 0 of a balanced partition


SCHEMES = {cls.name: cls for cls in
           (NoTiling, ImageOverlap, ImagePad, Alternate, RandomFixed, Random, Perforated)}


def make_scheme(name: str, num_tiles: int = 1) -> TilingScheme:
    """The scheme called `name` (one of SCHEMES) with num_tiles tiles."""
    try:
        cls = SCHEMES[name]
    except KeyError:
        raise ValueError(f"rapa: unknown tiling scheme {name!r}; known: "
                         f"{', '.join(sorted(SCHEMES))}") from None
    return cls(num_tiles)
