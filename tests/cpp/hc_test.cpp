// Hyper-Connection ops: forward against a brute-force transcription of HF's DeepseekV4HyperConnection /
// decoder-layer update / DeepseekV4HyperHead, backward against fp64 central differences, golden
// parity with the HF modules (tests/golden/hc, written by tests/golden/gen_hc_router.py), bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "seqmix/hc.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;
using testing::expect_gradient_matches;
using testing::golden_tensor;
using testing::max_abs;
using testing::randn;
using testing::weighted_sum;
using Matrix = std::vector<std::vector<double>>;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Tolerance of a value stored in `dtype` relative to the output's scale.
double storage_tol(DType dtype) {
  switch (dtype) {
    case DType::f64: return 1e-12;
    case DType::f32: return 2e-6;
    default: return 2e-2;
  }
}

void expect_close(const HostTensor& got, const HostTensor& want, double rel_tol, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  const double tol = rel_tol * std::max(1.0, max_abs(want));
  EXPECT_LE(testing::max_abs_diff(got, want), tol) << what;
}

// --------------------------------------------------------------------------- brute force (HF transcribed)

struct PreRef {
  std::vector<double> post, comb, collapsed;
};

// Token (b, s): HF's forward written with plain matrices, one normalisation pass at a time.
PreRef brute_hc_pre(const HostTensor& x, const HostTensor& fn, const HostTensor& base, const HostTensor& scale,
                    const HcPreParams& p) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2), D = x.size(3), n = H * D;
  PreRef ref;
  for (int64_t t = 0; t < B * S; ++t) {
    double mean_sq = 0.0;
    for (int64_t c = 0; c < n; ++c) mean_sq += x.get(t * n + c) * x.get(t * n + c) / static_cast<double>(n);
    const double inv_rms = 1.0 / std::sqrt(mean_sq + p.rms_norm_eps);
    auto mix = [&](int64_t row) {
      double acc = 0.0;
      for (int64_t c = 0; c < n; ++c) acc += fn.get(row * n + c) * x.get(t * n + c) * inv_rms;
      return acc;
    };
    std::vector<double> pre(H);
    for (int64_t h = 0; h < H; ++h) {
      pre[h] = sigmoid(mix(h) * scale.get(0) + base.get(h)) + p.hc_eps;
      ref.post.push_back(2.0 * sigmoid(mix(H + h) * scale.get(1) + base.get(H + h)));
    }
    Matrix c(H, std::vector<double>(H));
    for (int64_t j = 0; j < H; ++j) {
      double z = 0.0;
      for (int64_t k = 0; k < H; ++k) z += std::exp(mix(2 * H + j * H + k) * scale.get(2) + base.get(2 * H + j * H + k));
      for (int64_t k = 0; k < H; ++k) {
        c[j][k] = std::exp(mix(2 * H + j * H + k) * scale.get(2) + base.get(2 * H + j * H + k)) / z + p.hc_eps;
      }
    }
    auto normalise_columns = [&] {
      for (int64_t k = 0; k < H; ++k) {
        double sum = 0.0;
        for (int64_t j = 0; j < H; ++j) sum += c[j][k];
        for (int64_t j = 0; j < H; ++j) c[j][k] /= sum + p.hc_eps;
      }
    };
    normalise_columns();
    for (int64_t it = 0; it < p.hc_sinkhorn_iters - 1; ++it) {
      for (int64_t j = 0; j < H; ++j) {
        double sum = 0.0;
        for (int64_t k = 0; k < H; ++k) sum += c[j][k];
        for (int64_t k = 0; k < H; ++k) c[j][k] /= sum + p.hc_eps;
      }
      normalise_columns();
    }
    for (const auto& row : c) ref.comb.insert(ref.comb.end(), row.begin(), row.end());
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0.0;
      for (int64_t h = 0; h < H; ++h) acc += pre[h] * x.get(t * n + h * D + d);
      ref.collapsed.push_back(acc);
    }
  }
  return ref;
}

std::vector<double> brute_hc_post(const HostTensor& x, const HostTensor& residual, const HostTensor& post,
                                  const HostTensor& comb) {
  const int64_t T = residual.size(0) * residual.size(1), H = residual.size(2), D = residual.size(3);
  std::vector<double> out;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < H; ++k) {
      for (int64_t d = 0; d < D; ++d) {
        double acc = post.get(t * H + k) * x.get(t * D + d);
        for (int64_t j = 0; j < H; ++j) acc += comb.get((t * H + j) * H + k) * residual.get((t * H + j) * D + d);
        out.push_back(acc);
      }
    }
  }
  return out;
}

