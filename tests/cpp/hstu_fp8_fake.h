// The operand copies the FP8 attention's products read, per hstu_fp8.h's table, as the tests state it
// (independently of the library's own cpu::hstu_fp8_operand_params): shared by the CPU emulation test
// and the CUDA-vs-emulation test.
#pragma once

#include <cstdint>

#include "seqmix/hstu_fp8.h"
#include "seqmix/tensor.h"

namespace seqmix::testing {

// x's fake-quantized copy in f64: mode 1 rows, or (transposed) its per-(block, head, dim) copy; mode 2
// with fbgemm's block size for the query side (q, dout) or the key side (k, v).
inline HostTensor fp8_fake(const HostTensor& x, const HostTensor& seq_offsets, int64_t mode, bool backward,
                           bool query_side, bool transposed) {
  HstuFp8Params p;
  p.quant_mode = mode;
  p.transposed = mode == 1 && transposed;
  if (mode == 2) {
    const HstuFp8BlockSizes sizes = hstu_fp8_block_sizes(x.size(2), false, backward);
    p.block_size = query_side ? sizes.q_block : sizes.kv_block;
  }
  HostTensor out(DType::f64, x.sizes());
  hstu_fp8_fake_quantize(x.view(), seq_offsets.view(), p, out.view());
  return out;
}

}  // namespace seqmix::testing
