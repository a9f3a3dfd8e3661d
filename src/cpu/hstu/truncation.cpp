#include "cpu/hstu/truncation.h"

#include <algorithm>

#include "common/access.h"
#include "common/parallel.h"

namespace seqmix::cpu {

HstuTruncationPlan hstu_truncation_plan(const std::vector<int64_t>& seq_offsets,
                                        const std::vector<int64_t>& num_targets,
                                        const HstuTruncationParams& params) {
  const int64_t batch = static_cast<int64_t>(seq_offsets.size()) - 1;
  const int64_t context = params.contextual_seq_len;
  HstuTruncationPlan plan;
  plan.new_lengths.resize(static_cast<size_t>(batch));
  plan.new_seq_offsets.assign(static_cast<size_t>(batch + 1), 0);
  plan.offsets_head.assign(static_cast<size_t>(batch + 1), 0);
  plan.offsets_tail.assign(static_cast<size_t>(batch + 1), 0);
  plan.offsets_prefix.assign(static_cast<size_t>(batch + 1), 0);
  plan.offsets_rest.assign(static_cast<size_t>(batch + 1), 0);
  for (int64_t b = 0; b < batch; ++b) {
    const size_t i = static_cast<size_t>(b);
    const int64_t start = seq_offsets[i];
    const int64_t end = seq_offsets[i + 1];
    const int64_t length = end - start;
    const int64_t targets = num_targets.empty() ? 0 : num_targets[i];
    // U_b may be negative (L_b < C + T_b): the peer's clamp(U, max=tail) then drops nothing.
    const int64_t history = length - context - targets;
    const int64_t drop = std::max<int64_t>(history - params.truncate_tail_len, 0);
    const int64_t new_length = length - drop;
    plan.new_lengths[i] = new_length;
    plan.new_seq_offsets[i + 1] = plan.new_seq_offsets[i] + new_length;
    plan.offsets_head[i + 1] = plan.offsets_head[i] + drop;
    plan.offsets_tail[i + 1] = plan.offsets_tail[i] + new_length - context;
    plan.offsets_prefix[i + 1] = (b + 1) * context;
    plan.offsets_rest[i + 1] = end - plan.offsets_prefix[i + 1];
    for (int64_t r = 0; r < context; ++r) plan.gather_index.push_back(start + r);
    for (int64_t r = start + context + drop; r < end; ++r) plan.gather_index.push_back(r);
    plan.sizes.new_max_seq_len = std::max(plan.sizes.new_max_seq_len, new_length);
  }
  plan.sizes.new_total = plan.new_seq_offsets.back();
  plan.sizes.total_dropped = plan.offsets_head.back();
  plan.sizes.total_kept = plan.offsets_tail.back();
  plan.sizes.total_prefix = batch * context;
  plan.sizes.total_rest = context > 0 ? plan.offsets_rest.back() : 0;
  return plan;
}

void jagged_gather_rows_fwd(const TensorView& x, const std::vector<int64_t>& gather_index, const TensorView& y) {
  const std::vector<double> xs = access::load(x);
  const int64_t rows = static_cast<int64_t>(gather_index.size());
  const int64_t width = rows > 0 ? y.numel() / rows : 0;
  std::vector<double> ys(static_cast<size_t>(y.numel()));
  parallel::parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = gather_index[static_cast<size_t>(i)];
      if (row < 0) continue;  // -1: a padding row, left zero
      const double* src = xs.data() + row * width;
      std::copy(src, src + width, ys.data() + i * width);
    }
  });
  access::store(ys, y);
}

void jagged_gather_rows_bwd(const TensorView& dy, const std::vector<int64_t>& gather_index, const TensorView& dx) {
  const std::vector<double> dys = access::load(dy);
  const int64_t rows = static_cast<int64_t>(gather_index.size());
  const int64_t width = dx.size(0) > 0 ? dx.numel() / dx.size(0) : 0;
  std::vector<double> dxs(static_cast<size_t>(dx.numel()), 0.0);
  // An index may repeat in a general gather: threads own disjoint column ranges and walk the
  // rows in order, so the accumulation is race-free and independent of the thread count.
  parallel::parallel_for(width, [&](int64_t col_begin, int64_t col_end) {
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = gather_index[static_cast<size_t>(i)];
      if (row < 0) continue;
      for (int64_t c = col_begin; c < col_end; ++c) dxs[static_cast<size_t>(row * width + c)] += dys[static_cast<size_t>(i * width + c)];
    }
  });
  access::store(dxs, dx);
}

}  // namespace seqmix::cpu
