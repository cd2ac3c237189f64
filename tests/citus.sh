#!/usr/bin/env bash
# identity_merge on a real Citus cluster (docs/scaling.md): a coordinator and two workers on
# localhost, each a PostgreSQL server of its own: PG_MAJOR=15 (default) with Citus 13.2.2, 18 (or 17)
# with Citus 14.0.1 (built from ../shared/citus when the server has none: tools/citus_install.sh). Checks, each printed as ok / FAIL:
#   - mp_distribute without Citus (0A000), on a worker (55000), as a writer (42501), twice;
#   - identities and an attachment made before mp_distribute survive it, on every node;
#   - the seed's doc flows and bulk loads (tests/citus_flows.sql) on distributed event tables give
#     the output of the same file on one PostgreSQL server;
#   - rows inserted straight into a worker, writers and readers on every node, caches of every
#     node kept right when a merge happens through another node;
#   - three sessions on three nodes merging overlapping clusters at once: no id in two clusters,
#     no committed merge lost, the copies of the state identical on every node, only 40001;
#   - a worker stopped with pg_ctl -m immediate during a stream of merges and stamped inserts:
#     after restart and recover_prepared_transactions() every merge and row a client saw
#     committed is there and mp_check is clean on every node;
#   - mp_undistribute, DROP EXTENSION refused before it (2BP01) and clean after.
# Prints "N passed, N failed"; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/citus_install.sh
source tests/lib.sh
source tools/citus_cluster.sh
print_checks=all
dir=$(mktemp -d /tmp/identity_merge-citus.XXXXXX); chmod 755 "$dir"
single_dir="$dir/single"
cleanup() { local rc=$?; citus_stop; cluster_stop 2>/dev/null || true; if [ "$rc" = 0 ]; then rm -rf "$dir"; fi; }
trap cleanup EXIT

