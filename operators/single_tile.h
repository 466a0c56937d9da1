// One tile: rapa::tiled_conv is then a dense convolution whose dropped patches (-1) output zero
// and pass no gradient, and whose region map (if any) zeroes the pixels outside region 0. The
// dense kernels (oneDNN, cuDNN) do that same arithmetic fastest, so both devices use them.
// Only ATen operators: this header is shared by the CPU and CUDA files.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace rapa {

// Checks the assignment's range with one reduction; returns whether any patch is dropped.
// `on_device`: without a copy to the host (a CUDA graph can hold it): the range is checked by
// a device-side assertion, and the answer is "maybe", so the caller masks.
inline bool single_tile_dropped(const at::Tensor& assignment, bool on_device = false) {
  if (assignment.numel() == 0) return false;
  if (on_device) {
    at::_assert_async(at::logical_and(assignment.min().ge(-1), assignment.max().lt(1)),
        "rapa: argument 'assignment' holds an entry outside [-1, 1) (one tile)");
    return true;
  }
  const at::Tensor host = at::stack({assignment.min(), assignment.max()}).cpu();
  const int64_t lo = host[0].item<int64_t>(), hi = host[1].item<int64_t>();
  TORCH_CHECK(lo >= -1, assignment_range_message(lo, 1));
  TORCH_CHECK(hi < 1, assignment_range_message(hi, 1));
  return lo < 0;
}

inline at::Tensor region_mask(const std::optional<at::Tensor>& region, const at::Tensor& like) {
  if (!region.has_value() || !region->defined()) return at::Tensor();
  return region->eq(0).to(like.scalar_type());
}

inline at::Tensor single_tile_forward(const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& assignment, at::IntArrayRef stride,
    at::IntArrayRef padding, const std::optional<at::Tensor>& region, bool on_device = false) {
  const bool dropped = single_tile_dropped(assignment, on_device);
  const at::Tensor mask = region_mask(region, input);
  const at::Tensor x = mask.defined() ? input * mask : input;
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = (*bias)[0];
  at::Tensor out = at::conv2d(x, weight[0], b, stride, padding);
  if (dropped) out.mul_(assignment.ge(0).unsqueeze(1).to(out.scalar_type()));
  return out;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> single_tile_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& assignment, at::IntArrayRef stride, at::IntArrayRef padding,
    const std::optional<at::Tensor>& region, std::array<bool, 3> mask, bool on_device = false) {
  const bool dropped = single_tile_dropped(assignment, on_device);
  const at::Tensor pixels = region_mask(region, input);
  const at::Tensor x = pixels.defined() ? input * pixels : input;
  const at::Tensor go =
      dropped ? grad_output * assignment.ge(0).unsqueeze(1).to(grad_output.scalar_type())
              : grad_output;
  auto [gi, gw, gb] = at::convolution_backward(go, x, weight[0], at::IntArrayRef{weight.size(1)},
      stride, padding, {1, 1}, false, {0, 0}, 1, mask);
  const auto opts = input.options();
  return {mask[0] ? (pixels.defined() ? gi * pixels : gi) : at::empty({0}, opts),
          mask[1] ? gw.unsqueeze(0) : at::empty({0}, opts),
          mask[2] ? gb.unsqueeze(0) : at::empty({0}, opts)};
}

}  // namespace rapa
