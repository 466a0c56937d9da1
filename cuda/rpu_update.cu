// CUDA kernels of rapa::rpu_update (operators/rpu_update.h holds the model): one thread per
// train for the pulses, then the walk of each weight over its array's rows in order (see
// walk_kernel). The draws are the CPU kernel's (counter-based, same keys), so both devices
// give the same result.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "launch.cuh"
#include "rpu_update.h"

namespace rapa {
namespace {

// `rate`: the learning rate, read here (u.lr is not set on this device).
template <typename S>
__global__ void pulses_kernel(const S* __restrict__ v, const double* __restrict__ xmax,
    const double* __restrict__ dmax, const int64_t* __restrict__ seed,
    const double* __restrict__ rate, UpdateSettings u, int64_t M, int64_t width, bool is_x,
    uint64_t* __restrict__ bits) {
  const uint64_t key = mix_seed(static_cast<uint64_t>(seed[0]), is_x ? kStreamPulseX : kStreamPulseD);
  u.lr = rate[0];
  RAPA_KERNEL_LOOP(idx, M * width) {
    const int64_t m = idx / width;
    const RowPulses p = row_pulses(xmax[m], dmax[m], u);
    bits[idx] = pulse_train(static_cast<double>(v[idx]), is_x ? p.a : p.b, p.bl, key, idx);
  }
}

// The walk, a block per 32 weights of one array (lanes of warp 0), over that array's rows in
// chunks of Walk<S>::kRows: the other warps stage the next chunk's events in shared memory (for each
// row and weight: n coincidences, signed + for up and - for down, 0 for none; and the noise
// draw) while warp 0 applies the current chunk's, in row order, one weight per lane. The
// sequence of operations on each weight is the CPU kernel's, so the results are too; only
// the loads and draws, which do not depend on the weight, run in parallel.
constexpr int kWalkWarps = 8;

template <typename S>
struct Walk {
  static constexpr int kRows = sizeof(S) == 4 ? 128 : 64;  // two chunks within 48 KB
};

template <typename S>
__global__ void __launch_bounds__(32 * kWalkWarps) walk_kernel(S* __restrict__ w,
    const S* __restrict__ x, const S* __restrict__ d, const uint64_t* __restrict__ bx,
    const uint64_t* __restrict__ bd, const int64_t* __restrict__ order,
    const int64_t* __restrict__ offsets, const S* __restrict__ up, const S* __restrict__ down,
    const S* __restrict__ lo, const S* __restrict__ hi, const S* __restrict__ table,
    const int64_t* __restrict__ seed, S dw_min_std, int64_t T, int64_t O, int64_t K,
    int64_t groups) {  // groups: of 32 weights per array, the launch's own count
  constexpr int R = Walk<S>::kRows;
  constexpr int kStagedRows = (R + kWalkWarps - 2) / (kWalkWarps - 1);  // per staging warp
  static_assert(kStagedRows <= 32, "a staging warp's row indices fit its lanes");
  // events[buffer][rows / 4][lane]: four rows' events of one weight in one word, so that the
  // walk reads a word per four rows and skips it whole when none fires.
  __shared__ uint32_t events[2][R / 4][32];
  __shared__ S noise[2][R][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool noisy = dw_min_std > S(0);
  const uint64_t key = mix_seed(static_cast<uint64_t>(seed[0]), kStreamStepNoise);
  for (int64_t block = blockIdx.x; block < T * groups; block += gridDim.x) {
    const int64_t t = block / groups, q = (block % groups) * 32 + lane;
    const bool active = q < O * K;
    const int64_t i = active ? q / K : 0, j = active ? q % K : 0, at = t * O * K + q;
    const int64_t begin = offsets[t], end = offsets[t + 1];
    const int64_t chunks = (end - begin + R - 1) / R;
    if (chunks == 0) continue;  // an array without rows (the whole block, before any barrier)
    // Warps 1.. write chunk c's events into buffer b; rows past the array's end fire nothing.
    const auto stage = [&](int64_t c, int b) {
      unsigned char* bytes = reinterpret_cast<unsigned char*>(events[b]);
      const int64_t first = begin + c * R;
      // This warp stages rows rr = warp - 1 + 7 k; lane k reads the k-th one's index first, so
      // that the loads of each row depend on no other load.
      const int mine = warp - 1 + (kWalkWarps - 1) * lane;
      const int64_t my_m = lane < kStagedRows && mine < R && first + mine < end
          ? order[first + mine] : 0;
#pragma unroll 4
      for (int k = 0; k < kStagedRows; ++k) {
        const int rr = warp - 1 + (kWalkWarps - 1) * k;
        const int64_t m = __shfl_sync(0xffffffffu, my_m, k);
        if (rr >= R) break;  // the same for the whole warp
        int e = 0;
        S z = S(0);
        if (active && first + rr < end) {
          const uint64_t hit = bx[m * K + j] & bd[m * O + i];
          if (hit) {
            const int n = __popcll(hit);
            e = (x[m * K + j] < 0) != (d[m * O + i] < 0) ? n : -n;
            if (noisy) z = normal_draw(table, key, static_cast<uint64_t>((m * O + i) * K + j));
          }
        }
        bytes[((rr >> 2) * 32 + lane) * 4 + (rr & 3)] = static_cast<unsigned char>(e & 0xFF);
        if (noisy) noise[b][rr][lane] = z;
      }
    };
    S value = S(0), s_up = S(0), s_down = S(0), s_lo = S(0), s_hi = S(0);
    if (warp == 0 && active) {
      value = w[at], s_up = up[at], s_down = down[at], s_lo = lo[at], s_hi = hi[at];
    }
    if (warp > 0) stage(0, 0);
    __syncthreads();
    for (int64_t c = 0; c < chunks; ++c) {
      const int b = static_cast<int>(c & 1);
      if (warp == 0) {
        for (int k = 0; k < R / 4; ++k) {
          const uint32_t word = events[b][k][lane];
          if (!word) continue;
          for (int s = 0; s < 4; ++s) {
            const int e = static_cast<int8_t>(word >> (8 * s));
            if (e) {
              value = pulsed_step<S>(value, e < 0 ? -e : e, e > 0, s_up, s_down, s_lo, s_hi,
                  dw_min_std, noisy ? noise[b][4 * k + s][lane] : S(0));
            }
          }
        }
      } else if (c + 1 < chunks) {
        stage(c + 1, static_cast<int>((c + 1) & 1));
      }
      __syncthreads();  // the walked buffer is free, the staged one full
    }
    if (warp == 0 && active) w[at] = value;
  }
}

struct CudaUpdateKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return x.abs().amax(1); }

