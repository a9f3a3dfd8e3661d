// The byte / FLOP model of the KDA CUDA kernels (src/cuda/kda/roofline.h) on the CPU: every stage's bytes
// on a tiny shape against a per-block hand count, the tensor-core products against m16n8k8 steps counted
// by walking the kernels' warp loops (not the closed forms), and how the counts scale with the value tile,
// the value heads per q/k head and the precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

#include "cuda/kda/roofline.h"

namespace seqmix::cuda::kda::roofline {
namespace {

constexpr double kStepFlops = 2.0 * kMmaMacs;  // FLOPs of one m16n8k8 step

// 2 full chunks of one sequence, one head, K = V = 64, bf16 in and out, no options.
Shape tiny() {
  Shape s;
  s.tokens = 128;
  s.N = 1;
  s.chunks = 2;
  s.H = s.HV = 1;
  s.K = s.V = 64;
  return s;
}

// ---- m16n8k8 steps per block, walked like the kernels' loops.

int64_t chunk_fwd_steps(int K, int V) {
  int64_t steps = 0;
  for (int pair = 0; pair < 6; ++pair) steps += (K / 8) * 2 * 2;  // both 8-column halves, M and Aqk
  for (int b = 0; b < 4; ++b) steps += K / 8;                     // lower-left quadrants (k and q rows in one)
  for (int warp = 0; warp < 8; ++warp) {                          // lower_product_strip: w (K), u (V) columns
    const int kdim = (warp % 4) * 16 + 16;
    steps += kdim / 8 * (K / 16) + kdim / 8 * (V / 16);
  }
  return steps;
}

int64_t inverse_steps() {
  int64_t steps = 0;
  for (int bi = 1; bi < 4; ++bi) {
    for (int warp = 0; warp < 2 * bi; ++warp)
      for (int m = warp / 2; m < bi; ++m) steps += 2;  // warp_gemm, kdim 16
    steps += 2 * bi * 2;                               // the product with the diagonal block's inverse
  }
  return steps;
}

int64_t state_fwd_steps_per_chunk(int K, int BV) {           // one value tile
  int64_t steps = 8 * (K / 8) * (BV / 16);                   // v_new = u - w S: 8 warps, NTW = BV / 16, kdim K
  steps += K == 128 ? 8 * 8 * (BV / 8) : 8 * 8 * (BV / 16);  // update_state_strip, kdim 64
  return steps;
}

int64_t output_fwd_steps(int K) {  // one 64-column tile
  int64_t steps = 0;
  for (int warp = 0; warp < 8; ++warp) steps += (K / 8) * 4 + ((warp % 4) * 16 + 16) / 8 * 4;
  return steps;
}

int64_t state_bwd_steps_per_chunk(int K, int BV) {  // state_bwd_bf16_kernel, in m16n8k8 units (2 per m16n8k16)
  const int warps = std::min(16, (K / 16) * (BV / 8) / 2), ntw = (K / 16) * (BV / 8) / warps, ntv = 4 * (BV / 8) / warps;
  int64_t steps = 0;
  for (int warp = 0; warp < warps; ++warp) {
    const int vm = warp % 4;
    steps += 2 * ((4 - vm) * ntv + (K / 16) * ntv);  // Aqk^T do (blocks on or below the diagonal), Kl dS'
    steps += 2 * 2 * 4 * ntw;                        // Qg^T do, w^T dv_new
  }
  return steps;
}

int64_t wy_bwd_steps(int K, int V) {
  const int kcount = K / 32;
  int64_t per_warp = 3 * kcount * (V / 8);  // dk_state, dq_state, dw
  per_warp += 2 * (V / 8);                  // dAqk
  per_warp += 2 * kcount * 8;               // A^T dw, A^T dv_new
  per_warp += 2 * (K / 8) + 2 * (V / 8);    // dA
  per_warp += 2 * 8 + 2 * 8;                // dA A^T, A^T (dA A^T)
  return 16 * per_warp;
}

// wy_bwd_bf16_kernel (bf16 / f16 inputs): m16n8k16 MMAs, two m16n8k8 steps each.
int64_t wy_bwd_bf16_steps(int K, int V) {
  int64_t mmas = 0;
  for (int warp = 0; warp < 8; ++warp) {
    const bool upper = (warp % 4) * 16 >= (warp / 4) * 32 + 32;  // 32 x 16 tile above the diagonal: skipped
    mmas += 3 * (K / 64) * (V / 16) * 4;                         // dk_state, dq_state, dw
    mmas += upper ? 0 : (V / 16) * 4;                            // dAqk
    mmas += 2 * (K / 64) * 4 * 4;                                // A^T dv_new, A^T dw (kdim 64)
    mmas += upper ? 0 : (K / 16 + V / 16) * 4;                   // dA
    mmas += 4 * 4;                                               // dA A^T
    mmas += upper ? 0 : 4 * 4;                                   // A^T (dA A^T)
  }
  return 2 * mmas;
}

int64_t pair_bwd_steps() {  // one 32-channel slice
  int64_t steps = 0;
  for (int warp = 0; warp < 4; ++warp) steps += (warp + (3 - warp)) * 2 * 4 * 2;  // earlier J, later I
  return steps;
}

// ---- bytes on the tiny shape, counted per block

TEST(KdaRoofline, TinyShapeBytes) {
  const Shape s = tiny();
  // q, k, g, v rows 64 x 64 x 2 B, beta 64 x 2 B; Aqk 64 x 64 x 4 B; w, u, kl, qg 64 x 64 x 2 B (bf16 scratch);
  // gl 64 x 4 B; 2 blocks
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(s).bytes, 2 * (4 * 8192 + 128 + 16384 + 4 * 8192 + 256));
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(s).unique_bytes, chunk_fwd_cost(s).bytes);
  // per (tile of 32 columns, chunk): w, kl 8192 (bf16), gl 256, u, hs, v_new 64 x 32 x 2 (bf16)
  EXPECT_DOUBLE_EQ(state_fwd_cost(s, 32).bytes, 2 * 2 * (2 * 8192 + 256 + 3 * 4096));
  EXPECT_DOUBLE_EQ(state_fwd_cost(s, 32).unique_bytes, 2 * (2 * 8192 + 256) + 2 * 2 * 3 * 4096);
  // per chunk (no gated_q pass for 16-bit inputs): the output reads qg 8192, Aqk 16384, v_new, hs 8192 and writes
  // o 64 x 64 x 2
  EXPECT_DOUBLE_EQ(output_fwd_cost(s).bytes, 2 * (16384 + 4 * 8192));
  // per chunk (one 64-column tile): kl, qg, w 8192, Aqk 16384, gl 256, do 8192, dhs, dv_new 8192
  EXPECT_DOUBLE_EQ(state_bwd_cost(s, 64).bytes, 2 * (3 * 8192 + 16384 + 256 + 3 * 8192));
  // per chunk: gc, kp, A 16384, v_new, dv_new, dS', S 8192 (bf16), do, v 8192, bp 256; dq_hv, dk_hv, dgc, dAqk,
  // dM 16384, dv 8192, dbp 256, dg_last 256
  EXPECT_DOUBLE_EQ(wy_bwd_cost(s).bytes, 2 * (3 * 16384 + 4 * 8192 + 2 * 8192 + 256 + 5 * 16384 + 8192 + 256 + 256));
  // per (chunk, 32-channel slice): kp, qp, gc 64 x 32 x 4, dAqk, dM 16384, bp 256, dq_hv, dk_hv, dgc 8192
  // read and written, dbp_slice 256, dg_last 128
  EXPECT_DOUBLE_EQ(pair_bwd_cost(s).bytes, 4 * (3 * 8192 + 2 * 16384 + 256 + 6 * 8192 + 256 + 128));
  // per token: qp, kp, dq_hv, dk_hv 256 B each, dq, dk 128 B each; dgc 4 + dg 2 per element; dbp, 2 slices,
  // dbeta per token
  EXPECT_DOUBLE_EQ(finalize_cost(s).bytes, 128 * (4 * 256 + 2 * 128) + 128 * 64 * 6 + 128 * (3 * 4 + 2));
  EXPECT_DOUBLE_EQ(tables_cost(s).bytes, 2 * 2 * 8);
}

