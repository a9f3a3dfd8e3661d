// FP8 HSTU attention forward (params.quant_mode 0..5 on sm_90): the tiling of attention_fwd.cu
// with both products on the fp8 tensor cores (mma.sync m16n8k32 e4m3, f32 accumulate).
//
// Math (the CPU emulation, src/cpu/hstu/attention_fp8.cpp): with q8, k8, v8 the e4m3 copies and
// dq, dk, dv their descales (hstu_fp8.h: q and k rows, v's transposed copy in mode 1),
//   s_ij = alpha dq(i) dk(j) (q8_i . k8_j),   p_ij = M_ij silu(s_ij),
//   o_i = (1 / N) sum_j p_ij (v8_j * dv(j, :)).
// q and k descales are per row / per column of S in every mode (mode 1: per token; mode 2: per
// 128-token block; modes 3, 4, 5, 0: per sequence-head or constant), so they scale the f32
// accumulator of q8 k8^T exactly where fbgemm's kernel applies them.
//
// P v in e4m3 (as FA3's FP8 forward, but HSTU's P has no softmax maximum to bound it): per key
// tile and query row, P is scaled by r_i = 2^k_i, the power of two that puts the row's largest
// |p_ij| of the tile in [128, 256) (below e4m3's 448, so nothing saturates), rounded to e4m3,
// multiplied with v8 into a fresh f32 tile result and added to O as O += (result / r_i) times
// v's descale: per output column within the key tile in mode 1 (dv(block, d); a key tile lies in
// one 128-token descale block), per tile in mode 2, and once at the end (with 1 / N) otherwise.
// r_i is a power of two, so scaling and unscaling are exact; the only new error is P's e4m3
// rounding, at most 2^-4 of |p_ij| (3 mantissa bits) and 2^-10 / r_i absolute in e4m3's
// subnormal range (values under 2^-14 of the row's tile maximum). The CPU emulation does not
// quantize P: tests/cpp/hstu_fp8_cuda_test.cpp's header gives the tolerance this implies.
//
// Tiles: a block owns 128 query rows of one (sequence, head), 32 per warp (two 16-row MMA blocks).
// Shared memory: Q8 [128][D + 16] bytes, two stages of K8 and V8 [KN][D + 16] bytes (cp.async,
// 16-byte padded rows so ldmatrix rows hit distinct banks), V8^T [D][KN + 16] bytes (the current
// stage transposed, see below), and the f32 descales of the q rows (times alpha), of the current
// key tile's columns and of its v dims (mode 1; registers are taken by O). Per key tile: wait for
// its copies, barrier, issue the next tile's copies, V8 -> V8^T, barrier,
// S = Q8 K8^T (k = 32 bytes along D; ldmatrix.b16 reads a pair of e4m3 as one element, which is
// exactly the e4m3 fragment layout), descales, silu, mask, per-row scale, P -> e4m3 A fragments,
// O += P V8 per 16 output columns.
//
// P's A fragments come straight from S's accumulators, with the keys permuted: m16n8k32 wants
// keys 4t .. 4t + 3 (t = lane % 4) of a row in one register, the accumulators hold keys 2t, 2t + 1
// of each 8-key block. Packing blocks (2c, 2c + 1) of a 16-key half gives k position 4t + e the
// key 8 (e / 2) + 2t + e % 2 of that half; V8^T stores each 32-key group's keys in that order,
// so the product sums the same pairs. ldmatrix cannot transpose 8-bit data, hence the transpose
// while staging: each thread takes 4 keys x 4 dims (four 32-bit words) and transposes them with
// byte permutes (prmt).
#include <cuda_fp8.h>

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
//   per_token (mode 1): dq per row and dk per column of S, dv per (128-token block, dim), i.e. per
//     output column of a key tile's P v8 (all three from shared memory);
//   per_block (mode 2): dq per 128-row query tile, dk and dv per key tile (inside one block):
//     alpha dq dk scales S, dv the tile's P v8;
//   per_sequence (modes 0, 3, 4, 5): constants of the (sequence, head): alpha dq dk scales S and
//     dv / N the output.
enum class ScaleKind { per_sequence, per_block, per_token };
constexpr int kRowPad = 16;  // bytes
constexpr int kMmaK = 32;    // e4m3 m16n8k32: keys per P v8 step, bytes of D per q k^T step

