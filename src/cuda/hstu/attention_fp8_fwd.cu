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
// P v in e4m3 (as FA3's FP8 forward, but HSTU's P has no softmax maximum to bound it): each
// query row keeps a scale r_i = 2^k_i, the power of two that puts the row's running maximum of
// |p_ij| (over the key tiles visited so far) in [128, 256), below e4m3's 448, so nothing
// saturates. P r_i is rounded to e4m3 and the MMAs accumulate P8 v8 straight into O, which is
// held in the units of the current scales (as FlashAttention's online softmax holds O in those
// of its running maximum): O_i = r_i sum_j p_ij v8_j dv(j) / dv_cur. When a sub-tile raises a
// row's maximum past 256 / r_i, r_i drops to the new power of two and the row of O is
// multiplied by r_new / r_old (exact: powers of two); where v's descale varies along the keys
// (mode 1 per (128-token block, dim), mode 2 per block) and the loaded key tile enters a new
// block, O is multiplied by dv_old / dv_new (per column in mode 1; __fdividef, a few f32 ulps
// per block). The output is O / r_i times dv_cur (and 1 / N). The only new error is P's e4m3
// rounding: at most 2^-4 of |p_ij| (3 mantissa bits), 2^-10 / r_i absolute in e4m3's subnormal
// range (values under 2^-14 of the row's running maximum). The CPU emulation does not quantize
// P: tests/cpp/hstu_fp8_cuda_test.cpp's header gives the tolerance this implies.
//
// Tiles (FwdTiles; D = 128: 8 warps of 16 rows, two blocks per SM under a 128-register cap, as
// the 16-bit forward): a block owns 128 query rows of one (sequence, head). Shared memory: Q8
// [128][D + 16] bytes, two stages of K8 and V8 [kStepRows][D + 16] bytes (cp.async, 16-byte
// padded rows so ldmatrix rows hit distinct banks), V8^T [D][kStepRows + 16] bytes (the current
// stage transposed, see below), and the f32 descales of the q rows (times alpha), of the current
// stage's key columns and of its v dims with their ratios to the previous block's (mode 1;
// registers are taken by O). Per loaded key tile (kStepRows keys): wait for its copies, barrier,
// issue the next tile's copies, V8 -> V8^T and the tile's descales, barrier, O rescaled if v's
// descale block changed; then per sub-tile of kKeyRows keys: mask bits (before the MMAs,
// so the mask arithmetic is not live next to S and O), S = Q8 K8^T (k = 32 bytes along D;
// ldmatrix.b16 reads a pair of e4m3 as one element, which is exactly the e4m3 fragment layout),
// descales, silu, mask, per-row scale (rescaling O when it drops), P -> e4m3 A fragments,
// O += P8 V8. Blocks run heaviest first (sequence_longest_first). Loop-invariant state that
// would sit next to O (column hulls, descale addresses) is read back from shared memory.
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
using hstu::Operand;

// Where the descales vary, which fixes where the kernel applies them:
//   per_token (mode 1): dq per row and dk per column of S, dv per (128-token block, dim), i.e. per
//     output column within a descale block (all three from shared memory);
//   per_block (mode 2): dq per 128-row query tile, dk and dv per loaded key tile (inside one
//     block): alpha dq dk scales S, dv scales O per block;
//   per_sequence (modes 0, 3, 4, 5): constants of the (sequence, head): alpha dq dk scales S and
//     dv / N the output.
enum class ScaleKind { per_sequence, per_block, per_token };
constexpr int kRowPad = 16;         // bytes
constexpr int kMmaK = 32;           // e4m3 m16n8k32: keys per P v8 step, bytes of D per q k^T step
constexpr int kDescaleBlock = 128;  // tokens of mode 1's transposed v descale block

