// Routers: forward against a brute-force transcription of HF's DeepseekV4TopKRouter / DeepseekV4HashRouter
// (selection by repeated arg-max), backward against fp64 central differences, golden parity with the HF
// modules (tests/golden/router, written by tests/golden/gen_hc_router.py), bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/router.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;
using testing::expect_gradient_matches;
using testing::golden_tensor;
using testing::max_abs;
using testing::randn;
using testing::weighted_sum;

double score_of(double logit, RouterScoringFunc f) {
  if (f == RouterScoringFunc::sigmoid) return 1.0 / (1.0 + std::exp(-logit));
  return std::sqrt(logit > 20.0 ? logit : std::log(1.0 + std::exp(logit)));  // torch softplus, threshold 20
}

struct RouterRef {
  std::vector<double> logits, weights;
  std::vector<int64_t> indices;
};

// Per token: logits by dot products; experts either from the table or by K rounds of arg-max over the
// biased scores (first maximum wins, so ties go to the lower index); weights from unbiased scores.
RouterRef brute_router(const HostTensor& x, const HostTensor& w, const std::vector<double>& bias,
                       const std::vector<std::vector<int64_t>>* table_rows, const RouterParams& p) {
  const int64_t E = w.size(0), C = w.size(1), T = x.numel() / C, K = p.num_experts_per_tok;
  RouterRef ref;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> scores(E);
    for (int64_t e = 0; e < E; ++e) {
      double l = 0.0;
      for (int64_t c = 0; c < C; ++c) l += x.get(t * C + c) * w.get(e * C + c);
      ref.logits.push_back(l);
      scores[e] = score_of(l, p.scoring_func);
    }
    std::vector<int64_t> chosen;
    if (table_rows != nullptr) {
      chosen = (*table_rows)[static_cast<size_t>(t)];
    } else {
      std::vector<bool> taken(E, false);
      for (int64_t k = 0; k < K; ++k) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e) {
          if (!taken[e] && (best < 0 || scores[e] + bias[e] > scores[best] + bias[best])) best = e;
        }
        taken[best] = true;
        chosen.push_back(best);
      }
    }
    double sum = 0.0;
    for (int64_t e : chosen) sum += scores[e];
    for (int64_t e : chosen) {
      ref.weights.push_back(scores[e] / (sum + 1e-20) * p.routed_scaling_factor);
      ref.indices.push_back(e);
    }
  }
  return ref;
}

void expect_close(const HostTensor& got, const HostTensor& want, double rel_tol, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  EXPECT_LE(testing::max_abs_diff(got, want), rel_tol * std::max(1.0, max_abs(want))) << what;
}

double storage_tol(DType dtype) { return dtype == DType::f64 ? 1e-12 : (dtype == DType::f32 ? 2e-6 : 2e-2); }

std::vector<int64_t> to_int(const HostTensor& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = static_cast<int64_t>(t.get(i));
  return v;
}

TensorView on_cuda(const HostTensor& t) {
  TensorView v = t.view();
  v.device = Device::cuda(0);
  return v;
}

// --------------------------------------------------------------------------- top-k router

struct TopKCase {
  std::vector<int64_t> lead;  // [T] or [B, S]
  int64_t hidden, experts, top_k;
  RouterScoringFunc scoring;
  double x_std;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const TopKCase& c) {
  os << "T";
  for (int64_t d : c.lead) os << "_" << d;
  return os << "_hidden" << c.hidden << "_E" << c.experts << "_k" << c.top_k << "_"
            << (c.scoring == RouterScoringFunc::sigmoid ? "sigmoid" : "sqrtsoftplus") << "_" << dtype_name(c.dtype);
}

class RouterTopKSweep : public ::testing::TestWithParam<TopKCase> {};
class RouterTopKGradSweep : public ::testing::TestWithParam<TopKCase> {};

