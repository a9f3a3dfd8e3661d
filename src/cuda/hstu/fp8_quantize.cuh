// Device side of fbgemm's HSTU FP8 quantization (include/seqmix/hstu_fp8.h): where an element's
// descale lives for each quant mode, and the e4m3 cast of torch. Shared by the quantizers
// (fp8_quantize.cu) and the FP8 attention kernels, which look the descales up per row / column.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

namespace seqmix::cuda::hstu_fp8 {

constexpr float kFp8Max = 448.0f;
constexpr float kOverflow = 464.0f;  // torch's e4m3fn cast: |x| > 464 is NaN, 448 < |x| <= 464 is 448
constexpr uint8_t kNanBits = 0x7F;   // the CPU reference stores NaN as 0x7F whatever the sign

// Jagged sequence offsets [B + 1] (int32 / int64) on the device.
struct Jagged {
  const void* offsets;
  int64_t stride;
  bool i64;
  int64_t batch;

  __device__ __forceinline__ int64_t at(int64_t b) const {
    return i64 ? static_cast<const int64_t*>(offsets)[b * stride]
               : static_cast<int64_t>(static_cast<const int32_t*>(offsets)[b * stride]);
  }
  // The sequence holding token t (the last b with offsets[b] <= t; empty sequences are skipped).
  __device__ __forceinline__ int64_t sequence_of(int64_t t) const {
    int64_t lo = 0, hi = batch;  // answer in [lo, hi)
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (at(mid) <= t)
        lo = mid;
      else
        hi = mid;
    }
    return lo;
  }
};

// The descale layout of one quantized [L, H, D] copy (hstu_fp8.h): mode 1 rows [H, L], mode 1
// transposed [NB, H, D], mode 2 [H, NB], mode 3 [B, H], mode 4 [B], modes 0 / 5 [1], with
// NB = block_offsets[B] blocks of block_size tokens of one sequence.
struct Scheme {
  int mode;
  bool transposed;
  int block_size;
  int64_t tokens;
  int heads;
  int dim;
  int64_t batch;
  const int64_t* block_offsets;  // [B + 1], block modes only

  __device__ __forceinline__ bool per_dim() const { return mode == 1 && transposed; }
  // Descale index of element (token t = position pos of sequence b, head h, dim d).
  __device__ __forceinline__ int64_t group(int64_t b, int64_t t, int64_t pos, int h, int d) const {
    switch (mode) {
      case 1:
        if (transposed) return ((block_offsets[b] + pos / block_size) * heads + h) * dim + d;
        return static_cast<int64_t>(h) * tokens + t;
      case 2:
        return static_cast<int64_t>(h) * block_offsets[batch] + block_offsets[b] + pos / block_size;
      case 3:
        return b * heads + h;
      case 4:
        return b;
      default:
        return 0;
    }
  }
  // Number of descales (device side: reads the block count).
  __device__ __forceinline__ int64_t count() const {
    switch (mode) {
      case 1:
        return transposed ? block_offsets[batch] * heads * dim : static_cast<int64_t>(heads) * tokens;
      case 2:
        return static_cast<int64_t>(heads) * block_offsets[batch];
      case 3:
        return batch * heads;
      case 4:
        return batch;
      default:
        return 1;
    }
  }
};

// torch's x.to(float8_e4m3fn) of an f32 value: round to nearest even, NaN beyond 464.
__device__ __forceinline__ uint8_t to_e4m3(float x) {
  if (!(fabsf(x) <= kOverflow)) return kNanBits;
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float from_e4m3(uint8_t bits) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(bits), __NV_E4M3);
  return __half2float(__half(h));
}

}  // namespace seqmix::cuda::hstu_fp8

#include <cuda_runtime.h>

#include "seqmix/tensor.h"

namespace seqmix::cuda::hstu_fp8 {

// Host side (fp8_quantize.cu). One [L, H, D] operand: element (t, h, d) at
// data[t * token_stride + h * head_stride + d].
struct Strided {
  void* data;
  int64_t token_stride;
  int64_t head_stride;
  DType dtype;
};

Jagged jagged_of(const TensorView& seq_offsets);

// block_offsets [B + 1] (int64, device) = cumsum(ceil(len_b / block_size)); also into `copy`
// (int32 / int64 view, fbgemm's cu_seqlens_*_descale) when given. One thread: B is small.
void block_offsets(const Jagged& jagged, int block_size, int64_t* out, const TensorView* copy, cudaStream_t stream);

// Quantizes x (bf16 / f16 / f32, D % 8 == 0) per `scheme` into `descale` (f32, capacity entries,
// at least scheme's count) and into y: fp8 e4m3 bytes, or (y.dtype == x.dtype) the dequantized
// values fp8 * descale rounded once to that dtype (what a 16-bit kernel reads of the fp8 copy).
void quantize(const Strided& x, const Jagged& jagged, const Scheme& scheme, float* descale, int64_t capacity,
              const Strided& y, cudaStream_t stream);

}  // namespace seqmix::cuda::hstu_fp8
