// KDA chunked backward on CUDA. The forward pipeline is re-run first (recompute, as FLA does),
// this time keeping hs (state entering each chunk) and v_new (fp32 for f32 inputs, bf16 for 16-bit ones).
//
// Per chunk with Qg = scale exp(G) q, Kl = exp(G_last - G) k, Kb = exp(G) k, dS' the gradient of
// the state leaving the chunk:
//   state_bwd (per sequence, head, V tile; chunks in reverse):
//     dv_new = Aqk^T do + Kl dS'
//     dS     = exp(G_last) dS' + Qg^T do - w^T dv_new          (dS entering the chunk; dh0 at the start)
//   wy_bwd (per chunk, head; all products on the tensor cores):
//     dq  = scale exp(G) (do S^T);   dk = exp(G_last - G) (v_new dS'^T);   dAqk = scale tril(do v_new^T)
//     dw = -dv_new S^T, du = dv_new   -> through w = A diag(beta) Kb, u = A diag(beta) v:
//        d(beta Kb) = A^T dw, d(beta v) = A^T du, dA = dw (beta Kb)^T + du (beta v)^T
//     dM = -A^T dA A^T (strictly lower);  dG_last = sum_j k_j dKl_j + exp(G_last) sum_e S dS'
//   pair_bwd (per chunk, head, 32 key channels): the pairwise-decay terms of Aqk and
//     M_ij = beta_i sum_d k_id k_jd exp(G_id - G_jd) by 16-token sub-chunks (off-diagonal blocks as
//     products, diagonal blocks per pair); every factor exp(G_i - G_j) contributes +x_i dx_i to dG at
//     row i and -x_j dx_j at row j; dg = reverse cumsum of dG within the chunk, plus dG_last.
//   finalize: dq, dk summed over the value heads of a q/k head (GVA) and through the L2 norm;
//     dg through the fused gate, dbeta through the sigmoid; dA_log, ddt_bias reduced in a fixed
//     order (deterministic, no atomics anywhere).
#include <algorithm>
#include <type_traits>

#include "cuda/common/cuda_check.h"
#include "cuda/kda/common.cuh"
#include "cuda/kda/mma_bf16.cuh"

namespace seqmix::cuda {
namespace kda {

namespace {

// Precision of the backward's tensor-core products, chosen per call from the input dtype. kPrecise
// (f32 / f64 inputs): 3xTF32 as in warp_gemm, fp32-accurate. Otherwise (bf16 / f16 inputs) the state and
// within-chunk passes multiply bf16 operands (state_bwd_bf16_kernel, wy_bwd_bf16_kernel), as FLA does, and
// pair_bwd runs one TF32 pass with round-to-nearest operands (relative error ~2^-11 per operand, below the 2^-9 of
// the bf16 inputs and outputs themselves) at a third of the MMAs. The TF32 step itself: mma_f32<kPrecise>
// (common.cuh).

// count (<= MT) warp tiles stacked in rows, tile m at a + m * a_step, sharing the B fragment of each
// k step: up to MT independent MMA chains per fragment load (one tile per call is latency-bound).
// Layout as in warp_gemm; precision as in mma_f32.
template <int MT, bool kPrecise>
__device__ __forceinline__ void warp_gemm_rows(float c[MT][4], int count, const float* a, int a_rs, int a_cs,
                                               int a_step, const float* b, int b_rs, int b_cs, int kdim) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 2
  for (int k0 = 0; k0 < kdim; k0 += 8) {
    const int b0 = (k0 + t) * b_rs + g * b_cs, b1 = (k0 + t + 4) * b_rs + g * b_cs;
    const float bf[2] = {b[b0], b[b1]};
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < count) {
        const float* am = a + m * a_step;
        const float af[4] = {am[g * a_rs + (k0 + t) * a_cs], am[(g + 8) * a_rs + (k0 + t) * a_cs],
                             am[g * a_rs + (k0 + t + 4) * a_cs], am[(g + 8) * a_rs + (k0 + t + 4) * a_cs]};
        mma_f32<kPrecise>(c[m], af, bf);
      }
    }
  }
}

// C += A B^T for count (<= MT) warp tiles as in warp_gemm_rows, with A [16, kdim] (tile m at a + m * a_step)
// and B [8, kdim] both row-major in shared memory (row strides a_rs, b_rs). The m16n8k8 TF32 fragments
// are 8 x 4 fp32 blocks (a0 rows g cols t, a1 rows g + 8, a2 cols t + 4, ...), which is what ldmatrix
// hands out for an 8 x 8 b16 matrix (lane l gets 32-bit word l % 4 of row l / 4): one ldmatrix.x4 per A
// fragment and one .x2 per B fragment replace 6 scalar loads, with the same values (bit moves only).
// Needs rows 16-byte aligned (strides, offsets multiples of 4 floats); rows of stride 4 mod 32 words
// hit 32 distinct banks.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const float* ptr) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const float* ptr) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

template <int MT, bool kPrecise>
__device__ __forceinline__ void warp_gemm_rows_abt(float c[MT][4], int count, const float* a, int a_rs, int a_step,
                                                   const float* b, int b_rs, int kdim) {
  // Lanes 8q .. 8q + 7 address the rows of matrix q: A's matrices are (rows 0-7, cols k0), (rows 8-15,
  // cols k0), (rows 0-7, cols k0 + 4), (rows 8-15, cols k0 + 4); B's (rows 0-7, cols k0), (cols k0 + 4).
  const int lane = threadIdx.x & 31, q = lane >> 3, r = lane & 7;
  const float* a_lane = a + (r + (q & 1) * 8) * a_rs + (q >> 1) * 4;
  const float* b_lane = b + r * b_rs + (q & 1) * 4;
#pragma unroll 2
  for (int k0 = 0; k0 < kdim; k0 += 8) {
    uint32_t braw[2];
    ldmatrix_x2(braw, b_lane + k0);
    const float bf[2] = {__uint_as_float(braw[0]), __uint_as_float(braw[1])};
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < count) {
        uint32_t araw[4];
        ldmatrix_x4(araw, a_lane + m * a_step + k0);
        const float af[4] = {__uint_as_float(araw[0]), __uint_as_float(araw[1]), __uint_as_float(araw[2]),
                             __uint_as_float(araw[3])};
        mma_f32<kPrecise>(c[m], af, bf);
      }
    }
  }
}

// Fetches the 128-byte line holding `ptr` into L2 (a hint, no effect on results): issued for data a
// block reads in a later phase, so that those loads hit L2 instead of waiting on HBM.
__device__ __forceinline__ void prefetch_l2(const void* ptr) { asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr)); }

// Lines of `rows` rows of `bytes` bytes each (row r at base + r * stride_bytes), spread over the block by
// rows: thread t takes all lines of rows t, t + threads, ... (no division by a runtime line count per line).
__device__ __forceinline__ void prefetch_rows(const void* base, int rows, int64_t stride_bytes, int bytes,
                                              int threads) {
  for (int r = threadIdx.x; r < rows; r += threads) {
    const char* row = static_cast<const char*>(base) + r * stride_bytes;
    for (int b = 0; b < bytes; b += 128) prefetch_l2(row + b);
  }
}

__device__ __forceinline__ int dtype_bytes(int dt) { return dt == kF32 ? 4 : dt == kF64 ? 8 : 2; }

// Fragment entries r and r + 1 (r even) are adjacent columns (frag_col) of one row (frag_row): one 8-byte
// access serves both. Only for fp32 scratch (256-byte aligned buffers, even offsets).
__device__ __forceinline__ float2 ld2(const float* ptr) { return *reinterpret_cast<const float2*>(ptr); }
__device__ __forceinline__ void st2(float* ptr, float a, float b) {
  *reinterpret_cast<float2*>(ptr) = make_float2(a, b);
}

template <int MT>
__device__ __forceinline__ void zero_tiles(float c[MT][4]) {
#pragma unroll
  for (int m = 0; m < MT; ++m) c[m][0] = c[m][1] = c[m][2] = c[m][3] = 0.0f;
}

// Rows [0, kRows) x kCols of a shared tile (row stride dst_rs) from a row-major fp32 source (row i at
// src + i * src_rs) by cp_async16 from NT threads; rows >= rows_valid are zeroed with plain stores. Thread t
// copies columns 4 (t % c4) .. + 3 of rows t / c4 + kStep r (c4 = kCols / 4, kStep = NT / c4), unrolled: no
// division or loop test per copy, and a thread's row offsets differ by compile-time multiples of the strides.
template <int NT, int kRows, int kCols>
__device__ __forceinline__ void cp_async_rows(float* dst, int dst_rs, const float* src, int64_t src_rs,
                                              int rows_valid) {
  constexpr int c4 = kCols / 4, kStep = NT / c4;
  static_assert(NT % c4 == 0, "a thread keeps its columns in every row it copies");
  const int i0 = threadIdx.x / c4, d = (threadIdx.x % c4) * 4;
#pragma unroll
  for (int r = 0; r < kRows; r += kStep) {
    const int i = i0 + r;
    if (kRows % kStep == 0 || i < kRows) {
      if (i < rows_valid)
        cp_async16(dst + i * dst_rs + d, src + i * src_rs + d);
      else
        st4(dst + i * dst_rs + d, zero4());
    }
  }
}

// f32 / f64 inputs (16-bit ones take state_bwd_bf16_kernel below). One block per (sequence, value head, BV value
// columns), chunks in reverse; products on the tensor cores in 3xTF32 (mma_f32). Shared: w, Qg [64, K + 8] and
// Aqk [64, 72], read transposed as MMA A operands (stride = 8 mod 32 banks puts the fragment's g + 8 t lanes on 32
// banks; K + 4 would pair them up), Kl [64, K + 4] and raw G [64, K + 4] read by rows (4 mod 32: 4 g + t);
// dS tile [K, BV + 8]; do and dv_new tiles [64, BV + 8]; G_last [K].
// Per chunk: w, k, q, G, Aqk go to shared memory by cp.async (all of a chunk's loads in flight at once,
// none staged in registers) while do is loaded and dS' stored, then k, q become Kl, Qg in place. The
// next chunk's G, k, Aqk, q are issued as soon as their tiles are free (G after the Kl / Qg step; k,
// Aqk, q after the dv_new and Qg^T do products), so their loads overlap this chunk's products; w
// follows at the start of the next step. Every chunk but the last of a sequence is full, so those
// issue 64 rows.
// BV in {16, 32, 64}. Threads per block: 16 warps for BV >= 32 (one block per SM either way, so twice the
// warps to hide the MMA chains' and shared loads' latency at half the accumulator tiles per warp; ncu at
// 8 warps: 0.42 eligible warps per scheduler, half the stalls on fixed-latency dependencies), 8 for BV = 16
// (its 64 x 16 product has 8 warp tiles). A warp holds (K / 16) NT / warps tiles of the K x BV product
// and 4 NT / warps of the 64 x BV one (NT = BV / 8 column tiles; NT divides the warp count).
__host__ __device__ constexpr int state_bwd_threads(int BV) { return BV >= 32 ? 512 : 256; }

