#include "cpu/hc/mix.h"

#include "common/parallel.h"

namespace seqmix::cpu::hc_mix {

double rms_normalize(const double* v, int64_t n, double eps, double* y) {
  double sum_sq = 0.0;
  for (int64_t c = 0; c < n; ++c) sum_sq += v[c] * v[c];
  const double r = 1.0 / std::sqrt(sum_sq / static_cast<double>(n) + eps);
  for (int64_t c = 0; c < n; ++c) y[c] = v[c] * r;
  return r;
}

void linear(const double* fn, const double* y, int64_t rows, int64_t n, double* m) {
  for (int64_t i = 0; i < rows; ++i) {
    const double* w = fn + i * n;
    double acc = 0.0;
    for (int64_t c = 0; c < n; ++c) acc += w[c] * y[c];
    m[i] = acc;
  }
}

void backward_input(const double* fn, const double* dm, const double* v, double r, int64_t rows, int64_t n,
                    double* dv) {
  std::vector<double> gy(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    if (dm[i] == 0.0) continue;
    const double* w = fn + i * n;
    for (int64_t c = 0; c < n; ++c) gy[static_cast<size_t>(c)] += dm[i] * w[c];
  }
  double gy_dot_v = 0.0;
  for (int64_t c = 0; c < n; ++c) gy_dot_v += gy[static_cast<size_t>(c)] * v[c];
  const double k = r * r * r * gy_dot_v / static_cast<double>(n);
  for (int64_t c = 0; c < n; ++c) dv[c] += r * gy[static_cast<size_t>(c)] - v[c] * k;
}

std::vector<double> backward_weight(const std::vector<double>& dm, const std::vector<double>& y, int64_t tokens,
                                    int64_t rows, int64_t n) {
  std::vector<double> grad(static_cast<size_t>(rows * n), 0.0);
  parallel::parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double* g = grad.data() + i * n;
      for (int64_t t = 0; t < tokens; ++t) {
        const double d = dm[static_cast<size_t>(t * rows + i)];
        if (d == 0.0) continue;
        const double* yt = y.data() + t * n;
        for (int64_t c = 0; c < n; ++c) g[c] += d * yt[c];
      }
    }
  });
  return grad;
}

}  // namespace seqmix::cpu::hc_mix
