// The timing loop of the C++ benchmarks (bench/kda_bench.cpp and the HSTU benches through
// hstu_bench_util.h): one untimed call (allocator warm-up, lazy kernel loading), then the mean
// wall time of `iterations` calls between device synchronisations.
#pragma once

#include <chrono>
#include <functional>

#include "seqmix/device.h"

namespace seqmix::bench {

inline double time_ms(const std::function<void()>& fn, int iterations) {
  fn();
  cuda_synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) fn();
  cuda_synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / iterations;
}

}  // namespace seqmix::bench
