#!/usr/bin/env bash
# tests/vm/build-kernel.sh -- builds the test VM's second kernel from Debian's kernel source
# package: a small, everything-built-in config (tests/vm/kernel.config) with SMC, smc_diag, SMC-D
# loopback (dibs "lo"), Soft-RoCE and BPF with BTF. Prints the path of the bzImage on stdout.
#
#   tests/vm/build-kernel.sh [--jobs N] [--force] [--quiet]
#
# The source comes as a Debian package (default linux-source-7.3 from trixie-backports), fetched
# through a private apt configuration under the cache, like run.sh fetches Debian's 6.12 image:
# the host's apt state is not touched, the package is never installed. The result is cached in
# <cache>/kernel-built/<version>-<hash>/ (bzImage, .config, build log); the hash covers the
# package version, kernel.config and the compiler and pahole versions, so a rerun with nothing
# changed only prints the path. The object tree (<cache>/kbuild/) is kept for incremental rebuilds
# when the config changes. Build deps: flex bison bc libelf-dev libssl-dev dwarves (pahole) make
# gcc xz-utils (scripts/install-deps.sh installs them; so does this script if it can).
#
# Environment: ENVOY_SMC_VM_CACHE (default ~/.cache/envoy-smc/vm, or $XDG_CACHE_HOME/envoy-smc/vm), ENVOY_SMC_VM_MIRROR (Debian mirror),
# ENVOY_SMC_VM_KERNEL_SOURCE (package, default linux-source-7.3), ENVOY_SMC_VM_KERNEL_SUITE
# (default trixie-backports), ENVOY_SMC_KERNEL_JOBS (default: the number of CPUs).
# Exit status: 0 with the image path on stdout; 1 when it cannot be fetched or built; 2 usage.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SELF_DIR/../.." && pwd)
# A per-user cache (like cargo's), shared by every checkout of this user: the kernel package and
# the built kernel are fetched/built once per machine, not once per clone.
CACHE=${ENVOY_SMC_VM_CACHE:-${XDG_CACHE_HOME:-${HOME:-$REPO}/.cache}/envoy-smc/vm}
PKG=${ENVOY_SMC_VM_KERNEL_SOURCE:-linux-source-7.3}
SUITE=${ENVOY_SMC_VM_KERNEL_SUITE:-trixie-backports}
JOBS=${ENVOY_SMC_KERNEL_JOBS:-$(nproc)}
FRAGMENT=$SELF_DIR/kernel.config
FORCE=0
QUIET=0

msg() { [ "$QUIET" = 1 ] || printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: error: %s\n' "$*" >&2; exit "${2:-1}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --jobs) [ $# -ge 2 ] || die "--jobs needs a number" 2; JOBS=$2; shift 2 ;;
    --jobs=*) JOBS=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    --quiet|-q) QUIET=1; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" 2 ;;
  esac
done
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number" 2
[[ $PKG =~ ^linux-source-[0-9]+\.[0-9]+$ ]] || die "ENVOY_SMC_VM_KERNEL_SOURCE must look like linux-source-7.3" 2
T0=$(date +%s)
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# ---------------------------------------------------------------------------------------------
# build dependencies
need=()
for c in make:make gcc:gcc flex:flex bison:bison bc:bc pahole:dwarves xz:xz-utils perl:perl; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
[ -f /usr/include/libelf.h ] || need+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  msg "installing build dependencies: ${need[*]}"
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${need[@]}" >&2 ||
    die "cannot install ${need[*]} (apt-get install ${need[*]})"
fi

# ---------------------------------------------------------------------------------------------
# the source package, through a private apt configuration
source "$(dirname "${BASH_SOURCE[0]}")/debian-apt.sh"

debs=$CACHE/debs
mkdir -p "$debs"
deb=$(find "$debs" -maxdepth 1 -name "${PKG}_*_all.deb" | sort -V | tail -1)
if [ -z "$deb" ]; then
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring not found (apt-get install debian-archive-keyring)"
  mirror=$(debian_mirror)
  apt=$CACHE/apt-src
  rm -rf "$apt"
  msg "fetching the package list of Debian $SUITE from $mirror"
  debian_apt "$apt" "$SUITE" "$mirror" "$keyring" ||
    die "cannot fetch the Debian $SUITE package list from $mirror (no network? set ENVOY_SMC_VM_MIRROR)"
  msg "downloading $PKG"
  (cd "$debs" && apt-get "${APT_OPTS[@]}" -qq download "$PKG" >&2) ||
    die "$PKG could not be downloaded from $mirror $SUITE (set ENVOY_SMC_VM_KERNEL_SOURCE to another linux-source-X.Y)"
  rm -rf "$apt"
  deb=$(find "$debs" -maxdepth 1 -name "${PKG}_*_all.deb" | sort -V | tail -1)
  [ -n "$deb" ] || die "$PKG could not be downloaded"
