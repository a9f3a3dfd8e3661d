// `seqmix check` rows for HSTU attention: the forward against a dense brute force that states
// each mask in words ("brute"; tgt = num_targets, ctx = contextual_seq_len, win = max_attn_len),
// the backward against fp64 central differences of every entry ("fd"). On CUDA: the kernels on
// bf16 inputs against the CPU reference run in fp64 on the same values ("cpu"); their max_abs_err
// column is max |err| / max |ref| per tensor (worst of dq, dk, dv for the backward), tolerance
// 2e-2 (tests/cpp/hstu_cuda_test.cpp explains the bound).
#include <algorithm>
#include <cmath>

#include "check.h"
#include "seqmix/device.h"
#include "seqmix/hstu.h"

namespace seqmix::tools {
namespace {

struct Problem {
  std::vector<int64_t> lengths = {7, 1, 0, 5, 3};
  std::vector<int64_t> targets = {2, 1, 0, 0, 3};
  int64_t heads = 2, dqk = 8, dv = 4;
  HostTensor q, k, v, seq_offsets, num_targets;
  int64_t total = 0;

  explicit Problem(bool with_targets) {
    if (!with_targets) targets.clear();
    std::vector<int64_t> offsets = {0};
    for (int64_t n : lengths) offsets.push_back(offsets.back() + n);
    total = offsets.back();
    seq_offsets = HostTensor(DType::i64, {static_cast<int64_t>(offsets.size())});
    for (size_t i = 0; i < offsets.size(); ++i) seq_offsets.set(static_cast<int64_t>(i), offsets[i]);
    num_targets = HostTensor(DType::i64, {static_cast<int64_t>(lengths.size())});
    for (size_t i = 0; i < targets.size(); ++i) num_targets.set(static_cast<int64_t>(i), targets[i]);
    q = filled({total, heads, dqk}, 1);
    k = filled({total, heads, dqk}, 2);
    v = filled({total, heads, dv}, 3);
  }

  // Deterministic values in (-1, 1) from a small LCG.
  static HostTensor filled(std::vector<int64_t> sizes, uint64_t seed) {
    HostTensor t(DType::f64, std::move(sizes));
    uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    for (int64_t i = 0; i < t.numel(); ++i) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      t.set(i, static_cast<double>(state >> 11) / 4503599627370496.0 - 1.0);
    }
    return t;
  }

  const TensorView* targets_view(TensorView& storage) const {
    storage = num_targets.view();
    return targets.empty() ? nullptr : &storage;
  }

  HostTensor forward(const HstuAttentionParams& p) const {
    HostTensor out(DType::f64, {total, heads, dv});
    TensorView storage;
    hstu_attention_fwd(p, q.view(), k.view(), v.view(), seq_offsets.view(), targets_view(storage), out.view());
    return out;
  }
};

// Row i attends column j of a sequence of length n with t targets and history h = n - t,
// in the words of the peers' docs (positions, not the GR reference's ids):
//   SLA: history rows see the global prefix j < max(sla_k2, contextual) and the window
//        (i - sla_k1, i], causally; targets see all history and not themselves.
//   else: contextual rows (i < c) see all history (and themselves); others attend causally
//        (or both ways) with the prefix collapsed to one position and the targets collapsed
//        onto the history boundary, within max_attn_len of it; targets always see themselves.
bool attends(const HstuAttentionParams& p, int64_t n, int64_t t, int64_t i, int64_t j) {
  const int64_t h = n - t;
  if (p.sla_k1 > 0 || p.sla_k2 > 0) {
    if (i >= h) return j < h;
    return j <= i && (j < std::max(p.sla_k2, p.contextual_seq_len) || j > i - p.sla_k1);
  }
  const int64_t c = p.contextual_seq_len;
  // Position after collapsing the prefix [0, c) to 0 and the targets [h, n) to the boundary.
  const auto collapse = [&](int64_t x) {
    const int64_t y = c > 0 ? std::max<int64_t>(x - c + 1, 0) : x;
    return std::min(y, c > 0 ? h - c + 1 : h);
  };
  const int64_t boundary = c > 0 ? h - c + 1 : h;
  if (c > 0 && collapse(i) == 0 && collapse(j) < boundary) return true;
  if (i == j) return true;
  const int64_t distance = p.causal ? collapse(i) - collapse(j) : std::abs(collapse(i) - collapse(j));
  if (distance <= 0) return false;
  if (p.max_attn_len == 0) return true;
  const bool full_row = p.min_full_attn_seq_len > 0 && collapse(i) >= boundary - p.min_full_attn_seq_len;
  return distance <= p.max_attn_len || full_row;
}

HostTensor dense_reference(const HstuAttentionParams& p, const Problem& pr) {
  HostTensor out(DType::f64, {pr.total, pr.heads, pr.dv});
  const double scaling = static_cast<double>(p.scaling_seqlen == -1 ? p.max_seq_len : p.scaling_seqlen);
  int64_t start = 0;
  for (size_t s = 0; s < pr.lengths.size(); ++s) {
    const int64_t n = pr.lengths[s], t = pr.targets.empty() ? 0 : pr.targets[s];
    for (int64_t h = 0; h < pr.heads; ++h) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          if (!attends(p, n, t, i, j)) continue;
          double x = 0.0;
          for (int64_t d = 0; d < pr.dqk; ++d) {
            x += pr.q.get(((start + i) * pr.heads + h) * pr.dqk + d) * pr.k.get(((start + j) * pr.heads + h) * pr.dqk + d);
          }
          x *= p.alpha;
          const double weight = x / (1.0 + std::exp(-x)) / scaling;
          for (int64_t e = 0; e < pr.dv; ++e) {
            const int64_t o = ((start + i) * pr.heads + h) * pr.dv + e;
            out.set(o, out.get(o) + weight * pr.v.get(((start + j) * pr.heads + h) * pr.dv + e));
          }
        }
      }
    }
    start += n;
  }
  return out;
}

