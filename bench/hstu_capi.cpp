// A C ABI over hstu_attention_fwd / _bwd for bench/hstu_vs_peers.py (ctypes), so the peers'
// Triton kernels and ours run in one process on the same torch-allocated CUDA tensors until
// the torch extension lands. Contiguous jagged [L, H, D] operands; seq_offsets / num_targets
// int32 or int64 on the GPU; quant_mode -1 (16-bit) or 0..5 (FP8, HstuAttentionParams::quant_mode).
// Returns 0, or -1 with the message in seqmix_hstu_last_error().
//
// Build on the device after build-cuda/libseqmix.a:
//   g++ -O2 -std=c++20 -shared -fPIC bench/hstu_capi.cpp -Iinclude build-cuda/libseqmix.a \
//       -L"$(dirname "$(which nvcc)")/../lib64" -lcudart -o build-cuda/libseqmix_hstu_capi.so
#include <cstdint>
#include <exception>
#include <string>

#include "seqmix/hstu.h"

namespace {

thread_local std::string last_error;

struct Views {
  seqmix::TensorView q, k, v, seq_offsets, num_targets;
  seqmix::HstuAttentionParams params;
};

// dtype code: 0 = bf16, 1 = f16 (the CUDA kernels' dtypes).
Views make_views(void* q, void* k, void* v, void* seq_offsets, int offsets_i64, void* num_targets, int targets_i64,
                 int64_t batch, int64_t total, int64_t heads, int64_t head_dim, int dtype, int64_t max_seq_len,
                 double alpha, int64_t scaling_seqlen, int64_t contextual_seq_len, int64_t max_attn_len, int64_t sla_k1,
                 int64_t sla_k2, int64_t quant_mode) {
  using seqmix::DType;
  using seqmix::TensorView;
  const seqmix::Device gpu = seqmix::Device::cuda(0);
  const DType t = dtype == 0 ? DType::bf16 : DType::f16;
  Views w;
  w.q = TensorView::contiguous(q, t, {total, heads, head_dim}, gpu);
  w.k = TensorView::contiguous(k, t, {total, heads, head_dim}, gpu);
  w.v = TensorView::contiguous(v, t, {total, heads, head_dim}, gpu);
  w.seq_offsets = TensorView::contiguous(seq_offsets, offsets_i64 ? DType::i64 : DType::i32, {batch + 1}, gpu);
  if (num_targets)
    w.num_targets = TensorView::contiguous(num_targets, targets_i64 ? DType::i64 : DType::i32, {batch}, gpu);
  w.params.max_seq_len = max_seq_len;
  w.params.alpha = alpha;
  w.params.scaling_seqlen = scaling_seqlen;
  w.params.contextual_seq_len = contextual_seq_len;
  w.params.max_attn_len = max_attn_len;
  w.params.sla_k1 = sla_k1;
  w.params.sla_k2 = sla_k2;
  w.params.quant_mode = quant_mode;
  return w;
}

}  // namespace

extern "C" {

const char* seqmix_hstu_last_error() { return last_error.c_str(); }

int seqmix_hstu_fwd(void* q, void* k, void* v, void* seq_offsets, int offsets_i64, void* num_targets, int targets_i64,
                    int64_t batch, int64_t total, int64_t heads, int64_t head_dim, int dtype, int64_t max_seq_len,
                    double alpha, int64_t scaling_seqlen, int64_t contextual_seq_len, int64_t max_attn_len,
                    int64_t sla_k1, int64_t sla_k2, int64_t quant_mode, void* out, void* stream) {
  try {
    const Views w =
        make_views(q, k, v, seq_offsets, offsets_i64, num_targets, targets_i64, batch, total, heads, head_dim, dtype,
                   max_seq_len, alpha, scaling_seqlen, contextual_seq_len, max_attn_len, sla_k1, sla_k2, quant_mode);
    const seqmix::TensorView o = seqmix::TensorView::contiguous(out, w.q.dtype, {total, heads, head_dim}, w.q.device);
    seqmix::hstu_attention_fwd(w.params, w.q, w.k, w.v, w.seq_offsets, num_targets ? &w.num_targets : nullptr, o,
                               stream);
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

int seqmix_hstu_bwd(void* q, void* k, void* v, void* seq_offsets, int offsets_i64, void* num_targets, int targets_i64,
                    int64_t batch, int64_t total, int64_t heads, int64_t head_dim, int dtype, int64_t max_seq_len,
                    double alpha, int64_t scaling_seqlen, int64_t contextual_seq_len, int64_t max_attn_len,
                    int64_t sla_k1, int64_t sla_k2, int64_t quant_mode, void* dout, void* dq, void* dk, void* dv,
                    void* stream) {
  try {
    const Views w =
        make_views(q, k, v, seq_offsets, offsets_i64, num_targets, targets_i64, batch, total, heads, head_dim, dtype,
                   max_seq_len, alpha, scaling_seqlen, contextual_seq_len, max_attn_len, sla_k1, sla_k2, quant_mode);
    auto view = [&](void* p) {
      return seqmix::TensorView::contiguous(p, w.q.dtype, {total, heads, head_dim}, w.q.device);
    };
    seqmix::hstu_attention_bwd(w.params, w.q, w.k, w.v, w.seq_offsets, num_targets ? &w.num_targets : nullptr,
                               view(dout), view(dq), view(dk), view(dv), stream);
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

}  // extern "C"