template <int D>
constexpr int key_rows() {
  return D == 128 ? 32 : 64;
}
template <int D>
constexpr int row_bytes() {
  return D + kRowPad;
}
template <int D>
constexpr int vt_row_bytes() {
  return key_rows<D>() + kRowPad;
}
// Q8, two stages of K8 and V8, V8^T, then the f32 q-row, k-column and v-dim descales.
template <int D>
constexpr size_t smem_bytes() {
  return static_cast<size_t>(kFwdQueryRows + 4 * key_rows<D>()) * row_bytes<D>() +
         static_cast<size_t>(D) * vt_row_bytes<D>() +
         static_cast<size_t>(kFwdQueryRows + key_rows<D>() + D) * sizeof(float);
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
template <int STRIDE>
__device__ __forceinline__ void load_a_fp8(uint32_t (&a)[4], const uint8_t* smem, int row0, int k0) {
  const int lane = threadIdx.x % 32;
  hstu::ldmatrix_x4(a, smem + (row0 + lane % 16) * STRIDE + k0 + (lane / 16) * 16);
}

// B operands of two 8-column blocks: columns = smem rows [row0, row0 + 16) (row stride STRIDE
// bytes), k = bytes [k0, k0 + 32) of each row. b[0..1]: rows row0 .. row0 + 7, b[2..3]:
// row0 + 8 .. row0 + 15. K8 for S = Q8 K8^T, V8^T for O += P V8.
template <int STRIDE>
__device__ __forceinline__ void load_b_fp8(uint32_t (&b)[4], const uint8_t* smem, int row0, int k0) {
  const int lane = threadIdx.x % 32;
  hstu::ldmatrix_x4(b, smem + (row0 + lane % 8 + (lane / 16) * 8) * STRIDE + k0 + ((lane / 8) % 2) * 16);
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

// Two f32 to e4m3 (round to nearest even; the per-row scale keeps |x| < 256, so no saturation),
// x.x in the low byte.
__device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
  return static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3));
}

// The per-row P scale: r = 2^k with amax * r < 2^8 (amax < 2^(e - 126) for biased exponent e),
// k clamped to [-121, 126] so that r and 1 / r are normal f32. Returns r; inv gets 1 / r.
__device__ __forceinline__ float p_scale_of(float amax, float& inv) {
  const int e = static_cast<int>((__float_as_uint(amax) >> 23) & 0xff);
  const int k = min(134 - e, 126);
  inv = __int_as_float((127 - k) << 23);
  return __int_as_float((127 + k) << 23);
}

