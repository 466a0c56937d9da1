// rapa::rpu_update, device-agnostic part: the pulsed update of analog arrays, in place.
//
// Each row m (one patch of one image) is a rank-one update -lr d_m x_m^T of the array
// tile[m], applied in row order as the array would (Gokmen & Vlasov 2016):
//   bit-length management: BL = clamp(ceil(lr |x|max |d|max / dw_min), 1, desired_bl),
//     else BL = desired_bl;
//   update management (implied by bit-length management, as in aihwkit): x fires with
//     probability A |x_j|, d with B |d_i|, where A |x|max = B |d|max and A B BL dw_min = lr
//     (so the largest x and d fire with probability about 1); when lr |x|max |d|max exceeds
//     BL dw_min (BL capped), A |x|max = 1 and d's probabilities clip instead (aihwkit 1.1.0);
//     without it A = B = sqrt(lr / (BL dw_min));
//   pulse trains: BL independent bits per x_j and per d_i, bit-packed; coincidences
//     n = popcount(bits(x_j) & bits(d_i));
//   each coincidence moves w_ij by its own up or down step (device-to-device draws, fixed per
//     array) times (1 + dw_min_std * noise): n of them sum to step (n + dw_min_std sqrt(n) z),
//     the same distribution as n separate draws; up when x_j and d_i differ in sign;
//   the weight then stays within its own bounds [w_min_ij, w_max_ij].
// Rows of different arrays never touch the same weight, and one weight's sequence depends only
// on its own pulses, so kernels may run weights in parallel while each walks its rows in order.
//
// `Kernels` supplies row_absmax(x) and update(...) (the pulse trains and the walk) for one
// device; the rate comes as a tensor of one double (u.lr holds it on the host), so that a GPU
// reads it where it is.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "analog.h"
#include "host_device.h"