TEST_P(RouterTopKSweep, ForwardMatchesBruteForce) {
  const TopKCase s = GetParam();
  std::vector<int64_t> xs = s.lead;
  xs.push_back(s.hidden);
  const uint64_t seed = 500 + s.experts * 3 + s.top_k;
  const HostTensor x = randn(xs, seed, s.x_std, s.dtype);
  const HostTensor w = randn({s.experts, s.hidden}, seed + 1, 1.0 / std::sqrt(static_cast<double>(s.hidden)), s.dtype);
  const HostTensor bias = randn({s.experts}, seed + 2, 0.3, DType::f32);
  RouterParams p;
  p.scoring_func = s.scoring;
  p.num_experts_per_tok = s.top_k;
  p.routed_scaling_factor = 2.5;
  const int64_t T = x.numel() / s.hidden;
  HostTensor logits(s.dtype, {T, s.experts}), weights(s.dtype, {T, s.top_k}), indices(DType::i32, {T, s.top_k});
  const TensorView vb = bias.view(), vl = logits.view();
  router_topk_fwd(x.view(), w.view(), &vb, &vl, weights.view(), indices.view(), p);
  const RouterRef ref = brute_router(x, w, bias.to_f64(), nullptr, p);
  EXPECT_EQ(to_int(indices), ref.indices);
  expect_close(logits, HostTensor::from_f64(ref.logits, {T, s.experts}, DType::f64), storage_tol(s.dtype), "logits");
  expect_close(weights, HostTensor::from_f64(ref.weights, {T, s.top_k}, DType::f64), storage_tol(s.dtype), "weights");
}

TEST_P(RouterTopKGradSweep, BackwardMatchesFiniteDifferences) {
  const TopKCase s = GetParam();
  std::vector<int64_t> xs = s.lead;
  xs.push_back(s.hidden);
  const uint64_t seed = 600 + s.experts * 3 + s.top_k;
  HostTensor x = randn(xs, seed, s.x_std);
  HostTensor w = randn({s.experts, s.hidden}, seed + 1, 1.0 / std::sqrt(static_cast<double>(s.hidden)));
  const HostTensor bias = randn({s.experts}, seed + 2, 0.3);
  RouterParams p;
  p.scoring_func = s.scoring;
  p.num_experts_per_tok = s.top_k;
  const int64_t T = x.numel() / s.hidden;
  const HostTensor gw = randn({T, s.top_k}, seed + 3), gl = randn({T, s.experts}, seed + 4, 0.1);
  const TensorView vb = bias.view();
  HostTensor indices(DType::i64, {T, s.top_k});
  auto loss = [&] {
    HostTensor logits(DType::f64, {T, s.experts}), weights(DType::f64, {T, s.top_k});
    const TensorView vl = logits.view();
    router_topk_fwd(x.view(), w.view(), &vb, &vl, weights.view(), indices.view(), p);
    return weighted_sum(weights, gw) + weighted_sum(logits, gl);
  };
  loss();  // indices of the unperturbed inputs
  HostTensor gx(DType::f64, x.sizes()), gwt(DType::f64, w.sizes());
  const TensorView vgl = gl.view(), vgx = gx.view(), vgw = gwt.view();
  router_bwd(x.view(), w.view(), indices.view(), gw.view(), &vgl, &vgx, &vgw, p);
  expect_gradient_matches(x, gx, loss, "grad_hidden_states");
  expect_gradient_matches(w, gwt, loss, "grad_weight");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RouterTopKSweep,
    ::testing::Values(TopKCase{{2, 3}, 6, 8, 3, RouterScoringFunc::sqrtsoftplus, 1.0, DType::f64},
                      TopKCase{{7}, 5, 7, 2, RouterScoringFunc::sigmoid, 1.0, DType::f64},
                      TopKCase{{1}, 4, 5, 5, RouterScoringFunc::sqrtsoftplus, 1.0, DType::f64},
                      TopKCase{{3}, 4, 6, 1, RouterScoringFunc::sqrtsoftplus, 15.0, DType::f64},  // logits > 20
                      TopKCase{{2, 5}, 8, 16, 6, RouterScoringFunc::sqrtsoftplus, 1.0, DType::bf16},
                      TopKCase{{4}, 6, 9, 4, RouterScoringFunc::sigmoid, 1.0, DType::f32},
                      TopKCase{{0}, 4, 6, 2, RouterScoringFunc::sqrtsoftplus, 1.0, DType::f64}));
