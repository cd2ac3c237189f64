#!/usr/bin/env bash
# The maintenance worker and identity_merge.stats (issue 27), on a throwaway cluster with
# identity_merge in shared_preload_libraries, as the writer `w` and the reader `r`:
# - the launcher starts a worker when a database creates the extension, and it stops when the
#   extension is dropped;
# - a keep_fresh table's stale stamps are restamped by the worker alone, within 2 s of the merge;
# - merges, the trigger and concurrent mp_restamp racing leave every row right (mp_check clean);
# - the worker killed with the server (pg_ctl -m immediate) loses no stale stamp;
# - the counters of identity_merge.stats match a known workload;
# - with the worker off, mp_check says the table's stamps are not kept fresh.
# Prints `worker: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
cluster_throwaway worker shared_preload_libraries=identity_merge identity_merge.worker_naptime=1000
cluster_extension w r
as postgres >/dev/null <<'SQL'
GRANT CREATE ON SCHEMA public TO w;
SELECT mp_set_project_setting('default', 'anon_id_format', 'any');
SQL

# wait_for NAME SQL [SECONDS]: polls SQL (as postgres) until it prints t; the seconds it took.
wait_for() {
  local name=$1 sql=$2 limit=${3:-10} ms
  if ms=$(poll "$limit" t as postgres -c "$sql"); then
    waited=$(awk -v ms="$ms" 'BEGIN { printf "%.2f", ms / 1000 }'); ok
  else
    bad "$name: not within ${limit}s ($(as postgres -c "$sql"))"; return 1
  fi
}
worker_running="SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'identity_merge worker' AND datname = current_database()"

# 1. The launcher started this database's worker when the extension was created.
wait_for "worker started" "$worker_running" 10
expect "the view shows it" r "SELECT worker_state <> 'stopped', worker_pid IS NOT NULL FROM identity_merge.stats WHERE project = 'default'" "t|t"

# 2. keep_fresh: rows stamped with a device id are restamped by the worker after the merge.
as w >/dev/null <<'SQL'
CREATE TABLE ev (n serial, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('ev', keep_fresh => true);
INSERT INTO ev (distinct_id, event, properties) SELECT 'dev-' || (g % 50), 'View', '{}' FROM generate_series(1, 2000) g;
SQL
check "keep_fresh recorded" "t|t" "$(as r -c "SELECT a.keep_fresh, p.keep_fresh FROM identity_merge.attachments a JOIN identity_merge.projects p USING (project_id) WHERE a.events = 'ev'::regclass")"
as w -c "SELECT mp_identify('user-' || g, 'dev-' || g) FROM generate_series(0, 49) g" >/dev/null
wait_for "restamped by the worker within 2 s" "SELECT count(*) = 0 FROM ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)" 2
echo "  the 2,000 rows of 50 merged devices restamped in ${waited}s"
expect "mp_check clean" w "SELECT count(*) FROM mp_check()" "0"
expect "nothing left waiting" r "SELECT stale_waiting FROM identity_merge.stats WHERE project = 'default'" "0"

# 3. The race: merges, inserts through the trigger and mp_restamp at once; every row right after.
race() {
  local k=$1
  case $k in
    0) for i in $(seq 1 40); do as w -c "SELECT mp_merge('user-$((i % 50))', 'crm-$i')" >/dev/null; done ;;
    1) for i in $(seq 1 40); do as w -c "INSERT INTO ev (distinct_id, event, properties) SELECT 'crm-' || g, 'Call', '{}' FROM generate_series($i, $((i + 5))) g" >/dev/null; done ;;
    2) for i in $(seq 1 15); do as w -c "SELECT mp_restamp('ev')" >/dev/null; done ;;
  esac
}
race 0 & race 1 & race 2 & wait
wait_for "every row right after the race" "SELECT count(*) = 0 FROM ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)" 5
expect "mp_check clean after the race" w "SELECT count(*) FROM mp_check()" "0"

# 4. Killed with the server mid-work: the stale stamps committed before are still queued, and
#    restamped once it is back.
as w -c "SELECT mp_identify('vip-' || g, 'dev-' || g || '-x') FROM generate_series(1, 300) g;
         INSERT INTO ev (distinct_id, event, properties) SELECT 'dev-' || g || '-x', 'View', '{}' FROM generate_series(1, 300) g" >/dev/null