TEST(KdaRoofline, TinyShapeGateParams) {
  Shape s = tiny();
  s.use_gate = true;
  s.dt_bias_bytes = s.A_log_bytes = s.ddt_bias_bytes = s.dA_log_bytes = 4;
  // finalize_gate_params writes 64 slices x 65 floats of partials on top of finalize's dg / dbeta traffic
  // (g and dgc are read once for both); the final block reads them and writes ddt_bias and dA_log
  const double partials = 64 * 65 * 4;
  EXPECT_DOUBLE_EQ(gate_params_cost(s).bytes, partials + 260);
  EXPECT_DOUBLE_EQ(gate_params_cost(s).unique_bytes, partials + 260);
  Shape no_params = s;
  no_params.ddt_bias_bytes = no_params.dA_log_bytes = 0;
  EXPECT_DOUBLE_EQ(finalize_cost(s).bytes - finalize_cost(no_params).bytes, partials);
  Shape no_tokens = s;  // the first pass does not run; the final one writes zeros
  no_tokens.tokens = 0;
  EXPECT_DOUBLE_EQ(gate_params_cost(no_tokens).bytes, 260);
  // the gate and its parameters add their bytes to chunk_fwd once per block (unique: once)
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(s).bytes - chunk_fwd_cost(tiny()).bytes, 2 * 260);
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(s).unique_bytes - chunk_fwd_cost(tiny()).unique_bytes, 260);
}

