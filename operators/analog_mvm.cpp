// CPU kernels of rapa::analog_mvm: the elementwise steps around the array's products
// (analog_mvm.h), each one pass over its rows, rows split over threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "analog_mvm.h"
#include "row_absmax_cpu.h"

namespace rapa {
namespace {

struct CpuAnalogKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return cpu_row_absmax(x); }

  static at::Tensor prepare(const at::Tensor& x, const at::Tensor& order, const at::Tensor& scale,
      const AnalogIO& io) {
    RECORD_FUNCTION("rapa::analog_mvm::prepare", std::vector<c10::IValue>());
    const int64_t R = order.numel(), In = x.size(1);
    at::Tensor out = at::empty({R, In}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "analog_prepare", [&] {
      const scalar_t* src = x.data_ptr<scalar_t>();
      const scalar_t* s = scale.data_ptr<scalar_t>();
      const int64_t* row = order.data_ptr<int64_t>();
      scalar_t* dst = out.data_ptr<scalar_t>();
      const scalar_t bound = io.inp_bound, step = io.inp_step;
      at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          scalar_t* q = dst + r * In;
          if (row[r] < 0) {
            std::fill(q, q + In, scalar_t(0));
            continue;
          }
          const scalar_t* xr = src + row[r] * In;
          const scalar_t inv = scalar_t(1) / s[row[r]];
          for (int64_t k = 0; k < In; ++k) q[k] = quantize_clip<scalar_t>(xr[k] * inv, bound, step);
        }
      });
    });
    return out;
  }

  static at::Tensor add_noise_and_test(at::Tensor& y, const at::Tensor& order,
      const at::Tensor& seed, int64_t M, const AnalogIO& io) {
    RECORD_FUNCTION("rapa::analog_mvm::noise", std::vector<c10::IValue>());
    const int64_t R = y.size(0), Out = y.size(1);
    at::Tensor saturated = at::zeros({R}, y.options().dtype(at::kBool));
    const uint64_t key = mix_seed(static_cast<uint64_t>(seed.item<int64_t>()), kStreamOutNoise);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_noise", [&] {
      const at::Tensor table = normal_table(y.scalar_type(), y.device());
      const scalar_t* z = table.data_ptr<scalar_t>();
      scalar_t* v = y.data_ptr<scalar_t>();
      const int64_t* row = order.data_ptr<int64_t>();
      bool* sat = saturated.data_ptr<bool>();
      const scalar_t noise = io.out_noise, bound = io.out_bound, step = io.out_step;
      at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          if (row[r] < 0) continue;
          sat[r] = add_noise_row<scalar_t>(v + r * Out, Out, z, key,
              static_cast<uint64_t>(row[r]) * Out, noise, bound, step);
        }
      });
    });
    return saturated;
  }

  static void write_out(const at::Tensor& yr, const at::Tensor& order, const at::Tensor& scale,
      const at::Tensor& redo, const AnalogIO& io, at::Tensor& y) {
    RECORD_FUNCTION("rapa::analog_mvm::write_out", std::vector<c10::IValue>());
    const int64_t R = yr.size(0), Out = yr.size(1);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_write_out", [&] {
      const scalar_t* src = yr.data_ptr<scalar_t>();
      const scalar_t* s = scale.data_ptr<scalar_t>();
      const int64_t* row = order.data_ptr<int64_t>();
      const bool* skip = redo.data_ptr<bool>();
      scalar_t* dst = y.data_ptr<scalar_t>();
      const scalar_t bound = io.out_bound, step = io.out_step;
      at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          if (row[r] < 0 || skip[r]) continue;
          scalar_t* out = dst + row[r] * Out;
          for (int64_t o = 0; o < Out; ++o)
            out[o] = quantize_clip<scalar_t>(src[r * Out + o], bound, step) * s[row[r]];
        }
      });
    });
  }

  // Each repeated row on its own, its passes in order: the input halved, its product (sums in
  // input order), noise and the saturation test, until it stops.
  static void redo(const at::Tensor& x, const at::Tensor& w, const at::Tensor& order,
      const at::Tensor& scale, const at::Tensor& redo, int64_t cap, const at::Tensor& seed,
      bool transposed, const AnalogIO& io, at::Tensor& y) {
    RECORD_FUNCTION("rapa::analog_mvm::redo", std::vector<c10::IValue>());
    const at::Tensor rows = at::nonzero(redo).squeeze(1);  // the host's own memory: no wait
    const int64_t n = rows.numel(), M = x.size(0), In = x.size(1), Out = y.size(1);
    const int64_t O = w.size(1), K = w.size(2);
    if (n == 0) return;
    const uint64_t key = mix_seed(static_cast<uint64_t>(seed.item<int64_t>()), kStreamOutNoise);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_redo", [&] {
      const at::Tensor table = normal_table(y.scalar_type(), y.device());
      const scalar_t* z = table.data_ptr<scalar_t>();
      const scalar_t* xv = x.data_ptr<scalar_t>();
      const scalar_t* wv = w.data_ptr<scalar_t>();
      const scalar_t* s = scale.data_ptr<scalar_t>();
      const int64_t* row = order.data_ptr<int64_t>();
      const int64_t* redone = rows.data_ptr<int64_t>();
      scalar_t* dst = y.data_ptr<scalar_t>();
      at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
        std::vector<scalar_t> q(In);
        for (int64_t i = b; i < e; ++i) {
          const int64_t r = redone[i], m = row[r];
          const scalar_t* xr = xv + m * In;
          const scalar_t* wt = wv + (r / cap) * O * K;
          scalar_t* out = dst + m * Out;
          scalar_t reduction = 1;
          for (int64_t pass = 1;; ++pass) {
            reduction *= 2;
            const scalar_t sr = s[m] * reduction, inv = scalar_t(1) / sr;
            for (int64_t k = 0; k < In; ++k)
              q[k] = quantize_clip<scalar_t>(xr[k] * inv, scalar_t(io.inp_bound),
                                             scalar_t(io.inp_step));
            for (int64_t o = 0; o < Out; ++o) {
              scalar_t acc = 0;
              for (int64_t k = 0; k < In; ++k) acc += (transposed ? wt[k * K + o] : wt[o * K + k]) * q[k];
              out[o] = acc;
            }
            const bool saturated = add_noise_row<scalar_t>(out, Out, z, key,
                (static_cast<uint64_t>(pass) * M + m) * Out, scalar_t(io.out_noise),
                scalar_t(io.out_bound), scalar_t(io.out_step));
            if (saturated && bm_repeats<scalar_t>(reduction, io.max_bm_factor)) continue;
            for (int64_t o = 0; o < Out; ++o)
              out[o] = quantize_clip<scalar_t>(out[o], scalar_t(io.out_bound),
                                               scalar_t(io.out_step)) * sr;
            break;
          }
        }
      });
    });
  }
};

at::Tensor analog_mvm_cpu(const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& tile, const at::Tensor& seed, bool transposed, double inp_step,
    double inp_bound, double out_step, double out_bound, double out_noise,
    bool noise_management, bool bound_management, double max_bm_factor, int64_t tile_capacity) {
  const AnalogIO io{inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor,
                    noise_management, bound_management};
  return analog_mvm_driver<CpuAnalogKernels>(input, weight, tile, seed, transposed, io,
                                             tile_capacity);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("analog_mvm", &analog_mvm_cpu);
}

}  // namespace rapa
