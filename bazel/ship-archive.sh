#!/usr/bin/env bash
# Turns the Rust static library into the archive the Envoy builds link: one relocatable object
# whose only global definitions are the C ABI (envoy_smc_*). Everything else the staticlib brings
# (Rust's std under its mangled names, rust_eh_personality, the allocator shim, compiler-builtins'
# __muldc3 & co.) becomes local, so it can neither collide with nor bind to the Rust runtime that
# Envoy links itself (Envoy 1.40 builds Rust code with its own toolchain).
#
#   bazel/ship-archive.sh IN.a OUT.a
#
# IN.a is the cargo staticlib (any path: target/debug/libenvoy_smc.a, a zigbuild output, ...).
# Steps: a partial link of every member (ld -r --whole-archive), the exception-handling COMDAT
# group renamed to a name of our own (see below), every global but the C ABI made local
# (objcopy --keep-global-symbols), the result packed as OUT.a, then checked: a defined global
# that is not envoy_smc_* fails the script.
#
# What stays undefined is what the final link must provide: libc/libm/libpthread/libdl symbols
# and the unwinder's _Unwind_* (libgcc_s/libgcc_eh or libunwind; every C++ link has one, Envoy's
# clang toolchain uses libgcc's). bazel/test/archive_test.sh checks that list.
#
# Environment: LD, OBJCOPY, READELF, AR (defaults: ld, objcopy, readelf, ar; GNU binutils or
# their LLVM equivalents).
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 IN.a OUT.a" >&2
  exit 2
fi
in="$1"
out="$2"
ld="${LD:-ld}"
objcopy="${OBJCOPY:-objcopy}"
readelf="${READELF:-readelf}"
ar="${AR:-ar}"

[ -f "$in" ] || { echo "ship-archive: $in: no such file" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Global and weak symbols an object defines, one name per line (readelf, not nm: GNU nm loads
# the LLVM linker plugin, which rejects some Rust objects).
defined_globals() {
  "$readelf" -sW "$1" | awk '($5 == "GLOBAL" || $5 == "WEAK") && $7 != "UND" && NF >= 8 {print $8}' |
    sed 's/@.*//' | sort -u
}

# A release build with split-debuginfo carries the split DWARF (*.dwo) as archive members: they
# are not objects to link (ld would take them for code with an executable stack) and belong with
# the debug files, not in what Envoy links. "S": no symbol index (GNU ar would load the LLVM
# plugin for it, below); ld -r --whole-archive needs none.
cp "$in" "$work/in.a"
mapfile -t dwo < <("$ar" t "$in" | grep '\.dwo$' || true)
[ ${#dwo[@]} -eq 0 ] || "$ar" dS "$work/in.a" "${dwo[@]}"
"$ld" -r --whole-archive "$work/in.a" -o "$work/combined.o"

# The C ABI: what the crate exports with #[no_mangle]. Taken from the input, so the list follows
# the header without a copy of it here.
defined_globals "$work/combined.o" | grep '^envoy_smc_' >"$work/keep.txt" || true
if [ ! -s "$work/keep.txt" ]; then
  echo "ship-archive: $in defines no envoy_smc_* symbol: is it the envoy-smc staticlib?" >&2
  exit 1
fi

# LLVM puts the personality pointer DW.ref.rust_eh_personality in a COMDAT group of that name.
# Linkers keep one group per name across the whole link, even when the symbol is local, so a
# second Rust library's group would replace ours and leave our unwind tables pointing at its
# personality routine (or at a discarded section). Renaming the symbol renames the group.
redefine=()
while read -r sym; do
  redefine+=(--redefine-sym "$sym=envoy_smc.private.$sym")
done < <("$readelf" -gW "$work/combined.o" | sed -n 's/^COMDAT group section .*\[\(.*\)\] contains.*/\1/p' | sort -u)

"$objcopy" "${redefine[@]}" --keep-global-symbols="$work/keep.txt" "$work/combined.o" "$work/envoy_smc.o"

leaked="$(defined_globals "$work/envoy_smc.o" | grep -v '^envoy_smc_' || true)"
if [ -n "$leaked" ]; then
  echo "ship-archive: global definitions besides envoy_smc_* remain:" >&2
  echo "$leaked" | head -20 >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
rm -f "$out.tmp"
# GNU ar would load the LLVM linker plugin to index the member, which aborts on some Rust
# objects; its own ELF reader is all the index needs.
ar_plugin=()
"$ar" --version 2>/dev/null | grep -q 'GNU ar' && ar_plugin=(--plugin /dev/null)
"$ar" "${ar_plugin[@]}" rcs "$out.tmp" "$work/envoy_smc.o"
mv "$out.tmp" "$out"
echo "ship-archive: $out: $(wc -l <"$work/keep.txt") global symbols (envoy_smc_*), $(du -h "$out" | cut -f1)"
