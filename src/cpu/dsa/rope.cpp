// RoPE tables and rotation. HF builds inv_freq, the angles and cos/sin in float32 whatever the
// model dtype (`torch.arange(..., dtype=torch.float)`, `.float()` before the matmul), so the
// tables emulate each float32 rounding; the rotation itself is exact in double.
#include "cpu/dsa/rope.h"

#include <algorithm>
#include <cmath>

#include "common/access.h"
#include "common/parallel.h"

namespace seqmix::cpu {
namespace {

double f32(double v) { return static_cast<double>(static_cast<float>(v)); }

// HF `find_correction_dim`: the dim whose wavelength makes `num_rotations` turns over the
// original context.
double correction_dim(double num_rotations, double dim, double base, double max_position) {
  return dim * std::log(max_position / (num_rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
}

}  // namespace

std::vector<double> dsa_rope_inv_freq(const DsaRopeTableParams& p) {
  const int64_t dim = p.rope_dim, half = dim / 2;
  std::vector<double> pos_freqs(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const double exponent = f32(f32(2.0 * i) / f32(static_cast<double>(dim)));
    pos_freqs[static_cast<size_t>(i)] = f32(std::pow(f32(p.rope_theta), exponent));
  }
  std::vector<double> inv(static_cast<size_t>(half));
  if (!p.yarn) {
    for (int64_t i = 0; i < half; ++i) inv[static_cast<size_t>(i)] = f32(1.0 / pos_freqs[static_cast<size_t>(i)]);
    return inv;
  }
  double low = correction_dim(p.beta_fast, static_cast<double>(dim), p.rope_theta, p.original_max_position_embeddings);
  double high = correction_dim(p.beta_slow, static_cast<double>(dim), p.rope_theta, p.original_max_position_embeddings);
  if (p.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // HF: prevent a zero-width ramp
  for (int64_t i = 0; i < half; ++i) {
    const double pf = pos_freqs[static_cast<size_t>(i)];
    const double extrapolation = f32(1.0 / pf);
    const double interpolation = f32(1.0 / f32(f32(p.yarn_factor) * pf));
    const double ramp = std::clamp(f32(f32(static_cast<double>(i) - f32(low)) / f32(high - low)), 0.0, 1.0);
    const double extrapolation_factor = f32(1.0 - ramp);
    inv[static_cast<size_t>(i)] =
        f32(f32(interpolation * f32(1.0 - extrapolation_factor)) + f32(extrapolation * extrapolation_factor));
  }
  return inv;
}

void dsa_rope_cos_sin(const DsaRopeTableParams& p, const TensorView& position_ids, const TensorView& cos,
                      const TensorView& sin) {
  const std::vector<double> inv = dsa_rope_inv_freq(p);
  const std::vector<int64_t> positions = access::load_int(position_ids);
  const size_t half = inv.size();
  std::vector<double> c(positions.size() * half), s(positions.size() * half);
  const double scaling = f32(p.attention_scaling);
  for (size_t t = 0; t < positions.size(); ++t) {
    const double pos = f32(static_cast<double>(positions[t]));
    for (size_t i = 0; i < half; ++i) {
      const double angle = f32(inv[i] * pos);
      c[t * half + i] = f32(f32(std::cos(angle)) * scaling);
      s[t * half + i] = f32(f32(std::sin(angle)) * scaling);
    }
  }
  access::store(c, cos);
  access::store(s, sin);
}

void dsa_rotate_pairs(double* x, const double* cos, const double* sin, int64_t half, bool inverse) {
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t i = 0; i < half; ++i) {
    const double x0 = x[2 * i], x1 = x[2 * i + 1];
    const double c = cos[i], s = sign * sin[i];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x1 * c + x0 * s;
  }
}

void dsa_rope_apply(bool inverse, const TensorView& x, const TensorView& cos, const TensorView& sin,
                    const std::vector<int64_t>& positions, const TensorView& out) {
  const int64_t tokens = x.size(0), heads = x.size(1), dim = x.size(2), half = cos.size(1);
  std::vector<double> values = access::load(x);
  const std::vector<double> c = access::load(cos), s = access::load(sin);
  parallel::parallel_for(tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = positions.empty() ? t : positions[static_cast<size_t>(t)];
      for (int64_t h = 0; h < heads; ++h) {
        double* tail = values.data() + (t * heads + h) * dim + (dim - 2 * half);
        dsa_rotate_pairs(tail, c.data() + row * half, s.data() + row * half, half, inverse);
      }
    }
  });
  access::store(values, out);
}

}  // namespace seqmix::cpu
