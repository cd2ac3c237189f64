-- Target 1: stamped INSERT ... SELECT and COPY, 300k rows, 200k known ids.
-- Every row of src has a different distinct_id (300k ids: 200k known, 100k new), the worst case
-- for the trigger's per-backend cache. "cold cache": the cache is emptied before each run (a
-- statement on identity_merge.identities does that, as any session's merge would), so the run
-- starts probing and loads the project once the probes cost as much; "warm cache": the ids
-- were seen by an earlier statement of the same session.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
\pset footer off
CREATE TEMP TABLE results (target text, what text, ms numeric);
INSERT INTO results VALUES
 ('1 INSERT..SELECT', 'plain INSERT, no trigger',
    bench_ms('INSERT INTO ev_plain SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_plain')),
 ('1 INSERT..SELECT', 'floor: C trigger setting one column',
    bench_ms('INSERT INTO ev_floor SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_floor')),
 ('1 INSERT..SELECT', 'PL/pgSQL no-op trigger',
    bench_ms('INSERT INTO ev_noop SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_noop')),
 ('1 INSERT..SELECT', 'set-based INSERT .. LEFT JOIN identities',
    bench_ms('INSERT INTO ev_plain SELECT s.n, s.distinct_id, s.event, s.properties, coalesce(i.canonical, s.distinct_id) FROM src s LEFT JOIN identities i USING (distinct_id)', 'TRUNCATE ev_plain')),
 ('1 INSERT..SELECT', 'PL/pgSQL lookup trigger',
    bench_ms('INSERT INTO ev_plpgsql SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_plpgsql')),
 ('1 INSERT..SELECT', 'identity_merge trigger, cold cache',
    bench_ms('INSERT INTO ev_ours SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_ours; UPDATE identity_merge.identities SET canonical_id = canonical_id WHERE false')),
 ('1 INSERT..SELECT', 'identity_merge trigger, warm cache',
    bench_ms('INSERT INTO ev_ours SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_ours')),
 ('1 INSERT..SELECT', 'identity_merge trigger, warm, without its WHEN',
    bench_ms('INSERT INTO ev_ours_nowhen SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_ours_nowhen')),
 ('1 INSERT..SELECT', 'identity_merge trigger, warm, no event columns',
    bench_ms('INSERT INTO ev_ours_plain SELECT n, distinct_id FROM src', 'TRUNCATE ev_ours_plain')),
 ('1 INSERT..SELECT 2% $identify', 'plain INSERT, no trigger',
    bench_ms('INSERT INTO ev_plain SELECT n, distinct_id, event, properties FROM src_identify', 'TRUNCATE ev_plain')),
 ('1 INSERT..SELECT 2% $identify', 'floor: C trigger setting one column',
    bench_ms('INSERT INTO ev_floor SELECT n, distinct_id, event, properties FROM src_identify', 'TRUNCATE ev_floor')),
 ('1 INSERT..SELECT 2% $identify', 'identity_merge trigger, cold cache',
    bench_ms('INSERT INTO ev_ours SELECT n, distinct_id, event, properties FROM src_identify',
             'TRUNCATE ev_ours; DELETE FROM identity_merge.identities WHERE distinct_id ~ ''^[0-9a-f]{8}-''; ' ||
             'UPDATE identity_merge.clusters SET size = 2 WHERE size <> 2; DELETE FROM identity_merge.merge_log; ' ||
             'DELETE FROM identity_merge.rejections')),
 ('1 INSERT..SELECT, canonical index', 'plain INSERT, no trigger',
    bench_ms('INSERT INTO ev_plain_ix SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_plain_ix')),
 ('1 INSERT..SELECT, canonical index', 'set-based INSERT .. LEFT JOIN identities',
    bench_ms('INSERT INTO ev_plain_ix SELECT s.n, s.distinct_id, s.event, s.properties, coalesce(i.canonical, s.distinct_id) FROM src s LEFT JOIN identities i USING (distinct_id)', 'TRUNCATE ev_plain_ix')),
 ('1 INSERT..SELECT, canonical index', 'PL/pgSQL lookup trigger',
    bench_ms('INSERT INTO ev_plpgsql_ix SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_plpgsql_ix')),
 ('1 INSERT..SELECT, canonical index', 'identity_merge trigger, warm cache',
    bench_ms('INSERT INTO ev_ours_ix SELECT n, distinct_id, event, properties FROM src', 'TRUNCATE ev_ours_ix')),
 ('1 COPY', 'plain COPY, no trigger',
    bench_ms('COPY ev_plain (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src.csv'' (FORMAT csv)', 'TRUNCATE ev_plain')),
 ('1 COPY', 'floor: C trigger setting one column',
    bench_ms('COPY ev_floor (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src.csv'' (FORMAT csv)', 'TRUNCATE ev_floor')),
 ('1 COPY', 'PL/pgSQL lookup trigger',
    bench_ms('COPY ev_plpgsql (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src.csv'' (FORMAT csv)', 'TRUNCATE ev_plpgsql')),
 ('1 COPY', 'identity_merge trigger, cold cache',
    bench_ms('COPY ev_ours (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src.csv'' (FORMAT csv)', 'TRUNCATE ev_ours; UPDATE identity_merge.identities SET canonical_id = canonical_id WHERE false')),
 ('1 COPY', 'identity_merge trigger, warm cache',
    bench_ms('COPY ev_ours (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src.csv'' (FORMAT csv)', 'TRUNCATE ev_ours')),
 ('1 COPY', 'identity_merge trigger, warm, without its WHEN',
    bench_ms('COPY ev_ours_nowhen (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src.csv'' (FORMAT csv)', 'TRUNCATE ev_ours_nowhen')),
 ('1 COPY 2% $identify', 'plain COPY, no trigger',
    bench_ms('COPY ev_plain (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src_identify.csv'' (FORMAT csv)', 'TRUNCATE ev_plain')),
 ('1 COPY 2% $identify', 'floor: C trigger setting one column',
    bench_ms('COPY ev_floor (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src_identify.csv'' (FORMAT csv)', 'TRUNCATE ev_floor')),
 ('1 COPY 2% $identify', 'identity_merge trigger, cold cache',
    bench_ms('COPY ev_ours (n, distinct_id, event, properties) FROM ''/tmp/identity_merge_bench_src_identify.csv'' (FORMAT csv)',
             'TRUNCATE ev_ours; DELETE FROM identity_merge.identities WHERE distinct_id ~ ''^[0-9a-f]{8}-''; ' ||
             'UPDATE identity_merge.clusters SET size = 2 WHERE size <> 2; DELETE FROM identity_merge.merge_log; ' ||
             'DELETE FROM identity_merge.rejections'));

SELECT target, what, ms,
       round(ms / first_value(ms) OVER (PARTITION BY target ORDER BY CASE WHEN what LIKE 'plain%' THEN 0 ELSE 1 END), 2) AS "x plain",
       round(ms / max(ms) FILTER (WHERE what LIKE 'floor%') OVER (PARTITION BY target), 2) AS "x floor",
       round(max(ms) FILTER (WHERE what = 'PL/pgSQL lookup trigger') OVER (PARTITION BY target) / ms, 2) AS "PL/pgSQL lookup / this"
  FROM results ORDER BY target, ms;
