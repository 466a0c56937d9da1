// Fused tiled-convolution kernels on raw pointers, shared by the CPU kernel files.
// Plain data only: this header is included by the per-instruction-set files as well.
#pragma once

#include <cstdint>

namespace rapa {

// Everything one call of the fused kernels needs. Layouts:
//   x_hwc       (N, H, W, C)            input, channels last (used with a region map)
//   x_pad       (N, Hp, Wp, C)          input, channels last, zero-padded by (ph, pw) on each
//                                       side (used without a region map: patches are read in
//                                       place, each kernel row one contiguous run)
//   kernels_ko  (T, K, Opad)            per tile, K x O padded with zeros to Opad columns
//   kernels_ok  (T, O, Kpad)            per tile, O x K padded with zeros to Kpad columns
//   bias        (T, O) or null
//   assignment  (N, Ho * Wo)            tile per output pixel, -1 dropped
//   region      (H, W) or null
//   out         (N, O, Ho, Wo)          forward output
//   grad_out    (N, O, Ho, Wo)          backward input
//   grad_x_hwc  (N, H, W, C) or null    input gradient (added to), with a region map
//   grad_x_pad  (N, Hp, Wp, C) or null  padded input gradient (added to), without one
//   grad_k      (T, O, Kpad) or null    weight gradient (added to, one buffer per thread)
//   grad_b      (T, O) or null          bias gradient (added to, one buffer per thread)
// K = C * kh * kw in (ky, kx, c) order; Kpad and Opad are multiples of kFusedPad.
constexpr int64_t kFusedPad = 32;

template <typename S>
struct FusedConv {
  int64_t N, C, H, W, T, O, kh, kw, sh, sw, ph, pw, Ho, Wo, K, Kpad, Opad, Hp, Wp;
  const S* x_hwc;
  const S* x_pad;
  const S* kernels_ko;
  const S* kernels_ok;
  const S* bias;
  const int64_t* assignment;
  const int64_t* region;
  S* out;
  const S* grad_out;
  S* grad_x_hwc;
  S* grad_x_pad;
  S* grad_k;
  S* grad_b;
};

// Patches gathered per step: a panel of kFusedRows x Kpad stays in L2 while it is used.
constexpr int64_t kFusedRows = 48;

// At most this many images are sorted by tile together (when a tile has few patches per image).
constexpr int64_t kUnitImages = 16;

// Scratch each thread passes to the kernels (static: every file keeps its own copy).
static inline int64_t fused_scratch_values(int64_t Kpad, int64_t O) {
  return kFusedRows * (2 * Kpad + O);
}
static inline int64_t fused_scratch_indices(int64_t T, int64_t NP) {
  return T + 1 + 3 * kUnitImages * NP;
}

// Runs images [n_begin, n_end): the forward, or the backward (the gradients whose pointers are
// set). Returns false at an assignment entry outside [-1, T), stored in *bad_value.
#define RAPA_DECLARE_FUSED(isa)                                                                \
  bool fused_forward_##isa(const FusedConv<float>&, int64_t, int64_t, float*, int64_t*,        \
      int64_t*);                                                                               \
  bool fused_forward_##isa(const FusedConv<double>&, int64_t, int64_t, double*, int64_t*,      \
      int64_t*);                                                                               \
  bool fused_backward_##isa(const FusedConv<float>&, int64_t, int64_t, float*, int64_t*,       \
      int64_t*);                                                                               \
  bool fused_backward_##isa(const FusedConv<double>&, int64_t, int64_t, double*, int64_t*,     \
      int64_t*);

RAPA_DECLARE_FUSED(avx512)
RAPA_DECLARE_FUSED(avx2)
RAPA_DECLARE_FUSED(generic)

}  // namespace rapa