// A forward tile shape: WARPS warps of ROW_BLOCKS 16-row MMA blocks own the block's 128 query
// rows; S is computed KEY_ROWS keys at a time, SUB_TILES of those per loaded (and barriered) key
// tile; MIN_BLOCKS is the occupancy asked of ptxas (its register cap).
template <int WARPS, int ROW_BLOCKS, int KEY_ROWS, int SUB_TILES, int MIN_BLOCKS>
struct FwdTiles {
  static constexpr int kThreads = WARPS * 32, kRowBlocks = ROW_BLOCKS;
  static constexpr int kKeyRows = KEY_ROWS, kSubTiles = SUB_TILES, kStepRows = KEY_ROWS * SUB_TILES;
  static constexpr int kMinBlocks = MIN_BLOCKS, kQueryRows = WARPS * 16 * ROW_BLOCKS;
  static_assert(KEY_ROWS % kMmaK == 0 && kDescaleBlock % kStepRows == 0, "key tiles inside a descale block");
  template <int D>
  static constexpr int row_bytes() {
    return D + kRowPad;
  }
  static constexpr int vt_row_bytes() { return kStepRows + kRowPad; }
  // Q8, two stages of K8 and V8, V8^T, then the f32 q-row, k-column, v-dim descales and the
  // v-dim ratios to the previous block's.
  template <int D>
  static constexpr size_t smem_bytes() {
    return static_cast<size_t>(kQueryRows + 4 * kStepRows) * row_bytes<D>() + static_cast<size_t>(D) * vt_row_bytes() +
           static_cast<size_t>(kQueryRows + kStepRows + 2 * D) * sizeof(float);
  }
};

// D = 128: the 16-bit forward's shape (8 warps x 16 rows, 32-key sub-tiles, two per loaded
// tile, two blocks per SM). D = 64: 4 warps x 32 rows, 64-key sub-tiles (the 16-bit Tiles64).
using Tiles128 = FwdTiles<8, 1, 32, 2, 2>;
using Tiles64 = FwdTiles<4, 2, 64, 2, 1>;

// Rows [row0, row0 + ROWS) of one head of an e4m3 operand into smem (row stride STRIDE bytes);
// rows at or beyond rows_valid are zero-filled. One cp.async group.
template <int ROWS, int D, int STRIDE>
__device__ __forceinline__ void load_fp8_tile_async(uint8_t* smem, const Operand& x, int64_t start, int head,
                                                    int64_t row0, int64_t rows_valid) {
  constexpr int kChunksPerRow = D / 16;
  const uint8_t* base = static_cast<const uint8_t*>(x.data) + head * x.head_stride;
  for (int c = threadIdx.x; c < ROWS * kChunksPerRow; c += blockDim.x) {
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * 16;
    const bool valid = row0 + r < rows_valid;
    const uint8_t* src = valid ? base + (start + row0 + r) * x.token_stride + col : base;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(hstu::smem_address(smem + r * STRIDE + col)),
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
// lo in the low byte.
__device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
  return static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3));
}

// The per-row P scale: r = 2^k with amax * r < 2^8 (amax < 2^(e - 126) for biased exponent e),
// k clamped to [-121, 126] so that r and 1 / r are normal f32; amax = 0 gives 2^126.
__device__ __forceinline__ float p_scale_of(float amax) {
  const int e = static_cast<int>((__float_as_uint(amax) >> 23) & 0xff);
  return __int_as_float((127 + min(134 - e, 126)) << 23);
}
// 1 / r of such a scale, exactly and without a division (whose slow path is a call that
// spills next to O): the biased exponent 127 + k becomes 127 - k.
__device__ __forceinline__ float p_scale_inverse(float r) { return __int_as_float(0x7F000000 - __float_as_int(r)); }
constexpr float kPScaledMax = 256.0f;  // |p| r stays below this (e4m3's largest finite is 448)

