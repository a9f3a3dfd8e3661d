// fbgemm HSTU's FP8 quantizers on the GPU, bit-for-bit the CPU reference (src/cpu/hstu/fp8.cpp,
// whose comment lists the roundings). Three stream-ordered passes, no host sync:
//   1. amax per group: each thread folds |x| of 64 tokens x 8 dims of one head; whenever its
//      group changes the warp reduces the lanes of each group and flushes one atomicMax per group
//      on the f32 bits (|x| bits order like the values, NaN above inf, so NaN wins as
//      torch.amax); mode 1 rows (one group per token and head) fold a whole row in one warp and
//      skip the atomics.
//   2. descale = max(amax * fl32(1/448) [rounded to x's dtype in modes 1-transposed, 3, 4, 5], 1e-6),
//      in place over the amax bits.
//   3. x_fp8 = e4m3(x / descale) per element (mode 4 with 16-bit x divides in x's dtype).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/common/cuda_check.h"
#include "cuda/hstu/fp8_quantize.cuh"

namespace seqmix::cuda::hstu_fp8 {
namespace {

constexpr int kThreads = 256;
constexpr int kVector = 8;       // dims per thread
constexpr int kAmaxTokens = 64;  // tokens per thread of the amax pass
constexpr float kDescaleFloor = 1e-6f;

template <class T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half x) {
  return __half2float(x);
}

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

// An f32 value rounded to T (round to nearest even; the identity for f32).
template <class T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// 8 consecutive elements, as 16-byte vectors where the address allows (always for the
// attention's operands; the public quantizer takes any token / head strides).
template <class T>
__device__ __forceinline__ void load8(float (&v)[kVector], const Strided& x, int64_t t, int h, int d0) {
  const T* p = static_cast<const T*>(x.data) + t * x.token_stride + h * x.head_stride + d0;
  if (aligned16(p)) {
    T w[kVector];
    uint4* wv = reinterpret_cast<uint4*>(w);
#pragma unroll
    for (int i = 0; i < static_cast<int>(sizeof(w) / 16); ++i) wv[i] = reinterpret_cast<const uint4*>(p)[i];
#pragma unroll
    for (int e = 0; e < kVector; ++e) v[e] = to_float(w[e]);
    return;
  }
#pragma unroll
  for (int e = 0; e < kVector; ++e) v[e] = to_float(p[e]);
}

// Modes 1 (rows) and 2 divide amax by 448 in f32, the others in x's dtype.
__device__ __forceinline__ bool divides_in_f32(const Scheme& s) {
  return (s.mode == 1 && !s.transposed) || s.mode == 2;
}

template <class T>
__device__ __forceinline__ float descale_of(float amax, bool in_f32) {
  float q = __fmul_rn(amax, 1.0f / kFp8Max);
  if (!in_f32) q = round_to<T>(q);
  return isnan(q) ? q : fmaxf(q, kDescaleFloor);
}

// x / descale and the e4m3 cast; mode 4 with 16-bit x rounds the descale and the quotient to T.
template <class T>
__device__ __forceinline__ uint8_t quantize_value(float x, float descale, int mode) {
  if (mode == 0) return to_e4m3(x);
  if (mode == 4) return to_e4m3(round_to<T>(__fdiv_rn(x, round_to<T>(descale))));
  return to_e4m3(__fdiv_rn(x, descale));
}

template <class T, class Y>
__device__ __forceinline__ void store8(const Strided& y, int64_t t, int h, int d0, const uint8_t (&q)[kVector],
                                       const float (&descale)[kVector]) {
  if constexpr (sizeof(Y) == 1) {
    uint8_t* p = static_cast<uint8_t*>(y.data) + t * y.token_stride + h * y.head_stride + d0;
    if ((reinterpret_cast<uintptr_t>(p) & 7) == 0) {
      uint2 w;
      w.x = q[0] | (q[1] << 8) | (q[2] << 16) | (static_cast<uint32_t>(q[3]) << 24);
      w.y = q[4] | (q[5] << 8) | (q[6] << 16) | (static_cast<uint32_t>(q[7]) << 24);
      *reinterpret_cast<uint2*>(p) = w;
      return;
    }
#pragma unroll
    for (int e = 0; e < kVector; ++e) p[e] = q[e];
  } else {
    Y* p = static_cast<Y*>(y.data) + t * y.token_stride + h * y.head_stride + d0;
#pragma unroll
    for (int e = 0; e < kVector; ++e) p[e] = from_float<Y>(from_e4m3(q[e]) * descale[e]);
  }
}

__global__ void block_offsets_kernel(Jagged j, int block_size, int64_t* out, void* copy, int64_t copy_stride,
                                     bool copy_i64) {
  int64_t total = 0;
  for (int64_t b = 0; b <= j.batch; ++b) {
    if (b > 0) total += (j.at(b) - j.at(b - 1) + block_size - 1) / block_size;
    out[b] = total;
    if (copy) {
      if (copy_i64)
        static_cast<int64_t*>(copy)[b * copy_stride] = total;
      else
        static_cast<int32_t*>(copy)[b * copy_stride] = static_cast<int32_t>(total);
    }
  }
}

// One atomicMax per distinct group of a warp instead of one per thread: the lanes with `take`
// set fold their m into their group's warp maximum (max is order-independent, so the result is
// bit-for-bit that of per-thread atomics). Loops once per distinct group among the taking lanes:
// once in modes 3 .. 5 (all lanes on one sequence), a few where a warp spans heads or blocks.
// Every lane of the warp must call it. Per-dim groups (mode 1 transposed) differ between the
// lanes of a warp (one 8-dim chunk each), so they keep one atomic per element.
__device__ __forceinline__ void flush_amax(unsigned* amax, bool per_dim, bool take, int64_t group,
                                           const unsigned (&m)[kVector]) {
  if (per_dim) {
    if (take) {
#pragma unroll
      for (int e = 0; e < kVector; ++e) atomicMax(amax + group + e, m[e]);
    }
    return;
  }
  const int lane = threadIdx.x % 32;
  unsigned pending = __ballot_sync(0xffffffffu, take);
  while (pending) {
    const int leader = __ffs(pending) - 1;
    const int64_t leader_group = __shfl_sync(0xffffffffu, group, leader);
    const bool mine = take && group == leader_group;
    const unsigned folded = __reduce_max_sync(0xffffffffu, mine ? m[0] : 0u);
    if (lane == leader) atomicMax(amax + leader_group, folded);
    pending &= ~__ballot_sync(0xffffffffu, mine);
  }
}

// Each thread folds |x| of kAmaxTokens tokens x 8 dims of one head. The token loop runs the same
// number of steps in every lane (lanes past their range idle) so that the group changes are
// flushed warp-collectively (flush_amax).
template <class T>
__global__ void __launch_bounds__(kThreads) amax_kernel(Strided x, Jagged j, Scheme s, unsigned* amax) {
  const int chunks = s.dim / kVector;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row_chunks = static_cast<int64_t>(s.heads) * chunks;
  const int64_t t0 = id / row_chunks * kAmaxTokens;
  // No early return: every lane takes part in the collective flushes.
  const bool valid = t0 < s.tokens;
  const int h = static_cast<int>(id % row_chunks / chunks);
  const int d0 = static_cast<int>(id % chunks) * kVector;
  const int64_t t1 = valid ? min(t0 + kAmaxTokens, s.tokens) : t0;
  const bool per_dim = s.per_dim();
  int64_t b = valid ? j.sequence_of(t0) : 0;
  int64_t group = -1;
  unsigned m[kVector] = {};
  for (int step = 0; step < kAmaxTokens; ++step) {
    const int64_t t = t0 + step;
    const bool active = t < t1;
    int64_t g = group;
    if (active) {
      while (j.at(b + 1) <= t) ++b;
      g = s.group(b, t, t - j.at(b), h, d0);
    }
    const bool change = active && g != group;
    if (__any_sync(0xffffffffu, change)) flush_amax(amax, per_dim, change && group >= 0, group, m);
    if (change) {
      group = g;
#pragma unroll
      for (int e = 0; e < kVector; ++e) m[e] = 0;
    }
    if (active) {
      float v[kVector];
      load8<T>(v, x, t, h, d0);
#pragma unroll
      for (int e = 0; e < kVector; ++e) {
        const unsigned bits = __float_as_uint(fabsf(v[e]));
        if (per_dim)
          m[e] = max(m[e], bits);
        else
          m[0] = max(m[0], bits);
      }
    }
  }
  flush_amax(amax, per_dim, group >= 0, group, m);
}

template <class T>
__global__ void __launch_bounds__(kThreads) descale_kernel(Scheme s, float* descale) {
  const int64_t n = s.count();
  const bool in_f32 = divides_in_f32(s);
  if (s.mode == 0) {
    if (blockIdx.x == 0 && threadIdx.x == 0) descale[0] = 1.0f;
    return;
  }
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < n;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    descale[g] = descale_of<T>(__uint_as_float(reinterpret_cast<const unsigned*>(descale)[g]), in_f32);
  }
}