INSTANTIATE_TEST_SUITE_P(
    Shapes, RouterTopKGradSweep,
    ::testing::Values(TopKCase{{2, 3}, 6, 8, 3, RouterScoringFunc::sqrtsoftplus, 1.0, DType::f64},
                      TopKCase{{7}, 5, 7, 2, RouterScoringFunc::sigmoid, 1.0, DType::f64},
                      TopKCase{{1}, 4, 5, 5, RouterScoringFunc::sqrtsoftplus, 1.0, DType::f64},
                      TopKCase{{3}, 4, 6, 1, RouterScoringFunc::sqrtsoftplus, 15.0, DType::f64}));  // logits > 20

// The correction bias steers the choice only: a large bias on expert 0 always selects it, and its weight
// still comes from its unbiased score.
TEST(RouterTopK, BiasSelectsButDoesNotWeight) {
  const HostTensor x = randn({5, 4}, 71), w = randn({6, 4}, 72, 0.5);
  HostTensor bias = HostTensor::zeros(DType::f64, {6});
  bias.set(0, 100.0);
  RouterParams p;
  p.num_experts_per_tok = 2;
  p.routed_scaling_factor = 1.0;
  HostTensor logits(DType::f64, {5, 6}), weights(DType::f64, {5, 2}), indices(DType::i64, {5, 2});
  const TensorView vb = bias.view(), vl = logits.view();
  router_topk_fwd(x.view(), w.view(), &vb, &vl, weights.view(), indices.view(), p);
  for (int64_t t = 0; t < 5; ++t) {
    EXPECT_EQ(indices.get(t * 2), 0);
    const double s0 = score_of(logits.get(t * 6), p.scoring_func);
    const double s1 = score_of(logits.get(t * 6 + static_cast<int64_t>(indices.get(t * 2 + 1))), p.scoring_func);
    EXPECT_NEAR(weights.get(t * 2), s0 / (s0 + s1), 1e-14);
    EXPECT_NEAR(weights.get(t * 2) + weights.get(t * 2 + 1), 1.0, 1e-14);
  }
}

// Equal scores: slots are filled in ascending expert order (documented tie rule); no bias = zeros.
TEST(RouterTopK, TiesGoToLowerExpertIndex) {
  const HostTensor x = randn({3, 4}, 81), w = HostTensor::zeros(DType::f64, {7, 4});
  RouterParams p;
  p.num_experts_per_tok = 3;
  HostTensor weights(DType::f64, {3, 3}), indices(DType::i64, {3, 3});
  router_topk_fwd(x.view(), w.view(), nullptr, nullptr, weights.view(), indices.view(), p);
  EXPECT_EQ(to_int(indices), (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 0, 1, 2}));
  for (int64_t i = 0; i < 9; ++i) EXPECT_NEAR(weights.get(i), 1.5 / 3.0, 1e-15);
}

// torch's softplus returns x itself above its threshold 20 (beta 1): at logit 20.5, sqrt(20.5) exactly,
// not sqrt(log1p(exp(20.5))) = sqrt(20.5 + 1.25e-9).
TEST(RouterTopK, SoftplusIsIdentityAboveThreshold) {
  const HostTensor x = HostTensor::from_f64({20.5}, {1, 1}, DType::f64);
  const HostTensor w = HostTensor::from_f64({1.0, 0.0}, {2, 1}, DType::f64);
  RouterParams p;
  p.num_experts_per_tok = 2;
  p.routed_scaling_factor = 1.0;
  HostTensor weights(DType::f64, {1, 2}), indices(DType::i64, {1, 2});
  router_topk_fwd(x.view(), w.view(), nullptr, nullptr, weights.view(), indices.view(), p);
  const double s0 = std::sqrt(20.5), s1 = std::sqrt(std::log1p(1.0));
  EXPECT_EQ(to_int(indices), (std::vector<int64_t>{0, 1}));
  EXPECT_DOUBLE_EQ(weights.get(0), s0 / (s0 + s1 + 1e-20));
  EXPECT_DOUBLE_EQ(weights.get(1), s1 / (s0 + s1 + 1e-20));
}

