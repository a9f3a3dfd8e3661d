// torch.ops.seqmix.chunk_kda (flash-linear-attention `fla.ops.kda.chunk_kda` semantics, include/seqmix/kda.h):
// q, k [B, T, H, K], v [B, T, HV, V], g [B, T, HV, K], beta [B, T, HV], A_log [HV], dt_bias [HV * K],
// initial_state [N, HV, K, V] -> (o [B, T, HV, V], final_state [N, HV, K, V], intermediate_states
// [B, num_chunks, HV, K, V]); gradients for q, k, v, g, beta, initial_state, and A_log, dt_bias with the gate in
// kernel. The final state is [0]-sized when output_final_state is false, the intermediate states (FLA's h, the state
// entering each chunk; never differentiable) when num_chunks is None (the Python wrapper returns None / nothing for
// them), as an op returns the same tensors in every case. num_chunks is FLA's NT: ceil(T / chunk_size), or with
// cu_seqlens the chunks of all sequences; the caller passes it because with cu_seqlens it depends on their values
// (the Meta kernel reads none), and the C++ entry checks it against them.
#include "seqmix/kda.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "common.h"

namespace seqmix::torch_binding {
namespace {

using OptionalTensor = c10::optional<at::Tensor>;

KdaParams make_params(c10::optional<double> scale, bool output_final_state, bool use_qk_l2norm_in_kernel,
                      bool use_gate_in_kernel, bool use_beta_sigmoid_in_kernel, bool allow_neg_eigval,
                      c10::optional<double> lower_bound, bool state_v_first, int64_t chunk_size) {
  KdaParams p;
  if (scale.has_value()) p.scale = *scale;
  p.output_final_state = output_final_state;
  p.use_qk_l2norm_in_kernel = use_qk_l2norm_in_kernel;
  p.use_gate_in_kernel = use_gate_in_kernel;
  p.use_beta_sigmoid_in_kernel = use_beta_sigmoid_in_kernel;
  p.allow_neg_eigval = allow_neg_eigval;
  if (lower_bound.has_value()) p.lower_bound = *lower_bound;
  p.state_v_first = state_v_first;
  p.chunk_size = chunk_size;
  return p;
}

// The CUDA entries take the stream in KdaParams::stream once the CUDA backend has it; until then there is no such field
// and the CPU backend needs none.
template <typename Params>
void set_stream(Params& p, const at::Tensor& t) {
  if constexpr (requires { p.stream = Stream{}; }) p.stream = current_stream(t);
}

// States are f32 (FLA's), f64 for f64 inputs so that float64 gradchecks see no rounding.
at::TensorOptions state_options(const at::Tensor& q) {
  return q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

// [N, HV, K, V] ([N, HV, V, K] with state_v_first), N = B or the number of sequences with cu_seqlens.
std::vector<int64_t> state_shape(const at::Tensor& q, const at::Tensor& v, const OptionalTensor& cu_seqlens,
                                 bool state_v_first) {
  TORCH_CHECK(q.dim() == 4, "seqmix: q: expected rank 4 [B, T, H, K], got ", q.sizes());
  TORCH_CHECK(v.dim() == 4, "seqmix: v: expected rank 4 [B, T, HV, V], got ", v.sizes());
  const bool varlen = cu_seqlens.has_value() && cu_seqlens->defined();
  TORCH_CHECK(!varlen || cu_seqlens->dim() == 1, "seqmix: cu_seqlens: expected rank 1 [N + 1], got ",
              cu_seqlens->sizes());
  const int64_t n = varlen ? cu_seqlens->size(0) - 1 : q.size(0), hv = v.size(2), k = q.size(3), d = v.size(3);
  return state_v_first ? std::vector<int64_t>{n, hv, d, k} : std::vector<int64_t>{n, hv, k, d};
}

// The CUDA backend takes contiguous tensors only; the CPU one any strides.
at::Tensor dense(const at::Tensor& t) { return t.contiguous(); }
OptionalTensor dense(const OptionalTensor& t) {
  return t.has_value() && t->defined() ? OptionalTensor(t->contiguous()) : c10::nullopt;
}

// [B, num_chunks, HV, K, V] ([.., V, K] with state_v_first), or [0] when not wanted.
std::vector<int64_t> intermediate_shape(const at::Tensor& q, const at::Tensor& v, c10::optional<int64_t> num_chunks,
                                        bool state_v_first) {
  if (!num_chunks.has_value()) return {0};
  TORCH_CHECK(*num_chunks >= 0, "seqmix: num_chunks: expected >= 0, got ", *num_chunks);
  TORCH_CHECK(q.dim() == 4, "seqmix: q: expected rank 4 [B, T, H, K], got ", q.sizes());
  TORCH_CHECK(v.dim() == 4, "seqmix: v: expected rank 4 [B, T, HV, V], got ", v.sizes());
  const int64_t b = q.size(0), hv = v.size(2), k = q.size(3), d = v.size(3);
  return state_v_first ? std::vector<int64_t>{b, *num_chunks, hv, d, k}
                       : std::vector<int64_t>{b, *num_chunks, hv, k, d};
}

// ---- CPU and CUDA kernels ----

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

ForwardResult chunk_kda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                        const at::Tensor& beta, const OptionalTensor& A_log, const OptionalTensor& dt_bias,
                        c10::optional<double> scale, const OptionalTensor& initial_state, bool output_final_state,
                        bool use_qk_l2norm_in_kernel, bool use_gate_in_kernel, bool use_beta_sigmoid_in_kernel,
                        bool allow_neg_eigval, c10::optional<double> lower_bound, bool state_v_first,
                        int64_t chunk_size, const OptionalTensor& cu_seqlens, c10::optional<int64_t> num_chunks) {
  KdaParams params = make_params(scale, output_final_state, use_qk_l2norm_in_kernel, use_gate_in_kernel,
                                 use_beta_sigmoid_in_kernel, allow_neg_eigval, lower_bound, state_v_first, chunk_size);
  set_stream(params, q);
  const at::DeviceGuard guard(q.device());
  const at::Tensor q_ = dense(q), k_ = dense(k), v_ = dense(v), g_ = dense(g), beta_ = dense(beta);
  const OptionalTensor A_log_ = dense(A_log), dt_bias_ = dense(dt_bias), h0 = dense(initial_state);
  at::Tensor o = at::empty(v_.sizes(), v_.options());
  at::Tensor final_state = at::empty(
      output_final_state ? state_shape(q, v, cu_seqlens, state_v_first) : std::vector<int64_t>{0}, state_options(q));
  const OptionalView final_state_view(output_final_state ? OptionalTensor(final_state) : c10::nullopt, "final_state");
  at::Tensor intermediate_states = at::empty(intermediate_shape(q, v, num_chunks, state_v_first), state_options(q));
  const OptionalView intermediate_view(num_chunks.has_value() ? OptionalTensor(intermediate_states) : c10::nullopt,
                                       "intermediate_states");
  call_seqmix([&] {
    chunk_kda_fwd(view(q_, "q"), view(k_, "k"), view(v_, "v"), view(g_, "g"), view(beta_, "beta"),
                  OptionalView(A_log_, "A_log").get(), OptionalView(dt_bias_, "dt_bias").get(),
                  OptionalView(h0, "initial_state").get(), OptionalView(cu_seqlens, "cu_seqlens").get(), params,
                  view(o, "o"), final_state_view.get(), intermediate_view.get());
  });
  return {o, final_state, intermediate_states};
}

using BackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Returns (dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias); dh0 / dA_log / ddt_bias are [0]-sized when initial_state /
// A_log / dt_bias is absent (or, for the last two, the gate is not computed in kernel).
BackwardResult chunk_kda_backward(const at::Tensor& grad_o, const OptionalTensor& grad_final_state, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
                                  const OptionalTensor& A_log, const OptionalTensor& dt_bias,
                                  c10::optional<double> scale, const OptionalTensor& initial_state,
                                  bool use_qk_l2norm_in_kernel, bool use_gate_in_kernel,
                                  bool use_beta_sigmoid_in_kernel, bool allow_neg_eigval,
                                  c10::optional<double> lower_bound, bool state_v_first, int64_t chunk_size,
                                  const OptionalTensor& cu_seqlens) {
  const bool has_dht = grad_final_state.has_value() && grad_final_state->defined();
  KdaParams params = make_params(scale, has_dht, use_qk_l2norm_in_kernel, use_gate_in_kernel,
                                 use_beta_sigmoid_in_kernel, allow_neg_eigval, lower_bound, state_v_first, chunk_size);
  set_stream(params, q);
  const at::DeviceGuard guard(q.device());
  const at::Tensor q_ = dense(q), k_ = dense(k), v_ = dense(v), g_ = dense(g), beta_ = dense(beta);
  const OptionalTensor A_log_ = dense(A_log), dt_bias_ = dense(dt_bias), h0 = dense(initial_state);
  const bool has_h0 = h0.has_value(), has_dA_log = use_gate_in_kernel && A_log_.has_value(),
             has_ddt_bias = use_gate_in_kernel && dt_bias_.has_value();
  const auto like = [&](const OptionalTensor& t, bool wanted) {
    return wanted ? at::empty(t->sizes(), t->options()) : at::empty({0}, q.options());
  };
  at::Tensor dq = at::empty(q_.sizes(), q_.options()), dk = at::empty(k_.sizes(), k_.options());
  at::Tensor dv = at::empty(v_.sizes(), v_.options()), dg = at::empty(g_.sizes(), g_.options());
  at::Tensor dbeta = at::empty(beta_.sizes(), beta_.options());
  at::Tensor dh0 = like(h0, has_h0), dA_log = like(A_log_, has_dA_log), ddt_bias = like(dt_bias_, has_ddt_bias);
  const auto out_view = [](const at::Tensor& t, bool wanted, const char* name) {
    return OptionalView(wanted ? OptionalTensor(t) : c10::nullopt, name);
  };
  const OptionalView dh0_view = out_view(dh0, has_h0, "dh0"), dA_log_view = out_view(dA_log, has_dA_log, "dA_log"),
                     ddt_bias_view = out_view(ddt_bias, has_ddt_bias, "ddt_bias");
  call_seqmix([&] {
    chunk_kda_bwd(view(q_, "q"), view(k_, "k"), view(v_, "v"), view(g_, "g"), view(beta_, "beta"),
                  OptionalView(A_log_, "A_log").get(), OptionalView(dt_bias_, "dt_bias").get(),
                  OptionalView(h0, "initial_state").get(), OptionalView(cu_seqlens, "cu_seqlens").get(), params,
                  view(dense(grad_o), "do"), OptionalView(dense(grad_final_state), "dht").get(), view(dq, "dq"),
                  view(dk, "dk"), view(dv, "dv"), view(dg, "dg"), view(dbeta, "dbeta"), dh0_view.get(),
                  dA_log_view.get(), ddt_bias_view.get());
  });
  return {dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias};
}

// ---- Meta kernels: output shapes only, no data is read ----

ForwardResult chunk_kda_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor& v, const at::Tensor&,
                             const at::Tensor&, const OptionalTensor&, const OptionalTensor&, c10::optional<double>,
                             const OptionalTensor&, bool output_final_state, bool, bool, bool, bool,
                             c10::optional<double>, bool state_v_first, int64_t, const OptionalTensor& cu_seqlens,
                             c10::optional<int64_t> num_chunks) {
  return {at::empty(v.sizes(), v.options()),
          at::empty(output_final_state ? state_shape(q, v, cu_seqlens, state_v_first) : std::vector<int64_t>{0},
                    state_options(q)),
          at::empty(intermediate_shape(q, v, num_chunks, state_v_first), state_options(q))};
}

BackwardResult chunk_kda_backward_meta(const at::Tensor&, const OptionalTensor&, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                       const at::Tensor& beta, const OptionalTensor& A_log,
                                       const OptionalTensor& dt_bias, c10::optional<double>,
                                       const OptionalTensor& initial_state, bool, bool use_gate_in_kernel, bool, bool,
                                       c10::optional<double>, bool, int64_t, const OptionalTensor&) {
  const auto like = [&](const OptionalTensor& t, bool wanted) {
    return wanted && t.has_value() && t->defined() ? at::empty(t->sizes(), t->options()) : at::empty({0}, q.options());
  };
  return {at::empty(q.sizes(), q.options()), at::empty(k.sizes(), k.options()),       at::empty(v.sizes(), v.options()),
          at::empty(g.sizes(), g.options()), at::empty(beta.sizes(), beta.options()), like(initial_state, true),
          like(A_log, use_gate_in_kernel),   like(dt_bias, use_gate_in_kernel)};
}

// ---- Autograd: both passes call the ops below the autograd key (so Meta serves torch.compile and the backward op
// needs no autograd kernel of its own; double backward is not supported) ----

// The options of one call, kept in the autograd context between the passes.
struct KdaOptions {
  c10::optional<double> scale;
  bool output_final_state = false;
  bool use_qk_l2norm_in_kernel = false;
  bool use_gate_in_kernel = false;
  bool use_beta_sigmoid_in_kernel = false;
  bool allow_neg_eigval = false;
  c10::optional<double> lower_bound;
  bool state_v_first = false;
  int64_t chunk_size = 64;
  c10::optional<int64_t> num_chunks;  // of the intermediate states; forward only
};

ForwardResult call_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                           const at::Tensor& beta, const OptionalTensor& A_log, const OptionalTensor& dt_bias,
                           const OptionalTensor& initial_state, const OptionalTensor& cu_seqlens, const KdaOptions& o) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("seqmix::chunk_kda", "").typed<decltype(chunk_kda)>();
  return op.call(q, k, v, g, beta, A_log, dt_bias, o.scale, initial_state, o.output_final_state,
                 o.use_qk_l2norm_in_kernel, o.use_gate_in_kernel, o.use_beta_sigmoid_in_kernel, o.allow_neg_eigval,
                 o.lower_bound, o.state_v_first, o.chunk_size, cu_seqlens, o.num_chunks);
}

