// CPU reference of TTT-Linear (see include/seqmix/ttt.h for the math). Arguments are validated by
// src/api/ttt.cpp; these functions only load, compute in double and store.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/tensor.h"

namespace seqmix::cpu {

struct TTTLinearConfig {
  std::vector<int64_t> offsets;  // [N + 1] sequence bounds over the flattened B * T tokens
  int64_t heads = 0;
  int64_t dim = 0;  // D = K = V
  double scale = 1.0;
  double eps = 1e-6;
  int64_t chunk_size = 16;
};

void ttt_linear_naive_fwd(const TTTLinearConfig& config, const TensorView& q, const TensorView& k,
                          const TensorView& v, const TensorView& w, const TensorView& b, const TensorView& eta,
                          const TensorView* initial_state, const TensorView* initial_state_bias,
                          const TensorView& o, const TensorView* final_state, const TensorView* final_state_bias);

void chunk_ttt_linear_fwd(const TTTLinearConfig& config, const TensorView& q, const TensorView& k,
                          const TensorView& v, const TensorView& w, const TensorView& b, const TensorView& eta,
                          const TensorView* initial_state, const TensorView* initial_state_bias,
                          const TensorView& o, const TensorView* final_state, const TensorView* final_state_bias);

void chunk_ttt_linear_bwd(const TTTLinearConfig& config, const TensorView& q, const TensorView& k,
                          const TensorView& v, const TensorView& w, const TensorView& b, const TensorView& eta,
                          const TensorView* initial_state, const TensorView* initial_state_bias,
                          const TensorView& do_, const TensorView* dht, const TensorView* dhbt, const TensorView& dq,
                          const TensorView& dk, const TensorView& dv, const TensorView& dw, const TensorView& db,
                          const TensorView& deta, const TensorView* dh0, const TensorView* dhb0);

}  // namespace seqmix::cpu