TEST(KdaRoofline, TinyShapeFlops) {
  const Shape s = tiny();
  // chunk_fwd per block: 544 steps at the call's precision, the inverse's 64 at 3xTF32; CUDA cores:
  // 8 quadrants x 36 pairs x 2 x 64 and 4 x 16 x 120 multiply-adds
  ASSERT_EQ(chunk_fwd_steps(64, 64), 544);
  ASSERT_EQ(inverse_steps(), 64);
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(s).flops, 2 * ((544 + 64) * kStepFlops + 2 * (8 * 36 * 2 * 64 + 4 * 16 * 120)));
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(s).tc_flops, 2 * (544 + 3 * 64) * kStepFlops);
  // state_fwd: two 64 x 64 x 64 products per chunk
  EXPECT_DOUBLE_EQ(state_fwd_cost(s, 64).flops, 2 * 2 * 2.0 * 64 * 64 * 64);
  // pair_bwd per block: 24 products of 16 x 32 x 16; CUDA cores 128 threads x 16 x 4 x 2 x 2 x 4
  EXPECT_DOUBLE_EQ(pair_bwd_cost(s).flops, 4 * 2.0 * (24 * 16 * 32 * 16 + 128 * 16 * 4 * 2 * 2 * 4));
  EXPECT_DOUBLE_EQ(finalize_cost(s).flops, 0.0);
  EXPECT_DOUBLE_EQ(gate_params_cost(s).flops, 0.0);
}

