// CPU kernels of rapa::analog_conv and rapa::analog_conv_input_grad: a convolution on analog
// arrays, one array product per patch with rapa::analog_mvm's periphery, without the patch
// rows ever existing batch-wide. The work runs in the fused kernels of operators/isa/
// (analog_conv_impl.h); this file checks the arguments, prepares the kernel layouts and splits
// the batch over threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <vector>

#include "analog.h"
#include "checks.h"
#include "cpu_fused.h"
#include "isa/analog_conv.h"

namespace rapa {
namespace {

template <typename S>
bool run_analog(bool forward, const AnalogConv<S>& a, int64_t n0, int64_t n1, S* scratch,
    int64_t* index, int64_t* bad) {
#if defined(RAPA_X86_KERNELS)
  switch (cpu_isa()) {
    case Isa::avx512:
      return forward ? analog_forward_avx512(a, n0, n1, scratch, index, bad)
                     : analog_backward_avx512(a, n0, n1, scratch, index, bad);
    case Isa::avx2:
      return forward ? analog_forward_avx2(a, n0, n1, scratch, index, bad)
                     : analog_backward_avx2(a, n0, n1, scratch, index, bad);
    default:
      break;
  }
#endif
  return forward ? analog_forward_generic(a, n0, n1, scratch, index, bad)
                 : analog_backward_generic(a, n0, n1, scratch, index, bad);
}

// The checked geometry, and the periphery in the scalar type with its noise stream.
template <typename S>
AnalogConv<S> analog_args(const ConvGeometry& s, const at::Tensor& seed, const AnalogIO& io,
    const at::Tensor& table) {
  AnalogConv<S> a = fused_geometry<AnalogConv<S>>(s, false);
  a.inp_step = io.inp_step;
  a.inp_bound = io.inp_bound;
  a.out_step = io.out_step;
  a.out_bound = io.out_bound;
  a.out_noise = io.out_noise;
  a.max_bm_factor = io.max_bm_factor;
  a.noise_management = io.noise_management;
  a.bound_management = io.bound_management;
  a.key = mix_seed(static_cast<uint64_t>(seed.item<int64_t>()), kStreamOutNoise);
  a.normal = table.data_ptr<S>();
  a.M = s.N * s.NP;
  return a;
}

template <typename S>
void run_analog_batch(bool forward, const AnalogConv<S>& shared) {
  at::parallel_for(0, shared.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<S> scratch(analog_scratch_values(shared));
    std::vector<int64_t> index(fused_scratch_indices(shared.T, shared.NP));
    int64_t bad = 0;
    TORCH_CHECK(run_analog(forward, shared, begin, end, scratch.data(), index.data(), &bad),
        assignment_range_message(bad, shared.T));
  });
}

ConvGeometry check_analog_conv(const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& assignment,
    const at::Tensor& out_scale, const at::Tensor& seed, at::IntArrayRef stride,
    at::IntArrayRef padding, const AnalogIO& io) {
  const ConvGeometry s =
      check_tiled_conv(input, weight, bias, assignment, stride, padding, std::nullopt);
  check_floating(out_scale, "out_scale");
  check_same_device(out_scale, "out_scale", input, "input");
  TORCH_CHECK(out_scale.scalar_type() == input.scalar_type(), "rapa: argument 'out_scale' has "
      "dtype ", out_scale.scalar_type(), " but 'input' has ", input.scalar_type());
  TORCH_CHECK(out_scale.dim() == 1 && out_scale.size(0) == s.T, "rapa: argument 'out_scale' "
      "must be (T,) = (", s.T, ",), each array's output scale, got shape ", out_scale.sizes());
  check_seed(seed);
  check_same_device(seed, "seed", input, "input");
  check_analog_io(io);
  return s;
}

at::Tensor analog_conv_cpu(const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& assignment,
    const at::Tensor& out_scale, const at::Tensor& seed, at::IntArrayRef stride,
    at::IntArrayRef padding, double inp_step, double inp_bound, double out_step,
    double out_bound, double out_noise, bool noise_management, bool bound_management,
    double max_bm_factor) {
  RECORD_FUNCTION("rapa::analog_conv", std::vector<c10::IValue>());
  const AnalogIO io{inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor,
                    noise_management, bound_management};
  const ConvGeometry s =
      check_analog_conv(input, weight, bias, assignment, out_scale, seed, stride, padding, io);
  // Channels last: the kernels write one row of O outputs per patch.
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (s.N == 0 || s.NP == 0) return out;
  const at::Tensor x = input.contiguous(), assign = assignment.contiguous();
  const at::Tensor scale = out_scale.contiguous();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "analog_conv_cpu", [&] {
    const at::Tensor table = normal_table(input.scalar_type(), input.device());
    AnalogConv<scalar_t> a = analog_args<scalar_t>(s, seed, io, table);
    at::Tensor kernels = at::zeros({s.T, a.K, a.Opad}, input.options());
    kernels.narrow(2, 0, s.O).copy_(kernels_hwc(weight).transpose(1, 2));
    a.x = x.data_ptr<scalar_t>();
    a.kernels_ko = kernels.data_ptr<scalar_t>();
    a.bias = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    a.out_scale = scale.data_ptr<scalar_t>();
    a.assignment = assign.data_ptr<int64_t>();
    a.out = out.data_ptr<scalar_t>();
    run_analog_batch<scalar_t>(true, a);
  });
  return out;
}

