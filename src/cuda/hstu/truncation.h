// CUDA attention truncation: the plan on the device (no host sync) and the jagged row gather.
// Arguments are validated structurally by the public entry; values live on the device and are
// not inspected, so the kernels clamp instead of trusting them (see truncation.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "seqmix/hstu_truncation.h"

namespace seqmix::cuda {

struct TruncationPlanViews {
  const TensorView* seq_offsets;  // [B + 1]
  const TensorView* num_targets;  // [B] or nullptr
  const TensorView* new_lengths;  // [B]
  const TensorView* new_seq_offsets;
  const TensorView* offsets_head;
  const TensorView* offsets_tail;
  const TensorView* gather_index;  // [capacity] int64, capacity >= new_total; the rest is -1
  const TensorView* offsets_prefix;  // optional
  const TensorView* offsets_rest;    // optional
};

// Copies a contiguous int32/int64 device vector to the host (syncs `stream`).
std::vector<int64_t> index_vector_to_host(const TensorView& t, cudaStream_t stream);

void hstu_truncation_plan(const TruncationPlanViews& views, const HstuTruncationParams& params, cudaStream_t stream);

// y[i] = x[index[i]], a zero row where index[i] == -1 (padding past new_total).
void jagged_gather_rows_fwd(const TensorView& x, const TensorView& gather_index, const TensorView& y,
                            cudaStream_t stream);
// dx = 0, then dx[index[i]] += dy[i] for index[i] != -1 (atomic adds: exact when the index is
// unique, as a truncation plan's is).
void jagged_gather_rows_bwd(const TensorView& dy, const TensorView& gather_index, const TensorView& dx,
                            cudaStream_t stream);

}  // namespace seqmix::cuda
