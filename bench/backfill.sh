# Target 5 (sourced by bench/run.sh): mp_backfill vs iterative SQL label propagation (the dbt
# id-stitching approach), and how backfill time and peak memory grow with the history; beside
# it, its own limit: COPY of the rows it wrote into empty tables with the same indexes.
sizes=${BENCH_BACKFILL_SIZES:-100000 1000000 10000000}
lp_max=${BENCH_LP_MAX:-1000000}
echo
echo "backfill: mp_backfill vs label propagation (connected components by iterated min-label UPDATE)"
printf '| %10s | %12s | %14s | %15s | %9s | %10s | %11s | %14s | %10s | %8s |\n' "events" "backfill ms" "peak RSS MB" "peak private MB" "refused" "COPY ms" "÷ COPY" "label prop ms" "LP iters" "speedup"
for edges in $sizes; do
  cluster_psql -v edges="$edges" -f bench/history.sql >/dev/null
  cluster_psql -Atc "SELECT mp_create_project('bf$edges'), mp_set_project_setting('bf$edges', 'anon_id_format', 'any'), mp_set_project_setting('bf$edges', 'max_cluster_size', '100000000')" >/dev/null
  # As for the COPY below: start from a checkpoint, not amid the writes of the history just made.
  cluster_psql -c "CHECKPOINT" >/dev/null
  # one fresh backend for the backfill, so its peak resident memory is the backfill's. Peak RSS
  # counts the shared buffers the backend touched (up to shared_buffers); a sampler reads its
  # private memory (RssAnon) every 0.1 s for the other column.
  pidfile=$(mktemp); rm -f "$pidfile.done" "$pidfile.anon"
  ( while [ ! -s "$pidfile" ]; do sleep 0.05; done; bpid=$(tr -dc 0-9 < "$pidfile"); max=0
    while [ ! -e "$pidfile.done" ] && [ -d "/proc/$bpid" ]; do
      v=$(awk '/^RssAnon/{print $2}' "/proc/$bpid/status" 2>/dev/null || true)
      if [ -n "$v" ] && [ "$v" -gt "$max" ]; then max=$v; fi
      sleep 0.1
    done
    echo $((max / 1024)) > "$pidfile.anon" ) &
  sampler=$!
  out=$(cluster_psql -At <<SQL
\o $pidfile
SELECT pg_backend_pid();
\o
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT refused FROM mp_backfill('SELECT op, a, b FROM hist ORDER BY n', 'bf$edges');
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000);
SELECT substring(pg_read_file('/proc/' || pg_backend_pid() || '/status') FROM 'VmHWM:\s+(\d+) kB')::bigint / 1024;
SQL
)
  touch "$pidfile.done"; wait "$sampler" || true
  anon=$(cat "$pidfile.anon" 2>/dev/null || echo "-"); rm -f "$pidfile" "$pidfile.done" "$pidfile.anon"
  refused=$(echo "$out" | sed -n 1p); bf_ms=$(echo "$out" | sed -n 2p); mb=$(echo "$out" | sed -n 3p)
  # Its own limit: COPY the very rows the backfill wrote (identities, clusters, merge log,
  # rejections) into empty tables with the same indexes, side by side.
  copy_ms=$(cluster_psql -At -v p="bf$edges" <<'SQL'
SELECT project_id AS pid FROM identity_merge.projects WHERE token = :'p' \gset
COPY (SELECT * FROM identity_merge.identities WHERE project_id = :pid) TO '/tmp/identity_merge_bf_ids.copy';
COPY (SELECT * FROM identity_merge.clusters WHERE project_id = :pid) TO '/tmp/identity_merge_bf_clusters.copy';
COPY (SELECT * FROM identity_merge.merge_log WHERE project_id = :pid) TO '/tmp/identity_merge_bf_log.copy';
COPY (SELECT * FROM identity_merge.rejections WHERE project_id = :pid) TO '/tmp/identity_merge_bf_rejections.copy';
SET client_min_messages = warning;
DROP TABLE IF EXISTS cp_ids, cp_clusters, cp_log, cp_rejections;
CREATE TABLE cp_ids (LIKE identity_merge.identities INCLUDING ALL);
CREATE TABLE cp_clusters (LIKE identity_merge.clusters INCLUDING ALL);
CREATE TABLE cp_log (LIKE identity_merge.merge_log INCLUDING ALL);
CREATE TABLE cp_rejections (LIKE identity_merge.rejections INCLUDING ALL);
CHECKPOINT;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
BEGIN;
COPY cp_ids FROM '/tmp/identity_merge_bf_ids.copy';
COPY cp_clusters FROM '/tmp/identity_merge_bf_clusters.copy';
COPY cp_log FROM '/tmp/identity_merge_bf_log.copy';
COPY cp_rejections FROM '/tmp/identity_merge_bf_rejections.copy';
COMMIT;
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000);
DROP TABLE cp_ids, cp_clusters, cp_log, cp_rejections;
SQL
)
  rm -f /tmp/identity_merge_bf_*.copy
  ratio=$(awk "BEGIN{printf \"%.2fx\", $bf_ms/$copy_ms}")
  lp_ms="-"; iters="-"; speed="-"
  if [ "$edges" -le "$lp_max" ]; then
    lp=$(cluster_psql -At <<'SQL'
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
CREATE TEMP TABLE lp_edges AS SELECT a AS src, b AS dst FROM hist UNION ALL SELECT b, a FROM hist;
CREATE INDEX ON lp_edges (dst);
CREATE TEMP TABLE lp AS SELECT DISTINCT src AS id, src AS label FROM lp_edges;
CREATE UNIQUE INDEX ON lp (id);
ANALYZE lp_edges, lp;
CREATE TEMP TABLE iters (n int);
DO $$
DECLARE changed bigint; n int := 0;
BEGIN
  LOOP
    UPDATE lp SET label = m.label
      FROM (SELECT e.src AS id, min(l.label) AS label FROM lp_edges e JOIN lp l ON l.id = e.dst GROUP BY e.src) m
     WHERE lp.id = m.id AND m.label < lp.label;
    GET DIAGNOSTICS changed = ROW_COUNT;
    n := n + 1;
    EXIT WHEN changed = 0;
  END LOOP;
  INSERT INTO iters VALUES (n);
END $$;
SELECT n FROM iters;
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000);
SQL
)
    iters=$(echo "$lp" | sed -n 1p); lp_ms=$(echo "$lp" | sed -n 2p)
    speed=$(awk "BEGIN{printf \"%.1fx\", $lp_ms/$bf_ms}")
  fi
  printf '| %10s | %12s | %14s | %15s | %9s | %10s | %11s | %14s | %10s | %8s |\n' "$edges" "$bf_ms" "$mb" "$anon" "$refused" "$copy_ms" "$ratio" "$lp_ms" "$iters" "$speed"
done
