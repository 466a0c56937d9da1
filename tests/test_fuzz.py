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


def test_fuzzed_nets_run_or_fail_with_one_line():
    rng = np.random.default_rng(1234)
    base = parse_text(NET, pb.NetParameter())
    t0, cases, outcomes = time.monotonic(), 0, {"ran": 0, "refused": 0}
    while time.monotonic() - t0 < BUDGET_S and cases < 400:
        param = pb.NetParameter()
        param.CopyFrom(base)
        changes = []
        for _ in range(1 + (rng.random() < 0.3)):  # mostly one field, sometimes two
            layer, path, field = FIELDS[rng.integers(len(FIELDS))]
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
    assert cases >= 50 and outcomes["ran"] and outcomes["refused"], (cases, outcomes)
