"""Forward and backward products of aihwkit 1.1.0's AnalogTile, repeated: the per-output mean
and standard deviation over many draws of the output noise, for bench/update_stats.py. Runs in
aihwkit's environment (torch 2.10.0), never in rapa's:
    python bench/aihwkit_periphery.py CASES.json OUT.json
CASES.json is a list of cases: the weights W (O, K), the inputs (N, K) for the forward pass or
(N, O) for the backward one, overrides of aihwkit's IOParameters by its own field names
(enums by name, e.g. "ABS_MAX"), and the repetitions. The device's bounds are set far out so
that set_weights writes W as it is.
"""
import json
import sys

import torch
from aihwkit.simulator.configs import ConstantStepDevice, IOParameters, SingleRPUConfig
from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType
from aihwkit.simulator.tiles import AnalogTile

ENUMS = {"noise_management": NoiseManagementType, "bound_management": BoundManagementType}


def io_parameters(overrides: dict) -> IOParameters:
    io = IOParameters()
    for name, value in overrides.items():
        setattr(io, name, ENUMS[name][value] if name in ENUMS else value)
    return io


def run(case):
    torch.manual_seed(case["seed"])
    w = torch.tensor(case["weights"], dtype=torch.float32)
    rows = torch.tensor(case["rows"], dtype=torch.float32)
    io = io_parameters(case["io"])
    device = ConstantStepDevice(w_max=1e6, w_min=-1e6, w_max_dtod=0.0, w_min_dtod=0.0)
    config = SingleRPUConfig(device=device, forward=io, backward=io)
    tile = AnalogTile(w.shape[0], w.shape[1], config)
    tile.tile.set_weights(w)
    r = case["repetitions"]
    total = square = None
    for _ in range(r):
        y = (tile.tile.forward(rows) if case["direction"] == "forward"
             else tile.tile.backward(rows)).double()
        total = y if total is None else total + y
        square = y * y if square is None else square + y * y
    mean = total / r
    std = ((square - r * mean * mean) / (r - 1)).clamp_min(0).sqrt()
    return {"mean": mean.tolist(), "std": std.tolist()}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: aihwkit_periphery.py CASES.json OUT.json")
    spec = json.loads(open(sys.argv[1]).read())
    with open(sys.argv[2], "w") as f:
        json.dump({"cases": [run(c) for c in spec["cases"]]}, f)
