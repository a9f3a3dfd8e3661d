// Helpers shared by the dsa tests (tests/cpp/dsa_*_test.cpp): small tensor constructors and the
// brute-force definitions the CPU reference is checked against. The brute-force code follows
// HF's tensor formulation (padded windows, dense score / mask matrices), so it only suits the
// tiny shapes of the tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/tensor.h"

namespace seqmix::dsa_test {

inline HostTensor make(const std::vector<double>& values, std::vector<int64_t> sizes, DType dtype = DType::f64) {
  return HostTensor::from_f64(values, std::move(sizes), dtype);
}

inline HostTensor reshaped(const HostTensor& t, std::vector<int64_t> sizes) {
  if (t.dtype() == DType::i64 || t.dtype() == DType::i32) {
    HostTensor out(t.dtype(), sizes);
    for (int64_t i = 0; i < t.numel(); ++i) out.set(i, t.get(i));
    return out;
  }
  return HostTensor::from_f64(t.to_f64(), std::move(sizes), t.dtype());
}

// Rope of one head vector's tail with a complex multiply per pair (x0 + i x1) * (c + i s).
inline void rope_ref(double* x, int64_t dim, const double* cos, const double* sin, int64_t half, bool inverse) {
  for (int64_t i = 0; i < half; ++i) {
    double* pair = x + dim - 2 * half + 2 * i;
    const std::complex<double> z(pair[0], pair[1]);
    const std::complex<double> r = z * std::complex<double>(cos[i], inverse ? -sin[i] : sin[i]);
    pair[0] = r.real();
    pair[1] = r.imag();
  }
}

// HF's compressor for one sequence (kv, gate [n, C*D] row-major): padded [n_win, slots, D]
// layout with zero kv / -inf gate for window 0's missing previous window, softmax over slots,
// weighted RMSNorm, rope at w * m. Returns [n_win, D].
inline std::vector<double> compressor_ref(const std::vector<double>& kv, const std::vector<double>& gate, int64_t n,
                                          const std::vector<double>& bias, const std::vector<double>& weight,
                                          const std::vector<double>& cos, const std::vector<double>& sin, int64_t half,
                                          int64_t m, bool overlap, double eps) {
  const int64_t D = static_cast<int64_t>(weight.size()), C = overlap ? 2 : 1, W = C * D, nw = n / m;
  const int64_t slots = overlap ? 2 * m : m;
  std::vector<double> out(static_cast<size_t>(nw * D));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (int64_t w = 0; w < nw; ++w) {
    std::vector<double> pv(static_cast<size_t>(slots * D), 0.0), pg(static_cast<size_t>(slots * D), neg_inf);
    for (int64_t s = 0; s < m; ++s) {
      for (int64_t d = 0; d < D; ++d) {
        const int64_t cur = (w * m + s) * W;
        if (overlap) {
          pv[static_cast<size_t>((m + s) * D + d)] = kv[static_cast<size_t>(cur + D + d)];
          pg[static_cast<size_t>((m + s) * D + d)] =
              gate[static_cast<size_t>(cur + D + d)] + bias[static_cast<size_t>(s * W + D + d)];
          if (w > 0) {
            const int64_t prev = ((w - 1) * m + s) * W;
            pv[static_cast<size_t>(s * D + d)] = kv[static_cast<size_t>(prev + d)];
            pg[static_cast<size_t>(s * D + d)] =
                gate[static_cast<size_t>(prev + d)] + bias[static_cast<size_t>(s * W + d)];
          }
        } else {
          pv[static_cast<size_t>(s * D + d)] = kv[static_cast<size_t>(cur + d)];
          pg[static_cast<size_t>(s * D + d)] =
              gate[static_cast<size_t>(cur + d)] + bias[static_cast<size_t>(s * W + d)];
        }
      }
    }
    std::vector<double> c(static_cast<size_t>(D), 0.0);
    for (int64_t d = 0; d < D; ++d) {
      double z = 0.0;
      for (int64_t s = 0; s < slots; ++s) z += std::exp(pg[static_cast<size_t>(s * D + d)]);
      for (int64_t s = 0; s < slots; ++s) {
        c[static_cast<size_t>(d)] +=
            std::exp(pg[static_cast<size_t>(s * D + d)]) / z * pv[static_cast<size_t>(s * D + d)];
      }
    }
    double ms = 0.0;
    for (double v : c) ms += v * v / static_cast<double>(D);
    double* y = out.data() + w * D;
    for (int64_t d = 0; d < D; ++d)
      y[d] = weight[static_cast<size_t>(d)] * (c[static_cast<size_t>(d)] / std::sqrt(ms + eps));
    rope_ref(y, D, cos.data() + w * m * half, sin.data() + w * m * half, half, false);
  }
  return out;
}

// Dense indexer scores [n, n_c] of one sequence (q [n, H, D], k [n_c, D], weights [n, H]).
inline std::vector<double> indexer_scores_ref(const std::vector<double>& q, const std::vector<double>& k,
                                              const std::vector<double>& w, int64_t n, int64_t nc, int64_t H, int64_t D,
                                              double softmax_scale, double weights_scaling) {
  std::vector<double> s(static_cast<size_t>(n * nc), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < nc; ++j) {
      for (int64_t h = 0; h < H; ++h) {
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d)
          dot += q[static_cast<size_t>((t * H + h) * D + d)] * k[static_cast<size_t>(j * D + d)];
        s[static_cast<size_t>(t * nc + j)] +=
            std::max(dot, 0.0) * softmax_scale * (w[static_cast<size_t>(t * H + h)] * weights_scaling);
      }
    }
  }
  return s;
}

