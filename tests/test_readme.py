"""The README's Python examples run as written (each block on its own, in a fresh namespace),
so that the first thing a user copies works."""
import pathlib
import re
import textwrap

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^( *)```python\n(.*?)^\1```", README.read_text(), re.S | re.M)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_python_example_of_the_readme_runs(index):
    indent, code = BLOCKS[index]
    torch.manual_seed(0)
    exec(compile(textwrap.dedent(code), f"README.md python block {index}", "exec"), {})
