// Lightning indexer: streaming top-k == dense scores + full sort, -1 padding, ties, varlen ==
// per sequence, score backward vs finite differences, bad inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "dsa_test_util.h"
#include "seqmix/dsa.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;

struct IndexerCase {
  std::vector<int64_t> lengths;
  int64_t H, D, m, K;
  DType index_dtype;
};

struct Problem {
  HostTensor q, k, w, cu;
  std::vector<int64_t> offsets, compressed;
  int64_t T, Tc;
};

Problem make_problem(const IndexerCase& c, uint64_t seed) {
  Problem p;
  p.offsets = {0};
  p.compressed = {0};
  for (int64_t n : c.lengths) {
    p.offsets.push_back(p.offsets.back() + n);
    p.compressed.push_back(p.compressed.back() + n / c.m);
  }
  p.T = p.offsets.back();
  p.Tc = p.compressed.back();
  p.q = testing::randn({p.T, c.H, c.D}, seed);
  p.k = testing::randn({p.Tc, c.D}, seed + 1);
  p.w = testing::randn({p.T, c.H}, seed + 2);
  p.cu = testing::int_tensor(p.offsets);
  return p;
}

DsaIndexerParams params_of(const IndexerCase& c) {
  DsaIndexerParams params;
  params.compress_ratio = c.m;
  return params;
}

// Dense scores of sequence b: rows of q / w of b against its keys.
std::vector<double> dense_scores(const IndexerCase& c, const Problem& p, size_t b) {
  const std::vector<double> q = p.q.to_f64(), k = p.k.to_f64(), w = p.w.to_f64();
  const int64_t n = p.offsets[b + 1] - p.offsets[b], nc = p.compressed[b + 1] - p.compressed[b];
  const std::vector<double> qb(q.begin() + p.offsets[b] * c.H * c.D, q.begin() + p.offsets[b + 1] * c.H * c.D);
  const std::vector<double> kb(k.begin() + p.compressed[b] * c.D, k.begin() + p.compressed[b + 1] * c.D);
  const std::vector<double> wb(w.begin() + p.offsets[b] * c.H, w.begin() + p.offsets[b + 1] * c.H);
  return dsa_test::indexer_scores_ref(qb, kb, wb, n, nc, c.H, c.D, 1.0 / std::sqrt(static_cast<double>(c.D)),
                                      1.0 / std::sqrt(static_cast<double>(c.H)));
}

class DsaIndexer : public ::testing::TestWithParam<IndexerCase> {};

TEST_P(DsaIndexer, StreamingTopkEqualsDenseSort) {
  const IndexerCase c = GetParam();
  const Problem p = make_problem(c, 31);
  HostTensor idx(c.index_dtype, {p.T, c.K}), scores(DType::f64, {p.T, c.K});
  const TensorView cu = p.cu.view(), sv = scores.view();
  dsa_indexer_fwd(params_of(c), p.q.view(), p.k.view(), p.w.view(), &cu, idx.view(), &sv);
  for (size_t b = 0; b + 1 < p.offsets.size(); ++b) {
    const int64_t n = p.offsets[b + 1] - p.offsets[b], nc = p.compressed[b + 1] - p.compressed[b];
    const std::vector<double> dense = dense_scores(c, p, b);
    const std::vector<int64_t> ref = dsa_test::topk_ref(dense, n, nc, c.m, c.K);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < c.K; ++i) {
        const int64_t flat = (p.offsets[b] + t) * c.K + i;
        const int64_t got = static_cast<int64_t>(idx.get(flat));
        ASSERT_EQ(got, ref[static_cast<size_t>(t * c.K + i)]) << "seq " << b << " t " << t << " i " << i;
        const double expected = got < 0 ? 0.0 : dense[static_cast<size_t>(t * nc + got)];
        EXPECT_NEAR(scores.get(flat), expected, 1e-12);
      }
    }
  }
}

