// Byte and FLOP model of the KDA CUDA kernels (forward.cu, backward.cu) for the per-stage roofline that
// SEQMIX_KDA_TIMING=1 prints (StageTimer, common.cuh). Plain C++ without CUDA, so that
// tests/cpp/kda_roofline_test.cpp checks it on the CPU. Each function follows the kernel it is named after:
// a kernel change that moves other bytes or issues other products must change its formula here.
//
// Conventions (T = tokens, C = chunks, e = input element bytes, sb = scratch_bytes: 4 for f32 / f64 inputs, 2 for
// bf16 / f16 ones, whose w, u, kl, qg, hs, v_new, dhs and dv_new are bf16; 4 = the scratch that stays fp32):
//   bytes         global loads + stores, per block: what each block's code reads or writes, an element
//                 counted once per block. Re-reads by different blocks count (every value tile of
//                 state_fwd reads the chunk's whole w and kl; each of the HV / H value heads of a q/k head
//                 reads its q and k rows); re-reads within a block do not (wy_bwd reads its gc rows three
//                 times, kp twice: L1 / L2 serve them). Not counted: prefetch hints (the
//                 later load is), the chunk-table look-ups of locate_chunk (a few int64 per block) and the
//                 blocks past the last chunk (grids are sized by an upper bound; they exit after one look-up).
//   unique_bytes  every element once per kernel: the HBM floor if L2 served every re-read.
//   flops         2 per multiply-add of the matrix products as the code issues them, each product once:
//                 tensor-core tiles with the zero padding the code does not skip (e.g. the TF32 state_bwd's full
//                 Aqk^T do), plus the products done per pair on the CUDA cores (the diagonal blocks of
//                 chunk_fwd and pair_bwd, the 16 x 16 substitution of the inverse). Elementwise work
//                 (exponentials, gate, L2 norm, row sums) is not counted.
//   tc_flops      tensor-core FLOPs issued: m16n8k8 steps x 2048 x passes, 3 passes for 3xTF32 (f32 / f64
//                 inputs; always for chunk_fwd's inverse blocks, which use warp_gemm), 1 for bf16 / f16.
//                 On bf16 / f16 inputs state_fwd, output, state_bwd and wy_bwd issue bf16 m16n8k16 MMAs (4096
//                 FLOPs each, at twice the TF32 rate: their tf32_roofline_ms is an upper bound).
// Rows past a sequence's end are neither loaded nor stored (cp.async zero-fill, masked stores), so per-token
// terms use T; products are counted per chunk as if it were full (the kernels skip only some 16-row
// blocks of a partial one), so flops are exact when every sequence length is a multiple of 64 and an
// upper bound otherwise. The kernels need K == V; where the code tiles a V-wide operand by K (wy_bwd's
// A^T dv_new and dv) the formula says K, as the code does.
#pragma once

#include <algorithm>
#include <cstdint>