// Modes 0, 1 transposed, 2..5: one thread per (token, head, 8 dims).
template <class T, class Y>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(Strided x, Jagged j, Scheme s, const float* descale, Strided y) {
  const int chunks = s.dim / kVector;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row_chunks = static_cast<int64_t>(s.heads) * chunks;
  const int64_t t = id / row_chunks;
  if (t >= s.tokens) return;
  const int h = static_cast<int>(id % row_chunks / chunks);
  const int d0 = static_cast<int>(id % chunks) * kVector;
  const int64_t b = s.mode >= 1 && s.mode <= 4 ? j.sequence_of(t) : 0;
  const int64_t pos = t - (s.mode >= 1 && s.mode <= 4 ? j.at(b) : 0);
  float v[kVector], ds[kVector];
  load8<T>(v, x, t, h, d0);
  const int64_t g = s.group(b, t, pos, h, d0);
  uint8_t q[kVector];
#pragma unroll
  for (int e = 0; e < kVector; ++e) {
    ds[e] = s.mode == 0 ? 1.0f : descale[s.per_dim() ? g + e : g];
    q[e] = quantize_value<T>(v[e], ds[e], s.mode);
  }
  store8<T, Y>(y, t, h, d0, q, ds);
}

// Mode 1 rows: one warp per (token, head) owns its group: amax (lanes over 8-dim chunks, then a
// warp max), descale [H, L], quantize.
template <class T, class Y>
__global__ void __launch_bounds__(kThreads) rows_kernel(Strided x, Scheme s, float* descale, Strided y) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t t = row / s.heads;
  if (t >= s.tokens) return;  // warp-uniform
  const int h = static_cast<int>(row % s.heads);
  unsigned m = 0;
  for (int d0 = lane * kVector; d0 < s.dim; d0 += 32 * kVector) {
    float v[kVector];
    load8<T>(v, x, t, h, d0);
#pragma unroll
    for (int e = 0; e < kVector; ++e) m = max(m, __float_as_uint(fabsf(v[e])));
  }
  m = __reduce_max_sync(0xffffffffu, m);
  const float d = descale_of<T>(__uint_as_float(m), true);
  if (lane == 0) descale[static_cast<int64_t>(h) * s.tokens + t] = d;
  for (int d0 = lane * kVector; d0 < s.dim; d0 += 32 * kVector) {
    float v[kVector], ds[kVector];
    uint8_t q[kVector];
    load8<T>(v, x, t, h, d0);
#pragma unroll
    for (int e = 0; e < kVector; ++e) {
      ds[e] = d;
      q[e] = quantize_value<T>(v[e], d, 1);
    }
    store8<T, Y>(y, t, h, d0, q, ds);
  }
}

