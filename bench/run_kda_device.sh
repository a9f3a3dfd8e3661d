#!/usr/bin/env bash
# Device run for the KDA CUDA work (from the repository root, or a staged copy of it): narrow build,
# CUDA-vs-CPU tests, check rows, per-stage times with their rooflines (kda_stages.jsonl), a memcheck subset,
# our bench, then FLA's chunk_kda in the same run.
#   OUT=<dir> FLA=<path to fla-repo> bash bench/run_kda_device.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RES=$OUT; OUT=$RES/logs; mkdir -p "$OUT"  # logs are tarred into $RES/logs.tgz at the end (8 files come back)
BUDGET=${BUDGET:-440}  # seconds for the whole script
FLA=${FLA:-peers/fla-repo}
nvidia-smi -L > "$OUT/gpu.txt" 2>&1
t0=$(date +%s)
export TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
# FLA_FIRST=1: FLA's bench (its Triton autotune is most of its time) runs while ours builds on the CPU, and
# our GPU work starts only once it has finished (FLA_BUDGET seconds at most), so no timing overlaps another.
# With TRITON_CACHE_AUTOTUNING=1 the autotune picks land in .triton_cache; $RES/triton_autotune.tgz brings
# them back (unpack into .triton_cache before a later call to skip the autotune there).
fla_pid=
if [ "${FLA_FIRST:-0}" = 1 ]; then
  PYTHONPATH=$FLA timeout ${FLA_BUDGET:-300} python3 bench/kda_vs_fla.py --out "$RES/fla.json" --order "${FLA_ORDER:-}" \
    > "$OUT/fla.txt" 2>&1 &
  fla_pid=$!
fi
gtest_src=/usr/src/googletest
[ -d .deps/googletest ] && gtest_src=$PWD/.deps/googletest
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DSEQMIX_GTEST_SOURCE_DIR="$gtest_src" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
cmake --build build-cuda -j 16 --target kda_cuda_test seqmix_cli >> "$OUT/build.log" 2>&1 ||
  { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
g++ -O2 -std=c++20 bench/kda_bench.cpp -Iinclude -Isrc -I"$(dirname "$(which nvcc)")/../include" build-cuda/libseqmix.a -L"$(dirname "$(which nvcc)")/../lib64" \
  -lcudart -lpthread -o build-cuda/kda_bench >> "$OUT/build.log" 2>&1 || tail -20 "$OUT/build.log"
echo "build $(( $(date +%s) - t0 )) s"
# BUILD_ONLY=1: the build alone (scripts/kda_device_candidate.sh builds its trees side by side this way)
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
if [ -n "$fla_pid" ]; then
  wait $fla_pid; echo "fla rc=$? at $(( $(date +%s) - t0 )) s"; tail -6 "$OUT/fla.txt"
fi
SEQMIX_TEST_CUDA=1 timeout ${TEST_TIMEOUT:-150} ./build-cuda/kda_cuda_test > "$OUT/test.log" 2>&1; test_rc=$?
echo "kda_cuda_test rc=$test_rc"
grep -E "^\[kda_cuda\]" "$OUT/test.log" > "$OUT/errors.txt"
grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) *\]|tests ran" "$OUT/test.log" | head -30
grep -E "Failure|Expected|Which is|Value of|Actual" -A2 "$OUT/test.log" | head -40
awk '{print}' "$OUT/errors.txt" | sort -k2 | awk '{ if ($(NF-2)+0 > 1e-3 || $NF+0 > 5e-3) print "BIG " $0 }' | head -40
if [ "$test_rc" != 0 ] && [ "${SANITIZE_ON_FAIL:-1}" = 1 ]; then
  # API errors with host backtraces for the first failing test
  first=$(grep -m1 -E "^\[  FAILED  \] KdaCuda\.[A-Za-z0-9]+ \(" "$OUT/test.log" | awk '{print $4}')
  timeout 45 compute-sanitizer --show-backtrace host ./build-cuda/kda_cuda_test --gtest_filter="$first" \
    > "$OUT/sanitizer.log" 2>&1
  grep -E "Program hit|ERROR SUMMARY|Invalid|#[0-9] " "$OUT/sanitizer.log" | head -30
