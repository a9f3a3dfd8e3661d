// bf16 tensor-core products for the KDA kernels on 16-bit inputs: ldmatrix fragment loads from bf16 shared
// tiles and mma.sync m16n8k16 (bf16 in, fp32 accumulate). One ldmatrix.x4 fetches a whole 16 x 16 A operand or
// the B operands of two 16 x 8 blocks, where the TF32 path (common.cuh, mma_f32) issues 6 scalar shared loads
// and 6 conversions per 16 x 8 x 8 step: the shared-memory traffic of the fragments, not the tensor cores, bounds
// the state passes.
//
// Tiles are row-major with a row stride S (elements) whose byte size is an odd multiple of 16 modulo 128
// (e.g. S = cols + 8 for cols a multiple of 64), so the 8 rows of one 8 x 8 ldmatrix matrix fall on distinct banks;
// rows start 16-byte aligned. The accumulator layout is mma_f32's (frag_row, frag_col in common.cuh).
//
// Which loader: the product C [M, N] += A [M, Kd] B [Kd, N] reads
//   A from a tile stored [m][k] (a_frag) or stored [k][m], i.e. A = X^T (a_frag_t);
//   B from a tile stored [k][n] (b_frag_kn) or stored [n][k], i.e. B = Y^T (b_frag_nk).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace seqmix::cuda::kda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

// c += a b over one 16 x 8 x 16 block.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A operand rows [m0, m0 + 16) x k columns [k0, k0 + 16) of a tile stored [m][k].
__device__ __forceinline__ void a_frag(uint32_t (&a)[4], const __nv_bfloat16* tile, int S, int m0, int k0) {
  const int lane = threadIdx.x % 32;
  ldsm_x4(a, tile + (m0 + lane % 16) * S + k0 + (lane / 16) * 8);
}

// The same block of A = X^T for X stored [k][m] (ldmatrix .trans: matrix i of the x4 is X rows
// k0 + (i / 2) 8.., columns m0 + (i % 2) 8..).
__device__ __forceinline__ void a_frag_t(uint32_t (&a)[4], const __nv_bfloat16* tile, int S, int m0, int k0) {
  const int lane = threadIdx.x % 32;
  ldsm_x4_trans(a, tile + (k0 + (lane / 16) * 8 + lane % 8) * S + m0 + ((lane / 8) % 2) * 8);
}

// B operands of the two 16 x 8 blocks at k rows [k0, k0 + 16), n columns [n0, n0 + 8) -> b[0], b[1] and
// [n0 + 8, n0 + 16) -> b[2], b[3], from a tile stored [k][n].
__device__ __forceinline__ void b_frag_kn(uint32_t (&b)[4], const __nv_bfloat16* tile, int S, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  ldsm_x4_trans(b, tile + (k0 + ((lane / 8) % 2) * 8 + lane % 8) * S + n0 + (lane / 16) * 8);
}

// The same B operands from a tile stored [n][k] (B = Y^T).
__device__ __forceinline__ void b_frag_nk(uint32_t (&b)[4], const __nv_bfloat16* tile, int S, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  ldsm_x4(b, tile + (n0 + (lane / 16) * 8 + lane % 8) * S + k0 + ((lane / 8) % 2) * 8);
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Four fp32 values as bf16 at p (8-byte aligned).
__device__ __forceinline__ void st_bf16x4(__nv_bfloat16* p, float4 v) {
  *reinterpret_cast<uint2*>(p) = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
}

// Four bf16 values packed in u (low half first) as fp32 (exact).
__device__ __forceinline__ float4 unpack_bf16x4(uint2 u) {
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}

// Four bf16 values at p (8-byte aligned) as fp32 (exact).
__device__ __forceinline__ float4 ld_bf16x4(const __nv_bfloat16* p) {
  return unpack_bf16x4(*reinterpret_cast<const uint2*>(p));
}

// Two adjacent fp32 values as bf16 at p (4-byte aligned): an accumulator pair (frag_col r, r + 1).
__device__ __forceinline__ void st_bf16x2(__nv_bfloat16* p, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(lo, hi);
}

}  // namespace seqmix::cuda::kda
