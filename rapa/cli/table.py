"""The paper's results table (Tables 1 and 2) from training logs.

One row per log: the best test error in %, each the average over --window consecutive test
points (epochs, when the solver tests every epoch; the paper averages 5), with the training
error over the same window in parentheses (the top-1 error of the training batches between
two tests, which `rapa train` logs), and the best majority-vote error where the log has one
(the solver's test_votes). --markdown for the docs.
"""
import json

from ..analysis.table import format_table, table_row
from ..errors import RapaError
from .options import count, output_path, word


def add_arguments(p):
    p.add_argument("logs", nargs="+", help="training logs (*_log.jsonl)")
    p.add_argument("--window", type=count(), default=5, help="test points averaged (default 5)")
    p.add_argument("--key", type=word, help="the accuracy output to read (default: the first one)")
    p.add_argument("--markdown", action="store_true", help="a Markdown table")
    p.add_argument("--json", type=output_path, help="also write the rows to this JSON file")


def run(args):
    if args.window < 1:
        raise RapaError("--window must be >= 1")
    rows = [table_row(log, args.window, args.key) for log in args.logs]
    print(format_table(rows, args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    return 0
