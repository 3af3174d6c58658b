#!/usr/bin/env bash
# tests/vm/run.sh -- run one command inside a qemu (TCG) VM whose kernel has real SMC-R.
#
#   tests/vm/run.sh [OPTIONS] [--] COMMAND [ARGS...]
#
# The VM boots Debian 13's 6.12 kernel (downloaded once, never installed; --kernel stock, the
# default) or a kernel built from Debian's linux-source-7.3 by tests/vm/build-kernel.sh (--kernel
# built: everything built in, with SMC-D loopback and BPF/BTF) with a busybox initramfs, mounts this machine's root read-only over 9p and runs COMMAND in a chroot of it,
# so host binaries (cargo-built tests, python3, envoy) run unchanged. Inside: a veth pair
# va 10.9.0.1 <-> vb 10.9.0.2 in the initial netns, Soft-RoCE devices rxea/rxeb on them, a UEID
# (SMC-Rv2), so AF_SMC / IPPROTO_SMC connections between 10.9.0.1 and 10.9.0.2 are real SMC-R.
# The VM has no network device to the outside (-nic none). See tests/vm/README.md.
#
# Exit status: COMMAND's own; 124 if the VM did not finish in time; 125 if the VM or its setup
# failed before COMMAND ran; 1 if the host could not be prepared (qemu, kernel); 2 usage error;
# 3 if a binary of this checkout was replaced on the host while the VM ran (the run is void).
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SELF_DIR/../.." && pwd)
# A per-user cache (like cargo's), shared by every checkout of this user: the kernel package and
# the built kernel are fetched/built once per machine, not once per clone.
CACHE=${ENVOY_SMC_VM_CACHE:-${XDG_CACHE_HOME:-${HOME:-$REPO}/.cache}/envoy-smc/vm}
ENVOY_SMC_BIN=${ENVOY_SMC_BIN:-$REPO/target/debug/envoy-smc}
TIMEOUT=${ENVOY_SMC_VM_TIMEOUT:-600}
MEM=${ENVOY_SMC_VM_MEM:-2048}
SMP=${ENVOY_SMC_VM_SMP:-2}
UEID=ENVOY-SMC-TEST
SHARED=${ENVOY_SMC_VM_SHARED_DIR:-}
KERNEL_KIND=${ENVOY_SMC_VM_KERNEL_KIND:-stock}
SMCD_LOOPBACK=${ENVOY_SMC_VM_SMCD_LOOPBACK:-on}
QUIET=0
CONSOLE=0
PREPARE_ONLY=0
EXTRA_ENV=()
BUILD_LOCKS=()

# Modules loaded at boot (with their modules.dep dependencies), before the command runs.
BOOT_MODULES=(
  crc32_generic                                   # rdma_rxe's ICRC; not autoloaded
  netfs 9pnet 9pnet_virtio 9p                      # host root + shared dir
  veth ib_core ib_uverbs ip6_udp_tunnel udp_tunnel rdma_rxe smc smc_diag
  libcrc32c crc32c_generic                         # nf_conntrack / nf_nat checksums
  x_tables ip_tables ip6_tables iptable_filter iptable_raw iptable_nat
  nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack nf_nat xt_CT xt_nat xt_REDIRECT xt_tcpudp
)
# Modules put into the initramfs but only loaded on demand (the kernel's modprobe helper is
# busybox modprobe in the initramfs): more iptables matches, ip6tables, iptables-nft, tc.
OPTIONAL_MODULES=(
  xt_conntrack xt_state xt_owner xt_mark xt_connmark xt_multiport xt_comment
  xt_MASQUERADE xt_tcpmss xt_TPROXY xt_socket xt_addrtype xt_LOG xt_limit xt_statistic
  ipt_REJECT nf_reject_ipv4
  ip6table_filter ip6table_raw ip6table_nat ip6table_mangle iptable_mangle
  ip6t_REJECT nf_reject_ipv6 nf_tproxy_ipv4 nf_tproxy_ipv6 nf_socket_ipv4 nf_socket_ipv6
  nfnetlink nf_tables nft_compat nft_chain_nat nft_ct nft_nat nft_redir nft_reject
  nft_reject_inet nft_masq nft_limit nft_numgen nft_fib nft_fib_inet nft_fib_ipv4
  nft_fib_ipv6 nft_log
  sch_netem sch_tbf sch_prio sch_htb cls_u32 cls_bpf act_bpf sch_ingress sch_fq_codel
  tun dummy macvlan ipvlan bridge br_netfilter tcp_diag inet_diag udp_diag unix_diag
  netlink_diag af_packet_diag raw_diag
)

