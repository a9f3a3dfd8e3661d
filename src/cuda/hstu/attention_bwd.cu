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
// Under SLA a block walks its target rows first, and the warps of window keys, once done, help
// the warps of global-prefix keys in the same block (partial sums summed in shared memory).
// Pass 2 (dq): a block owns 64 query rows (16 per warp) with Q and dO in shared memory and walks
// the key tiles of the query tile's hull as the forward does (32 keys per tile at D = 128, for
// three blocks per SM; warps skip tiles their rows miss):
//   S = Q K^T, dP = dO V^T -> dS -> dQ += dS K.
// Both passes build a tile's mask bits before its MMAs, read the rule from shared memory, and run
// heaviest blocks first (causal: key tile 0 and the last query tile of the longest sequence).
// Split instances (the FP8 mode-1 backward, whose gradient products read other copies of k, q and
// dO than S and dP) load those copies as extra tiles of each stage: Q and dO for dK and dV in
// pass 1 (four query tiles per stage; at D = 128 in 32-row steps, for shared memory), K for dQ in
// pass 2 (three key tiles).
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

// kBwdQueryRows-row sub-tiles per loaded (and barriered) query step of the dk-dv pass
// (SUB_TILES): on the H100 two beat one on causal masks (one barrier per 64 rows) and tie on SLA.
constexpr int kQuerySubTiles = 2;

// SPLIT (the FP8 mode-1 backward, see the top): the gradient products read Args::k_dq, q_dk,
// dout_dv; instances without it are the plain 16-bit kernels, whose code it leaves as it was.
// Query tiles per stage of the dk-dv pass: Q and dO, then (SPLIT) Q for dK and dO for dV.
template <bool SPLIT>
constexpr int dkdv_stage_tiles() {
  return SPLIT ? 4 : 2;
}

// Plain, two sub-tiles: 384 rows (D = 128: 102 KB, two blocks per SM as the registers allow).
template <int D, int SUB_TILES, bool SPLIT>
constexpr size_t dkdv_smem_elements() {
  return static_cast<size_t>(2 * kTileRows + 2 * dkdv_stage_tiles<SPLIT>() * SUB_TILES * kBwdQueryRows) *
         SmemRow<D>::kStride;
}

