// FP8 HSTU attention on the CPU (params.quant_mode 0..5): the emulation equals the fp64 reference
// fed with the public hstu_fp8_fake_quantize of each operand copy (the table of hstu_fp8.h),
// forward and backward; its distance to the unquantized attention stays at FP8's resolution;
// bad quant modes and fp8 operands are refused with the argument named.
//
// The error FP8 itself brings (emulation vs the unquantized fp64 attention, max |diff| / max |ref|,
// printed as [hstu_fp8_cpu]; lengths 150, 0, 1, 64, 129, H = 2, D = 16, unit normal q, k, v, dout):
// forward mode 0 4.3e-2, 1 3.8e-2, 2 4.8e-2, 3 6.5e-2, 4 5.8e-2, 5 5.1e-2; dq, dk, dv 3.8e-2 .. 6.9e-2.
// e4m3 keeps 3 mantissa bits (relative rounding up to 2^-4 per operand); the worst entry of a short
// D = 16 dot product sees a few of them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "common/access.h"
#include "common/dispatch.h"
#include "cpu/hstu/attention.h"
#include "hstu_fp8_fake.h"
#include "seqmix/hstu.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;
using testing::fp8_fake;
using testing::scaled_max_error;

struct Inputs {
  std::vector<int64_t> offsets;
  HostTensor q, k, v, dout, seq_offsets, num_targets;
};

Inputs make_inputs(const std::vector<int64_t>& lengths, int64_t heads, int64_t dim, DType dtype, uint64_t seed) {
  Inputs in;
  in.offsets = {0};
  for (int64_t n : lengths) in.offsets.push_back(in.offsets.back() + n);
  const int64_t total = in.offsets.back();
  in.q = testing::randn({total, heads, dim}, seed, 1.0, dtype);
  in.k = testing::randn({total, heads, dim}, seed + 1, 1.0, dtype);
  in.v = testing::randn({total, heads, dim}, seed + 2, 1.0, dtype);
  in.dout = testing::randn({total, heads, dim}, seed + 3, 1.0, dtype);
  in.seq_offsets = testing::int_tensor(in.offsets, DType::i32);
  std::vector<int64_t> targets;
  for (int64_t n : lengths) targets.push_back(n / 5);
  in.num_targets = testing::int_tensor(targets, DType::i64);
  return in;
}

HstuAttentionParams make_params(int64_t max_seq_len, int64_t dim) {
  HstuAttentionParams p;
  p.max_seq_len = max_seq_len;
  p.alpha = 1.0 / std::sqrt(static_cast<double>(dim));
  p.contextual_seq_len = 3;
  return p;
}

struct Grads {
  HostTensor dq, dk, dv;
};

HostTensor forward(const HstuAttentionParams& p, const HostTensor& q, const HostTensor& k, const HostTensor& v,
                   const Inputs& in) {
  HostTensor out(q.dtype(), q.sizes());
  const TensorView targets = in.num_targets.view();
  hstu_attention_fwd(p, q.view(), k.view(), v.view(), in.seq_offsets.view(), &targets, out.view());
  return out;
}

Grads backward(const HstuAttentionParams& p, const HostTensor& q, const HostTensor& k, const HostTensor& v,
               const HostTensor& dout, const Inputs& in) {
  Grads g{HostTensor(q.dtype(), q.sizes()), HostTensor(q.dtype(), q.sizes()), HostTensor(q.dtype(), q.sizes())};
  const TensorView targets = in.num_targets.view();
  hstu_attention_bwd(p, q.view(), k.view(), v.view(), in.seq_offsets.view(), &targets, dout.view(), g.dq.view(),
                     g.dk.view(), g.dv.view());
  return g;
}

class HstuFp8Attention : public ::testing::TestWithParam<int64_t> {};

// Lengths around fbgemm's 64 / 128-token descale blocks, with an empty and a length-1 sequence.
const std::vector<int64_t> kLengths = {150, 0, 1, 64, 129};

