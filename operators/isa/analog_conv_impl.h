// The fused analog-convolution kernels, compiled once per instruction set by the
// fused_conv_*.cpp files after fused_conv_impl.h, whose unit copies, tile sort and
// micro-kernels they use.
//
// Per unit of images and per tile, a panel of up to kFusedRows patches goes through
// rapa::analog_mvm's steps (analog_mvm.h) without leaving the cache: forward, each patch is
// gathered from the padded unit copy, divided by its absolute maximum (noise management),
// rounded and clipped by the DAC, multiplied with the tile's kernel matrix, given its output
// noise, tested against the ADC's bound, repeated with its input halved while it saturates
// (bound management), and written out scaled back, times its array's output scale, plus the
// bias, as one channels-last row. Backward, each output pixel's gradient (times the scale) goes
// the same way through the transposed kernel matrix and its K results are added into the
// unit's input gradient (col2im) at once. The noise draws are analog_mvm's for the same
// patches (the numbering of analog_conv.h), so the two differ by the products' rounding only.
#include <cstdint>
#include <cstring>
#include <limits>

#include "../periphery.h"
#include "analog_conv.h"

namespace rapa {
namespace {

inline float abs_value(float v) { return __builtin_fabsf(v); }
inline double abs_value(double v) { return __builtin_fabs(v); }

// The largest |v| of n values; NaN where one is NaN (cpu_row_absmax's rule, torch's amax's).
template <typename S>
inline S absmax_of(const S* v, int64_t n) {
  typedef typename VecOf<S>::type V;
  constexpr int64_t L = lanes<S>();
  V best = V{};
  decltype(V{} < V{}) nan{};
  int64_t k = 0;
  for (; k + L <= n; k += L) {
    V x = vload(v + k);
    for (int64_t l = 0; l < L; ++l) x[l] = abs_value(x[l]);
    best = best < x ? x : best;
    nan |= x != x;
  }
  S out = S(0);
  for (int64_t l = 0; l < L; ++l) {
    out = out < best[l] ? best[l] : out;
    if (nan[l]) return std::numeric_limits<S>::quiet_NaN();
  }
  for (; k < n; ++k) {
    const S x = abs_value(v[k]);
    if (x != x) return x;
    out = out < x ? x : out;
  }
  return out;
}

// dst[0..n) = the DAC's values of src[0..n) * inv, dst[n..padded) = 0.
template <typename S>
inline void dac_row(const S* src, int64_t n, int64_t padded, S inv, S bound, S step, S* dst) {
  for (int64_t k = 0; k < n; ++k) dst[k] = quantize_clip<S>(src[k] * inv, bound, step);
  for (int64_t k = n; k < padded; ++k) dst[k] = S(0);
}

// Adds the output noise to y[0..n) (draw base + j, or base + index[j] given an index) and
// returns whether any value saturates the ADC. The draws' hashes (periphery.h's normal_index)
// are computed a vector of 64-bit lanes at a time. The saturation test divides only where a
// value comes within one step of the bound: below that its rounded value cannot pass it.
template <typename S>
inline bool noise_and_test(const AnalogConv<S>& a, S* y, int64_t n, uint64_t base,
    const int64_t* index) {
  typedef uint64_t U __attribute__((vector_size(RAPA_VECTOR_BYTES)));
  constexpr int64_t L = RAPA_VECTOR_BYTES / 8;
  typedef S H __attribute__((vector_size(L * sizeof(S))));  // L values of y
  typedef decltype(H{} < H{}) Mask;
  const S noise = a.out_noise, near = a.out_bound - a.out_step;
  const bool noisy = noise > S(0);
  Mask close{};
  U lane;
  for (int64_t l = 0; l < L; ++l) lane[l] = static_cast<uint64_t>(l);
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    H v;
    std::memcpy(&v, y + j, sizeof v);
    if (noisy) {
      U i;
      if (index) {
        std::memcpy(&i, index + j, sizeof i);
        i += base;
      } else {
        i = lane + (base + static_cast<uint64_t>(j));
      }
      U z = (a.key ^ (i * 0xD1B54A32D192ED03ull + 0x9E3779B97F4A7C15ull)) + 0x9E3779B97F4A7C15ull;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z = (z ^ (z >> 31)) >> 48;
      for (int64_t l = 0; l < L; ++l) v[l] += noise * a.normal[z[l]];
      std::memcpy(y + j, &v, sizeof v);
    }
    close |= (v > near) | (v < -near);
  }
  bool any_close = false;
  for (int64_t l = 0; l < L; ++l) any_close |= close[l] != 0;
  for (; j < n; ++j) {
    if (noisy) {
      const uint64_t i = base + static_cast<uint64_t>(index ? index[j] : j);
      y[j] += noise * a.normal[normal_index(a.key, i)];
    }
    any_close |= y[j] > near || y[j] < -near;
  }
  if (!any_close) return false;
  bool saturated = false;
  for (int64_t k = 0; k < n; ++k) saturated |= adc_saturates<S>(y[k], a.out_bound, a.out_step);
  return saturated;
}

// One panel of patches through the periphery: rows r in [0, rows) with inputs in[r * ld ..
// + In), patch numbers m[r]; `product(q, count, y)` multiplies `count` rows (a multiple of kMR)
// of quantized inputs q (row stride ld) into y (row stride ldy); `emit(r, y_row, scale)`
// writes row r's outputs (y_row[0..Out) through the ADC, times scale). Rows with an all-zero
// input (noise management) emit nothing: the caller has zeroed their outputs. A row with a NaN
// input outputs NaN (its scale is NaN under noise management; its products otherwise).
template <typename S, typename Product, typename Emit, typename Zero>
inline void periphery_panel(const AnalogConv<S>& a, const S* in, int64_t ld, int64_t In,
    int64_t rows, const int64_t* m, int64_t Out, int64_t ldy, const int64_t* index, S* q, S* y,
    Product product, Emit emit, Zero zero) {
  int64_t act[kFusedRows];
  S scale[kFusedRows], reduction[kFusedRows];
  int64_t active = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const S s = a.noise_management ? absmax_of(in + r * ld, In) : S(1);
    if (s == S(0)) {  // (a NaN scale goes on: the row's outputs are NaN)
      zero(r);
      continue;
    }
    scale[r] = s;
    reduction[r] = S(1);
    act[active++] = r;
  }
  for (uint64_t pass = 0; active > 0; ++pass) {
    for (int64_t j = 0; j < active; ++j) {
      const int64_t r = act[j];
      const S inv = S(1) / (scale[r] * reduction[r]);
      dac_row<S>(in + r * ld, In, ld, inv, a.inp_bound, a.inp_step, q + j * ld);
    }
    const int64_t padded = (active + kMR - 1) / kMR * kMR;
    for (int64_t j = active; j < padded; ++j)
      for (int64_t k = 0; k < ld; ++k) q[j * ld + k] = S(0);
    product(q, padded, y);
    int64_t again = 0;
    for (int64_t j = 0; j < active; ++j) {
      const int64_t r = act[j];
      S* yr = y + j * ldy;
      const uint64_t base = (pass * static_cast<uint64_t>(a.M) + static_cast<uint64_t>(m[r]))
          * static_cast<uint64_t>(Out);
      const bool saturated = noise_and_test(a, yr, Out, base, index);
      if (a.bound_management && saturated && bm_repeats<S>(reduction[r], a.max_bm_factor)) {
        reduction[r] *= S(2);
        act[again++] = r;
      } else {
        emit(r, yr, scale[r] * reduction[r]);
      }
    }
    active = again;
  }
}

