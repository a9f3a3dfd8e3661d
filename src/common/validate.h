// Argument validation at the public boundary. Every failure names the argument, what was
// expected and what was given, e.g. "q: expected rank 4 [B, T, H, K], got rank 3 [5, 2, 8]".
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "seqmix/tensor.h"

namespace seqmix::validate {

inline constexpr int64_t kAnySize = -1;

class Expect {
 public:
  Expect(const TensorView& t, const char* name) : t_(t), name_(name) {}

  // `layout` names the dims in messages, e.g. "[B, T, H, K]".
  Expect& rank(int r, const char* layout = "");
  // Sizes must match; kAnySize matches anything. Implies the rank.
  Expect& shape(std::initializer_list<int64_t> expected, const char* layout = "");
  Expect& shape(const std::vector<int64_t>& expected, const char* layout = "");
  Expect& dtype(DType d);
  Expect& dtype_in(std::initializer_list<DType> allowed);
  // f32, f64, bf16 or f16.
  Expect& floating();
  // i32 or i64.
  Expect& integer();
  Expect& same_dtype(const TensorView& other, const char* other_name);
  Expect& device(Device d);
  Expect& contiguous();
  Expect& non_null();

 private:
  const TensorView& t_;
  const char* name_;
};

inline Expect expect(const TensorView& t, const char* name) { return Expect(t, name); }

// Validates cu_seqlens (rank 1, int32/int64, on the CPU for host inspection, first 0,
// non-decreasing, last == total) and returns it as int64. `total` < 0 skips the last check.
std::vector<int64_t> cu_seqlens(const TensorView& t, const char* name, int64_t total);

// A tensor argument and its name; tensor == nullptr is an optional argument not given.
struct Named {
  const TensorView* tensor;
  const char* name;
};

// Every given tensor is on the device of the first given one; returns that device.
Device same_device(std::initializer_list<Named> tensors);

// Checks a scalar option, e.g. non_negative(max_attn_len, "max_attn_len").
void non_negative(int64_t value, const char* name);
void positive(int64_t value, const char* name);
void positive(double value, const char* name);

}  // namespace seqmix::validate
