// Fused tiled-convolution kernels on raw pointers, shared by the CPU kernel files.
// Plain data only: this header is included by the per-instruction-set files as well.
#pragma once

#include <cstdint>

#include "../geometry.h"

namespace rapa {

// Everything one call of the fused kernels needs: the convolution's geometry (the ConvGeometry
// base: N, C, H, W, T, O, kh, kw, sh, sw, ph, pw, Ho, Wo, K, NP), padded sizes and pointers.
// Layouts:
//   x           (N, C, H, W)            input
//   kernels_ko  (T, K, Opad)            per tile, K x O padded with zeros to Opad columns
//   kernels_ok  (T, O, Kpad)            per tile, O x K padded with zeros to Kpad columns
//   bias        (T, O) or null
//   assignment  (N, Ho * Wo)            tile per output pixel, -1 dropped
//   region      (H, W) or null
//   out         (N, O, Ho, Wo)          forward output
//   grad_out    (N, O, Ho, Wo)          backward input
//   grad_x      (N, C, H, W) or null    input gradient (written)
//   grad_k      (T, O, Kpad) or null    weight gradient (added to, one buffer per thread)
//   grad_b      (T, O) or null          bias gradient (added to, one buffer per thread)
// K = C * kh * kw in (ky, kx, c) order; Kpad and Opad are multiples of kFusedPad.
// The kernels copy each unit of images they work on into scratch, channels last, zero-padded
// by (ph, pw) unless there is a region map (Hp = H + 2 ph, Wp = W + 2 pw, else H and W), so
// that a patch's kernel rows are contiguous runs, and accumulate input gradients there.
constexpr int64_t kFusedPad = 32;

template <typename S>
struct FusedConv : ConvGeometry {
  int64_t Kpad, Opad, Hp, Wp;
  const S* x;
  const S* kernels_ko;
  const S* kernels_ok;
  const S* bias;
  const int64_t* assignment;
  const int64_t* region;
  S* out;
  const S* grad_out;
  S* grad_x;
  S* grad_k;
  S* grad_b;
};

// Patches gathered per step: a panel of kFusedRows x Kpad stays in L2 while it is used.
constexpr int64_t kFusedRows = 48;
// At most this many images are sorted by tile together (when a tile has few patches per image).
constexpr int64_t kUnitImages = 16;

// Images sorted together: enough that each tile gathers panels of a useful length.
// (static: every file keeps its own copy, whatever instruction set it is compiled for)
static inline int64_t fused_unit_images(int64_t T, int64_t NP) {
  const int64_t wanted = (4 * kFusedRows * T + NP - 1) / NP;
  return wanted < 1 ? 1 : wanted > kUnitImages ? kUnitImages : wanted;
}

// Scratch each thread passes to the kernels, in values and in indices.
template <typename S>
static inline int64_t fused_scratch_values(const FusedConv<S>& a) {
  const int64_t unit = fused_unit_images(a.T, a.Ho * a.Wo) * a.Hp * a.Wp * a.C;
  return kFusedRows * (2 * a.Kpad + a.O) + 2 * unit;
}
static inline int64_t fused_scratch_indices(int64_t T, int64_t NP) {
  return T + 1 + 3 * kUnitImages * NP;
}

// Runs images [n_begin, n_end): the forward, or the backward (the gradients whose pointers are
// set). Returns false at an assignment entry outside [-1, T), stored in *bad_value.
// One kernel `name` over arguments Args<S> (FusedConv, or analog_conv.h's AnalogConv), per
// scalar type: (args, n_begin, n_end, scratch, index scratch, bad_value).
#define RAPA_DECLARE_KERNEL(name, Args)                                                        \
  bool name(const Args<float>&, int64_t, int64_t, float*, int64_t*, int64_t*);                 \
  bool name(const Args<double>&, int64_t, int64_t, double*, int64_t*, int64_t*);

#define RAPA_DECLARE_FUSED(isa)                                                                \
  RAPA_DECLARE_KERNEL(fused_forward_##isa, FusedConv)                                          \
  RAPA_DECLARE_KERNEL(fused_backward_##isa, FusedConv)

RAPA_DECLARE_FUSED(avx512)
RAPA_DECLARE_FUSED(avx2)
RAPA_DECLARE_FUSED(generic)

}  // namespace rapa
