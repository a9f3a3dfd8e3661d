// HSTU attention truncation: the plan against a per-sequence brute force, the row gather and
// its gradient, golden parity with TorchEasyRec, bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>

#include "seqmix/hstu_truncation.h"
#include "common/dispatch.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;
using testing::int_tensor;

std::vector<int64_t> to_ints(const HostTensor& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = static_cast<int64_t>(t.get(i));
  return v;
}

std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> offsets{0};
  for (int64_t l : lengths) offsets.push_back(offsets.back() + l);
  return offsets;
}

struct Plan {
  HstuTruncationSizes sizes;
  std::vector<int64_t> new_lengths, new_seq_offsets, offsets_head, offsets_tail, gather_index, offsets_prefix,
      offsets_rest;
};

Plan run_plan(const std::vector<int64_t>& offsets, const std::optional<std::vector<int64_t>>& targets,
              const HstuTruncationParams& params, DType index_dtype = DType::i64) {
  const int64_t batch = static_cast<int64_t>(offsets.size()) - 1;
  const HostTensor seq = int_tensor(offsets, index_dtype);
  HostTensor nt;
  if (targets) nt = int_tensor(*targets, index_dtype);
  const TensorView nt_view = nt.view();
  const TensorView* nt_ptr = targets ? &nt_view : nullptr;
  Plan p;
  p.sizes = hstu_truncation_sizes(seq.view(), nt_ptr, params);
  HostTensor new_lengths(index_dtype, {batch}), new_offsets(index_dtype, {batch + 1}), head(index_dtype, {batch + 1}),
      tail(index_dtype, {batch + 1}), gather(DType::i64, {p.sizes.new_total}), prefix(index_dtype, {batch + 1}),
      rest(index_dtype, {batch + 1});
  const TensorView prefix_view = prefix.view(), rest_view = rest.view();
  hstu_truncation_plan(seq.view(), nt_ptr, params, new_lengths.view(), new_offsets.view(), head.view(), tail.view(),
                       gather.view(), &prefix_view, &rest_view);
  p.new_lengths = to_ints(new_lengths);
  p.new_seq_offsets = to_ints(new_offsets);
  p.offsets_head = to_ints(head);
  p.offsets_tail = to_ints(tail);
  p.gather_index = to_ints(gather);
  p.offsets_prefix = to_ints(prefix);
  p.offsets_rest = to_ints(rest);
  return p;
}

// Brute force from the layout [contextual | history | targets]: keep the prefix, the last
// min(U, tail) history rows and the targets; a sequence without history (U <= 0) stays whole.
std::vector<std::vector<int64_t>> brute_force_kept_rows(const std::vector<int64_t>& offsets,
                                                        const std::optional<std::vector<int64_t>>& targets,
                                                        int64_t tail, int64_t context) {
  std::vector<std::vector<int64_t>> kept;
  for (size_t b = 0; b + 1 < offsets.size(); ++b) {
    const int64_t s = offsets[b], e = offsets[b + 1];
    const int64_t t = targets ? (*targets)[b] : 0;
    const int64_t history = e - s - context - t;
    std::vector<int64_t> rows;
    if (history <= tail) {
      for (int64_t r = s; r < e; ++r) rows.push_back(r);
    } else {
      for (int64_t r = s; r < s + context; ++r) rows.push_back(r);
      for (int64_t r = s + context + history - tail; r < s + context + history; ++r) rows.push_back(r);
      for (int64_t r = e - t; r < e; ++r) rows.push_back(r);
    }
    kept.push_back(rows);
  }
  return kept;
}

struct SweepCase {
  std::vector<int64_t> lengths;
  std::optional<std::vector<int64_t>> targets;
};

