# Sourced by tests/vm/run.sh and tests/vm/build-kernel.sh: Debian packages fetched through a
# private apt configuration (nothing of the host's apt state is read or changed).

# The Debian mirror: ENVOY_SMC_VM_MIRROR, else the host's first Debian source, else deb.debian.org.
debian_mirror() {
  if [ -n "${ENVOY_SMC_VM_MIRROR:-}" ]; then echo "${ENVOY_SMC_VM_MIRROR%/}"; return; fi
  local m
  m=$( (cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true) |
    grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?([[:space:]]|$)' | tr -d '[:space:]' | head -1 || true)
  m=${m%/}
  echo "${m:-http://deb.debian.org/debian}"
}

# debian_apt DIR SUITE MIRROR KEYRING: an apt configuration in DIR for SUITE main (amd64) at
# MIRROR, its options in the array APT_OPTS, and SUITE's package list fetched. Returns 1 when the
# package list could not be fetched. Then: apt-get "${APT_OPTS[@]}" download PKG (in the target
# directory), apt-cache "${APT_OPTS[@]}" pkgnames PREFIX.
debian_apt() {
  local dir=$1 suite=$2 mirror=$3 keyring=$4
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/etc/preferences.d"
  : >"$dir/status"
  echo "deb [signed-by=$keyring] $mirror $suite main" >"$dir/sources.list"
  APT_OPTS=(-o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::Etc::Preferences="$dir/etc/preferences" -o Dir::Etc::PreferencesParts="$dir/etc/preferences.d"
    -o Dir::State::Lists="$dir/lists" -o Dir::State::status="$dir/status" -o Dir::Cache="$dir/cache"
    -o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o Acquire::Languages=none
    -o APT::Sandbox::User=root -o Debug::NoLocking=1
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false)
  rm -f "$dir"/lists/*Packages*
  apt-get "${APT_OPTS[@]}" -qq update >&2 || true
  compgen -G "$dir/lists/*_dists_${suite}_main_binary-amd64_Packages*" >/dev/null
}
