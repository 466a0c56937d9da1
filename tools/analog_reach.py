"""How much of a floating-point model an analog net's arrays can hold: per analog layer, the
share of the model's weights beyond alpha_t * [w_min_ij, w_max_ij] (each array's digital scale
times its devices' bounds, as set up from the prototxt's fillers and rpu_param mapping).

    python tools/analog_reach.py --model prototxt/cifar10/random_max_rpu.prototxt \\
        --weights snapshots/cifar10/random_max_e10_iter_25000.caffemodel [--weight-range R]

Run it where the net's relative paths (its Data layers' databases) resolve, as rapa train
would. --weights is a model of the same net without rpu_param (a floating-point run: the
same blob shapes). --weight-range overrides every analog layer's mapping.weight_range (0: the
scale from the initial weights alone). Use it to choose weight_range
(rapa.analog.MappingParameters).
"""
from __future__ import annotations

import argparse
import sys

import torch

from rapa.errors import RapaError
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import read_binary, read_text
from rapa.snapshot import blob_to_tensor


def reach(model: str, weights: str, weight_range: float | None, seed: int) -> list[str]:
    """One line per analog layer of `model`: the share of `weights`' values beyond reach.
    RapaError for a model of the analog net, a layer missing or of another shape, a net
    without analog layers."""
    fp = {lp.name: lp for lp in read_binary(weights, pb.NetParameter()).layer if lp.blobs}
    param = read_text(model, pb.NetParameter())
    if weight_range is not None:
        for lp in param.layer:
            for sub in (lp.convolution_param, lp.inner_product_param):
                if sub.HasField("rpu_param"):
                    sub.rpu_param.mapping.weight_range = weight_range
    torch.manual_seed(seed)
    net = Net(param, pb.TEST, source=model)
    lines = []
    try:
        for e in net.entries:
            layer = e.layer
            arrays = layer.blob_arrays(0) if layer.learnable_blobs() else None
            if arrays is None:
                continue
            name, learn = layer.layer_name, layer.learnable_blobs()
            if name not in fp:
                raise RapaError(f"{weights}: has no layer '{name}'")
            if len(fp[name].blobs) > len(learn) + len(layer.state_blobs()) - len(
                    arrays.state_blobs()):
                raise RapaError(f"{weights}: layer '{name}' holds analog arrays' device blobs: "
                                f"a model of the analog net; give a floating-point one")
            w = blob_to_tensor(fp[name].blobs[0])
            if not torch.isfinite(w).all():
                raise RapaError(f"{weights}: layer '{name}' weights hold NaN or infinite values")
            if w.numel() != learn[0].numel():
                raise RapaError(f"{weights}: layer '{name}' weights have shape "
                                f"{tuple(w.shape)}, the net's {tuple(learn[0].shape)}")
            w = w.reshape(arrays.w_max.shape).to(arrays.w_max.dtype)
            alpha = arrays.out_scale.view(-1, 1, 1)
            beyond = ((w > alpha * arrays.w_max) | (w < alpha * arrays.w_min)).double().mean()
            lines.append(f"{name}: {100 * beyond.item():.1f}% of the weights beyond reach "
                         f"(median reach {(alpha * arrays.w_max).median():.3g}, largest "
                         f"|weight| {w.abs().max():.3g})")
    finally:
        net.close()
    if not lines:
        raise RapaError(f"{model}: has no layer with rpu_param")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--weight-range", type=float)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    try:
        print("\n".join(reach(args.model, args.weights, args.weight_range, args.seed)))
    except (RapaError, OSError, ValueError) as e:
        sys.exit(f"analog_reach.py: error: {e}")


if __name__ == "__main__":
    main()