std::vector<double> brute_hc_head(const HostTensor& x, const HostTensor& fn, const HostTensor& base,
                                  const HostTensor& scale, const HcHeadParams& p) {
  const int64_t T = x.size(0) * x.size(1), H = x.size(2), D = x.size(3), n = H * D;
  std::vector<double> out;
  for (int64_t t = 0; t < T; ++t) {
    double sum_sq = 0.0;
    for (int64_t c = 0; c < n; ++c) sum_sq += x.get(t * n + c) * x.get(t * n + c);
    const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(n) + p.rms_norm_eps);
    std::vector<double> pre(H);
    for (int64_t h = 0; h < H; ++h) {
      double m = 0.0;
      for (int64_t c = 0; c < n; ++c) m += fn.get(h * n + c) * x.get(t * n + c) * inv_rms;
      pre[h] = sigmoid(m * scale.get(0) + base.get(h)) + p.hc_eps;
    }
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0.0;
      for (int64_t h = 0; h < H; ++h) acc += pre[h] * x.get(t * n + h * D + d);
      out.push_back(acc);
    }
  }
  return out;
}

// --------------------------------------------------------------------------- hc_pre

struct PreShape {
  int64_t B, S, H, D, iters;
  DType dtype;
};

struct HcPreProblem {
  HostTensor x, fn, base, scale;
  HcPreParams params;
  HcPreProblem(int64_t B, int64_t S, int64_t H, int64_t D, int64_t iters, DType dtype, uint64_t seed)
      : x(randn({B, S, H, D}, seed, 0.8, dtype)),
        fn(randn({(2 + H) * H, H * D}, seed + 1, 1.5 / std::sqrt(static_cast<double>(H * D)), dtype)),
        base(randn({(2 + H) * H}, seed + 2, 0.5, dtype)),
        scale(testing::uniform({3}, seed + 3, 0.5, 1.5, dtype)) {
    params.hc_sinkhorn_iters = iters;
  }
  void forward(HostTensor& post, HostTensor& comb, HostTensor& collapsed) const {
    hc_pre_fwd(x.view(), fn.view(), base.view(), scale.view(), post.view(), comb.view(), collapsed.view(), params);
  }
};

std::ostream& operator<<(std::ostream& os, const PreShape& s) {
  return os << "B" << s.B << "_S" << s.S << "_H" << s.H << "_D" << s.D << "_iters" << s.iters << "_"
            << dtype_name(s.dtype);
}

class HcPreSweep : public ::testing::TestWithParam<PreShape> {};
class HcPreGradSweep : public ::testing::TestWithParam<PreShape> {};

TEST_P(HcPreSweep, ForwardMatchesBruteForce) {
  const PreShape s = GetParam();
  const HcPreProblem pr(s.B, s.S, s.H, s.D, s.iters, s.dtype, 100 + s.H * 7 + s.D);
  HostTensor post(DType::f32, {s.B, s.S, s.H}), comb(DType::f64, {s.B, s.S, s.H, s.H}),
      collapsed(s.dtype, {s.B, s.S, s.D});
  pr.forward(post, comb, collapsed);
  const PreRef ref = brute_hc_pre(pr.x, pr.fn, pr.base, pr.scale, pr.params);
  // post is stored in f32; the reference values come from the same (rounded) inputs
  expect_close(post, HostTensor::from_f64(ref.post, {s.B, s.S, s.H}, DType::f64), 2e-7, "post");
  expect_close(comb, HostTensor::from_f64(ref.comb, {s.B, s.S, s.H, s.H}, DType::f64), 1e-12, "comb");
  expect_close(collapsed, HostTensor::from_f64(ref.collapsed, {s.B, s.S, s.D}, DType::f64), storage_tol(s.dtype),
               "collapsed");
}

TEST_P(HcPreGradSweep, BackwardMatchesFiniteDifferences) {
  const PreShape s = GetParam();
  HcPreProblem pr(s.B, s.S, s.H, s.D, s.iters, DType::f64, 200 + s.H * 7 + s.D);
  const HostTensor wp = randn({s.B, s.S, s.H}, 1), wc = randn({s.B, s.S, s.H, s.H}, 2), wx = randn({s.B, s.S, s.D}, 3);
  auto loss = [&] {
    HostTensor post(DType::f64, {s.B, s.S, s.H}), comb(DType::f64, {s.B, s.S, s.H, s.H}),
        collapsed(DType::f64, {s.B, s.S, s.D});
    pr.forward(post, comb, collapsed);
    return weighted_sum(post, wp) + weighted_sum(comb, wc) + weighted_sum(collapsed, wx);
  };
  HostTensor gx(DType::f64, pr.x.sizes()), gfn(DType::f64, pr.fn.sizes()), gb(DType::f64, pr.base.sizes()),
      gs(DType::f64, {3});
  const TensorView vp = wp.view(), vc = wc.view(), vx = wx.view();
  hc_pre_bwd(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), &vp, &vc, &vx, gx.view(), gfn.view(),
             gb.view(), gs.view(), pr.params);
  expect_gradient_matches(pr.x, gx, loss, "grad_hidden_streams");
  expect_gradient_matches(pr.fn, gfn, loss, "grad_fn");
  expect_gradient_matches(pr.base, gb, loss, "grad_base");
  expect_gradient_matches(pr.scale, gs, loss, "grad_scale");
}

