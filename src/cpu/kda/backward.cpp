// KDA backward reference: reverse sweep of the token recurrence.
//
// Forward step of token t (a = exp(g_t), q already scaled):
//   S_a = diag(a) S_{t-1};  r = v - S_a^T k;  S_t = S_a + beta k r^T;  o = S_t^T q
// Reverse step, with dS the gradient of S_t from later tokens and the final state:
//   dS += q do^T;  dq = S_t do
//   dbeta = k^T dS r;  dr = beta dS^T k;  dk = beta dS r - S_a dr;  dv = dr
//   dS_a = dS - k dr^T;  dg = a * rowsum(dS_a * S_{t-1});  dS <- diag(a) dS_a
// S_{t-1} is recomputed per chunk from a checkpoint saved every chunk_size tokens, so memory is
// O(T / chunk_size * K * V) per head plus one chunk of states. The in-kernel transforms (L2 norm,
// gate, beta sigmoid) are differentiated afterwards, serially, so the reductions over tokens
// (dA_log, ddt_bias) are deterministic.
#include <algorithm>
#include <cmath>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/kda/gate.h"
#include "cpu/kda/kda.h"

namespace seqmix::cpu {

namespace {

// dx of y = x * rstd, rstd = 1 / sqrt(sum x^2 + eps), given y and dy (in place over dy).
void l2norm_rows_bwd(const std::vector<double>& y, const std::vector<double>& rstd, std::vector<double>& dy,
                     int64_t dim) {
  for (size_t r = 0; r < rstd.size(); ++r) {
    const double* yr = y.data() + r * dim;
    double* dr = dy.data() + r * dim;
    double dot = 0.0;
    for (int64_t d = 0; d < dim; ++d) dot += dr[d] * yr[d];
    for (int64_t d = 0; d < dim; ++d) dr[d] = rstd[r] * (dr[d] - dot * yr[d]);
  }
}

}  // namespace

void chunk_kda_bwd(const KdaArgs& args, const TensorView& do_, const TensorView* dht, const TensorView& dq,
                   const TensorView& dk, const TensorView& dv, const TensorView& dg, const TensorView& dbeta,
                   const TensorView* dh0, const TensorView* dA_log, const TensorView* ddt_bias) {
  const KdaPrepared p = kda_prepare(args);
  const KdaParams& params = args.params;
  const int64_t K = p.K, V = p.V, KV = K * V, HV = p.HV, H = p.H, G = p.group(), BT = params.chunk_size;
  const std::vector<double> d_out = access::load(do_);
  const std::vector<double> d_final = dht ? kda_load_state(*dht, args) : std::vector<double>();

  std::vector<double> dq_acc(p.q.size(), 0.0), dk_acc(p.k.size(), 0.0), dv_acc(p.v.size(), 0.0);
  std::vector<double> dg_acc(p.g.size(), 0.0), dbeta_acc(p.beta.size(), 0.0), dh0_acc(p.h0.size(), 0.0);

  // One work item per (sequence, q/k head): its G value heads write disjoint rows of dv/dg/dbeta
  // and accumulate into the shared q/k rows of dq/dk.
  parallel::parallel_for(p.N * H, [&](int64_t begin, int64_t end) {
    std::vector<double> checkpoints, states((BT + 1) * KV), dS(KV), dS_a(KV), r(V), dr(V), qs(K);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / H, h = item % H, bos = p.offsets[n], eos = p.offsets[n + 1];
      const int64_t chunks = (eos - bos + BT - 1) / BT;
      checkpoints.assign(std::max<int64_t>(chunks, 0) * KV, 0.0);
      for (int64_t hv = h * G; hv < (h + 1) * G; ++hv) {
        auto at = [&](const std::vector<double>& x, int64_t t, int64_t heads, int64_t head, int64_t dim) {
          return x.data() + (t * heads + head) * dim;
        };
        // S_t from S_{t-1} for token t
        auto step = [&](const double* S_prev, double* S_next, int64_t t) {
          const double *k = at(p.k, t, H, h, K), *v = at(p.v, t, HV, hv, V), *g = at(p.g, t, HV, hv, K);
          const double beta = p.beta[t * HV + hv];
          for (int64_t e = 0; e < V; ++e) r[e] = v[e];
          for (int64_t d = 0; d < K; ++d) {
            const double a = std::exp(g[d]);
            for (int64_t e = 0; e < V; ++e) {
              S_next[d * V + e] = a * S_prev[d * V + e];
              r[e] -= k[d] * S_next[d * V + e];
            }
          }
          for (int64_t d = 0; d < K; ++d)
            for (int64_t e = 0; e < V; ++e) S_next[d * V + e] += beta * k[d] * r[e];
        };

        // Forward sweep: checkpoint the state entering each chunk.
        const double* h0 = p.h0.data() + (n * HV + hv) * KV;
        std::copy_n(h0, KV, states.begin());
        for (int64_t c = 0; c < chunks; ++c) {
          std::copy_n(states.begin(), KV, checkpoints.begin() + c * KV);
          for (int64_t t = bos + c * BT; t < std::min(eos, bos + (c + 1) * BT); ++t) {
            step(states.data(), states.data() + KV, t);
            std::copy_n(states.begin() + KV, KV, states.begin());
          }
        }

        if (dht) {
          std::copy_n(d_final.begin() + (n * HV + hv) * KV, KV, dS.begin());
        } else {
          std::fill(dS.begin(), dS.end(), 0.0);
        }
        for (int64_t c = chunks - 1; c >= 0; --c) {
          const int64_t t0 = bos + c * BT, L = std::min(eos, t0 + BT) - t0;
          std::copy_n(checkpoints.begin() + c * KV, KV, states.begin());
          for (int64_t i = 0; i < L; ++i) step(states.data() + i * KV, states.data() + (i + 1) * KV, t0 + i);
          for (int64_t i = L - 1; i >= 0; --i) {
            const int64_t t = t0 + i;
            const double* S_prev = states.data() + i * KV;
            const double* S_t = states.data() + (i + 1) * KV;
            const double *q = at(p.q, t, H, h, K), *k = at(p.k, t, H, h, K), *v = at(p.v, t, HV, hv, V);
            const double *g = at(p.g, t, HV, hv, K), *dO = at(d_out, t, HV, hv, V);
            const double beta = p.beta[t * HV + hv];
            double* dq_t = dq_acc.data() + (t * H + h) * K;
            double* dk_t = dk_acc.data() + (t * H + h) * K;
            double* dv_t = dv_acc.data() + (t * HV + hv) * V;
            double* dg_t = dg_acc.data() + (t * HV + hv) * K;

            for (int64_t d = 0; d < K; ++d) qs[d] = p.scale * q[d];
            // dS += q do^T; dq = scale * S_t do
            for (int64_t d = 0; d < K; ++d) {
              double s = 0.0;
              for (int64_t e = 0; e < V; ++e) {
                dS[d * V + e] += qs[d] * dO[e];
                s += S_t[d * V + e] * dO[e];
              }
              dq_t[d] += p.scale * s;
            }
            // r = v - S_a^T k with S_a = diag(a) S_prev
            for (int64_t e = 0; e < V; ++e) r[e] = v[e];
            for (int64_t d = 0; d < K; ++d) {
              const double a = std::exp(g[d]);
              for (int64_t e = 0; e < V; ++e) r[e] -= k[d] * a * S_prev[d * V + e];
            }
            // dbeta = k^T dS r; dr = beta dS^T k; dk += beta dS r
            double db = 0.0;
            std::fill(dr.begin(), dr.end(), 0.0);
            for (int64_t d = 0; d < K; ++d) {
              double dSr = 0.0;
              for (int64_t e = 0; e < V; ++e) {
                dSr += dS[d * V + e] * r[e];
                dr[e] += beta * dS[d * V + e] * k[d];
              }
              db += k[d] * dSr;
              dk_t[d] += beta * dSr;
            }
            dbeta_acc[t * HV + hv] = db;
            for (int64_t e = 0; e < V; ++e) dv_t[e] = dr[e];
            // dS_a = dS - k dr^T; dk -= S_a dr; dg = a * rowsum(dS_a * S_prev); dS = diag(a) dS_a
            for (int64_t d = 0; d < K; ++d) {
              const double a = std::exp(g[d]);
              double s_dr = 0.0, da = 0.0;
              for (int64_t e = 0; e < V; ++e) {
                const double dsa = dS[d * V + e] - k[d] * dr[e];
                s_dr += a * S_prev[d * V + e] * dr[e];
                da += dsa * S_prev[d * V + e];
                dS[d * V + e] = a * dsa;
              }
              dk_t[d] -= s_dr;
              dg_t[d] = a * da;
            }
          }
        }
        std::copy(dS.begin(), dS.end(), dh0_acc.begin() + (n * HV + hv) * KV);
      }
    }
  });

