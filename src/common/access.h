// Reading and writing CPU tensors of any floating dtype and any strides through double.
// The CPU reference computes in double: inputs are widened on load, outputs rounded to
// the output's dtype (round-to-nearest-even) on store.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/tensor.h"

namespace seqmix::access {

// Row-major copy of a floating CPU tensor, widened to double.
std::vector<double> load(const TensorView& t);
// Same for an optional tensor; empty vector when not given.
std::vector<double> load_optional(const TensorView* t);
// Row-major copy of an integer (i32/i64) CPU tensor.
std::vector<int64_t> load_int(const TensorView& t);
// Writes row-major `values` into `t` (any floating dtype, any strides).
void store(const std::vector<double>& values, const TensorView& t);
void store_int(const std::vector<int64_t>& values, const TensorView& t);
// Optional output: does nothing when `t` is nullptr.
void store_optional(const std::vector<double>& values, const TensorView* t);

}  // namespace seqmix::access
