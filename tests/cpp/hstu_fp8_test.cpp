// HSTU FP8 quantization (fbgemm quant modes 0..5): descales against a brute-force amax per
// group, round-trip error bounds, exact e4m3 encodings, golden parity with fbgemm's quantizers
// (run on an H100), bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/numeric.h"
#include "seqmix/hstu_fp8.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;
using testing::int_tensor;

struct Quantized {
  HostTensor x_fp8, descale, descale_offsets;
};

bool is_block_mode(const HstuFp8Params& p) { return p.quant_mode == 2 || (p.quant_mode == 1 && p.transposed); }

Quantized quantize(const HostTensor& x, const std::vector<int64_t>& offsets, const HstuFp8Params& params) {
  const HostTensor seq = int_tensor(offsets, DType::i32);
  Quantized q;
  q.x_fp8 = HostTensor(DType::fp8_e4m3, x.sizes());
  q.descale = HostTensor(DType::f32, hstu_fp8_descale_shape(seq.view(), x.size(1), x.size(2), params));
  q.descale_offsets = HostTensor(DType::i64, {static_cast<int64_t>(offsets.size())});
  const TensorView offsets_view = q.descale_offsets.view();
  hstu_fp8_quantize(x.view(), seq.view(), params, q.x_fp8.view(), q.descale.view(),
                    is_block_mode(params) ? &offsets_view : nullptr);
  return q;
}

// Brute-force group amax in the mode's descale layout, written per mode from the definition.
std::vector<double> brute_force_amax(const HostTensor& x, const std::vector<int64_t>& offsets, const HstuFp8Params& p) {
  const int64_t L = x.size(0), H = x.size(1), D = x.size(2);
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  auto at = [&](int64_t t, int64_t h, int64_t d) { return std::fabs(x.get((t * H + h) * D + d)); };
  std::vector<double> out;
  const int64_t bs = p.block_size;
  switch (p.quant_mode) {
    case 1:
      if (!p.transposed) {
        out.assign(static_cast<size_t>(H * L), 0.0);
        for (int64_t h = 0; h < H; ++h)
          for (int64_t t = 0; t < L; ++t)
            for (int64_t d = 0; d < D; ++d) out[h * L + t] = std::max(out[h * L + t], at(t, h, d));
        return out;
      }
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t start = offsets[b]; start < offsets[b + 1]; start += bs) {
          for (int64_t h = 0; h < H; ++h) {
            for (int64_t d = 0; d < D; ++d) {
              double m = 0.0;
              for (int64_t t = start; t < std::min(start + bs, offsets[b + 1]); ++t) m = std::max(m, at(t, h, d));
              out.push_back(m);
            }
          }
        }
      }
      return out;
    case 2: {
      std::vector<std::vector<double>> per_head(static_cast<size_t>(H));
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t start = offsets[b]; start < offsets[b + 1]; start += bs) {
          for (int64_t h = 0; h < H; ++h) {
            double m = 0.0;
            for (int64_t t = start; t < std::min(start + bs, offsets[b + 1]); ++t)
              for (int64_t d = 0; d < D; ++d) m = std::max(m, at(t, h, d));
            per_head[static_cast<size_t>(h)].push_back(m);
          }
        }
      }
      for (const auto& row : per_head) out.insert(out.end(), row.begin(), row.end());
      return out;
    }
    case 3:
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < H; ++h) {
          double m = 0.0;
          for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t)
            for (int64_t d = 0; d < D; ++d) m = std::max(m, at(t, h, d));
          out.push_back(m);
        }
      }
      return out;
    case 4:
      for (int64_t b = 0; b < B; ++b) {
        double m = 0.0;
        for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; ++d) m = std::max(m, at(t, h, d));
        out.push_back(m);
      }
      return out;
    default: {
      double m = 0.0;
      for (int64_t i = 0; i < x.numel(); ++i) m = std::max(m, std::fabs(x.get(i)));
      return {m};
    }
  }
}

// The descale fbgemm's torch code produces on CUDA, in float arithmetic: amax * (1/448) in f32,
// rounded to x's dtype where torch divides in it, then max(., 1e-6f).
double expected_descale(double amax, DType x_dtype, const HstuFp8Params& p) {
  float quotient = static_cast<float>(amax) * (1.0f / 448.0f);
  const bool in_f32 = p.quant_mode == 2 || (p.quant_mode == 1 && !p.transposed);
  double rounded = quotient;
  if (!in_f32 && x_dtype == DType::bf16) rounded = numeric::round_to_bf16(quotient);
  if (!in_f32 && x_dtype == DType::f16) rounded = numeric::round_to_f16(quotient);
  return std::max(rounded, static_cast<double>(1e-6f));
}

