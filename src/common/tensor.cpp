#include "seqmix/tensor.h"

#include <cstring>

#include "common/numeric.h"

namespace seqmix {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::fp8_e4m3: return "float8_e4m3fn";
    case DType::fp8_e5m2: return "float8_e5m2";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
  }
  return "unknown";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::bf16:
    case DType::f16: return 2;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2: return 1;
  }
  return 0;
}

std::string device_name(Device device) {
  return device.type == DeviceType::cpu ? std::string("cpu") : "cuda:" + std::to_string(device.index);
}

TensorView TensorView::contiguous(void* data, DType dtype, const std::vector<int64_t>& sizes, Device device) {
  SEQMIX_CHECK(sizes.size() <= static_cast<size_t>(kMaxRank), "tensor rank must be <= ", kMaxRank, ", got ",
               sizes.size());
  TensorView view;
  view.data = data;
  view.dtype = dtype;
  view.device = device;
  view.rank = static_cast<int>(sizes.size());
  int64_t stride = 1;
  for (int d = view.rank - 1; d >= 0; --d) {
    view.sizes[d] = sizes[static_cast<size_t>(d)];
    view.strides[d] = stride;
    stride *= sizes[static_cast<size_t>(d)];
  }
  return view;
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> sizes, Device device) {
  return contiguous(data, dtype, std::vector<int64_t>(sizes), device);
}

int64_t TensorView::size(int dim) const {
  const int d = dim < 0 ? dim + rank : dim;
  SEQMIX_CHECK(d >= 0 && d < rank, "dimension ", dim, " out of range for a rank-", rank, " tensor");
  return sizes[d];
}

int64_t TensorView::stride(int dim) const {
  const int d = dim < 0 ? dim + rank : dim;
  SEQMIX_CHECK(d >= 0 && d < rank, "dimension ", dim, " out of range for a rank-", rank, " tensor");
  return strides[d];
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= sizes[d];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (sizes[d] != 1 && strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (int d = 0; d < rank; ++d) s += (d ? ", " : "") + std::to_string(sizes[d]);
  return s + "]";
}

HostTensor::HostTensor(DType dtype, std::vector<int64_t> sizes) : dtype_(dtype), sizes_(std::move(sizes)) {
  for (int64_t s : sizes_) SEQMIX_CHECK(s >= 0, "HostTensor sizes must be non-negative, got ", s);
  buffer_.assign(static_cast<size_t>(numel()) * dtype_size(dtype_), std::byte{0});
}

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : sizes_) n *= s;
  return n;
}

TensorView HostTensor::view() const {
  return TensorView::contiguous(const_cast<std::byte*>(buffer_.data()), dtype_, sizes_);
}

double HostTensor::get(int64_t i) const {
  const std::byte* p = buffer_.data();
  switch (dtype_) {
    case DType::f32: return reinterpret_cast<const float*>(p)[i];
    case DType::f64: return reinterpret_cast<const double*>(p)[i];
    case DType::bf16: return numeric::bf16_bits_to_f32(reinterpret_cast<const uint16_t*>(p)[i]);
    case DType::f16: return numeric::f16_bits_to_f32(reinterpret_cast<const uint16_t*>(p)[i]);
    case DType::fp8_e4m3: return numeric::fp8_e4m3_bits_to_f64(reinterpret_cast<const uint8_t*>(p)[i]);
    case DType::fp8_e5m2: return numeric::fp8_e5m2_bits_to_f64(reinterpret_cast<const uint8_t*>(p)[i]);
    case DType::i32: return reinterpret_cast<const int32_t*>(p)[i];
    case DType::i64: return static_cast<double>(reinterpret_cast<const int64_t*>(p)[i]);
  }
  return 0.0;
}

void HostTensor::set(int64_t i, double v) {
  std::byte* p = buffer_.data();
  switch (dtype_) {
    case DType::f32: reinterpret_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::f64: reinterpret_cast<double*>(p)[i] = v; break;
    case DType::bf16: reinterpret_cast<uint16_t*>(p)[i] = numeric::f32_to_bf16_bits(static_cast<float>(v)); break;
    case DType::f16: reinterpret_cast<uint16_t*>(p)[i] = numeric::f32_to_f16_bits(static_cast<float>(v)); break;
    case DType::fp8_e4m3: reinterpret_cast<uint8_t*>(p)[i] = numeric::f64_to_fp8_e4m3_bits(v); break;
    case DType::fp8_e5m2: reinterpret_cast<uint8_t*>(p)[i] = numeric::f64_to_fp8_e5m2_bits(v); break;
    case DType::i32: reinterpret_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::i64: reinterpret_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
  }
}

std::vector<double> HostTensor::to_f64() const {
  std::vector<double> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[static_cast<size_t>(i)] = get(i);
  return out;
}

HostTensor HostTensor::from_f64(const std::vector<double>& values, std::vector<int64_t> sizes, DType dtype) {
  HostTensor t(dtype, std::move(sizes));
  SEQMIX_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "HostTensor::from_f64: ", values.size(),
               " values for ", t.numel(), " elements");
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, values[static_cast<size_t>(i)]);
  return t;
}

HostTensor HostTensor::to(DType dtype) const { return from_f64(to_f64(), sizes_, dtype); }

}  // namespace seqmix
