"""A trained net's analog arrays programmed into PCM and read at times after programming.

ProgrammedNet takes the weights of every analog layer of a net (each learnable blob held by
arrays): RPU arrays (AnalogArrays) are mapped onto differential PCM pairs
(rapa.analog.pcm.to_pair) and programmed once (programming noise, drift exponents); HIC arrays
(rapa.analog.hic) are PCM already: their binary cells and multi-level pairs keep the
conductances training programmed, and draw their drift exponents. Then, for any time t
after programming, it writes the weights the arrays hold at t (drift and accumulated read
noise, drawn anew at every read) into the net, with global drift compensation in the arrays'
digital output scales if asked. restore() puts the trained weights back. Digital layers are untouched.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import RapaError
from .pcm import PCMLikeNoiseModel, to_pair

COMPENSATIONS = ("none", "global")


@dataclass
class _Programmed:
    name: str              # the blob's, "<layer>/<index>"
    weight3: Tensor        # the net's weight, viewed (T, O, K): written at each read
    out_scale: Tensor      # the arrays' digital output scales: times the compensation
    trained: Tensor        # the trained weights and scales, for restore()
    trained_scale: Tensor
    terms: list            # (programmed conductances uS, drift exponents, coefficient): the
                           # weight is the sum of coefficient x conductance
    reference: Tensor      # mean |W| per array right after programming (T,)
    model: PCMLikeNoiseModel  # the devices' statistics (g_max: a HIC layer's own)

    def weight_at(self, t_inference: float, generator) -> Tensor:
        return sum(coef * self.model.read(g, nu, t_inference, generator)
                   for g, nu, coef in self.terms)


def _model_for(arrays, model: PCMLikeNoiseModel) -> PCMLikeNoiseModel:
    """The statistics a layer's devices read with: `model`, with a HIC layer's own g_max (the
    conductance scale its training programmed; drift and read noise are the test's)."""
    if arrays.holds_pcm:
        return dataclasses.replace(model, g_max=arrays.config.pcm.g_max)
    return model


def _terms(arrays, weight3: Tensor, model: PCMLikeNoiseModel, generator) -> list:
    """Each device of an array as (programmed conductance, drift exponent, coefficient). HIC
    arrays have their devices already (programmed during training: their noise is in them),
    and draw only the drift exponents, from the targets their levels mean; RPU arrays are
    mapped onto differential pairs and programmed here."""
    if arrays.holds_pcm:
        return [(g.double(), model.drift_coefficients(target.double(), generator), coef)
                for g, target, coef in arrays.pcm_terms()]
    g_plus, g_minus, scale = to_pair(weight3.double(), model.g_max)
    programmed = [model.program(g, generator) for g in (g_plus, g_minus)]
    nus = [model.drift_coefficients(g, generator) for g in (g_plus, g_minus)]
    return [(programmed[0], nus[0], 1 / scale), (programmed[1], nus[1], -1 / scale)]


class ProgrammedNet:
    def __init__(self, net, model: PCMLikeNoiseModel, where: str,
                 generator: Optional[torch.Generator] = None):
        """Programs every analog array of `net` (rapa.net.Net; RPU arrays are mapped onto
        PCM pairs, HIC arrays keep their devices); RapaError naming `where` when the net has
        none."""
        self.model, self.generator, self.where = model, generator, where
        self.layers: list[_Programmed] = []
        for blob in net.learnable():
            if blob.arrays is None:
                continue
            with torch.no_grad():
                weight3 = blob.blob.data.view(blob.arrays.shape)
                own = _model_for(blob.arrays, model)
                terms = _terms(blob.arrays, weight3, own, generator)
                # At t = 0 nothing has drifted: the programmed conductances themselves.
                programmed = sum(coef * g for g, _, coef in terms)
                reference = programmed.abs().mean(dim=(1, 2))
            self.layers.append(_Programmed(blob.name, weight3, blob.arrays.out_scale,
                                           weight3.clone(), blob.arrays.out_scale.clone(),
                                           terms, reference, own))
        if not self.layers:
            raise RapaError(f"{where}: the net has no analog layers (rpu_param, hic_param) to "
                            f"program")

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
        generator = generator or self.generator
        for p in self.layers:
            now = p.weight_at(t_inference, generator)
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
