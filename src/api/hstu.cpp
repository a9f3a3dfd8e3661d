// Public HSTU attention entries: validate every argument once, then dispatch on the device.
#include "seqmix/hstu.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/access.h"
#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/hstu/attention.h"
#ifdef SEQMIX_WITH_CUDA
#include "cuda/hstu/attention.h"
#include "cuda/hstu/attention_fp8.h"
#endif

namespace seqmix {
namespace {

void check_quant_mode(const HstuAttentionParams& p) {
  SEQMIX_CHECK(p.quant_mode >= -1 && p.quant_mode <= kHstuFp8MaxQuantMode,
               "quant_mode must be -1 (no FP8) or one of fbgemm HSTU's quant modes 0..5 (0 cast, 1 two-direction, "
               "2 per-block, 3 per-head, 4 per-batch, 5 global), got ",
               p.quant_mode);
}

void check_params(const HstuAttentionParams& p) {
  validate::positive(p.max_seq_len, "max_seq_len");
  SEQMIX_CHECK(p.scaling_seqlen == -1 || p.scaling_seqlen > 0,
               "scaling_seqlen must be -1 (meaning max_seq_len) or > 0, got ", p.scaling_seqlen);
  SEQMIX_CHECK(std::isfinite(p.alpha), "alpha must be finite, got ", p.alpha);
  validate::non_negative(p.contextual_seq_len, "contextual_seq_len");
  validate::non_negative(p.max_attn_len, "max_attn_len");
  validate::non_negative(p.min_full_attn_seq_len, "min_full_attn_seq_len");
  validate::non_negative(p.sla_k1, "sla_k1");
  validate::non_negative(p.sla_k2, "sla_k2");
  check_quant_mode(p);
  if (p.sla_k1 > 0 || p.sla_k2 > 0) {
    // TorchEasyRec's SLA mask replaces the fixed mask, so these options would do nothing.
    SEQMIX_CHECK(p.causal, "causal must be true with SLA (sla_k1 = ", p.sla_k1, ", sla_k2 = ", p.sla_k2,
                 "): the SLA mask is causal, got causal = false");
    SEQMIX_CHECK(p.max_attn_len == 0, "max_attn_len must be 0 with SLA (sla_k1 = ", p.sla_k1, ", sla_k2 = ", p.sla_k2,
                 "): sla_k1 is the window, got max_attn_len = ", p.max_attn_len);
    SEQMIX_CHECK(p.min_full_attn_seq_len == 0, "min_full_attn_seq_len must be 0 with SLA (sla_k1 = ", p.sla_k1,
                 ", sla_k2 = ", p.sla_k2, "), got ", p.min_full_attn_seq_len);
  }
}

struct HostIndex {
  std::vector<int64_t> seq_offsets;
  std::vector<int64_t> num_targets;  // empty when not given
};

// The CUDA kernels' layout: bf16/f16, Dqk == Dv in {64, 128}, the head dim contiguous and every
// row 16-byte aligned (they load 8-element vectors), and a grid that fits the launch limits.
void check_cuda_layout(const char* op, const HstuAttentionParams& params, const TensorView& q, const TensorView& v,
                       int64_t batch, const std::vector<std::pair<const TensorView*, const char*>>& tensors) {
  SEQMIX_CHECK(q.dtype == DType::bf16 || q.dtype == DType::f16, op, ": q: CUDA kernels take bfloat16/float16, got ",
               dtype_name(q.dtype));
  SEQMIX_CHECK(q.size(2) == 64 || q.size(2) == 128, op, ": q: CUDA kernels support head dim 64 or 128, got ",
               q.size(2));
  SEQMIX_CHECK(v.size(2) == q.size(2), op, ": v: CUDA kernels need Dv == Dqk (", q.size(2), "), got Dv = ", v.size(2));
  for (const auto& [t, name] : tensors) {
    SEQMIX_CHECK(t->stride(2) == 1, op, ": ", name, ": CUDA kernels need the last dim contiguous, got stride ",
                 t->stride(2));
    SEQMIX_CHECK(t->stride(0) % 8 == 0 && t->stride(1) % 8 == 0, op, ": ", name,
                 ": CUDA kernels need token and head strides that are multiples of 8, got ", t->stride(0), ", ",
                 t->stride(1));
    SEQMIX_CHECK(reinterpret_cast<uintptr_t>(t->data) % 16 == 0, op, ": ", name,
                 ": CUDA kernels need 16-byte aligned data");
  }
  SEQMIX_CHECK(q.size(1) <= 65535, op, ": q: CUDA kernels support at most 65535 heads, got ", q.size(1));
  SEQMIX_CHECK(q.size(0) < (int64_t{1} << 31), op, ": q: CUDA kernels support at most 2^31 - 1 tokens, got ",
               q.size(0));
  const int64_t blocks = batch * ((params.max_seq_len + 63) / 64);
  SEQMIX_CHECK(blocks <= (int64_t{1} << 31) - 1, op, ": B * ceil(max_seq_len / 64) = ", blocks,
               " exceeds the CUDA grid");
}

// The CUDA FP8 kernels: Hopper only (the e4m3 MMAs exist from sm_89, but only sm_90 is built and
// tested).
#ifdef SEQMIX_WITH_CUDA
void check_cuda_fp8(const char* op, const HstuAttentionParams& params, const TensorView& q) {
  const int capability = cuda::compute_capability(q.device.index);
  SEQMIX_CHECK(capability == 90, op, ": quant_mode = ", params.quant_mode,
               ": CUDA FP8 attention runs on sm_90 (Hopper) GPUs only, ", device_name(q.device), " is sm_", capability,
               "; use quant_mode = -1 there, or CPU tensors for the FP8 emulation");
}
#endif

// Checks q, k, v, seq_offsets, num_targets and the tensors in `same_as_q` / `same_as_v`
// (outputs and dout, which take the shape of q or v and the dtype of q). For CPU tensors it also
// checks the values of seq_offsets / num_targets and returns them; for CUDA tensors those stay on
// the GPU (reading them would sync), so only their shapes and dtypes are checked: the caller
// guarantees seq_offsets starts at 0, is non-decreasing, ends at L with no sequence longer than
// max_seq_len, and 0 <= num_targets[b] <= length b.
HostIndex check_inputs(const char* op, const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                       const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                       std::initializer_list<std::pair<const TensorView*, const char*>> same_as_q,
                       std::initializer_list<std::pair<const TensorView*, const char*>> same_as_v) {
  check_params(params);
  // FP8 attention quantizes inside (params.quant_mode, as fbgemm's hstu_attn_varlen_func): operands
  // that are already fp8 have no descales to go with them, so they are refused, never reinterpreted.
  if (q.dtype == DType::fp8_e4m3 || q.dtype == DType::fp8_e5m2) {
    SEQMIX_NOT_IMPLEMENTED(op, ": q: FP8 attention on pre-quantized operands (", dtype_name(q.dtype), ", ",
                           device_name(q.device),
                           "): pass q, k, v in bfloat16/float16 with params.quant_mode 0..5 "
                           "and the op quantizes them itself");
  }
  validate::expect(q, "q").rank(3, "[L, H, Dqk]").floating().non_null();
  const int64_t total = q.size(0), heads = q.size(1);
  validate::expect(k, "k").shape({total, heads, q.size(2)}, "[L, H, Dqk]").same_dtype(q, "q").non_null();
  validate::expect(v, "v").shape({total, heads, validate::kAnySize}, "[L, H, Dv]").same_dtype(q, "q").non_null();
  for (const auto& [t, name] : same_as_q) {
    validate::expect(*t, name).shape(q.shape(), "[L, H, Dqk]").same_dtype(q, "q").non_null();
  }
  for (const auto& [t, name] : same_as_v) {
    validate::expect(*t, name).shape(v.shape(), "[L, H, Dv]").same_dtype(q, "q").non_null();
  }
  validate::expect(seq_offsets, "seq_offsets").rank(1, "[B + 1]").integer().non_null();
  SEQMIX_CHECK(seq_offsets.size(0) >= 1, "seq_offsets: expected at least one entry [B + 1], got ",
               seq_offsets.shape_string());
  const int64_t batch = seq_offsets.size(0) - 1;
  if (num_targets) validate::expect(*num_targets, "num_targets").shape({batch}, "[B]").integer().non_null();

  const Device device = q.device;
  validate::expect(k, "k").device(device);
  validate::expect(v, "v").device(device);
  for (const auto& [t, name] : same_as_q) validate::expect(*t, name).device(device);
  for (const auto& [t, name] : same_as_v) validate::expect(*t, name).device(device);
  validate::expect(seq_offsets, "seq_offsets").device(device);
  if (num_targets) validate::expect(*num_targets, "num_targets").device(device);
  if (device.type == DeviceType::cuda) {
    if (!dispatch::built_with_cuda()) dispatch::cuda_not_implemented(op);
    std::vector<std::pair<const TensorView*, const char*>> all = {{&q, "q"}, {&k, "k"}, {&v, "v"}};
    all.insert(all.end(), same_as_q);
    all.insert(all.end(), same_as_v);
    check_cuda_layout(op, params, q, v, batch, all);
    return {};
  }

  HostIndex index;
  index.seq_offsets = validate::cu_seqlens(seq_offsets, "seq_offsets", total);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = index.seq_offsets[b + 1] - index.seq_offsets[b];
    SEQMIX_CHECK(length <= params.max_seq_len, "seq_offsets: sequence ", b, " has length ", length,
                 ", more than max_seq_len = ", params.max_seq_len);
  }
  if (num_targets) {
    index.num_targets = access::load_int(*num_targets);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t length = index.seq_offsets[b + 1] - index.seq_offsets[b];
      const int64_t targets = index.num_targets[b];
      SEQMIX_CHECK(targets >= 0 && targets <= length, "num_targets[", b, "] must be in [0, ", length,
                   "] (the sequence length), got ", targets);
    }
  }
  return index;
}

}  // namespace

