// HSTU attention, CUDA backend vs the CPU reference. The reference runs in fp64 on the very
// bf16/f16 values the GPU reads, so the difference is the kernels' own rounding: P (and dS) are
// rounded to 16 bits before their MMA, accumulation is f32, and outputs are rounded once.
//
// The kernels' sigmoid is (1 + tanh.approx(x / 2)) / 2 (relative error about 2^-11, f16's own
// rounding of P), which the f16 tolerance below absorbs as well.
//
// Tolerance, per output tensor: max |cuda - ref| <= tol * max |ref|, with tol = 2e-2 for bf16
// (8-bit mantissa: the output rounding alone is 2^-9 = 0.2% of each value, and the 16-bit P / dS
// add errors of the same relative size on sums whose terms cancel, so a few 2^-9 of the tensor's
// scale is expected; 2e-2 leaves headroom without hiding a wrong mask entry, which moves results
// by O(1 / sqrt(n)) of the scale or more) and 5e-3 for f16 (3 more mantissa bits). The same tol also
// bounds each token row's error relative to max(that row's own max |ref|, max |ref| / 2): a key whose
// gradient is small next to the tensor's largest (window keys next to SLA prefix keys) would otherwise
// lose a whole tile of its contributions under the tensor-wide scale.
//
// Without a GPU the tests skip, unless SEQMIX_TEST_CUDA=1 (set by scripts/device_test.sh), which
// turns a missing GPU into a failure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/dispatch.h"
#include "seqmix/device.h"
#include "seqmix/hstu.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;
using testing::scaled_max_error;

bool cuda_required() {
  const char* v = std::getenv("SEQMIX_TEST_CUDA");
  return v && std::string(v) == "1";
}

#define SEQMIX_REQUIRE_GPU()                                                               \
  do {                                                                                     \
    if (!cuda_available()) {                                                               \
      if (cuda_required()) FAIL() << "SEQMIX_TEST_CUDA=1 but no CUDA device is available"; \
      GTEST_SKIP() << "no CUDA device (set SEQMIX_TEST_CUDA=1 to make this a failure)";    \
    }                                                                                      \
  } while (0)

struct Case {
  std::string name;
  std::vector<int64_t> lengths;
  std::vector<int64_t> targets;  // empty: num_targets not given
  HstuAttentionParams params;
  int64_t heads = 2;
  int64_t head_dim = 128;
  DType dtype = DType::bf16;
  DType index_dtype = DType::i32;
};

double tolerance_of(DType dtype) { return dtype == DType::bf16 ? 2e-2 : 5e-3; }

// max over [L, H] rows of max_d |got - ref| / max(max_d |ref|, max |ref| / 2).
double row_scaled_error(const HostTensor& got, const HostTensor& ref, int64_t row_len) {
  const double floor = testing::max_abs(ref) / 2.0;
  double worst = 0.0;
  for (int64_t r = 0; r * row_len < ref.numel(); ++r) {
    double err = 0.0, scale = floor;
    for (int64_t d = r * row_len; d < (r + 1) * row_len; ++d) {
      err = std::max(err, std::abs(got.get(d) - ref.get(d)));
      scale = std::max(scale, std::abs(ref.get(d)));
    }
    worst = std::max(worst, scale > 0.0 ? err / scale : err);
  }
  return worst;
}

