// KDA chunked forward on CUDA (FLA chunk_kda decomposition). Tensor cores, fp32 accumulation, for every product.
// f32 inputs: 3xTF32 (mma.sync m16n8k8; fp32-accurate, so f32 keeps its tight tolerances) and fp32 scratch.
// bf16 / f16 inputs: chunk_fwd multiplies in one TF32 pass (operands keep 10 mantissa bits); the state and output
// passes multiply bf16 operands (m16n8k16, fp32 state), as FLA does, and the arrays they exchange (w, u, kl, hs,
// v_new, qg) are bf16, as FLA's are: both passes are bound by that traffic. Gate cumsum, exponentials and the
// triangular solve stay fp32.
//
// Per chunk of 64 tokens (cumulative gates G = cumsum g within the chunk, fp32):
//   M = tril(diag(beta) K Gamma K^T, -1),  M_ij = beta_i sum_d k_id k_jd exp(G_id - G_jd)
//   A = (I + M)^-1,  w = A diag(beta) (exp(G) * K),  u = A diag(beta) V,  Aqk = scale * tril(q Gamma K^T)
// Per (sequence, head, value tile), sequentially over chunks:
//   hs_c = S;  v_new = u - w S;  S <- exp(G_last) S + (exp(G_last - G) * K)^T v_new
// Per chunk again, in parallel:  o = (scale exp(G) * q) hs_c + Aqk v_new.
// exp(G_i - G_j) never overflows: between 16-token sub-chunks it is split at the first token n of the
// later sub-chunk into two factors <= 1 (decays g <= 0), inside a sub-chunk it is formed per pair.
// Taking o out of the sequential loop (FLA's chunk_o) halves the work on the critical path; the price
// is hs and v_new in global memory, which the backward keeps anyway.
//
// The input transforms (L2 norm, fused gate, beta sigmoid, cumsum) live in the chunk kernel rather than
// in passes of their own: the fp32 copies they used to write cost more bandwidth than the arithmetic.
// Forward-only calls write none of the backward's scratch (qp, kp, rstd, gc, bp, A).
//
// Kernels: build_tables (sequence -> chunk offsets on the device); chunk_fwd (one block per (chunk, value
// head): input transforms, M, Aqk, A, w, u, exp(G_last - G) k, and for 16-bit inputs qg); state_fwd
// (one block per (sequence, value head, 16 / 32 / 64 value columns), cp.async-pipelined); gated_q (f32 inputs: qg
// after the state pass, in w's buffer); output_fwd (one block per (chunk, value head, 64 value columns));
// intermediate_states (FLA's h on request: hs converted to f64 or [V, K], else
// a plain copy).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "cuda/common/cuda_check.h"
#include "cuda/kda/common.cuh"
#include "cuda/kda/mma_bf16.cuh"

namespace seqmix::cuda {
namespace kda {

namespace {

constexpr int kTableThreads = 1024;

// seq_offsets / chunk_offsets from cu_seqlens (or multiples of T) with one block: each thread
// counts the chunks of a contiguous run of sequences, then a serial scan of the per-thread totals.
__global__ void __launch_bounds__(kTableThreads) build_tables_kernel(KdaDev p) {
  __shared__ int64_t totals[kTableThreads];
  const int per = (p.N + kTableThreads - 1) / kTableThreads;
  const int n0 = min(p.N, threadIdx.x * per), n1 = min(p.N, n0 + per);
  auto offset = [&](int n) -> int64_t {
    if (!p.cu_seqlens) return static_cast<int64_t>(n) * p.T;
    return p.cu_is_64 ? static_cast<const int64_t*>(p.cu_seqlens)[n]
                      : static_cast<int64_t>(static_cast<const int32_t*>(p.cu_seqlens)[n]);
  };
  int64_t local = 0;
  for (int n = n0; n < n1; ++n) local += (offset(n + 1) - offset(n) + kChunk - 1) / kChunk;
  totals[threadIdx.x] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t run = 0;
    for (int i = 0; i < kTableThreads; ++i) {
      const int64_t t = totals[i];
      totals[i] = run;
      run += t;
    }
    p.chunk_offsets[p.N] = run;
    p.seq_offsets[p.N] = offset(p.N);
  }
  __syncthreads();
  int64_t run = totals[threadIdx.x];
  for (int n = n0; n < n1; ++n) {
    const int64_t a = offset(n);
    p.seq_offsets[n] = a;
    p.chunk_offsets[n] = run;
    run += (offset(n + 1) - a + kChunk - 1) / kChunk;
  }
}

constexpr int kChunk4 = kChunk + 4;  // row stride of 64 x 64 tiles (fragment loads on 32 banks)

// ---- Tensor-core helpers (the MMA step itself, mma_f32, is in common.cuh).

// A 16 x (8 NTW) strip: c[j] += A[16, kdim] * B[kdim, 8j .. 8j + 8); B row-major (b_rs), columns contiguous.
// The A fragment of a step is loaded (and converted) once for the NTW MMAs.
template <bool kPrecise, int NTW>
__device__ __forceinline__ void gemm_strip(float (&c)[NTW][4], const float* a, int a_rs, int a_cs, const float* b,
                                           int b_rs, int kdim) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 2
  for (int k0 = 0; k0 < kdim; k0 += 8) {
    const float af[4] = {a[g * a_rs + (k0 + t) * a_cs], a[(g + 8) * a_rs + (k0 + t) * a_cs],
                         a[g * a_rs + (k0 + t + 4) * a_cs], a[(g + 8) * a_rs + (k0 + t + 4) * a_cs]};
#pragma unroll
    for (int j = 0; j < NTW; ++j) {
      const float bf[2] = {b[(k0 + t) * b_rs + 8 * j + g], b[(k0 + t + 4) * b_rs + 8 * j + g]};
      mma_f32<kPrecise>(c[j], af, bf);
    }
  }
}

// Two adjacent values of a scratch row (8- / 4-byte aligned): fp32 or, for 16-bit inputs, bf16.
__device__ __forceinline__ void store_pair(float* p, float lo, float hi) { stg2(p, make_float2(lo, hi)); }
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float lo, float hi) { st_bf16x2(p, lo, hi); }

// out rows [r0, r0 + 16) x columns [c0, c0 + 8 NTW) of A x, A lower triangular [64, 68] (kdim r0 + 16);
// rows >= L not stored; out row i at out[i * out_rs].
template <bool kPrecise, int NTW, class Out>
__device__ __forceinline__ void lower_product_strip(const float* As, const float* x, int x_rs, int r0, int c0, int L,
                                                    Out* out, int64_t out_rs) {
  float acc[NTW][4] = {};
  gemm_strip<kPrecise, NTW>(acc, As + r0 * kChunk4, kChunk4, 1, x + c0, x_rs, r0 + 16);
#pragma unroll
  for (int j = 0; j < NTW; ++j)
#pragma unroll
    for (int r = 0; r < 4; r += 2) {  // entries r, r + 1: adjacent columns of one row
      const int i = r0 + frag_row(r);
      if (i < L) store_pair(out + i * out_rs + c0 + 8 * j + frag_col(r), acc[j][r], acc[j][r + 1]);
    }
}

// The fused gate of gate_value (common.cuh) with dt_bias already added (x) and exp(A_log) hoisted (rate).
__device__ __forceinline__ float applied_gate(const KdaDev& p, float x, float rate) {
  if (p.has_lower_bound) return p.lower_bound * (1.0f / (1.0f + exp_ftz(-rate * x)));
  constexpr float kSoftplusThreshold = 20.0f;  // torch softplus default
  return -rate * (x > kSoftplusThreshold ? x : log1pf(exp_ftz(x)));
}

constexpr int kSub = 16;                           // sub-chunk rows: the decay reference and the inverse's block size
constexpr int kSubs = kChunk / kSub;               // 4 sub-chunks per chunk
constexpr int kAP = kChunk4;                       // row stride of 64 x 64 tiles (fragment loads on 32 banks)
constexpr int kMP = kSub + 4;                      // row stride of one packed 16 x 16 block of M
constexpr int kMBlocks = kSubs * (kSubs + 1) / 2;  // lower blocks of M, diagonal included

// Packed lower block (bi, bj), bi >= bj, of M.
__device__ __forceinline__ float* m_block(float* Ms, int bi, int bj) {
  return Ms + (bi * (bi + 1) / 2 + bj) * kSub * kMP;
}

// q's buffer later holds A [64, 68] and the partial sums [16, 68] of the inverse.
__host__ __device__ constexpr int q_region(int K) {
  return kChunk * (K + 4) > (kChunk + kSub) * kAP ? kChunk * (K + 4) : (kChunk + kSub) * kAP;
}

// The chunk's rows of q (and k) and of the applied gate G (rate = exp(A_log)) into shared [64, K + 4] tiles
// (vector loads, input dtype); rows >= L are zero. A thread's four channels are the same in every row it
// loads, so it keeps their dt_bias in registers: no shared copy, and no barrier between its load and the
// first gate.
template <int kK, bool kWithK>
__device__ __forceinline__ void load_qkg(const KdaDev& p, int64_t t0, int L, int h, int hv, float rate, float* qS,
                                         float* kS, float* gS) {
  constexpr int KP = kK + 4, k4 = kK / 4;
  static_assert(kThreads % k4 == 0, "a thread's channels d = (idx % k4) * 4 are the same for every idx it takes");
  const int d0 = (threadIdx.x % k4) * 4;
  const float4 bias =
      make_float4(gate_bias(p, hv, d0), gate_bias(p, hv, d0 + 1), gate_bias(p, hv, d0 + 2), gate_bias(p, hv, d0 + 3));
  struct Rows {
    float4 q, k, g;
  };
  batched<4>(
      kChunk * k4,
      [&](int idx) {
        Rows f{zero4(), zero4(), zero4()};
        const int i = idx / k4, d = (idx % k4) * 4;
        if (i < L) {
          const int64_t t = t0 + i;
          f.q = load4_f(p.aligned, p.q, p.in_dt, (t * p.H + h) * kK + d);
          if (kWithK) f.k = load4_f(p.aligned, p.k, p.in_dt, (t * p.H + h) * kK + d);
          f.g = load4_f(p.aligned, p.g, p.in_dt, (t * p.HV + hv) * kK + d);
        }
        return f;
      },
      [&](int idx, const Rows& f) {
        const int i = idx / k4, d = (idx % k4) * 4, at = i * KP + d;
        st4(qS + at, f.q);
        if (kWithK) st4(kS + at, f.k);
        float4 g = f.g;
        if (p.use_gate && i < L)
          g = make_float4(applied_gate(p, g.x + bias.x, rate), applied_gate(p, g.y + bias.y, rate),
                          applied_gate(p, g.z + bias.z, rate), applied_gate(p, g.w + bias.w, rate));
        st4(gS + at, g);
      });
}

// L2 norm (FLA eps 1e-6) of the 64 rows [K] (stride K + 4) of each buffer, or with normalize false only the
// per-row hook: a warp per 8 rows, the row reductions of all buffers interleaved (one at a time they are a chain
// of shuffle latencies). after(buffer, row, scale, row pointer) runs per warp once the row is scaled.
template <int kK, int kBuffers, class After>
__device__ __forceinline__ void l2norm_rows(float* const (&xs)[kBuffers], bool normalize, After after) {
  constexpr int KP = kK + 4, kRows = kChunk / (kThreads / 32), kPer = kK / 32;
  constexpr float kL2NormEps = 1e-6f;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  float scale_of[kBuffers][kRows];
#pragma unroll
  for (int which = 0; which < kBuffers; ++which)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float* x = xs[which] + (warp + r * (kThreads / 32)) * KP;
      float ss = 0.0f;
#pragma unroll
      for (int m = 0; m < kPer; ++m) ss += x[lane + 32 * m] * x[lane + 32 * m];
      scale_of[which][r] = ss;
    }