// --------------------------------------------------------------------------- hash router

struct HashProblem {
  HostTensor x, w, ids, table;
  std::vector<std::vector<int64_t>> rows;  // tid2eid[input_ids[t]]
  HashProblem(std::vector<int64_t> lead, int64_t hidden, int64_t experts, int64_t top_k, int64_t vocab, DType dtype,
              uint64_t seed)
      : w(randn({experts, hidden}, seed + 1, 1.0 / std::sqrt(static_cast<double>(hidden)), dtype)) {
    std::vector<int64_t> xs = lead;
    xs.push_back(hidden);
    x = randn(xs, seed, 1.0, dtype);
    const int64_t T = x.numel() / hidden;
    std::vector<int64_t> id_values, table_values;
    for (int64_t t = 0; t < T; ++t) id_values.push_back((t * 7 + static_cast<int64_t>(seed)) % vocab);
    for (int64_t v = 0; v < vocab; ++v) {
      for (int64_t k = 0; k < top_k; ++k) table_values.push_back((v * 5 + k * 3) % experts);  // may repeat
    }
    ids = testing::int_tensor(id_values, lead, DType::i32);
    table = testing::int_tensor(table_values, {vocab, top_k});
    for (int64_t t = 0; t < T; ++t) {
      rows.emplace_back(table_values.begin() + id_values[t] * top_k, table_values.begin() + (id_values[t] + 1) * top_k);
    }
  }
};

struct HashCase {
  std::vector<int64_t> lead;
  int64_t hidden, experts, top_k, vocab;
  RouterScoringFunc scoring;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const HashCase& c) {
  os << "T";
  for (int64_t d : c.lead) os << "_" << d;
  return os << "_hidden" << c.hidden << "_E" << c.experts << "_k" << c.top_k << "_vocab" << c.vocab << "_"
            << dtype_name(c.dtype);
}

class RouterHashSweep : public ::testing::TestWithParam<HashCase> {};

TEST_P(RouterHashSweep, ForwardMatchesBruteForceAndBackwardMatchesFiniteDifferences) {
  const HashCase s = GetParam();
  HashProblem pr(s.lead, s.hidden, s.experts, s.top_k, s.vocab, s.dtype, 700 + s.vocab);
  RouterParams p;
  p.scoring_func = s.scoring;
  p.num_experts_per_tok = s.top_k;
  const int64_t T = pr.x.numel() / s.hidden;
  HostTensor logits(s.dtype, {T, s.experts}), weights(s.dtype, {T, s.top_k}), indices(DType::i64, {T, s.top_k});
  const TensorView vl = logits.view();
  router_hash_fwd(pr.x.view(), pr.w.view(), pr.ids.view(), pr.table.view(), &vl, weights.view(), indices.view(), p);
  const RouterRef ref = brute_router(pr.x, pr.w, {}, &pr.rows, p);
  EXPECT_EQ(to_int(indices), ref.indices);
  expect_close(logits, HostTensor::from_f64(ref.logits, {T, s.experts}, DType::f64), storage_tol(s.dtype), "logits");
  expect_close(weights, HostTensor::from_f64(ref.weights, {T, s.top_k}, DType::f64), storage_tol(s.dtype), "weights");
  if (s.dtype != DType::f64) return;

  const HostTensor gw = randn({T, s.top_k}, 9);
  auto loss = [&] {
    HostTensor wts(DType::f64, {T, s.top_k}), idx(DType::i64, {T, s.top_k});
    router_hash_fwd(pr.x.view(), pr.w.view(), pr.ids.view(), pr.table.view(), nullptr, wts.view(), idx.view(), p);
    return weighted_sum(wts, gw);
  };
  HostTensor gx(DType::f64, pr.x.sizes()), gwt(DType::f64, pr.w.sizes());
  const TensorView vgx = gx.view(), vgw = gwt.view();
  router_bwd(pr.x.view(), pr.w.view(), indices.view(), gw.view(), nullptr, &vgx, &vgw, p);
  expect_gradient_matches(pr.x, gx, loss, "grad_hidden_states");
  expect_gradient_matches(pr.w, gwt, loss, "grad_weight");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RouterHashSweep,
                         ::testing::Values(HashCase{{2, 3}, 6, 8, 3, 11, RouterScoringFunc::sqrtsoftplus, DType::f64},
                                           HashCase{{5}, 4, 4, 3, 5, RouterScoringFunc::sqrtsoftplus, DType::f64},
                                           HashCase{{4}, 5, 6, 2, 9, RouterScoringFunc::sigmoid, DType::f64},
                                           HashCase{{1}, 3, 3, 1, 2, RouterScoringFunc::sqrtsoftplus, DType::f64},
                                           HashCase{{2, 4}, 8, 16, 6, 13, RouterScoringFunc::sqrtsoftplus, DType::bf16}));

