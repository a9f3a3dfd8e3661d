// Building blocks of the HSTU attention kernels (internal to attention_fwd.cu / attention_bwd.cu):
// kernel arguments, the per-tile mask summary, cp.async tile loads into padded shared memory,
// ldmatrix fragment loads and the m16n8k16 tensor-core MMA (bf16/f16 in, f32 accumulate; sm_80+).
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, t = lane % 4): the f32 accumulator of a
// 16 x 8 block holds rows g and g + 8, columns 2t and 2t + 1 as c[0..1] and c[2..3]. Two
// adjacent accumulator blocks (16 columns) are exactly the A operand of the next MMA once packed
// to 16 bits, which is how P = silu(S) feeds P V without a trip through shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

#include "cpu/hstu/mask.h"
#include "seqmix/tensor.h"

namespace seqmix::cuda::hstu {

constexpr int kTileRows = 64;  // backward: key rows per dk-dv block, query rows per dq block (16 per warp)
constexpr int kWarps = 4;      // backward blocks
constexpr int kThreads = kWarps * 32;
constexpr int kBwdQueryRows = 32;  // query rows per sub-tile of the dk-dv pass (register budget)
constexpr int kSmemPad = 8;        // 16 bytes per shared row: ldmatrix rows hit distinct banks
constexpr int kChunk = 8;          // 16-byte vector = 8 elements

// One jagged [L, H, D] operand: element (token, head, d) at data[token * token_stride + head * head_stride + d].
struct Operand {
  void* data;
  int64_t token_stride;
  int64_t head_stride;
};

struct Index {
  const void* seq_offsets;
  int64_t seq_offsets_stride;
  const void* num_targets;  // nullptr: not given
  int64_t num_targets_stride;
  bool seq_offsets_i64;
  bool num_targets_i64;
};

struct Args {
  Operand q, k, v, out_or_dout, dq, dk, dv;
  Index index;
  hstu_mask::Options mask;
  float alpha;
  float inv_scaling;  // 1 / N
  int64_t batch;
  int64_t max_seq_len;
  int tiles_per_sequence;  // grid.x = batch * tiles_per_sequence (set by grid_of)
  int heads;               // set by grid_longest_first, as is
  int64_t blocks;          // batch * tiles_per_sequence * heads (the grid may hold a few more)
  // The backward's gradient products dq = dS k_dq, dk = dS^T q_dk, dv = P^T dout_dv: the FP8
  // mode-1 backward feeds them other copies of k, q, dout than S and dP read; only its kernel
  // instances read them (the others use k, q, out_or_dout). Last, so the other fields keep
  // their parameter offsets.
  Operand k_dq, q_dk, dout_dv;
};

__device__ __forceinline__ int64_t load_index(const void* p, int64_t i, bool i64) {
  return i64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

struct Sequence {
  int64_t start, length;
  hstu_mask::Rule rule;
  int tile;  // this block's tile of the sequence
};

// Block -> (sequence, tile). Tiles of a sequence run in reverse so the heavy causal tail starts first.
__device__ __forceinline__ Sequence sequence_of_block(const Args& a) {
  const int64_t b = blockIdx.x / a.tiles_per_sequence;
  Sequence s;
  s.tile = a.tiles_per_sequence - 1 - static_cast<int>(blockIdx.x % a.tiles_per_sequence);
  const Index& ix = a.index;
  s.start = load_index(ix.seq_offsets, b * ix.seq_offsets_stride, ix.seq_offsets_i64);
  s.length = load_index(ix.seq_offsets, (b + 1) * ix.seq_offsets_stride, ix.seq_offsets_i64) - s.start;
  const int64_t targets =
      ix.num_targets ? load_index(ix.num_targets, b * ix.num_targets_stride, ix.num_targets_i64) : -1;
  s.rule = hstu_mask::Rule::make(a.mask, s.length, targets);
  return s;
}

constexpr int kRankedBatchMax = 256;  // batches up to this size run longest sequence first

// Block -> (sequence, tile, head) for grid_longest_first. Blocks start in index order, so the
// heaviest work goes first and the jagged tail is made of light blocks: sequences run longest
// first (ranked in-kernel, a few hundred shared-memory compares), and within a sequence its heavy
// tiles first (`reverse_tiles`: the last ones, as for causal query tiles). Heads vary fastest so
// the blocks of one sequence run together and share its K / V in L2. Every thread must call it.
__device__ inline Sequence sequence_longest_first(const Args& a, bool reverse_tiles, int& head) {
  __shared__ int lengths[kRankedBatchMax];
  __shared__ int ranked;
  const Index& ix = a.index;
  const int64_t linear = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  head = static_cast<int>(linear % a.heads);
  const int64_t rest = linear / a.heads;
  const int order = static_cast<int>(rest % a.tiles_per_sequence);
  int64_t b = rest / a.tiles_per_sequence;
  if (a.batch <= kRankedBatchMax) {
    const int rank = static_cast<int>(min(b, a.batch - 1));
    const int batch = static_cast<int>(a.batch);
    for (int c = threadIdx.x; c < batch; c += blockDim.x) {
      lengths[c] = static_cast<int>(load_index(ix.seq_offsets, (c + 1) * ix.seq_offsets_stride, ix.seq_offsets_i64) -
                                    load_index(ix.seq_offsets, c * ix.seq_offsets_stride, ix.seq_offsets_i64));
    }
    __syncthreads();
    // Rank = sequences longer, or as long with a lower index: a permutation, so one c matches.
    for (int c = threadIdx.x; c < batch; c += blockDim.x) {
      const int length = lengths[c];
      int r = 0;
      for (int other = 0; other < batch; ++other)
        r += lengths[other] > length || (lengths[other] == length && other < c);
      if (r == rank) ranked = c;
    }
    __syncthreads();
    b = ranked;
  }
  Sequence s;
  if (linear >= a.blocks) {  // the grid's rounding: an empty sequence, the kernels return
    s.start = s.length = 0;
    s.tile = 0;
    s.rule = hstu_mask::Rule::make(a.mask, 0, -1);
    return s;
  }
  s.tile = reverse_tiles ? a.tiles_per_sequence - 1 - order : order;
  s.start = load_index(ix.seq_offsets, b * ix.seq_offsets_stride, ix.seq_offsets_i64);
  s.length = load_index(ix.seq_offsets, (b + 1) * ix.seq_offsets_stride, ix.seq_offsets_i64) - s.start;
  const int64_t targets =
      ix.num_targets ? load_index(ix.num_targets, b * ix.num_targets_stride, ix.num_targets_i64) : -1;
  s.rule = hstu_mask::Rule::make(a.mask, s.length, targets);
  return s;
}

// What rows [i0, i1) of a tile attend: the hull of each of the (up to two) column ranges over
// the rows, and `full`, the columns every row attends (no per-element mask needed there).
// Positions are 32-bit (the API keeps L below 2^31): kernels hold one of these for the block
// and one for the warp through their main loop, in registers next to the accumulators.
struct TileColumns {
  int begin[2], end[2];
  int full_begin, full_end;

  __device__ __forceinline__ bool touches(int64_t j0, int64_t j1) const {
    return (begin[0] < j1 && j0 < end[0]) || (begin[1] < j1 && j0 < end[1]);
  }
  __device__ __forceinline__ bool fully_attended(int64_t j0, int64_t j1) const {
    return full_begin <= j0 && j1 <= full_end;
  }
};

__device__ __forceinline__ int clamp_to_int(int64_t x) {
  return static_cast<int>(min(max(x, static_cast<int64_t>(INT_MIN)), static_cast<int64_t>(INT_MAX)));
}

// Computed redundantly by every warp (lanes stride over the rows, then butterfly reductions),
// so no shared memory or block barrier is needed.
__device__ inline TileColumns tile_columns(const hstu_mask::Rule& rule, int64_t i0, int64_t i1) {
  const int lane = threadIdx.x % 32;
  TileColumns c;
  c.begin[0] = c.begin[1] = INT_MAX;
  c.end[0] = c.end[1] = INT_MIN;
  c.full_begin = INT_MIN;
  c.full_end = INT_MAX;
  for (int64_t i = i0 + lane; i < i1; i += 32) {
    int64_t begin[2], end[2];
    bool exact;
    const int count = rule.column_ranges(i, begin, end, exact);
    for (int r = 0; r < count; ++r) {
      if (begin[r] < end[r]) {
        c.begin[r] = min(c.begin[r], clamp_to_int(begin[r]));
        c.end[r] = max(c.end[r], clamp_to_int(end[r]));
      }
    }
    int64_t full_begin, full_end;
    rule.full_columns(i, full_begin, full_end);
    if (full_begin >= full_end) full_begin = INT64_MAX;  // an empty row empties the tile's run
    c.full_begin = max(c.full_begin, clamp_to_int(full_begin));
    c.full_end = min(c.full_end, clamp_to_int(full_end));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    for (int r = 0; r < 2; ++r) {
      c.begin[r] = min(c.begin[r], __shfl_xor_sync(0xffffffffu, c.begin[r], offset));
      c.end[r] = max(c.end[r], __shfl_xor_sync(0xffffffffu, c.end[r], offset));
    }
    c.full_begin = max(c.full_begin, __shfl_xor_sync(0xffffffffu, c.full_begin, offset));
    c.full_end = min(c.full_end, __shfl_xor_sync(0xffffffffu, c.full_end, offset));
  }
  return c;
}

// The mask of the two accumulator rows a thread holds (rows g and g + 8 of a 16-row block). Masks
// whose column ranges are exact (SLA) become interval tests on 32-bit positions (the API keeps L
// below 2^31); the others fall back to the shared predicate.
struct RowPairMask {
  int begin[2][2], end[2][2];
  bool exact;

  RowPairMask() = default;
  __device__ __forceinline__ RowPairMask(const hstu_mask::Rule& rule, int64_t row0) {
    for (int h = 0; h < 2; ++h) {
      int64_t b[2], e[2];
      const int count = rule.column_ranges(row0 + 8 * h, b, e, exact);
      if (count < 2) b[1] = e[1] = 0;
      for (int r = 0; r < 2; ++r) {
        begin[h][r] = static_cast<int>(min(max(b[r], int64_t{0}), rule.length));
        end[h][r] = static_cast<int>(min(max(e[r], int64_t{0}), rule.length));
      }
    }
  }
  // Row row0 + 8 half attends column j (< length).
  __device__ __forceinline__ bool allowed(const hstu_mask::Rule& rule, int half, int64_t i, int64_t j) const {
    if (!exact) return rule.allowed(i, j);
    const int c = static_cast<int>(j);
    return (c >= begin[half][0] && c < end[half][0]) || (c >= begin[half][1] && c < end[half][1]);
  }
};

// A block-wide copy of the rule in shared memory, for loops that read it only now and then (tile
// hulls, the few sub-tiles that need a per-element mask): its 64-bit fields then hold no
// registers next to the accumulators. Raw storage, since a __shared__ variable cannot have Rule's
// default member initialisers. Every thread of the block must call it (a barrier).
__device__ __forceinline__ const hstu_mask::Rule& share_rule(const hstu_mask::Rule& rule) {
  __shared__ alignas(hstu_mask::Rule) unsigned char storage[sizeof(hstu_mask::Rule)];
  auto* shared = reinterpret_cast<hstu_mask::Rule*>(storage);
  if (threadIdx.x == 0) *shared = rule;
  __syncthreads();
  return *shared;
}

// The mask of a thread's accumulator elements of a 16 x COLS tile (rows row0 + 16 m ..., columns
// col0 ...) as bits, bit 4 n + e for element e of 8-column block n. Built before the tile's MMAs
// so that the mask arithmetic (64-bit positions, the rule) is not live next to S and O: inlined
// among the accumulators it made ptxas spill. TRANSPOSED: the tile's rows are keys and its
// columns queries (the dk-dv pass's S^T).
template <int COLS, bool TRANSPOSED = false>
__device__ __forceinline__ uint32_t mask_bits(const hstu_mask::Rule& rule, int64_t row0, int64_t col0) {
  static_assert(COLS / 8 * 4 <= 32);
  const int lane = threadIdx.x % 32;
  uint32_t bits = 0;
  if (TRANSPOSED) {
#pragma unroll
    for (int n = 0; n < COLS / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = row0 + lane / 4 + (e / 2) * 8;
        const int64_t i = col0 + n * 8 + 2 * (lane % 4) + e % 2;
        if (rule.allowed(i, j)) bits |= 1u << (4 * n + e);
      }
    }
    return bits;
  }
  const RowPairMask rows(rule, row0 + lane / 4);
#pragma unroll
  for (int n = 0; n < COLS / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t i = row0 + lane / 4 + (e / 2) * 8;
      const int64_t j = col0 + n * 8 + 2 * (lane % 4) + e % 2;
      if (rows.allowed(rule, e / 2, i, j)) bits |= 1u << (4 * n + e);
    }
  }
  return bits;
}

