// Pieces shared by the analog (RPU) array kernels on the host and the device: the counter-based
// Gaussian draws, quantization, the argument checks, and the tile grouping of rows.
//
// Gaussian numbers come from a table of 65,536 equally likely values, the standard normal's
// quantiles at (k + 1/2) / 65536, rescaled to unit variance: one 16-bit counter-based draw per
// number, the same on CPU and GPU. Its tails end at 4.17 sigma, a probability of 1.5e-5 each.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "checks.h"
#include "counter_rng.h"
#include "host_device.h"

namespace rapa {

constexpr int64_t kNormalTableSize = 1 << 16;

// Streams of the counter-based generator, one family per use, so that no two draws collide.
constexpr uint64_t kStreamOutNoise = 0x6F75746E6F697365ull;
constexpr uint64_t kStreamPulseX = 0x70756C736578ull;
constexpr uint64_t kStreamPulseD = 0x70756C736564ull;
constexpr uint64_t kStreamStepNoise = 0x737465706E6Full;

RAPA_HD inline uint64_t mix_seed(uint64_t seed, uint64_t family) {
  CounterRng r(seed, family);
  return r.next();
}

// The Gaussian draw number `index` of the stream keyed by `seed` (already mixed with a family).
template <typename S>
RAPA_HD inline S normal_draw(const S* table, uint64_t seed, uint64_t index) {
  CounterRng r(seed, index);
  return table[r.next() >> 48];
}

// Rounds half to even. On the host by the magic-number trick, exact for |v| < 2^22 (floats)
// or 2^51 (doubles) and vectorizable; callers round values within a converter's range (a few
// thousand steps), and larger ones only ever saturate.
RAPA_HD inline float round_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  if (!(std::fabs(v) < 4194304.0f)) return v;
  const float m = 12582912.0f;  // 1.5 * 2^23 (IEEE arithmetic: never folded without fast-math)
  return (v + m) - m;
#endif
}

RAPA_HD inline double round_even(double v) {
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
RAPA_HD inline S quantize_clip(S v, S bound, S step) {
  v = step > S(0) ? round_even(v / step) * step : v;
  return v > bound ? bound : (v < -bound ? -bound : v);
}

// Whether the ADC saturates on v: its rounded value lies beyond the bound (strictly; aihwkit
// 1.1.0's bound test, after the rounding). NaN does not saturate, as there.
template <typename S>
RAPA_HD inline bool adc_saturates(S v, S bound, S step) {
  v = step > S(0) ? round_even(v / step) * step : v;
  return v > bound || v < -bound;
}

// The table of Gaussian quantiles on `device`, in dtype `dtype`, built once per pair.
inline at::Tensor normal_table(at::ScalarType dtype, at::Device device) {
  static std::mutex mutex;
  static std::map<std::pair<int, std::string>, at::Tensor> cache;
  const auto key = std::make_pair(static_cast<int>(dtype), device.str());
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor q = at::special_ndtri((at::arange(kNormalTableSize, opts) + 0.5) / kNormalTableSize);
  q = q / (q * q).mean().sqrt();  // exactly unit variance; the mean is 0 by symmetry
  at::Tensor table = q.to(dtype).to(device).contiguous();
  cache.emplace(key, table);
  return table;
}

// Settings of one analog matrix-vector product (forward or backward), in absolute units.
struct AnalogIO {
  double inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor;
  bool noise_management, bound_management;
};

inline void check_analog_io(const AnalogIO& io) {
  TORCH_CHECK(io.inp_step >= 0, "rapa: argument 'inp_step' must be >= 0, got ", io.inp_step);
  TORCH_CHECK(io.out_step >= 0, "rapa: argument 'out_step' must be >= 0, got ", io.out_step);
  TORCH_CHECK(io.inp_bound > 0, "rapa: argument 'inp_bound' must be > 0, got ", io.inp_bound);
  TORCH_CHECK(io.out_bound > 0, "rapa: argument 'out_bound' must be > 0, got ", io.out_bound);
  TORCH_CHECK(io.out_noise >= 0, "rapa: argument 'out_noise' must be >= 0, got ", io.out_noise);
  TORCH_CHECK(io.max_bm_factor >= 1, "rapa: argument 'max_bm_factor' must be >= 1, got ",
      io.max_bm_factor);
}

// Rows (M, In) of vectors for the arrays of `weight` (T, O, K).
inline void check_analog_rows(const at::Tensor& rows, const char* rows_name, int64_t width,
    const char* width_what, const at::Tensor& weight) {
  check_floating(rows, rows_name);
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == width, "rapa: argument '", rows_name,
      "' must be (M, ", width, ") with ", width, " = ", width_what, " of 'weight' ",
      weight.sizes(), ", got shape ", rows.sizes());
  TORCH_CHECK(rows.scalar_type() == weight.scalar_type(), "rapa: argument '", rows_name,
      "' has dtype ", rows.scalar_type(), " but 'weight' has ", weight.scalar_type());
  check_same_device(rows, rows_name, weight, "weight");
}

// The array of each of M rows: (M,), entries in [0, T) or -1 (a row no array computes).
inline void check_tile(const at::Tensor& tile, int64_t M, const at::Tensor& weight) {
  check_dtype(tile, at::kLong, "tile");
  check_same_device(tile, "tile", weight, "weight");
  TORCH_CHECK(tile.dim() == 1 && tile.size(0) == M, "rapa: argument 'tile' must be (M,) = (",
      M, ",), the array of each row, got shape ", tile.sizes());
  if (tile.numel() > 0) {
    const at::Tensor range = at::stack({tile.min(), tile.max()}).cpu();
    const int64_t lo = range[0].item<int64_t>(), hi = range[1].item<int64_t>();
    TORCH_CHECK(lo >= -1 && hi < weight.size(0), "rapa: argument 'tile' holds ",
        lo < -1 ? lo : hi, ", but entries must be an array index in [0, ", weight.size(0),
        ") or -1 for a row that no array computes");
  }
}

// The rows with tile >= 0, sorted by tile (stable): each array's rows in a contiguous run.
inline at::Tensor rows_by_tile(const at::Tensor& tile) {
  const at::Tensor kept = at::nonzero(tile.ge(0)).squeeze(1);
  const at::Tensor sorted = std::get<1>(tile.index_select(0, kept).sort(true, 0, false));
  return kept.index_select(0, sorted);
}

// How many of `rows` each of the T arrays has (on the host).
inline std::vector<int64_t> tile_counts(const at::Tensor& tile, const at::Tensor& rows, int64_t T) {
  const at::Tensor c = at::bincount(tile.index_select(0, rows), {}, T).cpu();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + T);
}

}  // namespace rapa
