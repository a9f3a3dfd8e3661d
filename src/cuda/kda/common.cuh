// Shared pieces of the KDA CUDA kernels: the argument block every kernel receives, dtype-generic
// loads/stores (a runtime dtype switch instead of template instances keeps the build small), the
// chunk table lookup and the fused gate.
//
// Scratch layout (fp32 unless noted; row-major, token-major like the inputs):
//   seq_offsets, chunk_offsets int64 [N + 1]   sequence n: tokens [seq_offsets[n], seq_offsets[n+1]),
//                                              chunks [chunk_offsets[n], chunk_offsets[n+1])
//   qp, kp [tokens, H, K]     q, k after the optional L2 norm (unscaled); q_rstd, k_rstd [tokens, H]
//   gc [tokens, HV, K]        in-chunk inclusive cumsum of the applied log decay
//   bp [tokens, HV]           applied beta
//   A, Aqk [tokens, HV, 64]   row i of the chunk's (I + M)^-1 and of scale * tril(q Gamma K^T)
//   w [tokens, HV, K], u [tokens, HV, V]   WY vectors
//   vn [tokens, HV, V] (v_new; the backward's own buffer, u's in forward-only calls); backward only:
//   dvn [tokens, HV, V]; hs, dhs [max_chunks, HV, K, V] (state entering chunk c,
//   gradient of the state leaving chunk c); dq_hv, dk_hv, dgc [tokens, HV, K]; dbp [tokens, HV];
//   dAqk, dM [tokens, HV, 64] (gradients of the chunk's Aqk and strictly-lower M; they reuse the
//   buffers of Aqk and u, dead by then); dg_last
//   [max_chunks, HV, K] (gradient of the chunk's last cumulative gate); dbp_slice [K / 32, tokens, HV]
//   Forward-only calls skip qp, kp, q_rstd, k_rstd, gc, bp, A and the gradients, but keep vn (in u's place) and hs
//   (the output kernel reads them); the forward pipeline adds:
//   kl [tokens, HV, K]        exp(G_last - G) * k, the state update's key operand
//   gl [max_chunks, HV, K]    G_last, the chunk's total log decay
//   qg [tokens, HV, K]        scale * exp(G) * q, in w's buffer once the state pass is done (when o is wanted;
//                             16-bit inputs: written by chunk_fwd, also for state_bwd; carve_all)
// 16-bit (bf16 / f16) inputs keep w, u / v_new, kl, hs, qg, dhs and dv_new in bf16 instead (the *_bf16 pointers;
// their fp32 namesakes are null), as FLA keeps w, u, kg, h, v_new, dh and dv in the input dtype: the kernels of
// those calls multiply bf16 operands anyway, and the state passes are bound by the traffic of these arrays.
// Everything else (A, Aqk, the gates, the gradients) stays fp32. Their carve and reuse: carve_all (forward.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kda/kda.h"
#include "cuda/kda/roofline.h"

