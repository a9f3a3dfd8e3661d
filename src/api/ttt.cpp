// Public TTT-Linear entry points: validate every argument once, then dispatch on the device.
#include "seqmix/ttt.h"

#include <cmath>
#include <vector>

#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/ttt/ttt.h"

namespace seqmix {
namespace {

using validate::expect;


struct Inputs {
  const TensorView& q;
  const TensorView& k;
  const TensorView& v;
  const TensorView& w;
  const TensorView& b;
  const TensorView& eta;
  const TensorView* initial_state;
  const TensorView* initial_state_bias;
  const TensorView* cu_seqlens;
};

// Validates the forward inputs and params; returns the CPU config (offsets only for CPU tensors).
cpu::TTTLinearConfig validate_inputs(const Inputs& in, const TTTLinearParams& params, bool* on_cuda) {
  expect(in.q, "q").rank(4, "[B, T, H, K]").floating().non_null();
  const int64_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), K = in.q.size(3);
  SEQMIX_CHECK(K > 0, "q: head dimension K must be > 0, got shape ", in.q.shape_string());
  expect(in.k, "k").shape({B, T, H, K}, "[B, T, H, K] (as q)").same_dtype(in.q, "q").non_null();
  // the inner model reconstructs v - k, so V == K (FLA: "DK must equal to DV")
  expect(in.v, "v").shape({B, T, H, K}, "[B, T, H, V] with V == K").same_dtype(in.q, "q").non_null();
  expect(in.eta, "eta").shape({B, T, H, 1}, "[B, T, H, 1]").floating().non_null();
  expect(in.w, "w").shape({H, K}, "[H, V]").floating().non_null();
  expect(in.b, "b").shape({H, K}, "[H, V]").floating().non_null();
  validate::same_device({{&in.q, "q"}, {&in.k, "k"}, {&in.v, "v"}, {&in.eta, "eta"}, {&in.w, "w"}, {&in.b, "b"},
                         {in.initial_state, "initial_state"}, {in.initial_state_bias, "initial_state_bias"}});

  validate::positive(params.chunk_size, "chunk_size");
  SEQMIX_CHECK(params.eps >= 0.0 && std::isfinite(params.eps), "eps must be finite and >= 0, got ", params.eps);
  if (params.scale) {
    SEQMIX_CHECK(std::isfinite(*params.scale), "scale must be finite, got ", *params.scale);
    validate::positive(*params.scale, "scale");
  }

  cpu::TTTLinearConfig config;
  config.heads = H;
  config.dim = K;
  config.scale = params.scale ? *params.scale : 1.0 / std::sqrt(static_cast<double>(K));
  config.eps = params.eps;
  config.chunk_size = params.chunk_size;
  *on_cuda = in.q.device.type == DeviceType::cuda;
  int64_t N = B;
  if (in.cu_seqlens) {
    SEQMIX_CHECK(B == 1, "q: batch size must be 1 when cu_seqlens is given (flatten variable-length inputs), got B = ",
                 B);
    if (*on_cuda) {
      expect(*in.cu_seqlens, "cu_seqlens").rank(1, "[N + 1]").integer();
      SEQMIX_CHECK(in.cu_seqlens->size(0) >= 1, "cu_seqlens: expected at least one entry [N + 1], got ",
                   in.cu_seqlens->shape_string());
    } else {
      config.offsets = validate::cu_seqlens(*in.cu_seqlens, "cu_seqlens", T);
    }
    N = in.cu_seqlens->size(0) - 1;
  } else {
    for (int64_t n = 0; n <= B; ++n) config.offsets.push_back(n * T);
  }
  if (in.initial_state) {
    expect(*in.initial_state, "initial_state").shape({N, H, K, K}, "[N, H, K, V]").dtype_in({DType::f32, DType::f64}).non_null();
  }
  if (in.initial_state_bias) {
    expect(*in.initial_state_bias, "initial_state_bias")
        .shape({N, H, 1, K}, "[N, H, 1, V]")
        .dtype_in({DType::f32, DType::f64})
        .non_null();
  }
  return config;
}

int64_t num_seqs(const Inputs& in) { return in.cu_seqlens ? in.cu_seqlens->size(0) - 1 : in.q.size(0); }

void validate_state_output(const TensorView* t, const char* name, std::initializer_list<int64_t> shape,
                           const char* layout, const Device& device) {
  if (!t) return;
  expect(*t, name).shape(shape, layout).dtype_in({DType::f32, DType::f64}).device(device).non_null();
}

using CpuForward = void (*)(const cpu::TTTLinearConfig&, const TensorView&, const TensorView&, const TensorView&,
                            const TensorView&, const TensorView&, const TensorView&, const TensorView*,
                            const TensorView*, const TensorView&, const TensorView*, const TensorView*);

void forward(const char* op, CpuForward cpu_fn, const Inputs& in, const TTTLinearParams& params, const TensorView& o,
             const TensorView* final_state, const TensorView* final_state_bias) {
  bool on_cuda = false;
  const cpu::TTTLinearConfig config = validate_inputs(in, params, &on_cuda);
  const int64_t N = num_seqs(in), H = in.q.size(2), K = in.q.size(3);
  expect(o, "o").shape(in.v.shape(), "[B, T, H, V]").same_dtype(in.q, "q").device(in.q.device).non_null();
  if (params.output_final_state) {
    SEQMIX_CHECK(final_state && final_state_bias,
                 "final_state and final_state_bias must be given when output_final_state is true, got ",
                 final_state ? "final_state" : "no final_state", " and ",
                 final_state_bias ? "final_state_bias" : "no final_state_bias");
  } else {
    SEQMIX_CHECK(!final_state && !final_state_bias,
                 "final_state / final_state_bias given but output_final_state is false");
  }
  validate_state_output(final_state, "final_state", {N, H, K, K}, "[N, H, K, V]", in.q.device);
  validate_state_output(final_state_bias, "final_state_bias", {N, H, 1, K}, "[N, H, 1, V]", in.q.device);
  if (on_cuda) dispatch::cuda_not_implemented(op);
  cpu_fn(config, in.q, in.k, in.v, in.w, in.b, in.eta, in.initial_state, in.initial_state_bias, o, final_state,
         final_state_bias);
}

}  // namespace

