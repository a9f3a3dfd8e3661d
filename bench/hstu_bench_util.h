// Pieces the HSTU benchmarks share (bench/hstu_attention_bench.cpp, bench/hstu_fp8_bench.cpp): the
// attended-pair count that the TFLOP/s figures divide by, the timing loop (bench_timing.h),
// deterministic inputs and the JSON output.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "bench_timing.h"
#include "cpu/hstu/attention.h"
#include "seqmix/device.h"
#include "seqmix/hstu.h"

namespace seqmix::bench {

// Attended (i, j) pairs of a batch, counted with the reference's mask.
inline double attended_pairs(const HstuAttentionParams& p, const std::vector<int64_t>& lengths,
                      const std::vector<int64_t>& targets) {
  double pairs = 0.0;
  for (size_t b = 0; b < lengths.size(); ++b) {
    const cpu::HstuMask mask(p, lengths[b], targets[b]);
    for (int64_t i = 0; i < lengths[b]; ++i) {
      int64_t begin[2], end[2];
      bool exact = false;
      const int count = mask.column_ranges(i, begin, end, exact);
      for (int r = 0; r < count; ++r) {
        if (exact) {
          pairs += static_cast<double>(std::max<int64_t>(end[r] - begin[r], 0));
          continue;
        }
        for (int64_t j = begin[r]; j < end[r]; ++j) pairs += mask.allowed(i, j) ? 1.0 : 0.0;
      }
    }
  }
  return pairs;
}

inline HostTensor filled(DType dtype, std::vector<int64_t> sizes, uint64_t seed) {
  HostTensor t(DType::f32, std::move(sizes));
  uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    t.set(i, (static_cast<double>(state >> 11) / 9007199254740992.0 - 0.5) * 3.4);  // unit variance
  }
  return t.to(dtype);
}

// The results file, when a path was given (argv[1]); the benches print their table either way.
inline void write_json(int argc, char** argv, const std::string& json) {
  if (argc < 2) return;
  FILE* f = std::fopen(argv[1], "w");
  if (!f) return;
  std::fputs(json.c_str(), f);
  std::fclose(f);
}

}  // namespace seqmix::bench