template <int kK, int BV>
__global__ void __launch_bounds__(state_bwd_threads(BV), 1)
    state_bwd_kernel(KdaDev p, const void* d_out, int d_out_dt, const void* dht, int dht_dt, void* dh0, int dh0_dt) {
  constexpr bool kPrecise = true;
  constexpr int kNT = state_bwd_threads(BV), kWarps = kNT / 32;
  constexpr int SP = BV + 8, AP = kChunk + 8, NT = BV / 8;
  constexpr int K = kK, KP = K + 4, KT = K + 8;
  constexpr int kTilesS = (K / 16) * NT / kWarps, kTilesV = 4 * NT / kWarps;
  static_assert(kWarps % NT == 0 && (K / 16) * NT % kWarps == 0 && 4 * NT % kWarps == 0 && kTilesS >= 1 && kTilesV >= 1,
                "warp tiling of the state_bwd products");
  const int n = blockIdx.x, hv = blockIdx.y, e0 = blockIdx.z * BV, h = hv / p.G;
  const int tid = threadIdx.x, warp = tid / 32;
  // Warp w owns the 16 x 8 tiles of both products at columns c_own, rows r_first + m * r_step.
  const int c_own = (warp % NT) * 8, r_first = (warp / NT) * 16, r_step = (kWarps / NT) * 16;
  extern __shared__ float smem[];
  float* wS = smem;
  float* klS = wS + kChunk * KT;
  float* qgS = klS + kChunk * KP;
  float* aqS = qgS + kChunk * KT;
  float* dhS = aqS + kChunk * AP;
  float* doS = dhS + K * SP;
  float* dvS = doS + kChunk * SP;
  float* glS = dvS + kChunk * SP;
  float* gS = glS + K;

  for (int idx = tid; idx < K * BV; idx += kNT) {
    const int d = idx / BV, e = idx % BV;
    dhS[d * SP + e] = dht ? load_f(dht, dht_dt, state_index(p, n, hv, d, e0 + e)) : 0.0f;
  }
  const int64_t c_begin = p.chunk_offsets[n], c_last = p.chunk_offsets[n + 1] - 1;
  const int64_t rs_k = static_cast<int64_t>(p.HV) * K, rs_q = static_cast<int64_t>(p.H) * K;
  const int64_t rs_a = static_cast<int64_t>(p.HV) * kChunk;
  if (c_last >= c_begin) {  // G, k, Aqk, q of the first chunk of the sweep (later ones: issued a step ahead)
    const int64_t t0 = p.seq_offsets[n] + (c_last - c_begin) * kChunk;
    const int64_t left = p.seq_offsets[n + 1] - t0;
    const int L = static_cast<int>(left < kChunk ? left : kChunk);
    cp_async_rows<kNT, kChunk, K>(gS, KP, p.gc + (t0 * p.HV + hv) * K, rs_k, L);
    cp_async_rows<kNT, kChunk, K>(klS, KP, p.kp + (t0 * p.H + h) * K, rs_q, L);
    cp_async_rows<kNT, kChunk, kChunk>(aqS, AP, p.Aqk + (t0 * p.HV + hv) * kChunk, rs_a, L);
    cp_async_rows<kNT, kChunk, K>(qgS, KT, p.qp + (t0 * p.H + h) * K, rs_q, L);
  }
  for (int64_t c = c_last; c >= c_begin; --c) {
    const int64_t t0 = p.seq_offsets[n] + (c - c_begin) * kChunk;
    const int64_t left = p.seq_offsets[n + 1] - t0;
    const int L = static_cast<int>(left < kChunk ? left : kChunk);
    const bool more = c > c_begin;
    const int64_t tn = t0 - kChunk;  // first token of the next chunk of this reverse sweep (a full one)
    if (more) {                      // w, do of the next chunk into L2 while this one runs
      const int64_t fs = sizeof(float);
      prefetch_rows(p.w + (tn * p.HV + hv) * K, kChunk, rs_k * fs, K * fs, kNT);
      const int es = dtype_bytes(d_out_dt);
      prefetch_rows(static_cast<const char*>(d_out) + ((tn * p.HV + hv) * p.V + e0) * es, kChunk,
                    static_cast<int64_t>(p.HV) * p.V * es, BV * es, kNT);
    }
    cp_async_rows<kNT, kChunk, K>(wS, KT, p.w + (t0 * p.HV + hv) * K, rs_k, L);
    batched<8, kNT>(
        kChunk * BV,
        [&](int idx) {
          const int i = idx / BV, e = idx % BV;
          return i < L ? load_f(d_out, d_out_dt, ((t0 + i) * p.HV + hv) * p.V + e0 + e) : 0.0f;
        },
        [&](int idx, float v) { doS[(idx / BV) * SP + idx % BV] = v; });
    for (int idx = tid; idx < K * BV; idx += kNT) {
      const int d = idx / BV, e = idx % BV;
      p.dhs[((c * p.HV + hv) * K + d) * p.V + e0 + e] = dhS[d * SP + e];
    }
    cp_async_wait_all();
    __syncthreads();
    // Kl = exp(G_last - G) k, Qg = scale exp(G) q in place (rows >= L stay zero); G_last = G of row L - 1.
    {
      const int k4 = K / 4;
      const float* gl = gS + (L - 1) * KP;
      const float s = p.scale;
      for (int idx = tid; idx < L * k4; idx += kNT) {
        const int i = idx / k4, d = (idx % k4) * 4, at = i * KP + d, qt = i * KT + d;
        const float4 g = *reinterpret_cast<const float4*>(gS + at), l = *reinterpret_cast<const float4*>(gl + d);
        const float4 k = *reinterpret_cast<const float4*>(klS + at), q = *reinterpret_cast<const float4*>(qgS + qt);
        st4(klS + at, make_float4(__expf(l.x - g.x) * k.x, __expf(l.y - g.y) * k.y, __expf(l.z - g.z) * k.z,
                                  __expf(l.w - g.w) * k.w));
        st4(qgS + qt,
            make_float4(s * __expf(g.x) * q.x, s * __expf(g.y) * q.y, s * __expf(g.z) * q.z, s * __expf(g.w) * q.w));
      }
      for (int d = tid; d < K; d += kNT) glS[d] = gl[d];
    }
    __syncthreads();
    if (more) cp_async_rows<kNT, kChunk, K>(gS, KP, p.gc + (tn * p.HV + hv) * K, rs_k, kChunk);
    // dv_new = Aqk^T do + Kl dS'   (64 x BV), and already Qg^T do of the dS step below (it does not
    // need dv_new), so that Qg's tile is free for the next chunk's q during the w^T dv_new product.
    float pos[kTilesS][4];
    zero_tiles<kTilesS>(pos);
    warp_gemm_rows<kTilesS, kPrecise>(pos, kTilesS, qgS + r_first, 1, KT, r_step, doS + c_own, SP, 1, kChunk);
    {
      float acc[kTilesV][4];
      zero_tiles<kTilesV>(acc);
      warp_gemm_rows<kTilesV, kPrecise>(acc, kTilesV, aqS + r_first, 1, AP, r_step, doS + c_own, SP, 1, kChunk);
      warp_gemm_rows<kTilesV, kPrecise>(acc, kTilesV, klS + r_first * KP, KP, 1, r_step * KP, dhS + c_own, SP, 1, K);
#pragma unroll
      for (int m = 0; m < kTilesV; ++m)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int j = r_first + m * r_step + frag_row(r), e = c_own + frag_col(r);
          dvS[j * SP + e] = acc[m][r];
          if (j < L) p.dvn[((t0 + j) * p.HV + hv) * p.V + e0 + e] = acc[m][r];
        }
    }
    __syncthreads();
    if (more) {
      cp_async_rows<kNT, kChunk, K>(klS, KP, p.kp + (tn * p.H + h) * K, rs_q, kChunk);
      cp_async_rows<kNT, kChunk, kChunk>(aqS, AP, p.Aqk + (tn * p.HV + hv) * kChunk, rs_a, kChunk);
      cp_async_rows<kNT, kChunk, K>(qgS, KT, p.qp + (tn * p.H + h) * K, rs_q, kChunk);
    }
    // dS = exp(G_last) dS' + Qg^T do - w^T dv_new   (K x BV; each warp owns its tiles)
    {
      float neg[kTilesS][4];
      zero_tiles<kTilesS>(neg);
      warp_gemm_rows<kTilesS, kPrecise>(neg, kTilesS, wS + r_first, 1, KT, r_step, dvS + c_own, SP, 1, kChunk);
#pragma unroll
      for (int m = 0; m < kTilesS; ++m)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int d = r_first + m * r_step + frag_row(r), e = c_own + frag_col(r);
            dhS[d * SP + e] = __expf(glS[d]) * dhS[d * SP + e] + pos[m][r] - neg[m][r];
          }
    }
    __syncthreads();
  }
  if (dh0)
    for (int idx = tid; idx < K * BV; idx += kNT) {
      const int d = idx / BV, e = idx % BV;
      store_f(dh0, dh0_dt, state_index(p, n, hv, d, e0 + e), dhS[d * SP + e]);
    }
}

// ---- state_bwd on bf16 operands (16-bit inputs)
// The TF32 kernel above spends its chunk step on fragment traffic: 6 scalar shared loads and conversions per
// 16 x 8 x 8 step (ncu at B4 T4096 H16: 0.95 ms, DRAM 26 %). Here every product operand is a bf16 shared tile
// read by ldmatrix into m16n8k16 MMAs (mma_bf16.cuh), as FLA's dhu kernel multiplies bf16 dots, and the fp32
// master of dS lives in the accumulators of the warp that owns its tiles (written to dhs from there), so
// shared memory holds only its bf16 copy for the Kl dS' product.
// Threads: (K / 16) (BV / 8) / 2 warps up to 16, so that every warp owns an even number NTW of 8-column tiles of
// dS (whole x4 B fragments) in one 16-row block; the 64 x BV product dv_new is split into NTV column tiles per
// warp the same way (NTV = 1 for K 128 with BV <= 32: one x2 B fragment).
__host__ __device__ constexpr int state_bwd_bf16_warps(int K, int BV) {
  return (K / 16) * (BV / 8) / 2 < 16 ? (K / 16) * (BV / 8) / 2 : 16;
}

// Shared (bytes; K + 8, 72 and BV + 8 bf16 rows are 16 mod 128 bytes apart: ldmatrix rows on distinct banks):
//   two slots (chunk in flight, next chunk) of Kl, Qg [64, K + 8] bf16 and G_last [K] fp32, by cp.async straight
//   from the bf16 kl and qg the forward re-run wrote; fp32 Aqk staging [64, 68];
//   bf16 operands of the chunk in flight: w [64, K + 8], Aqk [64, 72], do, -dv_new [64, BV + 8], dS' [K, BV + 8].
// w and do of the next chunk travel in registers (issued after the formation barrier, stored as bf16 by the
// next formation), as before the two-slot Kl / Qg ring took the room.
template <int kK, int BV>
constexpr size_t state_bwd_bf16_smem_bytes() {
  return 4 * (kChunk * (kChunk + 4) + 2 * kK) +
         2 * (5 * kChunk * (kK + 8) + kChunk * (kChunk + 8) + 2 * kChunk * (BV + 8) + kK * (BV + 8));
}

