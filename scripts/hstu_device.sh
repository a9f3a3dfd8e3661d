#!/usr/bin/env bash
# HSTU CUDA on a GPU machine in one go: narrow build, CUDA-vs-CPU tests, a compute-sanitizer
# memcheck subset, then bench/hstu_vs_peers.py (ours vs the Triton peers) in the time left.
# Logs go to $OUT. Knobs: PEERS (peer checkouts, default ../peers or ../../peers), TOTAL_S (time
# budget of the whole script, default 450), SANITIZE=0, BENCH=0, TESTS=0, BENCH_ARGS,
# PEER_MAX_LENS (max_len list for the peers only), PEER_MAX_CONFIGS, SEQMIX_BUDGET_S, QUANT_MODES (FP8
# forward rows of ours and fbgemm's at max_len 8192, default "0 1 2 3 4 5"; empty = none).
# fbgemm's CUTLASS HSTU runs when its extension was built into $PEERS/fbgemm_hstu (off the device:
# the kernels do not need a GPU to compile; see bench/hstu_vs_peers.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hstu_out}; mkdir -p "$OUT"
t0=$(date +%s)
total_s=${TOTAL_S:-450}
peers=${PEERS:-}
for p in ../peers ../../peers; do [ -z "$peers" ] && [ -d "$p/gr" ] && peers=$p; done
{ nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader; nvcc --version | tail -2; } > "$OUT/summary.txt" 2>&1
log() { echo "$*" | tee -a "$OUT/summary.txt"; }
source scripts/sanitize_shared.sh

gtest_src=/usr/src/googletest
[ -d .deps/googletest ] && gtest_src=$PWD/.deps/googletest
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DSEQMIX_GTEST_SOURCE_DIR="$gtest_src" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
cmake --build build-cuda -j 16 --target hstu_cuda_test hstu_attention_test hstu_truncation_cuda_test >> "$OUT/build.log" 2>&1 ||
  { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
g++ -O2 -std=c++20 -shared -fPIC bench/hstu_capi.cpp -Iinclude build-cuda/libseqmix.a \
  -L"$(dirname "$(which nvcc)")/../lib64" -lcudart -o build-cuda/libseqmix_hstu_capi.so >> "$OUT/build.log" 2>&1 ||
  { tail -20 "$OUT/build.log"; exit 1; }
log "build $(( $(date +%s) - t0 )) s"

if [ "${TESTS:-1}" = 1 ]; then
  SEQMIX_TEST_CUDA=1 timeout 150 ./build-cuda/hstu_cuda_test > "$OUT/hstu_cuda_test.log" 2>&1
  log "hstu_cuda_test rc=$? ($(( $(date +%s) - t0 )) s)"
  grep -E "^\[==========\]|^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \]" "$OUT/hstu_cuda_test.log" | tee -a "$OUT/summary.txt"
  grep -E "Failure|Expected|Which is|which is" "$OUT/hstu_cuda_test.log" | head -30 | tee -a "$OUT/summary.txt"
  # The worst scaled error per tensor over all cases.
  grep -E "^\[hstu_cuda\]" "$OUT/hstu_cuda_test.log" | awk '{for (i = 1; i <= NF; ++i) if ($i ~ /^(row_)?(out|dq|dk|dv)$/) {
      v = $(i + 1) + 0; if (v > m[$i]) { m[$i] = v; c[$i] = $2 " " $3 } } }
    END { for (t in m) printf "max %s err/max|ref| %.3e (%s)\n", t, m[t], c[t] }' | tee -a "$OUT/summary.txt"
  timeout 60 ./build-cuda/hstu_attention_test > "$OUT/hstu_attention_test.log" 2>&1
  log "hstu_attention_test rc=$? $(tail -1 "$OUT/hstu_attention_test.log")"
  SEQMIX_TEST_CUDA=1 timeout 60 ./build-cuda/hstu_truncation_cuda_test > "$OUT/hstu_truncation_cuda_test.log" 2>&1
  log "hstu_truncation_cuda_test rc=$? $(grep -E "PASSED|FAILED" "$OUT/hstu_truncation_cuda_test.log" | head -3 | tr '\n' ' ')"
  cat "$OUT/hstu_truncation_cuda_test.log" >> "$OUT/hstu_attention_test.log"; rm "$OUT/hstu_truncation_cuda_test.log"
