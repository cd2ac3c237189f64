# Citus (sourced by bench/run.sh; section "citus"): stamping on the workers and mp_resolve on a
# coordinator and two workers, all on this machine (so: ratios, not speed-ups). 1M events into a
# distributed event table with and without the stamping trigger, the same table on one node for
# reference; 100k known ids (50k people) in the replicated identity state.
bash tools/citus_install.sh
source tools/citus_cluster.sh
# identity_merge preloaded for the maintenance worker's lag (last; the earlier loads queue no
# identity event, so the workers stay idle through them).
citus_start "$dir/citus" shared_buffers=512MB max_wal_size=4GB shared_preload_libraries=citus,identity_merge
trap 'citus_stop; cluster_stop' EXIT
C() { citus_psql "$COORD" -At "$@"; }
if [ -n "${CITUS_LAG_ONLY:-}" ]; then
  # CITUS_LAG_ONLY=1 bash bench/run.sh --no-install citus: the worker's lag alone.
  C -c "SET client_min_messages = warning" -c "CREATE EXTENSION identity_merge" -c "SELECT mp_distribute()" >/dev/null
else
C >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION identity_merge;
SELECT mp_distribute();
INSERT INTO identity_merge.identities (project_id, distinct_id, canonical_id)
SELECT 1, id, 'user-' || g FROM generate_series(1, 50000) g, LATERAL (VALUES ('user-' || g), ('dev-' || g)) v(id);
INSERT INTO identity_merge.clusters (project_id, canonical_id, size, identified)
SELECT 1, 'user-' || g, 2, true FROM generate_series(1, 50000) g;
CREATE TABLE mapping (distinct_id text PRIMARY KEY, canonical text NOT NULL);
SELECT create_reference_table('mapping');
INSERT INTO mapping SELECT distinct_id, canonical_id FROM identity_merge.identities;
-- 1M events, 10 per known id, in a staging table co-located with the event tables.
CREATE TABLE src (n bigint, distinct_id text, event text, properties jsonb);
SELECT create_distributed_table('src', 'distinct_id');
INSERT INTO src SELECT n, CASE WHEN n % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + (n::bigint * 7919) % 50000), 'view', '{}'
  FROM generate_series(1, 1000000) n;
