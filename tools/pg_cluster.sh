#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the demo, benchmarks and tests.
# Source it, then: cluster_start DIR PORT [extra postgres -c settings...]; cluster_psql ...; cluster_stop.
# As root the server runs as the postgres user (initdb refuses root); trust auth on a socket in DIR.
#
# Which PostgreSQL: PG_MAJOR (default 15). 15 is Debian's (/usr/lib/postgresql/15/bin); 17 and 18
# are the source builds of tools/build_postgres.sh in $IDENTITY_MERGE_PG_PREFIX/pgNN (default
# /opt/identity_merge/pgNN). Sets PG_BIN (the server's bin directory) and exports PG_CONFIG.
PG_MAJOR="${PG_MAJOR:-15}"
pg_bin_of() {  # MAJOR -> bin directory
  case "$1" in
    15) echo /usr/lib/postgresql/15/bin ;;
    *)  echo "${IDENTITY_MERGE_PG_PREFIX:-/opt/identity_merge}/pg$1/bin" ;;
  esac
}
PG_BIN="$(pg_bin_of "$PG_MAJOR")"
if [ ! -x "$PG_BIN/pg_config" ]; then
  echo "pg_cluster: no PostgreSQL $PG_MAJOR in $PG_BIN (PG_MAJOR=17/18: run tools/build_postgres.sh)" >&2
  return 1 2>/dev/null || exit 1
fi
export PG_MAJOR PG_BIN
export PG_CONFIG="$PG_BIN/pg_config"

# cargo, one build at a time on a shared machine: every cargo run of the test scripts goes through
# this (flock on $IDENTITY_MERGE_CARGO_LOCK, default /tmp/identity_merge-cargo.lock; "none": no lock).
cargo_locked() {
  local lock="${IDENTITY_MERGE_CARGO_LOCK:-/tmp/identity_merge-cargo.lock}"
  if [ "$lock" != none ] && command -v flock >/dev/null; then flock "$lock" cargo "$@"; else cargo "$@"; fi
}

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