INSTANTIATE_TEST_SUITE_P(Shapes, HcPreSweep,
                         ::testing::Values(PreShape{2, 3, 4, 5, 20, DType::f64}, PreShape{1, 5, 3, 7, 1, DType::f64},
                                           PreShape{1, 1, 1, 4, 3, DType::f64}, PreShape{3, 1, 2, 3, 7, DType::f64},
                                           PreShape{1, 2, 4, 8, 20, DType::f32}, PreShape{2, 3, 4, 6, 20, DType::bf16},
                                           PreShape{1, 3, 3, 5, 2, DType::f16}, PreShape{2, 0, 4, 5, 20, DType::f64}));
INSTANTIATE_TEST_SUITE_P(Shapes, HcPreGradSweep,
                         ::testing::Values(PreShape{2, 3, 4, 5, 20, DType::f64}, PreShape{1, 5, 3, 7, 1, DType::f64},
                                           PreShape{1, 1, 1, 4, 3, DType::f64}, PreShape{3, 1, 2, 3, 7, DType::f64}));

// Only some upstream gradients given: the others count as zero.
TEST(HcPre, BackwardWithPartialUpstreamGradients) {
  HcPreProblem pr(1, 3, 3, 4, 5, DType::f64, 31);
  const HostTensor wc = randn({1, 3, 3, 3}, 4);
  auto loss = [&] {
    HostTensor post(DType::f64, {1, 3, 3}), comb(DType::f64, {1, 3, 3, 3}), collapsed(DType::f64, {1, 3, 4});
    pr.forward(post, comb, collapsed);
    return weighted_sum(comb, wc);
  };
  HostTensor gx(DType::f64, pr.x.sizes()), gfn(DType::f64, pr.fn.sizes()), gb(DType::f64, pr.base.sizes()),
      gs(DType::f64, {3});
  const TensorView vc = wc.view();
  hc_pre_bwd(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), nullptr, &vc, nullptr, gx.view(), gfn.view(),
             gb.view(), gs.view(), pr.params);
  expect_gradient_matches(pr.x, gx, loss, "grad_hidden_streams (comb only)");
  expect_gradient_matches(pr.fn, gfn, loss, "grad_fn (comb only)");
  EXPECT_EQ(gs.get(0), 0.0);  // pre and post logits get no gradient
  EXPECT_EQ(gs.get(1), 0.0);
}

// Many Sinkhorn steps give a (nearly) doubly-stochastic comb; the last step normalises columns.
TEST(HcPre, SinkhornConvergesToDoublyStochastic) {
  const HcPreProblem pr(1, 2, 4, 5, 200, DType::f64, 41);
  HostTensor post(DType::f64, {1, 2, 4}), comb(DType::f64, {1, 2, 4, 4}), collapsed(DType::f64, {1, 2, 5});
  pr.forward(post, comb, collapsed);
  for (int64_t t = 0; t < 2; ++t) {
    for (int64_t a = 0; a < 4; ++a) {
      double row = 0.0, col = 0.0;
      for (int64_t b = 0; b < 4; ++b) {
        row += comb.get(t * 16 + a * 4 + b);
        col += comb.get(t * 16 + b * 4 + a);
      }
      EXPECT_NEAR(col, 1.0, 1e-5);  // 1 - 4 eps / (1 + eps)-ish: the eps in the denominators
      EXPECT_NEAR(row, 1.0, 1e-5);
    }
  }
}