TEST(HstuTruncation, PlanMatchesPerSequenceBruteForce) {
  const std::vector<SweepCase> cases = {
      {{7, 12, 5, 20, 9}, std::vector<int64_t>{1, 2, 0, 3, 2}},
      {{3, 1, 2, 11}, std::vector<int64_t>{3, 1, 0, 5}},  // sequences shorter than prefix + tail + targets
      {{9, 13, 4}, std::nullopt},                         // listwise: no targets
      {{5, 5, 6, 17}, std::vector<int64_t>{9, 0, 1, 2}},  // num_targets > length keeps the sequence whole
  };
  for (const SweepCase& c : cases) {
    for (int64_t tail : {0, 1, 3, 7, 100}) {
      for (int64_t context : {0, 1, 2}) {
        if (context > *std::min_element(c.lengths.begin(), c.lengths.end())) continue;  // rejected, see BadInputs
        const std::vector<int64_t> offsets = offsets_of(c.lengths);
        SCOPED_TRACE(::testing::Message() << "tail " << tail << " context " << context << " lengths " << c.lengths.size()
                                          << " targets " << c.targets.has_value());
        const Plan p = run_plan(offsets, c.targets, {tail, context});
        const auto kept = brute_force_kept_rows(offsets, c.targets, tail, context);
        std::vector<int64_t> gather;
        int64_t max_len = 0, dropped = 0;
        for (size_t b = 0; b < kept.size(); ++b) {
          const int64_t length = offsets[b + 1] - offsets[b];
          const int64_t kept_len = static_cast<int64_t>(kept[b].size());
          EXPECT_EQ(p.new_lengths[b], kept_len);
          EXPECT_EQ(p.new_seq_offsets[b + 1] - p.new_seq_offsets[b], kept_len);
          EXPECT_EQ(p.offsets_head[b + 1] - p.offsets_head[b], length - kept_len);
          EXPECT_EQ(p.offsets_tail[b + 1] - p.offsets_tail[b], kept_len - context);
          EXPECT_EQ(p.offsets_prefix[b + 1], static_cast<int64_t>(b + 1) * context);
          EXPECT_EQ(p.offsets_rest[b + 1], offsets[b + 1] - static_cast<int64_t>(b + 1) * context);
          gather.insert(gather.end(), kept[b].begin(), kept[b].end());
          max_len = std::max(max_len, kept_len);
          dropped += length - kept_len;
        }
        EXPECT_EQ(p.gather_index, gather);
        EXPECT_EQ(p.sizes.new_total, static_cast<int64_t>(gather.size()));
        EXPECT_EQ(p.sizes.new_max_seq_len, max_len);
        EXPECT_EQ(p.sizes.total_dropped, dropped);
        EXPECT_EQ(p.sizes.total_kept, static_cast<int64_t>(gather.size()) - static_cast<int64_t>(kept.size()) * context);
        EXPECT_EQ(p.sizes.total_prefix, static_cast<int64_t>(kept.size()) * context);
        EXPECT_EQ(p.sizes.total_rest, context > 0 ? offsets.back() - static_cast<int64_t>(kept.size()) * context : 0);
      }
    }
  }
}

