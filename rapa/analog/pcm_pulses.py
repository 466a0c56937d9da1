"""A multi-level PCM device programmed by SET pulses: each pulse raises the conductance by a
state-dependent, stochastic increment; RESET melts it back to near zero.

The model and its values are aihwkit's PCMPresetDevice (aihwkit/simulator/presets/devices.py):
an exponential-step device (rpu_expstep_device.cpp, update_once_complex_noise) fitted on the
Ge2Sb2Te5 devices of Nandakumar et al., Front. Neurosci. 2020. In aihwkit's units, where the
device runs from 0 to w_max = 2, one SET pulse on a device at w does

    z  = 2 w / bound * a + b                 (bound: the device's own w_max)
    dw = max(1 - A_up exp(gamma_up z), 0) * s
    w  <- clip(w + dw + dw_min_std (|dw| + dw_min_std_add + dw_min_std_slope |w|) xi, 0, bound)

with s = dw_min (1 + dw_min_dtod xi_1 + up_down_dtod xi_2) and bound = w_max (1 + w_max_dtod
xi_3) drawn once per device (device-to-device variation, aihwkit's PulsedRPUDevice::populate),
xi Gaussian. With a = -1, A_up = -27.235, gamma_up = 2.5 the first pulses from 0 raise the
device about 28 dw_min each, those near the top about 1.2 dw_min: the saturating SET response
of PCM. RESET leaves r + reset_std xi, r = reset + reset_dtod xi_4 drawn per device
(aihwkit's reset, reset_dtod, reset_std), clipped to [0, bound]. A conductance g in uS is
w g_max / w_max.

Reaching a level (PCMPresetDevice.program) is a pulse-and-verify loop: SET pulses are applied
while the device lies below its target by more than half the mean increment of its next pulse,
at most max_pulses times (a device still short of its target then stays there, neither
counted nor reported apart from its pulses); a device that reached its bound stops there.
Every pulse counts as a SET event. HIC checks that a nominal device can reach every level
(check_levels). The loop and max_pulses are ours (aihwkit's PCM unit cell is pulsed by its SGD
update instead); they are what a program-and-verify controller over this device would do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .config import check_finite


@dataclass
class PCMPresetDevice:
    """SET-pulse response of one multi-level PCM device (aihwkit's PCMPresetDevice; values in
    its units, the device spanning [0, w_max])."""

    dw_min: float = 0.01
    """Mean increment scale of one pulse."""
    dw_min_dtod: float = 0.2
    """Device-to-device spread of dw_min (relative)."""
    up_down_dtod: float = 0.05
    """Device-to-device spread of the up step's bias (relative; aihwkit adds it to the gain)."""
    w_max: float = 2.0
    """Nominal upper bound: g_max."""
    w_max_dtod: float = 0.1
    """Device-to-device spread of the upper bound (relative)."""
    a: float = -1.0
    """The exponent's slope in w (aihwkit's es_a)."""
    b: float = 0.0
    """The exponent's offset (aihwkit's es_b)."""
    gamma_up: float = 2.5
    """The exponent's scale."""
    A_up: float = -27.235
    """The exponential term's weight: negative makes the first pulses large."""
    dw_min_std: float = 0.6
    """Cycle-to-cycle noise of a pulse, relative to dw_min_std_add + |dw| + slope |w|."""
    dw_min_std_add: float = 0.042
    """Its state-independent part."""
    dw_min_std_slope: float = 0.108
    """Its part proportional to the device's state."""
    reset: float = 0.01
    """Mean state after a RESET."""
    reset_dtod: float = 0.02
    """Device-to-device spread of the RESET state (absolute)."""
    reset_std: float = 0.01
    """Cycle-to-cycle spread of the RESET state (absolute)."""
    max_pulses: int = 200
    """Most SET pulses one programming applies (ours)."""

    def check(self, where: str) -> None:
        """ValueError naming `where` and the field when a value cannot describe a device."""
        rules = [("dw_min", 0 < self.dw_min <= 1, "in (0, 1]"),
                 ("w_max", 0 < self.w_max <= 1e3, "in (0, 1e3]"),
                 ("gamma_up", abs(self.gamma_up) <= 100, "within +-100"),
                 ("a", abs(self.a) <= 100, "within +-100"),
                 ("b", abs(self.b) <= 100, "within +-100"),
                 ("A_up", abs(self.A_up) <= 1e6, "within +-1e6")]
        rules += [(name, 0 <= getattr(self, name) <= 10, "in [0, 10]") for name in
                  ("dw_min_dtod", "up_down_dtod", "w_max_dtod", "dw_min_std",
                   "dw_min_std_add", "dw_min_std_slope", "reset_dtod", "reset_std")]
        rules.append(("reset", 0 <= self.reset < self.w_max, "in [0, w_max)"))
        check_finite(self, rules, where)
        if not 1 <= self.max_pulses <= 100000:
            raise ValueError(f"{where}: max_pulses must be in [1, 100000], got "
                             f"{self.max_pulses}")

    def check_levels(self, levels: int, where: str) -> None:
        """ValueError naming `where` unless a nominal device (step dw_min, bound w_max) can
        reach each of `levels` evenly spaced levels: the mean step from the RESET state and at
        every level below the top must be finite, > 0 and at most one level's spacing."""
        spacing = self.w_max / (levels - 1)
        states = torch.tensor([self.reset] + [i * spacing for i in range(levels - 1)],
                              dtype=torch.float64)
        steps = self.mean_step(states, torch.full_like(states, self.dw_min),
                               torch.full_like(states, self.w_max))
        for w, step in zip(states.tolist(), steps.tolist()):
            if not (math.isfinite(step) and 0 < step <= spacing):
                raise ValueError(f"{where}: a SET pulse at w = {w:.3g} steps by {step:.3g} on "
                                 f"average, which must be > 0 and at most one level's spacing "
                                 f"({spacing:.3g} = w_max / (levels - 1)): dw_min, a, b, "
                                 f"gamma_up, A_up or w_max leave the levels out of reach")

    def populate(self, shape, generator: Optional[torch.Generator] = None) -> Tensor:
        """Each device's draws, stacked (3, *shape): step scale s, upper bound b and RESET
        state r (aihwkit's PulsedRPUDevice::populate; s and b taken as magnitudes, r within
        [0, b))."""
        xi = torch.randn((4, *shape), generator=generator)
        scale = (self.dw_min * (1 + self.dw_min_dtod * xi[0] + self.up_down_dtod * xi[1])).abs()
        bound = (self.w_max * (1 + self.w_max_dtod * xi[2])).abs()
        reset = torch.minimum((self.reset + self.reset_dtod * xi[3]).clamp_min(0), bound)
        return torch.stack([scale, bound, reset])

    def mean_step(self, w: Tensor, scale: Tensor, bound: Tensor) -> Tensor:
        """The mean increment of one SET pulse on devices at w."""
        z = 2 * w / bound.clamp_min(1e-30) * self.a + self.b
        return (1 - self.A_up * torch.exp(self.gamma_up * z)).clamp_min(0) * scale

    def pulse_noise(self, w: Tensor, dw: Tensor) -> Tensor:
        """The standard deviation of one pulse's increment on devices at w with mean step dw
        (aihwkit's complex noise)."""
        return self.dw_min_std * (dw.abs() + self.dw_min_std_add + self.dw_min_std_slope * w.abs())

    def pulse(self, w: Tensor, scale: Tensor, bound: Tensor,
              generator: Optional[torch.Generator] = None) -> Tensor:
        """The devices after one SET pulse each."""
        dw = self.mean_step(w, scale, bound)
        std = self.pulse_noise(w, dw)
        xi = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
        return torch.minimum((w + dw + std * xi).clamp_min(0), bound)

    def after_reset(self, reset: Tensor, bound: Tensor,
                    generator: Optional[torch.Generator] = None) -> Tensor:
        """The devices' states after a RESET."""
        xi = torch.randn(reset.shape, generator=generator, dtype=reset.dtype,
                         device=reset.device)
        return torch.minimum((reset + self.reset_std * xi).clamp_min(0), bound)

    def program(self, w: Tensor, target: Tensor, scale: Tensor, bound: Tensor,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """Pulse-and-verify towards `target` (all in device units, one entry per device):
        (the states reached, the SET pulses each device took)."""
        pulses = torch.zeros_like(w)
        for _ in range(self.max_pulses):
            below = (target - w > self.mean_step(w, scale, bound) / 2) & (w < bound)
            if not bool(below.any()):
                break
            index = below.nonzero().squeeze(1)
            at, step_scale, top = w[index], scale[index], bound[index]
            dw = self.mean_step(at, step_scale, top)
            if not bool(((dw > 0) | (self.pulse_noise(at, dw) > 0)).any()):
                break  # neither a step nor noise: no pulse can move these devices
            w = w.index_put((index,), self.pulse(at, step_scale, top, generator))
            pulses = pulses.index_put((index,), pulses[index] + 1)
        return w, pulses
