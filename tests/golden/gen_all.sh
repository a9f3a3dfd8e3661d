#!/usr/bin/env bash
# Regenerates every family's golden vectors from the peers' own references (run on the GPU
# machine: torch 2.11, transformers 5.17; the FP8 cases need CUDA and fbgemm's HSTU
# quantizer file under $PEERS/FBGEMM). PEERS: folder holding the fetched peers.
set -uo pipefail
cd "$(dirname "$0")"
peers=$(realpath "${PEERS:-../../peers}")
status=0
run() {
  echo "== $*"
  python3 "$@" || { echo "FAILED: $1"; status=1; }
}
run gen_hstu.py --peers "$peers" --out hstu
run gen_hstu_extras.py --peers "$peers" --out hstu_extras --fbgemm "$peers/FBGEMM"
run gen_ttt.py --peers "$peers" --out ttt
run gen_hc_router.py --peers "$peers" --out .
[ -f gen_kda.py ] && run gen_kda.py --peers "$peers" --out kda
[ -f gen_dsa.py ] && run gen_dsa.py --peers "$peers" --out dsa
exit $status