at::Tensor analog_conv_input_grad_cpu(const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, const at::Tensor& assignment, const at::Tensor& out_scale,
    const at::Tensor& seed,
    at::IntArrayRef stride, at::IntArrayRef padding, double inp_step, double inp_bound,
    double out_step, double out_bound, double out_noise, bool noise_management,
    bool bound_management, double max_bm_factor) {
  RECORD_FUNCTION("rapa::analog_conv_input_grad", std::vector<c10::IValue>());
  const AnalogIO io{inp_step, inp_bound, out_step, out_bound, out_noise, max_bm_factor,
                    noise_management, bound_management};
  const ConvGeometry s = check_analog_conv(input, weight, std::nullopt, assignment, out_scale,
                                           seed, stride, padding, io);
  check_conv_grad_output(grad_output, input, s);
  at::Tensor grad_input = at::zeros({s.N, s.C, s.H, s.W}, input.options());
  if (s.N == 0 || s.NP == 0) return grad_input;
  const at::Tensor go = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor assign = assignment.contiguous(), scale = out_scale.contiguous();
  // For k in the kernels' (ky, kx, c) order, its place in F.unfold's (c, ky, kx) order.
  std::vector<int64_t> unfold_index(s.K);
  for (int64_t ky = 0; ky < s.kh; ++ky)
    for (int64_t kx = 0; kx < s.kw; ++kx)
      for (int64_t c = 0; c < s.C; ++c)
        unfold_index[(ky * s.kw + kx) * s.C + c] = (c * s.kh + ky) * s.kw + kx;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "analog_conv_input_grad_cpu", [&] {
    const at::Tensor table = normal_table(input.scalar_type(), input.device());
    AnalogConv<scalar_t> a = analog_args<scalar_t>(s, seed, io, table);
    at::Tensor kernels = at::zeros({s.T, s.O, a.Kpad}, input.options());
    kernels.narrow(2, 0, a.K).copy_(kernels_hwc(weight));
    a.kernels_ok = kernels.data_ptr<scalar_t>();
    a.assignment = assign.data_ptr<int64_t>();
    a.grad_out = go.data_ptr<scalar_t>();
    a.grad_x = grad_input.data_ptr<scalar_t>();
    a.unfold_index = unfold_index.data();
    a.out_scale = scale.data_ptr<scalar_t>();
    run_analog_batch<scalar_t>(false, a);
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("analog_conv", &analog_conv_cpu);
  m.impl("analog_conv_input_grad", &analog_conv_input_grad_cpu);
}

}  // namespace rapa
