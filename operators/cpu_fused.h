// Host-side pieces of the fused CPU convolution kernels (operators/isa/), shared by
// tiled_conv.cpp and analog_conv.cpp: the choice of instruction set and the kernels' layouts.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

#include "geometry.h"
#include "isa/fused_conv.h"

namespace rapa {

enum class Isa { avx512, avx2, generic };

// The widest instruction set this CPU runs; RAPA_CPU_ISA=generic|avx2|avx512 narrows it.
inline Isa cpu_isa() {
  static const Isa isa = [] {
    Isa best = Isa::generic;
#if defined(RAPA_X86_KERNELS)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
    // The AVX-512 build also uses AVX512DQ (64-bit lane multiplies for the noise's hashes).
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
      best = Isa::avx512;
#endif
    const char* wanted = std::getenv("RAPA_CPU_ISA");
    if (wanted && std::strcmp(wanted, "generic") == 0) return Isa::generic;
    if (wanted && std::strcmp(wanted, "avx2") == 0 && best != Isa::generic) return Isa::avx2;
    return best;
  }();
  return isa;
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Kernel matrices with K in (ky, kx, c) order, matching the channels-last gather: (T, O, K).
inline at::Tensor kernels_hwc(const at::Tensor& weight) {
  return weight.permute({0, 1, 3, 4, 2}).contiguous().view({weight.size(0), weight.size(1), -1});
}

// The padded sizes of the kernels' layouts for geometry `s` (FusedConv's, or a type derived).
template <typename A>
A fused_geometry(const ConvGeometry& s, bool has_region) {
  A a{};
  static_cast<ConvGeometry&>(a) = s;
  a.Kpad = round_up(a.K, kFusedPad);
  a.Opad = round_up(a.O, kFusedPad);
  // The kernels' unit copies are padded unless a region map needs per-pixel tests.
  a.Hp = has_region ? s.H : s.H + 2 * s.ph;
  a.Wp = has_region ? s.W : s.W + 2 * s.pw;
  return a;
}

}  // namespace rapa