// sigmoid(x) = (1 + tanh(x / 2)) / 2 and silu(x) = x sigmoid(x) = h + h tanh(h), h = x / 2: one
// MUFU op per score (tanh.approx.f32, max relative error about 2^-11, the size of f16's rounding
// of P) where exp and a reciprocal take two; the MUFU rate (16 / clock / SM) is the kernels' other
// limit next to the MMAs. Saturates cleanly for large |x|.
__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float sigmoid(float x) { return fmaf(0.5f, tanh_approx(0.5f * x), 0.5f); }
__device__ __forceinline__ float silu_of_half(float h) { return fmaf(h, tanh_approx(h), h); }  // silu(2 h)
__device__ __forceinline__ float silu(float x) { return silu_of_half(0.5f * x); }

// ---- shared memory tiles ----

template <int D>
struct SmemRow {
  static constexpr int kStride = D + kSmemPad;  // elements
};

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Rows [row0, row0 + ROWS) of one head of an operand into smem (row stride D + pad); rows at or
// beyond `rows_valid` are zero-filled (cp.async with a zero source size reads nothing).
template <int ROWS, int D, class T>
__device__ __forceinline__ void load_tile_async(T* smem, const Operand& x, int64_t start, int head, int64_t row0,
                                                int64_t rows_valid) {
  constexpr int kChunksPerRow = D / kChunk;
  const T* base = static_cast<const T*>(x.data) + head * x.head_stride;
  for (int c = threadIdx.x; c < ROWS * kChunksPerRow; c += blockDim.x) {
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * kChunk;
    const bool valid = row0 + r < rows_valid;
    const T* src = valid ? base + (start + row0 + r) * x.token_stride + col : base;
    asm volatile(
        "cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem + r * SmemRow<D>::kStride + col)),
        "l"(src), "r"(valid ? 16 : 0));
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

__device__ __forceinline__ void wait_async_all() { asm volatile("cp.async.wait_all;\n" ::); }

// ---- fragments and MMA ----

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

// A operand (16 x 16, row-major) at rows [row0, row0 + 16), columns [col0, col0 + 16) of a smem tile.
template <int D, class T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* smem, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, smem + (row0 + lane % 16) * SmemRow<D>::kStride + col0 + (lane / 16) * 8);
}

