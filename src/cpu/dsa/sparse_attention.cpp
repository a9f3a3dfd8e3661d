// Sparse attention. For query t, head h (KV head g = h / (H / H_kv)) over its list J:
//   l_j = scale q.kv_j,  M = max(max_j l_j, sink),  Z = sum_j e^{l_j - M} + e^{sink - M}
//   p_j = e^{l_j - M} / Z,  out = sum_j p_j kv_j      (sink: its probability is dropped, HF)
// Backward (K = V, so kv_j gets both the key and the value term), with lse = M + log Z and
// delta = dout . out:
//   dq = scale sum_j p_j (dout . kv_j - delta) kv_j
//   dkv_j = sum over (t, h) listing j of  p_j dout + scale p_j (dout . kv_j - delta) q
//   dsink = -sum_t p_sink delta,  p_sink = e^{sink - lse}
// dkv is gathered per KV row through an inverted index (references in query order), and
// dsink per head in query order: no cross-thread reductions, results independent of threads.
#include "cpu/dsa/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/dsa/dot.h"

namespace seqmix::cpu {
namespace {

struct Problem {
  std::vector<double> q, kv, sinks;
  std::vector<int64_t> idx;
  int64_t T, H, Hkv, D, W, group;
  double scale;
  const int64_t* list(int64_t t, int64_t h) const { return idx.data() + (t * Hkv + h / group) * W; }
  const double* key(int64_t j, int64_t h) const { return kv.data() + (j * Hkv + h / group) * D; }
};

Problem load_problem(double scale, const TensorView& q, const TensorView& kv, const TensorView& indices,
                     const TensorView* sinks) {
  Problem p{access::load(q),
            access::load(kv),
            access::load_optional(sinks),
            access::load_int(indices),
            q.size(0),
            q.size(1),
            kv.size(1),
            q.size(2),
            indices.size(2),
            q.size(1) / kv.size(1),
            scale};
  return p;
}

// Softmax of (t, h): logits into `l` (list order, -inf for -1), returns lse (log Z + M).
double row_softmax(const Problem& pb, int64_t t, int64_t h, std::vector<double>& l) {
  const int64_t* list = pb.list(t, h);
  const double* qh = pb.q.data() + (t * pb.H + h) * pb.D;
  double mx = pb.sinks.empty() ? -std::numeric_limits<double>::infinity() : pb.sinks[static_cast<size_t>(h)];
  l.assign(static_cast<size_t>(pb.W), -std::numeric_limits<double>::infinity());
  for (int64_t w = 0; w < pb.W; ++w) {
    if (list[w] < 0) continue;
    l[static_cast<size_t>(w)] = pb.scale * dsa_dot(qh, pb.key(list[w], h), pb.D);
    mx = std::max(mx, l[static_cast<size_t>(w)]);
  }
  if (mx == -std::numeric_limits<double>::infinity()) return mx;  // empty list, no sink
  double z = pb.sinks.empty() ? 0.0 : std::exp(pb.sinks[static_cast<size_t>(h)] - mx);
  for (int64_t w = 0; w < pb.W; ++w) {
    if (list[w] >= 0) z += std::exp(l[static_cast<size_t>(w)] - mx);
  }
  return mx + std::log(z);
}

// out[t, h] and its lse for every (t, h).
void forward_rows(const Problem& pb, std::vector<double>& out, std::vector<double>& lse) {
  out.assign(static_cast<size_t>(pb.T * pb.H * pb.D), 0.0);
  lse.assign(static_cast<size_t>(pb.T * pb.H), 0.0);
  parallel::parallel_for(pb.T * pb.H, [&](int64_t begin, int64_t end) {
    std::vector<double> l;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t t = r / pb.H, h = r % pb.H;
      const double row_lse = row_softmax(pb, t, h, l);
      lse[static_cast<size_t>(r)] = row_lse;
      if (row_lse == -std::numeric_limits<double>::infinity()) continue;
      const int64_t* list = pb.list(t, h);
      double* o = out.data() + r * pb.D;
      for (int64_t w = 0; w < pb.W; ++w) {
        if (list[w] < 0) continue;
        const double pw = std::exp(l[static_cast<size_t>(w)] - row_lse);
        const double* v = pb.key(list[w], h);
        for (int64_t d = 0; d < pb.D; ++d) o[d] += pw * v[d];
      }
    }
  });
}

}  // namespace

void dsa_sparse_attention_fwd(double softmax_scale, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& out) {
  const Problem pb = load_problem(softmax_scale, q, kv, indices, sinks);
  std::vector<double> o, lse;
  forward_rows(pb, o, lse);
  access::store(o, out);
}

