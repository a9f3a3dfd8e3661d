#include <gtest/gtest.h>

#include <cmath>

#include "common/access.h"
#include "common/numeric.h"
#include "common/validate.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;

TEST(Numeric, Bf16RoundsToNearestEven) {
  EXPECT_EQ(numeric::round_to_bf16(1.0), 1.0);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
  EXPECT_EQ(numeric::round_to_bf16(1.0 + std::ldexp(1.0, -8)), 1.0);
  EXPECT_EQ(numeric::round_to_bf16(1.0 + 3 * std::ldexp(1.0, -8)), 1.0 + std::ldexp(1.0, -6));
  EXPECT_TRUE(std::isnan(numeric::round_to_bf16(NAN)));
}

TEST(Numeric, F16RoundTripAndLimits) {
  for (double v : {0.0, 1.0, -2.5, 65504.0, 6.103515625e-05, 5.960464477539063e-08}) {
    EXPECT_EQ(numeric::round_to_f16(v), v) << v;
  }
  EXPECT_TRUE(std::isinf(numeric::round_to_f16(65520.0)));
  EXPECT_EQ(numeric::round_to_f16(1.0 + std::ldexp(1.0, -11)), 1.0);  // tie to even
  EXPECT_EQ(numeric::round_to_f16(1.0 + 3 * std::ldexp(1.0, -11)), 1.0 + std::ldexp(1.0, -9));
}

TEST(Numeric, Fp8E4m3MatchesTorchCast) {
  EXPECT_EQ(numeric::round_to_fp8_e4m3(448.0), 448.0);
  EXPECT_EQ(numeric::round_to_fp8_e4m3(0.0), 0.0);
  EXPECT_EQ(numeric::round_to_fp8_e4m3(1.0625), 1.0);    // tie between 1.0 and 1.125 -> even
  EXPECT_EQ(numeric::round_to_fp8_e4m3(1.1), 1.125);
  EXPECT_EQ(numeric::round_to_fp8_e4m3(std::ldexp(1.0, -9)), std::ldexp(1.0, -9));  // smallest subnormal
  // torch 2.11 (CPU and CUDA): 464 (the midpoint to the missing next code) ties to 448, above is NaN
  EXPECT_EQ(numeric::round_to_fp8_e4m3(464.0), 448.0);
  EXPECT_TRUE(std::isnan(numeric::round_to_fp8_e4m3(464.5)));
  EXPECT_TRUE(std::isnan(numeric::round_to_fp8_e4m3(470.0)));
  EXPECT_EQ(numeric::f64_to_fp8_e4m3_bits(-2.0), 0xC0);
}

TEST(Numeric, Fp8E5m2MatchesTorchCast) {
  EXPECT_EQ(numeric::round_to_fp8_e5m2(57344.0), 57344.0);
  EXPECT_EQ(numeric::round_to_fp8_e5m2(1.125), 1.0);  // tie between 1.0 and 1.25 -> even
  EXPECT_TRUE(std::isinf(numeric::round_to_fp8_e5m2(61440.0)));
  EXPECT_EQ(numeric::f64_to_fp8_e5m2_bits(1.0), 0x3C);
}

TEST(Access, LoadStoreRespectStrides) {
  HostTensor base = testing::randn({3, 4}, 1);
  TensorView transposed = base.view();
  std::swap(transposed.sizes[0], transposed.sizes[1]);
  std::swap(transposed.strides[0], transposed.strides[1]);
  const std::vector<double> values = access::load(transposed);
  EXPECT_EQ(values[1], base.get(4));  // element (0, 1) of the transpose is (1, 0) of base
  HostTensor out(DType::bf16, {4, 3});
  access::store(values, out.view());
  EXPECT_EQ(out.get(1), numeric::round_to_bf16(base.get(4)));
}

TEST(Validate, MessagesNameArgumentExpectedAndActual) {
  HostTensor q(DType::f32, {2, 3, 4});
  expect_error([&] { validate::expect(q.view(), "q").rank(4, "[B, T, H, K]"); },
               {"q", "rank 4", "[B, T, H, K]", "rank 3", "[2, 3, 4]"});
  expect_error([&] { validate::expect(q.view(), "q").shape({2, 3, 5}); }, {"q", "[2, 3, 5]", "[2, 3, 4]"});
  expect_error([&] { validate::expect(q.view(), "q").dtype(DType::bf16); }, {"q", "bfloat16", "float32"});
  expect_error([&] { validate::expect(q.view(), "q").device(Device::cuda(0)); }, {"q", "cuda:0", "cpu"});
  HostTensor idx(DType::i32, {3});
  expect_error([&] { validate::expect(idx.view(), "idx").floating(); }, {"idx", "int32"});
}

TEST(Validate, CuSeqlens) {
  const HostTensor good = testing::int_tensor({0, 3, 3, 7}, DType::i32);
  EXPECT_EQ(validate::cu_seqlens(good.view(), "cu_seqlens", 7), (std::vector<int64_t>{0, 3, 3, 7}));
  expect_error([&] { validate::cu_seqlens(testing::int_tensor({0, 5, 3, 7}).view(), "cu_seqlens", 7); },
               {"cu_seqlens", "non-decreasing", "5 > "});
  expect_error([&] { validate::cu_seqlens(testing::int_tensor({1, 3, 7}).view(), "cu_seqlens", 7); },
               {"cu_seqlens", "start at 0", "got 1"});
  expect_error([&] { validate::cu_seqlens(testing::int_tensor({0, 3, 6}).view(), "cu_seqlens", 7); },
               {"cu_seqlens", "7", "got 6"});
  HostTensor f(DType::f32, {3});
  expect_error([&] { validate::cu_seqlens(f.view(), "cu_seqlens", 7); }, {"cu_seqlens", "int32/int64", "float32"});
}

}  // namespace
}  // namespace seqmix