usage() {
  cat <<'EOF'
usage: tests/vm/run.sh [OPTIONS] [--] COMMAND [ARGS...]

Boots a qemu TCG VM with Debian's 6.12 kernel (SMC, smc_diag, rdma_rxe) and runs COMMAND in a
chroot of this machine's root, with real SMC-R between 10.9.0.1 (va, rxea) and 10.9.0.2 (vb, rxeb).
COMMAND's stdout/stderr are streamed live; the exit status is COMMAND's.

options:
  --kernel KIND    stock: Debian's 6.12 image (default); built: the kernel tests/vm/build-kernel.sh
                   builds from linux-source-7.3 (SMC-D loopback, BTF), built on first use
                   (env ENVOY_SMC_VM_KERNEL_KIND)
  --smcd-loopback on|off
                   built kernel: off hides the SMC-D loopback device (dibs "lo") from SMC, so
                   connections between 10.9.0.1 and 10.9.0.2 are SMC-R as on the stock kernel
                   (default on; env ENVOY_SMC_VM_SMCD_LOOPBACK)
  --timeout SECS   limit for the whole VM run: boot, setup and COMMAND (default 600,
                   env ENVOY_SMC_VM_TIMEOUT); exit 124 when it is hit
  --no-ueid        do not add the UEID (SMC-Rv2 then cannot be negotiated: fallback NOSMCDEV)
  --shared DIR     host directory mounted writable at /tmp in the VM (default: a new
                   <cache>/runs/<timestamp>-<pid>, env ENVOY_SMC_VM_SHARED_DIR)
  --env NAME[=VAL] pass one more environment variable into COMMAND (repeatable)
  --console        also stream the VM's serial console to stderr
  --quiet          no progress messages from the harness
  --prepare        only install host packages, fetch the kernel and build the initramfs
  -h, --help       this text

environment: ENVOY_SMC_BIN (envoy-smc CLI used for `ueid add`, default <repo>/target/debug/envoy-smc),
ENVOY_SMC_VM_CACHE (default ~/.cache/envoy-smc/vm, or $XDG_CACHE_HOME/envoy-smc/vm), ENVOY_SMC_VM_KERNEL (a linux-image-* package name, stock kernel),
ENVOY_SMC_VM_MIRROR (Debian mirror URL), ENVOY_SMC_VM_MEM (MiB, 2048), ENVOY_SMC_VM_SMP (2),
ENVOY_SMC_VM_MODULES (more kernel modules to load at boot), ENVOY_SMC_VM_APPEND (kernel args),
ENVOY_SMC_VM_BOOT_ATTEMPTS (boots tried when the kernel dies before the guest starts, 4).
EOF
}

msg() { [ "$QUIET" = 1 ] || printf 'vm: %s\n' "$*" >&2; }
warn() { printf 'vm: warning: %s\n' "$*" >&2; }
die() { local rc=$1; shift; printf 'vm: error: %s\n' "$*" >&2; exit "$rc"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# arguments
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) [ $# -ge 2 ] || die 2 "--timeout needs a value"; TIMEOUT=$2; shift 2 ;;
    --timeout=*) TIMEOUT=${1#*=}; shift ;;
    --no-ueid) UEID=; shift ;;
    --shared) [ $# -ge 2 ] || die 2 "--shared needs a directory"; SHARED=$2; shift 2 ;;
    --shared=*) SHARED=${1#*=}; shift ;;
    --env) [ $# -ge 2 ] || die 2 "--env needs NAME or NAME=VALUE"; EXTRA_ENV+=("$2"); shift 2 ;;
    --env=*) EXTRA_ENV+=("${1#*=}"); shift ;;
    --kernel) [ $# -ge 2 ] || die 2 "--kernel needs stock or built"; KERNEL_KIND=$2; shift 2 ;;
    --kernel=*) KERNEL_KIND=${1#*=}; shift ;;
    --smcd-loopback) [ $# -ge 2 ] || die 2 "--smcd-loopback needs on or off"; SMCD_LOOPBACK=$2; shift 2 ;;
    --smcd-loopback=*) SMCD_LOOPBACK=${1#*=}; shift ;;
    --console) CONSOLE=1; shift ;;
    --quiet|-q) QUIET=1; shift ;;
    --prepare) PREPARE_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) usage >&2; die 2 "unknown option $1" ;;
    *) break ;;
  esac
