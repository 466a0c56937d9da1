// CPU kernels of rapa::tiled_conv and its backward.
//
// The work runs in the fused kernels of operators/isa/ (per image: sort the pixels by tile,
// gather each tile's patches into a panel that stays in cache, multiply it with that tile's
// kernel matrix in register-blocked micro-kernels, write back), compiled for AVX-512, AVX2 and
// plain code and chosen at run time. The arithmetic is that of one dense convolution, whatever
// T is; with one tile the op calls the dense convolution itself (single_tile.h).
// This file prepares layouts, splits the batch over threads and reduces the weight gradients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "checks.h"
#include "cpu_fused.h"
#include "isa/fused_conv.h"
#include "single_tile.h"
#include "tile_layout.h"

namespace rapa {
namespace {

template <typename S>
bool run_fused(bool forward, const FusedConv<S>& a, int64_t n0, int64_t n1, S* scratch,
    int64_t* index, int64_t* bad) {
#if defined(RAPA_X86_KERNELS)
  switch (cpu_isa()) {
    case Isa::avx512:
      return forward ? fused_forward_avx512(a, n0, n1, scratch, index, bad)
                     : fused_backward_avx512(a, n0, n1, scratch, index, bad);
    case Isa::avx2:
      return forward ? fused_forward_avx2(a, n0, n1, scratch, index, bad)
                     : fused_backward_avx2(a, n0, n1, scratch, index, bad);
    default:
      break;
  }
#endif
  return forward ? fused_forward_generic(a, n0, n1, scratch, index, bad)
                 : fused_backward_generic(a, n0, n1, scratch, index, bad);
}

// Runs the fused kernel over the batch, images split over threads; `per_range(begin, a)` may
// point the gradient outputs of `a` at buffers private to that range of images.
template <typename S, typename PerRange>
void run_batch(bool forward, const FusedConv<S>& shared, PerRange per_range) {
  const int64_t NP = shared.Ho * shared.Wo;
  at::parallel_for(0, shared.N, 1, [&](int64_t begin, int64_t end) {
    FusedConv<S> a = shared;
    per_range(begin, a);
    std::vector<S> scratch(fused_scratch_values(a));
    std::vector<int64_t> index(fused_scratch_indices(a.T, NP));
    int64_t bad = 0;
    TORCH_CHECK(run_fused(forward, a, begin, end, scratch.data(), index.data(), &bad),
        assignment_range_message(bad, a.T));
  });
}

std::optional<at::Tensor> defined_or_none(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

at::Tensor tiled_conv_cpu(const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& assignment, at::IntArrayRef stride,
    at::IntArrayRef padding, const std::optional<at::Tensor>& region, int64_t tile_capacity) {
  const ConvGeometry s = check_tiled_conv(input, weight, bias, assignment, stride, padding, region);
  check_tile_capacity(assignment, s.T, tile_capacity);
  // With a capacity, one tile takes the CUDA kernels' path (no host copy), tested here too.
  if (s.T == 1)
    return single_tile_forward(
        input, weight, bias, assignment, stride, padding, region, tile_capacity >= 0);
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo}, input.options());
  if (s.N == 0) return out;
  const auto b = defined_or_none(bias), reg = defined_or_none(region);
  const at::Tensor x = input.contiguous(), assign = assignment.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "tiled_conv_cpu", [&] {
    FusedConv<scalar_t> a = fused_geometry<FusedConv<scalar_t>>(s, reg.has_value());
    at::Tensor kernels = at::zeros({s.T, a.K, a.Opad}, input.options());
    kernels.narrow(2, 0, s.O).copy_(kernels_hwc(weight).transpose(1, 2));
    a.x = x.data_ptr<scalar_t>();
    a.kernels_ko = kernels.data_ptr<scalar_t>();
    a.bias = b ? b->data_ptr<scalar_t>() : nullptr;
    a.assignment = assign.data_ptr<int64_t>();
    a.region = reg ? reg->data_ptr<int64_t>() : nullptr;
    a.out = out.data_ptr<scalar_t>();
    run_batch<scalar_t>(true, a, [](int64_t, FusedConv<scalar_t>&) {});
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiled_conv_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& assignment, at::IntArrayRef stride, at::IntArrayRef padding,
    const std::optional<at::Tensor>& region, std::array<bool, 3> mask, int64_t tile_capacity) {
  const ConvGeometry s =
      check_tiled_conv(input, weight, std::nullopt, assignment, stride, padding, region);
  check_conv_grad_output(grad_output, input, s);
  check_tile_capacity(assignment, s.T, tile_capacity);
  if (s.T == 1)
    return single_tile_backward(grad_output, input, weight, assignment, stride, padding, region,
                                mask, tile_capacity >= 0);
  const auto opts = input.options();
  const int64_t T = s.T, O = s.O;
  const auto reg = defined_or_none(region);
  at::Tensor grad_input = mask[0] ? at::empty({s.N, s.C, s.H, s.W}, opts) : at::empty({0}, opts);
  at::Tensor grad_k = mask[1] ? at::zeros({T, O, s.K}, opts) : at::Tensor();
  at::Tensor grad_b = mask[2] ? at::zeros({T, O}, opts) : at::empty({0}, opts);
  if (s.N > 0 && (mask[0] || mask[1] || mask[2])) {
    const at::Tensor x = input.contiguous(), assign = assignment.contiguous();
    const at::Tensor go = grad_output.contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "tiled_conv_backward_cpu", [&] {
      FusedConv<scalar_t> a = fused_geometry<FusedConv<scalar_t>>(s, reg.has_value());
      at::Tensor kernels;
      if (mask[0]) {
        kernels = at::zeros({T, O, a.Kpad}, opts);
        kernels.narrow(2, 0, a.K).copy_(kernels_hwc(weight));
        a.kernels_ok = kernels.data_ptr<scalar_t>();
        a.grad_x = grad_input.data_ptr<scalar_t>();
      }
      a.x = x.data_ptr<scalar_t>();
      a.assignment = assign.data_ptr<int64_t>();
      a.region = reg ? reg->data_ptr<int64_t>() : nullptr;
      a.grad_out = go.data_ptr<scalar_t>();
      // Weight and bias gradients are summed per range of images, then in range order, so
      // the result does not depend on which thread finishes first.
      std::map<int64_t, std::pair<at::Tensor, at::Tensor>> partial;
      std::mutex partial_mutex;
      run_batch<scalar_t>(false, a, [&](int64_t begin, FusedConv<scalar_t>& range) {
        at::Tensor k = mask[1] ? at::zeros({T, O, a.Kpad}, opts) : at::Tensor();
        at::Tensor b = mask[2] ? at::zeros({T, O}, opts) : at::Tensor();
        range.grad_k = mask[1] ? k.data_ptr<scalar_t>() : nullptr;
        range.grad_b = mask[2] ? b.data_ptr<scalar_t>() : nullptr;
        std::lock_guard<std::mutex> lock(partial_mutex);
        partial[begin] = {k, b};
      });
      at::Tensor padded_k = mask[1] ? at::zeros({T, O, a.Kpad}, opts) : at::Tensor();
      for (const auto& entry : partial) {
        if (mask[1]) padded_k += entry.second.first;
        if (mask[2]) grad_b += entry.second.second;
      }
      if (mask[1]) grad_k = padded_k.narrow(2, 0, a.K);
    });
  }
  at::Tensor grad_weight = mask[1]
      ? grad_k.reshape({T, O, s.kh, s.kw, s.C}).permute({0, 1, 4, 2, 3}).contiguous()
      : at::empty({0}, opts);
  return {grad_input, grad_weight, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("tiled_conv", &tiled_conv_cpu);
  m.impl("tiled_conv_backward", &tiled_conv_backward_cpu);
}

}  // namespace rapa
