// KV compressor. Window w of a sequence gathers its slots (overlap: Ca of window w-1 then Cb
// of window w, 2m slots; otherwise the m tokens of window w), softmaxes gate + position_bias
// over the slots independently per channel, pools kv, RMS-normalises the pooled vector with
// norm_weight and rotates its rope tail at position w * m.
//
// Backward, per window (y = norm(c), z = rope(y)):
//   dy = rope^-1(dz);  dnorm_weight += dy * c * r;  r = 1 / sqrt(mean(c^2) + eps)
//   dc = r * norm_weight * dy - c * r^3 * sum_d(dy_d norm_weight_d c_d) / D
//   dkv_s = p_s dc;  dlogit_s = p_s (kv_s - c) dc  (= dgate_s; dposition_bias sums it over windows)
// Every kv / gate element feeds at most one window, so windows write disjoint gradients; the
// parameter gradients are reduced afterwards in window order (thread-count independent).
#include "cpu/dsa/compressor.h"

#include <cmath>
#include <limits>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/dsa/rope.h"

namespace seqmix::cpu {
namespace {

struct Window {
  int64_t first_token;  // global row of the window's first token
  int64_t index;        // w within its sequence
  int64_t out_row;
};

std::vector<Window> list_windows(const std::vector<int64_t>& cu, int64_t ratio) {
  std::vector<Window> windows;
  int64_t row = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t count = (cu[b + 1] - cu[b]) / ratio;
    for (int64_t w = 0; w < count; ++w) windows.push_back({cu[b] + w * ratio, w, row++});
  }
  return windows;
}

// One slot of a window for channel-block `part` (0 = Ca / single series, 1 = Cb).
struct Slot {
  int64_t token;  // global token row
  int64_t part;   // which D-wide column block of kv / gate / position_bias
  int64_t bias_row;
};

std::vector<Slot> window_slots(const Window& w, int64_t ratio, bool overlap) {
  std::vector<Slot> slots;
  if (overlap) {
    if (w.index > 0) {
      for (int64_t s = 0; s < ratio; ++s) slots.push_back({w.first_token - ratio + s, 0, s});
    }
    for (int64_t s = 0; s < ratio; ++s) slots.push_back({w.first_token + s, 1, s});
  } else {
    for (int64_t s = 0; s < ratio; ++s) slots.push_back({w.first_token + s, 0, s});
  }
  return slots;
}

struct Inputs {
  std::vector<double> kv, gate, bias, weight, cos, sin;
  int64_t dim, width, half;  // head_dim D, kv width C * D, rope pairs
};

Inputs load_inputs(const TensorView& kv, const TensorView& gate, const TensorView& position_bias,
                   const TensorView& norm_weight, const TensorView& cos, const TensorView& sin) {
  Inputs in{access::load(kv),          access::load(gate),   access::load(position_bias),
            access::load(norm_weight), access::load(cos),    access::load(sin),
            norm_weight.size(0),       kv.size(kv.rank - 1), cos.size(1)};
  return in;
}

// Softmax weights p [slots, D] and pooled c [D] of one window.
void pool_window(const Inputs& in, const std::vector<Slot>& slots, std::vector<double>& p, std::vector<double>& c) {
  const int64_t D = in.dim, n = static_cast<int64_t>(slots.size());
  p.assign(static_cast<size_t>(n * D), 0.0);
  c.assign(static_cast<size_t>(D), 0.0);
  for (int64_t d = 0; d < D; ++d) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t s = 0; s < n; ++s) {
      const Slot& sl = slots[static_cast<size_t>(s)];
      const int64_t col = sl.part * D + d;
      const double logit = in.gate[static_cast<size_t>(sl.token * in.width + col)] +
                           in.bias[static_cast<size_t>(sl.bias_row * in.width + col)];
      p[static_cast<size_t>(s * D + d)] = logit;
      mx = std::max(mx, logit);
    }
    double z = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      double& e = p[static_cast<size_t>(s * D + d)];
      e = std::exp(e - mx);
      z += e;
    }
    double acc = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      const Slot& sl = slots[static_cast<size_t>(s)];
      double& e = p[static_cast<size_t>(s * D + d)];
      e /= z;
      acc += e * in.kv[static_cast<size_t>(sl.token * in.width + sl.part * D + d)];
    }
    c[static_cast<size_t>(d)] = acc;
  }
}

double inv_rms(const std::vector<double>& c, double eps) {
  double ss = 0.0;
  for (double v : c) ss += v * v;
  return 1.0 / std::sqrt(ss / static_cast<double>(c.size()) + eps);
}

}  // namespace

std::vector<int64_t> dsa_compressed_offsets(const std::vector<int64_t>& cu, int64_t compress_ratio) {
  std::vector<int64_t> out(cu.size(), 0);
  for (size_t b = 0; b + 1 < cu.size(); ++b) out[b + 1] = out[b] + (cu[b + 1] - cu[b]) / compress_ratio;
  return out;
}