// V8 of a loaded key tile [ROWS][row stride] -> V8^T [D][ROWS + 16], the keys of each 32-key
// group in the order of P's A fragments (see the top): position 16 h + 4 t + 2 hi + lo holds key
// 16 h + 8 hi + 2 t + lo. A unit is 4 positions x 4 dims: four 32-bit reads (one per key, 4
// dims each), a 4 x 4 byte transpose in 8 byte permutes, four 32-bit writes (one per dim).
template <int ROWS, int D, int THREADS, int V_STRIDE, int VT_STRIDE>
__device__ __forceinline__ void transpose_v(uint8_t* vt, const uint8_t* v8) {
  constexpr int kPositionQuads = ROWS / 4;
  for (int c = threadIdx.x; c < kPositionQuads * (D / 4); c += THREADS) {
    const int quad = c % kPositionQuads;  // positions 4 quad .. 4 quad + 3
    const int d = (c / kPositionQuads) * 4;
    const int group = quad / 8, half = (quad / 4) % 2, t = quad % 4;
    const int key = 32 * group + 16 * half + 2 * t;  // the keys: key, key + 1, key + 8, key + 9
    const uint32_t r0 = *reinterpret_cast<const uint32_t*>(v8 + key * V_STRIDE + d);
    const uint32_t r1 = *reinterpret_cast<const uint32_t*>(v8 + (key + 1) * V_STRIDE + d);
    const uint32_t r2 = *reinterpret_cast<const uint32_t*>(v8 + (key + 8) * V_STRIDE + d);
    const uint32_t r3 = *reinterpret_cast<const uint32_t*>(v8 + (key + 9) * V_STRIDE + d);
    const uint32_t t0 = __byte_perm(r0, r1, 0x5140);  // r0.b0 r1.b0 r0.b1 r1.b1
    const uint32_t t1 = __byte_perm(r0, r1, 0x7362);  // r0.b2 r1.b2 r0.b3 r1.b3
    const uint32_t t2 = __byte_perm(r2, r3, 0x5140);
    const uint32_t t3 = __byte_perm(r2, r3, 0x7362);
    uint8_t* dst = vt + d * VT_STRIDE + 4 * quad;
    *reinterpret_cast<uint32_t*>(dst) = __byte_perm(t0, t2, 0x5410);  // dim d: r0.b0 r1.b0 r2.b0 r3.b0
    *reinterpret_cast<uint32_t*>(dst + VT_STRIDE) = __byte_perm(t0, t2, 0x7632);
    *reinterpret_cast<uint32_t*>(dst + 2 * VT_STRIDE) = __byte_perm(t1, t3, 0x5410);
    *reinterpret_cast<uint32_t*>(dst + 3 * VT_STRIDE) = __byte_perm(t1, t3, 0x7632);
  }
}

// The index of the sequence starting at `start` that holds tokens (the last b with
// seq_offsets[b] <= start: empty sequences before it share its start), for the descale lookups.
__device__ __forceinline__ int64_t sequence_index(const Args& a, int64_t start) {
  const Jagged j{a.index.seq_offsets, a.index.seq_offsets_stride, a.index.seq_offsets_i64, a.batch};
  return j.sequence_of(start);
}