# pairs FILE...: the merges a client saw committed ('M|a|b|...' lines), as SQL VALUES rows
pairs() {
  local v
  v=$(cat "$@" | grep '^M|' | awk -F'|' '{printf "(\x27%s\x27,\x27%s\x27),", $2, $3}' | sed 's/,$//')
  echo "${v:-(NULL,NULL)}"
}
# q PORT SQL [psql args]: one value, as the postgres superuser
q() { local port=$1 sql=$2; shift 2; citus_psql "$port" -At "$@" -c "SET client_min_messages = warning" -c "$sql"; }
# state PORT SQL [psql args]: the SQLSTATE of the statement's error, or "ok"
state() {
  local port=$1 sql=$2; shift 2
  local out
  out=$("$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=sqlstate -h "$CITUS_DIR" -p "$port" -U postgres -d postgres "$@" \
          -c "SET client_min_messages = warning" -c "$sql" 2>&1 >/dev/null) && { echo ok; return; }
  echo "$out" | sed -n 's/^ERROR: *\([0-9A-Z]\{5\}\).*/\1/p' | head -1
}

echo "== a coordinator and two workers"
citus_start "$dir/citus"
echo "coordinator $COORD, workers $W1 and $W2"
NODES="$COORD $W1 $W2"

# Without Citus in the database: a clear refusal.
citus_psql "$COORD" -q -c "CREATE DATABASE plain" >/dev/null
check "mp_distribute without Citus: 0A000" "0A000" \
  "$(state "$COORD" "CREATE EXTENSION identity_merge; SELECT mp_distribute()" -d plain)"

# Before mp_distribute: identities, a project, roles, an attached (local) event table.
citus_psql "$COORD" -q >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION identity_merge;
SELECT mp_create_project('scale'), mp_set_project_setting('scale', 'anon_id_format', 'any');
SELECT mp_identify('early-user', 'early-device', 'scale'), mp_alias('early-alias', 'early-user', 'scale');
CREATE TABLE early_events (distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('early_events', 'scale');
INSERT INTO early_events VALUES ('early-device', 'view', '{}');
CREATE ROLE w LOGIN; CREATE ROLE r LOGIN;
SELECT mp_grant_writer('w'), mp_grant_reader('r');
GRANT CREATE ON SCHEMA public TO w;
SQL

check "mp_distribute on a worker: 55000" "55000" "$(state "$W1" "SELECT mp_distribute()")"
check "mp_distribute as a writer: 42501" "42501" "$(state "$COORD" "SET ROLE w; SELECT mp_distribute()")"
check "mp_distribute" "identity_merge distributed: 10 tables replicated to 3 nodes" "$(q "$COORD" "SELECT mp_distribute()")"
check "mp_distribute twice: harmless" "identity_merge was already distributed: nothing to do" "$(q "$COORD" "SELECT mp_distribute()")"
# The grants made before now reach the workers too (they were made on the coordinator only).
q "$COORD" "SELECT mp_grant_writer('w'), mp_grant_reader('r')" >/dev/null
for p in $NODES; do
  check "node $p: identities from before mp_distribute" "early-user|early-user|early-user" \
    "$(q "$p" "SELECT mp_resolve('early-device', 'scale') || '|' || mp_resolve('early-alias', 'scale') || '|' || mp_resolve('early-user', 'scale')")"
done
q "$COORD" "INSERT INTO early_events VALUES ('early-alias', 'view', '{}')" >/dev/null
check "attachment from before mp_distribute still stamps" "early-user,early-user" \
  "$(q "$COORD" "SELECT string_agg(canonical_id, ',') FROM early_events")"

echo "== the doc flows: one server and the Citus coordinator give the same output"
cluster_start "$single_dir" "$(free_port)" >/dev/null
cluster_extension
cluster_psql -v citus=0 -f tests/citus_flows.sql > "$dir/flows.single" 2>&1 || true
cluster_stop
citus_psql "$COORD" -v citus=1 -f tests/citus_flows.sql > "$dir/flows.citus" 2>&1 || true
if diff "$dir/flows.single" "$dir/flows.citus" > "$dir/flows.diff"; then
  check "doc flows, bulk INSERT ... SELECT and COPY: same output as one server ($(wc -l < "$dir/flows.citus") lines)" same same
else
  check "doc flows: same output as one server" same "different (first lines below)"; head -30 "$dir/flows.diff"
fi
check "doc flow: New User Signup and Returning User stamped U1 on the shards" "7|7" \
  "$(q "$COORD" "SELECT count(*) || '|' || count(*) FILTER (WHERE canonical_id = 'U1') FROM ev_users")"
check "doc flow: the refused \$identify recorded with its table, ids and event, not its properties" "errAnonDistinctIdAssignedAlready|ev_shared|U2|\$identify|f|no table" \
  "$(q "$COORD" "SELECT concat_ws('|', reason_code, source_row->>'table', source_row->>'distinct_id', source_row->>'event', source_row ? 'properties', coalesce(source_table::text, 'no table')) FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'flows-shared'")"

echo "== rows straight into a worker, roles, caches across nodes"
# A row inserted on a worker (Citus routes it to the shard, wherever it is) is stamped there.
q "$COORD" "GRANT SELECT, INSERT ON ev_users, ev_more TO w" >/dev/null
q "$W1" "SET ROLE w; INSERT INTO ev_users VALUES (100, '\$device:D2', 'from a worker', '{}')" >/dev/null
check "row inserted on a worker, as the writer, stamped" "U1" "$(q "$COORD" "SELECT canonical_id FROM ev_users WHERE id = 100")"
check "reader may not insert: 42501" "42501" "$(state "$W2" "SET ROLE r; SELECT mp_identify('x', 'y', 'scale')")"
check "reader resolves on a worker" "U1" "$(q "$W2" "SET ROLE r; SELECT mp_resolve('\$device:D2', 'flows-users')")"
check "writer may not apply queues (administrators): 42501" "42501" "$(state "$COORD" "SET ROLE w; SELECT mp_apply_pending()")"
# A session on W2 that resolved (and cached) an id sees a merge made on W1 at once; so do the
# coordinator's cached connections that run the shard triggers.
q "$COORD" "INSERT INTO ev_more VALUES (200, 'cache-a', 'view', '{}'), (201, 'cache-a', 'view', '{}')" >/dev/null
got=$(citus_psql "$W2" -At <<SQL
SELECT mp_resolve('cache-a', 'flows-more');
\! "$PG_BIN/psql" -X -q -h "$CITUS_DIR" -p "$W1" -U postgres -d postgres -c "SET ROLE w" -c "SELECT mp_identify('cache-user', 'cache-a', 'flows-more')" >/dev/null
SELECT mp_resolve('cache-a', 'flows-more');
SQL
)
check "a W2 session's cache after a merge on W1" "cache-a cache-user" "$(echo $got)"
q "$COORD" "INSERT INTO ev_more VALUES (202, 'cache-a', 'view', '{}')" >/dev/null
check "stamp after a merge on W1, through the coordinator's cached connections" "cache-user" \
  "$(q "$COORD" "SELECT canonical_id FROM ev_more WHERE id = 202")"

# mp_check audits the stamps on every shard; mp_detach and mp_attach on a distributed table.
q "$COORD" "UPDATE ev_users SET canonical_id = 'bogus' WHERE id = 1" >/dev/null
check "mp_check finds a wrong stamp on a shard" "unfixable_stamp" "$(q "$COORD" "SELECT string_agg(check_name, ',') FROM mp_check('flows-users')")"
q "$COORD" "UPDATE ev_users SET canonical_id = 'U1' WHERE id = 1" >/dev/null
# Rows loaded before the table was attached have no stamp: CALL mp_restamp_all stamps them on
# every shard (a Citus table's shell has no rows for its TID batches to find).
q "$COORD" "CREATE TABLE late (distinct_id text, event text, properties jsonb, canonical_id text);
  SELECT mp_distribute_events('late', 'distinct_id');
  INSERT INTO late (distinct_id) SELECT CASE WHEN g % 2 = 0 THEN '\$device:D1' ELSE 'nobody-' || g END FROM generate_series(1, 40) g;
  SELECT mp_attach('late', 'flows-users')" >/dev/null
citus_psql "$COORD" -q -c "CALL mp_restamp_all('late')" 2>/dev/null
check "CALL mp_restamp_all on a distributed table stamps rows loaded before mp_attach; mp_resolve in a query on the shards" "40|20" \
  "$(q "$COORD" "SELECT count(*) FILTER (WHERE canonical_id = mp_resolve(distinct_id, 'flows-users')) || '|' || count(*) FILTER (WHERE canonical_id = 'U1') FROM late")"
q "$COORD" "SELECT mp_detach('ev_more')" >/dev/null
q "$COORD" "INSERT INTO ev_more VALUES (300, 'cache-a', 'view', '{}')" >/dev/null
check "mp_detach: the shards stop stamping" "" "$(q "$COORD" "SELECT canonical_id FROM ev_more WHERE id = 300")"
q "$COORD" "SELECT mp_attach('ev_more', 'flows-more')" >/dev/null
q "$COORD" "INSERT INTO ev_more VALUES (301, 'cache-a', 'view', '{}')" >/dev/null
check "mp_attach again on the distributed table: stamps" "cache-user" "$(q "$COORD" "SELECT canonical_id FROM ev_more WHERE id = 301")"

echo "== a distributed deadlock: a writer's row lock on a worker against the write lock"
q "$COORD" "CREATE TABLE dl (k int, v int); SELECT create_distributed_table('dl', 'k'); INSERT INTO dl VALUES (1, 0)" >/dev/null
# B (on W1) holds the write lock, then, 3 s later, wants A's row; A (on the coordinator) holds
# the row, then wants the write lock. B says when it holds the lock (a file), so the order does
# not depend on how fast the machine is.
citus_psql "$W1" -At -v VERBOSITY=sqlstate > "$dir/dl.b" 2>&1 <<SQL &
BEGIN;
SELECT mp_merge('dl1', 'dl2', 'scale');
\! touch "$dir/dl.b.locked"
SELECT pg_sleep(3);
UPDATE dl SET v = 1 WHERE k = 1;
COMMIT;
SQL
b=$!
for i in $(seq 1 200); do [ -e "$dir/dl.b.locked" ] && break; sleep 0.1; done
start=$(date +%s)
"$PG_BIN/psql" -X -At -v VERBOSITY=sqlstate -h "$CITUS_DIR" -p "$COORD" -U postgres -d postgres > "$dir/dl.a" 2>&1 <<'SQL' || true
BEGIN;
UPDATE dl SET v = 2 WHERE k = 1;
SELECT pg_sleep(0.5);
SELECT mp_merge('dl3', 'dl4', 'scale');
COMMIT;
SQL
wait "$b" || true
took=$(( $(date +%s) - start ))
code_of() { sed -n 's/^.*ERROR: *\([0-9A-Z]\{5\}\).*/\1/p' "$1" | head -1; }
a_code=$(code_of "$dir/dl.a"); b_code=$(code_of "$dir/dl.b")
a_done=$(q "$COORD" "SELECT mp_resolve('dl4', 'scale') = 'dl3'"); b_done=$(q "$COORD" "SELECT mp_resolve('dl2', 'scale') = 'dl1'")
echo "deadlock: coordinator session ${a_code:-committed}, worker session ${b_code:-committed}, after $took s"
# Citus cancels one of the two (the younger); its error is retryable: 40001 when it was waiting
# for the write lock, Citus's own 40P01 otherwise (its cancel becomes 40P01 only as it is
# reported, after the extension could map it). The other one commits. No hang.
verdict=bad
if [ "$took" -lt 30 ]; then
  case "$a_code/$b_code/$a_done/$b_done" in
    40001//f/t | 40P01//f/t | /40001/t/f | /40P01/t/f) verdict=one-retryable-victim ;;
  esac
fi
check "distributed deadlock: one session gets a retryable error (40001/40P01), the other commits, no hang" \
  "one-retryable-victim" "$verdict"

echo "== three sessions on three nodes merging overlapping clusters at once"
q "$COORD" "SELECT mp_create_project('race'), mp_set_project_setting('race', 'anon_id_format', 'any'), mp_set_project_setting('race', 'max_cluster_size', '100000')" >/dev/null
for p in $NODES; do
  python3 - "$p" > "$dir/race.$p.sql" <<'PY'
import random, sys
r = random.Random(int(sys.argv[1]))
for i in range(300):
    a, b = f"r{r.randrange(100)}", f"r{r.randrange(100)}"
    print(f"SELECT 'M|{a}|{b}|' || mp_merge('{a}', '{b}', 'race');")
PY
done
for p in $NODES; do
  "$PG_BIN/psql" -X -At -q -v ON_ERROR_STOP=0 -v VERBOSITY=sqlstate -h "$CITUS_DIR" -p "$p" -U w -d postgres \
    -f "$dir/race.$p.sql" > "$dir/race.$p.out" 2> "$dir/race.$p.err" &
done
wait
seen=$(cat "$dir"/race.*.out | grep -c '^M|' || true)
errors=$(cat "$dir"/race.*.err | sed -n 's/^.*ERROR: *\([0-9A-Z]\{5\}\).*/\1/p' | sort | uniq -c | tr -s ' ' | paste -sd, -)
echo "merges committed: $seen; errors: ${errors:-none}"
check "concurrent merges: errors only 40001" "" "$(cat "$dir"/race.*.err | sed -n 's/^.*ERROR: *\([0-9A-Z]\{5\}\).*/\1/p' | grep -v 40001 || true)"
check "concurrent merges: every committed merge holds" "0" \
  "$(q "$COORD" "SELECT count(*) FROM (VALUES $(pairs "$dir"/race.*.out)) v(a, b) WHERE mp_resolve(a, 'race') <> mp_resolve(b, 'race')")"
for p in $NODES; do
  check "node $p: mp_check('race') clean" "0" "$(q "$p" "SELECT count(*) FROM mp_check('race')")"
done
digest="SELECT md5(string_agg(project_id || ':' || distinct_id || '>' || canonical_id, ',' ORDER BY project_id, distinct_id)) FROM identity_merge.identities"
# Citus commits a two-phase transaction node by node: the last commit may take a moment to reach
# every node, so the copies are compared until they agree (at most 5 s).
copies() {
  local i n
  for i in $(seq 1 50); do
    n=$(for p in $NODES; do q "$p" "$digest"; done | sort -u | wc -l | tr -d ' ')
    [ "$n" = 1 ] && break
    sleep 0.1
  done
  echo "$n"
}
check "the copies of identities are identical on every node" "1" "$(copies)"
check "merge log: one seq per join, in order, no gaps" "t" \
  "$(q "$COORD" "SELECT count(*) = max(seq) AND count(DISTINCT seq) = count(*) FROM identity_merge.merge_log")"

echo "== a worker stopped with pg_ctl -m immediate during merges and stamped inserts"
q "$COORD" "SELECT mp_create_project('fault'), mp_set_project_setting('fault', 'anon_id_format', 'any');
  CREATE TABLE fault_events (id bigint, distinct_id text, event text, properties jsonb, canonical_id text);
  SELECT mp_distribute_events('fault_events', 'distinct_id'); SELECT mp_attach('fault_events', 'fault');
  GRANT SELECT, INSERT ON fault_events TO w" >/dev/null
python3 > "$dir/fault.sql" <<'PY'
import random
r = random.Random(7)
for i in range(2500):
    a, b = f"f{r.randrange(400)}", f"f{r.randrange(400)}"
    if i % 2:
        print(f"SELECT 'M|{a}|{b}|' || mp_merge('{a}', '{b}', 'fault');")
    else:
        print(f"INSERT INTO fault_events VALUES ({i}, '{a}', 'view', '{{}}') RETURNING 'I|' || id::text;")
    if i % 25 == 0:
        print("SELECT pg_sleep(0.01);")
PY
"$PG_BIN/psql" -X -At -q -v ON_ERROR_STOP=0 -h "$CITUS_DIR" -p "$COORD" -U w -d postgres -f "$dir/fault.sql" \
  > "$dir/fault.out" 2> "$dir/fault.err" &
client=$!
sleep 3
citus_node_stop "$W1" immediate
sleep 2
citus_node_start "$W1"
wait "$client" || true
q "$COORD" "SELECT recover_prepared_transactions()" >/dev/null
merges=$(grep -c '^M|' "$dir/fault.out" || true); rows=$(grep -c '^I|' "$dir/fault.out" || true)
echo "seen committed: $merges merges, $rows rows; client errors while the worker was down: $(grep -c ERROR "$dir/fault.err" || true)"
check "worker kill: the client saw work commit before and after" "t" "$([ "$merges" -gt 100 ] && [ "$rows" -gt 100 ] && echo t || echo f)"
check "worker kill: every merge seen committed is there" "0" \
  "$(q "$COORD" "SELECT count(*) FROM (VALUES $(pairs "$dir/fault.out")) v(a, b) WHERE mp_resolve(a, 'fault') <> mp_resolve(b, 'fault')")"
ids=$(grep '^I|' "$dir/fault.out" | cut -d'|' -f2 | paste -sd, -); ids=${ids:-NULL}
check "worker kill: every row seen committed is there" "$rows" \
  "$(q "$COORD" "SELECT count(DISTINCT id) FROM fault_events WHERE id = ANY (ARRAY[$ids]::bigint[])")"
q "$COORD" "SELECT mp_restamp('fault_events')" >/dev/null
for p in $NODES; do
  check "worker kill: node $p mp_check('fault') clean" "0" "$(q "$p" "SELECT count(*) FROM mp_check('fault')")"
done
check "worker kill: copies of identities identical on every node" "1" "$(copies)"
check "worker kill: no prepared transaction left" "0" "$(for p in $NODES; do q "$p" "SELECT count(*) FROM pg_prepared_xacts"; done | awk '{s += $1} END {print s}')"

echo "== mp_undistribute and DROP EXTENSION"
check "DROP EXTENSION while distributed: 2BP01 naming mp_undistribute" "2BP01" "$(state "$COORD" "DROP EXTENSION identity_merge")"
check "mp_undistribute" "identity_merge undistributed: 10 tables back on the coordinator alone" "$(q "$COORD" "SELECT mp_undistribute()")"
check "after mp_undistribute: answers kept" "U1|early-user|cache-user" \
  "$(q "$COORD" "SELECT mp_resolve('\$device:D2', 'flows-users') || '|' || mp_resolve('early-alias', 'scale') || '|' || mp_resolve('cache-a', 'flows-more')")"
check "after mp_undistribute: mp_check clean" "0" "$(q "$COORD" "SELECT count(*) FROM mp_check('race')")"
check "after mp_undistribute: a reader still reads" "U1" "$(q "$COORD" "SET ROLE r; SELECT mp_resolve('\$device:D2', 'flows-users')")"
check "after mp_undistribute: pg_dump keeps the state tables' rows (extconfig)" "20|true" \
  "$(q "$COORD" "SELECT cardinality(extconfig) || '|' || ('identity_merge.identities'::regclass::oid = ANY (extconfig)) FROM pg_extension WHERE extname = 'identity_merge'")"
q "$COORD" "DROP TABLE ev_users, ev_shared, ev_more, ev_bulk, ev_simple, ev_legacy, late, fault_events, early_events" >/dev/null
check "DROP EXTENSION after mp_undistribute" "ok" "$(state "$COORD" "DROP EXTENSION identity_merge")"
for p in $W1 $W2; do
  check "node $p: nothing of identity_merge left" "0" "$(q "$p" "SELECT count(*) FROM pg_namespace WHERE nspname = 'identity_merge'")"
done

summary ""   # "N passed, N failed", without a name
