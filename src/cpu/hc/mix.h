// The "mix" shared by hc_pre and hc_head: an unweighted RMSNorm over the flattened streams
// v (n = hc_mult * D entries) followed by a bias-free linear map to `rows` mix logits:
//   y = v * r,  r = 1 / sqrt(mean(v^2) + eps);   m = fn @ y
// and its backward. Both ops keep per-token y / dm and reduce the fn gradient over tokens in a
// fixed order (one thread per fn row), so results do not depend on the thread count.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace seqmix::cpu::hc_mix {

// Writes y (n entries) and returns r.
double rms_normalize(const double* v, int64_t n, double eps, double* y);

// m[i] = sum_c fn[i, c] * y[c] for i < rows.
void linear(const double* fn, const double* y, int64_t rows, int64_t n, double* m);

// dv[c] += d/dv of sum_i dm[i] * m[i] through the linear map and the RMSNorm:
//   gy = fn^T dm;  dv = r * gy - v * r^3 * (gy . v) / n
void backward_input(const double* fn, const double* dm, const double* v, double r, int64_t rows, int64_t n,
                    double* dv);

// grad_fn[i, c] = sum_t dm[t, i] * y[t, c] over `tokens` tokens (dm [tokens, rows], y [tokens, n]).
std::vector<double> backward_weight(const std::vector<double>& dm, const std::vector<double>& y, int64_t tokens,
                                    int64_t rows, int64_t n);

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace seqmix::cpu::hc_mix