namespace seqmix::cuda::kda {

constexpr int kChunk = 64;          // tokens per chunk (FLA's BT)
constexpr int kThreads = 256;       // threads of every chunk / state block
constexpr int kGateSlices = 64;     // token slices of the dA_log / ddt_bias reduction
constexpr int kSmallStride = kChunk + 1;  // row stride of 64 x 64 tiles in shared memory (no bank conflicts)

// Element types a KDA tensor may have on the device.
enum DtCode : int { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3 };

__device__ __forceinline__ float load_f(const void* p, int dt, int64_t i) {
  switch (dt) {
    case kF32: return static_cast<const float*>(p)[i];
    case kF64: return static_cast<float>(static_cast<const double*>(p)[i]);
    case kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return __half2float(static_cast<const __half*>(p)[i]);
  }
}

__device__ __forceinline__ void store_f(void* p, int dt, int64_t i, float v) {
  switch (dt) {
    case kF32: static_cast<float*>(p)[i] = v; break;
    case kF64: static_cast<double*>(p)[i] = v; break;
    case kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
  }
}

// Everything a kernel needs; passed by value.
struct KdaDev {
  // inputs (dtype codes alongside)
  const void *q, *k, *v, *g, *beta, *A_log, *dt_bias, *h0, *cu_seqlens;
  int in_dt, A_log_dt, dt_bias_dt, h0_dt, cu_is_64;
  int64_t tokens, T;  // total tokens; tokens per sequence without cu_seqlens
  int N, H, HV, G, K, V;
  float scale;
  bool l2norm, use_gate, has_lower_bound, beta_sigmoid, state_v_first;
  float lower_bound, beta_mult;
  // scratch
  int64_t *seq_offsets, *chunk_offsets;
  float *qp, *kp, *q_rstd, *k_rstd, *gc, *bp, *A, *Aqk, *w, *u;
  float *vn, *dvn, *hs, *dhs, *dq_hv, *dk_hv, *dgc, *dbp;
  float* gate_part;  // [HV, kGateSlices, K + 1]: per-slice partial sums of ddt_bias (K) and dA_log (1)
  float *dAqk, *dM, *dg_last, *dbp_slice;  // backward only (see the scratch layout above)
  float *kl, *gl, *qg;
  // bf16 scratch of 16-bit inputs (null for f32 / f64 inputs), same layouts as the fp32 arrays above
  __nv_bfloat16 *w_bf16, *u_bf16, *vn_bf16, *kl_bf16, *hs_bf16, *qg_bf16, *dhs_bf16, *dvn_bf16;
  bool aligned;  // q, k, v, g base pointers 16-byte aligned: 4-element vector loads are safe
};

// Offset of state entry (d, e) of (sequence n, head hv) in [N, HV, K, V] or [N, HV, V, K].
__device__ __forceinline__ int64_t state_index(const KdaDev& p, int n, int hv, int d, int e) {
  const int64_t head = static_cast<int64_t>(n) * p.HV + hv;
  return p.state_v_first ? (head * p.V + e) * p.K + d : (head * p.K + d) * p.V + e;
}

// Maps global chunk c to its first token and length; false when c is past the last chunk
// (grids are sized by an upper bound so no chunk count has to come back to the host).
__device__ __forceinline__ bool locate_chunk(const KdaDev& p, int64_t c, int64_t& start, int& length) {
  const int64_t* co = p.chunk_offsets;
  if (c >= co[p.N]) return false;
  int lo = 0, hi = p.N - 1;  // the last n with co[n] <= c owns c (empty sequences repeat offsets)
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (co[mid] <= c) lo = mid; else hi = mid - 1;
  }
  start = p.seq_offsets[lo] + (c - co[lo]) * kChunk;
  const int64_t left = p.seq_offsets[lo + 1] - start;
  length = static_cast<int>(left < kChunk ? left : kChunk);
  return true;
}

// The fused gate's constants of channel d of value head hv: dt_bias (0 without it) and exp(A_log) (1 without).
struct GateConsts {
  float bias, rate;
};
__device__ __forceinline__ float gate_bias(const KdaDev& p, int hv, int d) {
  return p.use_gate && p.dt_bias ? load_f(p.dt_bias, p.dt_bias_dt, static_cast<int64_t>(hv) * p.K + d) : 0.0f;
}
__device__ __forceinline__ float gate_rate(const KdaDev& p, int hv) {
  return p.use_gate && p.A_log ? expf(load_f(p.A_log, p.A_log_dt, hv)) : 1.0f;
}
__device__ __forceinline__ GateConsts gate_consts(const KdaDev& p, int hv, int d) {
  return {gate_bias(p, hv, d), gate_rate(p, hv)};
}

// Fused gate (FLA kda gate) in fp32; d_raw = dg/dg_raw, d_A = dg/dA_log when asked.
__device__ __forceinline__ float gate_value(const KdaDev& p, float g_raw, GateConsts k, float* d_raw, float* d_A) {
  if (!p.use_gate) {
    if (d_raw) *d_raw = 1.0f;
    if (d_A) *d_A = 0.0f;
    return g_raw;
  }
  const float x = g_raw + k.bias, rate = k.rate;
  if (p.has_lower_bound) {
    const float s = 1.0f / (1.0f + expf(-rate * x));
    const float dr = p.lower_bound * s * (1.0f - s) * rate;
    if (d_raw) *d_raw = dr;
    if (d_A) *d_A = p.A_log ? dr * x : 0.0f;
    return p.lower_bound * s;
  }
  constexpr float kSoftplusThreshold = 20.0f;  // torch softplus default
  const float sp = x > kSoftplusThreshold ? x : log1pf(expf(x));
  if (d_raw) *d_raw = -rate * (x > kSoftplusThreshold ? 1.0f : 1.0f / (1.0f + expf(-x)));
  if (d_A) *d_A = -rate * sp;
  return -rate * sp;
}
__device__ __forceinline__ float gate_value(const KdaDev& p, float g_raw, int hv, int d, float* d_raw, float* d_A) {
  return gate_value(p, g_raw, gate_consts(p, hv, d), d_raw, d_A);
}

// __expf without its fix-up for subnormal results (ex2.approx.ftz of the same x log2(e)): bit-identical to
// __expf down to exp(x) = 2^-126, 0 below (x < -87.3, where __expf gives a subnormal that no sum here can
// tell from 0). The fix-up is 4 of __expf's 6 instructions (compare, two predicated multiplies, select), and
// the chunk kernel evaluates ~10^5 exponentials per block.
__device__ __forceinline__ float exp_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- Batched loads: every thread issues U independent loads before storing any (the kernels are
// otherwise bound by the latency of one global load at a time). load(idx) -> value, store(idx, value).
template <int U, int NT = kThreads, class Load, class Store>
__device__ __forceinline__ void batched(int n, Load load, Store store) {
  for (int base = threadIdx.x; base < n; base += NT * U) {
    decltype(load(0)) v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * NT;
      if (idx < n) v[u] = load(idx);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int idx = base + u * NT;
      if (idx < n) store(idx, v[u]);
    }
  }
}