BackwardResult call_backward(const at::Tensor& grad_o, const OptionalTensor& grad_final_state, const at::Tensor& q,
                             const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
                             const OptionalTensor& A_log, const OptionalTensor& dt_bias,
                             const OptionalTensor& initial_state, const OptionalTensor& cu_seqlens,
                             const KdaOptions& o) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("seqmix::chunk_kda_backward", "")
                       .typed<decltype(chunk_kda_backward)>();
  return op.call(grad_o, grad_final_state, q, k, v, g, beta, A_log, dt_bias, o.scale, initial_state,
                 o.use_qk_l2norm_in_kernel, o.use_gate_in_kernel, o.use_beta_sigmoid_in_kernel, o.allow_neg_eigval,
                 o.lower_bound, o.state_v_first, o.chunk_size, cu_seqlens);
}

OptionalTensor optional(const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : c10::nullopt; }

class ChunkKdaFunction : public torch::autograd::Function<ChunkKdaFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                                const at::Tensor& beta, const OptionalTensor& A_log,
                                                const OptionalTensor& dt_bias, const OptionalTensor& initial_state,
                                                const OptionalTensor& cu_seqlens, const KdaOptions& options) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({q, k, v, g, beta, A_log.value_or(at::Tensor()), dt_bias.value_or(at::Tensor()),
                            initial_state.value_or(at::Tensor()), cu_seqlens.value_or(at::Tensor())});
    auto& d = ctx->saved_data;
    if (options.scale) d["scale"] = *options.scale;
    if (options.lower_bound) d["lower_bound"] = *options.lower_bound;
    d["use_qk_l2norm_in_kernel"] = options.use_qk_l2norm_in_kernel;
    d["use_gate_in_kernel"] = options.use_gate_in_kernel;
    d["use_beta_sigmoid_in_kernel"] = options.use_beta_sigmoid_in_kernel;
    d["allow_neg_eigval"] = options.allow_neg_eigval;
    d["state_v_first"] = options.state_v_first;
    d["chunk_size"] = options.chunk_size;
    auto [o, final_state, intermediate_states] =
        call_forward(q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, options);
    if (!options.output_final_state) ctx->mark_non_differentiable({final_state});
    ctx->mark_non_differentiable({intermediate_states});  // as FLA's h: inference only
    return {o, final_state, intermediate_states};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto s = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    KdaOptions options;
    if (d.count("scale")) options.scale = d["scale"].toDouble();
    if (d.count("lower_bound")) options.lower_bound = d["lower_bound"].toDouble();
    options.use_qk_l2norm_in_kernel = d["use_qk_l2norm_in_kernel"].toBool();
    options.use_gate_in_kernel = d["use_gate_in_kernel"].toBool();
    options.use_beta_sigmoid_in_kernel = d["use_beta_sigmoid_in_kernel"].toBool();
    options.allow_neg_eigval = d["allow_neg_eigval"].toBool();
    options.state_v_first = d["state_v_first"].toBool();
    options.chunk_size = d["chunk_size"].toInt();
    // An unused output has an undefined gradient: zero for o, absent (= zero) for the final state.
    const at::Tensor grad_o = grads[0].defined() ? grads[0] : at::zeros_like(s[2]);
    const OptionalTensor grad_final_state =
        grads[1].defined() && grads[1].numel() > 0 ? OptionalTensor(grads[1]) : c10::nullopt;
    auto [dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias] =
        call_backward(grad_o, grad_final_state, s[0], s[1], s[2], s[3], s[4], optional(s[5]), optional(s[6]),
                      optional(s[7]), optional(s[8]), options);
    // No gradient for an absent input, A_log / dt_bias outside the fused gate, cu_seqlens or the options.
    const bool gate = options.use_gate_in_kernel;
    return {dq,
            dk,
            dv,
            dg,
            dbeta,
            gate && s[5].defined() ? dA_log : at::Tensor(),
            gate && s[6].defined() ? ddt_bias : at::Tensor(),
            s[7].defined() ? dh0 : at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

ForwardResult chunk_kda_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                 const at::Tensor& beta, const OptionalTensor& A_log, const OptionalTensor& dt_bias,
                                 c10::optional<double> scale, const OptionalTensor& initial_state,
                                 bool output_final_state, bool use_qk_l2norm_in_kernel, bool use_gate_in_kernel,
                                 bool use_beta_sigmoid_in_kernel, bool allow_neg_eigval,
                                 c10::optional<double> lower_bound, bool state_v_first, int64_t chunk_size,
                                 const OptionalTensor& cu_seqlens, c10::optional<int64_t> num_chunks) {
  const KdaOptions options{scale,
                           output_final_state,
                           use_qk_l2norm_in_kernel,
                           use_gate_in_kernel,
                           use_beta_sigmoid_in_kernel,
                           allow_neg_eigval,
                           lower_bound,
                           state_v_first,
                           chunk_size,
                           num_chunks};
  const auto out = ChunkKdaFunction::apply(q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, options);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace seqmix::torch_binding

TORCH_LIBRARY_FRAGMENT(seqmix, m) {
  m.def(
      "chunk_kda(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, "
      "Tensor? A_log, Tensor? dt_bias, float? scale, "
      "Tensor? initial_state, bool output_final_state, bool "
      "use_qk_l2norm_in_kernel, bool use_gate_in_kernel, "
      "bool use_beta_sigmoid_in_kernel, bool allow_neg_eigval, float? "
      "lower_bound, bool state_v_first, "
      "int chunk_size, Tensor? cu_seqlens, int? num_chunks=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "chunk_kda_backward(Tensor grad_o, Tensor? grad_final_state, Tensor q, "
      "Tensor k, Tensor v, Tensor g, "
      "Tensor beta, Tensor? A_log, Tensor? dt_bias, float? scale, Tensor? "
      "initial_state, "
      "bool use_qk_l2norm_in_kernel, bool use_gate_in_kernel, bool "
      "use_beta_sigmoid_in_kernel, "
      "bool allow_neg_eigval, float? lower_bound, bool state_v_first, int "
      "chunk_size, Tensor? cu_seqlens) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(seqmix, CPU, m) {
  m.impl("chunk_kda", &seqmix::torch_binding::chunk_kda);
  m.impl("chunk_kda_backward", &seqmix::torch_binding::chunk_kda_backward);
}

TORCH_LIBRARY_IMPL(seqmix, CUDA, m) {
  m.impl("chunk_kda", &seqmix::torch_binding::chunk_kda);
  m.impl("chunk_kda_backward", &seqmix::torch_binding::chunk_kda_backward);
}

TORCH_LIBRARY_IMPL(seqmix, Meta, m) {
  m.impl("chunk_kda", &seqmix::torch_binding::chunk_kda_meta);
  m.impl("chunk_kda_backward", &seqmix::torch_binding::chunk_kda_backward_meta);
}

TORCH_LIBRARY_IMPL(seqmix, Autograd, m) { m.impl("chunk_kda", &seqmix::torch_binding::chunk_kda_autograd); }
