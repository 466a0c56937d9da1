// CPU kernels of rapa::rpu_update (rpu_update.h holds the model): the pulse trains of every row,
// then each weight row (array t, output i) on one thread walks its array's rows in order.
// The x trains that fire at all are packed per row first, so that the walk skips silent inputs,
// as most are once update management scales the probabilities.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <vector>

#include "row_absmax_cpu.h"
#include "rpu_update.h"

namespace rapa {
namespace {

struct CpuUpdateKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return cpu_row_absmax(x); }

  static void pulses(const at::Tensor& x, const at::Tensor& d, const at::Tensor& xmax,
      const at::Tensor& dmax, const at::Tensor& seed, const UpdateSettings& u, at::Tensor& bx,
      at::Tensor& bd) {
    RECORD_FUNCTION("rapa::rpu_update::pulses", std::vector<c10::IValue>());
    const int64_t M = x.size(0), K = x.size(1), O = d.size(1);
    const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
    const uint64_t key_x = mix_seed(s, kStreamPulseX), key_d = mix_seed(s, kStreamPulseD);
    const double* xm = xmax.data_ptr<double>();
    const double* dm = dmax.data_ptr<double>();
    uint64_t* px = reinterpret_cast<uint64_t*>(bx.data_ptr<int64_t>());
    uint64_t* pd = reinterpret_cast<uint64_t*>(bd.data_ptr<int64_t>());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rpu_pulses", [&] {
      const scalar_t* xv = x.data_ptr<scalar_t>();
      const scalar_t* dv = d.data_ptr<scalar_t>();
      at::parallel_for(0, M, 8, [&](int64_t b, int64_t e) {
        for (int64_t m = b; m < e; ++m) {
          const RowPulses p = row_pulses(xm[m], dm[m], u);
          uint64_t any = 0;
          for (int64_t i = 0; i < O; ++i)
            any |= pd[m * O + i] = pulse_train(dv[m * O + i], p.b, p.bl, key_d, m * O + i);
          // No d fires: x's trains could meet nothing (the same result, less work). The row of
          // bx stays unwritten; apply() checks the d trains of a row before reading its x trains.
          if (!any) continue;
          for (int64_t j = 0; j < K; ++j)
            px[m * K + j] = pulse_train(xv[m * K + j], p.a, p.bl, key_x, m * K + j);
        }
      });
    });
  }

  static void apply(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
      const at::Tensor& bx, const at::Tensor& bd, const at::Tensor& order,
      const at::Tensor& offsets, const at::Tensor& dw_up, const at::Tensor& dw_down,
      const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed,
      const UpdateSettings& u) {
    RECORD_FUNCTION("rapa::rpu_update::apply", std::vector<c10::IValue>());
    const int64_t M = x.size(0), K = x.size(1), O = d.size(1), T = weight.size(0);
    const uint64_t* px = reinterpret_cast<const uint64_t*>(bx.data_ptr<int64_t>());
    const uint64_t* pd = reinterpret_cast<const uint64_t*>(bd.data_ptr<int64_t>());
    const int64_t* ord = order.data_ptr<int64_t>();
    const int64_t* off = offsets.data_ptr<int64_t>();
    const uint64_t key = mix_seed(static_cast<uint64_t>(seed.item<int64_t>()), kStreamStepNoise);
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "rpu_apply", [&] {
      const scalar_t* xv = x.data_ptr<scalar_t>();
      const scalar_t* dv = d.data_ptr<scalar_t>();
      // The inputs of each row that fire at all: index (negative-coded when x < 0) and bits.
      std::vector<int32_t> fired_j(M * K);
      std::vector<uint64_t> fired_bits(M * K);
      std::vector<int64_t> fired_n(M);
      at::parallel_for(0, M, 16, [&](int64_t b, int64_t e) {
        for (int64_t m = b; m < e; ++m) {
          int64_t n = 0;
          fired_n[m] = 0;
          bool any_d = false;
          for (int64_t i = 0; i < O; ++i) any_d |= pd[m * O + i] != 0;
          if (!any_d) continue;
          for (int64_t j = 0; j < K; ++j) {
            const uint64_t bits = px[m * K + j];
            if (!bits) continue;
            fired_j[m * K + n] = xv[m * K + j] < 0 ? static_cast<int32_t>(~j) : static_cast<int32_t>(j);
            fired_bits[m * K + n++] = bits;
          }
          fired_n[m] = n;
        }
      });
      const at::Tensor table = normal_table(weight.scalar_type(), weight.device());
      const scalar_t* z = table.data_ptr<scalar_t>();
      scalar_t* w = weight.data_ptr<scalar_t>();
      const scalar_t* up = dw_up.data_ptr<scalar_t>();
      const scalar_t* down = dw_down.data_ptr<scalar_t>();
      const scalar_t* lo = w_min.data_ptr<scalar_t>();
      const scalar_t* hi = w_max.data_ptr<scalar_t>();
      const scalar_t std_ = u.dw_min_std;
      at::parallel_for(0, T * O, 1, [&](int64_t b, int64_t e) {
        for (int64_t ti = b; ti < e; ++ti) {
          const int64_t t = ti / O, i = ti % O, base = ti * K;
          for (int64_t r = off[t]; r < off[t + 1]; ++r) {
            const int64_t m = ord[r];
            const uint64_t dbits = pd[m * O + i];
            if (!dbits) continue;
            const bool d_negative = dv[m * O + i] < 0;
            const int32_t* js = fired_j.data() + m * K;
            const uint64_t* xbits = fired_bits.data() + m * K;
            for (int64_t q = 0; q < fired_n[m]; ++q) {
              const uint64_t c = xbits[q] & dbits;
              if (!c) continue;
              const bool x_negative = js[q] < 0;
              const int64_t j = x_negative ? ~js[q] : js[q];
              const int64_t at = base + j;
              const scalar_t noise = std_ > 0
                  ? normal_draw(z, key, static_cast<uint64_t>((m * O + i) * K + j)) : scalar_t(0);
              w[at] = pulsed_step<scalar_t>(w[at], __builtin_popcountll(c),
                  x_negative != d_negative, up[at], down[at], lo[at], hi[at], std_, noise);
            }
          }
        }
      });
    });
  }
};

void rpu_update_cpu(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
    const at::Tensor& tile, const at::Tensor& dw_up, const at::Tensor& dw_down,
    const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed, double lr,
    double dw_min, double dw_min_std, int64_t desired_bl, bool update_management,
    bool bl_management) {
  const UpdateSettings u{lr, dw_min, dw_min_std, desired_bl, update_management, bl_management};
  rpu_update_driver<CpuUpdateKernels>(weight, x, d, tile, dw_up, dw_down, w_min, w_max, seed, u);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("rpu_update", &rpu_update_cpu);
}

}  // namespace rapa
