// `seqmix check` rows for the DeepSeek-V4 attention stack: each forward against the brute-force
// definitions of tests/cpp/dsa_test_util.h (HF's padded-window compressor, dense indexer scores +
// full sort, dense multiplicity-masked sink softmax, complex-multiply RoPE, HF's dense mask for the
// index lists) and each backward against fp64 central differences. Index rows count mismatched
// indices / rows as their error. On CUDA: the kernels that exist (RoPE) against the CPU backend.
#include <algorithm>
#include <cmath>
#include <set>

#include "../tests/cpp/dsa_test_util.h"
#include "check.h"
#include "seqmix/device.h"
#include "seqmix/dsa.h"

namespace seqmix::tools {
namespace {

// Deterministic values in (lo, hi) from a small LCG.
HostTensor filled(std::vector<int64_t> sizes, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  HostTensor t(DType::f64, std::move(sizes));
  uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (int64_t i = 0; i < t.numel(); ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    t.set(i, lo + (hi - lo) * static_cast<double>(state >> 11) / 9007199254740992.0);
  }
  return t;
}

double weighted(const HostTensor& out, const HostTensor& w) {
  double s = 0.0;
  for (int64_t i = 0; i < out.numel(); ++i) s += out.get(i) * w.get(i);
  return s;
}

// Max |analytic - central difference| over every `step`-th entry of `param`.
double fd_error(HostTensor& param, const HostTensor& grad, const std::function<double()>& loss, int64_t step = 1) {
  double err = 0.0;
  const double eps = 1e-6;
  for (int64_t i = 0; i < param.numel(); i += step) {
    const double saved = param.get(i);
    param.set(i, saved + eps);
    const double up = loss();
    param.set(i, saved - eps);
    const double down = loss();
    param.set(i, saved);
    err = std::max(err, std::fabs((up - down) / (2 * eps) - grad.get(i)));
  }
  return err;
}

CheckRow row_of(const char* op, double tol) {
  CheckRow row{op};
  row.tolerance = tol;
  return row;
}

void rope_rows(std::vector<CheckRow>& rows) {
  const int64_t T = 9, H = 3, D = 8, R = 6;
  HostTensor x = filled({T, H, D}, 1);
  const HostTensor cos = filled({T, R / 2}, 2), sin = filled({T, R / 2}, 3), w = filled({T, H, D}, 4);
  HostTensor out(DType::f64, {T, H, D});
  CheckRow fwd = row_of("dsa_rope_fwd (brute)", 1e-13);
  fwd.ms = time_ms([&] { dsa_rope_fwd({}, x.view(), cos.view(), sin.view(), nullptr, out.view()); });
  std::vector<double> ref = x.to_f64();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      dsa_test::rope_ref(ref.data() + (t * H + h) * D, D, cos.to_f64().data() + t * R / 2,
                         sin.to_f64().data() + t * R / 2, R / 2, false);
    }
  }
  compare(out, dsa_test::make(ref, {T, H, D}), fwd);
  rows.push_back(fwd);
  CheckRow bwd = row_of("dsa_rope_bwd (fd)", 1e-7);
  HostTensor dx(DType::f64, {T, H, D});
  bwd.ms = time_ms([&] { dsa_rope_bwd({}, w.view(), cos.view(), sin.view(), nullptr, dx.view()); });
  bwd.max_abs_err = fd_error(x, dx, [&] {
    dsa_rope_fwd({}, x.view(), cos.view(), sin.view(), nullptr, out.view());
    return weighted(out, w);
  });
  rows.push_back(bwd);
}

