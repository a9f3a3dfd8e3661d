// Parity with HF transformers `models/deepseek_v4` on the golden cases of tests/golden/gen_dsa.py:
// rope (tables, rotation, inverse, backward), and per attention layer (sliding / CSA / HCA) the
// compressor, the indexer's compressor + q rope + scores / top-k + score backward, the index-list
// composition against HF's mask and the sink attention forward / backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "cpu/dsa/rope.h"
#include "dsa_test_util.h"
#include "seqmix/dsa.h"
#include "test_util.h"

namespace seqmix {
namespace {

using dsa_test::reshaped;
using testing::golden_tensor;
using testing::max_abs;

// fp64 parity: |ours - HF| <= 1e-9 * max(1, max |HF|).
void expect_close(const HostTensor& got, const HostTensor& ref, const std::string& what) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  EXPECT_LE(testing::max_abs_diff(got, reshaped(ref, got.sizes())), 1e-9 * std::max(1.0, max_abs(ref))) << what;
}

double scalar(const testing::GoldenCase& c, const std::string& name) { return golden_tensor(c, name).get(0); }

DsaRopeTableParams table_params(const testing::GoldenCase& c, int64_t rope_dim) {
  DsaRopeTableParams p;
  p.rope_dim = rope_dim;
  p.rope_theta = scalar(c, "rope_theta");
  p.yarn = scalar(c, "rope_yarn") != 0.0;
  if (p.yarn) {
    p.yarn_factor = scalar(c, "rope_factor");
    p.original_max_position_embeddings = scalar(c, "rope_original_max_position_embeddings");
    p.beta_fast = scalar(c, "rope_beta_fast");
    p.beta_slow = scalar(c, "rope_beta_slow");
  }
  return p;
}

void check_rope(const testing::GoldenCase& c) {
  const HostTensor& x = golden_tensor(c, "x");
  const HostTensor& cos = golden_tensor(c, "cos");
  const HostTensor& sin = golden_tensor(c, "sin");
  const HostTensor& positions = golden_tensor(c, "positions");
  const int64_t P = x.size(0), half = cos.size(1);
  HostTensor out(DType::f64, x.sizes());
  for (bool inverse : {false, true}) {
    dsa_rope_fwd({.inverse = inverse}, x.view(), cos.view(), sin.view(), nullptr, out.view());
    expect_close(out, golden_tensor(c, inverse ? "out_inv" : "out"), inverse ? "rope inverse" : "rope");
    dsa_rope_bwd({.inverse = inverse}, golden_tensor(c, "dout").view(), cos.view(), sin.view(), nullptr, out.view());
    expect_close(out, golden_tensor(c, inverse ? "dx_inv" : "dx"), inverse ? "rope bwd inverse" : "rope bwd");
  }
  // Tables: HF computes them in float32 with vectorised pow / cos, we emulate the fp32 steps with
  // correctly rounded libm, so they agree to ~1 fp32 ulp of inv_freq, i.e. |d angle| <= pos * 2^-23.
  DsaRopeTableParams p = table_params(c, 2 * half);
  p.attention_scaling = scalar(c, "attention_scaling");
  const std::vector<double> inv = cpu::dsa_rope_inv_freq(p);
  const HostTensor& hf_inv = golden_tensor(c, "inv_freq");
  for (int64_t i = 0; i < half; ++i) {
    EXPECT_NEAR(inv[static_cast<size_t>(i)], hf_inv.get(i), 2.4e-7 * hf_inv.get(i)) << "inv_freq " << i;
  }
  HostTensor ours_cos(DType::f64, {P, half}), ours_sin(DType::f64, {P, half});
  dsa_rope_cos_sin(p, positions.view(), ours_cos.view(), ours_sin.view());
  for (int64_t t = 0; t < P; ++t) {
    const double tol = 2.4e-7 * (1.0 + std::fabs(positions.get(t)) * hf_inv.get(0));
    for (int64_t i = 0; i < half; ++i) {
      EXPECT_NEAR(ours_cos.get(t * half + i), cos.get(t * half + i), tol) << "cos pos " << positions.get(t);
      EXPECT_NEAR(ours_sin.get(t * half + i), sin.get(t * half + i), tol) << "sin pos " << positions.get(t);
    }
  }
}

// Runs our compressor on HF's dense [B, S, C*D] kv / gate and compares out and the gradients.
void check_compressor(const testing::GoldenCase& c, const std::string& prefix, const std::string& out_name,
                      const std::string& dout_name, const std::string& cos_name, const std::string& sin_name,
                      int64_t ratio) {
  const HostTensor& kv = golden_tensor(c, prefix + "kv");
  const HostTensor& gate = golden_tensor(c, prefix + "gate");
  const HostTensor& bias = golden_tensor(c, prefix + "position_bias");
  const HostTensor& weight = golden_tensor(c, prefix + "norm_weight");
  const HostTensor& cos = golden_tensor(c, cos_name);
  const HostTensor& sin = golden_tensor(c, sin_name);
  DsaCompressorParams params;
  params.compress_ratio = ratio;
  params.overlap = kv.size(2) == 2 * weight.size(0);
  params.rms_norm_eps = scalar(c, "rms_norm_eps");
  const HostTensor& ref = golden_tensor(c, out_name);
  HostTensor out(DType::f64, {kv.size(0), kv.size(1) / ratio, weight.size(0)});
  dsa_compressor_fwd(params, kv.view(), gate.view(), bias.view(), weight.view(), cos.view(), sin.view(), nullptr,
                     out.view());
  expect_close(out, ref, prefix + "compressor out");
  HostTensor dkv(DType::f64, kv.sizes()), dgate(DType::f64, gate.sizes()), dbias(DType::f64, bias.sizes()),
      dweight(DType::f64, weight.sizes());
  dsa_compressor_bwd(params, kv.view(), gate.view(), bias.view(), weight.view(), cos.view(), sin.view(), nullptr,
                     reshaped(golden_tensor(c, dout_name), out.sizes()).view(), dkv.view(), dgate.view(), dbias.view(),
                     dweight.view());
  expect_close(dkv, golden_tensor(c, prefix + "dkv"), prefix + "dkv");
  expect_close(dgate, golden_tensor(c, prefix + "dgate"), prefix + "dgate");
  expect_close(dbias, golden_tensor(c, prefix + "dposition_bias"), prefix + "dposition_bias");
  expect_close(dweight, golden_tensor(c, prefix + "dnorm_weight"), prefix + "dnorm_weight");
}

void check_indexer(const testing::GoldenCase& c, int64_t B, int64_t S, int64_t ratio, const HostTensor& cu) {
  const HostTensor& q_pre = golden_tensor(c, "idx_q_pre");
  const int64_t HI = q_pre.size(2), DI = q_pre.size(3);
  // q rope at the token positions (row = position in the sequence).
  std::vector<int64_t> positions;
  for (int64_t t = 0; t < B * S; ++t) positions.push_back(t % S);
  const HostTensor pos = testing::int_tensor(positions);
  const TensorView pv = pos.view();
  HostTensor q(DType::f64, {B * S, HI, DI});
  dsa_rope_fwd({}, reshaped(q_pre, {B * S, HI, DI}).view(), golden_tensor(c, "idx_q_cos").view(),
               golden_tensor(c, "idx_q_sin").view(), &pv, q.view());
  expect_close(q, golden_tensor(c, "idx_q"), "indexer q rope");

  const HostTensor keys = reshaped(golden_tensor(c, "idx_keys"), {golden_tensor(c, "idx_keys").numel() / DI, DI});
  const HostTensor weights = reshaped(golden_tensor(c, "idx_weights"), {B * S, HI});
  const HostTensor& hf_topk = golden_tensor(c, "idx_topk");      // [B, S, k_hf], k_hf = min(index_topk, T_c)
  const HostTensor& hf_scores = golden_tensor(c, "idx_scores");  // [B, S, T_c] dense, before HF's causal mask
  const int64_t K = static_cast<int64_t>(scalar(c, "index_topk")), k_hf = hf_topk.size(2), Tc = hf_scores.size(2);
  DsaIndexerParams params;
  params.compress_ratio = ratio;
  EXPECT_NEAR(1.0 / std::sqrt(static_cast<double>(DI)), scalar(c, "softmax_scale"), 1e-15);
  EXPECT_NEAR(1.0 / std::sqrt(static_cast<double>(HI)), scalar(c, "weights_scaling"), 1e-15);
  HostTensor idx(DType::i64, {B * S, K}), scores(DType::f64, {B * S, K});
  const TensorView cuv = cu.view(), sv = scores.view();
  const HostTensor q_hf = reshaped(golden_tensor(c, "idx_q"), {B * S, HI, DI});
  dsa_indexer_fwd(params, q_hf.view(), keys.view(), weights.view(), &cuv, idx.view(), &sv);
  const double scale = std::max(1.0, max_abs(hf_scores));
  for (int64_t t = 0; t < B * S; ++t) {
    std::vector<double> ours, theirs;
    for (int64_t i = 0; i < K; ++i) {
      const int64_t j = static_cast<int64_t>(idx.get(t * K + i));
      if (j < 0) continue;
      const double hf = hf_scores.get(t * Tc + j);
      EXPECT_NEAR(scores.get(t * K + i), hf, 1e-9 * scale) << "score t " << t << " entry " << j;
      ours.push_back(hf);
    }
    for (int64_t i = 0; i < k_hf; ++i) {
      const int64_t j = static_cast<int64_t>(hf_topk.get(t * k_hf + i));
      if (j >= 0) theirs.push_back(hf_scores.get(t * Tc + j));
    }
    // Same selection up to exactly tied scores (torch.topk leaves their order open): the sorted
    // selected scores agree, and without ties the indices agree in order.
    ASSERT_EQ(ours.size(), theirs.size()) << "valid entries of row " << t;
    std::vector<double> a = ours, b = theirs;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-9 * scale) << "row " << t;
    bool ties = false;
    for (size_t i = 1; i < b.size(); ++i) ties |= std::fabs(b[i] - b[i - 1]) < 1e-9 * scale;
    if (!ties && a.size() == ours.size()) {
      for (int64_t i = 0; i < static_cast<int64_t>(ours.size()); ++i) {
        EXPECT_EQ(idx.get(t * K + i), hf_topk.get(t * k_hf + i)) << "row " << t << " rank " << i;
      }
    }
  }
  // Score backward on HF's selection (padded to width K with -1 / 0).
  HostTensor sel(DType::i64, {B * S, K}), ds(DType::f64, {B * S, K});
  const HostTensor& hf_ds = golden_tensor(c, "idx_dscores");
  for (int64_t t = 0; t < B * S; ++t) {
    for (int64_t i = 0; i < K; ++i) {
      sel.set(t * K + i, i < k_hf ? hf_topk.get(t * k_hf + i) : -1);
      ds.set(t * K + i, i < k_hf ? hf_ds.get(t * k_hf + i) : 0.0);
    }
  }
  HostTensor dq(DType::f64, q_hf.sizes()), dk(DType::f64, keys.sizes()), dw(DType::f64, weights.sizes());
  dsa_indexer_bwd(params, q_hf.view(), keys.view(), weights.view(), &cuv, sel.view(), ds.view(), dq.view(), dk.view(),
                  dw.view());
  expect_close(dq, golden_tensor(c, "idx_dq"), "indexer dq");
  expect_close(dk, golden_tensor(c, "idx_dk"), "indexer dk");
  expect_close(dw, golden_tensor(c, "idx_dweights"), "indexer dweights");
}

