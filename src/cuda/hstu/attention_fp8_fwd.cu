// FP8 HSTU attention forward (params.quant_mode 0..5 on sm_90): the tiling of attention_fwd.cu
// with q k^T on the fp8 tensor cores.
//
// Math (the CPU emulation, src/cpu/hstu/attention_fp8.cpp): with q8, k8, v8 the e4m3 copies and
// dq, dk, dv their descales (hstu_fp8.h: q and k rows, v's transposed copy in mode 1),
//   s_ij = alpha dq(i) dk(j) (q8_i . k8_j),   p_ij = M_ij silu(s_ij),
//   o_i = (1 / N) sum_j p_ij (v8_j * dv(j, :)).
// q and k descales are per row / per column of S in every mode (mode 1: per token; mode 2: per
// 128-token block; modes 3, 4, 5, 0: per sequence-head or constant), so they scale the f32
// accumulator of q8 k8^T exactly where fbgemm's kernel applies them. P v stays a 16-bit product
// (the inputs' dtype): V is staged from e4m3 to 16 bits per key tile (exactly, or times dv(j, d)
// in mode 1), dv is applied to P (mode 2) or to O (modes 0, 3, 4, 5), and P is rounded to 16 bits
// as in the bf16 kernel (see ScaleKind). Quantizing P to e4m3 as well (FA3) would double that
// product's rate, but HSTU's P is unnormalised (no softmax max to scale by), so P would need a
// per-row dynamic scale; not done here.
//
// Tiles: a block owns 128 query rows of one (sequence, head), 32 per warp (two 16-row MMA blocks).
// Shared memory: Q8 [128][D + 16] bytes, two stages of K8 and V8 [KN][D + 16] bytes (cp.async,
// 16-byte padded rows so ldmatrix rows hit distinct banks), V [KN][D + 8] in 16 bits, the
// dequantized V of the current stage, and the f32 descales of the q rows (times alpha) and of
// the current key tile's columns (registers are taken by O). Per key tile: wait for its copies,
// barrier, issue the next tile's copies, V8 -> V (descales), barrier,
// S = Q8 K8^T (mma m16n8k32 e4m3, k = 32 bytes along D; ldmatrix.b16 reads a pair of e4m3 as one
// element, which is exactly the e4m3 fragment layout), descales, silu, mask, O += P V (m16n8k16).
#include <cuda_fp8.h>

#include <type_traits>

#include "cuda/common/cuda_check.h"
#include "cuda/hstu/attention_fp8.h"
#include "cuda/hstu/attention_fp8_kernels.h"
#include "cuda/hstu/attention_tile.cuh"

