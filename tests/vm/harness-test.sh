#!/usr/bin/env bash
# tests/vm/harness-test.sh -- the VM harness's own behaviour on failures (about 25 s):
# a boot that dies before the guest starts is tried again and then reported (exit 125), and a
# command that fails after the guest started is reported with its status and never retried.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
passed=0 failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

check() { # NAME CONDITION-RESULT DETAIL
  if [ "$2" = 0 ]; then
    passed=$((passed + 1)); echo "ok   $1"
  else
    failed=$((failed + 1)); echo "FAIL $1  [$3]"
  fi
}

# A kernel that cannot start the guest's init (rdinit names no file) panics in every boot, the
# way a TCG boot flake panics in one.
ENVOY_SMC_VM_BOOT_ATTEMPTS=2 ENVOY_SMC_VM_APPEND="rdinit=/nonexistent" \
  bash "$here/run.sh" --timeout 120 -- true >"$out" 2>&1
rc=$?
boots=$(grep -c '^vm: booting' "$out")
check "a boot that dies before the guest starts exits 125" "$([ "$rc" = 125 ]; echo $?)" "exit $rc"
check "it is booted again, BOOT_ATTEMPTS times in all" "$([ "$boots" = 2 ]; echo $?)" "$boots boots"
check "the retry is said, with the kernel's panic line" \
  "$(grep -q 'died during boot, before the guest ran anything (attempt 1 of 2' "$out" &&
    grep -q 'Kernel panic' "$out"; echo $?)" "$(grep -m1 'warning' "$out")"
check "the final error counts the boots" "$(grep -q 'boots tried: 2' "$out"; echo $?)" \
  "$(grep -m1 'vm: error' "$out")"

# A command that fails inside a guest that started: its status, and it ran once. (The boot
# itself may be retried if the kernel died first; that is the case above, not this one.)
shared=$(mktemp -d)
bash "$here/run.sh" --timeout 120 --shared "$shared" -- sh -c 'echo ran >>/tmp/runs; exit 7' >"$out" 2>&1
rc=$?
runs=$(grep -c ran "$shared/runs" 2>/dev/null)
rm -rf "$shared"
check "a failing command's own status comes back (7)" "$([ "$rc" = 7 ]; echo $?)" "exit $rc"
check "a command that failed after the guest started ran once, not again" "$([ "$runs" = 1 ]; echo $?)" "ran ${runs:-0} times"

[ "$failed" = 0 ] || { echo "--- harness output of the last run:"; sed 's/^/  | /' "$out"; }
echo "harness-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
