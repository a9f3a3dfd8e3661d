// HSTU attention (generative-recommenders `hstu_mha`, TorchEasyRec `hstu_mha` + SLA).
//
// Jagged inputs: q, k [L, H, Dqk], v [L, H, Dv], seq_offsets [B + 1]. For sequence b of
// length n (tokens seq_offsets[b] .. seq_offsets[b + 1]) and head h:
//   s_ij = alpha * q_i . k_j,   p_ij = silu(s_ij) / scaling_seqlen,   o_i = sum_j M_ij p_ij v_j
// No softmax: rows are not normalised, so masked entries simply contribute nothing.
//
// Mask M (without SLA), the generative-recommenders `_get_valid_attn_mask`: positions are
// mapped to ids, id(i) = max(i - contextual_seq_len + 1, 0) when contextual_seq_len > 0, then
// clamped to max_id = n [- contextual_seq_len + 1] - num_targets[b] when num_targets is given
// (so all targets share the id of the history boundary), d = id(i) - id(j) (|d| if !causal):
//   M_ij = (i == j or d > 0)
//          and (max_attn_len == 0 or d <= max_attn_len
//               or (min_full_attn_seq_len > 0 and id(i) >= max_id - min_full_attn_seq_len))
//          or (contextual_seq_len > 0 and id(i) == 0 and id(j) < max_id)
// Targets therefore see the history and themselves only; contextual rows see the whole history.
//
// Mask M with SLA (sla_k1 > 0 or sla_k2 > 0), TorchEasyRec's `build_sla_func_tensor`, which
// replaces the mask above: with K2 = max(sla_k2, contextual_seq_len), Hb = n - num_targets[b],
//   history row i < Hb: j in [0, min(K2, i + 1)) or [max(K2, i - sla_k1 + 1), i + 1)
//   target row i >= Hb: j in [0, Hb)   (all history, not the targets, not itself)
// The SLA mask is causal and has its own window, so SLA together with causal = false,
// max_attn_len > 0 or min_full_attn_seq_len > 0 is rejected rather than silently ignored.
#pragma once

#include <cstddef>
#include <cstdint>

#include "seqmix/device.h"
#include "seqmix/tensor.h"

namespace seqmix {

struct HstuAttentionParams {
  // Padded length of the peers' dense reference; every sequence must fit (n <= max_seq_len).
  int64_t max_seq_len = 0;
  // Score scale, usually 1 / sqrt(Dqk).
  double alpha = 1.0;
  // Divisor of silu(s): -1 means max_seq_len (TorchEasyRec's default), else > 0.
  int64_t scaling_seqlen = -1;
  // false: the peers' reference non-causal mask (|d| in place of d above); not with SLA.
  bool causal = true;
  // Leading tokens of every sequence that attend to the whole history (0 = none).
  int64_t contextual_seq_len = 0;
  // Bound on the id distance d (0 = unbounded).
  int64_t max_attn_len = 0;
  // Rows within min_full_attn_seq_len ids of the history boundary ignore max_attn_len (0 = none).
  int64_t min_full_attn_seq_len = 0;
  // Semi-local attention: local window length and global prefix length (both 0 = SLA off).
  int64_t sla_k1 = 0;
  int64_t sla_k2 = 0;
  // FP8 attention (fbgemm_gpu HSTU's `quant_mode`): -1 = none (the inputs' own precision); 0..5 =
  // q, k, v (and dout in the backward) are quantized to fp8 e4m3 inside the op with the scale
  // granularity of that mode (seqmix/hstu_fp8.h: 0 cast, 1 two-direction, 2 per-block,
  // 3 per-head, 4 per-batch, 5 global). Which copy each product reads follows the table in
  // hstu_fp8.h (forward mode 1: rows of q and k for q k^T, v's transposed copy for P v; mode 2:
  // hstu_fp8_block_sizes(Dqk, false, backward)). The gradients are those of the unquantized
  // inputs (straight-through, as fbgemm's autograd).
  int64_t quant_mode = -1;
};

// Devices: CPU tensors run the fp64 reference (any floating dtype, any strides). CUDA tensors
// (all on one GPU, seq_offsets and num_targets included) run the tensor-core kernels on `stream`:
// bf16/f16, Dqk == Dv in {64, 128}, head dim contiguous, 16-byte aligned rows; no host sync and no
// workspace, so the values of seq_offsets / num_targets are not checked there: the caller
// guarantees what the CPU path checks (seq_offsets starts at 0, is non-decreasing, ends at L,
// lengths <= max_seq_len; 0 <= num_targets[b] <= length b). The backward is deterministic.
//
// FP8 (quant_mode >= 0): q, k, v, dout stay bf16/f16 (f32/f64 too on the CPU; fp8 tensors are
// rejected: the op quantizes). CPU: the emulation, i.e. the fp64 reference fed with
// hstu_fp8_fake_quantize of each operand copy, so it is the definition the kernels are tested
// against. CUDA: sm_90 only (any other GPU raises seqmix::Error, never a bf16 fallback); the
// quantized copies and their descales live in stream-ordered scratch (cudaMallocAsync /
// cudaFreeAsync on `stream`, hstu_attention_fp8_workspace_bytes). Forward: q k^T and P v on
// the fp8 tensor cores, the descales applied to the f32 scores and the f32 results; P is rounded
// to e4m3 under a power-of-two scale per query row that follows its running maximum (which the
// CPU emulation does not do: a few percent of max |out| more error, hstu_fp8_cuda_test.cpp). Backward:
// the dequantized copies (16-bit) through the 16-bit backward kernels; in quant_mode 1 the
// gradient products read the transposed copies of k, q, dout (hstu_fp8.h), which those kernels
// load next to the row copies.

// out [L, H, Dv] in the dtype of q. num_targets [B] (int32/int64) or nullptr (no targets).
void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& out, Stream stream = nullptr);

// Gradients of sum(out * dout): dq, dk [L, H, Dqk], dv [L, H, Dv] in the dtype of q.
void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                        Stream stream = nullptr);

// Upper bound of the device scratch one CUDA FP8 call (quant_mode >= 0) allocates for inputs of
// `total_tokens` tokens in `batch` sequences; 0 for quant_mode -1.
size_t hstu_attention_fp8_workspace_bytes(const HstuAttentionParams& params, int64_t total_tokens, int64_t batch,
                                          int64_t heads, int64_t head_dim, bool backward);

}  // namespace seqmix

// Attention truncation (ULTRA-HSTU mid-stack) and FP8 quantization of the operands: one include
// gives the whole family.
#include "seqmix/hstu_fp8.h"
#include "seqmix/hstu_truncation.h"
