// The device.h entry points of a build without the CUDA backend.
#ifndef SEQMIX_WITH_CUDA

#include "seqmix/device.h"

namespace seqmix {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(detail::str_cat("seqmix: ", what, ": this build has no CUDA backend"));
}
}  // namespace

bool cuda_available() { return false; }
void cuda_synchronize(Stream) { no_cuda("cuda_synchronize"); }
CudaTensor::CudaTensor(DType, std::vector<int64_t>, int) { no_cuda("CudaTensor"); }
CudaTensor::~CudaTensor() = default;
CudaTensor::CudaTensor(CudaTensor&&) noexcept = default;
CudaTensor& CudaTensor::operator=(CudaTensor&&) noexcept = default;
CudaTensor CudaTensor::from_host(const HostTensor&, int) { no_cuda("CudaTensor::from_host"); }
HostTensor CudaTensor::to_host() const { no_cuda("CudaTensor::to_host"); }
TensorView CudaTensor::view() const { no_cuda("CudaTensor::view"); }

}  // namespace seqmix

#endif
