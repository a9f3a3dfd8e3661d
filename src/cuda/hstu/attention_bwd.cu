// HSTU attention backward: two deterministic passes that recompute S per tile (no atomics, no
// workspace, nothing [L, L]).
//
// Math (x = alpha q_i . k_j, sig = sigmoid(x), attended (i, j) only; the CPU reference's):
//   dv_j = (1 / N) sum_i silu(x) do_i
//   ds_ij = (do_i . v_j) sig (1 + x (1 - sig))          (silu'(x), the 1 / N and alpha applied last)
//   dk_j = (alpha / N) sum_i ds_ij q_i,   dq_i = (alpha / N) sum_j ds_ij k_j
//
// Pass 1 (dk, dv): a block owns 64 key rows of one (sequence, head), 16 per warp, with K and V
// in shared memory and dK, dV (16 x D per warp, f32) in registers. It walks the 64-row query
// steps whose mask hull touches its keys, looking only inside the rows that may attend them
// (Rule::row_ranges), double-buffering Q and dO with cp.async under one barrier per step; each
// step is multiplied as two 32-row sub-tiles (S^T, dP^T of 16 x 32 per warp), and a warp skips
// the sub-tiles that do not touch its 16 keys:
//   S^T = K Q^T, dP^T = V dO^T -> P^T, dS^T in registers -> dV += P^T dO, dK += dS^T Q.
// Pass 2 (dq): a block owns 64 query rows (16 per warp) with Q and dO in shared memory and walks
// the key tiles of the query tile's hull as the forward does (32 keys per tile at D = 128, for
// three blocks per SM; warps skip tiles their rows miss):
//   S = Q K^T, dP = dO V^T -> dS -> dQ += dS K.
// Both passes build a tile's mask bits before its MMAs, read the rule from shared memory, and run
// heaviest blocks first (causal: key tile 0 and the last query tile of the longest sequence).
#include "cuda/common/cuda_check.h"
#include "cuda/hstu/attention.h"
#include "cuda/hstu/attention_tile.cuh"

