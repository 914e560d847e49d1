#!/usr/bin/env bash
# A Redis Cluster on loopback: three masters and three replicas on 127.0.0.1:7001-7006, beside (never
# instead of) the machine's Redis on 6379.
#
#   deploy/cluster/redis-cluster.sh up        start the nodes that are not running; create the cluster once
#   deploy/cluster/redis-cluster.sh status    cluster_state and one line per node (role, slots)
#   deploy/cluster/redis-cluster.sh down      stop every node and delete the cluster's data
#   deploy/cluster/redis-cluster.sh kill PORT SIGKILL one node (failover tests); `up` restarts it
#
# Data under $SLUICE_CLUSTER_DIR/redis/PORT (default /var/tmp/sluice-cluster). No persistence (no RDB,
# no AOF): a restarted node comes back empty and resyncs from its master. cluster-node-timeout is 2 s
# (the default is 15 s): a killed master's replica is promoted within a few seconds, whatever the age of
# its data (cluster-replica-validity-factor 0: availability first). `up` returns once every replica has
# synced with its master.
set -euo pipefail

BASE="${SLUICE_CLUSTER_DIR:-/var/tmp/sluice-cluster}/redis"
PORTS=(7001 7002 7003 7004 7005 7006)
NODE_TIMEOUT_MS="${SLUICE_REDIS_NODE_TIMEOUT_MS:-2000}"

cli() { local p="$1"; shift; redis-cli -h 127.0.0.1 -p "$p" "$@"; }

pid_of() {
  local f="$BASE/$1/redis.pid"
  [[ -s "$f" ]] || return 1
  local pid; pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

answers() { [[ "$(cli "$1" ping 2>/dev/null)" == PONG ]]; }

start_node() {
  local p="$1" d="$BASE/$1"
  mkdir -p "$d"
  redis-server --port "$p" --bind 127.0.0.1 --daemonize yes --dir "$d" --pidfile "$d/redis.pid" \
    --logfile "$d/redis.log" --cluster-enabled yes --cluster-config-file "$d/nodes.conf" \
    --cluster-node-timeout "$NODE_TIMEOUT_MS" --cluster-replica-validity-factor 0 \
    --save '' --appendonly no --maxmemory-policy noeviction
}

up() {
  local p started=0
  for p in "${PORTS[@]}"; do
    if ! pid_of "$p" >/dev/null; then
      if answers "$p"; then
        echo "port $p is taken by another Redis" >&2
        exit 1
      fi
      start_node "$p"
      started=$((started + 1))
    fi
  done
  local i
  for p in "${PORTS[@]}"; do
    for ((i = 0; i < 100; i++)); do answers "$p" && break; sleep 0.1; done
    answers "$p" || { echo "redis on $p does not answer" >&2; exit 1; }
  done
  if [[ "$(cli 7001 cluster info | tr -d '\r' | grep '^cluster_known_nodes:')" != "cluster_known_nodes:6" ]]; then
    local addrs=()
    for p in "${PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$BASE/create.out" 2>&1 \
      || { cat "$BASE/create.out" >&2; exit 1; }
  fi
  for ((i = 0; i < 300; i++)); do
    ok=1
    for p in "${PORTS[@]}"; do
      cli "$p" cluster info | tr -d '\r' | grep -x 'cluster_state:ok' >/dev/null || ok=0
    done
    [[ "$(masters)" == 3 && "$(replicas)" == 3 ]] || ok=0  # a fresh replica shows as a master at first
    for p in "${PORTS[@]}"; do  # every replica synced: one that never was cannot take over
      if cli "$p" role | head -1 | grep -x slave >/dev/null; then
        cli "$p" info replication | tr -d '\r' | grep -x 'master_link_status:up' >/dev/null || ok=0
      fi
    done
    [[ $ok == 1 ]] && break
    sleep 0.1
  done
  [[ $ok == 1 ]] || { echo "the cluster did not reach cluster_state:ok" >&2; status >&2 || true; exit 1; }
  echo "redis cluster up ($started node(s) started): 127.0.0.1:7001-7006, $(masters) masters, $(replicas) replicas"
}

masters() { cli 7001 cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && $9 != ""' | wc -l | tr -d ' '; }
replicas() { cli 7001 cluster nodes | awk '$3 ~ /slave/ && $3 !~ /fail/' | wc -l | tr -d ' '; }

status() {
  local p pid any=0
  for p in "${PORTS[@]}"; do
    if pid="$(pid_of "$p")" && answers "$p"; then
      any=1
      local role; role="$(cli "$p" role | head -1)"
      local state; state="$(cli "$p" cluster info | tr -d '\r' | grep '^cluster_state:' | cut -d: -f2)"
      local slots; slots="$(cli "$p" cluster nodes | awk '$3 ~ /myself/ {s=""; for (i = 9; i <= NF; i++) s = s " " $i; print s}')"
      echo "127.0.0.1:$p running pid=$pid role=$role cluster_state=$state slots=[${slots# }]"
    else
      echo "127.0.0.1:$p stopped"
    fi
  done
  [[ $any == 1 ]]
}

down() {
  local p pid
  for p in "${PORTS[@]}"; do
    if pid="$(pid_of "$p")"; then
      cli "$p" shutdown nosave >/dev/null 2>&1 || true
      local i
      for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$BASE"
  echo "redis cluster down"
}

kill_node() {
  local p="${1:?kill PORT: which node (7001-7006)}" pid
  [[ " ${PORTS[*]} " == *" $p "* ]] || { echo "no node on $p: use 7001-7006" >&2; exit 2; }
  if pid="$(pid_of "$p")"; then
    kill -9 "$pid"
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "killed 127.0.0.1:$p (pid $pid)"
  else
    echo "127.0.0.1:$p is not running"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kill) kill_node "${2:-}" ;;
  *) echo "usage: $0 up|down|status|kill PORT" >&2; exit 2 ;;
esac
