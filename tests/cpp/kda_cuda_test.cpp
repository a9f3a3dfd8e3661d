// KDA CUDA kernels against the CPU reference (fp64 arithmetic on the same low-precision inputs):
// forward outputs, final state and intermediate states (FLA's h), every gradient, over odd / short / long lengths,
// varlen packs with empty and length-1 sequences, GVA, every option, bf16 / f16 / f32 inputs, strong decay.
//
// Tolerances (errors relative to the reference's scale: rms = ||x - ref||_2 / ||ref||_2,
// max = max |x - ref| / max |ref|):
//   bf16 / f16 outputs, dg, dbeta: rms 5e-3, max 2e-2 (FLA's chunk_kda tests: o 5e-3, dg and dbeta 2e-2).
//     Rounding the result to bf16 alone gives rms ~ 2^-9 / sqrt(3) ~ 1.1e-3 and max up to 2^-8 ~ 3.9e-3 of an
//     element.
//   bf16 / f16 dq, dk, dv: rms 8e-3, max 2e-2, FLA's chunk_kda tolerance for them. The state gradient dS' reaches
//     them through bf16 scratch (as FLA's dh), and a one-token sequence has few enough entries that one rounding
//     shows: B1 T1 K64 dk measured rms 5.6e-3 on the H100.
//   fp32 states (final state, intermediate states = FLA's h, dh0) of bf16 / f16 inputs: rms 5e-3 (FLA's own
//     ht tolerance; it allows 8e-3 for dh0), max 1e-2: the state passes multiply bf16 operands as FLA does.
//   fp32 parameter gradients dA_log, ddt_bias: rms 2e-3, max 1e-2 (bf16 / f16 inputs), relative to the sum
//     of the magnitudes of the terms they add up (gate_param_scales), not to their value: each is one sum over
//     every token (and channel) of terms that can nearly cancel, so its relative error is unbounded even
//     when every term is within tolerance. They sum dg, whose bf16-operand products are off by ~3e-3 rms.
//   f32 inputs: rms 1e-4, max 1e-3 everywhere (fp32 arithmetic against fp64; 3xTF32 products, fp32 scratch).
// For bf16 / f16 inputs, as in FLA's kernels: the state passes, the output and wy_bwd multiply bf16 operands
// (m16n8k16, fp32 accumulation, fp32 states), and the arrays they exchange (w, u, kl, hs, v_new, qg, dS', dv_new)
// are bf16; chunk_fwd and pair_bwd multiply one-pass TF32 (10-bit operands). Measured on the H100 (2026-11-23,
// session e call 2, every 16-bit case of this file), rms / max: o 3.2e-3 / 5.4e-3, dq 3.1e-3 / 4.6e-3, dk
// 5.6e-3 / 5.4e-3, dv 3.8e-3 / 6.4e-3, dg 3.0e-3 / 5.2e-3, dbeta 3.5e-3 / 6.7e-3, final state 2.9e-3 / 5.2e-3,
// intermediate states 2.7e-3 / 3.4e-3, dh0 2.4e-3 / 4.1e-3, ddt_bias 1.4e-3 / 5.9e-3. (With fp32 scratch and a
// TF32 output, the session before: o 1.8e-3, dk 3.6e-3 rms.) An fp64 emulation of TF32 operand rounding gave
// dA_log up to ~5e-3 relative to its value on short random cases, hence the term-magnitude scale above.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/kda/kda.h"
#include "cuda/kda/roofline.h"
#include "seqmix/device.h"
#include "seqmix/kda.h"
#include "test_util.h"

namespace seqmix {
namespace {

enum class Gate { none, softplus, lower_bound };

struct Case {
  std::string name;
  int64_t B = 1, T = 100, H = 1, HV = 1, K = 64;
  std::vector<int64_t> cu_seqlens;  // empty: none
  DType cu_dtype = DType::i32;
  bool l2norm = false;
  Gate gate = Gate::none;
  bool A_log = false, dt_bias = false;
  bool beta_sigmoid = false, neg_eigval = false;
  bool h0 = false, ht = false, v_first = false;
  std::optional<DType> intermediate;  // FLA's h (intermediate_states) in this dtype; none when absent
  double g_lo = -1.0, g_hi = -0.01;  // log decay range without the fused gate
  DType dtype = DType::bf16;
  bool backward = true;

