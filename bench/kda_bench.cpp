// KDA CUDA timing on the benchmark shapes (bf16, K = V = 128, chunk 64, fused qk L2 norm and
// fused softplus gate with A_log / dt_bias, beta given post-sigmoid; the same configuration as
// bench/kda_vs_fla.py runs for FLA): B4 T4096 H16, B1 T32768 H16, B4 T4096 H64 and a varlen pack of
// 64 skewed sequences totalling 32768 tokens (H16). Prints fwd and fwd+bwd ms, peak device memory
// (tensors of the call + the stream-ordered scratch's high-water mark) and the roofline estimate,
// and writes JSON.
//
// Roofline (per call): bytes = the bf16 inputs/outputs read and written once plus the fp32 scratch
// the kernels write and read back; FLOPs = the chunked algorithm's matrix products (2 per MAC).
// Estimate = max(bytes / 3.0 TB/s, FLOPs / 787 TFLOP/s) (H100 SXM dense bf16).
//
// Build on a GPU machine after building the library (build-cuda):
//   g++ -O2 -std=c++20 bench/kda_bench.cpp -Iinclude -Isrc -I"$(dirname "$(which nvcc)")/../include"
//   build-cuda/libseqmix.a \
//       -L"$(dirname "$(which nvcc)")/../lib64" -lcudart -lpthread -o build-cuda/kda_bench
//   ./build-cuda/kda_bench [out.json]     (or --once with SEQMIX_KDA_TIMING=1: per-kernel times)
//   ./build-cuda/kda_bench --tiles         fwd and fwd+bwd ms per shape for every value tile of the state passes
//                                          (cuda::chunk_kda_set_value_tiles; "auto" is the built-in choice)
// --once with SEQMIX_KDA_TIMING=1 prints, per shape and pass, the library's per-stage lines on stderr:
// "[kda timing]" (ms, GB/s, TFLOP/s, roofline ms and x off it, from src/cuda/kda/roofline.h) and
// "[kda stage] {json}"; bench/run_kda_device.sh collects the latter, tagged with the shape and pass, into
// kda_stages.jsonl.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_timing.h"
#include "cuda/kda/kda.h"
#include "seqmix/device.h"
#include "seqmix/kda.h"

namespace {

using namespace seqmix;
using seqmix::bench::time_ms;

HostTensor filled(DType dtype, std::vector<int64_t> sizes, uint64_t seed, double lo, double hi) {
  HostTensor t(DType::f32, std::move(sizes));
  uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    t.set(i, lo + (hi - lo) * (static_cast<double>(state >> 11) / 9007199254740992.0));
  }
  return t.to(dtype);
}

size_t bytes_of(const CudaTensor& t) {
  const TensorView v = t.view();
  return static_cast<size_t>(v.numel()) * dtype_size(v.dtype);
}

// Peak of the default memory pool (where chunk_kda's cudaMallocAsync scratch lives) since the reset.
size_t pool_high() {
  cudaMemPool_t pool;
  cudaDeviceGetDefaultMemPool(&pool, 0);
  uint64_t high = 0;
  cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high);
  return static_cast<size_t>(high);
}
void pool_reset() {
  cudaMemPool_t pool;
  cudaDeviceGetDefaultMemPool(&pool, 0);
  uint64_t zero = 0;
  cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero);
}

