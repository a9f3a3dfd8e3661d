// Attention truncation on the GPU.
//
// Plan: one block scans the B sequences in tiles of kPlanThreads (a block-wide inclusive scan
// per tile, carried across tiles), so the offsets never leave the device. The gather index is
// then filled by one thread per output row, which finds its sequence by binary search over
// new_seq_offsets. Nothing here syncs with the host; the caller sizes gather_index by a bound
// it already knows (the input row count L is always enough) and rows past new_seq_offsets[B]
// get -1, which the gather treats as padding.
//
// Values cannot be checked without a sync, so the kernels clamp: a decreasing offset gives a
// length of 0, a sequence shorter than the contextual prefix or its targets drops nothing
// (the peer's clamp), negative targets count as 0. No index can leave [s_b, e_b).
// hstu_truncation_sizes (which syncs) validates the values on the host.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common/cuda_check.h"
#include "cuda/hstu/truncation.h"

namespace seqmix::cuda {
namespace {

constexpr int kPlanThreads = 1024;
constexpr int kGatherThreads = 256;

struct IndexRef {
  void* data = nullptr;
  bool is64 = true;
  int64_t stride = 1;
  __device__ int64_t get(int64_t i) const {
    return is64 ? static_cast<const int64_t*>(data)[i * stride] : static_cast<const int32_t*>(data)[i * stride];
  }
  __device__ void set(int64_t i, int64_t v) const {
    if (is64) static_cast<int64_t*>(data)[i * stride] = v;
    else static_cast<int32_t*>(data)[i * stride] = static_cast<int32_t>(v);
  }
};

IndexRef index_ref(const TensorView* t) {
  IndexRef r;
  if (!t) return r;
  r.data = t->data;
  r.is64 = t->dtype == DType::i64;
  r.stride = t->rank > 0 ? t->stride(0) : 1;
  return r;
}

struct PlanArgs {
  IndexRef seq_offsets, num_targets, new_lengths, new_seq_offsets, offsets_head, offsets_tail, offsets_prefix,
      offsets_rest;
  bool has_targets, has_prefix, has_rest;
  int64_t batch, context, tail_len;
};

// Block-wide inclusive scan of three int64 values (Hillis-Steele in shared memory; B is small
// next to the row counts, so the plan is never the bottleneck).
__global__ void truncation_plan_kernel(PlanArgs a) {
  __shared__ int64_t scan_len[kPlanThreads], scan_drop[kPlanThreads], scan_tail[kPlanThreads];
  __shared__ int64_t carry_len, carry_drop, carry_tail;
  const int tid = threadIdx.x;
  if (tid == 0) {
    carry_len = carry_drop = carry_tail = 0;
    a.new_seq_offsets.set(0, 0);
    a.offsets_head.set(0, 0);
    a.offsets_tail.set(0, 0);
    if (a.has_prefix) a.offsets_prefix.set(0, 0);
    if (a.has_rest) a.offsets_rest.set(0, a.seq_offsets.get(0));
  }
  __syncthreads();
  for (int64_t base = 0; base < a.batch; base += kPlanThreads) {
    const int64_t b = base + tid;
    int64_t new_length = 0, drop = 0;
    if (b < a.batch) {
      const int64_t start = a.seq_offsets.get(b);
      const int64_t length = max(a.seq_offsets.get(b + 1) - start, int64_t{0});
      const int64_t targets = a.has_targets ? max(a.num_targets.get(b), int64_t{0}) : 0;
      const int64_t history = length - a.context - targets;
      drop = max(history - a.tail_len, int64_t{0});
      new_length = length - drop;
      a.new_lengths.set(b, new_length);
      if (a.has_prefix) a.offsets_prefix.set(b + 1, (b + 1) * a.context);
      if (a.has_rest) a.offsets_rest.set(b + 1, a.seq_offsets.get(b + 1) - (b + 1) * a.context);
    }
    scan_len[tid] = new_length;
    scan_drop[tid] = drop;
    scan_tail[tid] = b < a.batch ? new_length - a.context : 0;
    __syncthreads();
    for (int offset = 1; offset < kPlanThreads; offset *= 2) {
      int64_t l = 0, d = 0, t = 0;
      if (tid >= offset) {
        l = scan_len[tid - offset];
        d = scan_drop[tid - offset];
        t = scan_tail[tid - offset];
      }
      __syncthreads();
      scan_len[tid] += l;
      scan_drop[tid] += d;
      scan_tail[tid] += t;
      __syncthreads();
    }
    if (b < a.batch) {
      a.new_seq_offsets.set(b + 1, carry_len + scan_len[tid]);
      a.offsets_head.set(b + 1, carry_drop + scan_drop[tid]);
      a.offsets_tail.set(b + 1, carry_tail + scan_tail[tid]);
    }
    __syncthreads();
    if (tid == kPlanThreads - 1) {
      carry_len += scan_len[tid];
      carry_drop += scan_drop[tid];
      carry_tail += scan_tail[tid];
    }
    __syncthreads();
  }
}

__global__ void gather_index_kernel(IndexRef seq_offsets, IndexRef new_seq_offsets, int64_t batch, int64_t context,
                                    int64_t* gather_index, int64_t capacity) {
  const int64_t total = batch > 0 ? new_seq_offsets.get(batch) : 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < capacity; i += int64_t(gridDim.x) * blockDim.x) {
    if (i >= total) {
      gather_index[i] = -1;
      continue;
    }
    // Last b with new_seq_offsets[b] <= i (empty sequences share offsets; take the last).
    int64_t lo = 0, hi = batch - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (new_seq_offsets.get(mid) <= i) lo = mid;
      else hi = mid - 1;
    }
    const int64_t b = lo;
    const int64_t r = i - new_seq_offsets.get(b);
    const int64_t start = seq_offsets.get(b);
    const int64_t end = max(seq_offsets.get(b + 1), start);
    const int64_t new_length = new_seq_offsets.get(b + 1) - new_seq_offsets.get(b);
    // Kept rows: the prefix [start, start + C) then the last (new_length - C) rows. With
    // new_length <= C (nothing dropped) this is simply start + r.
    const int64_t kept_prefix = min(context, new_length);
    gather_index[i] = r < kept_prefix ? start + r : end - (new_length - r);
  }
}

