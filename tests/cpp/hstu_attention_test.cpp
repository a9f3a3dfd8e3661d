// HSTU attention: forward vs a dense brute force, hand-checked mask corners, column-range
// skipping vs the predicate, varlen == per-sequence, fp64 finite differences, golden parity
// with both peers' PyTorch references, storage dtypes, and bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/hstu/attention.h"
#include "seqmix/hstu.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;

// ---- the brute-force definition: a dense [n, n] mask written as the peers' tensor code ----

using DenseMask = std::vector<std::vector<bool>>;

// generative-recommenders `_get_valid_attn_mask` (ids, distances, eye) or, with SLA,
// TorchEasyRec's `build_sla_func_tensor` intervals decoded as `_decode_attn_func_to_mask`.
// num_targets < 0: not given.
DenseMask dense_mask(const HstuAttentionParams& p, int64_t n, int64_t num_targets) {
  DenseMask m(n, std::vector<bool>(n, false));
  if (p.sla_k1 > 0 || p.sla_k2 > 0) {
    const int64_t hb = std::max<int64_t>(n - std::max<int64_t>(num_targets, 0), 0);
    const int64_t k2 = std::max(p.sla_k2, p.contextual_seq_len);
    for (int64_t i = 0; i < n; ++i) {
      int64_t col_max0 = hb, col_min0 = hb, col_max1 = hb;
      if (i < hb) {
        col_max0 = std::min(i + 1, k2);
        col_min0 = std::max(i - p.sla_k1 + 1, k2);
        col_max1 = i + 1;
      }
      for (int64_t j = 0; j < n; ++j) m[i][j] = j < col_max0 || (j >= col_min0 && j < col_max1);
    }
    return m;
  }
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  int64_t max_ids = n;
  if (p.contextual_seq_len > 0) {
    for (auto& x : ids) x = std::max<int64_t>(x - p.contextual_seq_len + 1, 0);
    max_ids = max_ids - p.contextual_seq_len + 1;
  }
  if (num_targets >= 0) {
    max_ids -= num_targets;
    for (auto& x : ids) x = std::min(x, max_ids);
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int64_t dist = ids[i] - ids[j];
      if (!p.causal) dist = dist > 0 ? dist : -dist;
      bool valid = i == j || dist > 0;
      if (p.max_attn_len > 0) {
        if (p.min_full_attn_seq_len > 0) {
          valid = valid && (dist <= p.max_attn_len || ids[i] >= max_ids - p.min_full_attn_seq_len);
        } else {
          valid = valid && dist <= p.max_attn_len;
        }
      }
      if (p.contextual_seq_len > 0) valid = valid || (ids[i] == 0 && ids[j] < max_ids);
      m[i][j] = valid;
    }
  }
  return m;
}

struct Inputs {
  std::vector<int64_t> lengths;
  std::vector<int64_t> targets;  // empty: num_targets not given
  int64_t heads = 2, dqk = 4, dv = 3;
};

struct Batch {
  HostTensor q, k, v, seq_offsets, num_targets;
  bool has_targets = false;
  int64_t total = 0;
  const TensorView* targets_view() {
    targets_view_ = num_targets.view();
    return has_targets ? &targets_view_ : nullptr;
  }

 private:
  TensorView targets_view_;
};

Batch make_batch(const Inputs& in, uint64_t seed, DType dtype = DType::f64) {
  Batch b;
  std::vector<int64_t> offsets = {0};
  for (int64_t n : in.lengths) offsets.push_back(offsets.back() + n);
  b.total = offsets.back();
  b.q = testing::randn({b.total, in.heads, in.dqk}, seed, 1.0, dtype);
  b.k = testing::randn({b.total, in.heads, in.dqk}, seed + 1, 1.0, dtype);
  b.v = testing::randn({b.total, in.heads, in.dv}, seed + 2, 1.0, dtype);
  b.seq_offsets = testing::int_tensor(offsets, DType::i32);
  b.has_targets = !in.targets.empty();
  b.num_targets = testing::int_tensor(b.has_targets ? in.targets : std::vector<int64_t>(in.lengths.size(), 0));
  return b;
}