  int64_t V() const { return K; }
  int64_t N() const { return cu_seqlens.empty() ? B : static_cast<int64_t>(cu_seqlens.size()) - 1; }
  std::vector<int64_t> state_sizes() const {
    return v_first ? std::vector<int64_t>{N(), HV, V(), K} : std::vector<int64_t>{N(), HV, K, V()};
  }
  // [B, ceil(T / 64), HV, K, V], or [1, sum of ceil(len / 64), ..] with cu_seqlens; [.., V, K] with v_first.
  std::vector<int64_t> intermediate_sizes() const {
    int64_t rows = B, chunks = (T + 63) / 64;
    if (!cu_seqlens.empty()) {
      rows = 1;
      chunks = 0;
      for (size_t n = 0; n + 1 < cu_seqlens.size(); ++n) chunks += (cu_seqlens[n + 1] - cu_seqlens[n] + 63) / 64;
    }
    return v_first ? std::vector<int64_t>{rows, chunks, HV, V(), K} : std::vector<int64_t>{rows, chunks, HV, K, V()};
  }
  KdaParams params() const {
    KdaParams p;
    p.output_final_state = ht;
    p.use_qk_l2norm_in_kernel = l2norm;
    p.use_gate_in_kernel = gate != Gate::none;
    if (gate == Gate::lower_bound) p.lower_bound = -5.0;
    p.use_beta_sigmoid_in_kernel = beta_sigmoid;
    p.allow_neg_eigval = neg_eigval;
    p.state_v_first = v_first;
    return p;
  }
};

struct Tolerance {
  double rms, max;
};

Tolerance low_precision_tol(const Case& c) { return c.dtype == DType::f32 ? Tolerance{1e-4, 1e-3} : Tolerance{5e-3, 2e-2}; }
Tolerance qkv_grad_tol(const Case& c) { return c.dtype == DType::f32 ? Tolerance{1e-4, 1e-3} : Tolerance{8e-3, 2e-2}; }
Tolerance state_tol(const Case& c) { return c.dtype == DType::f32 ? Tolerance{1e-4, 1e-3} : Tolerance{5e-3, 1e-2}; }
Tolerance gate_param_tol(const Case& c) {
  return c.dtype == DType::f32 ? Tolerance{1e-4, 1e-3} : Tolerance{2e-3, 1e-2};
}

// Host inputs: low-precision copies (`lo`, what the GPU gets) and their exact f64 values (`hi`,
// what the CPU reference gets). States and gate parameters are f32 on both sides.
struct Inputs {
  HostTensor q, k, v, g, beta, A_log, dt_bias, h0, cu;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  const int64_t tokens = c.B * c.T;
  in.q = testing::randn({c.B, c.T, c.H, c.K}, seed, 1.0);
  in.k = testing::randn({c.B, c.T, c.H, c.K}, seed + 1, 1.0);
  if (!c.l2norm) {
    // The delta rule needs |k| <= 1 to stay bounded: normalise here when the kernel does not.
    std::vector<double> k = in.k.to_f64();
    for (int64_t r = 0; r < tokens * c.H; ++r) {
      double ss = 0.0;
      for (int64_t d = 0; d < c.K; ++d) ss += k[r * c.K + d] * k[r * c.K + d];
      for (int64_t d = 0; d < c.K; ++d) k[r * c.K + d] /= std::sqrt(ss);
    }
    in.k = HostTensor::from_f64(k, in.k.sizes(), DType::f64);
    in.q = HostTensor::from_f64(in.q.to_f64(), in.q.sizes(), DType::f64);
  }
  in.v = testing::randn({c.B, c.T, c.HV, c.V()}, seed + 2, 1.0);
  if (c.gate == Gate::none) {
    in.g = testing::uniform({c.B, c.T, c.HV, c.K}, seed + 3, c.g_lo, c.g_hi);
  } else {
    in.g = testing::randn({c.B, c.T, c.HV, c.K}, seed + 3, 1.0);
  }
  in.beta = c.beta_sigmoid ? testing::randn({c.B, c.T, c.HV}, seed + 4, 1.0)
                           : testing::uniform({c.B, c.T, c.HV}, seed + 4, 0.05, 1.0);
  in.q = in.q.to(c.dtype);
  in.k = in.k.to(c.dtype);
  in.v = in.v.to(c.dtype);
  in.g = in.g.to(c.dtype);
  in.beta = in.beta.to(c.dtype);
  if (c.A_log) in.A_log = testing::uniform({c.HV}, seed + 5, -1.5, 0.3, DType::f32);
  if (c.dt_bias) in.dt_bias = testing::randn({c.HV * c.K}, seed + 6, 0.5, DType::f32);
  if (c.h0) in.h0 = testing::randn(c.state_sizes(), seed + 7, 0.5, DType::f32);
  if (!c.cu_seqlens.empty()) in.cu = testing::int_tensor(c.cu_seqlens, c.cu_dtype);
  return in;
}

double rms_ratio(const HostTensor& got, const HostTensor& ref) {
  const std::vector<double> a = got.to_f64(), b = ref.to_f64();
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

double max_ratio(const HostTensor& got, const HostTensor& ref) {
  const std::vector<double> a = got.to_f64(), b = ref.to_f64();
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale > 0.0 ? err / scale : err;
}

void expect_close(const std::string& what, const HostTensor& got, const HostTensor& ref, Tolerance tol) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  const double rms = rms_ratio(got, ref), mx = max_ratio(got, ref);
  std::printf("[kda_cuda] %-52s rms %.3e  max %.3e\n", what.c_str(), rms, mx);
  EXPECT_LE(rms, tol.rms) << what;
  EXPECT_LE(mx, tol.max) << what;
  EXPECT_TRUE(std::isfinite(rms)) << what;
}

// error / scale per element (max) and ||error|| / ||scale|| (rms), for sums whose terms can cancel.
void expect_close_scaled(const std::string& what, const HostTensor& got, const HostTensor& ref,
                         const std::vector<double>& scale, Tolerance tol) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  ASSERT_EQ(static_cast<size_t>(ref.numel()), scale.size()) << what;
  const std::vector<double> a = got.to_f64(), b = ref.to_f64();
  double num = 0.0, den = 0.0, mx = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(a[i] - b[i]);
    num += e * e;
    den += scale[i] * scale[i];
    mx = std::max(mx, scale[i] > 0.0 ? e / scale[i] : e);
  }
  const double rms = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
  std::printf("[kda_cuda] %-52s rms %.3e  max %.3e (of the terms' magnitude; %.3e of the value)\n", what.c_str(), rms,
              mx, rms_ratio(got, ref));
  EXPECT_LE(rms, tol.rms) << what;
  EXPECT_LE(mx, tol.max) << what;
  EXPECT_TRUE(std::isfinite(rms)) << what;
}

// dA_log[hv] = sum_{t,k} dg[t,hv,k] r[t,hv,k] with r = (d gate / d A_log) / (d gate / d g): softplus(x) /
// sigmoid(x) in the softplus form, x in the lower_bound form (x = g + dt_bias); ddt_bias[hv,k] =
// sum_t dg[t,hv,k] (g and dt_bias enter as their sum). The scales are the sums of the terms' magnitudes,
// from the reference's dg (the gradient with respect to the raw g).
struct GateScales {
  std::vector<double> A_log, dt_bias;
};
GateScales gate_param_scales(const Case& c, const Inputs& in, const HostTensor& dg_ref) {
  const std::vector<double> g = in.g.to_f64(), dg = dg_ref.to_f64();
  const std::vector<double> bias = c.dt_bias ? in.dt_bias.to_f64() : std::vector<double>(c.HV * c.K, 0.0);
  GateScales s{std::vector<double>(c.HV, 0.0), std::vector<double>(c.HV * c.K, 0.0)};
  const int64_t rows = c.B * c.T;
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t hv = 0; hv < c.HV; ++hv) {
      for (int64_t d = 0; d < c.K; ++d) {
        const int64_t i = (t * c.HV + hv) * c.K + d;
        const double x = g[i] + bias[hv * c.K + d];
        double r = x;
        if (c.gate == Gate::softplus) {  // softplus(x) / sigmoid(x), with torch's threshold at 20
          const double sp = x > 20.0 ? x : std::log1p(std::exp(x));
          r = sp * (1.0 + std::exp(-x));
        }
        s.A_log[hv] += std::abs(dg[i] * r);
        s.dt_bias[hv * c.K + d] += std::abs(dg[i]);
      }
    }
  }
  return s;
}

