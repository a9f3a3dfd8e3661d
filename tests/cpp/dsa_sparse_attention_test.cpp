// Sparse sink attention: forward vs a dense multiplicity-masked softmax, -1 / empty / repeated
// entries, grouped KV heads, backward vs finite differences; the HF composition helper vs a
// dense HF-style mask; bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <set>
#include <string>

#include "dsa_test_util.h"
#include "seqmix/dsa.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;

struct AttentionCase {
  int64_t T, H, Hkv, D, N, W;
  bool sinks;
  DType dtype;
};

// Random lists: -1 holes, a repeated entry, and an empty row.
HostTensor random_lists(int64_t T, int64_t Hkv, int64_t W, int64_t N, uint64_t seed) {
  HostTensor u = testing::uniform({T, Hkv, W}, seed, 0.0, 1.0);
  std::vector<int64_t> v(static_cast<size_t>(T * Hkv * W));
  for (size_t i = 0; i < v.size(); ++i) {
    const double r = u.get(static_cast<int64_t>(i));
    v[i] = r < 0.2 ? -1 : static_cast<int64_t>(r * 1e6) % N;
  }
  if (T > 1 && W > 1)
    v[static_cast<size_t>(Hkv * W + 1)] = v[static_cast<size_t>(Hkv * W)] < 0 ? 0 : v[static_cast<size_t>(Hkv * W)];
  if (T > 2) {
    for (int64_t w = 0; w < Hkv * W; ++w) v[static_cast<size_t>(2 * Hkv * W + w)] = -1;
  }
  return testing::int_tensor(v, {T, Hkv, W});
}

class DsaSparseAttention : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(DsaSparseAttention, ForwardMatchesDenseAndBackwardMatchesFiniteDifferences) {
  const AttentionCase c = GetParam();
  HostTensor q = testing::randn({c.T, c.H, c.D}, 1, 1.0, c.dtype);
  HostTensor kv = testing::randn({c.N, c.Hkv, c.D}, 2, 1.0, c.dtype);
  HostTensor sinks = testing::randn({c.H}, 3);
  const HostTensor idx = random_lists(c.T, c.Hkv, c.W, c.N, 4);
  const TensorView sv = sinks.view();
  const TensorView* sp = c.sinks ? &sv : nullptr;
  const DsaSparseAttentionParams params{.softmax_scale = 0.7};
  HostTensor out(c.dtype, {c.T, c.H, c.D});
  dsa_sparse_attention_fwd(params, q.view(), kv.view(), idx.view(), sp, out.view());
  std::vector<int64_t> lists;
  for (int64_t i = 0; i < idx.numel(); ++i) lists.push_back(static_cast<int64_t>(idx.get(i)));
  const std::vector<double> ref = dsa_test::sparse_attention_ref(
      q.to(DType::f64).to_f64(), kv.to(DType::f64).to_f64(), lists, c.sinks ? sinks.to_f64() : std::vector<double>{},
      c.T, c.H, c.Hkv, c.D, c.N, c.W, 0.7);
  const double tol = c.dtype == DType::f64 ? 1e-12 : 3e-2;
  EXPECT_LT(testing::max_abs_diff(out.to(DType::f64), dsa_test::make(ref, {c.T, c.H, c.D})), tol);
  if (c.T > 2) {
    for (int64_t i = 0; i < c.H * c.D; ++i) EXPECT_EQ(out.get(2 * c.H * c.D + i), 0.0);  // empty row
  }
  if (c.dtype != DType::f64) return;
  const HostTensor g = testing::randn({c.T, c.H, c.D}, 5);
  HostTensor dq(DType::f64, {c.T, c.H, c.D}), dkv(DType::f64, {c.N, c.Hkv, c.D}), dsinks(DType::f64, {c.H});
  const TensorView dsv = dsinks.view();
  dsa_sparse_attention_bwd(params, q.view(), kv.view(), idx.view(), sp, g.view(), dq.view(), dkv.view(),
                           c.sinks ? &dsv : nullptr);
  const auto loss = [&] {
    HostTensor o(DType::f64, {c.T, c.H, c.D});
    dsa_sparse_attention_fwd(params, q.view(), kv.view(), idx.view(), sp, o.view());
    return testing::weighted_sum(o, g);
  };
  testing::expect_gradient_matches(q, dq, loss, "dq");
  testing::expect_gradient_matches(kv, dkv, loss, "dkv");
  if (c.sinks) testing::expect_gradient_matches(sinks, dsinks, loss, "dsinks");
}