HostTensor run_fwd(const HstuAttentionParams& p, Batch& b) {
  HostTensor out(b.q.dtype(), {b.total, b.q.size(1), b.v.size(2)});
  hstu_attention_fwd(p, b.q.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), b.targets_view(), out.view());
  return out;
}

// o_i = sum_j M_ij silu(alpha q_i.k_j) / N v_j over every (i, j), no skipping.
HostTensor brute_force(const HstuAttentionParams& p, const Inputs& in, const Batch& b) {
  const int64_t H = in.heads, D = in.dqk, V = in.dv;
  const double scaling = static_cast<double>(p.scaling_seqlen == -1 ? p.max_seq_len : p.scaling_seqlen);
  HostTensor out(DType::f64, {b.total, H, V});
  int64_t start = 0;
  for (size_t s = 0; s < in.lengths.size(); ++s) {
    const int64_t n = in.lengths[s];
    const DenseMask m = dense_mask(p, n, in.targets.empty() ? -1 : in.targets[s]);
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double x = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            x += b.q.get(((start + i) * H + h) * D + d) * b.k.get(((start + j) * H + h) * D + d);
          }
          x *= p.alpha;
          const double weight = m[i][j] ? x / (1.0 + std::exp(-x)) / scaling : 0.0;
          for (int64_t e = 0; e < V; ++e) {
            const int64_t o = ((start + i) * H + h) * V + e;
            out.set(o, out.get(o) + weight * b.v.get(((start + j) * H + h) * V + e));
          }
        }
      }
    }
    start += n;
  }
  return out;
}

HstuAttentionParams make_params(int64_t max_seq_len) {
  HstuAttentionParams p;
  p.max_seq_len = max_seq_len;
  p.alpha = 0.5;
  return p;
}

struct MaskCase {
  const char* name;
  Inputs inputs;
  HstuAttentionParams params;
};

// Skewed lengths with empty and length-1 sequences; targets include 0 and whole-sequence.
const std::vector<int64_t> kLengths = {6, 0, 1, 9, 2, 4};
const std::vector<int64_t> kTargets = {2, 0, 1, 3, 2, 0};

std::vector<MaskCase> mask_cases() {
  std::vector<MaskCase> cases;
  auto add = [&](const char* name, bool targets, auto&& set) {
    HstuAttentionParams p = make_params(11);
    set(p);
    cases.push_back({name, {kLengths, targets ? kTargets : std::vector<int64_t>{}}, p});
  };
  for (bool targets : {false, true}) {
    add("causal", targets, [](auto&) {});
    add("scaling_seqlen", targets, [](auto& p) { p.scaling_seqlen = 3; });
    add("contextual", targets, [](auto& p) { p.contextual_seq_len = 2; });
    add("contextual_overflow", targets, [](auto& p) { p.contextual_seq_len = 5; });
    add("window", targets, [](auto& p) { p.max_attn_len = 2; });
    add("window_contextual", targets, [](auto& p) { p.max_attn_len = 1, p.contextual_seq_len = 3; });
    add("window_min_full", targets, [](auto& p) { p.max_attn_len = 1, p.min_full_attn_seq_len = 2; });
    add("window_min_full_contextual", targets,
        [](auto& p) { p.max_attn_len = 2, p.min_full_attn_seq_len = 1, p.contextual_seq_len = 2; });
    add("noncausal", targets, [](auto& p) { p.causal = false; });
    add("noncausal_window_contextual", targets,
        [](auto& p) { p.causal = false, p.max_attn_len = 2, p.contextual_seq_len = 2; });
    add("noncausal_window_min_full", targets,
        [](auto& p) { p.causal = false, p.max_attn_len = 1, p.min_full_attn_seq_len = 3; });
    add("sla", targets, [](auto& p) { p.sla_k1 = 2, p.sla_k2 = 1; });
    add("sla_k1_ge_length", targets, [](auto& p) { p.sla_k1 = 40; });
    add("sla_k2_0_contextual", targets, [](auto& p) { p.sla_k1 = 3, p.contextual_seq_len = 2; });
    add("sla_k2_ge_length", targets, [](auto& p) { p.sla_k1 = 1, p.sla_k2 = 40; });
    add("sla_k1_0", targets, [](auto& p) { p.sla_k2 = 3; });
    add("sla_contextual_gt_k2", targets, [](auto& p) { p.sla_k1 = 2, p.sla_k2 = 1, p.contextual_seq_len = 4; });
  }
  // One long sequence among very short ones.
  const std::vector<int64_t> skewed = {1, 29, 0, 2};
  const std::vector<int64_t> skewed_targets = {1, 4, 0, 0};
  auto add_skewed = [&](const char* name, auto&& set) {
    HstuAttentionParams p = make_params(30);
    set(p);
    cases.push_back({name, {skewed, skewed_targets}, p});
  };
  add_skewed("skewed_window_contextual", [](auto& p) { p.max_attn_len = 5, p.contextual_seq_len = 3; });
  add_skewed("skewed_sla", [](auto& p) { p.sla_k1 = 4, p.sla_k2 = 2, p.contextual_seq_len = 1; });
  return cases;
}