template <class T, int D, ScaleKind kScales, class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) attention_fp8_fwd_kernel(Args a, Fp8Operands f) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kKeyRows = C::kKeyRows;
  constexpr int kStepRows = C::kStepRows;
  constexpr int kRow = C::template row_bytes<D>();
  constexpr int kVtRow = C::vt_row_bytes();
  constexpr int kTile8 = kStepRows * kRow;
  constexpr int M = C::kRowBlocks;
  constexpr int kSteps = kKeyRows / kMmaK;  // P v8 k-steps per sub-tile
  uint8_t* const sq = smem_raw;
  uint8_t* const skv = sq + C::kQueryRows * kRow;                      // stage s: K8 at skv + 2 s kTile8, V8 after it
  uint8_t* const svt = skv + 4 * kTile8;                               // V8^T of the current stage
  float* const sq_scale = reinterpret_cast<float*>(svt + D * kVtRow);  // [kQueryRows], per_token
  float* const sk_scale = sq_scale + C::kQueryRows;                    // [kStepRows], per_token
  float* const sv_scale = sk_scale + kStepRows;                        // [D], per_token
  float* const sv_ratio = sv_scale + D;                                // [D], per_token

  int head;
  const hstu::Sequence s = hstu::sequence_longest_first(a, /*reverse_tiles=*/true, head);
  const int64_t i0 = static_cast<int64_t>(s.tile) * C::kQueryRows;
  if (i0 >= s.length) return;
  const int64_t b = sequence_index(a, s.start);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_row0 = warp * 16 * M;

  // The block's and the warps' column hulls go to shared memory (published by share_rule's
  // barrier), read back per key tile: 12 registers less next to O at D = 128.
  __shared__ hstu::TileColumns shared_cols, shared_warp_cols[C::kThreads / 32];
  {
    const hstu::TileColumns block_cols = hstu::tile_columns(s.rule, i0, min(i0 + C::kQueryRows, s.length));
    const hstu::TileColumns own_cols =
        hstu::tile_columns(s.rule, min(i0 + warp_row0, s.length), min(i0 + warp_row0 + 16 * M, s.length));
    if (threadIdx.x == 0) shared_cols = block_cols;
    if (lane == 0) shared_warp_cols[warp] = own_cols;
  }
  const hstu_mask::Rule& shared_rule = hstu::share_rule(s.rule);
  const hstu::TileColumns& cols = shared_cols;
  const hstu::TileColumns& warp_cols = shared_warp_cols[warp];
  load_fp8_tile_async<C::kQueryRows, D, kRow>(sq, a.q, s.start, head, i0, s.length);

  // Descales (see ScaleKind). per_token: alpha dq(i) per row of the tile (0 past the end: those
  // rows are dropped), read back per score from shared memory rather than held next to O.
  // per_block: alpha dq of the query tile here, dk and dv per key tile below. per_sequence: all
  // three are constants of the (sequence, head): alpha dq dk scales S, dv / N scales O at the end.
  // per_token / per_block: the k and v descales of the sequence's first token (block), kept in
  // shared memory so that their 64-bit addresses hold no registers through the key loop. The
  // layouts (fp8_quantize.cuh's Scheme) are linear from there: mode 1 k rows + j, v transposed
  // + block * H * D + d; mode 2 + j / block_size.
  __shared__ const float* descale_base[2];
  if (kScales != ScaleKind::per_sequence && threadIdx.x == 0) {
    descale_base[0] = f.k_descale + f.k.group(b, s.start, 0, head, 0);
    descale_base[1] = f.v_descale + f.v.group(b, s.start, 0, head, 0);
  }
  float q_scale = a.alpha, score_scale = a.alpha, out_scale = a.inv_scaling;
  if constexpr (kScales == ScaleKind::per_token) {
    for (int r = threadIdx.x; r < C::kQueryRows; r += C::kThreads) {
      const int64_t i = i0 + r;
      sq_scale[r] = i < s.length ? a.alpha * f.q_descale[f.q.group(b, s.start + i, i, head, 0)] : 0.0f;
    }
  } else {
    q_scale = a.alpha * f.q_descale[f.q.group(b, s.start + i0, i0, head, 0)];
    if constexpr (kScales == ScaleKind::per_sequence) {
      score_scale = q_scale * f.k_descale[f.k.group(b, s.start, 0, head, 0)];
      out_scale = a.inv_scaling * f.v_descale[f.v.group(b, s.start, 0, head, 0)];
    }
  }

  // Key positions are 32-bit (the API keeps L below 2^31), as in the 16-bit forward.
  const int length = static_cast<int>(s.length), start = static_cast<int>(s.start), row_begin = static_cast<int>(i0);
  const int j_begin = min(cols.begin[0], cols.begin[1]) / kStepRows * kStepRows;
  const int j_end = max(cols.end[0], cols.end[1]);
  auto next_tile = [&](int j0) {
    for (; j0 < j_end; j0 += kStepRows) {
      if (j0 >= cols.end[0] && j0 + kStepRows <= cols.begin[1]) j0 = cols.begin[1] / kStepRows * kStepRows;
      if (cols.touches(j0, min(j0 + kStepRows, length))) return j0;
    }
    return j_end;
  };
  auto load_kv = [&](int j0, int stage) {
    load_fp8_tile_async<kStepRows, D, kRow>(skv + 2 * stage * kTile8, a.k, start, head, j0, length);
    load_fp8_tile_async<kStepRows, D, kRow>(skv + (2 * stage + 1) * kTile8, a.v, start, head, j0, length);
  };

  // O in the units of the current scales (see the top): row scales r (2 per row block: rows g
  // and g + 8) and, in mode 2, v's descale dv_cur of the current block (mode 1's per-dim ones
  // are sv_scale).
  float o[M][D / 8][4];
  float r[M][2];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    r[m][0] = r[m][1] = p_scale_of(0.0f);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
  }
  float v_block_scale = 1.0f;  // per_block: dv_cur
  int v_block = -1;            // per_token / per_block: the descale block of the last loaded tile

  int j0 = j_begin < j_end ? next_tile(j_begin) : j_end;
  if (j0 < j_end) load_kv(j0, 0);
  for (int stage = 0; j0 < j_end; stage ^= 1) {
    hstu::wait_async_all();  // this tile's K8, V8 (and Q): the only copies in flight
    // Every copy has landed and every warp is past the previous tile, so the other stage, V8^T
    // and the column descales are free: the next tile's copies overlap this tile's staging and MMAs.
    __syncthreads();
    const int j_next = next_tile(j0 + kStepRows);
    if (j_next < j_end) load_kv(j_next, stage ^ 1);
    const uint8_t* sk_stage = skv + 2 * stage * kTile8;
    transpose_v<kStepRows, D, C::kThreads, kRow, kVtRow>(svt, sk_stage + kTile8);

    // Loaded-tile descales: a loaded tile (kStepRows | the block size, from the sequence start)
    // lies in one descale block of k and v. per_token: dk per column; dv(block, d) and its ratio
    // to the previous block's when the block changes.
    bool new_v_block = false;
    if constexpr (kScales != ScaleKind::per_sequence) {
      const int block = j0 / f.v.block_size;
      new_v_block = v_block >= 0 && block != v_block;
      const bool first = v_block < 0 || new_v_block;
      v_block = block;
      if constexpr (kScales == ScaleKind::per_token) {
        for (int c = threadIdx.x; c < kStepRows; c += C::kThreads) {
          const int j = j0 + c;
          sk_scale[c] = j < length ? descale_base[0][j] : 0.0f;
        }
        if (first) {
          const float* v_descale = descale_base[1] + block * f.v.heads * D;
          for (int d = threadIdx.x; d < D; d += C::kThreads) {
            const float dv = v_descale[d];
            if (new_v_block) sv_ratio[d] = __fdividef(sv_scale[d], dv);
            sv_scale[d] = dv;
          }
        }
      } else {
        score_scale = q_scale * descale_base[0][j0 / f.k.block_size];
        if (first) {
          const float dv = descale_base[1][block];
          if (new_v_block) {
            const float ratio = __fdividef(v_block_scale, dv);
#pragma unroll
            for (int m = 0; m < M; ++m) {
#pragma unroll
              for (int n = 0; n < D / 8; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) o[m][n][e] *= ratio;
              }
            }
          }
          v_block_scale = dv;
        }
      }
    }
    __syncthreads();
    if constexpr (kScales == ScaleKind::per_token) {
      if (new_v_block) {
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          const float2 ratio = *reinterpret_cast<const float2*>(sv_ratio + n * 8 + 2 * (lane % 4));
#pragma unroll
          for (int m = 0; m < M; ++m) {
#pragma unroll
            for (int e = 0; e < 4; ++e) o[m][n][e] *= e % 2 ? ratio.y : ratio.x;
          }
        }
      }
    }

