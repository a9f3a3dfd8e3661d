// hc_pre reference: RMSNorm + linear mix, sigmoid pre / post, softmax + Sinkhorn comb, pre-weighted
// collapse of the streams, and the backward through every step (Sinkhorn unrolled step by step, the
// way autograd differentiates HF's loop).
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/hc/hc.h"
#include "cpu/hc/mix.h"

namespace seqmix::cpu {
namespace {

// Per-token forward state. Sinkhorn step s (0 <= s < 2 * iters - 1) normalises columns when s is even
// and rows when s is odd; steps[s] is its output and denoms[s] its (sum + hc_eps) denominators.
struct HcPreToken {
  int64_t hc = 0, dim = 0, iters = 0;
  std::vector<double> y, m, pre_sigmoid, post_sigmoid, softmax, steps, denoms;
  double r = 0.0;

  HcPreToken(int64_t hc_mult, int64_t hidden, int64_t sinkhorn_iters)
      : hc(hc_mult), dim(hidden), iters(sinkhorn_iters) {
    const auto n = static_cast<size_t>(hc * dim), mix = static_cast<size_t>((2 + hc) * hc);
    const auto hh = static_cast<size_t>(hc * hc), num_steps = static_cast<size_t>(2 * iters - 1);
    y.resize(n);
    m.resize(mix);
    pre_sigmoid.resize(static_cast<size_t>(hc));
    post_sigmoid.resize(static_cast<size_t>(hc));
    softmax.resize(hh);
    steps.resize(num_steps * hh);
    denoms.resize(num_steps * static_cast<size_t>(hc));
  }

  int64_t num_steps() const { return 2 * iters - 1; }
  const double* comb() const { return steps.data() + (num_steps() - 1) * hc * hc; }

  // v: this token's [hc, dim] streams.
  void forward(const double* v, const std::vector<double>& fn, const std::vector<double>& base,
               const std::vector<double>& scale, const HcPreParams& p) {
    const int64_t H = hc;
    r = hc_mix::rms_normalize(v, H * dim, p.rms_norm_eps, y.data());
    hc_mix::linear(fn.data(), y.data(), (2 + H) * H, H * dim, m.data());
    for (int64_t h = 0; h < H; ++h) {
      pre_sigmoid[h] = hc_mix::sigmoid(m[h] * scale[0] + base[h]);
      post_sigmoid[h] = hc_mix::sigmoid(m[H + h] * scale[1] + base[H + h]);
    }
    for (int64_t j = 0; j < H; ++j) {
      double* row = softmax.data() + j * H;
      double mx = -INFINITY;
      for (int64_t k = 0; k < H; ++k) {
        row[k] = m[2 * H + j * H + k] * scale[2] + base[2 * H + j * H + k];
        mx = std::max(mx, row[k]);
      }
      double sum = 0.0;
      for (int64_t k = 0; k < H; ++k) sum += (row[k] = std::exp(row[k] - mx));
      for (int64_t k = 0; k < H; ++k) row[k] /= sum;
    }
    std::vector<double> c(softmax);
    for (double& e : c) e += p.hc_eps;
    for (int64_t s = 0; s < num_steps(); ++s) {
      double* den = denoms.data() + s * H;
      const bool columns = s % 2 == 0;
      for (int64_t a = 0; a < H; ++a) {
        double sum = 0.0;
        for (int64_t b = 0; b < H; ++b) sum += columns ? c[b * H + a] : c[a * H + b];
        den[a] = sum + p.hc_eps;
      }
      for (int64_t j = 0; j < H; ++j) {
        for (int64_t k = 0; k < H; ++k) c[j * H + k] /= den[columns ? k : j];
      }
      std::copy(c.begin(), c.end(), steps.begin() + s * H * H);
    }
  }
};

struct HcPreInputs {
  int64_t tokens, hc, dim, iters;
  std::vector<double> x, fn, base, scale;
};

HcPreInputs load_inputs(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                        const TensorView& scale, const HcPreParams& params) {
  return {hidden_streams.size(0) * hidden_streams.size(1), hidden_streams.size(2), hidden_streams.size(3),
          params.hc_sinkhorn_iters, access::load(hidden_streams), access::load(fn), access::load(base),
          access::load(scale)};
}

}  // namespace

void hc_pre_fwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView& post, const TensorView& comb,
                const TensorView& collapsed, const HcPreParams& params) {
  const HcPreInputs in = load_inputs(hidden_streams, fn, base, scale, params);
  const int64_t H = in.hc, D = in.dim;
  std::vector<double> post_out(static_cast<size_t>(in.tokens * H)), comb_out(static_cast<size_t>(in.tokens * H * H)),
      collapsed_out(static_cast<size_t>(in.tokens * D));
  parallel::parallel_for(in.tokens, [&](int64_t begin, int64_t end) {
    HcPreToken tok(H, D, in.iters);
    for (int64_t t = begin; t < end; ++t) {
      const double* v = in.x.data() + t * H * D;
      tok.forward(v, in.fn, in.base, in.scale, params);
      for (int64_t h = 0; h < H; ++h) post_out[t * H + h] = 2.0 * tok.post_sigmoid[h];
      std::copy(tok.comb(), tok.comb() + H * H, comb_out.begin() + t * H * H);
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (int64_t h = 0; h < H; ++h) acc += (tok.pre_sigmoid[h] + params.hc_eps) * v[h * D + d];
        collapsed_out[t * D + d] = acc;
      }
    }
  });
  access::store(post_out, post);
  access::store(comb_out, comb);
  access::store(collapsed_out, collapsed);
}

