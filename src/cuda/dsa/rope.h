// CUDA interleaved partial RoPE (DeepSeek-V4 layout: each head is [nope | rope], the rope
// tail rotates consecutive channel pairs). Arguments are validated by the public entry.
#pragma once

#include <cuda_runtime.h>

#include "seqmix/tensor.h"

namespace seqmix::cuda {

// x, out: [T, H, D] (last dim contiguous, any T/H strides); cos, sin: [T, R/2] contiguous,
// in x's dtype or f32. out may alias x. inverse applies the conjugate rotation (-sin).
void interleaved_rope(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView& out,
                      bool inverse, cudaStream_t stream);

}  // namespace seqmix::cuda