class HstuAttentionMask : public ::testing::TestWithParam<MaskCase> {};

std::string case_name(const ::testing::TestParamInfo<MaskCase>& info) {
  return std::string(info.param.name) + (info.param.inputs.targets.empty() ? "" : "_targets");
}

// Forward vs brute force, fp64: only summation order differs (tolerance 1e-13).
TEST_P(HstuAttentionMask, ForwardMatchesBruteForce) {
  const MaskCase& c = GetParam();
  Batch b = make_batch(c.inputs, 11);
  const HostTensor out = run_fwd(c.params, b);
  EXPECT_LT(testing::max_abs_diff(out, brute_force(c.params, c.inputs, b)), 1e-13);
}

// The skipped column ranges never hide an attended column; `exact` ranges and full_columns hold only attended
// ones; the row ranges of a key tile never hide an attending row.
TEST_P(HstuAttentionMask, ColumnRangesCoverTheMask) {
  const MaskCase& c = GetParam();
  for (size_t s = 0; s < c.inputs.lengths.size(); ++s) {
    const int64_t n = c.inputs.lengths[s];
    const int64_t targets = c.inputs.targets.empty() ? -1 : c.inputs.targets[s];
    const DenseMask m = dense_mask(c.params, n, targets);
    const cpu::HstuMask mask(c.params, n, targets);
    for (int64_t i = 0; i < n; ++i) {
      int64_t begin[2], end[2];
      bool exact = false;
      const int count = mask.column_ranges(i, begin, end, exact);
      int64_t full_begin = 0, full_end = 0;
      mask.full_columns(i, full_begin, full_end);
      for (int64_t j = 0; j < n; ++j) {
        bool inside = false;
        for (int r = 0; r < count; ++r) inside = inside || (j >= begin[r] && j < end[r]);
        ASSERT_EQ(mask.allowed(i, j), static_cast<bool>(m[i][j])) << "seq " << s << " (" << i << ", " << j << ")";
        if (m[i][j]) ASSERT_TRUE(inside) << "seq " << s << " (" << i << ", " << j << ") skipped";
        if (inside && exact) ASSERT_TRUE(m[i][j]) << "seq " << s << " (" << i << ", " << j << ") exact";
        if (j >= full_begin && j < full_end) ASSERT_TRUE(m[i][j]) << "seq " << s << " (" << i << ", " << j << ") full";
      }
    }
    // row_ranges of every key tile (widths 1, 3 and 8) hold every row attending one of its columns.
    for (int64_t width : {1, 3, 8}) {
      for (int64_t j0 = 0; j0 < n; j0 += width) {
        const int64_t j1 = std::min(j0 + width, n);
        int64_t begin[2], end[2];
        mask.row_ranges(j0, j1, begin, end);
        for (int64_t i = 0; i < n; ++i) {
          const bool inside = (i >= begin[0] && i < end[0]) || (i >= begin[1] && i < end[1]);
          for (int64_t j = j0; j < j1; ++j) {
            if (m[i][j])
              ASSERT_TRUE(inside) << "seq " << s << " row " << i << " of key tile [" << j0 << ", " << j1 << ")";
          }
        }
      }
    }
  }
}

