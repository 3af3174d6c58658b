#!/usr/bin/env bash
# monitoring/check.sh -- the alert rules through Debian's promtool (package `prometheus`):
# `promtool check rules` (syntax, PromQL, templates) and `promtool test rules` (each alert fires
# on the series that should raise it and stays quiet otherwise). Prints "promtool: N passed,
# M failed" for scripts/test.sh.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if ! command -v promtool >/dev/null; then
  echo "promtool not found (apt-get install prometheus; scripts/install-deps.sh does it)" >&2
  echo "promtool: 0 passed, 1 failed"
  exit 1
fi
passed=0 failed=0
for step in "check rules envoy-smc.rules.yaml" "test rules envoy-smc.rules.test.yaml"; do
  # shellcheck disable=SC2086
  if promtool $step; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "promtool: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
