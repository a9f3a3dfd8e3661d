// KDA chunked forward on CUDA (FLA chunk_kda decomposition, fp32 arithmetic; the matrix products w, u
// and the state recurrence on the tensor cores as 3xTF32, the pairwise-decay products M, Aqk and the
// triangular inverse on the CUDA cores).
//
// Per chunk of 64 tokens (cumulative gates G = cumsum g within the chunk, fp32):
//   M = tril(diag(beta) K Gamma K^T, -1),  M_ij = beta_i sum_d k_id k_jd exp(G_id - G_jd)
//   A = (I + M)^-1                           forward substitution, row by row
//   w = A diag(beta) (exp(G) * K),  u = A diag(beta) V,  Aqk = scale * tril(q Gamma K^T) (diagonal kept)
// Per (sequence, head, 16 or 32 value columns), sequentially over chunks with the state tile in shared memory:
//   v_new = u - w S;  o = (scale exp(G) * q) S + Aqk v_new;  S <- exp(G_last) S + (exp(G_last - G) * K)^T v_new
// exp(G_i - G_j) is formed per pair (i >= j, so the exponent is <= 0 for decays g <= 0) rather than
// as exp(G_i) * exp(-G_j): that product overflows once a chunk decays by more than ~88 nats, which
// FLA avoids with 16-token sub-chunks; per-pair exponentials need no such split.
//
// Kernels: build_tables (sequence -> chunk offsets on the device), prepare_qk (L2 norm), prepare_gate
// (fused gate, beta sigmoid, in-chunk cumsum), intra_fwd (one block per (chunk, head): M, A, w, u, Aqk;
// k, q, G tiles [64, K] in shared memory), state_fwd (one block per (sequence, head, V tile)).
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "cuda/common/cuda_check.h"
#include "cuda/kda/common.cuh"

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

// One warp per (token, head) row of q and k: fp32 copy, L2-normalised when asked (FLA eps 1e-6).
__global__ void prepare_qk_kernel(KdaDev p) {
  constexpr float kL2NormEps = 1e-6f;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.tokens * p.H) return;
  for (int which = 0; which < 2; ++which) {
    const void* src = which ? p.k : p.q;
    float* dst = which ? p.kp : p.qp;
    float* rstd = which ? p.k_rstd : p.q_rstd;
    float x[4];
    float ss = 0.0f;
    for (int r = 0; r < p.K / 32; ++r) {
      x[r] = load_f(src, p.in_dt, row * p.K + r * 32 + lane);
      ss += x[r] * x[r];
    }
    float s = 1.0f;
    if (p.l2norm) {
      s = rsqrtf(warp_sum(ss) + kL2NormEps);
      if (lane == 0) rstd[row] = s;
    }
    for (int r = 0; r < p.K / 32; ++r) dst[row * p.K + r * 32 + lane] = x[r] * s;
  }
}

// One block per (chunk, value head): applied gate and its in-chunk cumsum (thread per channel),
// applied beta (thread per token).
__global__ void prepare_gate_kernel(KdaDev p) {
  int64_t t0;
  int L;
  if (!locate_chunk(p, blockIdx.x, t0, L)) return;
  const int hv = blockIdx.y;
  for (int d = threadIdx.x; d < p.K; d += blockDim.x) {
    float run = 0.0f;
    for (int i = 0; i < L; ++i) {
      const int64_t at = ((t0 + i) * p.HV + hv) * p.K + d;
      run += gate_value(p, load_f(p.g, p.in_dt, at), hv, d, nullptr, nullptr);
      p.gc[at] = run;
    }
  }
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    const int64_t at = (t0 + i) * p.HV + hv;
    float b = load_f(p.beta, p.in_dt, at);
    if (p.beta_sigmoid) b = p.beta_mult / (1.0f + expf(-b));
    p.bp[at] = b;
  }
}