// Runs forward and backward on the GPU and on the CPU (fp64 from the same 16-bit inputs) and
// checks out, dq, dk, dv; prints the scaled errors for the device log.
void compare_with_cpu(const Case& c) {
  std::vector<int64_t> offsets = {0};
  for (int64_t n : c.lengths) offsets.push_back(offsets.back() + n);
  const int64_t total = offsets.back(), H = c.heads, D = c.head_dim;
  const uint64_t seed = std::hash<std::string>{}(c.name) % 100000;
  // Scores alpha q.k ~ N(0, 1) with alpha = 1 / sqrt(D): silu sees both of its regimes.
  const HostTensor q = testing::randn({total, H, D}, seed, 1.0, c.dtype);
  const HostTensor k = testing::randn({total, H, D}, seed + 1, 1.0, c.dtype);
  const HostTensor v = testing::randn({total, H, D}, seed + 2, 1.0, c.dtype);
  const HostTensor dout = testing::randn({total, H, D}, seed + 3, 1.0, c.dtype);
  const HostTensor seq_offsets = testing::int_tensor(offsets, c.index_dtype);
  const bool has_targets = !c.targets.empty();
  const HostTensor num_targets =
      testing::int_tensor(has_targets ? c.targets : std::vector<int64_t>(c.lengths.size(), 0),
                          c.index_dtype == DType::i32 ? DType::i64 : DType::i32);

  const HostTensor q64 = q.to(DType::f64), k64 = k.to(DType::f64), v64 = v.to(DType::f64), do64 = dout.to(DType::f64);
  HostTensor out64(DType::f64, {total, H, D}), dq64(DType::f64, {total, H, D}), dk64(DType::f64, {total, H, D}),
      dv64(DType::f64, {total, H, D});
  const TensorView targets_host = num_targets.view();
  const TensorView* targets_host_ptr = has_targets ? &targets_host : nullptr;
  hstu_attention_fwd(c.params, q64.view(), k64.view(), v64.view(), seq_offsets.view(), targets_host_ptr, out64.view());
  hstu_attention_bwd(c.params, q64.view(), k64.view(), v64.view(), seq_offsets.view(), targets_host_ptr, do64.view(),
                     dq64.view(), dk64.view(), dv64.view());

  const CudaTensor qg = CudaTensor::from_host(q), kg = CudaTensor::from_host(k), vg = CudaTensor::from_host(v),
                   dog = CudaTensor::from_host(dout), offsets_g = CudaTensor::from_host(seq_offsets),
                   targets_g = CudaTensor::from_host(num_targets);
  CudaTensor out(c.dtype, {total, H, D}), dq(c.dtype, {total, H, D}), dk(c.dtype, {total, H, D}),
      dv(c.dtype, {total, H, D});
  const TensorView targets_dev = targets_g.view();
  const TensorView* targets_dev_ptr = has_targets ? &targets_dev : nullptr;
  hstu_attention_fwd(c.params, qg.view(), kg.view(), vg.view(), offsets_g.view(), targets_dev_ptr, out.view());
  hstu_attention_bwd(c.params, qg.view(), kg.view(), vg.view(), offsets_g.view(), targets_dev_ptr, dog.view(),
                     dq.view(), dk.view(), dv.view());
  cuda_synchronize();

  const double tol = tolerance_of(c.dtype);
  const double e_out = scaled_max_error(out.to_host(), out64), e_dq = scaled_max_error(dq.to_host(), dq64),
               e_dk = scaled_max_error(dk.to_host(), dk64), e_dv = scaled_max_error(dv.to_host(), dv64);
  std::printf("[hstu_cuda] %-40s %s D=%-3lld err/max|ref|: out %.2e dq %.2e dk %.2e dv %.2e (tol %.0e)\n",
              c.name.c_str(), dtype_name(c.dtype), static_cast<long long>(D), e_out, e_dq, e_dk, e_dv, tol);
  EXPECT_LE(e_out, tol) << "out";
  EXPECT_LE(e_dq, tol) << "dq";
  EXPECT_LE(e_dk, tol) << "dk";
  EXPECT_LE(e_dv, tol) << "dv";
  const HostTensor got[4] = {out.to_host(), dq.to_host(), dk.to_host(), dv.to_host()};
  const HostTensor* want[4] = {&out64, &dq64, &dk64, &dv64};
  const char* names[4] = {"row_out", "row_dq", "row_dk", "row_dv"};
  std::printf("[hstu_cuda] %-40s %s D=%-3lld per-row err:", c.name.c_str(), dtype_name(c.dtype),
              static_cast<long long>(D));
  for (int i = 0; i < 4; ++i) {
    const double e = row_scaled_error(got[i], *want[i], D);
    std::printf(" %s %.2e", names[i], e);
    EXPECT_LE(e, tol) << names[i];
  }
  std::printf("\n");
}

HstuAttentionParams make_params(int64_t max_seq_len, int64_t head_dim) {
  HstuAttentionParams p;
  p.max_seq_len = max_seq_len;
  p.alpha = 1.0 / std::sqrt(static_cast<double>(head_dim));
  return p;
}

// Lengths around the 64-row tile: empty, 1, exactly one tile, one past, several tiles, and
// targets of 0, all-but-one, a whole sequence and across tile boundaries.
const std::vector<int64_t> kLengths = {200, 0, 1, 64, 65, 130, 17};
const std::vector<int64_t> kTargets = {19, 0, 1, 64, 3, 70, 0};

