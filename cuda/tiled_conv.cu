// CUDA kernels of rapa::tiled_conv and its backward.
//
// Patches are sorted by tile on the device (a stable argsort of the assignment) into a padded
// layout: tile t owns rows [t * cap, t * cap + rows_t) of a (T, cap, K) im2col tensor, cap being
// the largest tile's row count, and pad rows are zero. One kernel gathers the patches, one
// batched cuBLAS product (bmm) multiplies every tile by its kernel matrix, and one kernel writes
// the output: a fixed handful of launches whatever T is. The backward mirrors it (the weight
// gradient is one bmm, the bias gradient one sum over rows, pad rows adding nothing); the input
// gradient is gathered per input pixel (no atomics, so it is deterministic). The layout is
// operators/tile_layout.h's: without a tile_capacity the tile sizes reach the host in one
// small copy, which also carries the range check of the assignment; with one (the tiling
// schemes know it) nothing does, and a CUDA graph can hold the whole op. Balanced schemes pad
// little; the padding is at most T times the kept rows.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "single_tile.h"
#include "launch.cuh"
#include "tile_layout.h"

namespace rapa {
namespace {

// The kernels take the ConvGeometry (geometry.h) of check_tiled_conv by value.

// P[r, k] = input pixel k (in (c, ky, kx) order) of the patch on padded row r (0 on pad rows).
template <typename scalar_t>
__global__ void gather_patches_kernel(const scalar_t* __restrict__ x,
    const int64_t* __restrict__ region, const int64_t* __restrict__ tiles,
    const int64_t* __restrict__ order, int64_t rows, ConvGeometry g, scalar_t* __restrict__ P) {
  RAPA_KERNEL_LOOP(i, rows * g.K) {
    const int64_t r = i / g.K, k = i % g.K, p = order[r];
    if (p < 0) {
      P[i] = scalar_t(0);
      continue;
    }
    const int64_t n = p / g.NP, q = p % g.NP;
    const int64_t c = k / (g.kh * g.kw), ky = (k / g.kw) % g.kh, kx = k % g.kw;
    const int64_t iy = (q / g.Wo) * g.sh - g.ph + ky, ix = (q % g.Wo) * g.sw - g.pw + kx;
    scalar_t v = scalar_t(0);
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W &&
        (region == nullptr || region[iy * g.W + ix] == tiles[p]))
      v = x[((n * g.C + c) * g.H + iy) * g.W + ix];
    P[i] = v;
  }
}

// out[n, o, y, x] = Y[row of the patch, o] + bias[tile, o], or 0 for a dropped patch.
template <typename scalar_t>
__global__ void scatter_output_kernel(const scalar_t* __restrict__ Y,
    const scalar_t* __restrict__ bias, const int64_t* __restrict__ tiles,
    const int64_t* __restrict__ row_of, int64_t total, ConvGeometry g, scalar_t* __restrict__ out) {
  RAPA_KERNEL_LOOP(i, total) {
    const int64_t q = i % g.NP, o = (i / g.NP) % g.O, n = i / (g.NP * g.O);
    const int64_t p = n * g.NP + q, r = row_of[p];
    out[i] = r < 0 ? scalar_t(0) : Y[r * g.O + o] + (bias ? bias[tiles[p] * g.O + o] : scalar_t(0));
  }
}

// G[r, o] = grad_output of the patch on padded row r (0 on pad rows).
template <typename scalar_t>
__global__ void gather_grad_kernel(const scalar_t* __restrict__ go,
    const int64_t* __restrict__ order, int64_t rows, ConvGeometry g, scalar_t* __restrict__ G) {
  RAPA_KERNEL_LOOP(i, rows * g.O) {
    const int64_t r = i / g.O, o = i % g.O, p = order[r];
    G[i] = p < 0 ? scalar_t(0) : go[((p / g.NP) * g.O + o) * g.NP + p % g.NP];
  }
}

// grad_input[n, c, iy, ix] = sum over the patches that read this pixel of their row gradient.
template <typename scalar_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ dP, const int64_t* __restrict__ region,
    const int64_t* __restrict__ tiles, const int64_t* __restrict__ row_of, int64_t total,
    ConvGeometry g, scalar_t* __restrict__ grad_input) {
  RAPA_KERNEL_LOOP(i, total) {
    const int64_t ix = i % g.W, iy = (i / g.W) % g.H, c = (i / (g.W * g.H)) % g.C;
    const int64_t n = i / (g.W * g.H * g.C);
    const int64_t pixel_region = region ? region[iy * g.W + ix] : 0;
    scalar_t acc = scalar_t(0);
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t ty = iy + g.ph - ky;
      if (ty < 0 || ty % g.sh != 0 || ty / g.sh >= g.Ho) continue;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t tx = ix + g.pw - kx;
        if (tx < 0 || tx % g.sw != 0 || tx / g.sw >= g.Wo) continue;
        const int64_t p = n * g.NP + (ty / g.sh) * g.Wo + tx / g.sw, r = row_of[p];
        if (r < 0 || (region && tiles[p] != pixel_region)) continue;
        acc += dP[r * g.K + (c * g.kh + ky) * g.kw + kx];
      }
    }
    grad_input[i] = acc;
  }
}