// Per chunk (reverse): (1) wait for the staged Kl, Qg, G_last, Aqk; barrier. (2) formation: Aqk, w (bf16 in global
// memory, registers) and do (registers) into their bf16 tiles; dS' (registers) to dhs and to its tile, both bf16;
// barrier. (3) the next chunk's loads are issued (cp.async into the other slot and the Aqk staging; w, do into
// registers). (4) dv_new = Aqk^T do + Kl dS' (warp tiles over 64 x BV; Aqk^T skips the k blocks above its
// diagonal) -> dvn (bf16, as FLA's dv) and -dv_new (bf16 tile); dS = exp(G_last) dS' + Qg^T do; barrier.
// (5) dS += w^T (-dv_new). dS itself stays fp32 in the accumulators; only its copies are rounded.
// Kl = exp(G_last - G) k and Qg = scale exp(G) q come from chunk_fwd (bf16, per value head): forming them here
// cost every column-tile block of a head the same exponentials per chunk step, on the sequential path.
// Rows >= L of every tile are zero (cp.async zero fill, zero registers), so dv_new rows >= L are zero too.
template <int kK, int BV>
__global__ void __launch_bounds__(32 * state_bwd_bf16_warps(kK, BV), 1)
    state_bwd_bf16_kernel(KdaDev p, const void* d_out, int d_out_dt, const void* dht, int dht_dt, void* dh0,
                          int dh0_dt) {
  using bf16 = __nv_bfloat16;
  constexpr int K = kK, kWarps = state_bwd_bf16_warps(kK, BV), kNT = 32 * kWarps;
  constexpr int AF = kChunk + 4, KT = K + 8, AT = kChunk + 8, SP = BV + 8;
  constexpr int kMB = K / 16;                   // 16-row blocks of dS
  constexpr int NTW = kMB * (BV / 8) / kWarps;  // 8-column tiles of dS per warp
  constexpr int NTV = 4 * (BV / 8) / kWarps;    // 8-column tiles of dv_new per warp
  static_assert(NTW >= 2 && NTW % 2 == 0 && NTV >= 1 && NTV <= 2 && kWarps % kMB == 0 && kWarps % 4 == 0,
                "warp tiling of the bf16 state_bwd products");
  const int n = blockIdx.x, hv = blockIdx.y, e0 = blockIdx.z * BV;
  const int tid = threadIdx.x, warp = tid / 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* aqF = reinterpret_cast<float*>(smem_raw);
  float* glS0 = aqF + kChunk * AF;  // [2][K]
  bf16* klB0 = reinterpret_cast<bf16*>(glS0 + 2 * K);  // [2][64][KT]
  bf16* qgB0 = klB0 + 2 * kChunk * KT;                 // [2][64][KT]
  bf16* wB = qgB0 + 2 * kChunk * KT;
  bf16* aqB = wB + kChunk * KT;
  bf16* doB = aqB + kChunk * AT;
  bf16* dvB = doB + kChunk * SP;  // -dv_new
  bf16* dsB = dvB + kChunk * SP;

  // This warp's dS tiles: rows 16 sm .. + 16, columns sc .. sc + 8 NTW; its dv_new tiles: rows 16 vm, columns vc.
  const int sm = warp % kMB, sc = (warp / kMB) * NTW * 8;
  const int vm = warp % 4, vc = (warp / 4) * NTV * 8;
  float ds[NTW][4];
#pragma unroll
  for (int j = 0; j < NTW; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r)
      ds[j][r] =
          dht ? load_f(dht, dht_dt, state_index(p, n, hv, 16 * sm + frag_row(r), e0 + sc + 8 * j + frag_col(r))) : 0.0f;

  const int64_t c_begin = p.chunk_offsets[n], c_last = p.chunk_offsets[n + 1] - 1;
  const int64_t rs_k = static_cast<int64_t>(p.HV) * K;
  const int64_t rs_a = static_cast<int64_t>(p.HV) * kChunk, rs_v = static_cast<int64_t>(p.HV) * p.V;
  const bool do_aligned = reinterpret_cast<uintptr_t>(d_out) % 16 == 0;
  constexpr int kW4 = kChunk * (K / 4) / kNT, kD4 = (kChunk * (BV / 4) + kNT - 1) / kNT;
  static_assert(kChunk * (K / 4) % kNT == 0, "every thread carries the same number of w quads");
  uint2 w_next[kW4];  // 4 bf16 each
  float4 do_next[kD4];
  auto chunk_rows = [&](int64_t c, int64_t& t0) {
    t0 = p.seq_offsets[n] + (c - c_begin) * kChunk;
    const int64_t left = p.seq_offsets[n + 1] - t0;
    return static_cast<int>(left < kChunk ? left : kChunk);
  };
  auto slot_of = [&](int64_t c) { return static_cast<int>((c_last - c) & 1); };
  auto issue = [&](int64_t c) {  // chunk c's Kl, Qg, G_last (its slot), Aqk by cp.async; w, do into registers
    int64_t t0;
    const int L = chunk_rows(c, t0), slot = slot_of(c);
    bf16* klB = klB0 + slot * kChunk * KT;
    bf16* qgB = qgB0 + slot * kChunk * KT;
    for (int idx = tid; idx < kChunk * (K / 8); idx += kNT) {
      const int i = idx / (K / 8), d = (idx % (K / 8)) * 8;
      const bool in = i < L;
      const int64_t at = in ? (t0 + i) * rs_k + hv * K + d : 0;
      cp_async16(klB + i * KT + d, p.kl_bf16 + at, in);
      cp_async16(qgB + i * KT + d, p.qg_bf16 + at, in);
    }
    for (int idx = tid; idx < K / 4; idx += kNT)
      cp_async16(glS0 + slot * K + 4 * idx, p.gl + (c * p.HV + hv) * K + 4 * idx);
    cp_async_rows<kNT, kChunk, kChunk>(aqF, AF, p.Aqk + (t0 * p.HV + hv) * kChunk, rs_a, L);
    cp_async_commit();
#pragma unroll
    for (int u = 0; u < kW4; ++u) {
      const int idx = tid + u * kNT, i = idx / (K / 4), d = (idx % (K / 4)) * 4;
      w_next[u] = i < L ? __ldg(reinterpret_cast<const uint2*>(p.w_bf16 + (t0 + i) * rs_k + hv * K + d))
                        : make_uint2(0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kD4; ++u) {
      const int idx = tid + u * kNT, i = idx / (BV / 4), e = (idx % (BV / 4)) * 4;
      do_next[u] = idx < kChunk * (BV / 4) && i < L
                       ? load4_f(do_aligned, d_out, d_out_dt, (t0 + i) * rs_v + hv * p.V + e0 + e)
                       : zero4();
    }
  };
  if (c_last >= c_begin) issue(c_last);
  for (int64_t c = c_last; c >= c_begin; --c) {
    int64_t t0;
    const int L = chunk_rows(c, t0), slot = slot_of(c);
    const bf16* klB = klB0 + slot * kChunk * KT;
    const bf16* qgB = qgB0 + slot * kChunk * KT;
    const float* glS = glS0 + slot * K;
    // dS' of this chunk in bf16: to dhs and to its tile (the previous step's readers passed its barrier)
#pragma unroll
    for (int j = 0; j < NTW; ++j)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int d = 16 * sm + frag_row(r), e = sc + 8 * j + frag_col(r);
        const uint32_t x = pack_bf16x2(ds[j][r], ds[j][r + 1]);
        *reinterpret_cast<uint32_t*>(p.dhs_bf16 + ((c * p.HV + hv) * K + d) * p.V + e0 + e) = x;
        *reinterpret_cast<uint32_t*>(dsB + d * SP + e) = x;
      }
    cp_async_wait_all();
    __syncthreads();
    {  // formation
      for (int idx = tid; idx < kChunk * (kChunk / 4); idx += kNT) {
        const int i = idx / (kChunk / 4), j = (idx % (kChunk / 4)) * 4;
        st_bf16x4(aqB + i * AT + j, *reinterpret_cast<const float4*>(aqF + i * AF + j));
      }
#pragma unroll
      for (int u = 0; u < kW4; ++u) {
        const int idx = tid + u * kNT;
        *reinterpret_cast<uint2*>(wB + (idx / (K / 4)) * KT + (idx % (K / 4)) * 4) = w_next[u];
      }
#pragma unroll
      for (int u = 0; u < kD4; ++u) {
        const int idx = tid + u * kNT;
        if (idx < kChunk * (BV / 4)) st_bf16x4(doB + (idx / (BV / 4)) * SP + (idx % (BV / 4)) * 4, do_next[u]);
      }
    }
    __syncthreads();
    if (c > c_begin) issue(c - 1);
    {  // dv_new = Aqk^T do + Kl dS'   (rows 16 vm .., columns vc ..)
      float acc[NTV][4];
#pragma unroll
      for (int j = 0; j < NTV; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
      uint32_t a[4], b[4];
      for (int kb = vm; kb < 4; ++kb) {  // Aqk[i][j] = 0 for i < j: token blocks below vm add nothing
        a_frag_t(a, aqB, AT, 16 * vm, 16 * kb);
        b_frag_kn(b, doB, SP, 16 * kb, vc);
        mma_bf16(acc[0], a, b[0], b[1]);
        if constexpr (NTV == 2) mma_bf16(acc[1], a, b[2], b[3]);
      }
#pragma unroll
      for (int kb = 0; kb < kMB; ++kb) {
        a_frag(a, klB, KT, 16 * vm, 16 * kb);
        b_frag_kn(b, dsB, SP, 16 * kb, vc);
        mma_bf16(acc[0], a, b[0], b[1]);
        if constexpr (NTV == 2) mma_bf16(acc[1], a, b[2], b[3]);
      }
#pragma unroll
      for (int j = 0; j < NTV; ++j)
#pragma unroll
        for (int r = 0; r < 4; r += 2) {
          const int i = 16 * vm + frag_row(r), e = vc + 8 * j + frag_col(r);
          st_bf16x2(dvB + i * SP + e, -acc[j][r], -acc[j][r + 1]);
          if (i < L) st_bf16x2(p.dvn_bf16 + (t0 + i) * rs_v + hv * p.V + e0 + e, acc[j][r], acc[j][r + 1]);
        }
    }
    {  // dS = exp(G_last) dS' + Qg^T do
#pragma unroll
      for (int j = 0; j < NTW; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) ds[j][r] *= __expf(glS[16 * sm + frag_row(r)]);
      uint32_t a[4], b[4];
#pragma unroll
      for (int kb = 0; kb < 4; ++kb) {
        a_frag_t(a, qgB, KT, 16 * sm, 16 * kb);
#pragma unroll
        for (int j = 0; j < NTW; j += 2) {
          b_frag_kn(b, doB, SP, 16 * kb, sc + 8 * j);
          mma_bf16(ds[j], a, b[0], b[1]);
          mma_bf16(ds[j + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
    {  // dS += w^T (-dv_new)
      uint32_t a[4], b[4];
#pragma unroll
      for (int kb = 0; kb < 4; ++kb) {
        a_frag_t(a, wB, KT, 16 * sm, 16 * kb);
#pragma unroll
        for (int j = 0; j < NTW; j += 2) {
          b_frag_kn(b, dvB, SP, 16 * kb, sc + 8 * j);
          mma_bf16(ds[j], a, b[0], b[1]);
          mma_bf16(ds[j + 1], a, b[2], b[3]);
        }
      }
    }
  }
  if (dh0)
#pragma unroll
    for (int j = 0; j < NTW; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        store_f(dh0, dh0_dt, state_index(p, n, hv, 16 * sm + frag_row(r), e0 + sc + 8 * j + frag_col(r)), ds[j][r]);
}

// ---- Within-chunk gradients: two kernels per chunk, FLA's chunk_kda_bwd_wy_dqkg_fused and
// chunk_kda_bwd_intra split, every product on the tensor cores (precision as in mma_f32; wy_bwd on bf16 / f16
// inputs: bf16 operands, wy_bwd_bf16_kernel).

constexpr int kWyThreads = 512;    // 16 warps: one block per SM (shared memory), so warps hide latency
constexpr int kPairThreads = 128;  // 4 warps, warp w owns the 16-token sub-chunk w
constexpr int kSlice = 32;         // key channels per pair_bwd block (FLA's BK)
constexpr int kSub = 16;           // sub-chunk length (FLA's BC)
constexpr int kSliceStride = kSlice + 4;
constexpr int kWyTilesMax = 4;     // 16 x 8 tiles per warp of a [64, K] product, K <= 128

static_assert(roofline::kPairSlice == kSlice && roofline::kPairThreads == kPairThreads &&
                  roofline::kGateSlices == kGateSlices,
              "roofline.h models these tiles");

// Rows [0, 64) x kCols of a [tokens, HV, V] input of any dtype (do) into a shared fp32 tile of row stride
// dst_rs, four consecutive entries per load (load4_f: one 8- / 16-byte load when `aligned`), all of a
// thread's loads in flight together; rows >= rows_valid zero.
template <int NT, int kCols>
__device__ __forceinline__ void load_rows_dt(float* dst, int dst_rs, const void* src, int dt, bool aligned,
                                             int64_t src_rs, int64_t offset, int rows_valid) {
  constexpr int c4 = kCols / 4, n = kChunk * c4, U = (n + NT - 1) / NT;
  float4 v[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int idx = threadIdx.x + u * NT, i = idx / c4;
    v[u] = idx < n && i < rows_valid ? load4_f(aligned, src, dt, offset + i * src_rs + (idx % c4) * 4) : zero4();
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int idx = threadIdx.x + u * NT;
    if (idx < n) st4(dst + (idx / c4) * dst_rs + (idx % c4) * 4, v[u]);
  }
}

// Two consecutive elements (i even) of a dtype-coded tensor: one 4- / 8- / 16-byte access when the base is
// aligned to two elements (`aligned`), two scalar ones otherwise (the same values, the same roundings).
__device__ __forceinline__ float2 load2_f(bool aligned, const void* base, int dt, int64_t i) {
  if (aligned) {
    switch (dt) {
      case kF32:
        return *reinterpret_cast<const float2*>(static_cast<const float*>(base) + i);
      case kBF16:
        return __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(static_cast<const __nv_bfloat16*>(base) + i));
      case kF16:
        return __half22float2(*reinterpret_cast<const __half2*>(static_cast<const __half*>(base) + i));
      default:
        break;
    }
  }
  return make_float2(load_f(base, dt, i), load_f(base, dt, i + 1));
}

// The inverse of load_rows_dt: rows [0, rows_valid) x kCols of a shared fp32 tile (row stride src_rs) into a
// [tokens, HV, V] output of any dtype, four consecutive entries per store (8-byte bf16 / f16 or 16-byte f32
// stores when `aligned`; rounded to nearest like store_f), so that a warp writes whole rows.
template <int NT, int kCols>
__device__ __forceinline__ void store_rows_dt(void* dst, int dt, bool aligned, int64_t dst_rs, int64_t offset,
                                              const float* src, int src_rs, int rows_valid) {
  constexpr int c4 = kCols / 4;
  for (int idx = threadIdx.x; idx < rows_valid * c4; idx += NT) {
    const int i = idx / c4, d = (idx % c4) * 4;
    const float4 v = *reinterpret_cast<const float4*>(src + i * src_rs + d);
    const int64_t at = offset + i * dst_rs + d;
    if (aligned && dt == kF32) {
      st4(static_cast<float*>(dst) + at, v);
    } else if (aligned && dt == kBF16) {
      const __nv_bfloat162 pair[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
      *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(dst) + at) = *reinterpret_cast<const uint2*>(pair);
    } else if (aligned && dt == kF16) {
      const __half2 pair[2] = {__floats2half2_rn(v.x, v.y), __floats2half2_rn(v.z, v.w)};
      *reinterpret_cast<uint2*>(static_cast<__half*>(dst) + at) = *reinterpret_cast<const uint2*>(pair);
    } else {
      const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) store_f(dst, dt, at + u, e[u]);
    }
  }
}

// One block per (chunk, value head), 16 warps; every [64, K] product is tiled 16 x 8 per warp with
// the same tile -> warp map, so a thread re-reads in a later step exactly the dq / dk / dG entries it
// wrote earlier (no barrier needed for those read-modify-writes). Shared (KP = K + 4, AP = 68):
//   sS [max(K, 128), KP]: dS', then S, then Kb = exp(G) k (rows 0..63) and v (rows 64..127)
//   sX [64, KP]: do, then dv (staged so that it is stored by whole rows);  sY [64, KP]: v_new, then dv_new;
//   sO [64, KP]: k * dk_state, then dw, then dA A^T
//   sA, sP [64, 68]: A, dA;  G_last, sum_e S dS' [K]; beta [64]; dbeta partials [64, K / 8]
// f32 / f64 inputs only (3xTF32 products, fp32-accurate); bf16 / f16 inputs take wy_bwd_bf16_kernel.
// Steps: dk_state = exp(G_last - G) (v_new dS'^T), dAqk = scale tril(do v_new^T) (v_new's last reads, so
// that dv_new's load into sY overlaps the next steps); S, dG_last; dq_state = scale exp(G) (do S^T);
// dw = -dv_new S^T; A^T dw -> dk, dG, dbeta; A^T dv_new -> dv, dbeta (Kb and v for the next step are stored
// from the registers of this step, not loaded again);
// dA = (dw Kb^T + dv_new v^T) diag(beta) (strictly lower); dM = -A^T dA A^T.
// Writes dq_hv, dk_hv, dgc (per-token dG, before the in-chunk reverse cumsum), dbp, dAqk, dM, dg_last.
// kK = K = V: every stride, tile count and index division of the kernel is a compile-time constant (with a
// runtime K, the element loops' idx / (V / 4) and the per-element row offsets were integer divisions and
// 64-bit multiplies, a large part of the kernel's instruction count at one block per SM).
template <int kK>
__global__ void __launch_bounds__(kWyThreads, 1)
    wy_bwd_kernel(KdaDev p, const void* d_out, int d_out_dt, void* dv, int dv_dt) {
  int64_t t0;
  int L;
  if (!locate_chunk(p, blockIdx.x, t0, L)) return;
  constexpr int AP = kChunk + 4, kWarps = kWyThreads / 32;
  constexpr int K = kK, V = kK, KP = K + 4, ct = K / 8;  // ct: 8-column tiles per row block of a [64, K] product
  const int hv = blockIdx.y, h = hv / p.G, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t c = blockIdx.x;
  extern __shared__ float smem[];
  float* sS = smem;
  float* sX = sS + (K > 2 * kChunk ? K : 2 * kChunk) * KP;
  float* sY = sX + kChunk * KP;
  float* sO = sY + kChunk * KP;
  float* sA = sO + kChunk * KP;
  float* sP = sA + kChunk * AP;
  float* glS = sP + kChunk * AP;
  float* sdS = glS + K;
  float* bS = sdS + K;
  float* red = bS + kChunk;  // [64, K / 8]

  auto row_at = [&](int i) { return (t0 + i) * p.HV + hv; };
  auto k_at = [&](int i, int d) { return ((t0 + i) * p.H + h) * K + d; };
  const int64_t state_off = (c * p.HV + hv) * static_cast<int64_t>(K) * V;
  {  // operands of the later steps into L2 while the first ones run
    const int64_t fs = sizeof(float), es = dtype_bytes(p.in_dt);
    prefetch_rows(p.hs + state_off, K, V * fs, V * fs, kWyThreads);
    prefetch_rows(p.dvn + row_at(0) * V, L, p.HV * V * fs, V * fs, kWyThreads);
    prefetch_rows(static_cast<const char*>(p.v) + row_at(0) * V * es, L, p.HV * V * es, V * es, kWyThreads);
    prefetch_rows(p.gc + row_at(0) * K, L, p.HV * K * fs, K * fs, kWyThreads);
    prefetch_rows(p.kp + k_at(0, 0), L, p.H * K * fs, K * fs, kWyThreads);
  }
  // dS' and v_new by cp.async (one group, awaited now), then A (its own group, awaited before the A^T dw
  // step: its load overlaps the first products).
  cp_async_rows<kWyThreads, K, V>(sS, KP, p.dhs + state_off, V, K);
  cp_async_rows<kWyThreads, kChunk, V>(sY, KP, p.vn + row_at(0) * V, static_cast<int64_t>(p.HV) * V, L);
  cp_async_commit();
  cp_async_rows<kWyThreads, kChunk, kChunk>(sA, AP, p.A + row_at(0) * kChunk, static_cast<int64_t>(p.HV) * kChunk, L);
  cp_async_commit();
  // G_last, beta and do (all of a thread's loads in flight together, one round trip) while the copies are
  // in flight; sX is unused until the first products.
  static_assert(K <= kWyThreads && kChunk <= kWyThreads, "one G_last / beta entry per thread");
  const float gl_own = tid < K ? p.gc[row_at(L - 1) * K + tid] : 0.0f;
  const float b_own = tid < L ? p.bp[row_at(tid)] : 0.0f;
  load_rows_dt<kWyThreads, V>(sX, KP, d_out, d_out_dt, reinterpret_cast<uintptr_t>(d_out) % 16 == 0,
                              static_cast<int64_t>(p.HV) * V, row_at(0) * V, L);
  if (tid < K) glS[tid] = gl_own;
  if (tid < kChunk) bS[tid] = b_own;
  cp_async_wait<1>();
  __syncthreads();

  // Warp w owns tiles w + 16 m of every [64, K] product (m < ct / 4: columns kc, rows kr + m * kstep)
  // and of every [64, 64] product (m < 2: columns sc, rows sr + 32 m), so a thread keeps its dk and dG
  // entries in registers from the dk_state step to the A^T dw step. Per-element global operands are
  // loaded before each product so that their latency overlaps it.
  const int kc = (warp % ct) * 8, kr = (warp / ct) * 16, kstep = (kWarps / ct) * 16, kcount = ct / 4;
  const int sc = (warp % 8) * 8, sr = (warp / 8) * 16;
  // dk_keep: dk_state, read again by the A^T dw step (dG = k (beta exp(G) T2 - dk_state)).
  float dk_keep[kWyTilesMax][4];
  // dk_state = exp(G_last - G) (v_new dS'^T); dG = -k dk_state; sO = k dk_state for the dG_last sum.
  {
    float gv[kWyTilesMax][4], kv[kWyTilesMax][4], acc[kWyTilesMax][4];
#pragma unroll
    for (int m = 0; m < kWyTilesMax; ++m)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int i = kr + m * kstep + frag_row(r), d = kc + frag_col(r);
        const bool in = m < kcount && i < L;
        const float2 g2 = in ? ld2(p.gc + row_at(i) * K + d) : make_float2(0.0f, 0.0f);
        const float2 k2 = in ? ld2(p.kp + k_at(i, d)) : make_float2(0.0f, 0.0f);
        gv[m][r] = g2.x, gv[m][r + 1] = g2.y, kv[m][r] = k2.x, kv[m][r + 1] = k2.y;
      }
    zero_tiles<kWyTilesMax>(acc);
    warp_gemm_rows_abt<kWyTilesMax, true>(acc, kcount, sY + kr * KP, KP, kstep * KP, sS + kc * KP, KP, V);
#pragma unroll
    for (int m = 0; m < kWyTilesMax; ++m)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = kr + m * kstep + frag_row(r), d = kc + frag_col(r);
        const float x = i < L ? __expf(glS[d] - gv[m][r]) * acc[m][r] : 0.0f;
        dk_keep[m][r] = x;
        if (m < kcount) sO[i * KP + d] = kv[m][r] * x;
      }
  }
  // S for the S step below, loaded now so that the dAqk product hides the round trip (all of S at once).
  constexpr int kS4 = V / 4, kS4n = K * kS4, kS4u = kS4n / kWyThreads;
  static_assert(kS4n % kWyThreads == 0, "every thread takes kS4u float4 of S (no bounds test)");
  float4 s4[kS4u];
#pragma unroll
  for (int u = 0; u < kS4u; ++u) s4[u] = ldg4(p.hs + state_off + 4 * static_cast<int64_t>(tid + u * kWyThreads));
  // dAqk = scale tril(do v_new^T)   (64 x 64: 32 warp tiles)
  {
    float acc[2][4];
    zero_tiles<2>(acc);
    warp_gemm_rows_abt<2, true>(acc, 2, sX + sr * KP, KP, 32 * KP, sY + sc * KP, KP, V);
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int i = sr + 32 * m + frag_row(r), j = sc + frag_col(r);
        if (i < L)
          st2(p.dAqk + row_at(i) * kChunk + j, j <= i ? p.scale * acc[m][r] : 0.0f,
              j + 1 <= i ? p.scale * acc[m][r + 1] : 0.0f);
      }
  }
  __syncthreads();
  // S -> sS with sum_e S dS' per key channel: each thread reads the dS' float4 it is about to overwrite
  // with S (no thread touches another's), so dS' is not fetched a second time. The V / 4 float4 of a row
  // span 32 or 16 consecutive lanes, reduced by shuffles in a fixed order (unconditional: inside a bounds
  // test the compiler adds a divergent-warp fallback to every shuffle).
  {
    constexpr int c4 = kS4;
#pragma unroll
    for (int u = 0; u < kS4u; ++u) {
      const int idx = tid + u * kWyThreads;
      float* at = sS + (idx / c4) * KP + (idx % c4) * 4;
      const float4 d4 = *reinterpret_cast<const float4*>(at);
      st4(at, s4[u]);
      float s = s4[u].x * d4.x + s4[u].y * d4.y + s4[u].z * d4.z + s4[u].w * d4.w;
#pragma unroll
      for (int o = c4 / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane % c4 == 0) sdS[idx / c4] = s;
    }
  }
  // dv_new -> sY by cp.async (v_new's last readers, dk_state and dAqk, are behind the barrier before the
  // S step); its load overlaps the dG_last and dq_state steps and is awaited before the dw step.
  cp_async_rows<kWyThreads, kChunk, V>(sY, KP, p.dvn + row_at(0) * V, static_cast<int64_t>(p.HV) * V, L);
  cp_async_commit();
  for (int idx = tid; idx < kChunk * ct; idx += kWyThreads) red[idx] = 0.0f;
  __syncthreads();
  // dG_last = exp(G_last) sum_e S dS' + sum_i k_i dk_state_i
  for (int d = tid; d < K; d += kWyThreads) {
    float s = 0.0f;
    for (int i = 0; i < L; ++i) s += sO[i * KP + d];
    p.dg_last[(c * p.HV + hv) * K + d] = __expf(glS[d]) * sdS[d] + s;
  }
  // dq_state = scale exp(G) (do S^T)
  {
    float gv[kWyTilesMax][4], acc[kWyTilesMax][4];
#pragma unroll
    for (int m = 0; m < kWyTilesMax; ++m)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int i = kr + m * kstep + frag_row(r), d = kc + frag_col(r);
        const float2 g2 = m < kcount && i < L ? ld2(p.gc + row_at(i) * K + d) : make_float2(0.0f, 0.0f);
        gv[m][r] = g2.x, gv[m][r + 1] = g2.y;
      }
    zero_tiles<kWyTilesMax>(acc);
    warp_gemm_rows_abt<kWyTilesMax, true>(acc, kcount, sX + kr * KP, KP, kstep * KP, sS + kc * KP, KP, V);
#pragma unroll
    for (int m = 0; m < kWyTilesMax; ++m)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int i = kr + m * kstep + frag_row(r), d = kc + frag_col(r);
        if (m < kcount && i < L)
          st2(p.dq_hv + row_at(i) * K + d, p.scale * __expf(gv[m][r]) * acc[m][r],
              p.scale * __expf(gv[m][r + 1]) * acc[m][r + 1]);
      }
  }
  // v at this thread's entries of the A^T step's tiles, loaded now so that the dw product hides the latency
  // (held in registers through dw rather than through the A^T products, where registers are scarcer).
  float vv[kWyTilesMax][4];
#pragma unroll
  for (int m = 0; m < kWyTilesMax; ++m)
#pragma unroll
    for (int r = 0; r < 4; r += 2) {
      const int j = kr + m * kstep + frag_row(r), d = kc + frag_col(r);
      const float2 v2 =
          m < kcount && j < L ? load2_f(p.aligned, p.v, p.in_dt, row_at(j) * V + d) : make_float2(0.0f, 0.0f);
      vv[m][r] = v2.x, vv[m][r + 1] = v2.y;
    }
  cp_async_wait_all();  // A and dv_new
  __syncthreads();
  // dw = -dv_new S^T -> sO
  {
    float acc[kWyTilesMax][4];
    zero_tiles<kWyTilesMax>(acc);
    warp_gemm_rows_abt<kWyTilesMax, true>(acc, kcount, sY + kr * KP, KP, kstep * KP, sS + kc * KP, KP, V);
#pragma unroll
    for (int m = 0; m < kWyTilesMax; ++m)
      if (m < kcount)
#pragma unroll
        for (int r = 0; r < 4; ++r) sO[(kr + m * kstep + frag_row(r)) * KP + kc + frag_col(r)] = -acc[m][r];
  }
  __syncthreads();
  // T2 = A^T dw: dk += beta exp(G) T2, dG += k beta exp(G) T2, dbeta += T2 . (exp(G) k);
  // T3 = A^T dv_new: dv = beta T3, dbeta += T3 . v   (V == K: the same tiles)
  // G and k are loaded before the products (their latency overlaps them): loaded after the first global
  // store below they would wait one round trip per entry, as the stores may alias them; v is vv. (k is
  // loaded again rather than kept from the dk_state step: 16 registers fewer through the steps between.)
  // The same registers give the dA step's operands, so that neither is loaded a second time: v -> sS rows
  // [64, 128) now (exact: the dbeta sum below reads it back), Kb = exp(G) k -> sS rows [0, 64) in the epilogue
  // (S's last reader, dw, is behind the barrier above; rows >= L are zero, as G, k and v are there). The warp
  // tiles cover [64, K] once, and V == K.
#pragma unroll
  for (int m = 0; m < kWyTilesMax; ++m)
    if (m < kcount)
#pragma unroll
      for (int r = 0; r < 4; r += 2)
        st2(sS + (kChunk + kr + m * kstep + frag_row(r)) * KP + kc + frag_col(r), vv[m][r], vv[m][r + 1]);
  {
    float gv[kWyTilesMax][4], kv[kWyTilesMax][4];
#pragma unroll
    for (int m = 0; m < kWyTilesMax; ++m)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int j = kr + m * kstep + frag_row(r), d = kc + frag_col(r);
        const bool in = m < kcount && j < L;
        const float2 g2 = in ? ld2(p.gc + row_at(j) * K + d) : make_float2(0.0f, 0.0f);
        const float2 k2 = in ? ld2(p.kp + k_at(j, d)) : make_float2(0.0f, 0.0f);
        gv[m][r] = g2.x, gv[m][r + 1] = g2.y, kv[m][r] = k2.x, kv[m][r + 1] = k2.y;
      }
    float t2[kWyTilesMax][4], t3[kWyTilesMax][4];
    zero_tiles<kWyTilesMax>(t2);
    zero_tiles<kWyTilesMax>(t3);
    warp_gemm_rows<kWyTilesMax, true>(t2, kcount, sA + kr, 1, AP, kstep, sO + kc, KP, 1, kChunk);
    warp_gemm_rows<kWyTilesMax, true>(t3, kcount, sA + kr, 1, AP, kstep, sY + kc, KP, 1, kChunk);
#pragma unroll
    for (int m = 0; m < kWyTilesMax; ++m) {
      if (m >= kcount) break;
      const int r0 = kr + m * kstep;
      float db[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int j = r0 + frag_row(r), d = kc + frag_col(r);
        const float bj = bS[j];  // once: the shared stores below could alias bS for the compiler
        float eg[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) eg[u] = __expf(gv[m][r + u]);
        st2(sS + j * KP + d, eg[0] * kv[m][r], eg[1] * kv[m][r + 1]);
        st2(sX + j * KP + d, bj * t3[m][r], bj * t3[m][r + 1]);
        if (j < L) {
          const int64_t at = row_at(j) * K + d;
          const float2 v2 = ld2(sS + (kChunk + j) * KP + d);
          const float vj[2] = {v2.x, v2.y};
          float dk2[2], dg2[2];
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const float dkb = bj * eg[u] * t2[m][r + u], kd = kv[m][r + u];
            dk2[u] = dk_keep[m][r + u] + dkb;
            dg2[u] = __fmaf_rn(kd, dkb, -kd * dk_keep[m][r + u]);
            db[r / 2] += t2[m][r + u] * eg[u] * kd + t3[m][r + u] * vj[u];
          }
          st2(p.dk_hv + at, dk2[0], dk2[1]);
          st2(p.dgc + at, dg2[0], dg2[1]);
        }
      }
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        db[q] += __shfl_xor_sync(0xffffffffu, db[q], 1);
        db[q] += __shfl_xor_sync(0xffffffffu, db[q], 2);
      }
      if ((lane & 3) == 0) {
        red[(r0 + lane / 4) * ct + kc / 8] = db[0];
        red[(r0 + lane / 4 + 8) * ct + kc / 8] = db[1];
      }
    }
  }
  __syncthreads();
  store_rows_dt<kWyThreads, V>(dv, dv_dt, reinterpret_cast<uintptr_t>(dv) % 16 == 0, static_cast<int64_t>(p.HV) * V,
                               row_at(0) * V, sX, KP, L);
  if (tid < L) {
    float s = 0.0f;
    for (int q = 0; q < ct; ++q) s += red[tid * ct + q];
    p.dbp[row_at(tid)] = s;
  }
  // dA_ij = beta_j (dw_i . Kb_j + dv_new_i . v_j), j < i < L -> sP
  {
    float acc[2][4];
    zero_tiles<2>(acc);
    warp_gemm_rows_abt<2, true>(acc, 2, sO + sr * KP, KP, 32 * KP, sS + sc * KP, KP, K);
    warp_gemm_rows_abt<2, true>(acc, 2, sY + sr * KP, KP, 32 * KP, sS + (kChunk + sc) * KP, KP, V);
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = sr + 32 * m + frag_row(r), j = sc + frag_col(r);
        sP[i * AP + j] = j < i && i < L ? bS[j] * acc[m][r] : 0.0f;
      }
  }
  __syncthreads();
  // dA A^T -> sO (as [64, 68])
  float* sQ = sO;
  {
    float acc[2][4];
    zero_tiles<2>(acc);
    warp_gemm_rows_abt<2, true>(acc, 2, sP + sr * AP, AP, 32 * AP, sA + sc * AP, AP, kChunk);
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int r = 0; r < 4; ++r) sQ[(sr + 32 * m + frag_row(r)) * AP + sc + frag_col(r)] = acc[m][r];
  }
  __syncthreads();
  // dM = -A^T (dA A^T), strictly lower
  {
    float acc[2][4];
    zero_tiles<2>(acc);
    warp_gemm_rows<2, true>(acc, 2, sA + sr, 1, AP, 32, sQ + sc, AP, 1, kChunk);
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        const int i = sr + 32 * m + frag_row(r), j = sc + frag_col(r);
        if (i < L) st2(p.dM + row_at(i) * kChunk + j, j < i ? -acc[m][r] : 0.0f, j + 1 < i ? -acc[m][r + 1] : 0.0f);
      }
  }
}