void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& out, Stream stream) {
  const HostIndex index =
      check_inputs("hstu_attention_fwd", params, q, k, v, seq_offsets, num_targets, {}, {{&out, "out"}});
#ifdef SEQMIX_WITH_CUDA
  if (q.device.type == DeviceType::cuda) {
    if (params.quant_mode >= 0) check_cuda_fp8("hstu_attention_fwd", params, q);
    if (params.quant_mode >= 0)
      return cuda::hstu_attention_fp8_fwd(params, q, k, v, seq_offsets, num_targets, out, stream);
    return cuda::hstu_attention_fwd(params, q, k, v, seq_offsets, num_targets, out, stream);
  }
#endif
  (void)stream;
  if (params.quant_mode >= 0)
    return cpu::hstu_attention_fp8_fwd(params, q, k, v, index.seq_offsets, index.num_targets, out);
  cpu::hstu_attention_fwd(params, q, k, v, index.seq_offsets, index.num_targets, out);
}

void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                        Stream stream) {
  const HostIndex index = check_inputs("hstu_attention_bwd", params, q, k, v, seq_offsets, num_targets,
                                       {{&dq, "dq"}, {&dk, "dk"}}, {{&dout, "dout"}, {&dv, "dv"}});
#ifdef SEQMIX_WITH_CUDA
  if (q.device.type == DeviceType::cuda) {
    if (params.quant_mode >= 0) {
      check_cuda_fp8("hstu_attention_bwd", params, q);
      return cuda::hstu_attention_fp8_bwd(params, q, k, v, seq_offsets, num_targets, dout, dq, dk, dv, stream);
    }
    return cuda::hstu_attention_bwd(params, q, k, v, seq_offsets, num_targets, dout, dq, dk, dv, stream);
  }
#endif
  (void)stream;
  if (params.quant_mode >= 0) {
    return cpu::hstu_attention_fp8_bwd(params, q, k, v, index.seq_offsets, index.num_targets, dout, dq, dk, dv);
  }
  cpu::hstu_attention_bwd(params, q, k, v, index.seq_offsets, index.num_targets, dout, dq, dk, dv);
}

size_t hstu_attention_fp8_workspace_bytes(const HstuAttentionParams& params, int64_t total_tokens, int64_t batch,
                                          int64_t heads, int64_t head_dim, bool backward) {
  check_quant_mode(params);
  validate::non_negative(total_tokens, "total_tokens");
  validate::non_negative(batch, "batch");
  validate::non_negative(heads, "heads");
  validate::positive(head_dim, "head_dim");
#ifdef SEQMIX_WITH_CUDA
  return cuda::hstu_attention_fp8_workspace_bytes(params, total_tokens, batch, heads, head_dim, backward);
#else
  (void)backward;
  return 0;
#endif
}

}  // namespace seqmix
