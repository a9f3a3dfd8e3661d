// DeepSeek-V4 MoE routers with the formulas of HF transformers models/deepseek_v4:
// DeepseekV4TopKRouter (learned top-k with the NoAux e_score_correction_bias) and DeepseekV4HashRouter
// (experts from a frozen tid2eid[input_ids] table). Both weight the chosen experts the same way:
//   logits = hidden_states @ weight^T                       ([T, E], T = tokens, E = n_routed_experts)
//   scores = scoring_func(logits)
//   weights[k] = scores[indices[k]] / (sum_k scores[indices[k]] + 1e-20) * routed_scaling_factor
// HF always renormalises the selected scores (config.norm_topk_prob is not read by its routers).
// Expert selection is not differentiable; router_bwd differentiates weights (and logits) with the
// indices held fixed, as autograd does.
#pragma once

#include <cstdint>

#include "seqmix/tensor.h"

namespace seqmix {

enum class RouterScoringFunc : uint8_t {
  sqrtsoftplus,  // sqrt(softplus(x)); softplus is torch's (beta 1, threshold 20: x itself for x > 20)
  sigmoid,
};

struct RouterParams {
  RouterScoringFunc scoring_func = RouterScoringFunc::sqrtsoftplus;
  double routed_scaling_factor = 1.5;
  // top_k. router_topk_fwd selects this many distinct experts (<= n_routed_experts); the hash router
  // takes tid2eid.size(1) slots, which must equal it (and may exceed n_routed_experts: rows repeat
  // experts); router_bwd checks it against indices.size(1).
  int64_t num_experts_per_tok = 6;
};

// router_topk_fwd: indices = the num_experts_per_tok largest of scores + e_score_correction_bias (the
// bias steers the selection only; weights use the unbiased scores). Slot order: descending biased
// score, ties to the lower expert index, NaN first (largest), i.e. a stable descending sort. HF calls
// torch.topk(sorted=False), whose slot order and tie choice are unspecified: the routed MoE output
// does not depend on the slot order, so compare (index, weight) pairs as sets.
//   hidden_states [T, hidden] or [B, S, hidden]; weight [E, hidden]; e_score_correction_bias [E]
//   (nullptr = zeros); logits [T, E] (optional output); weights [T, top_k]; indices [T, top_k] (i32/i64)
void router_topk_fwd(const TensorView& hidden_states, const TensorView& weight,
                     const TensorView* e_score_correction_bias, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params = {});

// router_hash_fwd: indices[t] = tid2eid[input_ids[t]] (ids must lie in [0, vocab), the gathered
// experts in [0, E); a row may repeat an expert, which then counts twice as in HF's gather).
//   input_ids [T] or [B, S] (matching hidden_states' leading dims, i32/i64); tid2eid [vocab, top_k]
void router_hash_fwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& input_ids,
                     const TensorView& tid2eid, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params = {});

// Gradients for both routers given the forward's indices [T, top_k]: grad_weights [T, top_k] is the
// upstream gradient of weights, grad_logits [T, E] the optional one of logits (nullptr = zero).
// grad_hidden_states / grad_weight (shapes and dtypes of hidden_states / weight) are optional outputs.
void router_bwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& indices,
                const TensorView& grad_weights, const TensorView* grad_logits, const TensorView* grad_hidden_states,
                const TensorView* grad_weight, const RouterParams& params = {});

}  // namespace seqmix
