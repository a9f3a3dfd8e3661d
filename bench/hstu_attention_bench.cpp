// HSTU attention CUDA timing on the standard shapes of DESIGN.md: jagged B = 32, max_seq_len
// 4096 (uniform and skewed lengths), H = 4, D = 128, bf16; causal with targets and SLA
// (k1 = 256, k2 = 32). Prints ms for fwd and fwd+bwd and TFLOP/s of the attended pairs
// (4 D flops per pair forward, 10 D backward: FlashAttention's count) and writes JSON.
//
// Build on a GPU machine after building the library (build-cuda):
//   g++ -O2 -std=c++20 bench/hstu_attention_bench.cpp -Iinclude -Isrc build-cuda/libseqmix.a \
//       -L"$(dirname "$(which nvcc)")/../lib64" -lcudart -lpthread -o build-cuda/hstu_attention_bench
//   ./build-cuda/hstu_attention_bench [out.json]
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
  const int64_t batch = 32, max_len = 4096, heads = 4, dim = 128;
  std::vector<int64_t> uniform(batch, max_len), skewed(batch);
  for (int64_t b = 0; b < batch; ++b) {
    const double u = static_cast<double>((b * 37) % batch + 1) / static_cast<double>(batch);
    skewed[b] = std::max<int64_t>(1, static_cast<int64_t>(max_len * u * u));
  }
  struct Shape {
    std::string name;
    const std::vector<int64_t>* lengths;
    bool sla;
  };
  const Shape shapes[] = {{"uniform_causal_targets", &uniform, false},
                          {"skewed_causal_targets", &skewed, false},
                          {"uniform_sla", &uniform, true},
                          {"skewed_sla", &skewed, true}};
  std::string json = "[\n";
  std::printf("%-26s %10s %10s %12s %14s %10s\n", "shape", "tokens", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms",
              "TFLOP/s");
  for (const Shape& s : shapes) {
    const std::vector<int64_t>& lengths = *s.lengths;
    std::vector<int64_t> offsets = {0}, targets;
    for (int64_t n : lengths) {
      offsets.push_back(offsets.back() + n);
      targets.push_back(std::min<int64_t>(n, 64));
    }
    const int64_t total = offsets.back();
    HstuAttentionParams p;
    p.max_seq_len = max_len;
    p.alpha = 1.0 / std::sqrt(static_cast<double>(dim));
    if (s.sla) p.sla_k1 = 256, p.sla_k2 = 32;
    HostTensor offsets_host(DType::i64, {batch + 1}), targets_host(DType::i64, {batch});
    for (int64_t b = 0; b <= batch; ++b) offsets_host.set(b, static_cast<double>(offsets[b]));
    for (int64_t b = 0; b < batch; ++b) targets_host.set(b, static_cast<double>(targets[b]));
    const CudaTensor q = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 1));
    const CudaTensor k = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 2));
    const CudaTensor v = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 3));
    const CudaTensor dout = CudaTensor::from_host(filled(DType::bf16, {total, heads, dim}, 4));
    const CudaTensor seq_offsets = CudaTensor::from_host(offsets_host), num_targets = CudaTensor::from_host(targets_host);
    CudaTensor out(DType::bf16, {total, heads, dim}), dq(DType::bf16, {total, heads, dim}),
        dk(DType::bf16, {total, heads, dim}), dv(DType::bf16, {total, heads, dim});
    const TensorView targets_view = num_targets.view();
    auto fwd = [&] { hstu_attention_fwd(p, q.view(), k.view(), v.view(), seq_offsets.view(), &targets_view, out.view()); };
    auto fwd_bwd = [&] {
      fwd();
      hstu_attention_bwd(p, q.view(), k.view(), v.view(), seq_offsets.view(), &targets_view, dout.view(), dq.view(),
                         dk.view(), dv.view());
    };
    const double fwd_ms = time_ms(fwd, 20), fwd_bwd_ms = time_ms(fwd_bwd, 10);
    const double pairs = attended_pairs(p, lengths, targets) * static_cast<double>(heads);
    const double fwd_tflops = 4.0 * dim * pairs / (fwd_ms * 1e9);
    const double total_tflops = 14.0 * dim * pairs / (fwd_bwd_ms * 1e9);
    std::printf("%-26s %10lld %10.3f %12.1f %14.3f %10.1f\n", s.name.c_str(), static_cast<long long>(total), fwd_ms,
                fwd_tflops, fwd_bwd_ms, total_tflops);
    char line[512];
    std::snprintf(line, sizeof(line),
                  "  {\"op\": \"hstu_attention\", \"shape\": \"%s\", \"B\": %lld, \"max_seq_len\": %lld, \"H\": %lld, "
                  "\"D\": %lld, \"tokens\": %lld, \"fwd_ms\": %.4f, \"fwd_tflops\": %.2f, \"fwd_bwd_ms\": %.4f, "
                  "\"fwd_bwd_tflops\": %.2f}",
                  s.name.c_str(), static_cast<long long>(batch), static_cast<long long>(max_len),
                  static_cast<long long>(heads), static_cast<long long>(dim), static_cast<long long>(total), fwd_ms,
                  fwd_tflops, fwd_bwd_ms, total_tflops);
    json += std::string(json.size() > 2 ? ",\n" : "") + line;
  }
  json += "\n]\n";
  write_json(argc, argv, json);
  return 0;
}
