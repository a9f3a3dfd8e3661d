// KDA's fused gate (FLA fla/ops/kda/gate.py) and its partial derivatives, in double.
//   softplus form:    g = -exp(A_log[h]) * softplus(x),           x = g_raw + dt_bias[h, d]
//   lower_bound form: g = lower_bound * sigmoid(c * x),           c = exp(A_log[h]) or 1 without A_log
// softplus uses torch's / FLA's threshold: softplus(x) = x for x > 20.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace seqmix::cpu::kda_gate {

inline constexpr double kL2NormEps = 1e-6;          // fla.modules.l2norm default
inline constexpr double kSoftplusThreshold = 20.0;  // torch.nn.functional.softplus default

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double softplus(double x) { return x > kSoftplusThreshold ? x : std::log1p(std::exp(x)); }
inline double softplus_grad(double x) { return x > kSoftplusThreshold ? 1.0 : sigmoid(x); }

struct Gate {
  std::optional<double> lower_bound;
  const std::vector<double>* A_log = nullptr;    // [HV] or absent
  const std::vector<double>* dt_bias = nullptr;  // [HV * K] or absent
  int64_t K = 0;

  double pre_activation(double g_raw, int64_t hv, int64_t d) const {
    return g_raw + (dt_bias ? (*dt_bias)[static_cast<size_t>(hv * K + d)] : 0.0);
  }
  double rate(int64_t hv) const { return A_log ? std::exp((*A_log)[static_cast<size_t>(hv)]) : 1.0; }

  double value(double g_raw, int64_t hv, int64_t d) const {
    const double x = pre_activation(g_raw, hv, d);
    if (lower_bound) return *lower_bound * sigmoid(rate(hv) * x);
    return -rate(hv) * softplus(x);
  }

  // d g / d g_raw (== d g / d dt_bias) and d g / d A_log.
  void grad(double g_raw, int64_t hv, int64_t d, double& d_raw, double& d_A_log) const {
    const double x = pre_activation(g_raw, hv, d);
    const double c = rate(hv);
    if (lower_bound) {
      const double s = sigmoid(c * x);
      d_raw = *lower_bound * s * (1.0 - s) * c;
      d_A_log = A_log ? d_raw * x : 0.0;
    } else {
      d_raw = -c * softplus_grad(x);
      d_A_log = -c * softplus(x);
    }
  }
};

}  // namespace seqmix::cpu::kda_gate
