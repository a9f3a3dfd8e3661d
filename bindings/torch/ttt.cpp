// torch.ops.seqmix.chunk_ttt_linear (flash-linear-attention `fla.ops.ttt.chunk_ttt_linear` semantics):
// q, k, v [B, T, H, K], w, b [H, K], eta [B, T, H, 1], initial_state [N, H, K, K],
// initial_state_bias [N, H, 1, K] -> (o [B, T, H, K], final_state, final_state_bias); gradients for
// every tensor input. The final states are [0]-sized when output_final_state is false (the Python
// wrapper returns None for them), as an op returns the same tensors in every case.
#include "seqmix/ttt.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "common.h"

namespace seqmix::torch_binding {
namespace {

using OptionalTensor = c10::optional<at::Tensor>;

TTTLinearParams make_params(c10::optional<double> scale, double eps, int64_t chunk_size, bool output_final_state) {
  TTTLinearParams p;
  if (scale.has_value()) p.scale = *scale;
  p.eps = eps;
  p.chunk_size = chunk_size;
  p.output_final_state = output_final_state;
  return p;
}

// States are f32 (FLA's), f64 for f64 inputs so that float64 gradchecks see no rounding.
at::TensorOptions state_options(const at::Tensor& q) {
  return q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

// [N, H, K, V] and [N, H, 1, V] with N = B, or the number of sequences when cu_seqlens is given.
std::pair<std::vector<int64_t>, std::vector<int64_t>> state_shapes(const at::Tensor& q,
                                                                   const OptionalTensor& cu_seqlens) {
  TORCH_CHECK(q.dim() == 4, "seqmix: q: expected rank 4 [B, T, H, K], got ", q.sizes());
  const bool varlen = cu_seqlens.has_value() && cu_seqlens->defined();
  TORCH_CHECK(!varlen || cu_seqlens->dim() == 1, "seqmix: cu_seqlens: expected rank 1 [N + 1], got ",
              cu_seqlens->sizes());
  const int64_t n = varlen ? cu_seqlens->size(0) - 1 : q.size(0), h = q.size(2), k = q.size(3);
  return {{n, h, k, k}, {n, h, 1, k}};
}

// ---- CPU and CUDA kernels ----

std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_ttt_linear(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& b,
    const at::Tensor& eta, c10::optional<double> scale, double eps, int64_t chunk_size,
    const OptionalTensor& initial_state, const OptionalTensor& initial_state_bias, bool output_final_state,
    const OptionalTensor& cu_seqlens) {
  const TTTLinearParams params = make_params(scale, eps, chunk_size, output_final_state);
  const at::DeviceGuard guard(q.device());
  const auto [state_shape, bias_shape] = state_shapes(q, cu_seqlens);
  at::Tensor o = at::empty(v.sizes(), q.options());
  at::Tensor final_state = at::empty(output_final_state ? state_shape : std::vector<int64_t>{0}, state_options(q));
  at::Tensor final_state_bias = at::empty(output_final_state ? bias_shape : std::vector<int64_t>{0}, state_options(q));
  const OptionalView final_state_view(output_final_state ? OptionalTensor(final_state) : c10::nullopt, "final_state");
  const OptionalView final_state_bias_view(output_final_state ? OptionalTensor(final_state_bias) : c10::nullopt,
                                           "final_state_bias");
  call_seqmix([&] {
    chunk_ttt_linear_fwd(view(q, "q"), view(k, "k"), view(v, "v"), view(w, "w"), view(b, "b"), view(eta, "eta"),
                         OptionalView(initial_state, "initial_state").get(),
                         OptionalView(initial_state_bias, "initial_state_bias").get(),
                         OptionalView(cu_seqlens, "cu_seqlens").get(), params, view(o, "o"), final_state_view.get(),
                         final_state_bias_view.get());
  });
  return {o, final_state, final_state_bias};
}

using BackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Returns (dq, dk, dv, dw, db, deta, dh0, dhb0); dh0 / dhb0 are [0]-sized when the initial state /
// bias is absent.
BackwardResult chunk_ttt_linear_backward(const at::Tensor& grad_o, const OptionalTensor& grad_final_state,
                                         const OptionalTensor& grad_final_state_bias, const at::Tensor& q,
                                         const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                                         const at::Tensor& b, const at::Tensor& eta, c10::optional<double> scale,
                                         double eps, int64_t chunk_size, const OptionalTensor& initial_state,
                                         const OptionalTensor& initial_state_bias, const OptionalTensor& cu_seqlens) {
  const TTTLinearParams params = make_params(scale, eps, chunk_size, false);
  const at::DeviceGuard guard(q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options()), dw = at::empty(w.sizes(), w.options());
  at::Tensor db = at::empty(b.sizes(), b.options()), deta = at::empty(eta.sizes(), eta.options());
  const bool has_state = initial_state.has_value() && initial_state->defined();
  const bool has_bias = initial_state_bias.has_value() && initial_state_bias->defined();
  at::Tensor dh0 =
      has_state ? at::empty(initial_state->sizes(), initial_state->options()) : at::empty({0}, q.options());
  at::Tensor dhb0 =
      has_bias ? at::empty(initial_state_bias->sizes(), initial_state_bias->options()) : at::empty({0}, q.options());
  call_seqmix([&] {
    chunk_ttt_linear_bwd(view(q, "q"), view(k, "k"), view(v, "v"), view(w, "w"), view(b, "b"), view(eta, "eta"),
                         OptionalView(initial_state, "initial_state").get(),
                         OptionalView(initial_state_bias, "initial_state_bias").get(),
                         OptionalView(cu_seqlens, "cu_seqlens").get(), view(grad_o, "do"),
                         OptionalView(grad_final_state, "dht").get(), OptionalView(grad_final_state_bias, "dhbt").get(),
                         params, view(dq, "dq"), view(dk, "dk"), view(dv, "dv"), view(dw, "dw"), view(db, "db"),
                         view(deta, "deta"), OptionalView(has_state ? OptionalTensor(dh0) : c10::nullopt, "dh0").get(),
                         OptionalView(has_bias ? OptionalTensor(dhb0) : c10::nullopt, "dhb0").get());
  });
  return {dq, dk, dv, dw, db, deta, dh0, dhb0};
}

// ---- Meta kernels: output shapes only, no data is read ----

std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_ttt_linear_meta(
    const at::Tensor& q, const at::Tensor&, const at::Tensor& v, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, c10::optional<double>, double, int64_t, const OptionalTensor&, const OptionalTensor&,
    bool output_final_state, const OptionalTensor& cu_seqlens) {
  const auto [state_shape, bias_shape] = state_shapes(q, cu_seqlens);
  return {at::empty(v.sizes(), q.options()),
          at::empty(output_final_state ? state_shape : std::vector<int64_t>{0}, state_options(q)),
          at::empty(output_final_state ? bias_shape : std::vector<int64_t>{0}, state_options(q))};
}

BackwardResult chunk_ttt_linear_backward_meta(const at::Tensor&, const OptionalTensor&, const OptionalTensor&,
                                              const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& w, const at::Tensor& b, const at::Tensor& eta,
                                              c10::optional<double>, double, int64_t,
                                              const OptionalTensor& initial_state,
                                              const OptionalTensor& initial_state_bias, const OptionalTensor&) {
  const auto like = [&](const OptionalTensor& t) {
    return t.has_value() && t->defined() ? at::empty(t->sizes(), t->options()) : at::empty({0}, q.options());
  };
  return {at::empty(q.sizes(), q.options()),
          at::empty(k.sizes(), k.options()),
          at::empty(v.sizes(), v.options()),
          at::empty(w.sizes(), w.options()),
          at::empty(b.sizes(), b.options()),
          at::empty(eta.sizes(), eta.options()),
          like(initial_state),
          like(initial_state_bias)};
}

// ---- Autograd: both passes call the ops below the autograd key (so Meta serves torch.compile and the
// backward op needs no autograd kernel of its own; double backward is not supported) ----

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& b,
    const at::Tensor& eta, const OptionalTensor& initial_state, const OptionalTensor& initial_state_bias,
    const OptionalTensor& cu_seqlens, const TTTLinearParams& p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("seqmix::chunk_ttt_linear", "")
                       .typed<decltype(chunk_ttt_linear)>();
  const c10::optional<double> scale = p.scale ? c10::optional<double>(*p.scale) : c10::nullopt;
  return op.call(q, k, v, w, b, eta, scale, p.eps, p.chunk_size, initial_state, initial_state_bias,
                 p.output_final_state, cu_seqlens);
}

BackwardResult call_backward(const at::Tensor& grad_o, const OptionalTensor& grad_final_state,
                             const OptionalTensor& grad_final_state_bias, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const at::Tensor& w, const at::Tensor& b, const at::Tensor& eta,
                             const OptionalTensor& initial_state, const OptionalTensor& initial_state_bias,
                             const OptionalTensor& cu_seqlens, const TTTLinearParams& p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("seqmix::chunk_ttt_linear_backward", "")
                       .typed<decltype(chunk_ttt_linear_backward)>();
  const c10::optional<double> scale = p.scale ? c10::optional<double>(*p.scale) : c10::nullopt;
  return op.call(grad_o, grad_final_state, grad_final_state_bias, q, k, v, w, b, eta, scale, p.eps, p.chunk_size,
                 initial_state, initial_state_bias, cu_seqlens);
}

OptionalTensor optional(const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : c10::nullopt; }

class ChunkTTTLinearFunction : public torch::autograd::Function<ChunkTTTLinearFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                                                const at::Tensor& b, const at::Tensor& eta,
                                                const OptionalTensor& initial_state,
                                                const OptionalTensor& initial_state_bias,
                                                const OptionalTensor& cu_seqlens, const TTTLinearParams& params) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({q, k, v, w, b, eta, initial_state.value_or(at::Tensor()),
                            initial_state_bias.value_or(at::Tensor()), cu_seqlens.value_or(at::Tensor())});
    if (params.scale) ctx->saved_data["scale"] = *params.scale;
    ctx->saved_data["eps"] = params.eps;
    ctx->saved_data["chunk_size"] = params.chunk_size;
    auto [o, final_state, final_state_bias] =
        call_forward(q, k, v, w, b, eta, initial_state, initial_state_bias, cu_seqlens, params);
    if (!params.output_final_state) ctx->mark_non_differentiable({final_state, final_state_bias});
    return {o, final_state, final_state_bias};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto s = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    const TTTLinearParams params =
        make_params(d.count("scale") ? c10::optional<double>(d["scale"].toDouble()) : c10::nullopt, d["eps"].toDouble(),
                    d["chunk_size"].toInt(), false);
    // An unused output has an undefined gradient: zero for o, absent (= zero) for the final states.
    const at::Tensor grad_o = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(s[2]);
    const auto state_grad = [](const at::Tensor& g) {
      return g.defined() && g.numel() > 0 ? OptionalTensor(g.contiguous()) : c10::nullopt;
    };
    auto [dq, dk, dv, dw, db, deta, dh0, dhb0] =
        call_backward(grad_o, state_grad(grads[1]), state_grad(grads[2]), s[0], s[1], s[2], s[3], s[4], s[5],
                      optional(s[6]), optional(s[7]), optional(s[8]), params);
    // No gradient for an absent initial state, cu_seqlens or the options.
    return {dq,
            dk,
            dv,
            dw,
            db,
            deta,
            s[6].defined() ? dh0 : at::Tensor(),
            s[7].defined() ? dhb0 : at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_ttt_linear_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& b,
    const at::Tensor& eta, c10::optional<double> scale, double eps, int64_t chunk_size,
    const OptionalTensor& initial_state, const OptionalTensor& initial_state_bias, bool output_final_state,
    const OptionalTensor& cu_seqlens) {
  const auto out = ChunkTTTLinearFunction::apply(q, k, v, w, b, eta, initial_state, initial_state_bias, cu_seqlens,
                                                 make_params(scale, eps, chunk_size, output_final_state));
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace seqmix::torch_binding

TORCH_LIBRARY_FRAGMENT(seqmix, m) {
  m.def(
      "chunk_ttt_linear(Tensor q, Tensor k, Tensor v, Tensor w, Tensor b, Tensor eta, float? scale, float eps, "
      "int chunk_size, Tensor? initial_state, Tensor? initial_state_bias, bool output_final_state, "
      "Tensor? cu_seqlens) -> (Tensor, Tensor, Tensor)");
  m.def(
      "chunk_ttt_linear_backward(Tensor grad_o, Tensor? grad_final_state, Tensor? grad_final_state_bias, Tensor q, "
      "Tensor k, Tensor v, Tensor w, Tensor b, Tensor eta, float? scale, float eps, int chunk_size, "
      "Tensor? initial_state, Tensor? initial_state_bias, Tensor? cu_seqlens) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(seqmix, CPU, m) {
  m.impl("chunk_ttt_linear", &seqmix::torch_binding::chunk_ttt_linear);
  m.impl("chunk_ttt_linear_backward", &seqmix::torch_binding::chunk_ttt_linear_backward);
}

TORCH_LIBRARY_IMPL(seqmix, CUDA, m) {
  m.impl("chunk_ttt_linear", &seqmix::torch_binding::chunk_ttt_linear);
  m.impl("chunk_ttt_linear_backward", &seqmix::torch_binding::chunk_ttt_linear_backward);
}

TORCH_LIBRARY_IMPL(seqmix, Meta, m) {
  m.impl("chunk_ttt_linear", &seqmix::torch_binding::chunk_ttt_linear_meta);
  m.impl("chunk_ttt_linear_backward", &seqmix::torch_binding::chunk_ttt_linear_backward_meta);
}

TORCH_LIBRARY_IMPL(seqmix, Autograd, m) {
  m.impl("chunk_ttt_linear", &seqmix::torch_binding::chunk_ttt_linear_autograd);
}
