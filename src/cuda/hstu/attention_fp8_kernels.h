// Internal to the FP8 HSTU attention: the descale lookups the kernels take and their launchers.
#pragma once

#include "cuda/hstu/attention_tile.cuh"
#include "cuda/hstu/fp8_quantize.cuh"

namespace seqmix::cuda::hstu_fp8 {

// The e4m3 copies' descales as the forward reads them: q per row, k per column, v per (row, dim).
struct Fp8Operands {
  Scheme q, k, v;
  const float* q_descale;
  const float* k_descale;
  const float* v_descale;
};

void launch_attention_fp8_fwd(const hstu::Args& a, const Fp8Operands& f, DType dtype, int64_t heads, int64_t head_dim,
                              cudaStream_t stream);

}  // namespace seqmix::cuda::hstu_fp8
