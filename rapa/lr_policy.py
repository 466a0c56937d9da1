"""Caffe's learning-rate policies, and RAPA's warm-up (paper section 2.2).

  fixed      base_lr
  step       base_lr * gamma ^ floor(iter / stepsize)
  exp        base_lr * gamma ^ iter
  inv        base_lr * (1 + gamma * iter) ^ (-power)
  multistep  base_lr * gamma ^ (number of stepvalue entries <= iter)
  poly       base_lr * (1 - iter / max_iter) ^ power
  sigmoid    base_lr / (1 + exp(-gamma * (iter - stepsize)))
Warm-up: for iter < warmup_iter the rate is multiplied by warmup_factor.
"""
from __future__ import annotations

import math

from .errors import RapaError
from .proto import pb

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def check_policy(sp: pb.SolverParameter, where: str) -> None:
    policy = sp.lr_policy or "fixed"
    if policy not in POLICIES:
        raise RapaError(f"{where}: unknown lr_policy '{policy}'; known: {', '.join(POLICIES)}")
    needs = {"step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
             "multistep": ("gamma",), "poly": ("power",), "sigmoid": ("gamma", "stepsize")}
    for field in needs.get(policy, ()):
        if not sp.HasField(field):
            raise RapaError(f"{where}: lr_policy '{policy}' needs {field}")
    if policy == "step" and sp.stepsize <= 0:
        raise RapaError(f"{where}: stepsize must be > 0")
    if policy == "multistep" and list(sp.stepvalue) != sorted(sp.stepvalue):
        raise RapaError(f"{where}: stepvalue must increase")


def learning_rate(sp: pb.SolverParameter, iteration: int) -> float:
    policy = sp.lr_policy or "fixed"
    base = sp.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * sp.gamma ** (iteration // sp.stepsize)
    elif policy == "exp":
        rate = base * sp.gamma ** iteration
    elif policy == "inv":
        rate = base * (1 + sp.gamma * iteration) ** (-sp.power)
    elif policy == "multistep":
        rate = base * sp.gamma ** sum(1 for v in sp.stepvalue if iteration >= v)
    elif policy == "poly":
        rate = base * max(0.0, 1 - iteration / sp.max_iter) ** sp.power
    elif policy == "sigmoid":
        rate = base / (1 + math.exp(-sp.gamma * (iteration - sp.stepsize)))
    else:
        raise RapaError(f"unknown lr_policy '{policy}'")
    if iteration < sp.warmup_iter:
        rate *= sp.warmup_factor
    return rate
