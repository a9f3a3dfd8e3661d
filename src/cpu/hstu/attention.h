// CPU reference of HSTU attention (see include/seqmix/hstu.h for the math and the masks).
// Arguments arrive validated from src/api/hstu.cpp; seq_offsets and num_targets are host vectors.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/hstu/mask.h"
#include "seqmix/hstu.h"

namespace seqmix::cpu {

// The attention mask of one sequence, evaluated per (i, j); never materialised. The formulas
// live in cpu/hstu/mask.h, shared with the CUDA kernels.
class HstuMask {
 public:
  // num_targets < 0 means "num_targets not given" (the GR mask treats that case separately).
  HstuMask(const HstuAttentionParams& params, int64_t length, int64_t num_targets)
      : rule_(hstu_mask::Rule::make(hstu_mask::options_of(params), length, num_targets)) {}

  bool allowed(int64_t i, int64_t j) const { return rule_.allowed(i, j); }

  // Up to two column intervals [begin[r], end[r]) of row i outside which nothing is attended;
  // returns the count. When `exact` is set every column inside is attended, otherwise
  // allowed(i, j) must still be evaluated.
  int column_ranges(int64_t i, int64_t begin[2], int64_t end[2], bool& exact) const {
    return rule_.column_ranges(i, begin, end, exact);
  }

  // An interval [begin, end) (possibly empty) of columns that row i certainly attends.
  void full_columns(int64_t i, int64_t& begin, int64_t& end) const { rule_.full_columns(i, begin, end); }

  // Two row intervals outside which no row attends a column of [j0, j1) (conservative).
  void row_ranges(int64_t j0, int64_t j1, int64_t begin[2], int64_t end[2]) const {
    rule_.row_ranges(j0, j1, begin, end);
  }

 private:
  hstu_mask::Rule rule_;
};

struct HstuShapes {
  int64_t heads, dqk, dv;
};

// Row-major [L, H, D] fp64 operands, one per product: the FP8 emulation feeds differently
// quantized copies of one tensor to different products (hstu_fp8.h's table); the plain
// reference passes the same values everywhere.
struct HstuFwdOperands {
  const std::vector<double>& q_scores;  // S = q k^T
  const std::vector<double>& k_scores;
  const std::vector<double>& v;  // O = P v
};
struct HstuBwdOperands {
  const std::vector<double>& q_scores;  // S = q k^T (recomputed)
  const std::vector<double>& k_scores;
  const std::vector<double>& dout_dp;  // dP = dout v^T
  const std::vector<double>& v_dp;
  const std::vector<double>& k_dq;     // dq = dS k
  const std::vector<double>& q_dk;     // dk = dS^T q
  const std::vector<double>& dout_dv;  // dv = P^T dout
};
struct HstuGradients {
  std::vector<double> dq, dk, dv;
};

std::vector<double> hstu_attention_fwd_values(const HstuAttentionParams& params, const HstuShapes& shapes,
                                              const std::vector<int64_t>& seq_offsets,
                                              const std::vector<int64_t>& num_targets, const HstuFwdOperands& x);
HstuGradients hstu_attention_bwd_values(const HstuAttentionParams& params, const HstuShapes& shapes,
                                        const std::vector<int64_t>& seq_offsets,
                                        const std::vector<int64_t>& num_targets, const HstuBwdOperands& x);

void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& out);

void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& dout, const TensorView& dq,
                        const TensorView& dk, const TensorView& dv);

// FP8 emulation (params.quant_mode 0..5): the reference above fed with the dequantized fp8
// copies of q, k, v (and dout) that each product reads (cpu/hstu/fp8.h, hstu_fp8_operand_params).
void hstu_attention_fp8_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const std::vector<int64_t>& seq_offsets,
                            const std::vector<int64_t>& num_targets, const TensorView& out);
void hstu_attention_fp8_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const std::vector<int64_t>& seq_offsets,
                            const std::vector<int64_t>& num_targets, const TensorView& dout, const TensorView& dq,
                            const TensorView& dk, const TensorView& dv);

}  // namespace seqmix::cpu
