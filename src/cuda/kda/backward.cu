// KDA chunked backward on CUDA. The forward pipeline is re-run first (recompute, as FLA does),
// this time keeping hs (state entering each chunk, fp32) and v_new.
//
// Per chunk with Qg = scale exp(G) q, Kl = exp(G_last - G) k, Kb = exp(G) k, dS' the gradient of
// the state leaving the chunk:
//   state_bwd (per sequence, head, V tile; chunks in reverse):
//     dv_new = Aqk^T do + Kl dS'
//     dS     = exp(G_last) dS' + Qg^T do - w^T dv_new          (dS entering the chunk; dh0 at the start)
//   intra_bwd (per chunk, head):
//     dAqk = tril(do v_new^T)         -> dq += dAqk-weighted k exp(G_i - G_j), dk likewise with q
//     dq  += scale exp(G) (do S^T);   dk += Kl-part (v_new dS'^T)
//     dw = -dv_new S^T, du = dv_new   -> through w = A diag(beta) Kb, u = A diag(beta) v:
//        d(beta Kb) = A^T dw, d(beta v) = A^T du, dA = dw (beta Kb)^T + du (beta v)^T
//     dM = -A^T dA A^T (strictly lower) -> through M_ij = beta_i sum_d k_id k_jd exp(G_id - G_jd)
//     dG: every factor exp(G_i - G_j) contributes +x_i dx_i at row i and -x_j dx_j at row j;
//        G_last collects sum_e dS' * S_next = sum_j k_j dKl_j + exp(G_last) sum_e S dS';
//        dg = reverse cumsum of dG within the chunk.
//   finalize: dq, dk summed over the value heads of a q/k head (GVA) and through the L2 norm;
//     dg through the fused gate, dbeta through the sigmoid; dA_log, ddt_bias reduced in a fixed
//     order (deterministic, no atomics anywhere).
#include <algorithm>

#include "cuda/common/cuda_check.h"
#include "cuda/kda/common.cuh"