// The batched result equals running each sequence alone (bit-exact: same loops, same order).
TEST_P(HstuAttentionMask, VarlenEqualsPerSequence) {
  const MaskCase& c = GetParam();
  Batch b = make_batch(c.inputs, 21);
  const HostTensor out = run_fwd(c.params, b);
  const int64_t H = c.inputs.heads, D = c.inputs.dqk, V = c.inputs.dv;
  int64_t start = 0;
  for (size_t s = 0; s < c.inputs.lengths.size(); ++s) {
    const int64_t n = c.inputs.lengths[s];
    Inputs one = c.inputs;
    one.lengths = {n};
    one.targets = c.inputs.targets.empty() ? std::vector<int64_t>{} : std::vector<int64_t>{c.inputs.targets[s]};
    Batch single = make_batch(one, 0);
    for (int64_t x = 0; x < n * H * D; ++x) {
      single.q.set(x, b.q.get(start * H * D + x));
      single.k.set(x, b.k.get(start * H * D + x));
    }
    for (int64_t x = 0; x < n * H * V; ++x) single.v.set(x, b.v.get(start * H * V + x));
    const HostTensor o = run_fwd(c.params, single);
    for (int64_t x = 0; x < n * H * V; ++x) ASSERT_EQ(o.get(x), out.get(start * H * V + x)) << "seq " << s;
    start += n;
  }
}

// Analytic dq, dk, dv vs fp64 central differences of sum(out * w) (atol 1e-8, rtol 1e-6).
TEST_P(HstuAttentionMask, BackwardMatchesFiniteDifferences) {
  MaskCase c = GetParam();
  c.inputs.lengths = {5, 1, 0, 4};
  c.inputs.targets = c.inputs.targets.empty() ? std::vector<int64_t>{} : std::vector<int64_t>{2, 1, 0, 1};
  c.params.max_seq_len = 6;
  Batch b = make_batch(c.inputs, 31);
  const HostTensor w = testing::randn({b.total, c.inputs.heads, c.inputs.dv}, 35);
  HostTensor dq(DType::f64, b.q.sizes()), dk(DType::f64, b.k.sizes()), dv(DType::f64, b.v.sizes());
  hstu_attention_bwd(c.params, b.q.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), b.targets_view(), w.view(),
                     dq.view(), dk.view(), dv.view());
  const auto loss = [&] { return testing::weighted_sum(run_fwd(c.params, b), w); };
  testing::expect_gradient_matches(b.q, dq, loss, "dq", 1e-8, 1e-6, 64);
  testing::expect_gradient_matches(b.k, dk, loss, "dk", 1e-8, 1e-6, 64);
  testing::expect_gradient_matches(b.v, dv, loss, "dv", 1e-8, 1e-6, 64);
}

INSTANTIATE_TEST_SUITE_P(Masks, HstuAttentionMask, ::testing::ValuesIn(mask_cases()), case_name);

// ---- hand-checked corners of the peers' masks (1 = attended) ----

std::vector<std::string> rows_of(const HstuAttentionParams& p, int64_t n, int64_t targets) {
  const cpu::HstuMask mask(p, n, targets);
  std::vector<std::string> rows;
  for (int64_t i = 0; i < n; ++i) {
    std::string r;
    for (int64_t j = 0; j < n; ++j) r += mask.allowed(i, j) ? '1' : '.';
    rows.push_back(r);
  }
  return rows;
}

using Rows = std::vector<std::string>;

TEST(HstuAttentionMaskCorners, TargetsSeeHistoryAndThemselves) {
  const HstuAttentionParams p = make_params(8);
  EXPECT_EQ(rows_of(p, 5, 2), (Rows{"1....", "11...", "111..", "1111.", "111.1"}));
}

TEST(HstuAttentionMaskCorners, ContextualRowsSeeTheWholeHistory) {
  HstuAttentionParams p = make_params(8);
  p.contextual_seq_len = 2;
  EXPECT_EQ(rows_of(p, 5, -1), (Rows{"11111", "11111", "111..", "1111.", "11111"}));
  // with targets the contextual rows stop at the history boundary
  EXPECT_EQ(rows_of(p, 5, 1), (Rows{"1111.", "1111.", "111..", "1111.",
                                    "1111"
                                    "1"}));
}

