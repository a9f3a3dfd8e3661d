// hc_head reference: pre = sigmoid((hc_fn @ rmsnorm(v)) * hc_scale + hc_base) + hc_eps, out = sum_h pre[h]
// * streams[h], and its backward.
#include <vector>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/hc/hc.h"
#include "cpu/hc/mix.h"

namespace seqmix::cpu {

void hc_head_fwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& out, const HcHeadParams& params) {
  const int64_t tokens = hidden_streams.size(0) * hidden_streams.size(1), H = hidden_streams.size(2),
                D = hidden_streams.size(3), n = H * D;
  const std::vector<double> x = access::load(hidden_streams), fn = access::load(hc_fn), base = access::load(hc_base);
  const double scale = access::load(hc_scale)[0];
  std::vector<double> o(static_cast<size_t>(tokens * D));
  parallel::parallel_for(tokens, [&](int64_t begin, int64_t end) {
    std::vector<double> y(static_cast<size_t>(n)), m(static_cast<size_t>(H));
    for (int64_t t = begin; t < end; ++t) {
      const double* v = x.data() + t * n;
      hc_mix::rms_normalize(v, n, params.rms_norm_eps, y.data());
      hc_mix::linear(fn.data(), y.data(), H, n, m.data());
      for (int64_t d = 0; d < D; ++d) o[t * D + d] = 0.0;
      for (int64_t h = 0; h < H; ++h) {
        const double pre = hc_mix::sigmoid(m[h] * scale + base[h]) + params.hc_eps;
        for (int64_t d = 0; d < D; ++d) o[t * D + d] += pre * v[h * D + d];
      }
    }
  });
  access::store(o, out);
}

void hc_head_bwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& grad_out, const TensorView& grad_hidden_streams,
                 const TensorView& grad_hc_fn, const TensorView& grad_hc_base, const TensorView& grad_hc_scale,
                 const HcHeadParams& params) {
  const int64_t tokens = hidden_streams.size(0) * hidden_streams.size(1), H = hidden_streams.size(2),
                D = hidden_streams.size(3), n = H * D;
  const std::vector<double> x = access::load(hidden_streams), fn = access::load(hc_fn),
                            base = access::load(hc_base), g = access::load(grad_out);
  const double scale = access::load(hc_scale)[0];
  std::vector<double> dx(static_cast<size_t>(tokens * n), 0.0), y_all(static_cast<size_t>(tokens * n)),
      m_all(static_cast<size_t>(tokens * H)), dlogit(static_cast<size_t>(tokens * H)),
      dm(static_cast<size_t>(tokens * H));
  parallel::parallel_for(tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const double* v = x.data() + t * n;
      const double* gt = g.data() + t * D;
      double* dv = dx.data() + t * n;
      double* y = y_all.data() + t * n;
      double* m = m_all.data() + t * H;
      const double r = hc_mix::rms_normalize(v, n, params.rms_norm_eps, y);
      hc_mix::linear(fn.data(), y, H, n, m);
      for (int64_t h = 0; h < H; ++h) {
        const double s = hc_mix::sigmoid(m[h] * scale + base[h]);
        double g_pre = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          g_pre += gt[d] * v[h * D + d];
          dv[h * D + d] += (s + params.hc_eps) * gt[d];
        }
        dlogit[t * H + h] = g_pre * s * (1.0 - s);
        dm[t * H + h] = dlogit[t * H + h] * scale;
      }
      hc_mix::backward_input(fn.data(), dm.data() + t * H, v, r, H, n, dv);
    }
  });
  std::vector<double> d_base(static_cast<size_t>(H), 0.0), d_scale(1, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      d_base[h] += dlogit[t * H + h];
      d_scale[0] += dlogit[t * H + h] * m_all[t * H + h];
    }
  }
  access::store(dx, grad_hidden_streams);
  access::store(hc_mix::backward_weight(dm, y_all, tokens, H, n), grad_hc_fn);
  access::store(d_base, grad_hc_base);
  access::store(d_scale, grad_hc_scale);
}

}  // namespace seqmix::cpu