done
CMD=("$@")
[ "$PREPARE_ONLY" = 1 ] || [ ${#CMD[@]} -gt 0 ] || { usage >&2; die 2 "no command given"; }
if ! [[ $TIMEOUT =~ ^[0-9]+$ ]] || [ "$TIMEOUT" -lt 30 ]; then
  die 2 "--timeout must be a whole number of seconds >= 30"
fi
case $KERNEL_KIND in stock|built) ;; *) die 2 "--kernel must be stock or built, not '$KERNEL_KIND'" ;; esac
case $SMCD_LOOPBACK in on|off) ;; *) die 2 "--smcd-loopback must be on or off, not '$SMCD_LOOPBACK'" ;; esac
[ "${ENVOY_SMC_VM:-}" != 1 ] || die 2 "already inside the envoy-smc VM (ENVOY_SMC_VM=1)"
for e in "${EXTRA_ENV[@]}"; do
  [[ ${e%%=*} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die 2 "--env: bad variable name in '$e'"
done
read -r -a EXTRA_MODULES <<<"${ENVOY_SMC_VM_MODULES:-}"

T_START=$(now)
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# ---------------------------------------------------------------------------------------------
# host packages
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo -n)

apt_install() {  # apt_install PKG...: install with the system apt, updating the lists if needed
  command -v apt-get >/dev/null || return 1
  local opts=(-y -qq --no-install-recommends -o DPkg::Lock::Timeout=600)
  msg "installing host packages: $*"
  local aptcmd=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  if ! "${aptcmd[@]}" install "${opts[@]}" "$@" >/dev/null 2>&1; then
    "${aptcmd[@]}" -qq -o DPkg::Lock::Timeout=600 update >/dev/null 2>&1 || true
    "${aptcmd[@]}" install "${opts[@]}" "$@" >&2 || return 1
  fi
}

ensure_host_packages() {
  local need=() p
  if command -v dpkg-query >/dev/null; then
    for p in qemu-system-x86 busybox-static kmod cpio xz-utils iproute2 iptables; do
      dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
    done
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}" || warn "could not install: ${need[*]}"
  fi
  local q
  q=$(command -v qemu-system-x86_64 || true)
  if [ -z "$q" ] || [ ! -f "$q" ] || [ ! -x "$q" ]; then
    die 1 "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
  fi
  [ -x /bin/busybox ] || die 1 "/bin/busybox not found (apt-get install busybox-static)"
  if LC_ALL=C readelf -l /bin/busybox 2>/dev/null | grep -q 'program interpreter'; then
    die 1 "/bin/busybox is not static (apt-get install busybox-static)"
  fi
  local c
  for c in depmod:kmod cpio:cpio xz:xz-utils dpkg-deb:dpkg apt-get:apt; do
    command -v "${c%%:*}" >/dev/null || die 1 "${c%%:*} not found (apt-get install ${c#*:})"
  done
}

# ---------------------------------------------------------------------------------------------
# kernel: Debian 13 (trixie) linux-image-6.12.*+deb13-amd64-unsigned, fetched through a private
# apt configuration into $CACHE (the system's apt state is not touched) and unpacked, never installed
source "$(dirname "${BASH_SOURCE[0]}")/debian-apt.sh"