namespace seqmix::cuda::hstu_fp8 {
namespace {

using hstu::Args;
using hstu::kThreads;
using hstu::kWarps;
using hstu::Operand;
constexpr int kFwdQueryRows = 128;  // query rows per block: 32 per warp (the 16-bit forward's former shape)

constexpr int kWarpRowBlocks = kFwdQueryRows / (16 * kWarps);

// Where the descales vary, which fixes where the kernel applies them:
//   per_token (mode 1): dq per row and dk per column of S (from shared memory), dv per
//     (128-token block, dim), multiplied into the staged 16-bit V;
//   per_block (mode 2): dq per 128-row query tile, dk and dv per key tile (inside one block):
//     alpha dq dk scales S, dv scales P before its 16-bit rounding;
//   per_sequence (modes 0, 3, 4, 5): constants of the (sequence, head): alpha dq dk scales S and
//     dv / N the output, so V is staged exactly (e4m3 is a subset of bf16 and f16).
enum class ScaleKind { per_sequence, per_block, per_token };
constexpr int kRowPad = 16;  // bytes

template <int D>
constexpr int key_rows() {
  return D == 128 ? 32 : 64;
}
template <int D>
constexpr int row_bytes() {
  return D + kRowPad;
}
// Q8, two stages of K8 and V8, the 16-bit V, then the f32 q-row and k-column descales.
template <int D>
constexpr size_t smem_bytes() {
  return static_cast<size_t>(kFwdQueryRows + 4 * key_rows<D>()) * row_bytes<D>() +
         static_cast<size_t>(key_rows<D>()) * hstu::SmemRow<D>::kStride * 2 +
         static_cast<size_t>(kFwdQueryRows + key_rows<D>()) * sizeof(float);
}

// Rows [row0, row0 + ROWS) of one head of an e4m3 operand into smem (row stride D + 16 bytes);
// rows at or beyond rows_valid are zero-filled. One cp.async group.
template <int ROWS, int D>
__device__ __forceinline__ void load_fp8_tile_async(uint8_t* smem, const Operand& x, int64_t start, int head,
                                                    int64_t row0, int64_t rows_valid) {
  constexpr int kChunksPerRow = D / 16;
  const uint8_t* base = static_cast<const uint8_t*>(x.data) + head * x.head_stride;
  for (int c = threadIdx.x; c < ROWS * kChunksPerRow; c += blockDim.x) {
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * 16;
    const bool valid = row0 + r < rows_valid;
    const uint8_t* src = valid ? base + (start + row0 + r) * x.token_stride + col : base;
    asm volatile(
        "cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(hstu::smem_address(smem + r * row_bytes<D>() + col)),
        "l"(src), "r"(valid ? 16 : 0));
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

// A operand (16 x 32 e4m3, row-major) at rows [row0, row0 + 16), bytes [k0, k0 + 32).
template <int D>
__device__ __forceinline__ void load_a_fp8(uint32_t (&a)[4], const uint8_t* smem, int row0, int k0) {
  const int lane = threadIdx.x % 32;
  hstu::ldmatrix_x4(a, smem + (row0 + lane % 16) * row_bytes<D>() + k0 + (lane / 16) * 16);
}

// B operands of two 16-column blocks of K^T: columns = smem rows [row0, row0 + 16), k = bytes
// [k0, k0 + 32) of each row. b[0..1]: rows row0 .. row0 + 7, b[2..3]: row0 + 8 .. row0 + 15.
template <int D>
__device__ __forceinline__ void load_b_fp8(uint32_t (&b)[4], const uint8_t* smem, int row0, int k0) {
  const int lane = threadIdx.x % 32;
  hstu::ldmatrix_x4(b, smem + (row0 + lane % 8 + (lane / 16) * 8) * row_bytes<D>() + k0 + ((lane / 8) % 2) * 16);
}

__device__ __forceinline__ void mma_e4m3(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // the API admits sm_90 only
#endif
}

// Two e4m3 values (low byte first) to a packed pair of T, each times its scale.
template <class T, bool kScaled>
__device__ __forceinline__ uint32_t e4m3x2_to(uint16_t pair, float s0, float s1) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3);
  if constexpr (!kScaled && std::is_same_v<T, __half>) {
    return *reinterpret_cast<const uint32_t*>(&h);  // e4m3 is a subset of f16: exact
  } else {
    const float2 v = __half22float2(__half2(h));
    return kScaled ? hstu::pack2<T>(v.x * s0, v.y * s1) : hstu::pack2<T>(v.x, v.y);
  }
}

template <class T, int D, ScaleKind kScales>
__global__ void __launch_bounds__(kThreads) attention_fp8_fwd_kernel(Args a, Fp8Operands f) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int KN = key_rows<D>();
  constexpr int kTile8 = KN * row_bytes<D>();
  constexpr int M = kWarpRowBlocks;
  uint8_t* const sq = smem_raw;
  uint8_t* const skv = sq + kFwdQueryRows * row_bytes<D>();  // stage s: K8 at skv + 2 s kTile8, V8 after it
  T* const sv = reinterpret_cast<T*>(skv + 4 * kTile8);
  float* const sq_scale = reinterpret_cast<float*>(sv + KN * hstu::SmemRow<D>::kStride);  // [128], per_token
  float* const sk_scale = sq_scale + kFwdQueryRows;                                       // [KN], per_token
  constexpr int kChunks = D / 8;                                                          // 8-byte chunks of a V8 row
  static_assert(kThreads % kChunks == 0, "each thread stages the same 8 dims of every V row");

  const hstu::Sequence s = hstu::sequence_of_block(a);
  const int64_t i0 = static_cast<int64_t>(s.tile) * kFwdQueryRows;
  if (i0 >= s.length) return;
  const int64_t b = blockIdx.x / a.tiles_per_sequence;
  const int head = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_row0 = warp * 16 * M;

  load_fp8_tile_async<kFwdQueryRows, D>(sq, a.q, s.start, head, i0, s.length);
  const hstu::TileColumns cols = hstu::tile_columns(s.rule, i0, min(i0 + kFwdQueryRows, s.length));
  const hstu::TileColumns warp_cols =
      hstu::tile_columns(s.rule, min(i0 + warp_row0, s.length), min(i0 + warp_row0 + 16 * M, s.length));

