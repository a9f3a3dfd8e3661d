// Lightning indexer. Each query keeps a size-K min-heap of (score, index) over the visible
// compressed entries it streams through, so memory is O(T * K) and the [T, T_c] score matrix
// never exists. Order: higher score first, the lower index first among equal scores.
//
// Backward of the selected scores s_tj = ss * ws * sum_h w_th relu(q_th . k_j):
//   dw_th = ss * ws * sum_j ds_tj relu(q_th . k_j)
//   dq_th = ss * ws * w_th * sum_j ds_tj [q_th . k_j > 0] k_j
//   dk_j  = ss * ws * sum_{t,h: j selected by t} ds_tj w_th [q_th . k_j > 0] q_th
// dk is reduced per sequence in query order (one worker per sequence: deterministic).
#include "cpu/dsa/indexer.h"

#include <algorithm>
#include <cmath>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/dsa/dot.h"

namespace seqmix::cpu {
namespace {

struct Candidate {
  double score;
  int64_t index;
};

// a ranks before b.
bool better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

std::vector<int64_t> sequence_of_token(const std::vector<int64_t>& cu) {
  std::vector<int64_t> seq(static_cast<size_t>(cu.back()));
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    for (int64_t t = cu[b]; t < cu[b + 1]; ++t) seq[static_cast<size_t>(t)] = static_cast<int64_t>(b);
  }
  return seq;
}

}  // namespace

void dsa_indexer_fwd(int64_t compress_ratio, double softmax_scale, double weights_scaling, const TensorView& q,
                     const TensorView& k, const TensorView& weights, const std::vector<int64_t>& cu,
                     const std::vector<int64_t>& cu_compressed, const TensorView& indices, const TensorView* scores) {
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), K = indices.size(1);
  const std::vector<double> qv = access::load(q), kv = access::load(k), wv = access::load(weights);
  const std::vector<int64_t> seq = sequence_of_token(cu);
  std::vector<int64_t> out_idx(static_cast<size_t>(T * K), -1);
  std::vector<double> out_score(static_cast<size_t>(T * K), 0.0);
  parallel::parallel_for(T, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> heap;  // heap.front() is the worst kept candidate
    const auto worse_on_top = [](const Candidate& a, const Candidate& b) { return better(a, b); };
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = seq[static_cast<size_t>(t)];
      const int64_t pos = t - cu[static_cast<size_t>(b)];
      const int64_t base = cu_compressed[static_cast<size_t>(b)];
      const int64_t count = cu_compressed[static_cast<size_t>(b) + 1] - base;
      const int64_t visible = std::min((pos + 1) / compress_ratio, count);
      heap.clear();
      for (int64_t j = 0; j < visible; ++j) {
        const double* key = kv.data() + (base + j) * D;
        double score = 0.0;
        for (int64_t h = 0; h < H; ++h) {
          const double logit = dsa_dot(qv.data() + (t * H + h) * D, key, D);
          score += std::max(logit, 0.0) * softmax_scale * (wv[static_cast<size_t>(t * H + h)] * weights_scaling);
        }
        const Candidate cand{score, j};
        if (static_cast<int64_t>(heap.size()) < K) {
          heap.push_back(cand);
          std::push_heap(heap.begin(), heap.end(), worse_on_top);
        } else if (better(cand, heap.front())) {
          std::pop_heap(heap.begin(), heap.end(), worse_on_top);
          heap.back() = cand;
          std::push_heap(heap.begin(), heap.end(), worse_on_top);
        }
      }
      std::sort(heap.begin(), heap.end(), better);
      for (size_t i = 0; i < heap.size(); ++i) {
        out_idx[static_cast<size_t>(t * K) + i] = heap[i].index;
        out_score[static_cast<size_t>(t * K) + i] = heap[i].score;
      }
    }
  });
  access::store_int(out_idx, indices);
  if (scores) access::store(out_score, *scores);
}

void dsa_indexer_bwd(double softmax_scale, double weights_scaling, const TensorView& q, const TensorView& k,
                     const TensorView& weights, const std::vector<int64_t>& cu,
                     const std::vector<int64_t>& cu_compressed, const TensorView& indices, const TensorView& dscores,
                     const TensorView& dq, const TensorView& dk, const TensorView& dweights) {
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), K = indices.size(1);
  const std::vector<double> qv = access::load(q), kv = access::load(k), wv = access::load(weights);
  const std::vector<double> ds = access::load(dscores);
  const std::vector<int64_t> idx = access::load_int(indices);
  const std::vector<int64_t> seq = sequence_of_token(cu);
  const double scale = softmax_scale * weights_scaling;
  std::vector<double> g_q(qv.size(), 0.0), g_k(kv.size(), 0.0), g_w(wv.size(), 0.0);
  parallel::parallel_for(T, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t base = cu_compressed[static_cast<size_t>(seq[static_cast<size_t>(t)])];
      for (int64_t i = 0; i < K; ++i) {
        const int64_t j = idx[static_cast<size_t>(t * K + i)];
        if (j < 0) continue;
        const double g = ds[static_cast<size_t>(t * K + i)];
        const double* key = kv.data() + (base + j) * D;
        for (int64_t h = 0; h < H; ++h) {
          const double* qh = qv.data() + (t * H + h) * D;
          const double logit = dsa_dot(qh, key, D);
          g_w[static_cast<size_t>(t * H + h)] += g * scale * std::max(logit, 0.0);
          if (logit > 0.0) {
            const double coeff = g * scale * wv[static_cast<size_t>(t * H + h)];
            double* gq = g_q.data() + (t * H + h) * D;
            for (int64_t d = 0; d < D; ++d) gq[d] += coeff * key[d];
          }
        }
      }
    }
  });
  parallel::parallel_for(static_cast<int64_t>(cu.size()) - 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t base = cu_compressed[static_cast<size_t>(b)];
      for (int64_t t = cu[static_cast<size_t>(b)]; t < cu[static_cast<size_t>(b) + 1]; ++t) {
        for (int64_t i = 0; i < K; ++i) {
          const int64_t j = idx[static_cast<size_t>(t * K + i)];
          if (j < 0) continue;
          const double g = ds[static_cast<size_t>(t * K + i)];
          const double* key = kv.data() + (base + j) * D;
          double* gk = g_k.data() + (base + j) * D;
          for (int64_t h = 0; h < H; ++h) {
            const double* qh = qv.data() + (t * H + h) * D;
            if (dsa_dot(qh, key, D) <= 0.0) continue;
            const double coeff = g * scale * wv[static_cast<size_t>(t * H + h)];
            for (int64_t d = 0; d < D; ++d) gk[d] += coeff * qh[d];
          }
        }
      }
    }
  });
  access::store(g_q, dq);
  access::store(g_k, dk);
  access::store(g_w, dweights);
}

}  // namespace seqmix::cpu