template <typename S>
bool analog_forward_images(const AnalogConv<S>& a, int64_t n0, int64_t n1, S* scratch,
    int64_t* index, int64_t* bad_value) {
  const int64_t NP = a.Ho * a.Wo, O = a.O, K = a.K, Kpad = a.Kpad, Opad = a.Opad;
  const int64_t run = a.kw * a.C, row_step = a.Wp * a.C, B = fused_unit_images(a.T, NP);
  int64_t* end = index;
  int64_t* order = end + a.T + 1;
  int64_t* out_at = order + kUnitImages * NP;
  int64_t* in_at = out_at + kUnitImages * NP;
  S* raw = scratch;                           // kFusedRows x Kpad: the patches
  S* q = raw + kFusedRows * Kpad;             // (kFusedRows + kMR) x Kpad: their DAC values
  S* y = q + (kFusedRows + kMR) * Kpad;       // (kFusedRows + kMR) x Opad: the products
  S* unit_x = y + (kFusedRows + kMR) * Opad;  // the unit's input, (Hp, Wp, C) per image
  for (int64_t u = n0; u < n1; u += B) {
    const int64_t units = imin(B, n1 - u);
    if (!sort_unit<S>(a, a.assignment + u * NP, units, end, order, out_at, in_at, bad_value))
      return false;
    load_unit<S>(a, u, units, unit_x);
    for (int64_t p = u * NP; p < (u + units) * NP; ++p)
      if (a.assignment[p] < 0)
        for (int64_t o = 0; o < O; ++o) a.out[p * O + o] = S(0);
    for (int64_t t = 0; t < a.T; ++t) {
      const S* kernel = a.kernels_ko + t * K * Opad;
      const S alpha = a.out_scale[t];
      const S* bias = a.bias ? a.bias + t * O : nullptr;
      for (int64_t g = tile_begin(end, t); g < end[t]; g += kFusedRows) {
        const int64_t rows = imin(kFusedRows, end[t] - g);
        int64_t m[kFusedRows];
        for (int64_t r = 0; r < rows; ++r) {
          m[r] = u * NP + order[g + r];
          for (int64_t ky = 0; ky < a.kh; ++ky) {
            const S* src = unit_x + in_at[g + r] + ky * row_step;
            S* dst = raw + r * Kpad + ky * run;
            for (int64_t k = 0; k < run; ++k) dst[k] = src[k];
          }
        }
        periphery_panel<S>(a, raw, Kpad, K, rows, m, O, Opad, nullptr, q, y,
            [&](const S* panel, int64_t count, S* dst) {
              panel_product<S>(panel, count, Kpad, K, kernel, Opad, dst);
            },
            [&](int64_t r, const S* yr, S s) {
              S* dst = a.out + m[r] * O;
              for (int64_t o = 0; o < O; ++o) {
                const S v = quantize_clip<S>(yr[o], a.out_bound, a.out_step) * s * alpha;
                dst[o] = bias ? v + bias[o] : v;
              }
            },
            [&](int64_t r) {
              for (int64_t o = 0; o < O; ++o) a.out[m[r] * O + o] = bias ? bias[o] : S(0);
            });
      }
    }
  }
  return true;
}