void check_layer(const testing::GoldenCase& c) {
  const HostTensor& q_hf = golden_tensor(c, "attn_q");    // [B, S, H, D]
  const HostTensor& kv_hf = golden_tensor(c, "attn_kv");  // [B, S + T_c, D]
  const int64_t B = q_hf.size(0), S = q_hf.size(1), H = q_hf.size(2), D = q_hf.size(3);
  const int64_t Tc = kv_hf.size(1) - S, N = B * (S + Tc);
  const int64_t ratio = static_cast<int64_t>(scalar(c, "compress_ratio"));
  const int64_t window = static_cast<int64_t>(scalar(c, "sliding_window"));
  const bool csa = c.count("idx_topk") > 0;
  std::vector<int64_t> offsets;
  for (int64_t b = 0; b <= B; ++b) offsets.push_back(b * S);
  const HostTensor cu = testing::int_tensor(offsets);
  // HF column `col` of batch b -> our kv_all row: tokens first, then the compressed entries.
  const auto row_of = [&](int64_t b, int64_t col) { return col < S ? b * S + col : B * S + b * Tc + (col - S); };
  HostTensor kv(DType::f64, {N, 1, D});
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t col = 0; col < S + Tc; ++col) {
      for (int64_t d = 0; d < D; ++d) kv.set(row_of(b, col) * D + d, kv_hf.get((b * (S + Tc) + col) * D + d));
    }
  }
  if (ratio > 0) {
    check_compressor(c, "comp_", "comp_out", "comp_dout", "comp_cos", "comp_sin", ratio);
  }
  if (csa) {
    check_compressor(c, "idx_", "idx_keys", "idx_dkeys", "idx_key_cos", "idx_key_sin", ratio);
    check_indexer(c, B, S, ratio, cu);
  }
  // Index lists vs HF's mask.
  const HostTensor& hf_lists = golden_tensor(c, "attn_lists");  // [B, S, W_hf] allowed columns
  HostTensor topk;
  if (csa) topk = reshaped(golden_tensor(c, "idx_topk"), {B * S, golden_tensor(c, "idx_topk").size(2)});
  const TensorView cuv = cu.view(), tkv = topk.view();
  const int64_t width = std::min(window, S) + (ratio == 0 ? 0 : (csa ? topk.size(1) : S / ratio));
  HostTensor lists(DType::i64, {B * S, 1, width});
  dsa_sparse_indices({.sliding_window = window, .compress_ratio = ratio}, &cuv, csa ? &tkv : nullptr, lists.view());
  for (int64_t t = 0; t < B * S; ++t) {
    std::set<int64_t> ours, theirs;
    for (int64_t w = 0; w < width; ++w) {
      if (lists.get(t * width + w) >= 0) ours.insert(static_cast<int64_t>(lists.get(t * width + w)));
    }
    for (int64_t w = 0; w < hf_lists.size(2); ++w) {
      const int64_t col = static_cast<int64_t>(hf_lists.get(t * hf_lists.size(2) + w));
      if (col >= 0) theirs.insert(row_of(t / S, col));
    }
    EXPECT_EQ(ours, theirs) << "allowed kv rows of token " << t;
  }
  // Sink attention forward / backward.
  const HostTensor& sinks = golden_tensor(c, "sinks");
  const TensorView sv = sinks.view();
  const DsaSparseAttentionParams params{.softmax_scale = scalar(c, "scaling")};
  const HostTensor q = reshaped(q_hf, {B * S, H, D});
  HostTensor out(DType::f64, {B * S, H, D});
  dsa_sparse_attention_fwd(params, q.view(), kv.view(), lists.view(), &sv, out.view());
  expect_close(out, golden_tensor(c, "attn_out"), "attention out");
  HostTensor dq(DType::f64, q.sizes()), dkv(DType::f64, kv.sizes()), dsinks(DType::f64, sinks.sizes());
  const TensorView dsv = dsinks.view();
  dsa_sparse_attention_bwd(params, q.view(), kv.view(), lists.view(), &sv,
                           reshaped(golden_tensor(c, "attn_dout"), {B * S, H, D}).view(), dq.view(), dkv.view(), &dsv);
  expect_close(dq, golden_tensor(c, "attn_dq"), "attention dq");
  expect_close(dsinks, golden_tensor(c, "attn_dsinks"), "attention dsinks");
  const HostTensor& dkv_hf = golden_tensor(c, "attn_dkv");
  HostTensor dkv_hf_rows(DType::f64, {N, 1, D});
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t col = 0; col < S + Tc; ++col) {
      for (int64_t d = 0; d < D; ++d) dkv_hf_rows.set(row_of(b, col) * D + d, dkv_hf.get((b * (S + Tc) + col) * D + d));
    }
  }
  expect_close(dkv, dkv_hf_rows, "attention dkv");
}

TEST(DsaGolden, EveryCaseMatchesHf) {
  const std::vector<std::string> files = testing::list_golden("dsa");
  ASSERT_FALSE(files.empty()) << "no golden files under tests/golden/dsa: run tests/golden/gen_dsa.py";
  int rope = 0, layers = 0;
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const testing::GoldenCase c = testing::load_golden(file);
    if (c.count("attn_q")) {
      check_layer(c);
      ++layers;
    } else {
      check_rope(c);
      ++rope;
    }
  }
  EXPECT_GT(rope, 0);
  EXPECT_GT(layers, 0);
}

}  // namespace
}  // namespace seqmix