struct Shape {
  std::string name;
  int64_t B, T, H;
  std::vector<int64_t> lengths;  // varlen pack when not empty
};

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  // Freed scratch stays mapped in the default pool (torch's caching allocator, which FLA's calls use,
  // keeps its blocks likewise); with the default threshold of 0 every synchronisation unmaps it and the
  // next call pays the re-mapping (~0.6 ms at B4 T4096 H16). The peak figures are unaffected.
  {
    cudaMemPool_t pool;
    cudaDeviceGetDefaultMemPool(&pool, 0);
    uint64_t keep = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
  }
  // --once: one fwd and one fwd+bwd per shape, untimed (with SEQMIX_KDA_TIMING=1: per-stage times).
  const bool once = argc > 1 && std::string(argv[1]) == "--once";
  const bool tiles = argc > 1 && std::string(argv[1]) == "--tiles";
  const char* out_path = argc > 1 && !once && !tiles ? argv[1] : nullptr;
  // 64 skewed lengths totalling 32768: a few long, many short (weights (i + 1)^-1.5, rounded, the
  // remainder added to the longest); the same rule as bench/kda_vs_fla.py.
  std::vector<int64_t> skewed(64);
  {
    double wsum = 0.0;
    for (int i = 0; i < 64; ++i) wsum += std::pow(i + 1.0, -1.5);
    int64_t total = 0;
    for (int i = 0; i < 64; ++i) {
      skewed[i] = std::max<int64_t>(1, static_cast<int64_t>(32768.0 * std::pow(i + 1.0, -1.5) / wsum));
      total += skewed[i];
    }
    skewed[0] += 32768 - total;
  }
  const std::vector<Shape> shapes = {{"B4_T4096_H16_D128", 4, 4096, 16, {}},
                                     {"B1_T32768_H16_D128", 1, 32768, 16, {}},
                                     {"B4_T4096_H64_D128", 4, 4096, 64, {}},
                                     {"varlen64_skewed_T32768_H16_D128", 1, 32768, 16, skewed}};
  const int64_t D = 128;
  std::string json = "{\n";
  std::printf("%-34s %9s %9s %11s %11s %9s %9s\n", "shape", "fwd ms", "fwdbwd ms", "fwd MiB", "fwdbwd MiB",
              "roof fwd", "roof f+b");
  for (const Shape& s : shapes) {
    const int64_t B = s.B, T = s.T, H = s.H, HV = H, tokens = B * T;
    const CudaTensor q = CudaTensor::from_host(filled(DType::bf16, {B, T, H, D}, 1, -1, 1));
    const CudaTensor k = CudaTensor::from_host(filled(DType::bf16, {B, T, H, D}, 2, -1, 1));
    const CudaTensor v = CudaTensor::from_host(filled(DType::bf16, {B, T, HV, D}, 3, -1, 1));
    const CudaTensor g = CudaTensor::from_host(filled(DType::bf16, {B, T, HV, D}, 4, -2, 2));
    const CudaTensor beta = CudaTensor::from_host(filled(DType::bf16, {B, T, HV}, 5, 0.05, 1.0));
    const CudaTensor A_log = CudaTensor::from_host(filled(DType::f32, {HV}, 6, -1, 0.5));
    const CudaTensor dt_bias = CudaTensor::from_host(filled(DType::f32, {HV * D}, 7, -0.5, 0.5));
    const CudaTensor dout = CudaTensor::from_host(filled(DType::bf16, {B, T, HV, D}, 8, -1, 1));
    CudaTensor cu;
    if (!s.lengths.empty()) {
      HostTensor h(DType::i32, {static_cast<int64_t>(s.lengths.size()) + 1});
      int64_t run = 0;
      h.set(0, 0.0);
      for (size_t i = 0; i < s.lengths.size(); ++i) h.set(static_cast<int64_t>(i) + 1, static_cast<double>(run += s.lengths[i]));
      cu = CudaTensor::from_host(h);
    }
    CudaTensor o(DType::bf16, {B, T, HV, D}), dq(DType::bf16, {B, T, H, D}), dk(DType::bf16, {B, T, H, D}),
        dv(DType::bf16, {B, T, HV, D}), dg(DType::bf16, {B, T, HV, D}), dbeta(DType::bf16, {B, T, HV}),
        dA(DType::f32, {HV}), dbias(DType::f32, {HV * D});
    KdaParams p;
    p.use_qk_l2norm_in_kernel = true;
    p.use_gate_in_kernel = true;
    const TensorView A_v = A_log.view(), bias_v = dt_bias.view(), cu_v = cu.view(), dA_v = dA.view(),
                     dbias_v = dbias.view();
    const TensorView* cu_p = s.lengths.empty() ? nullptr : &cu_v;
    auto fwd = [&] {
      chunk_kda_fwd(q.view(), k.view(), v.view(), g.view(), beta.view(), &A_v, &bias_v, nullptr, cu_p, p, o.view(),
                    nullptr);
    };
    auto fwd_bwd = [&] {
      fwd();
      chunk_kda_bwd(q.view(), k.view(), v.view(), g.view(), beta.view(), &A_v, &bias_v, nullptr, cu_p, p, dout.view(),
                    nullptr, dq.view(), dk.view(), dv.view(), dg.view(), dbeta.view(), nullptr, &dA_v, &dbias_v);
    };
    const size_t inputs = bytes_of(q) + bytes_of(k) + bytes_of(v) + bytes_of(g) + bytes_of(beta) + bytes_of(A_log) +
                          bytes_of(dt_bias) + (s.lengths.empty() ? 0 : bytes_of(cu));
    const size_t grads = bytes_of(dout) + bytes_of(dq) + bytes_of(dk) + bytes_of(dv) + bytes_of(dg) + bytes_of(dbeta) +
                         bytes_of(dA) + bytes_of(dbias);
    if (once) {
      // One untimed fwd+bwd first: the first launch of each kernel loads its module (CUDA's lazy loading),
      // milliseconds that would otherwise be booked to that kernel's stage (state_bwd's 3.9 ms in a first
      // call against 1.8 ms under ncu).
      const char* timing_env = std::getenv("SEQMIX_KDA_TIMING");
      const std::string timing = timing_env ? timing_env : "";
      setenv("SEQMIX_KDA_TIMING", "0", 1);
      fwd_bwd();
      cuda_synchronize();
      setenv("SEQMIX_KDA_TIMING", timing.c_str(), 1);
      // headers flushed so that they precede the stage lines (stderr) in a combined log
      std::printf("%s: fwd\n", s.name.c_str());
      std::fflush(stdout);
      fwd();
      cuda_synchronize();
      std::printf("%s: fwd+bwd\n", s.name.c_str());
      std::fflush(stdout);
      fwd_bwd();
      cuda_synchronize();
      continue;
    }
    if (tiles) {
      // forward tile alone on fwd; each (forward, backward) pair on fwd+bwd (the backward re-runs the forward)
      const int choices[] = {0, 16, 32, 64};
      for (const int ft : choices) {
        cuda::chunk_kda_set_value_tiles(ft, 0);
        fwd();
        cuda_synchronize();
        std::printf("%-34s fwd tile %-4s            fwd %8.3f ms\n", s.name.c_str(),
                    ft ? std::to_string(ft).c_str() : "auto", time_ms(fwd, 5));
        for (const int bt : choices) {
          cuda::chunk_kda_set_value_tiles(ft, bt);
          fwd_bwd();
          cuda_synchronize();
          std::printf("%-34s fwd tile %-4s bwd tile %-4s fwd+bwd %8.3f ms\n", s.name.c_str(),
                      ft ? std::to_string(ft).c_str() : "auto", bt ? std::to_string(bt).c_str() : "auto",
                      time_ms(fwd_bwd, 3));
        }
      }
      cuda::chunk_kda_set_value_tiles(0, 0);
      continue;
    }
    fwd();
    cuda_synchronize();
    pool_reset();
    const double fwd_ms = time_ms(fwd, 5);
    const size_t fwd_peak = inputs + bytes_of(o) + pool_high();
    pool_reset();
    const double fwd_bwd_ms = time_ms(fwd_bwd, 3);
    const size_t fwd_bwd_peak = inputs + bytes_of(o) + grads + pool_high();

    // Rough whole-call roofline (the per-stage model is src/cuda/kda/roofline.h, SEQMIX_KDA_TIMING=1). bf16
    // traffic: q, k, v, g (+ beta) in, o out (fwd); backward reads them again plus do and writes dq, dk, dv, dg.
    // Scratch per token and head of this implementation on bf16 inputs, written and read ~2x: fp32 gc, qp, kp
    // [K], A, Aqk [64]; bf16 w, u, kl, qg [K]. States and their gradients per chunk in the backward, bf16.
    const double th = static_cast<double>(tokens) * HV, chunks = std::ceil(tokens / 64.0) + s.lengths.size();
    const double io_fwd = th * D * 2.0 * 5, io_bwd = th * D * 2.0 * 10;
    const double scratch_fwd = th * ((3.0 * D + 128.0) * 4.0 + 4.0 * D * 2.0) * 2.0;
    const double state_bwd = chunks * HV * D * D * 2.0 * 2.0 * 2.0;
    const double bytes_fwd = io_fwd + scratch_fwd, bytes_fb = bytes_fwd + io_bwd + scratch_fwd * 2.0 + state_bwd;
    // FLOPs per token and head (2 per MAC), chunk C = 64: intra (K Gamma K^T, Q Gamma K^T: 2 C K; inverse
    // ~C^2 / 3; w, u: 2 C K), inter (w S, q S: 2 K V; Aqk v_new: C V; state update K V) -> fwd ~ 6 C K + 4 K V.
    const double flop_fwd = 2.0 * th * (6.0 * 64 * D + 4.0 * D * D), flop_fb = flop_fwd * 3.5;
    const double roof_fwd = std::max(bytes_fwd / 3.0e12, flop_fwd / 787e12) * 1e3;
    const double roof_fb = std::max(bytes_fb / 3.0e12, flop_fb / 787e12) * 1e3;
    const double mib = 1024.0 * 1024.0;
    std::printf("%-34s %9.3f %9.3f %11.1f %11.1f %9.3f %9.3f\n", s.name.c_str(), fwd_ms, fwd_bwd_ms, fwd_peak / mib,
                fwd_bwd_peak / mib, roof_fwd, roof_fb);
    char line[768];
    std::snprintf(line, sizeof(line),
                  "  \"%s\": {\"B\": %lld, \"T\": %lld, \"H\": %lld, \"D\": %lld, \"num_seqs\": %zu, \"fwd_ms\": %.4f, "
                  "\"fwd_bwd_ms\": %.4f, \"fwd_peak_mib\": %.1f, \"fwd_bwd_peak_mib\": %.1f, \"roofline_fwd_ms\": "
                  "%.4f, \"roofline_fwd_bwd_ms\": %.4f, \"bytes_fwd\": %.4g, \"flops_fwd\": %.4g}",
                  s.name.c_str(), static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(H),
                  static_cast<long long>(D), s.lengths.empty() ? static_cast<size_t>(B) : s.lengths.size(), fwd_ms,
                  fwd_bwd_ms, fwd_peak / mib, fwd_bwd_peak / mib, roof_fwd, roof_fb, bytes_fwd, flop_fwd);
    json += std::string(json.size() > 2 ? ",\n" : "") + line;
  }
  json += "\n}\n";
  if (out_path) {
    FILE* f = std::fopen(out_path, "w");
    if (f) {
      std::fputs(json.c_str(), f);
      std::fclose(f);
    }
  }
  return 0;
}
