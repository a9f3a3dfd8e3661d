#include <cuda_runtime.h>

#include <utility>

#include "cuda/common/cuda_check.h"
#include "seqmix/device.h"

namespace seqmix {

bool cuda_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

void cuda_synchronize(Stream stream) { SEQMIX_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); }

CudaTensor::CudaTensor(DType dtype, std::vector<int64_t> sizes, int device)
    : dtype_(dtype), sizes_(std::move(sizes)), device_(device) {
  int64_t n = 1;
  for (int64_t s : sizes_) n *= s;
  SEQMIX_CUDA_CHECK(cudaSetDevice(device_));
  if (n > 0) SEQMIX_CUDA_CHECK(cudaMalloc(&data_, static_cast<size_t>(n) * dtype_size(dtype_)));
}

CudaTensor::~CudaTensor() {
  if (data_) cudaFree(data_);
}

CudaTensor::CudaTensor(CudaTensor&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), dtype_(other.dtype_), sizes_(std::move(other.sizes_)),
      device_(other.device_) {}

CudaTensor& CudaTensor::operator=(CudaTensor&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    dtype_ = other.dtype_;
    sizes_ = std::move(other.sizes_);
    device_ = other.device_;
  }
  return *this;
}

CudaTensor CudaTensor::from_host(const HostTensor& host, int device) {
  CudaTensor t(host.dtype(), host.sizes(), device);
  const size_t bytes = static_cast<size_t>(host.numel()) * dtype_size(host.dtype());
  if (bytes) SEQMIX_CUDA_CHECK(cudaMemcpy(t.data_, host.data(), bytes, cudaMemcpyHostToDevice));
  return t;
}

HostTensor CudaTensor::to_host() const {
  HostTensor host(dtype_, sizes_);
  const size_t bytes = static_cast<size_t>(host.numel()) * dtype_size(dtype_);
  if (bytes) SEQMIX_CUDA_CHECK(cudaMemcpy(host.data(), data_, bytes, cudaMemcpyDeviceToHost));
  return host;
}

TensorView CudaTensor::view() const { return TensorView::contiguous(data_, dtype_, sizes_, Device::cuda(device_)); }

}  // namespace seqmix
