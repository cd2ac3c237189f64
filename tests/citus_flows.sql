-- The seed's example flows (Mixpanel's "Identifying Users", seed 002: New User Signup, Returning
-- User, Multiple Users One Device) and the other identity events, as a pipeline sends them: event
-- rows with their $identify / $create_alias / $merge rows, loaded by INSERT, INSERT ... SELECT and
-- COPY, each load followed by mp_apply_pending() (on one server it applies nothing: the trigger
-- applied the events as the rows went in) and mp_restamp. tests/citus.sh runs this file on one PostgreSQL server
-- and on a Citus coordinator (psql variable citus = 1: the event tables are distributed) and
-- requires the same output from both.
\set ON_ERROR_STOP 1
\set QUIET 1
\pset footer off
SET client_min_messages = warning;
-- After each load: apply the queued identity events (Citus), then bring earlier stamps up to date.
\set apply 'SELECT mp_apply_pending() >= 0 AS applied, mp_restamp(''ev_users'') >= 0 AS u, mp_restamp(''ev_shared'') >= 0 AS s, mp_restamp(''ev_more'') >= 0 AS m, mp_restamp(''ev_bulk'') >= 0 AS b \\gset'
-- (mp_restamp of the later tables is in their sections: they do not exist yet here)
\o /dev/null
SELECT mp_create_project(t), mp_set_project_setting(t, 'anon_id_format', 'any')
  FROM (VALUES ('flows-users'), ('flows-shared'), ('flows-more'), ('flows-bulk')) v(t);
