# Citus (sourced by bench/run.sh; section "citus"): stamping on the workers and mp_resolve on a
# coordinator and two workers, all on this machine (so: ratios, not speed-ups). 1M events into a
# distributed event table with and without the stamping trigger, the same table on one node for
# reference; 100k known ids (50k people) in the replicated identity state.
bash tools/citus_install.sh
source tools/citus_cluster.sh
citus_start "$dir/citus" shared_buffers=512MB max_wal_size=4GB
trap 'citus_stop; cluster_stop' EXIT
C() { citus_psql "$COORD" -At "$@"; }
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
median_ms() {  # median_ms RESET STATEMENT: 3 runs
  local i out=()
  for i in 1 2 3; do
    out+=("$(C <<SQL
$1;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$2;
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
SQL
)")
  done
  printf '%s\n' "${out[@]}" | grep -E '^[0-9.]+$' | sort -n | sed -n 2p
}
push_plain=$(median_ms "TRUNCATE ev_plain" "INSERT INTO ev_plain SELECT n, distinct_id, event, properties FROM src")
push_ours=$(median_ms "TRUNCATE ev_stamped" "INSERT INTO ev_stamped SELECT n, distinct_id, event, properties FROM src")
coord_plain=$(median_ms "TRUNCATE ev_plain" "INSERT INTO ev_plain SELECT n, CASE WHEN n % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + (n::bigint * 7919) % 50000), 'view', '{}' FROM generate_series(1, 1000000) n")
coord_ours=$(median_ms "TRUNCATE ev_stamped" "INSERT INTO ev_stamped SELECT n, CASE WHEN n % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + (n::bigint * 7919) % 50000), 'view', '{}' FROM generate_series(1, 1000000) n")
wrong=$(C -c "SELECT count(*) FROM ev_stamped WHERE canonical_id <> 'user-' || (1 + (n::bigint * 7919) % 50000)")
resolve_ours=$(median_ms "SELECT 1" "SELECT count(mp_resolve(CASE WHEN g % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + g % 50000))) FROM generate_series(1, 100000) g")
resolve_select=$(median_ms "SELECT 1" "DO \$\$ DECLARE c text; BEGIN FOR g IN 1..100000 LOOP SELECT canonical INTO c FROM mapping WHERE distinct_id = CASE WHEN g % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + g % 50000); END LOOP; END \$\$")
resolve_join=$(median_ms "SELECT 1" "SELECT count(coalesce(m.canonical, s.id)) FROM (SELECT CASE WHEN g % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + g % 50000) AS id FROM generate_series(1, 100000) g) s LEFT JOIN mapping m ON m.distinct_id = s.id")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo
echo "Citus 13.2.2: a coordinator and two workers on this machine; 1M events, 100k known ids (median of 3)"
printf '%-64s %10s %10s %8s\n' "case" "stamped" "plain" "ratio"
printf '%-64s %10s %10s %8s\n' "INSERT ... SELECT from a co-located table (runs on the workers)" "$push_ours" "$push_plain" "$(ratio "$push_ours" "$push_plain")"
printf '%-64s %10s %10s %8s\n' "INSERT ... SELECT through the coordinator (generate_series)" "$coord_ours" "$coord_plain" "$(ratio "$coord_ours" "$coord_plain")"
echo "rows stamped wrong: $wrong"
printf '%-64s %10s %10s %8s\n' "100k lookups: mp_resolve vs PL/pgSQL loop of indexed SELECTs" "$resolve_ours" "$resolve_select" "$(ratio "$resolve_ours" "$resolve_select")"
printf '%-64s %10s %10s %8s\n' "100k lookups: mp_resolve vs set-based LEFT JOIN of the mapping" "$resolve_ours" "$resolve_join" "$(ratio "$resolve_ours" "$resolve_join")"
citus_stop
