#!/usr/bin/env bash
# The side-by-side benchmarks of issues 3 and 4 in one device call (results under $OUT):
#   KDA: bench/run_kda_device.sh — our kda_bench (per-stage rooflines in kda/kda_stages.jsonl), then FLA's
#        chunk_kda (Triton autotune) on the same shapes;
#   HSTU: scripts/hstu_device.sh — ours, then the generative-recommenders and TorchEasyRec Triton kernels.
# Tests are left to scripts/device_test.sh. KDA_BUDGET_S and HSTU_BUDGET_S split the call's time;
# KDA=0 / HSTU=0 skip one family; PEER_MAX_LENS limits the HSTU peers' max_len list (their autotune is the slow part).
#   OUT=<dir> bash scripts/bench_device.sh      (carry peers/fla-repo, peers/gr, peers/tzrec)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT/kda" "$OUT/hstu"
t0=$(date +%s)
[ "${KDA:-1}" = 1 ] && OUT=$OUT/kda FLA=${FLA:-peers/fla-repo} TEST_TIMEOUT=1 SANITIZE_ON_FAIL=0 SANITIZE=0 BENCH_TIMEOUT=${KDA_OURS_S:-80} \
  BUDGET=${KDA_BUDGET_S:-280} bash bench/run_kda_device.sh 2>&1 | grep -vE "^\[ *(OK|RUN) *\]" | tail -30
echo "kda done at $(( $(date +%s) - t0 )) s"
[ "${HSTU:-1}" = 1 ] && OUT=$OUT/hstu PEERS=$PWD/peers TESTS=0 SANITIZE=0 TOTAL_S=${HSTU_BUDGET_S:-280} PEER_MAX_CONFIGS=${PEER_MAX_CONFIGS:-3} \
  PEER_MAX_LENS="${PEER_MAX_LENS:-1024 4096 8192}" bash scripts/hstu_device.sh 2>&1 | tail -45
echo "hstu done at $(( $(date +%s) - t0 )) s"
