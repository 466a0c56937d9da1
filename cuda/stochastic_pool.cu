// CUDA kernels of rapa::stochastic_pool. Forward passes: one thread per output. The test-time
// backward: one thread per input pixel gathers from the windows that contain it (no atomics);
// the training backward routes each output's gradient to its chosen pixel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "launch.cuh"
#include "pool_windows.h"

namespace rapa {
namespace {

template <typename scalar_t>
__global__ void stochastic_train_kernel(const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ u, PoolShape s, scalar_t* __restrict__ out,
    int64_t* __restrict__ index) {
  RAPA_KERNEL_LOOP(i, s.N * s.C * s.Ho * s.Wo) {
    const int64_t ox = i % s.Wo, oy = (i / s.Wo) % s.Ho, plane = i / (s.Wo * s.Ho);
    const scalar_t* in = x + plane * s.H * s.W;
    const int64_t pick = stochastic_pick(in, s, pool_window(s, oy, ox), u[i]);
    index[i] = pick;
    out[i] = in[pick];
  }
}

template <typename scalar_t>
__global__ void stochastic_test_kernel(
    const scalar_t* __restrict__ x, PoolShape s, scalar_t* __restrict__ out) {
  RAPA_KERNEL_LOOP(i, s.N * s.C * s.Ho * s.Wo) {
    const int64_t ox = i % s.Wo, oy = (i / s.Wo) % s.Ho, plane = i / (s.Wo * s.Ho);
    scalar_t S, Q;
    stochastic_moments(x + plane * s.H * s.W, s, pool_window(s, oy, ox), &S, &Q);
    out[i] = S > scalar_t(0) ? Q / S : scalar_t(0);
  }
}

template <typename scalar_t>
__global__ void stochastic_test_grad_kernel(const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ x, PoolShape s, scalar_t* __restrict__ gi) {
  RAPA_KERNEL_LOOP(i, s.N * s.C * s.H * s.W) {
    const int64_t w = i % s.W, h = (i / s.W) % s.H, plane = i / (s.W * s.H);
    const scalar_t* in = x + plane * s.H * s.W;
    scalar_t acc = scalar_t(0);
    for_each_window_containing(s, h, w, [&](int64_t oy, int64_t ox) {
      scalar_t S, Q;
      stochastic_moments(in, s, pool_window(s, oy, ox), &S, &Q);
      acc += go[plane * s.Ho * s.Wo + oy * s.Wo + ox] * stochastic_test_grad(in[h * s.W + w], S, Q);
    });
    gi[i] = acc;
  }
}

std::tuple<at::Tensor, at::Tensor> stochastic_pool_train_cuda(const at::Tensor& input,
    const at::Tensor& uniform, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_pool_uniform(uniform, input, s);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), u = uniform.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  at::Tensor index = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, index};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stochastic_pool_train_cuda", [&] {
    stochastic_train_kernel<scalar_t><<<grid_for(out.numel()), kThreads, 0,
        c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), s,
        out.data_ptr<scalar_t>(), index.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, index};
}

at::Tensor stochastic_pool_train_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& index) {
  check_pool_index(grad_output, input, index);
  const c10::cuda::CUDAGuard guard(input.device());
  // Each output sends its gradient to the pixel it chose; overlapping windows may choose the
  // same pixel, so the sums go through scatter_add (at most a few terms per pixel).
  const int64_t planes = input.size(0) * input.size(1), plane_in = input.size(2) * input.size(3);
  at::Tensor grad_input = at::zeros({planes, plane_in}, input.options());
  grad_input.scatter_add_(1, index.reshape({planes, -1}), grad_output.reshape({planes, -1}));
  return grad_input.view(input.sizes());
}

at::Tensor stochastic_pool_test_cuda(const at::Tensor& input, at::IntArrayRef kernel,
    at::IntArrayRef stride, at::IntArrayRef padding) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stochastic_pool_test_cuda", [&] {
    stochastic_test_kernel<scalar_t><<<grid_for(out.numel()), kThreads, 0,
        c10::cuda::getCurrentCUDAStream()>>>(x.data_ptr<scalar_t>(), s, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor stochastic_pool_test_backward_cuda(const at::Tensor& grad_output,
    const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_pool_grad_output(grad_output, input, s);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous();
  at::Tensor grad_input = at::empty_like(x);
  if (x.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stochastic_pool_test_backward_cuda", [&] {
    stochastic_test_grad_kernel<scalar_t><<<grid_for(x.numel()), kThreads, 0,
        c10::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), s, grad_input.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("stochastic_pool_train", &stochastic_pool_train_cuda);
  m.impl("stochastic_pool_train_backward", &stochastic_pool_train_backward_cuda);
  m.impl("stochastic_pool_test", &stochastic_pool_test_cuda);
  m.impl("stochastic_pool_test_backward", &stochastic_pool_test_backward_cuda);
}

}  // namespace rapa
