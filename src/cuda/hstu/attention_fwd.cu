// HSTU attention forward (FlashAttention-2-style tiling, no softmax).
//
// Math, per sequence of n tokens and head h (the CPU reference, src/cpu/hstu/attention.cpp):
//   s_ij = alpha q_i . k_j,   p_ij = M_ij silu(s_ij),   o_i = (1 / N) sum_j p_ij v_j
// 1 / N is applied once to the f32 accumulator, so P keeps full 16-bit precision even in f16
// (silu(s) / 4096 would sit in f16's subnormal range).
//
// Tiles (FwdTiles; D = 128: 8 warps of 16 rows): a block owns 128 query rows of one (sequence,
// head). Shared memory holds Q [128][D] and two stages of K, V [64][D] (rows padded by 16 bytes):
// one barrier per 64 keys publishes a stage and frees the other, whose cp.async prefetch then
// runs under the compute. Each loaded tile is multiplied as two 32-key sub-tiles so that S (16 x
// 32 per warp, f32) and O (16 x D, f32) fit the 128-register cap of two blocks per SM. Per
// sub-tile:
//   mask bits (before the MMAs, so the mask arithmetic is not live next to S and O) ->
//   S = Q K^T (mma m16n8k16) -> P = silu(alpha S), masked -> packed to 16 bits in registers ->
//   O += P V.
// Key tiles outside the mask's column hull of the query tile are never visited; a warp skips the
// sub-tiles outside its own rows' hull, and sub-tiles inside the run every row of the warp
// attends skip the mask. Blocks run heaviest first (sequence_longest_first). Narrow SLA bands at
// D = 128 use 64-row blocks of 4 warps and one 32-key sub-tile per barrier (Tiles128Band).
#include "cuda/common/cuda_check.h"
#include "cuda/hstu/attention.h"
#include "cuda/hstu/attention_tile.cuh"

namespace seqmix::cuda {
namespace hstu {
namespace {

constexpr int kKvStages = 2;

// A forward tile shape: WARPS warps of ROW_BLOCKS 16-row MMA blocks each own the block's query
// rows; S is computed KEY_ROWS keys at a time, SUB_TILES of those per loaded (and barriered) key
// tile; MIN_BLOCKS is the occupancy asked of ptxas (its register cap).
template <int WARPS, int ROW_BLOCKS, int KEY_ROWS, int SUB_TILES, int MIN_BLOCKS>
struct FwdTiles {
  static constexpr int kThreads = WARPS * 32, kRowBlocks = ROW_BLOCKS;
  static constexpr int kKeyRows = KEY_ROWS, kSubTiles = SUB_TILES, kStepRows = KEY_ROWS * SUB_TILES;
  static constexpr int kMinBlocks = MIN_BLOCKS, kQueryRows = WARPS * 16 * ROW_BLOCKS;
  template <int D>
  static constexpr size_t smem_elements() {
    return static_cast<size_t>(kQueryRows + 2 * kKvStages * kStepRows) * SmemRow<D>::kStride;
  }
};

template <class T, int D, class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) attention_fwd_kernel(Args a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kKeyRows = C::kKeyRows;
  constexpr int kStepRows = C::kStepRows;
  constexpr int kTile = kStepRows * SmemRow<D>::kStride;
  constexpr int M = C::kRowBlocks;
  T* const sq = reinterpret_cast<T*>(smem_raw);
  T* const skv = sq + C::kQueryRows * SmemRow<D>::kStride;  // stage s: K at skv + 2 s kTile, V after it

  int head;
  const Sequence s = sequence_longest_first(a, /*reverse_tiles=*/true, head);
  const int64_t i0 = static_cast<int64_t>(s.tile) * C::kQueryRows;
  if (i0 >= s.length) return;
  const int warp = threadIdx.x / 32;
  const int warp_row0 = warp * 16 * M;

  const hstu_mask::Rule& shared_rule = share_rule(s.rule);
  load_tile_async<C::kQueryRows, D>(sq, a.q, s.start, head, i0, s.length);
  const TileColumns cols = tile_columns(s.rule, i0, min(i0 + C::kQueryRows, s.length));
  // This warp's own rows: it skips the MMAs of key sub-tiles they do not touch (the diagonal of
  // a causal block, the SLA window of history rows in a block that also holds targets).
  const TileColumns warp_cols =
      tile_columns(s.rule, min(i0 + warp_row0, s.length), min(i0 + warp_row0 + 16 * M, s.length));

  // The key tiles to visit: those touching the hull, in order.
  const int j_begin = min(cols.begin[0], cols.begin[1]) / kStepRows * kStepRows;
  const int j_end = max(cols.end[0], cols.end[1]);
  // Key positions are 32-bit (the API keeps L below 2^31): 64-bit loop state cost spills.
  const int length = static_cast<int>(s.length);
  auto next_tile = [&](int j0) {
    for (; j0 < j_end; j0 += kStepRows) {
      // Jump the gap between the two column ranges (SLA: global prefix, local window).
      if (j0 >= cols.end[0] && j0 + kStepRows <= cols.begin[1]) j0 = cols.begin[1] / kStepRows * kStepRows;
      if (cols.touches(j0, min(j0 + kStepRows, length))) return j0;
    }
    return j_end;
  };
  auto load_kv = [&](int j0, int stage) {
    load_tile_async<kStepRows, D>(skv + 2 * stage * kTile, a.k, s.start, head, j0, s.length);
    load_tile_async<kStepRows, D>(skv + (2 * stage + 1) * kTile, a.v, s.start, head, j0, s.length);
  };

  float o[M][D / 8][4];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
  }