// ---- wy_bwd for bf16 / f16 inputs: the same steps and outputs as wy_bwd_kernel, every product as bf16
// mma.sync m16n8k16 on bf16 shared tiles (mma_bf16.cuh), fp32 accumulation.
// Operands: do and v as given (f16 rounded to bf16); dS', S, v_new, dv_new as the state passes stored them (bf16
// scratch); A rounded to bf16 on the way into shared memory; dw = -dv_new S^T, Kb = exp(G) k, dA and dA A^T from
// fp32 accumulators. These
// are FLA's operands too (chunk_kda_bwd_wy_dqkg_fused: v_new, do, h, dh, dv, A, dw, kg as bf16, and dA, dA A
// in A's dtype for dM). Everything else stays fp32: the accumulators, the gate factors exp(G_last - G), exp(G) and
// beta applied to them, dk_state (kept in dk_hv between its steps), and the sums sum_e S dS' (bf16 S against the bf16
// dS' tile, fp32 products), sum_i k dk_state, dbeta (fp32 T2, T3 against fp32 exp(G) k and v).
// bf16 tiles halve the shared memory of the fp32 ones (108.8 KB at K = 128), so two blocks of 8 warps share an SM:
// one block's global round trips overlap the other's products. dS', v_new, dv_new and bf16 do go to their tiles by
// cp.async; f16 do, v and A through registers (converted), S through registers (its entries meet dS' there).
constexpr int kWyBf16Threads = 256;