TEST(HstuTruncation, EdgeCases) {
  // Empty and length-1 sequences, tail 0: only targets survive of a context-free sequence.
  Plan p = run_plan({0, 0, 1, 1, 6}, std::vector<int64_t>{0, 0, 0, 2}, {0, 0}, DType::i32);
  EXPECT_EQ(p.new_lengths, (std::vector<int64_t>{0, 0, 0, 2}));
  EXPECT_EQ(p.gather_index, (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(p.sizes.new_max_seq_len, 2);
  // A batch without sequences.
  p = run_plan({0}, std::vector<int64_t>{}, {3, 0});
  EXPECT_EQ(p.sizes.new_total, 0);
  EXPECT_EQ(p.sizes.new_max_seq_len, 0);
  EXPECT_TRUE(p.new_lengths.empty());
  // Sequence exactly the prefix: kept whole.
  p = run_plan({0, 2, 7}, std::nullopt, {1, 2});
  EXPECT_EQ(p.gather_index, (std::vector<int64_t>{0, 1, 2, 3, 6}));
}

TEST(HstuTruncation, GatherRowsForwardBackward) {
  const std::vector<int64_t> offsets = offsets_of({6, 1, 9, 0, 4});
  const Plan p = run_plan(offsets, std::vector<int64_t>{1, 1, 2, 0, 1}, {2, 0});
  const int64_t rows = offsets.back(), kept = p.sizes.new_total;
  const HostTensor index = int_tensor(p.gather_index);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    const HostTensor x = testing::randn({rows, 2, 3}, 11, 1.0, dtype);
    HostTensor y(dtype, {kept, 2, 3});
    jagged_gather_rows_fwd(x.view(), index.view(), y.view());
    for (int64_t i = 0; i < kept; ++i) {
      for (int64_t c = 0; c < 6; ++c) ASSERT_EQ(y.get(i * 6 + c), x.get(p.gather_index[static_cast<size_t>(i)] * 6 + c));
    }
  }
  // Gradient by finite differences, with a repeated index (a general gather accumulates).
  HostTensor x = testing::randn({rows, 3}, 12);
  std::vector<int64_t> general = p.gather_index;
  general.push_back(p.gather_index[0]);
  general.push_back(rows - 1);
  const HostTensor general_index = int_tensor(general, DType::i32);
  const int64_t out_rows = static_cast<int64_t>(general.size());
  const HostTensor w = testing::randn({out_rows, 3}, 13);
  HostTensor dx(DType::f64, {rows, 3});
  jagged_gather_rows_bwd(w.view(), general_index.view(), dx.view());
  auto loss = [&] {
    HostTensor y(DType::f64, {out_rows, 3});
    jagged_gather_rows_fwd(x.view(), general_index.view(), y.view());
    return testing::weighted_sum(y, w);
  };
  testing::expect_gradient_matches(x, dx, loss, "dx", 1e-8, 1e-7, 64);
  // Rows never gathered get exactly zero.
  for (int64_t r = 0; r < rows; ++r) {
    if (std::find(general.begin(), general.end(), r) != general.end()) continue;
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(dx.get(r * 3 + c), 0.0);
  }
}

TEST(HstuTruncationGolden, MatchesTorchEasyRec) {
  std::vector<std::string> files;
  for (const std::string& f : testing::list_golden("hstu_extras")) {
    if (f.find("/truncation_") != std::string::npos) files.push_back(f);
  }
  ASSERT_FALSE(files.empty()) << "no truncation golden files under tests/golden/hstu_extras";
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const testing::GoldenCase c = testing::load_golden(file);
    const std::vector<int64_t> offsets = to_ints(testing::golden_tensor(c, "seq_offsets"));
    std::optional<std::vector<int64_t>> targets;
    if (c.count("num_targets")) targets = to_ints(c.at("num_targets"));
    const HstuTruncationParams params{static_cast<int64_t>(testing::golden_tensor(c, "truncate_tail_len").get(0)),
                                      static_cast<int64_t>(testing::golden_tensor(c, "contextual_seq_len").get(0))};
    const Plan p = run_plan(offsets, targets, params);
    EXPECT_EQ(p.new_lengths, to_ints(testing::golden_tensor(c, "new_lengths")));
    EXPECT_EQ(p.new_seq_offsets, to_ints(testing::golden_tensor(c, "new_seq_offsets")));
    EXPECT_EQ(p.offsets_head, to_ints(testing::golden_tensor(c, "offsets_head")));
    EXPECT_EQ(p.offsets_tail, to_ints(testing::golden_tensor(c, "offsets_tail")));
    if (c.count("offsets_prefix")) {
      EXPECT_EQ(p.offsets_prefix, to_ints(c.at("offsets_prefix")));
      EXPECT_EQ(p.offsets_rest, to_ints(c.at("offsets_rest")));
    }
    EXPECT_EQ(p.sizes.new_max_seq_len, testing::golden_tensor(c, "new_max_seq_len").get(0));
    EXPECT_EQ(p.sizes.total_dropped, testing::golden_tensor(c, "total_dropped").get(0));
    EXPECT_EQ(p.sizes.total_kept, testing::golden_tensor(c, "total_kept").get(0));
    EXPECT_EQ(p.sizes.total_prefix, testing::golden_tensor(c, "total_prefix").get(0));
    EXPECT_EQ(p.sizes.total_rest, testing::golden_tensor(c, "total_rest").get(0));

    const HostTensor& x = testing::golden_tensor(c, "x");
    const HostTensor& y_ref = testing::golden_tensor(c, "y");
    const HostTensor& dy = testing::golden_tensor(c, "dy");
    const HostTensor& dx_ref = testing::golden_tensor(c, "dx");
    const HostTensor index = int_tensor(p.gather_index);
    ASSERT_EQ(y_ref.size(0), p.sizes.new_total);
    HostTensor y(DType::f64, y_ref.sizes()), dx(DType::f64, x.sizes());
    jagged_gather_rows_fwd(x.view(), index.view(), y.view());
    jagged_gather_rows_bwd(dy.view(), index.view(), dx.view());
    EXPECT_EQ(testing::max_abs_diff(y, y_ref), 0.0);
    EXPECT_LE(testing::max_abs_diff(dx, dx_ref), 1e-12);
  }
}