as w -c "SELECT mp_merge('vip-' || g, 'late-' || g) FROM generate_series(1, 300) g" >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m immediate -w stop >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -o "-c port=$CLUSTER_PORT -c listen_addresses='' -c unix_socket_directories='$CLUSTER_DIR' -c shared_preload_libraries=identity_merge -c identity_merge.worker_naptime=1000" \
  -l "$CLUSTER_DIR/server.log" -w start >/dev/null
wait_for "worker back after the crash" "$worker_running" 10
wait_for "every row right after the crash" "SELECT count(*) = 0 FROM ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)" 10
expect "mp_check clean after the crash" w "SELECT count(*) FROM mp_check()" "0"

# 5. The counters against a known workload: 100 rows (10 identity events, 2 of them refused),
#    in a project of their own.
as postgres >/dev/null <<'SQL'
SELECT mp_create_project('counted'), mp_set_project_setting('counted', 'anon_id_format', 'any');
SELECT mp_stats_reset();
SQL
as w >/dev/null <<'SQL'
CREATE TABLE cev (n int, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('cev', 'counted');
INSERT INTO cev SELECT g, 'd' || g, CASE WHEN g <= 10 THEN '$identify' ELSE 'View' END,
       CASE WHEN g <= 8 THEN jsonb_build_object('$identified_id', 'u' || g, '$anon_id', 'd' || g)
            WHEN g <= 10 THEN '{"$identified_id": "null", "$anon_id": "x"}'::jsonb ELSE '{}' END
  FROM generate_series(1, 100) g;
SELECT mp_split('u1', 'counted');
SQL
expect "counters of the workload" r "SELECT rows_stamped, events_applied, events_refused, joins, splits, cache_hits + cache_misses FROM identity_merge.stats WHERE project = 'counted'" "100|10|2|8|1|100"
expect "an aborted transaction counts nothing" w "BEGIN; INSERT INTO cev (n, distinct_id) VALUES (0, 'x'); ROLLBACK;
SELECT rows_stamped FROM identity_merge.stats WHERE project = 'counted'" "100"
expect_err "a reader may not reset" r "SELECT mp_stats_reset()" 42501
expect "reset" postgres "SELECT mp_stats_reset(); SELECT rows_stamped FROM identity_merge.stats WHERE project = 'counted'" "
0"

# 6. Dropping the extension stops the worker; creating it starts one at once (the launcher is woken).
as postgres -c "CREATE DATABASE other" >/dev/null
as postgres -d other -c "CREATE EXTENSION identity_merge" >/dev/null
wait_for "a new database's worker starts at once" "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'identity_merge worker' AND datname = 'other'" 3
as postgres -d other -c "DROP EXTENSION identity_merge" >/dev/null
wait_for "its worker stops with the extension" "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'identity_merge worker' AND datname = 'other'" 5

# 7. Worker off: nothing is automatic, and mp_check says so for keep_fresh tables.
as postgres -c "ALTER SYSTEM SET identity_merge.worker = off" -c "SELECT pg_reload_conf()" >/dev/null
wait_for "worker stops when turned off" "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'identity_merge worker'" 5
expect "mp_check says the stamps are not kept fresh" w "SELECT check_name FROM mp_check()" "maintenance_not_running"
as w -c "SELECT mp_keep_fresh('ev', false)" >/dev/null
expect "not once keep_fresh is off" w "SELECT count(*) FROM mp_check()" "0"
expect_err "a reader may not set keep_fresh" r "SELECT mp_keep_fresh('ev')" 42501
# The project's flag, which the joins read, follows its tables' (one writer: _keep_fresh_projects).
flags="SELECT string_agg(a.keep_fresh || '/' || p.keep_fresh, ',') FROM identity_merge.attachments a JOIN identity_merge.projects p USING (project_id) WHERE a.events = 'ev'::regclass"
check "keep_fresh off: the project's flag too" "false/false" "$(as r -c "$flags")"
as w -c "SELECT mp_keep_fresh('ev')" >/dev/null
check "on again: the project's flag too" "true/true" "$(as r -c "$flags")"
as w -c "SELECT mp_detach('ev')" >/dev/null
check "its last keep_fresh table detached: the project's flag off" "f" "$(as r -c "SELECT keep_fresh FROM identity_merge.projects WHERE token = 'default'")"

summary worker