namespace seqmix::cuda {
namespace hstu {
namespace {

// silu(x) and its derivative factor on the recomputed score; masked entries give zeros.
struct SiluGrad {
  float p, ds;
};

__device__ __forceinline__ SiluGrad silu_grad(float x, float dp) {
  const float sig = sigmoid(x);
  return {x * sig, dp * sig * (1.0f + x * (1.0f - sig))};
}

// kBwdQueryRows-row sub-tiles per loaded (and barriered) query step of the dk-dv pass: on the
// H100 two beat one on causal masks (one barrier per 64 rows) and tie on SLA.
constexpr int kQuerySubTiles = 2;
constexpr int kQueryStepRows = kQuerySubTiles * kBwdQueryRows;

template <int D>
constexpr size_t dkdv_smem_elements() {
  return static_cast<size_t>(2 * kTileRows + 2 * 2 * kQueryStepRows) * SmemRow<D>::kStride;
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1) attention_bwd_dkdv_kernel(const Args a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kKeyTile = kTileRows * SmemRow<D>::kStride;
  constexpr int kQueryTile = kQueryStepRows * SmemRow<D>::kStride;
  T* const sk = reinterpret_cast<T*>(smem_raw);
  T* const sv = sk + kKeyTile;
  T* const sqdo = sv + kKeyTile;  // stage s: Q at sqdo + 2 s kQueryTile, dO right after it

  int head;
  const Sequence s = sequence_longest_first(a, /*reverse_tiles=*/false, head);  // causal: key tile 0 sees every row
  const int64_t j0 = static_cast<int64_t>(s.tile) * kTileRows;
  if (j0 >= s.length) return;
  const int64_t j1 = min(j0 + kTileRows, s.length);
  const int warp = threadIdx.x / 32;
  const int64_t jw0 = min(j0 + warp * 16, s.length), jw1 = min(j0 + warp * 16 + 16, s.length);

  const hstu_mask::Rule& shared_rule = share_rule(s.rule);
  load_tile_async<kTileRows, D>(sk, a.k, s.start, head, j0, s.length);
  load_tile_async<kTileRows, D>(sv, a.v, s.start, head, j0, s.length);

  const int steps = static_cast<int>((s.length + kQueryStepRows - 1) / kQueryStepRows);
  // Only query steps meeting the rows that may attend [j0, j1) are examined (not all of them: a
  // causal key block starts at its own diagonal, an SLA one scans its window and the targets):
  // steps [step_begin[r], step_end[r]).
  int step_begin[2], step_end[2];
  {
    int64_t begin[2], end[2];
    s.rule.row_ranges(j0, j1, begin, end);
    for (int r = 0; r < 2; ++r) {
      begin[r] = max(begin[r], int64_t{0});
      end[r] = min(end[r], s.length);
      step_begin[r] = begin[r] < end[r] ? static_cast<int>(begin[r] / kQueryStepRows) : 0;
      step_end[r] = begin[r] < end[r] ? static_cast<int>((end[r] + kQueryStepRows - 1) / kQueryStepRows) : 0;
    }
  }
  auto jump = [&](int t) {  // the first step at or after t in a range
    int first = steps;
    for (int r = 0; r < 2; ++r) {
      const int candidate = max(t, step_begin[r]);
      if (candidate < step_end[r]) first = min(first, candidate);
    }
    return first;
  };
  // The next step at or after `t` whose rows attend some of [j0, j1); bit u of `active` / `full`:
  // some / all of this warp's 16 keys are attended by sub-tile u's rows.
  auto next_step = [&](int t, unsigned& active, unsigned& full) {
    for (t = jump(t); t < steps; t = jump(t + 1)) {
      bool touched = false;
      active = full = 0;
      for (int u = 0; u < kQuerySubTiles; ++u) {
        const int64_t i0 = static_cast<int64_t>(t) * kQueryStepRows + u * kBwdQueryRows;
        if (i0 >= s.length) break;
        const TileColumns cols = tile_columns(shared_rule, i0, min(i0 + kBwdQueryRows, s.length));
        touched = touched || cols.touches(j0, j1);
        if (cols.touches(jw0, jw1)) active |= 1u << u;
        if (cols.fully_attended(jw0, jw1)) full |= 1u << u;
      }
      if (touched) return t;
    }
    return steps;
  };
  auto load_qdo = [&](int64_t t, int stage) {
    load_tile_async<kQueryStepRows, D>(sqdo + 2 * stage * kQueryTile, a.q, s.start, head, t * kQueryStepRows, s.length);
    load_tile_async<kQueryStepRows, D>(sqdo + (2 * stage + 1) * kQueryTile, a.out_or_dout, s.start, head,
                                       t * kQueryStepRows, s.length);
  };

  float dk[1][D / 8][4], dv[1][D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[0][n][e] = dv[0][n][e] = 0.0f;
  }

  unsigned active = 0, full = 0;
  int t = next_step(0, active, full);
  if (t < steps) load_qdo(t, 0);
  for (int stage = 0; t < steps; stage ^= 1) {
    // One barrier per step: it publishes this stage's Q and dO (and K, V) and proves every warp
    // has left the previous step, whose stage the prefetch below overwrites.
    wait_async_all();
    __syncthreads();
    unsigned active_next = 0, full_next = 0;
    const int t_next = next_step(t + 1, active_next, full_next);
    if (t_next < steps) load_qdo(t_next, stage ^ 1);

#pragma unroll 1
    for (int u = 0; u < kQuerySubTiles; ++u) {
      if (!(active >> u & 1u)) continue;
      const bool sub_full = full >> u & 1u;
      const T* sq = sqdo + 2 * stage * kQueryTile + u * kBwdQueryRows * SmemRow<D>::kStride;
      const T* sdo = sq + kQueryTile;
      const int64_t i0 = static_cast<int64_t>(t) * kQueryStepRows + u * kBwdQueryRows;
      const uint32_t allowed = sub_full ? ~0u : mask_bits<kBwdQueryRows, true>(shared_rule, j0 + warp * 16, i0);
      float st[1][kBwdQueryRows / 8][4], dpt[1][kBwdQueryRows / 8][4];
      gemm_abt<D, kBwdQueryRows, 1, T>(st, sk, warp * 16, sq);
      gemm_abt<D, kBwdQueryRows, 1, T>(dpt, sv, warp * 16, sdo);
#pragma unroll
      for (int n = 0; n < kBwdQueryRows / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const SiluGrad g = silu_grad(a.alpha * st[0][n][e], dpt[0][n][e]);
          const bool keep = allowed >> (4 * n + e) & 1u;
          st[0][n][e] = keep ? g.p : 0.0f;
          dpt[0][n][e] = keep ? g.ds : 0.0f;
        }
      }
      gemm_ab_acc<D, kBwdQueryRows, 1, T>(dv, st, sdo);
      gemm_ab_acc<D, kBwdQueryRows, 1, T>(dk, dpt, sq);
    }
    t = t_next;
    active = active_next;
    full = full_next;
  }
  wait_async_all();  // K and V, when no query step was visited
  store_rows<D, T>(a.dv, s.start, head, j0 + warp * 16, s.length, dv[0], a.inv_scaling);
  store_rows<D, T>(a.dk, s.start, head, j0 + warp * 16, s.length, dk[0], a.alpha * a.inv_scaling);
}

constexpr int kKvStages = 2;

template <int D, int KEY_ROWS>
constexpr size_t dq_smem_elements() {
  return static_cast<size_t>(2 * kTileRows + 2 * kKvStages * KEY_ROWS) * SmemRow<D>::kStride;
}

template <class T, int D, int KEY_ROWS, int MIN_BLOCKS>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS) attention_bwd_dq_kernel(const Args a) {
  constexpr int kKeyRows = KEY_ROWS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kTile = kKeyRows * SmemRow<D>::kStride;
  T* const sq = reinterpret_cast<T*>(smem_raw);
  T* const sdo = sq + kTileRows * SmemRow<D>::kStride;
  T* const skv = sdo + kTileRows * SmemRow<D>::kStride;  // stage s: K at skv + 2 s kTile, V right after it

  int head;
  const Sequence s = sequence_longest_first(a, /*reverse_tiles=*/true, head);
  const int64_t i0 = static_cast<int64_t>(s.tile) * kTileRows;
  if (i0 >= s.length) return;
  const int warp = threadIdx.x / 32;

  const hstu_mask::Rule& shared_rule = share_rule(s.rule);
  load_tile_async<kTileRows, D>(sq, a.q, s.start, head, i0, s.length);
  load_tile_async<kTileRows, D>(sdo, a.out_or_dout, s.start, head, i0, s.length);
  const TileColumns cols = tile_columns(s.rule, i0, min(i0 + kTileRows, s.length));

  // 32-bit key positions, as in the forward.
  const int j_begin = min(cols.begin[0], cols.begin[1]) / kKeyRows * kKeyRows;
  const int j_end = max(cols.end[0], cols.end[1]);
  const int length = static_cast<int>(s.length);
  auto next_tile = [&](int j0) {
    for (; j0 < j_end; j0 += kKeyRows) {
      // Jump the gap between the two column ranges (SLA: global prefix, local window).
      if (j0 >= cols.end[0] && j0 + kKeyRows <= cols.begin[1]) j0 = cols.begin[1] / kKeyRows * kKeyRows;
      if (cols.touches(j0, min(j0 + kKeyRows, length))) return j0;
    }
    return j_end;
  };
  auto load_kv = [&](int j0, int stage) {
    load_tile_async<kKeyRows, D>(skv + 2 * stage * kTile, a.k, s.start, head, j0, s.length);
    load_tile_async<kKeyRows, D>(skv + (2 * stage + 1) * kTile, a.v, s.start, head, j0, s.length);
  };

  // This warp's 16 rows: it skips the MMAs of key tiles they do not touch.
  const TileColumns warp_cols = tile_columns(s.rule, min(i0 + warp * 16, s.length), min(i0 + warp * 16 + 16, s.length));
  float dq[1][D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq[0][n][0] = dq[0][n][1] = dq[0][n][2] = dq[0][n][3] = 0.0f;

  int j0 = j_begin < j_end ? next_tile(j_begin) : j_end;
  if (j0 < j_end) load_kv(j0, 0);
  for (int stage = 0; j0 < j_end; stage ^= 1) {
    // One barrier per key tile, as in the forward.
    wait_async_all();
    __syncthreads();
    const int j_next = next_tile(j0 + kKeyRows);
    if (j_next < j_end) load_kv(j_next, stage ^ 1);
    const T* sk = skv + 2 * stage * kTile;
    const T* sv = sk + kTile;

    const int j1 = min(j0 + kKeyRows, length);
    if (warp_cols.touches(j0, j1)) {
      const bool full = warp_cols.fully_attended(j0, j1);
      const uint32_t allowed = full ? ~0u : mask_bits<kKeyRows>(shared_rule, i0 + warp * 16, j0);
      float st[1][kKeyRows / 8][4], dp[1][kKeyRows / 8][4];
      gemm_abt<D, kKeyRows, 1, T>(st, sq, warp * 16, sk);
      gemm_abt<D, kKeyRows, 1, T>(dp, sdo, warp * 16, sv);
#pragma unroll
      for (int n = 0; n < kKeyRows / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float ds = silu_grad(a.alpha * st[0][n][e], dp[0][n][e]).ds;
          dp[0][n][e] = allowed >> (4 * n + e) & 1u ? ds : 0.0f;
        }
      }
      gemm_ab_acc<D, kKeyRows, 1, T>(dq, dp, sk);
    }
    j0 = j_next;
  }
  wait_async_all();
  store_rows<D, T>(a.dq, s.start, head, i0 + warp * 16, s.length, dq[0], a.alpha * a.inv_scaling);
}

template <class T, int D, int DQ_KEY_ROWS, int DQ_MIN_BLOCKS>
void launch_bwd(Args a, int64_t heads, cudaStream_t stream) {
  const auto dkdv = attention_bwd_dkdv_kernel<T, D>;
  const auto dq = attention_bwd_dq_kernel<T, D, DQ_KEY_ROWS, DQ_MIN_BLOCKS>;
  const size_t dkdv_smem = dkdv_smem_elements<D>() * sizeof(T);
  const size_t dq_smem = dq_smem_elements<D, DQ_KEY_ROWS>() * sizeof(T);
  SEQMIX_CUDA_CHECK(
      cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dkdv_smem)));
  SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dq_smem)));
  const dim3 grid = grid_longest_first(a, heads, kTileRows);
  dkdv<<<grid, kThreads, dkdv_smem, stream>>>(a);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  dq<<<grid, kThreads, dq_smem, stream>>>(a);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

