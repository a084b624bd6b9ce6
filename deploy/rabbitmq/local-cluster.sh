#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for tests, beside the machine's own broker:
# nodes strangler-1..3@localhost on AMQP ports 5681..5683 (distribution 25681..25683),
# their data under $STRANGLER_CLUSTER_DIR (default /tmp/strangler-rabbitmq-cluster).
#
#   deploy/rabbitmq/local-cluster.sh start    start the nodes and join them (idempotent)
#   deploy/rabbitmq/local-cluster.sh stop     stop the nodes (data kept)
#   deploy/rabbitmq/local-cluster.sh destroy  stop the nodes and delete their data
#   deploy/rabbitmq/local-cluster.sh status   one line per node: running or not
#   deploy/rabbitmq/local-cluster.sh stop-node N | start-node N
#
# Needs Debian's rabbitmq-server. Run as root (Debian's wrappers run the nodes and
# rabbitmqctl as the broker's user, with its Erlang cookie) or as that user.
set -euo pipefail

DIR="${STRANGLER_CLUSTER_DIR:-/tmp/strangler-rabbitmq-cluster}"
NODES=(1 2 3)
RUN_AS=rabbitmq

log() { printf 'local-cluster: %s\n' "$*"; }
node_name() { printf 'strangler-%s@localhost' "$1"; }
amqp_port() { printf '%s' "$((5680 + $1))"; }

node_env() {
  local n=$1 base="$DIR/$1"
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME="$(node_name "$n")"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT="$(amqp_port "$n")"
  export RABBITMQ_DIST_PORT=$((25680 + n))
  export RABBITMQ_MNESIA_BASE="$base/mnesia"
  export RABBITMQ_LOG_BASE="$base/log"
  export RABBITMQ_PID_FILE="$base/pid"
  export RABBITMQ_CONFIG_FILE="$base/rabbitmq"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$base/advanced.config"
}

ctl() { local n=$1; shift; rabbitmqctl -q -n "$(node_name "$n")" "$@"; }

running() { ctl "$1" await_startup --timeout 1 >/dev/null 2>&1; }

# The AMQP port answers only once a node has booted: a cheap check (rabbitmqctl starts an
# Erlang VM each time) before the real one.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$(amqp_port "$1")") 2>/dev/null; }

launch_node() {
  local n=$1
  if port_open "$n" && running "$n"; then return 0; fi
  mkdir -p "$DIR/$n/mnesia" "$DIR/$n/log"
  printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users = none\n' "$(amqp_port "$n")" \
    >"$DIR/$n/rabbitmq.conf"
  printf '[].\n' >"$DIR/$n/enabled_plugins"
  printf '[].\n' >"$DIR/$n/advanced.config"
  chown -R "$RUN_AS" "$DIR/$n" 2>/dev/null || true
  (node_env "$n" && rabbitmq-server -detached) >/dev/null 2>&1
}

# Nodes of a cluster that went down together (killed, a machine restarted) each wait on
# boot for the peers they last saw, so they are launched together and awaited after.
await_node() {
  local n=$1
  for _ in $(seq 600); do port_open "$n" && break; sleep 0.5; done
  ctl "$n" await_startup --timeout 60 >/dev/null 2>&1 && return 0
  log "node $(node_name "$n") did not start (logs in $DIR/$n/log)"
  tail -n 20 "$DIR/$n/log/"*.log 2>/dev/null >&2 || true
  return 1
}

joined() {
  ctl 1 cluster_status --formatter json 2>/dev/null | grep -o "\"$(node_name "$1")\"" >/dev/null &&
    ctl "$1" cluster_status --formatter json 2>/dev/null | grep -o "\"$(node_name 1)\"" >/dev/null
}

join_node() {
  local n=$1
  joined "$n" && return 0
  ctl "$n" stop_app
  ctl "$n" reset
  ctl "$n" join_cluster "$(node_name 1)"
  ctl "$n" start_app
  ctl "$n" await_startup --timeout 60
}

case "${1:-}" in
  start)
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    for n in "${NODES[@]}"; do launch_node "$n"; done
    for n in "${NODES[@]}"; do await_node "$n"; done
    for n in 2 3; do join_node "$n"; done
    log "running: $(for n in "${NODES[@]}"; do printf 'amqp://guest:guest@127.0.0.1:%s ' "$(amqp_port "$n")"; done)"
    ;;
  stop)
    for n in "${NODES[@]}"; do running "$n" && ctl "$n" stop || true; done
    ;;
  destroy)
    "$0" stop
    rm -rf "$DIR"
    ;;
  status)
    for n in "${NODES[@]}"; do
      if running "$n"; then echo "$(node_name "$n") running"; else echo "$(node_name "$n") stopped"; fi
    done
    ;;
  stop-node)
    ctl "${2:?node number}" stop_app
    ;;
  start-node)
    ctl "${2:?node number}" start_app
    ctl "$2" await_startup --timeout 300  # a loaded machine starts a node slowly
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