struct DeviceInputs {
  CudaTensor q, k, v, g, beta, A_log, dt_bias, h0, cu;
};

// Optional inputs by the case's flags (a default HostTensor is rank 0 with numel() == 1, not empty).
DeviceInputs upload(const Case& c, const Inputs& in) {
  DeviceInputs d;
  d.q = CudaTensor::from_host(in.q);
  d.k = CudaTensor::from_host(in.k);
  d.v = CudaTensor::from_host(in.v);
  d.g = CudaTensor::from_host(in.g);
  d.beta = CudaTensor::from_host(in.beta);
  if (c.A_log) d.A_log = CudaTensor::from_host(in.A_log);
  if (c.dt_bias) d.dt_bias = CudaTensor::from_host(in.dt_bias);
  if (c.h0) d.h0 = CudaTensor::from_host(in.h0);
  if (!c.cu_seqlens.empty()) d.cu = CudaTensor::from_host(in.cu);
  return d;
}

struct Outputs {
  HostTensor o, ht, h, dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias;  // h: intermediate_states
};

// Every result of a fwd + bwd call, for comparing two calls entry by entry.
std::vector<const HostTensor*> results(const Outputs& r) {
  return {&r.o, &r.ht, &r.dq, &r.dk, &r.dv, &r.dg, &r.dbeta, &r.dA_log, &r.ddt_bias, &r.dh0};
}

// A case's inputs with an output gradient and a final-state gradient (seeds seed, seed + 1, seed + 2).
struct Call {
  Inputs in;
  HostTensor d_o, dht;
};
Call make_call(const Case& c, uint64_t seed) {
  Call call{make_inputs(c, seed), {}, {}};
  call.d_o = testing::randn(call.in.v.sizes(), seed + 1, 1.0, c.dtype);
  call.dht = testing::randn(c.state_sizes(), seed + 2, 0.3, DType::f32);
  return call;
}

// The CPU reference on the exact (f64) values of the low-precision inputs.
Outputs reference(const Case& c, const Inputs& in, const HostTensor& d_o, const HostTensor& dht) {
  const KdaParams params = c.params();
  const HostTensor q = in.q.to(DType::f64), k = in.k.to(DType::f64), v = in.v.to(DType::f64),
                   g = in.g.to(DType::f64), beta = in.beta.to(DType::f64);
  // Gate parameters in f64 so that dA_log / ddt_bias (f64 here) match their dtype.
  const HostTensor A_log = c.A_log ? in.A_log.to(DType::f64) : HostTensor();
  const HostTensor dt_bias = c.dt_bias ? in.dt_bias.to(DType::f64) : HostTensor();
  const TensorView A = A_log.view(), bias = dt_bias.view(), h0 = in.h0.view(), cu = in.cu.view();
  const TensorView* A_p = c.A_log ? &A : nullptr;
  const TensorView* bias_p = c.dt_bias ? &bias : nullptr;
  const TensorView* h0_p = c.h0 ? &h0 : nullptr;
  const TensorView* cu_p = c.cu_seqlens.empty() ? nullptr : &cu;
  Outputs r;
  r.o = HostTensor(DType::f64, v.sizes());
  if (c.ht) r.ht = HostTensor(DType::f64, c.state_sizes());
  if (c.intermediate) r.h = HostTensor(DType::f64, c.intermediate_sizes());
  const TensorView ht = r.ht.view(), h = r.h.view();
  chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), A_p, bias_p, h0_p, cu_p, params, r.o.view(),
                c.ht ? &ht : nullptr, c.intermediate ? &h : nullptr);
  if (!c.backward) return r;
  r.dq = HostTensor(DType::f64, q.sizes());
  r.dk = HostTensor(DType::f64, k.sizes());
  r.dv = HostTensor(DType::f64, v.sizes());
  r.dg = HostTensor(DType::f64, g.sizes());
  r.dbeta = HostTensor(DType::f64, beta.sizes());
  if (c.h0) r.dh0 = HostTensor(DType::f64, c.state_sizes());
  if (c.A_log) r.dA_log = HostTensor(DType::f64, {c.HV});
  if (c.dt_bias) r.ddt_bias = HostTensor(DType::f64, {c.HV * c.K});
  const HostTensor d_o64 = d_o.to(DType::f64);
  const TensorView dht_v = dht.view(), dh0 = r.dh0.view(), dA = r.dA_log.view(), dbias = r.ddt_bias.view();
  chunk_kda_bwd(q.view(), k.view(), v.view(), g.view(), beta.view(), A_p, bias_p, h0_p, cu_p, params, d_o64.view(),
                c.ht ? &dht_v : nullptr, r.dq.view(), r.dk.view(), r.dv.view(), r.dg.view(), r.dbeta.view(),
                c.h0 ? &dh0 : nullptr, c.A_log ? &dA : nullptr, c.dt_bias ? &dbias : nullptr);
  return r;
}

