"""Python side of the analog ops rapa::analog_mvm and rapa::rpu_update: fake kernels and
typed wrappers that take the dataclasses of config.py. Random draws come from a 64-bit seed
drawn from torch's generator of the tensors' device, so torch.manual_seed reproduces them and a
solver snapshot (which saves the generators) resumes them."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _library
from .config import ConstantStepDevice, IOParameters, UpdateParameters

_library.load()


@torch.library.register_fake("rapa::analog_mvm")
def _analog_mvm_fake(input, weight, tile, seed, transposed, *args):
    return input.new_empty((input.shape[0], weight.shape[2] if transposed else weight.shape[1]))


@torch.library.register_fake("rapa::rpu_update")
def _rpu_update_fake(weight, x, d, tile, dw_up, dw_down, w_min, w_max, seed, *args):
    return None


def draw_seed(device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    return torch.randint(2 ** 62, (1,), device=device, generator=generator)


def analog_mvm(input: Tensor, weight: Tensor, tile: Tensor, io: IOParameters, *,
               transposed: bool = False, seed: Optional[Tensor] = None) -> Tensor:
    """Row m of `input` through array tile[m] of `weight` (T, O, K): W x (input (M, K)) or,
    transposed, W^T d (input (M, O)), with the periphery `io`. tile -1: a zero row."""
    if seed is None:
        seed = draw_seed(input.device)
    return torch.ops.rapa.analog_mvm(input, weight, tile, seed, transposed, **io.op_args())


def rpu_update(weight: Tensor, x: Tensor, d: Tensor, tile: Tensor, lr: float,
               device_state: dict, device: ConstantStepDevice, update: UpdateParameters, *,
               seed: Optional[Tensor] = None) -> None:
    """In place: row m is the pulsed rank-one update -lr d_m x_m^T of array tile[m].

    device_state holds the per-device draws dw_up, dw_down, w_min, w_max (each like weight)."""
    if seed is None:
        seed = draw_seed(weight.device)
    torch.ops.rapa.rpu_update(
        weight, x, d, tile, device_state["dw_up"], device_state["dw_down"],
        device_state["w_min"], device_state["w_max"], seed, float(lr), float(device.dw_min),
        float(device.dw_min_std), int(update.desired_bl), bool(update.update_management),
        bool(update.update_bl_management))
