// CPU kernels of rapa::stochastic_pool (Zeiler & Fergus 2013, as in Caffe's STOCHASTIC pooling).
// Training picks one pixel per window with probability proportional to its positive part and
// passes the gradient to it alone; test time outputs sum(w v) / sum(w), w = max(v, 0).
// Parallel over (image, channel) planes, so gradient sums need no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "pool_windows.h"

namespace rapa {
namespace {

std::tuple<at::Tensor, at::Tensor> stochastic_pool_train_cpu(const at::Tensor& input,
    const at::Tensor& uniform, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_pool_uniform(uniform, input, s);
  const at::Tensor x = input.contiguous(), u = uniform.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  at::Tensor index = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stochastic_pool_train_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* up = u.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int64_t* ip = index.data_ptr<int64_t>();
    at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* in = xp + plane * s.H * s.W;
        for (int64_t oy = 0; oy < s.Ho; ++oy)
          for (int64_t ox = 0; ox < s.Wo; ++ox) {
            const int64_t o = plane * s.Ho * s.Wo + oy * s.Wo + ox;
            const int64_t pick = stochastic_pick(in, s, pool_window(s, oy, ox), up[o]);
            ip[o] = pick;
            op[o] = in[pick];
          }
      }
    });
  });
  return {out, index};
}

at::Tensor stochastic_pool_train_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& index) {
  check_pool_index(grad_output, input, index);
  const at::Tensor g = grad_output.contiguous(), idx = index.contiguous();
  // The input's layout, as torch's pooling gradients: a channels-last input (max_pool's) gets a
  // channels-last gradient, which the layers before it then read without a transposing copy.
  const bool last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_input = at::zeros_like(input, input.suggest_memory_format());
  const int64_t C = input.size(1), plane_in = input.size(2) * input.size(3);
  const int64_t plane_out = g.size(2) * g.size(3);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "stochastic_pool_train_backward_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const int64_t* ip = idx.data_ptr<int64_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    // Per (image, channel) plane; channels last by image, so that no two threads share a pixel.
    const int64_t units = last ? input.size(0) : input.size(0) * C, per_unit = last ? C : 1;
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin * per_unit; plane < end * per_unit; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        for (int64_t o = plane * plane_out; o < (plane + 1) * plane_out; ++o) {
          TORCH_CHECK(ip[o] >= 0 && ip[o] < plane_in, "rapa: argument 'index' holds ", ip[o],
              ", outside the input plane of ", plane_in, " pixels");
          gi[last ? (n * plane_in + ip[o]) * C + c : plane * plane_in + ip[o]] += gp[o];
        }
      }
    });
  });
  return grad_input;
}

at::Tensor stochastic_pool_test_cpu(const at::Tensor& input, at::IntArrayRef kernel,
    at::IntArrayRef stride, at::IntArrayRef padding) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stochastic_pool_test_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* in = xp + plane * s.H * s.W;
        for (int64_t oy = 0; oy < s.Ho; ++oy)
          for (int64_t ox = 0; ox < s.Wo; ++ox) {
            scalar_t S, Q;
            stochastic_moments(in, s, pool_window(s, oy, ox), &S, &Q);
            op[plane * s.Ho * s.Wo + oy * s.Wo + ox] = S > scalar_t(0) ? Q / S : scalar_t(0);
          }
      }
    });
  });
  return out;
}

at::Tensor stochastic_pool_test_backward_cpu(const at::Tensor& grad_output,
    const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding) {
  const PoolShape s = check_pool(input, kernel, stride, padding);
  check_pool_grad_output(grad_output, input, s);
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous();
  at::Tensor grad_input = at::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stochastic_pool_test_backward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* in = xp + plane * s.H * s.W;
        scalar_t* gin = gi + plane * s.H * s.W;
        for (int64_t oy = 0; oy < s.Ho; ++oy)
          for (int64_t ox = 0; ox < s.Wo; ++ox) {
            const PoolWindow win = pool_window(s, oy, ox);
            scalar_t S, Q;
            stochastic_moments(in, s, win, &S, &Q);
            const scalar_t gv = gp[plane * s.Ho * s.Wo + oy * s.Wo + ox];
            for (int64_t h = win.h0; h < win.h1; ++h)
              for (int64_t w = win.w0; w < win.w1; ++w)
                gin[h * s.W + w] += gv * stochastic_test_grad(in[h * s.W + w], S, Q);
          }
      }
    });
  });
  return grad_input;
}

// Draws one uniform per output from the caller's generator, then runs the deterministic
// training kernel; test mode needs no randomness.
at::Tensor stochastic_pool(const at::Tensor& input, at::IntArrayRef kernel,
    at::IntArrayRef stride, at::IntArrayRef padding, bool train,
    std::optional<at::Generator> generator) {
  if (!train) {
    static auto test_op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("rapa::stochastic_pool_test", "")
        .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
    return test_op.call(input, kernel, stride, padding);
  }
  const PoolShape s = check_pool(input, kernel, stride, padding);
  at::Tensor uniform = at::rand({s.N, s.C, s.Ho, s.Wo}, generator, input.options());
  static auto train_op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("rapa::stochastic_pool_train", "")
      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
          at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return std::get<0>(train_op.call(input, uniform, kernel, stride, padding));
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("stochastic_pool_train", &stochastic_pool_train_cpu);
  m.impl("stochastic_pool_train_backward", &stochastic_pool_train_backward_cpu);
  m.impl("stochastic_pool_test", &stochastic_pool_test_cpu);
  m.impl("stochastic_pool_test_backward", &stochastic_pool_test_backward_cpu);
}

TORCH_LIBRARY_IMPL(rapa, CompositeImplicitAutograd, m) {
  m.impl("stochastic_pool", &stochastic_pool);
}

}  // namespace rapa
