// Sparse attention with a per-head sink over per-query KV index lists (DeepSeek-V4, K = V).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/dsa.h"

namespace seqmix::cpu {

void dsa_sparse_attention_fwd(double softmax_scale, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& out);
void dsa_sparse_attention_bwd(double softmax_scale, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& dout,
                              const TensorView& dq, const TensorView& dkv, const TensorView* dsinks);

// Index lists of HF's V4 attention composition (see dsa_sparse_indices in seqmix/dsa.h); `topk`
// is [T, K] local compressed positions (CSA) or nullptr (HCA / sliding layers).
void dsa_sparse_indices(const DsaIndexListParams& params, const std::vector<int64_t>& cu,
                        const std::vector<int64_t>* topk, int64_t topk_width, const TensorView& indices);

}  // namespace seqmix::cpu