void dsa_compressor_fwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const std::vector<int64_t>& cu, const TensorView& out) {
  const Inputs in = load_inputs(kv, gate, position_bias, norm_weight, cos, sin);
  const std::vector<Window> windows = list_windows(cu, params.compress_ratio);
  const int64_t D = in.dim;
  std::vector<double> result(windows.size() * static_cast<size_t>(D));
  parallel::parallel_for(static_cast<int64_t>(windows.size()), [&](int64_t begin, int64_t end) {
    std::vector<double> p, c;
    for (int64_t i = begin; i < end; ++i) {
      const Window& w = windows[static_cast<size_t>(i)];
      pool_window(in, window_slots(w, params.compress_ratio, params.overlap), p, c);
      const double r = inv_rms(c, params.rms_norm_eps);
      double* y = result.data() + w.out_row * D;
      for (int64_t d = 0; d < D; ++d) y[d] = in.weight[static_cast<size_t>(d)] * (c[static_cast<size_t>(d)] * r);
      const int64_t pos = w.index * params.compress_ratio;
      dsa_rotate_pairs(y + D - 2 * in.half, in.cos.data() + pos * in.half, in.sin.data() + pos * in.half, in.half,
                       false);
    }
  });
  access::store(result, out);
}

void dsa_compressor_bwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const std::vector<int64_t>& cu, const TensorView& dout,
                        const TensorView& dkv, const TensorView& dgate, const TensorView& dposition_bias,
                        const TensorView& dnorm_weight) {
  const Inputs in = load_inputs(kv, gate, position_bias, norm_weight, cos, sin);
  const std::vector<double> g_out = access::load(dout);
  const std::vector<Window> windows = list_windows(cu, params.compress_ratio);
  const int64_t D = in.dim, ratio = params.compress_ratio;
  std::vector<double> g_kv(in.kv.size(), 0.0), g_gate(in.gate.size(), 0.0);
  std::vector<double> weight_terms(windows.size() * static_cast<size_t>(D));  // dy * c * r per window
  parallel::parallel_for(static_cast<int64_t>(windows.size()), [&](int64_t begin, int64_t end) {
    std::vector<double> p, c, dy(static_cast<size_t>(D)), dc(static_cast<size_t>(D));
    for (int64_t i = begin; i < end; ++i) {
      const Window& w = windows[static_cast<size_t>(i)];
      const std::vector<Slot> slots = window_slots(w, ratio, params.overlap);
      pool_window(in, slots, p, c);
      const double r = inv_rms(c, params.rms_norm_eps);
      std::copy_n(g_out.data() + w.out_row * D, D, dy.data());
      const int64_t pos = w.index * ratio;
      dsa_rotate_pairs(dy.data() + D - 2 * in.half, in.cos.data() + pos * in.half, in.sin.data() + pos * in.half,
                       in.half, true);
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const size_t k = static_cast<size_t>(d);
        weight_terms[static_cast<size_t>(i * D + d)] = dy[k] * c[k] * r;
        dot += dy[k] * in.weight[k] * c[k];
      }
      for (int64_t d = 0; d < D; ++d) {
        const size_t k = static_cast<size_t>(d);
        dc[k] = r * in.weight[k] * dy[k] - c[k] * r * r * r * dot / static_cast<double>(D);
      }
      for (size_t s = 0; s < slots.size(); ++s) {
        const Slot& sl = slots[s];
        for (int64_t d = 0; d < D; ++d) {
          const size_t at = static_cast<size_t>(sl.token * in.width + sl.part * D + d);
          const double ps = p[s * static_cast<size_t>(D) + static_cast<size_t>(d)];
          g_kv[at] = ps * dc[static_cast<size_t>(d)];
          g_gate[at] = ps * (in.kv[at] - c[static_cast<size_t>(d)]) * dc[static_cast<size_t>(d)];
        }
      }
    }
  });
  // Parameter gradients: position_bias[s, col] sums dgate over the windows' slot s; reduce per column.
  std::vector<double> g_bias(in.bias.size(), 0.0), g_weight(static_cast<size_t>(D), 0.0);
  parallel::parallel_for(in.width, [&](int64_t begin, int64_t end) {
    for (const Window& w : windows) {
      for (const Slot& sl : window_slots(w, ratio, params.overlap)) {
        for (int64_t col = begin; col < end; ++col) {
          if (col / D != sl.part) continue;
          g_bias[static_cast<size_t>(sl.bias_row * in.width + col)] +=
              g_gate[static_cast<size_t>(sl.token * in.width + col)];
        }
      }
    }
  });
  for (size_t i = 0; i < windows.size(); ++i) {
    for (int64_t d = 0; d < D; ++d)
      g_weight[static_cast<size_t>(d)] += weight_terms[i * static_cast<size_t>(D) + static_cast<size_t>(d)];
  }
  access::store(g_kv, dkv);
  access::store(g_gate, dgate);
  access::store(g_bias, dposition_bias);
  access::store(g_weight, dnorm_weight);
}

}  // namespace seqmix::cpu
