// Interleaved partial RoPE: tables, rotation, inverse, backward, bad inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "dsa_test_util.h"
#include "seqmix/dsa.h"
#include "test_util.h"

namespace seqmix {
namespace {

using dsa_test::make;
using testing::expect_error;

// Tables in double straight from the RoPE / YaRN definitions (no fp32 steps).
std::vector<double> inv_freq_ref(const DsaRopeTableParams& p) {
  const int64_t half = p.rope_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[static_cast<size_t>(i)] = std::pow(p.rope_theta, -2.0 * i / p.rope_dim);
  if (!p.yarn) return inv;
  const auto corr = [&](double rot) {
    return p.rope_dim * std::log(p.original_max_position_embeddings / (rot * 2 * M_PI)) / (2 * std::log(p.rope_theta));
  };
  const double low = std::max(0.0, std::floor(corr(p.beta_fast)));
  const double high = std::min(static_cast<double>(p.rope_dim - 1), std::ceil(corr(p.beta_slow)));
  for (int64_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    // ramp 0: extrapolate (keep theta^-2i/d); ramp 1: interpolate (divide by factor)
    inv[static_cast<size_t>(i)] *= (1.0 - ramp) + ramp / p.yarn_factor;
  }
  return inv;
}

struct TableCase {
  bool yarn;
  double theta;
  int64_t rope_dim;
};

class DsaRopeTables : public ::testing::TestWithParam<TableCase> {};

TEST_P(DsaRopeTables, MatchDefinitionWithinFloat32) {
  const TableCase c = GetParam();
  DsaRopeTableParams p;
  p.rope_dim = c.rope_dim;
  p.rope_theta = c.theta;
  p.yarn = c.yarn;
  p.original_max_position_embeddings = 64;
  const std::vector<int64_t> positions = {0, 1, 2, 5, 17, 63, 100};
  const HostTensor pos = testing::int_tensor(positions, DType::i32);
  HostTensor cos(DType::f64, {7, c.rope_dim / 2}), sin(DType::f64, {7, c.rope_dim / 2});
  dsa_rope_cos_sin(p, pos.view(), cos.view(), sin.view());
  const std::vector<double> inv = inv_freq_ref(p);
  for (size_t t = 0; t < positions.size(); ++t) {
    for (int64_t i = 0; i < c.rope_dim / 2; ++i) {
      const double angle = inv[static_cast<size_t>(i)] * static_cast<double>(positions[t]);
      // fp32 inv_freq and angle: relative 2^-23 each, so |angle error| <= 2.5e-7 * angle + ulp(cos)
      const double tol = 3e-7 * (1.0 + angle);
      EXPECT_NEAR(cos.get(static_cast<int64_t>(t) * (c.rope_dim / 2) + i), std::cos(angle), tol) << t << " " << i;
      EXPECT_NEAR(sin.get(static_cast<int64_t>(t) * (c.rope_dim / 2) + i), std::sin(angle), tol) << t << " " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sweep, DsaRopeTables,
                         ::testing::Values(TableCase{false, 10000.0, 8}, TableCase{false, 160000.0, 64},
                                           TableCase{true, 160000.0, 8}, TableCase{true, 160000.0, 64}));

TEST(DsaRope, AttentionScalingMultipliesBoth) {
  DsaRopeTableParams p;
  p.rope_dim = 4;
  p.attention_scaling = 1.5;
  HostTensor cos(DType::f64, {1, 2}), sin(DType::f64, {1, 2});
  dsa_rope_cos_sin(p, testing::int_tensor({3}).view(), cos.view(), sin.view());
  EXPECT_NEAR(cos.get(0), 1.5 * std::cos(3.0), 1e-6);
  EXPECT_NEAR(sin.get(1), 1.5 * std::sin(3.0 * 0.01), 1e-6);
}

struct ApplyCase {
  int64_t T, H, D, R;
  bool with_positions;
  DType dtype;
};

class DsaRopeApply : public ::testing::TestWithParam<ApplyCase> {};

TEST_P(DsaRopeApply, ForwardInverseBackward) {
  const ApplyCase c = GetParam();
  const int64_t P = c.T + 5, half = c.R / 2;
  HostTensor x = testing::randn({c.T, c.H, c.D}, 1, 1.0, c.dtype);
  const HostTensor cos = testing::uniform({P, half}, 2, -1, 1), sin = testing::uniform({P, half}, 3, -1, 1);
  std::vector<int64_t> positions;
  for (int64_t t = 0; t < c.T; ++t) positions.push_back((t * 7 + 3) % P);
  const HostTensor pos = testing::int_tensor(positions);
  const TensorView* pos_view = nullptr;
  TensorView pv = pos.view();
  if (c.with_positions) pos_view = &pv;
  HostTensor out(c.dtype, {c.T, c.H, c.D}), back(c.dtype, {c.T, c.H, c.D});
  dsa_rope_fwd({}, x.view(), cos.view(), sin.view(), pos_view, out.view());
  std::vector<double> ref = x.to(DType::f64).to_f64();
  const std::vector<double> cv = cos.to_f64(), sv = sin.to_f64();
  for (int64_t t = 0; t < c.T; ++t) {
    const int64_t row = c.with_positions ? positions[static_cast<size_t>(t)] : t;
    for (int64_t h = 0; h < c.H; ++h) {
      dsa_test::rope_ref(ref.data() + (t * c.H + h) * c.D, c.D, cv.data() + row * half, sv.data() + row * half, half,
                         false);
    }
  }
  const double tol = c.dtype == DType::f64 ? 1e-14 : 1e-2;
  EXPECT_LT(testing::max_abs_diff(out.to(DType::f64), make(ref, {c.T, c.H, c.D})), tol);
  // With a table of unit rotations the inverse undoes the forward.
  HostTensor ucos(DType::f64, {P, half}), usin(DType::f64, {P, half});
  for (int64_t i = 0; i < P * half; ++i) {
    ucos.set(i, std::cos(0.3 * i));
    usin.set(i, std::sin(0.3 * i));
  }
  dsa_rope_fwd({}, x.view(), ucos.view(), usin.view(), pos_view, out.view());
  dsa_rope_fwd({.inverse = true}, out.view(), ucos.view(), usin.view(), pos_view, back.view());
  EXPECT_LT(testing::max_abs_diff(back.to(DType::f64), x.to(DType::f64)), c.dtype == DType::f64 ? 1e-14 : 2e-2);
  if (c.dtype != DType::f64) return;
  // Backward of forward and of inverse against finite differences.
  for (bool inverse : {false, true}) {
    const HostTensor weights = testing::randn({c.T, c.H, c.D}, 9);
    HostTensor dx(DType::f64, {c.T, c.H, c.D});
    dsa_rope_bwd({.inverse = inverse}, weights.view(), cos.view(), sin.view(), pos_view, dx.view());
    testing::expect_gradient_matches(
        x, dx,
        [&] {
          HostTensor o(DType::f64, {c.T, c.H, c.D});
          dsa_rope_fwd({.inverse = inverse}, x.view(), cos.view(), sin.view(), pos_view, o.view());
          return testing::weighted_sum(o, weights);
        },
        inverse ? "dx (inverse)" : "dx");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sweep, DsaRopeApply,
    ::testing::Values(ApplyCase{5, 3, 8, 4, false, DType::f64}, ApplyCase{7, 2, 10, 10, true, DType::f64},
                      ApplyCase{1, 1, 6, 2, true, DType::f64}, ApplyCase{0, 2, 8, 4, false, DType::f64},
                      ApplyCase{6, 2, 8, 4, true, DType::bf16}, ApplyCase{6, 2, 8, 4, false, DType::f32}));

TEST(DsaRope, BadInputs) {
  HostTensor x(DType::f64, {4, 2, 8}), out(DType::f64, {4, 2, 8});
  HostTensor cos(DType::f64, {4, 2}), sin(DType::f64, {4, 2});
  const auto fwd = [&](const TensorView& xv, const TensorView& c, const TensorView& s, const TensorView* p,
                       const TensorView& o) { dsa_rope_fwd({}, xv, c, s, p, o); };
  expect_error(
      [&] {
        fwd(HostTensor(DType::f64, {4, 8}).view(), cos.view(), sin.view(), nullptr, out.view());
      },
      {"x", "rank 3", "[T, H, D]"});
  expect_error(
      [&] {
        fwd(x.view(), HostTensor(DType::f64, {4, 5}).view(), HostTensor(DType::f64, {4, 5}).view(), nullptr,
            out.view());
      },
      {"cos", "rope_dim", "10", "8"});
  expect_error(
      [&] {
        fwd(x.view(), cos.view(), HostTensor(DType::f64, {4, 3}).view(), nullptr, out.view());
      },
      {"sin", "[4, 2]"});
  expect_error(
      [&] {
        fwd(x.view(), cos.view(), sin.view(), nullptr, HostTensor(DType::f32, {4, 2, 8}).view());
      },
      {"out", "float64", "float32"});
  expect_error(
      [&] {
        fwd(HostTensor(DType::i32, {4, 2, 8}).view(), cos.view(), sin.view(), nullptr, out.view());
      },
      {"x", "int32"});
  expect_error(
      [&] {
        fwd(x.view(), HostTensor(DType::f64, {3, 2}).view(), HostTensor(DType::f64, {3, 2}).view(), nullptr,
            out.view());
      },
      {"cos", "rows", "3"});
  const HostTensor bad_pos = testing::int_tensor({0, 1, 4, 2});
  TensorView bp = bad_pos.view();
  expect_error([&] { fwd(x.view(), cos.view(), sin.view(), &bp, out.view()); }, {"position_ids", "[0, 4)", "got 4"});
  TensorView cuda_x = x.view();
  cuda_x.device = Device::cuda(0);
  expect_error([&] { fwd(cuda_x, cos.view(), sin.view(), nullptr, out.view()); }, {"cos", "cuda:0", "cpu"});
  expect_error(
      [&] {
        dsa_rope_bwd({}, x.view(), cos.view(), sin.view(), nullptr, HostTensor(DType::f64, {4, 2, 7}).view());
      },
      {"dx", "[4, 2, 8]"});
  DsaRopeTableParams p;
  p.rope_dim = 3;
  expect_error([&] { dsa_rope_cos_sin(p, testing::int_tensor({0}).view(), cos.view(), sin.view()); },
               {"rope_dim", "even", "3"});
  p.rope_dim = 4;
  p.rope_theta = -1;
  expect_error([&] { dsa_rope_cos_sin(p, testing::int_tensor({0}).view(), cos.view(), sin.view()); },
               {"rope_theta", "> 0"});
  p.rope_theta = 10;
  expect_error(
      [&] {
        dsa_rope_cos_sin(p, testing::int_tensor({0, 1}).view(), cos.view(), sin.view());
      },
      {"cos", "[2, 2]", "[4, 2]"});
}

}  // namespace
}  // namespace seqmix
