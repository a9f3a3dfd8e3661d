// KDA forward references: the token recurrence and the chunked (WY) form. One work item per
// (sequence, value head); the state S [K, V] of that head lives in a local buffer.
#include <algorithm>
#include <cmath>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/kda/kda.h"

namespace seqmix::cpu {

namespace {

// Pointers into the prepared inputs of token t for value head hv (q/k of head hv / group).
struct TokenView {
  const double* q;  // unscaled
  const double* k;
  const double* v;
  const double* g;
  double beta;
};

TokenView token(const KdaPrepared& p, int64_t t, int64_t hv) {
  const int64_t h = hv / p.group();
  return {p.q.data() + (t * p.H + h) * p.K, p.k.data() + (t * p.H + h) * p.K, p.v.data() + (t * p.HV + hv) * p.V,
          p.g.data() + (t * p.HV + hv) * p.K, p.beta[static_cast<size_t>(t * p.HV + hv)]};
}

// Runs `body(n, hv, S)` for every (sequence, value head) in parallel with S = h0[n, hv] (K-first)
// and writes S afterwards into final (when given).
template <class Body>
void for_each_head(const KdaPrepared& p, std::vector<double>* final_states, Body body) {
  const int64_t KV = p.K * p.V;
  parallel::parallel_for(p.N * p.HV, [&](int64_t begin, int64_t end) {
    std::vector<double> S(static_cast<size_t>(KV));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / p.HV, hv = item % p.HV;
      std::copy_n(p.h0.begin() + item * KV, KV, S.begin());
      body(n, hv, S);
      if (final_states) std::copy(S.begin(), S.end(), final_states->begin() + item * KV);
    }
  });
}

}  // namespace

void kda_recurrent_fwd(const KdaArgs& args, const TensorView& o, const TensorView* final_state) {
  const KdaPrepared p = kda_prepare(args);
  const int64_t K = p.K, V = p.V;
  std::vector<double> out(static_cast<size_t>(p.tokens * p.HV * V), 0.0);
  std::vector<double> finals(final_state ? p.h0.size() : 0);
  for_each_head(p, final_state ? &finals : nullptr, [&](int64_t n, int64_t hv, std::vector<double>& S) {
    std::vector<double> r(static_cast<size_t>(V));
    for (int64_t t = p.offsets[n]; t < p.offsets[n + 1]; ++t) {
      const TokenView x = token(p, t, hv);
      // S <- diag(exp(g)) S; r = v - S^T k
      for (int64_t e = 0; e < V; ++e) r[e] = x.v[e];
      for (int64_t d = 0; d < K; ++d) {
        const double a = std::exp(x.g[d]);
        for (int64_t e = 0; e < V; ++e) {
          S[d * V + e] *= a;
          r[e] -= x.k[d] * S[d * V + e];
        }
      }
      // S <- S + beta k r^T; o = S^T (scale q)
      double* o_t = out.data() + (t * p.HV + hv) * V;
      for (int64_t d = 0; d < K; ++d) {
        const double bk = x.beta * x.k[d], sq = p.scale * x.q[d];
        for (int64_t e = 0; e < V; ++e) {
          S[d * V + e] += bk * r[e];
          o_t[e] += sq * S[d * V + e];
        }
      }
    }
  });
  access::store(out, o);
  if (final_state) kda_store_state(finals, *final_state, args);
}

