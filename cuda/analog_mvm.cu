// CUDA kernels of rapa::analog_mvm: the elementwise steps around the array's products
// (operators/analog_mvm.h), one thread per value. The Gaussian draws are the CPU kernel's
// (counter-based, keyed by seed, pass, row and output), read from the same quantile table.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "analog_mvm.h"
#include "launch.cuh"

namespace rapa {
namespace {

template <typename S>
__global__ void prepare_kernel(const S* __restrict__ x, const int64_t* __restrict__ rows,
    const S* __restrict__ scale, int64_t R, int64_t In, S bound, S step, S* __restrict__ out) {
  RAPA_KERNEL_LOOP(idx, R * In) {
    const int64_t r = idx / In, k = idx % In;
    out[idx] = quantize_clip<S>(x[rows[r] * In + k] * (S(1) / scale[r]), bound, step);
  }
}

template <typename S>
__global__ void noise_kernel(S* __restrict__ y, const int64_t* __restrict__ rows,
    const int64_t* __restrict__ seed, const S* __restrict__ table, int64_t R, int64_t Out,
    int64_t M, int64_t pass, S noise, S bound, S step, bool* __restrict__ saturated) {
  const uint64_t key = mix_seed(static_cast<uint64_t>(seed[0]), kStreamOutNoise);
  RAPA_KERNEL_LOOP(idx, R * Out) {
    const int64_t r = idx / Out, o = idx % Out;
    S v = y[idx];
    if (noise > S(0)) {
      v += noise * normal_draw(table, key, (static_cast<uint64_t>(pass) * M + rows[r]) * Out + o);
      y[idx] = v;
    }
    if (adc_saturates(v, bound, step)) saturated[r] = true;
  }
}

template <typename S>
__global__ void write_out_kernel(const S* __restrict__ yr, const int64_t* __restrict__ rows,
    const S* __restrict__ scale, const bool* __restrict__ redo, int64_t R, int64_t Out, S bound,
    S step, S* __restrict__ y) {
  RAPA_KERNEL_LOOP(idx, R * Out) {
    const int64_t r = idx / Out, o = idx % Out;
    if (redo[r]) continue;
    y[rows[r] * Out + o] = quantize_clip<S>(yr[idx], bound, step) * scale[r];
  }
}

struct CudaAnalogKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return x.abs().amax(1); }

  static at::Tensor prepare(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& scale,
      const AnalogIO& io) {
    const int64_t R = rows.numel(), In = x.size(1);
    at::Tensor out = at::empty({R, In}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "analog_prepare_cuda", [&] {
      prepare_kernel<scalar_t><<<grid_for(R * In), kThreads, 0,
                                 c10::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), scale.data_ptr<scalar_t>(), R, In,
          static_cast<scalar_t>(io.inp_bound), static_cast<scalar_t>(io.inp_step),
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }

  static at::Tensor add_noise_and_test(at::Tensor& y, const at::Tensor& rows,
      const at::Tensor& seed, int64_t pass, int64_t M, const AnalogIO& io) {
    const int64_t R = y.size(0), Out = y.size(1);
    at::Tensor saturated = at::zeros({R}, y.options().dtype(at::kBool));
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_noise_cuda", [&] {
      const at::Tensor table = normal_table(y.scalar_type(), y.device());
      noise_kernel<scalar_t><<<grid_for(R * Out), kThreads, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
          y.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), seed.data_ptr<int64_t>(),
          table.data_ptr<scalar_t>(), R, Out, M, pass, static_cast<scalar_t>(io.out_noise),
          static_cast<scalar_t>(io.out_bound), static_cast<scalar_t>(io.out_step),
          saturated.data_ptr<bool>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return saturated;
  }

  static void write_out(const at::Tensor& yr, const at::Tensor& rows, const at::Tensor& scale,
      const at::Tensor& redo, const AnalogIO& io, at::Tensor& y) {
    const int64_t R = yr.size(0), Out = yr.size(1);
    const at::Tensor again = redo.contiguous();
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_write_out_cuda", [&] {
      write_out_kernel<scalar_t><<<grid_for(R * Out), kThreads, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
          yr.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), scale.data_ptr<scalar_t>(),
          again.data_ptr<bool>(), R, Out, static_cast<scalar_t>(io.out_bound),
          static_cast<scalar_t>(io.out_step), y.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

at::Tensor analog_mvm_cuda(const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& tile, const at::Tensor& seed, bool transposed, double inp_step,
    double inp_bound, double out_step, double out_bound, double out_noise,
    bool noise_management, bool bound_management, double max_bm_factor) {
  const c10::cuda::CUDAGuard guard(input.device());
  const AnalogIO io{inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor,
                    noise_management, bound_management};
  return analog_mvm_driver<CudaAnalogKernels>(input, weight, tile, seed, transposed, io);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("analog_mvm", &analog_mvm_cuda);
}

}  // namespace rapa