// Top-K of the visible row prefix of a dense score matrix: full sort by (score desc, index asc).
inline std::vector<int64_t> topk_ref(const std::vector<double>& scores, int64_t n, int64_t nc, int64_t m, int64_t K) {
  std::vector<int64_t> out(static_cast<size_t>(n * K), -1);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int64_t> order;
    for (int64_t j = 0; j < std::min(nc, (t + 1) / m); ++j) order.push_back(j);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return scores[static_cast<size_t>(t * nc + a)] > scores[static_cast<size_t>(t * nc + b)];
    });
    for (int64_t i = 0; i < std::min<int64_t>(K, static_cast<int64_t>(order.size())); ++i) {
      out[static_cast<size_t>(t * K + i)] = order[static_cast<size_t>(i)];
    }
  }
  return out;
}

// Dense sink attention: multiplicity matrix mult [T, Hkv, N] built from the lists, softmax over
// all N rows weighted by multiplicity, plus the sink. q [T, H, D], kv [N, Hkv, D].
inline std::vector<double> sparse_attention_ref(const std::vector<double>& q, const std::vector<double>& kv,
                                                const std::vector<int64_t>& idx, const std::vector<double>& sinks,
                                                int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t N, int64_t W,
                                                double scale) {
  std::vector<double> mult(static_cast<size_t>(T * Hkv * N), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t g = 0; g < Hkv; ++g) {
      for (int64_t w = 0; w < W; ++w) {
        const int64_t j = idx[static_cast<size_t>((t * Hkv + g) * W + w)];
        if (j >= 0) mult[static_cast<size_t>((t * Hkv + g) * N + j)] += 1.0;
      }
    }
  }
  std::vector<double> out(static_cast<size_t>(T * H * D), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      std::vector<double> e(static_cast<size_t>(N), 0.0);
      double z = sinks.empty() ? 0.0 : std::exp(sinks[static_cast<size_t>(h)]);
      for (int64_t j = 0; j < N; ++j) {
        const double mu = mult[static_cast<size_t>((t * Hkv + g) * N + j)];
        if (mu == 0.0) continue;
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d)
          dot += q[static_cast<size_t>((t * H + h) * D + d)] * kv[static_cast<size_t>((j * Hkv + g) * D + d)];
        e[static_cast<size_t>(j)] = mu * std::exp(scale * dot);
        z += e[static_cast<size_t>(j)];
      }
      if (z == 0.0) continue;
      for (int64_t j = 0; j < N; ++j) {
        for (int64_t d = 0; d < D; ++d) {
          out[static_cast<size_t>((t * H + h) * D + d)] +=
              e[static_cast<size_t>(j)] / z * kv[static_cast<size_t>((j * Hkv + g) * D + d)];
        }
      }
    }
  }
  return out;
}

}  // namespace seqmix::dsa_test
