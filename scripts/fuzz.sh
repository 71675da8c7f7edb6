#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time, one after the other on one
# core, and prints a summary line per target (executions, corpus size, crashes).
#
#   scripts/fuzz.sh              60 s per target
#   scripts/fuzz.sh 600          600 s (10 CPU-minutes) per target
#   scripts/fuzz.sh 60 sse_framing long_poll
#
# cargo-fuzz needs nightly compiler flags (-Z sanitizer); on a stable toolchain they
# are enabled with RUSTC_BOOTSTRAP=1. Install the runner with `cargo install cargo-fuzz`.
# New corpus entries go to fuzz/corpus/<target> (not committed); the seeds committed in
# fuzz/seeds/<target> are read too. A crash leaves its input in fuzz/artifacts/<target>;
# turn each one into a regression test before fixing it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cargo fuzz list)
fi
cargo fuzz build >/dev/null 2>&1 || { cargo fuzz build; exit 1; }
mkdir -p logs
status=0
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log="logs/$target.log"
  if cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)
  corpus=$(find "corpus/$target" -type f | wc -l)
  crashes=$(find "artifacts/$target" -type f | wc -l)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  printf '%-18s %-5s %6ss  execs=%-10s exec/s=%-7s cov=%-6s corpus=%-6s crashes=%s peak_rss=%sMB\n' \
    "$target" "$result" "$SECONDS_EACH" "${execs:-?}" "${speed:-?}" "${cov:-?}" "$corpus" "$crashes" "${rss:-?}"
done
exit $status
