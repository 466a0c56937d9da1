"""rapa::random_assign: balanced, uniform, fresh per image, reproducible, on every device."""
import pytest
import torch

import rapa
from conftest import CUDA_READY


@pytest.mark.parametrize("h,w,t", [(32, 32, 16), (16, 16, 4), (5, 7, 3), (3, 3, 16), (8, 8, 1)])
def test_balanced_per_image(device, h, w, t):
    a = rapa.random_assign(20, h, w, t, device=device)
    assert a.shape == (20, h, w) and a.dtype == torch.int64 and a.device.type == device.type
    assert int(a.min()) >= 0 and int(a.max()) < t
    counts = torch.stack([torch.bincount(img.flatten(), minlength=t) for img in a.cpu()])
    assert int((counts.max(1).values - counts.min(1).values).max()) <= 1
    assert (counts.sum(1) == h * w).all()


def test_fresh_partition_per_image_and_per_call(device):
    a = rapa.random_assign(8, 16, 16, 4, device=device)
    assert all(not torch.equal(a[0], a[i]) for i in range(1, 8))
    assert not torch.equal(a, rapa.random_assign(8, 16, 16, 4, device=device))


def test_reproducible_under_manual_seed_and_generator(device):
    torch.manual_seed(123)
    first = rapa.random_assign(4, 8, 8, 4, device=device)
    torch.manual_seed(123)
    assert torch.equal(first, rapa.random_assign(4, 8, 8, 4, device=device))
    g1 = torch.Generator(device=device).manual_seed(7)
    g2 = torch.Generator(device=device).manual_seed(7)
    assert torch.equal(rapa.random_assign(4, 8, 8, 4, generator=g1),
                       rapa.random_assign(4, 8, 8, 4, generator=g2))


def test_uniform_over_tiles_and_extra_slots():
    # 10 patches, 4 tiles: each patch lands on each tile with probability 1/4, and each tile
    # is among the two that hold 3 patches with probability 1/2.
    draws = 20000
    a = rapa.random_assign(draws, 2, 5, 4).view(draws, 10)
    freq = torch.stack([(a == t).double().mean(0) for t in range(4)])  # (tile, patch)
    sigma = (0.25 * 0.75 / draws) ** 0.5
    assert float((freq - 0.25).abs().max()) < 5 * sigma
    big = torch.stack([(a == t).sum(1) == 3 for t in range(4)]).double().mean(1)
    assert float((big - 0.5).abs().max()) < 5 * (0.25 / draws) ** 0.5


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels")
def test_seeded_partition_is_the_same_on_cpu_and_cuda():
    seed = torch.tensor([987654321], dtype=torch.int64)
    cpu = torch.ops.rapa.random_assign_seeded(seed, 5, 9, 9, 7)
    gpu = torch.ops.rapa.random_assign_seeded(seed.cuda(), 5, 9, 9, 7)
    assert torch.equal(cpu, gpu.cpu())


def test_opcheck_seeded(device):
    seed = torch.tensor([42], dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.rapa.random_assign_seeded.default, (seed, 3, 4, 5, 6))


def test_torch_compile(device):
    f = torch.compile(lambda: rapa.random_assign(3, 4, 4, 2, device=device), fullgraph=True,
                      backend="aot_eager")
    a = f()
    assert a.shape == (3, 4, 4) and int(a.max()) <= 1


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="'num_tiles' must be >= 1"):
        rapa.random_assign(2, 4, 4, 0)
    with pytest.raises(RuntimeError, match="'batch' must be >= 0"):
        rapa.random_assign(-1, 4, 4, 2)
    with pytest.raises(RuntimeError, match="'height' and 'width' must be >= 1"):
        rapa.random_assign(2, 0, 4, 2)
    with pytest.raises(RuntimeError, match="'seed' must be Long"):
        torch.ops.rapa.random_assign_seeded(torch.tensor([1.0]), 1, 2, 2, 2)
