"""A trained net's analog arrays programmed into PCM and read at times after programming.

ProgrammedNet takes the weights of every analog layer of a net (each learnable blob held by
AnalogArrays), maps each array onto differential PCM pairs (rapa.analog.pcm.to_pair), programs
them once (programming noise, drift exponents) and then, for any time t after programming,
writes the weights the arrays hold at t (drift and accumulated read noise, drawn anew at every
read) into the net, with global drift compensation in the arrays' digital output scales if
asked. restore() puts the trained weights back. Digital layers are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import RapaError
from .pcm import PCMLikeNoiseModel, from_pair, to_pair

COMPENSATIONS = ("none", "global")


@dataclass
class _Programmed:
    name: str              # the blob's, "<layer>/<index>"
    weight3: Tensor        # the net's weight, viewed (T, O, K): written at each read
    out_scale: Tensor      # the arrays' digital output scales: times the compensation
    trained: Tensor        # the trained weights and scales, for restore()
    trained_scale: Tensor
    g_plus: Tensor         # programmed conductances (uS) and their drift exponents
    g_minus: Tensor
    nu_plus: Tensor
    nu_minus: Tensor
    scale: Tensor          # uS per weight unit, per array (T, 1, 1)
    reference: Tensor      # mean |W| per array right after programming (T,)


class ProgrammedNet:
    def __init__(self, net, model: PCMLikeNoiseModel, where: str,
                 generator: Optional[torch.Generator] = None):
        """Programs every analog array of `net` (rapa.net.Net); RapaError naming `where` when
        the net has none."""
        self.model, self.generator, self.where = model, generator, where
        self.layers: list[_Programmed] = []
        for blob in net.learnable():
            if blob.arrays is None:
                continue
            with torch.no_grad():
                weight3 = blob.blob.data.view(blob.arrays.shape)
                target = weight3.double()
                g_plus, g_minus, scale = to_pair(target, model.g_max)
                programmed = [model.program(g, generator) for g in (g_plus, g_minus)]
                nus = [model.drift_coefficients(g, generator) for g in (g_plus, g_minus)]
                reference = from_pair(*programmed, scale).abs().mean(dim=(1, 2))
            self.layers.append(_Programmed(blob.name, weight3, blob.arrays.out_scale,
                                           weight3.clone(),
                                           blob.arrays.out_scale.clone(), *programmed, *nus,
                                           scale, reference))
        if not self.layers:
            raise RapaError(f"{where}: the net has no analog layers (rpu_param) to program")

    @torch.no_grad()
    def read_at(self, t_inference: float, compensation: str = "global",
                generator: Optional[torch.Generator] = None) -> None:
        """The net's analog weights become those read t_inference seconds after programming;
        with global compensation each array's outputs are scaled by mean|W programmed| /
        mean|W(t)|. The read noise draws from `generator` (else the programming's). A read
        that is not finite everywhere (a model beyond float32's range) is a RapaError."""
        if compensation not in COMPENSATIONS:
            raise RapaError(f"drift compensation must be one of {', '.join(COMPENSATIONS)}, "
                            f"got '{compensation}'")
        m, generator = self.model, generator or self.generator
        for p in self.layers:
            now = from_pair(m.read(p.g_plus, p.nu_plus, t_inference, generator),
                            m.read(p.g_minus, p.nu_minus, t_inference, generator), p.scale)
            if not torch.isfinite(now.float()).all():
                raise RapaError(f"{self.where}: {p.name}'s weights read {t_inference:g} s after "
                                f"programming are not finite in float32 (the PCM model's "
                                f"noise or g_max are out of any device's range)")
            p.weight3.copy_(now)  # rounded to the net's dtype once, here
            factor = torch.ones_like(p.reference)
            if compensation == "global":
                factor = p.reference / now.abs().mean(dim=(1, 2)).clamp_min(1e-12)
            p.out_scale.copy_(p.trained_scale.double() * factor)

    @torch.no_grad()
    def restore(self) -> None:
        for p in self.layers:
            p.weight3.copy_(p.trained)
            p.out_scale.copy_(p.trained_scale)
