#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on loopback, beside (never instead of) the machine's default node.
#
#   deploy/cluster/rabbitmq-cluster.sh up        boot the nodes that are not running, join them (idempotent)
#   deploy/cluster/rabbitmq-cluster.sh status    one line per node: running or not, its ports, its peers
#   deploy/cluster/rabbitmq-cluster.sh down      stop every node and delete the cluster's data
#   deploy/cluster/rabbitmq-cluster.sh kill N    SIGKILL node N (1-3), for failover tests; `up` restarts it
#
# Node N: name sluice-cN@localhost, AMQP 127.0.0.1:570N (guest/guest), Erlang distribution port 2570N,
# management HTTP API 127.0.0.1:1570N (guest/guest; sluice itself reads queues over AMQP: the API is for
# what reads a cluster over HTTP, KEDA's RabbitMQ scaler among them, and for a person's browser), data and
# logs under $SLUICE_CLUSTER_DIR/rabbit/cN (default /var/tmp/sluice-cluster). The Erlang cookie is the
# machine's (/var/lib/rabbitmq): the nodes are joined to each other only, never to rabbit@localhost.
set -euo pipefail

BASE="${SLUICE_CLUSTER_DIR:-/var/tmp/sluice-cluster}/rabbit"
NODES=(1 2 3)
BOOT_TIMEOUT="${SLUICE_CLUSTER_BOOT_TIMEOUT:-180}"

node_name() { echo "sluice-c$1@localhost"; }
node_dir() { echo "$BASE/c$1"; }
amqp_port() { echo "570$1"; }
dist_port() { echo "2570$1"; }
http_port() { echo "1570$1"; }

node_env() {  # the variables rabbitmq-server and rabbitmqctl need for node $1
  local d; d="$(node_dir "$1")"
  export RABBITMQ_NODENAME="$(node_name "$1")"
  export RABBITMQ_DIST_PORT="$(dist_port "$1")"
  export RABBITMQ_MNESIA_BASE="$d/mnesia"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/node.pid"
  export RABBITMQ_CONFIG_FILE="$d/node.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
}

ctl() {  # ctl N ARGS...: rabbitmqctl on node N
  local n="$1"; shift
  (node_env "$n" && rabbitmqctl -q -n "$(node_name "$n")" "$@")
}

pid_of() {  # the node's OS pid if its beam process is alive
  local f; f="$(node_dir "$1")/node.pid"
  [[ -s "$f" ]] || return 1
  local pid; pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

serving() {  # the AMQP port answers
  (exec 3<>"/dev/tcp/127.0.0.1/$(amqp_port "$1")") 2>/dev/null
}

http_serving() {  # the management API's port answers
  (exec 3<>"/dev/tcp/127.0.0.1/$(http_port "$1")") 2>/dev/null
}

start_node() {
  local n="$1" d; d="$(node_dir "$n")"
  mkdir -p "$d/mnesia" "$d/log"
  # collect_statistics_interval: the API's message counts are at most 1 s old (the default is 5 s)
  printf '%s\n' "listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")" "loopback_users = none" \
    "management.tcp.ip = 127.0.0.1" "management.tcp.port = $(http_port "$n")" \
    "collect_statistics_interval = 1000" >"$d/node.conf"
  printf '[rabbitmq_management].\n' >"$d/enabled_plugins"
  rm -f "$d/node.pid"
  chown -R rabbitmq:rabbitmq "$BASE"
  (node_env "$n" && exec setsid rabbitmq-server >>"$d/server.out" 2>&1 </dev/null &)
}

wait_node() {
  local n="$1"
  ctl "$n" wait "$(node_dir "$n")/node.pid" --timeout "$BOOT_TIMEOUT" >/dev/null
  local i
  for ((i = 0; i < BOOT_TIMEOUT * 10; i++)); do
    serving "$n" && return 0
    sleep 0.1
  done
  echo "node $(node_name "$n") does not listen on $(amqp_port "$n")" >&2
  return 1
}

members() {  # the cluster's disk nodes as node N sees them, one a line
  ctl "$1" cluster_status --formatter json | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["disk_nodes"]))'
}

running_members() {
  ctl "$1" cluster_status --formatter json | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["running_nodes"]))'
}

up() {
  local n started=()
  for n in "${NODES[@]}"; do
    if ! pid_of "$n" >/dev/null; then
      if serving "$n"; then
        echo "port $(amqp_port "$n") is taken by something else than $(node_name "$n")" >&2
        exit 1
      fi
      start_node "$n"
      started+=("$n")
    fi
  done
  for n in "${NODES[@]}"; do wait_node "$n"; done
  local first; first="$(node_name 1)"
  for n in "${NODES[@]:1}"; do
    if ! members "$n" | grep -x "$first" >/dev/null; then
      {
        ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$first" && ctl "$n" start_app
      } >>"$(node_dir "$n")/join.out" 2>&1 || { cat "$(node_dir "$n")/join.out" >&2; exit 1; }
      wait_node "$n"
    fi
  done
  for n in "${NODES[@]}"; do ctl "$n" await_startup --timeout "$BOOT_TIMEOUT" >/dev/null; done
  local i
  for n in "${NODES[@]}"; do
    for ((i = 0; i < BOOT_TIMEOUT * 10; i++)); do http_serving "$n" && break; sleep 0.1; done
    http_serving "$n" || { echo "node $(node_name "$n") does not listen on $(http_port "$n")" >&2; exit 1; }
  done
  echo "rabbitmq cluster up (${#started[@]} node(s) started): $(running_members 1 | sort | tr '\n' ' ')"
}

status() {
  local n pid any=0
  for n in "${NODES[@]}"; do
    if pid="$(pid_of "$n")"; then
      any=1
      local state=booting
      serving "$n" && state=running
      local peers; peers="$(running_members "$n" 2>/dev/null | sort | tr '\n' ' ' || true)"
      echo "$(node_name "$n") $state pid=$pid amqp=127.0.0.1:$(amqp_port "$n") dist=$(dist_port "$n") http=127.0.0.1:$(http_port "$n") running_nodes=[${peers% }]"
    else
      echo "$(node_name "$n") stopped amqp=127.0.0.1:$(amqp_port "$n") dist=$(dist_port "$n") http=127.0.0.1:$(http_port "$n")"
    fi
  done
  [[ $any == 1 ]]
}

down() {
  local n pid
  for n in "${NODES[@]}"; do
    if pid="$(pid_of "$n")"; then
      ctl "$n" stop --timeout 60 >/dev/null 2>&1 || true
      local i
      for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$BASE"
  echo "rabbitmq cluster down"
}

kill_node() {
  local n="${1:?kill N: which node (1-3)}" pid
  [[ " ${NODES[*]} " == *" $n "* ]] || { echo "no node $n: use 1-3" >&2; exit 2; }
  if pid="$(pid_of "$n")"; then
    kill -9 "$pid"
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "killed $(node_name "$n") (pid $pid)"
  else
    echo "$(node_name "$n") is not running"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kill) kill_node "${2:-}" ;;
  *) echo "usage: $0 up|down|status|kill N" >&2; exit 2 ;;
esac