TEST(HstuAttentionMaskCorners, WindowCountsFromTheTargetBoundary) {
  HstuAttentionParams p = make_params(8);
  p.max_attn_len = 1;
  // ids 0 1 2 3 4 4: the targets (ids 4) see history id 3 and themselves
  EXPECT_EQ(rows_of(p, 6, 2), (Rows{"1.....", "11....", ".11...", "..11..", "...11.", "...1.1"}));
}

TEST(HstuAttentionMaskCorners, SlaTargetsSeeOnlyHistory) {
  HstuAttentionParams p = make_params(8);
  p.sla_k1 = 2;
  p.sla_k2 = 1;
  // history: global prefix {0} plus the window (i - 2, i]; targets: [0, 4), not themselves
  EXPECT_EQ(rows_of(p, 6, 2), (Rows{"1.....", "11....", "111...", "1.11..", "1111..", "1111.."}));
  // contextual prefix widens the global prefix: K2 = max(sla_k2, contextual_seq_len)
  p.contextual_seq_len = 2;
  EXPECT_EQ(rows_of(p, 5, -1), (Rows{"1....", "11...", "111..", "1111.", "11.11"}));
}

// ---- golden parity with the peers' PyTorch references (tests/golden/gen_hstu.py) ----

TEST(HstuAttentionGolden, MatchesPeerReferences) {
  std::vector<std::string> files;
  for (const std::string& f : testing::list_golden("hstu")) {
    if (f.rfind("hstu/attn_", 0) == 0) files.push_back(f);
  }
  ASSERT_FALSE(files.empty()) << "no tests/golden/hstu/attn_*.smxg: run tests/golden/gen_hstu.py";
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const testing::GoldenCase c = testing::load_golden(file);
    auto scalar = [&](const char* name) { return testing::golden_tensor(c, name).get(0); };
    HstuAttentionParams p;
    p.max_seq_len = static_cast<int64_t>(scalar("max_seq_len"));
    p.alpha = scalar("alpha");
    p.scaling_seqlen = static_cast<int64_t>(scalar("scaling_seqlen"));
    p.causal = scalar("causal") != 0.0;
    p.contextual_seq_len = static_cast<int64_t>(scalar("contextual_seq_len"));
    p.max_attn_len = static_cast<int64_t>(scalar("max_attn_len"));
    p.min_full_attn_seq_len = static_cast<int64_t>(scalar("min_full_attn_seq_len"));
    p.sla_k1 = static_cast<int64_t>(scalar("sla_k1"));
    p.sla_k2 = static_cast<int64_t>(scalar("sla_k2"));
    const HostTensor& q = testing::golden_tensor(c, "q");
    const HostTensor& k = testing::golden_tensor(c, "k");
    const HostTensor& v = testing::golden_tensor(c, "v");
    const HostTensor& offsets = testing::golden_tensor(c, "seq_offsets");
    const auto targets_it = c.find("num_targets");
    const TensorView targets_view = targets_it == c.end() ? TensorView{} : targets_it->second.view();
    const TensorView* targets = targets_it == c.end() ? nullptr : &targets_view;
    HostTensor out(DType::f64, v.sizes()), dq(DType::f64, q.sizes()), dk(DType::f64, k.sizes()),
        dv(DType::f64, v.sizes());
    hstu_attention_fwd(p, q.view(), k.view(), v.view(), offsets.view(), targets, out.view());
    hstu_attention_bwd(p, q.view(), k.view(), v.view(), offsets.view(), targets,
                       testing::golden_tensor(c, "dout").view(), dq.view(), dk.view(), dv.view());
    EXPECT_LT(testing::max_abs_diff(out, testing::golden_tensor(c, "out")), 1e-12);
    EXPECT_LT(testing::max_abs_diff(dq, testing::golden_tensor(c, "dq")), 1e-12);
    EXPECT_LT(testing::max_abs_diff(dk, testing::golden_tensor(c, "dk")), 1e-12);
    EXPECT_LT(testing::max_abs_diff(dv, testing::golden_tensor(c, "dv")), 1e-12);
  }
}