#pragma unroll 1
    for (int sub = 0; sub < C::kSubTiles; ++sub) {
      const int js = j0 + sub * kKeyRows;
      const int js1 = min(js + kKeyRows, length);
      if (js >= js1 || !warp_cols.touches(js, js1)) continue;
      const uint8_t* sk = sk_stage + sub * kKeyRows * kRow;
      const bool full = warp_cols.fully_attended(js, js1);
      uint32_t allowed[M];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        allowed[m] = ~0u;
        if (!full) {
          // The row index is opaque to the optimiser: otherwise it hoists the rows' mask intervals
          // (loop-invariant) out of the key loop, and holding them next to O made ptxas spill.
          int64_t row0 = row_begin + warp_row0 + 16 * m;
          asm volatile("" : "+l"(row0));
          allowed[m] = hstu::mask_bits<kKeyRows>(shared_rule, row0, js);
        }
      }
      float p[M][kKeyRows / 8][4];
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int n = 0; n < kKeyRows / 8; ++n) p[m][n][0] = p[m][n][1] = p[m][n][2] = p[m][n][3] = 0.0f;
      }
#pragma unroll
      for (int kk = 0; kk < D / kMmaK; ++kk) {
        uint32_t af[M][4];
#pragma unroll
        for (int m = 0; m < M; ++m) load_a_fp8<kRow>(af[m], sq, warp_row0 + 16 * m, kk * kMmaK);
#pragma unroll
        for (int n = 0; n < kKeyRows / 16; ++n) {
          uint32_t bf[4];
          load_b_fp8<kRow>(bf, sk, n * 16, kk * kMmaK);
#pragma unroll
          for (int m = 0; m < M; ++m) {
            mma_e4m3(p[m][2 * n], af[m], bf[0], bf[1]);
            mma_e4m3(p[m][2 * n + 1], af[m], bf[2], bf[3]);
          }
        }
      }
      // P (masked) and each row's sub-tile maximum; where it reaches 256 / r, the row's scale
      // drops to that of the new maximum and its O follows (rare: the running maximum only grows).
      bool rescale = false;
      float r_new[M][2];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float amax[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < kKeyRows / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = p[m][n][e] * score_scale;
            if constexpr (kScales == ScaleKind::per_token) {
              x = p[m][n][e] * sq_scale[warp_row0 + 16 * m + lane / 4 + (e / 2) * 8] *
                  sk_scale[sub * kKeyRows + n * 8 + 2 * (lane % 4) + e % 2];
            }
            const float p_ij = allowed[m] >> (4 * n + e) & 1u ? hstu::silu(x) : 0.0f;
            p[m][n][e] = p_ij;
            amax[e / 2] = fmaxf(amax[e / 2], fabsf(p_ij));
          }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // The four lanes of a quad hold one row's columns.
          amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 1));
          amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 2));
          const bool grows = amax[h] * r[m][h] >= kPScaledMax;
          r_new[m][h] = grows ? p_scale_of(amax[h]) : r[m][h];
          rescale |= grows;
        }
      }
      if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
        for (int m = 0; m < M; ++m) {
          // Powers of two: the ratio and the products are exact.
          const float ratio[2] = {r_new[m][0] * p_scale_inverse(r[m][0]), r_new[m][1] * p_scale_inverse(r[m][1])};
#pragma unroll
          for (int n = 0; n < D / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) o[m][n][e] *= ratio[e / 2];
          }
        }
      }
      // P r rounded to e4m3 in the A fragments of P v8.
      uint32_t pa[M][kSteps][4];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        r[m][0] = r_new[m][0];
        r[m][1] = r_new[m][1];
