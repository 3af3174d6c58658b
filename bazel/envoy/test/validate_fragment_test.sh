#!/usr/bin/env bash
# `envoy --mode validate` on the shipped bootstrap fragment (envoy-config/bootstrap/smc-bootstrap.yaml)
# merged into a tcp_proxy bootstrap, with the Envoy built here (//:envoy). Passes when Envoy
# reports the configuration OK. A stock Envoy cannot pass it: it has no envoy_smc.v1.SmcConfig
# (bazel/test/stock_envoy_test.sh shows that part).
#
#   validate_fragment_test.sh ENVOY BASE.yaml FRAGMENT.yaml
set -euo pipefail
envoy="$1"
base="$2"
fragment="$3"
out="$("$envoy" --mode validate -c "$base" --config-yaml "$(cat "$fragment")" 2>&1)" || {
  echo "$out"
  echo "FAIL: envoy --mode validate rejected the shipped fragment"
  exit 1
}
echo "$out" | tail -n 2
echo "$out" | grep -q "OK" || { echo "FAIL: no OK from envoy --mode validate"; exit 1; }
