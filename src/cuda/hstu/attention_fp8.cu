// Host side of the CUDA FP8 HSTU attention: the stream-ordered scratch (e4m3 copies and their
// descales), the quantizers feeding the kernels, and the public quantizer's CUDA path.
//
// Forward: q, k, v -> e4m3 copies per the table of hstu_fp8.h -> attention_fp8_fwd.cu.
// Backward: q, k, v, dout -> their fp8 copies dequantized to the inputs' 16-bit dtype (fp8 *
// descale rounded once) -> the 16-bit backward kernels (attention_bwd.cu). Quant_mode 0, 2..5
// make one copy per tensor, read by every product; quant_mode 1 makes rows of q, k, v, dout for
// S = q k^T and dP = dout v^T plus transposed copies of k, q, dout for dq = dS k, dk = dS^T q,
// dv = P^T dout, which the kernels' split instances read. The gradients are those of the
// unquantized inputs (straight-through), as fbgemm's autograd.
#include <vector>

#include "cpu/hstu/fp8.h"
#include "cuda/common/cuda_check.h"
#include "cuda/hstu/attention.h"
#include "cuda/hstu/attention_fp8.h"
#include "cuda/hstu/attention_fp8_kernels.h"

namespace seqmix::cuda {
namespace {

using cpu::HstuFp8Operand;
constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Descale entries of one copy, an upper bound for the block modes: a sequence of n tokens has
// ceil(n / bs) <= n / bs + 1 blocks, so NB <= ceil(L / bs) + B without reading the lengths.
int64_t descale_capacity(const HstuFp8Params& p, int64_t tokens, int64_t batch, int64_t heads, int64_t dim) {
  const int64_t blocks = (tokens + p.block_size - 1) / p.block_size + batch;
  switch (p.quant_mode) {
    case 1:
      return p.transposed ? blocks * heads * dim : heads * tokens;
    case 2:
      return heads * blocks;
    case 3:
      return batch * heads;
    case 4:
      return std::max<int64_t>(batch, 1);
    default:
      return 1;
  }
}

// One quantized copy in the scratch.
struct Copy {
  HstuFp8Params params;
  HstuFp8Operand operand;
  size_t data_offset = 0, descale_offset = 0;
  int64_t capacity = 0;
};

// The scratch of one call: the copies, then block offsets [B + 1] for block sizes 64 and 128.
struct Plan {
  std::vector<Copy> copies;
  size_t offsets64 = 0, offsets128 = 0, bytes = 0;

