// CUDA attention truncation (plan on the device + jagged row gather) against the CPU reference.
// Integer outputs must be equal; the gather moves bits, so its forward is bit-exact, and its
// backward is exact too because a plan's index never repeats (each dx element receives at most
// one addition onto zero).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "seqmix/hstu_truncation.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::int_tensor;

struct PlanCase {
  std::string name;
  int64_t batch;
  int64_t max_len;
  int64_t context;
  int64_t tail_len;
  bool with_targets;
  DType index_dtype;
};

// Offsets with empty, length-1 and long sequences mixed in; every length >= C (the CPU plan's
// precondition) and targets sometimes larger than the history (nothing dropped).
void make_inputs(const PlanCase& c, HostTensor& offsets, HostTensor& targets) {
  std::mt19937_64 rng(c.batch * 131 + c.max_len);
  std::vector<int64_t> off = {0}, nt;
  for (int64_t b = 0; b < c.batch; ++b) {
    int64_t length = static_cast<int64_t>(rng() % static_cast<uint64_t>(c.max_len + 1));
    if (b % 7 == 3) length = 0;
    if (b % 11 == 5) length = 1;
    length = std::max(length, c.context);
    off.push_back(off.back() + length);
    nt.push_back(static_cast<int64_t>(rng() % 9));
  }
  offsets = int_tensor(off, c.index_dtype);
  targets = int_tensor(nt, c.index_dtype);
}

class HstuTruncationCuda : public ::testing::TestWithParam<PlanCase> {};

