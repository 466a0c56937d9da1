"""Draw learning curves from training logs (JSON lines) to a PNG.

Training loss against iteration (left), test error against iteration (right; with the
majority-vote error where the log has it); --epochs draws against epochs instead (logs of
`rapa train` record them). Several logs are drawn into one figure (Fig. 5's tile sweep).
"""
import pathlib

from ..errors import RapaError
from ..trainlog import accuracy_key, read_log_lines
from .options import figure_written, figure_path, word


def add_arguments(p):
    p.add_argument("logs", nargs="+", help="training logs (*_log.jsonl)")
    p.add_argument("--out", type=figure_path, default="learning_curves.png",
                   help="image file to write (PNG; by its suffix also SVG, PDF, ...)")
    p.add_argument("--title", type=word, default="")
    p.add_argument("--epochs", action="store_true", help="epochs on the x axis")


def run(args):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RapaError("rapa plot needs matplotlib (pip install matplotlib)") from None
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    drew = False
    for log in args.logs:
        if not pathlib.Path(log).is_file():
            raise RapaError(f"{log}: no such file")
        lines = read_log_lines(log)
        label = pathlib.Path(log).name.removesuffix("_log.jsonl")
        train = [x for x in lines if x.get("phase") == "train" and "loss" in x]
        test = [x for x in lines if x.get("phase") == "test" and x.get("net", 0) == 0]
        if args.epochs and any(x.get("epoch") is None for x in train + test):
            raise RapaError(f"{log}: has no epochs (a log of an older rapa, or of a net "
                            f"without a Data layer); draw it against iterations")
        xkey = "epoch" if args.epochs else "iter"
        if train:
            ax_loss.plot([x[xkey] for x in train], [x["loss"] for x in train], label=label)
            drew = True
        key = accuracy_key(test, log) if test else None
        color = None  # a log's vote curve: its single-pass curve's colour, dashed
        for key, vote in ((key, False), (f"{key}_vote", True)) if key else ():
            pts = [(x[xkey], 100 * (1 - x[key])) for x in test if key in x]
            if pts:
                (line,) = ax_err.plot(*zip(*pts), "--" if vote else "-", marker=".",
                                      color=color, label=label + (" (vote)" if vote else ""))
                color = line.get_color()
                drew = True
    if not drew:
        raise RapaError(f"{', '.join(args.logs)}: no training or test entries to draw")
    xlabel = "epoch" if args.epochs else "iteration"
    ax_loss.set(xlabel=xlabel, ylabel="training loss (smoothed)", yscale="log")
    # Plain numbers on the log axis (2.3, not 2.3 x 10^0).
    from matplotlib.ticker import FormatStrFormatter
    for axis_formatter in (ax_loss.yaxis.set_major_formatter, ax_loss.yaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%g"))
    ax_err.set(xlabel=xlabel, ylabel="test error [%]")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {figure_written(args.out)}")
    return 0
