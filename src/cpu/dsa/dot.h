// Inner product used by the indexer and the sparse attention (summed in index order, so every
// caller rounds the same way).
#pragma once

#include <cstdint>

namespace seqmix::cpu {

inline double dsa_dot(const double* a, const double* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

}  // namespace seqmix::cpu
