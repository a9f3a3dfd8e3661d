// KDA (Kimi Delta Attention), after flash-linear-attention's `fla.ops.kda.chunk_kda`.
//
// Per value head (q/k head h = hv / (HV / H), GVA), state S in R^{K x V}, per token t:
//   S <- diag(exp(g_t)) S                          g_t: log-space decay per key channel
//   S <- S + beta_t k_t (v_t - S^T k_t)^T          delta rule
//   o_t = S^T (scale * q_t)                        scale enters through q, as FLA's naive reference
// Options, as FLA: q/k L2-normalised per head (x / sqrt(sum x^2 + 1e-6)); g computed in kernel
// from raw g (`-exp(A_log) * softplus(g + dt_bias)`, or `lower_bound * sigmoid(exp(A_log) * (g + dt_bias))`
// when lower_bound is set, with exp(A_log) -> 1 when A_log is absent); beta = sigmoid(beta)
// (2 * sigmoid(beta) with allow_neg_eigval).
//
// Layouts: q, k [B, T, H, K]; v [B, T, HV, V]; g [B, T, HV, K]; beta [B, T, HV]; o [B, T, HV, V];
// A_log [HV]; dt_bias [HV * K]. Varlen: B == 1 and cu_seqlens [N + 1] (int32/int64, on the tensors'
// device). Its contents are checked (0 = cu[0] <= ... <= cu[N] = T); on CUDA that costs one small
// device-to-host copy on params.stream and a wait for it (FLA's chunk_kda reads cu_seqlens on the host too).
// States [N, HV, K, V] ([N, HV, V, K] with state_v_first), f32 or f64; N = B without cu_seqlens.
// Inputs f32/f64/bf16/f16 (q, k, v, g, beta share one dtype); outputs and gradients in that dtype.
// CUDA (chunk_kda_fwd / chunk_kda_bwd): q/k/v/g/beta bf16, f16 or f32, K == V in {64, 128},
// chunk_size 64, contiguous tensors, every option; anything else is SEQMIX_NOT_IMPLEMENTED naming it.
// Each CUDA call allocates its scratch stream-ordered (cudaMallocAsync / cudaFreeAsync on
// params.stream; size from chunk_kda_workspace_bytes) and never synchronises with the host except
// for the cu_seqlens copy above. Non-contiguous CUDA tensors raise seqmix::Error naming the argument.
// Dispatch is by the tensors' device: every tensor argument must be on q's device (a mix raises
// seqmix::Error naming the argument). CUDA arithmetic accumulates in fp32 (fp32 states whatever their storage
// dtype). f32 inputs: every matrix product in 3xTF32 (fp32-accurate) and fp32 scratch. bf16 / f16 inputs, as FLA:
// the state, output and within-chunk gradient products multiply bf16 operands, and the arrays those kernels
// exchange (WY vectors, v_new, the per-chunk states and their gradients) are stored in bf16; the remaining
// products run one TF32 pass and the triangular inverse 3xTF32. Deterministic (no atomics): the same call gives
// bit-identical results. Kernels: src/cuda/kda/{forward,backward}.cu.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "seqmix/device.h"
#include "seqmix/tensor.h"

namespace seqmix {

struct KdaParams {
  // Multiplies q; default K^-0.5.
  std::optional<double> scale;
  // The final state is written to `final_state`, which must be given exactly when this is true.
  bool output_final_state = false;
  // q, k <- x * rsqrt(sum_K x^2 + 1e-6) per token and head (FLA's l2norm eps).
  bool use_qk_l2norm_in_kernel = false;
  // g is the raw gate input; needs A_log unless lower_bound is set; dt_bias optional.
  bool use_gate_in_kernel = false;
  // With use_gate_in_kernel: gate = lower_bound * sigmoid(exp(A_log) * (g + dt_bias)).
  std::optional<double> lower_bound;
  // beta is the logit: beta <- sigmoid(beta).
  bool use_beta_sigmoid_in_kernel = false;
  // beta <- 2 * sigmoid(beta) (eigenvalues of the transition in (-1, 1]); needs use_beta_sigmoid_in_kernel.
  bool allow_neg_eigval = false;
  // States (initial_state, final_state, dht, dh0) stored [V, K] per head instead of [K, V].
  bool state_v_first = false;
  // Tokens per chunk of the chunked form (FLA accepts 32 or 64); the backward checkpoints the
  // state every chunk_size tokens.
  int64_t chunk_size = 64;
  // CUDA stream of the CUDA kernels (nullptr = default stream); unused on the CPU.
  Stream stream = nullptr;
};

// Bytes of device scratch chunk_kda_fwd (backward = false) or chunk_kda_bwd (true) allocate for CUDA
// tensors of these shapes with q, k, v, g, beta of input_dtype; num_seqs = cu_seqlens entries - 1, or -1 without
// cu_seqlens (then N = B). The backward holds the state entering each chunk and its gradient: about
// 2 * (T / 64 + N) * HV * K * V elements, fp32 for f32 inputs and bf16 for bf16 / f16 inputs, plus ~10 fp32
// [T, HV, K] arrays. 0 in a build without CUDA.
size_t chunk_kda_workspace_bytes(int64_t B, int64_t T, int64_t H, int64_t HV, int64_t K, int64_t V, int64_t num_seqs,
                                 bool backward, DType input_dtype);

// Token-by-token recurrence (FLA's naive_recurrent_kda / fused_recurrent_kda).
void kda_recurrent_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
                       const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
                       const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
                       const TensorView& o, const TensorView* final_state);

// Chunked form (FLA's chunk_kda): per chunk of chunk_size tokens with in-chunk cumulative gates Gamma,
// A = (I + tril(diag(beta) K Gamma K^T, -1))^-1, WY vectors w = A diag(beta) (Gamma k), u = A diag(beta) v,
// v_new = u - w S, o = (q Gamma) S + tril(q Gamma K^T) v_new, S <- Gamma_last S + (Gamma_last / Gamma k)^T v_new.
// intermediate_states, when given, receives FLA's `h` (chunk_kda with return_intermediate_states): the state
// S entering each chunk (the initial state or zeros for a sequence's first chunk), f32 or f64,
// [B, NT, HV, K, V] with NT = ceil(T / chunk_size), or with cu_seqlens [1, NT, HV, K, V] with NT = the sum over
// sequences of ceil(len_n / chunk_size), the chunks of sequence n consecutive (none for an empty sequence);
// [.., V, K] with state_v_first.
void chunk_kda_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
                   const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
                   const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
                   const TensorView& o, const TensorView* final_state, const TensorView* intermediate_states = nullptr);

// Gradients of chunk_kda_fwd given do_ (FLA's `do`, a C++ keyword) and, when output_final_state,
// optionally dht (absent = zero).
// Reverse sweep of the recurrence from state checkpoints every chunk_size tokens (memory
// O(T / chunk_size * HV * K * V)). dg, dbeta are with respect to the raw inputs (through the
// fused gate / sigmoid); dq, dk through the L2 norm. dh0 is written when given (needs
// initial_state); dA_log / ddt_bias when given (need A_log / dt_bias and use_gate_in_kernel).
void chunk_kda_bwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
                   const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
                   const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
                   const TensorView& do_, const TensorView* dht, const TensorView& dq, const TensorView& dk,
                   const TensorView& dv, const TensorView& dg, const TensorView& dbeta, const TensorView* dh0,
                   const TensorView* dA_log, const TensorView* ddt_bias);

}  // namespace seqmix