Outputs on_device(const Case& c, const Inputs& in, const HostTensor& d_o, const HostTensor& dht) {
  const KdaParams params = c.params();
  std::fprintf(stderr, "[kda_cuda] %s: upload\n", c.name.c_str());
  const DeviceInputs d = upload(c, in);
  std::fprintf(stderr, "[kda_cuda] %s: forward\n", c.name.c_str());
  const TensorView A = d.A_log.view(), bias = d.dt_bias.view(), h0 = d.h0.view(), cu = d.cu.view();
  const TensorView* A_p = c.A_log ? &A : nullptr;
  const TensorView* bias_p = c.dt_bias ? &bias : nullptr;
  const TensorView* h0_p = c.h0 ? &h0 : nullptr;
  const TensorView* cu_p = c.cu_seqlens.empty() ? nullptr : &cu;
  CudaTensor o(c.dtype, in.v.sizes()), ht, h;
  if (c.ht) ht = CudaTensor(DType::f32, c.state_sizes());
  if (c.intermediate) h = CudaTensor(*c.intermediate, c.intermediate_sizes());
  const TensorView ht_v = ht.view(), h_v = h.view();
  chunk_kda_fwd(d.q.view(), d.k.view(), d.v.view(), d.g.view(), d.beta.view(), A_p, bias_p, h0_p, cu_p, params,
                o.view(), c.ht ? &ht_v : nullptr, c.intermediate ? &h_v : nullptr);
  cuda_synchronize();
  Outputs r;
  r.o = o.to_host();
  if (c.ht) r.ht = ht.to_host();
  if (c.intermediate) r.h = h.to_host();
  if (!c.backward) return r;
  std::fprintf(stderr, "[kda_cuda] %s: backward\n", c.name.c_str());
  const CudaTensor d_o_dev = CudaTensor::from_host(d_o);
  CudaTensor dht_dev, dq(c.dtype, in.q.sizes()), dk(c.dtype, in.k.sizes()), dv(c.dtype, in.v.sizes()),
      dg(c.dtype, in.g.sizes()), dbeta(c.dtype, in.beta.sizes()), dh0, dA_log, ddt_bias;
  if (c.ht) dht_dev = CudaTensor::from_host(dht);
  if (c.h0) dh0 = CudaTensor(DType::f32, c.state_sizes());
  if (c.A_log) dA_log = CudaTensor(DType::f32, {c.HV});
  if (c.dt_bias) ddt_bias = CudaTensor(DType::f32, {c.HV * c.K});
  const TensorView dht_v = dht_dev.view(), dh0_v = dh0.view(), dA_v = dA_log.view(), dbias_v = ddt_bias.view();
  chunk_kda_bwd(d.q.view(), d.k.view(), d.v.view(), d.g.view(), d.beta.view(), A_p, bias_p, h0_p, cu_p, params,
                d_o_dev.view(), c.ht ? &dht_v : nullptr, dq.view(), dk.view(), dv.view(), dg.view(), dbeta.view(),
                c.h0 ? &dh0_v : nullptr, c.A_log ? &dA_v : nullptr, c.dt_bias ? &dbias_v : nullptr);
  cuda_synchronize();
  r.dq = dq.to_host();
  r.dk = dk.to_host();
  r.dv = dv.to_host();
  r.dg = dg.to_host();
  r.dbeta = dbeta.to_host();
  if (c.h0) r.dh0 = dh0.to_host();
  if (c.A_log) r.dA_log = dA_log.to_host();
  if (c.dt_bias) r.ddt_bias = ddt_bias.to_host();
  return r;
}

void check_case(const Case& c, uint64_t seed) {
  const Inputs in = make_inputs(c, seed);
  const HostTensor d_o = testing::randn(in.v.sizes(), seed + 11, 1.0, c.dtype);
  HostTensor dht;
  if (c.ht) dht = testing::randn(c.state_sizes(), seed + 12, 0.3, DType::f32);
  const Outputs ref = reference(c, in, d_o, dht);
  const Outputs got = on_device(c, in, d_o, dht);
  const Tolerance lo = low_precision_tol(c), st = state_tol(c);
  expect_close(c.name + " o", got.o, ref.o, lo);
  if (c.ht) expect_close(c.name + " final_state", got.ht, ref.ht, st);
  if (c.intermediate) {
    EXPECT_EQ(got.h.sizes(), c.intermediate_sizes()) << c.name;
    EXPECT_EQ(got.h.dtype(), *c.intermediate) << c.name;
    expect_close(c.name + " intermediate_states", got.h, ref.h, st);
  }
  if (!c.backward) return;
  const Tolerance qkv = qkv_grad_tol(c);
  expect_close(c.name + " dq", got.dq, ref.dq, qkv);
  expect_close(c.name + " dk", got.dk, ref.dk, qkv);
  expect_close(c.name + " dv", got.dv, ref.dv, qkv);
  expect_close(c.name + " dg", got.dg, ref.dg, lo);
  expect_close(c.name + " dbeta", got.dbeta, ref.dbeta, lo);
  if (c.h0) expect_close(c.name + " dh0", got.dh0, ref.dh0, st);
  if (c.A_log || c.dt_bias) {
    const GateScales scales = gate_param_scales(c, in, ref.dg);
    const Tolerance gp = gate_param_tol(c);
    if (c.A_log) expect_close_scaled(c.name + " dA_log", got.dA_log, ref.dA_log, scales.A_log, gp);
    if (c.dt_bias) expect_close_scaled(c.name + " ddt_bias", got.ddt_bias, ref.ddt_bias, scales.dt_bias, gp);
  }
}