void dsa_sparse_attention_bwd(double softmax_scale, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& dout,
                              const TensorView& dq, const TensorView& dkv, const TensorView* dsinks) {
  const Problem pb = load_problem(softmax_scale, q, kv, indices, sinks);
  const std::vector<double> g_out = access::load(dout);
  std::vector<double> o, lse;
  forward_rows(pb, o, lse);
  const int64_t rows = pb.T * pb.H, D = pb.D;
  std::vector<double> delta(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) delta[static_cast<size_t>(r)] = dsa_dot(g_out.data() + r * D, o.data() + r * D, D);

  // dq per (t, h).
  std::vector<double> g_q(pb.q.size(), 0.0);
  parallel::parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (lse[static_cast<size_t>(r)] == -std::numeric_limits<double>::infinity()) continue;
      const int64_t t = r / pb.H, h = r % pb.H;
      const int64_t* list = pb.list(t, h);
      const double* qh = pb.q.data() + r * D;
      const double* go = g_out.data() + r * D;
      double* gq = g_q.data() + r * D;
      for (int64_t w = 0; w < pb.W; ++w) {
        if (list[w] < 0) continue;
        const double* v = pb.key(list[w], h);
        const double pw = std::exp(pb.scale * dsa_dot(qh, v, D) - lse[static_cast<size_t>(r)]);
        const double coeff = pb.scale * pw * (dsa_dot(go, v, D) - delta[static_cast<size_t>(r)]);
        for (int64_t d = 0; d < D; ++d) gq[d] += coeff * v[d];
      }
    }
  });

  // Inverted index: references (t, w) of each (kv row, kv head), in query order.
  const int64_t N = pb.kv.size() / static_cast<size_t>(pb.Hkv * D);
  std::vector<int64_t> start(static_cast<size_t>(N * pb.Hkv + 1), 0);
  for (int64_t t = 0; t < pb.T; ++t) {
    for (int64_t g = 0; g < pb.Hkv; ++g) {
      for (int64_t w = 0; w < pb.W; ++w) {
        const int64_t j = pb.idx[static_cast<size_t>((t * pb.Hkv + g) * pb.W + w)];
        if (j >= 0) ++start[static_cast<size_t>(j * pb.Hkv + g + 1)];
      }
    }
  }
  for (size_t i = 1; i < start.size(); ++i) start[i] += start[i - 1];
  std::vector<int64_t> refs(static_cast<size_t>(start.back()));
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < pb.T; ++t) {
      for (int64_t g = 0; g < pb.Hkv; ++g) {
        for (int64_t w = 0; w < pb.W; ++w) {
          const int64_t j = pb.idx[static_cast<size_t>((t * pb.Hkv + g) * pb.W + w)];
          if (j >= 0) refs[static_cast<size_t>(fill[static_cast<size_t>(j * pb.Hkv + g)]++)] = t;
        }
      }
    }
  }
  std::vector<double> g_kv(pb.kv.size(), 0.0);
  parallel::parallel_for(N * pb.Hkv, [&](int64_t begin, int64_t end) {
    for (int64_t jg = begin; jg < end; ++jg) {
      const int64_t g = jg % pb.Hkv;
      const double* v = pb.kv.data() + jg * D;
      double* gv = g_kv.data() + jg * D;
      for (int64_t ref = start[static_cast<size_t>(jg)]; ref < start[static_cast<size_t>(jg) + 1]; ++ref) {
        const int64_t t = refs[static_cast<size_t>(ref)];
        for (int64_t h = g * pb.group; h < (g + 1) * pb.group; ++h) {
          const int64_t r = t * pb.H + h;
          const double* qh = pb.q.data() + r * D;
          const double* go = g_out.data() + r * D;
          const double pw = std::exp(pb.scale * dsa_dot(qh, v, D) - lse[static_cast<size_t>(r)]);
          const double coeff = pb.scale * pw * (dsa_dot(go, v, D) - delta[static_cast<size_t>(r)]);
          for (int64_t d = 0; d < D; ++d) gv[d] += pw * go[d] + coeff * qh[d];
        }
      }
    }
  });

  if (dsinks) {
    std::vector<double> g_sink(static_cast<size_t>(pb.H), 0.0);
    if (!pb.sinks.empty()) {
      for (int64_t h = 0; h < pb.H; ++h) {
        double acc = 0.0;
        for (int64_t t = 0; t < pb.T; ++t) {
          const int64_t r = t * pb.H + h;
          acc -=
              std::exp(pb.sinks[static_cast<size_t>(h)] - lse[static_cast<size_t>(r)]) * delta[static_cast<size_t>(r)];
        }
        g_sink[static_cast<size_t>(h)] = acc;
      }
    }
    access::store(g_sink, *dsinks);
  }
  access::store(g_q, dq);
  access::store(g_kv, dkv);
}

void dsa_sparse_indices(const DsaIndexListParams& params, const std::vector<int64_t>& cu,
                        const std::vector<int64_t>* topk, int64_t topk_width, const TensorView& indices) {
  const int64_t T = cu.back();
  const int64_t W = indices.size(indices.rank - 1);
  std::vector<int64_t> out(static_cast<size_t>(T * W), -1);
  std::vector<int64_t> cu_compressed(cu.size(), 0);
  if (params.compress_ratio > 0) {
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      cu_compressed[b + 1] = cu_compressed[b] + (cu[b + 1] - cu[b]) / params.compress_ratio;
    }
  }
  parallel::parallel_for(static_cast<int64_t>(cu.size()) - 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = cu[static_cast<size_t>(b)];
      for (int64_t t = first; t < cu[static_cast<size_t>(b) + 1]; ++t) {
        const int64_t pos = t - first;
        int64_t* row = out.data() + t * W;
        int64_t n = 0;
        for (int64_t j = std::max<int64_t>(0, pos - params.sliding_window + 1); j <= pos; ++j) row[n++] = first + j;
        if (params.compress_ratio == 0) continue;
        const int64_t base = T + cu_compressed[static_cast<size_t>(b)];
        if (topk) {
          for (int64_t i = 0; i < topk_width; ++i) {
            const int64_t c = (*topk)[static_cast<size_t>(t * topk_width + i)];
            if (c >= 0) row[n++] = base + c;
          }
        } else {
          for (int64_t w = 0; w < (pos + 1) / params.compress_ratio; ++w) row[n++] = base + w;
        }
      }
    }
  });
  access::store_int(out, indices);
}

}  // namespace seqmix::cpu
