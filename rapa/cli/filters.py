"""Pictures of a tiled layer's filters, by tile (paper Fig. 6B, C).

One row per filter and one column per tile, each filter in colour (3 input channels) or gray
(the mean over its input channels), with one scale per row."""
from ..analysis.filters import draw_filters
from ..errors import RapaError
from .similarity import load_net
from .options import figure_written, count, figure_path, word


def add_arguments(p):
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--layer", type=word, required=True, help="a tiled Convolution layer's name")
    p.add_argument("--out", type=figure_path, required=True, help="PNG file to write")
    p.add_argument("--filters", type=count(), default=10, help="the first N filters (default 10)")
    p.add_argument("--select", type=int, nargs="+", help="these filters instead (indices)")


def run(args):
    if args.filters < 1:
        raise RapaError("--filters must be >= 1")
    net = load_net(args.model, args.weights)
    net.close()
    try:
        layer = net.layer(args.layer)
    except KeyError:
        raise RapaError(f"{args.model}: no layer '{args.layer}'") from None
    replicas = layer.kernel_replicas()
    if replicas is None:
        raise RapaError(f"layer '{args.layer}' ({layer.type_name}) is not a tiled convolution")
    weight = replicas[0]
    chosen = args.select or list(range(min(args.filters, weight.shape[1])))
    draw_filters(weight, chosen, args.out, f"{args.layer}: filters (rows) by tile (columns)")
    print(f"wrote {figure_written(args.out)}: {len(chosen)} filters x {weight.shape[0]} tiles")
    return 0