void hc_pre_bwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView* grad_post, const TensorView* grad_comb,
                const TensorView* grad_collapsed, const TensorView& grad_hidden_streams, const TensorView& grad_fn,
                const TensorView& grad_base, const TensorView& grad_scale, const HcPreParams& params) {
  const HcPreInputs in = load_inputs(hidden_streams, fn, base, scale, params);
  const int64_t H = in.hc, D = in.dim, n = H * D, mix = (2 + H) * H;
  const std::vector<double> g_post = access::load_optional(grad_post);
  const std::vector<double> g_comb = access::load_optional(grad_comb);
  const std::vector<double> g_collapsed = access::load_optional(grad_collapsed);

  std::vector<double> dx(static_cast<size_t>(in.tokens * n), 0.0);
  std::vector<double> dlogit(static_cast<size_t>(in.tokens * mix), 0.0);  // d loss / d (m * scale + base)
  std::vector<double> dm(static_cast<size_t>(in.tokens * mix), 0.0);
  std::vector<double> m_all(static_cast<size_t>(in.tokens * mix));
  std::vector<double> y_all(static_cast<size_t>(in.tokens * n));

  parallel::parallel_for(in.tokens, [&](int64_t begin, int64_t end) {
    HcPreToken tok(H, D, in.iters);
    std::vector<double> g(static_cast<size_t>(H * H));
    for (int64_t t = begin; t < end; ++t) {
      const double* v = in.x.data() + t * n;
      double* dv = dx.data() + t * n;
      double* dl = dlogit.data() + t * mix;
      tok.forward(v, in.fn, in.base, in.scale, params);

      if (!g_collapsed.empty()) {
        const double* gc = g_collapsed.data() + t * D;
        for (int64_t h = 0; h < H; ++h) {
          const double pre = tok.pre_sigmoid[h] + params.hc_eps;
          double g_pre = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            g_pre += gc[d] * v[h * D + d];
            dv[h * D + d] += pre * gc[d];
          }
          const double s = tok.pre_sigmoid[h];
          dl[h] = g_pre * s * (1.0 - s);
        }
      }
      if (!g_post.empty()) {
        for (int64_t h = 0; h < H; ++h) {
          const double s = tok.post_sigmoid[h];
          dl[H + h] = g_post[t * H + h] * 2.0 * s * (1.0 - s);
        }
      }
      if (!g_comb.empty()) {
        std::copy(g_comb.begin() + t * H * H, g_comb.begin() + (t + 1) * H * H, g.begin());
        // c' = c / den  =>  dc = (g - sum over the normalised axis of g * c') / den
        for (int64_t s = tok.num_steps() - 1; s >= 0; --s) {
          const double* out = tok.steps.data() + s * H * H;
          const double* den = tok.denoms.data() + s * H;
          const bool columns = s % 2 == 0;
          for (int64_t a = 0; a < H; ++a) {
            double dot = 0.0;
            for (int64_t b = 0; b < H; ++b) {
              const int64_t i = columns ? b * H + a : a * H + b;
              dot += g[i] * out[i];
            }
            for (int64_t b = 0; b < H; ++b) {
              const int64_t i = columns ? b * H + a : a * H + b;
              g[i] = (g[i] - dot) / den[a];
            }
          }
        }
        // + hc_eps passes the gradient through; softmax over k: dl = p * (g - sum_k g * p)
        for (int64_t j = 0; j < H; ++j) {
          const double* p = tok.softmax.data() + j * H;
          double dot = 0.0;
          for (int64_t k = 0; k < H; ++k) dot += g[j * H + k] * p[k];
          for (int64_t k = 0; k < H; ++k) dl[2 * H + j * H + k] = p[k] * (g[j * H + k] - dot);
        }
      }
      double* dmt = dm.data() + t * mix;
      for (int64_t i = 0; i < mix; ++i) dmt[i] = dl[i] * in.scale[i < H ? 0 : (i < 2 * H ? 1 : 2)];
      hc_mix::backward_input(in.fn.data(), dmt, v, tok.r, mix, n, dv);
      std::copy(tok.m.begin(), tok.m.end(), m_all.begin() + t * mix);
      std::copy(tok.y.begin(), tok.y.end(), y_all.begin() + t * n);
    }
  });

  std::vector<double> d_base(static_cast<size_t>(mix), 0.0), d_scale(3, 0.0);
  for (int64_t t = 0; t < in.tokens; ++t) {
    for (int64_t i = 0; i < mix; ++i) {
      const double d = dlogit[t * mix + i];
      d_base[i] += d;
      d_scale[i < H ? 0 : (i < 2 * H ? 1 : 2)] += d * m_all[t * mix + i];
    }
  }
  access::store(dx, grad_hidden_streams);
  access::store(hc_mix::backward_weight(dm, y_all, in.tokens, mix, n), grad_fn);
  access::store(d_base, grad_base);
  access::store(d_scale, grad_scale);
}

}  // namespace seqmix::cpu