// One block per (chunk, value head). Shared: k, q (later beta exp(G) k, then beta v), G as [64, K + 1];
// M and A as [64, 65]; beta [64].
__global__ void __launch_bounds__(kThreads) intra_fwd_kernel(KdaDev p) {
  int64_t t0;
  int L;
  if (!locate_chunk(p, blockIdx.x, t0, L)) return;
  const int hv = blockIdx.y, h = hv / p.G, K = p.K, KP = K + 1, tid = threadIdx.x;
  extern __shared__ float smem[];
  float* kS = smem;
  float* xS = kS + kChunk * KP;
  float* gS = xS + kChunk * KP;
  float* Ms = gS + kChunk * KP;
  float* As = Ms + kChunk * kSmallStride;
  float* bS = As + kChunk * kSmallStride;

  struct Three {
    float4 k, q, g;
  };
  const int k4 = K / 4;
  batched<2>(
      kChunk * k4,
      [&](int idx) {
        Three f{zero4(), zero4(), zero4()};
        const int i = idx / k4, d = (idx % k4) * 4;
        if (i < L) {
          const int64_t t = t0 + i;
          f.k = ldg4(p.kp + (t * p.H + h) * K + d);
          f.q = ldg4(p.qp + (t * p.H + h) * K + d);
          f.g = ldg4(p.gc + (t * p.HV + hv) * K + d);
        }
        return f;
      },
      [&](int idx, const Three& f) {
        const int at = (idx / k4) * KP + (idx % k4) * 4;
        st4_scalar(kS + at, f.k);
        st4_scalar(xS + at, f.q);
        st4_scalar(gS + at, f.g);
      });
  for (int i = tid; i < kChunk; i += kThreads) bS[i] = i < L ? p.bp[(t0 + i) * p.HV + hv] : 0.0f;
  __syncthreads();

  // M (strictly lower) and Aqk (lower with diagonal), per pair (i, j).
  for (int idx = tid; idx < kChunk * kChunk; idx += kThreads) {
    const int i = idx / kChunk, j = idx % kChunk;
    float m = 0.0f, a = 0.0f;
    if (j <= i && i < L) {
      const float *ki = kS + i * KP, *kj = kS + j * KP, *qi = xS + i * KP, *gi = gS + i * KP, *gj = gS + j * KP;
      for (int d = 0; d < K; ++d) {
        const float e = __expf(gi[d] - gj[d]) * kj[d];
        m += ki[d] * e;
        a += qi[d] * e;
      }
      m = j < i ? bS[i] * m : 0.0f;
      p.Aqk[((t0 + i) * p.HV + hv) * kChunk + j] = p.scale * a;
    } else if (i < L) {
      p.Aqk[((t0 + i) * p.HV + hv) * kChunk + j] = 0.0f;
    }
    Ms[i * kSmallStride + j] = m;
    As[i * kSmallStride + j] = i == j ? 1.0f : 0.0f;
  }
  __syncthreads();

  // A = (I + M)^-1: A_ij = -sum_{j <= m < i} M_im A_mj, row i after rows < i; 4 threads per column j.
  for (int i = 1; i < L; ++i) {
    const int j = tid / 4, part = tid % 4;
    float s = 0.0f;
    if (j < i)
      for (int m = j + part; m < i; m += 4) s += Ms[i * kSmallStride + m] * As[m * kSmallStride + j];
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    if (j < i && part == 0) As[i * kSmallStride + j] = -s;
    __syncthreads();
  }
  for (int idx = tid; idx < L * kChunk; idx += kThreads) {
    const int i = idx / kChunk, j = idx % kChunk;
    p.A[((t0 + i) * p.HV + hv) * kChunk + j] = As[i * kSmallStride + j];
  }
  // w = A (beta exp(G) k)
  for (int idx = tid; idx < kChunk * K; idx += kThreads) {
    const int j = idx / K, d = idx % K;
    xS[j * KP + d] = bS[j] * __expf(gS[j * KP + d]) * kS[j * KP + d];
  }
  __syncthreads();
  const int warp = tid / 32, col_tiles = K / 8;
  // out[64, K] = A x on the tensor cores (3xTF32); rows >= L are not stored.
  auto product = [&](float* out, int64_t out_stride) {
    for (int tile = warp; tile < 4 * col_tiles; tile += kThreads / 32) {
      const int r0 = (tile / col_tiles) * 16, c0 = (tile % col_tiles) * 8;
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      warp_gemm(acc, As + r0 * kSmallStride, kSmallStride, 1, xS + c0, KP, 1, kChunk);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = r0 + frag_row(r), d = c0 + frag_col(r);
        if (i < L) out[((t0 + i) * p.HV + hv) * out_stride + d] = acc[r];
      }
    }
  };
  product(p.w, K);
  __syncthreads();
  // u = A (beta v)   (V == K: the same tile shape)
  batched<8>(
      kChunk * K,
      [&](int idx) {
        const int j = idx / K, e = idx % K;
        return j < L ? bS[j] * load_f(p.v, p.in_dt, ((t0 + j) * p.HV + hv) * p.V + e) : 0.0f;
      },
      [&](int idx, float x) { xS[(idx / K) * KP + idx % K] = x; });
  __syncthreads();
  product(p.u, p.V);
}

