// torch.ops.seqmix.hstu_attention (generative-recommenders `hstu_mha` semantics, TorchEasyRec SLA):
// q, k [L, H, Dqk], v [L, H, Dv], seq_offsets [B + 1] -> out [L, H, Dv]; gradients for q, k, v.
// quant_mode 0..5: FP8 attention (fbgemm's modes, quantized inside; straight-through gradients).
#include "seqmix/hstu.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "common.h"

namespace seqmix::torch_binding {
namespace {

HstuAttentionParams make_params(int64_t max_seq_len, double alpha, bool causal, int64_t contextual_seq_len,
                                int64_t max_attn_len, int64_t min_full_attn_seq_len, int64_t scaling_seqlen,
                                int64_t sla_k1, int64_t sla_k2, int64_t quant_mode) {
  HstuAttentionParams p;
  p.max_seq_len = max_seq_len;
  p.alpha = alpha;
  p.causal = causal;
  p.contextual_seq_len = contextual_seq_len;
  p.max_attn_len = max_attn_len;
  p.min_full_attn_seq_len = min_full_attn_seq_len;
  p.scaling_seqlen = scaling_seqlen;
  p.sla_k1 = sla_k1;
  p.sla_k2 = sla_k2;
  p.quant_mode = quant_mode;
  return p;
}

// ---- CPU and CUDA kernels ----

at::Tensor hstu_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& seq_offsets,
                          int64_t max_seq_len, double alpha, const c10::optional<at::Tensor>& num_targets, bool causal,
                          int64_t contextual_seq_len, int64_t max_attn_len, int64_t min_full_attn_seq_len,
                          int64_t scaling_seqlen, int64_t sla_k1, int64_t sla_k2, int64_t quant_mode) {
  const HstuAttentionParams params = make_params(max_seq_len, alpha, causal, contextual_seq_len, max_attn_len,
                                                 min_full_attn_seq_len, scaling_seqlen, sla_k1, sla_k2, quant_mode);
  const at::DeviceGuard guard(q.device());
  const TensorView q_view = view(q, "q"), v_view = view(v, "v");
  at::Tensor out = at::empty(v_view.shape(), q.options());
  call_seqmix([&] {
    hstu_attention_fwd(params, q_view, view(k, "k"), v_view, view(seq_offsets, "seq_offsets"),
                       OptionalView(num_targets, "num_targets").get(), view(out, "out"), current_stream(q));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hstu_attention_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha, const c10::optional<at::Tensor>& num_targets,
    bool causal, int64_t contextual_seq_len, int64_t max_attn_len, int64_t min_full_attn_seq_len,
    int64_t scaling_seqlen, int64_t sla_k1, int64_t sla_k2, int64_t quant_mode) {
  const HstuAttentionParams params = make_params(max_seq_len, alpha, causal, contextual_seq_len, max_attn_len,
                                                 min_full_attn_seq_len, scaling_seqlen, sla_k1, sla_k2, quant_mode);
  const at::DeviceGuard guard(q.device());
  const TensorView q_view = view(q, "q"), v_view = view(v, "v");
  at::Tensor dq = at::empty(q_view.shape(), q.options());
  at::Tensor dk = at::empty(q_view.shape(), q.options());
  at::Tensor dv = at::empty(v_view.shape(), q.options());
  call_seqmix([&] {
    hstu_attention_bwd(params, q_view, view(k, "k"), v_view, view(seq_offsets, "seq_offsets"),
                       OptionalView(num_targets, "num_targets").get(), view(dout, "dout"), view(dq, "dq"),
                       view(dk, "dk"), view(dv, "dv"), current_stream(q));
  });
  return {dq, dk, dv};
}

// ---- Meta kernels: output shapes only, no data is read ----

at::Tensor hstu_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor&,
                               int64_t, double, const c10::optional<at::Tensor>&, bool, int64_t, int64_t, int64_t,
                               int64_t, int64_t, int64_t, int64_t) {
  TORCH_CHECK(
      q.dim() == 3 && k.sizes() == q.sizes() && v.dim() == 3 && v.size(0) == q.size(0) && v.size(1) == q.size(1),
      "seqmix: hstu_attention expects q, k [L, H, Dqk] and v [L, H, Dv], got q ", q.sizes(), ", k ", k.sizes(), ", v ",
      v.sizes());
  return at::empty(v.sizes(), q.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hstu_attention_backward_meta(
    const at::Tensor&, const at::Tensor& q, const at::Tensor&, const at::Tensor& v, const at::Tensor&, int64_t, double,
    const c10::optional<at::Tensor>&, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t) {
  return {at::empty(q.sizes(), q.options()), at::empty(q.sizes(), q.options()), at::empty(v.sizes(), q.options())};
}

// ---- Autograd: both passes call the ops below the autograd key (so Meta serves torch.compile and the
// backward op needs no autograd kernel of its own; double backward is not supported) ----

at::Tensor call_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& seq_offsets,
                        const c10::optional<at::Tensor>& num_targets, const HstuAttentionParams& p) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("seqmix::hstu_attention", "").typed<decltype(hstu_attention)>();
  return op.call(q, k, v, seq_offsets, p.max_seq_len, p.alpha, num_targets, p.causal, p.contextual_seq_len,
                 p.max_attn_len, p.min_full_attn_seq_len, p.scaling_seqlen, p.sla_k1, p.sla_k2, p.quant_mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& dout, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& seq_offsets,
                                                             const c10::optional<at::Tensor>& num_targets,
                                                             const HstuAttentionParams& p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("seqmix::hstu_attention_backward", "")
                       .typed<decltype(hstu_attention_backward)>();
  return op.call(dout, q, k, v, seq_offsets, p.max_seq_len, p.alpha, num_targets, p.causal, p.contextual_seq_len,
                 p.max_attn_len, p.min_full_attn_seq_len, p.scaling_seqlen, p.sla_k1, p.sla_k2, p.quant_mode);
}

void save_params(torch::autograd::AutogradContext* ctx, const HstuAttentionParams& p) {
  auto& d = ctx->saved_data;
  d["max_seq_len"] = p.max_seq_len;
  d["alpha"] = p.alpha;
  d["causal"] = p.causal;
  d["contextual_seq_len"] = p.contextual_seq_len;
  d["max_attn_len"] = p.max_attn_len;
  d["min_full_attn_seq_len"] = p.min_full_attn_seq_len;
  d["scaling_seqlen"] = p.scaling_seqlen;
  d["sla_k1"] = p.sla_k1;
  d["sla_k2"] = p.sla_k2;
  d["quant_mode"] = p.quant_mode;
}

HstuAttentionParams load_params(torch::autograd::AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  return make_params(d["max_seq_len"].toInt(), d["alpha"].toDouble(), d["causal"].toBool(),
                     d["contextual_seq_len"].toInt(), d["max_attn_len"].toInt(), d["min_full_attn_seq_len"].toInt(),
                     d["scaling_seqlen"].toInt(), d["sla_k1"].toInt(), d["sla_k2"].toInt(), d["quant_mode"].toInt());
}

class HstuAttentionFunction : public torch::autograd::Function<HstuAttentionFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& seq_offsets,
                            const c10::optional<at::Tensor>& num_targets, const HstuAttentionParams& params) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({q, k, v, seq_offsets, num_targets.value_or(at::Tensor())});
    save_params(ctx, params);
    return call_forward(q, k, v, seq_offsets, num_targets, params);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const HstuAttentionParams params = load_params(ctx);
    const c10::optional<at::Tensor> num_targets =
        saved[4].defined() ? c10::optional<at::Tensor>(saved[4]) : c10::nullopt;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [dq, dk, dv] =
        call_backward(grads[0].contiguous(), saved[0], saved[1], saved[2], saved[3], num_targets, params);
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor hstu_attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha,
                                   const c10::optional<at::Tensor>& num_targets, bool causal,
                                   int64_t contextual_seq_len, int64_t max_attn_len, int64_t min_full_attn_seq_len,
                                   int64_t scaling_seqlen, int64_t sla_k1, int64_t sla_k2, int64_t quant_mode) {
  return HstuAttentionFunction::apply(q, k, v, seq_offsets, num_targets,
                                      make_params(max_seq_len, alpha, causal, contextual_seq_len, max_attn_len,
                                                  min_full_attn_seq_len, scaling_seqlen, sla_k1, sla_k2, quant_mode));
}

}  // namespace
}  // namespace seqmix::torch_binding