template <class T, int D, int SUB_TILES, bool SPLIT>
__global__ void __launch_bounds__(kThreads, 1) attention_bwd_dkdv_kernel(const Args a) {
  static_assert(SUB_TILES == 1 || SUB_TILES == 2);
  constexpr int kQueryStepRows = SUB_TILES * kBwdQueryRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kKeyTile = kTileRows * SmemRow<D>::kStride;
  constexpr int kQueryTile = kQueryStepRows * SmemRow<D>::kStride;
  constexpr int kStageTiles = dkdv_stage_tiles<SPLIT>();
  T* const sk = reinterpret_cast<T*>(smem_raw);
  T* const sv = sk + kKeyTile;
  // Stage s at sqdo + kStageTiles s kQueryTile: Q, dO, then (SPLIT) Q for dK, dO for dV.
  T* const sqdo = sv + kKeyTile;

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
  // causal key block starts at its own diagonal, an SLA one scans its window and the targets),
  // as up to two runs of steps visited in order: [run_begin[0], run_end[0]), then run 1.
  int run_begin[2] = {0, 0}, run_end[2] = {0, 0};
  {
    int64_t begin[2], end[2];
    s.rule.row_ranges(j0, j1, begin, end);
    int first[2], last[2];
    for (int r = 0; r < 2; ++r) {
      begin[r] = max(begin[r], int64_t{0});
      end[r] = min(end[r], s.length);
      first[r] = begin[r] < end[r] ? static_cast<int>(begin[r] / kQueryStepRows) : 0;
      last[r] = begin[r] < end[r] ? static_cast<int>((end[r] + kQueryStepRows - 1) / kQueryStepRows) : 0;
    }
    if (s.rule.sla) {
      // Range 0 ends at or below history_end, where range 1 (the targets) starts: the target
      // steps first, then (run 1) the history steps below them (a step holding both goes with
      // the targets).
      run_begin[0] = first[1], run_end[0] = last[1];
      run_begin[1] = first[0], run_end[1] = first[1] < last[1] ? min(last[0], first[1]) : last[0];
    } else {
      // Ascending over the union (range 1: a contextual prefix, maybe overlapping range 0).
      const bool swap = first[1] < last[1] && (first[0] >= last[0] || first[1] < first[0]);
      const int lo_first = swap ? first[1] : first[0], lo_last = swap ? last[1] : last[0];
      const int hi_first = swap ? first[0] : first[1], hi_last = swap ? last[0] : last[1];
      run_begin[0] = lo_first, run_end[0] = lo_last;
      if (hi_first < hi_last) {
        if (hi_first <= lo_last) {
          run_end[0] = max(lo_last, hi_last);
        } else {
          run_begin[1] = hi_first, run_end[1] = hi_last;
        }
      }
    }
  }

  // SLA helpers. Keys below the global prefix (max(sla_k2, contextual_seq_len)) are attended by
  // every history row, the others by the sla_k1 rows from their own and by the targets: in a block
  // holding both (key block 0 at sla_k2 = 32: warps 0-1 prefix keys, warps 2-3 window keys) the
  // window warps are done after a few steps while the prefix warps walk the whole history, so the
  // block held 4 warps for the work of 2. Since the targets are visited first, a window warp is
  // done for good at its `zone` step of the history run: it stores its dK, dV there, then takes
  // sub-tile 1 of each step for its partner prefix warp (which keeps sub-tile 0), and hands its
  // partial sums over through shared memory at the end (fixed order: deterministic). Key block 0
  // of a sequence of n history rows (k1 = 256, k2 = 32) on its critical path, in 32-row sub-tile
  // times: n / 32 before (128 at n = 4096: 4 warps held for about 2 x 64 of useful sub-tiles),
  // n / 64 + 6 now (70; bench/hstu_block_model.py). An estimate: not measured on a GPU yet.
  // With one sub-tile per step there is nothing to split: no pairs.
  const int64_t global_prefix = min(s.rule.global_prefix, s.length);
  const int64_t history_keys = min(s.rule.history_end, s.length);
  int prefix_warps = 0, attended_warps = 0;
  for (int w = 0; w < kWarps; ++w) {
    prefix_warps += j0 + 16 * w < global_prefix;
    attended_warps += j0 + 16 * w < history_keys;
  }
  const int pairs = s.rule.sla && SUB_TILES == 2 ? min(prefix_warps, max(attended_warps - prefix_warps, 0)) : 0;
  // role 1: a prefix warp with a helper, 2: a helper; partner: the other warp of the pair.
  const int role = warp < pairs ? 1 : (warp >= prefix_warps && warp < prefix_warps + pairs ? 2 : 0);
  const int partner = role == 1 ? warp + prefix_warps : warp - prefix_warps;
  int zone_step = INT_MAX;  // the first step of run 1 (SLA: history rows) where the pair splits its work
  if (role != 0) {
    // History rows at or past row_ranges' end for the helper's keys do not attend them.
    const int helper = role == 2 ? warp : partner;
    const int64_t jh0 = j0 + 16 * helper, jh1 = min(jh0 + 16, s.length);
    int64_t begin[2], end[2];
    s.rule.row_ranges(jh0, jh1, begin, end);
    zone_step = static_cast<int>((min(max(end[0], begin[0]), s.length) + kQueryStepRows - 1) / kQueryStepRows);
  }
  // The keys this warp works on and the sub-tiles it takes, outside and inside the zone (32-bit
  // positions, as in the forward).
  const int own0 = static_cast<int>(jw0), own1 = static_cast<int>(jw1);
  const int zone0 = role == 2 ? static_cast<int>(min(j0 + 16 * partner, s.length)) : own0;
  const int zone1 = role == 2 ? static_cast<int>(min(j0 + 16 * partner + 16, s.length)) : own1;
  const unsigned zone_sub_tiles = role == 2 ? 2u : 1u;

  // The next step after (run, t - 1) whose rows attend some of [j0, j1) (run and t updated; t ==
  // steps when none). For this warp at that step: `in_zone` (the pair splits its work), bit u of
  // `active` / `full`: some / all of the keys it works on are attended by sub-tile u's rows.
  auto next_step = [&](int& run, int t, unsigned& active, unsigned& full, bool& in_zone) {
    for (; run < 2; ++run) {
      const int begin = run == 0 ? run_begin[0] : run_begin[1], end = run == 0 ? run_end[0] : run_end[1];
      for (t = max(t, begin); t < end; ++t) {
        in_zone = run == 1 && t >= zone_step;
        const int k0 = in_zone ? zone0 : own0, k1 = in_zone ? zone1 : own1;
        const unsigned sub_tiles = in_zone ? zone_sub_tiles : 3u;
        bool touched = false;
        active = full = 0;
        for (int u = 0; u < SUB_TILES; ++u) {
          const int64_t i0 = static_cast<int64_t>(t) * kQueryStepRows + u * kBwdQueryRows;
          if (i0 >= s.length) break;
          const TileColumns cols = tile_columns(shared_rule, i0, min(i0 + kBwdQueryRows, s.length));
          touched = touched || cols.touches(j0, j1);
          if (!(sub_tiles >> u & 1u)) continue;
          if (cols.touches(k0, k1)) active |= 1u << u;
          if (cols.fully_attended(k0, k1)) full |= 1u << u;
        }
        if (touched) return t;
      }
      t = 0;
    }
    return steps;
  };
  auto load_qdo = [&](int64_t t, int stage) {
    T* const tiles = sqdo + kStageTiles * stage * kQueryTile;
    load_tile_async<kQueryStepRows, D>(tiles, a.q, s.start, head, t * kQueryStepRows, s.length);
    load_tile_async<kQueryStepRows, D>(tiles + kQueryTile, a.out_or_dout, s.start, head, t * kQueryStepRows, s.length);
    if constexpr (SPLIT) {
      load_tile_async<kQueryStepRows, D>(tiles + 2 * kQueryTile, a.q_dk, s.start, head, t * kQueryStepRows, s.length);
      load_tile_async<kQueryStepRows, D>(tiles + 3 * kQueryTile, a.dout_dv, s.start, head, t * kQueryStepRows,
                                         s.length);
    }
  };

  float dk[1][D / 8][4], dv[1][D / 8][4];
  auto zero_accumulators = [&] {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[0][n][e] = dv[0][n][e] = 0.0f;
    }
  };
  zero_accumulators();

  unsigned active = 0, full = 0;
  bool zone = false, zone_reached = false;
  int run = 0;
  int t = next_step(run, 0, active, full, zone);
  if (t < steps) load_qdo(t, 0);
  for (int stage = 0; t < steps; stage ^= 1) {
    // One barrier per step: it publishes this stage's Q and dO (and K, V) and proves every warp
    // has left the previous step, whose stage the prefetch below overwrites.
    wait_async_all();
    __syncthreads();
    unsigned active_next = 0, full_next = 0;
    bool zone_next = false;
    int run_next = run;
    const int t_next = next_step(run_next, t + 1, active_next, full_next, zone_next);
    if (t_next < steps) load_qdo(t_next, stage ^ 1);

    if (zone && !zone_reached) {
      zone_reached = true;
      if (role == 2) {  // this warp's own keys are done: their gradients out, the partner's partial sums in
        store_rows<D, T>(a.dv, s.start, head, jw0, s.length, dv[0], a.inv_scaling);
        store_rows<D, T>(a.dk, s.start, head, jw0, s.length, dk[0], a.alpha * a.inv_scaling);
        zero_accumulators();
      }
    }
    const int key_warp = zone && role == 2 ? partner : warp;  // whose 16 keys this warp works on
#pragma unroll 1
    for (int u = 0; u < SUB_TILES; ++u) {
      if (!(active >> u & 1u)) continue;
      const bool sub_full = full >> u & 1u;
      const T* sq = sqdo + kStageTiles * stage * kQueryTile + u * kBwdQueryRows * SmemRow<D>::kStride;
      const T* sdo = sq + kQueryTile;
      const T* sq_dk = SPLIT ? sq + 2 * kQueryTile : sq;
      const T* sdo_dv = SPLIT ? sq + 3 * kQueryTile : sdo;
      const int64_t i0 = static_cast<int64_t>(t) * kQueryStepRows + u * kBwdQueryRows;
      const uint32_t allowed = sub_full ? ~0u : mask_bits<kBwdQueryRows, true>(shared_rule, j0 + key_warp * 16, i0);
      float st[1][kBwdQueryRows / 8][4], dpt[1][kBwdQueryRows / 8][4];
      gemm_abt<D, kBwdQueryRows, 1, T>(st, sk, key_warp * 16, sq);
      gemm_abt<D, kBwdQueryRows, 1, T>(dpt, sv, key_warp * 16, sdo);
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
      gemm_ab_acc<D, kBwdQueryRows, 1, T>(dv, st, sdo_dv);
      gemm_ab_acc<D, kBwdQueryRows, 1, T>(dk, dpt, sq_dk);
    }
    t = t_next;
    run = run_next;
    active = active_next;
    full = full_next;
    zone = zone_next;
  }
  wait_async_all();  // K and V, when no query step was visited
  if (pairs > 0) {
    // The helpers' partial sums, through the Q / dO stages once every warp has left them: lane l of
    // a helper holds the same accumulator elements as lane l of its partner.
    float* const exchange = reinterpret_cast<float*>(sqdo);
    constexpr int kElements = D / 2;  // per accumulator and thread
    static_assert(2 * 2 * kElements * 32 * sizeof(float) <= 2 * kStageTiles * kQueryTile * sizeof(T));
    const int lane = threadIdx.x % 32;
    __syncthreads();
    if (role == 2 && zone_reached) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          exchange[((2 * partner) * kElements + 4 * n + e) * 32 + lane] = dk[0][n][e];
          exchange[((2 * partner + 1) * kElements + 4 * n + e) * 32 + lane] = dv[0][n][e];
        }
      }
    }
    __syncthreads();
    if (role == 1 && zone_reached) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          dk[0][n][e] += exchange[((2 * warp) * kElements + 4 * n + e) * 32 + lane];
          dv[0][n][e] += exchange[((2 * warp + 1) * kElements + 4 * n + e) * 32 + lane];
        }
      }
    }
  }
  if (role == 2 && zone_reached) return;  // its own keys were stored at the switch
  store_rows<D, T>(a.dv, s.start, head, jw0, s.length, dv[0], a.inv_scaling);
  store_rows<D, T>(a.dk, s.start, head, jw0, s.length, dk[0], a.alpha * a.inv_scaling);
}

