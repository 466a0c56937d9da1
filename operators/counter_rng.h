// A counter-based random generator (splitmix64), identical on host and device, so that a
// partition drawn from one seed is the same on the CPU and the GPU and independent of threads.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace rapa {

// The generator's two steps as free functions with internal linkage, so that the kernels
// compiled for wide vector instruction sets (operators/isa/) inline their own copies: the
// start state of stream `stream` under `seed`, and splitmix64's output for a state.
RAPA_HD static inline uint64_t counter_state(uint64_t seed, uint64_t stream) {
  return seed ^ (stream * 0xD1B54A32D192ED03ull + 0x9E3779B97F4A7C15ull);
}

RAPA_HD static inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct CounterRng {
  uint64_t state;
  RAPA_HD CounterRng(uint64_t seed, uint64_t stream) : state(counter_state(seed, stream)) {}
  RAPA_HD uint64_t next() { return splitmix64(state += 0x9E3779B97F4A7C15ull); }
  // An integer in [0, n): the high word of a 64x64 product (bias below 2^-40 for n < 2^24).
  RAPA_HD uint64_t below(uint64_t n) {
#if defined(__CUDA_ARCH__)
    return __umul64hi(next(), n);
#else
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
#endif
  }
};

// Fills labels[0..P) with a uniformly random balanced partition into T groups: the P mod T
// groups that get one patch more are a uniform random subset (selection sampling), then a
// Fisher-Yates shuffle orders the labels. The same draws on host and device.
template <typename Label>
RAPA_HD inline void balanced_partition(Label* labels, int64_t P, int64_t T, CounterRng& rng) {
  const int64_t base = P / T;
  int64_t extra = P % T, pos = 0;
  for (int64_t t = 0; t < T; ++t) {
    int64_t size = base;
    if (extra > 0 && static_cast<int64_t>(rng.below(static_cast<uint64_t>(T - t))) < extra) {
      ++size;
      --extra;
    }
    for (int64_t j = 0; j < size; ++j) labels[pos++] = static_cast<Label>(t);
  }
  for (int64_t i = P - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
    Label tmp = labels[i];
    labels[i] = labels[j];
    labels[j] = tmp;
  }
}

}  // namespace rapa
