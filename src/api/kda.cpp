// Public KDA entry points: validate every argument once, then dispatch on the device.
#include "seqmix/kda.h"

#include <cmath>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/kda/kda.h"
#ifdef SEQMIX_WITH_CUDA
#include "cuda/kda/kda.h"
#endif

namespace seqmix {

namespace {

constexpr const char* kStateLayoutKFirst = "[N, HV, K, V]";
constexpr const char* kStateLayoutVFirst = "[N, HV, V, K] (state_v_first)";

struct StateShape {
  std::vector<int64_t> sizes;
  const char* layout;
};

StateShape state_shape(const cpu::KdaArgs& a) {
  if (a.params.state_v_first) return {{a.N, a.HV, a.V, a.K}, kStateLayoutVFirst};
  return {{a.N, a.HV, a.K, a.V}, kStateLayoutKFirst};
}

void expect_state(const TensorView& t, const char* name, const cpu::KdaArgs& a) {
  const StateShape s = state_shape(a);
  validate::expect(t, name).shape(s.sizes, s.layout).dtype_in({DType::f32, DType::f64}).device(a.q->device).non_null();
}

// Validates the inputs shared by the forward and backward entries and resolves shapes and sequences.
cpu::KdaArgs validate_inputs(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
                             const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
                             const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params) {
  cpu::KdaArgs a;
  a.q = &q;
  a.k = &k;
  a.v = &v;
  a.g = &g;
  a.beta = &beta;
  a.A_log = A_log;
  a.dt_bias = dt_bias;
  a.initial_state = initial_state;
  a.params = params;

  validate::expect(q, "q").rank(4, "[B, T, H, K]").floating().non_null();
  a.B = q.size(0);
  a.T = q.size(1);
  a.H = q.size(2);
  a.K = q.size(3);
  validate::positive(a.H, "q: num heads H");
  validate::positive(a.K, "q: head dim K");
  const Device device = q.device;
  validate::expect(k, "k").shape({a.B, a.T, a.H, a.K}, "[B, T, H, K]").same_dtype(q, "q").device(device).non_null();
  validate::expect(v, "v").rank(4, "[B, T, HV, V]");
  validate::expect(v, "v").shape({a.B, a.T, validate::kAnySize, validate::kAnySize}, "[B, T, HV, V]")
      .same_dtype(q, "q").device(device).non_null();
  a.HV = v.size(2);
  a.V = v.size(3);
  validate::positive(a.V, "v: head dim V");
  SEQMIX_CHECK(a.HV >= a.H && a.HV % a.H == 0, "v: num value heads HV must be a multiple of the q/k heads H = ", a.H,
               " (GVA), got HV = ", a.HV);
  validate::expect(g, "g").shape({a.B, a.T, a.HV, a.K}, "[B, T, HV, K]").same_dtype(q, "q").device(device).non_null();
  validate::expect(beta, "beta").shape({a.B, a.T, a.HV}, "[B, T, HV]").same_dtype(q, "q").device(device).non_null();

  if (params.scale) {
    SEQMIX_CHECK(std::isfinite(*params.scale), "scale: expected a finite value, got ", *params.scale);
    a.scale = *params.scale;
  } else {
    a.scale = 1.0 / std::sqrt(static_cast<double>(a.K));
  }
  SEQMIX_CHECK(params.chunk_size == 32 || params.chunk_size == 64, "chunk_size: expected 32 or 64 (as FLA), got ",
               params.chunk_size);
  SEQMIX_CHECK(!params.allow_neg_eigval || params.use_beta_sigmoid_in_kernel,
               "allow_neg_eigval: requires use_beta_sigmoid_in_kernel = true");

  if (params.use_gate_in_kernel) {
    SEQMIX_CHECK(A_log != nullptr || params.lower_bound.has_value(),
                 "A_log: required when use_gate_in_kernel = true and lower_bound is not set");
    if (params.lower_bound) {
      SEQMIX_CHECK(std::isfinite(*params.lower_bound), "lower_bound: expected a finite value, got ",
                   *params.lower_bound);
    }
  } else {
    // FLA ignores these without the fused gate; passing them is a caller error here.
    SEQMIX_CHECK(A_log == nullptr, "A_log: only used with use_gate_in_kernel = true");
    SEQMIX_CHECK(dt_bias == nullptr, "dt_bias: only used with use_gate_in_kernel = true");
    SEQMIX_CHECK(!params.lower_bound, "lower_bound: only used with use_gate_in_kernel = true");
  }
  if (A_log) validate::expect(*A_log, "A_log").shape({a.HV}, "[HV]").floating().device(device).non_null();
  if (dt_bias) validate::expect(*dt_bias, "dt_bias").shape({a.HV * a.K}, "[HV * K]").floating().device(device).non_null();

  if (cu_seqlens) {
    SEQMIX_CHECK(a.B == 1, "cu_seqlens: expected batch size B == 1 (flattened sequences) with cu_seqlens, got B = ",
                 a.B);
    if (device.type == DeviceType::cuda) {
      validate::expect(*cu_seqlens, "cu_seqlens").rank(1, "[N + 1]").integer().device(device).non_null();
      SEQMIX_CHECK(cu_seqlens->size(0) >= 1, "cu_seqlens: expected at least one entry [N + 1], got ",
                   cu_seqlens->shape_string());
      SEQMIX_CHECK(cu_seqlens->is_contiguous(), "cu_seqlens: expected a contiguous tensor on CUDA");
      a.N = cu_seqlens->size(0) - 1;
#ifdef SEQMIX_WITH_CUDA
      // One small device-to-host copy (FLA's chunk_kda reads cu_seqlens on the host too), so bad
      // contents raise seqmix::Error here instead of faulting in a kernel.
      const HostTensor host = cuda::cu_seqlens_to_host(*cu_seqlens, static_cast<cudaStream_t>(params.stream));
      a.offsets = validate::cu_seqlens(host.view(), "cu_seqlens", a.T);
#endif
    } else {
      a.offsets = validate::cu_seqlens(*cu_seqlens, "cu_seqlens", a.T);
      a.N = static_cast<int64_t>(a.offsets.size()) - 1;
    }
  } else {
    a.N = a.B;
    if (device.type == DeviceType::cpu)
      for (int64_t b = 0; b <= a.B; ++b) a.offsets.push_back(b * a.T);
  }
  if (initial_state) expect_state(*initial_state, "initial_state", a);
  return a;
}

void validate_final_state(const cpu::KdaArgs& a, const TensorView* final_state) {
  SEQMIX_CHECK((final_state != nullptr) == a.params.output_final_state,
               "final_state: must be given exactly when output_final_state is true (output_final_state = ",
               a.params.output_final_state, ", final_state ", final_state ? "given" : "null", ")");
  if (final_state) expect_state(*final_state, "final_state", a);
}

// FLA's h: [B, NT, HV, K, V] ([.., V, K] with state_v_first), NT = ceil(T / chunk_size); with cu_seqlens
// B = 1 and NT = sum of ceil(len_n / chunk_size) (a.offsets holds the lengths for CPU tensors, and for CUDA
// ones in a CUDA build).
void validate_intermediate_states(const cpu::KdaArgs& a, bool varlen, const TensorView& t) {
  const int64_t BT = a.params.chunk_size;
  int64_t rows = a.B, chunks = (a.T + BT - 1) / BT;
  if (varlen) {
    rows = 1;
    chunks = cpu::kda_chunk_offsets(a.offsets, BT).back();
  }
  const bool v_first = a.params.state_v_first;
  const std::vector<int64_t> sizes =
      v_first ? std::vector<int64_t>{rows, chunks, a.HV, a.V, a.K} : std::vector<int64_t>{rows, chunks, a.HV, a.K, a.V};
  const std::string layout =
      std::string(varlen ? "[1, NT, HV, " : "[B, NT, HV, ") + (v_first ? "V, K]" : "K, V]") +
      (varlen ? " (NT = sum over sequences of ceil(len / chunk_size))" : " (NT = ceil(T / chunk_size))") +
      (v_first ? " (state_v_first)" : "");
  validate::expect(t, "intermediate_states")
      .shape(sizes, layout.c_str())
      .dtype_in({DType::f32, DType::f64})
      .device(a.q->device)
      .non_null();
}

void expect_like(const TensorView& t, const char* name, const TensorView& like, const char* like_name,
                 const char* layout) {
  validate::expect(t, name).shape(like.shape(), layout).same_dtype(like, like_name).device(like.device).non_null();
}

// The CUDA dispatch table: which validated combinations have a kernel. Anything else raises
// SEQMIX_NOT_IMPLEMENTED naming the option, so a CUDA tensor never falls back silently.
void check_cuda_supported(const char* op, const cpu::KdaArgs& a, std::initializer_list<validate::Named> tensors) {
  if (!dispatch::built_with_cuda()) dispatch::cuda_not_implemented(op);
  const DType dt = a.q->dtype;
  if (dt != DType::bf16 && dt != DType::f16 && dt != DType::f32)
    SEQMIX_NOT_IMPLEMENTED(op, " on CUDA: q dtype ", dtype_name(dt), " (supported: bfloat16, float16, float32)");
  if (a.K != a.V || (a.K != 64 && a.K != 128))
    SEQMIX_NOT_IMPLEMENTED(op, " on CUDA: head dims K = ", a.K, ", V = ", a.V, " (supported: K == V in {64, 128})");
  if (a.params.chunk_size != 64)
    SEQMIX_NOT_IMPLEMENTED(op, " on CUDA: chunk_size = ", a.params.chunk_size, " (supported: 64)");
  for (const validate::Named& t : tensors)
    if (t.tensor) validate::expect(*t.tensor, t.name).contiguous();
}

enum class Form { recurrent, chunk };

// intermediate_states is only given with Form::chunk (the public kda_recurrent_fwd has no such argument).
void forward(const char* op, Form form, const TensorView& q, const TensorView& k, const TensorView& v,
             const TensorView& g, const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
             const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
             const TensorView& o, const TensorView* final_state, const TensorView* intermediate_states) {
  const cpu::KdaArgs a = validate_inputs(q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, params);
  expect_like(o, "o", v, "v", "[B, T, HV, V]");
  validate_final_state(a, final_state);
  const bool on_cuda = q.device.type == DeviceType::cuda;
  if (intermediate_states) {
    // Without a CUDA build the sequence lengths of a CUDA cu_seqlens are unknown here: report the
    // missing backend rather than a shape mismatch.
    if (on_cuda && !dispatch::built_with_cuda()) dispatch::cuda_not_implemented(op);
    validate_intermediate_states(a, cu_seqlens != nullptr, *intermediate_states);
  }
  if (on_cuda) {
    if (form != Form::chunk) dispatch::cuda_not_implemented(op);
    check_cuda_supported(op, a,
                         {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&g, "g"}, {&beta, "beta"}, {A_log, "A_log"},
                          {dt_bias, "dt_bias"}, {initial_state, "initial_state"}, {&o, "o"},
                          {final_state, "final_state"}, {intermediate_states, "intermediate_states"}});
#ifdef SEQMIX_WITH_CUDA
    cuda::chunk_kda_fwd(a, cu_seqlens, o, final_state, intermediate_states, static_cast<cudaStream_t>(params.stream));
#endif
    return;
  }
  if (form == Form::chunk)
    cpu::chunk_kda_fwd(a, o, final_state, intermediate_states);
  else
    cpu::kda_recurrent_fwd(a, o, final_state);
}

}  // namespace

