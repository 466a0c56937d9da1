// CPU kernels of rapa::mixed_pool: out = a * max + (1 - a) * avg, a = sigmoid(mu * beta_c),
// over Caffe's pooling windows. Parallel over (image, channel) planes; the backward recomputes
// each window's maximum instead of storing it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "pool_windows.h"

namespace rapa {
namespace {

at::Tensor mixed_pool_cpu(const at::Tensor& input, const at::Tensor& beta, at::IntArrayRef kernel,
    at::IntArrayRef stride, at::IntArrayRef padding, double mu) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_mixed_pool_beta(beta, input);
  const at::Tensor x = input.contiguous(), bt = beta.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixed_pool_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* bp = bt.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t a = mix_weight(bp[plane % s.C], mu);
        const scalar_t* in = xp + plane * s.H * s.W;
        scalar_t* o = op + plane * s.Ho * s.Wo;
        for (int64_t oy = 0; oy < s.Ho; ++oy)
          for (int64_t ox = 0; ox < s.Wo; ++ox) {
            scalar_t m, avg;
            int64_t mi;
            window_max_avg(in, s, pool_window(s, oy, ox), &m, &mi, &avg);
            o[oy * s.Wo + ox] = a * m + (scalar_t(1) - a) * avg;
          }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mixed_pool_backward_cpu(const at::Tensor& grad_output,
    const at::Tensor& input, const at::Tensor& beta, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding, double mu) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_mixed_pool_beta(beta, input);
  check_pool_grad_output(grad_output, input, s);
  const at::Tensor x = input.contiguous(), bt = beta.contiguous(), g = grad_output.contiguous();
  at::Tensor grad_input = at::zeros_like(x);
  // Per plane: sum of grad * (max - avg); reduced over the batch below, in a fixed order.
  at::Tensor plane_diff = at::empty({s.N, s.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixed_pool_backward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* bp = bt.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    scalar_t* pd = plane_diff.data_ptr<scalar_t>();
    at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t a = mix_weight(bp[plane % s.C], mu);
        const scalar_t* in = xp + plane * s.H * s.W;
        const scalar_t* go = gp + plane * s.Ho * s.Wo;
        scalar_t* gin = gi + plane * s.H * s.W;
        scalar_t diff = 0;
        for (int64_t oy = 0; oy < s.Ho; ++oy)
          for (int64_t ox = 0; ox < s.Wo; ++ox) {
            const PoolWindow win = pool_window(s, oy, ox);
            scalar_t m, avg;
            int64_t mi;
            window_max_avg(in, s, win, &m, &mi, &avg);
            const scalar_t gv = go[oy * s.Wo + ox];
            diff += gv * (m - avg);
            gin[mi] += a * gv;
            const scalar_t share = (scalar_t(1) - a) * gv / scalar_t(win.count);
            for (int64_t h = win.h0; h < win.h1; ++h)
              for (int64_t w = win.w0; w < win.w1; ++w) gin[h * s.W + w] += share;
          }
        pd[plane] = diff;
      }
    });
  });
  // d a / d beta = mu * a * (1 - a)
  const at::Tensor a = at::sigmoid(bt * mu);
  at::Tensor grad_beta = plane_diff.sum(0) * (a * (1 - a) * mu);
  return {grad_input, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("mixed_pool", &mixed_pool_cpu);
  m.impl("mixed_pool_backward", &mixed_pool_backward_cpu);
}

}  // namespace rapa
