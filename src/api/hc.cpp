// Public Hyper-Connection entries: validate every argument once, then dispatch on the device.
#include "seqmix/hc.h"

#include <cmath>

#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/hc/hc.h"

namespace seqmix {
namespace {

using validate::expect;

void check_eps(double value, const char* name) {
  SEQMIX_CHECK(std::isfinite(value) && value >= 0.0, name, " must be finite and >= 0, got ", value);
}

// hidden_streams [B, S, hc_mult, D] with hc_mult >= 1 and D >= 1.
void check_streams(const TensorView& t, const char* name) {
  expect(t, name).rank(4, "[B, S, hc_mult, D]").floating().non_null();
  SEQMIX_CHECK(t.size(2) >= 1, name, ": hc_mult (dim 2) must be >= 1, got ", t.shape_string());
  SEQMIX_CHECK(t.size(3) >= 1, name, ": hidden size D (dim 3) must be >= 1, got ", t.shape_string());
}

// The mix parameters of hc_pre / hc_head for `rows` mix logits.
void check_mix(const TensorView& fn, const TensorView& base, const TensorView& scale, int64_t rows, int64_t width,
               int64_t scales, const char* fn_name, const char* base_name, const char* scale_name,
               const char* fn_layout, const char* base_layout, const char* scale_layout) {
  expect(fn, fn_name).shape({rows, width}, fn_layout).floating().non_null();
  expect(base, base_name).shape({rows}, base_layout).floating().non_null();
  expect(scale, scale_name).shape({scales}, scale_layout).floating().non_null();
}

void check_pre_params(const HcPreParams& p) {
  validate::positive(p.hc_sinkhorn_iters, "hc_sinkhorn_iters");
  check_eps(p.hc_eps, "hc_eps");
  check_eps(p.rms_norm_eps, "rms_norm_eps");
}

void validate_hc_pre(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                     const TensorView& scale, const HcPreParams& params) {
  check_streams(hidden_streams, "hidden_streams");
  const int64_t H = hidden_streams.size(2), D = hidden_streams.size(3);
  check_mix(fn, base, scale, (2 + H) * H, H * D, 3, "fn", "base", "scale", "[(2 + hc_mult) * hc_mult, hc_mult * D]",
            "[(2 + hc_mult) * hc_mult]", "[3] (pre, post, comb)");
  check_pre_params(params);
}

}  // namespace

void hc_pre_fwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView& post, const TensorView& comb,
                const TensorView& collapsed, const HcPreParams& params) {
  validate_hc_pre(hidden_streams, fn, base, scale, params);
  const int64_t B = hidden_streams.size(0), S = hidden_streams.size(1), H = hidden_streams.size(2),
                D = hidden_streams.size(3);
  expect(post, "post").shape({B, S, H}, "[B, S, hc_mult]").floating().non_null();
  expect(comb, "comb").shape({B, S, H, H}, "[B, S, hc_mult, hc_mult]").floating().non_null();
  expect(collapsed, "collapsed").shape({B, S, D}, "[B, S, D]").same_dtype(hidden_streams, "hidden_streams").non_null();
  const Device device = validate::same_device({{&hidden_streams, "hidden_streams"}, {&fn, "fn"}, {&base, "base"},
                                       {&scale, "scale"}, {&post, "post"}, {&comb, "comb"},
                                       {&collapsed, "collapsed"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hc_pre_fwd");
  cpu::hc_pre_fwd(hidden_streams, fn, base, scale, post, comb, collapsed, params);
}

void hc_pre_bwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView* grad_post, const TensorView* grad_comb,
                const TensorView* grad_collapsed, const TensorView& grad_hidden_streams, const TensorView& grad_fn,
                const TensorView& grad_base, const TensorView& grad_scale, const HcPreParams& params) {
  validate_hc_pre(hidden_streams, fn, base, scale, params);
  const int64_t B = hidden_streams.size(0), S = hidden_streams.size(1), H = hidden_streams.size(2),
                D = hidden_streams.size(3);
  if (grad_post) expect(*grad_post, "grad_post").shape({B, S, H}, "[B, S, hc_mult]").floating().non_null();
  if (grad_comb) expect(*grad_comb, "grad_comb").shape({B, S, H, H}, "[B, S, hc_mult, hc_mult]").floating().non_null();
  if (grad_collapsed) expect(*grad_collapsed, "grad_collapsed").shape({B, S, D}, "[B, S, D]").floating().non_null();
  expect(grad_hidden_streams, "grad_hidden_streams")
      .shape(hidden_streams.shape(), "[B, S, hc_mult, D]")
      .same_dtype(hidden_streams, "hidden_streams")
      .non_null();
  expect(grad_fn, "grad_fn").shape(fn.shape(), "like fn").same_dtype(fn, "fn").non_null();
  expect(grad_base, "grad_base").shape(base.shape(), "like base").same_dtype(base, "base").non_null();
  expect(grad_scale, "grad_scale").shape(scale.shape(), "like scale").same_dtype(scale, "scale").non_null();
  const Device device = validate::same_device(
      {{&hidden_streams, "hidden_streams"}, {&fn, "fn"}, {&base, "base"}, {&scale, "scale"}, {grad_post, "grad_post"},
       {grad_comb, "grad_comb"}, {grad_collapsed, "grad_collapsed"}, {&grad_hidden_streams, "grad_hidden_streams"},
       {&grad_fn, "grad_fn"}, {&grad_base, "grad_base"}, {&grad_scale, "grad_scale"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hc_pre_bwd");
  cpu::hc_pre_bwd(hidden_streams, fn, base, scale, grad_post, grad_comb, grad_collapsed, grad_hidden_streams, grad_fn,
                  grad_base, grad_scale, params);
}

namespace {

void validate_hc_post(const TensorView& x, const TensorView& residual, const TensorView& post,
                      const TensorView& comb) {
  check_streams(residual, "residual");
  const int64_t B = residual.size(0), S = residual.size(1), H = residual.size(2), D = residual.size(3);
  expect(x, "x").shape({B, S, D}, "[B, S, D]").same_dtype(residual, "residual").non_null();
  expect(post, "post").shape({B, S, H}, "[B, S, hc_mult]").floating().non_null();
  expect(comb, "comb").shape({B, S, H, H}, "[B, S, hc_mult, hc_mult]").floating().non_null();
}

}  // namespace

void hc_post_fwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& out) {
  validate_hc_post(x, residual, post, comb);
  expect(out, "out").shape(residual.shape(), "[B, S, hc_mult, D]").same_dtype(residual, "residual").non_null();
  const Device device = validate::same_device(
      {{&x, "x"}, {&residual, "residual"}, {&post, "post"}, {&comb, "comb"}, {&out, "out"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hc_post_fwd");
  cpu::hc_post_fwd(x, residual, post, comb, out);
}

void hc_post_bwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& grad_out, const TensorView& grad_x, const TensorView& grad_residual,
                 const TensorView& grad_post, const TensorView& grad_comb) {
  validate_hc_post(x, residual, post, comb);
  expect(grad_out, "grad_out").shape(residual.shape(), "[B, S, hc_mult, D]").floating().non_null();
  expect(grad_x, "grad_x").shape(x.shape(), "[B, S, D]").same_dtype(x, "x").non_null();
  expect(grad_residual, "grad_residual")
      .shape(residual.shape(), "[B, S, hc_mult, D]")
      .same_dtype(residual, "residual")
      .non_null();
  expect(grad_post, "grad_post").shape(post.shape(), "[B, S, hc_mult]").same_dtype(post, "post").non_null();
  expect(grad_comb, "grad_comb").shape(comb.shape(), "[B, S, hc_mult, hc_mult]").same_dtype(comb, "comb").non_null();
  const Device device = validate::same_device({{&x, "x"}, {&residual, "residual"}, {&post, "post"}, {&comb, "comb"},
                                       {&grad_out, "grad_out"}, {&grad_x, "grad_x"}, {&grad_residual, "grad_residual"},
                                       {&grad_post, "grad_post"}, {&grad_comb, "grad_comb"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hc_post_bwd");
  cpu::hc_post_bwd(x, residual, post, comb, grad_out, grad_x, grad_residual, grad_post, grad_comb);
}

namespace {

void validate_hc_head(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                      const TensorView& hc_scale, const HcHeadParams& params) {
  check_streams(hidden_streams, "hidden_streams");
  const int64_t H = hidden_streams.size(2), D = hidden_streams.size(3);
  check_mix(hc_fn, hc_base, hc_scale, H, H * D, 1, "hc_fn", "hc_base", "hc_scale", "[hc_mult, hc_mult * D]",
            "[hc_mult]", "[1]");
  check_eps(params.hc_eps, "hc_eps");
  check_eps(params.rms_norm_eps, "rms_norm_eps");
}

}  // namespace

void hc_head_fwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& out, const HcHeadParams& params) {
  validate_hc_head(hidden_streams, hc_fn, hc_base, hc_scale, params);
  expect(out, "out")
      .shape({hidden_streams.size(0), hidden_streams.size(1), hidden_streams.size(3)}, "[B, S, D]")
      .same_dtype(hidden_streams, "hidden_streams")
      .non_null();
  const Device device = validate::same_device({{&hidden_streams, "hidden_streams"}, {&hc_fn, "hc_fn"},
                                       {&hc_base, "hc_base"}, {&hc_scale, "hc_scale"}, {&out, "out"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hc_head_fwd");
  cpu::hc_head_fwd(hidden_streams, hc_fn, hc_base, hc_scale, out, params);
}

void hc_head_bwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& grad_out, const TensorView& grad_hidden_streams,
                 const TensorView& grad_hc_fn, const TensorView& grad_hc_base, const TensorView& grad_hc_scale,
                 const HcHeadParams& params) {
  validate_hc_head(hidden_streams, hc_fn, hc_base, hc_scale, params);
  expect(grad_out, "grad_out")
      .shape({hidden_streams.size(0), hidden_streams.size(1), hidden_streams.size(3)}, "[B, S, D]")
      .floating()
      .non_null();
  expect(grad_hidden_streams, "grad_hidden_streams")
      .shape(hidden_streams.shape(), "[B, S, hc_mult, D]")
      .same_dtype(hidden_streams, "hidden_streams")
      .non_null();
  expect(grad_hc_fn, "grad_hc_fn").shape(hc_fn.shape(), "like hc_fn").same_dtype(hc_fn, "hc_fn").non_null();
  expect(grad_hc_base, "grad_hc_base").shape(hc_base.shape(), "like hc_base").same_dtype(hc_base, "hc_base").non_null();
  expect(grad_hc_scale, "grad_hc_scale")
      .shape(hc_scale.shape(), "like hc_scale")
      .same_dtype(hc_scale, "hc_scale")
      .non_null();
  const Device device = validate::same_device({{&hidden_streams, "hidden_streams"}, {&hc_fn, "hc_fn"},
                                       {&hc_base, "hc_base"}, {&hc_scale, "hc_scale"}, {&grad_out, "grad_out"},
                                       {&grad_hidden_streams, "grad_hidden_streams"}, {&grad_hc_fn, "grad_hc_fn"},
                                       {&grad_hc_base, "grad_hc_base"}, {&grad_hc_scale, "grad_hc_scale"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hc_head_bwd");
  cpu::hc_head_bwd(hidden_streams, hc_fn, hc_base, hc_scale, grad_out, grad_hidden_streams, grad_hc_fn, grad_hc_base,
                   grad_hc_scale, params);
}

}  // namespace seqmix
