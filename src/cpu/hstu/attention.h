// CPU reference of HSTU attention (see include/seqmix/hstu.h for the math and the masks).
// Arguments arrive validated from src/api/hstu.cpp; seq_offsets and num_targets are host vectors.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/hstu.h"

namespace seqmix::cpu {

// The attention mask of one sequence, evaluated per (i, j); never materialised.
class HstuMask {
 public:
  // num_targets < 0 means "num_targets not given" (the GR mask treats that case separately).
  HstuMask(const HstuAttentionParams& params, int64_t length, int64_t num_targets);

  bool allowed(int64_t i, int64_t j) const;

  // Up to two column intervals [begin[r], end[r]) of row i outside which nothing is attended;
  // returns the count. When `exact` is set every column inside is attended, otherwise
  // allowed(i, j) must still be evaluated.
  int column_ranges(int64_t i, int64_t begin[2], int64_t end[2], bool& exact) const;

 private:
  int64_t id(int64_t position) const;

  HstuAttentionParams params_;
  int64_t length_;
  bool sla_;
  bool has_targets_;
  int64_t max_id_;          // GR mask: id of the history boundary
  int64_t history_end_;     // SLA: Hb = length - num_targets
  int64_t global_prefix_;   // SLA: max(sla_k2, contextual_seq_len)
};

void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& out);

void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& dout, const TensorView& dq,
                        const TensorView& dk, const TensorView& dv);

}  // namespace seqmix::cpu
