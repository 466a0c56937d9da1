"""--device: what the tools run on, checked once with one line that says why not."""
import pytest
import torch

from conftest import CUDA_READY
from rapa.device import device_named
from rapa.errors import RapaError


@pytest.mark.parametrize("name", ["cpu", "cpu:0"])
def test_the_cpu(name):
    assert device_named(name).type == "cpu"


@pytest.mark.parametrize("name", ["gpu", "mps", "xpu", "meta", "cuda:x", "cuda:0,1", ""])
def test_names_rapa_does_not_run_on_are_one_line(name):
    with pytest.raises(RapaError, match=rf"^--device {name}: not a device rapa runs on \(cpu, "
                                        rf"cuda or cuda:N\)$"):
        device_named(name)


@pytest.mark.skipif(CUDA_READY, reason="a machine without a usable CUDA device")
def test_cuda_without_a_gpu_names_the_torch():
    with pytest.raises(RapaError, match=r"^(--device cuda:0: this torch \(.+\) has no usable "
                                        r"CUDA device|the rapa library was built without)"):
        device_named("cuda:0")
