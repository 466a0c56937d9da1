// rapa::analog_mvm, device-agnostic part: an analog array's matrix-vector products, one per row.
//
// Per row (Gokmen & Vlasov 2016; Gokmen et al. 2017), in aihwkit 1.1.0's order
// (ForwardBackwardPassIOManaged): the input is divided by its absolute maximum (noise
// management), rounded to the DAC's step and clipped to its bound; the array multiplies (W x, or
// W^T d when transposed); Gaussian noise joins each output; the ADC rounds each output to its
// step; while any rounded output of a row lies beyond out_bound (strictly), bound management
// repeats that row with its input halved, until the total reduction would pass max_bm_factor;
// the outputs are clipped and the scales undone digitally. A row with tile -1 outputs zero,
// and so does one with an all-zero input under noise management (its scale is 0: no pass
// computes it; without noise management its outputs are the noise). A row with a NaN input
// outputs NaN (its scale is NaN), as a digital product would: the NaN is not hidden.
//
// This header holds the driver (ATen): the rows are laid out by array in tile_layout's padded
// layout (tile_layout.h), every array's first pass is one batched product, and the rows that
// bound management repeats go through a kernel of their own that runs each such row's later
// passes to the end. Nothing reaches the host and no shape depends on the data where the caller
// gives a tile_capacity, so that a CUDA graph can hold the op. `Kernels` supplies for one
// device, on the padded rows (`order`: the row of each, -1 for one no pass computes):
//   row_absmax(x) -> (M,) the largest |x| of each row
//   prepare(x, order, scale, io) -> (R, In) scaled, quantized, clipped inputs (0 where -1)
//   add_noise_and_test(y, order, seed, M, io) -> bool (R,): the first pass's noise added in
//     place, saturation
//   write_out(y_rows, order, scale, redo, io, y): outputs of the rows not redone, into y
//   redo(x, w, order, scale, redo, cap, seed, transposed, io, y): the rows flagged in `redo`,
//     from their second pass on (input halved each time) until one does not saturate or the
//     reduction would pass max_bm_factor; their outputs into y
#pragma once

#include <ATen/ATen.h>

#include "analog.h"
#include "tile_layout.h"

namespace rapa {

template <class Kernels>
at::Tensor analog_mvm_driver(const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& tile, const at::Tensor& seed, bool transposed, const AnalogIO& io,
    int64_t tile_capacity) {
  check_floating(weight, "weight");
  check_dim(weight, 3, "weight", "(T, O, K): T arrays of O x K");
  const int64_t T = weight.size(0), O = weight.size(1), K = weight.size(2);
  const int64_t In = transposed ? O : K, Out = transposed ? K : O;
  check_analog_rows(input, "input", In, transposed ? "O, dim 1" : "K, dim 2", weight);
  check_tile(tile, input.size(0), weight);
  check_tile_capacity_range(tile_capacity, input.size(0));
  check_seed(seed);
  check_same_device(seed, "seed", weight, "weight");
  check_analog_io(io);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const int64_t M = x.size(0);
  at::Tensor y = at::zeros({M, Out}, x.options());  // rows no pass computes stay 0
  if (M == 0 || In == 0 || Out == 0) return y;
  const TileLayout layout = tile_layout(tile, T, tile_capacity);
  const int64_t R = T * layout.cap;
  if (R == 0) return y;
  at::Tensor scale = io.noise_management ? Kernels::row_absmax(x) : at::ones({M}, x.options());
  at::Tensor order = layout.order;
  if (io.noise_management)  // an all-zero input outputs 0, noise and all; one with NaN, NaN
    order = at::where(scale.index_select(0, order.clamp_min(0)).ne(0), order, -1);
  const at::Tensor xq = Kernels::prepare(x, order, scale, io);
  at::Tensor yr = at::bmm(xq.view({T, layout.cap, In}), transposed ? w : w.transpose(1, 2))
                      .view({R, Out});
  const at::Tensor saturated = Kernels::add_noise_and_test(yr, order, seed, M, io);
  // A second pass needs room for one halving of the input within max_bm_factor.
  bool repeats = false;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "analog_mvm_repeats", [&] {
    repeats = io.bound_management && bm_repeats<scalar_t>(scalar_t(1), io.max_bm_factor);
  });
  const at::Tensor redo = repeats ? saturated : at::zeros_like(saturated);
  Kernels::write_out(yr, order, scale, redo, io, y);
  if (repeats) Kernels::redo(x, w, order, scale, redo, layout.cap, seed, transposed, io, y);
  return y;
}

}  // namespace rapa