void compressor_rows(std::vector<CheckRow>& rows) {
  for (const bool overlap : {true, false}) {
    const int64_t m = overlap ? 4 : 8, D = 8, R = 4, width = (overlap ? 2 : 1) * D;
    const std::vector<int64_t> cu = {0, 13, 14, 14, 33};
    const int64_t T = cu.back();
    HostTensor kv = filled({T, width}, 5), gate = filled({T, width}, 6, -2, 2), bias = filled({m, width}, 7);
    HostTensor weight = filled({D}, 8, 0.5, 1.5);
    const HostTensor cos = filled({19, R / 2}, 9), sin = filled({19, R / 2}, 10);
    HostTensor cu_t(DType::i64, {5});
    for (int64_t i = 0; i < 5; ++i) cu_t.set(i, cu[static_cast<size_t>(i)]);
    const TensorView cuv = cu_t.view();
    const int64_t Tc = 13 / m + 1 / m + 19 / m;
    DsaCompressorParams params;
    params.compress_ratio = m;
    params.overlap = overlap;
    HostTensor out(DType::f64, {Tc, D});
    CheckRow fwd = row_of(overlap ? "dsa_compressor_fwd csa m=4 (brute)" : "dsa_compressor_fwd hca m=8 (brute)", 1e-12);
    fwd.ms = time_ms([&] {
      dsa_compressor_fwd(params, kv.view(), gate.view(), bias.view(), weight.view(), cos.view(), sin.view(), &cuv,
                         out.view());
    });
    std::vector<double> ref;
    const std::vector<double> kvv = kv.to_f64(), gv = gate.to_f64();
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      const std::vector<double> y = dsa_test::compressor_ref(
          {kvv.begin() + cu[b] * width, kvv.begin() + cu[b + 1] * width},
          {gv.begin() + cu[b] * width, gv.begin() + cu[b + 1] * width}, cu[b + 1] - cu[b], bias.to_f64(),
          weight.to_f64(), cos.to_f64(), sin.to_f64(), R / 2, m, overlap, params.rms_norm_eps);
      ref.insert(ref.end(), y.begin(), y.end());
    }
    compare(out, dsa_test::make(ref, {Tc, D}), fwd);
    rows.push_back(fwd);
    const HostTensor w = filled({Tc, D}, 11);
    HostTensor dkv(DType::f64, {T, width}), dgate(DType::f64, {T, width}), dbias(DType::f64, {m, width}),
        dweight(DType::f64, {D});
    CheckRow bwd = row_of(overlap ? "dsa_compressor_bwd csa (fd)" : "dsa_compressor_bwd hca (fd)", 1e-6);
    bwd.ms = time_ms([&] {
      dsa_compressor_bwd(params, kv.view(), gate.view(), bias.view(), weight.view(), cos.view(), sin.view(), &cuv,
                         w.view(), dkv.view(), dgate.view(), dbias.view(), dweight.view());
    });
    const auto loss = [&] {
      dsa_compressor_fwd(params, kv.view(), gate.view(), bias.view(), weight.view(), cos.view(), sin.view(), &cuv,
                         out.view());
      return weighted(out, w);
    };
    bwd.max_abs_err = std::max({fd_error(kv, dkv, loss, 3), fd_error(gate, dgate, loss, 3),
                                fd_error(bias, dbias, loss, 2), fd_error(weight, dweight, loss)});
    rows.push_back(bwd);
  }
}

void indexer_rows(std::vector<CheckRow>& rows) {
  const int64_t T = 29, H = 3, D = 4, m = 4, K = 3, Tc = T / m;
  HostTensor q = filled({T, H, D}, 12), k = filled({Tc, D}, 13), w = filled({T, H}, 14);
  HostTensor idx(DType::i64, {T, K}), scores(DType::f64, {T, K});
  const TensorView sv = scores.view();
  CheckRow fwd = row_of("dsa_indexer_fwd top-k (brute)", 1e-12);
  fwd.ms = time_ms([&] { dsa_indexer_fwd({}, q.view(), k.view(), w.view(), nullptr, idx.view(), &sv); });
  const double ss = 1.0 / std::sqrt(static_cast<double>(D)), ws = 1.0 / std::sqrt(static_cast<double>(H));
  const std::vector<double> dense =
      dsa_test::indexer_scores_ref(q.to_f64(), k.to_f64(), w.to_f64(), T, Tc, H, D, ss, ws);
  const std::vector<int64_t> ref = dsa_test::topk_ref(dense, T, Tc, m, K);
  for (int64_t i = 0; i < T * K; ++i) {
    const int64_t j = static_cast<int64_t>(idx.get(i));
    if (j != ref[static_cast<size_t>(i)]) fwd.max_abs_err += 1.0;
    if (j >= 0)
      fwd.max_abs_err =
          std::max(fwd.max_abs_err, std::fabs(scores.get(i) - dense[static_cast<size_t>(i / K * Tc + j)]));
  }
  fwd.max_rel_err = fwd.max_abs_err;
  rows.push_back(fwd);
  const HostTensor ds = filled({T, K}, 15);
  HostTensor dq(DType::f64, {T, H, D}), dk(DType::f64, {Tc, D}), dw(DType::f64, {T, H});
  CheckRow bwd = row_of("dsa_indexer_bwd (fd)", 1e-6);
  bwd.ms = time_ms([&] {
    dsa_indexer_bwd({}, q.view(), k.view(), w.view(), nullptr, idx.view(), ds.view(), dq.view(), dk.view(), dw.view());
  });
  const auto loss = [&] {
    const std::vector<double> s = dsa_test::indexer_scores_ref(q.to_f64(), k.to_f64(), w.to_f64(), T, Tc, H, D, ss, ws);
    double total = 0.0;
    for (int64_t i = 0; i < T * K; ++i) {
      const int64_t j = static_cast<int64_t>(idx.get(i));
      if (j >= 0) total += ds.get(i) * s[static_cast<size_t>(i / K * Tc + j)];
    }
    return total;
  };
  bwd.max_abs_err = std::max({fd_error(q, dq, loss, 2), fd_error(k, dk, loss), fd_error(w, dw, loss)});
  rows.push_back(bwd);
}