fi
debver=$(basename "$deb" _all.deb)
debver=${debver#"${PKG}"_}

# ---------------------------------------------------------------------------------------------
# the cache key: package version, config fragment, toolchain
key=$( { echo "$PKG $debver"; cat "$FRAGMENT"; gcc --version | head -1; pahole --version; } | sha256sum | cut -c1-12)
OUT=$CACHE/kernel-built/${PKG#linux-source-}-$debver-$key
OUT=${OUT//\~/_}
if [ "$FORCE" = 0 ] && [ -f "$OUT/bzImage" ]; then
  msg "cached: $OUT/bzImage"
  echo "$OUT/bzImage"
  exit 0
fi
exec 9>"$CACHE/.kernel-build.lock"   # one builder per cache (a cached image needs no lock)
flock 9
if [ "$FORCE" = 0 ] && [ -f "$OUT/bzImage" ]; then   # built meanwhile by another run
  echo "$OUT/bzImage"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# unpack the source (once per package version)
SRC=$CACHE/kbuild/src-$debver
SRC=${SRC//\~/_}
if [ ! -f "$SRC/.unpacked" ]; then
  msg "unpacking $(basename "$deb")"
  rm -rf "$SRC" "$SRC.tmp"
  mkdir -p "$SRC.tmp"
  dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' |
    tar -xJ -C "$SRC.tmp" --strip-components=1 || die "cannot unpack $deb"
  [ -f "$SRC.tmp/Makefile" ] || die "no kernel tree in $deb"
  mv "$SRC.tmp" "$SRC"
  touch "$SRC/.unpacked"
fi

# ---------------------------------------------------------------------------------------------
# configure and build (object tree per package version, so a changed config rebuilds only what it touches)
OBJ=$CACHE/kbuild/obj-$debver
OBJ=${OBJ//\~/_}
mkdir -p "$OBJ"
export KBUILD_BUILD_USER=envoy-smc KBUILD_BUILD_HOST=vm KBUILD_BUILD_TIMESTAMP="Debian $debver"
mk=(make -C "$SRC" O="$OBJ" -j"$JOBS")
msg "configuring (allnoconfig + $(realpath --relative-to="$REPO" "$FRAGMENT"))"
KCONFIG_ALLCONFIG=$FRAGMENT "${mk[@]}" -s allnoconfig >"$OBJ/config.log" 2>&1 ||
  die "make allnoconfig failed: $(tail -20 "$OBJ/config.log")"
missing=()
while IFS= read -r line; do
  case $line in ''|'#'*) continue ;; esac
  grep -qxF "$line" "$OBJ/.config" || missing+=("$line")
done <"$FRAGMENT"
[ ${#missing[@]} -eq 0 ] ||
  die "options of $(basename "$FRAGMENT") not in the final .config (renamed, or a dependency is off): ${missing[*]}"

msg "building $PKG $debver with $JOBS jobs (log: $OBJ/build.log)"
T1=$(date +%s)
if ! "${mk[@]}" bzImage >"$OBJ/build.log" 2>&1; then
  grep -E 'error|Error' "$OBJ/build.log" | head -20 >&2 || true
  die "kernel build failed (log: $OBJ/build.log)"
fi
T2=$(date +%s)
release=$(cat "$OBJ/include/config/kernel.release")
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
cp "$OBJ/arch/x86/boot/bzImage" "$OUT.tmp/bzImage"
cp "$OBJ/.config" "$OUT.tmp/config"
cp "$OBJ/build.log" "$OUT.tmp/build.log"
printf 'release=%s\npackage=%s %s\nbuild_seconds=%s\njobs=%s\n' "$release" "$PKG" "$debver" "$((T2 - T1))" "$JOBS" >"$OUT.tmp/info"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
msg "built $release in $((T2 - T1)) s (everything: $(($(date +%s) - T0)) s): $OUT/bzImage"
echo "$OUT/bzImage"
