// FP8 (e4m3fn) quantization of HSTU attention operands, quant modes 0..5 of fbgemm_gpu's
// Hopper HSTU (`hstu_attn_varlen_func(..., quant_mode=m)`, fbgemm_gpu/experimental/hstu/hstu/
// cuda_hstu_attention.py). On jagged x [L, H, D] with seq_offsets [B + 1]:
//   descale = max(amax(|x| over the group) / 448, 1e-6),   x_fp8 = fp8(x / descale),
//   dequantized x = x_fp8 * descale, with one descale per group:
//   mode 0  none: x_fp8 = fp8(x) (plain cast, |x| > 464 gives NaN as torch), descale [1] = 1
//   mode 1  two-direction: rows (transposed = false): per (token, head), amax over D -> descale [H, L]
//           (fbgemm pads it to [H, L + 128] with zeros for its kernel); transposed = true: per
//           (block of block_size = 128 tokens of one sequence, head, dim) -> descale [NB, H, D]
//   mode 2  per-block: per (block of block_size tokens of one sequence, head), amax over tokens and D
//           -> descale [H, NB]
//   mode 3  per-head: per (sequence, head) -> descale [B, H]
//   mode 4  per-batch: per sequence -> descale [B]
//   mode 5  global: one for the tensor -> descale [1]
// NB = sum_b ceil(len_b / block_size); descale_offsets [B + 1] = cumsum(ceil(len_b / block_size))
// (fbgemm's cu_seqlens_*_descale). Which operand gets which copy (what the kernel multiplies):
//   forward  mode 1: S = q k^T uses the row copies of q and k; P v uses the transposed copy of v.
//            mode 2: q uses block_size BM, k and v BN of hstu_fp8_block_sizes(backward = false).
//   backward (recomputed from the unquantized q, k, v, plus dout quantized like q):
//            mode 1: fbgemm makes rows of q, k, v, dout and transposed copies of q, k, dout; by the
//            reduction dim of each GEMM, S = q k^T and dP = dout v^T use rows, dq = dS k uses k's
//            transposed copy, dk = dS^T q q's, dv = P^T dout dout's (inferred, the sm90 kernel was
//            not traced); mode 2: q and dout use BM, k and v BN (backward sizes).
// fbgemm's autograd returns the fp8 kernel's gradients as those of the unquantized inputs
// (straight-through), so emulating the FP8 attention on the CPU means: feed the HSTU attention
// reference with hstu_fp8_fake_quantize(q), (k), (v) (and dout for the backward) per the table.
//
// The arithmetic replays fbgemm's torch code on CUDA exactly (scales are f32): amax / 448 is
// amax * fl32(1/448) (CUDA divides by a Python scalar through its reciprocal), rounded to the
// input dtype in modes 1-transposed, 3, 4, 5 (torch divides amax in x's dtype there) and to f32
// in modes 1-rows and 2; x / descale is an f32 division except mode 4 with bf16/f16 x, where the
// descale is first rounded to x's dtype and the quotient too (a 0-dim descale does not promote).
// f64 x (no fbgemm kernel takes it) divides in f64 and reaches fp8 through f32, as torch's cast;
// its descales are still stored as f32. Beyond fbgemm: an empty sequence has an all-zero group,
// so modes 3/4 give it the 1e-6 floor (fbgemm's torch code raises on amax of an empty slice)
// and mode 1-transposed gives it no block (fbgemm's loop writes block index -1 for it).
// NaN from the mode-0 cast is stored as 0x7F whatever the sign (torch keeps the sign bit).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/tensor.h"

namespace seqmix {

inline constexpr int64_t kHstuFp8MaxQuantMode = 5;
// fbgemm's token block of the transposed copy of mode 1 and the default of mode 2.
inline constexpr int64_t kHstuFp8DefaultBlockSize = 128;

struct HstuFp8Params {
  int64_t quant_mode = 1;  // 0..5, see above (fbgemm's -1 = no quantization is simply not calling these)
  bool transposed = false;  // quant_mode 1 only: the per-(token block, head, dim) copy (fbgemm's xt)
  // Tokens per descale block for quant_mode 2 and for the transposed copy of quant_mode 1
  // (fbgemm always uses 128 there); must stay 128 for the other modes.
  int64_t block_size = kHstuFp8DefaultBlockSize;
};

// fbgemm's mode-2 block sizes: BM for q (and dout), BN for k and v.
struct HstuFp8BlockSizes {
  int64_t q_block = 0;
  int64_t kv_block = 0;
};
// Forward: (128, 128) for head_dim 64, and for head_dim 128 without rab; (128, 64) otherwise.
// Backward: (64, 128).
HstuFp8BlockSizes hstu_fp8_block_sizes(int64_t head_dim, bool has_rab, bool backward);

// Shape of the descale tensor of x [L, num_heads, head_dim] under `params`.
std::vector<int64_t> hstu_fp8_descale_shape(const TensorView& seq_offsets, int64_t num_heads, int64_t head_dim,
                                            const HstuFp8Params& params);

// x [L, H, D] (f32/f64/bf16/f16) -> x_fp8 [L, H, D] fp8_e4m3 and descale (f32, shape above);
// descale_offsets [B + 1] (int32/int64) only for the block modes (2, 1 transposed).
// CUDA tensors (all on one GPU) run the GPU quantizer on the default stream, bit-for-bit this
// reference and with no host sync: x bf16/f16/f32 with D % 8 == 0 and the last dims of x and
// x_fp8 contiguous, descale contiguous; the block count of the block modes is descale's dimension
// (hstu_fp8_descale_shape of the host lengths gives it). The other functions below are CPU only.
void hstu_fp8_quantize(const TensorView& x, const TensorView& seq_offsets, const HstuFp8Params& params,
                       const TensorView& x_fp8, const TensorView& descale,
                       const TensorView* descale_offsets = nullptr);

// x [L, H, D] (any floating dtype) = x_fp8 * descale of its group.
void hstu_fp8_dequantize(const TensorView& x_fp8, const TensorView& descale, const TensorView& seq_offsets,
                         const HstuFp8Params& params, const TensorView& x);

// out = dequantize(quantize(x)): what the FP8 kernel sees of x, for feeding an attention
// reference. out has x's shape and any floating dtype; the product fp8 * descale is exact in
// f64 and is rounded once into out's dtype (use f32/f64 to keep it exact).
void hstu_fp8_fake_quantize(const TensorView& x, const TensorView& seq_offsets, const HstuFp8Params& params,
                            const TensorView& out);

}  // namespace seqmix
