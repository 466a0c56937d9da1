"""Eltwise: Caffe's elementwise SUM (with coefficients), PROD and MAX of several inputs of one
shape (eltwise_layer.cpp), with Caffe's gradients."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

OPERATIONS = ("sum", "prod", "max")


class _ProdByQuotient(torch.autograd.Function):
    """PROD whose gradient is dy * top / x_i (Caffe's stable_prod_grad: false): cheaper for
    many inputs, and inf or NaN where an input is 0."""

    @staticmethod
    def forward(ctx, *xs):
        top = xs[0]
        for x in xs[1:]:
            top = top * x
        ctx.save_for_backward(top, *xs)
        return top

    @staticmethod
    def backward(ctx, grad):
        top, *xs = ctx.saved_tensors
        return tuple(grad * top / x if need else None
                     for x, need in zip(xs, ctx.needs_input_grad))


class Eltwise(torch.nn.Module):
    """Elementwise combination of n >= 2 inputs of one shape -> that shape.

    sum:  sum_i coeff_i x_i (coefficients default 1);
    prod: prod_i x_i, the gradient of x_i the product of the others (stable_prod_grad) or
          top / x_i;
    max:  the elementwise maximum; the gradient goes to one input only, as Caffe picks it:
          x_0 where x_0 > x_1 else x_1, then x_k where x_k is larger than all before it (so a
          tie between x_0 and x_1 goes to x_1, a later tie to the earlier input).
    """

    def __init__(self, operation: str = "sum", coeff: Optional[Sequence[float]] = None,
                 stable_prod_grad: bool = True):
        super().__init__()
        if operation not in OPERATIONS:
            raise ValueError(f"rapa: unknown operation {operation!r}; known: "
                             f"{', '.join(OPERATIONS)}")
        if coeff and operation != "sum":
            raise ValueError("rapa: coeff is for the sum operation only (Caffe)")
        self.operation = operation
        self.coeff = list(coeff) if coeff else None
        self.stable_prod_grad = stable_prod_grad

    def output_shape(self, *shapes: tuple[int, ...]) -> tuple[int, ...]:
        if len(shapes) < 2:
            raise ValueError(f"rapa: needs at least 2 inputs, got {len(shapes)}")
        if self.coeff is not None and len(self.coeff) != len(shapes):
            raise ValueError(f"rapa: takes one coefficient per input: {len(self.coeff)} "
                             f"coefficients for {len(shapes)} inputs")
        for i, s in enumerate(shapes[1:], 1):
            if tuple(s) != tuple(shapes[0]):
                raise ValueError(f"rapa: input 0 has shape {tuple(shapes[0])} but input {i} "
                                 f"has shape {tuple(s)}")
        return tuple(shapes[0])

    def forward(self, *xs: Tensor) -> Tensor:
        if self.operation == "sum":
            if self.coeff is None:
                out = xs[0] + xs[1]
                for x in xs[2:]:
                    out = out + x
                return out
            out = xs[0] * self.coeff[0]
            for c, x in zip(self.coeff[1:], xs[1:]):
                out = out + x * c
            return out
        if self.operation == "prod":
            if not self.stable_prod_grad:
                return _ProdByQuotient.apply(*xs)
            out = xs[0] * xs[1]
            for x in xs[2:]:
                out = out * x
            return out
        with torch.no_grad():  # which input wins, then its value, through which it learns
            first = xs[0] > xs[1]
            best = torch.where(first, xs[0], xs[1])
            winner = torch.where(first, 0, 1)
            for k, x in enumerate(xs[2:], 2):
                better = x > best
                best = torch.where(better, x, best)
                winner = torch.where(better, k, winner)
        return torch.stack(xs).gather(0, winner.unsqueeze(0)).squeeze(0)

    def extra_repr(self) -> str:
        return self.operation + (f", coeff={self.coeff}" if self.coeff else "")
