// DeepSeek-V4 attention stack (peer: HF transformers 5.17 `models/deepseek_v4`, stateless
// prefill / training path, i.e. `past_key_values is None`):
//   compressor  -> compressed KV entries (CSA m=4 with overlapping windows, HCA m=128)
//   indexer     -> per-query top-k over the causally visible compressed entries (CSA)
//   sparse attention with a per-head sink over per-query KV index lists
//   interleaved partial RoPE (and its inverse) on the trailing rope_dim channels of a head.
// Packed layouts: tokens are [T, ...] with cu_seqlens [N + 1] (nullptr = one sequence of T);
// positions restart at 0 in every sequence, as HF's position_ids of each batch row.
#pragma once

#include <cstdint>
#include <optional>

#include "seqmix/device.h"
#include "seqmix/tensor.h"

namespace seqmix {

// ---------------------------------------------------------------------------------------
// RoPE. HF pairs consecutive channels (2i, 2i+1) of the rope tail x[..., D - rope_dim:]:
//   y[2i] = x[2i] cos_i - x[2i+1] sin_i,   y[2i+1] = x[2i+1] cos_i + x[2i] sin_i
// with cos_i = cos(p * inv_freq_i) * attention_scaling. The inverse (HF's `cos, -sin` call
// that un-rotates the attention output) negates sin; it is also the backward of the forward.

struct DsaRopeTableParams {
  int64_t rope_dim = 64;        // rotated channels (qk_rope_head_dim); even
  double rope_theta = 10000.0;  // base: rope_theta ("main") or compress_rope_theta ("compress")
  // YaRN (HF rope_type "yarn", `_compute_yarn_parameters`): blends 1/(factor * theta^(2i/d)) and
  // 1/theta^(2i/d) with a linear ramp between the correction dims of beta_fast and beta_slow.
  bool yarn = false;
  double yarn_factor = 16.0;
  double original_max_position_embeddings = 65536.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;            // floor/ceil the correction range, HF's default
  double attention_scaling = 1.0;  // multiplies cos and sin (V4 forces 1.0 for its YaRN rope)
};

// cos/sin tables [P, rope_dim / 2] for position_ids [P] (int32/int64). Computed as HF does:
// inv_freq, angles and cos/sin rounded to float32 at the same steps (HF builds them in fp32
// whatever the model dtype), then stored in the outputs' dtype.
void dsa_rope_cos_sin(const DsaRopeTableParams& params, const TensorView& position_ids, const TensorView& cos,
                      const TensorView& sin);

struct DsaRopeParams {
  bool inverse = false;  // rotate by -angle (HF: apply_rotary_pos_emb(x, cos, -sin))
};

// x, out [T, H, D]; cos, sin [P, R/2] (R = rope_dim <= D) indexed by position: token t uses row
// position_ids[t] ([T] int32/int64) or row t when position_ids is nullptr. Channels [0, D - R)
// are copied unchanged.
// On CUDA (bf16/f16/f32, fp32 math as HF) cos/sin must be contiguous in f32 or x's dtype, out
// separate from x, and a position outside [0, P) yields NaN (no host-side check without a sync).
void dsa_rope_fwd(const DsaRopeParams& params, const TensorView& x, const TensorView& cos, const TensorView& sin,
                  const TensorView* position_ids, const TensorView& out, Stream stream = nullptr);
// dx = rotation by the opposite angle of dout.
void dsa_rope_bwd(const DsaRopeParams& params, const TensorView& dout, const TensorView& cos, const TensorView& sin,
                  const TensorView* position_ids, const TensorView& dx, Stream stream = nullptr);

// ---------------------------------------------------------------------------------------
// KV compressor (HF DeepseekV4CSACompressor / DeepseekV4HCACompressor / the indexer's own
// compressor, without the kv_proj / gate_proj linears: kv and gate are their outputs).
// Per sequence of n tokens, n_win = n / m windows (the remainder is dropped, as HF's stateless
// path). Window w, channel d, over its slots s:
//   p_s = softmax_s(gate_s + position_bias),  c_w = sum_s p_s kv_s      (softmax per channel)
//   out_w = rope(norm_weight * c_w / sqrt(mean(c_w^2) + eps), position w * m)
// overlap=false (HCA): slots are the m tokens of window w, C = 1 (kv [.., D]).
// overlap=true  (CSA): C = 2, kv = [Ca | Cb]; slots are Ca of window w-1's m tokens (with
// position_bias[:, :D]) then Cb of window w's m tokens (position_bias[:, D:]); window 0 has
// no previous window (HF: zero kv, -inf gate).
struct DsaCompressorParams {
  int64_t compress_ratio = 4;  // m: 4 for CSA, 128 for HCA
  bool overlap = true;         // CSA's two overlapping series (kv / gate last dim = 2 * head_dim)
  double rms_norm_eps = 1e-6;
};

// kv, gate: [B, T, C*D] (dense, cu_seqlens nullptr) or [T, C*D] packed with cu_seqlens
// (nullptr: one sequence).
// position_bias [m, C*D]; norm_weight [D]; cos/sin [P, R/2] position tables (row = position,
// P > the last window start); out [B, T/m, D] or [T_c, D] with the entries of sequence b at
// rows cu_compressed[b].. (see dsa_compressed_cu_seqlens).
void dsa_compressor_fwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const TensorView* cu_seqlens, const TensorView& out);
void dsa_compressor_bwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const TensorView* cu_seqlens, const TensorView& dout,
                        const TensorView& dkv, const TensorView& dgate, const TensorView& dposition_bias,
                        const TensorView& dnorm_weight);

