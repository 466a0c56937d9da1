// CUDA kernels of rapa::rpu_update (operators/rpu_update.h holds the model): one thread per
// train for the pulses, then one thread per weight that walks its array's rows in order. The
// draws are the CPU kernel's (counter-based, same keys), so both devices give the same result.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "launch.cuh"
#include "rpu_update.h"

namespace rapa {
namespace {

template <typename S>
__global__ void pulses_kernel(const S* __restrict__ v, const double* __restrict__ xmax,
    const double* __restrict__ dmax, const int64_t* __restrict__ seed, UpdateSettings u,
    int64_t M, int64_t width, bool is_x, uint64_t* __restrict__ bits) {
  const uint64_t key = mix_seed(static_cast<uint64_t>(seed[0]), is_x ? kStreamPulseX : kStreamPulseD);
  RAPA_KERNEL_LOOP(idx, M * width) {
    const int64_t m = idx / width;
    const RowPulses p = row_pulses(xmax[m], dmax[m], u);
    bits[idx] = pulse_train(static_cast<double>(v[idx]), is_x ? p.a : p.b, p.bl, key, idx);
  }
}

template <typename S>
__global__ void apply_kernel(S* __restrict__ w, const S* __restrict__ x, const S* __restrict__ d,
    const uint64_t* __restrict__ bx, const uint64_t* __restrict__ bd,
    const int64_t* __restrict__ order, const int64_t* __restrict__ offsets,
    const S* __restrict__ up, const S* __restrict__ down, const S* __restrict__ lo,
    const S* __restrict__ hi, const S* __restrict__ table, const int64_t* __restrict__ seed,
    S dw_min_std, int64_t T, int64_t O, int64_t K) {
  const uint64_t key = mix_seed(static_cast<uint64_t>(seed[0]), kStreamStepNoise);
  RAPA_KERNEL_LOOP(idx, T * O * K) {
    const int64_t t = idx / (O * K), i = (idx / K) % O, j = idx % K;
    S value = w[idx];
    for (int64_t r = offsets[t]; r < offsets[t + 1]; ++r) {
      const int64_t m = order[r];
      const uint64_t c = bx[m * K + j] & bd[m * O + i];
      if (!c) continue;
      const S z = dw_min_std > S(0)
          ? normal_draw(table, key, static_cast<uint64_t>((m * O + i) * K + j)) : S(0);
      value = pulsed_step<S>(value, __popcll(c), (x[m * K + j] < 0) != (d[m * O + i] < 0),
          up[idx], down[idx], lo[idx], hi[idx], dw_min_std, z);
    }
    w[idx] = value;
  }
}

struct CudaUpdateKernels {
  static at::Tensor row_absmax(const at::Tensor& x) { return x.abs().amax(1); }

  // Every train as a word (bx, bd), then one thread per weight over its array's rows, sorted.
  static void update(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
      const at::Tensor& tile, const at::Tensor& xmax, const at::Tensor& dmax,
      const at::Tensor& dw_up, const at::Tensor& dw_down, const at::Tensor& w_min,
      const at::Tensor& w_max, const at::Tensor& seed, const UpdateSettings& u) {
    const int64_t M = x.size(0), T = weight.size(0);
    const at::Tensor order = rows_by_tile(tile);
    const std::vector<int64_t> counts = tile_counts(tile, order, T);
    std::vector<int64_t> offsets(T + 1, 0);
    for (int64_t t = 0; t < T; ++t) offsets[t + 1] = offsets[t] + counts[t];
    const at::Tensor offs = at::tensor(offsets, tile.options().device(at::kCPU)).to(tile.device());
    at::Tensor bx = at::empty({M, x.size(1)}, tile.options());
    at::Tensor bd = at::empty({M, d.size(1)}, tile.options());
    pulses(x, d, xmax, dmax, seed, u, bx, bd);
    apply(weight, x, d, bx, bd, order, offs, dw_up, dw_down, w_min, w_max, seed, u);
  }

  static void pulses(const at::Tensor& x, const at::Tensor& d, const at::Tensor& xmax,
      const at::Tensor& dmax, const at::Tensor& seed, const UpdateSettings& u, at::Tensor& bx,
      at::Tensor& bd) {
    const int64_t M = x.size(0), K = x.size(1), O = d.size(1);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rpu_pulses_cuda", [&] {
      pulses_kernel<scalar_t><<<grid_for(M * K), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), xmax.data_ptr<double>(), dmax.data_ptr<double>(),
          seed.data_ptr<int64_t>(), u, M, K, true,
          reinterpret_cast<uint64_t*>(bx.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      pulses_kernel<scalar_t><<<grid_for(M * O), kThreads, 0, stream>>>(
          d.data_ptr<scalar_t>(), xmax.data_ptr<double>(), dmax.data_ptr<double>(),
          seed.data_ptr<int64_t>(), u, M, O, false,
          reinterpret_cast<uint64_t*>(bd.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void apply(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
      const at::Tensor& bx, const at::Tensor& bd, const at::Tensor& order,
      const at::Tensor& offsets, const at::Tensor& dw_up, const at::Tensor& dw_down,
      const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed,
      const UpdateSettings& u) {
    const int64_t T = weight.size(0), O = weight.size(1), K = weight.size(2);
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "rpu_apply_cuda", [&] {
      const at::Tensor table = normal_table(weight.scalar_type(), weight.device());
      apply_kernel<scalar_t><<<grid_for(T * O * K), kThreads, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
          weight.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
          reinterpret_cast<const uint64_t*>(bx.data_ptr<int64_t>()),
          reinterpret_cast<const uint64_t*>(bd.data_ptr<int64_t>()), order.data_ptr<int64_t>(),
          offsets.data_ptr<int64_t>(), dw_up.data_ptr<scalar_t>(), dw_down.data_ptr<scalar_t>(),
          w_min.data_ptr<scalar_t>(), w_max.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
          seed.data_ptr<int64_t>(), static_cast<scalar_t>(u.dw_min_std), T, O, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

void rpu_update_cuda(at::Tensor& weight, const at::Tensor& x, const at::Tensor& d,
    const at::Tensor& tile, const at::Tensor& dw_up, const at::Tensor& dw_down,
    const at::Tensor& w_min, const at::Tensor& w_max, const at::Tensor& seed, double lr,
    double dw_min, double dw_min_std, int64_t desired_bl, bool update_management,
    bool bl_management) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const UpdateSettings u{lr, dw_min, dw_min_std, desired_bl, update_management, bl_management};
  rpu_update_driver<CudaUpdateKernels>(weight, x, d, tile, dw_up, dw_down, w_min, w_max, seed, u);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("rpu_update", &rpu_update_cuda);
}

}  // namespace rapa
