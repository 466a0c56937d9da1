// The largest |x| of each row of a contiguous (M, K) tensor, for the analog CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace rapa {

// The largest |x| of each row, in one pass without a temporary; NaN where a row holds one.
inline at::Tensor cpu_row_absmax(const at::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor out = at::empty({M}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "row_absmax", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, M, 64, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        // Two reductions the compiler vectorizes (a max, an or): a NaN wins, as in torch's
        // amax, without a branch in the max.
        scalar_t best = 0;
        int nan = 0;
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t a = std::abs(src[m * K + k]);
          best = best < a ? a : best;
          nan |= a != a;
        }
        dst[m] = nan ? std::numeric_limits<scalar_t>::quiet_NaN() : best;
      }
    });
  });
  return out;
}

}  // namespace rapa
