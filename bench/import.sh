#!/usr/bin/env bash
# mp_import_mixpanel of a Mixpanel identity mapping of N rows (distinct_id, resolved_distinct_id)
# beside a plain COPY of the same rows into a table with the identities table's indexes (its
# primary key on the id, covering the resolved id, and an index on the resolved id), and beside
# mp_backfill of the same joins as a history (identify(resolved, distinct_id) rows); and the
# import's own floor, as bench/backfill.sh measures mp_backfill's: a COPY of the rows it wrote
# (identities, clusters, merge log) into empty tables with the same indexes.
# Usage: [PG_MAJOR=18] bash bench/import.sh [--no-install] [N...]   (default N: 1000000)
# The mapping: clusters of a user id and 3 devices ('$device:' and an md5, 41 characters), in
# row order of a data pipeline's export (no order assumed). One fresh backend per run, from a
# checkpoint; times in ms.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source tools/pg_cluster.sh
if [ "${1:-}" = "--no-install" ]; then shift
else
  SUDO_FLAG=""; [ "$(id -u)" = 0 ] || SUDO_FLAG="--sudo"
  cargo_locked pgrx install --release --no-default-features --features "pg$PG_MAJOR" --pg-config "$PG_CONFIG" $SUDO_FLAG >/dev/null
fi
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1000000)
dir=$(mktemp -d /tmp/identity_merge-bench-import.XXXXXX); chmod 755 "$dir"
trap 'cluster_discard "$dir"' EXIT
cluster_start "$dir/pg" "$(free_port)" shared_buffers=1GB max_wal_size=8GB synchronous_commit=on autovacuum=off
cluster_psql -c "CREATE EXTENSION identity_merge" >/dev/null
echo "mp_import_mixpanel: $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
printf '| %10s | %10s | %10s | %7s | %12s | %8s | %16s | %14s |\n' "mappings" "COPY ms" "import ms" "÷ COPY" "backfill ms" "÷ COPY" "COPY written ms" "import ÷ that"
ms() {  # SQL... -> the milliseconds the last statement took, in one fresh backend after a checkpoint
  cluster_psql -At <<SQL
CHECKPOINT;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$1
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000);
SQL
}
for n in "${sizes[@]}"; do
  cluster_psql -v n="$n" >/dev/null <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS mapping, hist, cp;
CREATE TABLE mapping (distinct_id text, resolved_distinct_id text);
INSERT INTO mapping SELECT '$device:' || md5(i::text), 'user-' || (hashint8(i) & 2147483647) % (:n / 3 + 1)
  FROM generate_series(1, :n) i;
CREATE TABLE hist AS SELECT row_number() OVER () AS n, 'identify'::text AS op, resolved_distinct_id AS a, distinct_id AS b
  FROM mapping;
ANALYZE mapping, hist;
COPY mapping TO '/tmp/identity_merge_bench_mapping.copy';
SQL
  chmod 644 /tmp/identity_merge_bench_mapping.copy 2>/dev/null || true
  copy_ms=$(ms "CREATE TABLE cp (distinct_id text COLLATE \"C\" NOT NULL, resolved_distinct_id text COLLATE \"C\" NOT NULL, PRIMARY KEY (distinct_id) INCLUDE (resolved_distinct_id));
CREATE INDEX ON cp (resolved_distinct_id);
COPY cp FROM '/tmp/identity_merge_bench_mapping.copy';" | tail -1)
  import_ms=$(ms "SELECT mp_create_project('imp$n');
SELECT joins FROM mp_import_mixpanel('imp$n', 'mapping');" | tail -1)
  backfill_ms=$(ms "SELECT mp_create_project('bf$n'), mp_set_project_setting('bf$n', 'anon_id_format', 'any'), mp_set_project_setting('bf$n', 'max_cluster_size', '100000000');
SELECT joins FROM mp_backfill('SELECT op, a, b FROM hist ORDER BY n', 'bf$n');" | tail -1)
  same=$(cluster_psql -At -c "SELECT count(*) FROM mapping m WHERE mp_resolve(m.distinct_id, 'imp$n') <> m.resolved_distinct_id")
  [ "$same" = 0 ] || { echo "import of $n rows: $same ids resolve otherwise than mapped" >&2; exit 1; }
  written_ms=$(cluster_psql -At -v p="imp$n" <<'SQL' | tail -1
SELECT project_id AS pid FROM identity_merge.projects WHERE token = :'p' \gset
COPY (SELECT * FROM identity_merge.identities WHERE project_id = :pid) TO '/tmp/identity_merge_bench_ids.copy';
COPY (SELECT * FROM identity_merge.clusters WHERE project_id = :pid) TO '/tmp/identity_merge_bench_clusters.copy';
COPY (SELECT * FROM identity_merge.merge_log WHERE project_id = :pid) TO '/tmp/identity_merge_bench_log.copy';
SET client_min_messages = warning;
CREATE TABLE cp_ids (LIKE identity_merge.identities INCLUDING ALL);
CREATE TABLE cp_clusters (LIKE identity_merge.clusters INCLUDING ALL);
CREATE TABLE cp_log (LIKE identity_merge.merge_log INCLUDING ALL);
CHECKPOINT;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
BEGIN;
COPY cp_ids FROM '/tmp/identity_merge_bench_ids.copy';
COPY cp_clusters FROM '/tmp/identity_merge_bench_clusters.copy';
COPY cp_log FROM '/tmp/identity_merge_bench_log.copy';
COMMIT;
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000);
DROP TABLE cp_ids, cp_clusters, cp_log;
SQL
)
  rm -f /tmp/identity_merge_bench_ids.copy /tmp/identity_merge_bench_clusters.copy /tmp/identity_merge_bench_log.copy
  printf '| %10s | %10s | %10s | %6.2fx | %12s | %7.2fx | %16s | %13.2fx |\n' "$n" "$copy_ms" "$import_ms" \
    "$(awk "BEGIN{print $import_ms/$copy_ms}")" "$backfill_ms" "$(awk "BEGIN{print $backfill_ms/$copy_ms}")" \
    "$written_ms" "$(awk "BEGIN{print $import_ms/$written_ms}")"
  cluster_psql -c "DROP TABLE cp, hist; TRUNCATE identity_merge.merge_log" >/dev/null
  cluster_psql -c "DELETE FROM identity_merge.identities" -c "DELETE FROM identity_merge.clusters" -c "VACUUM" >/dev/null
done
rm -f /tmp/identity_merge_bench_mapping.copy