// The closed forms against the walked loops, K = V in {64, 128}, value tiles 16 / 32 / 64.
TEST(KdaRoofline, ProductsMatchKernelLoops) {
  for (const int K : {64, 128}) {
    Shape s = tiny();
    s.K = s.V = K;
    s.chunks = 3;
    s.HV = s.H = 2;
    const double blocks = s.chunks * s.HV;
    EXPECT_DOUBLE_EQ(chunk_fwd_cost(s).tc_flops, blocks * (chunk_fwd_steps(K, K) + 3 * inverse_steps()) * kStepFlops)
        << K;
    for (const int bv : {16, 32, 64}) {
      EXPECT_DOUBLE_EQ(state_fwd_cost(s, bv).tc_flops,
                       blocks * (K / bv) * state_fwd_steps_per_chunk(K, bv) * kStepFlops)
          << K << " " << bv;
      EXPECT_DOUBLE_EQ(state_bwd_cost(s, bv).tc_flops,
                       blocks * (K / bv) * state_bwd_steps_per_chunk(K, bv) * kStepFlops)
          << K << " " << bv;
    }
    EXPECT_DOUBLE_EQ(output_fwd_cost(s).tc_flops, blocks * (K / 64) * output_fwd_steps(K) * kStepFlops) << K;
    EXPECT_DOUBLE_EQ(wy_bwd_cost(s).tc_flops, blocks * wy_bwd_bf16_steps(K, K) * kStepFlops) << K;
    Shape f32 = s;
    f32.precise = true;
    EXPECT_DOUBLE_EQ(wy_bwd_cost(f32).tc_flops, blocks * wy_bwd_steps(K, K) * 3 * kStepFlops) << K;
    EXPECT_DOUBLE_EQ(pair_bwd_cost(s).tc_flops, blocks * (K / 32) * pair_bwd_steps() * kStepFlops) << K;
  }
}

// 3xTF32 triples the issued tensor-core FLOPs (chunk_fwd's inverse is 3xTF32 at any precision); the useful
// FLOPs do not change, but for state_bwd and wy_bwd, whose bf16 kernels skip tiles the f32 ones multiply.
TEST(KdaRoofline, PreciseTriplesIssuedMmas) {
  Shape bf16 = tiny(), f32 = tiny();
  f32.precise = true;
  f32.in_bytes = f32.out_bytes = f32.do_bytes = 4;
  for (const Stage stage : {Stage::state_fwd, Stage::output_fwd, Stage::pair_bwd}) {
    EXPECT_DOUBLE_EQ(stage_cost(stage, f32, 64).tc_flops, 3 * stage_cost(stage, bf16, 64).tc_flops)
        << stage_name(stage);
    EXPECT_DOUBLE_EQ(stage_cost(stage, f32, 64).flops, stage_cost(stage, bf16, 64).flops) << stage_name(stage);
  }
  // wy_bwd: a bf16 kernel of its own for bf16 / f16 inputs, which skips the warp tiles above the diagonal
  EXPECT_DOUBLE_EQ(stage_cost(Stage::wy_bwd, f32, 64).tc_flops, 3 * stage_cost(Stage::wy_bwd, f32, 64).flops);
  EXPECT_DOUBLE_EQ(stage_cost(Stage::wy_bwd, bf16, 64).tc_flops, stage_cost(Stage::wy_bwd, bf16, 64).flops);
  EXPECT_LT(stage_cost(Stage::wy_bwd, bf16, 64).flops, stage_cost(Stage::wy_bwd, f32, 64).flops);
  // state_bwd: the TF32 kernel (f32 inputs) also multiplies the 6 16 x 16 blocks of Aqk above its diagonal
  const double skipped = bf16.chunks * bf16.HV * bf16.V * 64 * 64 * 6 / 16 * 2;
  EXPECT_DOUBLE_EQ(stage_cost(Stage::state_bwd, f32, 64).flops, stage_cost(Stage::state_bwd, bf16, 64).flops + skipped);
  EXPECT_DOUBLE_EQ(stage_cost(Stage::state_bwd, f32, 64).tc_flops, 3 * stage_cost(Stage::state_bwd, f32, 64).flops);
  const double inverse = 2 * 64 * kStepFlops * 3;  // 2 blocks
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(f32).tc_flops - inverse, 3 * (chunk_fwd_cost(bf16).tc_flops - inverse));
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(f32).flops, chunk_fwd_cost(bf16).flops);
}

