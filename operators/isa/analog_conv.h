// Fused analog-convolution kernels (rapa::analog_conv) on raw pointers: the fused tiled
// convolution's per-unit, per-tile panels (fused_conv.h), with the analog periphery of
// rapa::analog_mvm applied to each patch's product in cache. Plain data only.
#pragma once

#include <cstdint>

#include "fused_conv.h"

namespace rapa {

// One direction's periphery (analog_mvm.h's AnalogIO, in the scalar type) and its noise stream.
//   key          the output noise's stream: mix_seed(seed, kStreamOutNoise)
//   normal       the table of kNormalTableSize Gaussian values (analog.h)
//   M            patches in the batch (N * Ho * Wo): draw (pass M + m) Out + j belongs to
//                output j of patch m (images, rows, columns in order) in pass `pass`, as
//                analog_mvm's for the rows of F.unfold's patches
//   unfold_index (K,) backward only: for each k in the kernels' (ky, kx, c) order, its index
//                in F.unfold's (c, ky, kx) order, which numbers analog_mvm's outputs
//   out_scale    (T,) each array's digital output scale alpha_t: forward outputs are
//                alpha_t y + bias, backward products take alpha_t dL/dout
// Layouts as FusedConv, except that out and grad_out are channels last, (N, Ho, Wo, O): one row
// per patch, as analog_mvm's. Forward reads x, kernels_ko and bias (or null), writes out;
// backward reads grad_out and kernels_ok, writes grad_x (N, C, H, W). No region map, no weight
// or bias gradient (the digital kernels compute them).
template <typename S>
struct AnalogConv : FusedConv<S> {
  S inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor;
  bool noise_management, bound_management;
  uint64_t key;
  const S* normal;
  int64_t M;
  const int64_t* unfold_index;
  const S* out_scale;
};

// Scratch each thread passes to the kernels, in values.
template <typename S>
static inline int64_t analog_scratch_values(const AnalogConv<S>& a) {
  const int64_t unit = fused_unit_images(a.T, a.Ho * a.Wo) * a.Hp * a.Wp * a.C;
  const int64_t wide = a.Kpad > a.Opad ? a.Kpad : a.Opad;
  return (4 * kFusedRows + 32) * wide + unit;
}

#define RAPA_DECLARE_ANALOG(isa)                                                               \
  RAPA_DECLARE_KERNEL(analog_forward_##isa, AnalogConv)                                        \
  RAPA_DECLARE_KERNEL(analog_backward_##isa, AnalogConv)

RAPA_DECLARE_ANALOG(avx512)
RAPA_DECLARE_ANALOG(avx2)
RAPA_DECLARE_ANALOG(generic)

}  // namespace rapa