// Unlike top-k, hash routing may pick more slots than there are experts (a row repeats experts), as HF's
// gather allows; the repeated expert's score counts once per slot in the normalisation.
TEST(RouterHash, MoreSlotsThanExperts) {
  const HostTensor x = randn({2, 3}, 95), w = randn({2, 3}, 96);
  const HostTensor table = testing::int_tensor({0, 1, 0, 1, 1, 1}, {2, 3}), ids = testing::int_tensor({1, 0});
  RouterParams p;
  p.num_experts_per_tok = 3;
  p.routed_scaling_factor = 1.0;
  HostTensor logits(DType::f64, {2, 2}), weights(DType::f64, {2, 3}), indices(DType::i64, {2, 3});
  const TensorView vl = logits.view();
  router_hash_fwd(x.view(), w.view(), ids.view(), table.view(), &vl, weights.view(), indices.view(), p);
  EXPECT_EQ(to_int(indices), (std::vector<int64_t>{1, 1, 1, 0, 1, 0}));
  for (int64_t k = 0; k < 3; ++k) EXPECT_NEAR(weights.get(k), 1.0 / 3.0, 1e-15);
  const double s0 = score_of(logits.get(2), p.scoring_func), s1 = score_of(logits.get(3), p.scoring_func);
  EXPECT_NEAR(weights.get(3), s0 / (2 * s0 + s1), 1e-15);
  EXPECT_NEAR(weights.get(4), s1 / (2 * s0 + s1), 1e-15);
}

// The backward needs only the chosen indices, so one router_bwd serves both routers; grad outputs are
// optional and the ones given do not depend on which others are.
TEST(RouterBwd, OptionalOutputsAreIndependent) {
  HashProblem pr({4}, 5, 6, 2, 9, DType::f64, 91);
  RouterParams p;
  p.num_experts_per_tok = 2;
  const HostTensor idx = testing::int_tensor({0, 1, 2, 3, 4, 5, 1, 1}, {4, 2});
  const HostTensor gw = randn({4, 2}, 92);
  HostTensor gx1(DType::f64, {4, 5}), gx2(DType::f64, {4, 5}), gwt(DType::f64, {6, 5});
  const TensorView v1 = gx1.view(), v2 = gx2.view(), vw = gwt.view();
  router_bwd(pr.x.view(), pr.w.view(), idx.view(), gw.view(), nullptr, &v1, &vw, p);
  router_bwd(pr.x.view(), pr.w.view(), idx.view(), gw.view(), nullptr, &v2, nullptr, p);
  EXPECT_EQ(testing::max_abs_diff(gx1, gx2), 0.0);
  EXPECT_GT(max_abs(gx1), 0.0);
}

// --------------------------------------------------------------------------- golden (HF transformers)

constexpr double kGoldenTol = 1e-10;  // relative to max(1, max |reference|)

