#!/usr/bin/env bash
# On a GPU machine: builds with the CUDA backend (and the PyTorch extension when the Python has
# torch), runs the whole C++ suite with the CUDA comparisons switched on (SEQMIX_TEST_CUDA=1 makes a
# missing GPU a failure, not a skip), `seqmix check` on both devices, then tests/python on the GPU
# (parity with the peers' Triton kernels when peers/ holds them). Logs go to $LOG_DIR.
# TIME_BUDGET_S (default 560) bounds the whole run; the FLA Triton parity cases (FLA_PARITY=0 skips them) and
# the HSTU peers' Triton parity run in the background from the end of the build.
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir=${LOG_DIR:-build-cuda/logs}
mkdir -p "$log_dir"
t0=$(date +%s)
left() { echo $(( ${TIME_BUDGET_S:-560} - $(date +%s) + t0 )); }
python=$(command -v python3)
gtest_src=/usr/src/googletest
[ -d .deps/googletest ] && gtest_src=$PWD/.deps/googletest
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DSEQMIX_GTEST_SOURCE_DIR="$gtest_src" -DSEQMIX_PYTHON="$python" > "$log_dir/configure.log" 2>&1 ||
  { tail -30 "$log_dir/configure.log"; exit 1; }
cmake --build build-cuda -j "$(nproc)" > "$log_dir/build.log" 2>&1 || { grep -E "error" "$log_dir/build.log" | head -40; exit 1; }
echo "build done at $(( $(date +%s) - t0 )) s"
# tests/python and the peers' parity load this build's extension (one Triton config per FLA kernel: values only)
export SEQMIX_PEERS=${SEQMIX_PEERS:-$PWD/peers} SEQMIX_FLA_ONE_CONFIG=1 SEQMIX_TORCH_LIB=$PWD/build-cuda/libseqmix_torch.so
# The peers' Triton parity (FLA chunk_kda case by case, the HSTU peers' hstu_mha) runs in the background
# alongside ctest and tests/python: these are value checks, not timings, and each case spends most of its
# time compiling Triton kernels on the CPU, so running them one after another left the later cases no time.
peer_parity() {
  local pids="" rc=0 c
  for c in plain gate_states_l2 gva_varlen lower_bound_beta_sigmoid; do
    [ "${FLA_PARITY:-1}" = 1 ] || { echo "FLA parity $c not run (FLA_PARITY=0)"; continue; }
    (timeout $(( $(left) - 10 )) "$python" -m pytest -q -s -p no:cacheprovider -rs tests/python/test_kda.py \
      -k "fla_triton and $c" > "$log_dir/fla_parity_$c.log" 2>&1
     r=$?; echo "FLA parity $c rc=$r at $(( $(date +%s) - t0 )) s"; exit $r) &
    pids="$pids $!"
  done
  (timeout $(( $(left) - 10 )) "$python" -m pytest -q -s -p no:cacheprovider -rs tests/python/test_hstu.py \
    -k "peer_triton" > "$log_dir/hstu_triton_parity.log" 2>&1
   r=$?; echo "HSTU Triton parity rc=$r at $(( $(date +%s) - t0 )) s"; exit $r) &
  pids="$pids $!"
  for p in $pids; do wait "$p" || rc=1; done
  cat "$log_dir"/fla_parity_*.log > "$log_dir/fla_parity.log" 2>/dev/null
  grep -E "FLA-PARITY|FP64-ERROR|passed|failed" "$log_dir/fla_parity.log"
  grep -E "HSTU-TRITON-PARITY|passed|failed|Error" "$log_dir/hstu_triton_parity.log" | head -20
  return $rc
}
if [ -f build-cuda/libseqmix_torch.so ]; then
  peer_parity > "$log_dir/peer_summary.log" 2>&1 &
  peers_pid=$!
fi
SEQMIX_TEST_CUDA=1 ctest --test-dir build-cuda --output-on-failure -j 8 > "$log_dir/ctest.log" 2>&1
ctest_status=$?
grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|Total Test time" "$log_dir/ctest.log" | tail -25
echo "ctest done at $(( $(date +%s) - t0 )) s"
./build-cuda/seqmix check > "$log_dir/check.log" 2>&1; check_status=$?
grep -E "cuda|passed" "$log_dir/check.log"
py_status=0
if [ -f build-cuda/libseqmix_torch.so ]; then
  # One process per file, verbose into the log: a crash in one file hides nothing else and names its test.
  for f in tests/python/test_*.py; do
    timeout $(( $(left) > 200 ? 180 : ($(left) > 40 ? 60 : 10) )) "$python" -X faulthandler -m pytest -v -p no:cacheprovider -rs "$f" \
      -k "not fla_triton and not peer_triton" >> "$log_dir/pytest.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || py_status=$rc
    echo "pytest $f rc=$rc: $(grep -c ' PASSED' "$log_dir/pytest.log") passed / $(grep -c ' FAILED' "$log_dir/pytest.log") failed / $(grep -c ' SKIPPED' "$log_dir/pytest.log") skipped so far, at $(( $(date +%s) - t0 )) s"
    [ $rc -eq 0 ] || grep -E "FAILED|Fatal Python|::test_" "$log_dir/pytest.log" | tail -3
    if [ $rc -ge 128 ] && command -v cuda-gdb > /dev/null; then  # a crash: the native backtrace
      crashed=$(grep -E "::test_" "$log_dir/pytest.log" | tail -1 | awk '{print $1}')
      timeout 90 cuda-gdb -batch -ex run -ex bt --args "$python" -m pytest -q -p no:cacheprovider "$crashed" 2>&1 |
        grep -v "^\[New Thread\|^\[Thread" > "$log_dir/crash_backtrace.log"
      grep -E "^#" "$log_dir/crash_backtrace.log" | head -30
    fi
  done
  wait "$peers_pid"; peers_rc=$?
  [ $peers_rc -eq 0 ] || py_status=$peers_rc
  cat "$log_dir/peer_summary.log"
else
  echo "PyTorch extension not built: tests/python not run on the GPU"
fi
exit $(( ctest_status || check_status || py_status ))
