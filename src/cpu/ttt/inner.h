// Row-level pieces of TTT-Linear shared by the naive, chunked and backward CPU paths: the
// loaded inputs, the non-affine LayerNorm and the inner model's loss gradient vn.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/access.h"
#include "cpu/ttt/ttt.h"

namespace seqmix::cpu::ttt {

// Inputs widened to double, row-major; absent initial states are zeros.
struct Inputs {
  std::vector<double> q, k, v, w, b, eta, h0, hb0;
};

inline Inputs load_inputs(const TTTLinearConfig& c, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& w, const TensorView& b, const TensorView& eta,
                          const TensorView* initial_state, const TensorView* initial_state_bias) {
  const size_t n = c.offsets.size() - 1;
  const size_t state = n * static_cast<size_t>(c.heads * c.dim * c.dim);
  const size_t state_bias = n * static_cast<size_t>(c.heads * c.dim);
  Inputs in{access::load(q), access::load(k), access::load(v), access::load(w),
            access::load(b), access::load(eta), access::load_optional(initial_state),
            access::load_optional(initial_state_bias)};
  if (in.h0.empty()) in.h0.assign(state, 0.0);
  if (in.hb0.empty()) in.hb0.assign(state_bias, 0.0);
  return in;
}

// y = (x - mean(x)) / sigma with sigma = sqrt(var(x) + eps) (biased variance); returns sigma.
inline double layer_norm(const double* x, int64_t d, double eps, double* y) {
  double mean = 0.0;
  for (int64_t a = 0; a < d; ++a) mean += x[a];
  mean /= static_cast<double>(d);
  double var = 0.0;
  for (int64_t a = 0; a < d; ++a) var += (x[a] - mean) * (x[a] - mean);
  var /= static_cast<double>(d);
  const double sigma = std::sqrt(var + eps);
  for (int64_t a = 0; a < d; ++a) y[a] = (x[a] - mean) / sigma;
  return sigma;
}

// Backward of y = LN(x) (no affine): dx = (dy - mean(dy) - y * mean(dy * y)) / sigma, added to dx.
inline void layer_norm_backward(const double* dy, const double* y, double sigma, int64_t d, double* dx) {
  double mean_dy = 0.0, mean_dyy = 0.0;
  for (int64_t a = 0; a < d; ++a) {
    mean_dy += dy[a];
    mean_dyy += dy[a] * y[a];
  }
  mean_dy /= static_cast<double>(d);
  mean_dyy /= static_cast<double>(d);
  for (int64_t a = 0; a < d; ++a) dx[a] += (dy[a] - mean_dy - y[a] * mean_dyy) / sigma;
}

// Inner model on one row: kh = k W + hb is given. With x = LN(kh), the residual
// r = w * x + b - (v - k) and g = w * r = dloss/dx of loss = 0.5 |r|^2, the loss gradient is
// vn = dloss/dkh = (g - mean(g) - x * mean(g * x)) / sigma. k, v may be nullptr (padded row: 0).
struct InnerRow {
  std::vector<double> x, r, g, vn;
  double sigma = 1.0;
  explicit InnerRow(int64_t d) : x(d), r(d), g(d), vn(d) {}
};

inline void inner_grad(const double* kh, const double* k, const double* v, const double* w, const double* b,
                       int64_t d, double eps, InnerRow& row) {
  row.sigma = layer_norm(kh, d, eps, row.x.data());
  double mean_g = 0.0, mean_gx = 0.0;
  for (int64_t a = 0; a < d; ++a) {
    const double target = (v ? v[a] : 0.0) - (k ? k[a] : 0.0);
    row.r[a] = w[a] * row.x[a] + b[a] - target;
    row.g[a] = w[a] * row.r[a];
    mean_g += row.g[a];
    mean_gx += row.g[a] * row.x[a];
  }
  mean_g /= static_cast<double>(d);
  mean_gx /= static_cast<double>(d);
  for (int64_t a = 0; a < d; ++a) row.vn[a] = (row.g[a] - mean_g - row.x[a] * mean_gx) / row.sigma;
}

// kh = k W + hb for one row (k may be nullptr: kh = hb).
inline void project_key(const double* k, const double* state, const double* state_bias, int64_t d, double* kh) {
  for (int64_t c = 0; c < d; ++c) kh[c] = state_bias[c];
  if (!k) return;
  for (int64_t a = 0; a < d; ++a) {
    const double ka = k[a];
    const double* row = state + a * d;
    for (int64_t c = 0; c < d; ++c) kh[c] += ka * row[c];
  }
}

// o = z + w * LN(z) + b (the output norm with residual); returns sigma of z, n = LN(z).
inline double norm_residual(const double* z, const double* w, const double* b, int64_t d, double eps, double* n,
                            double* o) {
  const double sigma = layer_norm(z, d, eps, n);
  for (int64_t a = 0; a < d; ++a) o[a] = z[a] + w[a] * n[a] + b[a];
  return sigma;
}

// Element offsets in the row-major [B*T, H, D] / [B*T, H] / [N, H, D, D] / [N, H, D] buffers.
inline size_t row_at(int64_t token, int64_t head, const TTTLinearConfig& c) {
  return static_cast<size_t>((token * c.heads + head) * c.dim);
}
inline size_t eta_at(int64_t token, int64_t head, const TTTLinearConfig& c) {
  return static_cast<size_t>(token * c.heads + head);
}
inline size_t state_at(int64_t seq, int64_t head, const TTTLinearConfig& c) {
  return static_cast<size_t>((seq * c.heads + head) * c.dim * c.dim);
}
inline size_t bias_at(int64_t seq, int64_t head, const TTTLinearConfig& c) {
  return static_cast<size_t>((seq * c.heads + head) * c.dim);
}

// The token whose eta steps the state after a chunk ending at chunk_end of a sequence ending at
// seq_end: the chunk's last row, or the sequence's last token for a partial chunk (FLA pads eta
// with it).
inline int64_t eta_last_token(int64_t chunk_end, int64_t seq_end) { return std::min(chunk_end, seq_end) - 1; }

// One chunk [start, min(start + chunk_size, eos)) of a (sequence, head) in the chunked form. The
// chunk_size - count padded rows all have k = v = 0, hence kh = hb and one shared vn: they are
// kept as a single row `pad` with multiplicity `pad_count` instead of being materialised.
struct Chunk {
  int64_t start = 0, count = 0, pad_count = 0, eta_last_token = 0;
  std::vector<InnerRow> rows;  // real rows
  InnerRow pad;
  Chunk(int64_t chunk_size, int64_t d) : rows(static_cast<size_t>(chunk_size), InnerRow(d)), pad(d) {}
};

// vn of every row of the chunk at state (W, hb) = (state, state_bias).
inline void chunk_inner_grads(const Inputs& in, const TTTLinearConfig& c, int64_t head, int64_t start, int64_t eos,
                              const double* state, const double* state_bias, Chunk& chunk) {
  const int64_t d = c.dim;
  std::vector<double> kh(static_cast<size_t>(d));
  chunk.start = start;
  chunk.count = std::min(c.chunk_size, eos - start);
  chunk.pad_count = c.chunk_size - chunk.count;
  chunk.eta_last_token = eta_last_token(start + c.chunk_size, eos);
  const double* wh = in.w.data() + head * d;
  const double* bh = in.b.data() + head * d;
  for (int64_t i = 0; i < chunk.count; ++i) {
    const double* k = in.k.data() + row_at(start + i, head, c);
    project_key(k, state, state_bias, d, kh.data());
    inner_grad(kh.data(), k, in.v.data() + row_at(start + i, head, c), wh, bh, d, c.eps, chunk.rows[i]);
  }
  if (chunk.pad_count > 0) inner_grad(state_bias, nullptr, nullptr, wh, bh, d, c.eps, chunk.pad);
}

// W <- W - eta_last * sum_j k_j^T vn_j,  hb <- hb - eta_last * sum_j vn_j (padded rows included).
inline void chunk_state_step(const Inputs& in, const TTTLinearConfig& c, int64_t head, const Chunk& chunk,
                             double* state, double* state_bias) {
  const int64_t d = c.dim;
  const double eta_last = in.eta[eta_at(chunk.eta_last_token, head, c)];
  for (int64_t j = 0; j < chunk.count; ++j) {
    const double* k = in.k.data() + row_at(chunk.start + j, head, c);
    const std::vector<double>& vn = chunk.rows[j].vn;
    for (int64_t a = 0; a < d; ++a) {
      const double ka = eta_last * k[a];
      for (int64_t col = 0; col < d; ++col) state[a * d + col] -= ka * vn[col];
    }
    for (int64_t col = 0; col < d; ++col) state_bias[col] -= eta_last * vn[col];
  }
  for (int64_t col = 0; col < d; ++col) {
    state_bias[col] -= eta_last * static_cast<double>(chunk.pad_count) * chunk.pad.vn[col];
  }
}

// Number of chunks of each sequence, prefix-summed: chunk_offsets[n] is the first global chunk of n.
inline std::vector<int64_t> chunk_offsets(const TTTLinearConfig& c) {
  std::vector<int64_t> out(c.offsets.size(), 0);
  for (size_t n = 1; n < c.offsets.size(); ++n) {
    const int64_t len = c.offsets[n] - c.offsets[n - 1];
    out[n] = out[n - 1] + (len + c.chunk_size - 1) / c.chunk_size;
  }
  return out;
}

}  // namespace seqmix::cpu::ttt
