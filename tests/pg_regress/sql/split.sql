-- Undo: a shared laptop. Ann and Bob use one laptop (device L). Ann logs in ($identify Ann, L);
-- later Bob logs in on the same laptop and a misconfigured client sends $merge Bob, L: now Ann
-- and Bob are one person. mp_explain shows why, mp_split(L) takes back every join the laptop took
-- part in, mp_restamp brings the event rows back, and each can then be identified correctly.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('laptop');
SELECT mp_set_project_setting('laptop', 'anon_id_format', 'any');
\o
CREATE TABLE laptop_events (n int PRIMARY KEY, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('laptop_events', 'laptop');

INSERT INTO laptop_events (n, distinct_id, event, properties) VALUES
    (1, 'L', 'Page View', '{}'),
    (2, 'Ann', '$identify', '{"$identified_id": "Ann", "$anon_id": "L"}'),
    (3, 'Ann', 'Purchase', '{}'),
    (4, 'Ann-phone', '$identify', '{"$identified_id": "Ann", "$anon_id": "Ann-phone"}'),
    (5, 'Bob', 'Sign Up', '{}'),
    (6, 'Bob', '$merge', '{"$distinct_ids": ["Bob", "L"]}'),
    (7, 'Bob', 'Purchase', '{}');
SELECT mp_restamp('laptop_events');
SELECT n, distinct_id, event, canonical_id FROM laptop_events ORDER BY n;

-- Why is Bob Ann? Through the laptop: the chain of joins between them.
SELECT step, operation, id_a, id_b, source, source_detail ->> 'event' AS event
  FROM mp_explain('Bob', 'Ann', 'laptop');

-- Split the laptop off: every join it took part in is retracted. Ann keeps her phone; Bob is
-- alone again; the laptop is alone (an anonymous device nobody owns).
SELECT * FROM mp_split('L', 'laptop');
SELECT mp_resolve(id, 'laptop') AS resolves_to, id FROM (VALUES ('L'), ('Ann'), ('Ann-phone'), ('Bob')) v(id);
SELECT * FROM mp_cluster('Ann', 'laptop');
SELECT operation, target, old_canonical, cardinality(retracted) AS joins, source, source_detail
  FROM identity_merge.retractions r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'laptop';

-- mp_restamp brings every row back to mp_resolve(distinct_id), including rows stamped 'Ann',
-- which is still a canonical id (of Ann's cluster) but no longer the laptop's or Bob's.
SELECT mp_restamp('laptop_events');
SELECT n, distinct_id, canonical_id, canonical_id = mp_resolve(distinct_id, 'laptop') AS current
  FROM laptop_events ORDER BY n;

-- As if the retracted joins never happened: Bob can now identify the laptop he uses.
SELECT mp_identify('Bob', 'L', 'laptop');
SELECT * FROM mp_cluster('L', 'laptop');
-- An id never seen is an error.
SELECT * FROM mp_split('nobody', 'laptop');

-- mp_unjoin takes back one join by its merge_log seq (mp_explain shows it): Ann's phone.
SELECT * FROM mp_unjoin((SELECT seq FROM mp_explain('Ann-phone', 'laptop')));
SELECT * FROM mp_unjoin((SELECT max(seq) FROM identity_merge.merge_log WHERE retracted_by IS NOT NULL));
SELECT * FROM mp_unjoin(-1);
-- An id alone (all its joins retracted): no rows, nothing changes.
SELECT * FROM mp_split('Ann-phone', 'laptop');

-- Simplified projects: a device linked to the wrong user is split off and links to another.
\o /dev/null
SELECT mp_create_project('laptop-simplified', 'simplified');
\o
CREATE TABLE laptop_simple (n int, "$device_id" text, "$user_id" text, distinct_id text, canonical_id text);
SELECT mp_attach('laptop_simple', 'laptop-simplified');
INSERT INTO laptop_simple (n, "$device_id", "$user_id") VALUES (1, 'L2', 'Ann'), (2, 'L2', 'Bob');
SELECT * FROM mp_split('$device:L2', 'laptop-simplified');
INSERT INTO laptop_simple (n, "$device_id", "$user_id") VALUES (3, 'L2', 'Bob');
SELECT mp_resolve('$device:L2', 'laptop-simplified') AS device_now;

-- The log replays to what is stored, and no stamp is left that mp_restamp would not fix.
SELECT count(*) AS violations FROM mp_check('laptop');
SELECT count(*) AS violations FROM mp_check('laptop-simplified');
