# Shared by tests/vm/agent-e2e.sh and bench/agent.sh, sourced inside the VM (root) with $work
# (a directory uid 1337 can read), $cg (the cgroup v2 mount), $ENVOY_BIN and $ipt set: the
# Istio-style redirect, the client sidecar's configuration, and "pods" for the node agent.

# cgroup v2 mounted (pods are keyed by their cgroup id), the redirect in place.
agent_vm_setup() {
  if ! grep -q "^cgroup2 $cg " /proc/mounts; then
    mount -t cgroup2 cgroup2 "$cg"
  fi
  # Istio-style redirect (as in scripts/demo.sh and adaptive-e2e.sh).
  $ipt -t raw -A OUTPUT -o "$ENVOY_SMC_VM_CLIENT_NETDEV" -j CT --notrack
  $ipt -t raw -A PREROUTING -i "$ENVOY_SMC_VM_CLIENT_NETDEV" -j CT --notrack
  $ipt -t nat -A PREROUTING -i "$ENVOY_SMC_VM_SERVER_NETDEV" -p tcp -d 10.9.0.2 --dport 8080 \
    -j DNAT --to-destination 10.9.0.2:15006
}

# The client sidecar: the clusters of envoy-config/envoy/client.yaml, one request per upstream
# connection (so that every request shows what a NEW connection gets).
client_config() { # admin-port listener-port
  cat <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $1}}
static_resources:
  listeners:
  - name: app_outbound
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: app_outbound
          route_config:
            virtual_hosts:
            - name: server
              domains: ["*"]
              routes:
              - match: {prefix: /tcp}
                route: {cluster: server-tcp, timeout: 0s}
              - match: {prefix: /}
                route: {cluster: server, timeout: 0s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
EOF
  for c in server server-tcp; do
    cat <<EOF
  - name: $c
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {max_requests_per_connection: 1}
        explicit_http_config: {http_protocol_options: {}}
    upstream_bind_config:
      socket_options:
      - {description: "envoy-smc: SMC on (mesh switch)", level: 1, name: 18, int_value: 1, state: STATE_PREBIND}
EOF
    [ $c = server-tcp ] &&
      echo '      - {description: "envoy-smc: keep on TCP", level: 6, name: 30, int_value: 0, state: STATE_PREBIND}'
    cat <<EOF
    load_assignment:
      cluster_name: $c
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.9.0.2, port_value: 8080}}}
EOF
  done
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