// (expert, weight) pairs of each token sorted by expert: HF's torch.topk(sorted=False) slot order is
// unspecified, the MoE output depends only on the pairs.
std::vector<std::pair<int64_t, double>> sorted_pairs(const HostTensor& indices, const HostTensor& weights, int64_t t,
                                                      int64_t K) {
  std::vector<std::pair<int64_t, double>> pairs;
  for (int64_t k = 0; k < K; ++k) pairs.emplace_back(static_cast<int64_t>(indices.get(t * K + k)), weights.get(t * K + k));
  std::sort(pairs.begin(), pairs.end());
  return pairs;
}

void golden_router(const testing::GoldenCase& c, const std::string& file, bool hash) {
  const HostTensor &x = golden_tensor(c, "hidden_states"), &w = golden_tensor(c, "weight");
  const HostTensor &ref_logits = golden_tensor(c, "logits"), &ref_weights = golden_tensor(c, "weights"),
                   &ref_indices = golden_tensor(c, "indices");
  RouterParams p;
  p.num_experts_per_tok = static_cast<int64_t>(golden_tensor(c, "num_experts_per_tok").get(0));
  p.routed_scaling_factor = golden_tensor(c, "routed_scaling_factor").get(0);
  p.scoring_func = static_cast<RouterScoringFunc>(static_cast<int>(golden_tensor(c, "scoring_func").get(0)));
  const int64_t T = ref_logits.size(0), E = ref_logits.size(1), K = p.num_experts_per_tok;
  HostTensor logits(DType::f64, {T, E}), weights(DType::f64, {T, K}), indices(DType::i64, {T, K});
  const TensorView vl = logits.view();
  if (hash) {
    router_hash_fwd(x.view(), w.view(), golden_tensor(c, "input_ids").view(), golden_tensor(c, "tid2eid").view(), &vl,
                    weights.view(), indices.view(), p);
    EXPECT_EQ(to_int(indices), to_int(ref_indices)) << file << ": the table fixes the slot order";
  } else {
    const TensorView vb = golden_tensor(c, "e_score_correction_bias").view();
    router_topk_fwd(x.view(), w.view(), &vb, &vl, weights.view(), indices.view(), p);
  }
  expect_close(logits, ref_logits, kGoldenTol, file + " logits");
  for (int64_t t = 0; t < T; ++t) {
    const auto got = sorted_pairs(indices, weights, t, K), want = sorted_pairs(ref_indices, ref_weights, t, K);
    for (int64_t k = 0; k < K; ++k) {
      EXPECT_EQ(got[k].first, want[k].first) << file << " token " << t;
      EXPECT_NEAR(got[k].second, want[k].second, kGoldenTol) << file << " token " << t;
    }
  }
  // backward with HF's own indices / slot order
  HostTensor gx(DType::f64, x.sizes()), gwt(DType::f64, w.sizes());
  const TensorView vgx = gx.view(), vgw = gwt.view();
  const auto it = c.find("grad_logits");
  const TensorView vgl = it != c.end() ? it->second.view() : TensorView{};
  router_bwd(x.view(), w.view(), ref_indices.view(), golden_tensor(c, "grad_weights").view(),
             it != c.end() ? &vgl : nullptr, &vgx, &vgw, p);
  expect_close(gx, golden_tensor(c, "grad_hidden_states"), kGoldenTol, file + " grad_hidden_states");
  expect_close(gwt, golden_tensor(c, "grad_weight"), kGoldenTol, file + " grad_weight");
}

TEST(RouterGolden, MatchesHuggingFaceDeepseekV4) {
  const std::vector<std::string> files = testing::list_golden("router");
  ASSERT_FALSE(files.empty()) << "no golden files under tests/golden/router: run tests/golden/gen_hc_router.py";
  int topk = 0, hash = 0;
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const testing::GoldenCase c = testing::load_golden(file);
    const std::string name = file.substr(file.find('/') + 1);
    if (name.rfind("topk_", 0) == 0) {
      golden_router(c, file, false);
      ++topk;
    } else if (name.rfind("hash_", 0) == 0) {
      golden_router(c, file, true);
      ++hash;
    } else {
      ADD_FAILURE() << "unknown golden case " << file;
    }
  }
  EXPECT_GT(topk, 0);
  EXPECT_GT(hash, 0);
}