INSTANTIATE_TEST_SUITE_P(Sweep, DsaSparseAttention,
                         ::testing::Values(AttentionCase{7, 4, 1, 8, 11, 5, true, DType::f64},
                                           AttentionCase{5, 4, 2, 6, 9, 3, true, DType::f64},
                                           AttentionCase{6, 2, 1, 4, 7, 13, false, DType::f64},
                                           AttentionCase{1, 3, 1, 5, 1, 1, true, DType::f64},
                                           AttentionCase{4, 2, 1, 4, 5, 0, true, DType::f64},
                                           AttentionCase{9, 4, 1, 8, 12, 6, true, DType::bf16},
                                           AttentionCase{9, 4, 4, 8, 12, 6, true, DType::f32}));

// HF's V4 mask for one layer, as the set of allowed kv_all rows of token t.
std::set<int64_t> hf_allowed(const std::vector<int64_t>& cu, int64_t t, int64_t window, int64_t m,
                             const std::vector<int64_t>* topk, int64_t K) {
  std::set<int64_t> rows;
  const int64_t T = cu.back();
  int64_t b = 0;
  while (cu[static_cast<size_t>(b) + 1] <= t) ++b;
  int64_t base = T;
  for (int64_t i = 0; i < b; ++i) base += m > 0 ? (cu[static_cast<size_t>(i) + 1] - cu[static_cast<size_t>(i)]) / m : 0;
  const int64_t first = cu[static_cast<size_t>(b)], n = cu[static_cast<size_t>(b) + 1] - first, pos = t - first;
  for (int64_t j = 0; j < n; ++j) {
    if (j <= pos && j > pos - window) rows.insert(first + j);  // causal AND sliding overlay
  }
  if (m == 0) return rows;
  for (int64_t w = 0; w < n / m; ++w) {
    const bool visible = w < (pos + 1) / m;  // HCA block bias
    bool selected = !topk;
    if (topk) {
      for (int64_t i = 0; i < K; ++i) selected |= (*topk)[static_cast<size_t>(t * K + i)] == w;
    }
    if ((topk && selected) || (!topk && visible)) rows.insert(base + w);
  }
  return rows;
}

struct ListCase {
  std::vector<int64_t> lengths;
  int64_t window, m, K;  // K = 0: no topk (HCA or sliding)
};

class DsaSparseIndices : public ::testing::TestWithParam<ListCase> {};

TEST_P(DsaSparseIndices, MatchHfMask) {
  const ListCase c = GetParam();
  std::vector<int64_t> cu = {0};
  for (int64_t n : c.lengths) cu.push_back(cu.back() + n);
  const int64_t T = cu.back();
  int64_t longest = 0;
  for (int64_t n : c.lengths) longest = std::max(longest, n);
  std::vector<int64_t> topk;
  if (c.K > 0) {
    // A valid indexer output: distinct visible entries first, then -1.
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t) {
        const int64_t visible = (t - cu[b] + 1) / c.m;
        for (int64_t i = 0; i < c.K; ++i)
          topk.push_back(i < visible ? (visible - 1 - 2 * i + 4 * visible) % visible : -1);
        std::set<int64_t> seen;
        for (int64_t i = 0; i < c.K; ++i) {
          int64_t& v = topk[static_cast<size_t>(t * c.K + i)];
          if (v >= 0 && !seen.insert(v).second) v = -1;
        }
      }
    }
  }
  const int64_t width = std::min(c.window, longest) + (c.m == 0 ? 0 : (c.K > 0 ? c.K : longest / c.m)) + 1;
  HostTensor lists(DType::i32, {T, 1, width});
  const HostTensor cu_t = testing::int_tensor(cu), topk_t = testing::int_tensor(topk, {T, c.K});
  const TensorView cuv = cu_t.view(), tkv = topk_t.view();
  dsa_sparse_indices({.sliding_window = c.window, .compress_ratio = c.m}, &cuv, c.K > 0 ? &tkv : nullptr, lists.view());
  for (int64_t t = 0; t < T; ++t) {
    std::set<int64_t> got;
    bool padding = false;
    for (int64_t w = 0; w < width; ++w) {
      const int64_t v = static_cast<int64_t>(lists.get(t * width + w));
      if (v < 0) {
        padding = true;
        continue;
      }
      EXPECT_FALSE(padding) << "entry after -1 padding at t " << t;
      EXPECT_TRUE(got.insert(v).second) << "repeated row " << v;
    }
    EXPECT_EQ(got, hf_allowed(cu, t, c.window, c.m, c.K > 0 ? &topk : nullptr, c.K)) << "t " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Sweep, DsaSparseIndices,
                         ::testing::Values(ListCase{{13}, 5, 0, 0}, ListCase{{0, 1, 9, 21}, 4, 4, 0},
                                           ListCase{{17, 6}, 3, 4, 3}, ListCase{{30}, 0, 8, 0},
                                           ListCase{{11, 1, 14}, 128, 2, 2}));