void attention_rows(std::vector<CheckRow>& rows) {
  const int64_t T = 11, H = 4, Hkv = 2, D = 8, N = 17, W = 6;
  HostTensor q = filled({T, H, D}, 16), kv = filled({N, Hkv, D}, 17), sinks = filled({H}, 18);
  const HostTensor u = filled({T, Hkv, W}, 19, 0, 1);
  HostTensor idx(DType::i64, {T, Hkv, W});
  std::vector<int64_t> lists;
  for (int64_t i = 0; i < idx.numel(); ++i) {
    const int64_t v = u.get(i) < 0.25 ? -1 : static_cast<int64_t>(u.get(i) * 1e6) % N;
    idx.set(i, static_cast<double>(v));
    lists.push_back(v);
  }
  const TensorView sv = sinks.view();
  HostTensor out(DType::f64, {T, H, D});
  CheckRow fwd = row_of("dsa_sparse_attention_fwd (brute)", 1e-12);
  fwd.ms = time_ms([&] { dsa_sparse_attention_fwd({}, q.view(), kv.view(), idx.view(), &sv, out.view()); });
  compare(out,
          dsa_test::make(dsa_test::sparse_attention_ref(q.to_f64(), kv.to_f64(), lists, sinks.to_f64(), T, H, Hkv, D, N,
                                                        W, 1.0 / std::sqrt(static_cast<double>(D))),
                         {T, H, D}),
          fwd);
  rows.push_back(fwd);
  const HostTensor g = filled({T, H, D}, 20);
  HostTensor dq(DType::f64, {T, H, D}), dkv(DType::f64, {N, Hkv, D}), dsinks(DType::f64, {H});
  const TensorView dsv = dsinks.view();
  CheckRow bwd = row_of("dsa_sparse_attention_bwd (fd)", 1e-6);
  bwd.ms = time_ms([&] {
    dsa_sparse_attention_bwd({}, q.view(), kv.view(), idx.view(), &sv, g.view(), dq.view(), dkv.view(), &dsv);
  });
  const auto loss = [&] {
    dsa_sparse_attention_fwd({}, q.view(), kv.view(), idx.view(), &sv, out.view());
    return weighted(out, g);
  };
  bwd.max_abs_err = std::max({fd_error(q, dq, loss, 3), fd_error(kv, dkv, loss, 3), fd_error(sinks, dsinks, loss)});
  rows.push_back(bwd);

  // Index lists: HCA composition vs HF's dense mask (sliding causal window + w < (pos+1)/m).
  const std::vector<int64_t> cu = {0, 10, 11, 30};
  const int64_t window = 4, m = 4, Tt = cu.back(), width = window + 30 / m;
  HostTensor cu_t(DType::i64, {4});
  for (int64_t i = 0; i < 4; ++i) cu_t.set(i, cu[static_cast<size_t>(i)]);
  const TensorView cuv = cu_t.view();
  HostTensor out_lists(DType::i64, {Tt, width});
  CheckRow lrow = row_of("dsa_sparse_indices hca (brute)", 0.0);
  lrow.ms = time_ms(
      [&] { dsa_sparse_indices({.sliding_window = window, .compress_ratio = m}, &cuv, nullptr, out_lists.view()); });
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    int64_t base = Tt;
    for (size_t i = 0; i < b; ++i) base += (cu[i + 1] - cu[i]) / m;
    for (int64_t t = cu[b]; t < cu[b + 1]; ++t) {
      std::set<int64_t> want, got;
      const int64_t pos = t - cu[b];
      for (int64_t j = 0; j < cu[b + 1] - cu[b]; ++j) {
        if (j <= pos && j > pos - window) want.insert(cu[b] + j);
      }
      for (int64_t w = 0; w < (cu[b + 1] - cu[b]) / m; ++w) {
        if (w < (pos + 1) / m) want.insert(base + w);
      }
      for (int64_t i = 0; i < width; ++i) {
        if (out_lists.get(t * width + i) >= 0) got.insert(static_cast<int64_t>(out_lists.get(t * width + i)));
      }
      if (got != want) lrow.max_abs_err += 1.0;
    }
  }
  lrow.max_rel_err = lrow.max_abs_err;
  rows.push_back(lrow);
}