// V8 of a key tile [KN][D + 16] -> V8^T [D][KN + 16], the keys of each 32-key group in the
// order of P's A fragments (see the top): position 16 h + 4 t + 2 hi + lo holds key
// 16 h + 8 hi + 2 t + lo. A unit is 4 positions x 4 dims: four 32-bit reads (one per key, 4
// dims each), a 4 x 4 byte transpose in 8 byte permutes, four 32-bit writes (one per dim).
template <int D, int THREADS>
__device__ __forceinline__ void transpose_v(uint8_t* vt, const uint8_t* v8) {
  constexpr int KN = key_rows<D>();
  constexpr int kPositionQuads = KN / 4;
  for (int c = threadIdx.x; c < kPositionQuads * (D / 4); c += THREADS) {
    const int quad = c % kPositionQuads;  // positions 4 quad .. 4 quad + 3
    const int d = (c / kPositionQuads) * 4;
    const int group = quad / 8, half = (quad / 4) % 2, t = quad % 4;
    const int key = 32 * group + 16 * half + 2 * t;  // the keys: key, key + 1, key + 8, key + 9
    const uint32_t r0 = *reinterpret_cast<const uint32_t*>(v8 + key * row_bytes<D>() + d);
    const uint32_t r1 = *reinterpret_cast<const uint32_t*>(v8 + (key + 1) * row_bytes<D>() + d);
    const uint32_t r2 = *reinterpret_cast<const uint32_t*>(v8 + (key + 8) * row_bytes<D>() + d);
    const uint32_t r3 = *reinterpret_cast<const uint32_t*>(v8 + (key + 9) * row_bytes<D>() + d);
    const uint32_t t0 = __byte_perm(r0, r1, 0x5140);  // r0.b0 r1.b0 r0.b1 r1.b1
    const uint32_t t1 = __byte_perm(r0, r1, 0x7362);  // r0.b2 r1.b2 r0.b3 r1.b3
    const uint32_t t2 = __byte_perm(r2, r3, 0x5140);
    const uint32_t t3 = __byte_perm(r2, r3, 0x7362);
    uint8_t* dst = vt + d * vt_row_bytes<D>() + 4 * quad;
    *reinterpret_cast<uint32_t*>(dst) = __byte_perm(t0, t2, 0x5410);  // dim d: r0.b0 r1.b0 r2.b0 r3.b0
    *reinterpret_cast<uint32_t*>(dst + vt_row_bytes<D>()) = __byte_perm(t0, t2, 0x7632);
    *reinterpret_cast<uint32_t*>(dst + 2 * vt_row_bytes<D>()) = __byte_perm(t1, t3, 0x5410);
    *reinterpret_cast<uint32_t*>(dst + 3 * vt_row_bytes<D>()) = __byte_perm(t1, t3, 0x7632);
  }
}

