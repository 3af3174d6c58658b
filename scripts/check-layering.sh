#!/usr/bin/env bash
# The crates are the architecture (Cargo.toml): this fails when a dependency points the wrong way
# or when what Envoy and every sidecar load (the core and the C ABI crate) pulls in a CLI,
# YAML-emitter or log-subscriber crate again. Reads `cargo tree` (normal dependencies only).
set -euo pipefail
cd "$(dirname "$0")/.."

# The core reads YAML with its own small reader (core/src/config/yaml.rs, no aliases).
forbidden=(clap tracing-subscriber serde_yaml)
# Which workspace crates each crate may depend on (directly or not).
declare -A allowed=(
  [envoy-smc-core]=""
  [envoy-smc-capi]="envoy-smc-core"
  [envoy-smc-preload]="envoy-smc-core"
  [envoy-smc]="envoy-smc-core"
)
bad=0
for crate in envoy-smc-core envoy-smc-capi envoy-smc-preload envoy-smc; do
  deps=$(cargo tree -q -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  if [ "$crate" = envoy-smc-core ] || [ "$crate" = envoy-smc-capi ]; then
    for f in "${forbidden[@]}"; do
      if grep -qx "$f" <<<"$deps"; then
        echo "check-layering: $crate depends on $f:" >&2
        cargo tree -q -p "$crate" -e normal -i "$f" >&2 || true
        bad=1
      fi
    done
  fi
  for d in $(grep -E '^envoy-smc' <<<"$deps"); do
    [ "$d" = "$crate" ] && continue
    if ! grep -qw -- "$d" <<<"${allowed[$crate]}"; then
      echo "check-layering: $crate depends on $d, which sits above it or beside it" >&2
      bad=1
    fi
  done
done
# The core denies unsafe_code (core/src/lib.rs) and allows it on its kernel layer (smc, os) alone.
kernel_layer="pub mod os;
pub mod smc;"
opened=$(grep -rnE -A1 '(allow|expect)\([^)]*unsafe_code' core/src | grep -vE '(allow|expect)\([^)]*unsafe_code' | grep -v '^--$' || true)
if ! grep -qx '#!\[deny(unsafe_code)\]' core/src/lib.rs \
  || [ "$(sed -E 's/^core\/src\/lib\.rs-[0-9]+-//' <<<"$opened")" != "$kernel_layer" ]; then
  echo "check-layering: unsafe_code must be denied in core/src/lib.rs and allowed only on" \
    "the kernel layer (pub mod os; pub mod smc;); allowed on:" >&2
  echo "$opened" >&2
  bad=1
fi
[ "$bad" = 0 ] && echo "check-layering: core and C ABI free of ${forbidden[*]}; dependencies point downward; unsafe only in the core's kernel layer"
exit "$bad"