// One block per (sequence, value head, BV value columns), chunks in order; the products run on the
// tensor cores (3xTF32, fp32-accurate). Shared (row strides padded by 4): w, Kl = exp(G_last - G) k,
// Qg = scale exp(G) q as [64, K + 4]; Aqk [64, 68]; state tile S [K, BV + 8]; u and v_new [64, BV + 8];
// G_last [K]. Per chunk: v_new = u - w S; o = Qg S + Aqk v_new; S <- exp(G_last) S + Kl^T v_new.
// Writes o (when given), the final state, and for the backward hs (state entering each chunk) and v_new.
template <int BV>
__global__ void __launch_bounds__(kThreads) state_fwd_kernel(KdaDev p, void* o, int o_dt, void* final_state,
                                                             int final_dt, bool for_backward) {
  constexpr int SP = BV + 8, AP = kChunk + 4, NT = BV / 8;  // strides; 8-column warp tiles per row block
  const int n = blockIdx.x, hv = blockIdx.y, e0 = blockIdx.z * BV, h = hv / p.G;
  const int K = p.K, KP = K + 4, tid = threadIdx.x, warp = tid / 32;
  extern __shared__ float smem[];
  float* wS = smem;
  float* klS = wS + kChunk * KP;
  float* qgS = klS + kChunk * KP;
  float* aqS = qgS + kChunk * KP;
  float* hS = aqS + kChunk * AP;
  float* uS = hS + K * SP;
  float* vnS = uS + kChunk * SP;
  float* glS = vnS + kChunk * SP;

  for (int idx = tid; idx < K * BV; idx += kThreads) {
    const int d = idx / BV, e = idx % BV;
    hS[d * SP + e] = p.h0 ? load_f(p.h0, p.h0_dt, state_index(p, n, hv, d, e0 + e)) : 0.0f;
  }
  const int64_t c_end = p.chunk_offsets[n + 1];
  for (int64_t c = p.chunk_offsets[n]; c < c_end; ++c) {
    const int64_t t0 = p.seq_offsets[n] + (c - p.chunk_offsets[n]) * kChunk;
    const int64_t left = p.seq_offsets[n + 1] - t0;
    const int L = static_cast<int>(left < kChunk ? left : kChunk);
    for (int d = tid; d < K; d += kThreads) glS[d] = p.gc[((t0 + L - 1) * p.HV + hv) * K + d];
    __syncthreads();
    load_chunk_tiles(p, t0, L, hv, h, glS, wS, klS, qgS, aqS);
    batched<2>(
        kChunk * (BV / 4),
        [&](int idx) {
          const int i = idx / (BV / 4), e = (idx % (BV / 4)) * 4;
          return i < L ? ldg4(p.u + ((t0 + i) * p.HV + hv) * p.V + e0 + e) : zero4();
        },
        [&](int idx, const float4& v) { st4(uS + (idx / (BV / 4)) * SP + (idx % (BV / 4)) * 4, v); });
    if (for_backward)
      for (int idx = tid; idx < K * BV; idx += kThreads) {
        const int d = idx / BV, e = idx % BV;
        p.hs[((c * p.HV + hv) * K + d) * p.V + e0 + e] = hS[d * SP + e];
      }
    __syncthreads();
    // v_new = u - w S   (64 x BV: 4 * NT warp tiles)
    for (int tile = warp; tile < 4 * NT; tile += kThreads / 32) {
      const int r0 = (tile / NT) * 16, c0 = (tile % NT) * 8;
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      warp_gemm(acc, wS + r0 * KP, KP, 1, hS + c0, SP, 1, K);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = r0 + frag_row(r), e = c0 + frag_col(r);
        const float x = uS[i * SP + e] - acc[r];
        vnS[i * SP + e] = x;
        if (for_backward && i < L) p.vn[((t0 + i) * p.HV + hv) * p.V + e0 + e] = x;
      }
    }
    __syncthreads();
    // o = Qg S + Aqk v_new
    if (o)
      for (int tile = warp; tile < 4 * NT; tile += kThreads / 32) {
        const int r0 = (tile / NT) * 16, c0 = (tile % NT) * 8;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        warp_gemm(acc, qgS + r0 * KP, KP, 1, hS + c0, SP, 1, K);
        warp_gemm(acc, aqS + r0 * AP, AP, 1, vnS + c0, SP, 1, kChunk);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int i = r0 + frag_row(r), e = c0 + frag_col(r);
          if (i < L) store_f(o, o_dt, ((t0 + i) * p.HV + hv) * p.V + e0 + e, acc[r]);
        }
      }
    __syncthreads();
    // S <- exp(G_last) S + Kl^T v_new   (K x BV; each warp owns its tiles, updated in place)
    for (int tile = warp; tile < (K / 16) * NT; tile += kThreads / 32) {
      const int r0 = (tile / NT) * 16, c0 = (tile % NT) * 8;
      float acc[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int d = r0 + frag_row(r), e = c0 + frag_col(r);
        acc[r] = __expf(glS[d]) * hS[d * SP + e];
      }
      warp_gemm(acc, klS + r0, 1, KP, vnS + c0, SP, 1, kChunk);
#pragma unroll
      for (int r = 0; r < 4; ++r) hS[(r0 + frag_row(r)) * SP + c0 + frag_col(r)] = acc[r];
    }
    __syncthreads();
  }
  if (final_state)
    for (int idx = tid; idx < K * BV; idx += kThreads) {
      const int d = idx / BV, e = idx % BV;
      store_f(final_state, final_dt, state_index(p, n, hv, d, e0 + e), hS[d * SP + e]);
    }
}

