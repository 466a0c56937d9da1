"""Caffe's data transformation, batched in torch, plus RAPA's augmentations.

Order, per image: strong augmentation (train), padding (train), crop (random in training,
centred at test), mirror (train, probability 1/2), brightness (train), mean subtraction (file
or values), scale.
Caffe's own order is crop, mirror, mean, scale; the additions slot in before the mean so that
brightness is in raw pixel units. All randomness comes from the generator handed in, so a batch
is a function of (seed, batch index) alone and a resumed run draws the same augmentations.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RapaError
from ..proto import pb


class Transformer:
    def __init__(self, tp: pb.TransformationParameter, image_shape: tuple[int, int, int],
                 train: bool, mean: np.ndarray | None, where: str):
        c, h, w = image_shape
        self.train = train
        self.scale = tp.scale
        self.mirror = tp.mirror
        if tp.crop_size and (tp.crop_h or tp.crop_w):
            raise RapaError(f"{where}: give either crop_size or crop_h/crop_w")
        self.crop = (tp.crop_size, tp.crop_size) if tp.crop_size else (tp.crop_h, tp.crop_w)
        if (self.crop[0] == 0) != (self.crop[1] == 0):
            raise RapaError(f"{where}: give both crop_h and crop_w")
        if self.crop[0] > h + 2 * tp.pad * train or self.crop[1] > w + 2 * tp.pad * train:
            raise RapaError(f"{where}: crop {self.crop} is larger than the images ({h}x{w})")
        self.pad = tp.pad if train else 0
        if self.pad and not self.crop[0]:
            raise RapaError(f"{where}: pad {self.pad} needs crop_size (a crop back to the image "
                            f"size, as in He et al. 2016: pad 4, crop_size 32)")
        self.brightness = tp.brightness
        # (max_scale, scale_jitter); plain numbers, so that a worker process gets a copy
        self.strong = None
        if tp.HasField("strong_augmentation"):
            sa = tp.strong_augmentation
            # Finite, and a scale a crop of the image can still see: at 100 a 32-pixel image's
            # window is a third of a pixel.
            if not 1 <= sa.max_scale <= 100:
                raise RapaError(f"{where}: strong_augmentation.max_scale must be in [1, 100], "
                                f"got {sa.max_scale:g}")
            if not 0 <= sa.scale_jitter <= sa.max_scale:
                raise RapaError(f"{where}: strong_augmentation.scale_jitter must be in [0, "
                                f"max_scale], got {sa.scale_jitter:g}")
            self.strong = (sa.max_scale, sa.scale_jitter)
        if mean is not None and tp.mean_value:
            raise RapaError(f"{where}: give either mean_file or mean_value, not both")
        self.mean = None
        if mean is not None:
            if tuple(mean.shape) != (c, h, w):
                raise RapaError(f"{where}: the mean file has shape {tuple(mean.shape)}, the "
                                f"images {(c, h, w)}")
            self.mean = torch.from_numpy(np.ascontiguousarray(mean, np.float32))
        elif tp.mean_value:
            values = list(tp.mean_value)
            if len(values) not in (1, c):
                raise RapaError(f"{where}: mean_value needs 1 or {c} values, got {len(values)}")
            self.mean = torch.tensor(values * (c if len(values) == 1 else 1),
                                     dtype=torch.float32).view(c, 1, 1)
        self.out_shape = (c, *(self.crop if self.crop[0] else (h, w)))
        self.image_shape = (c, h, w)

    def test_normalization(self) -> tuple[torch.Tensor, float]:
        """(mean, scale) of the test-time transform: an image's net input is (pixels - mean)
        * scale, mean (C, H', W') the centred crop of the mean file or the mean values (zeros
        without a mean). What the FGSM analysis needs to go back to pixel values."""
        c, h, w = self.image_shape
        mean = self.mean.expand(c, h, w) if self.mean is not None else torch.zeros(c, h, w)
        if self.crop[0]:
            ch, cw = self.crop
            y, x = (h - ch) // 2, (w - cw) // 2
            mean = mean[:, y:y + ch, x:x + cw]
        return mean.contiguous(), self.scale

    def __call__(self, images: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        x = torch.from_numpy(images).float()
        n, c, h, w = x.shape
        mean = self.mean.expand(c, h, w) if self.mean is not None else None
        if self.train and self.strong is not None:
            x = _strong_augment(x, *self.strong, gen)
        mean_varies = self.mean is not None and self.mean.shape[-1] > 1
        if self.pad:
            # Padded pixels are 0 after mean subtraction: the image and the mean both get zeros.
            p = self.pad
            x = F.pad(x, (p, p, p, p))
            if mean is not None:
                mean, mean_varies = F.pad(mean, (p, p, p, p)), True
            h, w = h + 2 * p, w + 2 * p
        if self.crop[0]:
            ch, cw = self.crop
            if self.train:
                oy = torch.randint(0, h - ch + 1, (n,), generator=gen)
                ox = torch.randint(0, w - cw + 1, (n,), generator=gen)
            else:
                oy = torch.full((n,), (h - ch) // 2)
                ox = torch.full((n,), (w - cw) // 2)
            rows = (oy[:, None] + torch.arange(ch))[:, :, None]
            cols = (ox[:, None] + torch.arange(cw))[:, None, :]
            x = x[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
            if mean is not None:  # Caffe crops the mean file where it crops the image
                mean = mean[:, rows, cols].permute(1, 0, 2, 3)
        if self.train and self.mirror:
            flip = torch.rand(n, generator=gen) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
            if mean_varies:  # a mean file (or a padded mean) flips along
                mean = mean.expand(n, *x.shape[1:])
                mean = torch.where(flip.view(n, 1, 1, 1), mean.flip(3), mean)
        if self.train and self.brightness:
            x = x + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * self.brightness
        if mean is not None:
            x = x - mean
        if self.scale != 1:
            x = x * self.scale
        return x.contiguous()


def _strong_augment(x: torch.Tensor, max_scale: float, scale_jitter: float,
                    gen) -> torch.Tensor:
    """Scale each image by s in [1, max_scale] (each side jittered by up to +-scale_jitter),
    then take a random window of the original size from the scaled image (bilinear)."""
    n = x.shape[0]
    s = 1 + torch.rand(n, generator=gen) * (max_scale - 1)
    jitter = (torch.rand(n, 2, generator=gen) * 2 - 1) * scale_jitter
    sy, sx = (s[:, None] + jitter).clamp_min(1.0).unbind(1)
    # In normalized coordinates the window is 1/s of the scaled image; its centre may move by
    # up to 1 - 1/s either way while staying inside.
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - 1 / sy)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - 1 / sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = 1 / sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = 1 / sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
