"""Python side of the analog ops rapa::analog_mvm, rapa::analog_conv (and its input gradient)
and rapa::rpu_update: fake kernels and typed wrappers that take the dataclasses of config.py.
Random draws come from a 64-bit seed drawn from torch's generator of the tensors' device, so torch.manual_seed reproduces them and a
solver snapshot (which saves the generators) resumes them."""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _library
from .config import ConstantStepDevice, IOParameters, UpdateParameters

_library.load()


def _same_device(op: str, weight: Tensor, **tensors: Tensor) -> None:
    """The op's kernels take every tensor on the weight's device. A fake kernel runs when any
    of them is on the meta device (or all are fake): there, one on another device than the
    weight is the error the kernels would raise, not a result without numbers."""
    for name, t in tensors.items():
        if t.device != weight.device:
            raise RuntimeError(f"rapa: {op}: argument '{name}' is on {t.device}, but 'weight' "
                               f"is on {weight.device}: every tensor must be on one device")


@torch.library.register_fake("rapa::analog_mvm")
def _analog_mvm_fake(input, weight, tile, seed, transposed, *args, tile_capacity=-1):
    _same_device("analog_mvm", weight, input=input, tile=tile, seed=seed)
    return input.new_empty((input.shape[0], weight.shape[2] if transposed else weight.shape[1]))


@torch.library.register_fake("rapa::analog_conv")
def _analog_conv_fake(input, weight, bias, assignment, *args):
    return input.new_empty((input.shape[0], weight.shape[1], *assignment.shape[1:])).contiguous(
        memory_format=torch.channels_last)


@torch.library.register_fake("rapa::analog_conv_input_grad")
def _analog_conv_input_grad_fake(grad_output, input, weight, *args):
    return input.new_empty(input.shape)


@torch.library.register_fake("rapa::rpu_update")
def _rpu_update_fake(weight, x, d, tile, dw_up, dw_down, w_min, w_max, seed, lr, *args):
    _same_device("rpu_update", weight, x=x, d=d, tile=tile, dw_up=dw_up, dw_down=dw_down,
                 w_min=w_min, w_max=w_max, seed=seed, lr=lr)
    return None


def draw_seed(device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    return torch.randint(2 ** 62, (1,), device=device, generator=generator)


def analog_mvm(input: Tensor, weight: Tensor, tile: Tensor, io: IOParameters, *,
               transposed: bool = False, seed: Optional[Tensor] = None,
               tile_capacity: Optional[int] = None) -> Tensor:
    """Row m of `input` through array tile[m] of `weight` (T, O, K): W x (input (M, K), output
    (M, O)) or, transposed, W^T d (input (M, O), output (M, K)), with the periphery `io` (an
    RPUConfig's `forward`, or `backward` for the transposed product): DAC, noise and bound
    management, output noise, ADC, in aihwkit 1.1.0's order (README, "Analog arrays"). The
    weights are conductances in the arrays' units (AnalogArrays' out_scale is applied by its
    matmul, not here); input, weight float32 or float64 alike. tile: int64 (M,), an array
    index or -1 for a row no array computes (output 0). seed: int64 (1,) on the same device,
    the key of the noise draws (default: drawn from torch's generator, draw_seed).
    tile_capacity: the most rows one array gets (at most M), where the caller knows it; on
    CUDA the op then never waits for the device (a CUDA graph can hold it). Errors: a
    RuntimeError naming the argument (shapes, dtypes, devices, a tile out of range, more rows
    on one array than tile_capacity; on CUDA the last two are device-side assertions)."""
    if seed is None:
        seed = draw_seed(input.device)
    return torch.ops.rapa.analog_mvm(
        input, weight, tile, seed, transposed, **io.op_args(),
        tile_capacity=-1 if tile_capacity is None else tile_capacity)


def analog_conv_forward(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                        assignment: Tensor, out_scale: Tensor, stride, padding,
                        io: IOParameters, *, seed: Optional[Tensor] = None) -> Tensor:
    """Patch (n, y, x) of `input` (N, C, H, W) through array t = assignment[n, y, x] of
    `weight` (T, O, C, kh, kw) with the periphery `io`, times out_scale[t] (T,), plus bias[t]
    ((T, O) or None); -1: output 0. (N, O, Ho, Wo), channels last. The numbers of analog_mvm
    over F.unfold's patch rows, computed without them (CPU only)."""
    if seed is None:
        seed = draw_seed(input.device)
    return torch.ops.rapa.analog_conv(input, weight, bias, assignment, out_scale, seed,
                                      list(stride), list(padding), **io.op_args())


def analog_conv_input_grad(grad_output: Tensor, input: Tensor, weight: Tensor,
                           assignment: Tensor, out_scale: Tensor, stride, padding,
                           io: IOParameters, *, seed: Optional[Tensor] = None) -> Tensor:
    """The input gradient (N, C, H, W) of analog_conv_forward: each output pixel's gradient
    grad_output[n, :, y, x] times out_scale[t] through the transposed array t with the
    periphery `io`, its K values added into the patch's pixels (analog_mvm transposed, then
    F.fold, without the rows)."""
    if seed is None:
        seed = draw_seed(input.device)
    return torch.ops.rapa.analog_conv_input_grad(grad_output, input, weight, assignment,
                                                 out_scale, seed, list(stride), list(padding),
                                                 **io.op_args())


def rpu_update(weight: Tensor, x: Tensor, d: Tensor, tile: Tensor, lr: Union[float, Tensor],
               device_state: dict, device: ConstantStepDevice, update: UpdateParameters, *,
               seed: Optional[Tensor] = None) -> None:
    """In place: row m is the pulsed rank-one update -lr d_m x_m^T of array tile[m] of `weight`
    (T, O, K), rows in order (Gokmen & Vlasov 2016; aihwkit 1.1.0's pulse trains with update
    and bit-length management, README "Analog arrays"); each weight stays within its device's
    [w_min, w_max]. x (M, K), d (M, O) and weight of one dtype (float32 or float64), tile
    int64 (M,) (-1: no update), all on one device; seed: int64 (1,), the key of the pulses'
    draws (default: drawn from torch's generator). The weights are conductances in the
    arrays' units; lr is in those units per unit of d x^T, as SGD's (AnalogArrays.apply_update
    divides d by each array's out_scale squared).

    device_state holds the per-device draws dw_up, dw_down, w_min, w_max (each like weight):
    AnalogArrays.device_state() gives them; device: its config.device (dw_min, dw_min_std),
    update: its config.update.
    lr: a number, or a floating tensor of one number on the weight's device, which the
    kernels read there (so that a CUDA graph holding the update follows a rate that changes
    between replays); it must be finite and >= 0 (RuntimeError; on CUDA a device-side
    assertion). Another type is a TypeError; a tensor of another dtype or device a
    RuntimeError naming 'lr'."""
    if seed is None:
        seed = draw_seed(weight.device)
    if isinstance(lr, Tensor):
        rate = lr  # the op checks it: floating, one number, on the weight's device
    elif isinstance(lr, numbers.Real) and not isinstance(lr, bool):
        rate = torch.tensor(float(lr), dtype=torch.float64, device=weight.device)
    else:
        raise TypeError(f"rapa: rpu_update: lr must be a number or a tensor of one, got "
                        f"{type(lr).__name__}")
    torch.ops.rapa.rpu_update(
        weight, x, d, tile, device_state["dw_up"], device_state["dw_down"],
        device_state["w_min"], device_state["w_max"], seed, rate, float(device.dw_min),
        float(device.dw_min_std), int(update.desired_bl), bool(update.update_management),
        bool(update.update_bl_management))
