// CUDA kernels of rapa::mixed_pool. Forward: one thread per output. Backward: one thread per
// input pixel gathers from the windows that contain it (recomputing their maxima), so no
// atomics are needed; the beta gradient sums per-output terms with a deterministic reduction.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "launch.cuh"
#include "pool_windows.h"

namespace rapa {
namespace {

template <typename scalar_t>
__global__ void mixed_pool_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ beta,
    double mu, PoolShape s, scalar_t* __restrict__ out) {
  RAPA_KERNEL_LOOP(i, s.N * s.C * s.Ho * s.Wo) {
    const int64_t ox = i % s.Wo, oy = (i / s.Wo) % s.Ho, plane = i / (s.Wo * s.Ho);
    const scalar_t a = mix_weight(beta[plane % s.C], mu);
    scalar_t m, avg;
    int64_t mi;
    window_max_avg(x + plane * s.H * s.W, s, pool_window(s, oy, ox), &m, &mi, &avg);
    out[i] = a * m + (scalar_t(1) - a) * avg;
  }
}

template <typename scalar_t>
__global__ void mixed_pool_grad_input_kernel(const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ beta, double mu, PoolShape s,
    scalar_t* __restrict__ gi) {
  RAPA_KERNEL_LOOP(i, s.N * s.C * s.H * s.W) {
    const int64_t w = i % s.W, h = (i / s.W) % s.H, plane = i / (s.W * s.H);
    const scalar_t a = mix_weight(beta[plane % s.C], mu);
    const scalar_t* in = x + plane * s.H * s.W;
    scalar_t acc = scalar_t(0);
    for_each_window_containing(s, h, w, [&](int64_t oy, int64_t ox) {
      const PoolWindow win = pool_window(s, oy, ox);
      scalar_t m, avg;
      int64_t mi;
      window_max_avg(in, s, win, &m, &mi, &avg);
      const scalar_t gv = go[plane * s.Ho * s.Wo + oy * s.Wo + ox];
      acc += (scalar_t(1) - a) * gv / scalar_t(win.count);
      if (mi == h * s.W + w) acc += a * gv;
    });
    gi[i] = acc;
  }
}

// Per output: grad * (max - avg), summed per channel afterwards.
template <typename scalar_t>
__global__ void mixed_pool_diff_kernel(const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ x, PoolShape s, scalar_t* __restrict__ diff) {
  RAPA_KERNEL_LOOP(i, s.N * s.C * s.Ho * s.Wo) {
    const int64_t ox = i % s.Wo, oy = (i / s.Wo) % s.Ho, plane = i / (s.Wo * s.Ho);
    scalar_t m, avg;
    int64_t mi;
    window_max_avg(x + plane * s.H * s.W, s, pool_window(s, oy, ox), &m, &mi, &avg);
    diff[i] = go[i] * (m - avg);
  }
}

at::Tensor mixed_pool_cuda(const at::Tensor& input, const at::Tensor& beta, at::IntArrayRef kernel,
    at::IntArrayRef stride, at::IntArrayRef padding, double mu) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_mixed_pool_beta(beta, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), b = beta.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixed_pool_cuda", [&] {
    mixed_pool_kernel<scalar_t><<<grid_for(out.numel()), kThreads, 0,
        c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), mu, s, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mixed_pool_backward_cuda(const at::Tensor& grad_output,
    const at::Tensor& input, const at::Tensor& beta, at::IntArrayRef kernel,
    at::IntArrayRef stride, at::IntArrayRef padding, double mu) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_mixed_pool_beta(beta, input);
  check_pool_grad_output(grad_output, input, s);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), b = beta.contiguous(), g = grad_output.contiguous();
  at::Tensor grad_input = at::empty_like(x);
  at::Tensor diff = at::empty_like(g);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixed_pool_backward_cuda", [&] {
    if (x.numel() > 0) {
      mixed_pool_grad_input_kernel<scalar_t><<<grid_for(x.numel()), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), mu, s,
          grad_input.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (g.numel() > 0) {
      mixed_pool_diff_kernel<scalar_t><<<grid_for(g.numel()), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), s, diff.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  const at::Tensor a = at::sigmoid(b * mu);
  at::Tensor grad_beta = diff.sum({0, 2, 3}) * (a * (1 - a) * mu);
  return {grad_input, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("mixed_pool", &mixed_pool_cuda);
  m.impl("mixed_pool_backward", &mixed_pool_backward_cuda);
}

}  // namespace rapa
