// Pieces shared by the analog (RPU) array kernels on the host and the device: the table of
// Gaussian draws and the argument checks (the per-value arithmetic of the periphery is in
// periphery.h).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>

#include "checks.h"
#include "host_device.h"
#include "periphery.h"

namespace rapa {

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
  // At most 2e30: bound management's reduction doubles up to it, and must stay finite in float.
  TORCH_CHECK(io.max_bm_factor >= 1 && io.max_bm_factor <= 2e30,
      "rapa: argument 'max_bm_factor' must be in [1, 2e30], got ", io.max_bm_factor);
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

// The array of each of M rows: (M,), entries in [0, T) or -1 (a row no array computes). On
// CUDA the range is checked by a device-side assertion, without a copy to the host.
inline void check_tile(const at::Tensor& tile, int64_t M, const at::Tensor& weight) {
  check_dtype(tile, at::kLong, "tile");
  check_same_device(tile, "tile", weight, "weight");
  TORCH_CHECK(tile.dim() == 1 && tile.size(0) == M, "rapa: argument 'tile' must be (M,) = (",
      M, ",), the array of each row, got shape ", tile.sizes());
  if (tile.numel() > 0 && tile.is_cuda()) {
    at::_assert_async(at::logical_and(tile.min().ge(-1), tile.max().lt(weight.size(0))),
        "rapa: argument 'tile' holds an entry outside [-1, T): entries must be an array index "
        "or -1 for a row that no array computes");
  } else if (tile.numel() > 0) {
    const at::Tensor range = at::stack({tile.min(), tile.max()}).cpu();
    const int64_t lo = range[0].item<int64_t>(), hi = range[1].item<int64_t>();
    TORCH_CHECK(lo >= -1 && hi < weight.size(0), "rapa: argument 'tile' holds ",
        lo < -1 ? lo : hi, ", but entries must be an array index in [0, ", weight.size(0),
        ") or -1 for a row that no array computes");
  }
}

}  // namespace rapa
