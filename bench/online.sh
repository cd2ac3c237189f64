#!/usr/bin/env bash
# Targets 2-4: pgbench, 2 clients, against the cluster bench/run.sh started (PG* set).
secs=${BENCH_SECONDS:-10}
cluster_psql >/dev/null <<'SQL'
CREATE TABLE pgb_plain (distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE pgb_ours (LIKE pgb_plain);
SELECT mp_attach('pgb_ours', create_index => false);
SELECT mp_create_project('pgbench'), mp_set_project_setting('pgbench', 'anon_id_format', 'any'),
       mp_set_project_setting('pgbench', 'max_cluster_size', '100000000');
-- Four loaders of mixed streams: 500-row INSERT ... SELECTs, 2% of them $identify of 2,000
-- users shared by every loader (overlapping), 20,000 devices.
SELECT mp_create_project('mixed'), mp_set_project_setting('mixed', 'anon_id_format', 'any');
CREATE TABLE mix_plain (distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE mix_ours (LIKE mix_plain);
SELECT mp_attach('mix_ours', 'mixed', create_index => false);
SQL
tps() {  # script, extra pgbench args
  { "$PG_BIN/pgbench" -n -M prepared -c 2 -j 2 -T "$secs" -f "bench/pgbench/$1" "${@:2}" 2>&1 || true; } \
    | awk '/aborted/{aborted=1} /^tps = /{t=$3} END{printf "%.0f%s", t, aborted ? " (a client aborted)" : ""}'
}
export PGOPTIONS="-c synchronous_commit=off"
p=$(tps insert_plain.sql); o=$(tps insert_ours.sql)
s=$(tps resolve_select.sql); r=$(tps resolve_ours.sql)
i=$(tps identify.sql)
unset PGOPTIONS
ic=$(tps identify.sql)
mixed() {  # script: rows/s of 4 loaders (500 rows a transaction), and failed transactions
  { "$PG_BIN/pgbench" -n -M prepared -c 4 -j 4 -T "$secs" --max-tries=10 -f "bench/pgbench/$1" 2>&1 || true; } \
    | awk '/^tps = /{t=$3} /number of failed transactions/{f=$5} END{printf "%.0f %s", t * 500, f == "" ? 0 : f}'
}
read -r mp mpf <<< "$(mixed mixed_plain.sql)"
read -r mo mof <<< "$(mixed mixed_ours.sql)"
# (NOT EXISTS, not NOT IN: a NOT IN over a merge log larger than work_mem is not hashed, and
# the rows stamped before their device was identified are many.)
mix_wrong=$(cluster_psql -Atc "SELECT count(*) FROM mix_ours o WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'mixed') AND NOT EXISTS (SELECT FROM identity_merge.merge_log m WHERE m.absorbed_canonical = o.canonical_id)")
mix_rejected=$(cluster_psql -Atc "SELECT count(*) FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'mixed'")
clusters=$(cluster_psql -Atc "SELECT count(*) FROM identity_merge.clusters WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = 'pgbench')")
bad=$(cluster_psql -Atc "SELECT count(*) || coalesce(' (' || string_agg(DISTINCT p.token, ', ') || ')', '') FROM identity_merge.clusters c JOIN identity_merge.projects p USING (project_id) WHERE p.token IN ('pgbench', 'mixed') AND c.size <> (SELECT count(*) FROM identity_merge.identities i WHERE i.project_id = c.project_id AND i.canonical_id = c.canonical_id)")
echo
echo "pgbench, 2 clients, ${secs}s each, -M prepared (synchronous_commit=off unless said)"
printf '| %-58s | %10s | %9s |\n' "target" "tps" "ratio"
printf '| %-58s | %10s | %9s |\n' "2 single-row INSERT, plain table" "$p" "1.00"
printf '| %-58s | %10s | %9s |\n' "2 single-row INSERT, attached table (stamped)" "$o" "$(awk "BEGIN{printf \"%.2f\", $p/$o}")x time"
printf '| %-58s | %10s | %9s |\n' "3 indexed SELECT of the mapping" "$s" "1.00"
printf '| %-58s | %10s | %9s |\n' "3 mp_resolve" "$r" "$(awk "BEGIN{printf \"%.2f\", $s/$r}")x time"
printf '| %-58s | %10s | %9s |\n' "4 mp_identify, overlapping users (2,000), new anon ids" "$i" "ops/s"
printf '| %-58s | %10s | %9s |\n' "4 mp_identify, same, synchronous_commit=on" "$ic" "ops/s"
echo "  after the identify runs: $clusters clusters in project pgbench; clusters of projects pgbench and mixed whose size disagrees with their members: $bad"
printf '| %-58s | %10s | %9s |\n' "5 four loaders, plain, 2% \$identify rows (rows/s)" "$mp" "1.00"
printf '| %-58s | %10s | %9s |\n' "5 four loaders, attached, overlapping users (rows/s)" "$mo" "$(awk "BEGIN{printf \"%.2f\", $mo/$mp}")x rows"
echo "  four loaders: failed transactions (after up to 10 tries) plain $mpf, attached $mof; $mix_rejected identity events refused by the rules; $mix_wrong rows stamped other than mp_resolve or a later-merged canonical"
