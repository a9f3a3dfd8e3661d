# Sourced by the device scripts. memcheck sees no shared-memory races or barrier misuse, so the
# kernels that exchange data through shared memory also go through racecheck and synccheck.
#   race_and_sync_check <timeout_s> <test binary> <gtest filter>
# appends both tools' output to $OUT/memcheck.log and their summaries to the log() of the caller.
race_and_sync_check() {
  local tool extra
  for tool in racecheck synccheck; do
    extra=""; [ $tool = racecheck ] && extra="--racecheck-report hazard"
    timeout "$1" compute-sanitizer --tool $tool $extra "$2" --gtest_filter="$3" > "$OUT/$tool.log" 2>&1
    log "$tool rc=$? ($(( $(date +%s) - t0 )) s): $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$tool.log" | head -2 | tr '\n' ' ')"
    cat "$OUT/$tool.log" >> "$OUT/memcheck.log"; rm "$OUT/$tool.log"
  done
}