TEST_P(HstuFp8Attention, ForwardIsTheReferenceOnFakeQuantizedOperands) {
  const int64_t mode = GetParam();
  const Inputs in = make_inputs(kLengths, 2, 16, DType::f64, 11 + mode);
  HstuAttentionParams p = make_params(160, 16);
  const HstuAttentionParams plain = p;
  p.quant_mode = mode;
  const HostTensor got = forward(p, in.q, in.k, in.v, in);
  const HostTensor want = forward(plain, fp8_fake(in.q, in.seq_offsets, mode, false, true, false),
                                  fp8_fake(in.k, in.seq_offsets, mode, false, false, false),
                                  fp8_fake(in.v, in.seq_offsets, mode, false, false, true), in);
  EXPECT_EQ(testing::max_abs_diff(got, want), 0.0);
  // FP8 keeps 3 mantissa bits (relative rounding <= 2^-4 per operand); averaged over ~100 keys the
  // output moves by a few percent of its scale, never by O(1).
  const double e = scaled_max_error(got, forward(plain, in.q, in.k, in.v, in));
  std::printf("[hstu_fp8_cpu] mode %lld forward err/max|ref| vs unquantized %.3e\n", static_cast<long long>(mode), e);
  EXPECT_GT(e, 0.0);
  EXPECT_LT(e, 0.1);
}