__device__ __forceinline__ float4 ldg4(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float4 zero4() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
__device__ __forceinline__ void st4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
// Global stores of 2 / 4 floats (8- / 16-byte aligned) as one instruction: a float2 / float4 assembled from
// scalars and stored through a cast pointer may be split into 4-byte stores (chunk_fwd's kl rows and the first
// pair of each w / u / Aqk fragment strip were): more store instructions and transactions.
// stg2: one 64-bit integer store, which the compiler keeps whole and can still predicate and give an immediate
// offset (as inline PTX each became a branch with its own address arithmetic: chunk_fwd's w / u stores, SASS).
// stg4: inline PTX (a 128-bit integer store came out as two 8-byte ones, zeros as four 4-byte ones): only where
// the store sits in a branch or loop of its own anyway. No memory clobber, so loads may move across it: only
// for outputs the kernel does not read back.
__device__ __forceinline__ void stg2(float* p, float2 v) {
  *reinterpret_cast<unsigned long long*>(p) =
      static_cast<unsigned long long>(__float_as_uint(v.y)) << 32 | __float_as_uint(v.x);
}
__device__ __forceinline__ void stg4(float* p, float4 v) {
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "f"(v.x), "f"(v.y),
               "f"(v.z), "f"(v.w));
}
__device__ __forceinline__ void st4_scalar(float* p, float4 v) { p[0] = v.x, p[1] = v.y, p[2] = v.z, p[3] = v.w; }

// Four consecutive elements (i % 4 == 0) as floats: one 8- or 16-byte load when the base is 16-byte aligned
// (`aligned`), four scalar loads otherwise (the same values).
__device__ __forceinline__ float4 load4_f(bool aligned, const void* base, int dt, int64_t i) {
  if (aligned) {
    if (dt == kF32) return __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(base) + i));
    if (dt == kBF16 || dt == kF16) {
      const uint2 r = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(base) + i));
      float2 a, b;
      if (dt == kBF16) {
        a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&r.x));
        b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&r.y));
      } else {
        a = __half22float2(*reinterpret_cast<const __half2*>(&r.x));
        b = __half22float2(*reinterpret_cast<const __half2*>(&r.y));
      }
      return make_float4(a.x, a.y, b.x, b.y);
    }
  }
  return make_float4(load_f(base, dt, i), load_f(base, dt, i + 1), load_f(base, dt, i + 2), load_f(base, dt, i + 3));
}

// ---- Tensor-core products on fp32 shared-memory operands (mma.sync m16n8k8 TF32) ----
// Operands are split x = hi + lo (both TF32) and multiplied as hi*hi + hi*lo + lo*hi ("3xTF32"),
// which keeps fp32 accuracy (error ~2^-21 relative per product) at 3 MMAs per step.
// Strided access lets one helper serve A, A^T, B and B^T: element (r, c) of A at a[r * a_rs + c * a_cs].
// Shared tiles use row strides of (columns + 4) floats so the fragment loads hit 32 distinct banks.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(x - __uint_as_float(hi));
}