namespace seqmix::cuda::kda::roofline {

// Tile constants of the kernels (static_asserts in forward.cu / backward.cu tie them to the code).
constexpr int kChunk = 64;            // tokens per chunk
constexpr int kOutCols = 64;          // value columns per output_fwd block
constexpr int kPairSlice = 32;        // key channels per pair_bwd block
constexpr int kPairThreads = 128;     // threads per pair_bwd block
constexpr int kGateSlices = 64;       // token slices of finalize_gate_params
constexpr int kMmaMacs = 16 * 8 * 8;  // multiply-adds of one m16n8k8 step

// Peaks the roofline divides by. 3.0 TB/s and 787 TFLOP/s are the figures of issue 3 (H100 SXM HBM3 is
// ~3.35 TB/s by spec; 787 is the dense bf16 number). The kernels issue TF32 MMAs (fp32 operands
// in shared memory), whose H100 SXM dense peak is ~495 TFLOP/s: tf32_roofline_ms uses it with the
// issued FLOPs.
constexpr double kHbmBytesPerS = 3.0e12;
constexpr double kBf16FlopsPerS = 787e12;
constexpr double kTf32FlopsPerS = 495e12;

// One call's shape and options, as the kernels see them. Byte counts of absent tensors are 0.
struct Shape {
  int64_t tokens = 0;  // total tokens over all sequences
  int64_t N = 0;       // sequences
  int64_t chunks = 0;  // 64-token chunks over all sequences (sum of ceil(length / 64))
  int64_t H = 0, HV = 0, K = 0, V = 0;
  int in_bytes = 2;           // q, k, v, g, beta
  int out_bytes = 2;          // o (forward) or dq, dk, dv, dg, dbeta (backward)
  int do_bytes = 2;           // do (backward)
  bool precise = false;       // 3xTF32 products (f32 / f64 inputs)
  bool for_backward = false;  // the forward pass of a backward call: writes the backward's scratch
  bool l2norm = false, use_gate = false, beta_sigmoid = false;
  int dt_bias_bytes = 0, A_log_bytes = 0;    // read only with use_gate
  int cu_seqlens_bytes = 0;                  // 4 or 8 with cu_seqlens
  int h0_bytes = 0, final_state_bytes = 0;   // initial / final state (forward)
  int dht_bytes = 0, dh0_bytes = 0;          // their gradients (backward)
  int dA_log_bytes = 0, ddt_bias_bytes = 0;  // gate parameter gradients (backward)
};

struct Cost {
  double bytes = 0, unique_bytes = 0, flops = 0, tc_flops = 0;
};

// max(bytes / HBM, useful FLOPs / dense bf16): the roofline, in ms.
inline double roofline_ms(const Cost& c) { return 1e3 * std::max(c.bytes / kHbmBytesPerS, c.flops / kBf16FlopsPerS); }
// The same with the tensor-core FLOPs the code issues against the TF32 peak.
inline double tf32_roofline_ms(const Cost& c) {
  return 1e3 * std::max(c.bytes / kHbmBytesPerS, c.tc_flops / kTf32FlopsPerS);
}
// Memory floor with perfect L2 reuse.
inline double unique_bytes_ms(const Cost& c) { return 1e3 * c.unique_bytes / kHbmBytesPerS; }

// Element bytes of the scratch the state, output and wy kernels exchange (common.cuh): bf16 for 16-bit inputs.
inline double scratch_bytes(const Shape& s) { return s.precise ? 4.0 : 2.0; }

namespace detail {
inline int passes(const Shape& s) { return s.precise ? 3 : 1; }
// Products issued as tensor-core MMAs: `macs` multiply-adds at the call's precision.
inline void add_mma(Cost& c, const Shape& s, double macs) {
  c.flops += 2 * macs;
  c.tc_flops += 2 * macs * passes(s);
}
}  // namespace detail

// build_tables_kernel: one block reads cu_seqlens [N + 1] (its threads re-read neighbours' entries, once
// per block here) and writes seq_offsets, chunk_offsets int64 [N + 1].
inline Cost tables_cost(const Shape& s) {
  Cost c;
  c.bytes = c.unique_bytes = static_cast<double>(s.N + 1) * (s.cu_seqlens_bytes + 2 * 8);
  return c;
}

// chunk_fwd_kernel: one block per (chunk, value head).
inline Cost chunk_fwd_cost(const Shape& s) {
  const double T = s.tokens, C = s.chunks, H = s.H, HV = s.HV, K = s.K, V = s.V, e = s.in_bytes;
  const double gate_params = s.use_gate ? K * s.dt_bias_bytes + s.A_log_bytes : 0.0;  // per block
  // per (token, value head): q, k rows of its q/k head (each of the HV / H value heads reads them), g, v, beta
  const double qk_reads = T * HV * 2 * K * e, qk_unique = T * H * 2 * K * e;
  double other = T * HV * (K + V + 1) * e;
  // written per (token, value head): Aqk [64] (fp32), w [K], u [V], kl [K] and, for 16-bit inputs, qg [K]
  // (scratch_bytes); backward: gc [K], A [64], bp (fp32)
  const double sb = scratch_bytes(s);
  other += T * HV * (4 * kChunk + sb * (2 * K + V + (s.precise ? 0 : K)) + (s.for_backward ? 4 * (K + kChunk + 1) : 0));
  // backward, per (token, q/k head) from the first value head of the group: qp, kp [K]; rstd of both with L2 norm
  if (s.for_backward) other += T * H * 4 * (2 * K + (s.l2norm ? 2 : 0));
  other += C * HV * K * 4;  // gl [K] per block
  Cost c;
  c.bytes = qk_reads + other + C * HV * gate_params;
  c.unique_bytes = qk_unique + other + HV * gate_params;
  // Per block: M and Aqk, 6 off-diagonal 16 x 16 block pairs (2 products of 16 x 16 x K) and the 4 lower-left
  // 8 x 8 quadrants of the diagonal blocks (one 16 x 8 x K MMA: 8 rows of k, 8 of q); w = A (beta exp(G) k)
  // and u = A (beta v) over the 16-row blocks of lower-triangular A (row block b: kdim 16 (b + 1), sum 2560).
  const double mma_macs = 6 * 2 * 16 * 16 * K + 4 * 16 * 8 * K + 2560 * (K + V);
  detail::add_mma(c, s, C * HV * mma_macs);
  // The inverse's block rows bi = 1..3: 2 bi (bi + 1) steps for the partial sums and 4 bi for the product
  // with the diagonal inverse, 64 steps in all, warp_gemm (3xTF32 at any precision).
  const double inverse_macs = 64.0 * kMmaMacs;
  c.flops += 2 * C * HV * inverse_macs;
  c.tc_flops += 2 * C * HV * inverse_macs * 3;
  // CUDA cores: 8 diagonal 8 x 8 quadrants x 36 lower pairs x (M and Aqk: 2 K), and the substitution of
  // the 4 diagonal 16 x 16 blocks (16 lanes x sum_{r < 16} r = 120 each).
  c.flops += 2 * C * HV * (8 * 36 * 2 * K + 4 * 16 * 120);
  return c;
}

// state_fwd_kernel: one block per (sequence, value head, value_tile columns); chunks in order.
inline Cost state_fwd_cost(const Shape& s, int value_tile) {
  const double T = s.tokens, C = s.chunks, N = s.N, HV = s.HV, K = s.K, V = s.V;
  const double tiles = V / value_tile;
  // every tile block reads the chunk's whole w, kl [64, K] and G_last [K] (fp32); its own u columns
  const double sb = scratch_bytes(s);
  const double wkl = T * HV * 2 * K * sb + C * HV * K * 4;
  double other = T * HV * V * sb;                  // u
  other += T * HV * V * sb + C * HV * K * V * sb;  // v_new; hs (the state entering each chunk)
  other += N * HV * K * V * (s.h0_bytes + s.final_state_bytes);
  Cost c;
  c.bytes = wkl * tiles + other;
  c.unique_bytes = wkl + other;
  // per chunk: v_new = u - w S (64 x V x K) and S += kl^T v_new (K x V x 64)
  detail::add_mma(c, s, C * HV * 2 * kChunk * K * V);
  return c;
}

// The output stage: for f32 / f64 inputs gated_q_kernel, one block per (chunk, value head), forms qg = scale
// exp(G) q from q and g (into w's dead buffer; 16-bit inputs: chunk_fwd writes it, counted there); then
// output_fwd_kernel or output_fwd_bf16_kernel, one block per (chunk, value head, 64 value columns), o = qg hs +
// Aqk v_new.
inline Cost output_fwd_cost(const Shape& s) {
  const double T = s.tokens, C = s.chunks, H = s.H, HV = s.HV, K = s.K, V = s.V, e = s.in_bytes;
  const double tiles = V / kOutCols, sb = scratch_bytes(s);
  const double gate_params = s.use_gate ? K * s.dt_bias_bytes + s.A_log_bytes : 0.0;  // per gated_q block
  // gated_q: q [K] (its q/k head's row, read per value head) and g [K] rows in, qg [K] fp32 out
  const double gated_q = s.precise ? T * HV * (2 * K * e + K * 4) + C * HV * gate_params : 0.0;
  const double gated_q_unique = s.precise ? T * (H * K * e + HV * (K * e + K * 4)) + HV * gate_params : 0.0;
  const double shared = T * HV * (K * sb + kChunk * 4);  // qg [K] and Aqk [64] rows, read by every column tile
  const double other = T * HV * V * sb + C * HV * K * V * sb + T * HV * V * s.out_bytes;  // v_new, hs; o
  Cost c;
  c.bytes = gated_q + shared * tiles + other;
  c.unique_bytes = gated_q_unique + shared + other;
  // per (chunk, tile): qg S (64 x 64 x K) and Aqk v_new over 16-row blocks of lower-triangular Aqk (2560 x 64)
  detail::add_mma(c, s, C * HV * tiles * (kChunk * kOutCols * K + 2560.0 * kOutCols));
  return c;
}

// state_bwd_kernel (f32 / f64 inputs) or state_bwd_bf16_kernel (bf16 / f16 inputs): one block per (sequence,
// value head, value_tile columns); chunks in reverse.
inline Cost state_bwd_cost(const Shape& s, int value_tile) {
  const double T = s.tokens, C = s.chunks, N = s.N, H = s.H, HV = s.HV, K = s.K, V = s.V;
  const double tiles = V / value_tile, sb = scratch_bytes(s);
  // every tile block reads the chunk's whole rows of: f32 kernel, gc, w [K] and Aqk [64] (value head), kp, qp [K]
  // (q/k head); bf16 kernel, kl, qg, w [K] (bf16, value head), Aqk [64] and G_last [K] per chunk (fp32)
  const double per_tile = s.precise ? T * HV * (4 * K + kChunk) * 4
                                    : T * HV * (3 * K * sb + kChunk * 4) + C * HV * K * 4;
  const double per_tile_unique =
      s.precise ? T * (HV * (2 * K + kChunk) + H * 2 * K) * 4 : per_tile;
  double other = T * HV * V * s.do_bytes;          // do
  other += C * HV * K * V * sb + T * HV * V * sb;  // dhs (gradient of the state leaving each chunk); dv_new
  other += N * HV * K * V * (s.dht_bytes + s.dh0_bytes);
  Cost c;
  c.bytes = per_tile * tiles + other;
  c.unique_bytes = per_tile_unique + other;
  // per chunk: Qg^T do (K x V x 64), Aqk^T do (64 x V x 64: all 16 16 x 16 blocks of Aqk in the TF32 kernel,
  // the 10 on or below the diagonal in the bf16 one), Kl dS' (64 x V x K), w^T dv_new (K x V x 64)
  const double aqk_blocks = s.precise ? 16.0 : 10.0;
  detail::add_mma(c, s, C * HV * V * (3.0 * kChunk * K + kChunk * kChunk * aqk_blocks / 16));
  return c;
}

// wy_bwd_kernel: one block per (chunk, value head).
inline Cost wy_bwd_cost(const Shape& s) {
  const double T = s.tokens, C = s.chunks, H = s.H, HV = s.HV, K = s.K, V = s.V, e = s.in_bytes;
  const double kp_reads = T * HV * K * 4, kp_unique = T * H * K * 4;  // kp rows of the q/k head
  // read per (token, value head): gc [K], A [64], bp (fp32); v_new [V], dv_new [V] (scratch_bytes); do, v (input
  // dtypes)
  const double sb = scratch_bytes(s);
  double other = T * HV * ((K + kChunk + 1) * 4 + 2 * V * sb + V * s.do_bytes + V * e);
  other += C * HV * K * V * sb * 2;  // dS' and S of the chunk
  // written per (token, value head): dq_hv, dk_hv, dgc [K], dAqk, dM [64], dbp (fp32); dv [K]; dg_last per block
  other += T * HV * ((3 * K + 2 * kChunk + 1) * 4 + K * s.out_bytes) + C * HV * K * 4;
  Cost c;
  c.bytes = kp_reads + other;
  c.unique_bytes = kp_unique + other;
  // per block: dk_state = v_new dS'^T, dq_state = do S^T, dw = dv_new S^T (64 x K x V each); dAqk = do v_new^T
  // (64 x 64 x V); A^T dw, A^T dv_new (64 x K x 64 each); dA = dw Kb^T + dv_new v^T (64 x 64 x (K + V));
  // dA A^T and A^T (dA A^T) (64 x 64 x 64 each). The bf16 kernel (bf16 / f16 inputs, wy_bwd_bf16_kernel) skips
  // the 2 of its 8 warp tiles (32 x 16) of dAqk, dA and A^T (dA A^T) that lie above the diagonal (3 / 4 of each);
  // the f32 kernel multiplies them whole.
  const double tri = s.precise ? 1.0 : 0.75;
  const double macs = 3.0 * kChunk * K * V + tri * kChunk * kChunk * V + 2.0 * kChunk * K * kChunk +
                      tri * kChunk * kChunk * (K + V) + (1.0 + tri) * kChunk * kChunk * kChunk;
  detail::add_mma(c, s, C * HV * macs);
  return c;
}

// pair_bwd_kernel: one block per (chunk, value head, 32 key channels), 4 warps (one 16-token sub-chunk each).
inline Cost pair_bwd_cost(const Shape& s) {
  const double T = s.tokens, C = s.chunks, H = s.H, HV = s.HV, K = s.K;
  const double slices = K / kPairSlice;
  // every slice block reads the chunk's whole dAqk, dM [64] rows and bp
  const double per_slice = T * HV * (2 * kChunk + 1) * 4;
  // kp, qp slices of the q/k head (read by each value head of the group); gc: all 64 rows of a chunk
  // (rows past the end re-read the last one)
  const double kq_reads = T * HV * 2 * K * 4, kq_unique = T * H * 2 * K * 4;
  double other = C * HV * kChunk * K * 4;
  other += T * HV * 3 * K * 4 * 2;  // dq_hv, dk_hv, dgc: read (the wy_bwd partials) and written
  other += C * HV * K * 4;          // dg_last
  other += T * HV * 4 * slices;     // dbp_slice [K / 32, tokens, HV]
  Cost c;
  c.bytes = per_slice * slices + kq_reads + other;
  c.unique_bytes = per_slice + kq_unique + other - (C * kChunk - T) * HV * K * 4;  // gc: each row once
  // per block: 6 (earlier, later) sub-chunk pairs x (row sums: dAqk and dM against k; column sums: dAqk^T
  // against q, dM^T against beta k) = 24 products of 16 x 32 x 16
  detail::add_mma(c, s, C * HV * slices * 24 * 16 * kPairSlice * 16);
  // CUDA cores, diagonal 16 x 16 blocks: each thread, per token of its sub-chunk (16), 4 channel
  // tiles x 2 columns x 2 rows x 4 products (dq, R, the two terms of the column sum); both triangles are
  // issued (the other side's factor selected to 0)
  c.flops += 2 * C * HV * slices * (kPairThreads * 16 * 4 * 2 * 2 * 4);
  return c;
}

// finalize_qk_kernel (one warp per (token, q/k head)) and finalize_gate_beta_kernel (elementwise) or, when
// dA_log / ddt_bias are wanted, finalize_gate_params_kernel (one block per (value head, token slice)): the same
// dg / dbeta traffic plus the slice partials of the dA_log / ddt_bias reduction.
inline Cost finalize_cost(const Shape& s) {
  const double T = s.tokens, H = s.H, HV = s.HV, K = s.K;
  // qk: qp, kp rows; dq_hv, dk_hv of the HV / H value heads; rstd of both with L2 norm; dq, dk out
  double b = T * H * (2 * K * 4 + (s.l2norm ? 2 * 4 : 0) + 2 * K * s.out_bytes) + T * HV * 2 * K * 4;
  // gate / beta per (token, value head, channel): g (with the fused gate), dgc, dg out; per (token, value
  // head): dbp, the K / 32 dbp_slice partials, beta (with the sigmoid), dbeta out
  b += T * HV * K * ((s.use_gate ? s.in_bytes : 0) + 4 + s.out_bytes);
  b += T * HV * ((1 + K / kPairSlice) * 4 + (s.beta_sigmoid ? s.in_bytes : 0) + s.out_bytes);
  // dt_bias, A_log: loaded per element but a table of HV x (K + 1) entries; counted once
  if (s.use_gate) b += HV * (K * s.dt_bias_bytes + s.A_log_bytes);
  if (s.ddt_bias_bytes || s.dA_log_bytes) b += HV * kGateSlices * (K + 1) * 4;  // slice partials written
  Cost c;
  c.bytes = c.unique_bytes = b;
  return c;
}

// gate_params_final_kernel (one block per value head), launched when dA_log or ddt_bias is wanted: the
// slice partials (written by finalize_gate_params_kernel, counted in finalize; none without tokens) in,
// dA_log and ddt_bias out.
inline Cost gate_params_cost(const Shape& s) {
  const double HV = s.HV, K = s.K;
  double b = (s.tokens > 0 ? HV * kGateSlices * (K + 1) * 4 : 0.0) + HV * (K * s.ddt_bias_bytes + s.dA_log_bytes);
  Cost c;
  c.bytes = c.unique_bytes = b;
  return c;
}

// The timed stages (StageTimer marks), in launch order.
enum class Stage { tables, chunk_fwd, state_fwd, output_fwd, state_bwd, wy_bwd, pair_bwd, finalize, gate_params };

inline const char* stage_name(Stage stage) {
  switch (stage) {
    case Stage::tables:
      return "tables";
    case Stage::chunk_fwd:
      return "chunk_fwd";
    case Stage::state_fwd:
      return "state_fwd";
    case Stage::output_fwd:
      return "output_fwd";
    case Stage::state_bwd:
      return "state_bwd";
    case Stage::wy_bwd:
      return "wy_bwd";
    case Stage::pair_bwd:
      return "pair_bwd";
    case Stage::finalize:
      return "finalize";
    default:
      return "gate_params";
  }
}

// value_tile: the value columns per block of state_fwd / state_bwd (ignored by the other stages).
inline Cost stage_cost(Stage stage, const Shape& s, int value_tile) {
  switch (stage) {
    case Stage::tables:
      return tables_cost(s);
    case Stage::chunk_fwd:
      return chunk_fwd_cost(s);
    case Stage::state_fwd:
      return state_fwd_cost(s, value_tile);
    case Stage::output_fwd:
      return output_fwd_cost(s);
    case Stage::state_bwd:
      return state_bwd_cost(s, value_tile);
    case Stage::wy_bwd:
      return wy_bwd_cost(s);
    case Stage::pair_bwd:
      return pair_bwd_cost(s);
    case Stage::finalize:
      return finalize_cost(s);
    default:
      return gate_params_cost(s);
  }
}

}  // namespace seqmix::cuda::kda::roofline