TEST_P(HstuFp8Attention, BackwardIsTheReferenceOnFakeQuantizedOperands) {
  const int64_t mode = GetParam();
  const Inputs in = make_inputs(kLengths, 2, 16, DType::f64, 21 + mode);
  HstuAttentionParams p = make_params(160, 16);
  const HstuAttentionParams plain = p;
  p.quant_mode = mode;
  const Grads got = backward(p, in.q, in.k, in.v, in.dout, in);
  const HostTensor q_rows = fp8_fake(in.q, in.seq_offsets, mode, true, true, false),
                   k_rows = fp8_fake(in.k, in.seq_offsets, mode, true, false, false),
                   v_rows = fp8_fake(in.v, in.seq_offsets, mode, true, false, false);
  if (mode != 1) {
    // One copy per tensor: the reference backward on the copies, dout quantized like q.
    const Grads want =
        backward(plain, q_rows, k_rows, v_rows, fp8_fake(in.dout, in.seq_offsets, mode, true, true, false), in);
    EXPECT_EQ(testing::max_abs_diff(got.dq, want.dq), 0.0);
    EXPECT_EQ(testing::max_abs_diff(got.dk, want.dk), 0.0);
    EXPECT_EQ(testing::max_abs_diff(got.dv, want.dv), 0.0);
  } else {
    // dv = P^T dout reads P from the row copies of q, k and dout's transposed copy.
    const HostTensor dout_t = fp8_fake(in.dout, in.seq_offsets, 1, true, true, true);
    const Grads want = backward(plain, q_rows, k_rows, v_rows, dout_t, in);
    EXPECT_EQ(testing::max_abs_diff(got.dv, want.dv), 0.0);
    // dq = dS k and dk = dS^T q read the transposed copies of k and q (the CUDA kernels' split
    // operands): the reference's per-product operands fed with the public fake-quantized copies.
    const std::vector<double> qr = access::load(q_rows.view()), kr = access::load(k_rows.view()),
                              vr = access::load(v_rows.view()),
                              dor = access::load(fp8_fake(in.dout, in.seq_offsets, 1, true, true, false).view()),
                              kt = access::load(fp8_fake(in.k, in.seq_offsets, 1, true, false, true).view()),
                              qt = access::load(fp8_fake(in.q, in.seq_offsets, 1, true, true, true).view()),
                              dot = access::load(dout_t.view());
    const cpu::HstuGradients g =
        cpu::hstu_attention_bwd_values(plain, {in.q.size(1), in.q.size(2), in.v.size(2)}, in.offsets,
                                       access::load_int(in.num_targets.view()), {qr, kr, dor, vr, kt, qt, dot});
    HostTensor dq(DType::f64, in.q.sizes()), dk(DType::f64, in.q.sizes());
    access::store(g.dq, dq.view());
    access::store(g.dk, dk.view());
    EXPECT_EQ(testing::max_abs_diff(got.dq, dq), 0.0);
    EXPECT_EQ(testing::max_abs_diff(got.dk, dk), 0.0);
  }
  const Grads exact = backward(plain, in.q, in.k, in.v, in.dout, in);
  for (const auto& [g, r, name] : {std::tuple{&got.dq, &exact.dq, "dq"}, std::tuple{&got.dk, &exact.dk, "dk"},
                                   std::tuple{&got.dv, &exact.dv, "dv"}}) {
    const double e = scaled_max_error(*g, *r);
    std::printf("[hstu_fp8_cpu] mode %lld %s err/max|ref| vs unquantized %.3e\n", static_cast<long long>(mode), name,
                e);
    EXPECT_LT(e, 0.15) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, HstuFp8Attention, ::testing::Values(0, 1, 2, 3, 4, 5),
                         [](const auto& info) { return "mode" + std::to_string(info.param); });

TEST(HstuFp8AttentionDtypes, Bf16InputsQuantizeWithTheirOwnRoundings) {
  // Mode 4 divides in x's dtype for bf16 inputs: the emulation must read the bf16 tensor, not f64.
  const Inputs in = make_inputs({70, 33}, 2, 16, DType::bf16, 5);
  HstuAttentionParams p = make_params(80, 16);
  const HstuAttentionParams plain = p;
  p.quant_mode = 4;
  const HostTensor got = forward(p, in.q, in.k, in.v, in).to(DType::f64);
  const HostTensor want = forward(plain, fp8_fake(in.q, in.seq_offsets, 4, false, true, false),
                                  fp8_fake(in.k, in.seq_offsets, 4, false, false, false),
                                  fp8_fake(in.v, in.seq_offsets, 4, false, false, true), in)
                              .to(DType::bf16)
                              .to(DType::f64);
  EXPECT_EQ(testing::max_abs_diff(got, want), 0.0);
}

TEST(HstuFp8AttentionBadInputs, NamesTheArgument) {
  const Inputs in = make_inputs({5, 3}, 2, 8, DType::f64, 1);
  HstuAttentionParams p = make_params(8, 8);
  HostTensor out(DType::f64, in.q.sizes());
  auto fwd = [&](const HstuAttentionParams& params, const HostTensor& q, const HostTensor& o) {
    return [&, params] {
      hstu_attention_fwd(params, q.view(), q.view(), q.view(), in.seq_offsets.view(), nullptr, o.view());
    };
  };
  for (int64_t mode : {-2, 6}) {
    p.quant_mode = mode;
    expect_error(fwd(p, in.q, out), {"quant_mode", "0..5", std::to_string(mode)});
    expect_error([&] { hstu_attention_fp8_workspace_bytes(p, 8, 2, 2, 8, false); }, {"quant_mode"});
  }
  p.quant_mode = 2;
  const HostTensor q8(DType::fp8_e4m3, in.q.sizes());
  expect_error(fwd(p, q8, q8), {"hstu_attention_fwd", "q", "FP8", "float8_e4m3fn", "quant_mode"});
  TensorView s_cuda = in.seq_offsets.view();
  s_cuda.device = Device::cuda(0);
  HostTensor qb(DType::bf16, in.q.sizes());
  TensorView qb_cuda = qb.view();
  qb_cuda.device = Device::cuda(0);
  if (!dispatch::built_with_cuda()) {
    expect_error([&] { hstu_attention_fwd(p, qb_cuda, qb_cuda, qb_cuda, s_cuda, nullptr, qb_cuda); },
                 {"hstu_attention_fwd", "CUDA"});
  }
  EXPECT_EQ(hstu_attention_fp8_workspace_bytes(HstuAttentionParams{}, 100, 2, 2, 64, false), 0u);
}

}  // namespace
}  // namespace seqmix