TEST(DsaSparseAttention, BadInputs) {
  HostTensor q(DType::f64, {3, 4, 8}), kv(DType::f64, {5, 2, 8}), out(DType::f64, {3, 4, 8});
  const HostTensor idx = testing::int_tensor(std::vector<int64_t>(3 * 2 * 2, 0), {3, 2, 2});
  HostTensor sinks(DType::f64, {4});
  const TensorView sv = sinks.view();
  const auto fwd = [&](const TensorView& qv, const TensorView& kvv, const TensorView& iv, const TensorView* s,
                       const TensorView& o) { dsa_sparse_attention_fwd({}, qv, kvv, iv, s, o); };
  expect_error(
      [&] {
        fwd(HostTensor(DType::f64, {3, 4}).view(), kv.view(), idx.view(), &sv, out.view());
      },
      {"q", "rank 3"});
  expect_error(
      [&] {
        fwd(q.view(), HostTensor(DType::f64, {5, 3, 8}).view(), idx.view(), &sv, out.view());
      },
      {"kv", "H_kv = 3", "H = 4"});
  expect_error(
      [&] {
        fwd(q.view(), HostTensor(DType::f64, {5, 2, 6}).view(), idx.view(), &sv, out.view());
      },
      {"kv", "[*, *, 8]", "[5, 2, 6]"});
  expect_error([&] { fwd(q.view(), kv.to(DType::f32).view(), idx.view(), &sv, out.view()); }, {"kv", "float32"});
  expect_error(
      [&] {
        fwd(q.view(), kv.view(), testing::int_tensor(std::vector<int64_t>(6, 0), {3, 1, 2}).view(), &sv, out.view());
      },
      {"indices", "[3, 2, *]", "[3, 1, 2]"});
  HostTensor bad_idx = idx;
  bad_idx.set(3, 5);
  expect_error([&] { fwd(q.view(), kv.view(), bad_idx.view(), &sv, out.view()); }, {"indices", "[0, 5)", "got 5"});
  bad_idx.set(3, -3);
  expect_error([&] { fwd(q.view(), kv.view(), bad_idx.view(), &sv, out.view()); }, {"indices", "-1", "got -3"});
  const HostTensor bad_sinks(DType::f64, {3});
  const TensorView bsv = bad_sinks.view();
  expect_error([&] { fwd(q.view(), kv.view(), idx.view(), &bsv, out.view()); }, {"sinks", "[4]", "[3]"});
  expect_error(
      [&] {
        fwd(q.view(), kv.view(), idx.view(), &sv, HostTensor(DType::bf16, {3, 4, 8}).view());
      },
      {"out", "float64", "bfloat16"});
  TensorView cuda_q = q.view();
  cuda_q.device = Device::cuda(0);
  expect_error([&] { fwd(cuda_q, kv.view(), idx.view(), &sv, out.view()); }, {"kv", "cuda:0", "cpu"});
  expect_error(
      [&] { dsa_sparse_attention_fwd({.softmax_scale = INFINITY}, q.view(), kv.view(), idx.view(), &sv, out.view()); },
      {"softmax_scale", "finite"});
  HostTensor dq(DType::f64, {3, 4, 8}), dkv(DType::f64, {5, 2, 8}), ds(DType::f64, {4});
  const TensorView dsv = ds.view();
  expect_error(
      [&] {
        dsa_sparse_attention_bwd({}, q.view(), kv.view(), idx.view(), nullptr, out.view(), dq.view(), dkv.view(), &dsv);
      },
      {"dsinks", "sinks is nullptr"});
  expect_error(
      [&] {
        dsa_sparse_attention_bwd({}, q.view(), kv.view(), idx.view(), &sv, out.view(), dq.view(),
                                 HostTensor(DType::f64, {4, 2, 8}).view(), &dsv);
      },
      {"dkv", "[5, 2, 8]", "[4, 2, 8]"});
  // Composition helper.
  HostTensor lists(DType::i64, {10, 4});
  expect_error([&] { dsa_sparse_indices({.sliding_window = -1}, nullptr, nullptr, lists.view()); },
               {"sliding_window", ">= 0", "-1"});
  expect_error([&] { dsa_sparse_indices({.sliding_window = 2, .compress_ratio = -4}, nullptr, nullptr, lists.view()); },
               {"compress_ratio", ">= 0"});
  expect_error([&] { dsa_sparse_indices({.sliding_window = 3, .compress_ratio = 4}, nullptr, nullptr, lists.view()); },
               {"indices", "width", "5", "got 4"});
  const HostTensor topk = testing::int_tensor(std::vector<int64_t>(10, 2), {10, 1});
  const TensorView tv = topk.view();
  expect_error([&] { dsa_sparse_indices({.sliding_window = 2, .compress_ratio = 0}, nullptr, &tv, lists.view()); },
               {"topk_indices", "compress_ratio is 0"});
  expect_error([&] { dsa_sparse_indices({.sliding_window = 2, .compress_ratio = 4}, nullptr, &tv, lists.view()); },
               {"topk_indices", "[0, 2)", "got 2"});
  expect_error(
      [&] {
        dsa_sparse_indices({}, nullptr, nullptr, HostTensor(DType::f32, {10, 4}).view());
      },
      {"indices", "int32/int64", "float32"});
  const HostTensor bad_cu = testing::int_tensor({0, 4, 9});
  const TensorView bcu = bad_cu.view();
  expect_error([&] { dsa_sparse_indices({.sliding_window = 2}, &bcu, nullptr, lists.view()); },
               {"cu_seqlens", "10", "9"});
}

}  // namespace
}  // namespace seqmix

