// Caffe's pooling geometry, shared by host and device code. Output size rounds up (ceil mode),
// and the last window must start inside the input or its left padding. The average divides by
// the window clipped to the padded input (Caffe's AVE; PyTorch's count_include_pad=True).
#pragma once

#include <ATen/core/Tensor.h>
#include <algorithm>
#include <cstdint>

#include "checks.h"
#include "geometry.h"
#include "host_device.h"

namespace rapa {

struct PoolShape {
  int64_t N, C, H, W;
  int64_t kh, kw, sh, sw, ph, pw;
  int64_t Ho, Wo;
};

// One pooling window: [h0, h1) x [w0, w1) inside the input, and the divisor of the average.
struct PoolWindow {
  int64_t h0, h1, w0, w1, count;
};

RAPA_HD inline PoolWindow pool_window(const PoolShape& s, int64_t oy, int64_t ox) {
  int64_t hs = oy * s.sh - s.ph, ws = ox * s.sw - s.pw;
  int64_t he = hs + s.kh < s.H + s.ph ? hs + s.kh : s.H + s.ph;
  int64_t we = ws + s.kw < s.W + s.pw ? ws + s.kw : s.W + s.pw;
  PoolWindow w;
  w.count = (he - hs) * (we - ws);
  w.h0 = hs > 0 ? hs : 0;
  w.w0 = ws > 0 ? ws : 0;
  w.h1 = he < s.H ? he : s.H;
  w.w1 = we < s.W ? we : s.W;
  return w;
}

// The range of output rows [first, last] whose windows contain input row `i` (one axis).
RAPA_HD inline void pool_cover(
    int64_t i, int64_t k, int64_t stride, int64_t pad, int64_t out, int64_t* first,
    int64_t* last) {
  int64_t lo = i + pad - k + 1;
  *first = lo <= 0 ? 0 : (lo + stride - 1) / stride;
  int64_t hi = (i + pad) / stride;
  *last = hi < out - 1 ? hi : out - 1;
}

// Calls f(oy, ox) for every output window that contains input pixel (h, w).
template <typename F>
RAPA_HD inline void for_each_window_containing(const PoolShape& s, int64_t h, int64_t w, F f) {
  int64_t y0, y1, x0, x1;
  pool_cover(h, s.kh, s.sh, s.ph, s.Ho, &y0, &y1);
  pool_cover(w, s.kw, s.sw, s.pw, s.Wo, &x0, &x1);
  for (int64_t oy = y0; oy <= y1; ++oy)
    for (int64_t ox = x0; ox <= x1; ++ox) f(oy, ox);
}

inline PoolShape check_pool(
    const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding) {
  check_floating(input, "input");
  check_dim(input, 4, "input", "(N, C, H, W)");
  check_pair(kernel, "kernel", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  TORCH_CHECK(
      padding[0] < kernel[0] && padding[1] < kernel[1], "rapa: argument 'padding' ", padding,
      " must be smaller than 'kernel' ", kernel, " (as in Caffe)");
  PoolShape s;
  s.N = input.size(0); s.C = input.size(1); s.H = input.size(2); s.W = input.size(3);
  s.kh = kernel[0]; s.kw = kernel[1]; s.sh = stride[0]; s.sw = stride[1];
  s.ph = padding[0]; s.pw = padding[1];
  TORCH_CHECK(
      s.H + 2 * s.ph >= s.kh && s.W + 2 * s.pw >= s.kw, "rapa: pooling kernel ", kernel,
      " is larger than the padded input ", s.H + 2 * s.ph, "x", s.W + 2 * s.pw);
  const bool padded = s.ph > 0 || s.pw > 0;
  s.Ho = caffe_pooled_size(s.H, s.kh, s.sh, s.ph, padded);
  s.Wo = caffe_pooled_size(s.W, s.kw, s.sw, s.pw, padded);
  TORCH_CHECK(
      (s.Ho - 1) * s.sh < s.H + s.ph && (s.Wo - 1) * s.sw < s.W + s.pw,
      "rapa: 'stride' ", stride, " larger than 'kernel' ", kernel, " without 'padding' leaves "
      "the last window of the ", s.Ho, "x", s.Wo, " output outside the ", s.H, "x", s.W,
      " input (an empty window)");
  return s;
}

inline void check_pool_grad_output(
    const at::Tensor& grad_output, const at::Tensor& input, const PoolShape& s) {
  check_floating(grad_output, "grad_output");
  check_same_device(grad_output, "grad_output", input, "input");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(),
      "rapa: argument 'grad_output' has dtype ", grad_output.scalar_type(), " but 'input' has ",
      input.scalar_type());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == s.N && grad_output.size(1) == s.C &&
          grad_output.size(2) == s.Ho && grad_output.size(3) == s.Wo,
      "rapa: argument 'grad_output' must have shape (", s.N, ", ", s.C, ", ", s.Ho, ", ", s.Wo,
      "), got ", grad_output.sizes());
}

inline void check_mixed_pool_beta(const at::Tensor& beta, const at::Tensor& input) {
  check_floating(beta, "beta");
  check_same_device(beta, "beta", input, "input");
  TORCH_CHECK(beta.scalar_type() == input.scalar_type(), "rapa: argument 'beta' has dtype ",
      beta.scalar_type(), " but 'input' has ", input.scalar_type());
  TORCH_CHECK(beta.dim() == 1 && beta.size(0) == input.size(1),
      "rapa: argument 'beta' must have shape (C,) = (", input.size(1), ",), one per channel, got ",
      beta.sizes());
}

inline void check_pool_uniform(const at::Tensor& uniform, const at::Tensor& input, const PoolShape& s) {
  check_floating(uniform, "uniform");
  check_same_device(uniform, "uniform", input, "input");
  TORCH_CHECK(uniform.scalar_type() == input.scalar_type(), "rapa: argument 'uniform' has dtype ",
      uniform.scalar_type(), " but 'input' has ", input.scalar_type());
  TORCH_CHECK(uniform.sizes() == at::IntArrayRef({s.N, s.C, s.Ho, s.Wo}),
      "rapa: argument 'uniform' must have the output shape (", s.N, ", ", s.C, ", ", s.Ho, ", ",
      s.Wo, "), got ", uniform.sizes());
}

inline void check_pool_index(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& index) {
  check_floating(grad_output, "grad_output");
  check_floating(input, "input");
  check_dim(input, 4, "input", "(N, C, H, W)");
  check_dtype(index, at::kLong, "index");
  check_same_device(grad_output, "grad_output", input, "input");
  check_same_device(index, "index", input, "input");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(),
      "rapa: argument 'grad_output' has dtype ", grad_output.scalar_type(), " but 'input' has ",
      input.scalar_type());
  TORCH_CHECK(grad_output.sizes() == index.sizes(), "rapa: arguments 'grad_output' ",
      grad_output.sizes(), " and 'index' ", index.sizes(), " must have the same shape");
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == input.size(0) &&
          grad_output.size(1) == input.size(1),
      "rapa: argument 'grad_output' ", grad_output.sizes(), " does not fit 'input' ",
      input.sizes());
}

// Mixing weight of mixed pooling: a = 1 / (1 + exp(-mu * beta)).
template <typename T>
RAPA_HD inline T mix_weight(T beta, double mu) {
  return T(1) / (T(1) + exp(-T(mu) * beta));
}

}  // namespace rapa
