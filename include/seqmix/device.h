// CUDA device memory for callers without a framework (the CLI, tests, benchmarks).
// In a build without CUDA every function here throws seqmix::Error, so callers can probe
// with cuda_available() first.
#pragma once

#include <cstddef>

#include "seqmix/tensor.h"

namespace seqmix {

// cudaStream_t, kept opaque so public headers need no CUDA include. nullptr = default stream.
using Stream = void*;

// True when this build has the CUDA backend and at least one device is visible.
bool cuda_available();

// Blocks until all work on `stream` has finished (for tests and timing, never on a hot path).
void cuda_synchronize(Stream stream = nullptr);

// An owning, contiguous tensor in CUDA device memory.
class CudaTensor {
 public:
  CudaTensor() = default;
  CudaTensor(DType dtype, std::vector<int64_t> sizes, int device = 0);
  ~CudaTensor();
  CudaTensor(CudaTensor&& other) noexcept;
  CudaTensor& operator=(CudaTensor&& other) noexcept;
  CudaTensor(const CudaTensor&) = delete;
  CudaTensor& operator=(const CudaTensor&) = delete;

  static CudaTensor from_host(const HostTensor& host, int device = 0);
  HostTensor to_host() const;
  TensorView view() const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::f32;
  std::vector<int64_t> sizes_;
  int device_ = 0;
};

}  // namespace seqmix
