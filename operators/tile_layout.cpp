// rapa::tile_layout: the padded layout that tiled_conv's CUDA kernels build (tile_layout.h),
// on any device, so that the tests check on the CPU what the CUDA kernels compute with.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "tile_layout.h"

namespace rapa {
namespace {

std::tuple<at::Tensor, at::Tensor> tile_layout_op(
    const at::Tensor& assignment, int64_t num_tiles, int64_t tile_capacity) {
  check_defined(assignment, "assignment");
  check_dtype(assignment, at::kLong, "assignment");
  TORCH_CHECK(num_tiles >= 1, "rapa: argument 'num_tiles' must be >= 1, got ", num_tiles);
  const TileLayout ts = tile_layout(assignment, num_tiles, tile_capacity);
  return {ts.order.clone(), ts.row_of.clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CompositeExplicitAutograd, m) {
  m.impl("tile_layout", &tile_layout_op);
}

}  // namespace rapa