// B operands of two 16 x 8 blocks whose columns are the smem rows [row0, row0 + 16) and whose
// k index runs along the smem row from col0 (B = X^T for a row-major X: S = Q K^T).
// b[0..1]: columns row0 .. row0 + 7, b[2..3]: row0 + 8 .. row0 + 15.
template <int D, class T>
__device__ __forceinline__ void load_b_rows(uint32_t (&b)[4], const T* smem, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(b, smem + (row0 + lane % 8 + (lane / 16) * 8) * SmemRow<D>::kStride + col0 + ((lane / 8) % 2) * 8);
}

// B operands of two 16 x 8 blocks taken straight from a row-major smem tile (k = smem row in
// [row0, row0 + 16), n = smem column): O += P V. b[0..1]: columns col0 .. col0 + 7, b[2..3]: col0 + 8 ...
template <int D, class T>
__device__ __forceinline__ void load_b_cols(uint32_t (&b)[4], const T* smem, int row0, int col0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(b, smem + (row0 + lane % 8 + ((lane / 8) % 2) * 8) * SmemRow<D>::kStride + col0 + (lane / 16) * 8);
}

template <class T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// A operand for the k16 step `step` from accumulator blocks 2 step and 2 step + 1 (see the top).
template <class T>
__device__ __forceinline__ void accumulators_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack2<T>(lo[0], lo[1]);
  a[1] = pack2<T>(lo[2], lo[3]);
  a[2] = pack2<T>(hi[0], hi[1]);
  a[3] = pack2<T>(hi[2], hi[3]);
}

