-- History from the tables a user already has: mp_backfill_from reads the identity events out of
-- an attached event table (or Segment's identifies and aliases tables) in time order and loads
-- them as mp_backfill does, without a history query of the user's own.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('from-rows');
SELECT mp_set_project_setting('from-rows', 'anon_id_format', 'any');
SELECT mp_create_project('from-segment', 'simplified');
SELECT mp_create_project('from-warehouse', 'simplified');
\o
-- Rows loaded (COPY) before the table was attached: their $identify / $create_alias / $merge
-- rows are history the graph has not seen.
CREATE TABLE old_events (time timestamptz, distinct_id text, event text, properties jsonb, canonical_id text);
INSERT INTO old_events VALUES
    ('2025-01-03', 'U1', '$create_alias', '{"alias": "U1-email", "distinct_id": "U1"}'),
    ('2025-01-01', 'D1', 'Page View', '{}'),
    ('2025-01-02', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "D1"}'),
    ('2025-01-04', 'U2', '$merge', '{"$distinct_ids": ["U2", "U1"]}'),
    ('2025-01-05', 'U3', '$identify', '{"$identified_id": "U3", "$anon_id": "D1"}');
SELECT mp_attach('old_events', 'from-rows');
SELECT * FROM mp_backfill_from('old_events');
SELECT * FROM mp_cluster('D1', 'from-rows');
SELECT reason_code FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'from-rows';
CALL mp_restamp_all('old_events');
SELECT distinct_id, event, canonical_id FROM old_events ORDER BY time;

-- A Segment table attached with its own column names (Simplified): rows carrying both ids link.
CREATE TABLE bf_tracks (received_at timestamptz, anonymous_id text, user_id text, event text, distinct_id text, canonical_id text);
INSERT INTO bf_tracks VALUES ('2025-02-01', 'a1', NULL, 'Page'), ('2025-02-02', 'a1', 'u1', 'Signed Up'), ('2025-02-03', 'a2', 'u1', 'Login');
SELECT mp_attach('bf_tracks', 'from-segment', device_id_column => 'anonymous_id', user_id_column => 'user_id');
SELECT * FROM mp_backfill_from('bf_tracks');
SELECT * FROM mp_cluster('u1', 'from-segment');

-- Segment's identifies and aliases tables, merged in time order.
CREATE TABLE bf_identifies ("timestamp" timestamptz, anonymous_id text, user_id text);
CREATE TABLE bf_aliases ("timestamp" timestamptz, previous_id text, user_id text);
INSERT INTO bf_identifies VALUES ('2025-03-01', 'w1', 'wu1'), ('2025-03-03', 'w2', 'wu2'), ('2025-03-04', 'w1', 'wu2');
INSERT INTO bf_aliases VALUES ('2025-03-02', 'w3', 'wu1');
SELECT * FROM mp_backfill_from('bf_identifies', 'bf_aliases', 'from-warehouse');
SELECT mp_resolve(id, 'from-warehouse') AS resolves_to, id FROM (VALUES ('$device:w1'), ('$device:w2'), ('$device:w3')) v(id);

-- Bad input.
CREATE TABLE unattached (time timestamptz, distinct_id text);
SELECT * FROM mp_backfill_from('unattached');
CREATE TABLE no_time (distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('no_time', 'from-rows');
SELECT * FROM mp_backfill_from('no_time');
SELECT * FROM mp_backfill_from(NULL, NULL, 'from-warehouse');