constexpr int kKvStages = 2;

// Key tiles per stage of the dq pass: K and V, then (SPLIT) K for dQ.
template <bool SPLIT>
constexpr int dq_stage_tiles() {
  return SPLIT ? 3 : 2;
}

template <int D, int KEY_ROWS, bool SPLIT>
constexpr size_t dq_smem_elements() {
  return static_cast<size_t>(2 * kTileRows + dq_stage_tiles<SPLIT>() * kKvStages * KEY_ROWS) * SmemRow<D>::kStride;
}

template <class T, int D, int KEY_ROWS, int MIN_BLOCKS, bool SPLIT>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS) attention_bwd_dq_kernel(const Args a) {
  constexpr int kKeyRows = KEY_ROWS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kTile = kKeyRows * SmemRow<D>::kStride;
  constexpr int kStageTiles = dq_stage_tiles<SPLIT>();
  T* const sq = reinterpret_cast<T*>(smem_raw);
  T* const sdo = sq + kTileRows * SmemRow<D>::kStride;
  // Stage s at skv + kStageTiles s kTile: K, V, then (SPLIT) K for dQ.
  T* const skv = sdo + kTileRows * SmemRow<D>::kStride;

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
    T* const tiles = skv + kStageTiles * stage * kTile;
    load_tile_async<kKeyRows, D>(tiles, a.k, s.start, head, j0, s.length);
    load_tile_async<kKeyRows, D>(tiles + kTile, a.v, s.start, head, j0, s.length);
    if constexpr (SPLIT) load_tile_async<kKeyRows, D>(tiles + 2 * kTile, a.k_dq, s.start, head, j0, s.length);
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
    const T* sk = skv + kStageTiles * stage * kTile;
    const T* sv = sk + kTile;
    const T* sk_dq = SPLIT ? sk + 2 * kTile : sk;

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
      gemm_ab_acc<D, kKeyRows, 1, T>(dq, dp, sk_dq);
    }
    j0 = j_next;
  }
  wait_async_all();
  store_rows<D, T>(a.dq, s.start, head, i0 + warp * 16, s.length, dq[0], a.alpha * a.inv_scaling);
}

