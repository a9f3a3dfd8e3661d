// Device dispatch helpers shared by every family's public entry points (src/api/*.cpp).
#pragma once

#include "seqmix/tensor.h"

namespace seqmix::dispatch {

// True when this build has the CUDA backend.
bool built_with_cuda();

// Throws the error for an op that has no CUDA kernel yet (or a build without CUDA),
// so a CUDA tensor never falls back silently.
[[noreturn]] void cuda_not_implemented(const char* op);

}  // namespace seqmix::dispatch