// --------------------------------------------------------------------------- bad inputs

TEST(RouterBadInputs, TopKFwd) {
  HostTensor x(DType::f32, {4, 6}), w(DType::f32, {8, 6}), bias(DType::f32, {8}), weights(DType::f32, {4, 3}),
      indices(DType::i64, {4, 3});
  RouterParams p;
  p.num_experts_per_tok = 3;
  auto call = [&](const TensorView& xv, const TensorView& wv, const TensorView* b, const TensorView& wts,
                  const TensorView& idx, const RouterParams& params) {
    router_topk_fwd(xv, wv, b, nullptr, wts, idx, params);
  };
  RouterParams too_many = p;
  too_many.num_experts_per_tok = 9;
  expect_error([&] { call(x.view(), w.view(), nullptr, weights.view(), indices.view(), too_many); },
               {"num_experts_per_tok", "n_routed_experts", "8", "9"});
  RouterParams zero = p;
  zero.num_experts_per_tok = 0;
  expect_error([&] { call(x.view(), w.view(), nullptr, weights.view(), indices.view(), zero); },
               {"num_experts_per_tok", "> 0"});
  HostTensor x4(DType::f32, {1, 2, 2, 6});
  expect_error([&] { call(x4.view(), w.view(), nullptr, weights.view(), indices.view(), p); },
               {"hidden_states", "rank 2", "[1, 2, 2, 6]"});
  HostTensor w_bad(DType::f32, {8, 5});
  expect_error([&] { call(x.view(), w_bad.view(), nullptr, weights.view(), indices.view(), p); },
               {"weight", "[*, 6]", "[8, 5]"});
  HostTensor bias_bad(DType::f32, {7});
  const TensorView vbb = bias_bad.view();
  expect_error([&] { call(x.view(), w.view(), &vbb, weights.view(), indices.view(), p); },
               {"e_score_correction_bias", "[8]", "[7]"});
  HostTensor idx_f(DType::f32, {4, 3});
  expect_error([&] { call(x.view(), w.view(), nullptr, weights.view(), idx_f.view(), p); },
               {"indices", "int32/int64", "float32"});
  HostTensor weights_bad(DType::f32, {4, 2});
  expect_error([&] { call(x.view(), w.view(), nullptr, weights_bad.view(), indices.view(), p); },
               {"weights", "[4, 3]", "[4, 2]"});
  const TensorView vbc = on_cuda(bias);
  expect_error([&] { call(x.view(), w.view(), &vbc, weights.view(), indices.view(), p); },
               {"e_score_correction_bias", "cuda:0", "cpu"});
  RouterParams bad_rsf = p;
  bad_rsf.routed_scaling_factor = INFINITY;
  expect_error([&] { call(x.view(), w.view(), nullptr, weights.view(), indices.view(), bad_rsf); },
               {"routed_scaling_factor"});
  RouterParams bad_fn = p;
  bad_fn.scoring_func = static_cast<RouterScoringFunc>(7);
  expect_error([&] { call(x.view(), w.view(), nullptr, weights.view(), indices.view(), bad_fn); }, {"scoring_func"});
  expect_error([&] { call(on_cuda(x), on_cuda(w), nullptr, on_cuda(weights), on_cuda(indices), p); },
               {"router_topk_fwd"});
}