fetch_kernel() {
  local debs=$CACHE/debs apt=$CACHE/apt pkg deb
  mkdir -p "$debs"
  pkg=${ENVOY_SMC_VM_KERNEL:-}
  if [ -n "$pkg" ]; then
    deb=$(find "$debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -1)
  else
    deb=$(find "$debs" -maxdepth 1 -name 'linux-image-6.12.*+deb13-amd64-unsigned_*.deb' | sort -V | tail -1)
  fi
  if [ -z "$deb" ]; then
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg mirror
    [ -f "$keyring" ] || apt_install debian-archive-keyring || true
    [ -f "$keyring" ] || die 1 "$keyring not found (apt-get install debian-archive-keyring)"
    mirror=$(debian_mirror)
    msg "fetching the package list of Debian trixie from $mirror"
    debian_apt "$apt" trixie "$mirror" "$keyring" ||
      die 1 "cannot fetch the Debian trixie package list from $mirror (no network? set ENVOY_SMC_VM_MIRROR to a Debian mirror)"
    if [ -z "$pkg" ]; then
      pkg=$(apt-cache "${APT_OPTS[@]}" pkgnames linux-image-6.12. 2>/dev/null |
        grep -E '^linux-image-6\.12\.[0-9]+\+deb13-amd64-unsigned$' | sort -V | tail -1 || true)
      [ -n "$pkg" ] || die 1 "no linux-image-6.12.*+deb13-amd64-unsigned package in trixie main at $mirror"
    fi
    msg "downloading kernel package $pkg"
    (cd "$debs" && apt-get "${APT_OPTS[@]}" -qq download "$pkg" >&2) ||
      die 1 "kernel package $pkg could not be downloaded from $mirror"
    deb=$(find "$debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -1)
    [ -n "$deb" ] || die 1 "kernel package $pkg could not be downloaded from $mirror"
    rm -rf "$apt/lists" "$apt/cache"   # only needed to find the package
  fi
  KPKG=$(basename "$deb" .deb)
  KDIR=$CACHE/kernel/$KPKG
  if [ ! -f "$KDIR/.unpacked" ]; then
    msg "unpacking $KPKG"
    rm -rf "$KDIR" "$KDIR.tmp"
    mkdir -p "$KDIR.tmp"
    dpkg-deb -x "$deb" "$KDIR.tmp" || die 1 "cannot unpack $deb"
    mv "$KDIR.tmp" "$KDIR"
    touch "$KDIR/.unpacked"
  fi
  KROOT=$KDIR/usr
  [ -d "$KROOT/lib/modules" ] || KROOT=$KDIR
  KVER=$(find "$KROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
  [ -n "$KVER" ] || die 1 "no modules in $KDIR"
  VMLINUZ=$KDIR/boot/vmlinuz-$KVER
  [ -f "$VMLINUZ" ] || die 1 "no kernel image $VMLINUZ"
  [ -f "$KROOT/lib/modules/$KVER/modules.dep" ] || depmod -b "$KROOT" "$KVER"
}

# built kernel (--kernel built): tests/vm/build-kernel.sh builds it once and prints its bzImage;
# everything is built in, so the initramfs carries no modules
built_kernel() {
  local img
  img=$("$SELF_DIR/build-kernel.sh" $([ "$QUIET" = 1 ] && echo --quiet)) ||
    die 1 "the kernel could not be built (tests/vm/build-kernel.sh)"
  [ -f "$img" ] || die 1 "tests/vm/build-kernel.sh printed no kernel image"
  VMLINUZ=$img
  KVER=$(sed -n 's/^release=//p' "$(dirname "$img")/info")
  [ -n "$KVER" ] || die 1 "no release in $(dirname "$img")/info"
  KROOT=
}

# ---------------------------------------------------------------------------------------------
# initramfs: static busybox, the modules (decompressed, with their own modules.dep for busybox
# modprobe) and tests/vm/init; cached by content
build_initramfs() {
  local md=$KROOT/lib/modules/$KVER key order=() m p
  key=$( { echo "$KVER"; echo "${BOOT_MODULES[*]} ${EXTRA_MODULES[*]}"; echo "${OPTIONAL_MODULES[*]}";
           cat "$SELF_DIR/init"; sha256sum </bin/busybox; } | sha256sum | cut -c1-16)
  INITRD=$CACHE/initramfs/$KVER-$key.cpio.gz
  [ -f "$INITRD" ] && return 0
  msg "building the initramfs ($KVER)"

  modpath() {  # relative path of a module in modules.dep, or nothing
    local n=$1 alt
    alt=$(tr '_-' '-_' <<<"$n")
    grep -oE "^[^:]*/($n|$alt)\.ko(\.xz|\.zst|\.gz)?:" "$md/modules.dep" | head -1 | tr -d : || true
  }
  is_builtin() { local alt; alt=$(tr '_-' '-_' <<<"$1"); grep -qE "/($1|$alt)\.ko$" "$md/modules.builtin"; }
  declare -A seen=()
  add() {  # add PATH: dependencies first
    local p=$1 d deps=()
    [ -z "${seen[$p]:-}" ] || return 0
    seen[$p]=1
    read -r -a deps <<<"$(grep -E "^$p:" "$md/modules.dep" | cut -d: -f2)"
    for d in "${deps[@]}"; do add "$d"; done
    order+=("$p")
  }
  if [ -z "$KROOT" ]; then   # built kernel: no modules at all
    [ ${#EXTRA_MODULES[@]} -eq 0 ] || die 2 "ENVOY_SMC_VM_MODULES: the built kernel has no modules (build them in: tests/vm/kernel.config)"
    BOOT_MODULES=() OPTIONAL_MODULES=()
  fi
  for m in "${BOOT_MODULES[@]}" "${EXTRA_MODULES[@]}"; do
    p=$(modpath "$m")
    if [ -z "$p" ]; then is_builtin "$m" || die 1 "kernel $KVER has no module $m"; continue; fi
    add "$p"
  done
  local boot=("${order[@]}")
  for m in "${OPTIONAL_MODULES[@]}"; do
    p=$(modpath "$m")
    [ -z "$p" ] || add "$p"
  done
  # everything in "order" after the boot list goes into the initramfs only

  local ir
  ir=$(mktemp -d "$CACHE/initramfs.XXXXXX")
  mkdir -p "$ir"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,host,etc,lib/modules/"$KVER"}
  cp /bin/busybox "$ir/bin/busybox"
  cp "$SELF_DIR/init" "$ir/init"
  chmod 755 "$ir/init" "$ir/bin/busybox"
  for p in "${order[@]}"; do
    local out=$ir/lib/modules/$KVER/${p%.xz}
    out=${out%.zst}; out=${out%.gz}
    mkdir -p "$(dirname "$out")"
    case $p in
      *.xz) xz -dc "$md/$p" >"$out" ;;
      *.zst) zstd -qdc "$md/$p" >"$out" ;;
      *.gz) gzip -dc "$md/$p" >"$out" ;;
      *) cp "$md/$p" "$out" ;;
    esac
  done
  if [ -n "$KROOT" ]; then
    cp "$md/modules.builtin" "$md/modules.order" "$ir/lib/modules/$KVER/" 2>/dev/null || true
    [ ! -f "$md/modules.builtin.modinfo" ] || cp "$md/modules.builtin.modinfo" "$ir/lib/modules/$KVER/"
    depmod -b "$ir" "$KVER"
  else
    rmdir "$ir/lib/modules/$KVER"
  fi
  for p in "${boot[@]}"; do
    p=${p##*/}
    echo "${p%%.ko*}"
  done >"$ir/etc/boot-modules"
  mkdir -p "$CACHE/initramfs"
  (cd "$ir" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$ir"
  # keep the 4 newest images (other checkouts or module lists may be using theirs)
  find "$CACHE/initramfs" -maxdepth 1 -name '*.cpio.gz' -printf '%T@ %p\n' | sort -rn | tail -n +5 |
    cut -d' ' -f2- | while read -r old; do rm -f "$old"; done
}

prepare() {
  ensure_host_packages
  [ "$KERNEL_KIND" = stock ] || built_kernel   # build-kernel.sh takes its own lock
  # one preparer at a time per cache (several engineers / test jobs may start VMs at once)
  exec 9>"$CACHE/.lock"
  flock 9
  [ "$KERNEL_KIND" = built ] || fetch_kernel
  build_initramfs
  flock -u 9
  exec 9>&-
}

prepare
T_PREPARED=$(now)
msg "kernel $KVER, initramfs $(basename "$INITRD") (prepared in $(elapsed "$T_START" "$T_PREPARED") s)"
[ "$PREPARE_ONLY" = 0 ] || exit 0

# ---------------------------------------------------------------------------------------------
# shared directory (the VM's /tmp) and the run's control files in it
if [ -z "$SHARED" ]; then
  mkdir -p "$CACHE/runs"
  SHARED=$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$$
  # keep the 20 newest runs
  find "$CACHE/runs" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | head -n -20 |
    while read -r old; do rm -rf "${CACHE:?}/runs/$old"; done
  mkdir -p "$SHARED"
  ln -sfn "$(basename "$SHARED")" "$CACHE/runs/latest"
fi
mkdir -p "$SHARED"
SHARED=$(cd "$SHARED" && pwd)
CTL=$SHARED/.envoy-smc-vm
rm -rf "$CTL"
mkdir -p "$CTL"
cp "$SELF_DIR/guest.sh" "$CTL/guest.sh"
: >"$CTL/stdout"
: >"$CTL/stderr"
: >"$CTL/console.log"

# environment of COMMAND: a safe subset of ours (no tokens or secrets), --env additions, then the
# VM's own variables (set by guest.sh)
VM_ENV=()
while read -r name; do
  case $name in
    *TOKEN*|*SECRET*|*PASSWORD*|*CREDENTIAL*|*_KEY) continue ;;
    ENVOY_SMC_VM*) continue ;;   # this script's own settings; the VM sets its ENVOY_SMC_VM_*
    CARGO*|RUST*|ENVOY_SMC_*|LD_LIBRARY_PATH|PATH|HOME|USER|LOGNAME|LANG|LANGUAGE|LC_*|TERM|TZ) ;;
    NO_COLOR|CLICOLOR|CLICOLOR_FORCE|CI|PYTHONPATH|PYTHONUNBUFFERED|PYTHONDONTWRITEBYTECODE) ;;
    *) continue ;;
  esac
  VM_ENV+=("$name=${!name}")