// A strided (non-contiguous) view of the streams gives the same result as the contiguous copy.
TEST(HcPre, AcceptsStridedStreams) {
  const HcPreProblem pr(2, 3, 4, 5, 20, DType::f64, 51);
  HostTensor permuted(DType::f64, {2, 4, 3, 5});  // [B, H, S, D] storage
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t s = 0; s < 3; ++s)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t d = 0; d < 5; ++d) permuted.set(((b * 4 + h) * 3 + s) * 5 + d, pr.x.get(((b * 3 + s) * 4 + h) * 5 + d));
  TensorView strided = permuted.view();
  std::swap(strided.sizes[1], strided.sizes[2]);
  std::swap(strided.strides[1], strided.strides[2]);
  HostTensor post1(DType::f64, {2, 3, 4}), comb1(DType::f64, {2, 3, 4, 4}), col1(DType::f64, {2, 3, 5});
  HostTensor post2(DType::f64, {2, 3, 4}), comb2(DType::f64, {2, 3, 4, 4}), col2(DType::f64, {2, 3, 5});
  pr.forward(post1, comb1, col1);
  hc_pre_fwd(strided, pr.fn.view(), pr.base.view(), pr.scale.view(), post2.view(), comb2.view(), col2.view(),
             pr.params);
  EXPECT_EQ(testing::max_abs_diff(post1, post2), 0.0);
  EXPECT_EQ(testing::max_abs_diff(comb1, comb2), 0.0);
  EXPECT_EQ(testing::max_abs_diff(col1, col2), 0.0);
}

// --------------------------------------------------------------------------- hc_post

struct PostShape {
  int64_t B, S, H, D;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const PostShape& s) {
  return os << "B" << s.B << "_S" << s.S << "_H" << s.H << "_D" << s.D << "_" << dtype_name(s.dtype);
}

class HcPostSweep : public ::testing::TestWithParam<PostShape> {};

TEST_P(HcPostSweep, ForwardMatchesBruteForceAndBackwardMatchesFiniteDifferences) {
  const PostShape s = GetParam();
  const uint64_t seed = 300 + s.H * 11 + s.D;
  HostTensor x = randn({s.B, s.S, s.D}, seed, 1.0, s.dtype), residual = randn({s.B, s.S, s.H, s.D}, seed + 1, 1.0, s.dtype);
  HostTensor post = testing::uniform({s.B, s.S, s.H}, seed + 2, 0.0, 2.0, DType::f32);
  HostTensor comb = testing::uniform({s.B, s.S, s.H, s.H}, seed + 3, 0.0, 1.0, DType::f64);
  HostTensor out(s.dtype, {s.B, s.S, s.H, s.D});
  hc_post_fwd(x.view(), residual.view(), post.view(), comb.view(), out.view());
  expect_close(out, HostTensor::from_f64(brute_hc_post(x, residual, post, comb), out.sizes(), DType::f64),
               storage_tol(s.dtype), "out");
  if (s.dtype != DType::f64 || s.B * s.S == 0) return;

  post = post.to(DType::f64);
  const HostTensor w = randn(out.sizes(), seed + 4);
  auto loss = [&] {
    HostTensor o(DType::f64, out.sizes());
    hc_post_fwd(x.view(), residual.view(), post.view(), comb.view(), o.view());
    return weighted_sum(o, w);
  };
  HostTensor gx(DType::f64, x.sizes()), gr(DType::f64, residual.sizes()), gp(DType::f64, post.sizes()),
      gc(DType::f64, comb.sizes());
  hc_post_bwd(x.view(), residual.view(), post.view(), comb.view(), w.view(), gx.view(), gr.view(), gp.view(), gc.view());
  expect_gradient_matches(x, gx, loss, "grad_x");
  expect_gradient_matches(residual, gr, loss, "grad_residual");
  expect_gradient_matches(post, gp, loss, "grad_post");
  expect_gradient_matches(comb, gc, loss, "grad_comb");
}

INSTANTIATE_TEST_SUITE_P(Shapes, HcPostSweep,
                         ::testing::Values(PostShape{2, 3, 4, 5, DType::f64}, PostShape{1, 7, 3, 2, DType::f64},
                                           PostShape{1, 1, 1, 3, DType::f64}, PostShape{2, 3, 4, 8, DType::bf16},
                                           PostShape{1, 5, 4, 3, DType::f32}, PostShape{0, 3, 4, 5, DType::f64}));

// comb enters transposed: with comb = e_0 e_1^T (only comb[0, 1] = 1) stream 1 receives residual stream 0.
TEST(HcPost, CombIsAppliedTransposed) {
  HostTensor x = HostTensor::zeros(DType::f64, {1, 1, 2}), post = HostTensor::zeros(DType::f64, {1, 1, 2});
  HostTensor residual = HostTensor::from_f64({1, 2, 3, 4}, {1, 1, 2, 2}, DType::f64);
  HostTensor comb = HostTensor::from_f64({0, 1, 0, 0}, {1, 1, 2, 2}, DType::f64);
  HostTensor out(DType::f64, {1, 1, 2, 2});
  hc_post_fwd(x.view(), residual.view(), post.view(), comb.view(), out.view());
  EXPECT_EQ(out.to_f64(), (std::vector<double>{0, 0, 1, 2}));
}

