// FP8 HSTU attention on the CPU: the emulation that defines what the CUDA FP8 kernels compute.
// Each product reads the fake-quantized copy of its operands that fbgemm's kernel reads (the
// table in seqmix/hstu_fp8.h), dequantized exactly in fp64; the arithmetic after that is the fp64
// reference. The gradients are those of the unquantized inputs (straight-through).
#include "common/access.h"
#include "cpu/hstu/attention.h"
#include "cpu/hstu/fp8.h"

namespace seqmix::cpu {
namespace {

struct Quantizer {
  int64_t quant_mode;
  bool backward;
  HstuFp8Layout layout;

  // The dequantized fp8 copy of x (values of dtype `dtype`) as one product reads it.
  std::vector<double> copy(const std::vector<double>& x, DType dtype, HstuFp8Operand operand, bool transposed) const {
    const HstuFp8Params p = hstu_fp8_operand_params(quant_mode, layout.dim, backward, operand, transposed);
    const HstuFp8Quantized quantized = hstu_fp8_quantize(x, dtype, layout, p);
    return hstu_fp8_dequantize(quantized.x_fp8, quantized.descale, layout, p);
  }
};

Quantizer quantizer_of(const HstuAttentionParams& params, const TensorView& q, const std::vector<int64_t>& seq_offsets,
                       bool backward) {
  Quantizer z{params.quant_mode, backward, {}};
  z.layout.tokens = q.size(0);
  z.layout.heads = q.size(1);
  z.layout.dim = q.size(2);
  z.layout.seq_offsets = seq_offsets;
  return z;
}

}  // namespace

void hstu_attention_fp8_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const std::vector<int64_t>& seq_offsets,
                            const std::vector<int64_t>& num_targets, const TensorView& out) {
  const Quantizer z = quantizer_of(params, q, seq_offsets, false);
  Quantizer zv = z;
  zv.layout.dim = v.size(2);
  using Op = HstuFp8Operand;
  const std::vector<double> qs = z.copy(access::load(q), q.dtype, Op::q, false);
  const std::vector<double> ks = z.copy(access::load(k), k.dtype, Op::k, false);
  const std::vector<double> vt = zv.copy(access::load(v), v.dtype, Op::v, true);
  const HstuShapes shapes{q.size(1), q.size(2), v.size(2)};
  access::store(hstu_attention_fwd_values(params, shapes, seq_offsets, num_targets, {qs, ks, vt}), out);
}

void hstu_attention_fp8_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const std::vector<int64_t>& seq_offsets,
                            const std::vector<int64_t>& num_targets, const TensorView& dout, const TensorView& dq,
                            const TensorView& dk, const TensorView& dv) {
  const Quantizer z = quantizer_of(params, q, seq_offsets, true);
  Quantizer zv = z;
  zv.layout.dim = v.size(2);
  using Op = HstuFp8Operand;
  const std::vector<double> q64 = access::load(q), k64 = access::load(k), do64 = access::load(dout);
  const std::vector<double> q_rows = z.copy(q64, q.dtype, Op::q, false);
  const std::vector<double> k_rows = z.copy(k64, k.dtype, Op::k, false);
  const std::vector<double> v_rows = zv.copy(access::load(v), v.dtype, Op::v, false);
  const std::vector<double> do_rows = zv.copy(do64, dout.dtype, Op::dout, false);
  const HstuShapes shapes{q.size(1), q.size(2), v.size(2)};
  HstuGradients g;
  if (params.quant_mode == 1) {
    // Mode 1: the products that reduce over tokens read the per-(token block, head, dim) copies.
    const std::vector<double> q_t = z.copy(q64, q.dtype, Op::q, true);
    const std::vector<double> k_t = z.copy(k64, k.dtype, Op::k, true);
    const std::vector<double> do_t = zv.copy(do64, dout.dtype, Op::dout, true);
    g = hstu_attention_bwd_values(params, shapes, seq_offsets, num_targets,
                                  {q_rows, k_rows, do_rows, v_rows, k_t, q_t, do_t});
  } else {
    g = hstu_attention_bwd_values(params, shapes, seq_offsets, num_targets,
                                  {q_rows, k_rows, do_rows, v_rows, k_rows, q_rows, do_rows});
  }
  access::store(g.dq, dq);
  access::store(g.dk, dk);
  access::store(g.dv, dv);
}

}  // namespace seqmix::cpu
