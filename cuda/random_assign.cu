// CUDA kernel of rapa::random_assign_seeded: one thread per image draws that image's balanced
// partition with the same counter-based generator as the CPU kernel (operators/counter_rng.h),
// reading the seed from device memory, so a partition never passes through the host and a
// seed gives the same partition on both devices.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "counter_rng.h"
#include "launch.cuh"

namespace rapa {
namespace {

__global__ void random_assign_kernel(
    const int64_t* __restrict__ seed, int64_t batch, int64_t P, int64_t T, int64_t* out) {
  RAPA_KERNEL_LOOP(n, batch) {
    CounterRng rng(static_cast<uint64_t>(seed[0]), static_cast<uint64_t>(n));
    balanced_partition(out + n * P, P, T, rng);
  }
}

at::Tensor random_assign_seeded_cuda(
    const at::Tensor& seed, int64_t batch, int64_t height, int64_t width, int64_t num_tiles) {
  check_random_assign(batch, height, width, num_tiles);
  check_seed(seed);
  const c10::cuda::CUDAGuard guard(seed.device());
  const at::Tensor sd = seed.contiguous();
  at::Tensor out = at::empty({batch, height, width}, seed.options());
  if (batch == 0) return out;
  random_assign_kernel<<<grid_for(batch), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      sd.data_ptr<int64_t>(), batch, height * width, num_tiles, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CUDA, m) {
  m.impl("random_assign_seeded", &random_assign_seeded_cuda);
}

}  // namespace rapa