// --------------------------------------------------------------------------- hc_head

struct HeadShape {
  int64_t B, S, H, D;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const HeadShape& s) {
  return os << "B" << s.B << "_S" << s.S << "_H" << s.H << "_D" << s.D << "_" << dtype_name(s.dtype);
}

class HcHeadSweep : public ::testing::TestWithParam<HeadShape> {};

TEST_P(HcHeadSweep, ForwardMatchesBruteForceAndBackwardMatchesFiniteDifferences) {
  const HeadShape s = GetParam();
  const uint64_t seed = 400 + s.H * 13 + s.D;
  HostTensor x = randn({s.B, s.S, s.H, s.D}, seed, 0.8, s.dtype);
  HostTensor fn = randn({s.H, s.H * s.D}, seed + 1, 1.5 / std::sqrt(static_cast<double>(s.H * s.D)), s.dtype);
  HostTensor base = randn({s.H}, seed + 2, 0.5, s.dtype), scale = testing::uniform({1}, seed + 3, 0.5, 1.5, s.dtype);
  HcHeadParams params;
  params.hc_eps = 1e-3;
  HostTensor out(s.dtype, {s.B, s.S, s.D});
  hc_head_fwd(x.view(), fn.view(), base.view(), scale.view(), out.view(), params);
  expect_close(out, HostTensor::from_f64(brute_hc_head(x, fn, base, scale, params), out.sizes(), DType::f64),
               storage_tol(s.dtype), "out");
  if (s.dtype != DType::f64 || s.B * s.S == 0) return;

  const HostTensor w = randn(out.sizes(), seed + 4);
  auto loss = [&] {
    HostTensor o(DType::f64, out.sizes());
    hc_head_fwd(x.view(), fn.view(), base.view(), scale.view(), o.view(), params);
    return weighted_sum(o, w);
  };
  HostTensor gx(DType::f64, x.sizes()), gfn(DType::f64, fn.sizes()), gb(DType::f64, base.sizes()),
      gs(DType::f64, {1});
  hc_head_bwd(x.view(), fn.view(), base.view(), scale.view(), w.view(), gx.view(), gfn.view(), gb.view(), gs.view(),
              params);
  expect_gradient_matches(x, gx, loss, "grad_hidden_streams");
  expect_gradient_matches(fn, gfn, loss, "grad_hc_fn");
  expect_gradient_matches(base, gb, loss, "grad_hc_base");
  expect_gradient_matches(scale, gs, loss, "grad_hc_scale");
}

INSTANTIATE_TEST_SUITE_P(Shapes, HcHeadSweep,
                         ::testing::Values(HeadShape{2, 3, 4, 5, DType::f64}, HeadShape{1, 5, 3, 7, DType::f64},
                                           HeadShape{1, 1, 1, 2, DType::f64}, HeadShape{2, 2, 4, 6, DType::bf16},
                                           HeadShape{1, 3, 2, 5, DType::f32}, HeadShape{1, 0, 4, 5, DType::f64}));

// --------------------------------------------------------------------------- golden (HF transformers)

constexpr double kGoldenTol = 1e-10;  // relative to max(1, max |reference|)

void golden_hc_pre(const testing::GoldenCase& c, const std::string& file) {
  const HostTensor &x = golden_tensor(c, "hidden_streams"), &fn = golden_tensor(c, "fn"),
                   &base = golden_tensor(c, "base"), &scale = golden_tensor(c, "scale");
  HcPreParams p;
  p.hc_sinkhorn_iters = static_cast<int64_t>(golden_tensor(c, "hc_sinkhorn_iters").get(0));
  p.hc_eps = golden_tensor(c, "hc_eps").get(0);
  p.rms_norm_eps = golden_tensor(c, "rms_norm_eps").get(0);
  HostTensor post(DType::f64, golden_tensor(c, "post").sizes()), comb(DType::f64, golden_tensor(c, "comb").sizes()),
      collapsed(DType::f64, golden_tensor(c, "collapsed").sizes());
  hc_pre_fwd(x.view(), fn.view(), base.view(), scale.view(), post.view(), comb.view(), collapsed.view(), p);
  expect_close(post, golden_tensor(c, "post"), kGoldenTol, file + " post");
  expect_close(comb, golden_tensor(c, "comb"), kGoldenTol, file + " comb");
  expect_close(collapsed, golden_tensor(c, "collapsed"), kGoldenTol, file + " collapsed");
  HostTensor gx(DType::f64, x.sizes()), gfn(DType::f64, fn.sizes()), gb(DType::f64, base.sizes()),
      gs(DType::f64, scale.sizes());
  const TensorView vp = golden_tensor(c, "grad_post").view(), vc = golden_tensor(c, "grad_comb").view(),
                   vx = golden_tensor(c, "grad_collapsed").view();
  hc_pre_bwd(x.view(), fn.view(), base.view(), scale.view(), &vp, &vc, &vx, gx.view(), gfn.view(), gb.view(),
             gs.view(), p);
  expect_close(gx, golden_tensor(c, "grad_hidden_streams"), kGoldenTol, file + " grad_hidden_streams");
  expect_close(gfn, golden_tensor(c, "grad_fn"), kGoldenTol, file + " grad_fn");
  expect_close(gb, golden_tensor(c, "grad_base"), kGoldenTol, file + " grad_base");
  expect_close(gs, golden_tensor(c, "grad_scale"), kGoldenTol, file + " grad_scale");
}