TEST_P(DsaIndexer, ScoreBackwardMatchesFiniteDifferences) {
  const IndexerCase c = GetParam();
  Problem p = make_problem(c, 41);
  HostTensor idx(c.index_dtype, {p.T, c.K});
  const TensorView cu = p.cu.view();
  dsa_indexer_fwd(params_of(c), p.q.view(), p.k.view(), p.w.view(), &cu, idx.view(), nullptr);
  const HostTensor ds = testing::randn({p.T, c.K}, 42);
  HostTensor dq(DType::f64, {p.T, c.H, c.D}), dk(DType::f64, {p.Tc, c.D}), dw(DType::f64, {p.T, c.H});
  dsa_indexer_bwd(params_of(c), p.q.view(), p.k.view(), p.w.view(), &cu, idx.view(), ds.view(), dq.view(), dk.view(),
                  dw.view());
  // Loss over the fixed selection, from the dense definition.
  const auto loss = [&] {
    double total = 0.0;
    for (size_t b = 0; b + 1 < p.offsets.size(); ++b) {
      const int64_t nc = p.compressed[b + 1] - p.compressed[b];
      const std::vector<double> dense = dense_scores(c, p, b);
      for (int64_t t = p.offsets[b]; t < p.offsets[b + 1]; ++t) {
        for (int64_t i = 0; i < c.K; ++i) {
          const int64_t j = static_cast<int64_t>(idx.get(t * c.K + i));
          if (j >= 0) total += ds.get(t * c.K + i) * dense[static_cast<size_t>((t - p.offsets[b]) * nc + j)];
        }
      }
    }
    return total;
  };
  testing::expect_gradient_matches(p.q, dq, loss, "dq");
  testing::expect_gradient_matches(p.k, dk, loss, "dk");
  testing::expect_gradient_matches(p.w, dw, loss, "dweights");
}

INSTANTIATE_TEST_SUITE_P(Sweep, DsaIndexer,
                         ::testing::Values(IndexerCase{{23}, 4, 8, 4, 3, DType::i64},
                                           IndexerCase{{0, 1, 5, 17, 9}, 2, 6, 4, 2, DType::i32},
                                           IndexerCase{{33}, 3, 4, 4, 40, DType::i64},  // topk > every row's candidates
                                           IndexerCase{{19, 12}, 2, 4, 2, 1, DType::i64},
                                           IndexerCase{{30}, 1, 5, 3, 4, DType::i32}));

TEST(DsaIndexer, TiesPickTheLowerIndexFirst) {
  const int64_t T = 16, H = 2, D = 4;
  HostTensor q = testing::randn({T, H, D}, 1), w = testing::uniform({T, H}, 2, 0.5, 1.0);
  HostTensor k(DType::f64, {4, D});
  for (int64_t j = 0; j < 4; ++j) {
    for (int64_t d = 0; d < D; ++d) k.set(j * D + d, 0.25 * (d + 1));  // four equal keys -> equal scores
  }
  HostTensor idx(DType::i64, {T, 3});
  dsa_indexer_fwd({}, q.view(), k.view(), w.view(), nullptr, idx.view(), nullptr);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t visible = (t + 1) / 4;
    for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(idx.get(t * 3 + i), i < visible ? i : -1) << t << " " << i;
  }
}

TEST(DsaIndexer, VarlenEqualsPerSequenceCalls) {
  const IndexerCase c{{9, 0, 14, 3}, 3, 4, 4, 2, DType::i64};
  const Problem p = make_problem(c, 51);
  HostTensor idx(DType::i64, {p.T, c.K});
  const TensorView cu = p.cu.view();
  dsa_indexer_fwd(params_of(c), p.q.view(), p.k.view(), p.w.view(), &cu, idx.view(), nullptr);
  const std::vector<double> q = p.q.to_f64(), k = p.k.to_f64(), w = p.w.to_f64();
  for (size_t b = 0; b + 1 < p.offsets.size(); ++b) {
    const int64_t n = p.offsets[b + 1] - p.offsets[b], nc = p.compressed[b + 1] - p.compressed[b];
    const HostTensor qb =
        dsa_test::make({q.begin() + p.offsets[b] * c.H * c.D, q.begin() + p.offsets[b + 1] * c.H * c.D}, {n, c.H, c.D});
    const HostTensor kb =
        dsa_test::make({k.begin() + p.compressed[b] * c.D, k.begin() + p.compressed[b + 1] * c.D}, {nc, c.D});
    const HostTensor wb =
        dsa_test::make({w.begin() + p.offsets[b] * c.H, w.begin() + p.offsets[b + 1] * c.H}, {n, c.H});
    HostTensor ib(DType::i64, {n, c.K});
    dsa_indexer_fwd(params_of(c), qb.view(), kb.view(), wb.view(), nullptr, ib.view(), nullptr);
    for (int64_t i = 0; i < n * c.K; ++i) EXPECT_EQ(ib.get(i), idx.get(p.offsets[b] * c.K + i));
  }
}

