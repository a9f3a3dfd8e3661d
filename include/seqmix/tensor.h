// TensorView: a non-owning view (pointer, dtype, device, sizes and strides in elements).
// HostTensor: a small owning CPU tensor for tests, the CLI and callers without a framework.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "seqmix/error.h"

namespace seqmix {

enum class DType : uint8_t { f32, f64, bf16, f16, fp8_e4m3, fp8_e5m2, i32, i64 };

const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);
inline bool is_floating(DType d) { return d != DType::i32 && d != DType::i64; }

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool operator==(const Device& other) const { return type == other.type && index == other.index; }
  bool operator!=(const Device& other) const { return !(*this == other); }
};

std::string device_name(Device device);

inline constexpr int kMaxRank = 6;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device{};
  int rank = 0;
  std::array<int64_t, kMaxRank> sizes{};
  std::array<int64_t, kMaxRank> strides{};

  // Contiguous (row-major) view of `data` with the given sizes.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> sizes,
                               Device device = Device::cpu());
  static TensorView contiguous(void* data, DType dtype, const std::vector<int64_t>& sizes,
                               Device device = Device::cpu());

  int64_t size(int dim) const;
  int64_t stride(int dim) const;
  int64_t numel() const;
  bool is_contiguous() const;
  std::vector<int64_t> shape() const { return {sizes.begin(), sizes.begin() + rank}; }
  std::string shape_string() const;

  template <class T>
  T* data_as() const { return static_cast<T*>(data); }
};

// Optional tensor arguments are passed as `const TensorView*`; nullptr means "not given".

class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType dtype, std::vector<int64_t> sizes);
  static HostTensor zeros(DType dtype, std::vector<int64_t> sizes) { return {dtype, std::move(sizes)}; }

  TensorView view() const;
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& sizes() const { return sizes_; }
  int64_t numel() const;
  int64_t size(int dim) const { return sizes_.at(static_cast<size_t>(dim)); }
  void* data() { return buffer_.data(); }
  const void* data() const { return buffer_.data(); }
  template <class T>
  T* data_as() { return reinterpret_cast<T*>(buffer_.data()); }
  template <class T>
  const T* data_as() const { return reinterpret_cast<const T*>(buffer_.data()); }

  // Element access converting through double (floating dtypes) or int64 (integer dtypes).
  double get(int64_t flat_index) const;
  void set(int64_t flat_index, double value);
  std::vector<double> to_f64() const;
  static HostTensor from_f64(const std::vector<double>& values, std::vector<int64_t> sizes, DType dtype);
  HostTensor to(DType dtype) const;

 private:
  DType dtype_ = DType::f32;
  std::vector<int64_t> sizes_;
  std::vector<std::byte> buffer_;
};

}  // namespace seqmix
