// The analog periphery's arithmetic on single values: the Gaussian draws of the output noise,
// the converters' rounding and clipping. Plain code without ATen and with internal linkage, so
// that the CPU kernels, the CUDA kernels and the kernels compiled per instruction set
// (operators/isa/) all inline the same arithmetic.
//
// Gaussian numbers come from a table of 65,536 equally likely values, the standard normal's
// quantiles at (k + 1/2) / 65536, rescaled to unit variance (analog.h builds it): one 16-bit
// counter-based draw per number, the same on CPU and GPU. Its tails end at 4.17 sigma, a
// probability of 1.5e-5 each.
#pragma once

#include <cmath>
#include <cstdint>

#include "counter_rng.h"
#include "host_device.h"

namespace rapa {

constexpr int64_t kNormalTableSize = 1 << 16;

// Streams of the counter-based generator, one family per use, so that no two draws collide.
constexpr uint64_t kStreamOutNoise = 0x6F75746E6F697365ull;
constexpr uint64_t kStreamPulseX = 0x70756C736578ull;
constexpr uint64_t kStreamPulseD = 0x70756C736564ull;
constexpr uint64_t kStreamStepNoise = 0x737465706E6Full;

RAPA_HD static inline uint64_t mix_seed(uint64_t seed, uint64_t family) {
  return splitmix64(counter_state(seed, family) + 0x9E3779B97F4A7C15ull);
}

// The table entry of Gaussian draw number `index` of the stream keyed by `seed` (already mixed
// with a family): the top 16 bits of the draw.
RAPA_HD static inline uint32_t normal_index(uint64_t seed, uint64_t index) {
  return static_cast<uint32_t>(splitmix64(counter_state(seed, index) + 0x9E3779B97F4A7C15ull) >> 48);
}

// The Gaussian draw number `index` of the stream keyed by `seed`.
template <typename S>
RAPA_HD static inline S normal_draw(const S* table, uint64_t seed, uint64_t index) {
  return table[normal_index(seed, index)];
}

// Rounds half to even. On the host by the magic-number trick, exact for |v| < 2^22 (floats)
// or 2^51 (doubles) and vectorizable; callers round values within a converter's range (a few
// thousand steps), and larger ones only ever saturate.
RAPA_HD static inline float round_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  if (!(std::fabs(v) < 4194304.0f)) return v;
  const float m = 12582912.0f;  // 1.5 * 2^23 (IEEE arithmetic: never folded without fast-math)
  return (v + m) - m;
#endif
}

RAPA_HD static inline double round_even(double v) {
#if defined(__CUDA_ARCH__)
  return rint(v);
#else
  if (!(std::fabs(v) < 2251799813685248.0)) return v;
  const double m = 6755399441055744.0;  // 1.5 * 2^52
  return (v + m) - m;
#endif
}

// Rounds v to a multiple of step (step 0: no rounding), then clips it to [-bound, bound]: the
// converters' order in aihwkit 1.1.0 (getDiscretizedValue, then the bound), so an output never
// exceeds the bound even when the bound is not a multiple of the step.
template <typename S>
RAPA_HD static inline S quantize_clip(S v, S bound, S step) {
  v = step > S(0) ? round_even(v / step) * step : v;
  return v > bound ? bound : (v < -bound ? -bound : v);
}

// Whether the ADC saturates on v: its rounded value lies beyond the bound (strictly; aihwkit
// 1.1.0's bound test, after the rounding). NaN does not saturate, as there.
template <typename S>
RAPA_HD static inline bool adc_saturates(S v, S bound, S step) {
  v = step > S(0) ? round_even(v / step) * step : v;
  return v > bound || v < -bound;
}

// Bound management's rule: a row that saturated at total input reduction `reduction` is
// repeated at twice that while it stays within max_bm_factor (the op's limit: twice aihwkit's
// last allowed reduction, rapa.analog.IOParameters.op_args), compared in the arrays' dtype.
template <typename S>
RAPA_HD static inline bool bm_repeats(S reduction, double max_bm_factor) {
  return reduction * S(2) <= static_cast<S>(max_bm_factor);
}

// Output noise on one row of n outputs, in place (draw base + o of the stream keyed by `key`
// for output o); whether the ADC saturates on any of them.
template <typename S>
RAPA_HD static inline bool add_noise_row(S* y, int64_t n, const S* table, uint64_t key,
    uint64_t base, S noise, S bound, S step) {
  bool any = false;
  for (int64_t o = 0; o < n; ++o) {
    if (noise > S(0)) y[o] += noise * normal_draw(table, key, base + o);
    any |= adc_saturates(y[o], bound, step);
  }
  return any;
}

}  // namespace rapa
