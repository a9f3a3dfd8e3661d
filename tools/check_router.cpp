// `seqmix check` rows for the routers: top-k and hash forwards against a brute-force transcription of
// HF's routers (selection by repeated arg-max; a wrong expert counts as an infinite error), router_bwd
// against fp64 central differences. No CUDA kernel exists yet, so a CUDA device gets no rows.
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "check.h"
#include "seqmix/router.h"

namespace seqmix::tools {
namespace {

constexpr int64_t kT = 7, kHidden = 6, kExperts = 9, kTopK = 3, kVocab = 11;

HostTensor random_tensor(std::vector<int64_t> sizes, uint64_t seed, double scale) {
  HostTensor t(DType::f64, std::move(sizes));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, dist(rng));
  return t;
}

double sqrt_softplus(double x) { return std::sqrt(x > 20.0 ? x : std::log1p(std::exp(x))); }

// Brute-force sqrtsoftplus weights of the given per-token expert lists.
HostTensor reference_weights(const HostTensor& x, const HostTensor& w, const std::vector<int64_t>& experts,
                             const RouterParams& p) {
  HostTensor out(DType::f64, {kT, kTopK});
  for (int64_t t = 0; t < kT; ++t) {
    double s[kTopK], sum = 0.0;
    for (int64_t k = 0; k < kTopK; ++k) {
      double l = 0.0;
      for (int64_t c = 0; c < kHidden; ++c) l += x.get(t * kHidden + c) * w.get(experts[t * kTopK + k] * kHidden + c);
      sum += s[k] = sqrt_softplus(l);
    }
    for (int64_t k = 0; k < kTopK; ++k) out.set(t * kTopK + k, s[k] / (sum + 1e-20) * p.routed_scaling_factor);
  }
  return out;
}

std::vector<CheckRow> check_router(Device device) {
  if (device.type != DeviceType::cpu) return {};
  std::vector<CheckRow> rows;
  RouterParams p;
  p.num_experts_per_tok = kTopK;
  HostTensor x = random_tensor({kT, kHidden}, 1, 1.0), w = random_tensor({kExperts, kHidden}, 2, 0.4);
  const HostTensor bias = random_tensor({kExperts}, 3, 0.3);
  HostTensor weights(DType::f64, {kT, kTopK}), indices(DType::i64, {kT, kTopK});
  const TensorView vb = bias.view();

  {
    CheckRow row{"router_topk_fwd vs brute force"};
    row.tolerance = 1e-12;
    row.ms = time_ms([&] { router_topk_fwd(x.view(), w.view(), &vb, nullptr, weights.view(), indices.view(), p); });
    std::vector<int64_t> chosen;
    for (int64_t t = 0; t < kT; ++t) {
      std::vector<bool> taken(kExperts, false);
      for (int64_t k = 0; k < kTopK; ++k) {
        int64_t best = -1;
        double best_value = -INFINITY;
        for (int64_t e = 0; e < kExperts; ++e) {
          double l = 0.0;
          for (int64_t c = 0; c < kHidden; ++c) l += x.get(t * kHidden + c) * w.get(e * kHidden + c);
          const double v = sqrt_softplus(l) + bias.get(e);
          if (!taken[e] && v > best_value) best = e, best_value = v;
        }
        taken[best] = true;
        chosen.push_back(best);
        if (indices.get(t * kTopK + k) != best) row.max_abs_err = INFINITY;
      }
    }
    compare(weights, reference_weights(x, w, chosen, p), row);
    rows.push_back(row);
  }
  std::vector<int64_t> table_values, id_values;
  for (int64_t v = 0; v < kVocab; ++v)
    for (int64_t k = 0; k < kTopK; ++k) table_values.push_back((v * 4 + k * 5) % kExperts);
  for (int64_t t = 0; t < kT; ++t) id_values.push_back((t * 3 + 2) % kVocab);
  HostTensor table(DType::i64, {kVocab, kTopK}), ids(DType::i32, {kT});
  for (int64_t i = 0; i < table.numel(); ++i) table.set(i, static_cast<double>(table_values[i]));
  for (int64_t i = 0; i < ids.numel(); ++i) ids.set(i, static_cast<double>(id_values[i]));
  {
    CheckRow row{"router_hash_fwd vs brute force"};
    row.tolerance = 1e-12;
    row.ms = time_ms([&] {
      router_hash_fwd(x.view(), w.view(), ids.view(), table.view(), nullptr, weights.view(), indices.view(), p);
    });
    std::vector<int64_t> chosen;
    for (int64_t t = 0; t < kT; ++t) {
      for (int64_t k = 0; k < kTopK; ++k) {
        chosen.push_back(table_values[id_values[t] * kTopK + k]);
        if (indices.get(t * kTopK + k) != chosen.back()) row.max_abs_err = INFINITY;
      }
    }
    compare(weights, reference_weights(x, w, chosen, p), row);
    rows.push_back(row);
  }
  for (const RouterScoringFunc scoring : {RouterScoringFunc::sqrtsoftplus, RouterScoringFunc::sigmoid}) {
    RouterParams q = p;
    q.scoring_func = scoring;
    router_topk_fwd(x.view(), w.view(), &vb, nullptr, weights.view(), indices.view(), q);
    const HostTensor gw = random_tensor({kT, kTopK}, 4, 1.0), gl = random_tensor({kT, kExperts}, 5, 0.1);
    HostTensor logits(DType::f64, {kT, kExperts}), wts(DType::f64, {kT, kTopK});
    const TensorView vl = logits.view();
    // the random scores have no near-ties: the perturbations of the finite differences keep the choice
    auto loss = [&] {
      HostTensor idx(DType::i64, {kT, kTopK});
      router_topk_fwd(x.view(), w.view(), &vb, &vl, wts.view(), idx.view(), q);
      double s = 0.0;
      for (int64_t i = 0; i < wts.numel(); ++i) s += wts.get(i) * gw.get(i);
      for (int64_t i = 0; i < logits.numel(); ++i) s += logits.get(i) * gl.get(i);
      return s;
    };
    HostTensor gx(DType::f64, x.sizes()), gwt(DType::f64, w.sizes());
    const TensorView vgl = gl.view(), vgx = gx.view(), vgw = gwt.view();
    CheckRow row{scoring == RouterScoringFunc::sigmoid ? "router_bwd sigmoid vs finite differences"
                                                       : "router_bwd sqrtsoftplus vs finite diff"};
    row.tolerance = 1e-6;
    row.ms = time_ms([&] { router_bwd(x.view(), w.view(), indices.view(), gw.view(), &vgl, &vgx, &vgw, q); });
    compare(gx, numeric_gradient(x, loss), row);
    compare(gwt, numeric_gradient(w, loss), row);
    rows.push_back(row);
  }
  return rows;
}

const CheckRegistrar registrar("router", check_router);

}  // namespace
}  // namespace seqmix::tools