#pragma unroll
  for (int which = 0; which < kBuffers; ++which)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      scale_of[which][r] = normalize ? rsqrtf(warp_sum(scale_of[which][r]) + kL2NormEps) : 1.0f;
#pragma unroll
  for (int which = 0; which < kBuffers; ++which)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = warp + r * (kThreads / 32);
      const float s = scale_of[which][r];
      float* x = xs[which] + i * KP;
#pragma unroll
      for (int m = 0; m < kPer; ++m) x[lane + 32 * m] *= s;
      after(which, i, s, x);
    }
}

// In-chunk inclusive cumsum of the gate G [64, K] (stride K + 4) in place: thread (channel d, segment of R
// rows), then the segment offsets. Ends with a barrier.
template <int kK>
__device__ __forceinline__ void gate_cumsum(float* gS) {
  constexpr int KP = kK + 4, parts = kThreads / kK, R = kChunk / parts;
  const int d = threadIdx.x % kK, part = threadIdx.x / kK;
  float run = 0.0f;
  for (int r = 0; r < R; ++r) {
    float* x = gS + (part * R + r) * KP + d;
    run += *x;
    *x = run;
  }
  __syncthreads();
  float offset = 0.0f;
  for (int q = 0; q < part; ++q) offset += gS[((q + 1) * R - 1) * KP + d];
  // a segment's end row changes below unless it is the first's, the only one read with two segments (K 128)
  if constexpr (parts > 2) __syncthreads();
  if (part > 0)
    for (int r = 0; r < R; ++r) gS[(part * R + r) * KP + d] += offset;
  __syncthreads();
}

// One block per (chunk, value head): everything of the chunk that does not need the state.
// Shared (fp32, row stride K + 4): k, q, G as [64, K]; M as 10 packed 16 x 16 lower blocks; beta [64].
// Phases:
//  1. load q, k, g, beta (vector loads, input dtype); L2 norm per row (a warp per row); gate elementwise
//     (a thread's dt_bias in registers), then the in-chunk cumsum (K channels x 256/K row segments); rows
//     >= L get G_last, so G never increases down the chunk and every exp below has a non-positive argument.
//  2. M = beta K Gamma K^T and Aqk = scale Q Gamma K^T. Off-diagonal 16 x 16 blocks (bi > bj) on the
//     tensor cores with the decay factorised at n = 16 bi: (k_r exp(G_r - G_n)) . (k_c exp(G_n - G_c)),
//     both factors <= 1; the same split one level down for the lower-left 8 x 8 quadrant of each diagonal
//     block; the 8 x 8 diagonal quadrants per pair with exp(G_i - G_j) (their span can exceed the ~88
//     nats a split exponent survives): a thread per strictly lower pair, warp 7 the diagonal (no exp).
//  3. A = (I + M)^-1 by blocks (FLA solve_tril): the diagonal blocks by substitution (a lane per column,
//     registers only), then block row bi: A_bi,bj = -A_bi,bi sum_m M_bi,m A_m,bj (3xTF32). q's buffer
//     holds A [64, 68] and the partial sums [16, 68]; the blocks above the diagonal are never written.
//  4. kl = exp(G_last - G) k to global; k's buffer becomes beta exp(G) k, w = A (beta exp(G) k); G's
//     buffer becomes beta v, u = A (beta v).
// Written: Aqk, w, u, kl, gl always (w, u, kl in bf16 for 16-bit inputs); qp, kp, rstd, gc, bp, A for the backward.
template <int kK, bool kPrecise>
__global__ void __launch_bounds__(kThreads, 2) chunk_fwd_kernel(KdaDev p, bool for_backward) {
  int64_t t0;
  int L;
  const int64_t c = blockIdx.x;
  if (!locate_chunk(p, c, t0, L)) return;
  const int hv = blockIdx.y, h = hv / p.G, K = kK, KP = K + 4, tid = threadIdx.x, warp = tid / 32, lane = tid & 31;
  const int k4 = K / 4;
  extern __shared__ float smem[];
  float* kS = smem;
  float* qS = kS + kChunk * KP;
  float* gS = qS + q_region(K);
  float* Ms = gS + kChunk * KP;
  float* bS = Ms + kMBlocks * kSub * kMP;

  // ---- 1. inputs (beta reaches the other threads through the barrier after the loads)
  if (tid < kChunk) {
    float b = 0.0f;
    if (tid < L) {
      b = load_f(p.beta, p.in_dt, (t0 + tid) * p.HV + hv);
      if (p.beta_sigmoid) b = p.beta_mult / (1.0f + expf(-b));
      if (for_backward) p.bp[(t0 + tid) * p.HV + hv] = b;
    }
    bS[tid] = b;
  }
  load_qkg<kK, true>(p, t0, L, h, hv, gate_rate(p, hv), qS, kS, gS);
  __syncthreads();
  // fp32 copies of the normalised q, k for the backward from the first value head of h
  const bool write_qk = for_backward && hv % p.G == 0;
  if (p.l2norm || write_qk)
    l2norm_rows<kK, 2>({qS, kS}, p.l2norm, [&](int which, int i, float s, const float* x) {
      if (!write_qk || i >= L) return;
      const int64_t row = (t0 + i) * p.H + h;
      if (p.l2norm && lane == 0) (which ? p.k_rstd : p.q_rstd)[row] = s;
#pragma unroll
      for (int m = 0; m < kK / 32; ++m) (which ? p.kp : p.qp)[row * K + lane + 32 * m] = x[lane + 32 * m];
    });
  gate_cumsum<kK>(gS);
  const float* gl = gS + (kChunk - 1) * KP;  // G_last (rows >= L repeat it)
  for (int d = tid; d < K; d += kThreads) p.gl[(c * p.HV + hv) * K + d] = gl[d];
  // G for the backward; for 16-bit inputs qg = scale exp(G) q (bf16) from the tiles at hand, for the output kernel
  // (no gated_q pass that loads q and g again and repeats the L2 norm and the cumsum) or state_bwd (no per-step
  // exponentials). One loop with G's: as a loop of its own the qg write added 0.15 ms to the backward's re-run at B4.
  const bool write_qg = !kPrecise && p.qg_bf16 != nullptr;
  if (for_backward || write_qg)
    for (int idx = tid; idx < L * k4; idx += kThreads) {
      const int i = idx / k4, d = (idx % k4) * 4;
      const int64_t at = ((t0 + i) * p.HV + hv) * K + d;
      const float4 g = *reinterpret_cast<const float4*>(gS + i * KP + d);
      if (for_backward) st4(p.gc + at, g);
      if (write_qg) {
        const float4 q = *reinterpret_cast<const float4*>(qS + i * KP + d);
        const float sc = p.scale;
        st_bf16x4(p.qg_bf16 + at, make_float4(sc * exp_ftz(g.x) * q.x, sc * exp_ftz(g.y) * q.y,
                                              sc * exp_ftz(g.z) * q.z, sc * exp_ftz(g.w) * q.w));
      }
    }

  // ---- 2. M and Aqk
  float* Aqk = p.Aqk + (t0 * p.HV + hv) * kChunk;  // row i at Aqk[i * HV * 64]
  const int64_t aqk_rs = static_cast<int64_t>(p.HV) * kChunk;
  {
    const int gq = lane >> 2, tq = lane & 3;
    for (int pair = warp; pair < 6; pair += kThreads / 32) {  // (bi, bj) in row order; both 8-column halves
      const int bi = pair < 1 ? 1 : (pair < 3 ? 2 : 3), bj = pair - bi * (bi - 1) / 2;
      const int n = kSub * bi, c0 = kSub * bj;
      if (n >= L) continue;
      const float* gn = gS + n * KP;
      const int ra = n + gq, rb = ra + 8;
      float am[2][4] = {}, aq[2][4] = {};
#pragma unroll 2
      for (int k0 = 0; k0 < K; k0 += 8) {
        const int d0 = k0 + tq, d1 = d0 + 4;
        const float gn0 = gn[d0], gn1 = gn[d1];
        const float e[4] = {exp_ftz(gS[ra * KP + d0] - gn0), exp_ftz(gS[rb * KP + d0] - gn0),
                            exp_ftz(gS[ra * KP + d1] - gn1), exp_ftz(gS[rb * KP + d1] - gn1)};
        const float fk[4] = {kS[ra * KP + d0] * e[0], kS[rb * KP + d0] * e[1], kS[ra * KP + d1] * e[2],
                             kS[rb * KP + d1] * e[3]};
        const float fq[4] = {qS[ra * KP + d0] * e[0], qS[rb * KP + d0] * e[1], qS[ra * KP + d1] * e[2],
                             qS[rb * KP + d1] * e[3]};
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int col = c0 + 8 * half + gq;
          const float fb[2] = {kS[col * KP + d0] * exp_ftz(gn0 - gS[col * KP + d0]),
                               kS[col * KP + d1] * exp_ftz(gn1 - gS[col * KP + d1])};
          mma_f32<kPrecise>(am[half], fk, fb);
          mma_f32<kPrecise>(aq[half], fq, fb);
        }
      }
      float* mb = m_block(Ms, bi, bj);
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int r = 0; r < 4; r += 2) {  // entries r, r + 1: adjacent columns of one row, one 8-byte store
          const int i = frag_row(r), j = 8 * half + frag_col(r);
          mb[i * kMP + j] = bS[n + i] * am[half][r];
          mb[i * kMP + j + 1] = bS[n + i] * am[half][r + 1];
          if (n + i < L)
            stg2(Aqk + (n + i) * aqk_rs + c0 + j, make_float2(p.scale * aq[half][r], p.scale * aq[half][r + 1]));
        }
    }
    // Lower-left 8 x 8 quadrant of each diagonal block (warps 6, 7): rows r .. r + 8 (r = 16 b + 8) against
    // columns 16 b .. 16 b + 8, split at r like the blocks above. One MMA gives both products: A rows 0..7
    // are k_i exp(G_i - G_r), rows 8..15 q_i exp(G_i - G_r), so C rows 0..7 are M and 8..15 are Aqk.
    for (int b = warp - 6; b >= 0 && b < kSubs; b += 2) {
      const int r = kSub * b + kSub / 2, row = r + gq, col = kSub * b + gq;
      const float* gr = gS + r * KP;
      float acc[4] = {};
#pragma unroll 2
      for (int k0 = 0; k0 < K; k0 += 8) {
        const int d0 = k0 + tq, d1 = d0 + 4;
        const float e0 = exp_ftz(gS[row * KP + d0] - gr[d0]), e1 = exp_ftz(gS[row * KP + d1] - gr[d1]);
        const float fa[4] = {kS[row * KP + d0] * e0, qS[row * KP + d0] * e0, kS[row * KP + d1] * e1,
                             qS[row * KP + d1] * e1};
        const float fb[2] = {kS[col * KP + d0] * exp_ftz(gr[d0] - gS[col * KP + d0]),
                             kS[col * KP + d1] * exp_ftz(gr[d1] - gS[col * KP + d1])};
        mma_f32<kPrecise>(acc, fa, fb);
      }
      float* mb = m_block(Ms, b, b);
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) mb[(kSub / 2 + gq) * kMP + 2 * tq + rr] = bS[row] * acc[rr];  // frag_col
      if (row < L) stg2(Aqk + row * aqk_rs + kSub * b + 2 * tq, make_float2(p.scale * acc[2], p.scale * acc[3]));
    }
    // the rest of the diagonal blocks: the two 8 x 8 diagonal quadrants, per pair (their span can exceed the
    // ~88 nats a split exponent survives). Threads 0..223: one of the 28 strictly lower pairs (i > j) of one
    // of the 8 quadrants each; warp 7: the 64 diagonal entries, M_ii = 0 and Aqk_ii = scale q_i . k_i
    // (exp(G_i - G_i) = 1 exactly, so no exponentials), two per lane. Handed out as 288 equal entries, the
    // last 32 made warp 0 run the loop twice while the block waited at the barrier.
    constexpr int kHalf = kSub / 2, kLower = kHalf * (kHalf - 1) / 2, kQuadrants = 2 * kSubs;
    static_assert(kQuadrants * kLower + 32 == kThreads && kChunk == 2 * 32, "warp 7 takes the diagonal");
    // Aqk_ij (row i < L) and the sum M_ij / beta_i, the exponentials skipped on the diagonal
    auto pair_sums = [&](int i, int j, auto diagonal, float& m, float& a) {
      const float *ki = kS + i * KP, *qi = qS + i * KP, *gi = gS + i * KP, *kj = kS + j * KP, *gj = gS + j * KP;
      for (int d = 0; d < K; d += 4) {
        const float4 k_i = *reinterpret_cast<const float4*>(ki + d), q_i = *reinterpret_cast<const float4*>(qi + d);
        const float4 k_j = *reinterpret_cast<const float4*>(kj + d);
        float e0 = k_j.x, e1 = k_j.y, e2 = k_j.z, e3 = k_j.w;
        if constexpr (!decltype(diagonal)::value) {
          const float4 g_i = *reinterpret_cast<const float4*>(gi + d), g_j = *reinterpret_cast<const float4*>(gj + d);
          e0 = exp_ftz(g_i.x - g_j.x) * e0, e1 = exp_ftz(g_i.y - g_j.y) * e1;
          e2 = exp_ftz(g_i.z - g_j.z) * e2, e3 = exp_ftz(g_i.w - g_j.w) * e3;
          m += k_i.x * e0 + k_i.y * e1 + k_i.z * e2 + k_i.w * e3;
        }
        a += q_i.x * e0 + q_i.y * e1 + q_i.z * e2 + q_i.w * e3;
      }
      Aqk[i * aqk_rs + j] = p.scale * a;
    };
    if (tid < kQuadrants * kLower) {
      const int quadrant = tid / kLower, idx = tid % kLower, b = quadrant / 2, base = kHalf * (quadrant % 2);
      int ii = 1;  // idx = ii (ii - 1) / 2 + jj, 0 <= jj < ii
      while (ii * (ii + 1) / 2 <= idx) ++ii;
      const int jj = idx - ii * (ii - 1) / 2, i = kSub * b + base + ii, j = kSub * b + base + jj;
      float m = 0.0f, a = 0.0f;
      if (i < L) pair_sums(i, j, std::false_type{}, m, a);
      m_block(Ms, b, b)[(base + ii) * kMP + base + jj] = bS[i] * m;
    } else {
      for (int i = lane; i < kChunk; i += 32) {
        float m = 0.0f, a = 0.0f;
        if (i < L) pair_sums(i, i, std::true_type{}, m, a);
        m_block(Ms, i / kSub, i / kSub)[(i % kSub) * (kMP + 1)] = 0.0f;
      }
    }
    // Aqk's upper triangle: 16-byte stores where all four columns are above the diagonal
    for (int idx = tid; idx < L * (kChunk / 4); idx += kThreads) {
      const int i = idx / (kChunk / 4), j = (idx % (kChunk / 4)) * 4;
      float* at = Aqk + i * aqk_rs + j;
      if (j > i)
        stg4(at, zero4());
      else
        for (int jj = i + 1; jj < j + 4; ++jj) at[jj - j] = 0.0f;
    }
  }
  __syncthreads();

  // v for phase 4, loaded now so that the inverse hides its latency
  constexpr int kVPer = kChunk * (K / 4) / kThreads;
  float4 v_ahead[kVPer];