// Every value tile block of state_fwd / state_bwd re-reads the chunk's key-side rows: the bytes grow with
// V / value_tile by exactly those rows; the unique bytes and the products do not depend on the tile.
TEST(KdaRoofline, ValueTileRereads) {
  Shape s = tiny();
  s.K = s.V = 128;
  s.tokens = 4096;
  s.chunks = 64;
  const double T = s.tokens, C = s.chunks, K = s.K;
  const double fwd_tile_reads = T * 2 * K * 2 + C * K * 4;          // w, kl rows (bf16) and G_last, per tile
  const double bwd_tile_reads = T * (3 * K * 2 + 64 * 4) + C * K * 4;  // kl, qg, w (bf16), Aqk rows, G_last
  for (const int bv : {16, 32}) {
    EXPECT_DOUBLE_EQ(state_fwd_cost(s, bv).bytes - state_fwd_cost(s, 64).bytes, (128 / bv - 2) * fwd_tile_reads);
    EXPECT_DOUBLE_EQ(state_bwd_cost(s, bv).bytes - state_bwd_cost(s, 64).bytes, (128 / bv - 2) * bwd_tile_reads);
    EXPECT_DOUBLE_EQ(state_fwd_cost(s, bv).unique_bytes, state_fwd_cost(s, 64).unique_bytes);
    EXPECT_DOUBLE_EQ(state_bwd_cost(s, bv).unique_bytes, state_bwd_cost(s, 64).unique_bytes);
    EXPECT_DOUBLE_EQ(state_fwd_cost(s, bv).flops, state_fwd_cost(s, 64).flops);
  }
  EXPECT_DOUBLE_EQ(state_fwd_cost(s, 128).bytes, state_fwd_cost(s, 128).unique_bytes);
  // output_fwd: two 64-column tiles each read the chunk's qg (bf16) and Aqk rows
  EXPECT_DOUBLE_EQ(output_fwd_cost(s).bytes - output_fwd_cost(s).unique_bytes, T * (K * 2 + 64 * 4));
  // pair_bwd: K / 32 = 4 slices each read dAqk, dM and bp rows
  EXPECT_DOUBLE_EQ(pair_bwd_cost(s).bytes - pair_bwd_cost(s).unique_bytes, 3 * T * (2 * 64 + 1) * 4);
}

// With HV = 2 H the two value heads of a q/k head each read its q, k (chunk_fwd) or kp (wy_bwd) rows; the bf16
// state_bwd and output read per-value-head kl, qg instead (chunk_fwd formed them), so nothing there.
TEST(KdaRoofline, GroupedValueHeadsReread) {
  Shape s = tiny(), gva = tiny();
  gva.HV = 2;
  const double T = s.tokens, K = s.K;
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(gva).bytes - chunk_fwd_cost(gva).unique_bytes, T * 2 * K * 2);
  EXPECT_DOUBLE_EQ(state_bwd_cost(gva, 64).bytes - state_bwd_cost(gva, 64).unique_bytes, 0);
  EXPECT_DOUBLE_EQ(wy_bwd_cost(gva).bytes - wy_bwd_cost(gva).unique_bytes, T * K * 4);
  EXPECT_DOUBLE_EQ(output_fwd_cost(gva).bytes - output_fwd_cost(gva).unique_bytes, 0);
  Shape gva32 = gva;  // f32 inputs: the TF32 state_bwd reads qp, kp, and gated_q q, per value head
  gva32.precise = true;
  gva32.in_bytes = 4;
  EXPECT_DOUBLE_EQ(state_bwd_cost(gva32, 64).bytes - state_bwd_cost(gva32, 64).unique_bytes, T * 2 * K * 4);
  EXPECT_DOUBLE_EQ(output_fwd_cost(gva32).bytes - output_fwd_cost(gva32).unique_bytes, T * K * 4);
  EXPECT_DOUBLE_EQ(pair_bwd_cost(gva).bytes - pair_bwd_cost(gva).unique_bytes,
                   T * 2 * K * 4 + (K / 32 - 1) * T * 2 * (2 * 64 + 1) * 4);
  // one head per group: nothing re-read
  for (const Stage stage : {Stage::chunk_fwd, Stage::output_fwd, Stage::wy_bwd, Stage::finalize})
    EXPECT_DOUBLE_EQ(stage_cost(stage, s, 64).bytes, stage_cost(stage, s, 64).unique_bytes) << stage_name(stage);
  // finalize sums the group's dq_hv, dk_hv rows: 2 more rows of K floats per (token, q/k head)
  EXPECT_DOUBLE_EQ(finalize_cost(gva).bytes - finalize_cost(s).bytes, T * 2 * K * 4 + T * K * 6 + T * (3 * 4 + 2));
}

