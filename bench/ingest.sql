-- Target 5: mp_ingest, a staged batch moved set-wise (issue 28), against the plain statements
-- a loader would run without identity_merge, on 1,000,000 staged rows with 100,000 distinct ids
-- (40,000 devices and 40,000 users of the 100,000 known clusters, 20,000 new ids), without and
-- with 2% $identify rows (a fresh anonymous UUID identified as a known user). Ratios are to the
-- plain statement of the same case, measured in the same run (medians of 3). The first cases'
-- tables have no index on the canonical column (mp_attach(..., create_index => false)): the
-- stamping's cost alone. The last case has the index mp_attach creates by default, which costs
-- more than the stamping once the column holds values: "stamps precomputed" is a plain INSERT of
-- the same rows with their stamps already in them, the least any way of stamping can cost there.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
-- mp_ingest's INSERT hash-joins the project's ids (about 70 bytes each in memory): work_mem
-- holds the 220,000 here in one batch (at the default 4MB the join spills to disk).
SET work_mem = '64MB';
\pset footer off
CREATE TABLE stage_src AS
SELECT n, CASE WHEN n % 5 IN (0, 1) THEN 'dev-' || (1 + (n::bigint * 7919) % 40000)
               WHEN n % 5 IN (2, 3) THEN 'user-' || (1 + (n::bigint * 104729) % 40000)
               ELSE 'new-' || (n % 20000) END AS distinct_id,
       'Page View'::text AS event, jsonb_build_object('n', n) AS properties
  FROM generate_series(1, 1000000) n;
CREATE TABLE stage_identify AS
SELECT n, CASE WHEN n % 50 = 0 THEN 'user-' || (1 + n % 100000) ELSE distinct_id END AS distinct_id,
       CASE WHEN n % 50 = 0 THEN '$identify' ELSE event END AS event,
       CASE WHEN n % 50 = 0 THEN jsonb_build_object('$identified_id', 'user-' || (1 + n % 100000),
                                                    '$anon_id', gen_random_uuid()::text)
            ELSE properties END AS properties
  FROM stage_src;
VACUUM ANALYZE stage_src, stage_identify;
COPY stage_src TO '/tmp/identity_merge_bench_stage.csv' (FORMAT csv);
COPY stage_identify TO '/tmp/identity_merge_bench_stage_identify.csv' (FORMAT csv);
-- Where COPY lands before mp_ingest: unlogged (a staging table need not survive a crash).
CREATE UNLOGGED TABLE stage_copy (n int, distinct_id text, event text, properties jsonb);