template <class T, int D, int DKDV_SUB_TILES, int DQ_KEY_ROWS, int DQ_MIN_BLOCKS, bool SPLIT>
void launch_bwd(Args a, int64_t heads, cudaStream_t stream) {
  const auto dkdv = attention_bwd_dkdv_kernel<T, D, DKDV_SUB_TILES, SPLIT>;
  const auto dq = attention_bwd_dq_kernel<T, D, DQ_KEY_ROWS, DQ_MIN_BLOCKS, SPLIT>;
  const size_t dkdv_smem = dkdv_smem_elements<D, DKDV_SUB_TILES, SPLIT>() * sizeof(T);
  const size_t dq_smem = dq_smem_elements<D, DQ_KEY_ROWS, SPLIT>() * sizeof(T);
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

// The dispatch table: dtype x head dim x split (the FP8 mode-1 operands) -> instance (the API has
// validated the combination).
BwdLauncher bwd_launcher(DType dtype, int64_t head_dim, bool split) {
  using B = __nv_bfloat16;
  using H = __half;
  constexpr int kSub = kQuerySubTiles;
  const bool bf16 = dtype == DType::bf16;
  if (head_dim == 64) {
    // Split: 640 shared rows in the dk-dv pass (92 KB), still two blocks per SM.
    if (split) return bf16 ? launch_bwd<B, 64, kSub, 64, 1, true> : launch_bwd<H, 64, kSub, 64, 1, true>;
    return bf16 ? launch_bwd<B, 64, kSub, 64, 1, false> : launch_bwd<H, 64, kSub, 64, 1, false>;
  }
  // D = 128: dq over 32-key tiles fits 168 registers and 70 KB of shared memory, three blocks
  // (12 warps) per SM instead of two: the backward ran 1.01-1.09x faster on the H100.
  // Split: the dk-dv pass's four query tiles per stage would take 170 KB at 64-row steps, one
  // block (4 warps) per SM; 32-row steps keep 102 KB and two blocks, at the price of twice the
  // barriers and no SLA helpers (a guess between the two, not measured: kSub here is the other
  // choice). dq's third key tile per stage makes 85 KB: two blocks, so the register cap is theirs.
  if (split) return bf16 ? launch_bwd<B, 128, 1, 32, 2, true> : launch_bwd<H, 128, 1, 32, 2, true>;
  return bf16 ? launch_bwd<B, 128, kSub, 32, 3, false> : launch_bwd<H, 128, kSub, 32, 3, false>;
}

void run_bwd(hstu::Args& a, const TensorView& q, bool split, Stream stream) {
  if (a.batch == 0 || q.size(1) == 0) return;
  bwd_launcher(q.dtype, q.size(2), split)(a, q.size(1), static_cast<cudaStream_t>(stream));
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
  hstu::run_bwd(a, q, false, stream);
}

void hstu_attention_bwd(const HstuAttentionParams& params, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& seq_offsets, const TensorView* num_targets,
                        const TensorView& dout, const HstuGradientOperands& gradient_operands, const TensorView& dq,
                        const TensorView& dk, const TensorView& dv, Stream stream) {
  hstu::Args a = hstu::make_args(params, q, k, v, seq_offsets, num_targets);
  a.out_or_dout = hstu::operand_of(dout);
  a.k_dq = hstu::operand_of(gradient_operands.k_dq);
  a.q_dk = hstu::operand_of(gradient_operands.q_dk);
  a.dout_dv = hstu::operand_of(gradient_operands.dout_dv);
  a.dq = hstu::operand_of(dq);
  a.dk = hstu::operand_of(dk);
  a.dv = hstu::operand_of(dv);
  hstu::run_bwd(a, q, true, stream);
}

}  // namespace seqmix::cuda
