#!/usr/bin/env bash
# A/B of the stamping trigger between two builds of the library, side by side in one cluster:
# bash bench/ab.sh OLD.so NEW.so [ROUNDS]. The installed extension (SQL) stays the current one;
# each round swaps the library file, opens a new session (which loads it) and times, after one
# warming statement, a warm INSERT ... SELECT and a warm COPY of bench/setup.sql's 300k rows
# (median of 3 each). Used to check that a refactoring leaves the hot path as fast as it was.
# AB_CASE=cold times the cold-cache INSERT ... SELECT and the stream with 2% $identify rows instead;
# AB_CASE=backfill times mp_backfill of bench/history.sql's history of AB_EDGES events (default
# 1M) into emptied state tables, after a CHECKPOINT (one run per round).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1; new=$2; rounds=${3:-4}
source tools/pg_cluster.sh
libdir=$("$PG_BIN/pg_config" --pkglibdir)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
keep=$(mktemp -d); cp "$libdir/identity_merge.so" "$keep/installed.so"
dir=$(mktemp -d /tmp/identity_merge-ab.XXXXXX)
trap 'cluster_discard "$dir"; $SUDO cp "$keep/installed.so" "$libdir/.identity_merge.so.ab" && $SUDO mv -f "$libdir/.identity_merge.so.ab" "$libdir/identity_merge.so"' EXIT
cluster_start "$dir" "$(free_port)" shared_buffers=1GB max_wal_size=4GB
if [ "${AB_CASE:-warm}" != backfill ]; then
  cluster_psql -f bench/setup.sql >/dev/null
  # A library older than 0.1.14 has no _stamp_wanted for the trigger's WHEN: the tables get the
  # trigger without it (as they had it then), for both libraries alike.
  cluster_psql >/dev/null <<'SQL'
DROP TRIGGER identity_merge_stamp ON ev_ours;
CREATE TRIGGER identity_merge_stamp BEFORE INSERT OR UPDATE OF distinct_id ON ev_ours FOR EACH ROW
    EXECUTE FUNCTION identity_merge.stamp_event('default', 'distinct_id', 'canonical_id');
SQL
else
  cluster_psql -c "CREATE EXTENSION identity_merge" >/dev/null
  cluster_psql -v edges="${AB_EDGES:-1000000}" -f bench/history.sql >/dev/null 2>&1
  cluster_psql -Atc "SELECT mp_create_project('bf'), mp_set_project_setting('bf', 'anon_id_format', 'any'), mp_set_project_setting('bf', 'max_cluster_size', '100000000')" >/dev/null
fi
run() {
  if [ "${AB_CASE:-warm}" = backfill ]; then
    cluster_psql -At <<'SQL' | tail -1
SET client_min_messages = warning;
TRUNCATE identity_merge.identities, identity_merge.clusters, identity_merge.merge_log, identity_merge.rejections;
CHECKPOINT;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT FROM mp_backfill('SELECT op, a, b FROM hist ORDER BY n', 'bf');
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000) || ' - -';
SQL
    return
  fi
  if [ "${AB_CASE:-warm}" = cold ]; then
    # AB_CASE=cold: the cache emptied before each run (as another session's merge does), and the
    # stream with 2% $identify rows (bench/stamping.sql's reset between runs).
    cluster_psql -At <<'SQL'
SET client_min_messages = warning;
SELECT bench_ms('INSERT INTO ev_ours SELECT n, distinct_id, event, properties FROM src',
                'TRUNCATE ev_ours; UPDATE identity_merge.identities SET canonical_id = canonical_id WHERE false')
    || ' ' || bench_ms('INSERT INTO ev_ours SELECT n, distinct_id, event, properties FROM src_identify',
                'TRUNCATE ev_ours; DELETE FROM identity_merge.identities WHERE distinct_id ~ ''^[0-9a-f]{8}-''; ' ||
                'UPDATE identity_merge.clusters SET size = 2 WHERE size <> 2; DELETE FROM identity_merge.merge_log; ' ||
                'DELETE FROM identity_merge.rejections')
    || ' ' || bench_ms('INSERT INTO ev_plain SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_plain');
SQL
    return
  fi
  cluster_psql -At <<'SQL'
SET client_min_messages = warning;
INSERT INTO ev_ours SELECT n, distinct_id, event, properties FROM src;  -- warms this session's cache
SELECT bench_ms('INSERT INTO ev_ours SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_ours')
    || ' ' || bench_ms('COPY ev_ours (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src.csv'' (FORMAT csv)', 'TRUNCATE ev_ours')
    || ' ' || bench_ms('INSERT INTO ev_plain SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_plain');
SQL
}
if [ "${AB_CASE:-warm}" = backfill ]; then
  printf '%-6s %-5s %14s %10s %12s\n' round build "backfill ms" "" ""
elif [ "${AB_CASE:-warm}" = cold ]; then
  printf '%-6s %-5s %14s %10s %12s\n' round build "cold INS..SEL" "2% identify" "plain INSERT"
else
  printf '%-6s %-5s %14s %10s %12s\n' round build "INSERT..SELECT" COPY "plain INSERT"
fi
for r in $(seq 1 "$rounds"); do
  for b in old new; do
    so=$old; [ "$b" = new ] && so=$new
    # A new file, not an overwrite: a process still mapping the old one must not see it change.
    $SUDO cp "$so" "$libdir/.identity_merge.so.ab" && $SUDO mv -f "$libdir/.identity_merge.so.ab" "$libdir/identity_merge.so"
    read -r ins copy plain < <(run)
    printf '%-6s %-5s %14s %10s %12s\n' "$r" "$b" "$ins" "$copy" "$plain"
  done
done
