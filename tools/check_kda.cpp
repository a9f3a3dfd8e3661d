// `seqmix check` rows for KDA on the CPU: the chunked forward against the token recurrence
// (dense and varlen), and the backward against fp64 central differences on a tiny shape with
// every option on. On CUDA: the CUDA kernels against the CPU reference on the same bf16 inputs
// (errors relative to max |reference|, tolerance 2e-2: bf16 outputs round at ~4e-3 of an element).
#include <algorithm>
#include <cmath>
#include <optional>
#include <random>

#include "check.h"
#include "seqmix/device.h"
#include "seqmix/kda.h"

namespace seqmix::tools {
namespace {

HostTensor random_tensor(std::vector<int64_t> sizes, std::mt19937_64& rng, double lo, double hi) {
  HostTensor t(DType::f64, std::move(sizes));
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, dist(rng));
  return t;
}

// One KDA problem with every input option; shapes [B, T, H|HV, K|V].
struct Problem {
  int64_t B, T, H, HV, K, V;
  std::vector<int64_t> cu_seqlens;
  KdaParams params;
  HostTensor q, k, v, g, beta, A_log, dt_bias, h0, cu;

  Problem(int64_t B_, int64_t T_, int64_t H_, int64_t HV_, int64_t K_, int64_t V_, std::vector<int64_t> cu_,
          std::optional<double> lower_bound, uint64_t seed)
      : B(B_), T(T_), H(H_), HV(HV_), K(K_), V(V_), cu_seqlens(std::move(cu_)) {
    std::mt19937_64 rng(seed);
    params.output_final_state = true;
    params.use_qk_l2norm_in_kernel = true;
    params.use_gate_in_kernel = true;
    params.lower_bound = lower_bound;
    params.use_beta_sigmoid_in_kernel = true;
    params.allow_neg_eigval = lower_bound.has_value();
    params.chunk_size = 32;
    q = random_tensor({B, T, H, K}, rng, -1, 1);
    k = random_tensor({B, T, H, K}, rng, -1, 1);
    v = random_tensor({B, T, HV, V}, rng, -1, 1);
    g = random_tensor({B, T, HV, K}, rng, -2, 2);
    beta = random_tensor({B, T, HV}, rng, -2, 2);
    A_log = random_tensor({HV}, rng, -1, 0.3);
    dt_bias = random_tensor({HV * K}, rng, -0.5, 0.5);
    h0 = random_tensor(state_sizes(), rng, -0.5, 0.5);
    if (!cu_seqlens.empty()) {
      cu = HostTensor(DType::i64, {static_cast<int64_t>(cu_seqlens.size())});
      for (size_t i = 0; i < cu_seqlens.size(); ++i) cu.data_as<int64_t>()[i] = cu_seqlens[i];
    }
  }
  int64_t N() const { return cu_seqlens.empty() ? B : static_cast<int64_t>(cu_seqlens.size()) - 1; }
  std::vector<int64_t> state_sizes() const { return {N(), HV, K, V}; }

  enum class Form { chunk, recurrent };
  void forward(Form form, HostTensor& o, HostTensor& ht) const {
    o = HostTensor(DType::f64, {B, T, HV, V});
    ht = HostTensor(DType::f64, state_sizes());
    const TensorView A = A_log.view(), bias = dt_bias.view(), s0 = h0.view(), cu_v = cu.view(), ht_v = ht.view();
    const TensorView* cu_p = cu_seqlens.empty() ? nullptr : &cu_v;
    if (form == Form::chunk)
      chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), &A, &bias, &s0, cu_p, params, o.view(), &ht_v);
    else
      kda_recurrent_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), &A, &bias, &s0, cu_p, params, o.view(),
                        &ht_v);
  }
};

CheckRow chunk_vs_recurrent(const char* op, Problem& p) {
  CheckRow row{op};
  row.tolerance = 1e-10;
  HostTensor o, ht, o_ref, ht_ref;
  row.ms = time_ms([&] { p.forward(Problem::Form::chunk, o, ht); });
  p.forward(Problem::Form::recurrent, o_ref, ht_ref);
  compare(o, o_ref, row);
  compare(ht, ht_ref, row);
  return row;
}

