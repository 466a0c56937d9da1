// Argument checks shared by the CPU and CUDA kernels. Every message names the argument and
// what was expected, so that a user's mistake never ends in a crash or silent garbage.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "geometry.h"

namespace rapa {

inline void check_defined(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "rapa: argument '", name, "' must be a tensor, got None");
}

inline void check_floating(const at::Tensor& t, const char* name) {
  check_defined(t, name);
  TORCH_CHECK(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "rapa: argument '", name,
      "' must be float32 or float64, got ", t.scalar_type());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  check_defined(t, name);
  TORCH_CHECK(
      t.scalar_type() == dtype, "rapa: argument '", name, "' must be ", dtype, ", got ",
      t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* layout) {
  TORCH_CHECK(
      t.dim() == dim, "rapa: argument '", name, "' must be ", dim, "-D ", layout, ", got shape ",
      t.sizes());
}

inline void check_same_device(
    const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(
      t.device() == ref.device(), "rapa: argument '", name, "' is on ", t.device(), " but '",
      ref_name, "' is on ", ref.device(), "; move them to one device");
}

// tiled_conv's tile_capacity: -1 (not known) or a count of patches (at most all of them).
inline void check_tile_capacity_range(int64_t capacity, int64_t patches) {
  TORCH_CHECK(capacity >= -1 && capacity <= patches,
      "rapa: argument 'tile_capacity' must be -1 (not known) or a patch count in [0, ", patches,
      "], got ", capacity);
}

inline void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, "rapa: argument '", name, "' must have 2 values, got ", v.size());
  TORCH_CHECK(
      v[0] >= min_value && v[1] >= min_value, "rapa: argument '", name, "' must be >= ",
      min_value, ", got ", v);
}

// Checks the arguments of a tiled convolution and returns its geometry (geometry.h), shared by
// forward and backward.
inline ConvGeometry check_tiled_conv(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& assignment, at::IntArrayRef stride, at::IntArrayRef padding,
    const std::optional<at::Tensor>& region) {
  check_floating(input, "input");
  check_dim(input, 4, "input", "(N, C, H, W)");
  check_floating(weight, "weight");
  check_dim(weight, 5, "weight", "(T, O, C, kh, kw)");
  check_same_device(weight, "weight", input, "input");
  TORCH_CHECK(
      weight.scalar_type() == input.scalar_type(), "rapa: argument 'weight' has dtype ",
      weight.scalar_type(), " but 'input' has ", input.scalar_type());
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  ConvGeometry s;
  s.N = input.size(0); s.C = input.size(1); s.H = input.size(2); s.W = input.size(3);
  s.T = weight.size(0); s.O = weight.size(1); s.kh = weight.size(3); s.kw = weight.size(4);
  s.sh = stride[0]; s.sw = stride[1]; s.ph = padding[0]; s.pw = padding[1];
  TORCH_CHECK(
      weight.size(2) == s.C, "rapa: argument 'weight' has ", weight.size(2),
      " input channels (dim 2 of ", weight.sizes(), ") but 'input' has ", s.C, " (shape ",
      input.sizes(), ")");
  TORCH_CHECK(s.T >= 1 && s.O >= 1 && s.kh >= 1 && s.kw >= 1,
      "rapa: argument 'weight' must have no empty dimension, got shape ", weight.sizes());
  s.Ho = conv_out_size(s.H, s.kh, s.sh, s.ph);
  s.Wo = conv_out_size(s.W, s.kw, s.sw, s.pw);
  TORCH_CHECK(
      s.H + 2 * s.ph >= s.kh && s.W + 2 * s.pw >= s.kw, "rapa: kernel ", s.kh, "x", s.kw,
      " is larger than the padded input ", s.H + 2 * s.ph, "x", s.W + 2 * s.pw);
  s.K = s.C * s.kh * s.kw;
  s.NP = s.Ho * s.Wo;
  if (bias.has_value() && bias->defined()) {
    check_floating(*bias, "bias");
    check_same_device(*bias, "bias", input, "input");
    TORCH_CHECK(
        bias->scalar_type() == input.scalar_type(), "rapa: argument 'bias' has dtype ",
        bias->scalar_type(), " but 'input' has ", input.scalar_type());
    TORCH_CHECK(
        bias->dim() == 2 && bias->size(0) == s.T && bias->size(1) == s.O,
        "rapa: argument 'bias' must have shape (T, O) = (", s.T, ", ", s.O, "), got ",
        bias->sizes());
  }
  check_dtype(assignment, at::kLong, "assignment");
  check_same_device(assignment, "assignment", input, "input");
  TORCH_CHECK(
      assignment.dim() == 3 && assignment.size(0) == s.N && assignment.size(1) == s.Ho &&
          assignment.size(2) == s.Wo,
      "rapa: argument 'assignment' must have shape (N, Ho, Wo) = (", s.N, ", ", s.Ho, ", ", s.Wo,
      ") for this input, stride and padding, got ", assignment.sizes());
  if (region.has_value() && region->defined()) {
    check_dtype(*region, at::kLong, "region");
    check_same_device(*region, "region", input, "input");
    TORCH_CHECK(
        region->dim() == 2 && region->size(0) == s.H && region->size(1) == s.W,
        "rapa: argument 'region' must have shape (H, W) = (", s.H, ", ", s.W,
        ") of the input, got ", region->sizes());
  }
  return s;
}

inline void check_conv_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const ConvGeometry& s) {
  check_floating(grad_output, "grad_output");
  check_same_device(grad_output, "grad_output", input, "input");
  TORCH_CHECK(
      grad_output.scalar_type() == input.scalar_type(), "rapa: argument 'grad_output' has dtype ",
      grad_output.scalar_type(), " but 'input' has ", input.scalar_type());
  TORCH_CHECK(
      grad_output.dim() == 4 && grad_output.size(0) == s.N && grad_output.size(1) == s.O &&
          grad_output.size(2) == s.Ho && grad_output.size(3) == s.Wo,
      "rapa: argument 'grad_output' must have shape (", s.N, ", ", s.O, ", ", s.Ho, ", ", s.Wo,
      "), got ", grad_output.sizes());
}

// The message for an assignment entry outside [-1, T).
inline std::string assignment_range_message(int64_t value, int64_t T) {
  return "rapa: argument 'assignment' holds " + std::to_string(value) +
      ", but entries must be a tile index in [0, " + std::to_string(T) +
      ") or -1 for a dropped patch";
}

}  // namespace rapa

namespace rapa {

inline void check_random_assign(int64_t batch, int64_t height, int64_t width, int64_t num_tiles) {
  TORCH_CHECK(batch >= 0, "rapa: argument 'batch' must be >= 0, got ", batch);
  TORCH_CHECK(
      height >= 1 && width >= 1, "rapa: arguments 'height' and 'width' must be >= 1, got ",
      height, " and ", width);
  TORCH_CHECK(num_tiles >= 1, "rapa: argument 'num_tiles' must be >= 1, got ", num_tiles);
}

inline void check_seed(const at::Tensor& seed) {
  check_dtype(seed, at::kLong, "seed");
  TORCH_CHECK(seed.numel() == 1, "rapa: argument 'seed' must hold one value, got shape ",
      seed.sizes());
}

}  // namespace rapa
