// Interleaved partial RoPE, forward and inverse (the backward of a rotation is its inverse).
//
// Math, per token t, head h, pair p of the rope tail (offset D - R):
//   a = x[t,h,D-R+2p], b = x[t,h,D-R+2p+1], c = cos[t,p], s = +-sin[t,p]
//   out[.., 2p] = a*c - b*s,  out[.., 2p+1] = b*c + a*s   (fp32 math, rounded once to x's dtype,
//   as HF's apply_rotary_pos_emb does); nope channels are copied.
// Layout: one thread per channel pair, a block per (token, head) row group; memory bound, so
// the only goal is coalesced 2-element accesses along D.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/common/cuda_check.h"
#include "cuda/dsa/rope.h"

namespace seqmix::cuda {
namespace {

constexpr int kThreadsPerBlock = 256;

template <class T>
__device__ inline float to_float(T v) { return static_cast<float>(v); }
template <>
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ inline float to_float(__half v) { return __half2float(v); }

template <class T>
__device__ inline T from_float(float v) { return static_cast<T>(v); }
template <>
__device__ inline __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ inline __half from_float(float v) { return __float2half_rn(v); }

struct RopeShape {
  int64_t tokens, heads, head_dim, rope_dim;
  int64_t x_stride_t, x_stride_h, out_stride_t, out_stride_h;
};

template <class T, class TrigT>
__global__ void interleaved_rope_kernel(const T* __restrict__ x, const TrigT* __restrict__ cos,
                                        const TrigT* __restrict__ sin, T* out, RopeShape shape, float sin_sign) {
  const int64_t half_dim = shape.head_dim / 2;  // pairs per head (nope is even-sized: checked at the boundary)
  const int64_t pairs_total = shape.tokens * shape.heads * half_dim;
  const int64_t nope_pairs = (shape.head_dim - shape.rope_dim) / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs_total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pair = i % half_dim;
    const int64_t row = i / half_dim;
    const int64_t h = row % shape.heads;
    const int64_t t = row / shape.heads;
    const T* src = x + t * shape.x_stride_t + h * shape.x_stride_h + 2 * pair;
    T* dst = out + t * shape.out_stride_t + h * shape.out_stride_h + 2 * pair;
    const T a_raw = src[0];
    const T b_raw = src[1];
    if (pair < nope_pairs) {
      dst[0] = a_raw;
      dst[1] = b_raw;
      continue;
    }
    const int64_t p = pair - nope_pairs;
    const float c = to_float(cos[t * (shape.rope_dim / 2) + p]);
    const float s = sin_sign * to_float(sin[t * (shape.rope_dim / 2) + p]);
    const float a = to_float(a_raw);
    const float b = to_float(b_raw);
    dst[0] = from_float<T>(a * c - b * s);
    dst[1] = from_float<T>(b * c + a * s);
  }
}

template <class T, class TrigT>
void launch(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView& out, bool inverse,
            cudaStream_t stream) {
  const RopeShape shape{x.size(0), x.size(1), x.size(2), 2 * cos.size(1),
                        x.stride(0), x.stride(1), out.stride(0), out.stride(1)};
  const int64_t pairs = shape.tokens * shape.heads * (shape.head_dim / 2);
  if (pairs == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((pairs + kThreadsPerBlock - 1) / kThreadsPerBlock, 65535 * 8));
  interleaved_rope_kernel<T, TrigT><<<blocks, kThreadsPerBlock, 0, stream>>>(
      x.data_as<const T>(), cos.data_as<const TrigT>(), sin.data_as<const TrigT>(), out.data_as<T>(), shape,
      inverse ? -1.0f : 1.0f);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_trig(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView& out,
                 bool inverse, cudaStream_t stream) {
  if (cos.dtype == DType::f32) return launch<T, float>(x, cos, sin, out, inverse, stream);
  SEQMIX_CHECK(cos.dtype == x.dtype, "cos: expected dtype float32 or the dtype of x (", dtype_name(x.dtype), "), got ",
               dtype_name(cos.dtype));
  launch<T, T>(x, cos, sin, out, inverse, stream);
}

}  // namespace

void interleaved_rope(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView& out,
                      bool inverse, cudaStream_t stream) {
  switch (x.dtype) {
    case DType::bf16: return launch_trig<__nv_bfloat16>(x, cos, sin, out, inverse, stream);
    case DType::f16: return launch_trig<__half>(x, cos, sin, out, inverse, stream);
    case DType::f32: return launch_trig<float>(x, cos, sin, out, inverse, stream);
    default:
      SEQMIX_CHECK(false, "x: CUDA interleaved RoPE supports bfloat16/float16/float32, got ", dtype_name(x.dtype));
  }
}

}  // namespace seqmix::cuda
