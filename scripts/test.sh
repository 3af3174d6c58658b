#!/usr/bin/env bash
# The whole test suite: formatting and lints, the Rust tests on this host (no SMC in its kernel),
# the C ABI and C++ shim tests, and the real SMC-R suite inside the qemu VM.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-vm    without the VM suite (it needs qemu and the Debian kernel package)
#
# Ends with one line "total: N passed, M failed, K skipped" (every test of every runner) and exits
# non-zero when anything failed. Skipped: cargo's "ignored" tests and our runners' "N skipped". A
# VM test is #[ignore]d on the host and run by the VM suite, so it counts once as skipped (the host
# cargo-test step) and once as passed or failed (the vm step): both runs are real, both reported.
set -uo pipefail
cd "$(dirname "$0")/.."

run_vm=1
[ "${1:-}" = "--no-vm" ] && run_vm=0

# A fresh machine gets what the suite needs first (idempotent: installs only what is missing).
bash scripts/install-deps.sh || { echo "test.sh: installing the dependencies failed"; exit 1; }

# Each step's output is kept until the end: a failed step's last lines are printed again just
# above the totals, so a CI that shows only the tail of the output still shows why.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
passed=0
failed=0
skipped=0
steps_failed=()

# Runs one step, tees its output, and adds up the counts its runner printed.
step() {
  local name=$1
  shift
  echo "=== $name: $*"
  local start=$SECONDS
  local log="$logs/$name.log"
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local p f s
  # cargo test: "test result: ok. 12 passed; 0 failed; ..."
  p=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  f=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
  s=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored' "$log" | grep -oE '[0-9]+ ignored' | awk '{s+=$1} END {print s+0}')
  # our own runners: "N passed, M failed" alone on a line, optionally followed by ", K skipped"
  local pp ff ss
  pp=$(grep -oE '^([a-z-]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  ff=$(grep -oE '^([a-z-]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
  ss=$(grep -oE '^([a-z-]+: )?[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$log" | grep -oE '[0-9]+ skipped' | awk '{s+=$1} END {print s+0}')
  passed=$((passed + p + pp))
  failed=$((failed + f + ff))
  skipped=$((skipped + s + ss))
  if [ "$rc" -ne 0 ]; then
    steps_failed+=("$name")
    # A step that failed without reporting a failing test (build error, lint) counts as one.
    [ $((f + ff)) -eq 0 ] && failed=$((failed + 1))
  fi
  echo "=== $name: exit $rc in $((SECONDS - start)) s"
}

step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets --quiet -- -D warnings
step layering bash scripts/check-layering.sh
step cargo-test cargo test --workspace --quiet
step shim bash bazel/test/run.sh
step stock-envoy bash bazel/test/stock_envoy_test.sh
step buildifier bash bazel/test/buildifier.sh
# Alert rules: promtool check + unit tests (a second or two).
step promtool bash monitoring/check.sh
if [ "$run_vm" = 1 ]; then
  # The VM's second kernel, built from Debian's linux-source-7.3 (10-25 min once, then cached);
  # the bench step's SMC-D part and the *-7.3 steps below boot it.
  step kernel bash tests/vm/build-kernel.sh
  # The harness's own failure handling: a boot that dies early is retried, a command is not.
  step vm-harness bash tests/vm/harness-test.sh
  step vm bash tests/vm/suite.sh
  # The demo, asserting what it shows (and the patched configs on Envoys without envoy-smc).
  step demo bash scripts/demo.sh --check
  # The load comparison's short profile (SMC off/on through two Envoys in the VM, and the preload
  # library's overhead on this kernel); the full profile is `bench/run.sh` by hand.
  step bench bash bench/run.sh --short
  # Adaptive fallback end to end: a stock Envoy pair, a path dropping SMC's SYNs (about 1 min).
  step adaptive bash tests/vm/adaptive-e2e.sh
  # The newest kernel, built from linux-source-7.3 (SMC-D loopback, BTF; cached in ~/.cache/envoy-smc/vm):
  # the SMC-R suite and adaptive fallback again on it, and SMC-D loopback end to end.
  step vm-7.3 env ENVOY_SMC_VM_KERNEL_KIND=built bash tests/vm/suite.sh
  step adaptive-7.3 env ENVOY_SMC_VM_KERNEL_KIND=built ENVOY_SMC_VM_SMCD_LOOPBACK=off bash tests/vm/adaptive-e2e.sh --no-build
  step smcd bash tests/vm/smcd-e2e.sh --no-build
  # The mesh switch live over xDS with traffic running: timeline, zero failed requests, no
  # rejected listener update (about 1.5 min with the VM boot).
  step live-switch bash tests/vm/live-switch.sh
  # The node agent: stock Envoys as uid 1337, SMC by BPF, no preload (90-200 s with the boot).
  step agent bash tests/vm/agent-e2e.sh
  # The same on the 7.3 kernel, with the agent's smc_hs_ctrl selected (SMC-D loopback off: SMC-R).
  step agent-7.3 env ENVOY_SMC_VM_KERNEL_KIND=built ENVOY_SMC_VM_SMCD_LOOPBACK=off bash tests/vm/agent-e2e.sh --no-build
  # The agent's per-destination decisions with smc_hs_ctrl on the 7.3 kernel: a denied CIDR and
  # port never get TCP option 254, a black-holed destination is held on TCP (about 100 s).
  step agent-hsctrl bash tests/vm/agent-hsctrl.sh --no-build
fi

echo
for name in "${steps_failed[@]}"; do
  echo "--- $name failed; its last 40 lines:"
  tail -n 40 "$logs/$name.log"
done
[ ${#steps_failed[@]} -gt 0 ] && echo "failed steps: ${steps_failed[*]}"
echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ ${#steps_failed[@]} -eq 0 ]
