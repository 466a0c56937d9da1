"""How much of a floating-point model an analog net's arrays can hold: per analog layer, the
share of the model's weights beyond alpha_t * [w_min_ij, w_max_ij] (each array's digital scale
times its devices' bounds, as set up from the prototxt's fillers and rpu_param mapping).

    python tools/analog_reach.py --model prototxt/cifar10/random_max_rpu.prototxt \\
        --weights snapshots/cifar10/random_max_e10_iter_25000.caffemodel [--weight-range R]

--weights is a model of the same net without rpu_param (the same blob shapes). --weight-range
overrides every analog layer's mapping.weight_range (0: the scale from the initial weights
alone). Use it to choose weight_range (rapa.analog.MappingParameters).
"""
from __future__ import annotations

import argparse

import torch

from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import read_text
from rapa.snapshot import blob_to_tensor


def reach(model: str, weights: str, weight_range: float | None, seed: int) -> list[str]:
    fp = {lp.name: blob_to_tensor(lp.blobs[0]) for lp in
          pb.NetParameter.FromString(open(weights, "rb").read()).layer if lp.blobs}
    param = read_text(model, pb.NetParameter())
    if weight_range is not None:
        for lp in param.layer:
            for sub in (lp.convolution_param, lp.inner_product_param):
                if sub.HasField("rpu_param"):
                    sub.rpu_param.mapping.weight_range = weight_range
    torch.manual_seed(seed)
    net = Net(param, pb.TEST)
    lines = []
    try:
        for e in net.entries:
            arrays = e.layer.blob_arrays(0) if e.layer.learnable_blobs() else None
            if arrays is None or e.layer.layer_name not in fp:
                continue
            w = fp[e.layer.layer_name].reshape(arrays.w_max.shape).to(arrays.w_max.dtype)
            alpha = arrays.out_scale.view(-1, 1, 1)
            beyond = ((w > alpha * arrays.w_max) | (w < alpha * arrays.w_min)).double().mean()
            lines.append(f"{e.layer.layer_name}: {100 * beyond.item():.1f}% of the weights "
                         f"beyond reach (median reach {(alpha * arrays.w_max).median():.3g}, "
                         f"largest |weight| {w.abs().max():.3g})")
    finally:
        net.close()
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--weight-range", type=float)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    print("\n".join(reach(args.model, args.weights, args.weight_range, args.seed)))


if __name__ == "__main__":
    main()
