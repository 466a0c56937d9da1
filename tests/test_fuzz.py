"""A fuzzer of the net loader: a small net with one numeric field at a time set to a value a
careless edit or a typo could give (0, negatives, huge counts, NaN, inf), built and run. The
outcome must be a net that runs or a one-line RapaError naming the layer, never another
exception. Fixed seed and a time budget, so that CI runs the same cases every time."""
import math
import time

import numpy as np
import pytest
import torch

from rapa.errors import RapaError
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text

NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1
    weight_filler { type: "gaussian" std: 0.1 } tiling_param { scheme: "random" num_tiles: 4 } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" relu_param { negative_slope: 0 } }
layer { name: "pool" type: "Pooling" bottom: "c" top: "p"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 0 } }
layer { name: "norm" type: "LRN" bottom: "p" top: "n"
  lrn_param { local_size: 3 alpha: 0.00005 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "bn" type: "BatchNorm" bottom: "n" top: "b"
  batch_norm_param { moving_average_fraction: 0.9 eps: 0.00001 } }
layer { name: "scale" type: "Scale" bottom: "b" top: "s" scale_param { axis: 1 num_axes: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "s" top: "ip"
  inner_product_param { num_output: 5 axis: 1 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" softmax_param { axis: 1 } }
"""

# (layer, message path, field): the numbers a user edits.
FIELDS = [
    ("in", "input_param.shape", "dim"),
    ("conv", "convolution_param", "num_output"), ("conv", "convolution_param", "kernel_size"),
    ("conv", "convolution_param", "pad"), ("conv", "convolution_param", "stride"),
    ("conv", "convolution_param", "dilation"), ("conv", "convolution_param", "group"),
    ("conv", "convolution_param.weight_filler", "std"),
    ("conv", "convolution_param.tiling_param", "num_tiles"),
    ("relu", "relu_param", "negative_slope"),
    ("pool", "pooling_param", "kernel_size"), ("pool", "pooling_param", "stride"),
    ("pool", "pooling_param", "pad"),
    ("norm", "lrn_param", "local_size"), ("norm", "lrn_param", "alpha"),
    ("norm", "lrn_param", "beta"), ("norm", "lrn_param", "k"),
    ("bn", "batch_norm_param", "moving_average_fraction"), ("bn", "batch_norm_param", "eps"),
    ("scale", "scale_param", "axis"), ("scale", "scale_param", "num_axes"),
    ("ip", "inner_product_param", "num_output"), ("ip", "inner_product_param", "axis"),
    ("prob", "softmax_param", "axis"),
]
VALUES = [0, 1, 2, 3, 7, 13, -1, -2, 100, 4096, 2**31 - 1, 2**32 - 1, -2**31, 0.5, 1e-30, 1e30,
          math.nan, math.inf, -math.inf]
BUDGET_S = 20.0


def _set(param: pb.NetParameter, layer: str, path: str, field: str, value) -> bool:
    """Set the field (the first element of a repeated one); False if protobuf refuses the
    value for the field's type (the text parser would then refuse the file with its line)."""
    msg = next(lp for lp in param.layer if lp.name == layer)
    for part in path.split("."):
        msg = getattr(msg, part)
        if not hasattr(msg, "DESCRIPTOR"):  # a repeated message: its first
            msg = msg[0]
    fd = msg.DESCRIPTOR.fields_by_name[field]
    try:
        if fd.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
            value = float(value)
        elif isinstance(value, float):
            return False
        if fd.is_repeated:
            target = getattr(msg, field)
            if len(target):
                target[0] = value
            else:
                target.append(value)
        else:
            setattr(msg, field, value)
    except (ValueError, TypeError):
        return False
    return True


ANALOG_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.01 } tiling_param { scheme: "random" num_tiles: 4 }
    rpu_param { preset: "rasch_2019" device { dw_min: 0.001 w_max: 0.6 w_min: -0.6 }
      forward { out_bound: 12 inp_res: 0.0079 out_noise: 0.06 max_bm_factor: 1000 }
      backward { out_bound: 12 out_res: 0.002 }
      mapping { weight_scaling_omega: 0.6 weight_range: 0.15 } } } }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "prob"
  inner_product_param { num_output: 5 rpu_param { device { dw_min_dtod: 0.3 up_down: 0.1 }
    update { desired_bl: 31 } } } }
"""

ANALOG_FIELDS = [("conv", "convolution_param.rpu_param.device", f) for f in (
    "dw_min", "w_max", "w_min", "dw_min_std")] + [
    ("conv", "convolution_param.rpu_param.forward", f) for f in (
        "out_bound", "inp_res", "out_noise", "max_bm_factor")] + [
    ("conv", "convolution_param.rpu_param.backward", f) for f in ("out_bound", "out_res")] + [
    ("conv", "convolution_param.rpu_param.mapping", f) for f in (
        "weight_scaling_omega", "weight_range")] + [
    ("ip", "inner_product_param.rpu_param.device", f) for f in ("dw_min_dtod", "up_down")] + [
    ("ip", "inner_product_param.rpu_param.update", "desired_bl")]


def fuzz(text: str, fields: list, seed: int, budget_s: float) -> dict:
    """Fuzzed copies of the net `text`, each built in both phases and run forward (and
    backward in TRAIN): outcomes counted; any exception but a one-line RapaError fails."""
    rng = np.random.default_rng(seed)
    base = parse_text(text, pb.NetParameter())
    t0, cases, outcomes = time.monotonic(), 0, {"ran": 0, "refused": 0}
    while time.monotonic() - t0 < budget_s and cases < 400:
        param = pb.NetParameter()
        param.CopyFrom(base)
        changes = []
        for _ in range(1 + (rng.random() < 0.3)):  # mostly one field, sometimes two
            layer, path, field = fields[rng.integers(len(fields))]
            value = VALUES[rng.integers(len(VALUES))]
            if _set(param, layer, path, field, value):
                changes.append(f"{layer}.{path}.{field} = {value}")
        if not changes:
            continue
        cases += 1
        try:
            for phase in (pb.TRAIN, pb.TEST):
                net = Net(param, phase, source="fuzz")
                net.train(phase == pb.TRAIN)
                blobs = net({"x": torch.randn(net.fed_shapes["x"])})
                if phase == pb.TRAIN:
                    blobs["prob"].sum().backward()
            outcomes["ran"] += 1
        except RapaError as e:
            assert "\n" not in str(e), (changes, str(e))
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001 -- the finding: name the case
            pytest.fail(f"{'; '.join(changes)}: {type(e).__name__}: {e}")
    outcomes["cases"] = cases
    return outcomes


def test_fuzzed_nets_run_or_fail_with_one_line():
    outcomes = fuzz(NET, FIELDS, 1234, BUDGET_S)
    assert outcomes["cases"] >= 20 and outcomes["ran"] and outcomes["refused"], outcomes


def test_fuzzed_analog_nets_run_or_fail_with_one_line():
    outcomes = fuzz(ANALOG_NET, ANALOG_FIELDS, 4321, BUDGET_S / 2)
    assert outcomes["cases"] >= 15 and outcomes["ran"] and outcomes["refused"], outcomes