namespace seqmix {
namespace {

// Gradients reduce in a fixed order (inverted index in query order), so they are bitwise equal
// whatever the thread count.
TEST(DsaSparseAttention, BackwardIndependentOfThreadCount) {
  const int64_t T = 13, H = 4, Hkv = 2, D = 8, N = 10, W = 7;
  const HostTensor q = testing::randn({T, H, D}, 1), kv = testing::randn({N, Hkv, D}, 2),
                   sinks = testing::randn({H}, 3);
  const HostTensor g = testing::randn({T, H, D}, 4);
  std::vector<int64_t> lists;
  for (int64_t i = 0; i < T * Hkv * W; ++i) lists.push_back((i * 7) % (N + 1) - 1);
  const HostTensor idx = testing::int_tensor(lists, {T, Hkv, W});
  const TensorView sv = sinks.view();
  HostTensor result[2][3];
  const char* threads[2] = {"1", "5"};
  const char* saved = std::getenv("SEQMIX_NUM_THREADS");
  const std::string previous = saved ? saved : "";
  for (int run = 0; run < 2; ++run) {
    setenv("SEQMIX_NUM_THREADS", threads[run], 1);
    result[run][0] = HostTensor(DType::f64, {T, H, D});
    result[run][1] = HostTensor(DType::f64, {N, Hkv, D});
    result[run][2] = HostTensor(DType::f64, {H});
    const TensorView dsv = result[run][2].view();
    dsa_sparse_attention_bwd({}, q.view(), kv.view(), idx.view(), &sv, g.view(), result[run][0].view(),
                             result[run][1].view(), &dsv);
  }
  if (saved) {
    setenv("SEQMIX_NUM_THREADS", previous.c_str(), 1);
  } else {
    unsetenv("SEQMIX_NUM_THREADS");
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(testing::max_abs_diff(result[0][i], result[1][i]), 0.0) << i;
}

}  // namespace
}  // namespace seqmix