std::vector<Case> sweep() {
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(std::move(c)); };
  {
    Case c{"B2 T100 H2 K64 plain h"};
    c.B = 2, c.T = 100, c.H = 2, c.HV = 2, c.intermediate = DType::f32;
    add(c);
  }
  {
    Case c{"B1 T37 K128 h0 ht (T < 64)"};
    c.T = 37, c.K = 128, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"B1 T1 K64 h0 ht"};
    c.T = 1, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"varlen empty/len-1 K64 H2 h0 ht h i32"};
    c.T = 203, c.H = 2, c.HV = 2, c.cu_seqlens = {0, 0, 1, 70, 70, 200, 203}, c.h0 = c.ht = true;
    c.intermediate = DType::f32;
    add(c);
  }
  {
    Case c{"varlen K128 i64 trailing empty"};
    c.T = 129, c.K = 128, c.cu_seqlens = {0, 64, 65, 129, 129}, c.cu_dtype = DType::i64, c.ht = true;
    add(c);
  }
  {
    Case c{"GVA H2 HV4 K128 T150 h0 ht"};
    c.T = 150, c.H = 2, c.HV = 4, c.K = 128, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"all options softplus gate varlen GVA K64"};
    c.T = 170, c.H = 1, c.HV = 2, c.cu_seqlens = {0, 1, 90, 170}, c.l2norm = true, c.gate = Gate::softplus;
    c.A_log = c.dt_bias = true, c.beta_sigmoid = true, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"lower_bound gate no A_log neg_eigval v_first K128 h"};
    c.T = 131, c.K = 128, c.l2norm = true, c.gate = Gate::lower_bound, c.dt_bias = true;
    c.beta_sigmoid = c.neg_eigval = true, c.h0 = c.ht = c.v_first = true, c.intermediate = DType::f32;
    add(c);
  }
  {
    Case c{"lower_bound gate A_log softplus-free K64"};
    c.T = 96, c.gate = Gate::lower_bound, c.A_log = true, c.l2norm = true, c.ht = true;
    add(c);
  }
  {
    Case c{"strong decay g in [-6, -1] K64"};  // chunk cumsum ~ -220: exp(-G) alone overflows fp32
    c.T = 200, c.g_lo = -6.0, c.g_hi = -1.0, c.h0 = c.ht = true;
    add(c);
  }
  {
    // many short and a few long sequences in one pack: lengths 0, 1, 63, 64, 65, 129, 3, 0, 200, 7, 1, 40
    Case c{"varlen 12 seqs mixed lengths GVA H2 HV4 K64 gate h0 ht h f64"};
    c.T = 573, c.H = 2, c.HV = 4, c.cu_seqlens = {0, 0, 1, 64, 128, 193, 322, 325, 325, 525, 532, 533, 573};
    c.gate = Gate::softplus, c.A_log = c.dt_bias = true, c.l2norm = true, c.h0 = c.ht = true;
    c.intermediate = DType::f64;
    add(c);
  }
  {
    Case c{"f16 K128 GVA varlen beta sigmoid"};
    c.T = 150, c.H = 1, c.HV = 2, c.K = 128, c.dtype = DType::f16, c.cu_seqlens = {0, 80, 81, 150};
    c.beta_sigmoid = true, c.ht = true;
    add(c);
  }
  {
    Case c{"f16 K64 h0 ht"};
    c.T = 77, c.dtype = DType::f16, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"f32 K128 all options h"};
    c.T = 140, c.K = 128, c.H = 1, c.HV = 2, c.dtype = DType::f32, c.l2norm = true, c.gate = Gate::softplus;
    c.A_log = c.dt_bias = true, c.beta_sigmoid = true, c.h0 = c.ht = true, c.intermediate = DType::f32;
    add(c);
  }
  // The forward state pass and the backward's state sweep pick their value-tile widths from (sequences x
  // heads) and the SM count. On a 132-SM H100 the small cases above take 16 columns in both; below,
  // backward: 64 columns (B4 H16, B8 H16, H18), 32 (H12, H24), 16 (B2 H8); forward: 64 or 32.
  {
    Case c{"B4 T130 H16 K128 gate l2norm h0 ht (64-col state tiles)"};
    c.B = 4, c.T = 130, c.H = 16, c.HV = 16, c.K = 128, c.l2norm = true, c.gate = Gate::softplus;
    c.A_log = c.dt_bias = true, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"B2 T100 H8 K128 h0 ht (32-col state tiles)"};
    c.B = 2, c.T = 100, c.H = 8, c.HV = 8, c.K = 128, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"f32 B8 T70 H16 K64 ht (64-col state tiles)"};
    c.B = 8, c.T = 70, c.H = 16, c.HV = 16, c.dtype = DType::f32, c.ht = true;
    add(c);
  }
  {
    Case c{"B2 T90 H12 K128 gate h0 (32-col backward state tiles)"};
    c.B = 2, c.T = 90, c.H = 12, c.HV = 12, c.K = 128, c.gate = Gate::softplus, c.A_log = c.dt_bias = true;
    c.h0 = true;
    add(c);
  }
  {
    Case c{"B8 T70 H16 K64 l2norm h0 ht (64-col backward state tiles)"};
    c.B = 8, c.T = 70, c.H = 16, c.HV = 16, c.l2norm = true, c.h0 = c.ht = true;
    add(c);
  }
  {
    Case c{"f32 B1 T70 H24 K128 ht (32-col backward state tiles)"};
    c.T = 70, c.H = 24, c.HV = 24, c.K = 128, c.dtype = DType::f32, c.ht = true;
    add(c);
  }
  {
    Case c{"f32 B2 T70 H18 K128 h0 ht (64-col backward state tiles)"};
    c.B = 2, c.T = 70, c.H = 18, c.HV = 18, c.K = 128, c.dtype = DType::f32, c.h0 = c.ht = true;
    add(c);
  }
  return cases;
}

TEST(KdaCuda, MatchesCpuReferenceOverSweep) {
  SEQMIX_REQUIRE_CUDA();
  uint64_t seed = 100;
  for (const Case& c : sweep()) {
    SCOPED_TRACE(c.name);
    check_case(c, seed += 20);
  }
}

TEST(KdaCuda, LongSequence8192ForwardAndBackward) {
  SEQMIX_REQUIRE_CUDA();
  Case c{"T8192 K128 HV2 h0 ht l2norm"};
  c.T = 8192, c.K = 128, c.H = 1, c.HV = 2, c.l2norm = true, c.h0 = c.ht = true;
  check_case(c, 7);
}

TEST(KdaCuda, LongSequence32768ForwardAndBackward) {
  SEQMIX_REQUIRE_CUDA();
  Case c{"T32768 K64 h0 ht gate l2norm"};
  c.T = 32768, c.K = 64, c.h0 = c.ht = true, c.l2norm = true, c.gate = Gate::softplus, c.A_log = c.dt_bias = true;
  check_case(c, 9);
}