// All bits set is a NaN in every floating dtype (f64, f32, f16, bf16): an index outside
// [-1, L) cannot be reported without a sync, so its row is poisoned rather than read.
template <class Word>
__device__ inline Word all_ones() {
  Word w;
  unsigned char* bytes = reinterpret_cast<unsigned char*>(&w);
  for (size_t i = 0; i < sizeof(Word); ++i) bytes[i] = 0xFF;
  return w;
}

template <class Word>
__device__ inline Word zero_word() {
  Word w;
  unsigned char* bytes = reinterpret_cast<unsigned char*>(&w);
  for (size_t i = 0; i < sizeof(Word); ++i) bytes[i] = 0;
  return w;
}

template <class Word>
__global__ void gather_rows_kernel(const Word* x, const int64_t* index, Word* y, int64_t rows, int64_t width,
                                   int64_t source_rows) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / width;
    const int64_t src = index[row];
    if (src >= 0 && src < source_rows) y[i] = x[src * width + i % width];
    else y[i] = src == -1 ? zero_word<Word>() : all_ones<Word>();
  }
}

__device__ inline void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ inline void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ inline void atomic_add(__half* p, __half v) { atomicAdd(p, v); }
__device__ inline void atomic_add(__nv_bfloat16* p, __nv_bfloat16 v) { atomicAdd(p, v); }

template <class T>
__global__ void scatter_add_rows_kernel(const T* dy, const int64_t* index, T* dx, int64_t rows, int64_t width,
                                        int64_t target_rows) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t dst = index[i / width];
    if (dst >= 0 && dst < target_rows) atomic_add(dx + dst * width + i % width, dy[i]);
  }
}

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kGatherThreads - 1) / kGatherThreads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535LL * 8 ? 65535LL * 8 : blocks));
}

}  // namespace

