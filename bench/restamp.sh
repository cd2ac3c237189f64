# Target 6 (sourced by bench/run.sh): mp_restamp on a 1M-row event table after 0.1% and then 1%
# of the clusters merged, then after 100 clusters were split (mp_split of their devices), against
# rewriting every row.
cluster_psql >/dev/null <<'SQL'
SELECT mp_create_project('rs');
SELECT * FROM mp_backfill('SELECT ''merge'', ''ru'' || g, ''rd'' || g FROM generate_series(1, 100000) g', 'rs');
CREATE TABLE rs_events (n int, distinct_id text, canonical_id text);
SELECT mp_attach('rs_events', 'rs');
INSERT INTO rs_events SELECT n, CASE WHEN n % 2 = 0 THEN 'ru' ELSE 'rd' END || (1 + (n::bigint * 7919) % 100000), NULL
  FROM generate_series(1, 1000000) n;
VACUUM ANALYZE rs_events;
SQL
restamp() {  # merges FROM TO (cluster pairs) then times mp_restamp
  cluster_psql -At <<SQL
SELECT count(*) FROM mp_backfill('SELECT ''merge'', ''ru'' || (2 * g), ''ru'' || (2 * g + 1) FROM generate_series($1, $2) g', 'rs') \gset
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT mp_restamp('rs_events');
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
SQL
}
a=$(restamp 1 50)        # 50 merges of 100,000 clusters: 0.05% + 0.05% = 0.1% of clusters joined
b=$(restamp 51 550)      # 500 more: 1% of clusters joined
split=$(cluster_psql -At <<'SQL'
SELECT count(*) FROM (SELECT mp_split('rd' || g, 'rs') FROM generate_series(5001, 5100) g) s \gset
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT mp_restamp('rs_events');
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
SQL
)
full=$(cluster_psql -At <<'SQL'
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
UPDATE rs_events SET canonical_id = mp_resolve(distinct_id, 'rs');
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000, 1);
SQL
)
stale=$(cluster_psql -Atc "SELECT count(*) FROM rs_events WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'rs')")
echo
echo "mp_restamp on 1,000,000 rows (100,000 clusters), index on the canonical column"
printf '| %-44s | %12s | %10s |\n' "case" "rows changed" "ms"
printf '| %-44s | %12s | %10s |\n' "after 0.1% of clusters merged (100 joined)" "$(echo "$a" | sed -n 1p)" "$(echo "$a" | sed -n 2p)"
printf '| %-44s | %12s | %10s |\n' "after 1% of clusters merged (1,000 more)" "$(echo "$b" | sed -n 1p)" "$(echo "$b" | sed -n 2p)"
printf '| %-44s | %12s | %10s |\n' "after 100 clusters split (mp_split)" "$(echo "$split" | sed -n 1p)" "$(echo "$split" | sed -n 2p)"
printf '| %-44s | %12s | %10s |\n' "rewrite every row with mp_resolve (reference)" "1000000" "$full"
echo "  rows whose stamp differs from mp_resolve afterwards: $stale"
