"""One pulsed update's weight-change statistics, and the forward and backward periphery's
products: rapa.rpu_update and rapa.analog_mvm against aihwkit 1.1.0.

    python bench/update_stats.py --aihwkit-python /path/to/aihwkit-env/bin/python

For each case, aihwkit's AnalogTile (ConstantStepDevice, UpdateParameters) applies the same
update (rows x, d; learning rate lr) to the same starting weights --repetitions times, and so
does rapa.rpu_update on as many independent arrays, with aihwkit's own device-to-device draws
(read from the tile), so that every element is the same device on both sides. Per element:
the mean and the standard deviation of the change. Printed per case: the largest |z| of the
difference of means (z = difference / its standard error; 128 elements, so about 3.5 is the
largest expected by chance), how many elements have |z| > 4, and the ratio of the standard
deviations (rapa / aihwkit, over elements whose change varies by at least dw_min / 10; its
statistical spread is about 1/sqrt(2 repetitions)). Then the
device-to-device draws of a default device: mean and spread, relative to the nominal value.
Then the periphery: for each case both simulators compute the same products (W x forward or
W^T d backward, each side with its own default IOParameters plus the case's overrides)
--repetitions times; per output, the difference of means in standard errors (z) and the ratio
of the spreads; cases without noise must agree to float32 rounding (max |difference|).
aihwkit needs torch 2.10.0, so it runs in its own environment (bench/aihwkit_update.py,
bench/aihwkit_periphery.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import torch

from rapa.analog import ConstantStepDevice, RPUConfig, UpdateParameters
from rapa.analog.arrays import AnalogArrays
from rapa.analog.ops import analog_mvm, rpu_update

ROOT = pathlib.Path(__file__).resolve().parents[1]
O, K = 8, 16


def cases(repetitions: int) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    x1, d1 = torch.randn(1, K, generator=g), 0.3 * torch.randn(1, O, generator=g)
    x4, d4 = torch.randn(4, K, generator=g), 0.3 * torch.randn(4, O, generator=g)
    base = dict(device=dataclasses.asdict(ConstantStepDevice()),
                update=dataclasses.asdict(UpdateParameters()), lr=0.01, x=x1.tolist(),
                d=d1.tolist(), start="zero", repetitions=repetitions)
    no_management = dict(desired_bl=31, update_management=False, update_bl_management=False)
    return [
        dict(base, name="default (UM, BLM), lr 0.01", seed=1),
        dict(base, name="no UM, no BLM (BL 31)", seed=2, update=no_management),
        dict(base, name="lr 0.1: BL capped at 31", seed=3, lr=0.1),
        dict(base, name="start half a step inside the bounds", seed=4,
             start="half_a_step_inside_the_bounds"),
        dict(base, name="4 rows in order", seed=5, x=x4.tolist(), d=d4.tolist()),
    ]


def rapa_changes(case: dict, theirs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    r = case["repetitions"]
    x = torch.tensor(case["x"])
    d = torch.tensor(case["d"])
    n = x.shape[0]
    state = {k: torch.tensor(v).expand(r, O, K).contiguous() for k, v in theirs["draws"].items()}
    w0 = torch.tensor(theirs["w0"])
    w = w0.expand(r, O, K).contiguous()
    # One array per repetition: independent pulse trains, the rows of each in order.
    rpu_update(w, x.repeat(r, 1), d.repeat(r, 1), torch.arange(r).repeat_interleave(n),
               case["lr"], state, ConstantStepDevice(**case["device"]),
               UpdateParameters(**case["update"]))
    dw = (w - w0).double()
    return dw.mean(0), dw.std(0)


def compare(case, theirs) -> dict:
    r = case["repetitions"]
    mean_r, std_r = rapa_changes(case, theirs)
    mean_a, std_a = torch.tensor(theirs["mean"]), torch.tensor(theirs["std"])
    se = ((std_a ** 2 + std_r ** 2) / r).sqrt()
    moving = se > 0
    z = (mean_r - mean_a)[moving] / se[moving]
    # Spreads of elements that nearly always saturate rest on a handful of rare draws.
    ratio = (std_r / std_a)[std_a > 0.1 * case["device"]["dw_min"]]
    x, d = torch.tensor(case["x"]).double(), torch.tensor(case["d"]).double()
    sgd = -case["lr"] * d.T @ x
    return {"case": case["name"], "max_abs_z": z.abs().max().item(),
            "over_4": int((z.abs() > 4).sum()), "elements": O * K,
            "std_ratio_median": ratio.median().item(), "std_ratio_min": ratio.min().item(),
            "std_ratio_max": ratio.max().item(),
            "mean_over_sgd_rapa": (mean_r.abs().sum() / sgd.abs().sum()).item(),
            "mean_over_sgd_aihwkit": (mean_a.abs().sum() / sgd.abs().sum()).item()}


def device_to_device(theirs: dict, shape) -> list[dict]:
    dev = ConstantStepDevice()
    ours = AnalogArrays(RPUConfig(), (1, *shape)).device_state()
    nominal = {"dw_up": dev.dw_min, "dw_down": dev.dw_min, "w_max": dev.w_max,
               "w_min": dev.w_min}
    rows = []
    for name, value in nominal.items():
        a = torch.tensor(theirs[name]).double() / value
        r = ours[name].flatten().double() / value
        rows.append({"draw": name, "rapa_mean": r.mean().item(), "rapa_spread": r.std().item(),
                     "aihwkit_mean": a.mean().item(), "aihwkit_spread": a.std().item()})
    return rows


def periphery_cases(repetitions: int) -> list[dict]:
    """Products through each simulator's default periphery (7-bit DAC, 9-bit ADC, noise 0.06,
    out_bound 12, noise management; bound management forward only) and edge cases of it."""
    g = torch.Generator().manual_seed(8)
    w = 1.5 * torch.randn(8, 64, generator=g)            # outputs up to about 3x out_bound
    x, d = torch.randn(16, 64, generator=g), torch.randn(16, 8, generator=g)
    quiet = {"out_noise": 0.0}
    at_bound = torch.tensor([[12.01], [-12.01], [12.04], [11.99]])
    base = dict(weights=w.tolist(), repetitions=repetitions)
    return [
        dict(base, name="forward, defaults (BM on)", direction="forward", rows=x.tolist(),
             io={}, seed=1),
        dict(base, name="forward, no bound management", direction="forward", rows=x.tolist(),
             io={"bound_management": "NONE"}, seed=2),
        dict(base, name="backward, defaults (no BM in both)", direction="backward",
             rows=d.tolist(), io={}, seed=3),
        dict(base, name="forward, outputs at the bound, no noise", direction="forward",
             weights=at_bound.tolist(), rows=[[1.0]], io=quiet, seed=4, repetitions=2),
        dict(base, name="forward, DAC step 0.4 over [-1, 1], no noise", direction="forward",
             weights=torch.eye(4).tolist(), rows=[[1.3, 0.95, -1.3, 0.3]],
             io={**quiet, "inp_res": 0.2, "noise_management": "NONE"}, seed=5, repetitions=2),
    ]


def rapa_products(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    defaults = RPUConfig()
    io = defaults.forward if case["direction"] == "forward" else defaults.backward
    fields = {k: (v.lower() if isinstance(v, str) else v) for k, v in case["io"].items()}
    io = dataclasses.replace(io, **fields)
    w = torch.tensor(case["weights"]).unsqueeze(0)
    rows = torch.tensor(case["rows"])
    r = case["repetitions"]
    ys = analog_mvm(rows.repeat(r, 1), w, torch.zeros(r * rows.shape[0], dtype=torch.long), io,
                    transposed=case["direction"] == "backward")
    ys = ys.double().view(r, rows.shape[0], -1)
    return ys.mean(0), ys.std(0)


def compare_periphery(case: dict, theirs: dict) -> dict:
    mean_r, std_r = rapa_products(case)
    mean_a, std_a = torch.tensor(theirs["mean"]), torch.tensor(theirs["std"])
    row = {"case": case["name"], "outputs": mean_r.numel(),
           "max_abs_difference": (mean_r - mean_a).abs().max().item()}
    se = ((std_a ** 2 + std_r ** 2) / case["repetitions"]).sqrt()
    noisy = se > 0
    if noisy.any():
        z = (mean_r - mean_a)[noisy] / se[noisy]
        ratio = (std_r / std_a)[std_a > 0]
        row.update(max_abs_z=z.abs().max().item(), over_4=int((z.abs() > 4).sum()),
                   std_ratio_median=ratio.median().item())
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--aihwkit-python", default=os.environ.get("AIHWKIT_PYTHON"))
    p.add_argument("--repetitions", type=int, default=4000)
    p.add_argument("--out", default=str(ROOT / "bench/results/update_stats.json"))
    args = p.parse_args()
    if not args.aihwkit_python:
        sys.exit("update_stats.py: name aihwkit's interpreter with --aihwkit-python "
                 "(or AIHWKIT_PYTHON); aihwkit 1.1.0 needs torch 2.10.0, a separate environment")
    torch.manual_seed(0)
    spec = {"cases": cases(args.repetitions), "d2d_shape": [64, 64], "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = pathlib.Path(tmp, "cases.json"), pathlib.Path(tmp, "out.json")
        src.write_text(json.dumps(spec))
        subprocess.run([args.aihwkit_python, str(ROOT / "bench/aihwkit_update.py"), str(src),
                        str(dst)], check=True)
        theirs = json.loads(dst.read_text())
        periphery = {"cases": periphery_cases(args.repetitions)}
        src.write_text(json.dumps(periphery))
        subprocess.run([args.aihwkit_python, str(ROOT / "bench/aihwkit_periphery.py"), str(src),
                        str(dst)], check=True)
        theirs_periphery = json.loads(dst.read_text())
    rows = [compare(c, t) for c, t in zip(spec["cases"], theirs["cases"])]
    products = [compare_periphery(c, t)
                for c, t in zip(periphery["cases"], theirs_periphery["cases"])]
    d2d = device_to_device(theirs["device_to_device"], spec["d2d_shape"])
    print(f"One update, {O}x{K} devices, {args.repetitions} repetitions per side "
          "(rapa.rpu_update vs aihwkit 1.1.0, the same device draws)")
    print(f"  {'case':<38} {'max|z|':>6} {'|z|>4':>6} {'std ratio: median [min, max]':>30}"
          f" {'|mean|/|SGD| rapa, aihwkit':>27}")
    for r in rows:
        print(f"  {r['case']:<38} {r['max_abs_z']:6.2f} {r['over_4']:6d} "
              f"{r['std_ratio_median']:14.3f} [{r['std_ratio_min']:.3f}, {r['std_ratio_max']:.3f}]"
              f" {r['mean_over_sgd_rapa']:13.3f}, {r['mean_over_sgd_aihwkit']:.3f}")
    print("Device-to-device draws of the default device, 64x64, relative to nominal: "
          "mean (spread)")
    for r in d2d:
        print(f"  {r['draw']:<8} rapa {r['rapa_mean']:6.3f} ({r['rapa_spread']:.3f})   "
              f"aihwkit {r['aihwkit_mean']:6.3f} ({r['aihwkit_spread']:.3f})")
    print(f"Products through the periphery, {args.repetitions} repetitions per side "
          "(rapa.analog_mvm vs aihwkit 1.1.0, each with its default IOParameters)")
    print(f"  {'case':<44} {'outputs':>7} {'max|z|':>6} {'|z|>4':>6} {'std ratio':>9} "
          f"{'max|diff|':>10}")
    for r in products:
        noisy = "max_abs_z" in r
        print(f"  {r['case']:<44} {r['outputs']:7d} "
              + (f"{r['max_abs_z']:6.2f} {r['over_4']:6d} {r['std_ratio_median']:9.3f} "
                 if noisy else f"{'-':>6} {'-':>6} {'-':>9} ")
              + f"{r['max_abs_difference']:10.2e}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"updates": rows, "device_to_device": d2d,
                               "periphery": products}, indent=1))


if __name__ == "__main__":
    main()
