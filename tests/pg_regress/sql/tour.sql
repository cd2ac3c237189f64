-- README.md, section "A five-minute tour", statement by statement (the README's comments say what
-- each statement answers; the output below shows it). This is the one file that uses the
-- project 'default' and the tables events, history and web_events; its own tokens are
-- 'my-token' and 'web'. Two changes from the README, both marked "(README: ...)": CREATE
-- EXTENSION tolerates an installed extension, and the rejections query reads this file's table
-- only (other files share the database); and one addition, an \echo of the SQLSTATE that the
-- README's comment names (terse errors do not print it).
\set VERBOSITY terse
-- (README: CREATE EXTENSION identity_merge;)
CREATE EXTENSION IF NOT EXISTS identity_merge;

-- Anonymous events, then a login: $identify links the device to the user.
SELECT mp_resolve('$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b');          -- itself, never seen
SELECT mp_identify('user-42', '$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b');  -- 'user-42'
SELECT mp_resolve('$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b');          -- 'user-42'
SELECT * FROM mp_cluster('user-42');

-- Mixpanel's refusals, with their reason codes and SQLSTATEs.
SELECT mp_identify('user-7', '$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b');
-- ERROR 55000: errAnonDistinctIdAssignedAlready: identify identified_id "user-7" and anon_id ... refused
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT mp_merge('user-7', 'user-42');   -- $merge joins two identified users deliberately: 'user-7'

-- An event table: the trigger stamps the canonical id on insert and applies identity events.
CREATE TABLE events (
    distinct_id  text,
    event        text,
    properties   jsonb,
    time         timestamptz DEFAULT now(),
    canonical_id text
);
SELECT mp_attach('events');
INSERT INTO events (distinct_id, event, properties) VALUES
    ('$device:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d', 'Page View', '{}'),
    ('user-99', '$identify', '{"$identified_id": "user-99", "$anon_id": "$device:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}'),
    ('user-99', 'Purchase', '{}');
SELECT distinct_id, event, canonical_id FROM events;   -- first row still says $device:...

-- Earlier rows catch up with later merges; cost follows the stale rows, not the table.
SELECT mp_restamp('events');                            -- 1
SELECT count(*) FROM events GROUP BY canonical_id;      -- one person

-- Refused identity events never fail the INSERT: they are recorded.
INSERT INTO events (distinct_id, event, properties)
VALUES ('u', '$identify', '{"$identified_id": "u", "$anon_id": "not-a-uuid"}');
-- (README: SELECT reason_code, message FROM identity_merge.rejections;)
SELECT reason_code, message FROM identity_merge.rejections WHERE source_table = 'events'::regclass;

-- Loading years of history at once: same rules, computed in memory, written in bulk.
CREATE TABLE history (ts timestamptz, op text, a text, b text);
INSERT INTO history VALUES (now(), 'merge', 'user-42', 'crm-42'), (now(), 'alias', 'ext-42', 'user-42');
SELECT * FROM mp_backfill('SELECT op, a, b FROM history ORDER BY ts');
SELECT * FROM mp_check();                               -- no rows: every invariant holds

-- Projects: one per Mixpanel token, each with its mode and settings.
SELECT mp_create_project('my-token');
SELECT mp_set_project_setting('my-token', 'max_cluster_size', '100');
SELECT * FROM mp_project_settings('my-token');

-- Simplified ID Merge: $device_id / $user_id on ordinary events link devices to users.
SELECT mp_create_project('web', 'simplified');
CREATE TABLE web_events ("$device_id" text, "$user_id" text, distinct_id text, event text, canonical_id text);
SELECT mp_attach('web_events', 'web');
INSERT INTO web_events ("$device_id", "$user_id", event) VALUES
    ('D1', NULL, 'Page View'), ('D1', 'U1', 'Sign Up'), ('D1', NULL, 'Page View');
SELECT distinct_id, canonical_id FROM web_events;      -- $device:D1/$device:D1, U1/U1, $device:D1/U1
SELECT mp_resolve('$device:D1', 'web');                 -- U1

-- The HTTP API's JSON, unchanged: IdentityResponse out, never an exception for bad content.
SELECT mp_track('{"event": "Login", "properties": {"token": "web", "$device_id": "D2", "$user_id": "U1"}}');
SELECT mp_identity_merge('{"$distinct_ids": ["a"], "$token": "default"}');
-- {"error": "errMalformedEvent: $distinct_ids must hold exactly 2 ids, not 1", "status": 0}

-- Why are two ids one person, and taking back a wrong merge (since 0.1.4).
SELECT step, operation, id_a, id_b, source
  FROM mp_explain('$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b', 'user-7', 'default');
-- 1 | identify | user-42 | $device:3f1b... | function;  2 | merge | user-7 | user-42 | function
SELECT * FROM mp_split('user-7');    -- user-42, its aliases and the device are apart from user-7 again
SELECT mp_resolve('$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b');  -- 'user-42'
