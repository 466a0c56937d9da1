// CPU kernel of rapa::hic_update: the hybrid in-memory computing update of one layer's arrays
// (rapa/analog/hic.py, HICArrays.apply_update with statistical programming), in one pass over
// the weights and one over those that transfer, instead of some two hundred small tensor ops.
//
// Every value is computed by the same IEEE operations, in the same order and dtype, as the
// Python reference (HICArrays with native_update off), and every random number comes from the
// same ATen draws in the same order (torch.rand for the stochastic rounding, over all weights;
// torch.rand for switching attempts where a probability is below 1; torch.randn for the
// programming noise of the binary cells, then of the pairs, over the weights that transfer), so
// the two give the same bits: test_hic.py holds them to it. This file is compiled without
// floating-point contraction (CMakeLists.txt), as torch's separate elementwise kernels are.
#include <ATen/ATen.h>
#include <c10/util/generic_math.h>
#include <torch/library.h>

#include <cmath>
#include <memory>
#include <vector>

#include "checks.h"

namespace rapa {
namespace {

// torch.clamp(v, lo, hi): NaN stays NaN.
template <typename S>
S clamp(S v, S lo, S hi) {
  return v != v ? v : (v < lo ? lo : (v > hi ? hi : v));
}

template <typename S>
S clamp_min(S v, S lo) {
  return v != v ? v : (v < lo ? lo : v);
}

// std::trunc and std::floor by a conversion to integer where it is exact (|v| < 2^52), a libm
// call elsewhere: the baseline instruction set has no rounding instruction to inline. A zero
// may come out +0 where libm gives -0; the accumulator's values and transfers are the same.
template <typename D>
D trunc_of(D v) {
  if (!(std::fabs(v) < D(4503599627370496.0))) return std::trunc(v);
  return static_cast<D>(static_cast<int64_t>(v));
}

template <typename D>
D floor_of(D v) {
  if (!(std::fabs(v) < D(4503599627370496.0))) return std::floor(v);
  const D t = static_cast<D>(static_cast<int64_t>(v));
  return t > v ? t - D(1) : t;
}

struct HICUpdateConfig {
  std::vector<int64_t> weights;  // bit weights of the binary cells
  int64_t levels;                // L
  int64_t accumulator_bits, accumulator_frac_bits;
  bool stochastic_rounding;
  double set_probability, reset_probability;
  double g_max, prog_noise_scale, prog_coeff_g_max_reference;
  std::vector<double> prog_coeff;  // c0, c1, c2
};

// PCMLikeNoiseModel.program for targets `target` (count values, S): the conductances written
// into out (those with keep[j] false keep their value), drawing randn(count) from `gen`.
template <typename S>
void program(const S* target, const bool* keep, int64_t count, const HICUpdateConfig& c,
    const std::optional<at::Generator>& gen, at::ScalarType dtype, S* out) {
  const at::Tensor xi = at::randn({count}, gen, at::TensorOptions().dtype(dtype));
  const S* z = xi.data_ptr<S>();
  const S g_max = static_cast<S>(c.g_max), scale = static_cast<S>(c.prog_noise_scale);
  const S c0 = static_cast<S>(c.prog_coeff[0]), c1 = static_cast<S>(c.prog_coeff[1]);
  const S c2 = static_cast<S>(c.prog_coeff[2]);
  const S ratio = static_cast<S>(c.g_max / c.prog_coeff_g_max_reference);
  for (int64_t j = 0; j < count; ++j) {
    if (!keep[j]) continue;
    const S x = target[j] / g_max;
    const S sigma = ((c0 + c1 * x) + (c2 * x) * x) * ratio;  // prog_sigma
    out[j] = clamp_min<S>(target[j] + (scale * sigma) * z[j], S(0));
  }
}

// HICArrays._attempts: the attempts of each switching cell (1, plus geometric extra ones when
// p < 1), added to counts[j] for the cells with switch[j].
template <typename S>
void add_attempts(const std::vector<bool>& switched, double p,
    const std::optional<at::Generator>& gen, at::ScalarType dtype, std::vector<S*>& counts) {
  const int64_t n = static_cast<int64_t>(switched.size());
  bool any = false;
  for (bool s : switched) any |= s;
  if (p < 1 && any) {
    at::Tensor u = at::rand({n}, gen, at::TensorOptions().dtype(at::kDouble)).clamp_min(1e-300);
    const at::Tensor extra = at::floor(at::log(u) / std::log1p(-p)).to(dtype);
    const S* e = extra.data_ptr<S>();
    for (int64_t j = 0; j < n; ++j)
      if (switched[j]) *counts[j] += S(1) + e[j];
    return;
  }
  for (int64_t j = 0; j < n; ++j)
    if (switched[j]) *counts[j] += S(1);
}

// S: the devices' and counts' dtype; D: the accumulator's arithmetic (float64 past 24 bits).
template <typename S, typename D>
int64_t hic_update_impl(at::Tensor& weight, at::Tensor& accumulator, at::Tensor& bits,
    at::Tensor& g_binary, at::Tensor& levels, at::Tensor& g_pair, at::Tensor& set_count,
    at::Tensor& reset_count, at::Tensor& saturations, const at::Tensor& grad,
    const at::Tensor& out_scale, double lr, const HICUpdateConfig& c,
    const std::optional<at::Generator>& gen) {
  const int64_t T = out_scale.size(0), N = accumulator.numel(), per_array = N / T;
  const int64_t nb = static_cast<int64_t>(c.weights.size());
  int64_t cap = 1;
  for (int64_t w : c.weights) cap += w;
  const int64_t top_level = c.levels - 1, span = top_level * cap;
  const double res = std::ldexp(1.0, -static_cast<int>(c.accumulator_frac_bits));
  const double top = (std::ldexp(1.0, static_cast<int>(c.accumulator_bits - 1)) - 1) * res;
  const at::ScalarType d_type = c10::CppTypeToScalarType<D>::value;
  const at::ScalarType s_type = c10::CppTypeToScalarType<S>::value;

  // The accumulator: steps = dL/dw * (-lr span / res) / alpha^2, rounded onto the grid, added
  // with saturation; whole LSBs leave it.
  const at::Tensor g = grad.to(d_type).contiguous();
  const at::Tensor a2 = out_scale.to(d_type).square().contiguous();
  at::Tensor u;
  if (c.stochastic_rounding) u = at::rand({N}, gen, at::TensorOptions().dtype(d_type));
  const D* gp = g.data_ptr<D>();
  const D* ap = a2.data_ptr<D>();
  const D* up = c.stochastic_rounding ? u.data_ptr<D>() : nullptr;
  S* acc = accumulator.data_ptr<S>();
  const D rate = static_cast<D>(-lr * static_cast<double>(span) / res);
  const D grid = static_cast<D>(res), bound = static_cast<D>(top);
  std::vector<int64_t> index;
  std::vector<D> whole;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = t * per_array; e < (t + 1) * per_array; ++e) {
      D steps = gp[e] * rate / ap[t];
      steps = up ? floor_of(steps + up[e]) : std::nearbyint(steps);
      const D sum = clamp<D>(static_cast<D>(acc[e]) + steps * grid, -bound, bound);
      const D w = trunc_of(sum);
      acc[e] = static_cast<S>(sum - w);
      if (w != 0) {
        index.push_back(e);
        whole.push_back(w);
      }
    }
  const int64_t R = static_cast<int64_t>(index.size());
  if (R == 0) return 0;

