// The padded layout of tiled_conv's CUDA kernels and of analog_mvm: patches (rows) sorted by
// tile, tile t owning rows [t * cap, t * cap + rows_t) of a (T * cap)-row buffer, rows past
// rows_t padding.
// Only ATen operators, so that the CPU runs the same code (the op rapa::tile_layout, which the
// tests call) as the CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "checks.h"

namespace rapa {

// A capacity (>= 0) against the assignment's counts, on the host: the CPU kernels need none but
// check the caller's, so that a wrong one fails there with a message that names the tile
// rather than on CUDA with a device-side assertion. Entries out of range are not counted
// (the callers check the range).
inline void check_tile_capacity(const at::Tensor& assignment, int64_t T, int64_t capacity) {
  check_tile_capacity_range(capacity, assignment.numel());
  if (capacity < 0) return;
  std::vector<int64_t> count(T, 0);
  const at::Tensor a = assignment.contiguous();
  const int64_t* tiles = a.data_ptr<int64_t>();
  for (int64_t i = 0; i < a.numel(); ++i)
    if (tiles[i] >= 0 && tiles[i] < T) ++count[tiles[i]];
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(count[t] <= capacity, "rapa: argument 'tile_capacity' is ", capacity,
        ", but tile ", t, " gets ", count[t], " patches (rows) of this batch");
}

// order: the patch of each of the T * cap rows (-1 on padding); row_of: the row of each patch
// (-1 if dropped); cap: the rows each tile owns.
struct TileLayout {
  at::Tensor order, row_of;
  int64_t cap = 0;
};

// With `capacity` < 0, cap is the largest tile's patch count, found with one small copy to the
// host (which also checks the assignment's range). With a capacity (the caller's bound on any
// tile's patches), cap = capacity and nothing reaches the host, so that a CUDA graph can hold
// it: the range and the bound are checked by a device-side assertion.
inline TileLayout tile_layout(const at::Tensor& assignment, int64_t T, int64_t capacity = -1) {
  TileLayout ts;
  const at::Tensor tiles = assignment.reshape({-1});
  const int64_t total = tiles.numel();
  check_tile_capacity_range(capacity, total);
  if (total == 0) {
    ts.cap = std::max<int64_t>(capacity, 0);
    ts.order = at::full({T * ts.cap}, -1, tiles.options());
    ts.row_of = tiles;
    return ts;
  }
  // Counts in slots: 0 dropped, 1 + t tile t, T + 1 anything out of range.
  const at::Tensor slot = (tiles + 1).clamp(0, T + 1);
  const at::Tensor slots = at::zeros({T + 2}, tiles.options()).index_add_(0, slot, at::ones_like(tiles));
  const at::Tensor counts = slots.narrow(0, 1, T);
  if (capacity < 0) {
    at::Tensor stats = at::empty({T + 3}, tiles.options());
    stats.narrow(0, 0, T + 1).copy_(slots.narrow(0, 0, T + 1));
    stats.narrow(0, T + 1, 1).copy_(tiles.min().view({1}));
    stats.narrow(0, T + 2, 1).copy_(tiles.max().view({1}));
    const at::Tensor host = stats.cpu();  // the one device-to-host copy
    const int64_t* h = host.data_ptr<int64_t>();
    TORCH_CHECK(h[T + 1] >= -1, assignment_range_message(h[T + 1], T));
    TORCH_CHECK(h[T + 2] < T, assignment_range_message(h[T + 2], T));
    ts.cap = T > 0 ? *std::max_element(h + 1, h + T + 1) : 0;
  } else {
    if (!tiles.is_cuda()) check_tile_capacity(tiles, T, capacity);  // the numbers are at hand
    at::Tensor fits = at::logical_and(tiles.min().ge(-1), tiles.max().lt(T));
    if (T > 0) fits = at::logical_and(fits, counts.max().le(capacity));  // no tile: no count
    at::_assert_async(fits,
        "rapa: an assignment entry outside [-1, num_tiles), or a tile with more patches than "
        "tile_capacity (rows, in analog_mvm)");
    ts.cap = capacity;
  }
  // Kept patches in tile order (stable: ascending patch index within a tile), dropped ones
  // last (key T); the j-th of them, on tile t, goes to row t * cap + j - start_t. Dropped
  // patches write a spare row T * cap, cut off afterwards; so do the patches of a tile over
  // its capacity (the assertion has failed then, but memory stays safe where asserts are off).
  const int64_t rows = T * ts.cap;
  const at::Tensor key = at::where(tiles.lt(0), at::scalar_tensor(T, tiles.options()), tiles.clamp_max(T));
  const at::Tensor sorted = at::argsort(key, /*stable=*/true, 0, false);
  const at::Tensor t = key.index_select(0, sorted);
  const at::Tensor start = at::cat({counts.cumsum(0) - counts, at::zeros({1}, tiles.options())});
  const at::Tensor rank = at::arange(total, tiles.options()) - start.index_select(0, t);
  const at::Tensor kept = at::logical_and(t.lt(T), rank.lt(ts.cap));
  const at::Tensor row = at::where(kept, rank + t * ts.cap, at::scalar_tensor(rows, tiles.options()));
  ts.order = at::full({rows + 1}, -1, tiles.options()).index_copy_(0, row, sorted).narrow(0, 0, rows);
  ts.row_of = at::full({total}, -1, tiles.options())
                  .index_copy_(0, sorted, at::where(kept, row, at::scalar_tensor(-1, tiles.options())));
  return ts;
}

}  // namespace rapa