TEST(KdaCuda, IntermediateStatesInEveryLayoutAreOneCopyOfTheSameStates) {
  // f32 K-first (a plain copy of the state pass's scratch), f64 and V-first (the conversion kernel): the
  // same fp32 states, exactly; and the o / final state of the call equal those of a call without them.
  SEQMIX_REQUIRE_CUDA();
  Case c{"intermediate layouts"};
  c.T = 300, c.K = 64, c.H = 1, c.HV = 2, c.cu_seqlens = {0, 1, 100, 100, 300}, c.h0 = c.ht = true;
  c.backward = false;
  const Inputs in = make_inputs(c, 31);
  const HostTensor none;
  const Outputs without = on_device(c, in, none, none);
  c.intermediate = DType::f32;
  const Outputs f32 = on_device(c, in, none, none);
  c.intermediate = DType::f64;
  const Outputs f64 = on_device(c, in, none, none);
  EXPECT_EQ(testing::max_abs_diff(f32.o, without.o), 0.0);
  EXPECT_EQ(testing::max_abs_diff(f32.ht, without.ht), 0.0);
  EXPECT_EQ(testing::max_abs_diff(f64.h, f32.h), 0.0);
  // V-first: h0 transposed on the way in, every state transposed on the way out.
  Case vf = c;
  vf.v_first = true;
  vf.intermediate = DType::f32;
  Inputs in_vf = in;
  const int64_t K = c.K, V = c.V(), heads_h0 = c.N() * c.HV;
  in_vf.h0 = HostTensor(DType::f32, vf.state_sizes());
  for (int64_t h = 0; h < heads_h0; ++h)
    for (int64_t d = 0; d < K; ++d)
      for (int64_t e = 0; e < V; ++e) in_vf.h0.set((h * V + e) * K + d, in.h0.get((h * K + d) * V + e));
  const Outputs v_first = on_device(vf, in_vf, none, none);
  ASSERT_EQ(v_first.h.sizes(), vf.intermediate_sizes());
  const int64_t heads = f32.h.numel() / (K * V);
  double diff = 0.0;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t d = 0; d < K; ++d)
      for (int64_t e = 0; e < V; ++e)
        diff = std::max(diff, std::abs(v_first.h.get((h * V + e) * K + d) - f32.h.get((h * K + d) * V + e)));
  EXPECT_EQ(diff, 0.0);
}

Outputs on_device(const Case& c, const Call& call) { return on_device(c, call.in, call.d_o, call.dht); }

TEST(KdaCuda, BackwardIsDeterministic) {
  SEQMIX_REQUIRE_CUDA();
  Case c{"determinism"};
  c.T = 300, c.K = 64, c.H = 1, c.HV = 2, c.cu_seqlens = {0, 100, 300}, c.gate = Gate::softplus, c.A_log = true;
  c.dt_bias = true, c.h0 = c.ht = true;
  const Call call = make_call(c, 3);
  const Outputs a = on_device(c, call), b = on_device(c, call);
  const auto xs = results(a), ys = results(b);
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_EQ(testing::max_abs_diff(*xs[i], *ys[i]), 0.0) << i;
}

// The value-tile hook is defined by the CUDA backend only (a build without it has nothing to tune).
#ifdef SEQMIX_WITH_CUDA
// Every value-column tile of the two state passes (the tuning hook cuda::chunk_kda_set_value_tiles) forms each
// state column with the same products in the same order, so every result matches the built-in choice's.
TEST(KdaCuda, EveryStateValueTileGivesTheSameResults) {
  SEQMIX_REQUIRE_CUDA();
  struct Reset {
    ~Reset() { cuda::chunk_kda_set_value_tiles(0, 0); }
  } reset;
  // K = V = 128 with few blocks (the built-in choice's two-slot rings), and K = V = 64 with 40 heads: more
  // state blocks than an H100 / H200 has SMs at 16 and 32 columns (the one-slot launches the bench shapes take)
  Case few{"value tiles, few blocks"};
  few.T = 300, few.K = 128, few.H = 2, few.HV = 2, few.cu_seqlens = {0, 100, 300};
  Case many{"value tiles, more blocks than SMs"};
  many.T = 200, many.K = 64, many.H = 40, many.HV = 40, many.cu_seqlens = {0, 70, 200};
  for (Case* c : {&few, &many}) {
    c->gate = Gate::softplus, c->A_log = true, c->dt_bias = true, c->l2norm = true, c->h0 = c->ht = true;
    const Call call = make_call(*c, 21);
    cuda::chunk_kda_set_value_tiles(0, 0);
    const Outputs ref = on_device(*c, call);
    for (const int tile : {16, 32, 64}) {
      cuda::chunk_kda_set_value_tiles(tile, tile);
      const Outputs r = on_device(*c, call);
      const auto xs = results(r), ys = results(ref);
      for (size_t i = 0; i < xs.size(); ++i)
        EXPECT_LE(testing::max_abs_diff(*xs[i], *ys[i]), 1e-6 * (1.0 + testing::max_abs(*ys[i])))
            << c->name << ": tile " << tile << " " << i;
    }
  }
}

// The hook takes the widths the kernels are built for, and 0; anything else is an error naming the argument.
TEST(KdaCuda, ValueTileHookNamesABadWidth) {
  testing::expect_error([] { cuda::chunk_kda_set_value_tiles(8, 0); }, {"forward = 8", "16, 32 or 64"});
  testing::expect_error([] { cuda::chunk_kda_set_value_tiles(0, 128); }, {"backward = 128", "16, 32 or 64"});
  testing::expect_error([] { cuda::chunk_kda_set_value_tiles(-16, 0); }, {"forward = -16"});
  cuda::chunk_kda_set_value_tiles(0, 0);
}
#endif  // SEQMIX_WITH_CUDA

// A pack of empty sequences (no tokens): the state passes through (final state = initial state, dh0 = dht)
// and dA_log / ddt_bias are zero; the kernels that need tokens are not launched.
TEST(KdaCuda, EmptySequencesOnlyPassTheStateThrough) {
  SEQMIX_REQUIRE_CUDA();
  Case c{"no tokens"};
  c.T = 0, c.K = 64, c.H = 1, c.HV = 2, c.cu_seqlens = {0, 0, 0}, c.gate = Gate::softplus, c.A_log = true;
  c.dt_bias = true, c.l2norm = true, c.h0 = c.ht = true;
  const Call call = make_call(c, 11);
  const Outputs r = on_device(c, call);
  EXPECT_EQ(testing::max_abs_diff(r.ht, call.in.h0), 0.0);
  EXPECT_EQ(testing::max_abs_diff(r.dh0, call.dht), 0.0);
  EXPECT_EQ(testing::max_abs(r.dA_log), 0.0);
  EXPECT_EQ(testing::max_abs(r.ddt_bias), 0.0);
}

