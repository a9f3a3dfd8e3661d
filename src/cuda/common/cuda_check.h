// CUDA runtime error checking: every failing runtime call becomes a seqmix::Error naming the call.
#pragma once

#include <cuda_runtime.h>

#include "seqmix/error.h"

#define SEQMIX_CUDA_CHECK(call)                                                                   \
  do {                                                                                            \
    const cudaError_t seqmix_cuda_status = (call);                                                \
    SEQMIX_CHECK(seqmix_cuda_status == cudaSuccess, #call, " failed: ",                           \
                 cudaGetErrorString(seqmix_cuda_status));                                         \
  } while (0)