  int j0 = j_begin < j_end ? next_tile(j_begin) : j_end;
  if (j0 < j_end) load_kv(j0, 0);
  const float half_alpha = 0.5f * a.alpha;
  for (int stage = 0; j0 < j_end; stage ^= 1) {
    // One barrier per key tile: it publishes this stage's K and V (and Q) and proves every warp
    // has left the previous tile, whose stage the prefetch below overwrites.
    wait_async_all();
    __syncthreads();
    const int j_next = next_tile(j0 + kStepRows);
    if (j_next < j_end) load_kv(j_next, stage ^ 1);

#pragma unroll 1
    for (int sub = 0; sub < C::kSubTiles; ++sub) {
      const int js = j0 + sub * kKeyRows;
      const int js1 = min(js + kKeyRows, length);
      if (js >= js1 || !warp_cols.touches(js, js1)) continue;
      const T* sk = skv + 2 * stage * kTile + sub * kKeyRows * SmemRow<D>::kStride;
      const T* sv = sk + kTile;
      const bool full = warp_cols.fully_attended(js, js1);
      uint32_t allowed[M];
#pragma unroll
      for (int m = 0; m < M; ++m)
        allowed[m] = full ? ~0u : mask_bits<kKeyRows>(shared_rule, i0 + warp_row0 + 16 * m, js);
      float p[M][kKeyRows / 8][4];
      gemm_abt<D, kKeyRows, M, T>(p, sq, warp_row0, sk);
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int n = 0; n < kKeyRows / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float p_ij = silu_of_half(half_alpha * p[m][n][e]);
            p[m][n][e] = allowed[m] >> (4 * n + e) & 1u ? p_ij : 0.0f;
          }
        }
      }
      gemm_ab_acc<D, kKeyRows, M, T>(o, p, sv);
    }
    j0 = j_next;
  }
  wait_async_all();  // Q, when no key tile was visited
#pragma unroll
  for (int m = 0; m < M; ++m) {
    store_rows<D, T>(a.out_or_dout, s.start, head, i0 + warp_row0 + 16 * m, s.length, o[m], a.inv_scaling);
  }
}

