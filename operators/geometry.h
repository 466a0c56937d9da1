// Geometry shared by the CPU and CUDA kernels: the shape of a tiled convolution, and the two
// output-size formulas (convolution: floor; Caffe's pooling: ceil). Plain data, no ATen: the
// per-instruction-set files in isa/ and the device code include it as well.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace rapa {

// Geometry of a tiled convolution, checked once (check_tiled_conv in checks.h) and shared by
// forward and backward, on the CPU (FusedConv derives from it) and on the GPU (passed by value).
struct ConvGeometry {
  int64_t N, C, H, W;       // input (N, C, H, W)
  int64_t T, O, kh, kw;     // weight (T, O, C, kh, kw)
  int64_t sh, sw, ph, pw;   // stride, padding
  int64_t Ho, Wo;           // output size
  int64_t K;                // K = C * kh * kw, the length of one patch
  int64_t NP;               // NP = Ho * Wo, output pixels (patches) per image
};

// Output size of a convolution along one axis: floor((size + 2 pad - kernel) / stride) + 1.
// The caller checks size + 2 pad >= kernel.
RAPA_HD inline int64_t conv_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad) {
  return (size + 2 * pad - kernel) / stride + 1;
}

// Caffe's pooled size along one axis (pooling_layer.cpp): rounds up (ceil mode); when either
// axis is padded (`padded`), the last window must start inside the input or its left padding.
RAPA_HD inline int64_t caffe_pooled_size(
    int64_t in, int64_t k, int64_t stride, int64_t pad, bool padded) {
  int64_t out = (in + 2 * pad - k + stride - 1) / stride + 1;  // ceil
  if (padded && (out - 1) * stride >= in + pad) --out;          // last window starts inside
  return out;
}

}  // namespace rapa
