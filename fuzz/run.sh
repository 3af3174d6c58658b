#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] [TARGET...] -- runs every cargo-fuzz target (or the named ones) for
# SECONDS each (default 60), seeded with the kernel captures in cli/tests/fixtures. Needs a nightly
# toolchain and cargo-fuzz (cargo install cargo-fuzz). Exits non-zero on the first crash; the
# crashing input is left in fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "=== fuzz $t for ${secs}s"
  cargo +nightly fuzz run "$t" "corpus/$t" ../cli/tests/fixtures -- \
    -max_total_time="$secs" -print_final_stats=1 >"corpus/$t.log" 2>&1
  rc=$?
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|SUMMARY|==[0-9]+== ?ERROR)' "corpus/$t.log" || true
  [ "$rc" -eq 0 ] || { tail -30 "corpus/$t.log"; echo "fuzz $t: FAILED (see fuzz/artifacts/$t)"; exit 1; }
done
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
