// Manifold-constrained Hyper-Connections (mHC) of DeepSeek-V4, with the formulas of HF transformers
// models/deepseek_v4: DeepseekV4HyperConnection (hc_pre), the decoder layer's residual update (hc_post)
// and DeepseekV4HyperHead (hc_head). The residual is kept as hc_mult parallel streams
// hidden_streams [B, S, hc_mult, D]; every op is per token (B * S tokens, no mixing along S).
//
// All ops compute in double on the CPU. Outputs take their tensor's dtype; HF returns post / comb in
// float32 (pass f32 or f64 views for them), collapsed / out in the dtype of the streams.
#pragma once

#include <cstdint>

#include "seqmix/tensor.h"

namespace seqmix {

struct HcPreParams {
  // Sinkhorn-Knopp steps t_max: the softmaxed comb gets one column normalisation, then
  // (hc_sinkhorn_iters - 1) row + column pairs. Must be >= 1 (HF runs <= 0 like 1; we reject it).
  int64_t hc_sinkhorn_iters = 20;
  // Added to sigmoid(pre), to softmax(comb) and to every Sinkhorn row / column-sum denominator.
  double hc_eps = 1e-6;
  // eps of the unweighted RMSNorm over the flattened hc_mult * D streams (config.rms_norm_eps).
  double rms_norm_eps = 1e-6;
};

// hc_pre (DeepseekV4HyperConnection.forward). Per token, v = the hc_mult * D streams flattened,
// H = hc_mult:
//   y = v / sqrt(mean(v^2) + rms_norm_eps);   m = fn @ y                    ([(2 + H) * H])
//   pre  = sigmoid(m[0:H]  * scale[0] + base[0:H])  + hc_eps               ([H])
//   post = 2 * sigmoid(m[H:2H] * scale[1] + base[H:2H])                     ([H])
//   comb = Sinkhorn(softmax_k(m[2H:] * scale[2] + base[2H:]) + hc_eps)      ([H, H], row j, col k)
//   collapsed = sum_h pre[h] * hidden_streams[h]                            ([D])
// Sinkhorn: c <- c / (colsum(c) + hc_eps); then (iters - 1) times: c <- c / (rowsum(c) + hc_eps),
// c <- c / (colsum(c) + hc_eps).
//   hidden_streams [B, S, H, D]; fn [(2 + H) * H, H * D]; base [(2 + H) * H]; scale [3]
//   post [B, S, H]; comb [B, S, H, H]; collapsed [B, S, D] (dtype of hidden_streams)
void hc_pre_fwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView& post, const TensorView& comb,
                const TensorView& collapsed, const HcPreParams& params = {});

// Gradients of hc_pre (what autograd gives for HF's forward) for any of the upstream gradients
// grad_post / grad_comb / grad_collapsed (nullptr = zero). Each gradient output has its input's shape
// and dtype.
void hc_pre_bwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView* grad_post, const TensorView* grad_comb,
                const TensorView* grad_collapsed, const TensorView& grad_hidden_streams, const TensorView& grad_fn,
                const TensorView& grad_base, const TensorView& grad_scale, const HcPreParams& params = {});

// hc_post (DeepseekV4DecoderLayer's residual update after a sublayer with output x):
//   out[k] = post[k] * x + sum_j comb[j, k] * residual[j]      (comb^T @ residual: Sinkhorn's comb is
//                                                               not symmetric, so the direction matters)
//   x [B, S, D]; residual [B, S, H, D]; post [B, S, H]; comb [B, S, H, H]; out [B, S, H, D]
// x, residual and out share a dtype; post and comb may be any floating dtype (HF rounds them to the
// streams' dtype with .to(dtype) first: pass them in that dtype to reproduce it).
void hc_post_fwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& out);

void hc_post_bwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& grad_out, const TensorView& grad_x, const TensorView& grad_residual,
                 const TensorView& grad_post, const TensorView& grad_comb);

struct HcHeadParams {
  double hc_eps = 1e-6;        // added to sigmoid(pre)
  double rms_norm_eps = 1e-6;  // eps of the unweighted RMSNorm over the flattened streams
};

// hc_head (DeepseekV4HyperHead, the final collapse before the model's norm):
//   y = v / sqrt(mean(v^2) + rms_norm_eps);  pre = sigmoid((hc_fn @ y) * hc_scale[0] + hc_base) + hc_eps
//   out = sum_h pre[h] * hidden_streams[h]
//   hidden_streams [B, S, H, D]; hc_fn [H, H * D]; hc_base [H]; hc_scale [1]; out [B, S, D]
void hc_head_fwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& out, const HcHeadParams& params = {});

void hc_head_bwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& grad_out, const TensorView& grad_hidden_streams,
                 const TensorView& grad_hc_fn, const TensorView& grad_hc_base, const TensorView& grad_hc_scale,
                 const HcHeadParams& params = {});

}  // namespace seqmix