// CUDA RoPE (fp32 math, one rounding to bf16) against the CPU reference on the same bf16 input,
// at V4-Flash head layout [nope 128 | rope 64]; tolerance: one bf16 ulp of |x| <= ~4.
void cuda_rope_rows(std::vector<CheckRow>& rows, Device device) {
  const int64_t tokens = 2048, heads = 8, head_dim = 192, rope_dim = 64;
  const HostTensor x = filled({tokens, heads, head_dim}, 21, -4.0, 4.0).to(DType::bf16);
  HostTensor positions(DType::i64, {tokens}), cos(DType::f32, {tokens, rope_dim / 2}), sin(DType::f32, {tokens, rope_dim / 2});
  for (int64_t t = 0; t < tokens; ++t) positions.data_as<int64_t>()[t] = t;
  DsaRopeTableParams table;
  table.rope_dim = rope_dim;
  dsa_rope_cos_sin(table, positions.view(), cos.view(), sin.view());
  CudaTensor dx = CudaTensor::from_host(x, device.index), dcos = CudaTensor::from_host(cos, device.index);
  CudaTensor dsin = CudaTensor::from_host(sin, device.index), dout(DType::bf16, {tokens, heads, head_dim}, device.index);
  for (const bool inverse : {false, true}) {
    CheckRow row{inverse ? "dsa_rope_bwd bf16 T2048 H8 D192 vs cpu" : "dsa_rope_fwd bf16 T2048 H8 D192 vs cpu"};
    row.tolerance = 4.0 * std::ldexp(1.0, -7);
    HostTensor expected(DType::bf16, {tokens, heads, head_dim});
    if (inverse) {
      dsa_rope_bwd({}, x.view(), cos.view(), sin.view(), nullptr, expected.view());
    } else {
      dsa_rope_fwd({}, x.view(), cos.view(), sin.view(), nullptr, expected.view());
    }
    row.ms = time_ms([&] {
      if (inverse) {
        dsa_rope_bwd({}, dx.view(), dcos.view(), dsin.view(), nullptr, dout.view());
      } else {
        dsa_rope_fwd({}, dx.view(), dcos.view(), dsin.view(), nullptr, dout.view());
      }
      cuda_synchronize();
    });
    compare(dout.to_host(), expected, row);
    rows.push_back(row);
  }
}

std::vector<CheckRow> check_dsa(Device device) {
  std::vector<CheckRow> rows;
  if (device.type == DeviceType::cuda) {
    cuda_rope_rows(rows, device);
    return rows;
  }
  rope_rows(rows);
  compressor_rows(rows);
  indexer_rows(rows);
  attention_rows(rows);
  return rows;
}

const CheckRegistrar registrar("dsa", check_dsa);

}  // namespace
}  // namespace seqmix::tools
