// CUDA interleaved partial RoPE (DeepSeek-V4 layout: each head is [nope | rope], the rope
// tail rotates consecutive channel pairs). Arguments are validated by the public entry.
#pragma once

#include <cuda_runtime.h>

#include "seqmix/tensor.h"

namespace seqmix::cuda {

// x, out: [T, H, D] (last dim contiguous, any T/H strides); cos, sin: [P, R/2] contiguous, in
// x's dtype or f32; token t reads row position_ids[t] ([T] int32/int64) or row t when
// position_ids is nullptr. A position outside [0, P) cannot be checked on the host without a
// sync, so its rope channels are written as NaN instead of reading out of bounds.
// out must not alias x (a pair is read by two threads). inverse applies the conjugate
// rotation (-sin).
void interleaved_rope(const TensorView& x, const TensorView& cos, const TensorView& sin,
                      const TensorView* position_ids, const TensorView& out, bool inverse, cudaStream_t stream);

}  // namespace seqmix::cuda