// Analytic gradients of L = sum(o * w_o) + sum(ht * w_ht) against central differences of every
// entry of every input.
CheckRow backward_vs_finite_differences(const char* op, Problem& p) {
  CheckRow row{op};
  row.tolerance = 1e-6;
  std::mt19937_64 rng(99);
  const HostTensor w_o = random_tensor({p.B, p.T, p.HV, p.V}, rng, -1, 1);
  const HostTensor w_ht = random_tensor(p.state_sizes(), rng, -1, 1);
  auto loss = [&] {
    HostTensor o, ht;
    p.forward(Problem::Form::chunk, o, ht);
    double s = 0.0;
    for (int64_t i = 0; i < o.numel(); ++i) s += o.get(i) * w_o.get(i);
    for (int64_t i = 0; i < ht.numel(); ++i) s += ht.get(i) * w_ht.get(i);
    return s;
  };
  HostTensor dq(DType::f64, p.q.sizes()), dk(DType::f64, p.k.sizes()), dv(DType::f64, p.v.sizes()),
      dg(DType::f64, p.g.sizes()), dbeta(DType::f64, p.beta.sizes()), dh0(DType::f64, p.state_sizes()),
      dA(DType::f64, {p.HV}), dbias(DType::f64, {p.HV * p.K});
  const TensorView A = p.A_log.view(), bias = p.dt_bias.view(), s0 = p.h0.view(), dht = w_ht.view(),
                   dh0_v = dh0.view(), dA_v = dA.view(), dbias_v = dbias.view(), cu_v = p.cu.view();
  row.ms = time_ms([&] {
    chunk_kda_bwd(p.q.view(), p.k.view(), p.v.view(), p.g.view(), p.beta.view(), &A, &bias, &s0,
                  p.cu_seqlens.empty() ? nullptr : &cu_v, p.params, w_o.view(), &dht, dq.view(), dk.view(), dv.view(),
                  dg.view(), dbeta.view(), &dh0_v, &dA_v, &dbias_v);
  });
  const std::pair<HostTensor*, const HostTensor*> pairs[] = {{&p.q, &dq},         {&p.k, &dk},    {&p.v, &dv},
                                                              {&p.g, &dg},         {&p.beta, &dbeta}, {&p.h0, &dh0},
                                                              {&p.A_log, &dA},     {&p.dt_bias, &dbias}};
  constexpr double kStep = 1e-6;
  for (const auto& [param, grad] : pairs) {
    for (int64_t i = 0; i < param->numel(); ++i) {
      double* x = param->data_as<double>() + i;
      const double saved = *x;
      *x = saved + kStep;
      const double plus = loss();
      *x = saved - kStep;
      const double minus = loss();
      *x = saved;
      const double numeric = (plus - minus) / (2 * kStep), analytic = grad->get(i);
      const double diff = std::fabs(analytic - numeric);
      row.max_abs_err = std::isnan(diff) ? INFINITY : std::max(row.max_abs_err, diff);
      row.max_rel_err = std::max(row.max_rel_err, diff / std::max(std::fabs(numeric), 1e-6));
    }
  }
  return row;
}

// max |got - ref| / max |ref| over the pairs, into row.max_abs_err (and the plain max relative error).
void compare_scaled(const std::vector<std::pair<HostTensor, const HostTensor*>>& pairs, CheckRow& row) {
  for (const auto& [got, ref] : pairs) {
    double scale = 0.0;
    for (int64_t i = 0; i < ref->numel(); ++i) scale = std::max(scale, std::fabs(ref->get(i)));
    CheckRow part{row.op};
    compare(got, *ref, part);
    row.max_abs_err = std::max(row.max_abs_err, part.max_abs_err / std::max(scale, 1e-12));
    row.max_rel_err = std::max(row.max_rel_err, part.max_rel_err);
  }
}