template <typename S>
bool analog_backward_images(const AnalogConv<S>& a, int64_t n0, int64_t n1, S* scratch,
    int64_t* index, int64_t* bad_value) {
  const int64_t NP = a.Ho * a.Wo, O = a.O, K = a.K, Kpad = a.Kpad, Opad = a.Opad;
  const int64_t run = a.kw * a.C, row_step = a.Wp * a.C, B = fused_unit_images(a.T, NP);
  const int64_t unit_image = a.Hp * a.Wp * a.C;
  int64_t* end = index;
  int64_t* order = end + a.T + 1;
  int64_t* out_at = order + kUnitImages * NP;
  int64_t* in_at = out_at + kUnitImages * NP;
  S* G = scratch;                              // kFusedRows x Opad: output gradients
  S* q = G + kFusedRows * Opad;                // (kFusedRows + kMR) x Opad: their DAC values
  S* y = q + (kFusedRows + kMR) * Opad;        // (kFusedRows + kMR) x Kpad: the products
  S* unit_g = y + (kFusedRows + kMR) * Kpad;   // the unit's input gradient, (Hp, Wp, C)
  for (int64_t u = n0; u < n1; u += B) {
    const int64_t units = imin(B, n1 - u);
    if (!sort_unit<S>(a, a.assignment + u * NP, units, end, order, out_at, in_at, bad_value))
      return false;
    std::memset(unit_g, 0, units * unit_image * sizeof(S));
    for (int64_t t = 0; t < a.T; ++t) {
      const S* kernel = a.kernels_ok + t * O * Kpad;
      const S alpha = a.out_scale[t];
      for (int64_t g = tile_begin(end, t); g < end[t]; g += kFusedRows) {
        const int64_t rows = imin(kFusedRows, end[t] - g);
        const int64_t* pad = in_at + g;
        int64_t m[kFusedRows];
        for (int64_t r = 0; r < rows; ++r) {
          m[r] = u * NP + order[g + r];
          for (int64_t o = 0; o < O; ++o) G[r * Opad + o] = a.grad_out[m[r] * O + o] * alpha;
        }
        periphery_panel<S>(a, G, Opad, O, rows, m, K, Kpad, a.unfold_index, q, y,
            [&](const S* panel, int64_t count, S* dst) {
              panel_product<S>(panel, count, Opad, O, kernel, Kpad, dst);
            },
            [&](int64_t r, const S* yr, S s) {  // col2im: whole kernel rows into the padded unit
              for (int64_t ky = 0; ky < a.kh; ++ky) {
                S* dst = unit_g + pad[r] + ky * row_step;
                const S* src = yr + ky * run;
                for (int64_t k = 0; k < run; ++k)
                  dst[k] += quantize_clip<S>(src[k], a.out_bound, a.out_step) * s;
              }
            },
            [](int64_t) {});
      }
    }
    store_unit_gradient<S>(a, u, units, unit_g);
  }
  return true;
}

}  // namespace

RAPA_DEFINE_KERNEL(analog_forward, analog_forward_images, AnalogConv)
RAPA_DEFINE_KERNEL(analog_backward, analog_backward_images, AnalogConv)

}  // namespace rapa