TEST(DsaIndexer, BadInputs) {
  const IndexerCase c{{12}, 2, 4, 4, 2, DType::i64};
  const Problem p = make_problem(c, 61);
  HostTensor idx(DType::i64, {12, 2});
  const auto fwd = [&](const DsaIndexerParams& params, const TensorView& q, const TensorView& k, const TensorView& w,
                       const TensorView& i) { dsa_indexer_fwd(params, q, k, w, nullptr, i, nullptr); };
  expect_error(
      [&] {
        fwd({}, p.q.view(), p.k.view(), p.w.view(), HostTensor(DType::i64, {12, 0}).view());
      },
      {"indices", "index_topk", ">= 1", "0"});
  expect_error(
      [&] {
        fwd({}, p.q.view(), p.k.view(), p.w.view(), HostTensor(DType::f64, {12, 2}).view());
      },
      {"indices", "int32/int64", "float64"});
  expect_error(
      [&] {
        fwd({}, p.q.view(), HostTensor(DType::f64, {4, 4}).view(), p.w.view(), idx.view());
      },
      {"k", "T_c = 3", "[4, 4]"});
  expect_error(
      [&] {
        fwd({}, p.q.view(), HostTensor(DType::f64, {3, 5}).view(), p.w.view(), idx.view());
      },
      {"k", "[*, 4]", "[3, 5]"});
  expect_error(
      [&] {
        fwd({}, p.q.view(), p.k.view(), HostTensor(DType::f64, {12, 3}).view(), idx.view());
      },
      {"weights", "[12, 2]", "[12, 3]"});
  expect_error([&] { fwd({.compress_ratio = 0}, p.q.view(), p.k.view(), p.w.view(), idx.view()); },
               {"compress_ratio", "> 0"});
  expect_error([&] { fwd({.softmax_scale = NAN}, p.q.view(), p.k.view(), p.w.view(), idx.view()); },
               {"softmax_scale", "finite"});
  TensorView cuda_k = p.k.view();
  cuda_k.device = Device::cuda(0);
  expect_error([&] { fwd({}, p.q.view(), cuda_k, p.w.view(), idx.view()); }, {"k", "cuda:0", "cpu"});
  const HostTensor bad_cu = testing::int_tensor({0, 13});
  const TensorView bcu = bad_cu.view();
  expect_error([&] { dsa_indexer_fwd({}, p.q.view(), p.k.view(), p.w.view(), &bcu, idx.view(), nullptr); },
               {"cu_seqlens", "12", "13"});
  HostTensor scores_f32(DType::f32, {12, 2});
  const TensorView sv = scores_f32.view();
  expect_error([&] { dsa_indexer_fwd({}, p.q.view(), p.k.view(), p.w.view(), nullptr, idx.view(), &sv); },
               {"scores", "float64", "float32"});
  // Backward: an index beyond the sequence's compressed entries.
  HostTensor out_of_range = testing::int_tensor(std::vector<int64_t>(24, -1), {12, 2});
  out_of_range.set(5, 3);
  HostTensor ds(DType::f64, {12, 2}), dq(DType::f64, {12, 2, 4}), dk(DType::f64, {3, 4}), dw(DType::f64, {12, 2});
  expect_error(
      [&] {
        dsa_indexer_bwd({}, p.q.view(), p.k.view(), p.w.view(), nullptr, out_of_range.view(), ds.view(), dq.view(),
                        dk.view(), dw.view());
      },
      {"indices", "[0, 3)", "got 3"});
  out_of_range.set(5, -2);
  expect_error(
      [&] {
        dsa_indexer_bwd({}, p.q.view(), p.k.view(), p.w.view(), nullptr, out_of_range.view(), ds.view(), dq.view(),
                        dk.view(), dw.view());
      },
      {"indices", "-1", "got -2"});
  expect_error(
      [&] {
        dsa_indexer_bwd({}, p.q.view(), p.k.view(), p.w.view(), nullptr, idx.view(), ds.view(), dq.view(),
                        HostTensor(DType::f64, {2, 4}).view(), dw.view());
      },
      {"dk", "[3, 4]", "[2, 4]"});
}

}  // namespace
}  // namespace seqmix
