// CUDA interleaved partial RoPE against the CPU reference (fp64 math on the same stored
// inputs). The kernel computes in fp32 and rounds once to the output dtype, so the bound is
// one ulp of the output dtype relative to the magnitude, plus fp32 rounding of the products.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "seqmix/dsa.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::randn;

struct RopeCase {
  int64_t tokens, heads, head_dim, rope_dim, table_rows;
  DType dtype;
  bool with_positions;
  bool inverse;
};

double ulp_bound(DType dtype) {
  switch (dtype) {
    case DType::bf16: return std::ldexp(1.0, -7);
    case DType::f16: return std::ldexp(1.0, -10);
    default: return 1e-6;  // fp32 products and sums
  }
}

class DsaRopeCuda : public ::testing::TestWithParam<RopeCase> {};

TEST_P(DsaRopeCuda, MatchesCpuReference) {
  SEQMIX_REQUIRE_CUDA();
  const RopeCase c = GetParam();
  const HostTensor x = randn({c.tokens, c.heads, c.head_dim}, 11, 1.0, c.dtype);
  HostTensor positions = HostTensor(DType::i64, {c.tokens});
  for (int64_t t = 0; t < c.tokens; ++t) positions.data_as<int64_t>()[t] = (t * 7 + 3) % c.table_rows;
  HostTensor cos(DType::f32, {c.table_rows, c.rope_dim / 2});
  HostTensor sin(DType::f32, {c.table_rows, c.rope_dim / 2});
  HostTensor table_positions(DType::i64, {c.table_rows});
  for (int64_t r = 0; r < c.table_rows; ++r) table_positions.data_as<int64_t>()[r] = r;
  DsaRopeTableParams table;
  table.rope_dim = c.rope_dim;
  dsa_rope_cos_sin(table, table_positions.view(), cos.view(), sin.view());

  const DsaRopeParams params{c.inverse};
  const TensorView positions_view = positions.view();
  HostTensor expected(c.dtype, {c.tokens, c.heads, c.head_dim});
  dsa_rope_fwd(params, x.view(), cos.view(), sin.view(), c.with_positions ? &positions_view : nullptr, expected.view());

  CudaTensor dx = CudaTensor::from_host(x), dcos = CudaTensor::from_host(cos), dsin = CudaTensor::from_host(sin);
  CudaTensor dpos = CudaTensor::from_host(positions);
  CudaTensor dout(c.dtype, {c.tokens, c.heads, c.head_dim});
  const TensorView dpos_view = dpos.view();
  dsa_rope_fwd(params, dx.view(), dcos.view(), dsin.view(), c.with_positions ? &dpos_view : nullptr, dout.view());
  cuda_synchronize();
  const HostTensor got = dout.to_host();
  for (int64_t i = 0; i < got.numel(); ++i) {
    ASSERT_LE(std::fabs(got.get(i) - expected.get(i)), ulp_bound(c.dtype) * (std::fabs(expected.get(i)) + 1e-3))
        << "element " << i;
  }

  // The backward is the inverse rotation: rotating the output back recovers x up to rounding.
  CudaTensor dback(c.dtype, {c.tokens, c.heads, c.head_dim});
  dsa_rope_bwd(params, dout.view(), dcos.view(), dsin.view(), c.with_positions ? &dpos_view : nullptr, dback.view());
  cuda_synchronize();
  const HostTensor back = dback.to_host();
  for (int64_t i = 0; i < back.numel(); ++i) {
    ASSERT_LE(std::fabs(back.get(i) - x.get(i)), 4 * ulp_bound(c.dtype) * (std::fabs(x.get(i)) + 1.0)) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DsaRopeCuda,
    ::testing::Values(RopeCase{1, 1, 64, 64, 1, DType::bf16, false, false},
                      RopeCase{37, 3, 192, 64, 37, DType::bf16, false, false},  // V4: [nope 128 | rope 64]
                      RopeCase{37, 3, 192, 64, 50, DType::bf16, true, true},
                      RopeCase{129, 8, 128, 64, 200, DType::f16, true, false},
                      RopeCase{5, 2, 67, 34, 9, DType::f32, true, false},  // odd nope width
                      RopeCase{0, 4, 128, 64, 1, DType::bf16, false, false},
                      RopeCase{4096, 4, 192, 64, 4096, DType::bf16, false, false}),
    [](const ::testing::TestParamInfo<RopeCase>& info) {
      const RopeCase& c = info.param;
      return "T" + std::to_string(c.tokens) + "H" + std::to_string(c.heads) + "D" + std::to_string(c.head_dim) + "R" +
             std::to_string(c.rope_dim) + "_" + std::string(dtype_name(c.dtype)) + (c.with_positions ? "_pos" : "") +
             (c.inverse ? "_inv" : "");
    });

TEST(DsaRopeCuda, OutOfRangePositionsGiveNanNotAFault) {
  SEQMIX_REQUIRE_CUDA();
  const HostTensor x = randn({2, 1, 8}, 3, 1.0, DType::f32);
  HostTensor cos = randn({2, 2}, 4, 1.0, DType::f32), sin = randn({2, 2}, 5, 1.0, DType::f32);
  const HostTensor positions = testing::int_tensor({1, 7});
  CudaTensor dx = CudaTensor::from_host(x), dcos = CudaTensor::from_host(cos), dsin = CudaTensor::from_host(sin);
  CudaTensor dpos = CudaTensor::from_host(positions), dout(DType::f32, {2, 1, 8});
  const TensorView dpos_view = dpos.view();
  dsa_rope_fwd({}, dx.view(), dcos.view(), dsin.view(), &dpos_view, dout.view());
  cuda_synchronize();
  const HostTensor got = dout.to_host();
  EXPECT_FALSE(std::isnan(got.get(4)));  // token 0, rope channel: valid row 1
  EXPECT_EQ(got.get(8), x.get(8));       // token 1, nope channel: copied
  EXPECT_TRUE(std::isnan(got.get(12)));  // token 1, rope channel: row 7 is out of range
}

TEST(DsaRopeCuda, RejectsWhatTheKernelCannotDo) {
  SEQMIX_REQUIRE_CUDA();
  const HostTensor x = randn({3, 2, 8}, 3, 1.0, DType::f64);
  HostTensor cos(DType::f32, {3, 2}), sin(DType::f32, {3, 2});
  CudaTensor dx = CudaTensor::from_host(x), dcos = CudaTensor::from_host(cos), dsin = CudaTensor::from_host(sin);
  CudaTensor dout(DType::f64, {3, 2, 8});
  testing::expect_error([&] { dsa_rope_fwd({}, dx.view(), dcos.view(), dsin.view(), nullptr, dout.view()); },
                        {"x", "float64"});
  CudaTensor dx32 = CudaTensor::from_host(x.to(DType::f32));
  testing::expect_error([&] { dsa_rope_fwd({}, dx32.view(), dcos.view(), dsin.view(), nullptr, dx32.view()); },
                        {"out", "in place"});
  CudaTensor dout32(DType::f32, {3, 2, 8});
  testing::expect_error([&] { dsa_rope_fwd({}, dx32.view(), cos.view(), dsin.view(), nullptr, dout32.view()); },
                        {"cos", "device"});
}

}  // namespace
}  // namespace seqmix