fi
if [ "${SANITIZE:-1}" = 1 ]; then
  timeout 90 compute-sanitizer --tool memcheck --leak-check no ./build-cuda/hstu_cuda_test \
    --gtest_filter='Masks/*causal_targets_bf16*:Masks/*sla_targets_f16*:Masks/*/sla_bf16_d128:Masks/*/sla_k1_0_bf16_d128:Masks/*window_min_full_contextual_targets_bf16*:Masks/*sla_k2_ge_length_f16*:HstuCudaLayout.*' \
    > "$OUT/memcheck.log" 2>&1
  log "memcheck rc=$? ($(( $(date +%s) - t0 )) s)"
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | head -5 | tee -a "$OUT/summary.txt"
  # The SLA cases whose blocks hand partial dK / dV over through shared memory (200- and 130-token sequences).
  race_and_sync_check 90 ./build-cuda/hstu_cuda_test 'Masks/*/sla_bf16_d128:Masks/*sla_targets_f16*'
fi
if [ "${BENCH:-1}" = 1 ]; then
  # One process per implementation and mode (a crash loses one column): ours (fwd and fwd+bwd),
  # then each peer's forward, then each peer's fwd+bwd; the biggest shapes come last and are
  # skipped past each budget.
  bench() {  # impl mode budget_s
    local lens=""
    case "$1" in gr|tzrec) [ -n "${PEER_MAX_LENS:-}" ] && lens="--max-lens $PEER_MAX_LENS" ;; esac
    local fp8=""
    case "$1" in seqmix|fbgemm) [ -n "${QUANT_MODES-0 1 2 3 4 5}" ] && fp8="--quant-modes ${QUANT_MODES-0 1 2 3 4 5}" ;; esac
    timeout $(( $3 + 60 )) python3 bench/hstu_vs_peers.py --impl "$1" --mode "$2" \
      --lib build-cuda/libseqmix_hstu_capi.so --peers "${peers:-/nonexistent}" --out "$OUT/bench_$1_$2.json" \
      --budget-s "$3" $lens $fp8 ${BENCH_ARGS:-} > "$OUT/bench_$1_$2.log" 2>&1
    log "bench $1 $2 rc=$? ($(( $(date +%s) - t0 )) s)"
    grep -vE "UserWarning|invalid_mask|tracemalloc" "$OUT/bench_$1_$2.log" | grep -E "error|Error|guard|configs" | cut -c1-300 | head -6
  }
  # Triton 3.6 faults in both peers' backward here (cf. triton#10573): a fwd+bwd process whose
  # first shape dies with an illegal address is retried once with num_stages 1 and the smallest config.
  peer_fwd_bwd() {  # impl budget_s
    local t=$(date +%s)
    bench "$1" fwd_bwd "$2"
    if grep -q "illegal" "$OUT/bench_$1_fwd_bwd.json" 2>/dev/null; then
      mv "$OUT/bench_$1_fwd_bwd.log" "$OUT/bench_$1_fwd_bwd_first.log"
      PEER_NUM_STAGES=1 PEER_BWD_SAFE=1 bench "$1" fwd_bwd $(( $2 - ($(date +%s) - t) ))
    fi
  }
  bench seqmix both ${SEQMIX_BUDGET_S:-75}
  if [ -f "${peers:-/nonexistent}/fbgemm_hstu/fbgemm_gpu/experimental/hstu/hstu/fbgemm_gpu_experimental_hstu.so" ]; then
    bench fbgemm fwd 60
    bench fbgemm fwd_bwd 60
  fi
  left=$(( total_s - ($(date +%s) - t0) - 30 ))
  bench gr fwd $(( left / 5 ))
  bench tzrec fwd $(( left / 5 ))
  left=$(( total_s - ($(date +%s) - t0) - 30 ))
  peer_fwd_bwd gr $(( left / 2 - 40 ))
  left=$(( total_s - ($(date +%s) - t0) - 20 ))
  peer_fwd_bwd tzrec $(( left - 60 ))
  BENCH_COMMAND="TOTAL_S=$total_s PEER_MAX_CONFIGS=${PEER_MAX_CONFIGS:-4} bash scripts/hstu_device.sh (bench/hstu_vs_peers.py --impl seqmix|gr|tzrec|fbgemm --mode both|fwd|fwd_bwd, then --merge)" \
    python3 bench/hstu_vs_peers.py --merge "$OUT"/bench_*.json --out "$OUT/hstu_vs_peers.json" | tee "$OUT/bench_table.txt"
  cat "$OUT"/bench_*.log | grep -vE "UserWarning|invalid_mask|tracemalloc" > "$OUT/bench_logs.txt"
  rm -f "$OUT"/bench_*.log "$OUT"/bench_*.json
fi
log "total $(( $(date +%s) - t0 )) s"
