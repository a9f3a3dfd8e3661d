// ULTRA-HSTU mid-stack attention truncation (TorchEasyRec `compute_stu_truncation_plan` /
// `apply_stu_truncation_plan`, tzrec/ops/hstu_attention_utils.py).
//
// A sequence is laid out [contextual (C) | history (U_b) | targets (T_b)], L_b = C + U_b + T_b.
// From layer `truncate_split_layer` on, each sequence keeps its contextual prefix, the LAST
// min(U_b, truncate_tail_len) history tokens and all targets:
//   U_b        = L_b - C - T_b                (T_b = 0 when num_targets is absent)
//   drop_b     = max(U_b - truncate_tail_len, 0)   the oldest history tokens after the prefix
//   new_len_b  = L_b - drop_b
// A sequence with U_b <= truncate_tail_len (also U_b < 0, i.e. L_b < C + T_b) is kept whole,
// exactly as the peer's clamp does. num_targets is unchanged by the truncation (targets are
// never dropped), so the caller keeps using its num_targets tensor afterwards.
// The rows are moved with jagged_gather_rows_fwd (and its backward) and the plan's gather_index.
#pragma once

#include <cstdint>

#include "seqmix/device.h"
#include "seqmix/tensor.h"

namespace seqmix {

struct HstuTruncationParams {
  // Most history tokens kept per sequence; 0 keeps only the contextual prefix and the targets.
  // (TorchEasyRec's STUStack treats truncate_tail_len == 0 as "truncation off" and never calls
  // the plan; the plan itself, which this is, drops all history for 0.)
  int64_t truncate_tail_len = 0;
  // Leading contextual tokens of every sequence; every sequence must hold at least this many.
  int64_t contextual_seq_len = 0;
};

// The plan's scalars (the peer's static ints), computed on the host from seq_offsets.
struct HstuTruncationSizes {
  int64_t new_total = 0;        // rows after truncation = new_seq_offsets[B] = gather_index size
  int64_t new_max_seq_len = 0;  // max(new_lengths); 0 for B == 0
  int64_t total_dropped = 0;    // offsets_head[B]
  int64_t total_kept = 0;       // offsets_tail[B]: kept rows excluding the contextual prefixes
  int64_t total_prefix = 0;     // B * contextual_seq_len
  int64_t total_rest = 0;       // rows after the prefixes before truncation (0 when contextual_seq_len == 0, as the peer)
};

// seq_offsets [B + 1] (int32/int64, the peer's x_offsets); num_targets [B] or nullptr.
// Validates the values (non-decreasing offsets, lengths >= contextual_seq_len, targets >= 0).
// CUDA inputs are copied to the host: this is the one call here that syncs with the GPU; it is
// only needed when the caller wants the exact new_total (the plan itself does not need it).
HstuTruncationSizes hstu_truncation_sizes(const TensorView& seq_offsets, const TensorView* num_targets,
                                          const HstuTruncationParams& params, Stream stream = nullptr);

// Fills the plan (int32/int64 outputs, caller-allocated):
//   new_lengths [B], new_seq_offsets [B + 1] = cumsum(new_lengths),
//   offsets_head [B + 1] = cumsum(drop), offsets_tail [B + 1] = cumsum(new_len - C),
//   gather_index [capacity] int64, capacity >= new_total: for each sequence the input rows kept,
//     in order (s_b + [0, C)) then (s_b + C + drop_b .. e_b - 1); entries past new_total are -1.
//     Sizing it by the input row count L (always enough) keeps the CUDA path free of host syncs:
//     new_seq_offsets[B], on the device, holds the true new_total.
//   optional offsets_prefix [B + 1] = b * C and offsets_rest [B + 1] = seq_offsets - offsets_prefix.
// CUDA: asynchronous on `stream`, no host sync; gather_index must be contiguous. The values are
// not inspected on the host there, so bad ones are clamped instead of raised (a decreasing
// offset reads as length 0, a sequence shorter than C + targets drops nothing, negative targets
// count as 0); no index leaves its sequence. Call hstu_truncation_sizes to validate them.
void hstu_truncation_plan(const TensorView& seq_offsets, const TensorView* num_targets,
                          const HstuTruncationParams& params, const TensorView& new_lengths,
                          const TensorView& new_seq_offsets, const TensorView& offsets_head,
                          const TensorView& offsets_tail, const TensorView& gather_index,
                          const TensorView* offsets_prefix = nullptr, const TensorView* offsets_rest = nullptr,
                          Stream stream = nullptr);

// y[i] = x[gather_index[i]]: x [L, ...] -> y [L', ...] (same trailing sizes, same dtype); a
// gather_index of -1 (padding) gives a zero row. CPU: any other index outside [0, L) raises.
// CUDA (contiguous tensors, int64 index): such an index cannot be raised without a sync, so its
// row is filled with NaN.
void jagged_gather_rows_fwd(const TensorView& x, const TensorView& gather_index, const TensorView& y,
                            Stream stream = nullptr);
// dx [L, ...] = 0, then dx[gather_index[i]] += dy[i] (rows not gathered get zero gradient;
// -1 entries are skipped). CUDA accumulates with atomics: exact for a unique index such as a
// truncation plan's, order-dependent rounding where an index repeats.
void jagged_gather_rows_bwd(const TensorView& dy, const TensorView& gather_index, const TensorView& dx,
                            Stream stream = nullptr);

}  // namespace seqmix