  Plan(const HstuAttentionParams& params, int64_t tokens, int64_t batch, int64_t heads, int64_t dim, bool backward,
       size_t element_bytes) {
    auto add = [&](HstuFp8Operand operand, bool transposed) {
      Copy c;
      c.operand = operand;
      c.params = cpu::hstu_fp8_operand_params(params.quant_mode, dim, backward, operand, transposed);
      c.capacity = descale_capacity(c.params, tokens, batch, heads, dim);
      c.data_offset = bytes;
      bytes += align_up(static_cast<size_t>(tokens * heads * dim) * element_bytes);
      c.descale_offset = bytes;
      bytes += align_up(static_cast<size_t>(c.capacity) * sizeof(float));
      copies.push_back(c);
    };
    add(HstuFp8Operand::q, false);
    add(HstuFp8Operand::k, false);
    add(HstuFp8Operand::v, !backward);  // forward mode 1: P v reads v's transposed copy
    if (backward) add(HstuFp8Operand::dout, false);
    if (backward && params.quant_mode == 1) {  // the gradient products' copies
      add(HstuFp8Operand::k, true);
      add(HstuFp8Operand::q, true);
      add(HstuFp8Operand::dout, true);
    }
    offsets64 = bytes;
    bytes += align_up(static_cast<size_t>(batch + 1) * sizeof(int64_t));
    offsets128 = bytes;
    bytes += align_up(static_cast<size_t>(batch + 1) * sizeof(int64_t));
  }
};

// Quantizes `x` into copy c of the scratch at `base`; out_dtype fp8_e4m3 (the fp8 bytes) or
// x's dtype (the dequantized values). Returns the copy's scheme for the kernels.
hstu_fp8::Scheme quantize_copy(const TensorView& x, const TensorView& seq_offsets, const Copy& c, char* base,
                               DType out_dtype, cudaStream_t stream, const Plan& plan) {
  const int64_t tokens = x.size(0), heads = x.size(1), dim = x.size(2);
  hstu_fp8::Scheme s{};
  s.mode = static_cast<int>(c.params.quant_mode);
  s.transposed = c.params.transposed;
  s.block_size = static_cast<int>(c.params.block_size);
  s.tokens = tokens;
  s.heads = static_cast<int>(heads);
  s.dim = static_cast<int>(dim);
  s.batch = seq_offsets.size(0) - 1;
  s.block_offsets =
      reinterpret_cast<const int64_t*>(base + (c.params.block_size == 64 ? plan.offsets64 : plan.offsets128));
  const hstu_fp8::Strided in{x.data, x.stride(0), x.stride(1), x.dtype};
  const hstu_fp8::Strided out{base + c.data_offset, heads * dim, dim, out_dtype};
  hstu_fp8::quantize(in, hstu_fp8::jagged_of(seq_offsets), s, reinterpret_cast<float*>(base + c.descale_offset),
                     c.capacity, out, stream);
  return s;
}

char* allocate(size_t bytes, cudaStream_t stream) {
  void* p = nullptr;
  SEQMIX_CUDA_CHECK(cudaMallocAsync(&p, bytes, stream));
  return static_cast<char*>(p);
}

void compute_block_offsets(const TensorView& seq_offsets, const Plan& plan, char* base, cudaStream_t stream) {
  const hstu_fp8::Jagged j = hstu_fp8::jagged_of(seq_offsets);
  hstu_fp8::block_offsets(j, 64, reinterpret_cast<int64_t*>(base + plan.offsets64), nullptr, stream);
  hstu_fp8::block_offsets(j, 128, reinterpret_cast<int64_t*>(base + plan.offsets128), nullptr, stream);
}

TensorView copy_view(const TensorView& like, const Copy& c, char* base, DType dtype) {
  return TensorView::contiguous(base + c.data_offset, dtype, like.shape(), like.device);
}

}  // namespace

int compute_capability(int device) {
  int major = 0, minor = 0;
  SEQMIX_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  SEQMIX_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major * 10 + minor;
}

size_t hstu_attention_fp8_workspace_bytes(const HstuAttentionParams& params, int64_t total_tokens, int64_t batch,
                                          int64_t heads, int64_t head_dim, bool backward) {
  if (params.quant_mode < 0) return 0;
  return Plan(params, total_tokens, batch, heads, head_dim, backward, backward ? 2 : 1).bytes;
}

void hstu_attention_fp8_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                            const TensorView& out, Stream stream) {
  const int64_t tokens = q.size(0), heads = q.size(1), dim = q.size(2), batch = seq_offsets.size(0) - 1;
  if (batch == 0 || heads == 0 || tokens == 0) return;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const Plan plan(params, tokens, batch, heads, dim, false, 1);
  char* base = allocate(plan.bytes, st);
  compute_block_offsets(seq_offsets, plan, base, st);
  const TensorView* inputs[3] = {&q, &k, &v};
  hstu_fp8::Fp8Operands f{};
  hstu_fp8::Scheme* schemes[3] = {&f.q, &f.k, &f.v};
  const float** descales[3] = {&f.q_descale, &f.k_descale, &f.v_descale};
  for (int i = 0; i < 3; ++i) {
    *schemes[i] = quantize_copy(*inputs[i], seq_offsets, plan.copies[i], base, DType::fp8_e4m3, st, plan);
    *descales[i] = reinterpret_cast<const float*>(base + plan.copies[i].descale_offset);
  }
  hstu::Args a = hstu::make_args(params, q, k, v, seq_offsets, num_targets);
  a.q = {base + plan.copies[0].data_offset, heads * dim, dim};
  a.k = {base + plan.copies[1].data_offset, heads * dim, dim};
  a.v = {base + plan.copies[2].data_offset, heads * dim, dim};
  a.out_or_dout = hstu::operand_of(out);
  hstu_fp8::launch_attention_fp8_fwd(a, f, q.dtype, heads, dim, st);
  SEQMIX_CUDA_CHECK(cudaFreeAsync(base, st));
}

