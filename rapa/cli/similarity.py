"""Similarity of the kernel replicas across tiles (paper Fig. 6A).

For each tiled convolution of --model with --weights: per filter, the mean correlation
coefficient between all pairs of its replicas, averaged over the filters; then the mean over
the tiled layers. 1 means identical replicas (the untiled convolution); the paper finds random
tiling's replicas similar and the fixed schemes' dissimilar.
"""
import json


from ..analysis.similarity import net_similarity
from ..errors import RapaError
from ..net import Net
from ..proto import pb
from ..snapshot import load_weights
from .options import output_path


def add_arguments(p):
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--json", type=output_path, help="also write the figures to this JSON file")


def load_net(model, weights, phase=pb.TEST, **kwargs) -> Net:
    """The net of `model` with `weights` loaded; every layer with blobs must be in the file."""
    net = Net.from_file(model, phase, **kwargs)
    missing = load_weights(net, weights)
    if missing:
        net.close()
        raise RapaError(f"{weights}: has no weights for layer(s) {', '.join(missing)}")
    return net


def run(args):
    net = load_net(args.model, args.weights)
    net.close()
    layers, notes = net_similarity(net)
    for note in notes:
        print(note)
    rated = [x for x in layers if x.similarity is not None]
    if not rated:
        raise RapaError(f"{args.model}: no tiled layer with two or more tiles")
    print(f"{'layer':<12} {'tiles':>5} {'similarity':>10}")
    for x in layers:
        value = f"{x.similarity:.4f}" if x.similarity is not None else "-"
        print(f"{x.layer:<12} {x.tiles:>5} {value:>10}")
    mean = sum(x.similarity for x in rated) / len(rated)
    print(f"{'mean':<12} {'':>5} {mean:>10.4f}   (over {len(rated)} tiled layer(s))")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "weights": args.weights, "mean": mean,
                       "layers": [x.__dict__ for x in layers], "notes": notes}, f, indent=1)
    return 0
