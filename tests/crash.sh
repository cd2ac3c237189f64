#!/usr/bin/env bash
# Crash safety: a client loads merges and event rows (with $merge rows) into a throwaway cluster;
# every server process is killed with SIGKILL in the middle; the server restarts (crash recovery).
# (PG_MAJOR picks the PostgreSQL, default 15: tools/pg_cluster.sh.) Then every operation the client saw committed must be present, and mp_check must be clean
# (nothing half-done is visible). Repeated with different timings.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
runs=${CRASH_RUNS:-3}
cluster_throwaway crash synchronous_commit=on fsync=on
cluster_extension
cluster_psql >/dev/null <<'SQL'
SELECT mp_create_project('crash'), mp_set_project_setting('crash', 'anon_id_format', 'any'),
       mp_set_project_setting('crash', 'max_cluster_size', '60');
CREATE TABLE crash_ev (id bigint PRIMARY KEY, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('crash_ev', 'crash');
SQL
seen_total=0
for run in $(seq 1 "$runs"); do
  python3 - "$run" > "$dir/load.sql" <<'PY'
import random, sys
run = int(sys.argv[1]); r = random.Random(run)
for i in range(40000):
    a, b = f"c{r.randrange(2000)}", f"c{r.randrange(2000)}"
    if i % 4 == 0:
        n = run * 1_000_000 + i
        print(f"INSERT INTO crash_ev VALUES ({n}, '{a}', '$merge', '{{\"$distinct_ids\": [\"{a}\", \"{b}\"]}}') RETURNING 'I|' || id;")
    else:
        print(f"SELECT 'M|{a}|{b}|' || mp_merge('{a}', '{b}', 'crash');")
PY
  # psql prints a result only after the server reported the statement committed (autocommit).
  "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=0 -f "$dir/load.sql" > "$dir/seen.$run" 2>/dev/null &
  client=$!
  sleep "$(awk -v r="$run" 'BEGIN{print 1 + r * 0.7}')"
  # SIGKILL the postmaster and every backend at once: a power cut, as far as PostgreSQL can tell
  pm=$(head -1 "$dir/pg/data/postmaster.pid")
  kill -KILL $(pgrep -P "$pm") "$pm" 2>/dev/null || true
  wait "$client" 2>/dev/null || true
  while pgrep -P "$pm" >/dev/null || kill -0 "$pm" 2>/dev/null; do sleep 0.1; done
  as_pg "$PG_BIN/pg_ctl" -D "$dir/pg/data" -o "-c port=$PGPORT -c listen_addresses='' -c unix_socket_directories='$dir/pg'" \
      -l "$dir/pg/server.log" -w start >/dev/null 2>&1
  seen=$(grep -c . "$dir/seen.$run" || true)
  seen_total=$((seen_total + seen))
  # every merge the client saw is present: both ids resolve to the same canonical
  missing_m=$(grep '^M|' "$dir/seen.$run" | awk -F'|' '{printf "(%s,%s),", "\x27"$2"\x27", "\x27"$3"\x27"}' | sed 's/,$//')
  bad=0
  if [ -n "$missing_m" ]; then
    bad=$(cluster_psql -Atc "SELECT count(*) FROM (VALUES $missing_m) v(a, b) WHERE mp_resolve(a, 'crash') <> mp_resolve(b, 'crash')")
  fi
  rows=$(grep '^I|' "$dir/seen.$run" | cut -d'|' -f2 | paste -sd, -)
  lost=0
  if [ -n "$rows" ]; then
    lost=$(cluster_psql -Atc "SELECT count(*) FROM unnest(ARRAY[$rows]::bigint[]) x WHERE NOT EXISTS (SELECT 1 FROM crash_ev WHERE id = x)")
  fi
  violations=$(cluster_psql -Atc "SELECT count(*) FROM mp_check('crash')")
  echo "crash run $run: killed after $seen operations seen committed; merges not together: $bad, rows lost: $lost, mp_check violations: $violations"
  if [ "$bad" != 0 ] || [ "$lost" != 0 ] || [ "$violations" != 0 ]; then fail=$((fail + 1)); fi
done
cluster_psql -Atc "SELECT mp_restamp('crash_ev')" >/dev/null
stale=$(cluster_psql -Atc "SELECT count(*) FROM crash_ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'crash')")
[ "$stale" = 0 ] || { echo "after restamp, $stale rows differ from mp_resolve"; fail=$((fail + 1)); }
pass=$((runs - fail))   # a run passes or fails; the restamp check only fails
summary "crash safety" "($seen_total operations seen committed across $runs kill -9 runs)"