// c[MI][2 NJ] += A B over kdim (a multiple of 16) for the warp tile rows m0 + 16 mi (+ 0..15), columns
// n0 + 16 nj (+ 0..15) (accumulator 2 nj + h: columns n0 + 16 nj + 8 h ..); A from a tile stored [m][k]
// (kATrans: [k][m]), B from a tile stored [n][k] (kBKn: [k][n]); strides in elements. Each k step loads every
// fragment once: MI + NJ ldmatrix.x4 for 2 MI NJ MMAs.
template <int MI, int NJ, bool kATrans, bool kBKn>
__device__ __forceinline__ void warp_mma_bf16(float (&c)[MI][2 * NJ][4], const __nv_bfloat16* a, int as, int m0,
                                              const __nv_bfloat16* b, int bs, int n0, int kdim) {
#pragma unroll 2
  for (int k0 = 0; k0 < kdim; k0 += 16) {
    uint32_t af[MI][4], bf[NJ][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      if constexpr (kATrans)
        a_frag_t(af[mi], a, as, m0 + 16 * mi, k0);
      else
        a_frag(af[mi], a, as, m0 + 16 * mi, k0);
    }
#pragma unroll
    for (int nj = 0; nj < NJ; ++nj) {
      if constexpr (kBKn)
        b_frag_kn(bf[nj], b, bs, k0, n0 + 16 * nj);
      else
        b_frag_nk(bf[nj], b, bs, k0, n0 + 16 * nj);
    }
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int nj = 0; nj < NJ; ++nj) {
        mma_bf16(c[mi][2 * nj], af[mi], bf[nj][0], bf[nj][1]);
        mma_bf16(c[mi][2 * nj + 1], af[mi], bf[nj][2], bf[nj][3]);
      }
  }
}

template <int MI, int NN>
__device__ __forceinline__ void zero_acc(float (&c)[MI][NN][4]) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int n = 0; n < NN; ++n) c[mi][n][0] = c[mi][n][1] = c[mi][n][2] = c[mi][n][3] = 0.0f;
}

// Rows [0, kRows) x kCols of a row-major source (row i at offset + i * src_rs) into a bf16 shared tile of row
// stride S, four entries per load, rounded to nearest; rows >= rows_valid zero. fp32 scratch (load(i) = ldg4) or a
// dtype-coded input (load4_f). Up to 8 loads per thread in flight before its stores.
template <int kRows, int kCols, class Load>
__device__ __forceinline__ void load_tile_bf16(__nv_bfloat16* dst, int S, int rows_valid, Load load) {
  constexpr int c4 = kCols / 4, per = kRows * c4 / kWyBf16Threads, U = per < 8 ? per : 8;
  static_assert(per * kWyBf16Threads == kRows * c4 && per % U == 0, "every thread takes per float4");
#pragma unroll
  for (int base = 0; base < per; base += U) {
    float4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = threadIdx.x + (base + u) * kWyBf16Threads, i = idx / c4;
      v[u] = i < rows_valid ? load(i, (idx % c4) * 4) : zero4();
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = threadIdx.x + (base + u) * kWyBf16Threads;
      st_bf16x4(dst + (idx / c4) * S + (idx % c4) * 4, v[u]);
    }
  }
}

// Rows [0, kRows) x kCols of bf16 scratch (row i at src + i * src_rs) into a bf16 tile of row stride S by cp.async,
// 8 entries per copy, rows >= rows_valid zero-filled; the caller commits and waits.
template <int kRows, int kCols>
__device__ __forceinline__ void copy_tile_bf16(__nv_bfloat16* dst, int S, const __nv_bfloat16* src, int64_t src_rs,
                                               int rows_valid) {
  constexpr int c8 = kCols / 8;
  for (int idx = threadIdx.x; idx < kRows * c8; idx += kWyBf16Threads) {
    const int i = idx / c8, d = (idx % c8) * 8;
    const bool in = i < rows_valid;
    cp_async16(dst + i * S + d, src + (in ? i * src_rs + d : 0), in);
  }
}

// Two consecutive elements (i even) of a dtype-coded output, rounded to nearest like store_f: one 4- / 8-byte store
// when the base is aligned (`aligned`), two scalar ones otherwise.
__device__ __forceinline__ void store2_f(void* base, int dt, bool aligned, int64_t i, float a, float b) {
  if (aligned) {
    switch (dt) {
      case kF32:
        *reinterpret_cast<float2*>(static_cast<float*>(base) + i) = make_float2(a, b);
        return;
      case kBF16:
        *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(base) + i) = __floats2bfloat162_rn(a, b);
        return;
      case kF16:
        *reinterpret_cast<__half2*>(static_cast<__half*>(base) + i) = __floats2half2_rn(a, b);
        return;
      default:
        break;
    }
  }
  store_f(base, dt, i, a);
  store_f(base, dt, i + 1, b);
}

// One block per (chunk, value head), 8 warps, two blocks per SM. Every product's output [64, K] (or [64, 64]
// with K = 64's map) is tiled 32 x K / 4 per warp: warp w owns rows 32 (w / 4) .., columns (K / 4) (w % 4) ..,
// the same entries in every [64, K] step, so the thread that stores dk_state to dk_hv in the first step reads it
// back in the A^T dw step (no barrier, no other thread). [64, 64] products use the 32 x 16 map, skipping the warps
// whose tile lies above the diagonal where the result is strictly / inclusively lower (their outputs are zeros).
// Shared (bf16, row strides SK = K + 8, SC = 72: 16 bytes mod 128, conflict-free ldmatrix):
//   tS [max(K, 128), SK]: dS', then S, then Kb = exp(G) k (rows 0..63) and v (rows 64..127)
//   tX [64, SK]: do;  tY [64, SK]: v_new, then dv_new;  tO [64, SK]: dw, then dA A^T (stride SC)
//   tA, tP [64, SC]: A, dA;  fp32: G_last, sum_e S dS' [K], column sums of k dk_state by row half [2, K],
//   beta [64], dbeta partials by column quarter [64, 4]
// Steps as in wy_bwd_kernel; dS', v_new, do and A are loaded at the start, S
// (sum_e S dS' against the bf16 dS' it overwrites) and dv_new after the dk_state / dAqk products.
template <int kK>
__global__ void __launch_bounds__(kWyBf16Threads, 2)
    wy_bwd_bf16_kernel(KdaDev p, const void* d_out, int d_out_dt, void* dv, int dv_dt) {
  int64_t t0;
  int L;
  if (!locate_chunk(p, blockIdx.x, t0, L)) return;
  using bf16 = __nv_bfloat16;
  constexpr int NT = kWyBf16Threads, K = kK, V = kK, SK = K + 8, SC = kChunk + 8, NJ = K / 64;
  constexpr int kSRows = K > 2 * kChunk ? K : 2 * kChunk;
  static_assert(NT == 256 && K % 64 == 0 && K <= NT, "8 warps of 32 x K / 4; one G_last entry per thread");
  const int hv = blockIdx.y, h = hv / p.G, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t c = blockIdx.x;
  extern __shared__ __align__(16) unsigned char wy_smem[];
  bf16* tS = reinterpret_cast<bf16*>(wy_smem);
  bf16* tX = tS + kSRows * SK;
  bf16* tY = tX + kChunk * SK;
  bf16* tO = tY + kChunk * SK;
  bf16* tA = tO + kChunk * SK;
  bf16* tP = tA + kChunk * SC;
  float* glS = reinterpret_cast<float*>(tP + kChunk * SC);
  float* sdS = glS + K;
  float* cs = sdS + K;
  float* bS = cs + 2 * K;
  float* red = bS + kChunk;

  auto row_at = [&](int i) { return (t0 + i) * p.HV + hv; };
  auto k_at = [&](int i, int d) { return ((t0 + i) * p.H + h) * K + d; };
  const int64_t state_off = (c * p.HV + hv) * static_cast<int64_t>(K) * V, vrs = static_cast<int64_t>(p.HV) * V;
  {  // operands of the later steps into L2 while the first ones run
    const int64_t fs = sizeof(float), bs = sizeof(bf16), es = dtype_bytes(p.in_dt);
    prefetch_rows(p.hs_bf16 + state_off, K, V * bs, V * bs, NT);
    prefetch_rows(p.dvn_bf16 + row_at(0) * V, L, p.HV * V * bs, V * bs, NT);
    prefetch_rows(static_cast<const char*>(p.v) + row_at(0) * V * es, L, p.HV * V * es, V * es, NT);
    prefetch_rows(p.gc + row_at(0) * K, L, p.HV * K * fs, K * fs, NT);
    prefetch_rows(p.kp + k_at(0, 0), L, p.H * K * fs, K * fs, NT);
  }
  if (tid < K) glS[tid] = p.gc[row_at(L - 1) * K + tid];
  if (tid < kChunk) bS[tid] = tid < L ? p.bp[row_at(tid)] : 0.0f;
  {
    copy_tile_bf16<K, V>(tS, SK, p.dhs_bf16 + state_off, V, K);
    copy_tile_bf16<kChunk, V>(tY, SK, p.vn_bf16 + row_at(0) * V, vrs, L);
    const bool aligned = reinterpret_cast<uintptr_t>(d_out) % 16 == 0;
    const int64_t o0 = row_at(0) * V;
    const bool do_bf16 = d_out_dt == kBF16 && aligned;  // the benchmark's case: do goes to its tile as it is
    if (do_bf16) copy_tile_bf16<kChunk, V>(tX, SK, static_cast<const bf16*>(d_out) + o0, vrs, L);
    cp_async_commit();
    if (!do_bf16)
      load_tile_bf16<kChunk, V>(tX, SK, L,
                                [&](int i, int d) { return load4_f(aligned, d_out, d_out_dt, o0 + i * vrs + d); });
    const float* A = p.A + row_at(0) * kChunk;
    const int64_t ars = static_cast<int64_t>(p.HV) * kChunk;
    load_tile_bf16<kChunk, kChunk>(tA, SC, L, [&](int i, int d) { return ldg4(A + i * ars + d); });
    cp_async_wait<0>();
  }
  __syncthreads();

  // Chunk bases and 32-bit row strides of the per-token arrays (64-bit addresses per entry cost registers).
  const int gs = p.HV * K, ks = p.H * K;
  const float* gc0 = p.gc + row_at(0) * K;
  const float* kp0 = p.kp + k_at(0, 0);
  float* dq0 = p.dq_hv + row_at(0) * K;
  float* dk0 = p.dk_hv + row_at(0) * K;
  float* dg0 = p.dgc + row_at(0) * K;
  const int64_t v0 = row_at(0) * V;
  const int g = lane / 4, tq = lane % 4;
  const int mr = (warp / 4) * 32, nc = (warp % 4) * (K / 4), sc = (warp % 4) * 16;
  const bool upper = sc >= mr + 32;  // the warp's 32 x 16 tile of a [64, 64] product lies above the diagonal
  // Entry r of accumulator (mi, n) is row mr + 16 mi + g (+ 8 for r >= 2), column nc + 8 n + 2 tq (+ 1 for odd r).
  auto row_of = [&](int mi, int r) { return mr + 16 * mi + g + (r >= 2 ? 8 : 0); };
  auto col_of = [&](int n) { return nc + 8 * n + 2 * tq; };
  auto col64 = [&](int n) { return sc + 8 * n + 2 * tq; };
  // factor * acc of a [64, 64] product into the rows < L of a [tokens, HV, 64] buffer, zero above the diagonal:
  // lower triangle with it (strict = 0: dAqk) or without (strict = 1: dM)
  auto store_lower = [&](float* dst, const float (&acc)[2][2][4], float factor, int strict) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int r = 0; r < 4; r += 2) {
          const int i = row_of(mi, r), j = col64(n);
          if (i < L)
            st2(dst + row_at(i) * kChunk + j, j + strict <= i ? factor * acc[mi][n][r] : 0.0f,
                j + 1 + strict <= i ? factor * acc[mi][n][r + 1] : 0.0f);
        }
  };
  // G at this thread's accumulator entries of the 16-column block nj (pairs of adjacent columns; rows >= L zero),
  // loaded before a product so that its latency hides behind the MMAs
  auto load_gate_pairs = [&](float2 (&gv)[2][2][2], int nj) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h8 = 0; h8 < 2; ++h8)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int i = row_of(mi, 2 * hh);
          gv[mi][h8][hh] = i < L ? ld2(gc0 + i * gs + col_of(2 * nj + h8)) : make_float2(0.0f, 0.0f);
        }
  };

  // dk_state = exp(G_last - G) (v_new dS'^T); column sums of k dk_state (for dG_last) by warp row half. The [64, K]
  // products go by 16-column blocks nj (a 32 x 16 accumulator per pass). dk_state goes to dk_hv now and is read
  // back by the same thread in the A^T dw step (L2 holds it; kept in registers through the steps between, its 32
  // per thread spilled at 128 registers).
