"""Python side of the rapa operators: fake (meta) kernels, autograd, and typed wrappers.

The kernels live in C++ (operators/, cuda/); this module teaches PyTorch how to trace them
(fake kernels for torch.compile) and differentiate them (register_autograd), following
pytorch/extension-cpp. Each wrapper accepts an int where the op takes a pair.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _library
from .geometry import IntPair, conv_out, pair, pool_out

_library.load()


def _pair(value: IntPair, name: str) -> list:
    return list(pair(value, name))


# ---------------------------------------------------------------------------------------------
# tiled_conv


@torch.library.register_fake("rapa::tiled_conv")
def _tiled_conv_fake(input, weight, bias, assignment, stride, padding, region=None, *,
                     tile_capacity=-1):
    torch._check(input.dim() == 4 and weight.dim() == 5,
                 lambda: "rapa: tiled_conv wants input (N, C, H, W) and weight (T, O, C, kh, kw)")
    n, _, h, w = input.shape
    _, o, _, kh, kw = weight.shape
    return input.new_empty((n, o, conv_out(h, kh, stride[0], padding[0]),
                            conv_out(w, kw, stride[1], padding[1])))


@torch.library.register_fake("rapa::tiled_conv_backward")
def _tiled_conv_backward_fake(grad_output, input, weight, assignment, stride, padding, region,
                              output_mask, *, tile_capacity=-1):
    empty = input.new_empty((0,))
    return (torch.empty_like(input) if output_mask[0] else empty,
            torch.empty_like(weight) if output_mask[1] else empty,
            weight.new_empty(weight.shape[:2]) if output_mask[2] else empty)


def _tiled_conv_setup(ctx, inputs, keyword_only_inputs, output):
    input, weight, bias, assignment, stride, padding, region = inputs
    ctx.save_for_backward(input, weight, assignment, region)
    ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
    ctx.tile_capacity = keyword_only_inputs.get("tile_capacity", -1)


def _tiled_conv_backward(ctx, grad):
    input, weight, assignment, region = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], ctx.has_bias and need[2]]
    gi, gw, gb = torch.ops.rapa.tiled_conv_backward(
        grad, input, weight, assignment, ctx.stride, ctx.padding, region, mask,
        tile_capacity=ctx.tile_capacity)
    return (gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None)


torch.library.register_autograd("rapa::tiled_conv", _tiled_conv_backward,
                                setup_context=_tiled_conv_setup)


def tiled_conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], assignment: Tensor,
               stride: IntPair = 1, padding: IntPair = 0,
               region: Optional[Tensor] = None, *, tile_capacity: Optional[int] = None) -> Tensor:
    """Convolution with T kernel replicas: output pixel (n, y, x) uses replica assignment[n, y, x].

    input (N, C, H, W); weight (T, O, C, kh, kw); bias (T, O) or None; assignment int64
    (N, Ho, Wo) with entries in [0, T) or -1 (dropped patch: output 0, no gradient); region
    optional int64 (H, W): a patch of tile t reads pixels of other regions as zero (a pixel
    whose region is no tile's, -1 say, reads as zero for every tile: a mask).
    tile_capacity: the most patches one replica gets in this batch, where known
    (TilingScheme.tile_capacity), at most N Ho Wo; on CUDA the op then never waits for the
    device (a CUDA graph can hold it). A tile over it, or an entry out of range, is a
    RuntimeError naming it on the CPU, and on CUDA a device-side assertion (reported at a
    later synchronisation, and fatal to the process's CUDA context) instead of the error
    that names the value without it.
    """
    return torch.ops.rapa.tiled_conv(input, weight, bias, assignment, _pair(stride, "stride"),
                                     _pair(padding, "padding"), region,
                                     tile_capacity=-1 if tile_capacity is None else tile_capacity)


@torch.library.register_fake("rapa::tile_layout")
def _tile_layout_fake(assignment, num_tiles, tile_capacity=-1):
    if tile_capacity >= 0:
        rows = num_tiles * tile_capacity
    else:  # the largest tile's count, known only from the data
        rows = num_tiles * torch.library.get_ctx().new_dynamic_size()
    return (assignment.new_empty((rows,)), assignment.new_empty((assignment.numel(),)))


def tile_layout(assignment: Tensor, num_tiles: int,
                tile_capacity: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """The padded layout tiled_conv's CUDA kernels multiply in: tile t owns rows
    [t cap, (t + 1) cap) of a (num_tiles cap)-row patch buffer, its patches in ascending order
    first, then padding. Returns order (num_tiles cap,): the patch (flat index into
    assignment) on each row, -1 on padding; and row_of (assignment.numel(),): the row of each
    patch, -1 if dropped. cap = tile_capacity, or the largest tile's count if None."""
    return torch.ops.rapa.tile_layout(assignment, num_tiles,
                                      -1 if tile_capacity is None else tile_capacity)


# ---------------------------------------------------------------------------------------------
# random_assign


@torch.library.register_fake("rapa::random_assign_seeded")
def _random_assign_seeded_fake(seed, batch, height, width, num_tiles):
    return seed.new_empty((batch, height, width))


def random_assign(batch: int, height: int, width: int, num_tiles: int, *,
                  generator: Optional[torch.Generator] = None,
                  device: Optional[Union[str, torch.device]] = None) -> Tensor:
    """A balanced random partition of each image's height*width patches into num_tiles tiles.

    Each image gets its own uniformly random partition whose group sizes differ by at most one.
    Reproducible under torch.manual_seed or with an explicit generator (of the device's type).
    """
    if device is None and generator is not None:
        device = generator.device
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        # The op would start CUDA from C++, which skips the seeds that torch.manual_seed queues
        # for CUDA's lazy start: starting it here applies them before the first draw.
        torch.cuda.init()
    return torch.ops.rapa.random_assign(batch, height, width, num_tiles, generator=generator,
                                        device=device)


# ---------------------------------------------------------------------------------------------
# mixed_pool


@torch.library.register_fake("rapa::mixed_pool")
def _mixed_pool_fake(input, beta, kernel, stride, padding, *, mu=10.0):
    n, c, h, w = input.shape
    return input.new_empty((n, c, *pool_out((h, w), kernel, stride, padding)))


@torch.library.register_fake("rapa::mixed_pool_backward")
def _mixed_pool_backward_fake(grad_output, input, beta, kernel, stride, padding, mu):
    return torch.empty_like(input), torch.empty_like(beta)


def _mixed_pool_setup(ctx, inputs, keyword_only_inputs, output):
    input, beta, kernel, stride, padding = inputs
    ctx.save_for_backward(input, beta)
    ctx.geometry = (kernel, stride, padding)
    ctx.mu = keyword_only_inputs.get("mu", 10.0)


def _mixed_pool_backward(ctx, grad):
    input, beta = ctx.saved_tensors
    gi, gb = torch.ops.rapa.mixed_pool_backward(grad, input, beta, *ctx.geometry, ctx.mu)
    need = ctx.needs_input_grad
    return gi if need[0] else None, gb if need[1] else None, None, None, None


torch.library.register_autograd("rapa::mixed_pool", _mixed_pool_backward,
                                setup_context=_mixed_pool_setup)


def mixed_pool(input: Tensor, beta: Tensor, kernel: IntPair, stride: IntPair = 1,
               padding: IntPair = 0, *, mu: float = 10.0) -> Tensor:
    """a * maxpool + (1 - a) * avgpool with a = 1 / (1 + exp(-mu * beta)), beta one per channel.

    Caffe's geometry: ceil mode; the average divides by the window clipped to the padded input.
    """
    return torch.ops.rapa.mixed_pool(input, beta, _pair(kernel, "kernel"),
                                     _pair(stride, "stride"), _pair(padding, "padding"), mu=mu)


# ---------------------------------------------------------------------------------------------
# max_pool: torch's max pooling, faster on the CPU


class _MaxPoolByIndex(torch.autograd.Function):
    """torch's CPU max pooling runs the channels-last layout with vectors across channels, the
    plain layout one dependent compare after another (about 2.5x slower at the Full net's pool1,
    copies included); its backward is slower than routing the gradient by the winners' index,
    which stochastic pooling's backward op does."""

    @staticmethod
    def forward(ctx, input, kernel, stride, padding):
        out, index = F.max_pool2d(input.contiguous(memory_format=torch.channels_last), kernel,
                                  stride, padding, ceil_mode=True, return_indices=True)
        ctx.save_for_backward(input, index.contiguous())
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad):
        input, index = ctx.saved_tensors
        return (torch.ops.rapa.stochastic_pool_train_backward(grad.contiguous(), input, index),
                None, None, None)


def max_pool(input: Tensor, kernel: IntPair, stride: IntPair = 1, padding: IntPair = 0) -> Tensor:
    """F.max_pool2d(input, kernel, stride, padding, ceil_mode=True), with the same values and
    gradients (the first maximum of a window wins ties, NaN propagates), faster on the CPU."""
    k, s, p = _pair(kernel, "kernel"), _pair(stride, "stride"), _pair(padding, "padding")
    if input.device.type != "cpu" or input.dim() != 4:
        return F.max_pool2d(input, k, s, p, ceil_mode=True)
    if torch.is_grad_enabled() and input.requires_grad:
        return _MaxPoolByIndex.apply(input, k, s, p)
    return F.max_pool2d(input.contiguous(memory_format=torch.channels_last), k, s, p,
                        ceil_mode=True).contiguous()


# ---------------------------------------------------------------------------------------------
# stochastic_pool


def _pool_fake_shape(input, kernel, stride, padding):
    n, c, h, w = input.shape
    return (n, c, *pool_out((h, w), kernel, stride, padding))


@torch.library.register_fake("rapa::stochastic_pool_train")
def _stochastic_pool_train_fake(input, uniform, kernel, stride, padding):
    shape = _pool_fake_shape(input, kernel, stride, padding)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("rapa::stochastic_pool_train_backward")
def _stochastic_pool_train_backward_fake(grad_output, input, index):
    return torch.empty_like(input)


@torch.library.register_fake("rapa::stochastic_pool_test")
def _stochastic_pool_test_fake(input, kernel, stride, padding):
    return input.new_empty(_pool_fake_shape(input, kernel, stride, padding))


@torch.library.register_fake("rapa::stochastic_pool_test_backward")
def _stochastic_pool_test_backward_fake(grad_output, input, kernel, stride, padding):
    return torch.empty_like(input)


def _stochastic_train_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])


