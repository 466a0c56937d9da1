// CPU kernel of rapa::rpu_update (rpu_update.h holds the model): the pulse trains of every row,
// kept only where they fire, then a walk of the coincidences in row order (see update()).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "row_absmax_cpu.h"
#include "rpu_update.h"

namespace rapa {
namespace {

// One pulse train that fires at all: the index of its x_j or d_i (bitwise-negated when the
// value is negative, so the sign travels with it) and its bits.
struct Fired {
  int32_t coded;
  uint64_t bits;
};

// The rows of one contiguous block that fire, in row order: for row rows[r], its d trains are
// ds[d_end[r - 1] .. d_end[r]) and its x trains xs[x_end[r - 1] .. x_end[r]).
struct FiredRows {
  std::vector<int64_t> rows, d_end, x_end;
  std::vector<Fired> ds, xs;
};

template <typename S>
inline int32_t code(int64_t index, S value) {
  return value < 0 ? static_cast<int32_t>(~index) : static_cast<int32_t>(index);
}

struct CpuUpdateKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return cpu_row_absmax(x); }

  // Phase 1, rows in blocks over threads: each row's trains, kept only where they fire. With
  // update management most do not, so the walk below touches a few percent of the pairs.
  // Phase 2: weight rows (array t, output i) are dealt to parts; each part walks every fired
  // row in order and applies the coincidences of its own weight rows. Rows of one array are
  // thereby applied in row order, as the array would; the draws are keyed by (row, i, j), so
  // the result does not depend on the number of threads.
  static void update(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
      const at::Tensor& tile, const at::Tensor& xmax, const at::Tensor& dmax,
      const at::Tensor& dw_up, const at::Tensor& dw_down, const at::Tensor& w_min,
      const at::Tensor& w_max, const at::Tensor& seed, const at::Tensor& /*rate: in u.lr*/,
      const UpdateSettings& u) {
    RECORD_FUNCTION("rapa::rpu_update::walk", std::vector<c10::IValue>());
    const int64_t M = x.size(0), K = x.size(1), O = d.size(1);
    const uint64_t s = static_cast<uint64_t>(seed.item<int64_t>());
    const uint64_t key_x = mix_seed(s, kStreamPulseX), key_d = mix_seed(s, kStreamPulseD);
    const uint64_t key_z = mix_seed(s, kStreamStepNoise);
    const at::Tensor tiles = tile.contiguous();
    const int64_t* tl = tiles.data_ptr<int64_t>();
    const double* xm = xmax.data_ptr<double>();
    const double* dm = dmax.data_ptr<double>();
    const int64_t threads = at::get_num_threads();
    const int64_t block = std::max<int64_t>(64, (M + 8 * threads - 1) / (8 * threads));
    std::vector<FiredRows> blocks((M + block - 1) / block);
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "rpu_update", [&] {
      const scalar_t* xv = x.data_ptr<scalar_t>();
      const scalar_t* dv = d.data_ptr<scalar_t>();
      at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) {
          FiredRows& f = blocks[k];
          for (int64_t m = k * block; m < std::min(M, (k + 1) * block); ++m) {
            if (tl[m] < 0) continue;  // no array computes this row
            const RowPulses p = row_pulses(xm[m], dm[m], u);
            if (!(p.a > 0)) continue;
            const size_t d_start = f.ds.size(), x_start = f.xs.size();
            for (int64_t i = 0; i < O; ++i) {
              const uint64_t bits = pulse_train(dv[m * O + i], p.b, p.bl, key_d, m * O + i);
              if (bits) f.ds.push_back({code(i, dv[m * O + i]), bits});
            }
            if (f.ds.size() == d_start) continue;  // x's trains could meet nothing
            for (int64_t j = 0; j < K; ++j) {
              const uint64_t bits = pulse_train(xv[m * K + j], p.a, p.bl, key_x, m * K + j);
              if (bits) f.xs.push_back({code(j, xv[m * K + j]), bits});
            }
            if (f.xs.size() == x_start) {
              f.ds.resize(d_start);
              continue;
            }
            f.rows.push_back(m);
            f.d_end.push_back(static_cast<int64_t>(f.ds.size()));
            f.x_end.push_back(static_cast<int64_t>(f.xs.size()));
          }
        }
      });
      const at::Tensor table = normal_table(weight.scalar_type(), weight.device());
      const scalar_t* z = table.data_ptr<scalar_t>();
      scalar_t* w = weight.data_ptr<scalar_t>();
      const scalar_t* up = dw_up.data_ptr<scalar_t>();
      const scalar_t* down = dw_down.data_ptr<scalar_t>();
      const scalar_t* lo = w_min.data_ptr<scalar_t>();
      const scalar_t* hi = w_max.data_ptr<scalar_t>();
      const scalar_t std_ = u.dw_min_std;
      at::parallel_for(0, threads, 1, [&](int64_t pb, int64_t pe) {
        for (int64_t part = pb; part < pe; ++part) {
          for (const FiredRows& f : blocks) {
            int64_t d_at = 0, x_at = 0;
            for (size_t r = 0; r < f.rows.size(); ++r) {
              const int64_t m = f.rows[r], x_begin = x_at;
              for (; d_at < f.d_end[r]; ++d_at) {
                const bool d_negative = f.ds[d_at].coded < 0;
                const int64_t i = d_negative ? ~f.ds[d_at].coded : f.ds[d_at].coded;
                const int64_t weight_row = tl[m] * O + i;
                if (weight_row % threads != part) continue;
                const uint64_t dbits = f.ds[d_at].bits;
                for (int64_t q = x_begin; q < f.x_end[r]; ++q) {
                  const uint64_t c = f.xs[q].bits & dbits;
                  if (!c) continue;
                  const bool x_negative = f.xs[q].coded < 0;
                  const int64_t j = x_negative ? ~f.xs[q].coded : f.xs[q].coded;
                  const int64_t at = weight_row * K + j;
                  const scalar_t noise = std_ > 0
                      ? normal_draw(z, key_z, static_cast<uint64_t>((m * O + i) * K + j))
                      : scalar_t(0);
                  w[at] = pulsed_step<scalar_t>(w[at], __builtin_popcountll(c),
                      x_negative != d_negative, up[at], down[at], lo[at], hi[at], std_, noise);
                }
              }
              x_at = f.x_end[r];
            }
          }
        }
      });
    });
  }
};

void rpu_update_cpu(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
    const at::Tensor& tile, const at::Tensor& dw_up, const at::Tensor& dw_down,
    const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed, const at::Tensor& lr,
    double dw_min, double dw_min_std, int64_t desired_bl, bool update_management,
    bool bl_management) {
  const UpdateSettings u{0, dw_min, dw_min_std, desired_bl, update_management, bl_management};
  rpu_update_driver<CpuUpdateKernels>(weight, x, d, tile, dw_up, dw_down, w_min, w_max, seed, lr,
                                      u);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("rpu_update", &rpu_update_cpu);
}

}  // namespace rapa
