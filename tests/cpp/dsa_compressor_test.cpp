// KV compressor (CSA overlap / HCA): forward vs HF's padded-window formulation, varlen == per
// sequence, dense == varlen, backward vs finite differences, bad inputs.
#include <gtest/gtest.h>

#include "dsa_test_util.h"
#include "seqmix/dsa.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;

struct CompressorCase {
  bool overlap;
  int64_t m, D, R;
  std::vector<int64_t> lengths;
  DType dtype;
};

struct Problem {
  HostTensor kv, gate, bias, weight, cos, sin, cu;
  std::vector<int64_t> offsets, compressed_offsets;
  int64_t T, Tc, width;
};

Problem make_problem(const CompressorCase& c, uint64_t seed) {
  Problem p;
  p.offsets = {0};
  p.compressed_offsets = {0};
  for (int64_t n : c.lengths) {
    p.offsets.push_back(p.offsets.back() + n);
    p.compressed_offsets.push_back(p.compressed_offsets.back() + n / c.m);
  }
  p.T = p.offsets.back();
  p.Tc = p.compressed_offsets.back();
  p.width = (c.overlap ? 2 : 1) * c.D;
  p.kv = testing::randn({p.T, p.width}, seed, 1.0, c.dtype);
  p.gate = testing::randn({p.T, p.width}, seed + 1, 1.0, c.dtype);
  p.bias = testing::randn({c.m, p.width}, seed + 2, 0.5);
  p.weight = testing::uniform({c.D}, seed + 3, 0.5, 1.5);
  int64_t longest = 1;
  for (int64_t n : c.lengths) longest = std::max(longest, n);
  p.cos = testing::uniform({longest, c.R / 2}, seed + 4, -1, 1);
  p.sin = testing::uniform({longest, c.R / 2}, seed + 5, -1, 1);
  p.cu = testing::int_tensor(p.offsets, DType::i32);
  return p;
}

DsaCompressorParams params_of(const CompressorCase& c) {
  DsaCompressorParams params;
  params.compress_ratio = c.m;
  params.overlap = c.overlap;
  params.rms_norm_eps = 1e-6;
  return params;
}

HostTensor run_fwd(const CompressorCase& c, const Problem& p) {
  HostTensor out(c.dtype, {p.Tc, c.D});
  const TensorView cu = p.cu.view();
  dsa_compressor_fwd(params_of(c), p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(),
                     p.sin.view(), &cu, out.view());
  return out;
}

class DsaCompressor : public ::testing::TestWithParam<CompressorCase> {};

TEST_P(DsaCompressor, ForwardMatchesPaddedWindowsPerSequence) {
  const CompressorCase c = GetParam();
  const Problem p = make_problem(c, 11);
  const HostTensor out = run_fwd(c, p);
  const std::vector<double> kv = p.kv.to(DType::f64).to_f64(), gate = p.gate.to(DType::f64).to_f64();
  std::vector<double> ref;
  for (size_t b = 0; b + 1 < p.offsets.size(); ++b) {
    const int64_t n = p.offsets[b + 1] - p.offsets[b];
    const std::vector<double> kv_b(kv.begin() + p.offsets[b] * p.width, kv.begin() + p.offsets[b + 1] * p.width);
    const std::vector<double> gate_b(gate.begin() + p.offsets[b] * p.width, gate.begin() + p.offsets[b + 1] * p.width);
    const std::vector<double> y =
        dsa_test::compressor_ref(kv_b, gate_b, n, p.bias.to_f64(), p.weight.to_f64(), p.cos.to_f64(), p.sin.to_f64(),
                                 c.R / 2, c.m, c.overlap, 1e-6);
    ref.insert(ref.end(), y.begin(), y.end());
  }
  ASSERT_EQ(static_cast<int64_t>(ref.size()), p.Tc * c.D);
  const double tol = c.dtype == DType::f64 ? 1e-12 : 3e-2;
  EXPECT_LT(testing::max_abs_diff(out.to(DType::f64), dsa_test::make(ref, {p.Tc, c.D})), tol);
  HostTensor cu_c(DType::i64, {static_cast<int64_t>(p.offsets.size())});
  dsa_compressed_cu_seqlens(p.cu.view(), c.m, cu_c.view());
  for (size_t b = 0; b < p.offsets.size(); ++b) EXPECT_EQ(cu_c.get(static_cast<int64_t>(b)), p.compressed_offsets[b]);
}

