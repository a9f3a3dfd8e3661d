// Public DeepSeek-V4 attention entries: validate every argument once, then dispatch on the
// device (CPU reference in src/cpu/dsa/, CUDA not implemented yet).
#include "seqmix/dsa.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "common/access.h"
#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/dsa/compressor.h"
#include "cpu/dsa/indexer.h"
#include "cpu/dsa/rope.h"
#ifdef SEQMIX_WITH_CUDA
#include "cuda/dsa/rope.h"
#endif
#include "cpu/dsa/sparse_attention.h"

namespace seqmix {
namespace {

using validate::kAnySize;
using validate::Named;

void finite_scale(const std::optional<double>& v, const char* name) {
  SEQMIX_CHECK(!v || std::isfinite(*v), name, " must be finite, got ", v ? *v : 0.0);
}

// cu_seqlens or, when absent, one sequence of `total` tokens.
std::vector<int64_t> sequences(const TensorView* cu_seqlens, int64_t total) {
  if (cu_seqlens) return validate::cu_seqlens(*cu_seqlens, "cu_seqlens", total);
  return {0, total};
}

int64_t max_length(const std::vector<int64_t>& cu) {
  int64_t m = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) m = std::max(m, cu[b + 1] - cu[b]);
  return m;
}

// Every entry of an index tensor is -1 or in [0, limit(row)).
template <class Limit>
void check_index_range(const std::vector<int64_t>& values, int64_t width, const char* name, Limit limit) {
  for (size_t i = 0; i < values.size(); ++i) {
    const int64_t row = width > 0 ? static_cast<int64_t>(i) / width : 0;
    const int64_t v = values[i], hi = limit(row);
    SEQMIX_CHECK(v == -1 || (v >= 0 && v < hi), name, ": entries must be -1 or in [0, ", hi, "), got ", v,
                 " at flat index ", i);
  }
}

// ----- RoPE --------------------------------------------------------------------------------

void check_rope_tables(const TensorView& cos, const TensorView& sin) {
  validate::expect(cos, "cos").rank(2, "[P, rope_dim / 2]").floating().non_null();
  validate::expect(sin, "sin").shape(cos.shape(), "[P, rope_dim / 2]").floating().non_null();
}

void check_rope_apply(const char* op, const TensorView& x, const char* x_name, const TensorView& cos,
                      const TensorView& sin, const TensorView* position_ids, const TensorView& out,
                      const char* out_name) {
  validate::expect(x, x_name).rank(3, "[T, H, D]").floating().non_null();
  check_rope_tables(cos, sin);
  SEQMIX_CHECK(2 * cos.size(1) <= x.size(2), "cos: rope_dim = 2 * cos.size(1) = ", 2 * cos.size(1),
               " must be <= the head dim of ", x_name, " (", x.size(2), ")");
  validate::expect(out, out_name).shape(x.shape(), "[T, H, D]").same_dtype(x, x_name).non_null();
  if (position_ids) {
    validate::expect(*position_ids, "position_ids").shape({x.size(0)}, "[T]").integer().non_null();
  } else {
    SEQMIX_CHECK(cos.size(0) >= x.size(0), "cos: without position_ids token t reads row t, so cos needs >= ", x.size(0),
                 " rows, got ", cos.size(0));
  }
  validate::same_device({{&x, x_name}, {&cos, "cos"}, {&sin, "sin"}, {position_ids, "position_ids"}, {&out, out_name}});
  if (x.device.type == DeviceType::cuda) {
    if (!dispatch::built_with_cuda()) dispatch::cuda_not_implemented(op);
    validate::expect(x, x_name).dtype_in({DType::bf16, DType::f16, DType::f32});
    SEQMIX_CHECK(x.stride(2) == 1, x_name, ": CUDA needs a contiguous head dim, got stride ", x.stride(2));
    SEQMIX_CHECK(out.stride(2) == 1, out_name, ": CUDA needs a contiguous head dim, got stride ", out.stride(2));
    validate::expect(cos, "cos").contiguous().dtype_in({DType::f32, x.dtype});
    validate::expect(sin, "sin").contiguous().same_dtype(cos, "cos");
    SEQMIX_CHECK(x.numel() == 0 || x.data != out.data, out_name, ": CUDA RoPE does not run in place; pass a separate output");
  }
}

std::vector<int64_t> rope_positions(const TensorView* position_ids, const TensorView& cos) {
  if (!position_ids) return {};
  std::vector<int64_t> positions = access::load_int(*position_ids);
  check_index_range(positions, 1, "position_ids", [&](int64_t) { return cos.size(0); });
  return positions;
}

// Rotates on the device of x: the CUDA kernel or the CPU reference.
void rope_apply(bool inverse, const TensorView& x, const TensorView& cos, const TensorView& sin,
                const TensorView* position_ids, const TensorView& out, Stream stream) {
  if (x.device.type == DeviceType::cuda) {
#ifdef SEQMIX_WITH_CUDA
    cuda::interleaved_rope(x, cos, sin, position_ids, out, inverse, static_cast<cudaStream_t>(stream));
    return;
#endif
  }
  cpu::dsa_rope_apply(inverse, x, cos, sin, rope_positions(position_ids, cos), out);
}

// ----- compressor --------------------------------------------------------------------------

struct CompressorLayout {
  std::vector<int64_t> cu;  // token offsets of the sequences
  std::vector<int64_t> out_shape;
};

CompressorLayout check_compressor(const char* op, const DsaCompressorParams& p, const TensorView& kv,
                                  const TensorView& gate, const TensorView& position_bias,
                                  const TensorView& norm_weight, const TensorView& cos, const TensorView& sin,
                                  const TensorView* cu_seqlens, std::initializer_list<Named> extra) {
  validate::positive(p.compress_ratio, "compress_ratio");
  SEQMIX_CHECK(p.rms_norm_eps >= 0.0 && std::isfinite(p.rms_norm_eps), "rms_norm_eps must be finite and >= 0, got ",
               p.rms_norm_eps);
  validate::expect(norm_weight, "norm_weight").rank(1, "[D]").floating().non_null();
  const int64_t D = norm_weight.size(0), width = (p.overlap ? 2 : 1) * D;
  const char* layout = p.overlap ? "[*, 2 * D] (overlap)" : "[*, D]";
  if (kv.rank == 3) {
    SEQMIX_CHECK(cu_seqlens == nullptr, "cu_seqlens: must be nullptr with dense kv [B, T, C*D], got a tensor");
    validate::expect(kv, "kv").shape({kAnySize, kAnySize, width}, layout).floating().non_null();
  } else {
    validate::expect(kv, "kv").shape({kAnySize, width}, layout).floating().non_null();
  }
  validate::expect(gate, "gate").shape(kv.shape(), layout).same_dtype(kv, "kv").non_null();
  validate::expect(position_bias, "position_bias")
      .shape({p.compress_ratio, width}, "[compress_ratio, C*D]")
      .floating()
      .non_null();
  check_rope_tables(cos, sin);
  SEQMIX_CHECK(2 * cos.size(1) <= D, "cos: rope_dim = 2 * cos.size(1) = ", 2 * cos.size(1), " must be <= head_dim ", D);
  const Device device = validate::same_device({{&kv, "kv"},
                                       {&gate, "gate"},
                                       {&position_bias, "position_bias"},
                                       {&norm_weight, "norm_weight"},
                                       {&cos, "cos"},
                                       {&sin, "sin"}});
  for (const Named& t : extra) validate::expect(*t.tensor, t.name).device(device);
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented(op);

  CompressorLayout layout_out;
  if (kv.rank == 3) {
    const int64_t B = kv.size(0), T = kv.size(1);
    for (int64_t b = 0; b <= B; ++b) layout_out.cu.push_back(b * T);
    layout_out.out_shape = {B, T / p.compress_ratio, D};
  } else {
    layout_out.cu = sequences(cu_seqlens, kv.size(0));
    layout_out.out_shape = {cpu::dsa_compressed_offsets(layout_out.cu, p.compress_ratio).back(), D};
  }
  const int64_t windows = max_length(layout_out.cu) / p.compress_ratio;
  SEQMIX_CHECK(windows == 0 || cos.size(0) > (windows - 1) * p.compress_ratio, "cos: needs rows for positions up to ",
               (windows - 1) * p.compress_ratio, " (last window start), got ", cos.size(0), " rows");
  return layout_out;
}

// ----- indexer -----------------------------------------------------------------------------

struct IndexerSetup {
  std::vector<int64_t> cu, cu_compressed;
  double softmax_scale, weights_scaling;
};

IndexerSetup check_indexer(const char* op, const DsaIndexerParams& p, const TensorView& q, const TensorView& k,
                           const TensorView& weights, const TensorView* cu_seqlens, const TensorView& indices,
                           std::initializer_list<Named> extra) {
  validate::positive(p.compress_ratio, "compress_ratio");
  finite_scale(p.softmax_scale, "softmax_scale");
  finite_scale(p.weights_scaling, "weights_scaling");
  validate::expect(q, "q").rank(3, "[T, H, D]").floating().non_null();
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2);
  validate::expect(k, "k").shape({kAnySize, D}, "[T_c, D]").floating().non_null();
  validate::expect(weights, "weights").shape({T, H}, "[T, H]").floating().non_null();
  validate::expect(indices, "indices").rank(2, "[T, index_topk]").integer().non_null();
  SEQMIX_CHECK(indices.size(0) == T, "indices: expected shape [", T, ", index_topk], got ", indices.shape_string());
  SEQMIX_CHECK(indices.size(1) >= 1, "indices: index_topk = indices.size(1) must be >= 1, got ", indices.size(1));
  const Device device = validate::same_device({{&q, "q"}, {&k, "k"}, {&weights, "weights"}, {&indices, "indices"}});
  for (const Named& t : extra) {
    if (t.tensor) validate::expect(*t.tensor, t.name).device(device);
  }
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented(op);
  IndexerSetup s;
  s.cu = sequences(cu_seqlens, T);
  s.cu_compressed = cpu::dsa_compressed_offsets(s.cu, p.compress_ratio);
  SEQMIX_CHECK(k.size(0) == s.cu_compressed.back(), "k: expected [T_c = ", s.cu_compressed.back(),
               " = sum of n_b / compress_ratio, D], got ", k.shape_string());
  s.softmax_scale = p.softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(D)));
  s.weights_scaling = p.weights_scaling.value_or(1.0 / std::sqrt(static_cast<double>(H)));
  return s;
}