  // value(index) + whole, held within v's range (saturations counted per array).
  S* bp = bits.data_ptr<S>();
  S* gb = g_binary.data_ptr<S>();
  S* lp = levels.data_ptr<S>();
  S* gq = g_pair.data_ptr<S>();
  S* sc = set_count.data_ptr<S>();
  S* rc = reset_count.data_ptr<S>();
  S* sat = saturations.data_ptr<S>();
  std::vector<S> v(R);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t e = index[r];
    S held = S(0);
    for (int64_t i = 0; i < nb; ++i) held += bp[i * N + e] * static_cast<S>(c.weights[i]);
    held = held + static_cast<S>(cap) * (lp[e] - lp[N + e]);
    const S wanted = held + static_cast<S>(whole[r]);
    v[r] = clamp<S>(wanted, static_cast<S>(-span), static_cast<S>(span + cap - 1));
    if (v[r] != wanted) sat[e / per_array] += S(1);
  }

  // The binary cells: B = v - U M, greedily from the largest bit weight; the cells that change
  // are SET or RESET (counted by attempts) and programmed.
  std::vector<S> m(R);
  if (nb > 0) {
    std::vector<S> new_bits(nb * R);
    std::vector<bool> up_switch(nb * R), down_switch(nb * R);
    std::vector<S*> set_at(nb * R), reset_at(nb * R);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t e = index[r];
      m[r] = c10::div_floor_floating(v[r], static_cast<S>(cap));
      S rest = v[r] - m[r] * static_cast<S>(cap);
      for (int64_t i = nb - 1; i >= 0; --i) {
        const S w = static_cast<S>(c.weights[i]);
        const bool on = rest >= w;
        new_bits[i * R + r] = on ? S(1) : S(0);
        rest = on ? rest - w : rest;
      }
      for (int64_t i = 0; i < nb; ++i) {
        const S old = bp[i * N + e], now = new_bits[i * R + r];
        up_switch[i * R + r] = now > old;
        down_switch[i * R + r] = now < old;
        set_at[i * R + r] = sc + i * N + e;
        reset_at[i * R + r] = rc + i * N + e;
      }
    }
    add_attempts<S>(up_switch, c.set_probability, gen, s_type, set_at);
    add_attempts<S>(down_switch, c.reset_probability, gen, s_type, reset_at);
    std::vector<S> target(nb * R), programmed(nb * R);
    std::unique_ptr<bool[]> changed(new bool[nb * R]);
    for (int64_t j = 0; j < nb * R; ++j) {
      target[j] = new_bits[j] * static_cast<S>(c.g_max);
      changed[j] = up_switch[j] || down_switch[j];
    }
    program<S>(target.data(), changed.get(), nb * R, c, gen, s_type, programmed.data());
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t r = 0; r < R; ++r) {
        const int64_t j = i * R + r, e = index[r];
        if (changed[j]) gb[i * N + e] = programmed[j];
        bp[i * N + e] = new_bits[j];
      }
  } else {
    for (int64_t r = 0; r < R; ++r) m[r] = c10::div_floor_floating(v[r], static_cast<S>(cap));
  }

  // The pair: a SET-only move to M, or a refresh where a device would pass its top level.
  std::vector<S> fresh(2 * R), target(2 * R), programmed(2 * R);
  std::unique_ptr<bool[]> moved(new bool[2 * R]);
  const S top_s = static_cast<S>(top_level);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t e = index[r];
    const S plus = lp[e], minus = lp[N + e], old = plus - minus;
    S next_plus = plus + clamp_min<S>(m[r] - old, S(0));
    S next_minus = minus + clamp_min<S>(old - m[r], S(0));
    const bool refresh = next_plus > top_s || next_minus > top_s;
    if (refresh) {
      next_plus = clamp_min<S>(m[r], S(0));
      next_minus = clamp_min<S>(-m[r], S(0));
    }
    fresh[r] = next_plus;
    fresh[R + r] = next_minus;
    moved[r] = refresh || next_plus != plus;
    moved[R + r] = refresh || next_minus != minus;
    for (int64_t k = 0; k < 2; ++k) {
      const S now = fresh[k * R + r];
      rc[(nb + k) * N + e] += refresh ? S(1) : S(0);
      sc[(nb + k) * N + e] += (moved[k * R + r] && now > S(0)) ? S(1) : S(0);
      target[k * R + r] = now * static_cast<S>(c.g_max) / top_s;
    }
  }
  program<S>(target.data(), moved.get(), 2 * R, c, gen, s_type, programmed.data());
  for (int64_t k = 0; k < 2; ++k)
    for (int64_t r = 0; r < R; ++r) {
      const int64_t e = index[r];
      if (moved[k * R + r]) gq[k * N + e] = programmed[k * R + r];
      lp[k * N + e] = fresh[k * R + r];
    }

  // The weight reads its devices: w = (sum_i b_i g_i / g_max + U (L - 1) (g+ - g-) / g_max) /
  // ((L - 1) U), in float64.
  S* wp = weight.data_ptr<S>();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t e = index[r];
    double binary = 0.0;
    for (int64_t i = 0; i < nb; ++i) {
      const double term = static_cast<double>(gb[i * N + e]) * static_cast<double>(c.weights[i]);
      binary = i == 0 ? term : binary + term;
    }
    if (nb > 0) binary = binary / c.g_max;
    const double pair = static_cast<double>(cap * top_level) *
        (static_cast<double>(gq[e]) - static_cast<double>(gq[N + e])) / c.g_max;
    wp[e] = static_cast<S>((binary + pair) / static_cast<double>(span));
  }
  return R;
}