def _stochastic_train_backward(ctx, grad, grad_index):
    input, index = ctx.saved_tensors
    gi = torch.ops.rapa.stochastic_pool_train_backward(grad, input, index)
    return gi, None, None, None, None


torch.library.register_autograd("rapa::stochastic_pool_train", _stochastic_train_backward,
                                setup_context=_stochastic_train_setup)


def _stochastic_test_setup(ctx, inputs, output):
    input, kernel, stride, padding = inputs
    ctx.save_for_backward(input)
    ctx.geometry = (kernel, stride, padding)


def _stochastic_test_backward(ctx, grad):
    (input,) = ctx.saved_tensors
    return (torch.ops.rapa.stochastic_pool_test_backward(grad, input, *ctx.geometry),
            None, None, None)


torch.library.register_autograd("rapa::stochastic_pool_test", _stochastic_test_backward,
                                setup_context=_stochastic_test_setup)


def stochastic_pool(input: Tensor, kernel: IntPair, stride: IntPair = 1, padding: IntPair = 0,
                    train: bool = True, *,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """Stochastic pooling (Zeiler & Fergus 2013) with Caffe's geometry.

    Training: each window outputs one of its pixels, drawn with probability proportional to its
    positive part; the gradient goes to that pixel. Test: sum(w * v) / sum(w), w = max(v, 0).
    """
    return torch.ops.rapa.stochastic_pool(input, _pair(kernel, "kernel"), _pair(stride, "stride"),
                                          _pair(padding, "padding"), train, generator=generator)
