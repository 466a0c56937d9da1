"""One pulsed update on aihwkit 1.1.0's constant-step device, repeated: the weight change of
every element over many draws, for bench/update_stats.py. Runs in aihwkit's environment
(torch 2.10.0), never in rapa's:
    python bench/aihwkit_update.py CASES.json OUT.json
CASES.json is a list of cases (device and update fields by aihwkit's names, lr, the rows x
(N, K) and d (N, O) of the update, where the weights start, the repetitions). OUT.json gets,
per case, the device-to-device draws of the tile (so that rapa can use the very same devices),
the starting weights and the per-element mean and standard deviation of the change.
"""
import json
import sys

import torch
from aihwkit.simulator.configs import ConstantStepDevice, SingleRPUConfig, UpdateParameters
from aihwkit.simulator.tiles import AnalogTile

HIDDEN = {"w_max": "max_bound", "w_min": "min_bound", "dw_up": "dwmin_up",
          "dw_down": "dwmin_down"}


def draws_of(tile):
    names = tile.tile.get_hidden_parameter_names()
    hidden = tile.tile.get_hidden_parameters()
    return {ours: hidden[names.index(theirs)] for ours, theirs in HIDDEN.items()}


def start_weights(where, draws):
    if where == "zero":
        return torch.zeros_like(draws["w_max"])
    if where == "half_a_step_inside_the_bounds":
        # Checkerboard: half the devices half an up step below w_max, half half a down step
        # above w_min, so that an update towards the near bound saturates.
        o, k = draws["w_max"].shape
        upper = (torch.arange(o)[:, None] + torch.arange(k)[None, :]) % 2 == 0
        return torch.where(upper, draws["w_max"] - 0.5 * draws["dw_up"],
                           draws["w_min"] + 0.5 * draws["dw_down"])
    raise ValueError(f"unknown start {where!r}")


def run(case):
    torch.manual_seed(case["seed"])
    x = torch.tensor(case["x"], dtype=torch.float32)
    d = torch.tensor(case["d"], dtype=torch.float32)
    config = SingleRPUConfig(device=ConstantStepDevice(**case["device"]),
                             update=UpdateParameters(**case["update"]))
    tile = AnalogTile(d.shape[1], x.shape[1], config)
    tile.set_learning_rate(case["lr"])
    draws = draws_of(tile)
    w0 = start_weights(case["start"], draws)
    total = torch.zeros_like(w0, dtype=torch.float64)
    square = torch.zeros_like(total)
    for _ in range(case["repetitions"]):
        tile.tile.set_weights(w0)
        tile.tile.update(x, d, False)  # the N rows in order, as the array applies them
        dw = (tile.tile.get_weights() - w0).double()
        total += dw
        square += dw * dw
    r = case["repetitions"]
    mean = total / r
    std = ((square - r * mean * mean) / (r - 1)).clamp_min(0).sqrt()
    return {"draws": {k: v.tolist() for k, v in draws.items()}, "w0": w0.tolist(),
            "mean": mean.tolist(), "std": std.tolist()}


def device_to_device(shape, seed):
    """The draws of one large tile with the default device: their relative spreads."""
    torch.manual_seed(seed)
    draws = draws_of(AnalogTile(*shape, SingleRPUConfig(device=ConstantStepDevice())))
    return {k: v.flatten().tolist() for k, v in draws.items()}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: aihwkit_update.py CASES.json OUT.json")
    spec = json.loads(open(sys.argv[1]).read())
    out = {"cases": [run(c) for c in spec["cases"]],
           "device_to_device": device_to_device(tuple(spec["d2d_shape"]), spec["seed"])}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