TEST_P(DsaCompressor, BackwardMatchesFiniteDifferences) {
  const CompressorCase c = GetParam();
  Problem p = make_problem(c, 21);
  if (c.dtype != DType::f64) {
    // Low-precision storage: gradients equal the f64 ones on the same (rounded) inputs, rounded.
    const HostTensor g = testing::randn({p.Tc, c.D}, 98, 1.0, c.dtype);
    HostTensor lo[2] = {HostTensor(c.dtype, {p.T, p.width}), HostTensor(c.dtype, {p.T, p.width})};
    HostTensor hi[2] = {HostTensor(DType::f64, {p.T, p.width}), HostTensor(DType::f64, {p.T, p.width})};
    HostTensor db(DType::f64, {c.m, p.width}), dw(DType::f64, {c.D}), db2(DType::f64, {c.m, p.width}),
        dw2(DType::f64, {c.D});
    const TensorView cu = p.cu.view();
    dsa_compressor_bwd(params_of(c), p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(),
                       p.sin.view(), &cu, g.view(), lo[0].view(), lo[1].view(), db.view(), dw.view());
    dsa_compressor_bwd(params_of(c), p.kv.to(DType::f64).view(), p.gate.to(DType::f64).view(), p.bias.view(),
                       p.weight.view(), p.cos.view(), p.sin.view(), &cu, g.to(DType::f64).view(), hi[0].view(),
                       hi[1].view(), db2.view(), dw2.view());
    for (int i = 0; i < 2; ++i) EXPECT_LT(testing::max_rel_diff(lo[i].to(DType::f64), hi[i], 1e-2), 1e-2) << i;
    EXPECT_LT(testing::max_abs_diff(db, db2), 1e-12);
    EXPECT_LT(testing::max_abs_diff(dw, dw2), 1e-12);
    return;
  }
  const HostTensor weights = testing::randn({p.Tc, c.D}, 99);
  HostTensor dkv(DType::f64, {p.T, p.width}), dgate(DType::f64, {p.T, p.width});
  HostTensor dbias(DType::f64, {c.m, p.width}), dweight(DType::f64, {c.D});
  const TensorView cu = p.cu.view();
  dsa_compressor_bwd(params_of(c), p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(),
                     p.sin.view(), &cu, weights.view(), dkv.view(), dgate.view(), dbias.view(), dweight.view());
  const auto loss = [&] { return testing::weighted_sum(run_fwd(c, p), weights); };
  testing::expect_gradient_matches(p.kv, dkv, loss, "dkv");
  testing::expect_gradient_matches(p.gate, dgate, loss, "dgate");
  testing::expect_gradient_matches(p.bias, dbias, loss, "dposition_bias");
  testing::expect_gradient_matches(p.weight, dweight, loss, "dnorm_weight");
}

INSTANTIATE_TEST_SUITE_P(Sweep, DsaCompressor,
                         ::testing::Values(CompressorCase{true, 4, 8, 4, {13}, DType::f64},
                                           CompressorCase{true, 4, 6, 6, {0, 1, 4, 9, 3, 17}, DType::f64},
                                           CompressorCase{false, 4, 8, 4, {11, 0, 8}, DType::f64},
                                           CompressorCase{false, 8, 4, 2, {7, 8, 25}, DType::f64},
                                           CompressorCase{true, 2, 4, 4, {5, 6}, DType::f64},
                                           CompressorCase{true, 4, 8, 4, {9, 12}, DType::bf16},
                                           CompressorCase{false, 4, 8, 4, {9, 12}, DType::f32}));