  // Every train as a word (bx, bd), then the walk over each array's rows in order. The rows
  // are sorted by array on the device and each array's run found by a search of the sorted
  // arrays (rows no array computes, -1, come first): no count comes to the host.
  static void update(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
      const at::Tensor& tile, const at::Tensor& xmax, const at::Tensor& dmax,
      const at::Tensor& dw_up, const at::Tensor& dw_down, const at::Tensor& w_min,
      const at::Tensor& w_max, const at::Tensor& seed, const at::Tensor& rate,
      const UpdateSettings& u) {
    const int64_t M = x.size(0), T = weight.size(0);
    const auto sorted = tile.sort(/*stable=*/true, 0, false);
    const at::Tensor& order = std::get<1>(sorted);
    const at::Tensor offsets =
        at::searchsorted(std::get<0>(sorted), at::arange(T + 1, tile.options()));
    at::Tensor bx = at::empty({M, x.size(1)}, tile.options());
    at::Tensor bd = at::empty({M, d.size(1)}, tile.options());
    pulses(x, d, xmax, dmax, seed, rate, u, bx, bd);
    walk(weight, x, d, bx, bd, order, offsets, dw_up, dw_down, w_min, w_max, seed, u);
  }

  static void pulses(const at::Tensor& x, const at::Tensor& d, const at::Tensor& xmax,
      const at::Tensor& dmax, const at::Tensor& seed, const at::Tensor& rate,
      const UpdateSettings& u, at::Tensor& bx, at::Tensor& bd) {
    const int64_t M = x.size(0), K = x.size(1), O = d.size(1);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rpu_pulses_cuda", [&] {
      pulses_kernel<scalar_t><<<grid_for(M * K), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), xmax.data_ptr<double>(), dmax.data_ptr<double>(),
          seed.data_ptr<int64_t>(), rate.data_ptr<double>(), u, M, K, true,
          reinterpret_cast<uint64_t*>(bx.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      pulses_kernel<scalar_t><<<grid_for(M * O), kThreads, 0, stream>>>(
          d.data_ptr<scalar_t>(), xmax.data_ptr<double>(), dmax.data_ptr<double>(),
          seed.data_ptr<int64_t>(), rate.data_ptr<double>(), u, M, O, false,
          reinterpret_cast<uint64_t*>(bd.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void walk(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
      const at::Tensor& bx, const at::Tensor& bd, const at::Tensor& order,
      const at::Tensor& offsets, const at::Tensor& dw_up, const at::Tensor& dw_down,
      const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed,
      const UpdateSettings& u) {
    const int64_t T = weight.size(0), O = weight.size(1), K = weight.size(2);
    const int64_t groups = (O * K + 31) / 32;  // of 32 weights, a block's each
    const int64_t blocks = std::min<int64_t>(T * groups, 1 << 20);
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "rpu_walk_cuda", [&] {
      const at::Tensor table = normal_table(weight.scalar_type(), weight.device());
      walk_kernel<scalar_t><<<static_cast<unsigned int>(blocks), 32 * kWalkWarps, 0,
                              c10::cuda::getCurrentCUDAStream()>>>(
          weight.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
          reinterpret_cast<const uint64_t*>(bx.data_ptr<int64_t>()),
          reinterpret_cast<const uint64_t*>(bd.data_ptr<int64_t>()), order.data_ptr<int64_t>(),
          offsets.data_ptr<int64_t>(), dw_up.data_ptr<scalar_t>(), dw_down.data_ptr<scalar_t>(),
          w_min.data_ptr<scalar_t>(), w_max.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
          seed.data_ptr<int64_t>(), static_cast<scalar_t>(u.dw_min_std), T, O, K, groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

void rpu_update_cuda(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
    const at::Tensor& tile, const at::Tensor& dw_up, const at::Tensor& dw_down,
    const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed, const at::Tensor& lr,
    double dw_min, double dw_min_std, int64_t desired_bl, bool update_management,
    bool bl_management) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const UpdateSettings u{0, dw_min, dw_min_std, desired_bl, update_management, bl_management};
  rpu_update_driver<CudaUpdateKernels>(weight, x, d, tile, dw_up, dw_down, w_min, w_max, seed, lr,
                                       u);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("rpu_update", &rpu_update_cuda);
}

}  // namespace rapa