void golden_hc_post(const testing::GoldenCase& c, const std::string& file) {
  const HostTensor &x = golden_tensor(c, "x"), &res = golden_tensor(c, "residual"), &post = golden_tensor(c, "post"),
                   &comb = golden_tensor(c, "comb");
  HostTensor out(DType::f64, res.sizes());
  hc_post_fwd(x.view(), res.view(), post.view(), comb.view(), out.view());
  expect_close(out, golden_tensor(c, "out"), kGoldenTol, file + " out");
  HostTensor gx(DType::f64, x.sizes()), gr(DType::f64, res.sizes()), gp(DType::f64, post.sizes()),
      gc(DType::f64, comb.sizes());
  hc_post_bwd(x.view(), res.view(), post.view(), comb.view(), golden_tensor(c, "grad_out").view(), gx.view(),
              gr.view(), gp.view(), gc.view());
  expect_close(gx, golden_tensor(c, "grad_x"), kGoldenTol, file + " grad_x");
  expect_close(gr, golden_tensor(c, "grad_residual"), kGoldenTol, file + " grad_residual");
  expect_close(gp, golden_tensor(c, "grad_post"), kGoldenTol, file + " grad_post");
  expect_close(gc, golden_tensor(c, "grad_comb"), kGoldenTol, file + " grad_comb");
}

void golden_hc_head(const testing::GoldenCase& c, const std::string& file) {
  const HostTensor &x = golden_tensor(c, "hidden_streams"), &fn = golden_tensor(c, "hc_fn"),
                   &base = golden_tensor(c, "hc_base"), &scale = golden_tensor(c, "hc_scale");
  HcHeadParams p;
  p.hc_eps = golden_tensor(c, "hc_eps").get(0);
  p.rms_norm_eps = golden_tensor(c, "rms_norm_eps").get(0);
  HostTensor out(DType::f64, golden_tensor(c, "out").sizes());
  hc_head_fwd(x.view(), fn.view(), base.view(), scale.view(), out.view(), p);
  expect_close(out, golden_tensor(c, "out"), kGoldenTol, file + " out");
  HostTensor gx(DType::f64, x.sizes()), gfn(DType::f64, fn.sizes()), gb(DType::f64, base.sizes()),
      gs(DType::f64, scale.sizes());
  hc_head_bwd(x.view(), fn.view(), base.view(), scale.view(), golden_tensor(c, "grad_out").view(), gx.view(),
              gfn.view(), gb.view(), gs.view(), p);
  expect_close(gx, golden_tensor(c, "grad_hidden_streams"), kGoldenTol, file + " grad_hidden_streams");
  expect_close(gfn, golden_tensor(c, "grad_hc_fn"), kGoldenTol, file + " grad_hc_fn");
  expect_close(gb, golden_tensor(c, "grad_hc_base"), kGoldenTol, file + " grad_hc_base");
  expect_close(gs, golden_tensor(c, "grad_hc_scale"), kGoldenTol, file + " grad_hc_scale");
}

TEST(HcGolden, MatchesHuggingFaceDeepseekV4) {
  const std::vector<std::string> files = testing::list_golden("hc");
  ASSERT_FALSE(files.empty()) << "no golden files under tests/golden/hc: run tests/golden/gen_hc_router.py";
  int pre = 0, post = 0, head = 0;
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const testing::GoldenCase c = testing::load_golden(file);
    const std::string name = file.substr(file.find('/') + 1);
    if (name.rfind("hc_pre_", 0) == 0) golden_hc_pre(c, file), ++pre;
    else if (name.rfind("hc_post_", 0) == 0) golden_hc_post(c, file), ++post;
    else if (name.rfind("hc_head_", 0) == 0) golden_hc_head(c, file), ++head;
    else ADD_FAILURE() << "unknown golden case " << file;
  }
  EXPECT_GT(pre, 0);
  EXPECT_GT(post, 0);
  EXPECT_GT(head, 0);
}

