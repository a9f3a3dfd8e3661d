#include "common/dispatch.h"

namespace seqmix::dispatch {

bool built_with_cuda() {
#ifdef SEQMIX_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void cuda_not_implemented(const char* op) {
  if (!built_with_cuda()) {
    throw Error(detail::str_cat("seqmix: ", op, ": got CUDA tensors but this build has no CUDA backend"));
  }
  SEQMIX_NOT_IMPLEMENTED(op, " has no CUDA kernel yet; pass CPU tensors for the reference backend");
}

}  // namespace seqmix::dispatch
