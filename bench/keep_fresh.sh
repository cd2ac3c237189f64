# keep_fresh (sourced by bench/run.sh; section "keep_fresh"): the maintenance worker restamping a
# 1M-row table of 100k ids while a client merges 100 ids a second (pgbench -R 100, 20 s), on a
# cluster of its own with identity_merge in shared_preload_libraries. Prints how long stale
# canonical ids waited (the oldest one, sampled every 20 ms: an upper bound of each merge's lag
# until its rows were restamped and committed), whether every row was right 2 s after the last
# merge, and the cost keep_fresh adds to a merge (2,000 mp_identify, with and without it).
kf_dir="$dir/keep_fresh"
mkdir -p "$kf_dir"; [ "$(id -u)" = 0 ] && chown postgres "$kf_dir"
cluster_stop
cluster_start "$kf_dir/pg" "$(free_port)" shared_buffers=1GB max_wal_size=4GB shared_preload_libraries=identity_merge
cluster_psql -q >/dev/null <<'SQL'
CREATE EXTENSION identity_merge;
\i bench/functions.sql
SELECT mp_set_project_setting('default', 'anon_id_format', 'any');
SELECT mp_create_project('plain'), mp_set_project_setting('plain', 'anon_id_format', 'any');
CREATE TABLE kf (n int, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('kf', create_index => false);
INSERT INTO kf SELECT n, 'dev-' || (1 + n % 100000), 'View', '{}' FROM generate_series(1, 1000000) n;
CREATE INDEX ON kf (canonical_id);
SELECT mp_keep_fresh('kf');
VACUUM ANALYZE kf;
CREATE TABLE samples (at timestamptz, waiting bigint, oldest_ms numeric);
SQL
cat > "$kf_dir/merge.sql" <<'SQL'
\set id random(1, 100000)
SELECT mp_identify('user-' || :id, 'dev-' || :id);
SQL
# The sampler: one session, a statement every 20 ms for the run and 3 s after it.
cluster_psql -q -c "DO \$\$ BEGIN FOR i IN 1..1150 LOOP
  INSERT INTO samples SELECT clock_timestamp(), count(*), coalesce(extract(epoch FROM clock_timestamp() - min(queued_at)) * 1000, 0)
    FROM identity_merge.stale_stamps;
  COMMIT; PERFORM pg_sleep(0.02); END LOOP; END \$\$" >/dev/null &
sampler=$!
kf_bench=$("$PG_BIN/pgbench" -n -R 100 -T 20 -c 2 -j 2 -f "$kf_dir/merge.sql" postgres 2>&1 || true)
kf_tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$kf_bench" | head -1)
wait "$sampler"
echo "keep_fresh: 1M rows, 100k ids, ${kf_tps:-?} merges/s for 20 s (bash bench/run.sh keep_fresh):"
cluster_psql -At <<'SQL'
SELECT format('  stale ids waiting (sampled every 20 ms): p50 %s ms, p99 %s ms, max %s ms; most at once %s',
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY oldest_ms)::numeric),
              round(percentile_cont(0.99) WITHIN GROUP (ORDER BY oldest_ms)::numeric),
              round(max(oldest_ms)), max(waiting))
  FROM samples;
SELECT format('  joins %s, rows restamped by the worker %s (rows of merged devices: %s); rows not right 3 s after the last merge: %s',
              (SELECT count(*) FROM identity_merge.merge_log),
              (SELECT rows_restamped FROM identity_merge._worker()),
              (SELECT count(*) FROM kf WHERE canonical_id LIKE 'user-%'),
              (SELECT count(*) FROM kf WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)));
SELECT format('  2,000 mp_identify: %s ms with keep_fresh, %s ms without (x%s)', a, b, round(a / b, 2))
  FROM (SELECT bench_ms('SELECT mp_identify(''k-'' || g, ''kd-'' || g) FROM generate_series(1, 2000) g',
                        'DELETE FROM identity_merge.identities WHERE distinct_id LIKE ''k%''; DELETE FROM identity_merge.clusters WHERE canonical_id LIKE ''k%''; DELETE FROM identity_merge.stale_stamps') AS a,
               bench_ms('SELECT mp_identify(''k-'' || g, ''kd-'' || g, ''plain'') FROM generate_series(1, 2000) g',
                        'DELETE FROM identity_merge.identities WHERE distinct_id LIKE ''k%''; DELETE FROM identity_merge.clusters WHERE canonical_id LIKE ''k%''') AS b) x;
SQL
cluster_stop