// --------------------------------------------------------------------------- bad inputs

TensorView on_cuda(const HostTensor& t) {
  TensorView v = t.view();
  v.device = Device::cuda(0);
  return v;
}

TEST(HcBadInputs, HcPreFwd) {
  const HcPreProblem pr(1, 2, 4, 3, 20, DType::f32, 61);
  HostTensor post(DType::f32, {1, 2, 4}), comb(DType::f32, {1, 2, 4, 4}), col(DType::f32, {1, 2, 3});
  auto call = [&](const TensorView& x, const TensorView& fn, const TensorView& base, const TensorView& scale,
                  const TensorView& collapsed, HcPreParams p) {
    hc_pre_fwd(x, fn, base, scale, post.view(), comb.view(), collapsed, p);
  };
  const HcPreParams ok = pr.params;
  HostTensor x3(DType::f32, {2, 4, 3});
  expect_error([&] { call(x3.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), col.view(), ok); },
               {"hidden_streams", "rank 4", "[B, S, hc_mult, D]", "[2, 4, 3]"});
  // hc_mult mismatch: streams with 3 streams against fn / base built for hc_mult 4
  HostTensor x_h3(DType::f32, {1, 2, 3, 3});
  expect_error([&] { call(x_h3.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), col.view(), ok); },
               {"fn", "[15, 9]", "[24, 12]"});
  HostTensor base_bad(DType::f32, {20});
  expect_error([&] { call(pr.x.view(), pr.fn.view(), base_bad.view(), pr.scale.view(), col.view(), ok); },
               {"base", "[24]", "[20]"});
  HostTensor scale_int(DType::i32, {3});
  expect_error([&] { call(pr.x.view(), pr.fn.view(), pr.base.view(), scale_int.view(), col.view(), ok); },
               {"scale", "int32"});
  HostTensor col_f64(DType::f64, {1, 2, 3});
  expect_error([&] { call(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), col_f64.view(), ok); },
               {"collapsed", "float32", "float64"});
  expect_error([&] { call(pr.x.view(), pr.fn.view(), pr.base.view(), on_cuda(pr.scale), col.view(), ok); },
               {"scale", "cuda:0", "cpu"});
  HcPreParams bad = ok;
  bad.hc_sinkhorn_iters = 0;
  expect_error([&] { call(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), col.view(), bad); },
               {"hc_sinkhorn_iters", "> 0", "0"});
  bad = ok;
  bad.hc_eps = -1e-6;
  expect_error([&] { call(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), col.view(), bad); },
               {"hc_eps", ">= 0"});
  bad = ok;
  bad.rms_norm_eps = NAN;
  expect_error([&] { call(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), col.view(), bad); },
               {"rms_norm_eps", "finite"});
  HostTensor x_d0(DType::f32, {1, 2, 4, 0});
  expect_error([&] { call(x_d0.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), col.view(), ok); },
               {"hidden_streams", "D", ">= 1"});
  expect_error(
      [&] {
        hc_pre_fwd(on_cuda(pr.x), on_cuda(pr.fn), on_cuda(pr.base), on_cuda(pr.scale), on_cuda(post), on_cuda(comb),
                   on_cuda(col), ok);
      },
      {"hc_pre_fwd"});
}

TEST(HcBadInputs, HcPreBwd) {
  const HcPreProblem pr(1, 2, 4, 3, 20, DType::f64, 62);
  HostTensor gx(DType::f64, {1, 2, 4, 3}), gfn(DType::f64, pr.fn.sizes()), gb(DType::f64, {24}), gs(DType::f64, {3});
  HostTensor gcomb_bad(DType::f64, {1, 2, 3, 3}), gfn_f32(DType::f32, pr.fn.sizes()), gs_bad(DType::f64, {2});
  const TensorView vcomb = gcomb_bad.view();
  expect_error(
      [&] {
        hc_pre_bwd(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), nullptr, &vcomb, nullptr, gx.view(),
                   gfn.view(), gb.view(), gs.view(), pr.params);
      },
      {"grad_comb", "[1, 2, 4, 4]", "[1, 2, 3, 3]"});
  expect_error(
      [&] {
        hc_pre_bwd(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), nullptr, nullptr, nullptr, gx.view(),
                   gfn_f32.view(), gb.view(), gs.view(), pr.params);
      },
      {"grad_fn", "float64", "float32"});
  expect_error(
      [&] {
        hc_pre_bwd(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), nullptr, nullptr, nullptr, gx.view(),
                   gfn.view(), gb.view(), gs_bad.view(), pr.params);
      },
      {"grad_scale", "[3]", "[2]"});
  expect_error(
      [&] {
        hc_pre_bwd(pr.x.view(), pr.fn.view(), pr.base.view(), pr.scale.view(), nullptr, nullptr, nullptr,
                   on_cuda(gx), gfn.view(), gb.view(), gs.view(), pr.params);
      },
      {"grad_hidden_streams", "cuda:0"});
}