// Any strides are accepted: q, k, v as views into wider buffers give the contiguous result.
TEST(HstuAttentionLayout, StridedInputs) {
  const Inputs in{{5, 0, 3}, {1, 0, 3}};
  HstuAttentionParams p = make_params(6);
  p.max_attn_len = 2;
  Batch b = make_batch(in, 61);
  const HostTensor reference = run_fwd(p, b);
  // [L, H, 2 * D] buffers holding q in the odd channels, k and v likewise
  auto widen = [](const HostTensor& t) {
    HostTensor wide = testing::randn({t.size(0), t.size(1), 2 * t.size(2)}, 62);
    for (int64_t x = 0; x < t.numel(); ++x) wide.set(2 * x + 1, t.get(x));
    TensorView view = wide.view();
    view.sizes[2] = t.size(2);
    view.strides[2] = 2;
    return std::pair{std::move(wide), view};
  };
  auto [qw, qv] = widen(b.q);
  auto [kw, kv] = widen(b.k);
  auto [vw, vv] = widen(b.v);
  // the odd channels of the moved buffers
  qv.data = qw.data_as<double>() + 1;
  kv.data = kw.data_as<double>() + 1;
  vv.data = vw.data_as<double>() + 1;
  HostTensor out(DType::f64, reference.sizes());
  hstu_attention_fwd(p, qv, kv, vv, b.seq_offsets.view(), b.targets_view(), out.view());
  EXPECT_EQ(testing::max_abs_diff(out, reference), 0.0);
}

// A batch without tokens (all sequences empty, or no sequences) is valid and writes nothing.
TEST(HstuAttentionLayout, EmptyBatch) {
  const HstuAttentionParams p = make_params(4);
  for (const std::vector<int64_t>& offsets : {std::vector<int64_t>{0, 0, 0}, std::vector<int64_t>{0}}) {
    const HostTensor q(DType::f32, {0, 2, 4}), v(DType::f32, {0, 2, 3});
    HostTensor out(DType::f32, {0, 2, 3}), dq(DType::f32, {0, 2, 4}), dk(DType::f32, {0, 2, 4}),
        dv(DType::f32, {0, 2, 3});
    const HostTensor seq_offsets = testing::int_tensor(offsets);
    const HostTensor targets = testing::int_tensor(std::vector<int64_t>(offsets.size() - 1, 0));
    const TensorView targets_view = targets.view();
    hstu_attention_fwd(p, q.view(), q.view(), v.view(), seq_offsets.view(), &targets_view, out.view());
    hstu_attention_bwd(p, q.view(), q.view(), v.view(), seq_offsets.view(), &targets_view, v.view(), dq.view(),
                       dk.view(), dv.view());
    EXPECT_EQ(out.numel(), 0);
  }
}

// ---- storage dtypes: outputs in the input dtype, computed in double from the stored inputs ----

TEST(HstuAttentionDtypes, OutputsRoundTheDoubleResult) {
  const Inputs in{{7, 3}, {2, 1}};
  HstuAttentionParams p = make_params(8);
  p.contextual_seq_len = 1;
  p.max_attn_len = 3;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dtype));
    Batch low = make_batch(in, 41, dtype);
    Batch wide = low;
    wide.q = low.q.to(DType::f64);
    wide.k = low.k.to(DType::f64);
    wide.v = low.v.to(DType::f64);
    const HostTensor out = run_fwd(p, low);
    ASSERT_EQ(out.dtype(), dtype);
    const HostTensor reference = run_fwd(p, wide);
    for (int64_t x = 0; x < out.numel(); ++x) {
      ASSERT_EQ(out.get(x), HostTensor::from_f64({reference.get(x)}, {1}, dtype).get(0)) << x;
    }
    const HostTensor dout = testing::randn(out.sizes(), 43, 1.0, dtype);
    HostTensor dq(dtype, low.q.sizes()), dk(dtype, low.k.sizes()), dv(dtype, low.v.sizes());
    HostTensor dq64(DType::f64, low.q.sizes()), dk64(DType::f64, low.k.sizes()), dv64(DType::f64, low.v.sizes());
    hstu_attention_bwd(p, low.q.view(), low.k.view(), low.v.view(), low.seq_offsets.view(), low.targets_view(),
                       dout.view(), dq.view(), dk.view(), dv.view());
    const HostTensor dout64 = dout.to(DType::f64);
    hstu_attention_bwd(p, wide.q.view(), wide.k.view(), wide.v.view(), wide.seq_offsets.view(), wide.targets_view(),
                       dout64.view(), dq64.view(), dk64.view(), dv64.view());
    EXPECT_EQ(testing::max_abs_diff(dq, dq64.to(dtype)), 0.0);
    EXPECT_EQ(testing::max_abs_diff(dk, dk64.to(dtype)), 0.0);
    EXPECT_EQ(testing::max_abs_diff(dv, dv64.to(dtype)), 0.0);
  }
}