#pragma unroll 1
  for (int nj = 0; nj < NJ; ++nj) {
    float2 gv[2][2][2];
    load_gate_pairs(gv, nj);
    float acc[2][2][4];
    zero_acc(acc);
    warp_mma_bf16<2, 1, false, false>(acc, tY, SK, mr, tS, SK, nc + 16 * nj, V);
#pragma unroll
    for (int h8 = 0; h8 < 2; ++h8) {
      const int n = 2 * nj + h8, d = col_of(n);
      const float gl0 = glS[d], gl1 = glS[d + 1];
      float colsum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int i = row_of(mi, 2 * hh);
          const bool in = i < L;
          const float2 k2 = in ? ld2(kp0 + i * ks + d) : make_float2(0.0f, 0.0f);
          const float x0 = in ? __expf(gl0 - gv[mi][h8][hh].x) * acc[mi][h8][2 * hh] : 0.0f;
          const float x1 = in ? __expf(gl1 - gv[mi][h8][hh].y) * acc[mi][h8][2 * hh + 1] : 0.0f;
          if (in) st2(dk0 + i * gs + d, x0, x1);
          colsum[0] += k2.x * x0;
          colsum[1] += k2.y * x1;
        }
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) colsum[u] += __shfl_xor_sync(0xffffffffu, colsum[u], o);
      if (g == 0) cs[(warp / 4) * K + d] = colsum[0], cs[(warp / 4) * K + d + 1] = colsum[1];
    }
  }
  // dAqk = scale tril(do v_new^T)
  {
    float acc[2][2][4];
    zero_acc(acc);
    if (!upper) warp_mma_bf16<2, 1, false, false>(acc, tX, SK, mr, tY, SK, sc, V);
    store_lower(p.dAqk, acc, p.scale, 0);
  }
  __syncthreads();
  // S -> tS over dS', with sum_e S dS' per key channel: S against dS' as the bf16 tS entries that each
  // thread reads just before it overwrites them (its own 4 entries: no other thread touches them in this step,
  // and the last products reading dS', dk_state, are behind the barrier above), as FLA's bf16 dh.
  // The V / 4 float4 of a row span 32 or 16 consecutive lanes, reduced by shuffles in a fixed order. Then
  // dv_new -> tY.
  {
    constexpr int c4 = V / 4, per = K * c4 / NT, U = per < 8 ? per : 8;
    static_assert(per % U == 0 && c4 <= 32, "whole rows per warp");
    const bf16* hs = p.hs_bf16 + state_off;
#pragma unroll 1  // unrolled, the compiler issues every round's loads at once (spills)
    for (int base = 0; base < per; base += U) {
      uint2 s4[U];  // 4 bf16 each
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int idx = tid + (base + u) * NT;
        s4[u] = __ldg(reinterpret_cast<const uint2*>(hs + 4 * idx));
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int idx = tid + (base + u) * NT;
        bf16* at = tS + (idx / c4) * SK + (idx % c4) * 4;
        const float4 d4 = ld_bf16x4(at);
        *reinterpret_cast<uint2*>(at) = s4[u];
        const float4 x = unpack_bf16x4(s4[u]);
        float s = x.x * d4.x + x.y * d4.y + x.z * d4.z + x.w * d4.w;
#pragma unroll
        for (int o = c4 / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane % c4 == 0) sdS[idx / c4] = s;
      }
    }
    copy_tile_bf16<kChunk, V>(tY, SK, p.dvn_bf16 + row_at(0) * V, vrs, L);
    cp_async_commit();
    cp_async_wait<0>();
  }
  __syncthreads();
  // dG_last = exp(G_last) sum_e S dS' + sum_i k_i dk_state_i
  if (tid < K) p.dg_last[(c * p.HV + hv) * K + tid] = __expf(glS[tid]) * sdS[tid] + (cs[tid] + cs[K + tid]);
  // dq_state = scale exp(G) (do S^T)
#pragma unroll 1
  for (int nj = 0; nj < NJ; ++nj) {
    float2 gv[2][2][2];
    load_gate_pairs(gv, nj);
    float acc[2][2][4];
    zero_acc(acc);
    warp_mma_bf16<2, 1, false, false>(acc, tX, SK, mr, tS, SK, nc + 16 * nj, V);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h8 = 0; h8 < 2; ++h8)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int i = row_of(mi, 2 * hh);
          if (i < L)
            st2(dq0 + i * gs + col_of(2 * nj + h8), p.scale * __expf(gv[mi][h8][hh].x) * acc[mi][h8][2 * hh],
                p.scale * __expf(gv[mi][h8][hh].y) * acc[mi][h8][2 * hh + 1]);
        }
  }
  // dw = -dv_new S^T -> tO
#pragma unroll 1
  for (int nj = 0; nj < NJ; ++nj) {
    float acc[2][2][4];
    zero_acc(acc);
    warp_mma_bf16<2, 1, false, false>(acc, tY, SK, mr, tS, SK, nc + 16 * nj, V);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h8 = 0; h8 < 2; ++h8)
#pragma unroll
        for (int r = 0; r < 4; r += 2)
          st_bf16x2(tO + row_of(mi, r) * SK + col_of(2 * nj + h8), -acc[mi][h8][r], -acc[mi][h8][r + 1]);
  }
  __syncthreads();
  // T3 = A^T dv_new: dv = beta T3, dbeta += T3 . v;  T2 = A^T dw: dk = dk_state + beta exp(G) T2,
  // dG = k (beta exp(G) T2 - dk_state), dbeta += T2 . (exp(G) k). By 16-column blocks, T3 then T2 (one 32 x 16
  // accumulator and its operands live at a time next to dk_state); v -> tS rows [64, 128) and Kb = exp(G) k -> rows
  // [0, 64) for the dA step (S's last reader, dw, is behind the barrier above; rows >= L are zero, as G, k and v
  // are there). v, G, k come from global memory at fp32 (v in its input dtype) for the fp32 sums.
  {
    const bool dv_aligned = reinterpret_cast<uintptr_t>(dv) % 16 == 0;
    float db[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // (mi, row half): this thread's part of dbeta
    auto a_t_mma = [&](float(&acc)[2][2][4], const bf16* b, int n0) {
      zero_acc(acc);
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 16) {
        uint32_t af[2][4], bfr[4];
        a_frag_t(af[0], tA, SC, mr, k0);
        a_frag_t(af[1], tA, SC, mr + 16, k0);
        b_frag_kn(bfr, b, SK, k0, n0);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_bf16(acc[mi][0], af[mi], bfr[0], bfr[1]);
          mma_bf16(acc[mi][1], af[mi], bfr[2], bfr[3]);
        }
      }
    };
#pragma unroll 1
    for (int nj = 0; nj < NJ; ++nj) {
      {
        float2 vv[2][2][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int h8 = 0; h8 < 2; ++h8)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int j = row_of(mi, 2 * hh);
              vv[mi][h8][hh] = j < L ? load2_f(p.aligned, p.v, p.in_dt, v0 + j * vrs + col_of(2 * nj + h8))
                                     : make_float2(0.0f, 0.0f);
            }
        float t3[2][2][4];
        a_t_mma(t3, tY, nc + 16 * nj);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int h8 = 0; h8 < 2; ++h8)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int j = row_of(mi, 2 * hh), d = col_of(2 * nj + h8);
              const float2 v2 = vv[mi][h8][hh];
              const float* a3 = &t3[mi][h8][2 * hh];
              st_bf16x2(tS + (kChunk + j) * SK + d, v2.x, v2.y);
              db[mi][hh] += a3[0] * v2.x + a3[1] * v2.y;
              if (j < L) store2_f(dv, dv_dt, dv_aligned, v0 + j * vrs + d, bS[j] * a3[0], bS[j] * a3[1]);
            }
      }
      {
        float2 gv[2][2][2], kv[2][2][2], kd_[2][2][2];  // G, k, dk_state
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int h8 = 0; h8 < 2; ++h8)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int j = row_of(mi, 2 * hh), d = col_of(2 * nj + h8);
              const bool in = j < L;
              gv[mi][h8][hh] = in ? ld2(gc0 + j * gs + d) : make_float2(0.0f, 0.0f);
              kv[mi][h8][hh] = in ? ld2(kp0 + j * ks + d) : make_float2(0.0f, 0.0f);
              kd_[mi][h8][hh] = in ? ld2(dk0 + j * gs + d) : make_float2(0.0f, 0.0f);
            }
        float t2[2][2][4];
        a_t_mma(t2, tO, nc + 16 * nj);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int h8 = 0; h8 < 2; ++h8)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int n = 2 * nj + h8, j = row_of(mi, 2 * hh), d = col_of(n);
              const float bj = bS[j];
              const float eg[2] = {__expf(gv[mi][h8][hh].x), __expf(gv[mi][h8][hh].y)};
              const float kd[2] = {kv[mi][h8][hh].x, kv[mi][h8][hh].y};
              st_bf16x2(tS + j * SK + d, eg[0] * kd[0], eg[1] * kd[1]);
              if (j < L) {
                const float* a2 = &t2[mi][h8][2 * hh];
                const float keep[2] = {kd_[mi][h8][hh].x, kd_[mi][h8][hh].y};
                float dk2[2], dg2[2];
#pragma unroll
                for (int u = 0; u < 2; ++u) {
                  const float dkb = bj * eg[u] * a2[u];
                  dk2[u] = keep[u] + dkb;
                  dg2[u] = __fmaf_rn(kd[u], dkb, -kd[u] * keep[u]);
                  db[mi][hh] += a2[u] * eg[u] * kd[u];
                }
                const int at = j * gs + d;
                st2(dk0 + at, dk2[0], dk2[1]);
                st2(dg0 + at, dg2[0], dg2[1]);
              }
            }
      }
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float s = db[mi][hh];
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if (tq == 0) red[row_of(mi, 2 * hh) * 4 + warp % 4] = s;
      }
  }
  __syncthreads();
  if (tid < L) p.dbp[row_at(tid)] = (red[tid * 4] + red[tid * 4 + 1]) + (red[tid * 4 + 2] + red[tid * 4 + 3]);
  // dA_ij = beta_j (dw_i . Kb_j + dv_new_i . v_j), j < i < L -> tP
  {
    float acc[2][2][4];
    zero_acc(acc);
    if (!upper) {
      warp_mma_bf16<2, 1, false, false>(acc, tO, SK, mr, tS, SK, sc, K);
      warp_mma_bf16<2, 1, false, false>(acc, tY, SK, mr, tS + kChunk * SK, SK, sc, V);
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int r = 0; r < 4; r += 2) {
          const int i = row_of(mi, r), j = col64(n);
          st_bf16x2(tP + i * SC + j, j < i && i < L ? bS[j] * acc[mi][n][r] : 0.0f,
                    j + 1 < i && i < L ? bS[j + 1] * acc[mi][n][r + 1] : 0.0f);
        }
  }
  __syncthreads();
  // dA A^T -> tQ (over dw)
  bf16* tQ = tO;
  {
    float acc[2][2][4];
    zero_acc(acc);
    warp_mma_bf16<2, 1, false, false>(acc, tP, SC, mr, tA, SC, sc, kChunk);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int r = 0; r < 4; r += 2) st_bf16x2(tQ + row_of(mi, r) * SC + col64(n), acc[mi][n][r], acc[mi][n][r + 1]);
  }
  __syncthreads();
  // dM = -A^T (dA A^T), strictly lower
  {
    float acc[2][2][4];
    zero_acc(acc);
    if (!upper) warp_mma_bf16<2, 1, true, true>(acc, tA, SC, mr, tQ, SC, sc, kChunk);
    store_lower(p.dM, acc, -1.0f, 1);
  }
}

