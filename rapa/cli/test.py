"""Test trained weights (Caffe's `caffe test`), with RAPA's majority vote.

Runs the TEST phase of --model for --iterations batches and prints each output averaged over
the batches; with --votes K every batch is also classified K times, each with its own random
tile assignment, and the majority vote's accuracy is printed (the paper used K = 9).
"""
import torch

from ..device import device_named
from ..errors import RapaError
from ..evaluate import test_net
from ..net import Net
from ..proto import pb
from ..snapshot import load_weights
from .options import count, seed


def add_arguments(p):
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--iterations", type=count(), default=50, help="test batches (default 50)")
    p.add_argument("--votes", type=count(), default=1, help="random assignments per image")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed, default=0, help="seed of the test-time assignments")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    if args.iterations < 1 or args.votes < 1:
        raise RapaError("--iterations and --votes must be >= 1")
    device = device_named(args.device)
    torch.manual_seed(args.seed)
    net = Net.from_file(args.model, pb.TEST, seed=args.seed)
    if args.votes > 1 and not any(e.layer.votes for e in net.entries):
        net.close()
        raise RapaError(f"--votes {args.votes}: {args.model} has no layer that scores votes "
                        f"(an Accuracy layer in the TEST phase)")
    missing = load_weights(net, args.weights)
    if missing:
        raise RapaError(f"{args.weights}: has no weights for layer(s) {', '.join(missing)}")
    net.to_device(device)
    try:
        result = test_net(net, args.iterations, args.votes,
                          progress=False if args.no_progress else None)
    finally:
        net.close()
    print(f"{result.images} images, {args.iterations} batches")
    for k, v in result.outputs.items():
        extra = f" (error {100 * (1 - v):.2f}%)" if "acc" in k else ""
        print(f"{k} = {v:.4f}{extra}")
    for k, v in result.vote_accuracy.items():
        print(f"{k} (majority of {args.votes} votes) = {v:.4f} (error {100 * (1 - v):.2f}%)")
    return 0
