// CPU reference of fbgemm HSTU's FP8 quantizers (see include/seqmix/hstu_fp8.h for the modes).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/hstu_fp8.h"

namespace seqmix::cpu {

// Jagged [L, H, D] geometry with validated seq_offsets.
struct HstuFp8Layout {
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t dim = 0;
  std::vector<int64_t> seq_offsets;  // [B + 1]
};

// cumsum(ceil(len_b / block_size)) [B + 1]: fbgemm's cu_seqlens_*_descale.
std::vector<int64_t> hstu_fp8_block_offsets(const std::vector<int64_t>& seq_offsets, int64_t block_size);
std::vector<int64_t> hstu_fp8_descale_shape(const HstuFp8Layout& layout, const HstuFp8Params& params);

struct HstuFp8Quantized {
  std::vector<double> x_fp8;    // e4m3 values (NaN where torch's cast overflows)
  std::vector<double> descale;  // f32 values, row-major in the mode's descale shape
  std::vector<int64_t> descale_offsets;  // [B + 1] for the block modes, else empty
};

// x: row-major [L, H, D] values of a tensor of dtype x_dtype (the dtype fixes the peer's roundings).
HstuFp8Quantized hstu_fp8_quantize(const std::vector<double>& x, DType x_dtype, const HstuFp8Layout& layout,
                                   const HstuFp8Params& params);
// x_fp8 * descale of each element's group, exact in double.
std::vector<double> hstu_fp8_dequantize(const std::vector<double>& x_fp8, const std::vector<double>& descale,
                                        const HstuFp8Layout& layout, const HstuFp8Params& params);

// The FP8 attention's operands and the quantization of each copy (the table in seqmix/hstu_fp8.h):
// quant_mode 1 reads rows (transposed = false) or the per-(block, head, dim) copy (true); mode 2
// uses block_size BM for q and dout, BN for k and v (hstu_fp8_block_sizes without rab); the other
// modes have one copy per tensor and ignore `transposed`.
enum class HstuFp8Operand { q, k, v, dout };
HstuFp8Params hstu_fp8_operand_params(int64_t quant_mode, int64_t head_dim, bool backward, HstuFp8Operand operand,
                                      bool transposed);

// torch's `.to(torch.float8_e4m3fn)` of a value of any dtype: through f32, then the e4m3fn
// cast of numeric.h (round to nearest even, NaN above 464).
double torch_cast_to_fp8_e4m3(double value);

}  // namespace seqmix::cpu
