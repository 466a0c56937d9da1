"""Reduce a tiled net to one kernel per layer (paper Table 3).

Writes the same prototxt with every tiling_param removed (--out-model) and its weights
(--out-weights): each tiled layer's kernel formed from its replicas by --method (norm: per
filter the replica with the largest L2 norm; random_tile: one tile's kernel; first_tile;
random_filter: each filter from a random tile; biases from the same replica), the other
blobs unchanged. --method best tries the four on --holdout-images images of the training
database (the TRAIN phase's, or --holdout-source) with the test-time transform, and keeps the
most accurate, as the paper reports the best. `rapa test` runs the result.
"""
import math

import torch
from google.protobuf import text_format

from ..analysis.reduce import METHODS, holdout_param, reduce_net, untiled_param
from ..errors import RapaError
from ..evaluate import test_net
from ..net import Net
from ..proto import pb
from ..prototxt import read_text
from ..snapshot import save_weights
from .similarity import load_net
from .options import count, output_path, seed, word


def add_arguments(p):
    p.add_argument("--model", required=True, help="tiled net prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--method", type=word, required=True, help=f"{', '.join(METHODS)}, or best")
    p.add_argument("--out-model", type=output_path, required=True,
                   help="prototxt to write (untiled)")
    p.add_argument("--out-weights", type=output_path, required=True, help=".caffemodel to write")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random methods")
    p.add_argument("--holdout-images", type=count(), default=1000,
                   help="images --method best evaluates (default 1000)")
    p.add_argument("--holdout-source", help="their database (default: the TRAIN phase's)")


def reduced_net(param, tiled, method, seed, source, base_dir) -> Net:
    net = Net(param, pb.TEST, source=source, base_dir=base_dir)
    if reduce_net(tiled, net, method, torch.Generator().manual_seed(seed)) == 0:
        net.close()
        raise RapaError(f"{tiled.source}: has no tiled layer to reduce")
    return net


def accuracy(net: Net, images: int) -> float:
    voters = [e for e in net.entries if e.layer.votes]
    batch = sum(layer.batch_size for layer in net.data_layers())
    if not voters or not batch:
        raise RapaError(f"{net.source}: --method best needs a TEST-phase Data layer and an "
                        f"Accuracy layer")
    result = test_net(net, math.ceil(images / batch), progress=False)
    return result.outputs[voters[0].tops[0]]


def run(args):
    if args.method not in METHODS + ("best",):
        raise RapaError(f"--method {args.method}: unknown; known: {', '.join(METHODS)}, best")
    if args.holdout_images < 1:
        raise RapaError("--holdout-images must be >= 1")
    param = read_text(args.model, pb.NetParameter())
    untiled = untiled_param(param)
    tiled = load_net(args.model, args.weights)
    tiled.close()
    base = tiled.context.base_dir
    method = args.method
    if method == "best":
        held = holdout_param(untiled, args.holdout_source)
        scores = {}
        for m in METHODS:
            net = reduced_net(held, tiled, m, args.seed, f"{args.model} (held out)", base)
            try:
                scores[m] = accuracy(net, args.holdout_images)
            finally:
                net.close()
            print(f"{m:<14} held-out accuracy {scores[m]:.4f}")
        method = max(METHODS, key=scores.__getitem__)
        print(f"best: {method}")
    net = reduced_net(untiled, tiled, method, args.seed, args.out_model, base)
    net.close()
    with open(args.out_model, "w") as f:
        f.write(f"# {args.model} reduced to one kernel per layer by rapa reduce "
                f"(--method {method} --seed {args.seed}) from {args.weights}\n")
        f.write(text_format.MessageToString(untiled))
    save_weights(net, args.out_weights)
    print(f"wrote {args.out_model} and {args.out_weights} (method {method})")
    return 0
