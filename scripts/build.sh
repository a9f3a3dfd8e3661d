#!/usr/bin/env bash
# Configures and builds seqmix into build/ (CUDA backend when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=${SEQMIX_JOBS:-$(nproc)}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${SEQMIX_CMAKE_ARGS:-}
cmake --build build -j "$jobs"
