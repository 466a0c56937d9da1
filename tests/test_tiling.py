"""Tiling schemes (paper section 2.1) and the TiledConv2d module."""
import io

import pytest
import torch
import torch.nn.functional as F

import rapa
from rapa import tiling


def assign(scheme, n=2, h=8, w=8, training=True, device="cpu"):
    return scheme.assign(n, h, w, training=training, device=torch.device(device))


def test_none_is_all_zero():
    assert int(assign(tiling.make_scheme("none")).abs().sum()) == 0


def test_image_tiling_blocks():
    a = assign(tiling.make_scheme("image_overlap", 4), h=4, w=6)
    want = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1],
                         [2, 2, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3]])
    assert torch.equal(a[0], want) and torch.equal(a[1], want)
    scheme = tiling.make_scheme("image_pad", 4)
    assert torch.equal(assign(scheme, h=4, w=6)[0], want)
    assert torch.equal(scheme.region(4, 6, torch.device("cpu")), want)
    assert tiling.make_scheme("image_overlap", 4).region(4, 6, "cpu") is None


def test_alternate_formula():
    a = assign(tiling.make_scheme("alternate", 4), h=4, w=4)[0]
    y, x = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(a, (x % 2) + 2 * (y % 2))


@pytest.mark.parametrize("name", ["image_overlap", "image_pad", "alternate"])
def test_square_count_required(name):
    with pytest.raises(ValueError, match="needs a square number of tiles .* got 6"):
        assign(tiling.make_scheme(name, 6))


@pytest.mark.parametrize("name", ["image_overlap", "image_pad"])
def test_side_divisible_required(name):
    with pytest.raises(ValueError, match="sides divisible by 4, got 10x10"):
        assign(tiling.make_scheme(name, 16), h=10, w=10)


@pytest.mark.parametrize("name,tiles,in_hw,out_hw,message", [
    ("image_overlap", 4, (9, 9), (7, 8), "needs the output sides divisible by 2, got 7x8"),
    ("image_pad", 4, (9, 8), (8, 8), "needs the input sides divisible by 2, got 9x8"),
    ("image_pad", 9, (9, 9), (8, 9), "needs the output sides divisible by 3, got 8x9"),
])
def test_check_refuses_what_the_scheme_cannot_tile(name, tiles, in_hw, out_hw, message):
    scheme = tiling.make_scheme(name, tiles)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=message):
        scheme.check(in_hw, out_hw)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["image_overlap", "image_pad", "alternate"])
def test_square_counts_are_checked_when_the_scheme_is_made(name):
    with pytest.raises(ValueError, match="needs a square number of tiles"):
        tiling.make_scheme(name, 6)
    with pytest.raises(ValueError, match="needs a square number of tiles"):
        rapa.nn.TiledConv2d(3, 4, 3, tiling=name, num_tiles=5)


@pytest.mark.parametrize("name,tiles", [("none", 1), ("image_overlap", 4), ("image_pad", 4),
                                        ("alternate", 9), ("random", 5), ("random_fixed", 3),
                                        ("perforated", 4)])
def test_check_accepts_what_assign_computes(name, tiles):
    scheme = tiling.make_scheme(name, tiles)
    scheme.check((12, 12), (6, 6))
    assert assign(scheme, h=6, w=6).shape == (2, 6, 6)
    assert (scheme.region(12, 12, "cpu") is not None) == scheme.reads_regions


def test_random_fixed_prepare_draws_once_and_is_checked():
    scheme = tiling.make_scheme("random_fixed", 3)
    assert scheme.state_blobs()[0].numel() == 0
    scheme.prepare((4, 5))
    partition = scheme.partition.clone()
    assert partition.shape == (4, 5) and sorted(torch.bincount(partition.flatten()).tolist()) == [6, 7, 7]
    scheme.prepare((4, 5))
    assert torch.equal(scheme.partition, partition) and scheme.state_blobs()[0] is scheme.partition
    with pytest.raises(ValueError, match=r"drew its partition for a \(4, 5\) output, but this "
                                         r"input gives 6x6"):
        scheme.check((6, 6), (6, 6))
    assert tiling.make_scheme("random", 3).state_blobs() == []


def test_random_any_count_and_new_each_call():
    scheme = tiling.make_scheme("random", 7)
    a, b = assign(scheme, h=10, w=10), assign(scheme, h=10, w=10)
    assert not torch.equal(a, b) and int(a.max()) == 6
    # also fresh at test time
    assert not torch.equal(assign(scheme, training=False), assign(scheme, training=False))