size_t intra_fwd_smem(int K) { return sizeof(float) * (3 * kChunk * (K + 1) + 2 * kChunk * kSmallStride + kChunk); }
size_t state_fwd_smem(int K, int BV) {
  return sizeof(float) * (3 * kChunk * (K + 4) + kChunk * (kChunk + 4) + (K + 2 * kChunk) * (BV + 8) + K);
}

template <class T>
T* carve(char*& cursor, int64_t count) {
  T* p = reinterpret_cast<T*>(cursor);
  cursor += (static_cast<size_t>(count) * sizeof(T) + 255) / 256 * 256;
  return p;
}

struct Sizes {
  int64_t tokens, N, C, H, HV, K, V;
};

// Carves (or with base == nullptr, measures) the scratch.
size_t carve_all(char* base, const Sizes& s, bool backward, KdaDev* dev) {
  KdaDev scratch{};
  KdaDev& p = dev ? *dev : scratch;
  char* cursor = base;
  p.seq_offsets = carve<int64_t>(cursor, s.N + 1);
  p.chunk_offsets = carve<int64_t>(cursor, s.N + 1);
  p.qp = carve<float>(cursor, s.tokens * s.H * s.K);
  p.kp = carve<float>(cursor, s.tokens * s.H * s.K);
  p.q_rstd = carve<float>(cursor, s.tokens * s.H);
  p.k_rstd = carve<float>(cursor, s.tokens * s.H);
  p.gc = carve<float>(cursor, s.tokens * s.HV * s.K);
  p.bp = carve<float>(cursor, s.tokens * s.HV);
  p.A = carve<float>(cursor, s.tokens * s.HV * kChunk);
  p.Aqk = carve<float>(cursor, s.tokens * s.HV * kChunk);
  p.w = carve<float>(cursor, s.tokens * s.HV * s.K);
  p.u = carve<float>(cursor, s.tokens * s.HV * s.V);
  if (backward) {
    p.vn = carve<float>(cursor, s.tokens * s.HV * s.V);
    p.dvn = carve<float>(cursor, s.tokens * s.HV * s.V);
    p.hs = carve<float>(cursor, s.C * s.HV * s.K * s.V);
    p.dhs = carve<float>(cursor, s.C * s.HV * s.K * s.V);
    p.dq_hv = carve<float>(cursor, s.tokens * s.HV * s.K);
    p.dk_hv = carve<float>(cursor, s.tokens * s.HV * s.K);
    p.dgc = carve<float>(cursor, s.tokens * s.HV * s.K);
    p.dbp = carve<float>(cursor, s.tokens * s.HV);
    p.gate_part = carve<float>(cursor, s.HV * kGateSlices * (s.K + 1));
    // dAqk and dM are written by wy_bwd, after the last reads of Aqk (state_bwd) and u (the forward's
    // state pass), and nothing reads Aqk or u later: they share those buffers (u holds V >= 64 columns).
    p.dAqk = p.Aqk;
    p.dM = p.u;
    p.dg_last = carve<float>(cursor, s.C * s.HV * s.K);
    p.dbp_slice = carve<float>(cursor, (s.K / 32) * s.tokens * s.HV);
  }
  return static_cast<size_t>(cursor - base);
}

}  // namespace

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
  names[count++] = name;
}

StageTimer::~StageTimer() {
  if (!enabled || count == 0) return;
  cudaEventSynchronize(events[count - 1]);
  for (int i = 1; i < count; ++i) {
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, events[i - 1], events[i]);
    std::fprintf(stderr, "[kda timing] %-12s %8.3f ms\n", names[i], ms);
  }
  for (int i = 0; i < count; ++i) cudaEventDestroy(events[i]);
}

