#!/usr/bin/env bash
# Builds seqmix and runs the whole test suite (GoogleTest through CTest), then the PyTorch binding's
# tests (pytest, CPU) with the Python the extension was built against (SEQMIX_PYTHON, /usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
jobs=${SEQMIX_JOBS:-$(nproc)}
ctest --test-dir build --output-on-failure -j "$jobs"
python=$(sed -n 's/^SEQMIX_PYTHON:[A-Z]*=//p' build/CMakeCache.txt)
python=${python:-/usr/bin/python3}
if [ ! -f build/libseqmix_torch.so ]; then
  echo "PyTorch extension not built (SEQMIX_TORCH=OFF or no torch for ${python}): skipping tests/python"
elif ! "$python" -c "import pytest" 2>/dev/null; then
  echo "${python} has no pytest: skipping tests/python"
else
  "$python" -m pytest -q -p no:cacheprovider tests/python
fi
