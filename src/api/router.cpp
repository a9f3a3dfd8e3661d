// Public router entries: validate every argument once (including the ranges of input_ids, the gathered
// tid2eid entries and indices, which needs the CPU), then dispatch on the device.
#include "seqmix/router.h"

#include <cmath>
#include <vector>

#include "common/access.h"
#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/router/router.h"

namespace seqmix {
namespace {

using validate::expect;

struct RouterShape {
  int64_t tokens, hidden, experts;
};

// hidden_states [T, hidden] or [B, S, hidden]; weight [E, hidden]; the scoring options.
RouterShape validate_common(const TensorView& hidden_states, const TensorView& weight, const RouterParams& params) {
  SEQMIX_CHECK(hidden_states.rank == 2 || hidden_states.rank == 3,
               "hidden_states: expected rank 2 [T, hidden] or 3 [B, S, hidden], got rank ", hidden_states.rank, " ",
               hidden_states.shape_string());
  expect(hidden_states, "hidden_states").floating().non_null();
  const int64_t hidden = hidden_states.size(-1);
  SEQMIX_CHECK(hidden >= 1, "hidden_states: hidden size (last dim) must be >= 1, got ", hidden_states.shape_string());
  expect(weight, "weight").shape({validate::kAnySize, hidden}, "[n_routed_experts, hidden]").floating().non_null();
  SEQMIX_CHECK(weight.size(0) >= 1, "weight: n_routed_experts (dim 0) must be >= 1, got ", weight.shape_string());
  SEQMIX_CHECK(params.scoring_func == RouterScoringFunc::sqrtsoftplus ||
                   params.scoring_func == RouterScoringFunc::sigmoid,
               "scoring_func: expected sqrtsoftplus or sigmoid, got value ", static_cast<int>(params.scoring_func));
  SEQMIX_CHECK(std::isfinite(params.routed_scaling_factor), "routed_scaling_factor must be finite, got ",
               params.routed_scaling_factor);
  validate::positive(params.num_experts_per_tok, "num_experts_per_tok");
  return {hidden_states.numel() / hidden, hidden, weight.size(0)};
}

void validate_outputs(const RouterShape& s, const TensorView* logits, const TensorView& weights,
                      const TensorView& indices, int64_t top_k) {
  if (logits) expect(*logits, "logits").shape({s.tokens, s.experts}, "[T, n_routed_experts]").floating().non_null();
  expect(weights, "weights").shape({s.tokens, top_k}, "[T, num_experts_per_tok]").floating().non_null();
  expect(indices, "indices").shape({s.tokens, top_k}, "[T, num_experts_per_tok]").integer().non_null();
}

}  // namespace

void router_topk_fwd(const TensorView& hidden_states, const TensorView& weight,
                     const TensorView* e_score_correction_bias, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params) {
  const RouterShape s = validate_common(hidden_states, weight, params);
  SEQMIX_CHECK(params.num_experts_per_tok <= s.experts, "num_experts_per_tok (top_k) must be <= n_routed_experts ",
               "(weight.size(0) = ", s.experts, "), got ", params.num_experts_per_tok);
  if (e_score_correction_bias) {
    expect(*e_score_correction_bias, "e_score_correction_bias")
        .shape({s.experts}, "[n_routed_experts]")
        .floating()
        .non_null();
  }
  validate_outputs(s, logits, weights, indices, params.num_experts_per_tok);
  const Device device = validate::same_device({{&hidden_states, "hidden_states"}, {&weight, "weight"},
                                       {e_score_correction_bias, "e_score_correction_bias"}, {logits, "logits"},
                                       {&weights, "weights"}, {&indices, "indices"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("router_topk_fwd");
  cpu::router_topk_fwd(hidden_states, weight, e_score_correction_bias, logits, weights, indices, params);
}

void router_hash_fwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& input_ids,
                     const TensorView& tid2eid, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params) {
  const RouterShape s = validate_common(hidden_states, weight, params);
  const std::vector<int64_t> lead = hidden_states.rank == 3
                                        ? std::vector<int64_t>{hidden_states.size(0), hidden_states.size(1)}
                                        : std::vector<int64_t>{hidden_states.size(0)};
  expect(input_ids, "input_ids").shape(lead, "(the leading dims of hidden_states)").integer().non_null();
  expect(tid2eid, "tid2eid").rank(2, "[vocab_size, num_experts_per_tok]").integer().non_null();
  SEQMIX_CHECK(tid2eid.size(1) == params.num_experts_per_tok, "tid2eid: expected num_experts_per_tok = ",
               params.num_experts_per_tok, " columns [vocab_size, num_experts_per_tok], got ", tid2eid.shape_string());
  validate_outputs(s, logits, weights, indices, params.num_experts_per_tok);
  const Device device =
      validate::same_device({{&hidden_states, "hidden_states"}, {&weight, "weight"}, {&input_ids, "input_ids"},
                     {&tid2eid, "tid2eid"}, {logits, "logits"}, {&weights, "weights"}, {&indices, "indices"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("router_hash_fwd");

  const std::vector<int64_t> ids = access::load_int(input_ids), table = access::load_int(tid2eid);
  const int64_t vocab = tid2eid.size(0), K = tid2eid.size(1);
  for (size_t t = 0; t < ids.size(); ++t) {
    SEQMIX_CHECK(ids[t] >= 0 && ids[t] < vocab, "input_ids: token id must be in [0, vocab_size = ", vocab,
                 ") of tid2eid, got input_ids[", t, "] = ", ids[t]);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = table[static_cast<size_t>(ids[t] * K + k)];
      SEQMIX_CHECK(e >= 0 && e < s.experts, "tid2eid: expert id must be in [0, n_routed_experts = ", s.experts,
                   "), got tid2eid[", ids[t], ", ", k, "] = ", e);
    }
  }
  cpu::router_hash_fwd(hidden_states, weight, input_ids, tid2eid, logits, weights, indices, params);
}

void router_bwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& indices,
                const TensorView& grad_weights, const TensorView* grad_logits, const TensorView* grad_hidden_states,
                const TensorView* grad_weight, const RouterParams& params) {
  const RouterShape s = validate_common(hidden_states, weight, params);
  const int64_t K = params.num_experts_per_tok;
  expect(indices, "indices").shape({s.tokens, K}, "[T, num_experts_per_tok]").integer().non_null();
  expect(grad_weights, "grad_weights").shape({s.tokens, K}, "[T, num_experts_per_tok]").floating().non_null();
  if (grad_logits) {
    expect(*grad_logits, "grad_logits").shape({s.tokens, s.experts}, "[T, n_routed_experts]").floating().non_null();
  }
  if (grad_hidden_states) {
    expect(*grad_hidden_states, "grad_hidden_states")
        .shape(hidden_states.shape(), "like hidden_states")
        .same_dtype(hidden_states, "hidden_states")
        .non_null();
  }
  if (grad_weight) {
    expect(*grad_weight, "grad_weight").shape(weight.shape(), "like weight").same_dtype(weight, "weight").non_null();
  }
  const Device device =
      validate::same_device({{&hidden_states, "hidden_states"}, {&weight, "weight"}, {&indices, "indices"},
                     {&grad_weights, "grad_weights"}, {grad_logits, "grad_logits"},
                     {grad_hidden_states, "grad_hidden_states"}, {grad_weight, "grad_weight"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("router_bwd");

  const std::vector<int64_t> idx = access::load_int(indices);
  for (size_t i = 0; i < idx.size(); ++i) {
    SEQMIX_CHECK(idx[i] >= 0 && idx[i] < s.experts, "indices: expert id must be in [0, n_routed_experts = ",
                 s.experts, "), got indices[", static_cast<int64_t>(i) / K, ", ", static_cast<int64_t>(i) % K,
                 "] = ", idx[i]);
  }
  cpu::router_bwd(hidden_states, weight, indices, grad_weights, grad_logits, grad_hidden_states, grad_weight, params);
}

}  // namespace seqmix
