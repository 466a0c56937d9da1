// CPU kernels of rapa::analog_mvm: the elementwise steps around the array's products
// (analog_mvm.h), each one pass over its rows, rows split over threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include "analog_mvm.h"
#include "row_absmax_cpu.h"

namespace rapa {
namespace {

struct CpuAnalogKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return cpu_row_absmax(x); }

  static at::Tensor prepare(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& scale,
      const AnalogIO& io) {
    RECORD_FUNCTION("rapa::analog_mvm::prepare", std::vector<c10::IValue>());
    const int64_t R = rows.numel(), In = x.size(1);
    at::Tensor out = at::empty({R, In}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "analog_prepare", [&] {
      const scalar_t* src = x.data_ptr<scalar_t>();
      const scalar_t* s = scale.data_ptr<scalar_t>();
      const int64_t* row = rows.data_ptr<int64_t>();
      scalar_t* dst = out.data_ptr<scalar_t>();
      const scalar_t bound = io.inp_bound, step = io.inp_step;
      at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const scalar_t* xr = src + row[r] * In;
          const scalar_t inv = scalar_t(1) / s[r];
          for (int64_t k = 0; k < In; ++k)
            dst[r * In + k] = quantize_clip<scalar_t>(xr[k] * inv, bound, step);
        }
      });
    });
    return out;
  }

  static at::Tensor add_noise_and_test(at::Tensor& y, const at::Tensor& rows,
      const at::Tensor& seed, int64_t pass, int64_t M, const AnalogIO& io) {
    RECORD_FUNCTION("rapa::analog_mvm::noise", std::vector<c10::IValue>());
    const int64_t R = y.size(0), Out = y.size(1);
    at::Tensor saturated = at::empty({R}, y.options().dtype(at::kBool));
    const uint64_t key = mix_seed(static_cast<uint64_t>(seed.item<int64_t>()), kStreamOutNoise);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_noise", [&] {
      const at::Tensor table = normal_table(y.scalar_type(), y.device());
      const scalar_t* z = table.data_ptr<scalar_t>();
      scalar_t* v = y.data_ptr<scalar_t>();
      const int64_t* row = rows.data_ptr<int64_t>();
      bool* sat = saturated.data_ptr<bool>();
      const scalar_t noise = io.out_noise, bound = io.out_bound, step = io.out_step;
      at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          scalar_t* yr = v + r * Out;
          const uint64_t base = (static_cast<uint64_t>(pass) * M + row[r]) * Out;
          bool any = false;
          for (int64_t o = 0; o < Out; ++o) {
            if (noise > 0) yr[o] += noise * normal_draw(z, key, base + o);
            any |= adc_saturates(yr[o], bound, step);
          }
          sat[r] = any;
        }
      });
    });
    return saturated;
  }

  static void write_out(const at::Tensor& yr, const at::Tensor& rows, const at::Tensor& scale,
      const at::Tensor& redo, const AnalogIO& io, at::Tensor& y) {
    RECORD_FUNCTION("rapa::analog_mvm::write_out", std::vector<c10::IValue>());
    const int64_t R = yr.size(0), Out = yr.size(1);
    const at::Tensor again = redo.contiguous();
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_write_out", [&] {
      const scalar_t* src = yr.data_ptr<scalar_t>();
      const scalar_t* s = scale.data_ptr<scalar_t>();
      const int64_t* row = rows.data_ptr<int64_t>();
      const bool* skip = again.data_ptr<bool>();
      scalar_t* dst = y.data_ptr<scalar_t>();
      const scalar_t bound = io.out_bound, step = io.out_step;
      at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          if (skip[r]) continue;
          scalar_t* out = dst + row[r] * Out;
          for (int64_t o = 0; o < Out; ++o)
            out[o] = quantize_clip<scalar_t>(src[r * Out + o], bound, step) * s[r];
        }
      });
    });
  }
};

at::Tensor analog_mvm_cpu(const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& tile, const at::Tensor& seed, bool transposed, double inp_step,
    double inp_bound, double out_step, double out_bound, double out_noise,
    bool noise_management, bool bound_management, double max_bm_factor) {
  const AnalogIO io{inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor,
                    noise_management, bound_management};
  return analog_mvm_driver<CpuAnalogKernels>(input, weight, tile, seed, transposed, io);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("analog_mvm", &analog_mvm_cpu);
}

}  // namespace rapa
