#!/usr/bin/env bash
# On a GPU machine: builds with the CUDA backend and runs the whole suite with the CUDA
# comparisons switched on (SEQMIX_TEST_CUDA=1 makes a missing GPU a failure, not a skip),
# then `seqmix check` on both devices. Logs go to $LOG_DIR (default build-cuda/logs).
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir=${LOG_DIR:-build-cuda/logs}
mkdir -p "$log_dir"
gtest_src=/usr/src/googletest
[ -d .deps/googletest ] && gtest_src=$PWD/.deps/googletest
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DSEQMIX_GTEST_SOURCE_DIR="$gtest_src" > "$log_dir/configure.log" 2>&1 || { tail -30 "$log_dir/configure.log"; exit 1; }
cmake --build build-cuda -j "$(nproc)" > "$log_dir/build.log" 2>&1 || { grep -E "error" "$log_dir/build.log" | head -40; exit 1; }
SEQMIX_TEST_CUDA=1 ctest --test-dir build-cuda --output-on-failure -j 8 > "$log_dir/ctest.log" 2>&1
ctest_status=$?
tail -25 "$log_dir/ctest.log"
./build-cuda/seqmix check > "$log_dir/check_cpu.log" 2>&1; cpu_status=$?
./build-cuda/seqmix check --device cuda > "$log_dir/check_cuda.log" 2>&1; cuda_status=$?
tail -3 "$log_dir/check_cpu.log"
cat "$log_dir/check_cuda.log"
exit $(( ctest_status || cpu_status || cuda_status ))