struct Config {
  const char* name;
  bool targets;
  HstuAttentionParams params;
};

std::vector<Config> configs() {
  auto make = [](auto&& set) {
    HstuAttentionParams p;
    p.max_seq_len = 8;
    p.alpha = 0.7;
    set(p);
    return p;
  };
  return {
      {"causal", false, make([](auto&) {})},
      {"tgt+ctx", true, make([](auto& p) { p.contextual_seq_len = 2; })},
      {"tgt+win+min_full", true, make([](auto& p) { p.max_attn_len = 2, p.min_full_attn_seq_len = 1; })},
      {"noncausal+ctx+win", true,
       make([](auto& p) { p.causal = false, p.contextual_seq_len = 2, p.max_attn_len = 2; })},
      {"sla+tgt+ctx", true, make([](auto& p) { p.sla_k1 = 2, p.sla_k2 = 1, p.contextual_seq_len = 2; })},
      {"sla_prefix+scaling", true, make([](auto& p) { p.sla_k2 = 3, p.scaling_seqlen = 5; })},
  };
}

// CUDA vs CPU on sequences spanning several 64-row tiles (and empty / length-1 ones), D = 128.
std::vector<CheckRow> check_hstu_cuda(Device device) {
  const std::vector<int64_t> lengths = {300, 1, 0, 65, 130};
  const std::vector<int64_t> targets = {20, 1, 0, 0, 64};
  const int64_t heads = 2, dim = 128;
  std::vector<int64_t> offsets = {0};
  for (int64_t n : lengths) offsets.push_back(offsets.back() + n);
  const int64_t total = offsets.back();
  HostTensor seq_offsets(DType::i64, {static_cast<int64_t>(offsets.size())});
  for (size_t i = 0; i < offsets.size(); ++i) seq_offsets.set(static_cast<int64_t>(i), offsets[i]);
  HostTensor num_targets(DType::i64, {static_cast<int64_t>(targets.size())});
  for (size_t i = 0; i < targets.size(); ++i) num_targets.set(static_cast<int64_t>(i), targets[i]);
  // Uniform (-1, 1) entries scaled to unit variance, rounded to bf16; the reference reads the same values.
  auto input = [&](uint64_t seed) {
    HostTensor x = Problem::filled({total, heads, dim}, seed);
    for (int64_t i = 0; i < x.numel(); ++i) x.set(i, x.get(i) * std::sqrt(3.0));
    return x.to(DType::bf16);
  };
  const HostTensor q = input(11), k = input(12), v = input(13), dout = input(14);
  const CudaTensor qg = CudaTensor::from_host(q, device.index), kg = CudaTensor::from_host(k, device.index),
                   vg = CudaTensor::from_host(v, device.index), dog = CudaTensor::from_host(dout, device.index),
                   offsets_g = CudaTensor::from_host(seq_offsets, device.index),
                   targets_g = CudaTensor::from_host(num_targets, device.index);
  const HostTensor q64 = q.to(DType::f64), k64 = k.to(DType::f64), v64 = v.to(DType::f64), do64 = dout.to(DType::f64);
  std::vector<CheckRow> rows;
  auto make = [&](auto&& set) {
    HstuAttentionParams p;
    p.max_seq_len = 300;
    p.alpha = 1.0 / std::sqrt(static_cast<double>(dim));
    set(p);
    return p;
  };
  const Config cuda_configs[] = {
      {"causal", false, make([](auto&) {})},
      {"tgt+ctx", true, make([](auto& p) { p.contextual_seq_len = 6; })},
      {"tgt+win+min_full", true, make([](auto& p) { p.max_attn_len = 40, p.min_full_attn_seq_len = 20; })},
      {"noncausal+ctx+win", true,
       make([](auto& p) { p.causal = false, p.contextual_seq_len = 6, p.max_attn_len = 40; })},
      {"sla+tgt+ctx", true, make([](auto& p) { p.sla_k1 = 70, p.sla_k2 = 20, p.contextual_seq_len = 30; })},
      {"sla_prefix+scaling", true, make([](auto& p) { p.sla_k2 = 66, p.scaling_seqlen = 50; })},
  };
  for (const Config& c : cuda_configs) {
    const TensorView targets_host = num_targets.view(), targets_dev = targets_g.view();
    const TensorView* th = c.targets ? &targets_host : nullptr;
    const TensorView* td = c.targets ? &targets_dev : nullptr;
    HostTensor out64(DType::f64, {total, heads, dim}), dq64(DType::f64, {total, heads, dim}),
        dk64(DType::f64, {total, heads, dim}), dv64(DType::f64, {total, heads, dim});
    hstu_attention_fwd(c.params, q64.view(), k64.view(), v64.view(), seq_offsets.view(), th, out64.view());
    hstu_attention_bwd(c.params, q64.view(), k64.view(), v64.view(), seq_offsets.view(), th, do64.view(),
                       dq64.view(), dk64.view(), dv64.view());
    CudaTensor out(DType::bf16, {total, heads, dim}, device.index), dq(DType::bf16, {total, heads, dim}, device.index),
        dk(DType::bf16, {total, heads, dim}, device.index), dv(DType::bf16, {total, heads, dim}, device.index);
    auto scale_of = [](const HostTensor& t) {
      double m = 0.0;
      for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(t.get(i)));
      return m;
    };
    CheckRow fwd{std::string("hstu_attention_fwd[") + c.name + "] cpu"};
    fwd.ms = time_ms([&] {
      hstu_attention_fwd(c.params, qg.view(), kg.view(), vg.view(), offsets_g.view(), td, out.view());
      cuda_synchronize();
    });
    compare(out.to_host(), out64, fwd);
    fwd.max_abs_err /= std::max(scale_of(out64), 1e-30);  // scaled: max |err| / max |ref|
    fwd.tolerance = 2e-2;
    rows.push_back(fwd);
    CheckRow bwd{std::string("hstu_attention_bwd[") + c.name + "] cpu"};
    bwd.ms = time_ms([&] {
      hstu_attention_bwd(c.params, qg.view(), kg.view(), vg.view(), offsets_g.view(), td, dog.view(), dq.view(),
                         dk.view(), dv.view());
      cuda_synchronize();
    });
    // One row for three tensors of different scales: each error is measured against its own scale.
    double worst = 0.0;
    for (auto [got, ref] : {std::pair{&dq, &dq64}, std::pair{&dk, &dk64}, std::pair{&dv, &dv64}}) {
      CheckRow part;
      compare(got->to_host(), *ref, part);
      worst = std::max(worst, part.max_abs_err / std::max(scale_of(*ref), 1e-30));
      bwd.max_rel_err = std::max(bwd.max_rel_err, part.max_rel_err);
    }
    bwd.max_abs_err = worst;  // scaled: max over dq, dk, dv of max |err| / max |ref|
    bwd.tolerance = 2e-2;
    rows.push_back(bwd);
  }
  return rows;
}

