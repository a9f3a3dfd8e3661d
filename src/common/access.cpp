#include "common/access.h"

#include <cstring>

#include "common/numeric.h"

namespace seqmix::access {
namespace {

// Calls fn(flat_row_major_index, element_offset_in_elements) for every element.
template <class Fn>
void for_each_offset(const TensorView& t, Fn&& fn) {
  const int64_t n = t.numel();
  if (n == 0) return;
  std::array<int64_t, kMaxRank> index{};
  int64_t offset = 0;
  for (int64_t flat = 0; flat < n; ++flat) {
    fn(flat, offset);
    for (int d = t.rank - 1; d >= 0; --d) {
      if (++index[d] < t.sizes[d]) {
        offset += t.strides[d];
        break;
      }
      offset -= t.strides[d] * (t.sizes[d] - 1);
      index[d] = 0;
    }
  }
}

double read_element(const void* base, DType dtype, int64_t off) {
  switch (dtype) {
    case DType::f32: return static_cast<const float*>(base)[off];
    case DType::f64: return static_cast<const double*>(base)[off];
    case DType::bf16: return numeric::bf16_bits_to_f32(static_cast<const uint16_t*>(base)[off]);
    case DType::f16: return numeric::f16_bits_to_f32(static_cast<const uint16_t*>(base)[off]);
    case DType::fp8_e4m3: return numeric::fp8_e4m3_bits_to_f64(static_cast<const uint8_t*>(base)[off]);
    case DType::fp8_e5m2: return numeric::fp8_e5m2_bits_to_f64(static_cast<const uint8_t*>(base)[off]);
    case DType::i32: return static_cast<const int32_t*>(base)[off];
    case DType::i64: return static_cast<double>(static_cast<const int64_t*>(base)[off]);
  }
  return 0.0;
}

void write_element(void* base, DType dtype, int64_t off, double v) {
  switch (dtype) {
    case DType::f32: static_cast<float*>(base)[off] = static_cast<float>(v); break;
    case DType::f64: static_cast<double*>(base)[off] = v; break;
    case DType::bf16: static_cast<uint16_t*>(base)[off] = numeric::f32_to_bf16_bits(static_cast<float>(v)); break;
    case DType::f16: static_cast<uint16_t*>(base)[off] = numeric::f32_to_f16_bits(static_cast<float>(v)); break;
    case DType::fp8_e4m3: static_cast<uint8_t*>(base)[off] = numeric::f64_to_fp8_e4m3_bits(v); break;
    case DType::fp8_e5m2: static_cast<uint8_t*>(base)[off] = numeric::f64_to_fp8_e5m2_bits(v); break;
    case DType::i32: static_cast<int32_t*>(base)[off] = static_cast<int32_t>(v); break;
    case DType::i64: static_cast<int64_t*>(base)[off] = static_cast<int64_t>(v); break;
  }
}

void require_cpu(const TensorView& t) {
  SEQMIX_CHECK(t.device.type == DeviceType::cpu, "CPU reference got a tensor on ", device_name(t.device));
}

}  // namespace

std::vector<double> load(const TensorView& t) {
  require_cpu(t);
  std::vector<double> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::f64 && t.is_contiguous()) {
    if (!out.empty()) std::memcpy(out.data(), t.data, out.size() * sizeof(double));
    return out;
  }
  for_each_offset(t, [&](int64_t flat, int64_t off) { out[static_cast<size_t>(flat)] = read_element(t.data, t.dtype, off); });
  return out;
}

std::vector<double> load_optional(const TensorView* t) { return t ? load(*t) : std::vector<double>{}; }

std::vector<int64_t> load_int(const TensorView& t) {
  require_cpu(t);
  SEQMIX_CHECK(t.dtype == DType::i32 || t.dtype == DType::i64, "expected an int32/int64 tensor, got ",
               dtype_name(t.dtype));
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  for_each_offset(t, [&](int64_t flat, int64_t off) {
    out[static_cast<size_t>(flat)] = t.dtype == DType::i32 ? static_cast<const int32_t*>(t.data)[off]
                                                           : static_cast<const int64_t*>(t.data)[off];
  });
  return out;
}

void store(const std::vector<double>& values, const TensorView& t) {
  require_cpu(t);
  SEQMIX_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "internal: storing ", values.size(),
               " values into a tensor of ", t.numel(), " elements");
  if (t.dtype == DType::f64 && t.is_contiguous()) {
    if (!values.empty()) std::memcpy(t.data, values.data(), values.size() * sizeof(double));
    return;
  }
  for_each_offset(t, [&](int64_t flat, int64_t off) { write_element(t.data, t.dtype, off, values[static_cast<size_t>(flat)]); });
}

void store_int(const std::vector<int64_t>& values, const TensorView& t) {
  require_cpu(t);
  SEQMIX_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "internal: storing ", values.size(),
               " values into a tensor of ", t.numel(), " elements");
  for_each_offset(t, [&](int64_t flat, int64_t off) {
    if (t.dtype == DType::i32) static_cast<int32_t*>(t.data)[off] = static_cast<int32_t>(values[static_cast<size_t>(flat)]);
    else if (t.dtype == DType::i64) static_cast<int64_t*>(t.data)[off] = values[static_cast<size_t>(flat)];
    else write_element(t.data, t.dtype, off, static_cast<double>(values[static_cast<size_t>(flat)]));
  });
}

void store_optional(const std::vector<double>& values, const TensorView* t) {
  if (t) store(values, *t);
}

}  // namespace seqmix::access
