// `seqmix check` rows for the Hyper-Connection ops: forwards against a brute-force transcription of HF's
// formulas, backwards against fp64 central differences of the forward, and the bf16 forward against
// the f64 one. No CUDA kernel exists yet, so a CUDA device gets no rows.
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "check.h"
#include "seqmix/hc.h"

namespace seqmix::tools {
namespace {

constexpr int64_t kB = 2, kS = 3, kH = 4, kD = 5;  // small, odd sizes

HostTensor random_tensor(std::vector<int64_t> sizes, uint64_t seed, double scale, double shift = 0.0) {
  HostTensor t(DType::f64, std::move(sizes));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, shift + dist(rng));
  return t;
}

double dot(const HostTensor& a, const HostTensor& b) {
  double s = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.get(i) * b.get(i);
  return s;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// pre (or hc_head's weights) of token t: sigmoid((fn_row . rmsnorm(v)) * scale + base) + eps
double mix_logit(const HostTensor& x, const HostTensor& fn, int64_t t, int64_t row, double rms_eps) {
  const int64_t n = kH * kD;
  double ss = 0.0, m = 0.0;
  for (int64_t c = 0; c < n; ++c) ss += x.get(t * n + c) * x.get(t * n + c);
  for (int64_t c = 0; c < n; ++c) m += fn.get(row * n + c) * x.get(t * n + c);
  return m / std::sqrt(ss / n + rms_eps);
}

std::vector<CheckRow> check_hc(Device device) {
  if (device.type != DeviceType::cpu) return {};
  std::vector<CheckRow> rows;
  const HcPreParams pp;
  const int64_t mix = (2 + kH) * kH;
  HostTensor x = random_tensor({kB, kS, kH, kD}, 1, 0.8), fn = random_tensor({mix, kH * kD}, 2, 0.3),
             base = random_tensor({mix}, 3, 0.5), scale = random_tensor({3}, 4, 0.2, 1.0);
  HostTensor post(DType::f64, {kB, kS, kH}), comb(DType::f64, {kB, kS, kH, kH}), col(DType::f64, {kB, kS, kD});

  {  // hc_pre forward: comb by the Sinkhorn loop written out, collapsed by the pre weights
    CheckRow row{"hc_pre_fwd f64 vs brute force"};
    row.tolerance = 1e-12;
    row.ms = time_ms([&] {
      hc_pre_fwd(x.view(), fn.view(), base.view(), scale.view(), post.view(), comb.view(), col.view(), pp);
    });
    HostTensor ref_post(DType::f64, post.sizes()), ref_comb(DType::f64, comb.sizes()), ref_col(DType::f64, col.sizes());
    for (int64_t t = 0; t < kB * kS; ++t) {
      for (int64_t h = 0; h < kH; ++h) {
        ref_post.set(t * kH + h, 2.0 * sigmoid(mix_logit(x, fn, t, kH + h, pp.rms_norm_eps) * scale.get(1) + base.get(kH + h)));
      }
      double c[kH][kH];
      for (int64_t j = 0; j < kH; ++j) {
        double z = 0.0;
        for (int64_t k = 0; k < kH; ++k) {
          const int64_t i = 2 * kH + j * kH + k;
          z += c[j][k] = std::exp(mix_logit(x, fn, t, i, pp.rms_norm_eps) * scale.get(2) + base.get(i));
        }
        for (int64_t k = 0; k < kH; ++k) c[j][k] = c[j][k] / z + pp.hc_eps;
      }
      for (int64_t step = 0; step < 2 * pp.hc_sinkhorn_iters - 1; ++step) {
        for (int64_t a = 0; a < kH; ++a) {
          double sum = 0.0;
          for (int64_t b = 0; b < kH; ++b) sum += step % 2 ? c[a][b] : c[b][a];
          for (int64_t b = 0; b < kH; ++b) (step % 2 ? c[a][b] : c[b][a]) /= sum + pp.hc_eps;
        }
      }
      for (int64_t j = 0; j < kH; ++j)
        for (int64_t k = 0; k < kH; ++k) ref_comb.set(t * kH * kH + j * kH + k, c[j][k]);
      for (int64_t d = 0; d < kD; ++d) {
        double acc = 0.0;
        for (int64_t h = 0; h < kH; ++h) {
          acc += (sigmoid(mix_logit(x, fn, t, h, pp.rms_norm_eps) * scale.get(0) + base.get(h)) + pp.hc_eps) *
                 x.get((t * kH + h) * kD + d);
        }
        ref_col.set(t * kD + d, acc);
      }
    }
    compare(post, ref_post, row);
    compare(comb, ref_comb, row);
    compare(col, ref_col, row);
    rows.push_back(row);
  }
  {  // hc_pre backward vs finite differences of <post, wp> + <comb, wc> + <collapsed, wx>
    const HostTensor wp = random_tensor(post.sizes(), 5, 1.0), wc = random_tensor(comb.sizes(), 6, 1.0),
                     wx = random_tensor(col.sizes(), 7, 1.0);
    auto loss = [&] {
      hc_pre_fwd(x.view(), fn.view(), base.view(), scale.view(), post.view(), comb.view(), col.view(), pp);
      return dot(post, wp) + dot(comb, wc) + dot(col, wx);
    };
    HostTensor gx(DType::f64, x.sizes()), gfn(DType::f64, fn.sizes()), gb(DType::f64, base.sizes()),
        gs(DType::f64, {3});
    const TensorView vp = wp.view(), vc = wc.view(), vx = wx.view();
    CheckRow row{"hc_pre_bwd vs finite differences"};
    row.tolerance = 1e-6;
    row.ms = time_ms([&] {
      hc_pre_bwd(x.view(), fn.view(), base.view(), scale.view(), &vp, &vc, &vx, gx.view(), gfn.view(), gb.view(),
                 gs.view(), pp);
    });
    for (auto [param, grad] : {std::pair{&x, &gx}, {&fn, &gfn}, {&base, &gb}, {&scale, &gs}}) {
      compare(*grad, numeric_gradient(*param, loss), row);  // compare keeps the maximum over calls
    }
    rows.push_back(row);
  }
  {  // hc_pre in bf16 against the f64 result on the same (rounded) inputs
    CheckRow row{"hc_pre_fwd bf16 vs f64"};
    row.tolerance = 2e-2;
    const HostTensor xb = x.to(DType::bf16);
    HostTensor colb(DType::bf16, col.sizes());
    row.ms = time_ms([&] {
      hc_pre_fwd(xb.view(), fn.view(), base.view(), scale.view(), post.view(), comb.view(), colb.view(), pp);
    });
    hc_pre_fwd(xb.to(DType::f64).view(), fn.view(), base.view(), scale.view(), post.view(), comb.view(), col.view(),
               pp);
    compare(colb, col, row);
    rows.push_back(row);
  }

  HostTensor xs = random_tensor({kB, kS, kD}, 8, 1.0), pst = random_tensor({kB, kS, kH}, 9, 0.5, 1.0),
             cmb = random_tensor({kB, kS, kH, kH}, 10, 0.3, 0.25), out(DType::f64, {kB, kS, kH, kD});
  {
    CheckRow row{"hc_post_fwd f64 vs brute force"};
    row.tolerance = 1e-12;
    row.ms = time_ms([&] { hc_post_fwd(xs.view(), x.view(), pst.view(), cmb.view(), out.view()); });
    HostTensor ref(DType::f64, out.sizes());
    for (int64_t t = 0; t < kB * kS; ++t)
      for (int64_t k = 0; k < kH; ++k)
        for (int64_t d = 0; d < kD; ++d) {
          double acc = pst.get(t * kH + k) * xs.get(t * kD + d);
          for (int64_t j = 0; j < kH; ++j) acc += cmb.get((t * kH + j) * kH + k) * x.get((t * kH + j) * kD + d);
          ref.set((t * kH + k) * kD + d, acc);
        }
    compare(out, ref, row);
    rows.push_back(row);
  }
  {
    const HostTensor w = random_tensor(out.sizes(), 11, 1.0);
    auto loss = [&] {
      hc_post_fwd(xs.view(), x.view(), pst.view(), cmb.view(), out.view());
      return dot(out, w);
    };
    HostTensor gxs(DType::f64, xs.sizes()), gr(DType::f64, x.sizes()), gp(DType::f64, pst.sizes()),
        gc(DType::f64, cmb.sizes());
    CheckRow row{"hc_post_bwd vs finite differences"};
    row.tolerance = 1e-6;
    row.ms = time_ms([&] {
      hc_post_bwd(xs.view(), x.view(), pst.view(), cmb.view(), w.view(), gxs.view(), gr.view(), gp.view(), gc.view());
    });
    for (auto [param, grad] : {std::pair{&xs, &gxs}, {&x, &gr}, {&pst, &gp}, {&cmb, &gc}}) {
      compare(*grad, numeric_gradient(*param, loss), row);  // compare keeps the maximum over calls
    }
    rows.push_back(row);
  }

  const HcHeadParams hp;
  HostTensor hfn = random_tensor({kH, kH * kD}, 12, 0.3), hbase = random_tensor({kH}, 13, 0.5),
             hscale = random_tensor({1}, 14, 0.2, 1.0), hout(DType::f64, {kB, kS, kD});
  {
    CheckRow row{"hc_head_fwd f64 vs brute force"};
    row.tolerance = 1e-12;
    row.ms = time_ms([&] { hc_head_fwd(x.view(), hfn.view(), hbase.view(), hscale.view(), hout.view(), hp); });
    HostTensor ref(DType::f64, hout.sizes());
    for (int64_t t = 0; t < kB * kS; ++t)
      for (int64_t d = 0; d < kD; ++d) {
        double acc = 0.0;
        for (int64_t h = 0; h < kH; ++h) {
          acc += (sigmoid(mix_logit(x, hfn, t, h, hp.rms_norm_eps) * hscale.get(0) + hbase.get(h)) + hp.hc_eps) *
                 x.get((t * kH + h) * kD + d);
        }
        ref.set(t * kD + d, acc);
      }
    compare(hout, ref, row);
    rows.push_back(row);
  }
  {
    const HostTensor w = random_tensor(hout.sizes(), 15, 1.0);
    auto loss = [&] {
      hc_head_fwd(x.view(), hfn.view(), hbase.view(), hscale.view(), hout.view(), hp);
      return dot(hout, w);
    };
    HostTensor gx(DType::f64, x.sizes()), gfn(DType::f64, hfn.sizes()), gb(DType::f64, hbase.sizes()),
        gs(DType::f64, {1});
    CheckRow row{"hc_head_bwd vs finite differences"};
    row.tolerance = 1e-6;
    row.ms = time_ms([&] {
      hc_head_bwd(x.view(), hfn.view(), hbase.view(), hscale.view(), w.view(), gx.view(), gfn.view(), gb.view(),
                  gs.view(), hp);
    });
    for (auto [param, grad] : {std::pair{&x, &gx}, {&hfn, &gfn}, {&hbase, &gb}, {&hscale, &gs}}) {
      compare(*grad, numeric_gradient(*param, loss), row);  // compare keeps the maximum over calls
    }
    rows.push_back(row);
  }
  return rows;
}

const CheckRegistrar registrar("hc", check_hc);

}  // namespace
}  // namespace seqmix::tools