// C = X Y^T for M blocks of 16 rows of X (smem rows x_row0 + 16 m ...) against ROWS rows of Y
// (smem): c[m][n] is the 16 x 8 block of X rows x_row0 + 16 m .. and Y rows [8n, 8n + 8).
template <int D, int ROWS, int M, class T>
__device__ __forceinline__ void gemm_abt(float (&c)[M][ROWS / 8][4], const T* x, int x_row0, const T* y) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int n = 0; n < ROWS / 8; ++n) c[m][n][0] = c[m][n][1] = c[m][n][2] = c[m][n][3] = 0.0f;
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) load_a<D>(a[m], x, x_row0 + 16 * m, kk * 16);
#pragma unroll
    for (int n = 0; n < ROWS / 16; ++n) {
      uint32_t b[4];
      load_b_rows<D>(b, y, n * 16, kk * 16);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma<T>(c[m][2 * n], a[m], b[0], b[1]);
        mma<T>(c[m][2 * n + 1], a[m], b[2], b[3]);
      }
    }
  }
}

// acc[m] += P[m] Y with P[m] 16 x ROWS accumulator tiles (rounded to T) and Y [ROWS][D] in smem.
template <int D, int ROWS, int M, class T>
__device__ __forceinline__ void gemm_ab_acc(float (&acc)[M][D / 8][4], const float (&p)[M][ROWS / 8][4], const T* y) {
#pragma unroll
  for (int step = 0; step < ROWS / 16; ++step) {
    uint32_t a[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) accumulators_to_a<T>(a[m], p[m][2 * step], p[m][2 * step + 1]);
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      uint32_t b[4];
      load_b_cols<D>(b, y, step * 16, n * 16);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma<T>(acc[m][2 * n], a[m], b[0], b[1]);
        mma<T>(acc[m][2 * n + 1], a[m], b[2], b[3]);
      }
    }
  }
}

