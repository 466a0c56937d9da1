// rapa::analog_mvm, device-agnostic part: an analog array's matrix-vector products, one per row.
//
// Per row (Gokmen & Vlasov 2016; Gokmen et al. 2017), in aihwkit 1.1.0's order
// (ForwardBackwardPassIOManaged): the input is divided by its absolute maximum (noise
// management), rounded to the DAC's step and clipped to its bound; the array multiplies (W x, or
// W^T d when transposed); Gaussian noise joins each output; the ADC rounds each output to its
// step; while any rounded output of a row lies beyond out_bound (strictly), bound management
// repeats that row with its input halved, until the total reduction would pass max_bm_factor;
// the outputs are clipped and the scales undone digitally. A row with an all-zero input, or
// with tile -1, outputs zero.
//
// This header holds the loop over passes and the per-array products (ATen); `Kernels` supplies
// the three elementwise steps for one device:
//   prepare(x, rows, scale, io) -> (R, In) scaled, quantized, clipped inputs of `rows`
//   add_noise_and_test(y, rows, seed, pass, M, io) -> bool (R,): noise added in place, saturation
//   write_out(y_rows, rows, scale, redo, io, y): outputs of the rows not redone, into y
//   row_absmax(x) -> (M,) the largest |x| of each row
#pragma once

#include <ATen/ATen.h>

#include "analog.h"

namespace rapa {

template <class Kernels>
at::Tensor analog_mvm_driver(const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& tile, const at::Tensor& seed, bool transposed, const AnalogIO& io) {
  check_floating(weight, "weight");
  check_dim(weight, 3, "weight", "(T, O, K): T arrays of O x K");
  const int64_t T = weight.size(0), O = weight.size(1), K = weight.size(2);
  const int64_t In = transposed ? O : K, Out = transposed ? K : O;
  check_analog_rows(input, "input", In, transposed ? "O, dim 1" : "K, dim 2", weight);
  check_tile(tile, input.size(0), weight);
  check_seed(seed);
  check_same_device(seed, "seed", weight, "weight");
  check_analog_io(io);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const int64_t M = x.size(0);
  if (M == 0 || In == 0 || Out == 0) return at::zeros({M, Out}, x.options());

  at::Tensor rows = rows_by_tile(tile);
  at::Tensor scale = io.noise_management ? Kernels::row_absmax(x) : at::ones({M}, x.options());
  if (io.noise_management) rows = rows.masked_select(scale.index_select(0, rows).gt(0));
  // Every row in `rows` is written by some pass (bound management stops at its limit); the
  // others are zero. Zeroing only those spares a pass over y, as large as the patch rows.
  at::Tensor y = at::empty({M, Out}, x.options());
  if (rows.numel() < M) {
    at::Tensor unwritten = at::ones({M}, tile.options().dtype(at::kBool));
    unwritten.index_fill_(0, rows, false);
    y.index_fill_(0, at::nonzero(unwritten).squeeze(1), 0);
  }
  at::Tensor reduction = at::ones({M}, x.options());  // bound management's factor per row
  for (int64_t pass = 0; rows.numel() > 0; ++pass) {
    const int64_t R = rows.numel();
    const at::Tensor row_reduction = reduction.index_select(0, rows);
    const at::Tensor s = (scale.index_select(0, rows) * row_reduction).contiguous();
    const at::Tensor xq = Kernels::prepare(x, rows, s, io);
    at::Tensor yr = at::empty({R, Out}, x.options());
    int64_t start = 0;
    const std::vector<int64_t> counts = tile_counts(tile, rows, T);
    for (int64_t t = 0; t < T; ++t) {  // rows come sorted by array: one product per array
      if (counts[t] == 0) continue;
      at::Tensor out = yr.narrow(0, start, counts[t]);
      at::mm_out(out, xq.narrow(0, start, counts[t]), transposed ? w[t] : w[t].t());
      start += counts[t];
    }
    const at::Tensor saturated = Kernels::add_noise_and_test(yr, rows, seed, pass, M, io);
    const at::Tensor redo = io.bound_management
        ? saturated.logical_and(row_reduction.mul(2).le(io.max_bm_factor))
        : at::zeros_like(saturated);
    Kernels::write_out(yr, rows, s, redo, io, y);
    rows = rows.masked_select(redo);
    reduction.index_copy_(0, rows, reduction.index_select(0, rows).mul(2));
  }
  return y;
}

}  // namespace rapa
