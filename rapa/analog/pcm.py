"""Phase-change memory (PCM) for inference: programming noise, conductance drift and read noise
of multi-level PCM devices, a signed weight as a differential pair G+ - G-, and global drift
compensation.

The statistical model is the one IBM fitted on about a million PCM devices (Nandakumar et al.,
ICECS 2019, "Phase-change memory models for deep learning training and inference"), as aihwkit
implements it in `PCMLikeNoiseModel` (aihwkit/inference/noise/pcm.py): field names, defaults
and formulas are aihwkit's. Conductances are in microsiemens, times in seconds, t = 0 the end of
programming. For a target conductance g_T in [0, g_max]:

  programming  g_P = max(g_T + prog_noise_scale * sigma_P(g_T) * xi, 0),
               sigma_P = (c0 + c1 (g_T/g_max) + c2 (g_T/g_max)^2) * g_max / prog_coeff_g_max_reference
  drift        nu ~ |mu_nu + sigma_nu xi'| * drift_scale, per device, drawn when programmed, with
               mu_nu    = clip(-0.0155 ln(g_T/g_max) + 0.0244, 0.049, 0.1)
               sigma_nu = clip(-0.0125 ln(g_T/g_max) - 0.0059, 0.008, 0.045)
               (g_T/g_max clipped below at 1e-7)
  at time t    g_D = g_P ((t + t_0) / t_0)^-nu   (t > 0; g_P at t = 0)
  read noise   g(t) = max(g_D + |g_D| read_noise_scale Q_s sqrt(ln((t + t_0 + t_read) / (2 t_read))) xi'', 0),
               Q_s = min(0.0088 / max((g_P/g_max)^0.65, 1e-3), 0.2)

Weights map to conductances per array as aihwkit's SinglePairConductanceConverter does: the
largest |W| of the array to g_max, positive weights on G+, negative on G- (the other device at
g_min = 0). Global drift compensation (aihwkit's GlobalDriftCompensation) scales an array's
outputs digitally by mean|W(programmed)| / mean|W(t)|; aihwkit reads both through the array's
periphery with one-hot inputs, we read them exactly (its GlobalDriftCompensationWithExactReference
for the reference, exact for the later read too: ours, documented).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import RapaError
from .config import check_finite

_ZERO_CLIP = 1e-7


@dataclass
class PCMLikeNoiseModel:
    """Programming noise, drift and read noise of PCM devices (aihwkit's PCMLikeNoiseModel)."""

    g_max: float = 25.0
    """Largest conductance, in uS: the largest |W| of an array maps to it."""
    prog_coeff: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    """Programming noise sigma_P in uS as c0 + c1 x + c2 x^2, x = g_T / g_max (the fit of
    Nandakumar et al. 2019 at g_max = 25 uS)."""
    prog_coeff_g_max_reference: float = 25.0
    """The g_max, in uS, at which prog_coeff was fitted (sigma_P scales with g_max / it)."""
    t_read: float = 250.0e-9
    """Duration of one read, in s (the 1/f read noise's lower time limit)."""
    t_0: float = 20.0
    """Time of the first read after programming, in s: the drift's reference time."""
    prog_noise_scale: float = 1.0
    """Scale of the programming noise (0: none)."""
    read_noise_scale: float = 1.0
    """Scale of the accumulated 1/f read noise (0: none)."""
    drift_scale: float = 1.0
    """Scale of the drift exponents nu (0: no drift)."""

    def check(self, where: str) -> None:
        """RapaError naming `where` and the field when a value cannot describe a device."""
        rules = [("g_max", 0 < self.g_max <= 1e6, "in (0, 1e6] uS"),
                 ("prog_coeff_g_max_reference", self.prog_coeff_g_max_reference > 0, "> 0"),
                 ("t_read", self.t_read > 0, "> 0"), ("t_0", self.t_0 > 0, "> 0"),
                 ("prog_noise_scale", self.prog_noise_scale >= 0, ">= 0"),
                 ("read_noise_scale", self.read_noise_scale >= 0, ">= 0"),
                 ("drift_scale", self.drift_scale >= 0, ">= 0")]
        check_finite(self, rules, where, RapaError)
        if len(self.prog_coeff) != 3 or not all(math.isfinite(c) for c in self.prog_coeff):
            raise RapaError(f"{where}: prog_coeff must be 3 finite numbers, got "
                            f"{self.prog_coeff}")
        if not self.t_0 > self.t_read:  # the read noise's log((t_0 + t_read) / 2 t_read) > 0
            raise RapaError(f"{where}: t_0 ({self.t_0:g} s) must be longer than t_read "
                            f"({self.t_read:g} s)")

    def prog_sigma(self, g_target: Tensor) -> Tensor:
        x = g_target / self.g_max
        c0, c1, c2 = self.prog_coeff
        return (c0 + c1 * x + c2 * x * x) * (self.g_max / self.prog_coeff_g_max_reference)

    def program(self, g_target: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """g_P: the conductances programmed for targets g_target (uS, >= 0)."""
        xi = torch.randn(g_target.shape, generator=generator, dtype=g_target.dtype,
                         device=g_target.device)
        return (g_target + self.prog_noise_scale * self.prog_sigma(g_target) * xi).clamp_min(0.0)

    def drift_coefficients(self, g_target: Tensor,
                           generator: Optional[torch.Generator] = None) -> Tensor:
        """nu of each device, drawn once when it is programmed to g_target."""
        g = (g_target / self.g_max).abs().clamp_min(_ZERO_CLIP)
        mu = (-0.0155 * g.log() + 0.0244).clamp(0.049, 0.1)
        sigma = (-0.0125 * g.log() - 0.0059).clamp(0.008, 0.045)
        xi = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
        return (mu + sigma * xi).abs() * self.drift_scale

    def read(self, g_prog: Tensor, nu: Tensor, t_inference: float,
             generator: Optional[torch.Generator] = None) -> Tensor:
        """g(t): the conductances t_inference (>= 0) seconds after programming, drifted and
        with the 1/f noise accumulated since (drawn anew on every call)."""
        t = t_inference + self.t_0
        drifted = g_prog * (t / self.t_0) ** (-nu)  # 1 at t_inference = 0
        q_s = (0.0088 / ((g_prog.abs() / self.g_max) ** 0.65).clamp_min(1e-3)).clamp_max(0.2)
        sigma = q_s * math.sqrt(math.log((t + self.t_read) / (2 * self.t_read)))
        xi = torch.randn(g_prog.shape, generator=generator, dtype=g_prog.dtype,
                         device=g_prog.device)
        return (drifted + drifted.abs() * self.read_noise_scale * sigma * xi).clamp_min(0.0)


def to_pair(weight3: Tensor, g_max: float) -> tuple[Tensor, Tensor, Tensor]:
    """(G+, G-, scale): each array t of weight3 (T, O, K) as a differential pair, in uS, with
    W = (G+ - G-) / scale_t and scale_t = g_max / max|W_t| (aihwkit's
    SinglePairConductanceConverter, g_min 0)."""
    amax = weight3.abs().amax(dim=(1, 2), keepdim=True).clamp_min(_ZERO_CLIP)
    scale = g_max / amax
    scaled = weight3 * scale  # within [-g_max, g_max]
    return scaled.clamp_min(0.0), (-scaled).clamp_min(0.0), scale


def from_pair(g_plus: Tensor, g_minus: Tensor, scale: Tensor) -> Tensor:
    return (g_plus - g_minus) / scale


def parse_overrides(text: str, where: str) -> PCMLikeNoiseModel:
    """A PCMLikeNoiseModel from 'field=value,field=value' (prog_coeff as c0:c1:c2). As in
    aihwkit, coefficients given without prog_coeff_g_max_reference were fitted at g_max."""
    model = PCMLikeNoiseModel()
    names = {f.name for f in dataclasses.fields(model)}
    given = set()
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise RapaError(f"{where}: '{item}' is not field=value with a field of "
                            f"PCMLikeNoiseModel ({', '.join(sorted(names))})")
        if name in given:
            raise RapaError(f"{where}: {name} is given twice")
        given.add(name)
        try:
            parsed = (tuple(float(v) for v in value.split(":")) if name == "prog_coeff"
                      else float(value))
        except ValueError:
            raise RapaError(f"{where}: {name}={value!r} is not a number") from None
        setattr(model, name, parsed)
    if "prog_coeff" in given and "prog_coeff_g_max_reference" not in given:
        model.prog_coeff_g_max_reference = model.g_max
    model.check(where)
    return model
