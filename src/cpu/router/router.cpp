// Router reference: logits = hidden @ weight^T, scores = scoring_func(logits), the expert choice (top-k
// of scores + bias, or the tid2eid table), renormalised scaled weights, and the backward with the
// choice held fixed.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/router/router.h"

namespace seqmix::cpu {
namespace {

// torch.nn.functional.softplus with beta 1, threshold 20.
constexpr double kSoftplusThreshold = 20.0;
// HF's denominator guard: weights / (weights.sum() + 1e-20).
constexpr double kWeightSumGuard = 1e-20;

double score(double logit, RouterScoringFunc f) {
  if (f == RouterScoringFunc::sigmoid) return 1.0 / (1.0 + std::exp(-logit));
  const double softplus = logit > kSoftplusThreshold ? logit : std::log1p(std::exp(logit));
  return std::sqrt(softplus);
}

// d score / d logit given score = score(logit), as autograd composes it (sqrt then softplus).
double score_grad(double logit, double s, RouterScoringFunc f) {
  if (f == RouterScoringFunc::sigmoid) return (1.0 - s) * s;
  const double d_softplus = logit > kSoftplusThreshold ? 1.0 : std::exp(logit) / (std::exp(logit) + 1.0);
  return 0.5 / s * d_softplus;
}

struct Problem {
  int64_t tokens, hidden, experts;
  std::vector<double> x, w;
};

Problem load_problem(const TensorView& hidden_states, const TensorView& weight) {
  const int64_t hidden = weight.size(1);
  return {hidden_states.numel() / std::max<int64_t>(hidden, 1), hidden, weight.size(0), access::load(hidden_states),
          access::load(weight)};
}

// logits [T, E] of the problem.
std::vector<double> compute_logits(const Problem& p) {
  std::vector<double> logits(static_cast<size_t>(p.tokens * p.experts));
  parallel::parallel_for(p.tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const double* xt = p.x.data() + t * p.hidden;
      for (int64_t e = 0; e < p.experts; ++e) {
        const double* we = p.w.data() + e * p.hidden;
        double acc = 0.0;
        for (int64_t c = 0; c < p.hidden; ++c) acc += xt[c] * we[c];
        logits[t * p.experts + e] = acc;
      }
    }
  });
  return logits;
}

// weights[t, k] from the chosen indices [T, K] and the logits; writes the outputs.
void finish_forward(const Problem& p, const std::vector<double>& logits, const std::vector<int64_t>& idx, int64_t top_k,
                    const TensorView* logits_out, const TensorView& weights, const TensorView& indices,
                    const RouterParams& params) {
  std::vector<double> w(static_cast<size_t>(p.tokens * top_k));
  for (int64_t t = 0; t < p.tokens; ++t) {
    double sum = 0.0;
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t e = idx[t * top_k + k];
      sum += (w[t * top_k + k] = score(logits[t * p.experts + e], params.scoring_func));
    }
    for (int64_t k = 0; k < top_k; ++k) {
      w[t * top_k + k] = w[t * top_k + k] / (sum + kWeightSumGuard) * params.routed_scaling_factor;
    }
  }
  access::store_optional(logits, logits_out);
  access::store(w, weights);
  access::store_int(idx, indices);
}

}  // namespace

void router_topk_fwd(const TensorView& hidden_states, const TensorView& weight,
                     const TensorView* e_score_correction_bias, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params) {
  const Problem p = load_problem(hidden_states, weight);
  const std::vector<double> lg = compute_logits(p);
  std::vector<double> bias = access::load_optional(e_score_correction_bias);
  if (bias.empty()) bias.assign(static_cast<size_t>(p.experts), 0.0);
  const int64_t K = params.num_experts_per_tok;
  std::vector<int64_t> idx(static_cast<size_t>(p.tokens * K));
  parallel::parallel_for(p.tokens, [&](int64_t begin, int64_t end) {
    std::vector<double> sel(static_cast<size_t>(p.experts));
    std::vector<int64_t> order(static_cast<size_t>(p.experts));
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t e = 0; e < p.experts; ++e) sel[e] = score(lg[t * p.experts + e], params.scoring_func) + bias[e];
      std::iota(order.begin(), order.end(), 0);
      // descending, NaN largest (as torch.topk), ties to the lower expert index
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
        const bool na = std::isnan(sel[a]), nb = std::isnan(sel[b]);
        if (na != nb) return na;
        if (!na && sel[a] != sel[b]) return sel[a] > sel[b];
        return a < b;
      });
      std::copy(order.begin(), order.begin() + K, idx.begin() + t * K);
    }
  });
  finish_forward(p, lg, idx, K, logits, weights, indices, params);
}

