#!/usr/bin/env bash
# HSTU FP8 on a GPU machine in one go: narrow build, the FP8 CUDA-vs-CPU tests, a
# bench/hstu_fp8_bench.cpp (FP8 forward vs our bf16 forward), then a compute-sanitizer memcheck
# subset. Logs go to $OUT. Knobs: TESTS=0, BENCH=0, SANITIZE=0, TEST_S, BENCH_S, SANITIZE_S (timeouts).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hstu_fp8_out}; mkdir -p "$OUT"
t0=$(date +%s)
{ nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader; nvcc --version | tail -2; } > "$OUT/summary.txt" 2>&1
log() { echo "$*" | tee -a "$OUT/summary.txt"; }
source scripts/sanitize_shared.sh

gtest_src=/usr/src/googletest
[ -d .deps/googletest ] && gtest_src=$PWD/.deps/googletest
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DSEQMIX_TORCH=OFF -DSEQMIX_GTEST_SOURCE_DIR="$gtest_src" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
cmake --build build-cuda -j 16 --target hstu_fp8_cuda_test hstu_fp8_attention_test hstu_fp8_test >> "$OUT/build.log" 2>&1 ||
  { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
if [ "${BENCH:-1}" = 1 ]; then
  g++ -O2 -std=c++20 bench/hstu_fp8_bench.cpp -Iinclude -Isrc build-cuda/libseqmix.a \
    -L"$(dirname "$(which nvcc)")/../lib64" -lcudart -lpthread -o build-cuda/hstu_fp8_bench >> "$OUT/build.log" 2>&1 ||
    { tail -20 "$OUT/build.log"; exit 1; }
fi
log "build $(( $(date +%s) - t0 )) s"

if [ "${TESTS:-1}" = 1 ]; then
  SEQMIX_TEST_CUDA=1 timeout ${TEST_S:-150} ./build-cuda/hstu_fp8_cuda_test > "$OUT/hstu_fp8_cuda_test.log" 2>&1
  log "hstu_fp8_cuda_test rc=$? ($(( $(date +%s) - t0 )) s)"
  grep -E "^\[==========\]|^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \]" "$OUT/hstu_fp8_cuda_test.log" | tee -a "$OUT/summary.txt"
  grep -E "Failure|Expected|Which is|which is|first at|\[  FAILED" "$OUT/hstu_fp8_cuda_test.log" | head -40 | tee -a "$OUT/summary.txt"
  grep -E "^\[hstu_fp8_cuda\]" "$OUT/hstu_fp8_cuda_test.log" >> "$OUT/summary.txt"
  for t in hstu_fp8_attention_test hstu_fp8_test; do
    timeout 60 ./build-cuda/$t > "$OUT/$t.log" 2>&1
    log "$t rc=$? $(tail -1 "$OUT/$t.log")"
  done
  cat "$OUT/hstu_fp8_test.log" >> "$OUT/hstu_fp8_attention_test.log"; rm "$OUT/hstu_fp8_test.log"
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout ${BENCH_S:-120} ./build-cuda/hstu_fp8_bench "$OUT/hstu_fp8_bench.json" > "$OUT/bench.txt" 2>&1
  log "bench rc=$? ($(( $(date +%s) - t0 )) s)"
  cat "$OUT/bench.txt" | tee -a "$OUT/summary.txt"
fi
if [ "${SANITIZE:-1}" = 1 ]; then
  timeout ${SANITIZE_S:-100} compute-sanitizer --tool memcheck --leak-check no ./build-cuda/hstu_fp8_cuda_test \
    --gtest_filter='Modes/*block64_bfloat16*:Modes/*transposed_float16*:Masks/*mode1_targets_contextual*:Masks/*mode1_sla*:Masks/*mode2_sla*:Masks/*mode4_window*:HstuFp8CudaBadInputs.*' \
    > "$OUT/memcheck.log" 2>&1
  log "memcheck rc=$? ($(( $(date +%s) - t0 )) s)"
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | head -5 | tee -a "$OUT/summary.txt"
  # The transposed V8 tile, the shared descales, the mode-1 split dK / dV hand-over.
  race_and_sync_check 60 ./build-cuda/hstu_fp8_cuda_test 'Masks/*mode1_targets_contextual*:Masks/*mode1_sla*:Masks/*mode2_sla*'
fi
log "total $(( $(date +%s) - t0 )) s"