// ---- bad inputs: each names the argument ----

struct BadInputs : ::testing::Test {
  Inputs in{{3, 2}, {1, 0}};
  HstuAttentionParams p = make_params(4);
  Batch b = make_batch(in, 51);
  HostTensor out{DType::f64, {5, 2, 3}};
  void fwd() { fwd_with(b.q.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), b.targets_view(), out.view()); }
  void fwd_with(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& offsets,
                const TensorView* targets, const TensorView& o) {
    hstu_attention_fwd(p, q, k, v, offsets, targets, o);
  }
};

TEST_F(BadInputs, Tensors) {
  const HostTensor q2(DType::f64, {5, 8});
  expect_error([&] { fwd_with(q2.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), nullptr, out.view()); },
               {"q", "rank 3", "[5, 8]"});
  const HostTensor qi(DType::i32, {5, 2, 4});
  expect_error([&] { fwd_with(qi.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), nullptr, out.view()); },
               {"q", "int32"});
  // FP8 operands: the op quantizes itself (quant_mode), so pre-quantized ones are "not implemented".
  const HostTensor q8(DType::fp8_e5m2, {5, 2, 4});
  expect_error([&] { fwd_with(q8.view(), q8.view(), q8.view(), b.seq_offsets.view(), nullptr, q8.view()); },
               {"hstu_attention_fwd", "not implemented", "FP8", "float8_e5m2", "quant_mode"});
  const HostTensor k5(DType::f64, {5, 2, 5});
  expect_error([&] { fwd_with(b.q.view(), k5.view(), b.v.view(), b.seq_offsets.view(), nullptr, out.view()); },
               {"k", "[5, 2, 4]", "[5, 2, 5]"});
  const HostTensor k32(DType::f32, {5, 2, 4});
  expect_error([&] { fwd_with(b.q.view(), k32.view(), b.v.view(), b.seq_offsets.view(), nullptr, out.view()); },
               {"k", "dtype of q", "float32"});
  const HostTensor v6(DType::f64, {6, 2, 3});
  expect_error([&] { fwd_with(b.q.view(), b.k.view(), v6.view(), b.seq_offsets.view(), nullptr, out.view()); },
               {"v", "[6, 2, 3]"});
  const HostTensor o4(DType::f64, {5, 2, 4});
  expect_error([&] { fwd_with(b.q.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), nullptr, o4.view()); },
               {"out", "[5, 2, 3]", "[5, 2, 4]"});
  const HostTensor o32(DType::f32, {5, 2, 3});
  expect_error([&] { fwd_with(b.q.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), nullptr, o32.view()); },
               {"out", "dtype of q"});
  TensorView k_cuda = b.k.view();
  k_cuda.device = Device::cuda(0);
  expect_error([&] { fwd_with(b.q.view(), k_cuda, b.v.view(), b.seq_offsets.view(), nullptr, out.view()); },
               {"k", "cuda:0", "cpu"});
  TensorView q_cuda = b.q.view(), v_cuda = b.v.view(), s_cuda = b.seq_offsets.view(), o_cuda = out.view();
  q_cuda.device = v_cuda.device = s_cuda.device = o_cuda.device = Device::cuda(0);
  expect_error([&] { fwd_with(q_cuda, k_cuda, v_cuda, s_cuda, nullptr, o_cuda); }, {"hstu_attention_fwd", "CUDA"});
}

