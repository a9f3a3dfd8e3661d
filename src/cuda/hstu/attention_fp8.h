// CUDA FP8 HSTU attention (params.quant_mode 0..5, sm_90) and the FP8 quantizers behind it.
// Arguments arrive validated by src/api/hstu.cpp / src/api/hstu_fp8.cpp (see include/seqmix/hstu.h
// and hstu_fp8.h for the math, the modes and which operand copy each product reads).
#pragma once

#include <cstddef>
#include <cstdint>

#include "seqmix/device.h"
#include "seqmix/hstu.h"
#include "seqmix/hstu_fp8.h"

namespace seqmix::cuda {

// major * 10 + minor of the GPU `device`.
int compute_capability(int device);

// fbgemm's quantizer on the GPU, bit-for-bit the CPU one (src/cpu/hstu/fp8.cpp): x [L, H, D]
// bf16/f16/f32 with D % 8 == 0, x_fp8 [L, H, D] (any token / head strides, dim contiguous),
// descale f32 contiguous in the mode's shape (the block count of the block modes is its
// dimension, which the caller computed from the host lengths), descale_offsets [B + 1] for the
// block modes (int64 / int32) or nullptr. Stream-ordered, no host sync.
void hstu_fp8_quantize(const TensorView& x, const TensorView& seq_offsets, const HstuFp8Params& params,
                       const TensorView& x_fp8, const TensorView& descale, const TensorView* descale_offsets,
                       Stream stream);

size_t hstu_attention_fp8_workspace_bytes(const HstuAttentionParams& params, int64_t total_tokens, int64_t batch,
                                          int64_t heads, int64_t head_dim, bool backward);

void hstu_attention_fp8_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                            const TensorView& out, Stream stream);

// Every quant mode; mode 1 through the split backward kernels (transposed copies of k, q, dout).
void hstu_attention_fp8_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                            const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                            Stream stream);

}  // namespace seqmix::cuda
