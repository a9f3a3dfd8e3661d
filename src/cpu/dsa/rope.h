// Interleaved partial RoPE of DeepSeek-V4 (HF `apply_rotary_pos_emb` + `DeepseekV4RotaryEmbedding`).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/dsa.h"

namespace seqmix::cpu {

// HF's inverse frequencies [rope_dim / 2], emulating its float32 arithmetic step by step.
std::vector<double> dsa_rope_inv_freq(const DsaRopeTableParams& params);
void dsa_rope_cos_sin(const DsaRopeTableParams& params, const TensorView& position_ids, const TensorView& cos,
                      const TensorView& sin);

// Rotates the `half` interleaved pairs starting at x in place: (x0, x1) -> (x0 c - x1 s, x1 c + x0 s),
// with s negated when `inverse`.
void dsa_rotate_pairs(double* x, const double* cos, const double* sin, int64_t half, bool inverse);

// out = rope(x) (inverse=false) or its inverse; `positions` empty means row t for token t.
void dsa_rope_apply(bool inverse, const TensorView& x, const TensorView& cos, const TensorView& sin,
                    const std::vector<int64_t>& positions, const TensorView& out);

}  // namespace seqmix::cpu
