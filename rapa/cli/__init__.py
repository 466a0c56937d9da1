"""The `rapa` command: one subcommand per tool, like Caffe's `caffe train|test|time` and its
converters. A user's mistake ends with a one-line error naming the file, layer or argument,
never a traceback."""
from __future__ import annotations

import argparse
import sys

from ..allocator import keep_freed_memory
from ..errors import RapaError, os_error_message
from .options import outputs_apart

COMMANDS = ("train", "test", "time", "model_size", "plot", "table", "sweep", "similarity",
            "filters", "reduce", "fgsm", "convert_cifar", "convert_svhn", "convert_imageset", "compute_mean")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (`rapa CMD -h` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib
    parser = Parser(prog="rapa", description="RAPA-ConvNets: train, test and "
                                     "time nets written in Caffe's prototxt; convert data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        doc = module.__doc__.replace("%", "%%")  # argparse formats help with %
        p = sub.add_parser(name.replace("_", "-"), help=doc.splitlines()[0], description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run, parser=p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        outputs_apart(args.parser, args)
        return args.run(args) or 0
    except RapaError as e:
        from ..distributed import speaker
        leader, who = speaker()
        if leader or not e.shared:  # an error every process of a run raises is said once
            print(f"rapa {args.command}: error: {who}{e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user named: missing, unwritable, a folder, a full disk
        print(f"rapa {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrapa {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from ..data.prefetch import forget_worker_deaths, is_worker_death, worker_death_line
        if not is_worker_death(e):
            raise
        forget_worker_deaths()  # the other workers' shutdown at exit raises no more
        print(f"rapa {args.command}: error: {worker_death_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