void hstu_attention_fp8_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                            const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                            Stream stream) {
  const int64_t tokens = q.size(0), heads = q.size(1), dim = q.size(2), batch = seq_offsets.size(0) - 1;
  if (batch == 0 || heads == 0 || tokens == 0) return;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const Plan plan(params, tokens, batch, heads, dim, true, dtype_size(q.dtype));
  char* base = allocate(plan.bytes, st);
  compute_block_offsets(seq_offsets, plan, base, st);
  // Plan order: q, k, v, dout rows, then (mode 1) k, q, dout transposed.
  std::vector<TensorView> copies;
  for (const Copy& c : plan.copies) {
    const TensorView& x = c.operand == HstuFp8Operand::q   ? q
                          : c.operand == HstuFp8Operand::k ? k
                          : c.operand == HstuFp8Operand::v ? v
                                                           : dout;
    quantize_copy(x, seq_offsets, c, base, q.dtype, st, plan);
    copies.push_back(copy_view(x, c, base, q.dtype));
  }
  HstuAttentionParams plain = params;
  plain.quant_mode = -1;
  if (params.quant_mode == 1) {
    cuda::hstu_attention_bwd(plain, copies[0], copies[1], copies[2], seq_offsets, num_targets, copies[3],
                             {copies[4], copies[5], copies[6]}, dq, dk, dv, stream);
  } else {
    cuda::hstu_attention_bwd(plain, copies[0], copies[1], copies[2], seq_offsets, num_targets, copies[3], dq, dk, dv,
                             stream);
  }
  SEQMIX_CUDA_CHECK(cudaFreeAsync(base, st));
}

void hstu_fp8_quantize(const TensorView& x, const TensorView& seq_offsets, const HstuFp8Params& params,
                       const TensorView& x_fp8, const TensorView& descale, const TensorView* descale_offsets,
                       Stream stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t batch = seq_offsets.size(0) - 1;
  const bool block_mode = params.quant_mode == 2 || (params.quant_mode == 1 && params.transposed);
  const hstu_fp8::Jagged j = hstu_fp8::jagged_of(seq_offsets);
  char* offsets = nullptr;
  if (block_mode) {
    offsets = allocate(static_cast<size_t>(batch + 1) * sizeof(int64_t), st);
    hstu_fp8::block_offsets(j, static_cast<int>(params.block_size), reinterpret_cast<int64_t*>(offsets),
                            descale_offsets, st);
  }
  hstu_fp8::Scheme s{};
  s.mode = static_cast<int>(params.quant_mode);
  s.transposed = params.transposed;
  s.block_size = static_cast<int>(params.block_size);
  s.tokens = x.size(0);
  s.heads = static_cast<int>(x.size(1));
  s.dim = static_cast<int>(x.size(2));
  s.batch = batch;
  s.block_offsets = reinterpret_cast<const int64_t*>(offsets);
  hstu_fp8::quantize({x.data, x.stride(0), x.stride(1), x.dtype}, j, s, static_cast<float*>(descale.data),
                     descale.numel(), {x_fp8.data, x_fp8.stride(0), x_fp8.stride(1), DType::fp8_e4m3}, st);
  if (offsets) SEQMIX_CUDA_CHECK(cudaFreeAsync(offsets, st));
}

}  // namespace seqmix::cuda