// A partial last chunk: per-token terms follow the tokens; pair_bwd still reads 64 gc rows per chunk.
TEST(KdaRoofline, PartialChunk) {
  Shape full = tiny(), part = tiny();
  part.tokens = 100;  // chunks of 64 and 36 tokens
  // per token: Aqk 64 x 4, qg, v_new (bf16) and o 64 x 2
  EXPECT_DOUBLE_EQ(output_fwd_cost(full).bytes - output_fwd_cost(part).bytes, 28 * (64 * 4 + 3 * 64 * 2));
  // re-reads: the second slice's dAqk, dM, bp rows, and 28 gc rows past the end
  EXPECT_DOUBLE_EQ(pair_bwd_cost(part).bytes - pair_bwd_cost(part).unique_bytes, 100 * (2 * 64 + 1) * 4 + 28 * 64 * 4);
  EXPECT_DOUBLE_EQ(pair_bwd_cost(part).flops, pair_bwd_cost(full).flops);
}

// Options add their tensors: the backward's forward writes its scratch; h0 / final state, dht / dh0.
TEST(KdaRoofline, Options) {
  const Shape s = tiny();
  Shape bwd = s;
  bwd.for_backward = true;
  bwd.l2norm = true;
  // gc [64], A [64], bp per token; qp, kp [64] and both rstd per token
  EXPECT_DOUBLE_EQ(chunk_fwd_cost(bwd).bytes - chunk_fwd_cost(s).bytes,
                   128 * 4 * (2 * 64 + 1) + 128 * 4 * (2 * 64 + 2));
  Shape states = s;
  states.h0_bytes = states.final_state_bytes = 4;
  states.dht_bytes = states.dh0_bytes = 2;
  EXPECT_DOUBLE_EQ(state_fwd_cost(states, 32).bytes - state_fwd_cost(s, 32).bytes, 2 * 64 * 64 * 4);
  EXPECT_DOUBLE_EQ(state_bwd_cost(states, 32).bytes - state_bwd_cost(s, 32).bytes, 2 * 64 * 64 * 2);
  Shape varlen = s;
  varlen.cu_seqlens_bytes = 4;
  EXPECT_DOUBLE_EQ(tables_cost(varlen).bytes - tables_cost(s).bytes, 2 * 4);
}

TEST(KdaRoofline, RooflineTakesTheLargerBound) {
  Cost c;
  c.bytes = 3.0e9;      // 1 ms at 3.0 TB/s
  c.flops = 787e9 / 2;  // 0.5 ms at 787 TFLOP/s
  c.tc_flops = 990e9;   // 2 ms at 495 TFLOP/s
  c.unique_bytes = 1.5e9;
  EXPECT_DOUBLE_EQ(roofline_ms(c), 1.0);
  EXPECT_DOUBLE_EQ(tf32_roofline_ms(c), 2.0);
  EXPECT_DOUBLE_EQ(unique_bytes_ms(c), 0.5);
  for (int i = 0; i <= static_cast<int>(Stage::gate_params); ++i)
    EXPECT_STRNE(stage_name(static_cast<Stage>(i)), "") << i;
}

}  // namespace
}  // namespace seqmix::cuda::kda::roofline
