#!/usr/bin/env bash
# Regenerates every family's golden vectors from the peers' own references (run on the GPU
# machine: torch 2.11, transformers 5.17). PEERS: folder holding the fetched peers.
set -uo pipefail
cd "$(dirname "$0")"
peers=${PEERS:-../../peers}
status=0
for gen in gen_*.py; do
  family=${gen#gen_}
  family=${family%.py}
  echo "== $gen"
  python3 "$gen" --peers "$peers" --out "$family" || { echo "FAILED: $gen"; status=1; }
done
exit $status