#pragma unroll
        for (int step = 0; step < kSteps; ++step) {
          // Register q: rows g (q even) / g + 8 (q odd), 16-key half q / 2; low 16 bits from the
          // half's first 8-key block, high 16 bits from its second.
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const float(&lo)[4] = p[m][4 * step + 2 * (q / 2)];
            const float(&hi)[4] = p[m][4 * step + 2 * (q / 2) + 1];
            const int e = 2 * (q % 2);
            const float sc = r[m][q % 2];
            pa[m][step][q] = e4m3x2(lo[e] * sc, lo[e + 1] * sc) | e4m3x2(hi[e] * sc, hi[e + 1] * sc) << 16u;
          }
        }
      }
      const uint8_t* vt = svt + sub * kKeyRows;
#pragma unroll
      for (int n = 0; n < D / 16; ++n) {
#pragma unroll
        for (int step = 0; step < kSteps; ++step) {
          uint32_t bf[4];
          load_b_fp8<kVtRow>(bf, vt, n * 16, step * kMmaK);
#pragma unroll
          for (int m = 0; m < M; ++m) {
            mma_e4m3(o[m][2 * n], pa[m][step], bf[0], bf[1]);
            mma_e4m3(o[m][2 * n + 1], pa[m][step], bf[2], bf[3]);
          }
        }
      }
    }
    j0 = j_next;
  }
  hstu::wait_async_all();  // Q, when no key tile was visited
  // Back from the current units: O / r times dv_cur (per dim in mode 1: sv_scale holds the last
  // loaded tile's block; no tile, no block, and O is 0).
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    float2 col = make_float2(v_block_scale, v_block_scale);
    if constexpr (kScales == ScaleKind::per_token) {
      if (v_block >= 0) col = *reinterpret_cast<const float2*>(sv_scale + n * 8 + 2 * (lane % 4));
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[m][n][e] *= p_scale_inverse(r[m][e / 2]) * (e % 2 ? col.y : col.x);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    hstu::store_rows<D, T>(a.out_or_dout, start, head, row_begin + warp_row0 + 16 * m, length, o[m], out_scale);
  }
}

