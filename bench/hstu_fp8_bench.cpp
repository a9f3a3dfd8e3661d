// HSTU FP8 attention forward (params.quant_mode 0..5) against our bf16 forward on the issue's
// FP8 shapes: jagged B = 32, max_seq_len 4096 / 8192 with ~70% mean fill (lengths uniform in
// [0.4, 1.0] max_len), H = 4 / 8, D = 128, causal with 64 targets. The FP8 time includes the
// quantization of q, k, v (the op quantizes inside; "quant ms" is that part alone, through the
// public quantizer). Prints ms, the speedup over bf16, TFLOP/s of the attended pairs (4 D flops
// per pair) and the backward's ms, and writes JSON.
//
// Build on a GPU machine after building the library (build-cuda):
//   g++ -O2 -std=c++20 bench/hstu_fp8_bench.cpp -Iinclude -Isrc build-cuda/libseqmix.a \
//       -L"$(dirname "$(which nvcc)")/../lib64" -lcudart -lpthread -o build-cuda/hstu_fp8_bench
//   ./build-cuda/hstu_fp8_bench [out.json]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cpu/hstu/attention.h"
#include "seqmix/device.h"
#include "seqmix/hstu.h"
#include "hstu_bench_util.h"

using namespace seqmix;
using seqmix::bench::attended_pairs;
using seqmix::bench::filled;
using seqmix::bench::time_ms;
using seqmix::bench::write_json;

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  const int64_t batch = 32, dim = 128;
  std::string json = "[\n";
  std::printf("%-8s %3s %8s %5s %10s %10s %9s %9s %8s\n", "max_len", "H", "tokens", "mode", "fwd ms", "TFLOP/s",
              "vs bf16", "quant ms", "bwd ms");
  for (int64_t max_len : {4096, 8192}) {
    for (int64_t heads : {4, 8}) {
      std::vector<int64_t> lengths(batch), offsets = {0}, targets;
      for (int64_t b = 0; b < batch; ++b) {
        const double u = static_cast<double>((b * 37) % batch) / static_cast<double>(batch - 1);
        lengths[b] = static_cast<int64_t>(max_len * (0.4 + 0.6 * u));
        offsets.push_back(offsets.back() + lengths[b]);
        targets.push_back(64);
      }
      const int64_t total = offsets.back();
      HostTensor offsets_host(DType::i64, {batch + 1}), targets_host(DType::i64, {batch});
      for (int64_t b = 0; b <= batch; ++b) offsets_host.set(b, static_cast<double>(offsets[b]));
      for (int64_t b = 0; b < batch; ++b) targets_host.set(b, static_cast<double>(targets[b]));
      const CudaTensor q = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 1));
      const CudaTensor k = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 2));
      const CudaTensor v = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 3));
      const CudaTensor dout = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 4));
      const CudaTensor seq_offsets = CudaTensor::from_host(offsets_host),
                       num_targets = CudaTensor::from_host(targets_host);
      CudaTensor out(DType::bf16, {total, heads, dim}), dq(DType::bf16, {total, heads, dim}),
          dk(DType::bf16, {total, heads, dim}), dv(DType::bf16, {total, heads, dim});
      const TensorView targets_view = num_targets.view();
      HstuAttentionParams p;
      p.max_seq_len = max_len;
      p.alpha = 1.0 / std::sqrt(static_cast<double>(dim));
      const double pairs = attended_pairs(p, lengths, targets) * static_cast<double>(heads);
      double bf16_ms = 0.0;
      for (int64_t mode = -1; mode <= 5; ++mode) {
        p.quant_mode = mode;
        auto fwd = [&] {
          hstu_attention_fwd(p, q.view(), k.view(), v.view(), seq_offsets.view(), &targets_view, out.view());
        };
        auto bwd = [&] {
          hstu_attention_bwd(p, q.view(), k.view(), v.view(), seq_offsets.view(), &targets_view, dout.view(), dq.view(),
                             dk.view(), dv.view());
        };
        const double fwd_ms = time_ms(fwd, 10);
        // The quantization alone: q, k, v into their forward copies (the public quantizer).
        double quant_ms = 0.0;
        if (mode >= 0) {
          std::vector<HstuFp8Params> copies(3);
          for (int i = 0; i < 3; ++i) {
            copies[i].quant_mode = mode;
            copies[i].transposed = mode == 1 && i == 2;
          }
          std::vector<CudaTensor> descales;
          for (const HstuFp8Params& c : copies) {
            descales.emplace_back(DType::f32, hstu_fp8_descale_shape(offsets_host.view(), heads, dim, c));
          }
          CudaTensor x8(DType::fp8_e4m3, {total, heads, dim}), block_offsets(DType::i64, {batch + 1});
          const TensorView bo = block_offsets.view();
          const CudaTensor* inputs[3] = {&q, &k, &v};
          quant_ms = time_ms(
              [&] {
                for (int i = 0; i < 3; ++i) {
                  const bool block_mode = mode == 2 || copies[i].transposed;
                  hstu_fp8_quantize(inputs[i]->view(), seq_offsets.view(), copies[i], x8.view(), descales[i].view(),
                                    block_mode ? &bo : nullptr);
                }
              },
              10);
        }
        const double bwd_ms = time_ms(bwd, 3);
        if (mode == -1) bf16_ms = fwd_ms;
        const double tflops = 4.0 * dim * pairs / (fwd_ms * 1e9);
        std::printf("%-8lld %3lld %8lld %5lld %10.3f %10.1f %8.2fx %9.3f %8.3f\n", static_cast<long long>(max_len),
                    static_cast<long long>(heads), static_cast<long long>(total), static_cast<long long>(mode), fwd_ms,
                    tflops, bf16_ms / fwd_ms, quant_ms, bwd_ms);
        std::fflush(stdout);
        char line[512];
        std::snprintf(
            line, sizeof(line),
            "  {\"op\": \"hstu_attention_fp8\", \"B\": %lld, \"max_seq_len\": %lld, \"H\": %lld, \"D\": %lld, "
            "\"tokens\": %lld, \"quant_mode\": %lld, \"fwd_ms\": %.4f, \"fwd_tflops\": %.2f, "
            "\"speedup_vs_bf16\": %.3f, \"quantize_ms\": %.4f, \"bwd_ms\": %.4f}",
            static_cast<long long>(batch), static_cast<long long>(max_len), static_cast<long long>(heads),
            static_cast<long long>(dim), static_cast<long long>(total), static_cast<long long>(mode), fwd_ms, tflops,
            bf16_ms / fwd_ms, quant_ms, bwd_ms);
        json += std::string(json.size() > 2 ? ",\n" : "") + line;
      }
    }
  }
  json += "\n]\n";
  write_json(argc, argv, json);
  return 0;
}
