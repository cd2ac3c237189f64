# Sourced by bench/run.sh (section "streams"): the event streams of the performance issue,
# measured as a new user would, side by side in one run: 300k-row INSERT ... SELECT and COPY into
# a plain table, a table with the floor trigger (copies the row, sets one column, no lookup) and
# an attached table, each run with the stamp cache emptied first (as another session's split or
# settings change empties it; joins no longer do, since 0.1.10). Against bench/setup.sql's 200k known ids (100k users, each with a device).
#   1 15 events per id: 20k ids
#   2 most ids seen once: 250k ids (200k known, 50k new)
#   3 the same with an index on the stamp column in every table
#   4 15 events per id with 2% $identify rows of new users (6,000 identity events)
#   5 15 events per id while another session merges as fast as it can (pgbench, one client)
cluster_psql >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE TABLE s_per_id AS
SELECT n, CASE WHEN n % 2 = 0 THEN 'user-' ELSE 'dev-' END || (1 + n % 10000) AS distinct_id,
       'Page View'::text AS event, jsonb_build_object('n', n) AS properties
  FROM generate_series(1, 300000) n;
CREATE TABLE s_once AS
SELECT n, CASE WHEN k < 100000 THEN 'dev-' || (k + 1) WHEN k < 200000 THEN 'user-' || (k - 99999)
               ELSE 'new-' || k END AS distinct_id,
       'Page View'::text AS event, jsonb_build_object('n', n) AS properties
  FROM generate_series(1, 300000) n, LATERAL (SELECT (n::bigint * 7919) % 250000 AS k) x;
CREATE TABLE s_identify AS
SELECT n, CASE WHEN n % 50 = 0 THEN 'nu-' || n ELSE distinct_id END AS distinct_id,
       CASE WHEN n % 50 = 0 THEN '$identify' ELSE event END AS event,
       CASE WHEN n % 50 = 0 THEN jsonb_build_object('$identified_id', 'nu-' || n, '$anon_id', gen_random_uuid()::text)
            ELSE properties END AS properties
  FROM s_per_id;
VACUUM ANALYZE s_per_id, s_once, s_identify;
COPY s_per_id TO '/tmp/identity_merge_streams_per_id.csv' (FORMAT csv);
COPY s_once TO '/tmp/identity_merge_streams_once.csv' (FORMAT csv);
COPY s_identify TO '/tmp/identity_merge_streams_identify.csv' (FORMAT csv);
CREATE TABLE st_plain (n int, distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE st_floor (LIKE st_plain);
CREATE TRIGGER floor BEFORE INSERT ON st_floor FOR EACH ROW EXECUTE FUNCTION floor_stamp();
CREATE TABLE st_ours (LIKE st_plain);
SELECT mp_attach('st_ours', create_index => false);
CREATE TABLE st_plain_ix (LIKE st_plain);
CREATE INDEX ON st_plain_ix (canonical_id);
CREATE TABLE st_floor_ix (LIKE st_plain_ix INCLUDING INDEXES);
CREATE TRIGGER floor BEFORE INSERT ON st_floor_ix FOR EACH ROW EXECUTE FUNCTION floor_stamp();
CREATE TABLE st_ours_ix (LIKE st_plain);
SELECT mp_attach('st_ours_ix');
CREATE TABLE stream_results (stream text, how text, plain numeric, floor numeric, ours numeric);
-- One stream, one way in: the three tables side by side, each run after `reset`.
CREATE FUNCTION stream_case(stream text, how text, source text, ix boolean, reset text DEFAULT '') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sfx text := CASE WHEN ix THEN '_ix' ELSE '' END;
    cold text := 'UPDATE identity_merge.identities SET canonical_id = canonical_id WHERE false; ';
    t text;
    ms numeric[] := '{}';
BEGIN
    FOREACH t IN ARRAY ARRAY['st_plain', 'st_floor', 'st_ours'] LOOP
        ms := ms || bench_ms(
            CASE how WHEN 'COPY' THEN format('COPY %s%s (n, distinct_id, event, properties) FROM %L (FORMAT csv)', t, sfx, '/tmp/identity_merge_streams_' || source || '.csv')
                     ELSE format('INSERT INTO %s%s SELECT n, distinct_id, event, properties FROM s_%s', t, sfx, source) END,
            format('TRUNCATE %s%s; ', t, sfx) || reset || cold);
    END LOOP;
    INSERT INTO stream_results VALUES (stream, how, ms[1], ms[2], ms[3]);
END $$;
SQL
identify_reset="DELETE FROM identity_merge.identities WHERE distinct_id LIKE ''nu-%'' OR distinct_id ~ ''^[0-9a-f]{8}-''; DELETE FROM identity_merge.clusters WHERE canonical_id LIKE ''nu-%''; DELETE FROM identity_merge.merge_log; DELETE FROM identity_merge.rejections; "
for how in "INSERT..SELECT" COPY; do
  cluster_psql >/dev/null <<SQL
SET client_min_messages = warning;
SELECT stream_case('1 15 events per id (20k ids)', '$how', 'per_id', false);
SELECT stream_case('2 most ids seen once (250k ids)', '$how', 'once', false);
SELECT stream_case('3 same, index on the stamp column', '$how', 'once', true);
SELECT stream_case('4 15 events per id, 2% \$identify of new users', '$how', 'identify', false, '$identify_reset');
SQL
done
# 5: the same stream while another session merges new ids of the same project as fast as it can.
merger=$(mktemp)
cat > "$merger" <<'SQL'
\set k random(1, 100000000)
SELECT mp_merge('cm-' || :k, 'cm-' || (:k + 1));
SQL
"$PG_BIN/pgbench" -n -c 1 -T 600 -f "$merger" >/dev/null 2>&1 &
merging=$!
sleep 1
for how in "INSERT..SELECT" COPY; do
  cluster_psql >/dev/null -c "SET client_min_messages = warning" \
    -c "SELECT stream_case('5 15 events per id, another session merging', '$how', 'per_id', false)"
done
kill "$merging" 2>/dev/null || true; wait "$merging" 2>/dev/null || true
merges=$(cluster_psql -Atc "SELECT count(*) FROM identity_merge.merge_log WHERE id_a LIKE 'cm-%'")
rm -f "$merger" /tmp/identity_merge_streams_*.csv
echo
echo "streams: 300k rows, cold stamp cache each run, median of 3 (ms); ratios of the attached table"
cluster_psql -P footer=off -c "SELECT stream, how, plain, floor, ours, round(ours / plain, 2) AS \"x plain\", round(ours / floor, 2) AS \"x floor\" FROM stream_results ORDER BY stream, how DESC"
echo "  during case 5 the other session made $merges merges"
