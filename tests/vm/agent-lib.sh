# Shared by tests/vm/agent-e2e.sh and bench/agent.sh, sourced inside the VM (root) with $work
# (a directory uid 1337 can read), $repo, $cg (the cgroup v2 mount) and $ENVOY_BIN set: the
# Istio-style redirect, the client sidecar's configuration, and "pods" for the node agent.

# shellcheck source=tests/vm/redirect-lib.sh
source "$repo/tests/vm/redirect-lib.sh"

# cgroup v2 mounted (pods are keyed by their cgroup id), the redirect in place.
agent_vm_setup() {
  if ! grep -q "^cgroup2 $cg " /proc/mounts; then
    mount -t cgroup2 cgroup2 "$cg"
  fi
  istio_redirect
}

# The client sidecar: the clusters of envoy-config/envoy/client.yaml, one request per upstream
# connection (so that every request shows what a NEW connection gets).
client_config() { # admin-port listener-port
  python3 "$repo/scripts/envoy-bootstrap.py" agent-client admin="$1" listen="$2"
}

# A pod: its own cgroup and mount namespace, the annotations file where Istio's sidecar has it
# (/etc/istio/pod/annotations, the downward API's layout: annotations -> ..data/annotations,
# ..data -> ..<timestamp>), then a uid-1337 shell (pilot-agent's place) that starts Envoy once
# the driver says so (after the agent has seen the pod, as pilot-agent precedes Envoy).
start_pod() { # name annotations-text envoy-config base-id [NAME=VALUE environment...]
  local name=$1
  local envs=("${@:5}")
  mkdir -p "$cg/agent-e2e/$name"
  printf '%s\n' "$2" >"$work/annotations-$name"
  POD_ENV="${envs[*]}" unshare -m --propagation private bash -c '
    set -e
    echo $$ >'"$cg/agent-e2e/$name"'/cgroup.procs
    orig='"$work/etc-$name"'
    mkdir -p "$orig" && mount --bind /etc "$orig"
    mount -t tmpfs -o mode=755 pod-etc /etc
    # what Envoy and the resolver read from /etc (stat over 9p is slow: not all of /etc)
    for f in hosts resolv.conf nsswitch.conf host.conf gai.conf passwd group localtime ssl; do
      if [ -e "$orig/$f" ]; then ln -s "$orig/$f" /etc/; fi
    done
    mkdir -p /etc/istio/pod/..2026_11_29_00_00_00.1
    cp '"$work/annotations-$name"' /etc/istio/pod/..2026_11_29_00_00_00.1/annotations
    ln -s ..2026_11_29_00_00_00.1 /etc/istio/pod/..data
    ln -s ..data/annotations /etc/istio/pod/annotations
    # the pod image'"'"'s Envoy: the pip package lives under /root (0700), which uid 1337 cannot walk
    bin='"$work/bin-$name"'
    mkdir -p "$bin" && mount --bind "$(dirname "$ENVOY_BIN")" "$bin"
    exec setpriv --reuid 1337 --regid 1337 --clear-groups bash -c "
      while [ ! -e '"$work/go-$name"' ]; do sleep 0.05; done
      exec env \$POD_ENV $bin/envoy -c '"$3"' --disable-hot-restart --base-id '"$4"' --concurrency 2 --log-level warn"
  ' >"$work/$name.log" 2>&1 &
  echo $!
}
