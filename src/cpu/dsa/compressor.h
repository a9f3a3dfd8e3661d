// KV compressor of DeepSeek-V4 (HF DeepseekV4CSACompressor / DeepseekV4HCACompressor).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/dsa.h"

namespace seqmix::cpu {

// Sequences as token offsets `cu` [N + 1]; compressed entries of sequence b start at row
// cu_compressed[b] of the output (dense [B, T, .] inputs use cu = b * T).
void dsa_compressor_fwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const std::vector<int64_t>& cu, const TensorView& out);
void dsa_compressor_bwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const std::vector<int64_t>& cu, const TensorView& dout,
                        const TensorView& dkv, const TensorView& dgate, const TensorView& dposition_bias,
                        const TensorView& dnorm_weight);

std::vector<int64_t> dsa_compressed_offsets(const std::vector<int64_t>& cu, int64_t compress_ratio);

}  // namespace seqmix::cpu
