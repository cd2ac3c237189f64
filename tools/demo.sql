-- The example flows of 002_f06f188177ad2724.txt (Mixpanel "Identifying Users"), Original ID Merge.
-- Each flow is its own project so its D1/D2/U1/U2 are its own. The doc writes device ids as D1, D2
-- rather than UUIDs, so these projects accept any anon id format.
CREATE EXTENSION identity_merge;
\pset footer off

CREATE TABLE events (
    flow        text,
    n           int,
    device_id   text,      -- the doc's $device_id column, for reading
    user_id     text,      -- the doc's $user_id column, for reading
    distinct_id text,      -- what the SDK sends
    event       text,
    properties  jsonb,
    stamped_on_insert text,
    canonical_id text,     -- stamped by the trigger, brought up to date by mp_restamp
    doc_distinct_id text   -- what the doc says Mixpanel sets, once the flow is over
);

-- One table per project: a view over a per-flow child would do too; three tables keep it plain.
CREATE TABLE signup (LIKE events);
CREATE TABLE returning_user (LIKE events);
CREATE TABLE shared_device (LIKE events);

\o /dev/null
SELECT mp_create_project(p), mp_set_project_setting(p, 'anon_id_format', 'any')
  FROM unnest(ARRAY['signup', 'returning', 'shared-device']) p;
SELECT mp_attach('signup', 'signup'), mp_attach('returning_user', 'returning'), mp_attach('shared_device', 'shared-device');
\o

-- New User Signup: two anonymous events, then .identify(U1) sends $identify linking D1 => U1.
INSERT INTO signup (flow, n, device_id, user_id, distinct_id, event, properties, doc_distinct_id) VALUES
 ('New User Signup', 1, 'D1', NULL, '$device:D1', 'Page View', '{}', 'U1'),
 ('New User Signup', 2, 'D1', NULL, '$device:D1', 'Page View', '{}', 'U1'),
 ('New User Signup', 3, 'D1', 'U1', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}', 'U1');

-- Returning User: the same user on a new device D2, anonymous, then logs in: links D2 => U1.
INSERT INTO returning_user (flow, n, device_id, user_id, distinct_id, event, properties, doc_distinct_id) VALUES
 ('Returning User', 1, 'D1', NULL, '$device:D1', 'Page View', '{}', 'U1'),
 ('Returning User', 2, 'D1', NULL, '$device:D1', 'Page View', '{}', 'U1'),
 ('Returning User', 3, 'D1', 'U1', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}', 'U1'),
 ('Returning User', 4, 'D2', NULL, '$device:D2', 'Page View', '{}', 'U1'),
 ('Returning User', 5, 'D2', NULL, '$device:D2', 'Page View', '{}', 'U1'),
 ('Returning User', 6, 'D2', 'U1', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D2"}', 'U1');

-- Multiple Users, One Device: U1 logs in on D1, logs out (reset: new device id D2), U2 logs in.
INSERT INTO shared_device (flow, n, device_id, user_id, distinct_id, event, properties, doc_distinct_id) VALUES
 ('Multiple Users, One Device', 1, 'D1', NULL, '$device:D1', 'Page View', '{}', 'U1'),
 ('Multiple Users, One Device', 2, 'D1', 'U1', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}', 'U1'),
 ('Multiple Users, One Device', 3, 'D2', NULL, '$device:D2', 'Page View', '{}', 'U2'),
 ('Multiple Users, One Device', 4, 'D2', NULL, '$device:D2', 'Page View', '{}', 'U2'),
 ('Multiple Users, One Device', 5, 'D2', 'U2', 'U2', '$identify', '{"$identified_id": "U2", "$anon_id": "$device:D2"}', 'U2');

UPDATE signup SET stamped_on_insert = canonical_id;
UPDATE returning_user SET stamped_on_insert = canonical_id;
UPDATE shared_device SET stamped_on_insert = canonical_id;

SELECT 'signup' AS "table", mp_restamp('signup') AS "rows restamped"
UNION ALL SELECT 'returning_user', mp_restamp('returning_user')
UNION ALL SELECT 'shared_device', mp_restamp('shared_device');

\echo
\echo 'Every event row: the distinct_id sent, the canonical id stamped on insert, after mp_restamp, and the doc''s distinct_id'
SELECT flow, n AS "event", coalesce(device_id, '') AS "$device_id", coalesce(user_id, '') AS "$user_id",
       distinct_id AS "distinct_id sent", event, stamped_on_insert AS "stamped on insert",
       canonical_id AS "after mp_restamp", doc_distinct_id AS "doc distinct_id",
       CASE WHEN canonical_id = doc_distinct_id THEN 'yes' ELSE 'NO' END AS "matches doc"
  FROM (SELECT * FROM signup UNION ALL SELECT * FROM returning_user UNION ALL SELECT * FROM shared_device) e
 ORDER BY CASE flow WHEN 'New User Signup' THEN 1 WHEN 'Returning User' THEN 2 ELSE 3 END, n;

\echo 'Identity clusters'
SELECT p.token AS project, c.canonical_id, c.size, c.identified,
       (SELECT string_agg(i.distinct_id, ', ' ORDER BY i.distinct_id) FROM identity_merge.identities i
         WHERE i.project_id = c.project_id AND i.canonical_id = c.canonical_id) AS ids
  FROM identity_merge.clusters c JOIN identity_merge.projects p USING (project_id) ORDER BY 1, 2;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM (SELECT * FROM signup UNION ALL SELECT * FROM returning_user UNION ALL SELECT * FROM shared_device) e
              WHERE canonical_id IS DISTINCT FROM doc_distinct_id) THEN
    RAISE EXCEPTION 'a stamped id differs from the doc';
  END IF;
  RAISE NOTICE 'all % rows match the doc''s distinct_id column',
    (SELECT count(*) FROM signup) + (SELECT count(*) FROM returning_user) + (SELECT count(*) FROM shared_device);
END $$;
