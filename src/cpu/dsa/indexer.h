// Lightning indexer of DeepSeek-V4 (HF DeepseekV4IndexerScorer + DeepseekV4Indexer's top-k).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/dsa.h"

namespace seqmix::cpu {

// `cu` token offsets [N + 1]; `cu_compressed` rows of each sequence's keys in k; the scales are
// resolved (defaults applied) by the caller.
void dsa_indexer_fwd(int64_t compress_ratio, double softmax_scale, double weights_scaling, const TensorView& q,
                     const TensorView& k, const TensorView& weights, const std::vector<int64_t>& cu,
                     const std::vector<int64_t>& cu_compressed, const TensorView& indices, const TensorView* scores);
void dsa_indexer_bwd(double softmax_scale, double weights_scaling, const TensorView& q, const TensorView& k,
                     const TensorView& weights, const std::vector<int64_t>& cu,
                     const std::vector<int64_t>& cu_compressed, const TensorView& indices, const TensorView& dscores,
                     const TensorView& dq, const TensorView& dk, const TensorView& dweights);

}  // namespace seqmix::cpu