TEST_P(HstuTruncationCuda, PlanAndGatherMatchCpu) {
  SEQMIX_REQUIRE_CUDA();
  const PlanCase c = GetParam();
  HostTensor offsets, targets;
  make_inputs(c, offsets, targets);
  const TensorView targets_view = targets.view();
  const TensorView* nt = c.with_targets ? &targets_view : nullptr;
  const HstuTruncationParams params{c.tail_len, c.context};
  const int64_t rows = offsets.get(c.batch);
  const int64_t capacity = rows + 3;  // a bound the caller knows without a sync

  HostTensor nl(c.index_dtype, {c.batch}), no(c.index_dtype, {c.batch + 1}), oh(c.index_dtype, {c.batch + 1}),
      ot(c.index_dtype, {c.batch + 1}), op(c.index_dtype, {c.batch + 1}), orest(c.index_dtype, {c.batch + 1}),
      gi(DType::i64, {capacity});
  const TensorView op_view = op.view(), orest_view = orest.view();
  hstu_truncation_plan(offsets.view(), nt, params, nl.view(), no.view(), oh.view(), ot.view(), gi.view(), &op_view,
                       &orest_view);

  CudaTensor d_off = CudaTensor::from_host(offsets), d_nt = CudaTensor::from_host(targets);
  CudaTensor d_nl(c.index_dtype, {c.batch}), d_no(c.index_dtype, {c.batch + 1}), d_oh(c.index_dtype, {c.batch + 1}),
      d_ot(c.index_dtype, {c.batch + 1}), d_op(c.index_dtype, {c.batch + 1}), d_or(c.index_dtype, {c.batch + 1}),
      d_gi(DType::i64, {capacity});
  const TensorView d_nt_view = d_nt.view(), d_op_view = d_op.view(), d_or_view = d_or.view();
  hstu_truncation_plan(d_off.view(), c.with_targets ? &d_nt_view : nullptr, params, d_nl.view(), d_no.view(),
                       d_oh.view(), d_ot.view(), d_gi.view(), &d_op_view, &d_or_view);
  const HstuTruncationSizes sizes = hstu_truncation_sizes(d_off.view(), c.with_targets ? &d_nt_view : nullptr, params);
  cuda_synchronize();
  EXPECT_EQ(sizes.new_total, no.get(c.batch));

  const std::pair<const HostTensor*, const CudaTensor*> pairs[] = {{&nl, &d_nl}, {&no, &d_no}, {&oh, &d_oh},
                                                                   {&ot, &d_ot}, {&op, &d_op}, {&orest, &d_or},
                                                                   {&gi, &d_gi}};
  int which = 0;
  for (const auto& [host, device] : pairs) {
    const HostTensor got = device->to_host();
    for (int64_t i = 0; i < host->numel(); ++i) ASSERT_EQ(got.get(i), host->get(i)) << "output " << which << " [" << i << "]";
    ++which;
  }

  for (const DType dtype : {DType::bf16, DType::f16, DType::f32, DType::f64}) {
    for (const int64_t width : {int64_t{1}, int64_t{3}, int64_t{128}}) {
      const HostTensor x = testing::randn({rows, width}, 7, 1.0, dtype);
      HostTensor y(dtype, {capacity, width}), dx(dtype, {rows, width});
      jagged_gather_rows_fwd(x.view(), gi.view(), y.view());
      jagged_gather_rows_bwd(y.view(), gi.view(), dx.view());
      CudaTensor d_x = CudaTensor::from_host(x), d_y(dtype, {capacity, width}), d_dx(dtype, {rows, width});
      jagged_gather_rows_fwd(d_x.view(), d_gi.view(), d_y.view());
      jagged_gather_rows_bwd(d_y.view(), d_gi.view(), d_dx.view());
      cuda_synchronize();
      const HostTensor got_y = d_y.to_host(), got_dx = d_dx.to_host();
      for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(got_y.get(i), y.get(i)) << dtype_name(dtype) << " y " << i;
      for (int64_t i = 0; i < dx.numel(); ++i) ASSERT_EQ(got_dx.get(i), dx.get(i)) << dtype_name(dtype) << " dx " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, HstuTruncationCuda,
    ::testing::Values(PlanCase{"empty_batch", 0, 8, 0, 2, true, DType::i64},
                      PlanCase{"small_no_context", 9, 12, 0, 3, true, DType::i64},
                      PlanCase{"context_targets_i32", 37, 40, 4, 5, true, DType::i32},
                      PlanCase{"no_targets", 37, 40, 2, 0, false, DType::i64},
                      PlanCase{"batch_over_one_scan_tile", 2500, 64, 3, 16, true, DType::i64},
                      PlanCase{"long_sequences", 4, 20000, 8, 4096, true, DType::i64}),
    [](const ::testing::TestParamInfo<PlanCase>& info) { return info.param.name; });

TEST(HstuTruncationCuda, OutOfRangeIndexGivesNanRowsNotAFault) {
  SEQMIX_REQUIRE_CUDA();
  const HostTensor x = testing::randn({4, 2}, 3, 1.0, DType::bf16);
  CudaTensor d_x = CudaTensor::from_host(x), d_idx = CudaTensor::from_host(int_tensor({3, 9, -1, -5}));
  CudaTensor d_y(DType::bf16, {4, 2});
  jagged_gather_rows_fwd(d_x.view(), d_idx.view(), d_y.view());
  cuda_synchronize();
  const HostTensor y = d_y.to_host();
  EXPECT_EQ(y.get(0), x.get(6));
  EXPECT_TRUE(std::isnan(y.get(2)) && std::isnan(y.get(3)));
  EXPECT_EQ(y.get(4), 0.0);
  EXPECT_TRUE(std::isnan(y.get(6)));
}

TEST(HstuTruncationCuda, RejectsLayoutsTheKernelsCannotTake) {
  SEQMIX_REQUIRE_CUDA();
  const HostTensor x = testing::randn({4, 2}, 3, 1.0, DType::f32);
  CudaTensor d_x = CudaTensor::from_host(x), d_idx32 = CudaTensor::from_host(int_tensor({0, 1}, DType::i32));
  CudaTensor d_y(DType::f32, {2, 2}), d_idx = CudaTensor::from_host(int_tensor({0, 1}));
  testing::expect_error([&] { jagged_gather_rows_fwd(d_x.view(), d_idx32.view(), d_y.view()); },
                        {"gather_index", "int64", "int32"});
  TensorView strided = d_x.view();
  strided.sizes[0] = 2;
  strided.strides[0] = 4;
  testing::expect_error([&] { jagged_gather_rows_fwd(strided, d_idx.view(), d_y.view()); }, {"x", "contiguous"});
  testing::expect_error([&] { jagged_gather_rows_fwd(x.view(), d_idx.view(), d_y.view()); }, {"cuda:0", "cpu"});
  const HostTensor bad = int_tensor({0, 5, 3});
  CudaTensor d_bad = CudaTensor::from_host(bad);
  testing::expect_error([&] { hstu_truncation_sizes(d_bad.view(), nullptr, {1, 0}); },
                        {"seq_offsets", "non-decreasing"});
}

}  // namespace
}  // namespace seqmix