template <class T, int D, class C>
void launch_fwd(Args a, int64_t heads, cudaStream_t stream) {
  const size_t smem = C::template smem_elements<D>() * sizeof(T);
  SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_kernel<T, D, C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
  const dim3 grid = grid_longest_first(a, heads, C::kQueryRows);
  attention_fwd_kernel<T, D, C><<<grid, C::kThreads, smem, stream>>>(a);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

// D = 128: 8 warps of 16 rows under a 128-register cap, two blocks (16 warps) per SM. Measured on
// the H100 against 4 warps of 32 rows (each K / V fragment feeding two MMAs, 242 registers, 8
// warps per SM): 1.05-1.1x faster at max_len 1024 and 1.2-1.25x on SLA, 0.9-0.95x on causal masks
// at 4096-8192; 64-row blocks of 4 warps (four per SM) and 64-key sub-tiles were slower.
using Tiles128 = FwdTiles<8, 1, 32, 2, 2>;
using Tiles64 = FwdTiles<4, 2, 64, 2, 1>;

// D = 128 under an SLA mask whose history rows attend at most kBandTileMaxKeys keys (sla_k1 +
// max(sla_k2, contextual_seq_len)): 64-row blocks of 4 warps, one 32-key sub-tile per barrier,
// four blocks (16 warps) per SM (52 KB of shared memory each). A warp of 16 rows attends a band
// 16 + k1 - 1 keys wide, so in a block its warps' bands are shifted by 16 rows each; the block
// holds all its warps until the last band ends. Per history block (k1 = 256, k2 = 32, rows past
// the window), counted in 16 x 32 warp sub-tiles (512 pairs):
//   128 rows x 8 warps, 64-key steps: 128 x 288 pairs = 72 useful; every warp computes 10 (9 band
//     sub-tiles + the prefix); the block walks 6 band steps of 2 sub-tiles + the prefix step, 13
//     sub-tile times with 8 warps held: 104 warp slots, 1.44 per useful sub-tile.
//   64 rows x 4 warps, 32-key steps: 36 useful; every warp computes 10 as well; the block walks 10
//     band steps + the prefix, 11 sub-tile times with 4 warps held: 44 slots, 1.22 per useful one.
// The block that holds a sequence's targets (which attend the whole history) keeps 4 warps, not 8,
// over its long walk. Over the benchmark's B = 32 sequences with num_targets up to 64 the slots
// per attended pair fall from 1.66 to 1.34 at max_len 1024 and from 1.75 to 1.39 at 8192 (a model
// of this loop, bench/hstu_block_model.py; dense causal: 1.29 and 1.04). Not measured on a GPU yet.
// Wider rows keep Tiles128: their blocks are long and 128-row blocks load K / V half as often
// (64-row blocks measured slower on causal masks).
using Tiles128Band = FwdTiles<4, 1, 32, 1, 4>;
constexpr int64_t kBandTileMaxKeys = 512;

bool narrow_sla_band(const hstu_mask::Options& mask) {
  return (mask.sla_k1 > 0 || mask.sla_k2 > 0) && mask.sla_k1 <= kBandTileMaxKeys &&
         hstu_mask::max_of(mask.sla_k2, mask.contextual_seq_len) <= kBandTileMaxKeys - mask.sla_k1;
}

using FwdLauncher = void (*)(Args, int64_t, cudaStream_t);

// The dispatch table: dtype x head dim x mask -> instance (the API has validated the combination).
FwdLauncher fwd_launcher(DType dtype, int64_t head_dim, const hstu_mask::Options& mask) {
  const bool bf16 = dtype == DType::bf16;
  if (head_dim == 64) return bf16 ? launch_fwd<__nv_bfloat16, 64, Tiles64> : launch_fwd<__half, 64, Tiles64>;
  if (narrow_sla_band(mask)) {
    return bf16 ? launch_fwd<__nv_bfloat16, 128, Tiles128Band> : launch_fwd<__half, 128, Tiles128Band>;
  }
  return bf16 ? launch_fwd<__nv_bfloat16, 128, Tiles128> : launch_fwd<__half, 128, Tiles128>;
}

}  // namespace
}  // namespace hstu

void hstu_attention_fwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& out, Stream stream) {
  hstu::Args a = hstu::make_args(params, q, k, v, seq_offsets, num_targets);
  a.out_or_dout = hstu::operand_of(out);
  if (a.batch == 0 || q.size(1) == 0) return;
  hstu::fwd_launcher(q.dtype, q.size(2), a.mask)(a, q.size(1), static_cast<cudaStream_t>(stream));
}

}  // namespace seqmix::cuda