struct ModeCase {
  HstuFp8Params params;
  DType dtype;
};

std::vector<ModeCase> mode_cases() {
  std::vector<ModeCase> cases;
  for (DType dtype : {DType::bf16, DType::f16, DType::f32}) {
    cases.push_back({{1, false, 128}, dtype});
    cases.push_back({{1, true, 128}, dtype});
    cases.push_back({{1, true, 5}, dtype});
    cases.push_back({{2, false, 4}, dtype});
    cases.push_back({{2, false, 128}, dtype});
    cases.push_back({{3, false, 128}, dtype});
    cases.push_back({{4, false, 128}, dtype});
    cases.push_back({{5, false, 128}, dtype});
  }
  return cases;
}

TEST(HstuFp8, DescalesMatchBruteForceAmax) {
  const std::vector<int64_t> offsets = {0, 7, 8, 8, 21, 24};  // odd, length-1 and empty sequences
  for (const ModeCase& c : mode_cases()) {
    SCOPED_TRACE(::testing::Message() << "quant_mode " << c.params.quant_mode << " transposed " << c.params.transposed
                                      << " block " << c.params.block_size << " " << dtype_name(c.dtype));
    HostTensor x = testing::randn({24, 3, 5}, 7, 2.0, c.dtype);
    x.set(17, 40.0);  // an outlier so that groups differ
    const Quantized q = quantize(x, offsets, c.params);
    const std::vector<double> amax = brute_force_amax(x, offsets, c.params);
    ASSERT_EQ(static_cast<int64_t>(amax.size()), q.descale.numel());
    for (size_t g = 0; g < amax.size(); ++g) {
      ASSERT_EQ(q.descale.get(static_cast<int64_t>(g)), expected_descale(amax[g], c.dtype, c.params)) << "group " << g;
    }
    if (is_block_mode(c.params)) {
      std::vector<int64_t> blocks{0};
      for (size_t b = 0; b + 1 < offsets.size(); ++b)
        blocks.push_back(blocks.back() + (offsets[b + 1] - offsets[b] + c.params.block_size - 1) / c.params.block_size);
      for (size_t b = 0; b < blocks.size(); ++b) EXPECT_EQ(q.descale_offsets.get(static_cast<int64_t>(b)), blocks[b]);
    }
  }
}

// Round trip: e4m3 keeps 3 mantissa bits (relative step 2^-3, error <= 2^-4 relative) down to
// 2^-6, below that subnormals of step 2^-9 (error <= 2^-10 absolute, times the descale).
TEST(HstuFp8, RoundTripErrorBounds) {
  const std::vector<int64_t> offsets = {0, 5, 18, 19, 30};
  for (const ModeCase& c : mode_cases()) {
    SCOPED_TRACE(::testing::Message() << "quant_mode " << c.params.quant_mode << " transposed " << c.params.transposed
                                      << " " << dtype_name(c.dtype));
    const HostTensor x = testing::randn({30, 2, 4}, 9, 3.0, c.dtype);
    const Quantized q = quantize(x, offsets, c.params);
    const HostTensor seq = int_tensor(offsets);
    HostTensor deq(DType::f64, x.sizes()), fake(DType::f64, x.sizes());
    hstu_fp8_dequantize(q.x_fp8.view(), q.descale.view(), seq.view(), c.params, deq.view());
    hstu_fp8_fake_quantize(x.view(), seq.view(), c.params, fake.view());
    EXPECT_EQ(testing::max_abs_diff(fake, deq), 0.0);
    const std::vector<double> descales = q.descale.to_f64();
    const double max_descale = *std::max_element(descales.begin(), descales.end());
    // mode 4 with bf16/f16 x also rounds the quotient and the descale to x's dtype
    const double relative = std::ldexp(1.0, -4) * (1.0 + std::ldexp(1.0, -7));
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double err = std::fabs(deq.get(i) - x.get(i));
      ASSERT_LE(err, relative * std::fabs(x.get(i)) + std::ldexp(1.0, -10) * max_descale) << "element " << i;
    }
  }
  // Mode 0 (plain cast): the same bound with descale 1.
  const HostTensor x = testing::randn({30, 2, 4}, 10, 50.0, DType::bf16);
  const Quantized q = quantize(x, offsets, {0, false, 128});
  EXPECT_EQ(q.descale.get(0), 1.0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (std::fabs(x.get(i)) > 464.0) continue;
    ASSERT_LE(std::fabs(q.x_fp8.get(i) - x.get(i)), std::ldexp(1.0, -4) * std::fabs(x.get(i)) + std::ldexp(1.0, -10));
  }
}