TEST(DsaCompressor, DenseBatchEqualsVarlen) {
  const CompressorCase c{true, 4, 8, 4, {10, 10, 10}, DType::f64};
  const Problem p = make_problem(c, 5);
  const HostTensor varlen = run_fwd(c, p);
  HostTensor dense(DType::f64, {3, 2, c.D});
  const HostTensor kv3 = dsa_test::reshaped(p.kv, {3, 10, p.width}),
                   gate3 = dsa_test::reshaped(p.gate, {3, 10, p.width});
  dsa_compressor_fwd(params_of(c), kv3.view(), gate3.view(), p.bias.view(), p.weight.view(), p.cos.view(), p.sin.view(),
                     nullptr, dense.view());
  EXPECT_EQ(testing::max_abs_diff(dsa_test::reshaped(dense, {6, c.D}), varlen), 0.0);
  // dense backward == varlen backward
  const HostTensor g = testing::randn({6, c.D}, 7);
  HostTensor a1(DType::f64, {p.T, p.width}), a2(DType::f64, {p.T, p.width}), a3(DType::f64, {c.m, p.width}),
      a4(DType::f64, {c.D});
  HostTensor b1(DType::f64, {3, 10, p.width}), b2(DType::f64, {3, 10, p.width}), b3(DType::f64, {c.m, p.width}),
      b4(DType::f64, {c.D});
  const TensorView cu = p.cu.view();
  dsa_compressor_bwd(params_of(c), p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(),
                     p.sin.view(), &cu, g.view(), a1.view(), a2.view(), a3.view(), a4.view());
  dsa_compressor_bwd(params_of(c), kv3.view(), gate3.view(), p.bias.view(), p.weight.view(), p.cos.view(), p.sin.view(),
                     nullptr, dsa_test::reshaped(g, {3, 2, c.D}).view(), b1.view(), b2.view(), b3.view(), b4.view());
  EXPECT_EQ(testing::max_abs_diff(dsa_test::reshaped(b1, {p.T, p.width}), a1), 0.0);
  EXPECT_EQ(testing::max_abs_diff(dsa_test::reshaped(b2, {p.T, p.width}), a2), 0.0);
  EXPECT_EQ(testing::max_abs_diff(b3, a3), 0.0);
  EXPECT_EQ(testing::max_abs_diff(b4, a4), 0.0);
}

TEST(DsaCompressor, VarlenEqualsPerSequenceCalls) {
  const CompressorCase c{true, 4, 8, 4, {6, 0, 13, 1, 8}, DType::f64};
  const Problem p = make_problem(c, 8);
  const HostTensor all = run_fwd(c, p);
  const std::vector<double> kv = p.kv.to_f64(), gate = p.gate.to_f64(), got = all.to_f64();
  for (size_t b = 0; b + 1 < p.offsets.size(); ++b) {
    const int64_t n = p.offsets[b + 1] - p.offsets[b];
    const HostTensor kv_b =
        dsa_test::make({kv.begin() + p.offsets[b] * p.width, kv.begin() + p.offsets[b + 1] * p.width}, {n, p.width});
    const HostTensor gate_b = dsa_test::make(
        {gate.begin() + p.offsets[b] * p.width, gate.begin() + p.offsets[b + 1] * p.width}, {n, p.width});
    HostTensor out(DType::f64, {n / c.m, c.D});
    dsa_compressor_fwd(params_of(c), kv_b.view(), gate_b.view(), p.bias.view(), p.weight.view(), p.cos.view(),
                       p.sin.view(), nullptr, out.view());
    for (int64_t i = 0; i < out.numel(); ++i) {
      EXPECT_EQ(out.get(i), got[static_cast<size_t>(p.compressed_offsets[b] * c.D + i)]) << b << " " << i;
    }
  }
}