void chunk_ttt_linear_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& w,
                          const TensorView& b, const TensorView& eta, const TensorView* initial_state,
                          const TensorView* initial_state_bias, const TensorView* cu_seqlens,
                          const TTTLinearParams& params, const TensorView& o, const TensorView* final_state,
                          const TensorView* final_state_bias) {
  forward("chunk_ttt_linear_fwd", cpu::chunk_ttt_linear_fwd,
          {q, k, v, w, b, eta, initial_state, initial_state_bias, cu_seqlens}, params, o, final_state,
          final_state_bias);
}

void ttt_linear_naive_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& w,
                          const TensorView& b, const TensorView& eta, const TensorView* initial_state,
                          const TensorView* initial_state_bias, const TensorView* cu_seqlens,
                          const TTTLinearParams& params, const TensorView& o, const TensorView* final_state,
                          const TensorView* final_state_bias) {
  forward("ttt_linear_naive_fwd", cpu::ttt_linear_naive_fwd,
          {q, k, v, w, b, eta, initial_state, initial_state_bias, cu_seqlens}, params, o, final_state,
          final_state_bias);
}

void chunk_ttt_linear_bwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& w,
                          const TensorView& b, const TensorView& eta, const TensorView* initial_state,
                          const TensorView* initial_state_bias, const TensorView* cu_seqlens,
                          const TensorView& do_, const TensorView* dht, const TensorView* dhbt,
                          const TTTLinearParams& params, const TensorView& dq, const TensorView& dk,
                          const TensorView& dv, const TensorView& dw, const TensorView& db, const TensorView& deta,
                          const TensorView* dh0, const TensorView* dhb0) {
  const Inputs in{q, k, v, w, b, eta, initial_state, initial_state_bias, cu_seqlens};
  bool on_cuda = false;
  const cpu::TTTLinearConfig config = validate_inputs(in, params, &on_cuda);
  const int64_t N = num_seqs(in), H = q.size(2), K = q.size(3);
  const Device device = q.device;
  expect(do_, "do").shape(v.shape(), "[B, T, H, V]").floating().device(device).non_null();
  if (dht) expect(*dht, "dht").shape({N, H, K, K}, "[N, H, K, V]").floating().device(device).non_null();
  if (dhbt) expect(*dhbt, "dhbt").shape({N, H, 1, K}, "[N, H, 1, V]").floating().device(device).non_null();
  expect(dq, "dq").shape(q.shape(), "[B, T, H, K]").same_dtype(q, "q").device(device).non_null();
  expect(dk, "dk").shape(k.shape(), "[B, T, H, K]").same_dtype(k, "k").device(device).non_null();
  expect(dv, "dv").shape(v.shape(), "[B, T, H, V]").same_dtype(v, "v").device(device).non_null();
  expect(dw, "dw").shape(w.shape(), "[H, V]").same_dtype(w, "w").device(device).non_null();
  expect(db, "db").shape(b.shape(), "[H, V]").same_dtype(b, "b").device(device).non_null();
  expect(deta, "deta").shape(eta.shape(), "[B, T, H, 1]").same_dtype(eta, "eta").device(device).non_null();
  validate_state_output(dh0, "dh0", {N, H, K, K}, "[N, H, K, V]", device);
  validate_state_output(dhb0, "dhb0", {N, H, 1, K}, "[N, H, 1, V]", device);
  if (on_cuda) dispatch::cuda_not_implemented("chunk_ttt_linear_bwd");
  cpu::chunk_ttt_linear_bwd(config, q, k, v, w, b, eta, initial_state, initial_state_bias, do_, dht, dhbt, dq, dk, dv,
                            dw, db, deta, dh0, dhb0);
}

}  // namespace seqmix