int state_value_tile(const KdaDev& p) {
  static int sms = [] {
    int device = 0, count = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    return count;
  }();
  const int64_t blocks32 = static_cast<int64_t>(p.N) * p.HV * (p.V / 32);
  return blocks32 < static_cast<int64_t>(sms) ? 16 : 32;
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

  max_chunks = chunk_kda_max_chunks(a, cu_seqlens != nullptr);
  const Sizes sizes{p.tokens, a.N, max_chunks, a.H, a.HV, a.K, a.V};
  const size_t bytes = carve_all(nullptr, sizes, for_backward, nullptr);
  workspace.stream = stream;
  SEQMIX_CUDA_CHECK(cudaMallocAsync(&workspace.base, bytes, stream));
  carve_all(static_cast<char*>(workspace.base), sizes, for_backward, &p);

  if (p.N == 0) return;
  timer.mark("start");
  build_tables_kernel<<<1, kTableThreads, 0, stream>>>(p);
  SEQMIX_CUDA_CHECK(cudaGetLastError());
  if (p.tokens > 0) {
    const int64_t rows = p.tokens * p.H;
    constexpr int kRowsPerBlock = 8;
    prepare_qk_kernel<<<static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock), 32 * kRowsPerBlock, 0,
                        stream>>>(p);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    const dim3 chunk_grid(static_cast<unsigned>(max_chunks), static_cast<unsigned>(p.HV));
    prepare_gate_kernel<<<chunk_grid, 128, 0, stream>>>(p);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark("prepare");
    const size_t intra_smem = intra_fwd_smem(p.K);
    set_smem_limit(reinterpret_cast<const void*>(intra_fwd_kernel), intra_smem);
    intra_fwd_kernel<<<chunk_grid, kThreads, intra_smem, stream>>>(p);
    SEQMIX_CUDA_CHECK(cudaGetLastError());
    timer.mark("intra_fwd");
  }
  const int bv = state_value_tile(p);
  const size_t state_smem = state_fwd_smem(p.K, bv);
  const dim3 state_grid(static_cast<unsigned>(p.N), static_cast<unsigned>(p.HV), static_cast<unsigned>(p.V / bv));
  void* o_ptr = o ? o->data : nullptr;
  const int o_dt = o ? dtype_code(o->dtype, "o") : 0;
  void* fs_ptr = final_state ? final_state->data : nullptr;
  const int fs_dt = final_state ? dtype_code(final_state->dtype, "final_state") : 0;
  if (bv == 16) {
    set_smem_limit(reinterpret_cast<const void*>(state_fwd_kernel<16>), state_smem);
    state_fwd_kernel<16><<<state_grid, kThreads, state_smem, stream>>>(p, o_ptr, o_dt, fs_ptr, fs_dt, for_backward);
  } else {
    set_smem_limit(reinterpret_cast<const void*>(state_fwd_kernel<32>), state_smem);
    state_fwd_kernel<32><<<state_grid, kThreads, state_smem, stream>>>(p, o_ptr, o_dt, fs_ptr, fs_dt, for_backward);
  }
  timer.mark("state_fwd");
  SEQMIX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kda

int64_t chunk_kda_max_chunks(const cpu::KdaArgs& a, bool varlen) {
  if (!varlen) return a.B * ((a.T + kda::kChunk - 1) / kda::kChunk);
  return (a.T + (kda::kChunk - 1) * a.N) / kda::kChunk;
}

size_t chunk_kda_workspace_bytes(int64_t tokens, int64_t num_seqs, int64_t max_chunks, int64_t H, int64_t HV,
                                 int64_t K, int64_t V, bool backward) {
  return kda::carve_all(nullptr, {tokens, num_seqs, max_chunks, H, HV, K, V}, backward, nullptr);
}

HostTensor cu_seqlens_to_host(const TensorView& cu_seqlens, cudaStream_t stream) {
  HostTensor host(cu_seqlens.dtype, cu_seqlens.shape());
  const size_t bytes = static_cast<size_t>(cu_seqlens.numel()) * dtype_size(cu_seqlens.dtype);
  SEQMIX_CUDA_CHECK(cudaMemcpyAsync(host.view().data, cu_seqlens.data, bytes, cudaMemcpyDeviceToHost, stream));
  SEQMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

void chunk_kda_fwd(const cpu::KdaArgs& args, const TensorView* cu_seqlens, const TensorView& o,
                   const TensorView* final_state, cudaStream_t stream) {
  kda::KdaDev dev;
  kda::Workspace workspace;
  kda::StageTimer timer(stream);
  int64_t max_chunks = 0;
  kda::run_forward(args, cu_seqlens, &o, final_state, false, dev, max_chunks, workspace, timer, stream);
}

}  // namespace seqmix::cuda