TEST(HstuTruncation, GatherIndexPaddedPastNewTotalWithMinusOne) {
  const HostTensor seq = int_tensor({0, 3, 7});
  const HostTensor nt = int_tensor({1, 1});
  const TensorView nt_view = nt.view();
  const HstuTruncationParams params{1, 1};  // keeps C = 1, one history token, one target
  HostTensor nl(DType::i64, {2}), no(DType::i64, {3}), oh(DType::i64, {3}), ot(DType::i64, {3}), gi(DType::i64, {7});
  hstu_truncation_plan(seq.view(), &nt_view, params, nl.view(), no.view(), oh.view(), ot.view(), gi.view());
  const std::vector<int64_t> expected = {0, 1, 2, 3, 5, 6, -1};
  for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(gi.get(i), expected[static_cast<size_t>(i)]) << i;
  EXPECT_EQ(no.get(2), 6);

  const HostTensor x = testing::randn({7, 3}, 2);
  HostTensor y(DType::f64, {7, 3});
  jagged_gather_rows_fwd(x.view(), gi.view(), y.view());
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_EQ(y.get(4 * 3 + c), x.get(5 * 3 + c));
    EXPECT_EQ(y.get(6 * 3 + c), 0.0);  // the padding row
  }
  HostTensor dx(DType::f64, {7, 3});
  jagged_gather_rows_bwd(y.view(), gi.view(), dx.view());
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_EQ(dx.get(4 * 3 + c), 0.0);  // row 4 was dropped
    EXPECT_EQ(dx.get(6 * 3 + c), x.get(6 * 3 + c));
  }
}

