// In-kernel input transforms of KDA (FLA's l2norm_fwd, kda gate, beta sigmoid) and the state
// layout conversion shared by the forward and backward references.
#include <algorithm>
#include <cmath>

#include "common/access.h"
#include "cpu/kda/gate.h"
#include "cpu/kda/kda.h"

namespace seqmix::cpu {

namespace {

// x <- x * rstd per row of `dim`, rstd = 1 / sqrt(sum x^2 + eps) (FLA l2norm_fwd, eps 1e-6).
void l2norm_rows(std::vector<double>& x, std::vector<double>& rstd, int64_t dim) {
  const int64_t rows = dim ? static_cast<int64_t>(x.size()) / dim : 0;
  rstd.assign(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double* row = x.data() + r * dim;
    double sum = 0.0;
    for (int64_t d = 0; d < dim; ++d) sum += row[d] * row[d];
    const double s = 1.0 / std::sqrt(sum + kda_gate::kL2NormEps);
    for (int64_t d = 0; d < dim; ++d) row[d] *= s;
    rstd[static_cast<size_t>(r)] = s;
  }
}

}  // namespace

std::vector<double> kda_load_state(const TensorView& t, const KdaArgs& args) {
  std::vector<double> s = access::load(t);
  if (!args.params.state_v_first) return s;
  std::vector<double> k_first(s.size());
  const int64_t K = args.K, V = args.V, heads = static_cast<int64_t>(s.size()) / std::max<int64_t>(1, K * V);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t e = 0; e < V; ++e)
      for (int64_t d = 0; d < K; ++d) k_first[(h * K + d) * V + e] = s[(h * V + e) * K + d];
  return k_first;
}

void kda_store_state(const std::vector<double>& k_first, const TensorView& t, const KdaArgs& args) {
  if (!args.params.state_v_first) {
    access::store(k_first, t);
    return;
  }
  std::vector<double> v_first(k_first.size());
  const int64_t K = args.K, V = args.V, heads = static_cast<int64_t>(k_first.size()) / std::max<int64_t>(1, K * V);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t e = 0; e < V; ++e)
      for (int64_t d = 0; d < K; ++d) v_first[(h * V + e) * K + d] = k_first[(h * K + d) * V + e];
  access::store(v_first, t);
}

KdaPrepared kda_prepare(const KdaArgs& args) {
  const KdaParams& p = args.params;
  KdaPrepared r;
  r.tokens = args.B * args.T;
  r.N = static_cast<int64_t>(args.offsets.size()) - 1;
  r.H = args.H;
  r.HV = args.HV;
  r.K = args.K;
  r.V = args.V;
  r.scale = args.scale;
  r.offsets = args.offsets;
  r.q = access::load(*args.q);
  r.k = access::load(*args.k);
  r.v = access::load(*args.v);
  r.g_raw = access::load(*args.g);
  r.beta_raw = access::load(*args.beta);
  r.A_log = access::load_optional(args.A_log);
  r.dt_bias = access::load_optional(args.dt_bias);
  if (p.use_qk_l2norm_in_kernel) {
    l2norm_rows(r.q, r.q_rstd, r.K);
    l2norm_rows(r.k, r.k_rstd, r.K);
  }

  r.g = r.g_raw;
  if (p.use_gate_in_kernel) {
    const kda_gate::Gate gate{p.lower_bound, r.A_log.empty() ? nullptr : &r.A_log,
                              r.dt_bias.empty() ? nullptr : &r.dt_bias, r.K};
    for (int64_t t = 0; t < r.tokens; ++t)
      for (int64_t hv = 0; hv < r.HV; ++hv)
        for (int64_t d = 0; d < r.K; ++d) {
          const size_t i = static_cast<size_t>((t * r.HV + hv) * r.K + d);
          r.g[i] = gate.value(r.g_raw[i], hv, d);
        }
  }

  r.beta = r.beta_raw;
  if (p.use_beta_sigmoid_in_kernel) {
    const double mult = p.allow_neg_eigval ? 2.0 : 1.0;
    for (double& b : r.beta) b = mult * kda_gate::sigmoid(b);
  }

  if (args.initial_state) {
    r.h0 = kda_load_state(*args.initial_state, args);
  } else {
    r.h0.assign(static_cast<size_t>(r.N * r.HV * r.K * r.V), 0.0);
  }
  return r;
}

}  // namespace seqmix::cpu