\o
CREATE TABLE ev_users  (id int, distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE ev_shared (id int, distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE ev_more   (id int, distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE ev_bulk   (id int, distinct_id text, event text, properties jsonb, canonical_id text);
\if :citus
-- Distributed by the id users send, and by a tenant-like column; before and after mp_attach.
SELECT mp_distribute_events('ev_users', 'distinct_id') \gset
SELECT mp_distribute_events('ev_shared', 'id') \gset
\endif
SELECT mp_attach('ev_users', 'flows-users'), mp_attach('ev_shared', 'flows-shared'),
       mp_attach('ev_more', 'flows-more'), mp_attach('ev_bulk', 'flows-bulk') \gset
\if :citus
SELECT mp_distribute_events('ev_more', 'distinct_id') \gset
SELECT mp_distribute_events('ev_bulk', 'id') \gset
\endif

\echo '== New User Signup: two events from device D1, before signing up'
INSERT INTO ev_users VALUES (1, '$device:D1', 'Page View', '{}'), (2, '$device:D1', 'Add to Cart', '{}');
:apply
SELECT id, distinct_id, canonical_id FROM ev_users ORDER BY id;
\echo '== New User Signup: the user signs up, .identify(U1): event 3 links D1 => U1'
INSERT INTO ev_users VALUES (3, 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}');
:apply
SELECT id, distinct_id, canonical_id FROM ev_users ORDER BY id;
\echo '== Returning User: new device D2, two events before logging in, then the login links D2 => U1'
INSERT INTO ev_users VALUES (4, '$device:D2', 'Page View', '{}'), (5, '$device:D2', 'Page View', '{}'),
                            (6, 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D2"}'),
                            (7, '$device:D2', 'Purchase', '{}');
:apply
SELECT id, distinct_id, canonical_id FROM ev_users ORDER BY id;
SELECT mp_cluster('U1', 'flows-users') AS "cluster of U1";

\echo '== Multiple Users, One Device: U1 logs in on D1; after a reset D2 is linked to U2; D1 cannot be linked to U2'
INSERT INTO ev_shared VALUES (1, '$device:D1', 'Page View', '{}'),
                             (2, 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}'),
                             (3, 'U1', 'Purchase', '{}');
:apply
INSERT INTO ev_shared VALUES (4, '$device:D2', 'Page View', '{}'),
                             (5, 'U2', '$identify', '{"$identified_id": "U2", "$anon_id": "$device:D2"}'),
                             (6, 'U2', '$identify', '{"$identified_id": "U2", "$anon_id": "$device:D1"}'),
                             (7, '$device:D1', 'Page View', '{}');
:apply
SELECT id, distinct_id, canonical_id FROM ev_shared ORDER BY id;
SELECT reason_code, operation, id_a, id_b, source_row->>'event' AS event
  FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'flows-shared' ORDER BY reason_code, id_a, id_b;

\echo '== $create_alias and $merge rows, a malformed $merge, and the functions beside them'
INSERT INTO ev_more VALUES (1, 'A1', 'Page View', '{}'), (2, 'U5', 'Page View', '{}'),
                           (3, 'U5', '$create_alias', '{"distinct_id": "U5", "alias": "A1"}'),
                           (4, 'M1', 'Page View', '{}'), (5, 'M2', 'Page View', '{}'),
                           (6, 'M1', '$merge', '{"$distinct_ids": ["M1", "M2"]}'),
                           (7, 'M1', '$merge', '{"$distinct_ids": ["M1"]}');
:apply
SELECT mp_identify('U6', 'D6', 'flows-more') AS identify, mp_merge('U6', 'M1', 'flows-more') AS merge,
       mp_alias('A7', 'U6', 'flows-more') AS alias;
SELECT (mp_track('{"event": "$identify", "properties": {"token": "flows-more", "distinct_id": "U8", "$identified_id": "U8", "$anon_id": "D8"}}'::jsonb))->>'status' AS track;
INSERT INTO ev_more VALUES (8, 'D6', 'Page View', '{}'), (9, 'A7', 'Page View', '{}'), (10, 'D8', 'Page View', '{}');
:apply
SELECT id, distinct_id, canonical_id FROM ev_more ORDER BY id;
SELECT mp_resolve(i, 'flows-more') AS resolved, i AS id
  FROM unnest(ARRAY['A1', 'U5', 'M1', 'M2', 'D6', 'U6', 'A7', 'D8', 'U8', 'nobody']) i ORDER BY i;
SELECT reason_code, operation, id_a, id_b FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'flows-more' ORDER BY reason_code, id_a, id_b;
SELECT step, operation, id_a, id_b, kept_canonical FROM mp_explain('A7', 'flows-more') ORDER BY step;

\echo '== A bulk load in one statement (INSERT ... SELECT): 200 users log in, each after 3 anonymous events'
INSERT INTO ev_bulk
SELECT u * 10 + k, CASE WHEN k = 3 THEN 'bu' || u ELSE 'bd' || u END,
       CASE WHEN k = 3 THEN '$identify' ELSE 'Page View' END,
       CASE WHEN k = 3 THEN jsonb_build_object('$identified_id', 'bu' || u, '$anon_id', 'bd' || u) ELSE '{}' END
  FROM generate_series(1, 200) u, generate_series(0, 4) k;
\echo '== and a COPY: the same 200 users on a second device'
COPY ev_bulk (id, distinct_id, event, properties) FROM STDIN;
5001	be1	Page View	{}
5002	bu1	$identify	{"$identified_id": "bu1", "$anon_id": "be1"}
5003	be2	Page View	{}
5004	bu2	$identify	{"$identified_id": "bu2", "$anon_id": "be2"}
5005	be3	Page View	{}
5006	bu3	$identify	{"$identified_id": "bu3", "$anon_id": "be3"}
5007	be1	Page View	{}
\.
:apply
SELECT count(*) AS rows, count(*) FILTER (WHERE canonical_id = 'bu' || substr(distinct_id, 3)) AS stamped_with_their_user,
       count(DISTINCT canonical_id) AS people
  FROM ev_bulk;
SELECT count(*) AS joins, count(DISTINCT kept_canonical) AS kept, min(operation) AS op
  FROM identity_merge.merge_log l JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'flows-bulk';
SELECT size, count(*) AS clusters FROM identity_merge.clusters c JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'flows-bulk' GROUP BY size ORDER BY size;

\echo '== Simplified ID Merge: $device_id / $user_id columns; the first row with both links the device'
SELECT mp_create_project('flows-simple', 'simplified') \gset
CREATE TABLE ev_simple (id int, "$device_id" text, "$user_id" text, distinct_id text, event text, properties jsonb, canonical_id text);
\if :citus
SELECT mp_distribute_events('ev_simple', 'id') \gset
\endif
SELECT mp_attach('ev_simple', 'flows-simple') \gset
INSERT INTO ev_simple (id, "$device_id", "$user_id", event, properties) VALUES
    (1, 'S1', NULL, 'Page View', '{}'), (2, 'S1', NULL, 'Page View', '{}'),
    (3, 'S1', 'SU1', 'Sign Up', '{}'), (4, NULL, 'SU1', 'Purchase', '{}');
:apply
INSERT INTO ev_simple (id, "$device_id", "$user_id", event, properties) VALUES
    (5, 'S2', NULL, 'Page View', '{}'), (6, 'S2', 'SU1', 'Login', '{}'), (7, 'S2', 'SU1', 'Login', '{}');
:apply
INSERT INTO ev_simple (id, "$device_id", "$user_id", event, properties) VALUES (8, 'S1', 'SU2', 'Login', '{}');
:apply
SELECT mp_restamp('ev_simple') >= 0 AS restamped \gset
SELECT id, distinct_id, canonical_id FROM ev_simple ORDER BY id;
SELECT reason_code, id_a, id_b FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'flows-simple' ORDER BY reason_code, id_a, id_b;

\echo '== Legacy aliases: an alias maps once to its original, and stamps are final'
SELECT mp_create_project('flows-legacy', 'legacy'), mp_set_project_setting('flows-legacy', 'anon_id_format', 'any') \gset
CREATE TABLE ev_legacy (id int, distinct_id text, event text, properties jsonb, canonical_id text);
\if :citus
SELECT mp_distribute_events('ev_legacy', 'distinct_id') \gset
\endif
SELECT mp_attach('ev_legacy', 'flows-legacy') \gset
INSERT INTO ev_legacy VALUES (1, 'L-anon', 'Page View', '{}'),
                             (2, 'L-anon', '$create_alias', '{"distinct_id": "L-anon", "alias": "L-user"}');
:apply
INSERT INTO ev_legacy VALUES (3, 'L-user', 'Purchase', '{}'),
                             (4, 'L-anon', '$create_alias', '{"distinct_id": "L-other", "alias": "L-user"}');
:apply
SELECT id, distinct_id, canonical_id FROM ev_legacy ORDER BY id;
SELECT reason_code, id_a, id_b FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'flows-legacy' ORDER BY reason_code, id_a, id_b;

\echo '== Segment payloads, people profiles, a split and its restamp'
SELECT (mp_segment('{"type": "identify", "userId": "SEG-U", "anonymousId": "SEG-A", "writeKey": "flows-more"}'::jsonb, 'flows-more'))->>'status' AS segment;
SELECT (mp_engage('{"$token": "flows-more", "$distinct_id": "D6", "$set": {"plan": "pro"}}'::jsonb))->>'status' AS engage_device,
       (mp_engage('{"$token": "flows-more", "$distinct_id": "U6", "$set_once": {"first": "2026-01-01"}}'::jsonb))->>'status' AS engage_user;
SELECT mp_profile('A7', 'flows-more') AS profile_of_a7;
SELECT mp_refresh_people('flows-more') AS people_refreshed;
SELECT canonical_id, properties FROM identity_merge.people pe JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'flows-more' ORDER BY canonical_id;
SELECT id, old_canonical, new_canonical FROM mp_split('M2', 'flows-more') ORDER BY id;
:apply
SELECT id, distinct_id, canonical_id FROM ev_more ORDER BY id;
SELECT mp_resolve(i, 'flows-more') AS resolved, i AS id FROM unnest(ARRAY['M1', 'M2', 'U6', 'SEG-A']) i ORDER BY i;

\echo '== mp_backfill of a history into its own project, mp_restamp, mp_check'
SELECT mp_create_project('flows-backfill') \gset
SET identity_merge.anon_id_format = 'any';
SELECT events, joins FROM mp_backfill($$SELECT op, a, b FROM (VALUES (1, 'identify', 'H1', 'h1'), (2, 'identify', 'H1', 'h2'),
                                       (3, 'merge', 'H1', 'H2'), (4, 'alias', 'ha', 'H2')) v(n, op, a, b) ORDER BY n$$, 'flows-backfill');
RESET identity_merge.anon_id_format;
SELECT mp_resolve(i, 'flows-backfill') AS resolved, i AS id FROM unnest(ARRAY['h1', 'h2', 'H2', 'ha']) i ORDER BY i;
SELECT mp_restamp('ev_users') AS restamped_users, mp_restamp('ev_bulk') AS restamped_bulk;
SELECT t AS project, count(c.*) AS violations FROM unnest(ARRAY['flows-users', 'flows-shared', 'flows-more', 'flows-bulk', 'flows-backfill', 'flows-simple', 'flows-legacy']) t
  LEFT JOIN LATERAL mp_check(t) c ON true GROUP BY t ORDER BY t;
\echo '== the merge log (by ids: rows of one statement that went to different nodes have no order)'
SELECT p.token, l.operation, l.id_a, l.id_b, l.kept_canonical, l.absorbed_canonical, l.moved_ids, l.source,
       l.retracted_by IS NOT NULL AS retracted
  FROM identity_merge.merge_log l JOIN identity_merge.projects p USING (project_id)
 WHERE p.token LIKE 'flows-%' AND p.token <> 'flows-bulk' ORDER BY p.token, l.id_a, l.id_b, l.seq;