// One block per (chunk, value head, 32 key channels), warp w owning sub-chunk w (rows 16w..16w+15).
// The pairwise-decay terms
//   dq_i += sum_{j<=i} dAqk_ij k_j exp(G_i - G_j),  R_i = sum_{j<i} dM_ij k_j exp(G_i - G_j)
//   C_j  = sum_{i>=j} dAqk_ij q_i exp(G_i - G_j) + sum_{i>j} dM_ij beta_i k_i exp(G_i - G_j)
// split by sub-chunk (FLA): for sub-chunks J < I, exp(G_i - G_j) = exp(G_i - G_ref) exp(G_ref - G_j) with
// G_ref the gate at the first row of I (row sums) or at the last row of J (column sums); both factors
// are <= 1 for decays g <= 0, so the off-diagonal blocks are tensor-core products of pre-scaled operands
// and only the 16 x 16 diagonal blocks take per-pair exponentials. Then dk += beta R + C, dbeta += k . R,
// dG += q dq + k (beta R - C) and dg = reverse cumsum of dG within the chunk, starting from dG_last.
// Shared: k, q, G as [64, 36] (rows >= L: zero, G repeats the last row so every exponent stays finite);
// dAqk, dM [64, 68]; beta [64]; dG staging [64, 36].
template <bool kPrecise>
__global__ void __launch_bounds__(kPairThreads) pair_bwd_kernel(KdaDev p) {
  int64_t t0;
  int L;
  if (!locate_chunk(p, blockIdx.x, t0, L)) return;
  constexpr int KS = kSliceStride, AP = kChunk + 4;
  const int hv = blockIdx.y, h = hv / p.G, K = p.K, d0 = blockIdx.z * kSlice, tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int64_t c = blockIdx.x;
  extern __shared__ float smem[];
  float* kS = smem;
  float* qS = kS + kChunk * KS;
  float* gS = qS + kChunk * KS;
  float* stS = gS + kChunk * KS;
  float* aqS = stS + kChunk * KS;
  float* dmS = aqS + kChunk * AP;
  float* bS = dmS + kChunk * AP;
  auto row_at = [&](int i) { return (t0 + i) * p.HV + hv; };

  {  // the wy_bwd partials read at the end, into L2 now
    const int64_t fs = sizeof(float), rs = static_cast<int64_t>(p.HV) * K * fs;
    prefetch_rows(p.dq_hv + row_at(0) * K + d0, L, rs, kSlice * fs, kPairThreads);
    prefetch_rows(p.dk_hv + row_at(0) * K + d0, L, rs, kSlice * fs, kPairThreads);
    prefetch_rows(p.dgc + row_at(0) * K + d0, L, rs, kSlice * fs, kPairThreads);
  }
  // k, q, G slices, dAqk, dM by cp.async (every load of the block in flight at once).
  {
    constexpr int c4 = kSlice / 4;
    for (int idx = tid; idx < kChunk * c4; idx += kPairThreads) {
      const int i = idx / c4, d = d0 + (idx % c4) * 4, at = i * KS + (idx % c4) * 4;
      if (i < L) {
        const int64_t kq = ((t0 + i) * p.H + h) * K + d;
        cp_async16(kS + at, p.kp + kq);
        cp_async16(qS + at, p.qp + kq);
      } else {
        st4(kS + at, zero4());
        st4(qS + at, zero4());
      }
      cp_async16(gS + at, p.gc + row_at(i < L ? i : L - 1) * K + d);
    }
  }
  cp_async_rows<kPairThreads, kChunk, kChunk>(aqS, AP, p.dAqk + row_at(0) * kChunk, static_cast<int64_t>(p.HV) * kChunk,
                                              L);
  cp_async_rows<kPairThreads, kChunk, kChunk>(dmS, AP, p.dM + row_at(0) * kChunk, static_cast<int64_t>(p.HV) * kChunk,
                                              L);
  for (int i = tid; i < kChunk; i += kPairThreads) bS[i] = i < L ? p.bp[row_at(i)] : 0.0f;
  cp_async_wait_all();
  __syncthreads();

  const int base = warp * kSub;  // this warp's sub-chunk
  float dq[4][4], rm[4][4], ct[4][4];
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int r = 0; r < 4; ++r) dq[n][r] = rm[n][r] = ct[n][r] = 0.0f;

  if (base < L) {
    // Row sums over earlier sub-chunks, reference G at row `base`.
    for (int J = 0; J < warp; ++J)
#pragma unroll
      for (int kk = 0; kk < kSub; kk += 8) {
        const int j0 = J * kSub + kk;
        const float* aq = aqS + base * AP + j0;
        const float* dm = dmS + base * AP + j0;
        const float fa[4] = {aq[g * AP + t], aq[(g + 8) * AP + t], aq[g * AP + t + 4], aq[(g + 8) * AP + t + 4]};
        const float fm[4] = {dm[g * AP + t], dm[(g + 8) * AP + t], dm[g * AP + t + 4], dm[(g + 8) * AP + t + 4]};
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const int d = n * 8 + g;
          const float gn = gS[base * KS + d];
          const float b[2] = {kS[(j0 + t) * KS + d] * __expf(gn - gS[(j0 + t) * KS + d]),
                              kS[(j0 + t + 4) * KS + d] * __expf(gn - gS[(j0 + t + 4) * KS + d])};
          mma_f32<kPrecise>(dq[n], fa, b);
          mma_f32<kPrecise>(rm[n], fm, b);
        }
      }
    // Column sums over later sub-chunks, reference G at the last row of this sub-chunk.
    const int ref = min(base + kSub, L) - 1;
    for (int I = warp + 1; I < kChunk / kSub && I * kSub < L; ++I)
#pragma unroll
      for (int kk = 0; kk < kSub; kk += 8) {
        const int i0 = I * kSub + kk;
        // A = dAqk^T block: element (row j, col i) = dAqk[i0 + i][base + j]
        const float* aq = aqS + i0 * AP + base;
        const float* dm = dmS + i0 * AP + base;
        const float fa[4] = {aq[t * AP + g], aq[t * AP + g + 8], aq[(t + 4) * AP + g], aq[(t + 4) * AP + g + 8]};
        const float fm[4] = {dm[t * AP + g], dm[t * AP + g + 8], dm[(t + 4) * AP + g], dm[(t + 4) * AP + g + 8]};
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const int d = n * 8 + g;
          const float gn = gS[ref * KS + d];
          const float e0 = __expf(gS[(i0 + t) * KS + d] - gn), e1 = __expf(gS[(i0 + t + 4) * KS + d] - gn);
          const float bq[2] = {qS[(i0 + t) * KS + d] * e0, qS[(i0 + t + 4) * KS + d] * e1};
          const float bk[2] = {bS[i0 + t] * kS[(i0 + t) * KS + d] * e0, bS[i0 + t + 4] * kS[(i0 + t + 4) * KS + d] * e1};
          mma_f32<kPrecise>(ct[n], fa, bq);
          mma_f32<kPrecise>(ct[n], fm, bk);
        }
      }
    // Rescale the block products; gi = G at this thread's entries.
    float gi[4][4];
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = base + frag_row(r), d = n * 8 + frag_col(r);
        gi[n][r] = gS[i * KS + d];
        const float up = __expf(gi[n][r] - gS[base * KS + d]);
        dq[n][r] *= up;
        rm[n][r] *= up;
        ct[n][r] *= __expf(gS[ref * KS + d] - gi[n][r]);
      }
    // Diagonal block per pair, one token j of the sub-chunk per step: its k, q, G on this thread's 8
    // channels and the dAqk / dM entries of its 2 rows are loaded once for all 16 entries. Row sums
    // take j <= i, column sums j >= i; one exponential per pair, exp(-|G_i - G_j|) for decays g <= 0,
    // with the other side selected away (never multiplied: its exponent may be large).
#pragma unroll 4
    for (int s = 0; s < kSub; ++s) {
      const int j = base + s;
      const float aq_row[2] = {aqS[(base + g) * AP + j], aqS[(base + g + 8) * AP + j]};
      const float dm_row[2] = {dmS[(base + g) * AP + j], dmS[(base + g + 8) * AP + j]};
      const float aq_col[2] = {aqS[j * AP + base + g], aqS[j * AP + base + g + 8]};
      const float dm_col[2] = {dmS[j * AP + base + g], dmS[j * AP + base + g + 8]};
      const float bj = bS[j];
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int c2 = 0; c2 < 2; ++c2) {
          const int d = n * 8 + 2 * t + c2;
          const float gj = gS[j * KS + d], kj = kS[j * KS + d], qj = qS[j * KS + d];
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int r = rr * 2 + c2, own = g + 8 * rr;  // entry r sits at row base + own
            const float x = gi[n][r] - gj;
            const float y = __expf(s <= own ? x : -x);
            const float e_row = s <= own ? y : 0.0f, e_col = s >= own ? y : 0.0f;
            dq[n][r] += aq_row[rr] * e_row * kj;
            rm[n][r] += dm_row[rr] * e_row * kj;
            ct[n][r] += (aq_col[rr] * qj + dm_col[rr] * bj * kj) * e_col;
          }
        }
    }
  }
  // Combine with the wy_bwd partials (all loads first, so they are in flight together); dbeta partial
  // of this slice per row.
  float pq[4][4], pk[4][4], pg[4][4];
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = base + frag_row(r);
      const int64_t at = row_at(i) * K + d0 + n * 8 + frag_col(r);
      pq[n][r] = i < L ? p.dq_hv[at] : 0.0f;
      pk[n][r] = i < L ? p.dk_hv[at] : 0.0f;
      pg[n][r] = i < L ? p.dgc[at] : 0.0f;
    }
  float db[2] = {0.0f, 0.0f};
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = base + frag_row(r), d = n * 8 + frag_col(r);
      float dG = 0.0f;
      if (i < L) {
        const int64_t at = row_at(i) * K + d0 + d;
        const float kd = kS[i * KS + d], qd = qS[i * KS + d];
        const float dq_t = pq[n][r] + dq[n][r];
        p.dq_hv[at] = dq_t;
        p.dk_hv[at] = pk[n][r] + bS[i] * rm[n][r] + ct[n][r];
        dG = pg[n][r] + qd * dq_t + kd * (bS[i] * rm[n][r] - ct[n][r]);
        db[r / 2] += kd * rm[n][r];
      }
      stS[i * KS + d] = dG;
    }
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    db[q] += __shfl_xor_sync(0xffffffffu, db[q], 1);
    db[q] += __shfl_xor_sync(0xffffffffu, db[q], 2);
  }
  if (t == 0) {
    float* out = p.dbp_slice + blockIdx.z * p.tokens * p.HV;
    if (base + g < L) out[row_at(base + g)] = db[0];
    if (base + g + 8 < L) out[row_at(base + g + 8)] = db[1];
  }
  __syncthreads();
  if (tid < kSlice) {
    float run = p.dg_last[(c * p.HV + hv) * K + d0 + tid];
    for (int i = L - 1; i >= 0; --i) {
      run += stS[i * KS + tid];
      p.dgc[row_at(i) * K + d0 + tid] = run;
    }
  }
}

// One warp per (token, q/k head): sum over the value heads of the group, then through the L2 norm
// (dx = rstd (dy - (dy . y) y) with y the normalised row).
__global__ void finalize_qk_kernel(KdaDev p, void* dq, void* dk, int dt) {
  constexpr int kMaxPerLane = 4;  // K / 32, K <= 128
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32, per_lane = p.K / 32;
  if (row >= p.tokens * p.H) return;
  const int64_t t = row / p.H;
  const int h = static_cast<int>(row % p.H);
  // Both rows' loads are issued before any arithmetic (fixed-size, unrolled: registers, no stack).
  float x[2][kMaxPerLane], y[2][kMaxPerLane];
#pragma unroll
  for (int which = 0; which < 2; ++which)
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      x[which][r] = y[which][r] = 0.0f;
      if (r < per_lane) {
        const int d = r * 32 + lane;
        y[which][r] = (which ? p.kp : p.qp)[row * p.K + d];
        x[which][r] = (which ? p.dk_hv : p.dq_hv)[(t * p.HV + h * p.G) * p.K + d];
      }
    }
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    const float* src = which ? p.dk_hv : p.dq_hv;
    float dot = 0.0f;
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      if (r < per_lane)
        for (int g = 1; g < p.G; ++g) x[which][r] += src[(t * p.HV + h * p.G + g) * p.K + r * 32 + lane];
      dot += x[which][r] * y[which][r];
    }
    float rstd = 1.0f;
    if (p.l2norm) {
      dot = warp_sum(dot);
      rstd = (which ? p.k_rstd : p.q_rstd)[row];
    }
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r)
      if (r < per_lane) {
        const float out = p.l2norm ? rstd * (x[which][r] - dot * y[which][r]) : x[which][r];
        store_f(which ? dk : dq, dt, row * p.K + r * 32 + lane, out);
      }
  }
}

// dbeta of entry i = (token, value head): the wy_bwd and pair_bwd partials, through the sigmoid.
__device__ __forceinline__ float dbeta_of(const KdaDev& p, int64_t i) {
  float db = p.dbp[i];
  for (int s = 0; s < p.K / kSlice; ++s) db += p.dbp_slice[s * p.tokens * p.HV + i];
  if (p.beta_sigmoid) {
    const float s = 1.0f / (1.0f + expf(-load_f(p.beta, p.in_dt, i)));
    db *= p.beta_mult * s * (1.0f - s);
  }
  return db;
}