std::vector<CheckRow> check_hstu(Device device) {
  if (device.type == DeviceType::cuda) return check_hstu_cuda(device);
  std::vector<CheckRow> rows;
  for (const Config& c : configs()) {
    const Problem pr(c.targets);
    CheckRow row{std::string("hstu_attention_fwd[") + c.name + "] brute"};
    row.tolerance = 1e-12;
    HostTensor out;
    row.ms = time_ms([&] { out = pr.forward(c.params); });
    compare(out, dense_reference(c.params, pr), row);
    rows.push_back(row);
  }
  // Backward: every entry of dq, dk, dv against central differences of sum(out * w).
  for (const Config& c : {configs()[2], configs()[4]}) {
    Problem pr(c.targets);
    const HostTensor w = Problem::filled({pr.total, pr.heads, pr.dv}, 9);
    HostTensor dq(DType::f64, pr.q.sizes()), dk(DType::f64, pr.k.sizes()), dv(DType::f64, pr.v.sizes());
    CheckRow row{std::string("hstu_attention_bwd[") + c.name + "] fd"};
    row.tolerance = 1e-7;
    TensorView storage;
    row.ms = time_ms([&] {
      hstu_attention_bwd(c.params, pr.q.view(), pr.k.view(), pr.v.view(), pr.seq_offsets.view(),
                         pr.targets_view(storage), w.view(), dq.view(), dk.view(), dv.view());
    });
    const auto loss = [&] {
      const HostTensor out = pr.forward(c.params);
      double s = 0.0;
      for (int64_t i = 0; i < out.numel(); ++i) s += out.get(i) * w.get(i);
      return s;
    };
    for (auto [param, grad] : {std::pair{&pr.q, &dq}, std::pair{&pr.k, &dk}, std::pair{&pr.v, &dv}}) {
      HostTensor numeric(DType::f64, param->sizes());
      constexpr double kStep = 1e-6;
      for (int64_t i = 0; i < param->numel(); ++i) {
        const double saved = param->get(i);
        param->set(i, saved + kStep);
        const double plus = loss();
        param->set(i, saved - kStep);
        const double minus = loss();
        param->set(i, saved);
        numeric.set(i, (plus - minus) / (2 * kStep));
      }
      compare(*grad, numeric, row);
    }
    rows.push_back(row);
  }
  return rows;
}

const CheckRegistrar registrar("hstu", check_hstu);

}  // namespace
}  // namespace seqmix::tools