// The "[kda stage]" line of `stage` from the forward (backward = false) or backward call in `log`.
std::string stage_line(const std::string& log, const char* stage, bool backward) {
  std::istringstream in(log);
  std::string line;
  const std::string name = std::string("\"stage\": \"") + stage + "\"",
                    call = backward ? "\"backward\": true" : "\"backward\": false";
  while (std::getline(in, line))
    if (line.rfind("[kda stage] {", 0) == 0 && line.find(name) != std::string::npos &&
        line.find(call) != std::string::npos)
      return line;
  return "";
}

double stage_field(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\": ");
  return at == std::string::npos ? std::numeric_limits<double>::quiet_NaN()
                                 : std::strtod(line.c_str() + at + key.size() + 4, nullptr);
}

// SEQMIX_KDA_TIMING=1: one line per stage with the byte / FLOP model (roofline.h) of this call's shape and
// options; on a varlen pack whose chunk count (4) is below the launch bound (7), the exact count read from
// the device table.
TEST(KdaCuda, StageTimingReportsEveryStageWithItsModel) {
  SEQMIX_REQUIRE_CUDA();
  Case c{"stage timing"};
  c.T = 200, c.H = 1, c.HV = 2, c.cu_seqlens = {0, 64, 128, 128, 200}, c.l2norm = true, c.gate = Gate::softplus;
  c.A_log = c.dt_bias = true, c.beta_sigmoid = true, c.h0 = c.ht = true;
  const Call call = make_call(c, 41);
  setenv("SEQMIX_KDA_TIMING", "1", 1);
  ::testing::internal::CaptureStderr();
  on_device(c, call);
  const std::string log = ::testing::internal::GetCapturedStderr();
  unsetenv("SEQMIX_KDA_TIMING");
  namespace roofline = cuda::kda::roofline;
  roofline::Shape fwd;
  fwd.tokens = 200, fwd.N = 4, fwd.chunks = 4, fwd.H = 1, fwd.HV = 2, fwd.K = fwd.V = 64;
  fwd.l2norm = fwd.use_gate = fwd.beta_sigmoid = true;
  fwd.dt_bias_bytes = fwd.A_log_bytes = fwd.cu_seqlens_bytes = fwd.h0_bytes = fwd.final_state_bytes = 4;
  roofline::Shape bwd = fwd;
  bwd.for_backward = true, bwd.final_state_bytes = 0;
  bwd.dht_bytes = bwd.dh0_bytes = bwd.dA_log_bytes = bwd.ddt_bias_bytes = 4;
  using roofline::Stage;
  const std::vector<std::pair<Stage, bool>> stages = {
      {Stage::tables, false}, {Stage::chunk_fwd, false}, {Stage::state_fwd, false}, {Stage::output_fwd, false},
      {Stage::tables, true},  {Stage::chunk_fwd, true},  {Stage::state_fwd, true},  {Stage::state_bwd, true},
      {Stage::wy_bwd, true},  {Stage::pair_bwd, true},   {Stage::finalize, true},   {Stage::gate_params, true}};
  for (const auto& [stage, backward] : stages) {
    const char* name = roofline::stage_name(stage);
    const std::string line = stage_line(log, name, backward);
    ASSERT_FALSE(line.empty()) << name << " backward " << backward << "\n" << log;
    const int tile = static_cast<int>(stage_field(line, "value_tile"));
    const roofline::Cost cost = roofline::stage_cost(stage, backward ? bwd : fwd, tile);
    EXPECT_EQ(stage_field(line, "chunks"), 4.0) << line;
    EXPECT_EQ(stage_field(line, "bytes"), cost.bytes) << line;
    EXPECT_EQ(stage_field(line, "flops"), cost.flops) << line;
    EXPECT_EQ(stage_field(line, "tc_flops"), cost.tc_flops) << line;
    EXPECT_GT(stage_field(line, "ms"), 0.0) << line;
    if (stage == Stage::state_fwd || stage == Stage::state_bwd)
      EXPECT_TRUE(tile == 16 || tile == 32 || tile == 64) << line;
  }
}