template <class T, int D, ScaleKind kScales>
__global__ void __launch_bounds__(kThreads) attention_fp8_fwd_kernel(Args a, Fp8Operands f) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int KN = key_rows<D>();
  constexpr int kTile8 = KN * row_bytes<D>();
  constexpr int M = kWarpRowBlocks;
  constexpr int kSteps = KN / kMmaK;  // P v8 k-steps per key tile
  uint8_t* const sq = smem_raw;
  uint8_t* const skv = sq + kFwdQueryRows * row_bytes<D>();  // stage s: K8 at skv + 2 s kTile8, V8 after it
  uint8_t* const svt = skv + 4 * kTile8;                     // V8^T of the current stage
  float* const sq_scale = reinterpret_cast<float*>(svt + D * vt_row_bytes<D>());  // [128], per_token
  float* const sk_scale = sq_scale + kFwdQueryRows;                               // [KN], per_token
  float* const sv_scale = sk_scale + KN;                                          // [D], per_token

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
    // Every copy has landed and every warp is past the previous tile, so the other stage, V8^T
    // and the column descales are free: the next tile's copies overlap this tile's staging and MMAs.
    __syncthreads();
    if (j_next < j_end) load_kv(j_next, stage ^ 1);
    const uint8_t* sk = skv + 2 * stage * kTile8;
    transpose_v<D, kThreads>(svt, sk + kTile8);

    // Key-tile descales. per_token: dk per column and dv(block, d) per output column (a key tile,
    // KN | 128 tokens from the sequence start, lies in one 128-token descale block).
    float v_tile = 1.0f;
    if constexpr (kScales == ScaleKind::per_token) {
      if (threadIdx.x < KN) {
        const int64_t j = j0 + threadIdx.x;
        sk_scale[threadIdx.x] = j < s.length ? f.k_descale[f.k.group(b, s.start + j, j, head, 0)] : 0.0f;
      }
      for (int d = threadIdx.x; d < D; d += kThreads)
        sv_scale[d] = f.v_descale[f.v.group(b, s.start + j0, j0, head, d)];
    } else if constexpr (kScales == ScaleKind::per_block) {
      score_scale = q_scale * f.k_descale[f.k.group(b, s.start + j0, j0, head, 0)];
      v_tile = f.v_descale[f.v.group(b, s.start + j0, j0, head, 0)];
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
    for (int kk = 0; kk < D / kMmaK; ++kk) {
      uint32_t af[M][4];
#pragma unroll
      for (int m = 0; m < M; ++m) load_a_fp8<row_bytes<D>()>(af[m], sq, warp_row0 + 16 * m, kk * kMmaK);
#pragma unroll
      for (int n = 0; n < KN / 16; ++n) {
        uint32_t bf[4];
        load_b_fp8<row_bytes<D>()>(bf, sk, n * 16, kk * kMmaK);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          mma_e4m3(p[m][2 * n], af[m], bf[0], bf[1]);
          mma_e4m3(p[m][2 * n + 1], af[m], bf[2], bf[3]);
        }
      }
    }
    const bool full = warp_cols.fully_attended(j0, j1);
    // P (masked), then per row (g and g + 8 of each 16-row block) the power-of-two scale of its
    // tile maximum, and P rounded to e4m3 in the A fragments of P v8.
    uint32_t pa[M][kSteps][4];
    float row_inv[M][2];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const hstu::RowPairMask row_mask =
          full ? hstu::RowPairMask() : hstu::RowPairMask(s.rule, i0 + warp_row0 + 16 * m + lane / 4);
      float amax[2] = {0.0f, 0.0f};
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
          if (!full) {
            const int64_t i = i0 + warp_row0 + 16 * m + lane / 4 + (e / 2) * 8;
            const int64_t j = j0 + n * 8 + 2 * (lane % 4) + e % 2;
            if (!row_mask.allowed(s.rule, e / 2, i, j)) p_ij = 0.0f;
          }
          p[m][n][e] = p_ij;
          amax[e / 2] = fmaxf(amax[e / 2], fabsf(p_ij));
        }
      }
      float row_scale[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // The four lanes of a quad hold one row's columns.
        amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 1));
        amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 2));
        row_scale[h] = p_scale_of(amax[h], row_inv[m][h]);
        if constexpr (kScales == ScaleKind::per_block) row_inv[m][h] *= v_tile;
      }
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        // Register r: rows g (r even) / g + 8 (r odd), 16-key half r / 2; low 16 bits from the
        // half's first 8-key block, high 16 bits from its second.
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float(&lo)[4] = p[m][4 * step + 2 * (r / 2)];
          const float(&hi)[4] = p[m][4 * step + 2 * (r / 2) + 1];
          const int e = 2 * (r % 2);
          const float sc = row_scale[r % 2];
          pa[m][step][r] = e4m3x2(lo[e] * sc, lo[e + 1] * sc) | e4m3x2(hi[e] * sc, hi[e + 1] * sc) << 16u;
        }
      }
    }
    // O += (P8 V8) / r (times dv): 16 output columns at a time into a fresh f32 tile result, so
    // only 8 result registers per row block are live next to O.
    const uint8_t* vt = svt;
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      float c[M][2][4];
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int e = 0; e < 4; ++e) c[m][0][e] = c[m][1][e] = 0.0f;
      }
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        uint32_t bf[4];
        load_b_fp8<vt_row_bytes<D>()>(bf, vt, n * 16, step * kMmaK);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          mma_e4m3(c[m][0], pa[m][step], bf[0], bf[1]);
          mma_e4m3(c[m][1], pa[m][step], bf[2], bf[3]);
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float2 col{};
        if constexpr (kScales == ScaleKind::per_token) {
          col = *reinterpret_cast<const float2*>(sv_scale + n * 16 + half * 8 + 2 * (lane % 4));
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float sc = row_inv[m][e / 2];
            if constexpr (kScales == ScaleKind::per_token) sc *= e % 2 ? col.y : col.x;
            o[m][2 * n + half][e] = fmaf(c[m][half][e], sc, o[m][2 * n + half][e]);
          }
        }
      }
    }
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