  // Descales (see ScaleKind). per_token: alpha dq(i) per row of the tile (0 past the end: those
  // rows are dropped), read back per score from shared memory rather than held next to O.
  // per_block: alpha dq of the query tile here, dk and dv per key tile below. per_sequence: all
  // three are constants of the (sequence, head): alpha dq dk scales S, dv / N scales O at the end.
  float q_scale = a.alpha, score_scale = a.alpha, out_scale = a.inv_scaling;
  if constexpr (kScales == ScaleKind::per_token) {
    const int64_t i = i0 + threadIdx.x;
    sq_scale[threadIdx.x] = i < s.length ? a.alpha * f.q_descale[f.q.group(b, s.start + i, i, head, 0)] : 0.0f;
  } else {
    q_scale = a.alpha * f.q_descale[f.q.group(b, s.start + i0, i0, head, 0)];
    if constexpr (kScales == ScaleKind::per_sequence) {
      score_scale = q_scale * f.k_descale[f.k.group(b, s.start, 0, head, 0)];
      out_scale = a.inv_scaling * f.v_descale[f.v.group(b, s.start, 0, head, 0)];
    }
  }

  const int64_t j_begin = min(cols.begin[0], cols.begin[1]) / KN * KN;
  const int64_t j_end = max(cols.end[0], cols.end[1]);
  auto next_tile = [&](int64_t j0) {
    for (; j0 < j_end; j0 += KN) {
      if (j0 >= cols.end[0] && j0 + KN <= cols.begin[1]) j0 = cols.begin[1] / KN * KN;
      if (cols.touches(j0, min(j0 + KN, s.length))) return j0;
    }
    return j_end;
  };
  auto load_kv = [&](int64_t j0, int stage) {
    load_fp8_tile_async<KN, D>(skv + 2 * stage * kTile8, a.k, s.start, head, j0, s.length);
    load_fp8_tile_async<KN, D>(skv + (2 * stage + 1) * kTile8, a.v, s.start, head, j0, s.length);
  };

  float o[M][D / 8][4];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
  }

  int64_t j0 = j_begin < j_end ? next_tile(j_begin) : j_end;
  if (j0 < j_end) load_kv(j0, 0);
  for (int stage = 0; j0 < j_end; stage ^= 1) {
    const int64_t j_next = next_tile(j0 + KN);
    hstu::wait_async_all();  // this tile's K8, V8 (and Q): the only copies in flight
    // Every copy has landed and every warp is past the previous tile, so the other stage, V and
    // the column descales are free: the next tile's copies overlap this tile's staging and MMAs.
    __syncthreads();
    if (j_next < j_end) load_kv(j_next, stage ^ 1);
    const uint8_t* sk = skv + 2 * stage * kTile8;
    const uint8_t* sv8 = sk + kTile8;

    // Stage V in 16 bits: exact for per_sequence / per_block (dv scales P or O instead); per_token
    // multiplies by dv(block, d): a key tile (KN | 128 tokens from the sequence start) lies in
    // one 128-token descale block, so that is one row of D descales for the tile.
    float v_tile = 1.0f;
    float v_scale[8] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    if constexpr (kScales == ScaleKind::per_token) {
      if (threadIdx.x < KN) {
        const int64_t j = j0 + threadIdx.x;
        sk_scale[threadIdx.x] = j < s.length ? f.k_descale[f.k.group(b, s.start + j, j, head, 0)] : 0.0f;
      }
      const float* vs = f.v_descale + f.v.group(b, s.start + j0, j0, head, (threadIdx.x % kChunks) * 8);
#pragma unroll
      for (int e = 0; e < 8; ++e) v_scale[e] = vs[e];
    } else if constexpr (kScales == ScaleKind::per_block) {
      score_scale = q_scale * f.k_descale[f.k.group(b, s.start + j0, j0, head, 0)];
      v_tile = f.v_descale[f.v.group(b, s.start + j0, j0, head, 0)];
    }
    constexpr bool kScaledV = kScales == ScaleKind::per_token;
    for (int c = threadIdx.x; c < KN * kChunks; c += kThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const uint2 raw = *reinterpret_cast<const uint2*>(sv8 + r * row_bytes<D>() + col);
      uint4 packed;
      packed.x = e4m3x2_to<T, kScaledV>(static_cast<uint16_t>(raw.x), v_scale[0], v_scale[1]);
      packed.y = e4m3x2_to<T, kScaledV>(static_cast<uint16_t>(raw.x >> 16), v_scale[2], v_scale[3]);
      packed.z = e4m3x2_to<T, kScaledV>(static_cast<uint16_t>(raw.y), v_scale[4], v_scale[5]);
      packed.w = e4m3x2_to<T, kScaledV>(static_cast<uint16_t>(raw.y >> 16), v_scale[6], v_scale[7]);
      *reinterpret_cast<uint4*>(sv + r * hstu::SmemRow<D>::kStride + col) = packed;
    }
    __syncthreads();

    const int64_t j1 = min(j0 + KN, s.length);
    if (!warp_cols.touches(j0, j1)) {
      j0 = j_next;
      continue;
    }
    float p[M][KN / 8][4];
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int n = 0; n < KN / 8; ++n) p[m][n][0] = p[m][n][1] = p[m][n][2] = p[m][n][3] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 32; ++kk) {
      uint32_t af[M][4];
#pragma unroll
      for (int m = 0; m < M; ++m) load_a_fp8<D>(af[m], sq, warp_row0 + 16 * m, kk * 32);
#pragma unroll
      for (int n = 0; n < KN / 16; ++n) {
        uint32_t bf[4];
        load_b_fp8<D>(bf, sk, n * 16, kk * 32);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          mma_e4m3(p[m][2 * n], af[m], bf[0], bf[1]);
          mma_e4m3(p[m][2 * n + 1], af[m], bf[2], bf[3]);
        }
      }
    }
    const bool full = warp_cols.fully_attended(j0, j1);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const hstu::RowPairMask row_mask =
          full ? hstu::RowPairMask() : hstu::RowPairMask(s.rule, i0 + warp_row0 + 16 * m + lane / 4);