TEST(HcBadInputs, HcPost) {
  HostTensor x(DType::f32, {1, 2, 3}), res(DType::f32, {1, 2, 4, 3}), post(DType::f32, {1, 2, 4}),
      comb(DType::f32, {1, 2, 4, 4}), out(DType::f32, {1, 2, 4, 3});
  HostTensor x_bad(DType::f32, {1, 2, 5}), comb_h3(DType::f32, {1, 2, 3, 3}), out_f64(DType::f64, {1, 2, 4, 3});
  expect_error([&] { hc_post_fwd(x_bad.view(), res.view(), post.view(), comb.view(), out.view()); },
               {"x", "[1, 2, 3]", "[1, 2, 5]"});
  expect_error([&] { hc_post_fwd(x.view(), res.view(), post.view(), comb_h3.view(), out.view()); },
               {"comb", "[1, 2, 4, 4]", "[1, 2, 3, 3]"});
  expect_error([&] { hc_post_fwd(x.view(), res.view(), post.view(), comb.view(), out_f64.view()); },
               {"out", "float32", "float64"});
  expect_error([&] { hc_post_fwd(x.view(), res.view(), on_cuda(post), comb.view(), out.view()); },
               {"post", "cuda:0"});
  expect_error([&] { hc_post_fwd(on_cuda(x), on_cuda(res), on_cuda(post), on_cuda(comb), on_cuda(out)); },
               {"hc_post_fwd"});
  HostTensor gx(DType::f32, {1, 2, 3}), gr(DType::f32, {1, 2, 4, 3}), gp(DType::f32, {1, 2, 4}),
      gc_bad(DType::f32, {1, 2, 4});
  expect_error(
      [&] {
        hc_post_bwd(x.view(), res.view(), post.view(), comb.view(), out.view(), gx.view(), gr.view(), gp.view(),
                    gc_bad.view());
      },
      {"grad_comb", "rank 4"});
}

TEST(HcBadInputs, HcHead) {
  HostTensor x(DType::f32, {1, 2, 4, 3}), fn(DType::f32, {4, 12}), base(DType::f32, {4}), scale(DType::f32, {1}),
      out(DType::f32, {1, 2, 3});
  HostTensor fn_bad(DType::f32, {3, 12}), scale_bad(DType::f32, {3}), out_bad(DType::f32, {1, 2, 4});
  expect_error([&] { hc_head_fwd(x.view(), fn_bad.view(), base.view(), scale.view(), out.view()); },
               {"hc_fn", "[4, 12]", "[3, 12]"});
  expect_error([&] { hc_head_fwd(x.view(), fn.view(), base.view(), scale_bad.view(), out.view()); },
               {"hc_scale", "[1]", "[3]"});
  expect_error([&] { hc_head_fwd(x.view(), fn.view(), base.view(), scale.view(), out_bad.view()); },
               {"out", "[1, 2, 3]", "[1, 2, 4]"});
  HcHeadParams bad;
  bad.hc_eps = -1.0;
  expect_error([&] { hc_head_fwd(x.view(), fn.view(), base.view(), scale.view(), out.view(), bad); }, {"hc_eps"});
  expect_error([&] { hc_head_fwd(on_cuda(x), on_cuda(fn), on_cuda(base), on_cuda(scale), on_cuda(out)); },
               {"hc_head_fwd"});
  HostTensor gx(DType::f32, {1, 2, 4, 3}), gfn(DType::f32, {4, 12}), gb(DType::f32, {4}), gs(DType::f32, {1}),
      gb_f64(DType::f64, {4});
  expect_error(
      [&] {
        hc_head_bwd(x.view(), fn.view(), base.view(), scale.view(), out.view(), gx.view(), gfn.view(), gb_f64.view(),
                    gs.view());
      },
      {"grad_hc_base", "float32", "float64"});
  expect_error(
      [&] {
        hc_head_bwd(x.view(), fn.view(), base.view(), scale.view(), out_bad.view(), gx.view(), gfn.view(), gb.view(),
                    gs.view());
      },
      {"grad_out", "[1, 2, 3]"});
}

}  // namespace
}  // namespace seqmix
