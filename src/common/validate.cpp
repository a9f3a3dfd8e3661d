#include "common/validate.h"

#include "common/access.h"

namespace seqmix::validate {
namespace {

std::string sizes_string(const std::vector<int64_t>& sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    s += (i ? ", " : "") + (sizes[i] == kAnySize ? std::string("*") : std::to_string(sizes[i]));
  }
  return s + "]";
}

}  // namespace

Expect& Expect::non_null() {
  SEQMIX_CHECK(t_.data != nullptr || t_.numel() == 0, name_, ": data pointer is null");
  return *this;
}

Expect& Expect::rank(int r, const char* layout) {
  SEQMIX_CHECK(t_.rank == r, name_, ": expected rank ", r, " ", layout, ", got rank ", t_.rank, " ",
               t_.shape_string());
  return *this;
}

Expect& Expect::shape(const std::vector<int64_t>& expected, const char* layout) {
  rank(static_cast<int>(expected.size()), layout);
  for (int d = 0; d < t_.rank; ++d) {
    const int64_t e = expected[static_cast<size_t>(d)];
    SEQMIX_CHECK(e == kAnySize || t_.sizes[d] == e, name_, ": expected shape ", sizes_string(expected), " ", layout,
                 ", got ", t_.shape_string());
  }
  return *this;
}

Expect& Expect::shape(std::initializer_list<int64_t> expected, const char* layout) {
  return shape(std::vector<int64_t>(expected), layout);
}

Expect& Expect::dtype(DType d) {
  SEQMIX_CHECK(t_.dtype == d, name_, ": expected dtype ", dtype_name(d), ", got ", dtype_name(t_.dtype));
  return *this;
}

Expect& Expect::dtype_in(std::initializer_list<DType> allowed) {
  std::string names;
  for (DType d : allowed) {
    if (t_.dtype == d) return *this;
    names += (names.empty() ? "" : "/") + std::string(dtype_name(d));
  }
  SEQMIX_CHECK(false, name_, ": expected dtype ", names, ", got ", dtype_name(t_.dtype));
  return *this;
}

Expect& Expect::floating() { return dtype_in({DType::f32, DType::f64, DType::bf16, DType::f16}); }

Expect& Expect::integer() { return dtype_in({DType::i32, DType::i64}); }

Expect& Expect::same_dtype(const TensorView& other, const char* other_name) {
  SEQMIX_CHECK(t_.dtype == other.dtype, name_, ": expected the dtype of ", other_name, " (", dtype_name(other.dtype),
               "), got ", dtype_name(t_.dtype));
  return *this;
}

Expect& Expect::device(Device d) {
  SEQMIX_CHECK(t_.device == d, name_, ": expected device ", device_name(d), ", got ", device_name(t_.device));
  return *this;
}

Expect& Expect::contiguous() {
  SEQMIX_CHECK(t_.is_contiguous(), name_, ": expected a contiguous tensor, got shape ", t_.shape_string(),
               " with non-row-major strides");
  return *this;
}

std::vector<int64_t> cu_seqlens(const TensorView& t, const char* name, int64_t total) {
  expect(t, name).rank(1, "[N + 1]").integer().device(Device::cpu());
  SEQMIX_CHECK(t.size(0) >= 1, name, ": expected at least one entry [N + 1], got ", t.shape_string());
  std::vector<int64_t> offsets = access::load_int(t);
  SEQMIX_CHECK(offsets[0] == 0, name, ": must start at 0, got ", offsets[0]);
  for (size_t i = 1; i < offsets.size(); ++i) {
    SEQMIX_CHECK(offsets[i] >= offsets[i - 1], name, " must be non-decreasing, got ", name, "[", i - 1,
                 "] = ", offsets[i - 1], " > ", name, "[", i, "] = ", offsets[i]);
  }
  SEQMIX_CHECK(total < 0 || offsets.back() == total, name, ": must end at the total token count ", total,
               ", got ", offsets.back());
  return offsets;
}

Device same_device(std::initializer_list<Named> tensors) {
  const Named* first = nullptr;
  for (const Named& t : tensors) {
    if (!t.tensor) continue;
    if (!first) {
      first = &t;
      continue;
    }
    SEQMIX_CHECK(t.tensor->device == first->tensor->device, t.name, ": expected device ",
                 device_name(first->tensor->device), " (the device of ", first->name, "), got ",
                 device_name(t.tensor->device));
  }
  SEQMIX_CHECK(first != nullptr, "internal: same_device needs at least one tensor");
  return first->tensor->device;
}

void non_negative(int64_t value, const char* name) {
  SEQMIX_CHECK(value >= 0, name, " must be >= 0, got ", value);
}

void positive(int64_t value, const char* name) { SEQMIX_CHECK(value > 0, name, " must be > 0, got ", value); }

void positive(double value, const char* name) { SEQMIX_CHECK(value > 0.0, name, " must be > 0, got ", value); }

}  // namespace seqmix::validate
