#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the demo, benchmarks and crash tests.
# Source it, then: cluster_start DIR PORT [extra postgres -c settings...]; cluster_psql ...; cluster_stop.
# As root the server runs as the postgres user (initdb refuses root); trust auth on a socket in DIR.
PG_BIN=/usr/lib/postgresql/15/bin

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cluster_start() {
  CLUSTER_DIR="$1"; CLUSTER_PORT="$2"; shift 2
  rm -rf "$CLUSTER_DIR"; mkdir -p "$CLUSTER_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres "$CLUSTER_DIR"; fi
  as_pg "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres --auth=trust --locale=C.UTF-8 -E UTF8 >"$CLUSTER_DIR/initdb.log" 2>&1 \
    || { cat "$CLUSTER_DIR/initdb.log"; return 1; }
  local opts="-c port=$CLUSTER_PORT -c listen_addresses='' -c unix_socket_directories='$CLUSTER_DIR'"
  for o in "$@"; do opts="$opts -c $o"; done
  as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -o "$opts" -l "$CLUSTER_DIR/server.log" -w start >/dev/null \
    || { cat "$CLUSTER_DIR/server.log"; return 1; }
  export PGHOST="$CLUSTER_DIR" PGPORT="$CLUSTER_PORT" PGUSER=postgres PGDATABASE=postgres
}

cluster_psql() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"
}

cluster_stop() {
  [ -n "${CLUSTER_DIR:-}" ] && as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
}

# For an EXIT trap: stops the cluster and, when the script succeeded, removes DIR (default: the
# cluster's directory), so that repeated runs do not fill the disk (a benchmark's cluster holds
# gigabytes); a failed run keeps it, with its server.log, and says where.
cluster_discard() {
  local rc=$? target="${1:-${CLUSTER_DIR:-}}"
  cluster_stop
  if [ -n "$target" ]; then
    if [ "$rc" = 0 ]; then rm -rf "$target"; else echo "kept $target (the run failed)" >&2; fi
  fi
  return "$rc"
}

# A free TCP port number for the socket name (nothing listens on TCP).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