void chunk_kda_fwd(const KdaArgs& args, const TensorView& o, const TensorView* final_state,
                   const TensorView* intermediate_states) {
  const KdaPrepared p = kda_prepare(args);
  const int64_t K = p.K, V = p.V, BT = args.params.chunk_size;
  std::vector<double> out(static_cast<size_t>(p.tokens * p.HV * V), 0.0);
  std::vector<double> finals(final_state ? p.h0.size() : 0);
  // FLA's h: [chunks, HV, K, V] (K-first here).
  const std::vector<int64_t> chunk_offsets = kda_chunk_offsets(p.offsets, BT);
  std::vector<double> states(intermediate_states ? static_cast<size_t>(chunk_offsets[p.N] * p.HV * K * V) : 0);
  for_each_head(p, final_state ? &finals : nullptr, [&](int64_t n, int64_t hv, std::vector<double>& S) {
    // Per chunk: cumulative gates G [L, K], A [L, L] (unit lower triangular), w [L, K], u / v_new [L, V].
    std::vector<double> G(BT * K), A(BT * BT), M(BT * BT), w(BT * K), u(BT * V);
    std::vector<TokenView> x(BT);
    for (int64_t start = p.offsets[n]; start < p.offsets[n + 1]; start += BT) {
      const int64_t L = std::min(BT, p.offsets[n + 1] - start);
      if (intermediate_states) {
        const int64_t chunk = chunk_offsets[n] + (start - p.offsets[n]) / BT;
        std::copy(S.begin(), S.end(), states.begin() + (chunk * p.HV + hv) * K * V);
      }
      for (int64_t i = 0; i < L; ++i) {
        x[i] = token(p, start + i, hv);
        for (int64_t d = 0; d < K; ++d) G[i * K + d] = (i ? G[(i - 1) * K + d] : 0.0) + x[i].g[d];
      }
      // M[i, j] = beta_i sum_d k_i[d] k_j[d] exp(G_i[d] - G_j[d]) for j < i  (tril(beta K Gamma K^T, -1))
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < i; ++j) {
          double s = 0.0;
          for (int64_t d = 0; d < K; ++d) s += x[i].k[d] * x[j].k[d] * std::exp(G[i * K + d] - G[j * K + d]);
          M[i * BT + j] = x[i].beta * s;
        }
      // A = (I + M)^-1 by forward substitution: A[i, j] = -sum_{j <= m < i} M[i, m] A[m, j]
      for (int64_t i = 0; i < L; ++i) {
        for (int64_t j = 0; j < i; ++j) {
          double s = 0.0;
          for (int64_t m = j; m < i; ++m) s += M[i * BT + m] * A[m * BT + j];
          A[i * BT + j] = -s;
        }
        A[i * BT + i] = 1.0;
      }
      // w = A diag(beta) (exp(G) * k), u = A diag(beta) v
      for (int64_t i = 0; i < L; ++i) {
        std::fill_n(w.begin() + i * K, K, 0.0);
        std::fill_n(u.begin() + i * V, V, 0.0);
        for (int64_t j = 0; j <= i; ++j) {
          const double a = A[i * BT + j] * x[j].beta;
          for (int64_t d = 0; d < K; ++d) w[i * K + d] += a * std::exp(G[j * K + d]) * x[j].k[d];
          for (int64_t e = 0; e < V; ++e) u[i * V + e] += a * x[j].v[e];
        }
      }
      // v_new = u - w S (in place in u)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t d = 0; d < K; ++d)
          for (int64_t e = 0; e < V; ++e) u[i * V + e] -= w[i * K + d] * S[d * V + e];
      // o_i = (scale q_i * exp(G_i)) S + sum_{j <= i} [sum_d scale q_i[d] k_j[d] exp(G_i[d] - G_j[d])] v_new_j
      for (int64_t i = 0; i < L; ++i) {
        double* o_i = out.data() + ((start + i) * p.HV + hv) * V;
        for (int64_t d = 0; d < K; ++d) {
          const double qg = p.scale * x[i].q[d] * std::exp(G[i * K + d]);
          for (int64_t e = 0; e < V; ++e) o_i[e] += qg * S[d * V + e];
        }
        for (int64_t j = 0; j <= i; ++j) {
          double a = 0.0;
          for (int64_t d = 0; d < K; ++d) a += x[i].q[d] * x[j].k[d] * std::exp(G[i * K + d] - G[j * K + d]);
          a *= p.scale;
          for (int64_t e = 0; e < V; ++e) o_i[e] += a * u[j * V + e];
        }
      }
      // S <- diag(exp(G_last)) S + sum_j (exp(G_last - G_j) * k_j) v_new_j^T
      const double* G_last = G.data() + (L - 1) * K;
      for (int64_t d = 0; d < K; ++d) {
        const double decay = std::exp(G_last[d]);
        for (int64_t e = 0; e < V; ++e) S[d * V + e] *= decay;
        for (int64_t j = 0; j < L; ++j) {
          const double kd = std::exp(G_last[d] - G[j * K + d]) * x[j].k[d];
          for (int64_t e = 0; e < V; ++e) S[d * V + e] += kd * u[j * V + e];
        }
      }
    }
  });
  access::store(out, o);
  if (final_state) kda_store_state(finals, *final_state, args);
  if (intermediate_states) kda_store_state(states, *intermediate_states, args);
}

}  // namespace seqmix::cpu