#pragma unroll
  for (int u = 0; u < kVPer; ++u) {
    const int idx = tid + u * kThreads, i = idx / k4, e = (idx % k4) * 4;
    v_ahead[u] = i < L ? load4_f(p.aligned, p.v, p.in_dt, ((t0 + i) * p.HV + hv) * p.V + e) : zero4();
  }

  // ---- 3. A = (I + M)^-1 in q's buffer. A's blocks above the diagonal are never written: the products below
  // read only blocks on or left of the diagonal (kdim r0 + 16), and the backward's copy writes those zeros itself.
  float* As = qS;
  float* Ts = As + kChunk * kAP;
  if (warp < kSubs && lane < kSub) {
    const float* mb = m_block(Ms, warp, warp);
    float col[kSub];  // column `lane` of the block's inverse: col_r = -sum_{m < r} M_rm col_m below the diagonal
#pragma unroll
    for (int r = 0; r < kSub; ++r) {
      float s = 0.0f;
#pragma unroll
      for (int m = 0; m < r; ++m) s += mb[r * kMP + m] * col[m];
      col[r] = r < lane ? 0.0f : (r == lane ? 1.0f : -s);
    }
#pragma unroll
    for (int r = 0; r < kSub; ++r) As[(kSub * warp + r) * kAP + kSub * warp + lane] = col[r];
  }
  __syncthreads();
  for (int bi = 1; bi < kSubs && kSub * bi < L; ++bi) {
    // Ts[:, 16 bj + ..] = sum_{bj <= m < bi} M_bi,m A_m,bj   (warp = (bj, 8-column half))
    if (warp < 2 * bi) {
      const int bj = warp / 2, c0 = kSub * bj + 8 * (warp % 2);
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int m = bj; m < bi; ++m)
        warp_gemm(acc, m_block(Ms, bi, m), kMP, 1, As + kSub * m * kAP + c0, kAP, 1, kSub);
#pragma unroll
      for (int r = 0; r < 4; ++r) Ts[frag_row(r) * kAP + c0 + frag_col(r)] = acc[r];
    }
    __syncthreads();
    if (warp < 2 * bi) {
      const int c0 = kSub * (warp / 2) + 8 * (warp % 2);
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      warp_gemm(acc, As + kSub * bi * kAP + kSub * bi, kAP, 1, Ts + c0, kAP, 1, kSub);
#pragma unroll
      for (int r = 0; r < 4; ++r) As[(kSub * bi + frag_row(r)) * kAP + c0 + frag_col(r)] = -acc[r];
    }
    __syncthreads();
  }

  // ---- 4. kl, w, u
  for (int idx = tid; idx < kChunk * k4; idx += kThreads) {
    const int i = idx / k4, d = (idx % k4) * 4;
    const float4 k = *reinterpret_cast<const float4*>(kS + i * KP + d);
    const float4 g = *reinterpret_cast<const float4*>(gS + i * KP + d);
    const float4 last = *reinterpret_cast<const float4*>(gl + d);
    if (i < L) {
      const float4 kl = make_float4(exp_ftz(last.x - g.x) * k.x, exp_ftz(last.y - g.y) * k.y,
                                    exp_ftz(last.z - g.z) * k.z, exp_ftz(last.w - g.w) * k.w);
      const int64_t at = ((t0 + i) * p.HV + hv) * K + d;
      if constexpr (kPrecise) stg4(p.kl + at, kl);
      else st_bf16x4(p.kl_bf16 + at, kl);
    }
    const float b = bS[i];
    st4(kS + i * KP + d,
        make_float4(b * exp_ftz(g.x) * k.x, b * exp_ftz(g.y) * k.y, b * exp_ftz(g.z) * k.z, b * exp_ftz(g.w) * k.w));
  }
  if (for_backward)
    for (int idx = tid; idx < L * (kChunk / 4); idx += kThreads) {
      const int i = idx / (kChunk / 4), j = (idx % (kChunk / 4)) * 4;  // four columns of one 16 x 16 block
      stg4(p.A + ((t0 + i) * p.HV + hv) * kChunk + j,
           j < kSub * (i / kSub + 1) ? *reinterpret_cast<const float4*>(As + i * kAP + j) : zero4());
    }
  __syncthreads();
  // beta v into G's buffer (V == K), while w is formed from k's buffer
  float* vS = gS;
#pragma unroll
  for (int u = 0; u < kVPer; ++u) {
    const int idx = tid + u * kThreads, i = idx / k4, e = (idx % k4) * 4;
    const float b = bS[i];
    const float4 x = v_ahead[u];
    st4(vS + i * KP + e, make_float4(b * x.x, b * x.y, b * x.z, b * x.w));
  }
  // out[64, K] = A x. A is lower triangular, so 16-row block b costs b + 1 units: warp = (pair of row blocks
  // {0, 3} or {1, 2}, quarter of the columns) gives every warp 5 units (one warp per (block, half) gave the
  // last block's warps 4 units and the first's 1, and the block waited for the slowest).
  static_assert(kThreads == 8 * 32, "2 row-block pairs x 4 column quarters");
  const int c0 = (warp / 2) * (K / 4), pair = warp % 2;
  const int64_t out_rs = static_cast<int64_t>(p.HV) * K, out_at = (t0 * p.HV + hv) * K;
  auto product = [&](const float* x, auto* out) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r0 = 16 * (half ? 3 - pair : pair);
      if (r0 < L) lower_product_strip<kPrecise, kK / 32>(As, x, KP, r0, c0, L, out + out_at, out_rs);
    }
  };
  if constexpr (kPrecise) {
    product(kS, p.w);
    __syncthreads();
    product(vS, p.u);
  } else {
    product(kS, p.w_bf16);
    __syncthreads();
    product(vS, p.u_bf16);
  }
}

// S[r0 .. r0 + 16, cw .. cw + 8 NTW) <- exp(G_last) S + kl^T v_new (this warp's strip of the state).
template <bool kPrecise, int NTW>
__device__ __forceinline__ void update_state_strip(float* hS, int SP, const float* klS, int KP, const float* vnS,
                                                   const float* glS, int r0, int cw) {
  float acc[NTW][4];
#pragma unroll
  for (int j = 0; j < NTW; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int d = r0 + frag_row(r), e = cw + 8 * j + frag_col(r);
      acc[j][r] = __expf(glS[d]) * hS[d * SP + e];
    }
  gemm_strip<kPrecise, NTW>(acc, klS + r0, 1, KP, vnS + cw, SP, kChunk);
#pragma unroll
  for (int j = 0; j < NTW; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) hS[(r0 + frag_row(r)) * SP + cw + 8 * j + frag_col(r)] = acc[j][r];
}

