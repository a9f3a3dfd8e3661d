// Public entry points of the HSTU attention truncation: validation, then the CPU reference or
// the CUDA kernels (which take their values on the device, without a host sync).
#include <initializer_list>
#include <vector>

#include "common/access.h"
#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/hstu/truncation.h"
#include "seqmix/hstu_truncation.h"
#ifdef SEQMIX_WITH_CUDA
#include "cuda/hstu/truncation.h"
#endif

namespace seqmix {
namespace {

void expect_index_vector(const TensorView& t, const char* name, int64_t size, const char* layout) {
  validate::expect(t, name).shape({size}, layout).integer().non_null();
}

// Structural checks of the plan's inputs; returns B.
int64_t check_plan_inputs(const TensorView& seq_offsets, const TensorView* num_targets,
                          const HstuTruncationParams& params) {
  validate::non_negative(params.truncate_tail_len, "truncate_tail_len");
  validate::non_negative(params.contextual_seq_len, "contextual_seq_len");
  validate::expect(seq_offsets, "seq_offsets").rank(1, "[B + 1]").integer().non_null();
  SEQMIX_CHECK(seq_offsets.size(0) >= 1, "seq_offsets: expected at least one entry [B + 1], got ",
               seq_offsets.shape_string());
  const int64_t batch = seq_offsets.size(0) - 1;
  if (num_targets) expect_index_vector(*num_targets, "num_targets", batch, "[B]");
  return batch;
}

// The values of a CPU or CUDA index vector on the host (a CUDA one is copied: a sync).
std::vector<int64_t> host_values(const TensorView& t, const char* name, Stream stream) {
  if (t.device.type != DeviceType::cuda) return access::load_int(t);
  if (!dispatch::built_with_cuda()) dispatch::cuda_not_implemented("hstu_truncation_sizes");
  validate::expect(t, name).contiguous();
#ifdef SEQMIX_WITH_CUDA
  return cuda::index_vector_to_host(t, static_cast<cudaStream_t>(stream));
#else
  (void)stream;
  return {};
#endif
}

// Host values of the inputs, checked against the peer's layout assumptions.
cpu::HstuTruncationPlan plan_on_host(const TensorView& seq_offsets, const TensorView* num_targets,
                                     const HstuTruncationParams& params, Stream stream = nullptr) {
  std::vector<int64_t> offsets = host_values(seq_offsets, "seq_offsets", stream);
  const TensorView offsets_view =
      TensorView::contiguous(offsets.data(), DType::i64, {static_cast<int64_t>(offsets.size())}, Device::cpu());
  offsets = validate::cu_seqlens(offsets_view, "seq_offsets", -1);
  std::vector<int64_t> targets;
  if (num_targets) {
    targets = host_values(*num_targets, "num_targets", stream);
    for (size_t b = 0; b < targets.size(); ++b) {
      SEQMIX_CHECK(targets[b] >= 0, "num_targets[", b, "] must be >= 0, got ", targets[b]);
    }
  }
  // The peer splits the contextual prefix off every sequence before truncating; a sequence
  // shorter than the prefix has no such split (its apply step would read past the sequence).
  for (size_t b = 0; b + 1 < offsets.size(); ++b) {
    const int64_t length = offsets[b + 1] - offsets[b];
    SEQMIX_CHECK(length >= params.contextual_seq_len, "seq_offsets: sequence ", b, " has length ", length,
                 ", shorter than contextual_seq_len = ", params.contextual_seq_len);
  }
  return cpu::hstu_truncation_plan(offsets, targets, params);
}

}  // namespace

HstuTruncationSizes hstu_truncation_sizes(const TensorView& seq_offsets, const TensorView* num_targets,
                                          const HstuTruncationParams& params, Stream stream) {
  check_plan_inputs(seq_offsets, num_targets, params);
  validate::same_device({{&seq_offsets, "seq_offsets"}, {num_targets, "num_targets"}});
  return plan_on_host(seq_offsets, num_targets, params, stream).sizes;
}

void hstu_truncation_plan(const TensorView& seq_offsets, const TensorView* num_targets,
                          const HstuTruncationParams& params, const TensorView& new_lengths,
                          const TensorView& new_seq_offsets, const TensorView& offsets_head,
                          const TensorView& offsets_tail, const TensorView& gather_index,
                          const TensorView* offsets_prefix, const TensorView* offsets_rest, Stream stream) {
  (void)stream;  // used by the CUDA path only
  const int64_t batch = check_plan_inputs(seq_offsets, num_targets, params);
  expect_index_vector(new_lengths, "new_lengths", batch, "[B]");
  expect_index_vector(new_seq_offsets, "new_seq_offsets", batch + 1, "[B + 1]");
  expect_index_vector(offsets_head, "offsets_head", batch + 1, "[B + 1]");
  expect_index_vector(offsets_tail, "offsets_tail", batch + 1, "[B + 1]");
  validate::expect(gather_index, "gather_index").rank(1, "[new_total]").dtype(DType::i64).non_null();
  if (offsets_prefix) expect_index_vector(*offsets_prefix, "offsets_prefix", batch + 1, "[B + 1]");
  if (offsets_rest) expect_index_vector(*offsets_rest, "offsets_rest", batch + 1, "[B + 1]");
  validate::same_device({{&seq_offsets, "seq_offsets"},
                     {num_targets, "num_targets"},
                     {&new_lengths, "new_lengths"},
                     {&new_seq_offsets, "new_seq_offsets"},
                     {&offsets_head, "offsets_head"},
                     {&offsets_tail, "offsets_tail"},
                     {&gather_index, "gather_index"},
                     {offsets_prefix, "offsets_prefix"},
                     {offsets_rest, "offsets_rest"}});
  if (seq_offsets.device.type == DeviceType::cuda) {
    if (!dispatch::built_with_cuda()) dispatch::cuda_not_implemented("hstu_truncation_plan");
    validate::expect(gather_index, "gather_index").contiguous();
#ifdef SEQMIX_WITH_CUDA
    const cuda::TruncationPlanViews views{&seq_offsets,  num_targets,   &new_lengths,   &new_seq_offsets, &offsets_head,
                                          &offsets_tail, &gather_index, offsets_prefix, offsets_rest};
    cuda::hstu_truncation_plan(views, params, static_cast<cudaStream_t>(stream));
#endif
    return;
  }

  const cpu::HstuTruncationPlan plan = plan_on_host(seq_offsets, num_targets, params);
  SEQMIX_CHECK(gather_index.size(0) >= plan.sizes.new_total, "gather_index: expected at least new_total = ",
               plan.sizes.new_total, " rows (see hstu_truncation_sizes), got ", gather_index.shape_string());
  access::store_int(plan.new_lengths, new_lengths);
  access::store_int(plan.new_seq_offsets, new_seq_offsets);
  access::store_int(plan.offsets_head, offsets_head);
  access::store_int(plan.offsets_tail, offsets_tail);
  std::vector<int64_t> padded_index = plan.gather_index;
  padded_index.resize(static_cast<size_t>(gather_index.size(0)), -1);
  access::store_int(padded_index, gather_index);
  if (offsets_prefix) access::store_int(plan.offsets_prefix, *offsets_prefix);
  if (offsets_rest) access::store_int(plan.offsets_rest, *offsets_rest);
}

namespace {

// Checks a gather between `rows` [L, ...] and `gathered` [L', ...]. On the CPU returns the
// index, checked to lie in [-1, L); on CUDA returns nothing (the values stay on the device).
std::vector<int64_t> check_gather(const TensorView& rows, const char* rows_name, const TensorView& gathered,
                                  const char* gathered_name, const TensorView& gather_index, const char* op) {
  validate::expect(rows, rows_name).floating().non_null();
  SEQMIX_CHECK(rows.rank >= 1, rows_name, ": expected rank >= 1 [L, ...], got rank 0");
  validate::expect(gather_index, "gather_index").rank(1, "[L']").integer().non_null();
  std::vector<int64_t> expected = rows.shape();
  expected[0] = gather_index.size(0);
  validate::expect(gathered, gathered_name).shape(expected, "[L', ...]").same_dtype(rows, rows_name).non_null();
  validate::same_device({{&rows, rows_name}, {&gather_index, "gather_index"}, {&gathered, gathered_name}});
  if (rows.device.type == DeviceType::cuda) {
    if (!dispatch::built_with_cuda()) dispatch::cuda_not_implemented(op);
    validate::expect(rows, rows_name).contiguous();
    validate::expect(gathered, gathered_name).contiguous();
    validate::expect(gather_index, "gather_index").dtype(DType::i64).contiguous();
    return {};
  }
  std::vector<int64_t> index = access::load_int(gather_index);
  for (size_t i = 0; i < index.size(); ++i) {
    SEQMIX_CHECK(index[i] >= -1 && index[i] < rows.size(0), "gather_index[", i, "] must be in [-1, ",
                 rows.size(0), ") (the rows of ", rows_name, "; -1 = padding), got ", index[i]);
  }
  return index;
}

}  // namespace

void jagged_gather_rows_fwd(const TensorView& x, const TensorView& gather_index, const TensorView& y, Stream stream) {
  const std::vector<int64_t> index = check_gather(x, "x", y, "y", gather_index, "jagged_gather_rows_fwd");
#ifdef SEQMIX_WITH_CUDA
  if (x.device.type == DeviceType::cuda) return cuda::jagged_gather_rows_fwd(x, gather_index, y, static_cast<cudaStream_t>(stream));
#endif
  (void)stream;
  cpu::jagged_gather_rows_fwd(x, index, y);
}

void jagged_gather_rows_bwd(const TensorView& dy, const TensorView& gather_index, const TensorView& dx,
                            Stream stream) {
  const std::vector<int64_t> index = check_gather(dx, "dx", dy, "dy", gather_index, "jagged_gather_rows_bwd");
#ifdef SEQMIX_WITH_CUDA
  if (dx.device.type == DeviceType::cuda) {
    validate::expect(dx, "dx").dtype_in({DType::f32, DType::f64, DType::f16, DType::bf16});
    return cuda::jagged_gather_rows_bwd(dy, gather_index, dx, static_cast<cudaStream_t>(stream));
  }
#endif
  (void)stream;
  cpu::jagged_gather_rows_bwd(dy, index, dx);
}

}  // namespace seqmix