void kda_recurrent_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
                       const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
                       const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
                       const TensorView& o, const TensorView* final_state) {
  forward("kda_recurrent_fwd", Form::recurrent, q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, params, o,
          final_state, nullptr);
}

void chunk_kda_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
                   const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
                   const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
                   const TensorView& o, const TensorView* final_state, const TensorView* intermediate_states) {
  forward("chunk_kda_fwd", Form::chunk, q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, params, o,
          final_state, intermediate_states);
}

void chunk_kda_bwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
                   const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
                   const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
                   const TensorView& do_, const TensorView* dht, const TensorView& dq, const TensorView& dk,
                   const TensorView& dv, const TensorView& dg, const TensorView& dbeta, const TensorView* dh0,
                   const TensorView* dA_log, const TensorView* ddt_bias) {
  const cpu::KdaArgs a = validate_inputs(q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, params);
  expect_like(do_, "do", v, "v", "[B, T, HV, V]");
  if (dht) {
    SEQMIX_CHECK(params.output_final_state, "dht: given but output_final_state is false (no final state to differentiate)");
    expect_state(*dht, "dht", a);
  }
  expect_like(dq, "dq", q, "q", "[B, T, H, K]");
  expect_like(dk, "dk", k, "k", "[B, T, H, K]");
  expect_like(dv, "dv", v, "v", "[B, T, HV, V]");
  expect_like(dg, "dg", g, "g", "[B, T, HV, K]");
  expect_like(dbeta, "dbeta", beta, "beta", "[B, T, HV]");
  if (dh0) {
    SEQMIX_CHECK(initial_state != nullptr, "dh0: given without initial_state");
    expect_state(*dh0, "dh0", a);
  }
  if (dA_log) {
    SEQMIX_CHECK(A_log != nullptr, "dA_log: given without A_log");
    expect_like(*dA_log, "dA_log", *A_log, "A_log", "[HV]");
  }
  if (ddt_bias) {
    SEQMIX_CHECK(dt_bias != nullptr, "ddt_bias: given without dt_bias");
    expect_like(*ddt_bias, "ddt_bias", *dt_bias, "dt_bias", "[HV * K]");
  }
  if (q.device.type == DeviceType::cuda) {
    check_cuda_supported("chunk_kda_bwd", a,
                         {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&g, "g"}, {&beta, "beta"}, {A_log, "A_log"},
                          {dt_bias, "dt_bias"}, {initial_state, "initial_state"}, {&do_, "do"}, {dht, "dht"},
                          {&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dg, "dg"}, {&dbeta, "dbeta"}, {dh0, "dh0"},
                          {dA_log, "dA_log"}, {ddt_bias, "ddt_bias"}});
#ifdef SEQMIX_WITH_CUDA
    cuda::chunk_kda_bwd(a, cu_seqlens, do_, dht, dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias,
                        static_cast<cudaStream_t>(params.stream));
#endif
    return;
  }
  cpu::chunk_kda_bwd(a, do_, dht, dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias);
}

size_t chunk_kda_workspace_bytes(int64_t B, int64_t T, int64_t H, int64_t HV, int64_t K, int64_t V, int64_t num_seqs,
                                 bool backward, DType input_dtype) {
  SEQMIX_CHECK(input_dtype == DType::f32 || input_dtype == DType::f64 || input_dtype == DType::bf16 ||
                   input_dtype == DType::f16,
               "chunk_kda_workspace_bytes: input_dtype = ", dtype_name(input_dtype),
               ", expected the dtype of q: float32, float64, bfloat16 or float16");
#ifdef SEQMIX_WITH_CUDA
  cpu::KdaArgs a;
  a.B = B;
  a.T = T;
  a.N = num_seqs < 0 ? B : num_seqs;
  const int64_t max_chunks = cuda::chunk_kda_max_chunks(a, num_seqs >= 0);
  return cuda::chunk_kda_workspace_bytes(B * T, a.N, max_chunks, H, HV, K, V, backward, input_dtype);
#else
  (void)B, (void)T, (void)H, (void)HV, (void)K, (void)V, (void)num_seqs, (void)backward, (void)input_dtype;
  return 0;
#endif
}

}  // namespace seqmix
