# A throwaway Citus cluster on localhost: a coordinator and two workers, each a PostgreSQL server
# of its own, of PG_MAJOR (default 15; tools/pg_cluster.sh style: as root the servers run as the
# postgres user, trust auth on sockets in their directories). Source it, then:
#   citus_start DIR [extra postgres -c settings...]   sets COORD, W1, W2 (ports) and PGHOST
#   citus_psql PORT [psql args...]                     psql on one node (database postgres)
#   citus_node_stop PORT [mode] / citus_node_start PORT  stop (e.g. -m immediate) / restart a node
#   citus_stop                                          stops every node
source "$(dirname "${BASH_SOURCE[0]}")/pg_cluster.sh"

CITUS_DIR=""
declare -A CITUS_OPTS

citus_node_init() {
  local port=$1; shift
  local data="$CITUS_DIR/n$port"
  mkdir -p "$data"; [ "$(id -u)" = 0 ] && chown postgres "$data"
  as_pg "$PG_BIN/initdb" -D "$data/data" -U postgres --auth=trust --locale=C.UTF-8 -E UTF8 --no-sync >"$data/initdb.log" 2>&1 \
    || { cat "$data/initdb.log"; return 1; }
  local opts="-c port=$port -c listen_addresses=localhost -c unix_socket_directories='$CITUS_DIR'"
  opts="$opts -c shared_preload_libraries=citus -c max_prepared_transactions=100 -c fsync=off"
  opts="$opts -c citus.shard_count=4 -c max_connections=200"
  for o in "$@"; do opts="$opts -c $o"; done
  CITUS_OPTS[$port]="$opts"
  citus_node_start "$port"
}

citus_node_start() {
  local port=$1
  as_pg "$PG_BIN/pg_ctl" -D "$CITUS_DIR/n$port/data" -o "${CITUS_OPTS[$port]}" -l "$CITUS_DIR/n$port/server.log" -w start >/dev/null \
    || { tail -20 "$CITUS_DIR/n$port/server.log"; return 1; }
}

citus_node_stop() {
  local port=$1 mode=${2:-fast}
  as_pg "$PG_BIN/pg_ctl" -D "$CITUS_DIR/n$port/data" -m "$mode" -w stop >/dev/null 2>&1 || true
}

citus_psql() {
  local port=$1; shift
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$CITUS_DIR" -p "$port" -U postgres -d postgres "$@"
}

citus_start() {
  CITUS_DIR=$1; shift
  rm -rf "$CITUS_DIR"; mkdir -p "$CITUS_DIR"; chmod 755 "$CITUS_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$CITUS_DIR"
  COORD=$(free_port); W1=$(free_port); W2=$(free_port)
  for p in "$COORD" "$W1" "$W2"; do citus_node_init "$p" "$@"; done
  for p in "$COORD" "$W1" "$W2"; do citus_psql "$p" -c "CREATE EXTENSION citus" >/dev/null; done
  citus_psql "$COORD" -c "SELECT citus_set_coordinator_host('localhost', $COORD)" >/dev/null
  citus_psql "$COORD" -c "SELECT citus_add_node('localhost', $W1)" -c "SELECT citus_add_node('localhost', $W2)" >/dev/null
  export PGHOST="$CITUS_DIR" PGUSER=postgres PGDATABASE=postgres
}

citus_stop() {
  [ -n "$CITUS_DIR" ] || return 0
  for p in "${!CITUS_OPTS[@]}"; do citus_node_stop "$p"; done
}