using BwdLauncher = void (*)(Args, int64_t, cudaStream_t);

// The dispatch table: dtype x head dim -> instance (the API has validated the combination).
BwdLauncher bwd_launcher(DType dtype, int64_t head_dim) {
  const bool bf16 = dtype == DType::bf16;
  if (head_dim == 64) return bf16 ? launch_bwd<__nv_bfloat16, 64, 64, 1> : launch_bwd<__half, 64, 64, 1>;
  // D = 128: dq over 32-key tiles fits 168 registers and 70 KB of shared memory, three blocks
  // (12 warps) per SM instead of two: the backward ran 1.01-1.09x faster on the H100.
  return bf16 ? launch_bwd<__nv_bfloat16, 128, 32, 3> : launch_bwd<__half, 128, 32, 3>;
}

}  // namespace
}  // namespace hstu

void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                        Stream stream) {
  hstu::Args a = hstu::make_args(params, q, k, v, seq_offsets, num_targets);
  a.out_or_dout = hstu::operand_of(dout);
  a.dq = hstu::operand_of(dq);
  a.dk = hstu::operand_of(dk);
  a.dv = hstu::operand_of(dv);
  if (a.batch == 0 || q.size(1) == 0) return;
  hstu::bwd_launcher(q.dtype, q.size(2))(a, q.size(1), static_cast<cudaStream_t>(stream));
}

}  // namespace seqmix::cuda
