// Per-window statistics of the pooling ops, written once for host and device kernels.
#pragma once

#include "host_device.h"
#include "pool_geometry.h"

namespace rapa {

// Maximum (the first one on ties; NaN propagates, as in PyTorch), its flat index in the plane,
// and the average over Caffe's divisor.
template <typename scalar_t>
RAPA_HD inline void window_max_avg(const scalar_t* plane, const PoolShape& s,
    const PoolWindow& win, scalar_t* max_value, int64_t* max_index, scalar_t* average) {
  scalar_t m = scalar_t(0), sum = scalar_t(0);
  int64_t mi = -1;
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const scalar_t v = plane[h * s.W + w];
      if (mi < 0 || v > m || v != v) { m = v; mi = h * s.W + w; }
      sum += v;
    }
  *max_value = m;
  *max_index = mi;
  *average = sum / scalar_t(win.count);
}

// Stochastic pooling's sampling weight of an activation: its positive part.
template <typename scalar_t>
RAPA_HD inline scalar_t stochastic_weight(scalar_t v) {
  return v > scalar_t(0) ? v : scalar_t(0);
}

// The pixel chosen with probability weight / sum(weights), given u uniform in [0, 1): the first
// whose running sum of weights exceeds u * sum. A window without positive weight picks its
// first pixel; rounding at u -> 1 falls back to the last positive one.
template <typename scalar_t>
RAPA_HD inline int64_t stochastic_pick(
    const scalar_t* plane, const PoolShape& s, const PoolWindow& win, scalar_t u) {
  scalar_t total = scalar_t(0);
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) total += stochastic_weight(plane[h * s.W + w]);
  int64_t pick = win.h0 * s.W + win.w0;
  if (!(total > scalar_t(0))) return pick;
  const scalar_t threshold = u * total;
  scalar_t running = scalar_t(0);
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const scalar_t weight = stochastic_weight(plane[h * s.W + w]);
      if (weight > scalar_t(0)) pick = h * s.W + w;
      running += weight;
      if (running > threshold) return pick;
    }
  return pick;
}

// Test-time stochastic pooling: S = sum of weights, Q = sum of weight * value; out = Q / S.
template <typename scalar_t>
RAPA_HD inline void stochastic_moments(const scalar_t* plane, const PoolShape& s,
    const PoolWindow& win, scalar_t* sum_w, scalar_t* sum_wv) {
  scalar_t S = scalar_t(0), Q = scalar_t(0);
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const scalar_t v = plane[h * s.W + w];
      const scalar_t weight = stochastic_weight(v);
      S += weight;
      Q += weight * v;
    }
  *sum_w = S;
  *sum_wv = Q;
}

// d(Q/S)/dv for one pixel: (2 v S - Q) / S^2 where v > 0, else 0.
template <typename scalar_t>
RAPA_HD inline scalar_t stochastic_test_grad(scalar_t v, scalar_t S, scalar_t Q) {
  return (v > scalar_t(0) && S > scalar_t(0)) ? (scalar_t(2) * v * S - Q) / (S * S) : scalar_t(0);
}

}  // namespace rapa