TEST(HstuFp8, ExactE4m3Encodings) {
  // value -> torch's float8_e4m3fn bits
  const std::vector<std::pair<double, uint8_t>> known = {
      {0.0, 0x00},     {1.0, 0x38},     {-2.0, 0xC0},    {0.5, 0x30},   {448.0, 0x7E}, {-448.0, 0xFE},
      {240.0, 0x77},   {1.0625, 0x38},  {1.1, 0x39},     {464.0, 0x7E},  // 464: tie between 448 and NaN -> even (448)
      {0.001953125, 0x01},  // 2^-9, the smallest subnormal
      {0.015625, 0x08},     // 2^-6, the smallest normal
      {0.013671875, 0x07},  // 7 * 2^-9, the largest subnormal
  };
  std::vector<double> values;
  for (const auto& [v, bits] : known) values.push_back(v);
  values.push_back(470.0);  // above 464 torch's cast gives NaN (0x7F), it does not saturate
  const int64_t n = static_cast<int64_t>(values.size());
  const HostTensor x = HostTensor::from_f64(values, {n, 1, 1}, DType::f32);
  const Quantized q = quantize(x, {0, n}, {0, false, 128});
  for (size_t i = 0; i < known.size(); ++i) {
    EXPECT_EQ(q.x_fp8.data_as<uint8_t>()[i], known[i].second) << "value " << known[i].first;
  }
  EXPECT_TRUE(std::isnan(q.x_fp8.get(n - 1)));
  // Quantized modes hit 448 exactly at the group amax: amax / descale = 448 up to one f32 rounding.
  const HostTensor y = HostTensor::from_f64({3.0, -1.5, 0.75, 6.0}, {4, 1, 1}, DType::f32);
  const Quantized qy = quantize(y, {0, 4}, {5, false, 128});
  EXPECT_EQ(qy.x_fp8.data_as<uint8_t>()[3], 0x7E);
  EXPECT_EQ(qy.x_fp8.data_as<uint8_t>()[1], 0xEE);  // -1.5 / (6 / 448) = -112 = -1.75 * 2^6
  // An all-zero group gets the 1e-6 floor.
  const HostTensor z(DType::bf16, {3, 2, 2});
  const Quantized qz = quantize(z, {0, 3}, {3, false, 128});
  EXPECT_EQ(qz.descale.get(0), static_cast<double>(1e-6f));
  EXPECT_EQ(qz.x_fp8.get(0), 0.0);
}

TEST(HstuFp8, Mode4RoundsThroughXDtype) {
  // fbgemm divides bf16 x by a 0-dim f32 descale, which torch computes in bf16: the descale is
  // rounded to bf16 first. With a descale far from a bf16 value the f32 division differs.
  const HostTensor x = testing::randn({40, 2, 8}, 21, 1.0, DType::bf16);
  const Quantized q = quantize(x, {0, 40}, {4, false, 128});
  const double descale = q.descale.get(0);
  const double descale_bf16 = numeric::round_to_bf16(descale);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double quotient = numeric::round_to_bf16(static_cast<float>(x.get(i)) / static_cast<float>(descale_bf16));
    ASSERT_EQ(q.x_fp8.get(i), numeric::round_to_fp8_e4m3(quotient)) << i;
  }
}

