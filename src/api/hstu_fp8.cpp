// Public entry points of the HSTU FP8 quantizers: validation, then CPU reference or a CUDA
// "not implemented" error.
#include <initializer_list>

#include "common/access.h"
#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/hstu/fp8.h"
#include "seqmix/hstu_fp8.h"
#ifdef SEQMIX_WITH_CUDA
#include "cuda/hstu/attention_fp8.h"
#endif

namespace seqmix {
namespace {

bool is_block_mode(const HstuFp8Params& p) { return p.quant_mode == 2 || (p.quant_mode == 1 && p.transposed); }

void check_params(const HstuFp8Params& p) {
  SEQMIX_CHECK(p.quant_mode >= 0 && p.quant_mode <= kHstuFp8MaxQuantMode,
               "quant_mode must be one of fbgemm HSTU's quant modes 0..5 (0 cast, 1 two-direction, 2 per-block, "
               "3 per-head, 4 per-batch, 5 global), got ",
               p.quant_mode);
  SEQMIX_CHECK(!p.transposed || p.quant_mode == 1, "transposed: only quant_mode 1 has a transposed copy, got quant_mode ",
               p.quant_mode);
  validate::positive(p.block_size, "block_size");
  SEQMIX_CHECK(is_block_mode(p) || p.block_size == kHstuFp8DefaultBlockSize,
               "block_size: only quant_mode 2 and the transposed copy of quant_mode 1 use blocks, got block_size ",
               p.block_size, " with quant_mode ", p.quant_mode, (p.quant_mode == 1 ? " (transposed = false)" : ""));
}

void check_seq_offsets_structure(const TensorView& seq_offsets) {
  validate::expect(seq_offsets, "seq_offsets").rank(1, "[B + 1]").integer().non_null();
}

// Host geometry of x [L, H, D]; seq_offsets must be a CPU tensor ending at L.
cpu::HstuFp8Layout host_layout(const std::vector<int64_t>& shape, const TensorView& seq_offsets) {
  cpu::HstuFp8Layout layout;
  layout.tokens = shape[0];
  layout.heads = shape[1];
  layout.dim = shape[2];
  layout.seq_offsets = validate::cu_seqlens(seq_offsets, "seq_offsets", layout.tokens);
  return layout;
}

void check_descale(const TensorView& descale, const cpu::HstuFp8Layout& layout, const HstuFp8Params& params) {
  validate::expect(descale, "descale").shape(cpu::hstu_fp8_descale_shape(layout, params)).dtype(DType::f32).non_null();
}

void check_descale_offsets(const TensorView* descale_offsets, const HstuFp8Params& params, int64_t batch) {
  if (!descale_offsets) return;
  SEQMIX_CHECK(is_block_mode(params), "descale_offsets: only quant_mode 2 and the transposed copy of quant_mode 1 "
               "have block offsets, got quant_mode ", params.quant_mode);
  validate::expect(*descale_offsets, "descale_offsets").shape({batch + 1}, "[B + 1]").integer().non_null();
}

// CUDA tensors: the values of seq_offsets stay on the GPU, so the block count NB of the block
// modes is taken from descale's shape (hstu_fp8_descale_shape of the host lengths gives it).
void quantize_cuda(const TensorView& x, const TensorView& seq_offsets, const HstuFp8Params& params,
                   const TensorView& x_fp8, const TensorView& descale, const TensorView* descale_offsets) {
  if (!dispatch::built_with_cuda()) dispatch::cuda_not_implemented("hstu_fp8_quantize");
  SEQMIX_CHECK(x.dtype == DType::bf16 || x.dtype == DType::f16 || x.dtype == DType::f32,
               "hstu_fp8_quantize: x: the CUDA quantizer takes bfloat16/float16/float32, got ", dtype_name(x.dtype));
  SEQMIX_CHECK(x.size(2) % 8 == 0,
               "hstu_fp8_quantize: x: the CUDA quantizer needs a head dim that is a multiple of 8, got ", x.size(2));
  SEQMIX_CHECK(x.stride(2) == 1 && x_fp8.stride(2) == 1,
               "hstu_fp8_quantize: x, x_fp8: the CUDA quantizer needs the last dim contiguous, got strides ",
               x.stride(2), " and ", x_fp8.stride(2));
  const int64_t batch = seq_offsets.size(0) - 1, tokens = x.size(0), heads = x.size(1), dim = x.size(2);
  std::vector<int64_t> shape;
  switch (params.quant_mode) {
    case 1:
      shape = params.transposed ? std::vector<int64_t>{validate::kAnySize, heads, dim}
                                : std::vector<int64_t>{heads, tokens};
      break;
    case 2:
      shape = {heads, validate::kAnySize};
      break;
    case 3:
      shape = {batch, heads};
      break;
    case 4:
      shape = {batch};
      break;
    default:
      shape = {1};
  }
  validate::expect(descale, "descale")
      .shape(shape, "the mode's descale shape (hstu_fp8_descale_shape)")
      .dtype(DType::f32)
      .non_null();
  SEQMIX_CHECK(descale.is_contiguous(), "hstu_fp8_quantize: descale: the CUDA quantizer needs it contiguous");
#ifdef SEQMIX_WITH_CUDA
  cuda::hstu_fp8_quantize(x, seq_offsets, params, x_fp8, descale, descale_offsets, nullptr);
#else
  (void)tokens;
  (void)descale_offsets;
#endif
}

}  // namespace

HstuFp8BlockSizes hstu_fp8_block_sizes(int64_t head_dim, bool has_rab, bool backward) {
  validate::positive(head_dim, "head_dim");
  if (backward) return {64, 128};
  if (head_dim == 64 || (head_dim == 128 && !has_rab)) return {128, 128};
  return {128, 64};
}

std::vector<int64_t> hstu_fp8_descale_shape(const TensorView& seq_offsets, int64_t num_heads, int64_t head_dim,
                                            const HstuFp8Params& params) {
  check_params(params);
  validate::non_negative(num_heads, "num_heads");
  validate::non_negative(head_dim, "head_dim");
  check_seq_offsets_structure(seq_offsets);
  if (seq_offsets.device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hstu_fp8_descale_shape");
  cpu::HstuFp8Layout layout;
  layout.seq_offsets = validate::cu_seqlens(seq_offsets, "seq_offsets", -1);
  layout.tokens = layout.seq_offsets.back();
  layout.heads = num_heads;
  layout.dim = head_dim;
  return cpu::hstu_fp8_descale_shape(layout, params);
}

void hstu_fp8_quantize(const TensorView& x, const TensorView& seq_offsets, const HstuFp8Params& params,
                       const TensorView& x_fp8, const TensorView& descale, const TensorView* descale_offsets) {
  check_params(params);
  validate::expect(x, "x").rank(3, "[L, H, D]").floating().non_null();
  check_seq_offsets_structure(seq_offsets);
  validate::expect(x_fp8, "x_fp8").shape(x.shape(), "[L, H, D]").dtype(DType::fp8_e4m3).non_null();
  check_descale_offsets(descale_offsets, params, seq_offsets.size(0) - 1);
  validate::same_device({{&x, "x"},
                     {&seq_offsets, "seq_offsets"},
                     {&x_fp8, "x_fp8"},
                     {&descale, "descale"},
                     {descale_offsets, "descale_offsets"}});
  if (x.device.type == DeviceType::cuda) return quantize_cuda(x, seq_offsets, params, x_fp8, descale, descale_offsets);
  const cpu::HstuFp8Layout layout = host_layout(x.shape(), seq_offsets);
  check_descale(descale, layout, params);

  const cpu::HstuFp8Quantized q = cpu::hstu_fp8_quantize(access::load(x), x.dtype, layout, params);
  access::store(q.x_fp8, x_fp8);
  access::store(q.descale, descale);
  if (descale_offsets) access::store_int(q.descale_offsets, *descale_offsets);
}

void hstu_fp8_dequantize(const TensorView& x_fp8, const TensorView& descale, const TensorView& seq_offsets,
                         const HstuFp8Params& params, const TensorView& x) {
  check_params(params);
  validate::expect(x_fp8, "x_fp8").rank(3, "[L, H, D]").dtype(DType::fp8_e4m3).non_null();
  check_seq_offsets_structure(seq_offsets);
  validate::expect(x, "x").shape(x_fp8.shape(), "[L, H, D]").floating().non_null();
  validate::same_device({{&x_fp8, "x_fp8"}, {&descale, "descale"}, {&seq_offsets, "seq_offsets"}, {&x, "x"}});
  if (x_fp8.device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hstu_fp8_dequantize");
  const cpu::HstuFp8Layout layout = host_layout(x_fp8.shape(), seq_offsets);
  check_descale(descale, layout, params);
  access::store(cpu::hstu_fp8_dequantize(access::load(x_fp8), access::load(descale), layout, params), x);
}

void hstu_fp8_fake_quantize(const TensorView& x, const TensorView& seq_offsets, const HstuFp8Params& params,
                            const TensorView& out) {
  check_params(params);
  validate::expect(x, "x").rank(3, "[L, H, D]").floating().non_null();
  check_seq_offsets_structure(seq_offsets);
  validate::expect(out, "out").shape(x.shape(), "[L, H, D]").floating().non_null();
  validate::same_device({{&x, "x"}, {&seq_offsets, "seq_offsets"}, {&out, "out"}});
  if (x.device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hstu_fp8_fake_quantize");
  const cpu::HstuFp8Layout layout = host_layout(x.shape(), seq_offsets);
  const cpu::HstuFp8Quantized q = cpu::hstu_fp8_quantize(access::load(x), x.dtype, layout, params);
  access::store(cpu::hstu_fp8_dequantize(q.x_fp8, q.descale, layout, params), out);
}

}  // namespace seqmix