#pragma unroll
      for (int n = 0; n < KN / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x;
          if constexpr (kScales == ScaleKind::per_token) {
            x = p[m][n][e] * sq_scale[warp_row0 + 16 * m + lane / 4 + (e / 2) * 8] *
                sk_scale[n * 8 + 2 * (lane % 4) + e % 2];
          } else {
            x = p[m][n][e] * score_scale;
          }
          float p_ij = hstu::silu(x);
          if constexpr (kScales == ScaleKind::per_block) p_ij *= v_tile;
          if (!full) {
            const int64_t i = i0 + warp_row0 + 16 * m + lane / 4 + (e / 2) * 8;
            const int64_t j = j0 + n * 8 + 2 * (lane % 4) + e % 2;
            if (!row_mask.allowed(s.rule, e / 2, i, j)) p_ij = 0.0f;
          }
          p[m][n][e] = p_ij;
        }
      }
    }
    hstu::gemm_ab_acc<D, KN, M, T>(o, p, sv);
    j0 = j_next;
  }
  hstu::wait_async_all();
#pragma unroll
  for (int m = 0; m < M; ++m) {
    hstu::store_rows<D, T>(a.out_or_dout, s.start, head, i0 + warp_row0 + 16 * m, s.length, o[m], out_scale);
  }
}

template <class T, int D, ScaleKind kScales>
void launch(Args a, const Fp8Operands& f, int64_t heads, cudaStream_t stream) {
  const size_t smem = smem_bytes<D>();
  const auto kernel = attention_fp8_fwd_kernel<T, D, kScales>;
  SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid = hstu::grid_of(a, heads, kFwdQueryRows);
  kernel<<<grid, kThreads, smem, stream>>>(a, f);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

template <class T, int D>
void launch_for_mode(const Args& a, const Fp8Operands& f, int64_t heads, cudaStream_t stream) {
  switch (f.q.mode) {
    case 1:
      return launch<T, D, ScaleKind::per_token>(a, f, heads, stream);
    case 2:
      // Descale blocks line up with the tiles: one q block per query tile, key tiles inside a k/v block.
      SEQMIX_CHECK(
          f.q.block_size == kFwdQueryRows && f.k.block_size % key_rows<D>() == 0 && f.v.block_size % key_rows<D>() == 0,
          "hstu FP8 forward: quant_mode 2 block sizes (", f.q.block_size, ", ", f.k.block_size,
          ") do not line up with the kernel's tiles");
      return launch<T, D, ScaleKind::per_block>(a, f, heads, stream);
    default:
      return launch<T, D, ScaleKind::per_sequence>(a, f, heads, stream);
  }
}

}  // namespace

// The dispatch table: dtype x head dim -> instance (the API has validated the combination).
void launch_attention_fp8_fwd(const Args& a, const Fp8Operands& f, DType dtype, int64_t heads, int64_t head_dim,
                              cudaStream_t stream) {
  const bool bf16 = dtype == DType::bf16;
  if (head_dim == 64) {
    return bf16 ? launch_for_mode<__nv_bfloat16, 64>(a, f, heads, stream)
                : launch_for_mode<__half, 64>(a, f, heads, stream);
  }
  return bf16 ? launch_for_mode<__nv_bfloat16, 128>(a, f, heads, stream)
              : launch_for_mode<__half, 128>(a, f, heads, stream);
}

}  // namespace seqmix::cuda::hstu_fp8