namespace seqmix::cuda {
namespace kda {

namespace {

// One block per (sequence, value head, BV value columns), chunks in reverse; products on the tensor
// cores (3xTF32). Shared (strides padded by 4): w, Kl, Qg as [64, K + 4]; Aqk [64, 68]; dS tile
// [K, BV + 8]; do and dv_new tiles [64, BV + 8]; G_last [K].
template <int BV>
__global__ void __launch_bounds__(kThreads) state_bwd_kernel(KdaDev p, const void* d_out, int d_out_dt,
                                                             const void* dht, int dht_dt, void* dh0, int dh0_dt) {
  constexpr int SP = BV + 8, AP = kChunk + 4, NT = BV / 8;
  const int n = blockIdx.x, hv = blockIdx.y, e0 = blockIdx.z * BV, h = hv / p.G;
  const int K = p.K, KP = K + 4, tid = threadIdx.x, warp = tid / 32;
  extern __shared__ float smem[];
  float* wS = smem;
  float* klS = wS + kChunk * KP;
  float* qgS = klS + kChunk * KP;
  float* aqS = qgS + kChunk * KP;
  float* dhS = aqS + kChunk * AP;
  float* doS = dhS + K * SP;
  float* dvS = doS + kChunk * SP;
  float* glS = dvS + kChunk * SP;

  for (int idx = tid; idx < K * BV; idx += kThreads) {
    const int d = idx / BV, e = idx % BV;
    dhS[d * SP + e] = dht ? load_f(dht, dht_dt, state_index(p, n, hv, d, e0 + e)) : 0.0f;
  }
  const int64_t c_begin = p.chunk_offsets[n];
  for (int64_t c = p.chunk_offsets[n + 1] - 1; c >= c_begin; --c) {
    const int64_t t0 = p.seq_offsets[n] + (c - c_begin) * kChunk;
    const int64_t left = p.seq_offsets[n + 1] - t0;
    const int L = static_cast<int>(left < kChunk ? left : kChunk);
    for (int d = tid; d < K; d += kThreads) glS[d] = p.gc[((t0 + L - 1) * p.HV + hv) * K + d];
    __syncthreads();
    load_chunk_tiles(p, t0, L, hv, h, glS, wS, klS, qgS, aqS);
    batched<8>(
        kChunk * BV,
        [&](int idx) {
          const int i = idx / BV, e = idx % BV;
          return i < L ? load_f(d_out, d_out_dt, ((t0 + i) * p.HV + hv) * p.V + e0 + e) : 0.0f;
        },
        [&](int idx, float v) { doS[(idx / BV) * SP + idx % BV] = v; });
    for (int idx = tid; idx < K * BV; idx += kThreads) {
      const int d = idx / BV, e = idx % BV;
      p.dhs[((c * p.HV + hv) * K + d) * p.V + e0 + e] = dhS[d * SP + e];
    }
    __syncthreads();
    // dv_new = Aqk^T do + Kl dS'   (64 x BV)
    for (int tile = warp; tile < 4 * NT; tile += kThreads / 32) {
      const int r0 = (tile / NT) * 16, c0 = (tile % NT) * 8;
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      warp_gemm(acc, aqS + r0, 1, AP, doS + c0, SP, 1, kChunk);
      warp_gemm(acc, klS + r0 * KP, KP, 1, dhS + c0, SP, 1, K);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int j = r0 + frag_row(r), e = c0 + frag_col(r);
        dvS[j * SP + e] = acc[r];
        if (j < L) p.dvn[((t0 + j) * p.HV + hv) * p.V + e0 + e] = acc[r];
      }
    }
    __syncthreads();
    // dS = exp(G_last) dS' + Qg^T do - w^T dv_new   (K x BV; each warp owns its tiles)
    for (int tile = warp; tile < (K / 16) * NT; tile += kThreads / 32) {
      const int r0 = (tile / NT) * 16, c0 = (tile % NT) * 8;
      float pos[4] = {0.0f, 0.0f, 0.0f, 0.0f}, neg[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      warp_gemm(pos, qgS + r0, 1, KP, doS + c0, SP, 1, kChunk);
      warp_gemm(neg, wS + r0, 1, KP, dvS + c0, SP, 1, kChunk);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int d = r0 + frag_row(r), e = c0 + frag_col(r);
        dhS[d * SP + e] = __expf(glS[d]) * dhS[d * SP + e] + pos[r] - neg[r];
      }
    }
    __syncthreads();
  }
  if (dh0)
    for (int idx = tid; idx < K * BV; idx += kThreads) {
      const int d = idx / BV, e = idx % BV;
      store_f(dh0, dh0_dt, state_index(p, n, hv, d, e0 + e), dhS[d * SP + e]);
    }
}

// One block per (chunk, value head); thread `tid` owns entries idx = tid + r * 256 of [64, K]
// tiles (row idx / K, channel idx % K) and accumulates dq, dk, dG for them in registers.
// Shared: k, G, X, Y, Z as [64, K + 1] (V == K, so value rows share the shape; state tiles
// [K, V] go through Z in halves of 64 rows); dAqk / dA / dM, A, scratch as [64, 65];
// dbeta partials [64, K / 32]; dG_last [K]; beta [64].
__global__ void __launch_bounds__(kThreads) intra_bwd_kernel(KdaDev p, const void* d_out, int d_out_dt, void* dv,
                                                             int dv_dt) {
  int64_t t0;
  int L;
  if (!locate_chunk(p, blockIdx.x, t0, L)) return;
  const int hv = blockIdx.y, h = hv / p.G, K = p.K, KP = K + 1, tid = threadIdx.x, lane = tid % 32;
  const int entries = kChunk * K / kThreads, slots = K / 32;
  const int64_t c = blockIdx.x;
  extern __shared__ float smem[];
  float* kS = smem;
  float* gS = kS + kChunk * KP;
  float* X = gS + kChunk * KP;
  float* Y = X + kChunk * KP;
  float* Z = Y + kChunk * KP;
  float* s0 = Z + kChunk * KP;
  float* s1 = s0 + kChunk * kSmallStride;
  float* s2 = s1 + kChunk * kSmallStride;
  float* red = s2 + kChunk * kSmallStride;
  float* dGl = red + kChunk * 4;
  float* bS = dGl + K;

  auto row_at = [&](int i) { return (t0 + i) * p.HV + hv; };
  const int k4 = K / 4;
  // Rows [0, 64) of a row-major fp32 array (row i at src + (t0 + i) * row_stride + col0) into a
  // [64, K + 1] tile, float4 loads batched per thread; rows >= L zero.
  auto load_f32_rows = [&](float* dst, const float* src, int64_t row_stride, int64_t col0) {
    batched<4>(
        kChunk * k4,
        [&](int idx) {
          const int i = idx / k4, d = (idx % k4) * 4;
          return i < L ? ldg4(src + (t0 + i) * row_stride + col0 + d) : zero4();
        },
        [&](int idx, const float4& v) { st4_scalar(dst + (idx / k4) * KP + (idx % k4) * 4, v); });
  };
  // Loads rows [0, 64) of a [tokens, HV, K]-shaped fp32 scratch (or the dtype input) into a tile.
  auto load_rows = [&](float* dst, const float* src_f32, const void* src, int src_dt) {
    if (src_f32) {
      load_f32_rows(dst, src_f32, static_cast<int64_t>(p.HV) * K, static_cast<int64_t>(hv) * K);
      return;
    }
    batched<8>(
        kChunk * K,
        [&](int idx) {
          const int i = idx / K, d = idx % K;
          return i < L ? load_f(src, src_dt, row_at(i) * K + d) : 0.0f;
        },
        [&](int idx, float x) { dst[(idx / K) * KP + idx % K] = x; });
  };
  // Rows [64 * half, 64 * half + 64) of the [K, V] state tile of chunk c.
  auto load_state_half = [&](float* dst, const float* states, int half) {
    const float* base = states + ((c * p.HV + hv) * K + half * kChunk) * p.V;
    batched<4>(
        kChunk * k4, [&](int idx) { return ldg4(base + (idx / k4) * p.V + (idx % k4) * 4); },
        [&](int idx, const float4& v) { st4_scalar(dst + (idx / k4) * KP + (idx % k4) * 4, v); });
  };
  // Adds a per-entry value into the dbeta partial of its row (warp sum; one owner per slot).
  auto add_dbeta = [&](int r, float value) {
    const int idx = tid + r * kThreads;
    const float s = warp_sum(value);
    if (lane == 0) red[(idx / K) * 4 + (idx % K) / 32] += s;
  };

  // s0[i][dd] = sum_e a_tile[i][e] Z[dd][e] for i, dd < 64 (a_tile [64, K + 1], Z a half state tile
  // [64, K + 1]) on the tensor cores (3xTF32); s0 is free between the dAqk and dA steps.
  const int warp = tid / 32;
  // With lower: only j <= i < L kept (the rest zero).
  auto product = [&](const float* a_tile, const float* b_tile, bool lower) {
    for (int tile = warp; tile < 32; tile += kThreads / 32) {
      const int r0 = (tile / 8) * 16, c0 = (tile % 8) * 8;
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      warp_gemm(acc, a_tile + r0 * KP, KP, 1, b_tile + c0 * KP, 1, KP, K);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = r0 + frag_row(r), j = c0 + frag_col(r);
        s0[i * kSmallStride + j] = (!lower || (j <= i && i < L)) ? acc[r] : 0.0f;
      }
    }
  };
  auto product_half = [&](const float* a_tile) { product(a_tile, Z, false); };

