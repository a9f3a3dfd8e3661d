// TTT-Linear (peer and API model: flash-linear-attention `fla.ops.ttt.chunk_ttt_linear`,
// reference math `fla/ops/ttt/naive.py`).
//
// Per (sequence, head) with D = K = V, state W [K, V] and state bias hb [1, V], the sequence is cut
// into mini-batches of `chunk_size` tokens; a partial last mini-batch is zero-padded (q = k = v = 0)
// and its learning rate eta_last is eta of the last real token, as FLA does. Per mini-batch:
//   kh_j = k_j W + hb,  x_j = LN(kh_j)  (no affine),  sigma_j = sqrt(var(kh_j) + eps)
//   vn_j = d/dkh_j 0.5 |w * x_j + b - (v_j - k_j)|^2     (every row, padded rows included)
//   z_i  = q~_i W + hb - eta_i * sum_{j <= i} (q~_i . k_j + 1) vn_j,   q~ = scale * q
//   W   <- W  - eta_last * sum_j k_j^T vn_j,   hb <- hb - eta_last * sum_j vn_j
//   o_i  = z_i + w * LN(z_i) + b                         (LN residual with the same w, b, eps)
// Padded rows have vn != 0 (kh = hb) and so move hb, exactly as FLA's naive and Triton kernels.
#pragma once

#include <cstdint>
#include <optional>

#include "seqmix/tensor.h"

namespace seqmix {

struct TTTLinearParams {
  std::optional<double> scale;  // query scale; default K^-0.5; must be > 0 when given
  double eps = 1e-6;            // LayerNorm epsilon of the inner model and of the output norm
  int64_t chunk_size = 16;      // mini-batch size (FLA `chunk_size` / naive `mini_batch_size`), > 0
  bool output_final_state = false;  // final_state / final_state_bias must be given iff true
};

// Shapes (N = B, or the number of sequences when cu_seqlens [N + 1] is given with B == 1):
//   q, k [B, T, H, K]; v [B, T, H, V] with V == K; eta [B, T, H, 1]; w, b (LN weight/bias) [H, V];
//   initial_state / final_state [N, H, K, V]; initial_state_bias / final_state_bias [N, H, 1, V].
// q, k, v share a floating dtype; o has it too; states are f32 or f64.

// The chunked algorithm (as FLA's chunk kernels): a state pass stores W, hb at every chunk start and
// vn for every token, then the outputs of all chunks are computed independently from them.
void chunk_ttt_linear_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& w,
                          const TensorView& b, const TensorView& eta, const TensorView* initial_state,
                          const TensorView* initial_state_bias, const TensorView* cu_seqlens,
                          const TTTLinearParams& params, const TensorView& o, const TensorView* final_state,
                          const TensorView* final_state_bias);

// FLA's naive.py formulation: one sequential loop over mini-batches doing update and output together.
void ttt_linear_naive_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& w,
                          const TensorView& b, const TensorView& eta, const TensorView* initial_state,
                          const TensorView* initial_state_bias, const TensorView* cu_seqlens,
                          const TTTLinearParams& params, const TensorView& o, const TensorView* final_state,
                          const TensorView* final_state_bias);

// Gradients of sum(do_ * o) + sum(dht * final_state) + sum(dhbt * final_state_bias) (dht, dhbt
// optional: absent = 0) for every input, as torch autograd through FLA's naive reference gives,
// including the second-order terms of the inner gradient step through the LayerNorm. Recomputes
// the forward keeping one state per chunk. Each gradient has its input's shape and dtype
// (dq, dk, dv, dw, db, deta); dh0 [N, H, K, V] and dhb0 [N, H, 1, V] are f32/f64 optional outputs,
// defined also when the initial state is absent (= zeros). params.output_final_state is unused here.
void chunk_ttt_linear_bwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& w,
                          const TensorView& b, const TensorView& eta, const TensorView* initial_state,
                          const TensorView* initial_state_bias, const TensorView* cu_seqlens,
                          const TensorView& do_, const TensorView* dht, const TensorView* dhbt,
                          const TTTLinearParams& params, const TensorView& dq, const TensorView& dk,
                          const TensorView& dv, const TensorView& dw, const TensorView& db, const TensorView& deta,
                          const TensorView* dh0, const TensorView* dhb0);

}  // namespace seqmix
