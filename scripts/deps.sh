#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian machine (no-op when present).
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
[ -d /usr/src/googletest ] || [ -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ] || need+=(libgtest-dev)
python3 -c "import numpy" 2>/dev/null || need+=(python3-numpy)
# The PyTorch binding's tests run with Debian's torch 1.13 (CPU) and pytest under /usr/bin/python3;
# optional: without them the extension and tests/python are skipped, the C++ build and tests are not.
optional=()
/usr/bin/python3 -c "import torch" 2>/dev/null || optional+=(python3-torch)
/usr/bin/python3 -c "import pytest" 2>/dev/null || optional+=(python3-pytest)
/usr/bin/python3 -c "import numpy" 2>/dev/null || need+=(python3-numpy)
if [ ${#need[@]} -gt 0 ] || [ ${#optional[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    [ ${#need[@]} -eq 0 ] || { echo "missing: ${need[*]} (run as root or install them)" >&2; exit 1; }
    echo "optional, missing: ${optional[*]} (the PyTorch extension or its tests will be skipped)" >&2
    exit 0
  fi
  apt-get update -qq
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  if [ ${#optional[@]} -gt 0 ] && ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${optional[@]}"; then
    echo "could not install ${optional[*]}: the PyTorch extension or its tests will be skipped" >&2
  fi
fi