  float acc_dq[kMaxEntries], acc_dk[kMaxEntries], acc_dg[kMaxEntries], tmp[kMaxEntries];
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) acc_dq[r] = acc_dk[r] = acc_dg[r] = tmp[r] = 0.0f;

  load_f32_rows(kS, p.kp, static_cast<int64_t>(p.H) * K, static_cast<int64_t>(h) * K);
  load_rows(gS, p.gc, nullptr, 0);
  load_rows(X, nullptr, d_out, d_out_dt);
  load_rows(Y, p.vn, nullptr, 0);
  batched<4>(
      kChunk * (kChunk / 4),
      [&](int idx) {
        const int i = idx / (kChunk / 4), j = (idx % (kChunk / 4)) * 4;
        return i < L ? ldg4(p.A + row_at(i) * kChunk + j) : zero4();
      },
      [&](int idx, const float4& v) { st4_scalar(s1 + (idx / (kChunk / 4)) * kSmallStride + (idx % (kChunk / 4)) * 4, v); });
  for (int i = tid; i < kChunk; i += kThreads) {
    bS[i] = i < L ? p.bp[row_at(i)] : 0.0f;
    for (int s = 0; s < 4; ++s) red[i * 4 + s] = 0.0f;
  }
  __syncthreads();
  for (int d = tid; d < K; d += kThreads) dGl[d] = gS[(L - 1) * KP + d];
  // dAqk = tril(do v_new^T)
  product(X, Y, true);
  __syncthreads();
  const float* g_last = dGl;  // G_last lives in dGl until the dG_last sums replace it below
  load_f32_rows(Z, p.qp, static_cast<int64_t>(p.H) * K, static_cast<int64_t>(h) * K);
  __syncthreads();
  // dq += scale sum_{j<=i} dAqk_ij k_j exp(G_i - G_j);  dk_i += scale sum_{m>=i} dAqk_mi q_m exp(G_m - G_i)
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) {
    if (r >= entries) break;
    const int idx = tid + r * kThreads, i = idx / K, d = idx % K;
    if (i >= L) continue;
    const float gi = gS[i * KP + d];
    float dq_i = 0.0f, dk_i = 0.0f;
    for (int j = 0; j <= i; ++j) dq_i += s0[i * kSmallStride + j] * kS[j * KP + d] * __expf(gi - gS[j * KP + d]);
    for (int m = i; m < L; ++m) dk_i += s0[m * kSmallStride + i] * Z[m * KP + d] * __expf(gS[m * KP + d] - gi);
    acc_dq[r] += p.scale * dq_i;
    acc_dk[r] += p.scale * dk_i;
    acc_dg[r] -= kS[i * KP + d] * p.scale * dk_i;
  }
  __syncthreads();
  // Kl part: dk_j += exp(G_last - G_j) sum_e v_new_je dS'_de (Y = v_new, Z = rows of dS')
  for (int half = 0; half < K / kChunk; ++half) {
    load_state_half(Z, p.dhs, half);
    __syncthreads();
    product_half(Y);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kMaxEntries; ++r) {
      if (r >= entries) break;
      const int idx = tid + r * kThreads, i = idx / K, d = idx % K;
      if (i >= L || d / kChunk != half) continue;
      float s = s0[i * kSmallStride + d - half * kChunk];
      s *= __expf(g_last[d] - gS[i * KP + d]);
      tmp[r] = kS[i * KP + d] * s;
      acc_dk[r] += s;
      acc_dg[r] -= tmp[r];
    }
    __syncthreads();
  }
  // dG_last = sum_j k_j dKl_j + exp(G_last) sum_e S dS' (column sums in a fixed order)
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) {
    if (r >= entries) break;
    const int idx = tid + r * kThreads, i = idx / K, d = idx % K;
    Y[i * KP + d] = tmp[r];
    tmp[r] = 0.0f;
  }
  float gl_own = 0.0f;
  if (tid < K) gl_own = g_last[tid];
  __syncthreads();
  if (tid < K) {
    float s = 0.0f;
    for (int i = 0; i < L; ++i) s += Y[i * KP + tid];
    dGl[tid] = s;
  }
  for (int half = 0; half < K / kChunk; ++half) {
    __syncthreads();
    load_state_half(Z, p.hs, half);
    load_state_half(Y, p.dhs, half);
    __syncthreads();
    if (tid / kChunk == half && tid < K) {
      const int r = tid - half * kChunk;
      float s = 0.0f;
      for (int e = 0; e < K; ++e) s += Z[r * KP + e] * Y[r * KP + e];
      dGl[tid] += __expf(gl_own) * s;
    }
    // dq += scale exp(G_i) sum_e do_ie S_de   (X = do)
    product_half(X);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kMaxEntries; ++r) {
      if (r >= entries) break;
      const int idx = tid + r * kThreads, i = idx / K, d = idx % K;
      if (i >= L || d / kChunk != half) continue;
      const float s = s0[i * kSmallStride + d - half * kChunk];
      acc_dq[r] += p.scale * __expf(gS[i * KP + d]) * s;
    }
  }
  __syncthreads();
  // dw = -dv_new S^T   (X = dv_new, Z = rows of S), kept in tmp, then stored to Y
  load_rows(X, p.dvn, nullptr, 0);
  for (int half = 0; half < K / kChunk; ++half) {
    __syncthreads();
    load_state_half(Z, p.hs, half);
    __syncthreads();
    product_half(X);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kMaxEntries; ++r) {
      if (r >= entries) break;
      const int idx = tid + r * kThreads, i = idx / K, d = idx % K;
      if (i >= L || d / kChunk != half) continue;
      tmp[r] = -s0[i * kSmallStride + d - half * kChunk];
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) {
    if (r >= entries) break;
    const int idx = tid + r * kThreads;
    Y[(idx / K) * KP + idx % K] = tmp[r];
  }
  load_rows(Z, nullptr, p.v, p.in_dt);  // v (V == K: the same tile shape)
  __syncthreads();
  // d(beta Kb)_j = (A^T dw)_j: dk_j += beta_j exp(G_j) T2_j; dbeta_j += T2_j . Kb_j
  // d(beta v)_j = (A^T dv_new)_j: dv_j = beta_j T3_j; dbeta_j += T3_j . v_j
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) {
    if (r >= entries) break;
    const int idx = tid + r * kThreads, j = idx / K, d = idx % K;
    float t2 = 0.0f, t3 = 0.0f, v_jd = 0.0f;
    const float eg = __expf(gS[j * KP + d]);
    if (j < L) {
      for (int i = j; i < L; ++i) {
        const float a = s1[i * kSmallStride + j];
        t2 += a * Y[i * KP + d];
        t3 += a * X[i * KP + d];
      }
      const float dkb = bS[j] * eg * t2;
      acc_dk[r] += dkb;
      acc_dg[r] += kS[j * KP + d] * dkb;
      v_jd = Z[j * KP + d];
      store_f(dv, dv_dt, row_at(j) * p.V + d, bS[j] * t3);
    }
    add_dbeta(r, t2 * eg * kS[j * KP + d] + t3 * v_jd);
  }
  // dA_ij (j < i) = beta_j (dw_i . Kb_j + dv_new_i . v_j)   (Z = v)
  __syncthreads();
  for (int idx = tid; idx < kChunk * kChunk; idx += kThreads) {
    const int i = idx / kChunk, j = idx % kChunk;
    float s = 0.0f;
    if (j < i && i < L) {
      for (int d = 0; d < K; ++d)
        s += Y[i * KP + d] * __expf(gS[j * KP + d]) * kS[j * KP + d] + X[i * KP + d] * Z[j * KP + d];
      s *= bS[j];
    }
    s0[i * kSmallStride + j] = s;
  }
  __syncthreads();
  // dM = -A^T dA A^T, strictly lower: s2 = dA A^T, then s0 = -A^T s2
  for (int idx = tid; idx < kChunk * kChunk; idx += kThreads) {
    const int i = idx / kChunk, j = idx % kChunk;
    float s = 0.0f;
    for (int m = 0; m <= j && m < i; ++m) s += s0[i * kSmallStride + m] * s1[j * kSmallStride + m];
    s2[i * kSmallStride + j] = s;
  }
  __syncthreads();
  for (int idx = tid; idx < kChunk * kChunk; idx += kThreads) {
    const int i = idx / kChunk, j = idx % kChunk;
    float s = 0.0f;
    if (j < i && i < L)
      for (int m = i; m < L; ++m) s -= s1[m * kSmallStride + i] * s2[m * kSmallStride + j];
    s0[i * kSmallStride + j] = s;
  }
  __syncthreads();
  // Through M_ij = beta_i sum_d k_id k_jd exp(G_id - G_jd):
  //   row side  S_i = sum_{j<i} dM_ij k_j exp(G_i - G_j): dk_i += beta_i S_i, dbeta_i += k_i . S_i
  //   column side R_j = sum_{i>j} dM_ij beta_i k_i exp(G_i - G_j): dk_j += R_j
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) {
    if (r >= entries) break;
    const int idx = tid + r * kThreads, i = idx / K, d = idx % K;
    float row_side = 0.0f;
    if (i < L) {
      const float gi = gS[i * KP + d], ki = kS[i * KP + d];
      float col_side = 0.0f;
      for (int j = 0; j < i; ++j) row_side += s0[i * kSmallStride + j] * kS[j * KP + d] * __expf(gi - gS[j * KP + d]);
      for (int m = i + 1; m < L; ++m)
        col_side += s0[m * kSmallStride + i] * bS[m] * kS[m * KP + d] * __expf(gS[m * KP + d] - gi);
      acc_dk[r] += bS[i] * row_side + col_side;
      acc_dg[r] += ki * bS[i] * row_side - ki * col_side;
      row_side *= ki;
    }
    add_dbeta(r, row_side);
  }
  // dq, dk per value head; dG += q . dq; then dg = reverse cumsum of dG plus dG_last.
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) {
    if (r >= entries) break;
    const int idx = tid + r * kThreads, i = idx / K, d = idx % K;
    if (i < L) {
      const int64_t at = row_at(i) * K + d;
      p.dq_hv[at] = acc_dq[r];
      p.dk_hv[at] = acc_dk[r];
      acc_dg[r] += p.qp[((t0 + i) * p.H + h) * K + d] * acc_dq[r];
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kMaxEntries; ++r) {
    if (r >= entries) break;
    const int idx = tid + r * kThreads;
    Y[(idx / K) * KP + idx % K] = acc_dg[r];
  }
  __syncthreads();
  if (tid < K) {
    float run = dGl[tid];
    for (int i = L - 1; i >= 0; --i) {
      run += Y[i * KP + tid];
      p.dgc[row_at(i) * K + tid] = run;
    }
  }
  if (tid < L) {
    float s = 0.0f;
    for (int q = 0; q < slots; ++q) s += red[tid * 4 + q];
    p.dbp[row_at(tid)] = s;
  }
}