  if (params.use_qk_l2norm_in_kernel) {
    l2norm_rows_bwd(p.q, p.q_rstd, dq_acc, K);
    l2norm_rows_bwd(p.k, p.k_rstd, dk_acc, K);
  }
  std::vector<double> dA_acc(p.A_log.size(), 0.0), dbias_acc(p.dt_bias.size(), 0.0);
  if (params.use_gate_in_kernel) {
    const kda_gate::Gate gate{params.lower_bound, p.A_log.empty() ? nullptr : &p.A_log,
                              p.dt_bias.empty() ? nullptr : &p.dt_bias, K};
    for (int64_t t = 0; t < p.tokens; ++t)
      for (int64_t hv = 0; hv < HV; ++hv)
        for (int64_t d = 0; d < K; ++d) {
          const int64_t i = (t * HV + hv) * K + d;
          double d_raw = 0.0, d_A = 0.0;
          gate.grad(p.g_raw[i], hv, d, d_raw, d_A);
          if (!dA_acc.empty()) dA_acc[hv] += dg_acc[i] * d_A;
          dg_acc[i] *= d_raw;
          if (!dbias_acc.empty()) dbias_acc[hv * K + d] += dg_acc[i];
        }
  }
  if (params.use_beta_sigmoid_in_kernel) {
    const double mult = params.allow_neg_eigval ? 2.0 : 1.0;
    for (size_t i = 0; i < dbeta_acc.size(); ++i) {
      const double s = kda_gate::sigmoid(p.beta_raw[i]);
      dbeta_acc[i] *= mult * s * (1.0 - s);
    }
  }

  access::store(dq_acc, dq);
  access::store(dk_acc, dk);
  access::store(dv_acc, dv);
  access::store(dg_acc, dg);
  access::store(dbeta_acc, dbeta);
  if (dh0) kda_store_state(dh0_acc, *dh0, args);
  access::store_optional(dA_acc, dA_log);
  access::store_optional(dbias_acc, ddt_bias);
}

}  // namespace seqmix::cpu