CREATE TABLE ev_plain (n bigint, distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE ev_stamped (n bigint, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT create_distributed_table('ev_plain', 'distinct_id', colocate_with => 'src');
SELECT mp_distribute_events('ev_stamped', 'distinct_id', 'public.src');
SELECT mp_attach('ev_stamped', create_index => false);
VACUUM ANALYZE src;
SQL
# Each figure is the median of 3 runs. cold_ms: each run in a new session, so new connections to
# the workers and new worker backends, whose trigger caches start empty. warm_ms: the runs in one
# session after a warm-up run, with the coordinator keeping its connections to the workers
# (citus.max_cached_conns_per_worker = 4, the shards per worker here), so the worker backends and
# their caches stay.
cold_ms() {  # cold_ms RESET STATEMENT
  local i
  for i in 1 2 3; do
    C <<SQL | tail -1
$1;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$2;
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
SQL
  done | sort -n | sed -n 2p
}
warm_ms() {  # warm_ms RESET STATEMENT
  C <<SQL | grep '^T ' | cut -c3- | sort -n | sed -n 2p
SET citus.max_cached_conns_per_worker = 4;
$1;
$2;
$1;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$2;
SELECT 'T ' || round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
$1;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$2;
SELECT 'T ' || round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
$1;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$2;
SELECT 'T ' || round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
SQL
}
gen="SELECT n, CASE WHEN n % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + (n::bigint * 7919) % 50000), 'view', '{}' FROM generate_series(1, 1000000) n"
push_plain=$(cold_ms "TRUNCATE ev_plain" "INSERT INTO ev_plain SELECT n, distinct_id, event, properties FROM src")
push_ours=$(cold_ms "TRUNCATE ev_stamped" "INSERT INTO ev_stamped SELECT n, distinct_id, event, properties FROM src")
push_plain_w=$(warm_ms "TRUNCATE ev_plain" "INSERT INTO ev_plain SELECT n, distinct_id, event, properties FROM src")
push_ours_w=$(warm_ms "TRUNCATE ev_stamped" "INSERT INTO ev_stamped SELECT n, distinct_id, event, properties FROM src")
coord_plain=$(cold_ms "TRUNCATE ev_plain" "INSERT INTO ev_plain $gen")
coord_ours=$(cold_ms "TRUNCATE ev_stamped" "INSERT INTO ev_stamped $gen")
coord_plain_w=$(warm_ms "TRUNCATE ev_plain" "INSERT INTO ev_plain $gen")
coord_ours_w=$(warm_ms "TRUNCATE ev_stamped" "INSERT INTO ev_stamped $gen")
wrong=$(C -c "SELECT count(*) FROM ev_stamped WHERE canonical_id <> 'user-' || (1 + (n::bigint * 7919) % 50000)")
ids="SELECT CASE WHEN g % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + g % 50000) AS id FROM generate_series(1, 100000) g"
resolve_ours=$(warm_ms "SELECT" "SELECT count(mp_resolve(s.id)) FROM ($ids) s")
resolve_select=$(warm_ms "SELECT" "DO \$\$ DECLARE c text; BEGIN FOR g IN 1..100000 LOOP SELECT canonical INTO c FROM mapping WHERE distinct_id = CASE WHEN g % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + g % 50000); END LOOP; END \$\$")
resolve_join=$(warm_ms "SELECT" "SELECT count(coalesce(m.canonical, s.id)) FROM ($ids) s LEFT JOIN mapping m ON m.distinct_id = s.id")
identify_ms=$(C <<'SQL' | tail -1
SELECT mp_create_project('b-online'), mp_set_project_setting('b-online', 'anon_id_format', 'any');
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT count(mp_identify('ou' || g, 'od' || g, 'b-online')) FROM generate_series(1, 500) g;
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000 / 500, 2);
SQL
)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo
echo "Citus 13.2.2: a coordinator and two workers on this machine; 1M events, 100k known ids (median of 3)"
printf '%-66s %10s %10s %8s\n' "case (ms)" "stamped" "plain" "ratio"
printf '%-66s %10s %10s %8s\n' "INSERT ... SELECT, co-located source (on the workers), cold" "$push_ours" "$push_plain" "$(ratio "$push_ours" "$push_plain")"
printf '%-66s %10s %10s %8s\n' "INSERT ... SELECT, co-located source (on the workers), warm" "$push_ours_w" "$push_plain_w" "$(ratio "$push_ours_w" "$push_plain_w")"
printf '%-66s %10s %10s %8s\n' "INSERT ... SELECT through the coordinator (generate_series), cold" "$coord_ours" "$coord_plain" "$(ratio "$coord_ours" "$coord_plain")"
printf '%-66s %10s %10s %8s\n' "INSERT ... SELECT through the coordinator (generate_series), warm" "$coord_ours_w" "$coord_plain_w" "$(ratio "$coord_ours_w" "$coord_plain_w")"
echo "rows stamped wrong: $wrong"
printf '%-66s %10s %10s %8s\n' "100k lookups: mp_resolve vs PL/pgSQL loop of indexed SELECTs" "$resolve_ours" "$resolve_select" "$(ratio "$resolve_ours" "$resolve_select")"
printf '%-66s %10s %10s %8s\n' "100k lookups: mp_resolve vs set-based LEFT JOIN of the mapping" "$resolve_ours" "$resolve_join" "$(ratio "$resolve_ours" "$resolve_join")"
echo "mp_identify from the coordinator (two-phase commit to 3 nodes): $identify_ms ms per call (500 calls)"
fi

# The maintenance worker's lag (issue 27): single-row INSERTs through the coordinator at 1,000
# rows/s for 20 s (pgbench -R 1000), 2% of them $identify rows of new users; each identity
# event's lag is from its row's insert (clock_timestamp()) to the start of the transaction that
# applied it on the node holding its shard (merge_log.merged_at), whose commit reaches every
# node a moment later (a two-phase commit).
C >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT mp_create_project('lag'), mp_set_project_setting('lag', 'anon_id_format', 'any');
CREATE TABLE ev_lag (n bigserial, distinct_id text, event text, properties jsonb, canonical_id text,
                     sent_at timestamptz DEFAULT clock_timestamp());
SELECT mp_distribute_events('ev_lag', 'distinct_id');
SELECT mp_attach('ev_lag', 'lag', create_index => false);
SQL
cat > "$dir/lag.sql" <<'SQL'
\set r random(1, 1000)
\set id random(1, 1000000000)
INSERT INTO ev_lag (distinct_id, event, properties)
SELECT CASE WHEN :r <= 20 THEN 'u' || :id ELSE 'd' || :id END,
       CASE WHEN :r <= 20 THEN '$identify' ELSE 'View' END,
       CASE WHEN :r <= 20 THEN jsonb_build_object('$identified_id', 'u' || :id, '$anon_id', 'd' || :id) ELSE '{}' END;
SQL
tps=$("$PG_BIN/pgbench" -n -R 1000 -T 20 -c 4 -j 2 -h "$CITUS_DIR" -p "$COORD" -U postgres -f "$dir/lag.sql" postgres 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
sleep 3
echo "maintenance worker lag, $tps rows/s through the coordinator, 2% \$identify (no mp_apply_pending):"
C <<'SQL'
WITH sent AS (SELECT count(*) AS n FROM ev_lag WHERE event = '$identify'),
     lag AS MATERIALIZED (SELECT extract(epoch FROM l.merged_at - e.sent_at) * 1000 AS ms
                            FROM identity_merge.merge_log l JOIN identity_merge.projects p USING (project_id)
                            JOIN ev_lag e ON e.distinct_id = l.id_a AND e.event = '$identify'
                           WHERE p.token = 'lag'),
     q AS (SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99, max(ms) AS top FROM lag)
SELECT format('  %s identity events: lag p50 %s ms, p99 %s ms, max %s ms; not applied 3 s after: %s',
              q.n, round(q.p50::numeric), round(q.p99::numeric), round(q.top::numeric), sent.n - q.n)
  FROM q, sent;
SQL
citus_stop