// f32 / f64 inputs (16-bit ones take state_fwd_bf16_kernel below). One block per (sequence, value head, BV value
// columns), chunks in order, fp32 state tile in shared memory; products in 3xTF32 (mma_f32).
// Shared: kStages x (w, kl [64, K + 4]; u [64, BV + 8]; G_last [K]); v_new [64, BV + 8]; S [K, BV + 8]. The
// output is not formed here (output_fwd_kernel reads hs and v_new), so a chunk costs two products:
//   v_new = u - w S;   S <- exp(G_last) S + kl^T v_new.
// Pipeline: w/u and kl/G_last travel as two cp.async groups per chunk into a ring of kStages slots;
// chunk c + kStages's w/u load is issued once v_new of chunk c is formed, its kl/G_last load once the
// state update is done. One chunk of compute is shorter than an L2/HBM round trip, so on long
// sequences (one block per SM) two slots hide the loads that one leaves exposed; with several blocks
// per SM (one slot) the other block's work hides them instead.
template <int kK, int BV, int kStages>
__global__ void __launch_bounds__(kThreads, 2) state_fwd_kernel(KdaDev p, void* final_state, int final_dt) {
  constexpr bool kPrecise = true;
  constexpr int SP = BV + 8, NT = BV / 8;
  // blocks in sequence order (sequence slowest): a long sequence of a varlen pack starts in the first
  // wave instead of waiting behind the short ones
  const int tiles = p.V / BV, n = static_cast<int>(blockIdx.x / (p.HV * tiles));
  const int hv = static_cast<int>(blockIdx.x / tiles) % p.HV, e0 = static_cast<int>(blockIdx.x % tiles) * BV;
  const int K = kK, KP = K + 4, k4 = K / 4, tid = threadIdx.x, warp = tid / 32;
  constexpr int kSlot = kChunk * (kK + 4) * 2 + kChunk * SP + kK;  // floats of one ring slot
  extern __shared__ float smem[];
  float* vnS = smem + kStages * kSlot;
  float* hS = vnS + kChunk * SP;
  auto wS = [&](int slot) { return smem + slot * kSlot; };
  auto klS = [&](int slot) { return smem + slot * kSlot + kChunk * KP; };
  auto uS = [&](int slot) { return smem + slot * kSlot + 2 * kChunk * KP; };
  auto glS = [&](int slot) { return smem + slot * kSlot + 2 * kChunk * KP + kChunk * SP; };

  const int64_t c_begin = p.chunk_offsets[n], c_end = p.chunk_offsets[n + 1], s0 = p.seq_offsets[n];
  const int64_t s1 = p.seq_offsets[n + 1];
  auto issue_w = [&](int64_t c) {
    const int slot = static_cast<int>((c - c_begin) % kStages);
    const int64_t t0 = s0 + (c - c_begin) * kChunk;
    for (int idx = tid; idx < kChunk * k4; idx += kThreads) {
      const int i = idx / k4, d = (idx % k4) * 4;
      const bool in = t0 + i < s1;
      cp_async16(wS(slot) + i * KP + d, p.w + (in ? ((t0 + i) * p.HV + hv) * K + d : 0), in);
    }
    for (int idx = tid; idx < kChunk * (BV / 4); idx += kThreads) {
      const int i = idx / (BV / 4), e = (idx % (BV / 4)) * 4;
      const bool in = t0 + i < s1;
      cp_async16(uS(slot) + i * SP + e, p.u + (in ? ((t0 + i) * p.HV + hv) * p.V + e0 + e : 0), in);
    }
  };
  auto issue_kl = [&](int64_t c) {
    const int slot = static_cast<int>((c - c_begin) % kStages);
    const int64_t t0 = s0 + (c - c_begin) * kChunk;
    for (int idx = tid; idx < kChunk * k4; idx += kThreads) {
      const int i = idx / k4, d = (idx % k4) * 4;
      const bool in = t0 + i < s1;
      cp_async16(klS(slot) + i * KP + d, p.kl + (in ? ((t0 + i) * p.HV + hv) * K + d : 0), in);
    }
    for (int idx = tid; idx < k4; idx += kThreads)
      cp_async16(glS(slot) + idx * 4, p.gl + (c * p.HV + hv) * K + idx * 4, true);
  };
  // prologue: chunks c_begin .. c_begin + kStages - 1, two groups each (empty past the end)
  for (int s = 0; s < kStages; ++s) {
    if (c_begin + s < c_end) issue_w(c_begin + s);
    cp_async_commit();
    if (c_begin + s < c_end) issue_kl(c_begin + s);
    cp_async_commit();
  }
  for (int idx = tid; idx < K * BV; idx += kThreads) {
    const int d = idx / BV, e = idx % BV;
    hS[d * SP + e] = p.h0 ? load_f(p.h0, p.h0_dt, state_index(p, n, hv, d, e0 + e)) : 0.0f;
  }
  // Groups committed after chunk c's w/u: its kl/G_last and both groups of the kStages - 1 chunks
  // ahead; after its kl/G_last: the w/u of chunk c + kStages and both of the kStages - 1 in between.
  constexpr int kAfter = 2 * kStages - 1;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int slot = static_cast<int>((c - c_begin) % kStages);
    const int64_t t0 = s0 + (c - c_begin) * kChunk;
    const int L = static_cast<int>(s1 - t0 < kChunk ? s1 - t0 : kChunk);
    cp_async_wait<kAfter>();  // w, u of chunk c
    __syncthreads();
    for (int idx = tid; idx < K * (BV / 4); idx += kThreads) {
      const int d = idx / (BV / 4), e = (idx % (BV / 4)) * 4;
      st4(p.hs + ((c * p.HV + hv) * K + d) * p.V + e0 + e, *reinterpret_cast<const float4*>(hS + d * SP + e));
    }
    {  // v_new = u - w S   (64 x BV; warp = (16-row block, half of the columns))
      constexpr int NTW = NT / 2;
      const int r0 = (warp % 4) * 16, cw = (warp / 4) * NTW * 8;
      const float* u = uS(slot);
      float acc[NTW][4] = {};
      gemm_strip<kPrecise, NTW>(acc, wS(slot) + r0 * KP, KP, 1, hS + cw, SP, K);
#pragma unroll
      for (int j = 0; j < NTW; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int i = r0 + frag_row(r), e = cw + 8 * j + frag_col(r);
          const float x = u[i * SP + e] - acc[j][r];
          vnS[i * SP + e] = x;
          if (i < L) p.vn[((t0 + i) * p.HV + hv) * p.V + e0 + e] = x;
        }
    }
    __syncthreads();
    if (c + kStages < c_end) issue_w(c + kStages);
    cp_async_commit();
    cp_async_wait<kAfter>();  // kl, G_last of chunk c
    __syncthreads();
    // S <- exp(G_last) S + kl^T v_new   (K x BV; warp = 16 rows of S, all columns (K 128) or half (K 64),
    // updated in place)
    if constexpr (kK == 128)
      update_state_strip<kPrecise, NT>(hS, SP, klS(slot), KP, vnS, glS(slot), warp * 16, 0);
    else
      update_state_strip<kPrecise, NT / 2>(hS, SP, klS(slot), KP, vnS, glS(slot), (warp % 4) * 16,
                                           (warp / 4) * (NT / 2) * 8);
    __syncthreads();
    if (c + kStages < c_end) issue_kl(c + kStages);
    cp_async_commit();
  }
  if (final_state) {
    __syncthreads();
    for (int idx = tid; idx < K * BV; idx += kThreads) {
      const int d = idx / BV, e = idx % BV;
      store_f(final_state, final_dt, state_index(p, n, hv, d, e0 + e), hS[d * SP + e]);
    }
  }
}

// ---- The state pass on bf16 operands (16-bit inputs; kPrecise == false). The TF32 kernel above spends its
// chunk step on fragment traffic: 6 scalar shared loads and 6 conversions per 16 x 8 x 8 step, and its fp32 state
// tile is read and rewritten through shared memory by every update. Here a 16 x 8 x 16 step (mma.sync m16n8k16,
// bf16 in, fp32 accumulate, as FLA multiplies) takes its A fragment as 4 paired loads (w) or 8 scalar loads (kl)
// from the fp32 ring, converted in registers (the global scratch stays fp32, and a separate conversion pass would
// cost a shared round trip and a barrier per chunk), and its B fragments by ldmatrix from bf16 tiles this kernel
// writes itself (v_new, S). The state's master copy is fp32 in the accumulator registers of the warps that
// update it (FLA keeps b_h in registers too); only its bf16 copy goes to shared memory, for w S, and hs is stored
// from the registers.

// B operands of the NB 8-column blocks [n0 + 8 j, n0 + 8 j + 8) at k rows [k0, k0 + 16) of a bf16 tile stored
// [k][n] (NB == 1: half of a 16-column ldmatrix, n0 a multiple of 8 inside the tile's 16-column block).
template <int NB>
__device__ __forceinline__ void b_frags_kn(uint32_t (&b)[NB][2], const __nv_bfloat16* tile, int S, int k0, int n0) {
  if constexpr (NB == 1) {
    uint32_t x[4];
    b_frag_kn(x, tile, S, k0, n0 & ~15);
    const bool hi = (n0 & 8) != 0;
    b[0][0] = hi ? x[2] : x[0];
    b[0][1] = hi ? x[3] : x[1];
  } else {
    static_assert(NB % 2 == 0, "16-column ldmatrix blocks");
#pragma unroll
    for (int j = 0; j < NB / 2; ++j) {
      uint32_t x[4];
      b_frag_kn(x, tile, S, k0, n0 + 16 * j);
      b[2 * j][0] = x[0], b[2 * j][1] = x[1], b[2 * j + 1][0] = x[2], b[2 * j + 1][1] = x[3];
    }
  }
}