// One warp per (token, q/k head): sum over the value heads of the group, then through the L2 norm
// (dx = rstd (dy - (dy . y) y) with y the normalised row).
__global__ void finalize_qk_kernel(KdaDev p, void* dq, void* dk, int dt) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.tokens * p.H) return;
  const int64_t t = row / p.H;
  const int h = static_cast<int>(row % p.H);
  for (int which = 0; which < 2; ++which) {
    const float* src = which ? p.dk_hv : p.dq_hv;
    const float* y = which ? p.kp : p.qp;
    float x[4], dot = 0.0f;
    for (int r = 0; r < p.K / 32; ++r) {
      const int d = r * 32 + lane;
      float s = 0.0f;
      for (int g = 0; g < p.G; ++g) s += src[(t * p.HV + h * p.G + g) * p.K + d];
      x[r] = s;
      dot += s * y[row * p.K + d];
    }
    float rstd = 1.0f;
    if (p.l2norm) {
      dot = warp_sum(dot);
      rstd = (which ? p.k_rstd : p.q_rstd)[row];
    }
    for (int r = 0; r < p.K / 32; ++r) {
      const int d = r * 32 + lane;
      const float out = p.l2norm ? rstd * (x[r] - dot * y[row * p.K + d]) : x[r];
      store_f(which ? dk : dq, dt, row * p.K + d, out);
    }
  }
}