TEST(KdaCuda, BadInputsNameTheArgument) {
  SEQMIX_REQUIRE_CUDA();
  const int64_t T = 70, K = 64;
  CudaTensor q(DType::bf16, {1, T, 1, K}), k(DType::bf16, {1, T, 1, K}), v(DType::bf16, {1, T, 1, K}),
      g(DType::bf16, {1, T, 1, K}), beta(DType::bf16, {1, T, 1}), o(DType::bf16, {1, T, 1, K}),
      g_f16(DType::f16, {1, T, 1, K}), big(DType::bf16, {1, T, 2, K});
  HostTensor k_host(DType::bf16, {1, T, 1, K});
  const KdaParams p;
  auto fwd = [&](const TensorView& kv, const TensorView& gv, const TensorView* cu) {
    chunk_kda_fwd(q.view(), kv, v.view(), gv, beta.view(), nullptr, nullptr, nullptr, cu, p, o.view(), nullptr);
  };
  // k on the CPU, the rest on CUDA
  testing::expect_error([&] { fwd(k_host.view(), g.view(), nullptr); }, {"k", "device"});
  testing::expect_error([&] { fwd(k.view(), g_f16.view(), nullptr); }, {"g", "dtype"});
  // g: every other head of a [1, T, 2, K] buffer (shape right, strides not row-major)
  TensorView g_strided = big.view();
  g_strided.sizes[2] = 1;
  testing::expect_error([&] { fwd(k.view(), g_strided, nullptr); }, {"g", "contiguous"});
  const CudaTensor cu_bad_start = CudaTensor::from_host(testing::int_tensor({1, 30, T}, DType::i32));
  const CudaTensor cu_decreasing = CudaTensor::from_host(testing::int_tensor({0, 40, 30, T}, DType::i64));
  const CudaTensor cu_bad_end = CudaTensor::from_host(testing::int_tensor({0, 30, T - 1}, DType::i32));
  const CudaTensor cu_float = CudaTensor::from_host(HostTensor(DType::f32, {3}));
  const TensorView v1 = cu_bad_start.view(), v2 = cu_decreasing.view(), v3 = cu_bad_end.view(), v4 = cu_float.view();
  testing::expect_error([&] { fwd(k.view(), g.view(), &v1); }, {"cu_seqlens", "start at 0"});
  testing::expect_error([&] { fwd(k.view(), g.view(), &v2); }, {"cu_seqlens", "non-decreasing"});
  testing::expect_error([&] { fwd(k.view(), g.view(), &v3); }, {"cu_seqlens", "total token count"});
  testing::expect_error([&] { fwd(k.view(), g.view(), &v4); }, {"cu_seqlens"});
  // intermediate_states: the chunk count of a varlen pack comes from the host copy of cu_seqlens
  const CudaTensor cu_ok = CudaTensor::from_host(testing::int_tensor({0, 0, 1, T}, DType::i32));  // 0 + 1 + 2 chunks
  const TensorView cu_ok_v = cu_ok.view();
  auto fwd_h = [&](const CudaTensor& h, const TensorView* cu) {
    const TensorView h_v = h.view();
    chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), nullptr, nullptr, nullptr, cu, p, o.view(),
                  nullptr, &h_v);
  };
  EXPECT_NO_THROW(fwd_h(CudaTensor(DType::f32, {1, 3, 1, K, K}), &cu_ok_v));
  testing::expect_error([&] { fwd_h(CudaTensor(DType::f32, {1, 2, 1, K, K}), &cu_ok_v); },
                        {"intermediate_states", "[1, NT, HV, K, V]", "[1, 3, 1, 64, 64]"});
  testing::expect_error([&] { fwd_h(CudaTensor(DType::f32, {1, 1, 1, K, K}), nullptr); },
                        {"intermediate_states", "[B, NT, HV, K, V]", "[1, 2, 1, 64, 64]"});
  testing::expect_error([&] { fwd_h(CudaTensor(DType::bf16, {1, 2, 1, K, K}), nullptr); },
                        {"intermediate_states", "bfloat16"});
  HostTensor h_host(DType::f32, {1, 2, 1, K, K});
  const TensorView h_host_v = h_host.view();
  testing::expect_error([&] {
    chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), nullptr, nullptr, nullptr, nullptr, p,
                  o.view(), nullptr, &h_host_v);
  }, {"intermediate_states", "device"});
  // [1, 2, 1, K, K] buffer viewed with a non-row-major stride: shape right, not contiguous
  const CudaTensor h_big(DType::f32, {1, 2, 2, K, K});
  TensorView h_strided = h_big.view();
  h_strided.sizes[2] = 1;
  testing::expect_error([&] {
    chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), nullptr, nullptr, nullptr, nullptr, p,
                  o.view(), nullptr, &h_strided);
  }, {"intermediate_states", "contiguous"});
}

TEST(KdaCuda, UnsupportedCombinationsNameTheOption) {
  SEQMIX_REQUIRE_CUDA();
  auto run = [](int64_t K, int64_t V, DType dtype, int64_t chunk_size) {
    CudaTensor q(dtype, {1, 8, 1, K}), k(dtype, {1, 8, 1, K}), v(dtype, {1, 8, 1, V}), g(dtype, {1, 8, 1, K}),
        beta(dtype, {1, 8, 1}), o(dtype, {1, 8, 1, V});
    KdaParams p;
    p.chunk_size = chunk_size;
    chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), nullptr, nullptr, nullptr, nullptr, p, o.view(),
                  nullptr);
  };
  testing::expect_error([&] { run(32, 32, DType::bf16, 64); }, {"not implemented", "K = 32"});
  testing::expect_error([&] { run(64, 128, DType::bf16, 64); }, {"not implemented", "V = 128"});
  testing::expect_error([&] { run(64, 64, DType::f64, 64); }, {"not implemented", "float64"});
  testing::expect_error([&] { run(64, 64, DType::bf16, 32); }, {"not implemented", "chunk_size = 32"});
  const size_t fwd_bytes = chunk_kda_workspace_bytes(1, 4096, 16, 16, 128, 128, -1, false, DType::f32);
  const size_t bwd_bytes = chunk_kda_workspace_bytes(1, 4096, 16, 16, 128, 128, -1, true, DType::f32);
  EXPECT_GT(bwd_bytes, fwd_bytes);
  // The forward keeps Aqk, w, u (v_new in place), kl, the states and G_last per chunk; q's gated copy is formed
  // in the output kernel, not stored. The backward adds only q, k, G, A, dS and dG (and per-row vectors):
  // dv_new, dq, dk, dAqk, dM, dG_last and the dbeta slices reuse dead forward buffers (carve_all).
  const size_t rows = 4096 * 16, f = sizeof(float), tokens_k = rows * 128 * f, states = 64 * 16 * 128 * 128 * f;
  EXPECT_LE(fwd_bytes, 3 * tokens_k + rows * 64 * f + states + (size_t{2} << 20));
  EXPECT_LE(bwd_bytes, fwd_bytes + 4 * tokens_k + rows * 64 * f + states + (size_t{2} << 20));
  // 16-bit inputs: w, kl, u / v_new, the states, dS and dv_new in bf16 (w and kl in one fp32-sized block that dq
  // takes later); the forward's qg (bf16) and the backward's dk (fp32, v_new's rows no longer match) get buffers
  // of their own.
  const size_t fwd16 = chunk_kda_workspace_bytes(1, 4096, 16, 16, 128, 128, -1, false, DType::bf16);
  const size_t bwd16 = chunk_kda_workspace_bytes(1, 4096, 16, 16, 128, 128, -1, true, DType::f16);
  EXPECT_LE(fwd16, 2 * tokens_k + rows * 64 * f + states / 2 + (size_t{2} << 20));
  EXPECT_LE(bwd16, fwd16 + 5 * tokens_k + tokens_k / 2 + rows * 64 * f + states / 2 + (size_t{2} << 20));
  EXPECT_LT(fwd16, fwd_bytes);
  EXPECT_LT(bwd16, bwd_bytes);
}

}  // namespace
}  // namespace seqmix
