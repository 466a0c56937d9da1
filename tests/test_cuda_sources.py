"""Every CUDA source compiles with nvcc for sm_80 and sm_90, also on a machine without a GPU."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_cuda_sources  # noqa: E402

SOURCES = sorted((ROOT / "cuda").glob("*.cu"))


@pytest.fixture(scope="module")
def compiled():
    if check_cuda_sources.find_nvcc() is None:
        pytest.skip("nvcc not found")
    return check_cuda_sources.check(SOURCES, ("80", "90"))


def test_there_are_cuda_sources():
    assert {p.stem for p in SOURCES} >= {"tiled_conv", "random_assign", "mixed_pool",
                                         "stochastic_pool"}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles(compiled, source):
    ok, output = compiled[source]
    assert ok, output
