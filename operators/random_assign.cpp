// rapa::random_assign: a fresh balanced random partition of each image's patches into tiles.
//
// The op draws a 64-bit seed tensor from the caller's generator on the target device (so the
// GPU path never goes through the host), then random_assign_seeded fills each image with its
// own counter-based stream: the result does not depend on the thread count, and a seed gives
// the same partition on the CPU and the GPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <limits>

#include "checks.h"
#include "counter_rng.h"

namespace rapa {
namespace {

at::Tensor random_assign_seeded_cpu(
    const at::Tensor& seed, int64_t batch, int64_t height, int64_t width, int64_t num_tiles) {
  check_random_assign(batch, height, width, num_tiles);
  check_seed(seed);
  const uint64_t s = static_cast<uint64_t>(seed.reshape({-1})[0].item<int64_t>());
  at::Tensor out = at::empty({batch, height, width}, seed.options());
  const int64_t P = height * width;
  int64_t* dst = out.data_ptr<int64_t>();
  at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      CounterRng rng(s, static_cast<uint64_t>(n));
      balanced_partition(dst + n * P, P, num_tiles, rng);
    }
  });
  return out;
}

at::Tensor random_assign(
    int64_t batch, int64_t height, int64_t width, int64_t num_tiles,
    std::optional<at::Generator> generator, std::optional<at::Device> device) {
  check_random_assign(batch, height, width, num_tiles);
  const auto options = at::TensorOptions().dtype(at::kLong).device(device.value_or(at::kCPU));
  at::Tensor seed = at::randint(std::numeric_limits<int64_t>::max(), {1}, generator, options);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rapa::random_assign_seeded", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t, int64_t)>();
  return op.call(seed, batch, height, width, num_tiles);
}

}  // namespace

TORCH_LIBRARY_IMPL(rapa, CPU, m) {
  m.impl("random_assign_seeded", &random_assign_seeded_cpu);
}

// No tensor arguments: the dispatcher runs this kernel for every device.
TORCH_LIBRARY_IMPL(rapa, CompositeImplicitAutograd, m) {
  m.impl("random_assign", &random_assign);
}

}  // namespace rapa
