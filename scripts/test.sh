#!/usr/bin/env bash
# Builds seqmix and runs the whole test suite (GoogleTest through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
jobs=${SEQMIX_JOBS:-$(nproc)}
ctest --test-dir build --output-on-failure -j "$jobs"