fi
echo "test $(( $(date +%s) - t0 )) s"
# STOP_ON_TEST_FAIL=1: a failing build's numbers are not worth the device time
[ "$test_rc" != 0 ] && [ "${STOP_ON_TEST_FAIL:-0}" = 1 ] && { tar czf "$RES/logs.tgz" -C "$RES" logs && rm -rf "$RES/logs"; exit 1; }
timeout 30 ./build-cuda/seqmix check --device cuda --family kda > "$OUT/check_cuda.log" 2>&1; echo "check rc=$?"; cat "$OUT/check_cuda.log"
SEQMIX_KDA_TIMING=1 timeout 30 ./build-cuda/kda_bench --once > "$OUT/timing.txt" 2>&1; grep -E "timing|shape|B4|B1|varlen" "$OUT/timing.txt" | head -60
# the per-stage roofline lines (src/cuda/kda/roofline.h) as JSON, one per stage, tagged with the shape and
# the bench pass ("fwd"; "fwd+bwd": the forward call's stages, then the backward call's, "backward": true,
# its forward re-run included) -> $RES/kda_stages.jsonl. One timed call each, after an untimed warm-up call (module loading excluded).
awk '/^[A-Za-z0-9_]+: fwd(\+bwd)?$/ { shape = $1; sub(/:$/, "", shape); pass = $2 }
     /^\[kda stage\] \{/ { sub(/^\[kda stage\] \{/, ""); printf "{\"shape\": \"%s\", \"pass\": \"%s\", %s\n", shape, pass, $0 }' \
  "$OUT/timing.txt" > "$RES/kda_stages.jsonl"; echo "kda_stages.jsonl: $(wc -l < "$RES/kda_stages.jsonl") stages"
timeout ${BENCH_TIMEOUT:-90} ./build-cuda/kda_bench "$RES/ours.json" 2>&1 | tee "$OUT/bench.txt"
echo "ours bench $(( $(date +%s) - t0 )) s"
if [ "${TILES:-0}" = 1 ]; then  # every value tile of the state passes (kda_bench --tiles)
  timeout ${TILES_TIMEOUT:-120} ./build-cuda/kda_bench --tiles > "$RES/tiles.txt" 2>&1; echo "tiles rc=$?"
  cat "$RES/tiles.txt"
fi
if [ "${KERNEL_TIMES:-0}" = 1 ]; then  # every kernel launch of kda_bench --once, its duration alone (ncu, one pass)
  timeout ${KERNEL_TIMES_TIMEOUT:-90} ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    ./build-cuda/kda_bench --once > "$RES/kernel_times.csv" 2> "$OUT/ncu_times.log"
  echo "kernel times rc=$? ($(grep -c gpu__time_duration "$RES/kernel_times.csv") launches)"
fi
if [ "${SANITIZE:-1}" = 1 ]; then
  timeout ${SAN_TIMEOUT:-60} compute-sanitizer --tool memcheck ./build-cuda/kda_cuda_test \
    --gtest_filter='KdaCuda.BadInputs*:KdaCuda.BackwardIsDeterministic' > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | head
fi
if [ -z "$fla_pid" ] && [ "${FLA_RUN:-1}" = 1 ]; then  # FLA_RUN=0: no FLA step (its figures come from elsewhere)
  cmd="OUT=\$OUT bash bench/run_kda_device.sh (kda_bench + PYTHONPATH=peers/fla-repo python3 bench/kda_vs_fla.py)"
  left=$(( BUDGET - $(date +%s) + t0 )); echo "fla gets ${left} s"
  PYTHONPATH=$FLA timeout $left python3 bench/kda_vs_fla.py --out "$RES/fla.json" --ours "$RES/ours.json" \
    --merge "$RES/h100_kda.json" --command "$cmd" --order "${FLA_ORDER:-}" > "$OUT/fla.txt" 2>&1; echo "fla rc=$?"
  tail -12 "$OUT/fla.txt"
  echo "fla $(( $(date +%s) - t0 )) s"
fi
[ -d .triton_cache ] && (find .triton_cache -name '*.autotune.json' | tar czf "$RES/triton_autotune.tgz" -T -)
echo "total $(( $(date +%s) - t0 )) s"
tar czf "$RES/logs.tgz" -C "$RES" logs && rm -rf "$RES/logs"