done < <(compgen -e | sort)
for e in "${EXTRA_ENV[@]}"; do
  if [[ $e == *=* ]]; then VM_ENV+=("$e"); else VM_ENV+=("$e=${!e:-}"); fi
done

# pyenv shims are bash scripts that run pyenv on every call (about 25 s per python3 under TCG):
# in the VM, PATH names the selected version's bin directory instead
vm_path() {
  local parts=() out=() d real=
  IFS=: read -r -a parts <<<"$PATH"
  for d in "${parts[@]}"; do
    case $d in
      */.pyenv/shims|*/pyenv-virtualenv/shims)
        [ -n "$real" ] || real=$(pyenv which python3 2>/dev/null) || real=none
        [ "$real" = none ] || out+=("$(dirname "$real")") ;;
      *) out+=("$d") ;;
    esac
  done
  (IFS=:; echo "${out[*]}")
}
for i in "${!VM_ENV[@]}"; do
  [[ ${VM_ENV[$i]} != PATH=* ]] || VM_ENV[i]="PATH=$(vm_path)"
done

{
  echo "# written by tests/vm/run.sh for one VM run"
  printf 'VM_CMD=('; printf '%q ' "${CMD[@]}"; printf ')\n'
  printf 'VM_ENV=('; printf '%q ' "${VM_ENV[@]}"; printf ')\n'
  printf 'VM_CWD=%q\n' "$PWD"
  printf 'VM_TIMEOUT=%q\n' "$TIMEOUT"
  printf 'VM_UEID=%q\n' "$UEID"
  printf 'VM_SMCD_LOOPBACK=%q\n' "$SMCD_LOOPBACK"
  printf 'VM_KERNEL_KIND=%q\n' "$KERNEL_KIND"
  printf 'VM_ENVOY_SMC_BIN=%q\n' "$ENVOY_SMC_BIN"
  printf 'VM_HOST_SHARED=%q\n' "$SHARED"
  printf 'VM_REPO=%q\n' "$REPO"
} >"$CTL/config"
# The shared directory is mounted on the VM's /tmp, over the host's /tmp: name the entries of the
# host's /tmp the run needs (a checkout, cache or binary there), which the VM's init binds back.
for p in "$REPO" "$PWD" "$CACHE" "$ENVOY_SMC_BIN"; do
  case $p in /tmp/?*) r=${p#/tmp/}; echo "${r%%/*}" ;; esac
done | sort -u >"$CTL/host-tmp"

# ---------------------------------------------------------------------------------------------
# The VM reads this checkout's binaries over 9p with cache=loose, which never revalidates: a file
# replaced on the host during the boot (a cargo build in this checkout) is then read as a mix of
# the pages it cached before and the new file's, and such a binary fails in ways no source
# explains (once every `envoy-smc doctor` of a boot aborted with "unsafe precondition(s)
# violated: usize::unchecked_mul cannot overflow"). So hold cargo's own build-directory locks,
# shared, while the VM runs: cargo in this checkout waits ("Blocking waiting for file lock on
# artifact directory"); and fingerprint the binaries to catch anything else that replaces them.
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
for lock in "$TARGET_DIR"/*/.cargo-lock; do
  [ -f "$lock" ] || continue
  exec {fd}<"$lock"
  if ! flock -s -n "$fd"; then
    msg "waiting for the cargo build running in this checkout ($lock)"
    flock -s -w 1800 "$fd" || die 1 "a cargo build in this checkout still holds $lock after 30 min"
  fi
  BUILD_LOCKS+=("$fd")
done
# The checkout's binaries and every file COMMAND names (suite.sh passes DIR:EXE), and their
# inode, size and mtime.
BINARIES=$(
  {
    find "$TARGET_DIR" -mindepth 2 -maxdepth 2 -type f -perm -u+x 2>/dev/null || true
    for f in "$ENVOY_SMC_BIN" "${CMD[@]}"; do
      for a in "$f" "${f##*:}"; do [ ! -f "$a" ] || printf '%s\n' "$a"; done
    done
  } | sort -u
)
fingerprint() {
  local f
  while IFS= read -r f; do
    [ -z "$f" ] || stat -c '%i %s %Y %n' "$f" 2>/dev/null || echo "gone - - $f"
  done <<<"$BINARIES"
}
BINARIES_BEFORE=$(fingerprint)

# ---------------------------------------------------------------------------------------------
# boot
PIDS=()
QPID=
# shellcheck disable=SC2317  # called from the traps
cleanup() {
  local p
  [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

APPEND="envoy_smc_vm=1 console=ttyS0 quiet loglevel=4 panic=-1 oops=panic mitigations=off ${ENVOY_SMC_VM_APPEND:-}"
# shellcheck disable=SC2054  # commas belong to qemu's option syntax
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -m "$MEM" -smp "$SMP" -nographic -no-reboot -nic none
  -kernel "$VMLINUZ" -initrd "$INITRD" -append "$APPEND"
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap
  -virtfs "local,path=$SHARED,mount_tag=shared,security_model=none")

# A boot that dies before the guest's init script starts (no "$CTL/times" yet) never ran any of
# the command. Under TCG the Debian 6.12 kernel sometimes oopses in a late initcall, on an int3
# left by live code patching ("Oops: int3", RIP sched_clock_cpu+0x9, then "Fatal exception in
# interrupt"): seen once in a CI run, and on the first boot of a loaded host. Such a boot is
# tried again, at most BOOT_ATTEMPTS times in all, and said so; a failure after the guest
# started is never retried.
BOOT_ATTEMPTS=${ENVOY_SMC_VM_BOOT_ATTEMPTS:-4}
[[ $BOOT_ATTEMPTS =~ ^[1-9]$ ]] || die 2 "ENVOY_SMC_VM_BOOT_ATTEMPTS must be 1..9, got '$BOOT_ATTEMPTS'"
T_BOOT=$(now)
attempt=1
while :; do
  msg "booting (timeout ${TIMEOUT} s); shared dir: $SHARED"
  timeout --kill-after=10 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$CTL/console.log" 2>&1 &
  QPID=$!
  tail -n +1 -s 0.2 --pid="$QPID" -f "$CTL/stdout" &
  PIDS+=($!)
  tail -n +1 -s 0.2 --pid="$QPID" -f "$CTL/stderr" >&2 &
  PIDS+=($!)
  if [ "$CONSOLE" = 1 ]; then
    tail -n +1 -s 0.2 --pid="$QPID" -f "$CTL/console.log" | sed -u 's/^/vm console: /' >&2 &
    PIDS+=($!)
  fi
  QRC=0
  wait "$QPID" || QRC=$?
  QPID=
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  died_before_guest=0
  if [ ! -f "$CTL/rc" ] && [ ! -f "$CTL/times" ] && [ ! -s "$CTL/setup.log" ]; then
    case $QRC in 124|125|126|127|137) ;; *) died_before_guest=1 ;; esac
  fi
  [ "$died_before_guest" = 1 ] && [ "$attempt" -lt "$BOOT_ATTEMPTS" ] || break
  cp "$CTL/console.log" "$CTL/console.boot-$attempt.log"
  printf 'vm: warning: the kernel died during boot, before the guest ran anything (attempt %s of %s; console kept in %s); booting again\n' \
    "$attempt" "$BOOT_ATTEMPTS" "$CTL/console.boot-$attempt.log" >&2
  tr -d '\r' <"$CTL/console.log" | grep -m 3 -E 'Kernel panic|RIP:|BUG:|Oops' | sed 's/^/  | /' >&2 || true
  attempt=$((attempt + 1))
done
T_END=$(now)
for fd in "${BUILD_LOCKS[@]}"; do exec {fd}<&-; done
replaced=$({ diff <(echo "$BINARIES_BEFORE") <(fingerprint) || true; } |
  sed -n 's/^> [^ ]* [^ ]* [^ ]* //p')
if [ -n "$replaced" ]; then
  printf 'vm: error: replaced on the host while the VM ran, so the VM may have run a mix of the old and the new file (9p cache=loose): %s; this run does not count: run it again with no build in this checkout meanwhile\n' \
    "$(echo "$replaced" | tr '\n' ' ')" >&2
  exit 3
fi

# ---------------------------------------------------------------------------------------------
# result
console_tail() {
  echo "vm: last lines of the VM console ($CTL/console.log):" >&2
  tr -d '\r' <"$CTL/console.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | grep -v '^$' |
    tail -n "${1:-40}" | sed 's/^/  | /' >&2
}
kernel_warnings() {
  [ -s "$CTL/kernel-warnings" ] || return 0
  echo "vm: kernel warnings since setup ($CTL/kernel-warnings, full log: $CTL/dmesg):" >&2
  tail -n 60 "$CTL/kernel-warnings" | sed 's/^/  | /' >&2
}

if [ ! -f "$CTL/rc" ]; then
  if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    printf 'vm: error: the VM did not finish within the timeout of %s s\n' "$TIMEOUT" >&2
    console_tail 60
    exit 124
  fi
  case $QRC in
    125|126|127) printf 'vm: error: qemu-system-x86_64 could not be started (status %s)\n' "$QRC" >&2 ;;
    *) printf 'vm: error: the VM ended without running the command to the end (qemu exit status %s; boots tried: %s)\n' "$QRC" "$attempt" >&2 ;;
  esac
  [ ! -s "$CTL/setup.log" ] || { echo "vm: guest setup log:" >&2; sed 's/^/  | /' "$CTL/setup.log" >&2; }
  console_tail 40
  exit 125
fi
RC=$(cat "$CTL/rc")
[[ $RC =~ ^[0-9]+$ ]] || RC=125

timing=
GUEST_START='' SETUP_DONE='' CMD_DONE=''
# shellcheck disable=SC1091
[ ! -f "$CTL/times" ] || . "$CTL/times"   # GUEST_START SETUP_DONE CMD_DONE (guest uptime, s)
if [ -n "$CMD_DONE" ] && [ -n "$SETUP_DONE" ]; then
  timing=$(awk -v g="$GUEST_START" -v s="$SETUP_DONE" -v c="$CMD_DONE" \
    'BEGIN { printf "boot %.1f s, setup %.1f s, command %.1f s, ", g, s - g, c - s }')
fi
if [ -f "$CTL/timed-out" ]; then
  printf 'vm: error: the command did not finish within the timeout of %s s (killed)\n' "$TIMEOUT" >&2
  [ ! -s "$CTL/blocked-tasks" ] || { echo "vm: tasks still blocked:" >&2; sed 's/^/  | /' "$CTL/blocked-tasks" >&2; }
  kernel_warnings
  RC=124
elif [ "$RC" = 125 ] && [ -f "$CTL/setup-failed" ]; then
  echo "vm: error: the VM's setup failed:" >&2
  sed 's/^/  | /' "$CTL/setup.log" >&2
  kernel_warnings
elif [ "$RC" != 0 ]; then
  kernel_warnings
elif [ -s "$CTL/kernel-warnings" ]; then
  msg "$(wc -l <"$CTL/kernel-warnings") kernel warning lines, see $CTL/kernel-warnings"
fi
msg "exit status $RC; ${timing}total $(elapsed "$T_BOOT" "$T_END") s in the VM, $(elapsed "$T_START" "$T_END") s overall; shared dir: $SHARED"
exit "$RC"
