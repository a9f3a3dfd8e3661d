// CUDA HSTU attention (jagged SiLU attention), forward and backward. Arguments arrive validated
// by src/api/hstu.cpp: q, k [L, H, D], v [L, H, D] with D = Dqk = Dv in {64, 128}, bf16 or f16,
// last dim contiguous, token and head strides multiples of 8 elements, 16-byte aligned data;
// seq_offsets [B + 1] and num_targets [B] int32/int64 on the same GPU. Their values cannot be
// checked on the host without a sync: sequences longer than max_seq_len are not attended past
// the grid (rows beyond it are left unwritten), so callers must pass a true bound.
#pragma once

#include "seqmix/device.h"
#include "seqmix/hstu.h"

namespace seqmix::cuda {

void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& out, Stream stream);

// Deterministic: a key-tile-major pass writes dk and dv, a query-tile-major pass writes dq;
// no atomics and no workspace.
void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                        Stream stream);

// Other tensors (shapes and layout of k, q, dout) for the gradient products than S = q k^T and
// dP = dout v^T read: dq = dS k_dq, dk = dS^T q_dk, dv = P^T dout_dv. The FP8 mode-1 backward's
// transposed copies (hstu_fp8.h); those kernel instances load one more tile per product.
struct HstuGradientOperands {
  const TensorView& k_dq;
  const TensorView& q_dk;
  const TensorView& dout_dv;
};
void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& dout, const HstuGradientOperands& gradient_operands, const TensorView& dq,
                        const TensorView& dk, const TensorView& dv, Stream stream);

}  // namespace seqmix::cuda
