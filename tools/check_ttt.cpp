// `seqmix check` rows for TTT-Linear on small shapes (partial last chunks, varlen with an empty
// and a length-1 sequence): the chunked forward against FLA's naive formulation, and the
// analytic backward against fp64 central finite differences of
// loss = sum(o * do) + sum(ht * dht) + sum(hbt * dhbt).
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "seqmix/ttt.h"

namespace seqmix::tools {
namespace {

struct Case {
  int64_t B, T, H, D;
  std::vector<int64_t> cu;  // empty: dense
  TTTLinearParams params;
  HostTensor q, k, v, w, b, eta, h0, hb0, cu_seqlens, d_o, dht, dhbt;
  int64_t N() const { return cu.empty() ? B : static_cast<int64_t>(cu.size()) - 1; }
};

HostTensor random(std::vector<int64_t> sizes, std::mt19937_64& rng, double lo, double hi) {
  HostTensor t(DType::f64, std::move(sizes));
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, dist(rng));
  return t;
}

Case make_case(int64_t B, int64_t T, int64_t H, int64_t D, int64_t chunk_size, std::vector<int64_t> cu,
               uint64_t seed) {
  std::mt19937_64 rng(seed);
  Case c{B, T, H, D, cu, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  c.params.chunk_size = chunk_size;
  c.params.output_final_state = true;
  c.q = random({B, T, H, D}, rng, -1.5, 1.5);
  c.k = random({B, T, H, D}, rng, -1.5, 1.5);
  c.v = random({B, T, H, D}, rng, -1.5, 1.5);
  c.w = random({H, D}, rng, 0.6, 1.4);
  c.b = random({H, D}, rng, -0.3, 0.3);
  c.eta = random({B, T, H, 1}, rng, 0.05, 0.3);
  c.h0 = random({c.N(), H, D, D}, rng, -0.5, 0.5);
  c.hb0 = random({c.N(), H, 1, D}, rng, -0.5, 0.5);
  c.d_o = random({B, T, H, D}, rng, -1.0, 1.0);
  c.dht = random({c.N(), H, D, D}, rng, -1.0, 1.0);
  c.dhbt = random({c.N(), H, 1, D}, rng, -1.0, 1.0);
  if (!cu.empty()) {
    c.cu_seqlens = HostTensor(DType::i64, {static_cast<int64_t>(cu.size())});
    for (size_t i = 0; i < cu.size(); ++i) c.cu_seqlens.set(static_cast<int64_t>(i), static_cast<double>(cu[i]));
  }
  return c;
}

struct Outputs {
  HostTensor o, ht, hbt;
};

Outputs forward(const Case& c, bool chunked) {
  Outputs out{HostTensor(DType::f64, {c.B, c.T, c.H, c.D}), HostTensor(DType::f64, {c.N(), c.H, c.D, c.D}),
              HostTensor(DType::f64, {c.N(), c.H, 1, c.D})};
  const TensorView h0 = c.h0.view(), hb0 = c.hb0.view(), cu = c.cu_seqlens.view(), ht = out.ht.view(),
                   hbt = out.hbt.view();
  auto fn = chunked ? chunk_ttt_linear_fwd : ttt_linear_naive_fwd;
  fn(c.q.view(), c.k.view(), c.v.view(), c.w.view(), c.b.view(), c.eta.view(), &h0, &hb0,
     c.cu.empty() ? nullptr : &cu, c.params, out.o.view(), &ht, &hbt);
  return out;
}

CheckRow forward_row(const std::string& name, const Case& c) {
  CheckRow row{name};
  row.tolerance = 1e-10;  // fp64, two formulations of the same sums
  Outputs got;
  row.ms = time_ms([&] { got = forward(c, true); });
  const Outputs ref = forward(c, false);
  compare(got.o, ref.o, row);
  compare(got.ht, ref.ht, row);
  compare(got.hbt, ref.hbt, row);
  return row;
}

double loss(const Case& c) {
  const Outputs out = forward(c, true);
  double s = 0.0;
  for (int64_t i = 0; i < out.o.numel(); ++i) s += out.o.get(i) * c.d_o.get(i);
  for (int64_t i = 0; i < out.ht.numel(); ++i) s += out.ht.get(i) * c.dht.get(i);
  for (int64_t i = 0; i < out.hbt.numel(); ++i) s += out.hbt.get(i) * c.dhbt.get(i);
  return s;
}

CheckRow backward_row(const std::string& name, Case c) {
  CheckRow row{name};
  // central differences, step 1e-6, on gradients of size O(1..10): error ~1e-8
  row.tolerance = 1e-6;
  HostTensor dq(DType::f64, c.q.sizes()), dk(DType::f64, c.k.sizes()), dv(DType::f64, c.v.sizes()),
      dw(DType::f64, c.w.sizes()), db(DType::f64, c.b.sizes()), deta(DType::f64, c.eta.sizes()),
      dh0(DType::f64, c.h0.sizes()), dhb0(DType::f64, c.hb0.sizes());
  const TensorView h0 = c.h0.view(), hb0 = c.hb0.view(), cu = c.cu_seqlens.view(), dht = c.dht.view(),
                   dhbt = c.dhbt.view(), vdh0 = dh0.view(), vdhb0 = dhb0.view();
  row.ms = time_ms([&] {
    chunk_ttt_linear_bwd(c.q.view(), c.k.view(), c.v.view(), c.w.view(), c.b.view(), c.eta.view(), &h0, &hb0,
                         c.cu.empty() ? nullptr : &cu, c.d_o.view(), &dht, &dhbt, c.params, dq.view(), dk.view(),
                         dv.view(), dw.view(), db.view(), deta.view(), &vdh0, &vdhb0);
  });
  const std::pair<HostTensor*, const HostTensor*> params[] = {{&c.q, &dq},     {&c.k, &dk},   {&c.v, &dv},
                                                              {&c.w, &dw},     {&c.b, &db},   {&c.eta, &deta},
                                                              {&c.h0, &dh0},   {&c.hb0, &dhb0}};
  constexpr double kStep = 1e-6;
  constexpr int64_t kChecksPerInput = 16;
  for (const auto& [param, grad] : params) {
    const int64_t n = param->numel();
    const int64_t stride = std::max<int64_t>(1, n / kChecksPerInput);
    for (int64_t i = (stride / 2) % std::max<int64_t>(n, 1); i < n; i += stride) {
      const double saved = param->get(i);
      param->set(i, saved + kStep);
      const double plus = loss(c);
      param->set(i, saved - kStep);
      const double minus = loss(c);
      param->set(i, saved);
      const double numeric = (plus - minus) / (2.0 * kStep);
      const double diff = std::fabs(grad->get(i) - numeric);
      row.max_abs_err = std::isnan(diff) ? INFINITY : std::max(row.max_abs_err, diff);
      row.max_rel_err = std::max(row.max_rel_err, diff / std::max(std::fabs(numeric), 1e-6));
    }
  }
  return row;
}

std::vector<CheckRow> check_ttt(Device device) {
  if (device.type != DeviceType::cpu) return {};  // no CUDA kernel yet
  std::vector<CheckRow> rows;
  rows.push_back(forward_row("chunk_ttt_linear_fwd vs naive B2 T19 c4", make_case(2, 19, 2, 8, 4, {}, 1)));
  rows.push_back(
      forward_row("chunk_ttt_linear_fwd varlen vs naive c16 D16", make_case(1, 23, 2, 16, 16, {0, 1, 1, 9, 23}, 2)));
  rows.push_back(backward_row("chunk_ttt_linear_bwd vs finite diff", make_case(2, 7, 2, 8, 4, {}, 3)));
  rows.push_back(
      backward_row("chunk_ttt_linear_bwd varlen vs finite diff", make_case(1, 13, 1, 8, 4, {0, 6, 6, 7, 13}, 4)));
  return rows;
}

const CheckRegistrar registrar("ttt", check_ttt);

}  // namespace
}  // namespace seqmix::tools
