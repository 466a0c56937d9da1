"""One update per learnable blob: Caffe's SGD for digital blobs, the pulsed update of the analog
arrays for analog ones.

The step dispatches per parameter, as aihwkit's AnalogSGD.step does (each analog tile updates
itself from the inputs and output gradients its backward pass recorded), so that one solver
step trains a net of digital and analog layers together.

Digital blob w with gradient g (Caffe's SGDSolver::ComputeUpdateValue), rate r = rate * lr_mult
and decay d = weight_decay * decay_mult:
    g += d * w   (L2; d * sign(w) for L1)
    h  = momentum * h + r * g
    w -= h
Analog blob: `arrays.apply_update(w, r / passes)` for the `passes` backward passes recorded
since the last step (the solver's iter_size): the stochastic pulse trains of rapa.rpu_update
(Gokmen & Vlasov 2016), no momentum and no weight decay, so no history is kept for them.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .layers import Learnable


class SGD:
    """The update of `blobs` (Net.learnable()); `history` holds one momentum buffer per
    digital blob, in order (what a .solverstate saves)."""

    def __init__(self, blobs: list[Learnable], momentum: float = 0.0, weight_decay: float = 0.0,
                 regularization: str = "L2", generator: Optional[torch.Generator] = None):
        self.blobs = blobs
        self.generator = generator  # the pulses' seeds (AnalogArrays.apply_update)
        self.momentum, self.weight_decay, self.regularization = (momentum, weight_decay,
                                                                 regularization)
        self.digital = [b for b in blobs if b.arrays is None]
        self.analog = [b for b in blobs if b.arrays is not None]
        self.history = [torch.zeros_like(b.blob) for b in self.digital]

    @torch.no_grad()
    def step(self, rate: Union[float, torch.Tensor], passes: int = 1) -> None:
        """One update at the solver's rate; clears the digital gradients. `rate`: a number, or
        a 0-dim tensor on the blobs' device, which the updates read on the device (a CUDA
        graph that holds the step then follows a rate that changes between replays; the HIC
        update alone reads it back). `passes`: backward passes since the last step (their
        gradients already averaged by the caller)."""
        if not isinstance(rate, torch.Tensor) and self.digital:
            rate = torch.full((), rate, dtype=torch.float64, device=self.digital[0].blob.device)
        for b, h in zip(self.digital, self.history):
            g = b.blob.grad
            if b.spec.lr_mult == 0:  # frozen (the net computes no gradient for it, as Caffe)
                b.blob.grad = None
                continue
            if g is None:
                continue
            decay = self.weight_decay * b.spec.decay_mult
            if decay:
                g.add_(b.blob.sign() if self.regularization == "L1" else b.blob, alpha=decay)
            h.mul_(self.momentum).addcmul_(g, rate, value=b.spec.lr_mult)
            b.blob.sub_(h)
            b.blob.grad = None
        for b in self.analog:
            b.arrays.apply_update(b.blob, rate * b.spec.lr_mult / passes,
                                  generator=self.generator)