TEST(HstuTruncation, BadInputs) {
  const HostTensor seq = int_tensor({0, 3, 7});
  const HostTensor nt = int_tensor({1, 1});
  const TensorView nt_view = nt.view();
  const HstuTruncationParams params{2, 1};
  expect_error([&] { hstu_truncation_sizes(seq.view(), &nt_view, {-1, 0}); }, {"truncate_tail_len", ">= 0", "-1"});
  expect_error([&] { hstu_truncation_sizes(seq.view(), &nt_view, {1, -2}); }, {"contextual_seq_len", ">= 0", "-2"});
  expect_error([&] { hstu_truncation_sizes(int_tensor({0, 5, 3}).view(), &nt_view, params); },
               {"seq_offsets", "non-decreasing"});
  expect_error([&] { hstu_truncation_sizes(int_tensor({1, 3, 7}).view(), &nt_view, params); }, {"seq_offsets", "start at 0"});
  const HostTensor fseq(DType::f32, {3});
  expect_error([&] { hstu_truncation_sizes(fseq.view(), &nt_view, params); }, {"seq_offsets", "int32/int64", "float32"});
  const HostTensor nt3 = int_tensor({1, 1, 1});
  const TensorView nt3_view = nt3.view();
  expect_error([&] { hstu_truncation_sizes(seq.view(), &nt3_view, params); }, {"num_targets", "[2]", "[3]"});
  const HostTensor nt_neg = int_tensor({1, -1});
  const TensorView nt_neg_view = nt_neg.view();
  expect_error([&] { hstu_truncation_sizes(seq.view(), &nt_neg_view, params); }, {"num_targets[1]", ">= 0", "-1"});
  expect_error([&] { hstu_truncation_sizes(seq.view(), &nt_view, {2, 4}); },
               {"seq_offsets", "sequence 0", "length 3", "contextual_seq_len = 4"});
  TensorView cuda_seq = seq.view();
  cuda_seq.device = Device::cuda(0);
  // A host pointer labelled CUDA may only be fed to a build without the CUDA backend.
  if (!dispatch::built_with_cuda()) {
    expect_error([&] { hstu_truncation_sizes(cuda_seq, nullptr, params); }, {"hstu_truncation_sizes"});
  }
  expect_error([&] { hstu_truncation_sizes(cuda_seq, &nt_view, params); }, {"num_targets", "cuda:0", "cpu"});

  HostTensor nl(DType::i64, {2}), no(DType::i64, {3}), oh(DType::i64, {3}), ot(DType::i64, {3}), gi(DType::i64, {7});
  auto plan = [&](const TensorView& new_lengths, const TensorView& gather) {
    hstu_truncation_plan(seq.view(), &nt_view, params, new_lengths, no.view(), oh.view(), ot.view(), gather);
  };
  expect_error([&] { plan(HostTensor(DType::i64, {3}).view(), gi.view()); }, {"new_lengths", "[2]", "[3]"});
  expect_error([&] { plan(HostTensor(DType::f32, {2}).view(), gi.view()); }, {"new_lengths", "float32"});
  expect_error([&] { plan(nl.view(), HostTensor(DType::i32, {7}).view()); }, {"gather_index", "int64", "int32"});
  expect_error([&] { plan(nl.view(), HostTensor(DType::i64, {6}).view()); }, {"gather_index", "at least new_total = 7", "[6]"});
  TensorView cuda_gather = gi.view();
  cuda_gather.device = Device::cuda(0);
  expect_error([&] { plan(nl.view(), cuda_gather); }, {"gather_index", "cuda:0", "cpu"});

  const HostTensor x = testing::randn({7, 2}, 1);
  const HostTensor idx = int_tensor({0, 6, 3});
  HostTensor y(DType::f64, {3, 2});
  expect_error([&] { jagged_gather_rows_fwd(x.view(), int_tensor({0, 7, 3}).view(), y.view()); },
               {"gather_index[1]", "[-1, 7)", "7"});
  expect_error([&] { jagged_gather_rows_fwd(x.view(), int_tensor({0, -2, 3}).view(), y.view()); },
               {"gather_index[1]", "-2"});
  expect_error([&] { jagged_gather_rows_fwd(x.view(), idx.view(), HostTensor(DType::f64, {3, 3}).view()); },
               {"y", "[3, 2]", "[3, 3]"});
  expect_error([&] { jagged_gather_rows_fwd(x.view(), idx.view(), HostTensor(DType::f32, {3, 2}).view()); },
               {"y", "float64", "float32"});
  expect_error([&] { jagged_gather_rows_fwd(x.view(), HostTensor(DType::f32, {3}).view(), y.view()); },
               {"gather_index", "float32"});
  expect_error([&] { jagged_gather_rows_fwd(HostTensor(DType::i32, {7, 2}).view(), idx.view(), y.view()); },
               {"x", "int32"});
  TensorView cuda_x = x.view();
  cuda_x.device = Device::cuda(0);
  expect_error([&] { jagged_gather_rows_fwd(cuda_x, idx.view(), y.view()); }, {"gather_index", "cuda:0", "cpu"});
  TensorView cuda_y = y.view();
  cuda_y.device = Device::cuda(0);
  HostTensor cuda_idx_host = int_tensor({0, 6, 3});
  TensorView cuda_idx = cuda_idx_host.view();
  cuda_idx.device = Device::cuda(0);
  if (!dispatch::built_with_cuda()) {
    expect_error([&] { jagged_gather_rows_fwd(cuda_x, cuda_idx, cuda_y); }, {"jagged_gather_rows_fwd"});
  }
  HostTensor dx(DType::f64, {7, 2});
  expect_error([&] { jagged_gather_rows_bwd(HostTensor(DType::f64, {2, 2}).view(), idx.view(), dx.view()); },
               {"dy", "[3, 2]", "[2, 2]"});
  expect_error([&] { jagged_gather_rows_bwd(y.view(), int_tensor({0, 9, 3}).view(), dx.view()); },
               {"gather_index[1]", "[-1, 7)", "dx"});
}

}  // namespace
}  // namespace seqmix