std::vector<Case> mask_cases() {
  std::vector<Case> cases;
  auto add = [&](const std::string& name, auto&& set) {
    for (bool targets : {false, true}) {
      for (int variant = 0; variant < 2; ++variant) {
        Case c;
        c.head_dim = variant == 0 ? 128 : 64;
        c.dtype = variant == 0 ? DType::bf16 : DType::f16;
        c.index_dtype = variant == 0 ? DType::i32 : DType::i64;
        c.name = name + (targets ? "_targets" : "") + (variant == 0 ? "_bf16_d128" : "_f16_d64");
        c.lengths = kLengths;
        if (targets) c.targets = kTargets;
        c.params = make_params(210, c.head_dim);
        set(c.params);
        cases.push_back(c);
      }
    }
  };
  add("causal", [](auto&) {});
  add("scaling_seqlen", [](auto& p) { p.scaling_seqlen = 37; });
  add("contextual", [](auto& p) { p.contextual_seq_len = 5; });
  add("contextual_overflow", [](auto& p) { p.contextual_seq_len = 140; });
  add("window", [](auto& p) { p.max_attn_len = 70; });
  add("window_small", [](auto& p) { p.max_attn_len = 3; });
  add("window_contextual", [](auto& p) { p.max_attn_len = 40, p.contextual_seq_len = 9; });
  add("window_min_full", [](auto& p) { p.max_attn_len = 20, p.min_full_attn_seq_len = 50; });
  add("window_min_full_contextual",
      [](auto& p) { p.max_attn_len = 30, p.min_full_attn_seq_len = 10, p.contextual_seq_len = 4; });
  add("noncausal", [](auto& p) { p.causal = false; });
  add("noncausal_window_contextual", [](auto& p) { p.causal = false, p.max_attn_len = 50, p.contextual_seq_len = 6; });
  add("noncausal_window_min_full",
      [](auto& p) { p.causal = false, p.max_attn_len = 10, p.min_full_attn_seq_len = 40; });
  add("sla", [](auto& p) { p.sla_k1 = 70, p.sla_k2 = 20; });
  add("sla_k1_ge_length", [](auto& p) { p.sla_k1 = 400; });
  add("sla_k2_0_contextual", [](auto& p) { p.sla_k1 = 33, p.contextual_seq_len = 12; });
  add("sla_k2_ge_length", [](auto& p) { p.sla_k1 = 5, p.sla_k2 = 400; });
  add("sla_k1_0", [](auto& p) { p.sla_k2 = 66; });
  add("sla_k1_1", [](auto& p) { p.sla_k1 = 1, p.sla_k2 = 1; });
  add("sla_contextual_gt_k2", [](auto& p) { p.sla_k1 = 64, p.sla_k2 = 8, p.contextual_seq_len = 30; });
  return cases;
}

class HstuCuda : public ::testing::TestWithParam<Case> {};

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