std::vector<int64_t> index_vector_to_host(const TensorView& t, cudaStream_t stream) {
  const int64_t n = t.numel();
  std::vector<int64_t> values(static_cast<size_t>(n));
  if (n == 0) return values;
  if (t.dtype == DType::i64) {
    SEQMIX_CUDA_CHECK(cudaMemcpyAsync(values.data(), t.data, n * sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
  } else {
    std::vector<int32_t> narrow(static_cast<size_t>(n));
    SEQMIX_CUDA_CHECK(cudaMemcpyAsync(narrow.data(), t.data, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
    SEQMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = narrow[static_cast<size_t>(i)];
    return values;
  }
  SEQMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
  return values;
}

void hstu_truncation_plan(const TruncationPlanViews& v, const HstuTruncationParams& params, cudaStream_t stream) {
  PlanArgs a;
  a.seq_offsets = index_ref(v.seq_offsets);
  a.num_targets = index_ref(v.num_targets);
  a.new_lengths = index_ref(v.new_lengths);
  a.new_seq_offsets = index_ref(v.new_seq_offsets);
  a.offsets_head = index_ref(v.offsets_head);
  a.offsets_tail = index_ref(v.offsets_tail);
  a.offsets_prefix = index_ref(v.offsets_prefix);
  a.offsets_rest = index_ref(v.offsets_rest);
  a.has_targets = v.num_targets != nullptr;
  a.has_prefix = v.offsets_prefix != nullptr;
  a.has_rest = v.offsets_rest != nullptr;
  a.batch = v.seq_offsets->size(0) - 1;
  a.context = params.contextual_seq_len;
  a.tail_len = params.truncate_tail_len;
  truncation_plan_kernel<<<1, kPlanThreads, 0, stream>>>(a);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  const int64_t capacity = v.gather_index->size(0);
  if (capacity > 0) {
    gather_index_kernel<<<blocks_for(capacity), kGatherThreads, 0, stream>>>(
        a.seq_offsets, a.new_seq_offsets, a.batch, a.context, static_cast<int64_t*>(v.gather_index->data), capacity);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
  }
}

void jagged_gather_rows_fwd(const TensorView& x, const TensorView& gather_index, const TensorView& y,
                            cudaStream_t stream) {
  const int64_t rows = y.size(0);
  if (rows == 0) return;
  const int64_t row_bytes = (y.numel() / rows) * static_cast<int64_t>(dtype_size(y.dtype));
  const int64_t* index = static_cast<const int64_t*>(gather_index.data);
  // Rows are moved as the widest word that divides the row size and both base addresses.
  auto launch = [&](auto word) {
    using Word = decltype(word);
    const int64_t width = row_bytes / static_cast<int64_t>(sizeof(Word));
    gather_rows_kernel<Word><<<blocks_for(rows * width), kGatherThreads, 0, stream>>>(
        static_cast<const Word*>(x.data), index, static_cast<Word*>(y.data), rows, width, x.size(0));
  };
  const auto aligned = [&](int64_t bytes) {
    return row_bytes % bytes == 0 && reinterpret_cast<uintptr_t>(x.data) % bytes == 0 &&
           reinterpret_cast<uintptr_t>(y.data) % bytes == 0;
  };
  if (aligned(16)) launch(int4{});
  else if (aligned(8)) launch(int64_t{});
  else if (aligned(4)) launch(int32_t{});
  else if (aligned(2)) launch(int16_t{});
  else launch(int8_t{});
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

void jagged_gather_rows_bwd(const TensorView& dy, const TensorView& gather_index, const TensorView& dx,
                            cudaStream_t stream) {
  const int64_t target_rows = dx.size(0);
  const size_t dx_bytes = static_cast<size_t>(dx.numel()) * dtype_size(dx.dtype);
  if (dx_bytes) SEQMIX_CUDA_CHECK(cudaMemsetAsync(dx.data, 0, dx_bytes, stream));
  const int64_t rows = dy.size(0);
  if (rows == 0 || target_rows == 0) return;
  const int64_t width = dy.numel() / rows;
  const int64_t* index = static_cast<const int64_t*>(gather_index.data);
  const int grid = blocks_for(rows * width);
  switch (dx.dtype) {
    case DType::f32:
      scatter_add_rows_kernel<<<grid, kGatherThreads, 0, stream>>>(static_cast<const float*>(dy.data), index,
                                                                  static_cast<float*>(dx.data), rows, width,
                                                                  target_rows);
      break;
    case DType::f64:
      scatter_add_rows_kernel<<<grid, kGatherThreads, 0, stream>>>(static_cast<const double*>(dy.data), index,
                                                                  static_cast<double*>(dx.data), rows, width,
                                                                  target_rows);
      break;
    case DType::f16:
      scatter_add_rows_kernel<<<grid, kGatherThreads, 0, stream>>>(static_cast<const __half*>(dy.data), index,
                                                                  static_cast<__half*>(dx.data), rows, width,
                                                                  target_rows);
      break;
    case DType::bf16:
      scatter_add_rows_kernel<<<grid, kGatherThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(dy.data), index,
                                                                  static_cast<__nv_bfloat16*>(dx.data), rows, width,
                                                                  target_rows);
      break;
    default:
      SEQMIX_CHECK(false, "dx: CUDA jagged_gather_rows_bwd takes f32, f64, f16 or bf16, got ", dtype_name(dx.dtype));
  }
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace seqmix::cuda