at::Tensor tiled_conv_cuda(const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& assignment, at::IntArrayRef stride,
    at::IntArrayRef padding, const std::optional<at::Tensor>& region, int64_t tile_capacity) {
  const ConvGeometry s = check_tiled_conv(input, weight, bias, assignment, stride, padding, region);
  check_tile_capacity_range(tile_capacity, assignment.numel());
  if (s.T == 1)
    return single_tile_forward(
        input, weight, bias, assignment, stride, padding, region, tile_capacity >= 0);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), tiles = assignment.contiguous();
  const at::Tensor kernels = weight.contiguous().view({s.T, s.O, s.K});
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const at::Tensor reg = region.has_value() && region->defined() ? region->contiguous() : at::Tensor();
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo}, x.options());
  if (out.numel() == 0) return out;
  const TileLayout ts = tile_layout(tiles, s.T, tile_capacity);
  at::Tensor P = at::empty({s.T, ts.cap, s.K}, x.options());
  at::Tensor Y = at::empty({s.T, ts.cap, s.O}, x.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tiled_conv_cuda", [&] {
    if (ts.cap > 0) {
      gather_patches_kernel<scalar_t><<<grid_for(P.numel()), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), reg.defined() ? reg.data_ptr<int64_t>() : nullptr,
          tiles.data_ptr<int64_t>(), ts.order.data_ptr<int64_t>(), s.T * ts.cap, s,
          P.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::bmm_out(Y, P, kernels.transpose(1, 2));
    }
    scatter_output_kernel<scalar_t><<<grid_for(out.numel()), kThreads, 0, stream>>>(
        Y.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
        tiles.data_ptr<int64_t>(), ts.row_of.data_ptr<int64_t>(), out.numel(), s,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiled_conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& assignment, at::IntArrayRef stride, at::IntArrayRef padding,
    const std::optional<at::Tensor>& region, std::array<bool, 3> mask, int64_t tile_capacity) {
  const ConvGeometry s =
      check_tiled_conv(input, weight, std::nullopt, assignment, stride, padding, region);
  check_conv_grad_output(grad_output, input, s);
  check_tile_capacity_range(tile_capacity, assignment.numel());
  if (s.T == 1)
    return single_tile_backward(grad_output, input, weight, assignment, stride, padding, region, mask,
                                tile_capacity >= 0);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto opts = input.options();
  at::Tensor gi = mask[0] ? at::empty_like(input, at::MemoryFormat::Contiguous) : at::empty({0}, opts);
  at::Tensor gw = mask[1] ? at::zeros({s.T, s.O, s.K}, opts) : at::empty({0}, opts);
  at::Tensor gb = mask[2] ? at::zeros({s.T, s.O}, opts) : at::empty({0}, opts);
  if (!(mask[0] || mask[1] || mask[2]) || s.N == 0) {
    if (mask[0]) gi.zero_();
    if (mask[1]) gw = gw.view({s.T, s.O, s.C, s.kh, s.kw});
    return {gi, gw, gb};
  }
  const at::Tensor x = input.contiguous(), tiles = assignment.contiguous();
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor kernels = weight.contiguous().view({s.T, s.O, s.K});
  const at::Tensor reg = region.has_value() && region->defined() ? region->contiguous() : at::Tensor();
  const int64_t* reg_p = reg.defined() ? reg.data_ptr<int64_t>() : nullptr;
  const TileLayout ts = tile_layout(tiles, s.T, tile_capacity);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tiled_conv_backward_cuda", [&] {
    const int64_t rows = s.T * ts.cap;
    at::Tensor G = at::empty({s.T, ts.cap, s.O}, opts);
    at::Tensor P = mask[1] ? at::empty({s.T, ts.cap, s.K}, opts) : at::Tensor();
    at::Tensor dP = mask[0] ? at::empty({s.T, ts.cap, s.K}, opts) : at::Tensor();
    if (rows > 0) {
      gather_grad_kernel<scalar_t><<<grid_for(G.numel()), kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), ts.order.data_ptr<int64_t>(), rows, s,
          G.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (mask[1]) {
        gather_patches_kernel<scalar_t><<<grid_for(P.numel()), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), reg_p, tiles.data_ptr<int64_t>(),
            ts.order.data_ptr<int64_t>(), rows, s, P.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        at::bmm_out(gw, G.transpose(1, 2), P);
      }
      if (mask[2]) at::sum_out(gb, G, at::IntArrayRef{1});
      if (mask[0]) at::bmm_out(dP, G, kernels);
    }
    if (mask[0]) {
      if (rows == 0) {
        gi.zero_();
      } else {
        col2im_kernel<scalar_t><<<grid_for(gi.numel()), kThreads, 0, stream>>>(
            dP.data_ptr<scalar_t>(), reg_p, tiles.data_ptr<int64_t>(),
            ts.row_of.data_ptr<int64_t>(), gi.numel(), s, gi.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  if (mask[1]) gw = gw.view({s.T, s.O, s.C, s.kh, s.kw});
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("tiled_conv", &tiled_conv_cuda);
  m.impl("tiled_conv_backward", &tiled_conv_backward_cuda);
}

}  // namespace rapa