unsigned blocks_for(int64_t threads) { return static_cast<unsigned>((threads + kThreads - 1) / kThreads); }

template <class T, class Y>
void quantize_as(const Strided& x, const Jagged& j, const Scheme& s, float* descale, int64_t capacity, const Strided& y,
                 cudaStream_t stream) {
  const int64_t chunks = s.dim / kVector;
  if (s.mode == 1 && !s.transposed) {
    if (s.tokens * s.heads > 0) {
      rows_kernel<T, Y><<<blocks_for(s.tokens * s.heads * 32), kThreads, 0, stream>>>(x, s, descale, y);
      SEQMIX_CUDA_CHECK(cudaGetLastError());
    }
    return;
  }
  if (s.mode != 0) {
    SEQMIX_CUDA_CHECK(cudaMemsetAsync(descale, 0, static_cast<size_t>(capacity) * sizeof(float), stream));
    const int64_t amax_threads = (s.tokens + kAmaxTokens - 1) / kAmaxTokens * s.heads * chunks;
    if (amax_threads > 0) {
      amax_kernel<T><<<blocks_for(amax_threads), kThreads, 0, stream>>>(x, j, s, reinterpret_cast<unsigned*>(descale));
      SEQMIX_CUDA_CHECK(cudaGetLastError());
    }
  }
  // Mode 0 writes its constant descale 1 here.
  const unsigned descale_blocks = std::max(1u, std::min(blocks_for(capacity), 4096u));
  descale_kernel<T><<<descale_blocks, kThreads, 0, stream>>>(s, descale);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  if (s.tokens * s.heads * chunks > 0) {
    quantize_kernel<T, Y><<<blocks_for(s.tokens * s.heads * chunks), kThreads, 0, stream>>>(x, j, s, descale, y);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
  }
}

template <class T>
void quantize_from(const Strided& x, const Jagged& j, const Scheme& s, float* descale, int64_t capacity,
                   const Strided& y, cudaStream_t stream) {
  if (y.dtype == DType::fp8_e4m3) return quantize_as<T, uint8_t>(x, j, s, descale, capacity, y, stream);
  return quantize_as<T, T>(x, j, s, descale, capacity, y, stream);
}

}  // namespace

Jagged jagged_of(const TensorView& seq_offsets) {
  return {seq_offsets.data, seq_offsets.stride(0), seq_offsets.dtype == DType::i64, seq_offsets.size(0) - 1};
}

void block_offsets(const Jagged& jagged, int block_size, int64_t* out, const TensorView* copy, cudaStream_t stream) {
  block_offsets_kernel<<<1, 1, 0, stream>>>(jagged, block_size, out, copy ? copy->data : nullptr,
                                            copy ? copy->stride(0) : 0, copy && copy->dtype == DType::i64);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

void quantize(const Strided& x, const Jagged& jagged, const Scheme& scheme, float* descale, int64_t capacity,
              const Strided& y, cudaStream_t stream) {
  switch (x.dtype) {
    case DType::bf16:
      return quantize_from<__nv_bfloat16>(x, jagged, scheme, descale, capacity, y, stream);
    case DType::f16:
      return quantize_from<__half>(x, jagged, scheme, descale, capacity, y, stream);
    default:
      return quantize_from<float>(x, jagged, scheme, descale, capacity, y, stream);
  }
}

}  // namespace seqmix::cuda::hstu_fp8
