-- Rows loaded before mp_attach: CALL mp_restamp_all stamps every row of an attached table in
-- committed batches (heap blocks), keeping its progress in identity_merge.restamp_progress, and
-- resumes where an interrupted run stopped.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('history-load');
SELECT mp_set_project_setting('history-load', 'anon_id_format', 'any');
SELECT mp_merge('u' || g, 'd' || g, 'history-load') FROM generate_series(1, 50) g;
\o
-- 20,000 rows loaded before the table was attached: no stamps yet.
CREATE TABLE loaded_events (n int, distinct_id text, canonical_id text);
INSERT INTO loaded_events SELECT n, CASE WHEN n % 2 = 0 THEN 'd' ELSE 'x' END || (1 + n % 50), NULL FROM generate_series(1, 20000) n;
SELECT mp_attach('loaded_events', 'history-load');
SELECT count(*) AS unstamped FROM loaded_events WHERE canonical_id IS NULL;
SELECT pg_relation_size('loaded_events') / current_setting('block_size')::int > 20 AS several_batches;

-- An interrupted run: progress says the first 20 blocks of this table and attachment are done.
INSERT INTO identity_merge.restamp_progress (events, next_block, blocks, filenode, attached_at)
SELECT 'loaded_events', 20, 0, pg_relation_filenode('loaded_events'), attached_at FROM identity_merge.attachments WHERE events = 'loaded_events'::regclass;
CALL mp_restamp_all('loaded_events', 20);
SELECT count(*) FILTER (WHERE canonical_id IS NULL) AS still_unstamped,
       count(*) FILTER (WHERE ctid >= '(20,0)' AND canonical_id IS NULL) AS unstamped_after_block_20
  FROM loaded_events;
SELECT count(*) AS runs_in_progress FROM identity_merge.restamp_progress;

-- A full run stamps the rest; every stamp is what mp_resolve says.
CALL mp_restamp_all('loaded_events', 7);
SELECT count(*) AS stale FROM loaded_events WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'history-load');
SELECT canonical_id, count(*) FROM loaded_events WHERE distinct_id IN ('d3', 'x2') GROUP BY 1 ORDER BY 1;

-- Bad input.
CALL mp_restamp_all('loaded_events', 0);
CREATE TABLE not_attached (distinct_id text, canonical_id text);
CALL mp_restamp_all('not_attached');
BEGIN;
CALL mp_restamp_all('loaded_events');
ROLLBACK;
