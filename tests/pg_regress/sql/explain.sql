-- Why two ids are one person: mp_explain shows the chain of logged joins that connects an id to
-- its cluster's canonical id (or to another id), each with where it came from (a function call,
-- a row of an attached table, mp_track, the Identity API, a backfill entry), the role that made
-- it and its transaction. A cluster's joins form a tree, so the chain is unique.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('explain-web');
SELECT mp_set_project_setting('explain-web', 'anon_id_format', 'any');
\o

-- A person built four ways: a function call, a row of an attached table, mp_track, the Identity API.
SELECT mp_identify('U1', 'D1', 'explain-web');
CREATE TABLE explain_events (n int, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('explain_events', 'explain-web');
INSERT INTO explain_events VALUES
    (1, 'D2', 'Page View', '{}'),
    (2, 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "D2"}');
SELECT mp_track('{"event": "$create_alias", "properties": {"token": "explain-web", "alias": "email:u1", "distinct_id": "U1"}}');
SELECT mp_identity_merge('{"$distinct_ids": ["M", "email:u1"], "$token": "explain-web"}');

-- Why is D2 this person? From D2 to the canonical id, one join per row.
SELECT step, operation, id_a, id_b, kept_canonical AS kept, absorbed_canonical AS absorbed,
       source, source_detail, role_name = current_user AS by_me, transaction_id IS NOT NULL AS has_xid
  FROM mp_explain('D2', 'explain-web');

-- Between two ids (the project is required in this form).
SELECT step, operation, id_a, id_b, source FROM mp_explain('D1', 'D2', 'explain-web');

-- The canonical id itself needs no join; ids of two people have no chain; an id never seen is an error.
SELECT count(*) AS joins FROM mp_explain('M', 'explain-web');
SELECT mp_identify('U9', 'D9', 'explain-web');
SELECT count(*) AS joins FROM mp_explain('D1', 'D9', 'explain-web');
SELECT * FROM mp_explain('nobody', 'explain-web');

-- A history loaded with mp_backfill: each join names its entry.
\o /dev/null
SELECT mp_create_project('explain-history');
SELECT mp_set_project_setting('explain-history', 'anon_id_format', 'any');
\o
SELECT joins FROM mp_backfill($$SELECT * FROM (VALUES ('identify', 'V1', 'E1'), ('identify', 'V1', 'E1'),
    ('alias', 'V1-email', 'V1'), ('merge', 'W', 'V1')) v$$, 'explain-history');
SELECT step, operation, id_a, id_b, source, source_detail FROM mp_explain('E1', 'explain-history');