namespace rapa {

struct UpdateSettings {
  double lr, dw_min, dw_min_std;
  int64_t desired_bl;
  bool update_management, bl_management;
};

// Pulse-train length and firing scales (A for x, B for d) of one row.
struct RowPulses {
  int bl;
  double a, b;
};

RAPA_HD inline RowPulses row_pulses(double xmax, double dmax, const UpdateSettings& u) {
  RowPulses p{static_cast<int>(u.desired_bl), 0.0, 0.0};
  if (!(xmax > 0) || !(dmax > 0) || !(u.lr > 0)) return p;  // nothing fires
  // Coincidences the largest x and d need between them.
  const double need = u.lr * xmax * dmax / u.dw_min;
  if (u.bl_management) {
    const double bl = ceil(need);
    p.bl = static_cast<int>(bl < 1 ? 1 : (bl > u.desired_bl ? u.desired_bl : bl));
  }
  const double unit = u.lr / (p.bl * u.dw_min);
  // Bit-length management implies update management (as in aihwkit).
  if (u.update_management || u.bl_management) {
    if (need > p.bl) {
      // The product needs more than BL coincidences: the largest x still fires every bit and
      // d takes the clipping, so that x's pulses keep their proportions (aihwkit's rule).
      p.a = 1 / xmax;
      p.b = unit * xmax;
    } else {
      p.a = sqrt(unit * dmax / xmax);
      p.b = sqrt(unit * xmax / dmax);
    }
  } else {
    p.a = p.b = sqrt(unit);
  }
  return p;
}

// `bl` bits, each set with probability min(1, scale |v|), from 32-bit uniform draws.
RAPA_HD inline uint64_t pulse_train(double v, double scale, int bl, uint64_t key,
    uint64_t index) {
  const double p = scale * (v < 0 ? -v : v);
  if (!(p > 0)) return 0;
  const uint64_t threshold = p >= 1 ? (uint64_t(1) << 32) : static_cast<uint64_t>(p * 4294967296.0);
  CounterRng r(key, index);
  uint64_t bits = 0, word = 0;
  for (int k = 0; k < bl; ++k) {
    if ((k & 1) == 0) word = r.next();
    const uint64_t u = (k & 1) ? (word >> 32) : (word & 0xFFFFFFFFull);
    bits |= static_cast<uint64_t>(u < threshold) << k;
  }
  return bits;
}

// One weight's response to n coincidences: its new value, within its bounds.
template <typename S>
RAPA_HD inline S pulsed_step(S w, int n, bool up, S dw_up, S dw_down, S w_min, S w_max,
    S dw_min_std, S z) {
  S amount = static_cast<S>(n);
  // In double on both devices, rounded once (the host's sqrt of a float is the double one).
  if (dw_min_std > S(0)) {
    amount = static_cast<S>(static_cast<double>(amount) + static_cast<double>(dw_min_std) *
        sqrt(static_cast<double>(n)) * static_cast<double>(z));
  }
  w += up ? dw_up * amount : -dw_down * amount;
  return w < w_min ? w_min : (w > w_max ? w_max : w);
}

inline void check_rpu_update(const at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
    const at::Tensor& tile, const at::Tensor& dw_up, const at::Tensor& dw_down,
    const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed,
    const at::Tensor& lr, const UpdateSettings& u) {
  check_floating(weight, "weight");
  check_dim(weight, 3, "weight", "(T, O, K): T arrays of O x K");
  TORCH_CHECK(weight.is_contiguous(), "rapa: argument 'weight' is updated in place and must be "
      "contiguous");
  check_analog_rows(x, "x", weight.size(2), "K, dim 2", weight);
  check_analog_rows(d, "d", weight.size(1), "O, dim 1", weight);
  TORCH_CHECK(d.size(0) == x.size(0), "rapa: arguments 'x' and 'd' must have one row per "
      "update each, got ", x.size(0), " and ", d.size(0));
  check_tile(tile, x.size(0), weight);
  const std::pair<const at::Tensor*, const char*> device_state[] = {
      {&dw_up, "dw_up"}, {&dw_down, "dw_down"}, {&w_min, "w_min"}, {&w_max, "w_max"}};
  for (const auto& [t, name] : device_state) {
    check_floating(*t, name);
    check_same_device(*t, name, weight, "weight");
    TORCH_CHECK(t->sizes() == weight.sizes() && t->scalar_type() == weight.scalar_type(),
        "rapa: argument '", name, "' must have the shape and dtype of 'weight' (", weight.sizes(),
        ", ", weight.scalar_type(), "), got ", t->sizes(), ", ", t->scalar_type());
  }
  check_seed(seed);
  check_same_device(seed, "seed", weight, "weight");
  check_floating(lr, "lr");
  TORCH_CHECK(lr.numel() == 1, "rapa: argument 'lr' must hold one number (the rate), got shape ",
      lr.sizes());
  check_same_device(lr, "lr", weight, "weight");
  TORCH_CHECK(u.dw_min > 0, "rapa: argument 'dw_min' must be > 0, got ", u.dw_min);
  TORCH_CHECK(u.dw_min_std >= 0, "rapa: argument 'dw_min_std' must be >= 0, got ", u.dw_min_std);
  TORCH_CHECK(u.desired_bl >= 1 && u.desired_bl <= 64,
      "rapa: argument 'desired_bl' must be in [1, 64] (bits of one pulse word), got ", u.desired_bl);
}

// The rate as one double on the weight's device. On the host its value is checked and taken into
// u.lr; on a GPU it stays there (the kernels read it, so that a CUDA graph replays with the rate
// of the moment) and a device-side assertion checks it.
inline at::Tensor update_rate(const at::Tensor& lr, UpdateSettings& u) {
  const at::Tensor rate = lr.reshape({1}).to(at::kDouble).contiguous();
  if (rate.is_cuda()) {
    at::_assert_async(at::logical_and(rate.ge(0), at::isfinite(rate)).squeeze(0),
        "rapa: argument 'lr' must be finite and >= 0");
  } else {
    u.lr = rate.item<double>();
    TORCH_CHECK(std::isfinite(u.lr) && u.lr >= 0, "rapa: argument 'lr' must be finite and >= 0, "
        "got ", u.lr);
  }
  return rate;
}

template <class Kernels>
void rpu_update_driver(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
    const at::Tensor& tile, const at::Tensor& dw_up, const at::Tensor& dw_down,
    const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed,
    const at::Tensor& lr, UpdateSettings u) {
  check_rpu_update(weight, x, d, tile, dw_up, dw_down, w_min, w_max, seed, lr, u);
  const at::Tensor rate = update_rate(lr, u);
  if (x.size(0) == 0 || weight.numel() == 0 || (!rate.is_cuda() && u.lr == 0)) return;
  const at::Tensor xc = x.contiguous(), dc = d.contiguous();
  const at::Tensor xmax = Kernels::row_absmax(xc).to(at::kDouble);
  const at::Tensor dmax = Kernels::row_absmax(dc).to(at::kDouble);
  Kernels::update(weight, xc, dc, tile, xmax, dmax, dw_up.contiguous(), dw_down.contiguous(),
      w_min.contiguous(), w_max.contiguous(), seed, rate, u);
}

}  // namespace rapa