// One block per (sequence, value head, BV value columns), chunks in order; like state_fwd_kernel two cp.async
// groups per chunk into kStages ring slots and v_new written over u in place, but two barriers per chunk instead
// of four (the state lives in registers, so only the bf16 tiles need ordering). w, kl, u arrive in bf16 (chunk_fwd
// writes them so for 16-bit inputs) and go to their tiles by cp.async as they are: the fragments come straight
// from ldmatrix, and the pass, bound by its global traffic (3.4 TB/s at B4 T4096 H16 with fp32 scratch), moves
// half the bytes. hs and v_new leave in bf16 too, for the output and backward kernels' bf16 products.
// Shared: kStages x (bf16 w [64, K + 8], kl [64, K + 8], u [64, BV + 8]; fp32 G_last [K]); bf16 v_new [64, BV + 8]
// and S [K, BV + 8] (row strides odd multiples of 16 bytes for ldmatrix, mma_bf16.cuh).
// Warps: v_new = (16-row block, half of the columns); the state = 16 rows of S, all columns (K 128) or half (K 64).
template <int kK, int BV, int kStages>
__global__ void __launch_bounds__(kThreads, BV == 32 && kStages == 1 ? 2 : 1)
    state_fwd_bf16_kernel(KdaDev p, void* final_state, int final_dt) {
  using bf16 = __nv_bfloat16;
  constexpr int WP = kK + 8, UP = BV + 8, BP = BV + 8;
  constexpr int kSlotB = kChunk * (2 * WP + UP);            // bf16 elements of a slot's w, kl, u
  constexpr int kSlotBytes = 2 * kSlotB + 4 * kK;           // plus G_last
  constexpr int VC = BV / 2, NV = VC / 8;                   // v_new: columns and 8-column blocks per warp
  constexpr int UC = kK == 128 ? BV : BV / 2, NU = UC / 8;  // state: the same
  static_assert(kSlotBytes % 16 == 0, "16-byte aligned slots");
  const int tiles = p.V / BV, n = static_cast<int>(blockIdx.x / (p.HV * tiles));
  const int hv = static_cast<int>(blockIdx.x / tiles) % p.HV, e0 = static_cast<int>(blockIdx.x % tiles) * BV;
  const int K = kK, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  extern __shared__ __align__(16) char smem_bytes[];
  auto slot_at = [&](int slot) { return smem_bytes + slot * kSlotBytes; };
  auto wB = [&](int slot) { return reinterpret_cast<bf16*>(slot_at(slot)); };
  auto klB = [&](int slot) { return reinterpret_cast<bf16*>(slot_at(slot)) + kChunk * WP; };
  auto uB = [&](int slot) { return reinterpret_cast<bf16*>(slot_at(slot)) + 2 * kChunk * WP; };
  auto glS = [&](int slot) { return reinterpret_cast<float*>(slot_at(slot) + 2 * kSlotB); };
  bf16* vnB = reinterpret_cast<bf16*>(smem_bytes + kStages * kSlotBytes);
  bf16* hB = vnB + kChunk * BP;
  const int r0 = (warp % 4) * 16, cw = (warp / 4) * VC;  // v_new strip of this warp
  const int ur0 = kK == 128 ? warp * 16 : (warp % 4) * 16, uc0 = kK == 128 ? 0 : (warp / 4) * UC;  // its S strip

  const int64_t c_begin = p.chunk_offsets[n], c_end = p.chunk_offsets[n + 1], s0 = p.seq_offsets[n];
  const int64_t s1 = p.seq_offsets[n + 1];
  // rows [t0, t0 + 64) of a [tokens, HV, cols] bf16 array (columns [c0, c0 + width)) -> tile rows of stride S;
  // rows past the sequence are zero
  auto issue_rows = [&](bf16* tile, int S, const bf16* src, int cols, int c0, int width, int64_t t0) {
    const int w8 = width / 8;
    for (int idx = tid; idx < kChunk * w8; idx += kThreads) {
      const int i = idx / w8, d = (idx % w8) * 8;
      const bool in = t0 + i < s1;
      cp_async16(tile + i * S + d, src + (in ? ((t0 + i) * p.HV + hv) * cols + c0 + d : 0), in);
    }
  };
  auto issue_w = [&](int64_t c) {
    const int slot = static_cast<int>((c - c_begin) % kStages);
    const int64_t t0 = s0 + (c - c_begin) * kChunk;
    issue_rows(wB(slot), WP, p.w_bf16, K, 0, K, t0);
    issue_rows(uB(slot), UP, p.u_bf16, p.V, e0, BV, t0);
  };
  auto issue_kl = [&](int64_t c) {
    const int slot = static_cast<int>((c - c_begin) % kStages);
    const int64_t t0 = s0 + (c - c_begin) * kChunk;
    issue_rows(klB(slot), WP, p.kl_bf16, K, 0, K, t0);
    for (int idx = tid; idx < K / 4; idx += kThreads)
      cp_async16(glS(slot) + idx * 4, p.gl + (c * p.HV + hv) * K + idx * 4, true);
  };
  // Chunk c's w/u (group W c) and kl/G_last (group K c) go to ring slot (c - c_begin) % kStages, committed in
  // the order W0 K0 W1 K1 ..: the prologue commits W0 K0 .. W(s - 1) (s = kStages), chunk c's step K(c + s - 1)
  // after its first barrier (the slot whose kl chunk c - 1's update has read) and W(c + s) after its second (the
  // slot whose w/u chunk c's v_new has read). Each wait leaves the 2 s - 2 groups after the one it needs in
  // flight. Two barriers per chunk: the first orders S's bf16 copy (update c - 1) before w S and v_new's tile
  // reads (update c - 1) before its writes (v_new c); the second v_new's tile and S's copy the other way round.
  for (int s = 0; s < kStages; ++s) {
    if (c_begin + s < c_end) issue_w(c_begin + s);
    cp_async_commit();
    if (s + 1 < kStages) {
      if (c_begin + s < c_end) issue_kl(c_begin + s);
      cp_async_commit();
    }
  }
  // S [ur0 + frag_row(r), uc0 + 8 j + frag_col(r)] = h[j][r]
  float h[NU][4];
  auto h_at = [&](int j, int r, int& d, int& e) { d = ur0 + frag_row(r), e = uc0 + 8 * j + frag_col(r); };
  auto store_hB = [&]() {  // the bf16 copy for w S
#pragma unroll
    for (int j = 0; j < NU; ++j)
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        int d, e;
        h_at(j, r, d, e);
        st_bf16x2(hB + d * BP + e, h[j][r], h[j][r + 1]);
      }
  };
#pragma unroll
  for (int j = 0; j < NU; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      int d, e;
      h_at(j, r, d, e);
      h[j][r] = p.h0 ? load_f(p.h0, p.h0_dt, state_index(p, n, hv, d, e0 + e)) : 0.0f;
    }
  store_hB();
  constexpr int kAfter = 2 * kStages - 2;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int slot = static_cast<int>((c - c_begin) % kStages);
    const int64_t t0 = s0 + (c - c_begin) * kChunk;
    const int L = static_cast<int>(s1 - t0 < kChunk ? s1 - t0 : kChunk);
#pragma unroll
    for (int j = 0; j < NU; ++j)  // hs: the state entering the chunk
#pragma unroll
      for (int r = 0; r < 4; r += 2) {
        int d, e;
        h_at(j, r, d, e);
        st_bf16x2(p.hs_bf16 + ((c * p.HV + hv) * K + d) * p.V + e0 + e, h[j][r], h[j][r + 1]);
      }
    cp_async_wait<kAfter>();  // w, u of chunk c
    __syncthreads();
    if (c + kStages - 1 < c_end) issue_kl(c + kStages - 1);
    cp_async_commit();
    {  // v_new = u - w S
      float acc[NV][4] = {};  // one accumulator per column block: the same sums in the same order for every BV
#pragma unroll
      for (int k0 = 0; k0 < kK; k0 += 16) {
        uint32_t a[4];
        a_frag(a, wB(slot), WP, r0, k0);
        uint32_t b[NV][2];
        b_frags_kn<NV>(b, hB, BP, k0, cw);
#pragma unroll
        for (int j = 0; j < NV; ++j) mma_bf16(acc[j], a, b[j][0], b[j][1]);
      }
      const bf16* u = uB(slot);
#pragma unroll
      for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int r = 0; r < 4; r += 2) {
          const int i = r0 + frag_row(r), e = cw + 8 * j + frag_col(r);
          const float2 uu = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(u + i * UP + e));
          const uint32_t x = pack_bf16x2(uu.x - acc[j][r], uu.y - acc[j][r + 1]);
          *reinterpret_cast<uint32_t*>(vnB + i * BP + e) = x;
          if (i < L) *reinterpret_cast<uint32_t*>(p.vn_bf16 + ((t0 + i) * p.HV + hv) * p.V + e0 + e) = x;
        }
    }
    cp_async_wait<kAfter>();  // kl, G_last of chunk c
    __syncthreads();
    if (c + kStages < c_end) issue_w(c + kStages);
    cp_async_commit();
    {  // S <- exp(G_last) S + kl^T v_new
      const float* gl = glS(slot);
      const int g = lane / 4;
      const float f0 = __expf(gl[ur0 + g]), f1 = __expf(gl[ur0 + g + 8]);
#pragma unroll
      for (int j = 0; j < NU; ++j) h[j][0] *= f0, h[j][1] *= f0, h[j][2] *= f1, h[j][3] *= f1;
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 16) {
        uint32_t a[4];
        a_frag_t(a, klB(slot), WP, ur0, k0);  // A = kl^T: rows d, k = tokens
        uint32_t b[NU][2];
        b_frags_kn<NU>(b, vnB, BP, k0, uc0);
#pragma unroll
        for (int j = 0; j < NU; ++j) mma_bf16(h[j], a, b[j][0], b[j][1]);
      }
    }
    store_hB();
  }
  if (final_state) {
#pragma unroll
    for (int j = 0; j < NU; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        int d, e;
        h_at(j, r, d, e);
        store_f(final_state, final_dt, state_index(p, n, hv, d, e0 + e), h[j][r]);
      }
  }
}

constexpr int kOutCols = 64;  // value columns per output block
static_assert(roofline::kChunk == kChunk && roofline::kOutCols == kOutCols, "roofline.h models these tiles");

// One block per (chunk, value head): qg = scale exp(G) q of the output kernel, from q and g (gate, in-chunk
// cumsum, L2 norm as in chunk_fwd, same order: the same values chunk_fwd's tiles hold). It runs after the
// state pass and writes into w's buffer, dead by then, so the forward's scratch holds no qg buffer of its
// own (an fp32 [tokens, HV, K] less at its peak). f32 / f64 inputs only: for 16-bit ones chunk_fwd writes a bf16 qg
// (half the bytes, so a buffer of its own costs less than this pass). Shared: q, G [64, K + 4].
template <int kK>
__global__ void __launch_bounds__(kThreads) gated_q_kernel(KdaDev p) {
  int64_t t0;
  int L;
  const int64_t c = blockIdx.x;
  if (!locate_chunk(p, c, t0, L)) return;
  constexpr int KP = kK + 4, k4 = kK / 4;
  const int hv = blockIdx.y, h = hv / p.G;
  extern __shared__ float smem[];
  float* qS = smem;
  float* gS = qS + kChunk * KP;
  load_qkg<kK, false>(p, t0, L, h, hv, gate_rate(p, hv), qS, nullptr, gS);
  __syncthreads();
  if (p.l2norm) l2norm_rows<kK, 1>({qS}, true, [](int, int, float, const float*) {});
  gate_cumsum<kK>(gS);  // its barriers also order the normalised q rows before the loop below
  const float s = p.scale;
  for (int idx = threadIdx.x; idx < L * k4; idx += kThreads) {
    const int i = idx / k4, d = (idx % k4) * 4, at = i * KP + d;
    const float4 g = *reinterpret_cast<const float4*>(gS + at), q = *reinterpret_cast<const float4*>(qS + at);
    const float4 qg =
        make_float4(s * exp_ftz(g.x) * q.x, s * exp_ftz(g.y) * q.y, s * exp_ftz(g.z) * q.z, s * exp_ftz(g.w) * q.w);
    stg4(p.qg + ((t0 + i) * p.HV + hv) * kK + d, qg);
  }
}

// Rows [0, 64) x kCols columns (from c0) of chunk rows t0.. of a [tokens, HV, row_len] scratch array (value head
// hv) into a shared tile of row stride S by cp.async, 16 bytes a copy (4 fp32 or 8 bf16 entries); rows >= L zero.
template <int kCols, class T>
__device__ __forceinline__ void cp_async_chunk_rows(T* tile, int S, const T* src, const KdaDev& p, int64_t t0, int hv,
                                                    int row_len, int c0, int L) {
  constexpr int per = 16 / sizeof(T), n = kCols / per;
  for (int idx = threadIdx.x; idx < kChunk * n; idx += kThreads) {
    const int i = idx / n, d = (idx % n) * per;
    cp_async16(tile + i * S + d, src + (i < L ? ((t0 + i) * p.HV + hv) * row_len + c0 + d : 0), i < L);
  }
}

// The output kernels' tile of S: rows [0, K) x kOutCols columns (from e0) of the state entering chunk c.
template <int kK, class T>
__device__ __forceinline__ void cp_async_state_cols(T* tile, int S, const T* hs, const KdaDev& p, int64_t c, int hv,
                                                    int e0) {
  constexpr int per = 16 / sizeof(T), n = kOutCols / per;
  for (int idx = threadIdx.x; idx < kK * n; idx += kThreads) {
    const int d = idx / n, e = (idx % n) * per;
    cp_async16(tile + d * S + e, hs + ((c * p.HV + hv) * kK + d) * p.V + e0 + e, true);
  }
}