TEST(HstuFp8, BlockSizesAndShapes) {
  EXPECT_EQ(hstu_fp8_block_sizes(64, false, false).kv_block, 128);
  EXPECT_EQ(hstu_fp8_block_sizes(128, false, false).kv_block, 128);
  EXPECT_EQ(hstu_fp8_block_sizes(128, true, false).kv_block, 64);
  EXPECT_EQ(hstu_fp8_block_sizes(256, false, false).kv_block, 64);
  EXPECT_EQ(hstu_fp8_block_sizes(256, false, false).q_block, 128);
  EXPECT_EQ(hstu_fp8_block_sizes(64, true, true).q_block, 64);
  EXPECT_EQ(hstu_fp8_block_sizes(64, true, true).kv_block, 128);
  const HostTensor seq = int_tensor({0, 129, 129, 130});
  EXPECT_EQ(hstu_fp8_descale_shape(seq.view(), 2, 8, {0, false, 128}), (std::vector<int64_t>{1}));
  EXPECT_EQ(hstu_fp8_descale_shape(seq.view(), 2, 8, {1, false, 128}), (std::vector<int64_t>{2, 130}));
  EXPECT_EQ(hstu_fp8_descale_shape(seq.view(), 2, 8, {1, true, 128}), (std::vector<int64_t>{3, 2, 8}));
  EXPECT_EQ(hstu_fp8_descale_shape(seq.view(), 2, 8, {2, false, 64}), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(hstu_fp8_descale_shape(seq.view(), 2, 8, {3, false, 128}), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(hstu_fp8_descale_shape(seq.view(), 2, 8, {4, false, 128}), (std::vector<int64_t>{3}));
  EXPECT_EQ(hstu_fp8_descale_shape(seq.view(), 2, 8, {5, false, 128}), (std::vector<int64_t>{1}));
}

bool same_value(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

TEST(HstuFp8Golden, MatchesFbgemmQuantizers) {
  std::vector<std::string> files;
  for (const std::string& f : testing::list_golden("hstu_extras")) {
    if (f.find("/fp8_") != std::string::npos) files.push_back(f);
  }
  ASSERT_FALSE(files.empty()) << "no fp8 golden files under tests/golden/hstu_extras";
  const DType dtypes[] = {DType::bf16, DType::f16, DType::f32};
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const testing::GoldenCase c = testing::load_golden(file);
    const HostTensor& x64 = testing::golden_tensor(c, "x");
    const DType dtype = dtypes[static_cast<int>(testing::golden_tensor(c, "x_dtype").get(0))];
    const HostTensor x = x64.to(dtype);
    ASSERT_EQ(testing::max_abs_diff(x, x64), 0.0) << "golden x must be exact in its dtype";
    const HostTensor& offsets_t = testing::golden_tensor(c, "seq_offsets");
    std::vector<int64_t> offsets;
    for (int64_t i = 0; i < offsets_t.numel(); ++i) offsets.push_back(static_cast<int64_t>(offsets_t.get(i)));
    const HstuFp8Params params{static_cast<int64_t>(testing::golden_tensor(c, "quant_mode").get(0)),
                               testing::golden_tensor(c, "transposed").get(0) != 0.0,
                               static_cast<int64_t>(testing::golden_tensor(c, "block_size").get(0))};
    const Quantized q = quantize(x, offsets, params);
    const HostTensor& x_fp8_ref = testing::golden_tensor(c, "x_fp8");
    const HostTensor& descale_ref = testing::golden_tensor(c, "descale");
    ASSERT_EQ(q.descale.sizes(), descale_ref.sizes());
    int64_t mismatches = 0;
    for (int64_t i = 0; i < descale_ref.numel(); ++i) mismatches += !same_value(q.descale.get(i), descale_ref.get(i));
    EXPECT_EQ(mismatches, 0) << "descale mismatches";
    mismatches = 0;
    for (int64_t i = 0; i < x_fp8_ref.numel(); ++i) {
      if (!same_value(q.x_fp8.get(i), x_fp8_ref.get(i))) {
        if (mismatches < 5) ADD_FAILURE() << "x_fp8[" << i << "] = " << q.x_fp8.get(i) << ", fbgemm " << x_fp8_ref.get(i);
        ++mismatches;
      }
    }
    EXPECT_EQ(mismatches, 0) << "x_fp8 mismatches of " << x_fp8_ref.numel();
    if (c.count("descale_offsets")) {
      const HostTensor& ref = c.at("descale_offsets");
      for (int64_t i = 0; i < ref.numel(); ++i) EXPECT_EQ(q.descale_offsets.get(i), ref.get(i));
    }
  }
}

TEST(HstuFp8, BadInputs) {
  const HostTensor x = testing::randn({7, 2, 4}, 3, 1.0, DType::bf16);
  const HostTensor seq = int_tensor({0, 3, 7});
  HostTensor x_fp8(DType::fp8_e4m3, {7, 2, 4}), descale(DType::f32, {2, 2}), out(DType::f32, {7, 2, 4});
  const HstuFp8Params mode3{3, false, 128};
  auto quant = [&](const HstuFp8Params& p) { hstu_fp8_quantize(x.view(), seq.view(), p, x_fp8.view(), descale.view()); };
  expect_error([&] { quant({-1, false, 128}); }, {"quant_mode", "0..5", "-1"});
  expect_error([&] { quant({6, false, 128}); }, {"quant_mode", "0..5", "6"});
  expect_error([&] { quant({3, true, 128}); }, {"transposed", "quant_mode 1", "3"});
  expect_error([&] { quant({3, false, 64}); }, {"block_size", "64", "quant_mode 3"});
  expect_error([&] { quant({2, false, 0}); }, {"block_size", "> 0", "0"});
  expect_error([&] { quant({1, false, 128}); }, {"descale", "[2, 7]", "[2, 2]"});  // mode 1 rows: [H, L]
  expect_error([&] { hstu_fp8_quantize(HostTensor(DType::bf16, {7, 8}).view(), seq.view(), mode3, x_fp8.view(), descale.view()); },
               {"x", "rank 3", "[L, H, D]", "rank 2"});
  expect_error([&] { hstu_fp8_quantize(HostTensor(DType::i32, {7, 2, 4}).view(), seq.view(), mode3, x_fp8.view(), descale.view()); },
               {"x", "int32"});
  expect_error([&] { hstu_fp8_quantize(x.view(), seq.view(), mode3, HostTensor(DType::bf16, {7, 2, 4}).view(), descale.view()); },
               {"x_fp8", "float8_e4m3fn", "bfloat16"});
  expect_error([&] { hstu_fp8_quantize(x.view(), seq.view(), mode3, HostTensor(DType::fp8_e4m3, {6, 2, 4}).view(), descale.view()); },
               {"x_fp8", "[7, 2, 4]", "[6, 2, 4]"});
  expect_error([&] { hstu_fp8_quantize(x.view(), seq.view(), mode3, x_fp8.view(), HostTensor(DType::f32, {2, 3}).view()); },
               {"descale", "[2, 2]", "[2, 3]"});
  expect_error([&] { hstu_fp8_quantize(x.view(), seq.view(), mode3, x_fp8.view(), HostTensor(DType::f64, {2, 2}).view()); },
               {"descale", "float32", "float64"});
  expect_error([&] { hstu_fp8_quantize(x.view(), int_tensor({0, 3, 6}).view(), mode3, x_fp8.view(), descale.view()); },
               {"seq_offsets", "7", "got 6"});
  expect_error([&] { hstu_fp8_quantize(x.view(), int_tensor({0, 4, 3, 7}).view(), mode3, x_fp8.view(), descale.view()); },
               {"seq_offsets", "non-decreasing"});
  const HostTensor block_offsets(DType::i64, {3});
  const TensorView block_offsets_view = block_offsets.view();
  expect_error([&] { hstu_fp8_quantize(x.view(), seq.view(), mode3, x_fp8.view(), descale.view(), &block_offsets_view); },
               {"descale_offsets", "quant_mode 3"});
  TensorView cuda_x = x.view();
  cuda_x.device = Device::cuda(0);
  expect_error([&] { hstu_fp8_quantize(cuda_x, seq.view(), mode3, x_fp8.view(), descale.view()); },
               {"seq_offsets", "cuda:0", "cpu"});

  expect_error([&] { hstu_fp8_dequantize(x.view(), descale.view(), seq.view(), mode3, out.view()); },
               {"x_fp8", "float8_e4m3fn", "bfloat16"});
  expect_error([&] { hstu_fp8_dequantize(x_fp8.view(), descale.view(), seq.view(), {7, false, 128}, out.view()); },
               {"quant_mode", "7"});
  expect_error([&] { hstu_fp8_dequantize(x_fp8.view(), descale.view(), seq.view(), mode3, HostTensor(DType::f32, {7, 2, 3}).view()); },
               {"x", "[7, 2, 4]", "[7, 2, 3]"});
  expect_error([&] { hstu_fp8_dequantize(x_fp8.view(), HostTensor(DType::f32, {2}).view(), seq.view(), mode3, out.view()); },
               {"descale", "rank 2", "[2]"});
  expect_error([&] { hstu_fp8_fake_quantize(x.view(), seq.view(), mode3, HostTensor(DType::i64, {7, 2, 4}).view()); },
               {"out", "int64"});
  expect_error([&] { hstu_fp8_fake_quantize(x.view(), seq.view(), {-3, false, 128}, out.view()); }, {"quant_mode", "-3"});
  expect_error([&] { hstu_fp8_descale_shape(seq.view(), -1, 4, mode3); }, {"num_heads", ">= 0", "-1"});
  expect_error([&] { hstu_fp8_block_sizes(0, false, false); }, {"head_dim", "> 0", "0"});
  TensorView cuda_seq = seq.view();
  cuda_seq.device = Device::cuda(0);
  TensorView cuda_out = out.view();
  cuda_out.device = Device::cuda(0);
  expect_error([&] { hstu_fp8_fake_quantize(cuda_x, cuda_seq, mode3, cuda_out); }, {"hstu_fp8_fake_quantize"});
}

}  // namespace
}  // namespace seqmix
