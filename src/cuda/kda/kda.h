// CUDA backend of KDA's chunked form (see include/seqmix/kda.h for the math). Arguments are
// validated by src/api/kda.cpp; the dispatch there only calls these for supported combinations
// (q/k/v/g/beta bf16, f16 or f32; K == V in {64, 128}; chunk_size 64; contiguous tensors).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cpu/kda/kda.h"

namespace seqmix::cuda {

// Bytes of scratch one call with inputs of input_dtype allocates (stream-ordered, freed on the same stream).
size_t chunk_kda_workspace_bytes(int64_t tokens, int64_t num_seqs, int64_t max_chunks, int64_t H, int64_t HV,
                                 int64_t K, int64_t V, bool backward, DType input_dtype);

// Upper bound of the number of 64-token chunks over all sequences: B * ceil(T / 64) without
// cu_seqlens, (T + 63 N) / 64 with it (computed from shapes only: no device-to-host copy).
int64_t chunk_kda_max_chunks(const cpu::KdaArgs& args, bool varlen);

// Copies a contiguous int32/int64 cu_seqlens from the device (stream-ordered on `stream`, then waits
// for it) into a host tensor of the same dtype, so its contents can be validated like the CPU's.
HostTensor cu_seqlens_to_host(const TensorView& cu_seqlens, cudaStream_t stream);

// intermediate_states (optional, validated shape [B or 1, NT, HV, K, V] / [.., V, K], f32 or f64, contiguous):
// copied from the state pass's fp32 scratch hs, which holds the state entering each chunk in FLA's chunk order.
void chunk_kda_fwd(const cpu::KdaArgs& args, const TensorView* cu_seqlens, const TensorView& o,
                   const TensorView* final_state, const TensorView* intermediate_states, cudaStream_t stream);

// Tuning hook (bench/kda_bench --tiles, not the public API): value columns per block of the forward and the
// backward state passes, 16, 32 or 64, or 0 for the built-in choice (forward_value_tile, state_bwd_value_tile).
// Process-wide; every tile gives the same results, only the speed changes.
void chunk_kda_set_value_tiles(int forward, int backward);

void chunk_kda_bwd(const cpu::KdaArgs& args, const TensorView* cu_seqlens, const TensorView& do_,
                   const TensorView* dht, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                   const TensorView& dg, const TensorView& dbeta, const TensorView* dh0, const TensorView* dA_log,
                   const TensorView* ddt_bias, cudaStream_t stream);

}  // namespace seqmix::cuda