// Everything an output block reads, into its tiles (qg [64, K], Aqk [64, 64] fp32, v_new [64, 64], S [K, 64]; the
// scratch element type T), then waits and syncs.
template <int kK, class T>
__device__ __forceinline__ void load_output_tiles(T* qT, int QP, float* aS, int AP, T* vT, T* sT, int SP, const T* qg,
                                                  const T* vn, const T* hs, const KdaDev& p, int64_t c, int64_t t0,
                                                  int hv, int e0, int L) {
  cp_async_chunk_rows<kK>(qT, QP, qg, p, t0, hv, kK, 0, L);
  cp_async_chunk_rows<kChunk>(aS, AP, p.Aqk, p, t0, hv, kChunk, 0, L);
  cp_async_chunk_rows<kOutCols>(vT, SP, vn, p, t0, hv, p.V, e0, L);
  cp_async_state_cols<kK>(sT, SP, hs, p, c, hv, e0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
}

// o rows [r0, r0 + 16) (those < L) x columns col0 + [0, 8 NTW) of a warp strip's accumulators.
template <int NTW>
__device__ __forceinline__ void store_output_strip(void* o, int o_dt, const KdaDev& p, int64_t t0, int hv, int L,
                                                   int r0, int col0, const float (&acc)[NTW][4]) {
#pragma unroll
  for (int j = 0; j < NTW; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = r0 + frag_row(r);
      if (i < L) store_f(o, o_dt, ((t0 + i) * p.HV + hv) * p.V + col0 + 8 * j + frag_col(r), acc[j][r]);
    }
}

// One block per (chunk, value head, 64 value columns), all chunks in parallel:
//   o = qg S + Aqk v_new   (qg = scale exp(G) q, S = hs of the chunk).
// f32 / f64 inputs (3xTF32); 16-bit inputs take output_fwd_bf16_kernel.
// Shared: qg [64, K + 4], S [K, 72], Aqk [64, 68], v_new [64, 72].
template <int kK>
__global__ void __launch_bounds__(kThreads, 2) output_fwd_kernel(KdaDev p, void* o, int o_dt) {
  constexpr bool kPrecise = true;
  int64_t t0;
  int L;
  // the column blocks of one chunk are neighbours, so the second reads qg and Aqk from L2
  const int tiles = p.V / kOutCols;
  const int64_t c = blockIdx.x / tiles;
  if (!locate_chunk(p, c, t0, L)) return;
  constexpr int SP = kOutCols + 8;
  const int hv = blockIdx.y, e0 = static_cast<int>(blockIdx.x % tiles) * kOutCols, K = kK, KP = K + 4;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  extern __shared__ float smem[];
  float* qS = smem;
  float* hS = qS + kChunk * KP;
  float* aS = hS + K * SP;
  float* vS = aS + kChunk * kAP;
  load_output_tiles<kK>(qS, KP, aS, kAP, vS, hS, SP, p.qg, p.vn, p.hs, p, c, t0, hv, e0, L);
  // warp = (16-row block, half of the 64 columns)
  constexpr int NTW = kOutCols / 16;
  const int r0 = (warp % 4) * 16, cw = (warp / 4) * NTW * 8;
  if (r0 >= L) return;
  float acc[NTW][4] = {};
  gemm_strip<kPrecise, NTW>(acc, qS + r0 * KP, KP, 1, hS + cw, SP, K);
  gemm_strip<kPrecise, NTW>(acc, aS + r0 * kAP, kAP, 1, vS + cw, SP, r0 + 16);  // Aqk is lower triangular
  store_output_strip<NTW>(o, o_dt, p, t0, hv, L, r0, e0 + cw, acc);
}

// The output kernel of 16-bit inputs: qg, S and v_new arrive in bf16 (cp.async straight to their tiles), Aqk in
// fp32 (chunk_fwd's, also the backward's), rounded to bf16 as its fragments are formed, as FLA's chunk_o multiplies
// bf16 q, h, A and v_new. Block and warp tiles as in output_fwd_kernel. Shared: bf16 qg [64, K + 8], S [K, 72],
// v_new [64, 72]; fp32 Aqk [64, 72] (paired loads at rows g, columns 2t: 32 distinct banks per half warp).
template <int kK>
__global__ void __launch_bounds__(kThreads, 2) output_fwd_bf16_kernel(KdaDev p, void* o, int o_dt) {
  using bf16 = __nv_bfloat16;
  int64_t t0;
  int L;
  const int tiles = p.V / kOutCols;
  const int64_t c = blockIdx.x / tiles;
  if (!locate_chunk(p, c, t0, L)) return;
  constexpr int QP = kK + 8, SP = kOutCols + 8, AP = kChunk + 8;
  const int hv = blockIdx.y, e0 = static_cast<int>(blockIdx.x % tiles) * kOutCols;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  extern __shared__ __align__(16) char smem_bytes[];
  float* aS = reinterpret_cast<float*>(smem_bytes);
  bf16* qB = reinterpret_cast<bf16*>(aS + kChunk * AP);
  bf16* hB = qB + kChunk * QP;
  bf16* vB = hB + kK * SP;
  load_output_tiles<kK>(qB, QP, aS, AP, vB, hB, SP, p.qg_bf16, p.vn_bf16, p.hs_bf16, p, c, t0, hv, e0, L);
  // warp = (16-row block, half of the 64 columns)
  constexpr int NTW = kOutCols / 16;
  const int r0 = (warp % 4) * 16, cw = (warp / 4) * NTW * 8;
  if (r0 >= L) return;
  float acc[NTW][4] = {};
#pragma unroll
  for (int k0 = 0; k0 < kK; k0 += 16) {
    uint32_t a[4];
    a_frag(a, qB, QP, r0, k0);
#pragma unroll
    for (int j = 0; j < NTW; j += 2) {
      uint32_t b[4];
      b_frag_kn(b, hB, SP, k0, cw + 8 * j);
      mma_bf16(acc[j], a, b[0], b[1]);
      mma_bf16(acc[j + 1], a, b[2], b[3]);
    }
  }
  const int g = lane / 4, t = lane % 4;
  for (int k0 = 0; k0 < r0 + 16; k0 += 16) {  // Aqk is lower triangular
    const float* x = aS + (r0 + g) * AP + k0 + 2 * t;
    const float2 x0 = *reinterpret_cast<const float2*>(x), x1 = *reinterpret_cast<const float2*>(x + 8 * AP);
    const float2 x2 = *reinterpret_cast<const float2*>(x + 8), x3 = *reinterpret_cast<const float2*>(x + 8 * AP + 8);
    const uint32_t a[4] = {pack_bf16x2(x0.x, x0.y), pack_bf16x2(x1.x, x1.y), pack_bf16x2(x2.x, x2.y),
                           pack_bf16x2(x3.x, x3.y)};
#pragma unroll
    for (int j = 0; j < NTW; j += 2) {
      uint32_t b[4];
      b_frag_kn(b, vB, SP, k0, cw + 8 * j);
      mma_bf16(acc[j], a, b[0], b[1]);
      mma_bf16(acc[j + 1], a, b[2], b[3]);
    }
  }
  store_output_strip<NTW>(o, o_dt, p, t0, hv, L, r0, e0 + cw, acc);
}

size_t chunk_fwd_smem(int K) {
  return sizeof(float) * (2 * kChunk * (K + 4) + q_region(K) + kMBlocks * kSub * kMP + kChunk);
}
size_t state_fwd_smem(int K, int BV, int stages) {
  return sizeof(float) * (stages * (2 * kChunk * (K + 4) + kChunk * (BV + 8) + K) + (kChunk + K) * (BV + 8));
}
size_t state_fwd_bf16_smem(int K, int BV, int stages) {
  return stages * (sizeof(__nv_bfloat16) * kChunk * (2 * (K + 8) + BV + 8) + sizeof(float) * K) +
         sizeof(__nv_bfloat16) * (kChunk + K) * (BV + 8);
}
size_t gated_q_smem(int K) { return sizeof(float) * 2 * kChunk * (K + 4); }
size_t output_fwd_bf16_smem(int K) {
  return sizeof(float) * kChunk * (kChunk + 8) +
         sizeof(__nv_bfloat16) * (kChunk * (K + 8) + K * (kOutCols + 8) + kChunk * (kOutCols + 8));
}
size_t output_fwd_smem(int K) {
  return sizeof(float) * (kChunk * (K + 4) + K * (kOutCols + 8) + kChunk * kAP + kChunk * (kOutCols + 8));
}

template <class T>
T* carve(char*& cursor, int64_t count) {
  T* p = reinterpret_cast<T*>(cursor);
  cursor += (static_cast<size_t>(count) * sizeof(T) + 255) / 256 * 256;
  return p;
}

struct Sizes {
  int64_t tokens, N, C, H, HV, K, V;
  bool bf16_scratch;  // 16-bit inputs: w, u / v_new, kl, hs, qg, dhs, dv_new in bf16 (common.cuh)
};

// Carves (or with base == nullptr, measures) the scratch. Forward-only calls skip what only the
// backward reads (the chunk kernel then writes none of it).
size_t carve_all(char* base, const Sizes& s, bool backward, KdaDev* dev) {
  KdaDev scratch{};
  KdaDev& p = dev ? *dev : scratch;
  char* cursor = base;
  p.seq_offsets = carve<int64_t>(cursor, s.N + 1);
  p.chunk_offsets = carve<int64_t>(cursor, s.N + 1);
  if (backward) {
    p.qp = carve<float>(cursor, s.tokens * s.H * s.K);
    p.kp = carve<float>(cursor, s.tokens * s.H * s.K);
    p.q_rstd = carve<float>(cursor, s.tokens * s.H);
    p.k_rstd = carve<float>(cursor, s.tokens * s.H);
    p.gc = carve<float>(cursor, s.tokens * s.HV * s.K);
    p.bp = carve<float>(cursor, s.tokens * s.HV);
    p.A = carve<float>(cursor, s.tokens * s.HV * kChunk);
  }
  p.Aqk = carve<float>(cursor, s.tokens * s.HV * kChunk);
  if (s.bf16_scratch) {
    // w and kl share one block of the size of an fp32 [tokens, HV, K], which the backward's fp32 dq takes once
    // both are dead (kl after state_fwd, w after state_bwd); v_new overwrites u in place as below.
    float* wkl = carve<float>(cursor, s.tokens * s.HV * s.K);
    p.w_bf16 = reinterpret_cast<__nv_bfloat16*>(wkl);
    p.kl_bf16 = p.w_bf16 + s.tokens * s.HV * s.K;
    p.u_bf16 = carve<__nv_bfloat16>(cursor, s.tokens * s.HV * s.V);
    p.vn_bf16 = p.u_bf16;
    p.hs_bf16 = carve<__nv_bfloat16>(cursor, s.C * s.HV * s.K * s.V);
    p.gl = carve<float>(cursor, s.C * s.HV * s.K);
    // chunk_fwd forms qg with the other tiles of q (no gated_q pass), so it cannot wait for w's buffer to die
    // (the backward's: below)
    if (!backward) p.qg_bf16 = carve<__nv_bfloat16>(cursor, s.tokens * s.HV * s.K);
    if (backward) {
      p.dhs_bf16 = carve<__nv_bfloat16>(cursor, s.C * s.HV * s.K * s.V);
      p.dvn_bf16 = carve<__nv_bfloat16>(cursor, s.tokens * s.HV * s.V);
      p.dk_hv = carve<float>(cursor, s.tokens * s.HV * s.K);
      // qg (bf16) for state_bwd, dead before wy_bwd writes dk
      p.qg_bf16 = reinterpret_cast<__nv_bfloat16*>(p.dk_hv);
      p.dgc = carve<float>(cursor, s.tokens * s.HV * s.K);
      p.dbp = carve<float>(cursor, s.tokens * s.HV);
      p.gate_part = carve<float>(cursor, s.HV * kGateSlices * (s.K + 1));
      // reuse as in the fp32 layout below, except dk and dv_new: v_new (bf16) and dk (fp32) rows no longer
      // coincide, and dv_new is read by wy_bwd, which writes dq over w and kl
      p.dg_last = p.gl;
      p.dq_hv = wkl;
      p.dAqk = p.Aqk;
      p.dM = p.A;
      p.dbp_slice = reinterpret_cast<float*>(p.hs_bf16);  // (K / 32) tokens HV floats <= C HV K V / 2
    }
    return static_cast<size_t>(cursor - base);
  }
  p.w = carve<float>(cursor, s.tokens * s.HV * s.K);
  p.u = carve<float>(cursor, s.tokens * s.HV * s.V);
  // v_new overwrites u in place: each element belongs to one state block, which has copied u of the
  // chunk to shared memory before it writes v_new there, and nothing reads u afterwards.
  p.vn = p.u;
  p.hs = carve<float>(cursor, s.C * s.HV * s.K * s.V);
  p.kl = carve<float>(cursor, s.tokens * s.HV * s.K);
  p.gl = carve<float>(cursor, s.C * s.HV * s.K);
  // the output kernel's gated q is formed after the state pass, the last reader of w
  if (!backward) p.qg = p.w;
  if (backward) {
    p.dhs = carve<float>(cursor, s.C * s.HV * s.K * s.V);
    p.dgc = carve<float>(cursor, s.tokens * s.HV * s.K);
    p.dbp = carve<float>(cursor, s.tokens * s.HV);
    p.gate_part = carve<float>(cursor, s.HV * kGateSlices * (s.K + 1));
    // The backward's other buffers reuse forward scratch that is dead by the time they are written
    // (kernels run in stream order: chunk_fwd, state_fwd, state_bwd, wy_bwd, pair_bwd, finalize):
    //   kl, gl are last read by state_fwd: dv_new (state_bwd) and dG_last (wy_bwd) take them;
    //   w and Aqk are last read by state_bwd: dq (wy_bwd) and dAqk (wy_bwd) take them;
    //   v_new (in u) and A are read only by wy_bwd, each block its own chunk's rows into shared memory
    //   before it writes the same rows of dk and dM (same [tokens, HV, 128 or 64] layouts, K == V), so
    //   dk and dM take them; hs is last read by wy_bwd: pair_bwd's dbeta slices take it.
    // 518 MiB less at B4 T4096 H16 K = V = 128 than separate buffers.
    p.dvn = p.kl;
    p.dg_last = p.gl;
    p.dq_hv = p.w;
    p.dAqk = p.Aqk;
    p.dk_hv = p.vn;
    p.dM = p.A;
    p.dbp_slice = p.hs;  // (K / 32) tokens HV floats <= C HV K V
  }
  return static_cast<size_t>(cursor - base);
}

// FLA's h from hs [chunks, HV, K, V] (fp32, or bf16 for 16-bit inputs): one thread per output element (f32 or
// f64; [V, K] per head with state_v_first). Only the layouts a plain copy cannot serve come here.
template <class T>
__global__ void intermediate_states_kernel(const T* hs, void* out, int out_dt, int64_t count, int K, int V,
                                           bool v_first) {
  const int64_t KV = static_cast<int64_t>(K) * V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t head = i / KV, r = i % KV;
    const int64_t d = v_first ? r % K : r / V, e = v_first ? r / K : r % V;
    store_f(out, out_dt, i, static_cast<float>(hs[head * KV + d * V + e]));
  }
}