def test_random_fixed_is_drawn_once_and_saved():
    scheme = tiling.make_scheme("random_fixed", 4)
    a = assign(scheme, n=3)
    assert torch.equal(a[0], a[2]) and torch.equal(a, assign(scheme, n=3, training=False))
    conv = rapa.nn.TiledConv2d(3, 4, 3, padding=1, tiling="random_fixed", num_tiles=4)
    conv(torch.randn(2, 3, 8, 8))
    buffer = io.BytesIO()
    torch.save(conv.state_dict(), buffer)
    buffer.seek(0)
    restored = rapa.nn.TiledConv2d(3, 4, 3, padding=1, tiling="random_fixed", num_tiles=4)
    restored.load_state_dict(torch.load(buffer))
    assert torch.equal(restored.scheme.partition, conv.scheme.partition)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(restored(x), conv(x))
    with pytest.raises(ValueError, match="drew its partition for a \\(8, 8\\) output"):
        conv(torch.randn(1, 3, 6, 6))


def test_perforated_keeps_np_over_nt_in_training_only():
    scheme = tiling.make_scheme("perforated", 4)
    assert scheme.num_kernels == 1
    a = assign(scheme, n=5, h=8, w=8, training=True)
    assert set(a.unique().tolist()) == {-1, 0}
    assert ((a == 0).flatten(1).sum(1) == 16).all()
    assert int(assign(scheme, training=False).abs().sum()) == 0


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(ValueError, match="unknown tiling scheme 'diagonal'; known: alternate"):
        tiling.make_scheme("diagonal", 4)


@pytest.mark.parametrize("name,nt", [("none", 1), ("image_overlap", 4), ("alternate", 4),
                                     ("random_fixed", 4), ("random", 5), ("perforated", 4)])
def test_identical_replicas_recover_the_convolution(device, name, nt):
    conv = rapa.nn.TiledConv2d(3, 6, 5, padding=2, tiling=name, num_tiles=nt).to(device).double().eval()
    if conv.tiled:
        with torch.no_grad():
            conv.weight.copy_(conv.weight[:1].expand_as(conv.weight))
            conv.bias.copy_(conv.bias[:1].expand_as(conv.bias))
        weight, bias = conv.weight[0], conv.bias[0]
    else:  # untiled: torch's (O, C, kh, kw) weight and (O,) bias
        weight, bias = conv.weight, conv.bias
        assert weight.shape == (6, 3, 5, 5) and bias.shape == (6,)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    torch.testing.assert_close(conv(x), F.conv2d(x, weight, bias, padding=2))