template <class T, int D, ScaleKind kScales, class C>
void launch(Args a, const Fp8Operands& f, int64_t heads, cudaStream_t stream) {
  const size_t smem = C::template smem_bytes<D>();
  const auto kernel = attention_fp8_fwd_kernel<T, D, kScales, C>;
  SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid = hstu::grid_longest_first(a, heads, C::kQueryRows);
  kernel<<<grid, C::kThreads, smem, stream>>>(a, f);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

template <class T, int D, class C>
void launch_for_mode(const Args& a, const Fp8Operands& f, int64_t heads, cudaStream_t stream) {
  switch (f.q.mode) {
    case 1:
      // v's transposed copy: one descale per (block, head, dim); a loaded key tile must not straddle blocks.
      SEQMIX_CHECK(f.v.block_size % C::kStepRows == 0, "hstu FP8 forward: quant_mode 1 v block size ", f.v.block_size,
                   " does not line up with the kernel's ", C::kStepRows, "-key tiles");
      return launch<T, D, ScaleKind::per_token, C>(a, f, heads, stream);
    case 2:
      // Descale blocks line up with the tiles: one q block per query tile, loaded key tiles inside a k/v block.
      SEQMIX_CHECK(
          f.q.block_size == C::kQueryRows && f.k.block_size % C::kStepRows == 0 && f.v.block_size % C::kStepRows == 0,
          "hstu FP8 forward: quant_mode 2 block sizes (", f.q.block_size, ", ", f.k.block_size,
          ") do not line up with the kernel's tiles");
      return launch<T, D, ScaleKind::per_block, C>(a, f, heads, stream);
    default:
      return launch<T, D, ScaleKind::per_sequence, C>(a, f, heads, stream);
  }
}

}  // namespace

// The dispatch table: dtype x head dim -> instance (the API has validated the combination).
void launch_attention_fp8_fwd(const Args& a, const Fp8Operands& f, DType dtype, int64_t heads, int64_t head_dim,
                              cudaStream_t stream) {
  const bool bf16 = dtype == DType::bf16;
  if (head_dim == 64) {
    return bf16 ? launch_for_mode<__nv_bfloat16, 64, Tiles64>(a, f, heads, stream)
                : launch_for_mode<__half, 64, Tiles64>(a, f, heads, stream);
  }
  return bf16 ? launch_for_mode<__nv_bfloat16, 128, Tiles128>(a, f, heads, stream)
              : launch_for_mode<__half, 128, Tiles128>(a, f, heads, stream);
}

}  // namespace seqmix::cuda::hstu_fp8