void copy_intermediate_states(const KdaDev& p, const TensorView& out, cudaStream_t stream) {
  // The validated shape [B or 1, NT, HV, ..] holds exactly the chunks the state pass wrote: hs row
  // chunk_offsets[n] + c is chunk c of sequence n, chunk_offsets[n] = n * ceil(T / 64) without cu_seqlens
  // and the running sum of ceil(len / 64) with it (build_tables_kernel), which is FLA's order.
  const int64_t count = out.numel();
  if (count == 0) return;
  const int out_dt = dtype_code(out.dtype, "intermediate_states");
  if (out_dt == kF32 && !p.state_v_first && p.hs) {
    SEQMIX_CUDA_CHECK(
        cudaMemcpyAsync(out.data, p.hs, static_cast<size_t>(count) * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  constexpr int kCopyThreads = 256;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((count + kCopyThreads - 1) / kCopyThreads, 65535));
  if (p.hs)
    intermediate_states_kernel<<<blocks, kCopyThreads, 0, stream>>>(p.hs, out.data, out_dt, count, p.K, p.V,
                                                                    p.state_v_first);
  else
    intermediate_states_kernel<<<blocks, kCopyThreads, 0, stream>>>(p.hs_bf16, out.data, out_dt, count, p.K, p.V,
                                                                    p.state_v_first);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

// Dynamic shared memory of `kernel` plus the largest carveout, so that two blocks fit an SM.
void set_smem_two_per_sm(const void* kernel, size_t bytes) {
  set_smem_limit(kernel, bytes);
  SEQMIX_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
}

// Value columns per block of the forward state pass. A block's chunk step is shorter the narrower its tile
// (B1 T32768 H16 on the H100: 16 / 32 / 64 columns gave forwards of 4.02 / 4.40 / 5.40 ms, each in one wave),
// but every block reads the chunk's whole w and kl (64 x K floats each) whatever its width, and once there is
// more than one wave those re-reads bound the pass: take the narrowest tile whose blocks fit in one wave, else
// 64 (B4 T4096 H64: 6.36 ms at 64 vs 6.54 at 32). Varlen packs take 32 there instead: with skewed lengths the
// longest sequence's chain of chunk steps is the critical path (64 sequences of skewed lengths, 32768 tokens,
// H16: 3.70 ms at 32 vs 3.89 at 64). Sweep: kda_bench --tiles, bench/results/h100.json "kda" "value_tiles".
// These figures are the TF32 state pass's; the bf16 one (16-bit inputs, bf16 scratch) confirms the rule (session e
// call 6): B1 16 / 32 / 64 2.60 / 2.78 / 3.64 ms; B4 H16 64 / 32 / 16 1.18 / 1.28 / 1.33; H64 64 4.52 vs 32 4.92;
// varlen 32 2.61, 16 2.65, 64 2.67.
int forward_value_tile(const KdaDev& p) {
  if (const int tile = value_tile_override(false)) return tile;
  const int64_t heads = static_cast<int64_t>(p.N) * p.HV, sms = sm_count();
  for (const int bv : {16, 32, 64})
    if (heads * (p.V / bv) <= sms) return bv;
  return p.cu_seqlens ? 32 : 64;
}

template <int kK, bool kPrecise>
void launch_chunks(KdaDev& p, const TensorView* o, const TensorView* final_state, bool for_backward,
                   int64_t max_chunks, StageTimer& timer, cudaStream_t stream) {
  const dim3 chunk_grid(static_cast<unsigned>(max_chunks), static_cast<unsigned>(p.HV));
  if (p.tokens > 0) {
    const size_t smem = chunk_fwd_smem(p.K);
    set_smem_two_per_sm(reinterpret_cast<const void*>(chunk_fwd_kernel<kK, kPrecise>), smem);
    chunk_fwd_kernel<kK, kPrecise><<<chunk_grid, kThreads, smem, stream>>>(p, for_backward);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark(roofline::Stage::chunk_fwd);
  }
  const int bv = forward_value_tile(p);
  const int64_t state_blocks = static_cast<int64_t>(p.N) * p.HV * (p.V / bv);
  // two ring slots where each SM runs one block anyway (the 64-column tile has no room for a second); the
  // 16-column tile is built with two only (the built-in choice takes it for few blocks; a tile set through
  // chunk_kda_set_value_tiles can give it more blocks than SMs, and its one-slot carve overran the ring)
  const bool one_wave = state_blocks <= sm_count();
  void* fs_ptr = final_state ? final_state->data : nullptr;
  const int fs_dt = final_state ? dtype_code(final_state->dtype, "final_state") : 0;
  const dim3 state_grid(static_cast<unsigned>(state_blocks));
  auto launch_state = [&](auto kernel, size_t smem) {
    set_smem_two_per_sm(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<state_grid, kThreads, smem, stream>>>(p, fs_ptr, fs_dt);
  };
  if constexpr (kPrecise) {
    const int stages = bv == 16 || (bv == 32 && one_wave) ? 2 : 1;
    const size_t smem = state_fwd_smem(p.K, bv, stages);
    if (bv == 64)
      launch_state(state_fwd_kernel<kK, 64, 1>, smem);
    else if (bv == 32 && stages == 2)
      launch_state(state_fwd_kernel<kK, 32, 2>, smem);
    else if (bv == 32)
      launch_state(state_fwd_kernel<kK, 32, 1>, smem);
    else
      launch_state(state_fwd_kernel<kK, 16, 2>, smem);
  } else {
    // bf16 operands: two slots except for the 32-column tile with more blocks than SMs (its one-slot carve, 95 KB
    // at K 128, is the only one that lets a second block share the SM); the 64-column tile's two fit (198 KB).
    const int stages = bv == 32 && !one_wave ? 1 : 2;
    const size_t smem = state_fwd_bf16_smem(p.K, bv, stages);
    if (bv == 64)
      launch_state(state_fwd_bf16_kernel<kK, 64, 2>, smem);
    else if (bv == 32 && stages == 2)
      launch_state(state_fwd_bf16_kernel<kK, 32, 2>, smem);
    else if (bv == 32)
      launch_state(state_fwd_bf16_kernel<kK, 32, 1>, smem);
    else
      launch_state(state_fwd_bf16_kernel<kK, 16, 2>, smem);
  }
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  timer.mark(roofline::Stage::state_fwd, bv);
  if (o && p.tokens > 0) {
    const dim3 grid(static_cast<unsigned>(max_chunks * (p.V / kOutCols)), static_cast<unsigned>(p.HV));
    const int o_dt = dtype_code(o->dtype, "o");
    if constexpr (kPrecise) {
      const size_t q_smem = gated_q_smem(p.K);
      set_smem_limit(reinterpret_cast<const void*>(gated_q_kernel<kK>), q_smem);
      gated_q_kernel<kK><<<chunk_grid, kThreads, q_smem, stream>>>(p);
      SEQMIX_CUDA_CHECK(cudaGetLastError());
      const size_t smem = output_fwd_smem(p.K);
      set_smem_two_per_sm(reinterpret_cast<const void*>(output_fwd_kernel<kK>), smem);
      output_fwd_kernel<kK><<<grid, kThreads, smem, stream>>>(p, o->data, o_dt);
    } else {
      const size_t smem = output_fwd_bf16_smem(p.K);
      set_smem_two_per_sm(reinterpret_cast<const void*>(output_fwd_bf16_kernel<kK>), smem);
      output_fwd_bf16_kernel<kK><<<grid, kThreads, smem, stream>>>(p, o->data, o_dt);
    }
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark(roofline::Stage::output_fwd);
  }
}

}  // namespace

namespace {
std::atomic<int> forward_tile_override{0}, backward_tile_override{0};
}  // namespace

int value_tile_override(bool backward) { return (backward ? backward_tile_override : forward_tile_override).load(); }

int sm_count() {
  int device = 0, sms = 0;
  SEQMIX_CUDA_CHECK(cudaGetDevice(&device));
  SEQMIX_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

void set_smem_limit(const void* kernel, size_t bytes) {
  int device = 0, optin = 0;
  SEQMIX_CUDA_CHECK(cudaGetDevice(&device));
  SEQMIX_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (static_cast<int64_t>(bytes) > optin)
    SEQMIX_NOT_IMPLEMENTED("chunk_kda on CUDA: this head dim needs ", bytes, " bytes of shared memory per block, ",
                           "the device allows ", optin);
  SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

int dtype_code(DType dtype, const char* name) {
  switch (dtype) {
    case DType::f32: return kF32;
    case DType::f64: return kF64;
    case DType::bf16: return kBF16;
    case DType::f16: return kF16;
    default: SEQMIX_NOT_IMPLEMENTED(name, ": dtype ", dtype_name(dtype), " on CUDA");
  }
}

StageTimer::StageTimer(cudaStream_t s) : stream(s) {
  const char* env = std::getenv("SEQMIX_KDA_TIMING");
  enabled = env && env[0] == '1';
}

void StageTimer::mark(const char* name) {
  if (!enabled || count >= 16) return;
  cudaEventCreate(&events[count]);
  cudaEventRecord(events[count], stream);
  names[count] = name;
  modelled[count++] = false;
}

void StageTimer::mark(roofline::Stage stage, int value_tile) {
  if (!enabled || count >= 16) return;
  stages[count] = stage;
  value_tiles[count] = value_tile;
  mark(roofline::stage_name(stage));
  modelled[count - 1] = true;
}

StageTimer::~StageTimer() {
  if (!enabled || count == 0) return;
  cudaEventSynchronize(events[count - 1]);
  if (device_chunks) {
    cudaMemcpyAsync(&shape.chunks, device_chunks, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
    cudaStreamSynchronize(stream);
  }
  for (int i = 1; i < count; ++i) {
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, events[i - 1], events[i]);
    if (!modelled[i] || shape.N == 0) {  // no sequence: run_forward returned before filling the shape
      std::fprintf(stderr, "[kda timing] %-12s %8.3f ms\n", names[i], ms);
      continue;
    }
    const roofline::Cost c = roofline::stage_cost(stages[i], shape, value_tiles[i]);
    const double roof = roofline::roofline_ms(c), tf32 = roofline::tf32_roofline_ms(c);
    const double unique_ms = roofline::unique_bytes_ms(c), gbs = c.bytes / (ms * 1e6), tflops = c.flops / (ms * 1e9);
    std::fprintf(stderr,
                 "[kda timing] %-12s %8.3f ms %8.1f GB/s %7.2f TFLOP/s  roofline %7.3f ms %7.2fx off  "
                 "TF32 roofline %7.3f ms %7.2fx off  unique-bytes floor %7.3f ms\n",
                 names[i], ms, gbs, tflops, roof, ms / roof, tf32, ms / tf32, unique_ms);
    const roofline::Shape& s = shape;
    std::fprintf(stderr,
                 "[kda stage] {\"stage\": \"%s\", \"ms\": %.4f, \"bytes\": %.0f, \"unique_bytes\": %.0f, "
                 "\"flops\": %.0f, \"tc_flops\": %.0f, \"gb_per_s\": %.1f, \"tflop_per_s\": %.3f, "
                 "\"roofline_ms\": %.4f, \"x_off\": %.3f, \"tf32_roofline_ms\": %.4f, \"x_off_tf32\": %.3f, "
                 "\"unique_bytes_ms\": %.4f, \"tokens\": %lld, \"N\": %lld, \"chunks\": %lld, \"H\": %lld, "
                 "\"HV\": %lld, \"K\": %lld, \"V\": %lld, \"value_tile\": %d, \"in_bytes\": %d, "
                 "\"precise\": %s, \"backward\": %s}\n",
                 names[i], ms, c.bytes, c.unique_bytes, c.flops, c.tc_flops, gbs, tflops, roof, ms / roof, tf32,
                 ms / tf32, unique_ms, static_cast<long long>(s.tokens), static_cast<long long>(s.N),
                 static_cast<long long>(s.chunks), static_cast<long long>(s.H), static_cast<long long>(s.HV),
                 static_cast<long long>(s.K), static_cast<long long>(s.V), value_tiles[i], s.in_bytes,
                 s.precise ? "true" : "false", s.for_backward ? "true" : "false");
  }
  for (int i = 0; i < count; ++i) cudaEventDestroy(events[i]);
}

Workspace::~Workspace() {
  if (base) cudaFreeAsync(base, stream);
}

void run_forward(const cpu::KdaArgs& a, const TensorView* cu_seqlens, const TensorView* o,
                 const TensorView* final_state, bool for_backward, KdaDev& p, int64_t& max_chunks,
                 Workspace& workspace, StageTimer& timer, cudaStream_t stream) {
  p = KdaDev{};
  p.q = a.q->data;
  p.k = a.k->data;
  p.v = a.v->data;
  p.g = a.g->data;
  p.beta = a.beta->data;
  p.in_dt = dtype_code(a.q->dtype, "q");
  p.A_log = a.A_log ? a.A_log->data : nullptr;
  p.A_log_dt = a.A_log ? dtype_code(a.A_log->dtype, "A_log") : 0;
  p.dt_bias = a.dt_bias ? a.dt_bias->data : nullptr;
  p.dt_bias_dt = a.dt_bias ? dtype_code(a.dt_bias->dtype, "dt_bias") : 0;
  p.h0 = a.initial_state ? a.initial_state->data : nullptr;
  p.h0_dt = a.initial_state ? dtype_code(a.initial_state->dtype, "initial_state") : 0;
  p.cu_seqlens = cu_seqlens ? cu_seqlens->data : nullptr;
  p.cu_is_64 = cu_seqlens && cu_seqlens->dtype == DType::i64;
  p.tokens = a.B * a.T;
  p.T = a.T;
  p.N = static_cast<int>(a.N);
  p.H = static_cast<int>(a.H);
  p.HV = static_cast<int>(a.HV);
  p.G = static_cast<int>(a.HV / a.H);
  p.K = static_cast<int>(a.K);
  p.V = static_cast<int>(a.V);
  p.scale = static_cast<float>(a.scale);
  p.l2norm = a.params.use_qk_l2norm_in_kernel;
  p.use_gate = a.params.use_gate_in_kernel;
  p.has_lower_bound = a.params.lower_bound.has_value();
  p.lower_bound = static_cast<float>(a.params.lower_bound.value_or(0.0));
  p.beta_sigmoid = a.params.use_beta_sigmoid_in_kernel;
  p.beta_mult = a.params.allow_neg_eigval ? 2.0f : 1.0f;
  p.state_v_first = a.params.state_v_first;
  auto aligned16 = [](const void* x) { return reinterpret_cast<uintptr_t>(x) % 16 == 0; };
  p.aligned = aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && aligned16(p.g);

  max_chunks = chunk_kda_max_chunks(a, cu_seqlens != nullptr);
  const Sizes sizes{p.tokens, a.N, max_chunks, a.H, a.HV, a.K, a.V, !(p.in_dt == kF32 || p.in_dt == kF64)};
  const size_t bytes = carve_all(nullptr, sizes, for_backward, nullptr);
  workspace.stream = stream;
  SEQMIX_CUDA_CHECK(cudaMallocAsync(&workspace.base, bytes, stream));
  carve_all(static_cast<char*>(workspace.base), sizes, for_backward, &p);

  if (p.N == 0) return;
  if (timer.enabled) {
    roofline::Shape& s = timer.shape;
    auto size_of = [](const TensorView* t) { return t ? static_cast<int>(dtype_size(t->dtype)) : 0; };
    s.tokens = p.tokens;
    s.N = p.N;
    s.chunks = max_chunks;  // exact without cu_seqlens; with them read from the table at the end
    s.H = p.H, s.HV = p.HV, s.K = p.K, s.V = p.V;
    s.in_bytes = size_of(a.q);
    s.out_bytes = size_of(o);  // the backward sets its gradients' size
    s.precise = p.in_dt == kF32 || p.in_dt == kF64;
    s.for_backward = for_backward;
    s.l2norm = p.l2norm, s.use_gate = p.use_gate, s.beta_sigmoid = p.beta_sigmoid;
    s.dt_bias_bytes = size_of(a.dt_bias), s.A_log_bytes = size_of(a.A_log);
    s.cu_seqlens_bytes = size_of(cu_seqlens);
    s.h0_bytes = size_of(a.initial_state), s.final_state_bytes = size_of(final_state);
    timer.device_chunks = cu_seqlens ? p.chunk_offsets + p.N : nullptr;
  }
  timer.mark("start");
  build_tables_kernel<<<1, kTableThreads, 0, stream>>>(p);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  timer.mark(roofline::Stage::tables);
  const bool precise = p.in_dt == kF32 || p.in_dt == kF64;
  if (p.K == 128) {
    if (precise) launch_chunks<128, true>(p, o, final_state, for_backward, max_chunks, timer, stream);
    else launch_chunks<128, false>(p, o, final_state, for_backward, max_chunks, timer, stream);
  } else {
    if (precise) launch_chunks<64, true>(p, o, final_state, for_backward, max_chunks, timer, stream);
    else launch_chunks<64, false>(p, o, final_state, for_backward, max_chunks, timer, stream);
  }
}

}  // namespace kda

int64_t chunk_kda_max_chunks(const cpu::KdaArgs& a, bool varlen) {
  if (!varlen) return a.B * ((a.T + kda::kChunk - 1) / kda::kChunk);
  return (a.T + (kda::kChunk - 1) * a.N) / kda::kChunk;
}

void chunk_kda_set_value_tiles(int forward, int backward) {
  auto valid = [](int tile) { return tile == 0 || tile == 16 || tile == 32 || tile == 64; };
  SEQMIX_CHECK(valid(forward), "chunk_kda_set_value_tiles: forward = ", forward,
               ", expected 0 (built-in), 16, 32 or 64");
  SEQMIX_CHECK(valid(backward), "chunk_kda_set_value_tiles: backward = ", backward,
               ", expected 0 (built-in), 16, 32 or 64");
  kda::forward_tile_override = forward;
  kda::backward_tile_override = backward;
}

size_t chunk_kda_workspace_bytes(int64_t tokens, int64_t num_seqs, int64_t max_chunks, int64_t H, int64_t HV,
                                 int64_t K, int64_t V, bool backward, DType input_dtype) {
  const bool bf16_scratch = input_dtype == DType::bf16 || input_dtype == DType::f16;
  return kda::carve_all(nullptr, {tokens, num_seqs, max_chunks, H, HV, K, V, bf16_scratch}, backward, nullptr);
}

HostTensor cu_seqlens_to_host(const TensorView& cu_seqlens, cudaStream_t stream) {
  HostTensor host(cu_seqlens.dtype, cu_seqlens.shape());
  const size_t bytes = static_cast<size_t>(cu_seqlens.numel()) * dtype_size(cu_seqlens.dtype);
  SEQMIX_CUDA_CHECK(cudaMemcpyAsync(host.view().data, cu_seqlens.data, bytes, cudaMemcpyDeviceToHost, stream));
  SEQMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

void chunk_kda_fwd(const cpu::KdaArgs& args, const TensorView* cu_seqlens, const TensorView& o,
                   const TensorView* final_state, const TensorView* intermediate_states, cudaStream_t stream) {
  kda::KdaDev dev;
  kda::Workspace workspace;
  kda::StageTimer timer(stream);
  int64_t max_chunks = 0;
  kda::run_forward(args, cu_seqlens, &o, final_state, false, dev, max_chunks, workspace, timer, stream);
  if (intermediate_states) kda::copy_intermediate_states(dev, *intermediate_states, stream);
}

}  // namespace seqmix::cuda
