#!/usr/bin/env bash
# The PyTorch extension on the device: build it with CUDA (sm_90a) into build/; look for the segfault
# seen once in test_hstu's bad inputs (verbose, then a native backtrace with cuda-gdb); tests/python file
# by file; parity with FLA's Triton chunk_kda case by case (error ratios printed). Logs go to $OUT (at
# most 8 files). Peers: $SEQMIX_PEERS, else peers/ here, else ../../peers (a tree staged in .wip/<name>).
# Staged:  run command `cd .wip/torch && bash scripts/torch_device.sh`, carry .wip/torch and
# peers/fla-repo, peers/gr, peers/tzrec; fits timeout_s=480.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SEQMIX_PEERS:-}" ]; then
  if [ -d peers ]; then SEQMIX_PEERS=$PWD/peers; else SEQMIX_PEERS=$(cd ../../peers && pwd); fi
fi
export SEQMIX_PEERS
export PATH=/usr/local/cuda/bin:$PATH
python=$(command -v python3)
t0=$(date +%s)
left() { echo $(( 465 - $(date +%s) + t0 )); }
{
  date -u; nvidia-smi --query-gpu=name --format=csv,noheader
  "$python" -m pytest --version; "$python" -m pip list 2>/dev/null | grep -i -E "pytest|einops|^torch |triton"
} > "$OUT/env.log" 2>&1
timeout 200 bash -c "cmake -S . -B build -G Ninja -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_BUILD_TYPE=Release -DSEQMIX_BUILD_TESTS=OFF -DSEQMIX_TORCH=ON -DSEQMIX_PYTHON=$python \
  && cmake --build build -j16 --target seqmix_torch" > "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.log"
# 1. The crash: bad inputs alone, then test_hstu alone, then after test_cuda (run 1's order); the first
# command that crashes is rerun under cuda-gdb for a native backtrace.
crashed=""
step() {
  [ -z "$crashed" ] || return 0
  local label=$1; shift
  timeout 90 "$python" -X faulthandler -m pytest -p no:cacheprovider -v "$@" > "$OUT/crash_step.log" 2>&1
  local rc=$?; echo "== [$label] rc=$rc at $(( $(date +%s) - t0 )) s" >> "$OUT/crash.log"
  grep -E "PASSED|FAILED|Fatal|File \"/work" "$OUT/crash_step.log" | tail -15 >> "$OUT/crash.log"
  if [ $rc -ne 0 ]; then
    crashed=$label
    timeout 120 cuda-gdb -batch -ex run -ex bt --args "$python" -m pytest -p no:cacheprovider -x -q "$@" \
      2>&1 | grep -v "^\[New Thread\|^\[Thread" | tail -60 >> "$OUT/crash.log"
    echo "cuda-gdb rc=$?" >> "$OUT/crash.log"
  fi
}
step "bad inputs alone" tests/python/test_hstu.py -k bad_input
step "test_hstu alone" tests/python/test_hstu.py -k "not compile and not export"
step "test_cuda then test_hstu" tests/python/test_cuda.py tests/python/test_hstu.py -k "not compile and not export"
# 2. Each file on its own (a crash in one hides nothing else).
for f in test_cuda test_hstu test_kda test_ttt; do
  timeout 100 "$python" -X faulthandler -m pytest -p no:cacheprovider -q -rs tests/python/$f.py -k "not fla_triton" \
    >> "$OUT/pytest.log" 2>&1
  echo "== $f rc=$? at $(( $(date +%s) - t0 )) s" | tee -a "$OUT/pytest.log"
done
# 3. FLA's Triton chunk_kda, case by case.
export SEQMIX_FLA_ONE_CONFIG=1
for c in plain gate_states_l2 gva_varlen lower_bound_beta_sigmoid; do
  [ "$(left)" -gt 20 ] || { echo "== $c not run (time)" | tee -a "$OUT/fla.log"; continue; }
  timeout "$(left)" "$python" -m pytest -p no:cacheprovider -q -s -rs tests/python/test_kda.py \
    -k "fla_triton and $c" >> "$OUT/fla.log" 2>&1
  echo "== $c rc=$? at $(( $(date +%s) - t0 )) s" | tee -a "$OUT/fla.log"
done
grep FLA-PARITY "$OUT/fla.log"