CREATE TABLE ing_plain (n int, distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE ing_ours (LIKE ing_plain);
SELECT mp_attach('ing_ours', create_index => false);
CREATE TABLE ing_plain_ix (LIKE ing_plain);
CREATE INDEX ON ing_plain_ix (canonical_id);
CREATE TABLE ing_ours_ix (LIKE ing_plain);
SELECT mp_attach('ing_ours_ix');
CREATE TABLE stage_stamped AS
SELECT s.*, coalesce(i.canonical_id, s.distinct_id) AS canonical_id
  FROM stage_src s LEFT JOIN identity_merge.identities i ON i.project_id = 1 AND i.distinct_id = s.distinct_id;

CREATE TEMP TABLE ingest_results (target text, what text, ms numeric);
-- The identity rows' effects are undone between runs (their anonymous ids, joins, refusals).
\set undo 'DELETE FROM identity_merge.identities WHERE distinct_id ~ ''^[0-9a-f]{8}-''; UPDATE identity_merge.clusters SET size = 2 WHERE size <> 2; DELETE FROM identity_merge.merge_log; DELETE FROM identity_merge.rejections'
INSERT INTO ingest_results VALUES
 ('5 1M staged rows', 'plain INSERT .. SELECT, no trigger',
    bench_ms('INSERT INTO ing_plain SELECT * FROM stage_src', 'TRUNCATE ing_plain')),
 ('5 1M staged rows', 'stamps precomputed: plain INSERT of stamped rows',
    bench_ms('INSERT INTO ing_plain SELECT * FROM stage_stamped', 'TRUNCATE ing_plain')),
 ('5 1M staged rows', 'mp_ingest',
    bench_ms('SELECT mp_ingest(''stage_src'', ''ing_ours'')', 'TRUNCATE ing_ours')),
 ('5 1M staged rows', 'INSERT .. SELECT through the trigger',
    bench_ms('INSERT INTO ing_ours SELECT * FROM stage_src', 'TRUNCATE ing_ours')),
 ('5 1M staged rows, 2% $identify', 'plain INSERT .. SELECT, no trigger',
    bench_ms('INSERT INTO ing_plain SELECT * FROM stage_identify', 'TRUNCATE ing_plain')),
 ('5 1M staged rows, 2% $identify', 'mp_ingest',
    bench_ms('SELECT mp_ingest(''stage_identify'', ''ing_ours'')', 'TRUNCATE ing_ours; ' || :'undo')),
 ('5 1M staged rows, 2% $identify', 'INSERT .. SELECT through the trigger',
    bench_ms('INSERT INTO ing_ours SELECT * FROM stage_identify', 'TRUNCATE ing_ours; ' || :'undo')),
 ('5 1M rows by COPY', 'plain COPY, no trigger',
    bench_ms('COPY ing_plain (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_stage.csv'' (FORMAT csv)', 'TRUNCATE ing_plain')),
 ('5 1M rows by COPY', 'COPY into staging + mp_ingest',
    bench_ms('COPY stage_copy FROM ''/tmp/identity_merge_bench_stage.csv'' (FORMAT csv); SELECT mp_ingest(''stage_copy'', ''ing_ours'', empty_staging => true)', 'TRUNCATE ing_ours')),
 ('5 1M rows by COPY', 'COPY through the trigger',
    bench_ms('COPY ing_ours (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_stage.csv'' (FORMAT csv)', 'TRUNCATE ing_ours')),
 ('5 1M rows by COPY, 2% $identify', 'plain COPY, no trigger',
    bench_ms('COPY ing_plain (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_stage_identify.csv'' (FORMAT csv)', 'TRUNCATE ing_plain')),
 ('5 1M rows by COPY, 2% $identify', 'COPY into staging + mp_ingest',
    bench_ms('COPY stage_copy FROM ''/tmp/identity_merge_bench_stage_identify.csv'' (FORMAT csv); SELECT mp_ingest(''stage_copy'', ''ing_ours'', empty_staging => true)', 'TRUNCATE ing_ours; ' || :'undo')),
 ('5 1M staged rows, canonical index', 'plain INSERT .. SELECT, no trigger',
    bench_ms('INSERT INTO ing_plain_ix SELECT * FROM stage_src', 'TRUNCATE ing_plain_ix')),
 ('5 1M staged rows, canonical index', 'stamps precomputed: plain INSERT of stamped rows',
    bench_ms('INSERT INTO ing_plain_ix SELECT * FROM stage_stamped', 'TRUNCATE ing_plain_ix')),
 ('5 1M staged rows, canonical index', 'mp_ingest',
    bench_ms('SELECT mp_ingest(''stage_src'', ''ing_ours_ix'')', 'TRUNCATE ing_ours_ix')),
 ('5 1M staged rows, canonical index', 'INSERT .. SELECT through the trigger',
    bench_ms('INSERT INTO ing_ours_ix SELECT * FROM stage_src', 'TRUNCATE ing_ours_ix'));

SELECT target, what, ms,
       round(ms / max(ms) FILTER (WHERE what LIKE 'plain%') OVER (PARTITION BY target), 2) AS "x plain",
       round(ms / max(ms) FILTER (WHERE what LIKE 'stamps precomputed%') OVER (PARTITION BY target), 2) AS "x precomputed"
  FROM ingest_results ORDER BY target, ms;
