#include "cpu/hstu/attention.h"

#include <algorithm>
#include <cmath>

#include "common/access.h"
#include "common/parallel.h"

namespace seqmix::cpu {
namespace {

HstuShapes shapes_of(const TensorView& q, const TensorView& v) { return {q.size(1), q.size(2), v.size(2)}; }

int64_t num_targets_of(const std::vector<int64_t>& num_targets, int64_t b) {
  return num_targets.empty() ? -1 : num_targets[static_cast<size_t>(b)];
}

double dot(const double* a, const double* b, int64_t n) {
  double s = 0.0;
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

double scaling_of(const HstuAttentionParams& p) {
  return static_cast<double>(p.scaling_seqlen == -1 ? p.max_seq_len : p.scaling_seqlen);
}

// Calls fn(i, j) for every attended (i, j) of one sequence, skipping unattended column ranges.
template <class Fn>
void for_each_attended(const HstuMask& mask, int64_t length, Fn&& fn) {
  int64_t begin[2], end[2];
  bool exact = false;
  for (int64_t i = 0; i < length; ++i) {
    const int count = mask.column_ranges(i, begin, end, exact);
    for (int r = 0; r < count; ++r) {
      for (int64_t j = begin[r]; j < end[r]; ++j) {
        if (exact || mask.allowed(i, j)) fn(i, j);
      }
    }
  }
}

}  // namespace

std::vector<double> hstu_attention_fwd_values(const HstuAttentionParams& params, const HstuShapes& s,
                                              const std::vector<int64_t>& seq_offsets,
                                              const std::vector<int64_t>& num_targets, const HstuFwdOperands& x) {
  const std::vector<double>&qd = x.q_scores, &kd = x.k_scores, &vd = x.v;
  std::vector<double> od(vd.size(), 0.0);
  const int64_t batch = static_cast<int64_t>(seq_offsets.size()) - 1;
  const double inv_scaling = 1.0 / scaling_of(params);
  parallel::parallel_for(batch * s.heads, [&](int64_t work_begin, int64_t work_end) {
    for (int64_t w = work_begin; w < work_end; ++w) {
      const int64_t b = w / s.heads, h = w % s.heads;
      const int64_t start = seq_offsets[static_cast<size_t>(b)];
      const int64_t length = seq_offsets[static_cast<size_t>(b) + 1] - start;
      const HstuMask mask(params, length, num_targets_of(num_targets, b));
      for_each_attended(mask, length, [&](int64_t i, int64_t j) {
        const double* qi = &qd[static_cast<size_t>(((start + i) * s.heads + h) * s.dqk)];
        const double* kj = &kd[static_cast<size_t>(((start + j) * s.heads + h) * s.dqk)];
        const double* vj = &vd[static_cast<size_t>(((start + j) * s.heads + h) * s.dv)];
        double* oi = &od[static_cast<size_t>(((start + i) * s.heads + h) * s.dv)];
        const double x = params.alpha * dot(qi, kj, s.dqk);
        const double p = x / (1.0 + std::exp(-x)) * inv_scaling;
        for (int64_t d = 0; d < s.dv; ++d) oi[d] += p * vj[d];
      });
    }
  });
  return od;
}

// With x = alpha q_i.k_j, sig = sigmoid(x), p = x sig / N:
//   dv_j += p do_i;   ds = (do_i.v_j) sig (1 + x (1 - sig)) / N;
//   dq_i += alpha ds k_j;   dk_j += alpha ds q_i.
// Each (sequence, head) owns its rows of dq, dk, dv, so the threads never share an output.
HstuGradients hstu_attention_bwd_values(const HstuAttentionParams& params, const HstuShapes& s,
                                        const std::vector<int64_t>& seq_offsets,
                                        const std::vector<int64_t>& num_targets, const HstuBwdOperands& x) {
  HstuGradients g;
  g.dq.assign(x.q_scores.size(), 0.0);
  g.dk.assign(x.k_scores.size(), 0.0);
  g.dv.assign(x.v_dp.size(), 0.0);
  const int64_t batch = static_cast<int64_t>(seq_offsets.size()) - 1;
  const double inv_scaling = 1.0 / scaling_of(params);
  parallel::parallel_for(batch * s.heads, [&](int64_t work_begin, int64_t work_end) {
    for (int64_t w = work_begin; w < work_end; ++w) {
      const int64_t b = w / s.heads, h = w % s.heads;
      const int64_t start = seq_offsets[static_cast<size_t>(b)];
      const int64_t length = seq_offsets[static_cast<size_t>(b) + 1] - start;
      const HstuMask mask(params, length, num_targets_of(num_targets, b));
      for_each_attended(mask, length, [&](int64_t i, int64_t j) {
        const size_t qi_at = static_cast<size_t>(((start + i) * s.heads + h) * s.dqk);
        const size_t kj_at = static_cast<size_t>(((start + j) * s.heads + h) * s.dqk);
        const size_t vj_at = static_cast<size_t>(((start + j) * s.heads + h) * s.dv);
        const size_t oi_at = static_cast<size_t>(((start + i) * s.heads + h) * s.dv);
        const double xs = params.alpha * dot(&x.q_scores[qi_at], &x.k_scores[kj_at], s.dqk);
        const double sig = 1.0 / (1.0 + std::exp(-xs));
        const double p = xs * sig * inv_scaling;
        for (int64_t d = 0; d < s.dv; ++d) g.dv[vj_at + d] += p * x.dout_dv[oi_at + d];
        const double ds = dot(&x.dout_dp[oi_at], &x.v_dp[vj_at], s.dv) * sig * (1.0 + xs * (1.0 - sig)) * inv_scaling;
        for (int64_t d = 0; d < s.dqk; ++d) {
          g.dq[qi_at + d] += params.alpha * ds * x.k_dq[kj_at + d];
          g.dk[kj_at + d] += params.alpha * ds * x.q_dk[qi_at + d];
        }
      });
    }
  });
  return g;
}

void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& out) {
  const std::vector<double> qd = access::load(q), kd = access::load(k), vd = access::load(v);
  access::store(hstu_attention_fwd_values(params, shapes_of(q, v), seq_offsets, num_targets, {qd, kd, vd}), out);
}

void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& dout, const TensorView& dq,
                        const TensorView& dk, const TensorView& dv) {
  const std::vector<double> qd = access::load(q), kd = access::load(k), vd = access::load(v);
  const std::vector<double> dod = access::load(dout);
  const HstuGradients g =
      hstu_attention_bwd_values(params, shapes_of(q, v), seq_offsets, num_targets, {qd, kd, dod, vd, kd, qd, dod});
  access::store(g.dq, dq);
  access::store(g.dk, dk);
  access::store(g.dv, dv);
}

}  // namespace seqmix::cpu
