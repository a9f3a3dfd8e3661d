// Public entry points of the HSTU attention truncation: validation, then CPU reference or a
// CUDA "not implemented" error.
#include <initializer_list>

#include "common/access.h"
#include "common/dispatch.h"
#include "common/validate.h"
#include "cpu/hstu/truncation.h"
#include "seqmix/hstu_truncation.h"

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

// Host values of the inputs, checked against the peer's layout assumptions.
cpu::HstuTruncationPlan plan_on_host(const TensorView& seq_offsets, const TensorView* num_targets,
                                     const HstuTruncationParams& params) {
  const std::vector<int64_t> offsets = validate::cu_seqlens(seq_offsets, "seq_offsets", -1);
  std::vector<int64_t> targets;
  if (num_targets) {
    targets = access::load_int(*num_targets);
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
                                          const HstuTruncationParams& params) {
  check_plan_inputs(seq_offsets, num_targets, params);
  validate::same_device({{&seq_offsets, "seq_offsets"}, {num_targets, "num_targets"}});
  if (seq_offsets.device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hstu_truncation_sizes");
  return plan_on_host(seq_offsets, num_targets, params).sizes;
}

void hstu_truncation_plan(const TensorView& seq_offsets, const TensorView* num_targets,
                          const HstuTruncationParams& params, const TensorView& new_lengths,
                          const TensorView& new_seq_offsets, const TensorView& offsets_head,
                          const TensorView& offsets_tail, const TensorView& gather_index,
                          const TensorView* offsets_prefix, const TensorView* offsets_rest) {
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
  if (seq_offsets.device.type == DeviceType::cuda) dispatch::cuda_not_implemented("hstu_truncation_plan");

  const cpu::HstuTruncationPlan plan = plan_on_host(seq_offsets, num_targets, params);
  SEQMIX_CHECK(gather_index.size(0) == plan.sizes.new_total, "gather_index: expected shape [",
               plan.sizes.new_total, "] [new_total] (see hstu_truncation_sizes), got ", gather_index.shape_string());
  access::store_int(plan.new_lengths, new_lengths);
  access::store_int(plan.new_seq_offsets, new_seq_offsets);
  access::store_int(plan.offsets_head, offsets_head);
  access::store_int(plan.offsets_tail, offsets_tail);
  access::store_int(plan.gather_index, gather_index);
  if (offsets_prefix) access::store_int(plan.offsets_prefix, *offsets_prefix);
  if (offsets_rest) access::store_int(plan.offsets_rest, *offsets_rest);
}

namespace {

// Checks a gather between `rows` [L, ...] and `gathered` [L', ...]; returns the index on the host.
std::vector<int64_t> check_gather(const TensorView& rows, const char* rows_name, const TensorView& gathered,
                                  const char* gathered_name, const TensorView& gather_index, const char* op) {
  validate::expect(rows, rows_name).floating().non_null();
  SEQMIX_CHECK(rows.rank >= 1, rows_name, ": expected rank >= 1 [L, ...], got rank 0");
  validate::expect(gather_index, "gather_index").rank(1, "[L']").integer().non_null();
  std::vector<int64_t> expected = rows.shape();
  expected[0] = gather_index.size(0);
  validate::expect(gathered, gathered_name).shape(expected, "[L', ...]").same_dtype(rows, rows_name).non_null();
  validate::same_device({{&rows, rows_name}, {&gather_index, "gather_index"}, {&gathered, gathered_name}});
  if (rows.device.type == DeviceType::cuda) dispatch::cuda_not_implemented(op);
  std::vector<int64_t> index = access::load_int(gather_index);
  for (size_t i = 0; i < index.size(); ++i) {
    SEQMIX_CHECK(index[i] >= 0 && index[i] < rows.size(0), "gather_index[", i, "] must be in [0, ",
                 rows.size(0), ") (the rows of ", rows_name, "), got ", index[i]);
  }
  return index;
}

}  // namespace

void jagged_gather_rows_fwd(const TensorView& x, const TensorView& gather_index, const TensorView& y) {
  const std::vector<int64_t> index = check_gather(x, "x", y, "y", gather_index, "jagged_gather_rows_fwd");
  cpu::jagged_gather_rows_fwd(x, index, y);
}

void jagged_gather_rows_bwd(const TensorView& dy, const TensorView& gather_index, const TensorView& dx) {
  const std::vector<int64_t> index =
      check_gather(dx, "dx", dy, "dy", gather_index, "jagged_gather_rows_bwd");
  cpu::jagged_gather_rows_bwd(dy, index, dx);
}

}  // namespace seqmix