__device__ __forceinline__ void mma_tf32(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// c += a * b on one m16n8k8 step from fp32 fragment values (a0 (g, t), a1 (g + 8, t), a2 (g, t + 4),
// a3 (g + 8, t + 4); b0 (t, g), b1 (t + 4, g)). kPrecise: 3xTF32 (hi/lo split as in warp_gemm,
// fp32-accurate, for f32 / f64 inputs); otherwise one TF32 MMA (10-bit mantissa operands, fp32
// accumulation: still finer than the bf16 operands FLA uses).
template <bool kPrecise>
__device__ __forceinline__ void mma_f32(float c[4], const float a[4], const float b[2]) {
  if constexpr (kPrecise) {
    uint32_t ah[4], al[4], bh[2], bl[2];
#pragma unroll
    for (int r = 0; r < 4; ++r) split_tf32(a[r], ah[r], al[r]);
    split_tf32(b[0], bh[0], bl[0]);
    split_tf32(b[1], bh[1], bl[1]);
    mma_tf32(c, al, bh);
    mma_tf32(c, ah, bl);
    mma_tf32(c, ah, bh);
  } else {
    const uint32_t ar[4] = {to_tf32(a[0]), to_tf32(a[1]), to_tf32(a[2]), to_tf32(a[3])};
    const uint32_t br[2] = {to_tf32(b[0]), to_tf32(b[1])};
    mma_tf32(c, ar, br);
  }
}

// c (a 16 x 8 warp tile: c[0] (g, 2t), c[1] (g, 2t + 1), c[2] (g + 8, 2t), c[3] (g + 8, 2t + 1) with
// g = lane / 4, t = lane % 4) += A[16, kdim] * B[kdim, 8]; kdim a multiple of 8; a, b point at the tile.
__device__ __forceinline__ void warp_gemm(float c[4], const float* a, int a_rs, int a_cs, const float* b, int b_rs,
                                          int b_cs, int kdim) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  for (int k0 = 0; k0 < kdim; k0 += 8) {
    uint32_t ah[4], al[4], bh[2], bl[2];
    split_tf32(a[g * a_rs + (k0 + t) * a_cs], ah[0], al[0]);
    split_tf32(a[(g + 8) * a_rs + (k0 + t) * a_cs], ah[1], al[1]);
    split_tf32(a[g * a_rs + (k0 + t + 4) * a_cs], ah[2], al[2]);
    split_tf32(a[(g + 8) * a_rs + (k0 + t + 4) * a_cs], ah[3], al[3]);
    split_tf32(b[(k0 + t) * b_rs + g * b_cs], bh[0], bl[0]);
    split_tf32(b[(k0 + t + 4) * b_rs + g * b_cs], bh[1], bl[1]);
    mma_tf32(c, al, bh);
    mma_tf32(c, ah, bl);
    mma_tf32(c, ah, bh);
  }
}

// cp.async (sm_80+): 16-byte global -> shared copies that bypass the registers and L1. A thread's
// copies form groups (cp_async_commit); cp_async_wait<N> returns once at most its N most recent groups
// are in flight, cp_async_wait_all once none is. Other threads see the data after a __syncthreads.
__device__ __forceinline__ void cp_async16(float* dst, const float* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
// Zero-fills the 16 bytes when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(float* dst, const float* src, bool valid) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
// The same for 8 bf16 values.
__device__ __forceinline__ void cp_async16(__nv_bfloat16* dst, const __nv_bfloat16* src, bool valid) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
}

// Row / column of accumulator entry r (0..3) of a warp tile.
__device__ __forceinline__ int frag_row(int r) { return ((threadIdx.x & 31) >> 2) + (r >= 2 ? 8 : 0); }
__device__ __forceinline__ int frag_col(int r) { return 2 * (threadIdx.x & 3) + (r & 1); }

// Optional per-stage timing of the launches (SEQMIX_KDA_TIMING=1): events on the stream, printed
// to stderr after a synchronisation at the end of the call, each stage with its byte / FLOP model
// (roofline.h): GB/s, TFLOP/s, roofline ms and how far the stage is from it, on a "[kda timing]" line to
// read and a "[kda stage] {json}" line for scripts. The model is evaluated at the end, when the chunk
// count of a varlen call can be read from the device table (run_forward knows only an upper bound).
// For profiling only.
struct StageTimer {
  explicit StageTimer(cudaStream_t stream);
  ~StageTimer();
  void mark(const char* name);  // a boundary without a model (the start)
  void mark(roofline::Stage stage, int value_tile = 0);
  bool enabled = false;
  cudaStream_t stream = nullptr;
  roofline::Shape shape;                   // the call, filled by run_forward and chunk_kda_bwd
  const int64_t* device_chunks = nullptr;  // chunk_offsets[N] on the device (varlen), read into shape.chunks
  int count = 0;
  cudaEvent_t events[16];
  const char* names[16];
  bool modelled[16];
  roofline::Stage stages[16];
  int value_tiles[16];
};

// Host side shared by forward.cu and backward.cu.
struct Workspace {
  void* base = nullptr;
  cudaStream_t stream = nullptr;
  ~Workspace();
};

// Fills `dev` from validated arguments and carves the scratch; runs the table, prepare and
// intra-chunk kernels, then the state recurrence (which writes o when given, and hs / vn for
// the backward when `for_backward`).
void run_forward(const cpu::KdaArgs& args, const TensorView* cu_seqlens, const TensorView* o,
                 const TensorView* final_state, bool for_backward, KdaDev& dev, int64_t& max_chunks,
                 Workspace& workspace, StageTimer& timer, cudaStream_t stream);

int dtype_code(DType dtype, const char* name);

// Multiprocessors of the current device (tile widths are chosen to fill them).
int sm_count();
// chunk_kda_set_value_tiles's value for the forward (backward = false) or backward state pass; 0: none.
int value_tile_override(bool backward);

// Opts `kernel` into `bytes` of dynamic shared memory; NOT_IMPLEMENTED when the device has less.
void set_smem_limit(const void* kernel, size_t bytes);

}  // namespace seqmix::cuda::kda