TORCH_LIBRARY_FRAGMENT(seqmix, m) {
  m.def(
      "hstu_attention(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, int max_seq_len, float alpha, "
      "Tensor? num_targets, bool causal, int contextual_seq_len, int max_attn_len, int min_full_attn_seq_len, "
      "int scaling_seqlen, int sla_k1, int sla_k2, int quant_mode=-1) -> Tensor");
  m.def(
      "hstu_attention_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor seq_offsets, int max_seq_len, "
      "float alpha, Tensor? num_targets, bool causal, int contextual_seq_len, int max_attn_len, "
      "int min_full_attn_seq_len, int scaling_seqlen, int sla_k1, int sla_k2, int quant_mode=-1) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(seqmix, CPU, m) {
  m.impl("hstu_attention", &seqmix::torch_binding::hstu_attention);
  m.impl("hstu_attention_backward", &seqmix::torch_binding::hstu_attention_backward);
}

TORCH_LIBRARY_IMPL(seqmix, CUDA, m) {
  m.impl("hstu_attention", &seqmix::torch_binding::hstu_attention);
  m.impl("hstu_attention_backward", &seqmix::torch_binding::hstu_attention_backward);
}

TORCH_LIBRARY_IMPL(seqmix, Meta, m) {
  m.impl("hstu_attention", &seqmix::torch_binding::hstu_attention_meta);
  m.impl("hstu_attention_backward", &seqmix::torch_binding::hstu_attention_backward_meta);
}

TORCH_LIBRARY_IMPL(seqmix, Autograd, m) { m.impl("hstu_attention", &seqmix::torch_binding::hstu_attention_autograd); }