TEST(RouterBadInputs, HashFwd) {
  HostTensor x(DType::f32, {2, 3, 6}), w(DType::f32, {8, 6}), weights(DType::f32, {6, 3}), indices(DType::i64, {6, 3});
  const HostTensor table = testing::int_tensor(std::vector<int64_t>(5 * 3, 1), {5, 3});
  RouterParams p;
  p.num_experts_per_tok = 3;
  auto call = [&](const TensorView& ids, const TensorView& tbl, const RouterParams& params) {
    router_hash_fwd(x.view(), w.view(), ids, tbl, nullptr, weights.view(), indices.view(), params);
  };
  const HostTensor ids_ok = testing::int_tensor({0, 1, 2, 3, 4, 0}, {2, 3});
  const HostTensor ids_big = testing::int_tensor({0, 1, 2, 5, 4, 0}, {2, 3});
  expect_error([&] { call(ids_big.view(), table.view(), p); }, {"input_ids", "vocab_size = 5", "input_ids[3] = 5"});
  const HostTensor ids_neg = testing::int_tensor({0, -1, 2, 3, 4, 0}, {2, 3});
  expect_error([&] { call(ids_neg.view(), table.view(), p); }, {"input_ids", "input_ids[1] = -1"});
  const HostTensor ids_flat = testing::int_tensor({0, 1, 2, 3, 4, 0});
  expect_error([&] { call(ids_flat.view(), table.view(), p); }, {"input_ids", "rank 2", "[6]"});
  std::vector<int64_t> bad_values(15, 1);
  bad_values[2 * 3 + 1] = 8;
  const HostTensor table_bad = testing::int_tensor(bad_values, {5, 3});
  expect_error([&] { call(ids_ok.view(), table_bad.view(), p); },
               {"tid2eid", "n_routed_experts = 8", "tid2eid[2, 1] = 8"});
  const HostTensor table_wide = testing::int_tensor(std::vector<int64_t>(5 * 4, 1), {5, 4});
  expect_error([&] { call(ids_ok.view(), table_wide.view(), p); }, {"tid2eid", "num_experts_per_tok = 3", "[5, 4]"});
  HostTensor ids_f(DType::f32, {2, 3});
  expect_error([&] { call(ids_f.view(), table.view(), p); }, {"input_ids", "int32/int64", "float32"});
  expect_error([&] { call(on_cuda(ids_ok), table.view(), p); }, {"input_ids", "cuda:0"});
  RouterParams wider = p;
  wider.num_experts_per_tok = 4;
  expect_error([&] { call(ids_ok.view(), table.view(), wider); }, {"tid2eid", "num_experts_per_tok = 4", "[5, 3]"});
}

TEST(RouterBadInputs, Bwd) {
  HostTensor x(DType::f64, {4, 6}), w(DType::f64, {8, 6}), gw(DType::f64, {4, 2}), gx(DType::f64, {4, 6});
  RouterParams p;
  p.num_experts_per_tok = 2;
  const TensorView vgx = gx.view();
  const HostTensor idx_bad = testing::int_tensor({0, 1, 2, 3, 4, 8, 6, 7}, {4, 2});
  expect_error([&] { router_bwd(x.view(), w.view(), idx_bad.view(), gw.view(), nullptr, &vgx, nullptr, p); },
               {"indices", "n_routed_experts = 8", "indices[2, 1] = 8"});
  const HostTensor idx_wide = testing::int_tensor(std::vector<int64_t>(12, 0), {4, 3});
  expect_error([&] { router_bwd(x.view(), w.view(), idx_wide.view(), gw.view(), nullptr, &vgx, nullptr, p); },
               {"indices", "[4, 2]", "[4, 3]"});
  const HostTensor idx = testing::int_tensor(std::vector<int64_t>(8, 0), {4, 2});
  HostTensor gl_bad(DType::f64, {4, 7});
  const TensorView vgl = gl_bad.view();
  expect_error([&] { router_bwd(x.view(), w.view(), idx.view(), gw.view(), &vgl, &vgx, nullptr, p); },
               {"grad_logits", "[4, 8]", "[4, 7]"});
  HostTensor gwt_f32(DType::f32, {8, 6});
  const TensorView vgw = gwt_f32.view();
  expect_error([&] { router_bwd(x.view(), w.view(), idx.view(), gw.view(), nullptr, nullptr, &vgw, p); },
               {"grad_weight", "float64", "float32"});
  expect_error([&] { router_bwd(x.view(), w.view(), idx.view(), on_cuda(gw), nullptr, &vgx, nullptr, p); },
               {"grad_weights", "cuda:0"});
  expect_error([&] { router_bwd(on_cuda(x), on_cuda(w), on_cuda(idx), on_cuda(gw), nullptr, nullptr, nullptr, p); },
               {"router_bwd"});
}

}  // namespace
}  // namespace seqmix
