// CUDA kernels of rapa::analog_mvm: the elementwise steps around the arrays' first products
// (operators/analog_mvm.h), one thread per value, and bound management's later passes, one
// block per repeated row. The Gaussian draws are the CPU kernel's (counter-based, keyed by
// seed, pass, row and output), read from the same quantile table. No launch depends on a
// number on the device: a CUDA graph holds them all.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "analog_mvm.h"
#include "launch.cuh"

namespace rapa {
namespace {

template <typename S>
__global__ void prepare_kernel(const S* __restrict__ x, const int64_t* __restrict__ order,
    const S* __restrict__ scale, int64_t R, int64_t In, S bound, S step, S* __restrict__ out) {
  RAPA_KERNEL_LOOP(idx, R * In) {
    const int64_t m = order[idx / In], k = idx % In;
    out[idx] = m < 0 ? S(0) : quantize_clip<S>(x[m * In + k] * (S(1) / scale[m]), bound, step);
  }
}

// The first pass's noise (draw m Out + o: pass 0) and saturation test of each padded row.
template <typename S>
__global__ void noise_kernel(S* __restrict__ y, const int64_t* __restrict__ order,
    const int64_t* __restrict__ seed, const S* __restrict__ table, int64_t R, int64_t Out,
    S noise, S bound, S step, bool* __restrict__ saturated) {
  const uint64_t key = mix_seed(static_cast<uint64_t>(seed[0]), kStreamOutNoise);
  RAPA_KERNEL_LOOP(idx, R * Out) {
    const int64_t r = idx / Out, o = idx % Out, m = order[r];
    if (m < 0) continue;
    S v = y[idx];
    if (noise > S(0)) {
      v += noise * normal_draw(table, key, static_cast<uint64_t>(m) * Out + o);
      y[idx] = v;
    }
    if (adc_saturates(v, bound, step)) saturated[r] = true;
  }
}

template <typename S>
__global__ void write_out_kernel(const S* __restrict__ yr, const int64_t* __restrict__ order,
    const S* __restrict__ scale, const bool* __restrict__ redo, int64_t R, int64_t Out, S bound,
    S step, S* __restrict__ y) {
  RAPA_KERNEL_LOOP(idx, R * Out) {
    const int64_t r = idx / Out, o = idx % Out, m = order[r];
    if (m < 0 || redo[r]) continue;
    y[m * Out + o] = quantize_clip<S>(yr[idx], bound, step) * scale[m];
  }
}

constexpr int kRedoThreads = 128;
constexpr int kRedoChunk = 1024;  // inputs staged in shared memory at a time

// Bound management's later passes: one block per padded row flagged in `redo`, which runs that
// row's passes to the end (the others' blocks return at once), threads over outputs. Each
// output sums its products in input order, as the CPU kernel does; the block agrees on
// saturation before the next pass. Rows are independent, so nothing waits for the host.
template <typename S>
__global__ void redo_kernel(const S* __restrict__ x, const S* __restrict__ w,
    const int64_t* __restrict__ order, const S* __restrict__ scale, const bool* __restrict__ redo,
    const int64_t* __restrict__ seed, const S* __restrict__ table, int64_t R, int64_t cap,
    int64_t M, int64_t In, int64_t Out, int64_t O, int64_t K, bool transposed, AnalogIO io,
    S* __restrict__ y) {
  __shared__ S q[kRedoChunk];
  const uint64_t key = mix_seed(static_cast<uint64_t>(seed[0]), kStreamOutNoise);
  const S in_bound = io.inp_bound, in_step = io.inp_step, out_bound = io.out_bound;
  const S out_step = io.out_step, noise = io.out_noise;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    if (!redo[r]) continue;
    const int64_t m = order[r];
    const S* xr = x + m * In;
    const S* wt = w + (r / cap) * O * K;
    S* out = y + m * Out;
    S reduction = 1;
    for (int64_t pass = 1;; ++pass) {
      reduction *= 2;
      const S sr = scale[m] * reduction, inv = S(1) / sr;
      bool saturated = false;
      for (int64_t o0 = 0; o0 < Out; o0 += blockDim.x) {
        const int64_t o = o0 + threadIdx.x;
        S acc = 0;
        for (int64_t k0 = 0; k0 < In; k0 += kRedoChunk) {
          const int64_t n = In - k0 < kRedoChunk ? In - k0 : kRedoChunk;
          __syncthreads();  // the chunk before is used up
          for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
            q[k] = quantize_clip<S>(xr[k0 + k] * inv, in_bound, in_step);
          __syncthreads();
          if (o < Out) {
            for (int64_t k = 0; k < n; ++k)
              acc += (transposed ? wt[(k0 + k) * K + o] : wt[o * K + k0 + k]) * q[k];
          }
        }
        if (o < Out) {
          if (noise > S(0))
            acc += noise * normal_draw(table, key, (static_cast<uint64_t>(pass) * M + m) * Out + o);
          out[o] = acc;
          saturated |= adc_saturates(acc, out_bound, out_step);
        }
      }
      if (__syncthreads_or(saturated) && bm_repeats<S>(reduction, io.max_bm_factor)) continue;
      for (int64_t o = threadIdx.x; o < Out; o += blockDim.x)
        out[o] = quantize_clip<S>(out[o], out_bound, out_step) * sr;
      break;
    }
  }
}

struct CudaAnalogKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return x.abs().amax(1); }

  static at::Tensor prepare(const at::Tensor& x, const at::Tensor& order,
      const at::Tensor& scale, const AnalogIO& io) {
    const int64_t R = order.numel(), In = x.size(1);
    at::Tensor out = at::empty({R, In}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "analog_prepare_cuda", [&] {
      prepare_kernel<scalar_t><<<grid_for(R * In), kThreads, 0,
                                 c10::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), scale.data_ptr<scalar_t>(), R, In,
          static_cast<scalar_t>(io.inp_bound), static_cast<scalar_t>(io.inp_step),
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }

  static at::Tensor add_noise_and_test(at::Tensor& y, const at::Tensor& order,
      const at::Tensor& seed, int64_t M, const AnalogIO& io) {
    const int64_t R = y.size(0), Out = y.size(1);
    at::Tensor saturated = at::zeros({R}, y.options().dtype(at::kBool));
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_noise_cuda", [&] {
      const at::Tensor table = normal_table(y.scalar_type(), y.device());
      noise_kernel<scalar_t><<<grid_for(R * Out), kThreads, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
          y.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), seed.data_ptr<int64_t>(),
          table.data_ptr<scalar_t>(), R, Out, static_cast<scalar_t>(io.out_noise),
          static_cast<scalar_t>(io.out_bound), static_cast<scalar_t>(io.out_step),
          saturated.data_ptr<bool>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return saturated;
  }

  static void write_out(const at::Tensor& yr, const at::Tensor& order, const at::Tensor& scale,
      const at::Tensor& redo, const AnalogIO& io, at::Tensor& y) {
    const int64_t R = yr.size(0), Out = yr.size(1);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_write_out_cuda", [&] {
      write_out_kernel<scalar_t><<<grid_for(R * Out), kThreads, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
          yr.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), scale.data_ptr<scalar_t>(),
          redo.data_ptr<bool>(), R, Out, static_cast<scalar_t>(io.out_bound),
          static_cast<scalar_t>(io.out_step), y.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void redo(const at::Tensor& x, const at::Tensor& w, const at::Tensor& order,
      const at::Tensor& scale, const at::Tensor& redo, int64_t cap, const at::Tensor& seed,
      bool transposed, const AnalogIO& io, at::Tensor& y) {
    const int64_t R = order.numel();
    const unsigned int blocks = static_cast<unsigned int>(std::min<int64_t>(R, 1 << 16));
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "analog_redo_cuda", [&] {
      const at::Tensor table = normal_table(y.scalar_type(), y.device());
      redo_kernel<scalar_t><<<blocks, kRedoThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
          scale.data_ptr<scalar_t>(), redo.data_ptr<bool>(), seed.data_ptr<int64_t>(),
          table.data_ptr<scalar_t>(), R, cap, x.size(0), x.size(1), y.size(1), w.size(1),
          w.size(2), transposed, io, y.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

at::Tensor analog_mvm_cuda(const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& tile, const at::Tensor& seed, bool transposed, double inp_step,
    double inp_bound, double out_step, double out_bound, double out_noise,
    bool noise_management, bool bound_management, double max_bm_factor, int64_t tile_capacity) {
  const c10::cuda::CUDAGuard guard(input.device());
  const AnalogIO io{inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor,
                    noise_management, bound_management};
  return analog_mvm_driver<CudaAnalogKernels>(input, weight, tile, seed, transposed, io,
                                              tile_capacity);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("analog_mvm", &analog_mvm_cuda);
}

}  // namespace rapa