// CUDA vs CPU on one problem with every option (chunk 64, K = V = 64, varlen with an empty sequence).
std::vector<CheckRow> check_kda_cuda() {
  if (!cuda_available()) return {};
  Problem p(1, 200, 1, 2, 64, 64, {0, 1, 90, 90, 200}, std::nullopt, 5);
  p.params.chunk_size = 64;
  for (HostTensor* t : {&p.q, &p.k, &p.v, &p.g, &p.beta}) *t = t->to(DType::bf16).to(DType::f64);
  std::mt19937_64 rng(17);
  const HostTensor d_o = random_tensor({p.B, p.T, p.HV, p.V}, rng, -1, 1).to(DType::bf16).to(DType::f64);
  const HostTensor dht = random_tensor(p.state_sizes(), rng, -1, 1);

  HostTensor o_ref, ht_ref;
  p.forward(Problem::Form::chunk, o_ref, ht_ref);
  HostTensor dq(DType::f64, p.q.sizes()), dk(DType::f64, p.k.sizes()), dv(DType::f64, p.v.sizes()),
      dg(DType::f64, p.g.sizes()), dbeta(DType::f64, p.beta.sizes()), dh0(DType::f64, p.state_sizes()),
      dA(DType::f64, {p.HV}), dbias(DType::f64, {p.HV * p.K});
  {
    const TensorView A = p.A_log.view(), bias = p.dt_bias.view(), s0 = p.h0.view(), dht_v = dht.view(),
                     dh0_v = dh0.view(), dA_v = dA.view(), dbias_v = dbias.view(), cu_v = p.cu.view();
    chunk_kda_bwd(p.q.view(), p.k.view(), p.v.view(), p.g.view(), p.beta.view(), &A, &bias, &s0, &cu_v, p.params,
                  d_o.view(), &dht_v, dq.view(), dk.view(), dv.view(), dg.view(), dbeta.view(), &dh0_v, &dA_v,
                  &dbias_v);
  }

  auto up = [](const HostTensor& t, DType dtype) { return CudaTensor::from_host(t.to(dtype)); };
  const CudaTensor q = up(p.q, DType::bf16), k = up(p.k, DType::bf16), v = up(p.v, DType::bf16),
                   g = up(p.g, DType::bf16), beta = up(p.beta, DType::bf16), A_log = up(p.A_log, DType::f32),
                   dt_bias = up(p.dt_bias, DType::f32), h0 = up(p.h0, DType::f32), cu = up(p.cu, DType::i64),
                   d_o_dev = up(d_o, DType::bf16), dht_dev = up(dht, DType::f32);
  CudaTensor o(DType::bf16, {p.B, p.T, p.HV, p.V}), ht(DType::f32, p.state_sizes());
  const TensorView A = A_log.view(), bias = dt_bias.view(), s0 = h0.view(), cu_v = cu.view(), ht_v = ht.view();
  std::vector<CheckRow> rows;
  CheckRow fwd{"chunk_kda_fwd cuda vs cpu (bf16, all options, varlen)"};
  fwd.tolerance = 2e-2;
  fwd.ms = time_ms([&] {
    chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), &A, &bias, &s0, &cu_v, p.params, o.view(),
                  &ht_v);
    cuda_synchronize();
  });
  compare_scaled({{o.to_host(), &o_ref}, {ht.to_host(), &ht_ref}}, fwd);
  rows.push_back(fwd);

  CudaTensor dq_d(DType::bf16, p.q.sizes()), dk_d(DType::bf16, p.k.sizes()), dv_d(DType::bf16, p.v.sizes()),
      dg_d(DType::bf16, p.g.sizes()), dbeta_d(DType::bf16, p.beta.sizes()), dh0_d(DType::f32, p.state_sizes()),
      dA_d(DType::f32, {p.HV}), dbias_d(DType::f32, {p.HV * p.K});
  const TensorView dht_v = dht_dev.view(), dh0_v = dh0_d.view(), dA_v = dA_d.view(), dbias_v = dbias_d.view();
  CheckRow bwd{"chunk_kda_bwd cuda vs cpu (bf16, all options, varlen)"};
  bwd.tolerance = 2e-2;
  bwd.ms = time_ms([&] {
    chunk_kda_bwd(q.view(), k.view(), v.view(), g.view(), beta.view(), &A, &bias, &s0, &cu_v, p.params,
                  d_o_dev.view(), &dht_v, dq_d.view(), dk_d.view(), dv_d.view(), dg_d.view(), dbeta_d.view(), &dh0_v,
                  &dA_v, &dbias_v);
    cuda_synchronize();
  });
  compare_scaled({{dq_d.to_host(), &dq},
                  {dk_d.to_host(), &dk},
                  {dv_d.to_host(), &dv},
                  {dg_d.to_host(), &dg},
                  {dbeta_d.to_host(), &dbeta},
                  {dh0_d.to_host(), &dh0},
                  {dA_d.to_host(), &dA},
                  {dbias_d.to_host(), &dbias}},
                 bwd);
  rows.push_back(bwd);
  return rows;
}

std::vector<CheckRow> check_kda(Device device) {
  if (device.type == DeviceType::cuda) return check_kda_cuda();
  std::vector<CheckRow> rows;
  Problem dense(2, 130, 2, 4, 16, 16, {}, std::nullopt, 1);
  rows.push_back(chunk_vs_recurrent("chunk_kda_fwd vs kda_recurrent_fwd", dense));
  Problem varlen(1, 97, 1, 2, 16, 8, {0, 1, 40, 40, 97}, -5.0, 2);
  rows.push_back(chunk_vs_recurrent("chunk_kda_fwd vs recurrent (varlen)", varlen));
  Problem tiny_softplus(1, 37, 1, 2, 3, 2, {}, std::nullopt, 3);
  rows.push_back(backward_vs_finite_differences("chunk_kda_bwd vs FD (softplus gate)", tiny_softplus));
  Problem tiny_lower_bound(1, 37, 1, 2, 3, 2, {0, 2, 2, 37}, -5.0, 4);
  rows.push_back(backward_vs_finite_differences("chunk_kda_bwd vs FD (lower_bound, varlen)", tiny_lower_bound));
  return rows;
}

const CheckRegistrar registrar("kda", check_kda);

}  // namespace
}  // namespace seqmix::tools
