"""rapa::tile_layout, the padded layout tiled_conv's CUDA kernels multiply in (with a
tile_capacity it is built without a copy to the host, so that a CUDA graph can hold it), against
a layout built patch by patch."""
import pytest
import torch

from rapa.ops import tile_layout


def reference_layout(assignment, tiles, capacity=None):
    flat = assignment.reshape(-1).tolist()
    counts = [flat.count(t) for t in range(tiles)]
    cap = max(counts) if capacity is None else capacity
    order, row_of, used = [-1] * (tiles * cap), [-1] * len(flat), [0] * tiles
    for p, t in enumerate(flat):  # ascending patch index within a tile
        if t < 0:
            continue
        row = t * cap + used[t]
        order[row], row_of[p], used[t] = p, row, used[t] + 1
    return order, row_of


@pytest.mark.parametrize("tiles", [1, 3, 5])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("slack", [None, 0, 3])
def test_layout_matches_the_patch_by_patch_one(device, tiles, drop, slack):
    g = torch.Generator().manual_seed(tiles * 10 + drop)
    assignment = torch.randint(-1 if drop else 0, tiles, (4, 5, 6), generator=g).to(device)
    largest = int(torch.bincount(assignment[assignment >= 0].cpu(), minlength=tiles).max())
    capacity = None if slack is None else min(largest + slack, assignment.numel())
    order, row_of = tile_layout(assignment, tiles, capacity)
    want_order, want_row_of = reference_layout(assignment.cpu(), tiles, capacity)
    assert order.tolist() == want_order and row_of.tolist() == want_row_of
    assert order.device == assignment.device


def test_every_patch_dropped_and_the_empty_batch(device):
    order, row_of = tile_layout(torch.full((2, 3), -1, device=device), 2, 4)
    assert order.tolist() == [-1] * 8 and row_of.tolist() == [-1] * 6
    order, row_of = tile_layout(torch.full((2, 3), -1, device=device), 2)
    assert order.numel() == 0 and row_of.tolist() == [-1] * 6
    empty = torch.zeros((0, 3, 3), dtype=torch.int64, device=device)
    for capacity in (None, 0):
        order, row_of = tile_layout(empty, 2, capacity)
        assert order.numel() == 0 and row_of.numel() == 0


@pytest.mark.parametrize("capacity", [None, 3])
def test_entries_out_of_range_are_refused(capacity):
    for bad in (2, -2):
        with pytest.raises(RuntimeError, match="outside|must be a tile index"):
            tile_layout(torch.tensor([0, 1, bad]), 2, capacity)


def test_a_tile_over_its_capacity_is_refused():
    with pytest.raises(RuntimeError, match="'tile_capacity' is 2, but tile 1 gets 3 patches"):
        tile_layout(torch.tensor([1, 1, 1, 0]), 2, 2)
    with pytest.raises(RuntimeError, match="'assignment' must be Long, got Float"):
        tile_layout(torch.tensor([1.0]), 2, 2)


@pytest.mark.parametrize("capacity", [-2, 7, 2**62])
def test_a_capacity_outside_its_range_is_refused(capacity):
    """-1 means not known; more patches than the assignment holds is a mistake (and an
    overflowing buffer size)."""
    with pytest.raises(RuntimeError, match=rf"'tile_capacity' must be -1 \(not known\) or a "
                                           rf"patch count in \[0, 6\], got {capacity}"):
        tile_layout(torch.tensor([0, 1, 1, 0, -1, 2]), 4, capacity)


def test_a_tile_filled_to_its_capacity_fills_its_rows_exactly():
    """The last tile at its capacity: its patches end on the last row, nothing spills into
    the spare row. (Past the capacity the assertion fires first on the CPU.)"""
    assignment = torch.tensor([1, 1, 1, 0])
    order, row_of = tile_layout(assignment, 2, 3)
    assert order.tolist() == [3, -1, -1, 0, 1, 2] and row_of.tolist() == [3, 4, 5, 0]
