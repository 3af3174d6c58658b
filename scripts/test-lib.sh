# Sourced by the shell tests and benchmarks (tests/vm/*.sh, bench/*.sh, preload/bench/*.sh):
# waiting on a condition with a deadline, starting Envoy and waiting until it is live. The
# bootstraps themselves come from scripts/envoy-bootstrap.py.
#
# Every wait has a deadline and, on timeout, says on stderr what it waited for and returns 1.

# nap SECONDS: sleep without spawning a process (read -t on a pipe nobody writes; an exec costs
# 0.1-0.5 s in the VM under load).
exec {TEST_LIB_NAP_FD}<> <(:)
nap() { read -r -t "$1" -u "$TEST_LIB_NAP_FD" _ || true; }

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1-0.5 s until it succeeds.
wait_until() {
  local secs=$1 what=$2 pause=0.1
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${secs} s waiting for $what" >&2
      return 1
    fi
    nap "$pause"
    pause=0.5
  done
}

# envoy_live ADMIN_PORT [HOST]: the Envoy admin's /ready says LIVE (bash's /dev/tcp: no curl).
envoy_live() {
  local body
  body=$(exec 2>/dev/null 3<>"/dev/tcp/${2:-127.0.0.1}/$1" &&
    printf 'GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n' >&3 && cat <&3) &&
    [[ $body == *LIVE* ]]
}

# envoy_start LOG BOOTSTRAP [NAME=VALUE...] [-- ENVOY_OPTION...]: starts $ENVOY_BIN in the
# background with that environment, stdout and stderr to LOG; its pid in ENVOY_PID.
envoy_start() {
  local log=$1 cfg=$2 envs=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  env "${envs[@]}" "$ENVOY_BIN" -c "$cfg" "$@" </dev/null >"$log" 2>&1 &
  ENVOY_PID=$!
}

# envoy_wait_live SECONDS NAME PID ADMIN_PORT [LOG]: until that Envoy's admin says LIVE; fails
# at once (with the log's tail) when the process has exited.
envoy_wait_live() {
  local secs=$1 name=$2 pid=$3 port=$4 log=${5:-}
  local deadline=$((SECONDS + secs))
  until envoy_live "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "Envoy $name (pid $pid) exited before it was live${log:+: $(tail -n 20 "$log")}" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${secs} s waiting for Envoy $name (pid $pid) to say LIVE on" \
        "127.0.0.1:$port${log:+: $(tail -n 20 "$log")}" >&2
      return 1
    fi
    nap 0.2
  done
}
