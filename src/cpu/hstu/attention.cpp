#include "cpu/hstu/attention.h"

#include <algorithm>
#include <cmath>

#include "common/access.h"
#include "common/parallel.h"

namespace seqmix::cpu {
namespace {

// TorchEasyRec's STU builds the SLA mask only when sla_k1 > 0 or sla_k2 > 0.
bool sla_enabled(const HstuAttentionParams& p) { return p.sla_k1 > 0 || p.sla_k2 > 0; }

}  // namespace

HstuMask::HstuMask(const HstuAttentionParams& params, int64_t length, int64_t num_targets)
    : params_(params), length_(length), sla_(sla_enabled(params)), has_targets_(num_targets >= 0) {
  const int64_t targets = std::max<int64_t>(num_targets, 0);
  max_id_ = length;
  if (params.contextual_seq_len > 0) max_id_ -= params.contextual_seq_len - 1;
  max_id_ -= targets;
  history_end_ = std::max<int64_t>(length - targets, 0);
  global_prefix_ = std::max(params.sla_k2, params.contextual_seq_len);
}

// The GR reference's id transform: the contextual prefix collapses to id 0 and (when
// num_targets is given) every target to the history boundary's id. Monotone in position.
int64_t HstuMask::id(int64_t position) const {
  int64_t r = position;
  if (params_.contextual_seq_len > 0) r = std::max<int64_t>(r - params_.contextual_seq_len + 1, 0);
  if (has_targets_) r = std::min(r, max_id_);
  return r;
}

bool HstuMask::allowed(int64_t i, int64_t j) const {
  if (sla_) {
    if (i >= history_end_) return j < history_end_;
    return j < std::min(global_prefix_, i + 1) || (j >= std::max(global_prefix_, i - params_.sla_k1 + 1) && j <= i);
  }
  const int64_t row = id(i);
  const int64_t col = id(j);
  int64_t d = row - col;
  if (!params_.causal) d = std::abs(d);
  bool valid = i == j || d > 0;
  if (params_.max_attn_len > 0) {
    const bool full_row = params_.min_full_attn_seq_len > 0 && row >= max_id_ - params_.min_full_attn_seq_len;
    valid = valid && (d <= params_.max_attn_len || full_row);
  }
  if (params_.contextual_seq_len > 0) valid = valid || (row == 0 && col < max_id_);
  return valid;
}

int HstuMask::column_ranges(int64_t i, int64_t begin[2], int64_t end[2], bool& exact) const {
  if (sla_) {
    exact = true;
    if (i >= history_end_) {
      begin[0] = 0;
      end[0] = history_end_;
      return 1;
    }
    begin[0] = 0;
    end[0] = std::min(global_prefix_, i + 1);
    begin[1] = std::max(global_prefix_, i - params_.sla_k1 + 1);
    end[1] = i + 1;
    return 2;
  }
  exact = false;
  const int64_t row = id(i);
  begin[0] = 0;
  end[0] = length_;
  if (params_.contextual_seq_len > 0 && row == 0) return 1;  // may see the whole history
  // Causal: i == j or id(j) < id(i), which implies j < i (ids are monotone).
  if (params_.causal) end[0] = i + 1;
  // The window needs id(j) >= id(i) - max_attn_len, and id(j) <= j.
  const bool full_row = params_.min_full_attn_seq_len > 0 && row >= max_id_ - params_.min_full_attn_seq_len;
  if (params_.max_attn_len > 0 && !full_row) begin[0] = std::max<int64_t>(0, row - params_.max_attn_len);
  return 1;
}

namespace {

struct Shapes {
  int64_t heads, dqk, dv;
};

Shapes shapes_of(const TensorView& q, const TensorView& v) { return {q.size(1), q.size(2), v.size(2)}; }

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

void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& out) {
  const Shapes s = shapes_of(q, v);
  const std::vector<double> qd = access::load(q), kd = access::load(k), vd = access::load(v);
  std::vector<double> od(static_cast<size_t>(out.numel()), 0.0);
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
  access::store(od, out);
}

// With x = alpha q_i.k_j, sig = sigmoid(x), p = x sig / N:
//   dv_j += p do_i;   ds = (do_i.v_j) sig (1 + x (1 - sig)) / N;
//   dq_i += alpha ds k_j;   dk_j += alpha ds q_i.
// Each (sequence, head) owns its rows of dq, dk, dv, so the threads never share an output.
void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const std::vector<int64_t>& seq_offsets,
                        const std::vector<int64_t>& num_targets, const TensorView& dout, const TensorView& dq,
                        const TensorView& dk, const TensorView& dv) {
  const Shapes s = shapes_of(q, v);
  const std::vector<double> qd = access::load(q), kd = access::load(k), vd = access::load(v);
  const std::vector<double> dod = access::load(dout);
  std::vector<double> dqd(qd.size(), 0.0), dkd(kd.size(), 0.0), dvd(vd.size(), 0.0);
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
        const double x = params.alpha * dot(&qd[qi_at], &kd[kj_at], s.dqk);
        const double sig = 1.0 / (1.0 + std::exp(-x));
        const double p = x * sig * inv_scaling;
        for (int64_t d = 0; d < s.dv; ++d) dvd[vj_at + d] += p * dod[oi_at + d];
        const double ds = dot(&dod[oi_at], &vd[vj_at], s.dv) * sig * (1.0 + x * (1.0 - sig)) * inv_scaling;
        for (int64_t d = 0; d < s.dqk; ++d) {
          dqd[qi_at + d] += params.alpha * ds * kd[kj_at + d];
          dkd[kj_at + d] += params.alpha * ds * qd[qi_at + d];
        }
      });
    }
  });
  access::store(dqd, dq);
  access::store(dkd, dk);
  access::store(dvd, dv);
}

}  // namespace seqmix::cpu
