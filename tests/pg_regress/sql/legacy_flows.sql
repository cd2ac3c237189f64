-- Legacy ID Management: Mixpanel's pre-ID-Merge alias system ("Pre Identity-Merge" in seed
-- 004_954b6cd774881059.txt's outline; the rules as Mixpanel's legacy alias documentation states
-- them), in a project created with mp_create_project(token, 'legacy'):
--   * alias(new_id, original_id) maps new_id to the original distinct_id; from then on events
--     sent with new_id belong to the original id, which stays the canonical id for good;
--   * an alias points to one distinct_id only, and an id is aliased once;
--   * not retroactive: events sent with new_id before the alias keep their own id;
--   * $identify and $merge join nothing.
-- Each table shows the distinct_id sent, the stamp written on insert, the stamp after
-- mp_restamp (which leaves legacy tables alone) and mp_resolve (the mapping as of now).
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('legacy-web', 'legacy');
SELECT mp_set_project_setting('legacy-web', 'anon_id_format', 'any');
\o
SELECT setting, value FROM mp_project_settings('legacy-web') WHERE setting = 'mode';

CREATE TABLE legacy_events (
    n            int PRIMARY KEY,
    distinct_id  text,
    event        text,
    properties   jsonb,
    canonical_id text
);
SELECT mp_attach('legacy_events', 'legacy-web');

-- ---------------------------------------------------------------------------------------------
-- Flow 1: alias at sign-up. Anonymous events on the first device (A1), then mixpanel.alias('U1')
-- at sign-up ($create_alias: alias U1, distinct_id A1), then events as U1.
-- ---------------------------------------------------------------------------------------------
INSERT INTO legacy_events (n, distinct_id, event, properties) VALUES
    (1, 'A1', 'Page View', '{}'),
    (2, 'A1', '$create_alias', '{"alias": "U1", "distinct_id": "A1"}'),
    (3, 'U1', 'Sign Up', '{}'),
    (4, 'U1', 'Purchase', '{}');
SELECT n, distinct_id, event, canonical_id AS stamped, mp_resolve(distinct_id, 'legacy-web') AS resolves_to
  FROM legacy_events WHERE n BETWEEN 1 AND 4 ORDER BY n;
-- The original id stays canonical: U1's events are A1's.
SELECT mp_resolve('U1', 'legacy-web') AS u1, mp_resolve('A1', 'legacy-web') AS a1;

-- ---------------------------------------------------------------------------------------------
-- Flow 2: a returning user on a second device. Anonymous events as A2, then a login that sends
-- alias('U1') again (alias U1, distinct_id A2): U1 is already an alias of A1, so it is refused
-- and A2's anonymous events stay apart (the orphaned events legacy projects are known for).
-- ---------------------------------------------------------------------------------------------
INSERT INTO legacy_events (n, distinct_id, event, properties) VALUES
    (5, 'A2', 'Page View', '{}'),
    (6, 'A2', '$create_alias', '{"alias": "U1", "distinct_id": "A2"}'),
    (7, 'U1', 'Purchase', '{}');
SELECT n, distinct_id, event, canonical_id AS stamped, mp_resolve(distinct_id, 'legacy-web') AS resolves_to
  FROM legacy_events WHERE n BETWEEN 5 AND 7 ORDER BY n;
SELECT reason_code, operation, id_a, id_b FROM identity_merge.rejections
 WHERE source_table = 'legacy_events'::regclass ORDER BY rejection_id;

-- ---------------------------------------------------------------------------------------------
-- Flow 3: an alias attempted twice, through the function: the second alias of U2 to another id
-- is refused (55000); repeating the same alias changes nothing; an original that aliases point
-- to cannot itself become an alias.
-- ---------------------------------------------------------------------------------------------
SELECT mp_alias('U2', 'A3', 'legacy-web');
SELECT mp_alias('U2', 'A4', 'legacy-web');
SELECT mp_alias('U2', 'A3', 'legacy-web');
SELECT mp_alias('A3', 'A5', 'legacy-web');
-- An alias of an alias maps to the original.
SELECT mp_alias('U2-email', 'U2', 'legacy-web');
SELECT * FROM mp_cluster('U2-email', 'legacy-web');

-- ---------------------------------------------------------------------------------------------
-- The race the legacy docs warn about: an event for the new id stored before the alias arrives
-- keeps its own id, and mp_restamp leaves it (legacy stamps are final).
-- ---------------------------------------------------------------------------------------------
INSERT INTO legacy_events (n, distinct_id, event, properties) VALUES
    (8, 'U3', 'Sign Up', '{}'),
    (9, 'A6', '$create_alias', '{"alias": "U3", "distinct_id": "A6"}'),
    (10, 'U3', 'Purchase', '{}');
SELECT mp_restamp('legacy_events');
SELECT n, distinct_id, event, canonical_id AS stamped, mp_resolve(distinct_id, 'legacy-web') AS resolves_to
  FROM legacy_events WHERE n BETWEEN 8 AND 10 ORDER BY n;

-- ---------------------------------------------------------------------------------------------
-- $identify and $merge join nothing in a legacy project: as functions they are refused (0A000),
-- as events they are ignored and recorded.
-- ---------------------------------------------------------------------------------------------
SELECT mp_identify('U9', 'A9', 'legacy-web');
SELECT mp_merge('U1', 'U2', 'legacy-web');
INSERT INTO legacy_events (n, distinct_id, event, properties) VALUES
    (11, 'U9', '$identify', '{"$identified_id": "U9", "$anon_id": "A9"}'),
    (12, 'U1', '$merge', '{"$distinct_ids": ["U1", "U2"]}');
SELECT mp_resolve('A9', 'legacy-web') AS a9, mp_resolve('U2', 'legacy-web') AS u2;
SELECT reason_code, operation FROM identity_merge.rejections
 WHERE source_table = 'legacy_events'::regclass ORDER BY rejection_id;

-- The JSON functions and mp_backfill follow the same rules.
SELECT mp_track('{"event": "$create_alias", "properties": {"token": "legacy-web", "alias": "U4", "distinct_id": "A7"}}');
SELECT mp_track('{"event": "$create_alias", "properties": {"token": "legacy-web", "alias": "U4", "distinct_id": "A8"}}') ->> 'error' AS error;
SELECT mp_identity_create('{"$identified_id": "U5", "$anon_id": "A10", "$token": "legacy-web"}') ->> 'error' AS error;
\o /dev/null
SELECT mp_create_project('legacy-history', 'legacy');
SELECT mp_set_project_setting('legacy-history', 'anon_id_format', 'any');
\o
SELECT * FROM mp_backfill($$SELECT * FROM (VALUES ('alias', 'U1', 'A1'), ('alias', 'U1', 'A2'),
    ('identify', 'U2', 'A3'), ('$create_alias', 'U1-email', 'U1')) v$$, 'legacy-history');
SELECT distinct_id, canonical_id FROM identity_merge.identities i JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'legacy-history' ORDER BY distinct_id COLLATE "C";

-- Everything holds.
SELECT count(*) AS violations FROM mp_check('legacy-web');
SELECT count(*) AS violations FROM mp_check('legacy-history');