// Writes a warp's 16 x D accumulator tile (rows [row0, row0 + 16) of the sequence, scaled) to
// an operand; rows at or beyond `length` are dropped.
template <int D, class T>
__device__ __forceinline__ void store_rows(const Operand& x, int64_t start, int head, int64_t row0, int64_t length,
                                           const float (&acc)[D / 8][4], float scale) {
  const int lane = threadIdx.x % 32;
  T* base = static_cast<T*>(x.data) + head * x.head_stride;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = row0 + lane / 4 + half * 8;
    if (row >= length) continue;
    T* dst = base + (start + row) * x.token_stride + 2 * (lane % 4);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dst + n * 8) = pack2<T>(acc[n][2 * half] * scale, acc[n][2 * half + 1] * scale);
    }
  }
}

// ---- host side: kernel arguments from validated views ----

inline Operand operand_of(const TensorView& t) { return {t.data, t.stride(0), t.stride(1)}; }

// Everything but the output operands.
inline Args make_args(const HstuAttentionParams& params, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& seq_offsets, const TensorView* num_targets) {
  Args a{};
  a.q = operand_of(q);
  a.k = operand_of(k);
  a.v = operand_of(v);
  a.index.seq_offsets = seq_offsets.data;
  a.index.seq_offsets_stride = seq_offsets.stride(0);
  a.index.seq_offsets_i64 = seq_offsets.dtype == DType::i64;
  if (num_targets) {
    a.index.num_targets = num_targets->data;
    a.index.num_targets_stride = num_targets->stride(0);
    a.index.num_targets_i64 = num_targets->dtype == DType::i64;
  }
  a.mask = hstu_mask::options_of(params);
  a.alpha = static_cast<float>(params.alpha);
  a.inv_scaling = static_cast<float>(
      1.0 / static_cast<double>(params.scaling_seqlen == -1 ? params.max_seq_len : params.scaling_seqlen));
  a.batch = seq_offsets.size(0) - 1;
  a.max_seq_len = params.max_seq_len;
  return a;
}

// The launch grid for blocks of `rows` rows: x = (sequence, tile), y = head; sets the tile count.
inline dim3 grid_of(Args& a, int64_t heads, int rows) {
  a.tiles_per_sequence = static_cast<int>((a.max_seq_len + rows - 1) / rows);
  return dim3(static_cast<unsigned>(a.batch * a.tiles_per_sequence), static_cast<unsigned>(heads));
}

// The grid of sequence_longest_first for blocks of `rows` rows (x, then y when the count exceeds
// grid.x's 2^31 - 1); sets the tile, head and block counts.
inline dim3 grid_longest_first(Args& a, int64_t heads, int rows) {
  a.tiles_per_sequence = static_cast<int>((a.max_seq_len + rows - 1) / rows);
  a.heads = static_cast<int>(heads);
  a.blocks = a.batch * a.tiles_per_sequence * heads;
  constexpr int64_t kMaxX = (int64_t{1} << 31) - 1;
  const int64_t y = (a.blocks + kMaxX - 1) / kMaxX;
  return dim3(static_cast<unsigned>((a.blocks + y - 1) / y), static_cast<unsigned>(y));
}

}  // namespace seqmix::cuda::hstu