void router_hash_fwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& input_ids,
                     const TensorView& tid2eid, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params) {
  const Problem p = load_problem(hidden_states, weight);
  const std::vector<double> lg = compute_logits(p);
  const std::vector<int64_t> ids = access::load_int(input_ids), table = access::load_int(tid2eid);
  const int64_t K = tid2eid.size(1);
  std::vector<int64_t> idx(static_cast<size_t>(p.tokens * K));
  for (int64_t t = 0; t < p.tokens; ++t) {
    for (int64_t k = 0; k < K; ++k) idx[t * K + k] = table[ids[t] * K + k];
  }
  finish_forward(p, lg, idx, K, logits, weights, indices, params);
}

void router_bwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& indices,
                const TensorView& grad_weights, const TensorView* grad_logits, const TensorView* grad_hidden_states,
                const TensorView* grad_weight, const RouterParams& params) {
  const Problem p = load_problem(hidden_states, weight);
  const std::vector<double> lg = compute_logits(p);
  const std::vector<int64_t> idx = access::load_int(indices);
  const std::vector<double> gw = access::load(grad_weights);
  std::vector<double> dlogits = access::load_optional(grad_logits);
  if (dlogits.empty()) dlogits.assign(static_cast<size_t>(p.tokens * p.experts), 0.0);
  const int64_t K = indices.size(1);
  const double rsf = params.routed_scaling_factor;
  parallel::parallel_for(p.tokens, [&](int64_t begin, int64_t end) {
    std::vector<double> s(static_cast<size_t>(K));
    for (int64_t t = begin; t < end; ++t) {
      double sum = 0.0, g_dot_s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        s[k] = score(lg[t * p.experts + idx[t * K + k]], params.scoring_func);
        sum += s[k];
        g_dot_s += gw[t * K + k] * s[k];
      }
      const double z = sum + kWeightSumGuard;
      // w_k = rsf * s_k / z  =>  dL/ds_k = rsf * (g_k / z - sum_k' g_k' s_k' / z^2); repeated experts add up
      for (int64_t k = 0; k < K; ++k) {
        const int64_t e = idx[t * K + k];
        const double ds = rsf * (gw[t * K + k] / z - g_dot_s / (z * z));
        dlogits[t * p.experts + e] += ds * score_grad(lg[t * p.experts + e], s[k], params.scoring_func);
      }
    }
  });
  if (grad_hidden_states != nullptr) {
    std::vector<double> dx(static_cast<size_t>(p.tokens * p.hidden), 0.0);
    parallel::parallel_for(p.tokens, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        for (int64_t e = 0; e < p.experts; ++e) {
          const double d = dlogits[t * p.experts + e];
          if (d == 0.0) continue;
          for (int64_t c = 0; c < p.hidden; ++c) dx[t * p.hidden + c] += d * p.w[e * p.hidden + c];
        }
      }
    });
    access::store(dx, *grad_hidden_states);
  }
  if (grad_weight != nullptr) {
    std::vector<double> dw(static_cast<size_t>(p.experts * p.hidden), 0.0);
    parallel::parallel_for(p.experts, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        for (int64_t t = 0; t < p.tokens; ++t) {
          const double d = dlogits[t * p.experts + e];
          if (d == 0.0) continue;
          for (int64_t c = 0; c < p.hidden; ++c) dw[e * p.hidden + c] += d * p.x[t * p.hidden + c];
        }
      }
    });
    access::store(dw, *grad_weight);
  }
}

}  // namespace seqmix::cpu