// cu_compressed[b] = sum_{b' < b} (n_b' / compress_ratio): rows of each sequence's compressed entries.
void dsa_compressed_cu_seqlens(const TensorView& cu_seqlens, int64_t compress_ratio, const TensorView& cu_compressed);

// ---------------------------------------------------------------------------------------
// Lightning indexer (HF DeepseekV4IndexerScorer + the top-k of DeepseekV4Indexer):
//   score(t, s) = sum_h weights[t,h] * weights_scaling * relu(q[t,h] . k[s]) * softmax_scale
// over the compressed entries s < (pos_t + 1) / m of t's sequence (pos_t: position in the
// sequence); indices[t] = the top-k of those, best first, padded with -1. Streaming: one
// size-k selection per query, never the [T, T_c] score matrix. Ties: the lower index wins.
// torch.topk on the CPU orders equal scores as std::nth_element / partial_sort leave them
// (torch 2.11: topk(zeros(10), 3) -> [8, 6, 7]), so HF may pick other entries among exactly
// equal scores; the selected score multiset is the same.
struct DsaIndexerParams {
  int64_t compress_ratio = 4;             // m of the compressed keys
  std::optional<double> softmax_scale;    // default index_head_dim^-0.5
  std::optional<double> weights_scaling;  // default index_n_heads^-0.5
};

// q [T, H, D] (after RoPE), k [T_c, D] compressed keys (rows per dsa_compressed_cu_seqlens),
// weights [T, H] (weights_proj output), indices [T, K] int32/int64 (K = index_topk >= 1; local
// positions in the sequence's compressed entries), scores [T, K] optional (0 where -1).
void dsa_indexer_fwd(const DsaIndexerParams& params, const TensorView& q, const TensorView& k,
                     const TensorView& weights, const TensorView* cu_seqlens, const TensorView& indices,
                     const TensorView* scores);
// Backward of the selected scores: dscores [T, K] on the entries of `indices` (-1 ignored).
// relu'(0) = 0 as torch.
void dsa_indexer_bwd(const DsaIndexerParams& params, const TensorView& q, const TensorView& k,
                     const TensorView& weights, const TensorView* cu_seqlens, const TensorView& indices,
                     const TensorView& dscores, const TensorView& dq, const TensorView& dk, const TensorView& dweights);

// ---------------------------------------------------------------------------------------
// Sparse attention with a sink (HF eager_attention_forward with K = V = kv):
//   l_j = softmax_scale * q[t,h] . kv[j, g(h)] for j in indices[t, g(h), :] (-1 skipped)
//   out[t,h] = sum_j exp(l_j) kv[j, g(h)] / (sum_j exp(l_j) + exp(sinks[h]))
// g(h) = h / (H / H_kv). An empty list gives 0. Repeated indices count once per occurrence.
struct DsaSparseAttentionParams {
  std::optional<double> softmax_scale;  // default D^-0.5 (HF: head_dim^-0.5)
};

// q [T, H, D]; kv [N, H_kv, D]; indices [T, H_kv, W] int32/int64 rows of kv (any W >= 0);
// sinks [H] optional (nullptr = plain softmax); out [T, H, D].
void dsa_sparse_attention_fwd(const DsaSparseAttentionParams& params, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& out);
void dsa_sparse_attention_bwd(const DsaSparseAttentionParams& params, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& dout,
                              const TensorView& dq, const TensorView& dkv, const TensorView* dsinks);

// HF's composition of the KV of a V4 attention layer as index lists into
// kv_all = [token kv (rows 0..T) ; compressed entries (rows T + cu_compressed[b] + w)]:
//   window: tokens j of t's sequence with pos_t - sliding_window < pos_j <= pos_t
//   compressed (compress_ratio > 0): topk_indices[t] (CSA, -1 skipped) or, when nullptr, every
//   entry w < (pos_t + 1) / compress_ratio (HCA). compress_ratio == 0: sliding layer.
// Row t of indices [T, W] or [T, 1, W]: window rows ascending, then compressed rows, then -1.
struct DsaIndexListParams {
  int64_t sliding_window = 128;
  int64_t compress_ratio = 0;
};
void dsa_sparse_indices(const DsaIndexListParams& params, const TensorView* cu_seqlens, const TensorView* topk_indices,
                        const TensorView& indices);

}  // namespace seqmix