def test_module_trains_every_scheme(device):
    for name, nt in [("image_pad", 4), ("random", 16), ("perforated", 4)]:
        conv = rapa.nn.TiledConv2d(3, 4, 3, padding=1, tiling=name, num_tiles=nt).to(device)
        conv(torch.randn(2, 3, 8, 8, device=device)).square().sum().backward()
        assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_none_and_perforated_assignments():
    a = tiling.make_scheme("none").assign(2, 3, 4, training=True, device=torch.device("cpu"))
    assert a.dtype == torch.int64 and a.shape == (2, 3, 4) and not a.any()
    perforated = tiling.make_scheme("perforated", 3)
    draws = [perforated.assign(2, 6, 6, training=True, device=torch.device("cpu"),
                               generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(*draws) and draws[0].dtype == torch.int64
    one = tiling.make_scheme("perforated", 1)  # keeps every patch
    assert not one.assign(2, 6, 6, training=True, device=torch.device("cpu")).any()


def test_random_fixed_draws_from_the_generator_given():
    draws = [tiling.make_scheme("random_fixed", 3).assign(
        1, 4, 4, training=True, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(2)) for _ in range(2)]
    assert torch.equal(*draws)


def test_image_pad_module_names_input_sides_that_do_not_divide():
    conv = rapa.nn.TiledConv2d(3, 4, 2, tiling="image_pad", num_tiles=4)
    with pytest.raises(ValueError, match="needs the input sides divisible by 2, got 9x9"):
        conv(torch.randn(1, 3, 9, 9))


def test_scheme_arguments_and_messages_name_the_scheme():
    assert tiling.NoTiling().num_tiles == 1
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"tiling 'random' needs num_tiles, an integer >= 1, "
                                             f"got {bad}"):
            tiling.make_scheme("random", bad)
    with pytest.raises(ValueError, match="tiling 'image_pad' with 4 tiles needs the input sides "
                                         "divisible by 2, got 5x5"):
        tiling.make_scheme("image_pad", 4).check((5, 5), (4, 4))
    with pytest.raises(ValueError, match="tiling 'image_overlap' with 4 tiles needs the output "
                                         "sides divisible by 2, got 5x5"):
        tiling.make_scheme("image_overlap", 4).assign(1, 5, 5, training=True,
                                                      device=torch.device("cpu"))


def test_random_partitions_follow_the_generator_given():
    scheme = tiling.make_scheme("random", 4)
    draw = lambda seed: scheme.assign(  # noqa: E731
        3, 6, 6, training=True, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(0)
    first = draw(5)
    torch.manual_seed(1)   # the global generator does not decide
    assert torch.equal(first, draw(5)) and not torch.equal(first, draw(6))


@pytest.mark.parametrize("name,tiles,hw", [
    ("none", 1, (5, 7)), ("image_overlap", 4, (6, 8)), ("image_pad", 9, (9, 6)),
    ("alternate", 4, (5, 7)), ("alternate", 9, (9, 9)), ("random", 5, (4, 5)),
    ("random", 16, (7, 9)), ("random_fixed", 3, (5, 7)), ("perforated", 4, (6, 6)),
    ("perforated", 3, (5, 5))])
@pytest.mark.parametrize("training", [True, False])
def test_tile_capacity_bounds_every_assignment_and_is_tight(name, tiles, hw, training):
    """The bound tiled_conv's CUDA kernels lay their buffers out by: never below the largest
    tile of any batch; exact where every image gives every tile the same count, otherwise at
    most one patch per image above the largest tile seen."""
    scheme, n = tiling.make_scheme(name, tiles), 6
    scheme.prepare(hw)
    capacity = scheme.tile_capacity(n, *hw, training=training)
    seen = 0
    for _ in range(20):
        a = assign(scheme, n=n, h=hw[0], w=hw[1], training=training)
        kept = a[a >= 0]
        assert kept.numel() > 0
        seen = max(seen, int(torch.bincount(kept, minlength=scheme.num_kernels).max()))
    assert seen <= capacity
    patches = hw[0] * hw[1]
    even = name in ("none", "image_overlap", "image_pad") or (
        name == "alternate" and all(s % 3 == 0 for s in hw)) or (
        name in ("random", "perforated") and patches % tiles == 0) or (
        name == "perforated" and not training)
    assert (seen == capacity) if even else (capacity - seen < n)


def test_random_fixed_capacity_follows_a_loaded_partition():
    scheme = tiling.make_scheme("random_fixed", 3)
    scheme.prepare((2, 3))
    assert scheme.tile_capacity(4, 2, 3, training=True) == 8  # balanced: 2 patches per tile
    scheme.partition.copy_(torch.tensor([[0, 0, 0], [0, 1, 2]]))  # what a model file may hold
    assert scheme.tile_capacity(4, 2, 3, training=True) == 16
    scheme.partition = torch.tensor([[2, 2, 2], [2, 2, 1]])
    assert scheme.tile_capacity(1, 2, 3, training=False) == 5


def test_random_fixed_capacity_follows_load_state_dict_every_time():
    """A loaded partition is a new tensor, which may take the freed memory of the last one
    with the same version: the kept count must still be redone."""
    conv = rapa.nn.TiledConv2d(2, 3, 3, padding=1, tiling="random_fixed", num_tiles=3)
    x = torch.randn(2, 2, 4, 4)
    conv(x)
    balanced = conv.state_dict()
    skewed = dict(balanced, **{"scheme.partition": torch.full((4, 4), 1)})
    for _ in range(4):
        conv.load_state_dict(balanced)
        assert conv.scheme.tile_capacity(2, 4, 4, training=True) == 12
        conv(x)
        conv.load_state_dict(skewed)
        assert conv.scheme.tile_capacity(2, 4, 4, training=True) == 32
        conv(x)


def test_random_fixed_module_compiles_whole():
    conv = rapa.nn.TiledConv2d(2, 3, 3, padding=1, tiling="random_fixed", num_tiles=3)
    x = torch.randn(2, 2, 5, 5)
    want = conv(x)
    got = torch.compile(conv, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, want)


def test_random_fixed_counts_its_partition_once_until_it_changes(monkeypatch):
    """On CUDA counting reads the partition back to the host: once per partition, not per
    batch; a write into it or a new one is counted again."""
    scheme = tiling.make_scheme("random_fixed", 3)
    scheme.prepare((2, 3))
    counts = []
    bincount = torch.bincount
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: counts.append(1) or bincount(*a, **k))
    assert [scheme.tile_capacity(n, 2, 3, training=True) for n in (1, 2, 3)] == [2, 4, 6]
    assert len(counts) == 1
    scheme.partition.copy_(torch.tensor([[0, 0, 0], [0, 1, 2]]))
    assert scheme.tile_capacity(1, 2, 3, training=True) == 4 and len(counts) == 2
    assert scheme.tile_capacity(1, 2, 3, training=False) == 4 and len(counts) == 2
    scheme.partition = torch.tensor([[1, 1, 1], [1, 1, 1]])
    assert scheme.tile_capacity(1, 2, 3, training=True) == 6 and len(counts) == 3