TEST_P(HstuCuda, MatchesCpuReference) {
  SEQMIX_REQUIRE_GPU();
  compare_with_cpu(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Masks, HstuCuda, ::testing::ValuesIn(mask_cases()), case_name);

std::vector<Case> long_cases() {
  std::vector<Case> cases;
  auto add = [&](const std::string& name, std::vector<int64_t> lengths, std::vector<int64_t> targets, DType dtype,
                 int64_t head_dim, auto&& set) {
    Case c;
    c.name = name;
    c.lengths = std::move(lengths);
    c.targets = std::move(targets);
    c.dtype = dtype;
    c.head_dim = head_dim;
    c.heads = 4;
    c.params = make_params(4096, head_dim);
    set(c.params);
    cases.push_back(c);
  };
  add("long_causal_targets_bf16_d128", {4096}, {32}, DType::bf16, 128, [](auto&) {});
  add("long_sla_bf16_d128", {4096, 1000}, {16, 0}, DType::bf16, 128, [](auto& p) { p.sla_k1 = 256, p.sla_k2 = 32; });
  // History rows attending more than 512 keys (k1 + k2): the forward keeps its 128-row blocks on SLA.
  add("long_sla_wide_window_bf16_d128", {3000, 700}, {40, 0}, DType::bf16, 128,
      [](auto& p) { p.sla_k1 = 600, p.sla_k2 = 70; });
  add("long_window_contextual_f16_d64", {4096}, {100}, DType::f16, 64,
      [](auto& p) { p.max_attn_len = 300, p.contextual_seq_len = 10; });
  // SLA with a contextual prefix and targets past the window: the backward's key blocks jump from
  // their window to the target rows; f16 at D = 128 and bf16 at D = 64 complete the dtype x D grid.
  add("long_sla_contextual_targets_f16_d128", {2500, 700, 1, 0, 300}, {64, 700, 1, 0, 3}, DType::f16, 128,
      [](auto& p) { p.sla_k1 = 100, p.contextual_seq_len = 20; });
  add("long_causal_contextual_targets_bf16_d64", {2100, 33, 1500}, {9, 33, 64}, DType::bf16, 64,
      [](auto& p) { p.contextual_seq_len = 70; });
  // Skewed: one long sequence among many short ones, most blocks of the grid exit at once.
  add("skewed_targets_contextual_bf16_d64", {3000, 1, 0, 5, 77, 2, 129, 0, 1}, {40, 1, 0, 2, 7, 0, 64, 0, 0},
      DType::bf16, 64, [](auto& p) { p.contextual_seq_len = 3; });
  // More sequences than the kernels rank longest-first in-kernel (256), with many equal lengths:
  // the blocks fall back to batch order.
  std::vector<int64_t> many_lengths(300), many_targets(300);
  for (int64_t b = 0; b < 300; ++b) {
    many_lengths[b] = b * 37 % 150;
    many_targets[b] = std::min<int64_t>(b % 5, many_lengths[b]);
  }
  add("many_sequences_causal_targets_bf16_d128", many_lengths, many_targets, DType::bf16, 128, [](auto&) {});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Long, HstuCuda, ::testing::ValuesIn(long_cases()), case_name);

// q, k, v and the gradients as views of wider buffers (token stride 2 H D): the kernels honour strides.
TEST(HstuCudaLayout, StridedViewsMatchContiguous) {
  SEQMIX_REQUIRE_GPU();
  const std::vector<int64_t> offsets = {0, 70, 70, 75};
  const int64_t total = 75, H = 2, D = 64;
  HstuAttentionParams p = make_params(80, D);
  p.max_attn_len = 20;
  const HostTensor seq_offsets = testing::int_tensor(offsets, DType::i64);
  const CudaTensor offsets_g = CudaTensor::from_host(seq_offsets);
  std::vector<CudaTensor> dense, wide;
  std::vector<TensorView> narrow;
  for (uint64_t seed : {1, 2, 3, 4}) {
    const HostTensor x = testing::randn({total, H, D}, 70 + seed, 1.0, DType::bf16);
    HostTensor x_wide = testing::randn({total, 2, H, D}, 80 + seed, 1.0, DType::bf16);
    for (int64_t t = 0; t < total; ++t) {
      for (int64_t e = 0; e < H * D; ++e) x_wide.set(t * 2 * H * D + e, x.get(t * H * D + e));
    }
    dense.push_back(CudaTensor::from_host(x));
    wide.push_back(CudaTensor::from_host(x_wide));
    TensorView view = wide.back().view();
    view.rank = 3;
    view.sizes = {total, H, D};
    view.strides = {2 * H * D, D, 1};
    narrow.push_back(view);
  }
  auto run = [&](const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout) {
    std::vector<CudaTensor> results;
    for (int i = 0; i < 4; ++i) results.emplace_back(DType::bf16, std::vector<int64_t>{total, H, D});
    hstu_attention_fwd(p, q, k, v, offsets_g.view(), nullptr, results[0].view());
    hstu_attention_bwd(p, q, k, v, offsets_g.view(), nullptr, dout, results[1].view(), results[2].view(),
                       results[3].view());
    std::vector<HostTensor> host;
    for (const CudaTensor& r : results) host.push_back(r.to_host());
    return host;
  };
  const auto reference = run(dense[0].view(), dense[1].view(), dense[2].view(), dense[3].view());
  const auto strided = run(narrow[0], narrow[1], narrow[2], narrow[3]);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(testing::max_abs_diff(strided[i], reference[i]), 0.0) << i;
}

// No sequences, or only empty ones: valid, nothing launched or written.
TEST(HstuCudaLayout, EmptyBatch) {
  SEQMIX_REQUIRE_GPU();
  const HstuAttentionParams p = make_params(16, 64);
  for (const std::vector<int64_t>& offsets : {std::vector<int64_t>{0, 0, 0}, std::vector<int64_t>{0}}) {
    const CudaTensor q(DType::bf16, {0, 2, 64}), out(DType::bf16, {0, 2, 64});
    const CudaTensor seq_offsets = CudaTensor::from_host(testing::int_tensor(offsets));
    hstu_attention_fwd(p, q.view(), q.view(), q.view(), seq_offsets.view(), nullptr, out.view());
    hstu_attention_bwd(p, q.view(), q.view(), q.view(), seq_offsets.view(), nullptr, q.view(), out.view(), out.view(),
                       out.view());
    cuda_synchronize();
  }
}

// Layout errors of the CUDA path are raised by the validation at the boundary, before any
// device memory is touched, so they are checked with host buffers labelled as CUDA.
TEST(HstuCudaBadInputs, LayoutErrorsNameTheArgument) {
  if (!dispatch::built_with_cuda()) GTEST_SKIP() << "built without CUDA";
  const int64_t total = 5, H = 2;
  HstuAttentionParams p = make_params(8, 64);
  auto cuda_view = [](HostTensor& t) {
    TensorView view = t.view();
    view.device = Device::cuda(0);
    return view;
  };
  HostTensor q(DType::bf16, {total, H, 64}), k(DType::bf16, {total, H, 64}), v(DType::bf16, {total, H, 64}),
      out(DType::bf16, {total, H, 64}), offsets = testing::int_tensor({0, 5});
  const TensorView qv = cuda_view(q), kv = cuda_view(k), vv = cuda_view(v), ov = cuda_view(out),
                   sv = cuda_view(offsets);
  auto fwd = [&](const TensorView& q_, const TensorView& k_, const TensorView& v_, const TensorView& o_) {
    return [&, q_, k_, v_, o_] { hstu_attention_fwd(p, q_, k_, v_, sv, nullptr, o_); };
  };
  HostTensor q32(DType::f32, {total, H, 64}), k32(DType::f32, {total, H, 64}), v32(DType::f32, {total, H, 64}),
      o32(DType::f32, {total, H, 64});
  expect_error(fwd(cuda_view(q32), cuda_view(k32), cuda_view(v32), cuda_view(o32)),
               {"hstu_attention_fwd", "q", "bfloat16/float16", "float32"});
  // FP8 attention has no CUDA kernel: a loud "not implemented", never a silent bf16 fallback.
  HostTensor x8(DType::fp8_e4m3, {total, H, 64});
  const TensorView x8v = cuda_view(x8);
  expect_error(fwd(x8v, x8v, x8v, x8v), {"hstu_attention_fwd", "not implemented", "FP8", "float8_e4m3fn", "cuda:0"});
  expect_error([&] { hstu_attention_bwd(p, x8v, x8v, x8v, sv, nullptr, x8v, x8v, x8v, x8v); },
               {"hstu_attention_bwd", "not implemented", "FP8"});
  HostTensor q48(DType::bf16, {total, H, 48}), v48(DType::bf16, {total, H, 48});
  expect_error(fwd(cuda_view(q48), cuda_view(q48), cuda_view(v48), cuda_view(v48)), {"q", "head dim 64 or 128", "48"});
  HostTensor v128(DType::bf16, {total, H, 128});
  expect_error(fwd(qv, kv, cuda_view(v128), cuda_view(v128)), {"v", "Dv == Dqk", "128"});
  HostTensor wide(DType::bf16, {total, H, 130});
  TensorView k_wide = cuda_view(wide);
  k_wide.sizes = {total, H, 64};
  expect_error(fwd(qv, k_wide, vv, ov), {"k", "multiples of 8", "260"});
  TensorView k_last = kv;
  k_last.strides = {H * 64, 1, H};
  expect_error(fwd(qv, k_last, vv, ov), {"k", "last dim contiguous", "stride 2"});
  TensorView o_misaligned = ov;
  o_misaligned.data = static_cast<char*>(o_misaligned.data) + 2;
  expect_error(fwd(qv, kv, vv, o_misaligned), {"out", "16-byte aligned"});
  // seq_offsets on the GPU: only its shape and dtype can be checked.
  HostTensor offsets_f(DType::f32, {2});
  const TensorView sf = cuda_view(offsets_f);
  expect_error([&] { hstu_attention_fwd(p, qv, kv, vv, sf, nullptr, ov); }, {"seq_offsets", "float32"});
  TensorView s_cpu = offsets.view();
  expect_error([&] { hstu_attention_fwd(p, qv, kv, vv, s_cpu, nullptr, ov); }, {"seq_offsets", "cuda:0", "cpu"});
  HostTensor targets = testing::int_tensor({0, 0});
  const TensorView tv = cuda_view(targets);
  expect_error([&] { hstu_attention_fwd(p, qv, kv, vv, sv, &tv, ov); }, {"num_targets", "[1]", "[2]"});
  HostTensor dq48(DType::bf16, {total, H, 48});
  expect_error([&] { hstu_attention_bwd(p, qv, kv, vv, sv, nullptr, ov, cuda_view(dq48), ov, ov); },
               {"dq", "[5, 2, 64]"});
  p.sla_k1 = 4;
  p.causal = false;
  expect_error(fwd(qv, kv, vv, ov), {"causal", "SLA"});
}

}  // namespace
}  // namespace seqmix
