// CPU reference of the HSTU attention truncation plan and the row gather it drives.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/hstu_truncation.h"

namespace seqmix::cpu {

struct HstuTruncationPlan {
  std::vector<int64_t> new_lengths;      // [B]
  std::vector<int64_t> new_seq_offsets;  // [B + 1]
  std::vector<int64_t> offsets_head;     // [B + 1]
  std::vector<int64_t> offsets_tail;     // [B + 1]
  std::vector<int64_t> offsets_prefix;   // [B + 1]
  std::vector<int64_t> offsets_rest;     // [B + 1]
  std::vector<int64_t> gather_index;     // [new_total]
  HstuTruncationSizes sizes;
};

// seq_offsets validated (non-decreasing, every length >= contextual_seq_len); num_targets
// empty when absent, else [B] non-negative.
HstuTruncationPlan hstu_truncation_plan(const std::vector<int64_t>& seq_offsets,
                                        const std::vector<int64_t>& num_targets,
                                        const HstuTruncationParams& params);

void jagged_gather_rows_fwd(const TensorView& x, const std::vector<int64_t>& gather_index, const TensorView& y);
void jagged_gather_rows_bwd(const TensorView& dy, const std::vector<int64_t>& gather_index, const TensorView& dx);

}  // namespace seqmix::cpu