// ----- sparse attention --------------------------------------------------------------------

double check_sparse_attention(const char* op, const DsaSparseAttentionParams& p, const TensorView& q,
                              const TensorView& kv, const TensorView& indices, const TensorView* sinks,
                              std::initializer_list<Named> extra) {
  finite_scale(p.softmax_scale, "softmax_scale");
  validate::expect(q, "q").rank(3, "[T, H, D]").floating().non_null();
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2);
  validate::expect(kv, "kv").shape({kAnySize, kAnySize, D}, "[N, H_kv, D]").same_dtype(q, "q").non_null();
  const int64_t Hkv = kv.size(1);
  SEQMIX_CHECK(Hkv >= 1 && H % Hkv == 0, "kv: H_kv = ", Hkv, " must divide the query heads H = ", H);
  validate::expect(indices, "indices").shape({T, Hkv, kAnySize}, "[T, H_kv, W]").integer().non_null();
  if (sinks) validate::expect(*sinks, "sinks").shape({H}, "[H]").floating().non_null();
  const Device device = validate::same_device({{&q, "q"}, {&kv, "kv"}, {&indices, "indices"}, {sinks, "sinks"}});
  for (const Named& t : extra) {
    if (t.tensor) validate::expect(*t.tensor, t.name).device(device);
  }
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented(op);
  check_index_range(access::load_int(indices), 1, "indices", [&](int64_t) { return kv.size(0); });
  return p.softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(D)));
}

}  // namespace

