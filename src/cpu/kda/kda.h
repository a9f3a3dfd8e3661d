// CPU reference of KDA (see include/seqmix/kda.h for the math). Arguments are validated by
// src/api/kda.cpp; everything here computes in double on row-major copies.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/kda.h"

namespace seqmix::cpu {

// Validated arguments of one KDA call.
struct KdaArgs {
  const TensorView* q = nullptr;
  const TensorView* k = nullptr;
  const TensorView* v = nullptr;
  const TensorView* g = nullptr;
  const TensorView* beta = nullptr;
  const TensorView* A_log = nullptr;
  const TensorView* dt_bias = nullptr;
  const TensorView* initial_state = nullptr;
  KdaParams params;
  double scale = 0.0;  // resolved params.scale
  int64_t B = 0, T = 0, H = 0, HV = 0, K = 0, V = 0;
  int64_t N = 0;  // sequences: cu_seqlens entries - 1, or B
  // Sequence n covers flat tokens [offsets[n], offsets[n + 1]) of the B * T tokens
  // (cu_seqlens, or multiples of T without it). For CUDA tensors: filled from cu_seqlens only (the
  // kernels read the device copy), empty without it.
  std::vector<int64_t> offsets;
};

// Inputs after the in-kernel transforms (L2 norm, fused gate, beta sigmoid), row-major double.
struct KdaPrepared {
  int64_t tokens = 0, N = 0, H = 0, HV = 0, K = 0, V = 0;
  double scale = 0.0;
  std::vector<int64_t> offsets;
  std::vector<double> q, k;            // [tokens, H, K], normalised when use_qk_l2norm_in_kernel, unscaled
  std::vector<double> q_rstd, k_rstd;  // [tokens, H]: 1 / sqrt(sum x^2 + eps), only with the L2 norm
  std::vector<double> v;               // [tokens, HV, V]
  std::vector<double> g_raw, g;        // [tokens, HV, K]: as given, and the log decay actually applied
  std::vector<double> beta_raw, beta;  // [tokens, HV]
  std::vector<double> A_log, dt_bias;  // [HV], [HV * K]; empty when absent
  std::vector<double> h0;              // [N, HV, K, V] (K-first whatever state_v_first), zeros when absent
  int64_t group() const { return HV / H; }
};

KdaPrepared kda_prepare(const KdaArgs& args);

// Chunk c of sequence n (offsets as in KdaArgs) is row result[n] + c of the chunk-major layout of FLA's h
// (intermediate_states); result.back() is the number of chunks, the sum of ceil(len_n / chunk_size).
inline std::vector<int64_t> kda_chunk_offsets(const std::vector<int64_t>& offsets, int64_t chunk_size) {
  std::vector<int64_t> chunk_offsets(1, 0);
  for (size_t n = 0; n + 1 < offsets.size(); ++n)
    chunk_offsets.push_back(chunk_offsets.back() + (offsets[n + 1] - offsets[n] + chunk_size - 1) / chunk_size);
  return chunk_offsets;
}

// Reads a state tensor [N, HV, K, V] / [N, HV, V, K] (state_v_first) into K-first layout, and back.
std::vector<double> kda_load_state(const TensorView& t, const KdaArgs& args);
void kda_store_state(const std::vector<double>& k_first, const TensorView& t, const KdaArgs& args);

void kda_recurrent_fwd(const KdaArgs& args, const TensorView& o, const TensorView* final_state);
// intermediate_states (optional): the state entering each chunk, FLA's h (see seqmix/kda.h).
void chunk_kda_fwd(const KdaArgs& args, const TensorView& o, const TensorView* final_state,
                   const TensorView* intermediate_states);
void chunk_kda_bwd(const KdaArgs& args, const TensorView& do_, const TensorView* dht, const TensorView& dq,
                   const TensorView& dk, const TensorView& dv, const TensorView& dg, const TensorView& dbeta,
                   const TensorView* dh0, const TensorView* dA_log, const TensorView* ddt_bias);

}  // namespace seqmix::cpu
