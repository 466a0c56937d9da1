"""The rapa command's argument types (rapa.cli.options), called here in-process: the one-line
usage errors of the commands are also checked end to end, in subprocesses, by each tool's
tests."""
import argparse
import math

import numpy as np
import pytest

from rapa.cli import build_parser
from rapa.cli.options import (count, figure_path, figure_written, finite, output_path,
                              outputs_apart, times)
from rapa.errors import RapaError

F32_MAX = float(np.finfo(np.float32).max)


def refused(parse, text):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse(text)
    return str(e.value)


def test_count_takes_both_bounds_and_nothing_past_them():
    parse = count(2, 5)
    assert [parse(t) for t in ("2", "5")] == [2, 5]
    assert refused(parse, "6") == "6 is outside [2, 5]"
    assert refused(parse, "1") == "1 is outside [2, 5]"
    assert refused(parse, "2.0") == "'2.0' is not an integer"


def test_finite_takes_the_float32_range_and_its_lower_bound():
    parse = finite(0)
    assert parse(str(F32_MAX)) == F32_MAX and parse("0") == 0.0
    for text in ("nan", "inf", "-inf", "1e39"):
        assert refused(finite(), text) == f"{text} is not a finite float32 number"
    assert refused(finite(), f"{-F32_MAX * 1.0000001!r}").endswith("not a finite float32 number")
    assert refused(parse, "-0.5") == "-0.5 must be >= 0"
    assert refused(parse, "x") == "'x' is not a number"


def test_times_read_units_and_refuse_repeats_negatives_and_unknown_units():
    assert times("0,1h, 30d,1y,2.5min") == [0.0, 3600.0, 30 * 86400.0, 365 * 86400.0, 150.0]
    assert times("10s,1mo") == [10.0, 30 * 86400.0]
    assert times(" 1h , 2h ") == [3600.0, 7200.0]
    assert math.copysign(1, times("-0")[0]) == 1  # -0 is 0
    assert refused(times, "60,1min") == "'1min' repeats a time given before it"
    assert refused(times, "1.1h,3960") == "'3960' repeats a time given before it"
    assert times("0,1e-9") == [0.0, 1e-9]
    assert refused(times, "0,-0") == "'-0' repeats a time given before it"
    assert refused(times, "-1h") == "'-1h' must be finite and >= 0"
    assert refused(times, "1e400") == "'1e400' must be finite and >= 0"
    assert refused(times, "3w").startswith("'3w' is not a time (a number of seconds, or with "
                                           "a unit: s, min, h, d, mo, y)")


def test_output_paths_need_an_existing_folder(tmp_path):
    (tmp_path / "file").write_text("")
    assert output_path(str(tmp_path / "out.bin")) == str(tmp_path / "out.bin")
    assert refused(output_path, str(tmp_path / "no/out.bin")) == \
        f"{tmp_path / 'no/out.bin'}: {tmp_path / 'no'} does not exist"
    assert refused(output_path, str(tmp_path / "file/out.bin")) == \
        f"{tmp_path / 'file/out.bin'}: {tmp_path / 'file'} is not a folder"
    assert refused(output_path, str(tmp_path)) == f"{tmp_path} is a folder"


def test_figure_paths_take_matplotlib_s_suffixes_and_default_to_png(tmp_path):
    for name in ("a.png", "a.PDF", "a.svgz", "a"):
        assert figure_path(str(tmp_path / name)) == str(tmp_path / name)
    assert refused(figure_path, str(tmp_path / "a.xyz")).endswith(
        "cannot draw '.xyz' files; use one of .eps, .jpeg, .jpg, .pdf, .pgf, .png, .ps, .raw, "
        ".rgba, .svg, .svgz, .tif, .tiff, .webp")
    assert refused(figure_path, str(tmp_path / "no/a.png")).endswith("no does not exist")
    assert figure_written("curves") == "curves.png"
    assert figure_written("curves.pdf") == "curves.pdf"


def test_outputs_apart_compares_what_a_command_writes_with_what_it_reads(tmp_path,
                                                                       monkeypatch):
    """A figure named without a suffix is compared as the .png it is written to; a word that
    names no file (a command's name, a --method) is not a path; two outputs never share a
    file."""
    monkeypatch.chdir(tmp_path)
    parser = build_parser()

    def check(argv):
        args = parser.parse_args(argv)
        outputs_apart(args.parser, args)

    (tmp_path / "log.png").write_text("")  # an input that happens to be an image
    (tmp_path / "plot").write_text("")     # a file named as the command
    check(["plot", "plot", "--out", "curves"])
    with pytest.raises(RapaError, match=r"^--out log.png would overwrite LOGS \(log.png\); "):
        check(["plot", "log.png", "--out", "log"])
    with pytest.raises(RapaError, match=r"^--out log.png would overwrite LOGS \(log.png\); "):
        check(["plot", "plot", "log.png", "--out", "log."])  # the second log; c. is c.png
    for name in ("m", "w", "best"):
        (tmp_path / name).write_text("")
    check(["reduce", "--model", "m", "--weights", "w", "--method", "norm", "--out-model",
           "best", "--out-weights", "o"])
    (tmp_path / "norm").write_text("")  # a file named as --method's word: not its file
    check(["reduce", "--model", "m", "--weights", "w", "--method", "norm", "--out-model",
           "norm", "--out-weights", "o"])
    (tmp_path / "accuracy").write_text("")
    check(["table", "log.png", "--key", "accuracy", "--json", "accuracy"])
    with pytest.raises(RapaError, match=r"^--out-model o would overwrite --out-weights \(o\)"):
        check(["reduce", "--model", "m", "--weights", "w", "--method", "norm", "--out-model",
               "o", "--out-weights", "o"])


def test_figure_names_ending_in_a_dot_and_times_beyond_the_drift_model_s_range():
    """matplotlib writes "c." as c.png (and the overwrite check must compare that file); drift
    times are counted in microseconds in an integer: past 1e15 s (about 32 million years)
    refused, not an overflow in the middle of a test."""
    assert figure_written("c.") == "c.png" and figure_written("dir.d/c") == "dir.d/c.png"
    assert times("1e15s") == [1e15]
    assert refused(times, "1e300y") == "'1e300y' is more than 1e+15 s (about 3.17e+07 years)"
