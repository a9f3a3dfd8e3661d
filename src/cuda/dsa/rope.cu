// Interleaved partial RoPE, forward and inverse (the backward of a rotation is its inverse).
//
// Math, per token t, head h, pair p of the rope tail (offset D - R), row r = position of t:
//   a = x[t,h,D-R+2p], b = x[t,h,D-R+2p+1], c = cos[r,p], s = +-sin[r,p]
//   out[.., 2p] = a*c - b*s,  out[.., 2p+1] = b*c + a*s   (fp32 math, rounded once to x's dtype,
//   as HF's apply_rotary_pos_emb does); nope channels are copied.
// Layout: one thread per output element, consecutive threads along D, so loads and stores are
// coalesced; each rope thread also reads its pair partner (same cache line). Memory bound.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "cuda/common/cuda_check.h"
#include "cuda/dsa/rope.h"

namespace seqmix::cuda {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 65535LL * 16;

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_float(__half v) { return __half2float(v); }

template <class T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }

struct RopeShape {
  int64_t tokens, heads, head_dim, rope_dim, table_rows;
  int64_t x_stride_t, x_stride_h, out_stride_t, out_stride_h;
};

template <class T, class TrigT, class PosT>
__global__ void interleaved_rope_kernel(const T* x, const TrigT* __restrict__ cos, const TrigT* __restrict__ sin,
                                        const PosT* __restrict__ position_ids, T* out, RopeShape shape,
                                        float sin_sign) {
  const int64_t total = shape.tokens * shape.heads * shape.head_dim;
  const int64_t nope_dim = shape.head_dim - shape.rope_dim;
  const int64_t half = shape.rope_dim / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i % shape.head_dim;
    const int64_t row = i / shape.head_dim;
    const int64_t h = row % shape.heads;
    const int64_t t = row / shape.heads;
    const T* src = x + t * shape.x_stride_t + h * shape.x_stride_h;
    T* dst = out + t * shape.out_stride_t + h * shape.out_stride_h;
    if (d < nope_dim) {
      dst[d] = src[d];
      continue;
    }
    const int64_t p = (d - nope_dim) / 2;
    const bool second = (d - nope_dim) % 2;
    const int64_t r = position_ids ? static_cast<int64_t>(position_ids[t]) : t;
    const float a = to_float(src[nope_dim + 2 * p]);
    const float b = to_float(src[nope_dim + 2 * p + 1]);
    float value;
    if (r < 0 || r >= shape.table_rows) {
      value = NAN;
    } else {
      const float c = to_float(cos[r * half + p]);
      const float s = sin_sign * to_float(sin[r * half + p]);
      value = second ? b * c + a * s : a * c - b * s;
    }
    dst[d] = from_float<T>(value);
  }
}

template <class T, class TrigT, class PosT>
void launch(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView* position_ids,
            const TensorView& out, bool inverse, cudaStream_t stream) {
  const RopeShape shape{x.size(0),   x.size(1),   x.size(2),     2 * cos.size(1), cos.size(0),
                        x.stride(0), x.stride(1), out.stride(0), out.stride(1)};
  const int64_t total = shape.tokens * shape.heads * shape.head_dim;
  if (total == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks));
  interleaved_rope_kernel<T, TrigT, PosT><<<blocks, kThreadsPerBlock, 0, stream>>>(
      x.data_as<const T>(), cos.data_as<const TrigT>(), sin.data_as<const TrigT>(),
      position_ids ? position_ids->data_as<const PosT>() : nullptr, out.data_as<T>(), shape, inverse ? -1.0f : 1.0f);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

template <class T, class TrigT>
void launch_positions(const TensorView& x, const TensorView& cos, const TensorView& sin,
                      const TensorView* position_ids, const TensorView& out, bool inverse, cudaStream_t stream) {
  if (position_ids && position_ids->dtype == DType::i32) {
    return launch<T, TrigT, int32_t>(x, cos, sin, position_ids, out, inverse, stream);
  }
  launch<T, TrigT, int64_t>(x, cos, sin, position_ids, out, inverse, stream);
}

template <class T>
void launch_trig(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView* position_ids,
                 const TensorView& out, bool inverse, cudaStream_t stream) {
  if (cos.dtype == DType::f32) return launch_positions<T, float>(x, cos, sin, position_ids, out, inverse, stream);
  launch_positions<T, T>(x, cos, sin, position_ids, out, inverse, stream);
}

}  // namespace

void interleaved_rope(const TensorView& x, const TensorView& cos, const TensorView& sin,
                      const TensorView* position_ids, const TensorView& out, bool inverse, cudaStream_t stream) {
  switch (x.dtype) {
    case DType::bf16: return launch_trig<__nv_bfloat16>(x, cos, sin, position_ids, out, inverse, stream);
    case DType::f16: return launch_trig<__half>(x, cos, sin, position_ids, out, inverse, stream);
    case DType::f32: return launch_trig<float>(x, cos, sin, position_ids, out, inverse, stream);
    default:
      SEQMIX_CHECK(false, "x: CUDA RoPE supports bfloat16/float16/float32, got ", dtype_name(x.dtype));
  }
}

}  // namespace seqmix::cuda
