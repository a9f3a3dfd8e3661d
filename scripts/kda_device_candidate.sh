#!/usr/bin/env bash
# One device call for a KDA candidate with a fallback, from the repository root on the GPU machine: FLA's bench
# runs first (alone on the GPU; Triton autotune picks of an earlier call unpacked into its cache) while both
# staged trees build on the CPU (run_kda_device.sh BUILD_ONLY=1); then the candidate's bench/run_kda_device.sh
# (tests, check, stage times, bench, ncu kernel durations, memcheck), and the fallback's only when the
# candidate's tests fail.
#   CANDIDATE=.wip/b FALLBACK=.wip/a AUTOTUNE=.wip/triton_autotune.tgz FLA_S=240 bash scripts/kda_device_candidate.sh
# Stage a tree with `git archive <branch> | tar xf - -C .wip/b` and a copy of .deps; carry .wip and peers/fla-repo.
# Results: $OUT/fla.json, $OUT/fla_logs.tgz, $OUT/<tree name>/{ours.json, kda_stages.jsonl, kernel_times.csv, logs.tgz}.
set -u
R=$PWD
CANDIDATE=${CANDIDATE:-.wip/b}
FALLBACK=${FALLBACK:-.wip/a}
t0=$(date +%s)
for v in "$CANDIDATE" "$FALLBACK"; do (cd "$v" && ln -sfn "$R/peers" peers); done
export TRITON_CACHE_DIR=$R/$CANDIDATE/.triton_cache TRITON_CACHE_AUTOTUNING=1 PYTHONUNBUFFERED=1
[ -f "${AUTOTUNE:-}" ] && (cd "$CANDIDATE" && tar xzf "$R/$AUTOTUNE")
cn=$(basename "$CANDIDATE") fn=$(basename "$FALLBACK")
mkdir -p "$OUT/fla" "$OUT/$cn/logs" "$OUT/$fn/logs"
(cd "$CANDIDATE" && PYTHONPATH=peers/fla-repo timeout "${FLA_S:-240}" python3 bench/kda_vs_fla.py --out "$OUT/fla.json" \
  --order B4_T4096_H16_D128,B1_T32768_H16_D128,varlen64_skewed_T32768_H16_D128,B4_T4096_H64_D128 > "$OUT/fla/fla.txt" 2>&1) &
fla_pid=$!
builds=""
for v in "$CANDIDATE" "$FALLBACK"; do
  n=$(basename "$v")
  (cd "$v" && OUT=$OUT/$n BUILD_ONLY=1 bash bench/run_kda_device.sh > "$OUT/$n/logs/build0.txt" 2>&1
   echo "build $n rc=$? at $(( $(date +%s) - t0 )) s") &
  builds="$builds $!"
done
wait $builds
wait $fla_pid; echo "fla rc=$? at $(( $(date +%s) - t0 )) s"; tail -8 "$OUT/fla/fla.txt"; cat "$OUT/fla.json"
tar czf "$OUT/fla_logs.tgz" -C "$OUT" fla && rm -rf "$OUT/fla"
for v in "$CANDIDATE" "$FALLBACK"; do
  n=$(basename "$v")
  echo "=== $n at $(( $(date +%s) - t0 )) s"
  if [ "$v" = "$CANDIDATE" ]; then
    (cd "$v" && OUT=$OUT/$n FLA_RUN=0 STOP_ON_TEST_FAIL=1 SANITIZE_ON_FAIL=0 TEST_TIMEOUT=120 BENCH_TIMEOUT=80 \
      KERNEL_TIMES=1 KERNEL_TIMES_TIMEOUT=60 SAN_TIMEOUT=40 bash bench/run_kda_device.sh) 2>&1 | tee "$OUT/$n/run.txt" |
      grep -v "^BIG\|^\[kda timing\]"
  else
    (cd "$v" && OUT=$OUT/$n FLA_RUN=0 SANITIZE_ON_FAIL=0 SANITIZE=0 TEST_TIMEOUT=120 BENCH_TIMEOUT=80 \
      bash bench/run_kda_device.sh) 2>&1 | tee "$OUT/$n/run.txt" | grep -v "^BIG\|^\[kda timing\]"
  fi
  grep -q "kda_cuda_test rc=0" "$OUT/$n/run.txt" && break
done
echo "total $(( $(date +%s) - t0 )) s"