void dsa_rope_cos_sin(const DsaRopeTableParams& params, const TensorView& position_ids, const TensorView& cos,
                      const TensorView& sin) {
  SEQMIX_CHECK(params.rope_dim > 0 && params.rope_dim % 2 == 0, "rope_dim must be even and > 0, got ", params.rope_dim);
  validate::positive(params.rope_theta, "rope_theta");
  SEQMIX_CHECK(std::isfinite(params.attention_scaling), "attention_scaling must be finite, got ",
               params.attention_scaling);
  if (params.yarn) {
    validate::positive(params.yarn_factor, "yarn_factor");
    validate::positive(params.original_max_position_embeddings, "original_max_position_embeddings");
    validate::positive(params.beta_fast, "beta_fast");
    validate::positive(params.beta_slow, "beta_slow");
  }
  validate::expect(position_ids, "position_ids").rank(1, "[P]").integer().non_null();
  const int64_t P = position_ids.size(0);
  validate::expect(cos, "cos").shape({P, params.rope_dim / 2}, "[P, rope_dim / 2]").floating().non_null();
  validate::expect(sin, "sin").shape({P, params.rope_dim / 2}, "[P, rope_dim / 2]").floating().non_null();
  const Device device = validate::same_device({{&position_ids, "position_ids"}, {&cos, "cos"}, {&sin, "sin"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("dsa_rope_cos_sin");
  cpu::dsa_rope_cos_sin(params, position_ids, cos, sin);
}

void dsa_rope_fwd(const DsaRopeParams& params, const TensorView& x, const TensorView& cos, const TensorView& sin,
                  const TensorView* position_ids, const TensorView& out, Stream stream) {
  check_rope_apply("dsa_rope_fwd", x, "x", cos, sin, position_ids, out, "out");
  rope_apply(params.inverse, x, cos, sin, position_ids, out, stream);
}

void dsa_rope_bwd(const DsaRopeParams& params, const TensorView& dout, const TensorView& cos, const TensorView& sin,
                  const TensorView* position_ids, const TensorView& dx, Stream stream) {
  check_rope_apply("dsa_rope_bwd", dout, "dout", cos, sin, position_ids, dx, "dx");
  rope_apply(!params.inverse, dout, cos, sin, position_ids, dx, stream);
}

void dsa_compressor_fwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const TensorView* cu_seqlens, const TensorView& out) {
  const CompressorLayout layout = check_compressor("dsa_compressor_fwd", params, kv, gate, position_bias, norm_weight,
                                                   cos, sin, cu_seqlens, {{&out, "out"}});
  validate::expect(out, "out").shape(layout.out_shape, "[B, T / m, D] or [T_c, D]").same_dtype(kv, "kv").non_null();
  cpu::dsa_compressor_fwd(params, kv, gate, position_bias, norm_weight, cos, sin, layout.cu, out);
}

void dsa_compressor_bwd(const DsaCompressorParams& params, const TensorView& kv, const TensorView& gate,
                        const TensorView& position_bias, const TensorView& norm_weight, const TensorView& cos,
                        const TensorView& sin, const TensorView* cu_seqlens, const TensorView& dout,
                        const TensorView& dkv, const TensorView& dgate, const TensorView& dposition_bias,
                        const TensorView& dnorm_weight) {
  const CompressorLayout layout =
      check_compressor("dsa_compressor_bwd", params, kv, gate, position_bias, norm_weight, cos, sin, cu_seqlens,
                       {{&dout, "dout"},
                        {&dkv, "dkv"},
                        {&dgate, "dgate"},
                        {&dposition_bias, "dposition_bias"},
                        {&dnorm_weight, "dnorm_weight"}});
  validate::expect(dout, "dout").shape(layout.out_shape, "[B, T / m, D] or [T_c, D]").floating().non_null();
  validate::expect(dkv, "dkv").shape(kv.shape(), "like kv").same_dtype(kv, "kv").non_null();
  validate::expect(dgate, "dgate").shape(gate.shape(), "like gate").same_dtype(gate, "gate").non_null();
  validate::expect(dposition_bias, "dposition_bias")
      .shape(position_bias.shape(), "like position_bias")
      .same_dtype(position_bias, "position_bias")
      .non_null();
  validate::expect(dnorm_weight, "dnorm_weight")
      .shape(norm_weight.shape(), "like norm_weight")
      .same_dtype(norm_weight, "norm_weight")
      .non_null();
  cpu::dsa_compressor_bwd(params, kv, gate, position_bias, norm_weight, cos, sin, layout.cu, dout, dkv, dgate,
                          dposition_bias, dnorm_weight);
}

void dsa_compressed_cu_seqlens(const TensorView& cu_seqlens, int64_t compress_ratio, const TensorView& cu_compressed) {
  validate::positive(compress_ratio, "compress_ratio");
  const std::vector<int64_t> cu = validate::cu_seqlens(cu_seqlens, "cu_seqlens", -1);
  validate::expect(cu_compressed, "cu_compressed")
      .shape({static_cast<int64_t>(cu.size())}, "[N + 1]")
      .integer()
      .device(Device::cpu())
      .non_null();
  access::store_int(cpu::dsa_compressed_offsets(cu, compress_ratio), cu_compressed);
}

void dsa_indexer_fwd(const DsaIndexerParams& params, const TensorView& q, const TensorView& k,
                     const TensorView& weights, const TensorView* cu_seqlens, const TensorView& indices,
                     const TensorView* scores) {
  const IndexerSetup s =
      check_indexer("dsa_indexer_fwd", params, q, k, weights, cu_seqlens, indices, {{scores, "scores"}});
  if (scores) {
    validate::expect(*scores, "scores").shape(indices.shape(), "[T, index_topk]").same_dtype(q, "q").non_null();
  }
  cpu::dsa_indexer_fwd(params.compress_ratio, s.softmax_scale, s.weights_scaling, q, k, weights, s.cu, s.cu_compressed,
                       indices, scores);
}

void dsa_indexer_bwd(const DsaIndexerParams& params, const TensorView& q, const TensorView& k,
                     const TensorView& weights, const TensorView* cu_seqlens, const TensorView& indices,
                     const TensorView& dscores, const TensorView& dq, const TensorView& dk,
                     const TensorView& dweights) {
  const IndexerSetup s = check_indexer("dsa_indexer_bwd", params, q, k, weights, cu_seqlens, indices,
                                       {{&dscores, "dscores"}, {&dq, "dq"}, {&dk, "dk"}, {&dweights, "dweights"}});
  validate::expect(dscores, "dscores").shape(indices.shape(), "[T, index_topk]").floating().non_null();
  validate::expect(dq, "dq").shape(q.shape(), "like q").same_dtype(q, "q").non_null();
  validate::expect(dk, "dk").shape(k.shape(), "like k").same_dtype(k, "k").non_null();
  validate::expect(dweights, "dweights")
      .shape(weights.shape(), "like weights")
      .same_dtype(weights, "weights")
      .non_null();
  // Row t may only name entries of its own sequence's compressed keys.
  std::vector<int64_t> count_of_row(static_cast<size_t>(q.size(0)));
  for (size_t b = 0; b + 1 < s.cu.size(); ++b) {
    for (int64_t t = s.cu[b]; t < s.cu[b + 1]; ++t)
      count_of_row[static_cast<size_t>(t)] = s.cu_compressed[b + 1] - s.cu_compressed[b];
  }
  check_index_range(access::load_int(indices), indices.size(1), "indices",
                    [&](int64_t row) { return count_of_row[static_cast<size_t>(row)]; });
  cpu::dsa_indexer_bwd(s.softmax_scale, s.weights_scaling, q, k, weights, s.cu, s.cu_compressed, indices, dscores, dq,
                       dk, dweights);
}

void dsa_sparse_attention_fwd(const DsaSparseAttentionParams& params, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& out) {
  const double scale =
      check_sparse_attention("dsa_sparse_attention_fwd", params, q, kv, indices, sinks, {{&out, "out"}});
  validate::expect(out, "out").shape(q.shape(), "[T, H, D]").same_dtype(q, "q").non_null();
  cpu::dsa_sparse_attention_fwd(scale, q, kv, indices, sinks, out);
}

void dsa_sparse_attention_bwd(const DsaSparseAttentionParams& params, const TensorView& q, const TensorView& kv,
                              const TensorView& indices, const TensorView* sinks, const TensorView& dout,
                              const TensorView& dq, const TensorView& dkv, const TensorView* dsinks) {
  const double scale = check_sparse_attention("dsa_sparse_attention_bwd", params, q, kv, indices, sinks,
                                              {{&dout, "dout"}, {&dq, "dq"}, {&dkv, "dkv"}, {dsinks, "dsinks"}});
  validate::expect(dout, "dout").shape(q.shape(), "[T, H, D]").floating().non_null();
  validate::expect(dq, "dq").shape(q.shape(), "like q").same_dtype(q, "q").non_null();
  validate::expect(dkv, "dkv").shape(kv.shape(), "like kv").same_dtype(kv, "kv").non_null();
  if (dsinks) {
    SEQMIX_CHECK(sinks != nullptr, "dsinks: given but sinks is nullptr (no sink to differentiate)");
    validate::expect(*dsinks, "dsinks").shape(sinks->shape(), "[H]").same_dtype(*sinks, "sinks").non_null();
  }
  cpu::dsa_sparse_attention_bwd(scale, q, kv, indices, sinks, dout, dq, dkv, dsinks);
}

void dsa_sparse_indices(const DsaIndexListParams& params, const TensorView* cu_seqlens, const TensorView* topk_indices,
                        const TensorView& indices) {
  validate::non_negative(params.sliding_window, "sliding_window");
  validate::non_negative(params.compress_ratio, "compress_ratio");
  SEQMIX_CHECK(indices.rank == 2 || indices.rank == 3, "indices: expected rank 2 [T, W] or 3 [T, 1, W], got rank ",
               indices.rank, " ", indices.shape_string());
  if (indices.rank == 3) validate::expect(indices, "indices").shape({kAnySize, 1, kAnySize}, "[T, 1, W]");
  validate::expect(indices, "indices").integer().non_null();
  const int64_t T = indices.size(0);
  if (topk_indices) {
    SEQMIX_CHECK(params.compress_ratio > 0, "topk_indices: given but compress_ratio is 0 (a sliding-only layer)");
    validate::expect(*topk_indices, "topk_indices").shape({T, kAnySize}, "[T, K]").integer().non_null();
  }
  const Device device = validate::same_device({{&indices, "indices"}, {topk_indices, "topk_indices"}});
  if (device.type == DeviceType::cuda) dispatch::cuda_not_implemented("dsa_sparse_indices");
  const std::vector<int64_t> cu = sequences(cu_seqlens, T);
  const int64_t longest = max_length(cu);
  const int64_t K = topk_indices ? topk_indices->size(1) : 0;
  const int64_t compressed = params.compress_ratio == 0 ? 0 : (topk_indices ? K : longest / params.compress_ratio);
  const int64_t needed = std::min(params.sliding_window, longest) + compressed;
  SEQMIX_CHECK(indices.size(indices.rank - 1) >= needed, "indices: width W must be >= min(sliding_window, longest ",
               "sequence) + compressed entries = ", needed, ", got ", indices.size(indices.rank - 1));
  std::vector<int64_t> topk;
  if (topk_indices) {
    topk = access::load_int(*topk_indices);
    std::vector<int64_t> count_of_row(static_cast<size_t>(T));
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t) {
        count_of_row[static_cast<size_t>(t)] = (cu[b + 1] - cu[b]) / params.compress_ratio;
      }
    }
    check_index_range(topk, K, "topk_indices", [&](int64_t row) { return count_of_row[static_cast<size_t>(row)]; });
  }
  cpu::dsa_sparse_indices(params, cu, topk_indices ? &topk : nullptr, K, indices);
}

}  // namespace seqmix
