#!/usr/bin/env bash
# A second local PostgreSQL cluster with wal_level=logical, for log-based capture
# (`strangler bridge run --engine debezium`), beside the machine's own cluster on 5432,
# which is neither restarted nor reconfigured: Debian cluster "logical" on port 5433.
#
#   deploy/postgres/logical-cluster.sh start    create it if missing, start it (idempotent)
#   deploy/postgres/logical-cluster.sh stop     stop it (data kept)
#   deploy/postgres/logical-cluster.sh status   one line: running or not
#
# Trust authentication for 127.0.0.1 and the local socket, replication included (a test
# and development cluster). Needs Debian's postgresql-common (pg_createcluster,
# pg_ctlcluster); run as root or as postgres. The version is the newest installed unless
# STRANGLER_PG_VERSION names one; the port is STRANGLER_PG_LOGICAL_PORT (default 5433).
set -euo pipefail

NAME=logical
PORT="${STRANGLER_PG_LOGICAL_PORT:-5433}"
VERSION="${STRANGLER_PG_VERSION:-$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n1)}"

log() { printf 'logical-cluster: %s\n' "$*"; }

[ -n "$VERSION" ] || { log "PostgreSQL is not installed (no /usr/lib/postgresql/<version>)"; exit 1; }
command -v pg_ctlcluster >/dev/null || { log "pg_ctlcluster not found (postgresql-common)"; exit 1; }

CONF="/etc/postgresql/$VERSION/$NAME"

ready() { pg_isready -h 127.0.0.1 -p "$PORT" -q; }

create() {
  if [ ! -f "$CONF/postgresql.conf" ]; then
    log "creating cluster $VERSION/$NAME on port $PORT"
    pg_createcluster "$VERSION" "$NAME" -p "$PORT" --start-conf=manual \
      -- --auth=trust --auth-local=trust --username=postgres >/dev/null
  fi
  # Written on every start (idempotent): the settings capture needs, in conf.d.
  mkdir -p "$CONF/conf.d"
  cat >"$CONF/conf.d/strangler-logical.conf" <<CONFD
# logical-cluster.sh: log-based capture (Debezium's pgoutput) needs these
listen_addresses = '127.0.0.1'
port = $PORT
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 200
shared_buffers = 64MB
CONFD
  cat >"$CONF/pg_hba.conf" <<'HBA'
# logical-cluster.sh: a local test and development cluster, trust for loopback only
local   all             all                                     trust
local   replication     all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
HBA
  chown -R postgres:postgres "$CONF" 2>/dev/null || true
}

start() {
  create
  if ready; then
    log "running on 127.0.0.1:$PORT"
    return 0
  fi
  # Close every descriptor above stderr: a server started from a shell holding a lock
  # (flock) would keep it for its whole life.
  (
    for fd in $(ls /proc/$$/fd 2>/dev/null); do
      [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
    done
    pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$NAME" start
  )
  for _ in $(seq 60); do
    if ready; then
      log "running on 127.0.0.1:$PORT"
      return 0
    fi
    sleep 0.5
  done
  log "cluster $VERSION/$NAME did not come up on port $PORT (see /var/log/postgresql/postgresql-$VERSION-$NAME.log)"
  return 1
}

stop() {
  [ -f "$CONF/postgresql.conf" ] || { log "no cluster $VERSION/$NAME"; return 0; }
  pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$NAME" stop -m fast 2>/dev/null || true
  log "stopped"
}

status() {
  if ready; then
    log "running on 127.0.0.1:$PORT ($VERSION/$NAME)"
  else
    log "not running ($VERSION/$NAME on port $PORT)"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    printf 'usage: %s start|stop|status\n' "$0" >&2
    exit 2
    ;;
esac
