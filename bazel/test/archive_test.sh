#!/usr/bin/env bash
# Proves there is one Rust runtime per library in a link with the shipped archive
# (bazel/ship-archive.sh): envoy-smc's archive defines no global symbol but envoy_smc_*, leaves
# undefined only what libc/libm/libpthread/libdl and the unwinder provide, and a C++ program
# linked with it and with a second, unrelated Rust staticlib (second_rust/, built here) runs
# both. Prints "N passed, N failed" last.
#
#   bazel/test/archive_test.sh SHIPPED.a
#
# Environment: CXX (default g++), CARGO (default cargo), BUILD_DIR (default
# target/bazel-shim-test).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
archive="${1:?usage: $0 SHIPPED.a}"
build="${BUILD_DIR:-$root/target/bazel-shim-test}"
cxx="${CXX:-g++}"
mkdir -p "$build"

passed=0
failed=0
pass() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

# Symbols of the archive's members: "BIND NDX NAME" per global/weak symbol.
syms="$build/archive-syms.txt"
readelf -sW "$archive" | awk '($5 == "GLOBAL" || $5 == "WEAK") && NF >= 8 {print $5, $7, $8}' |
  sed 's/@.*//' | sort -u >"$syms"

# 1. Defined globals: the C ABI only.
other_defined="$(awk '$2 != "UND" {print $3}' "$syms" | grep -v '^envoy_smc_' || true)"
abi_count="$(awk '$2 != "UND" {print $3}' "$syms" | grep -c '^envoy_smc_' || true)"
if [ -z "$other_defined" ] && [ "$abi_count" -gt 0 ]; then
  pass "defined globals: only envoy_smc_* ($abi_count symbols)"
else
  fail "defined globals besides envoy_smc_*: $(echo "$other_defined" | head -5 | tr '\n' ' ')"
fi

# 2. Undefined symbols: each one resolved by the system C library family or the unwinder.
# The reference list is what this host's libc/libm/libpthread/libdl/ld.so export. Besides:
# _Unwind_* (libgcc_s/libgcc_eh or libunwind, in every C++ link), __dso_handle (crtbegin.o), and
# weak references to glibc functions newer than this host's (std calls them only if present).
system_syms="$build/system-syms.txt"
# The linker cache is read whole into a file first: an awk that stopped at the first match left
# ldconfig writing into a closed pipe, and with pipefail its SIGPIPE (status 141, about 1 lookup
# in 100) ended this script before its summary.
ldcache="$build/ldconfig.txt"
ldconfig -p >"$ldcache"
for lib in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 ld-linux-x86-64.so.2; do
  path="$(awk -v l="$lib" '$1 == l && /x86-64/ && !found {print $NF; found = 1}' "$ldcache")"
  if [ -n "$path" ]; then
    readelf -sW --dyn-syms "$path" | awk '$7 != "UND" && NF >= 8 {print $8}' | sed 's/@.*//'
  fi
done | sort -u >"$system_syms"
newer_glibc_weak="pidfd_getpid pidfd_spawnp posix_spawn_file_actions_addchdir"
unexpected=()
unwinder=0
libc_count=0
while read -r bind ndx name; do
  [ "$ndx" = UND ] || continue
  if grep -qxF "$name" "$system_syms"; then
    libc_count=$((libc_count + 1))
  elif [[ "$name" == _Unwind_* ]]; then
    unwinder=$((unwinder + 1))
  elif [ "$name" = __dso_handle ]; then
    :
  elif [ "$bind" = WEAK ] && [[ " $newer_glibc_weak " == *" $name "* ]]; then
    :
  else
    unexpected+=("$name")
  fi
done <"$syms"
if [ "${#unexpected[@]}" -eq 0 ]; then
  pass "undefined: $libc_count from libc/libm/libpthread/libdl, $unwinder _Unwind_* (unwinder), nothing else"
else
  fail "undefined symbols no system library provides: ${unexpected[*]:0:10}"
fi

# 3. No Rust symbol crosses the archive boundary in either direction.
rust_undef="$(awk '$2 == "UND" {print $3}' "$syms" | grep -E '^(_ZN|_R|rust_|__rust|__rg_|__rdl_)' || true)"
if [ -z "$rust_undef" ]; then
  pass "no Rust symbol left undefined (nothing binds to another library's Rust runtime)"
else
  fail "Rust symbols left undefined: $(echo "$rust_undef" | head -5 | tr '\n' ' ')"
fi

# 4. A program linked with both runs both.
second="$build/second_rust"
CARGO_TARGET_DIR="$second/target" "${CARGO:-cargo}" build --quiet --release --offline \
  --manifest-path "$root/bazel/test/second_rust/Cargo.toml"
"$cxx" -std=c++17 -Wall -Wextra -Werror -I"$root/include" -c "$root/bazel/test/archive_link_test.cc" \
  -o "$build/archive_link_test.o"
bin="$build/archive_link_test"
if "$cxx" -o "$bin" "$build/archive_link_test.o" "$archive" "$second/target/release/libsecond_rust.a" \
  -lpthread -ldl -lm 2>"$build/archive_link.log"; then
  pass "links with a second Rust staticlib"
  if "$bin"; then
    pass "both libraries run in one process"
  else
    fail "the linked program failed"
  fi
else
  fail "link with a second Rust staticlib: $(head -5 "$build/archive_link.log")"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