TEST_F(BadInputs, SeqOffsets) {
  auto with_offsets = [&](const HostTensor& offsets) {
    return [&] { fwd_with(b.q.view(), b.k.view(), b.v.view(), offsets.view(), nullptr, out.view()); };
  };
  const HostTensor f(DType::f32, {3});
  expect_error(with_offsets(f), {"seq_offsets", "int32/int64", "float32"});
  const HostTensor r2 = testing::int_tensor({0, 3, 5, 5}, {2, 2});
  expect_error(with_offsets(r2), {"seq_offsets", "rank 1"});
  expect_error(with_offsets(testing::int_tensor({1, 3, 5})), {"seq_offsets", "start at 0"});
  expect_error(with_offsets(testing::int_tensor({0, 4, 3, 5})), {"seq_offsets", "non-decreasing"});
  expect_error(with_offsets(testing::int_tensor({0, 3, 4})), {"seq_offsets", "5", "got 4"});
  expect_error(with_offsets(testing::int_tensor({0, 5})), {"seq_offsets", "length 5", "max_seq_len = 4"});
}

TEST_F(BadInputs, NumTargets) {
  auto with_targets = [&](const HostTensor& t) {
    return [&] {
      const TensorView view = t.view();
      fwd_with(b.q.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), &view, out.view());
    };
  };
  expect_error(with_targets(testing::int_tensor({1, 0, 0})), {"num_targets", "[2]", "[3]"});
  const HostTensor f(DType::f64, {2});
  expect_error(with_targets(f), {"num_targets", "float64"});
  expect_error(with_targets(testing::int_tensor({1, 3})), {"num_targets[1]", "[0, 2]", "got 3"});
  expect_error(with_targets(testing::int_tensor({-1, 0}, DType::i32)), {"num_targets[0]", "got -1"});
}

TEST_F(BadInputs, Params) {
  const auto check = [&](auto&& set, std::vector<std::string> needles) {
    p = make_params(4);
    set(p);
    expect_error([&] { fwd(); }, needles);
  };
  check([](auto& q) { q.max_seq_len = 0; }, {"max_seq_len", "got 0"});
  check([](auto& q) { q.scaling_seqlen = 0; }, {"scaling_seqlen", "got 0"});
  check([](auto& q) { q.scaling_seqlen = -2; }, {"scaling_seqlen", "got -2"});
  check([](auto& q) { q.alpha = NAN; }, {"alpha", "finite"});
  check([](auto& q) { q.max_attn_len = -1; }, {"max_attn_len", "got -1"});
  check([](auto& q) { q.contextual_seq_len = -2; }, {"contextual_seq_len", "got -2"});
  check([](auto& q) { q.min_full_attn_seq_len = -1; }, {"min_full_attn_seq_len", "got -1"});
  check([](auto& q) { q.sla_k1 = -1; }, {"sla_k1", "got -1"});
  check([](auto& q) { q.sla_k2 = -3; }, {"sla_k2", "got -3"});
  check([](auto& q) { q.sla_k1 = 2, q.causal = false; }, {"causal", "SLA"});
  check([](auto& q) { q.sla_k2 = 2, q.max_attn_len = 3; }, {"max_attn_len", "SLA", "got max_attn_len = 3"});
  check([](auto& q) { q.sla_k2 = 2, q.min_full_attn_seq_len = 1; }, {"min_full_attn_seq_len", "SLA"});
}

TEST_F(BadInputs, Backward) {
  const HostTensor dout = testing::randn({5, 2, 3}, 52);
  HostTensor dq(DType::f64, {5, 2, 4}), dk(DType::f64, {5, 2, 4}), dv(DType::f64, {5, 2, 3});
  const HostTensor bad(DType::f64, {5, 2, 2});
  auto bwd = [&](const HostTensor& o, const HostTensor& q_grad, const HostTensor& k_grad, const HostTensor& v_grad) {
    return [&] {
      hstu_attention_bwd(p, b.q.view(), b.k.view(), b.v.view(), b.seq_offsets.view(), nullptr, o.view(), q_grad.view(),
                         k_grad.view(), v_grad.view());
    };
  };
  expect_error(bwd(bad, dq, dk, dv), {"dout", "[5, 2, 3]"});
  expect_error(bwd(dout, bad, dk, dv), {"dq", "[5, 2, 4]"});
  expect_error(bwd(dout, dq, bad, dv), {"dk", "[5, 2, 4]"});
  expect_error(bwd(dout, dq, dk, bad), {"dv", "[5, 2, 3]"});
  p.sla_k1 = -1;
  expect_error(bwd(dout, dq, dk, dv), {"sla_k1", "got -1"});
}

}  // namespace
}  // namespace seqmix