// Elementwise: dg through the fused gate, dbeta through the sigmoid.
__global__ void finalize_gate_beta_kernel(KdaDev p, void* dg, void* dbeta, int dt) {
  const int64_t n_g = p.tokens * p.HV * p.K;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_g;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float d_raw = 1.0f;
    if (p.use_gate) gate_value(p, load_f(p.g, p.in_dt, i), static_cast<int>((i / p.K) % p.HV), static_cast<int>(i % p.K),
                               &d_raw, nullptr);
    store_f(dg, dt, i, p.dgc[i] * d_raw);
    if (i < p.tokens * p.HV) {
      float db = p.dbp[i];
      if (p.beta_sigmoid) {
        const float s = 1.0f / (1.0f + expf(-load_f(p.beta, p.in_dt, i)));
        db *= p.beta_mult * s * (1.0f - s);
      }
      store_f(dbeta, dt, i, db);
    }
  }
}

// dA_log[hv] = sum_{t,d} dG * dg/dA_log, ddt_bias[hv, d] = sum_t dG * dg/dg_raw in two deterministic
// passes: one block per (value head, token slice) writes slice partials (each thread a fixed channel
// and token stride, combined in a fixed order), then one block per value head adds the slices in order.
constexpr int kReduceThreads = 256;
__global__ void __launch_bounds__(kReduceThreads) gate_params_partial_kernel(KdaDev p) {
  __shared__ float bias_part[kReduceThreads], a_part[kReduceThreads];
  const int hv = blockIdx.x, slice = blockIdx.y, tid = threadIdx.x, d = tid % p.K, lanes_per_d = kReduceThreads / p.K;
  const int64_t per = (p.tokens + kGateSlices - 1) / kGateSlices, t_begin = slice * per;
  const int64_t t_end = t_begin + per < p.tokens ? t_begin + per : p.tokens;
  float sb = 0.0f, sa = 0.0f;
  for (int64_t t = t_begin + tid / p.K; t < t_end; t += lanes_per_d) {
    const int64_t i = (t * p.HV + hv) * p.K + d;
    float d_raw, d_A;
    gate_value(p, load_f(p.g, p.in_dt, i), hv, d, &d_raw, &d_A);
    sb += p.dgc[i] * d_raw;
    sa += p.dgc[i] * d_A;
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
  float s = 0.0f;
  for (int slice = 0; slice < kGateSlices; ++slice) s += part[slice * (p.K + 1) + tid];
  if (tid < p.K) {
    if (ddt_bias) store_f(ddt_bias, dbias_dt, static_cast<int64_t>(hv) * p.K + tid, s);
  } else if (dA_log) {
    store_f(dA_log, dA_dt, hv, s);
  }
}

size_t state_bwd_smem(int K, int BV) {
  return sizeof(float) * (3 * kChunk * (K + 4) + kChunk * (kChunk + 4) + (K + 2 * kChunk) * (BV + 8) + K);
}
size_t intra_bwd_smem(int K) {
  return sizeof(float) * (5 * kChunk * (K + 1) + 3 * kChunk * kSmallStride + kChunk * 4 + K + kChunk);
}

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
  const int dt = dtype_code(dq.dtype, "dq");
  const int bv = state_value_tile(p);
  const size_t state_smem = state_bwd_smem(p.K, bv);
  const dim3 state_grid(static_cast<unsigned>(p.N), static_cast<unsigned>(p.HV), static_cast<unsigned>(p.V / bv));
  const int do_dt = dtype_code(do_.dtype, "do");
  const void* dht_ptr = dht ? dht->data : nullptr;
  const int dht_dt = dht ? dtype_code(dht->dtype, "dht") : 0;
  void* dh0_ptr = dh0 ? dh0->data : nullptr;
  const int dh0_dt = dh0 ? dtype_code(dh0->dtype, "dh0") : 0;
  if (p.N == 0) {
    // no sequence: nothing to differentiate (dA_log / ddt_bias below become zero)
  } else if (bv == 16) {
    set_smem_limit(reinterpret_cast<const void*>(state_bwd_kernel<16>), state_smem);
    state_bwd_kernel<16><<<state_grid, kThreads, state_smem, stream>>>(p, do_.data, do_dt, dht_ptr, dht_dt, dh0_ptr,
                                                                        dh0_dt);
  } else {
    set_smem_limit(reinterpret_cast<const void*>(state_bwd_kernel<32>), state_smem);
    state_bwd_kernel<32><<<state_grid, kThreads, state_smem, stream>>>(p, do_.data, do_dt, dht_ptr, dht_dt, dh0_ptr,
                                                                        dh0_dt);
  }
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  timer.mark("state_bwd");
  if (p.tokens > 0) {
    const size_t intra_smem = intra_bwd_smem(p.K);
    set_smem_limit(reinterpret_cast<const void*>(intra_bwd_kernel), intra_smem);
    const dim3 chunk_grid(static_cast<unsigned>(max_chunks), static_cast<unsigned>(p.HV));
    intra_bwd_kernel<<<chunk_grid, kThreads, intra_smem, stream>>>(p, do_.data, dtype_code(do_.dtype, "do"), dv.data,
                                                                   dtype_code(dv.dtype, "dv"));
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark("intra_bwd");
    const int64_t rows = p.tokens * p.H;
    constexpr int kRowsPerBlock = 8;
    finalize_qk_kernel<<<static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0,
                         stream>>>(p, dq.data, dk.data, dt);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    const int64_t n_g = p.tokens * p.HV * p.K;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n_g + 255) / 256, 65535));
    finalize_gate_beta_kernel<<<blocks, 256, 0, stream>>>(p, dg.data, dbeta.data, dt);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark("finalize");
  }
  if (dA_log || ddt_bias) {
    gate_params_partial_kernel<<<dim3(static_cast<unsigned>(p.HV), kGateSlices), kReduceThreads, 0, stream>>>(p);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    gate_params_final_kernel<<<static_cast<unsigned>(p.HV), p.K + 1, 0, stream>>>(
        p, dA_log ? dA_log->data : nullptr, dA_log ? dtype_code(dA_log->dtype, "dA_log") : 0,
        ddt_bias ? ddt_bias->data : nullptr, ddt_bias ? dtype_code(ddt_bias->dtype, "ddt_bias") : 0);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark("gate_params");
  }
}

}  // namespace seqmix::cuda