int64_t hic_update_cpu(at::Tensor& weight, at::Tensor& accumulator, at::Tensor& bits,
    at::Tensor& g_binary, at::Tensor& levels, at::Tensor& g_pair, at::Tensor& set_count,
    at::Tensor& reset_count, at::Tensor& saturations, const at::Tensor& grad,
    const at::Tensor& out_scale, double lr, at::IntArrayRef bit_weights, int64_t levels_count,
    int64_t accumulator_bits, int64_t accumulator_frac_bits, bool stochastic_rounding,
    double set_probability, double reset_probability, double g_max, double prog_noise_scale,
    at::ArrayRef<double> prog_coeff, double prog_coeff_g_max_reference,
    const std::optional<at::Generator>& generator) {
  check_floating(accumulator, "accumulator");
  const int64_t N = accumulator.numel(), nb = static_cast<int64_t>(bit_weights.size());
  const auto dtype = accumulator.scalar_type();
  struct Expect { at::Tensor* t; const char* name; int64_t rows; };
  for (const Expect& x : {Expect{&weight, "weight", 1}, Expect{&bits, "bits", nb},
           Expect{&g_binary, "g_binary", nb}, Expect{&levels, "levels", 2},
           Expect{&g_pair, "g_pair", 2}, Expect{&set_count, "set_count", nb + 2},
           Expect{&reset_count, "reset_count", nb + 2}}) {
    TORCH_CHECK(x.t->scalar_type() == dtype && x.t->is_contiguous() && x.t->numel() == x.rows * N,
        "rapa: argument '", x.name, "' must be a contiguous ", dtype, " tensor of ", x.rows,
        " x ", N, " values, got ", x.t->scalar_type(), " ", x.t->sizes());
  }
  TORCH_CHECK(accumulator.is_contiguous(), "rapa: argument 'accumulator' must be contiguous");
  TORCH_CHECK(grad.numel() == N && grad.is_floating_point(), "rapa: argument 'grad' must hold ",
      N, " floating-point values, got ", grad.scalar_type(), " ", grad.sizes());
  TORCH_CHECK(out_scale.dim() == 1 && out_scale.size(0) >= 1 && N % out_scale.size(0) == 0,
      "rapa: argument 'out_scale' must be (T,) with T dividing ", N, ", got ", out_scale.sizes());
  TORCH_CHECK(saturations.scalar_type() == dtype && saturations.is_contiguous() &&
      saturations.numel() == out_scale.size(0), "rapa: argument 'saturations' must be a "
      "contiguous ", dtype, " (T,) tensor, got ", saturations.sizes());
  for (int64_t w : bit_weights)
    TORCH_CHECK(w >= 1 && w <= (1 << 20), "rapa: argument 'bit_weights' must be in [1, 2^20], "
        "got ", w);
  TORCH_CHECK(levels_count <= 1024, "rapa: argument 'levels' must be <= 1024, got ",
      levels_count);
  TORCH_CHECK(set_probability >= 0.01 && set_probability <= 1 && reset_probability >= 0.01 &&
      reset_probability <= 1, "rapa: set_probability and reset_probability must be in "
      "[0.01, 1], got ", set_probability, " and ", reset_probability);
  TORCH_CHECK(g_max > 0 && std::isfinite(g_max) && prog_coeff_g_max_reference > 0 &&
      std::isfinite(prog_coeff_g_max_reference) && prog_noise_scale >= 0 &&
      std::isfinite(prog_noise_scale), "rapa: g_max and prog_coeff_g_max_reference must be "
      "> 0 and prog_noise_scale >= 0, all finite");
  TORCH_CHECK(levels_count >= 2, "rapa: argument 'levels' must be >= 2, got ", levels_count);
  TORCH_CHECK(accumulator_frac_bits >= 0 && accumulator_bits > accumulator_frac_bits &&
      accumulator_bits <= 52, "rapa: accumulator_bits ", accumulator_bits, " and "
      "accumulator_frac_bits ", accumulator_frac_bits, " are out of range");
  TORCH_CHECK(prog_coeff.size() == 3, "rapa: argument 'prog_coeff' must hold 3 values");
  const HICUpdateConfig c{std::vector<int64_t>(bit_weights.begin(), bit_weights.end()),
      levels_count, accumulator_bits, accumulator_frac_bits, stochastic_rounding,
      set_probability, reset_probability, g_max, prog_noise_scale, prog_coeff_g_max_reference,
      std::vector<double>(prog_coeff.begin(), prog_coeff.end())};
  // HICArrays.apply_update's arithmetic dtype: float64 past 24 accumulator bits, else grad's.
  const bool wide = accumulator_bits > 24 || grad.scalar_type() == at::kDouble;
  int64_t transferred = 0;
  AT_DISPATCH_FLOATING_TYPES(dtype, "hic_update_cpu", [&] {
    transferred = wide
        ? hic_update_impl<scalar_t, double>(weight, accumulator, bits, g_binary, levels, g_pair,
              set_count, reset_count, saturations, grad, out_scale, lr, c, generator)
        : hic_update_impl<scalar_t, float>(weight, accumulator, bits, g_binary, levels, g_pair,
              set_count, reset_count, saturations, grad, out_scale, lr, c, generator);
  });
  return transferred;
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("hic_update", &hic_update_cpu);
}

}  // namespace rapa