// Elementwise: dg through the fused gate, dbeta through the sigmoid (when dA_log / ddt_bias are not
// wanted; otherwise finalize_gate_params_kernel does both in its reduction pass).
__global__ void finalize_gate_beta_kernel(KdaDev p, void* dg, void* dbeta, int dt) {
  const int64_t n_g = p.tokens * p.HV * p.K;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_g;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float d_raw = 1.0f;
    if (p.use_gate) gate_value(p, load_f(p.g, p.in_dt, i), static_cast<int>((i / p.K) % p.HV), static_cast<int>(i % p.K),
                               &d_raw, nullptr);
    store_f(dg, dt, i, p.dgc[i] * d_raw);
    if (i < p.tokens * p.HV) store_f(dbeta, dt, i, dbeta_of(p, i));
  }
}

// dA_log[hv] = sum_{t,d} dG * dg/dA_log, ddt_bias[hv, d] = sum_t dG * dg/dg_raw in two deterministic
// passes: one block per (value head, token slice) writes slice partials (each thread a fixed channel
// and token stride, combined in a fixed order), then one block per value head adds the slices in order.
// The first pass also writes dg and dbeta of its entries: g and dG are read once for both.
constexpr int kReduceThreads = 256;
__global__ void __launch_bounds__(kReduceThreads) finalize_gate_params_kernel(KdaDev p, void* dg, void* dbeta, int dt) {
  __shared__ float bias_part[kReduceThreads], a_part[kReduceThreads];
  const int hv = blockIdx.x, slice = blockIdx.y, tid = threadIdx.x, d = tid % p.K, lanes_per_d = kReduceThreads / p.K;
  const int64_t per = (p.tokens + kGateSlices - 1) / kGateSlices, t_begin = slice * per;
  const int64_t t_end = t_begin + per < p.tokens ? t_begin + per : p.tokens;
  float sb = 0.0f, sa = 0.0f;
  // The gate constants once, and kU tokens' g and dG loaded before any dg store: the compiler cannot move a
  // load above a store to dg (it may alias), so per token they were a chain of dependent global round trips.
  const GateConsts consts = gate_consts(p, hv, d);
  constexpr int kU = 4;
  for (int64_t t = t_begin + tid / p.K; t < t_end; t += kU * lanes_per_d) {
    float g_raw[kU], x[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t tu = t + u * lanes_per_d, i = (tu * p.HV + hv) * p.K + d;
      g_raw[u] = tu < t_end && p.use_gate ? load_f(p.g, p.in_dt, i) : 0.0f;
      x[u] = tu < t_end ? p.dgc[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t tu = t + u * lanes_per_d, i = (tu * p.HV + hv) * p.K + d;
      if (tu >= t_end) break;
      float d_raw, d_A;
      gate_value(p, g_raw[u], consts, &d_raw, &d_A);
      store_f(dg, dt, i, x[u] * d_raw);
      sb = fmaf(x[u], d_raw, sb);  // fused, as the sum was before dg was stored here: ddt_bias bit-identical
      sa = fmaf(x[u], d_A, sa);
    }
  }
  for (int64_t t = t_begin + tid; t < t_end; t += kReduceThreads) {
    const int64_t i = t * p.HV + hv;
    store_f(dbeta, dt, i, dbeta_of(p, i));
  }
  bias_part[tid] = sb;
  a_part[tid] = sa;
  __syncthreads();
  float* out = p.gate_part + (static_cast<int64_t>(hv) * kGateSlices + slice) * (p.K + 1);
  if (tid < p.K) {
    float s = 0.0f;
    for (int l = 0; l < lanes_per_d; ++l) s += bias_part[l * p.K + tid];
    out[tid] = s;
  }
  if (tid == 0) {
    float s = 0.0f;
    for (int l = 0; l < kReduceThreads; ++l) s += a_part[l];
    out[p.K] = s;
  }
}

__global__ void gate_params_final_kernel(KdaDev p, void* dA_log, int dA_dt, void* ddt_bias, int dbias_dt) {
  const int hv = blockIdx.x, tid = threadIdx.x;
  if (tid > p.K) return;
  const float* part = p.gate_part + static_cast<int64_t>(hv) * kGateSlices * (p.K + 1);
  float s = 0.0f;  // no tokens: the first pass did not run, the sums are 0
  if (p.tokens > 0)
    for (int slice = 0; slice < kGateSlices; ++slice) s += part[slice * (p.K + 1) + tid];
  if (tid < p.K) {
    if (ddt_bias) store_f(ddt_bias, dbias_dt, static_cast<int64_t>(hv) * p.K + tid, s);
  } else if (dA_log) {
    store_f(dA_log, dA_dt, hv, s);
  }
}

// Value columns per state_bwd block. One block fits per SM (shared memory) and a block's time per chunk
// is mostly the loads of its w, Kl, Qg, Aqk tiles, the same for any BV: the narrowest tile whose blocks
// fit in one wave (shortest chunk step), else 64 (one wave at B4 H16 V128 instead of two with 32, and
// half the tile loads per state column when there are several waves). The same rule for both kernels:
// kda_bench --tiles on the H100 (session e call 6, main with bf16 scratch) gave the bf16 kernel at B1 T32768 H16
// fwd+bwd 11.86 ms with 16 against 12.10 with 32 and 12.66 with 64, and 64 best or within noise at the shapes
// with more (sequence, head) pairs than SMs (B4 H16 5.25 vs 5.41 with 32; H64 20.17 vs 20.89). Session d's
// bf16 kernel, which formed Kl and Qg per chunk step, was faster with 32 there.
int state_bwd_value_tile(const KdaDev& p) {
  if (const int tile = value_tile_override(true)) return tile;
  const int64_t sms = sm_count(), heads = static_cast<int64_t>(p.N) * p.HV;
  for (const int bv : {16, 32})
    if (heads * (p.V / bv) <= sms) return bv;
  return 64;
}

size_t state_bwd_smem(int K, int BV) {  // the carve of state_bwd_kernel
  return sizeof(float) *
         (2 * kChunk * (K + 8) + 2 * kChunk * (K + 4) + kChunk * (kChunk + 8) + (K + 2 * kChunk) * (BV + 8) + K);
}
size_t wy_bwd_smem(int K) {
  const int KP = K + 4;
  return sizeof(float) * ((std::max(K, 2 * kChunk) + 3 * kChunk) * KP + 2 * kChunk * (kChunk + 4) + 2 * K + kChunk +
                          kChunk * (K / 8));
}
size_t wy_bwd_bf16_smem(int K) {  // the carve of wy_bwd_bf16_kernel
  const int SK = K + 8, SC = kChunk + 8;
  return sizeof(__nv_bfloat16) * ((std::max(K, 2 * kChunk) + 3 * kChunk) * SK + 2 * kChunk * SC) +
         sizeof(float) * (4 * K + kChunk + 4 * kChunk);
}
constexpr size_t kPairSmem = sizeof(float) * (4 * kChunk * kSliceStride + 2 * kChunk * (kChunk + 4) + kChunk);

}  // namespace
}  // namespace kda

void chunk_kda_bwd(const cpu::KdaArgs& args, const TensorView* cu_seqlens, const TensorView& do_,
                   const TensorView* dht, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                   const TensorView& dg, const TensorView& dbeta, const TensorView* dh0, const TensorView* dA_log,
                   const TensorView* ddt_bias, cudaStream_t stream) {
  using namespace kda;
  KdaDev p;
  Workspace workspace;
  StageTimer timer(stream);
  int64_t max_chunks = 0;
  run_forward(args, cu_seqlens, nullptr, nullptr, true, p, max_chunks, workspace, timer, stream);
  if (timer.enabled) {
    auto size_of = [](const TensorView* t) { return t ? static_cast<int>(dtype_size(t->dtype)) : 0; };
    timer.shape.out_bytes = size_of(&dq);
    timer.shape.do_bytes = size_of(&do_);
    timer.shape.dht_bytes = size_of(dht), timer.shape.dh0_bytes = size_of(dh0);
    timer.shape.dA_log_bytes = size_of(dA_log), timer.shape.ddt_bias_bytes = size_of(ddt_bias);
  }
  const int dt = dtype_code(dq.dtype, "dq");
  const int bv = state_bwd_value_tile(p);
  const size_t state_smem = state_bwd_smem(p.K, bv);
  const dim3 state_grid(static_cast<unsigned>(p.N), static_cast<unsigned>(p.HV), static_cast<unsigned>(p.V / bv));
  const int do_dt = dtype_code(do_.dtype, "do");
  const void* dht_ptr = dht ? dht->data : nullptr;
  const int dht_dt = dht ? dtype_code(dht->dtype, "dht") : 0;
  void* dh0_ptr = dh0 ? dh0->data : nullptr;
  const int dh0_dt = dh0 ? dtype_code(dh0->dtype, "dh0") : 0;
  // bf16 / f16 inputs: bf16 operands in the state pass (state_bwd_bf16_kernel) and in wy_bwd (wy_bwd_bf16_kernel),
  // one-pass TF32 products in pair_bwd (see mma_f32); f32 / f64: 3xTF32 everywhere.
  const bool precise = p.in_dt == kF32 || p.in_dt == kF64;
  auto launch_state = [&](auto kernel) {
    set_smem_limit(reinterpret_cast<const void*>(kernel), state_smem);
    kernel<<<state_grid, state_bwd_threads(bv), state_smem, stream>>>(p, do_.data, do_dt, dht_ptr, dht_dt, dh0_ptr,
                                                                      dh0_dt);
  };
  auto launch_state_bf16 = [&](auto kernel, size_t smem, int threads) {
    set_smem_limit(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<state_grid, threads, smem, stream>>>(p, do_.data, do_dt, dht_ptr, dht_dt, dh0_ptr, dh0_dt);
  };
  auto launch_state_k = [&](auto k) {
    constexpr int kK = decltype(k)::value;
    if (!precise) {  // bf16 operands (16-bit inputs)
      if (bv == 16)
        launch_state_bf16(state_bwd_bf16_kernel<kK, 16>, state_bwd_bf16_smem_bytes<kK, 16>(),
                          32 * state_bwd_bf16_warps(kK, 16));
      else if (bv == 32)
        launch_state_bf16(state_bwd_bf16_kernel<kK, 32>, state_bwd_bf16_smem_bytes<kK, 32>(),
                          32 * state_bwd_bf16_warps(kK, 32));
      else
        launch_state_bf16(state_bwd_bf16_kernel<kK, 64>, state_bwd_bf16_smem_bytes<kK, 64>(),
                          32 * state_bwd_bf16_warps(kK, 64));
    } else if (bv == 16)
      launch_state(state_bwd_kernel<kK, 16>);
    else if (bv == 32)
      launch_state(state_bwd_kernel<kK, 32>);
    else
      launch_state(state_bwd_kernel<kK, 64>);
  };
  if (p.N == 0) {
    // no sequence: nothing to differentiate (dA_log / ddt_bias below become zero)
  } else if (p.K == 128) {
    launch_state_k(std::integral_constant<int, 128>{});
  } else {
    launch_state_k(std::integral_constant<int, 64>{});
  }
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  timer.mark(roofline::Stage::state_bwd, bv);
  if (p.tokens > 0) {
    const dim3 chunk_grid(static_cast<unsigned>(max_chunks), static_cast<unsigned>(p.HV));
    const int dv_dt = dtype_code(dv.dtype, "dv");
    if (precise) {
      const size_t wy_smem = wy_bwd_smem(p.K);
      auto* wy_kernel = p.K == 128 ? wy_bwd_kernel<128> : wy_bwd_kernel<64>;
      set_smem_limit(reinterpret_cast<const void*>(wy_kernel), wy_smem);
      wy_kernel<<<chunk_grid, kWyThreads, wy_smem, stream>>>(p, do_.data, do_dt, dv.data, dv_dt);
    } else {  // two blocks per SM: the largest carveout
      const size_t wy_smem = wy_bwd_bf16_smem(p.K);
      auto* wy_kernel = p.K == 128 ? wy_bwd_bf16_kernel<128> : wy_bwd_bf16_kernel<64>;
      set_smem_limit(reinterpret_cast<const void*>(wy_kernel), wy_smem);
      SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(wy_kernel),
                                             cudaFuncAttributePreferredSharedMemoryCarveout,
                                             cudaSharedmemCarveoutMaxShared));
      wy_kernel<<<chunk_grid, kWyBf16Threads, wy_smem, stream>>>(p, do_.data, do_dt, dv.data, dv_dt);
    }
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark(roofline::Stage::wy_bwd);
    auto* pair_kernel = precise ? pair_bwd_kernel<true> : pair_bwd_kernel<false>;
    set_smem_limit(reinterpret_cast<const void*>(pair_kernel), kPairSmem);
    const dim3 pair_grid(static_cast<unsigned>(max_chunks), static_cast<unsigned>(p.HV),
                         static_cast<unsigned>(p.K / kSlice));
    pair_kernel<<<pair_grid, kPairThreads, kPairSmem, stream>>>(p);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark(roofline::Stage::pair_bwd);
    const int64_t rows = p.tokens * p.H;
    constexpr int kRowsPerBlock = 8;
    finalize_qk_kernel<<<static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0,
                         stream>>>(p, dq.data, dk.data, dt);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    if (dA_log || ddt_bias) {
      finalize_gate_params_kernel<<<dim3(static_cast<unsigned>(p.HV), kGateSlices), kReduceThreads, 0, stream>>>(
          p, dg.data, dbeta.data, dt);
    } else {
      const int64_t n_g = p.tokens * p.HV * p.K;
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n_g + 255) / 256, 65535));
      finalize_gate_beta_kernel<<<blocks, 256, 0, stream>>>(p, dg.data, dbeta.data, dt);
    }
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark(roofline::Stage::finalize);
  }
  if (dA_log || ddt_bias) {
    gate_params_final_kernel<<<static_cast<unsigned>(p.HV), p.K + 1, 0, stream>>>(
        p, dA_log ? dA_log->data : nullptr, dA_log ? dtype_code(dA_log->dtype, "dA_log") : 0,
        ddt_bias ? ddt_bias->data : nullptr, ddt_bias ? dtype_code(ddt_bias->dtype, "ddt_bias") : 0);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark(roofline::Stage::gate_params);
  }
}

}  // namespace seqmix::cuda