TEST(DsaCompressor, BadInputs) {
  const CompressorCase c{true, 4, 8, 4, {9}, DType::f64};
  const Problem p = make_problem(c, 3);
  HostTensor out(DType::f64, {2, 8});
  const TensorView cu = p.cu.view();
  const auto run = [&](DsaCompressorParams params, const TensorView& kv, const TensorView& gate, const TensorView& bias,
                       const TensorView& weight, const TensorView& cos, const TensorView* cu_seqlens,
                       const TensorView& o) {
    dsa_compressor_fwd(params, kv, gate, bias, weight, cos, cos, cu_seqlens, o);
  };
  const DsaCompressorParams ok = params_of(c);
  DsaCompressorParams bad = ok;
  bad.compress_ratio = 0;
  expect_error(
      [&] { run(bad, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(), &cu, out.view()); },
      {"compress_ratio", "> 0", "0"});
  bad = ok;
  bad.rms_norm_eps = -1;
  expect_error(
      [&] { run(bad, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(), &cu, out.view()); },
      {"rms_norm_eps", "-1"});
  HostTensor kv_hca(DType::f64, {9, 8});
  expect_error(
      [&] { run(ok, kv_hca.view(), kv_hca.view(), p.bias.view(), p.weight.view(), p.cos.view(), &cu, out.view()); },
      {"kv", "[*, 16]", "[9, 8]"});
  expect_error(
      [&] {
        run(ok, p.kv.view(), p.kv.to(DType::f32).view(), p.bias.view(), p.weight.view(), p.cos.view(), &cu, out.view());
      },
      {"gate", "float64", "float32"});
  expect_error(
      [&] {
        run(ok, p.kv.view(), p.gate.view(), HostTensor(DType::f64, {3, 16}).view(), p.weight.view(), p.cos.view(), &cu,
            out.view());
      },
      {"position_bias", "[4, 16]", "[3, 16]"});
  expect_error(
      [&] {
        run(ok, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(), &cu,
            HostTensor(DType::f64, {3, 8}).view());
      },
      {"out", "[2, 8]", "[3, 8]"});
  expect_error(
      [&] {
        run(ok, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), HostTensor(DType::f64, {9, 5}).view(), &cu,
            out.view());
      },
      {"cos", "rope_dim", "10", "8"});
  expect_error(
      [&] {
        run(ok, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), HostTensor(DType::f64, {4, 2}).view(), &cu,
            out.view());
      },
      {"cos", "positions up to 4", "4 rows"});
  const HostTensor bad_cu = testing::int_tensor({0, 5, 3});
  const TensorView bcu = bad_cu.view();
  expect_error(
      [&] { run(ok, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(), &bcu, out.view()); },
      {"cu_seqlens", "non-decreasing"});
  const HostTensor short_cu = testing::int_tensor({0, 5});
  const TensorView scu = short_cu.view();
  expect_error(
      [&] { run(ok, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(), &scu, out.view()); },
      {"cu_seqlens", "9", "got 5"});
  const HostTensor kv3 = dsa_test::reshaped(p.kv, {1, 9, 16});
  expect_error([&] { run(ok, kv3.view(), kv3.view(), p.bias.view(), p.weight.view(), p.cos.view(), &cu, out.view()); },
               {"cu_seqlens", "nullptr", "dense"});
  TensorView cuda_gate = p.gate.view();
  cuda_gate.device = Device::cuda(0);
  expect_error([&] { run(ok, p.kv.view(), cuda_gate, p.bias.view(), p.weight.view(), p.cos.view(), &cu, out.view()); },
               {"gate", "cuda:0", "cpu"});
  HostTensor cu_c(DType::i64, {3});
  expect_error([&] { dsa_compressed_cu_seqlens(p.cu.view(), 4, cu_c.view()); }, {"cu_compressed", "[2]", "[3]"});
  expect_error([&] { dsa_compressed_cu_seqlens(p.cu.view(), 0, HostTensor(DType::i64, {2}).view()); },
               {"compress_ratio", "> 0"});
  expect_error([&] { dsa_compressed_cu_seqlens(p.cu.view(), 4, HostTensor(DType::f64, {2}).view()); },
               {"cu_compressed", "int32/int64", "float64"});
  HostTensor d1(DType::f64, {9, 16}), d3(DType::f64, {4, 16}), d4(DType::f32, {8});
  expect_error(
      [&] {
        dsa_compressor_bwd(ok, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(), p.cos.view(),
                           &cu, out.view(), d1.view(), d1.view(), d3.view(), d4.view());
      },
      {"dnorm_weight", "float64", "float32"});
  expect_error(
      [&] {
        dsa_compressor_bwd(ok, p.kv.view(), p.gate.view(), p.bias.view(), p.weight.view(), p.cos.view(), p.cos.view(),
                           &cu, HostTensor(DType::f64, {1, 8}).view(), d1.view(), d1.view(), d3.view(),
                           HostTensor(DType::f64, {8}).view());
      },
      {"dout", "[2, 8]", "[1, 8]"});
}

}  // namespace
}  // namespace seqmix
