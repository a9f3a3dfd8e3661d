#!/usr/bin/env bash
# Nsight Compute on the KDA kernels of one kda_bench run (B4 T4096 H16 D128 bf16, the first shape), on a GPU
# machine: per kernel the throughput, occupancy and scheduler sections plus the warp-stall breakdown and the
# source lines that stall most (-lineinfo builds). Text reports under $OUT (one file per kernel, 8 come back
# from the device). Knobs: KERNELS (default "state_bwd wy_bwd chunk_fwd pair_bwd"), BUILD=0 to reuse build-cuda.
#   OUT=<dir> bash scripts/kda_profile.sh
# bench/results/ncu holds the reports of 2026-11-23 (main 16a2843).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kda_profile}
mkdir -p "$OUT"
if [ "${BUILD:-1}" = 1 ]; then
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DSEQMIX_TORCH=OFF > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
  cmake --build build-cuda -j "$(nproc)" --target seqmix >> "$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -20; exit 1; }
  cuda_dir=$(dirname "$(which nvcc)")/..
  g++ -O2 -std=c++20 bench/kda_bench.cpp -Iinclude -Isrc -I"$cuda_dir/include" build-cuda/libseqmix.a -L"$cuda_dir/lib64" \
    -lcudart -lpthread -o build-cuda/kda_bench >> "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
fi
# --launch-skip 1: not the kernel's first launch in the process (module loading; kda_bench --once warms up
# with a fwd+bwd call first). chunk_fwd's second launch is that warm-up's backward re-run variant.
for k in ${KERNELS:-state_bwd wy_bwd chunk_fwd pair_bwd}; do
  timeout 120 ncu --clock-control none -k "regex:${k}_kernel" --launch-skip 1 -c 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy \
    --section LaunchStats --section SchedulerStats --section WarpStateStats --section InstructionStats \
    --section SourceCounters --print-details all ./build-cuda/kda_bench --once 2>&1 |
    grep -vE "^\[kda|^shape|^B[0-9]|^varlen" > "$OUT/ncu_$k.txt"
  echo "$k rc=${PIPESTATUS[0]} $(grep -E "^\s+Duration" "$OUT/ncu_$k.txt" | head -1)"
done
