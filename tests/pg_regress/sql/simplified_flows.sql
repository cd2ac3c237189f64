-- Simplified ID Merge: the "Example User Flows" of Mixpanel's "Identifying Users" page (seed
-- 002_f06f188177ad2724.txt, section "Example User Flows": New User Signup, Returning User,
-- Multiple Users, One Device) in projects created with mp_create_project(token, 'simplified'),
-- then the section "Simplified vs Original ID Merge" ("How do I enable the Simplified API on a
-- project?", "Key Changes from the Original API").
--
-- The doc's tables are Simplified ID Merge's: events carry $device_id and/or $user_id, and
-- Mixpanel sets distinct_id to the $user_id, else to '$device:' || $device_id. There are no
-- $identify events: the first event carrying both ids links the device to the user. Every table
-- below puts the doc's distinct_id ("doc: distinct_id", copied from the doc) next to what the
-- extension answers.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project(token, 'simplified')
  FROM (VALUES ('simp-users'), ('simp-shared'), ('simp-props'), ('simp-rules')) t(token);
\o
SELECT token, mode FROM identity_merge.projects WHERE token LIKE 'simp-%' ORDER BY token COLLATE "C";

-- =============================================================================================
-- Part 1: the flows as event rows with "$device_id" / "$user_id" columns. The trigger fills the
-- NULL distinct_id column as Mixpanel sets it, links the device to the user on the first event
-- carrying both, and stamps canonical_id; mp_restamp brings earlier rows up to date ("Mixpanel
-- will retroactively set the $user_id on any prior events"). stamped_on_insert keeps the stamp
-- written on insert (a second BEFORE INSERT trigger; row triggers fire in name order, so
-- identity_merge_stamp has run when it copies canonical_id).
-- =============================================================================================
CREATE FUNCTION simp_keep_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.stamped_on_insert := NEW.canonical_id; RETURN NEW; END $$;

CREATE TABLE simp_user_events (
    n                 int PRIMARY KEY,   -- the doc's "Event" number
    "$device_id"      text,
    "$user_id"        text,
    distinct_id       text,              -- NULL on insert: filled in by the trigger
    event             text,
    properties        jsonb,
    canonical_id      text,              -- stamped by identity_merge
    stamped_on_insert text
);
CREATE TABLE simp_shared_device_events (LIKE simp_user_events INCLUDING ALL);
\o /dev/null
SELECT mp_attach('simp_user_events', 'simp-users'),
       mp_attach('simp_shared_device_events', 'simp-shared');
\o
CREATE TRIGGER keep_stamp_on_insert BEFORE INSERT ON simp_user_events
    FOR EACH ROW EXECUTE FUNCTION simp_keep_stamp();
CREATE TRIGGER keep_stamp_on_insert BEFORE INSERT ON simp_shared_device_events
    FOR EACH ROW EXECUTE FUNCTION simp_keep_stamp();

-- Every row as the doc's tables show it, plus the stamps and mp_resolve(distinct_id).
-- $device_id / $user_id are what the event carried (the doc's tables show the $user_id
-- retroactively on earlier events too; the stamps are what changes here).
CREATE VIEW simp_user_rows AS
SELECT n AS "Event", coalesce("$device_id", '') AS "$device_id", coalesce("$user_id", '') AS "$user_id",
       distinct_id, stamped_on_insert AS "stamp on insert", canonical_id AS "after mp_restamp",
       mp_resolve(distinct_id, 'simp-users') AS "mp_resolve(distinct_id)"
  FROM simp_user_events;
CREATE VIEW simp_shared_device_rows AS
SELECT n AS "Event", coalesce("$device_id", '') AS "$device_id", coalesce("$user_id", '') AS "$user_id",
       distinct_id, stamped_on_insert AS "stamp on insert", canonical_id AS "after mp_restamp",
       mp_resolve(distinct_id, 'simp-shared') AS "mp_resolve(distinct_id)"
  FROM simp_shared_device_events;

-- New User Signup, step 1: "A user lands in your product on a new device and interacts with
-- your product before signing up. Our SDK will assign the user a random $device_id and persist
-- it. All events tracked at this point will send only a $device_id."
INSERT INTO simp_user_events (n, "$device_id", "$user_id", event) VALUES
    (1, 'D1', NULL, 'Page View'),
    (2, 'D1', NULL, 'Page View');
SELECT mp_restamp('simp_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_user_rows r
  JOIN (VALUES (1, '$device:D1'),
               (2, '$device:D1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- New User Signup, step 2: "The user returns later and signs up for your product. You call
-- .identify(<user_id>). All events sent after this point are tracked with both the original
-- $device_id and the new $user_id. Mixpanel will retroactively set the $user_id on any prior
-- events with the user's $device_id so that both event streams are joined." Event 3:
-- "Links D1 => U1".
INSERT INTO simp_user_events (n, "$device_id", "$user_id", event) VALUES
    (3, 'D1', 'U1', 'Sign Up');
SELECT mp_restamp('simp_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_user_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Returning User, step 1: "The user from the previous flow returns, but is on a new device and
-- has not logged in yet." Event 4: "New device D2."
INSERT INTO simp_user_events (n, "$device_id", "$user_id", event) VALUES
    (4, 'D2', NULL, 'Page View'),
    (5, 'D2', NULL, 'Page View');
SELECT mp_restamp('simp_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_user_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U1'),
               (4, '$device:D2'),
               (5, '$device:D2')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Returning User, step 2: "The user logs in allowing us to tell that the user on this device is
-- the same $user_id we have seen before." The login event "Links D2 => U1" (the doc numbers it
-- 5 a second time; it is event 6).
INSERT INTO simp_user_events (n, "$device_id", "$user_id", event) VALUES
    (6, 'D2', 'U1', 'Login');
SELECT mp_restamp('simp_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_user_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U1'),
               (4, 'U1'),
               (5, 'U1'),
               (6, 'U1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";
SELECT mp_cluster('U1', 'simp-users') AS "cluster of U1";

-- Multiple Users, One Device, step 1: "A first user begins using a new device."
INSERT INTO simp_shared_device_events (n, "$device_id", "$user_id", event) VALUES
    (1, 'D1', NULL, 'Page View');
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_shared_device_rows r
  JOIN (VALUES (1, '$device:D1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Step 2: "The user logs in, linking the $device_id to their $user_id." Event 1: "Retroactively
-- updated."; event 2: "Links D1 => U1".
INSERT INTO simp_shared_device_events (n, "$device_id", "$user_id", event) VALUES
    (2, 'D1', 'U1', 'Login');
SELECT mp_restamp('simp_shared_device_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_shared_device_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Step 3: "The user logs out. At this point, you should call the "reset" function on the
-- Mixpanel SDK, or manually generate a new $device_id [...]. A new user shows up and tracks
-- events using this new $device_id." Event 3: "Reset generated new ID: D2."
INSERT INTO simp_shared_device_events (n, "$device_id", "$user_id", event) VALUES
    (3, 'D2', NULL, 'Page View'),
    (4, 'D2', NULL, 'Page View');
SELECT mp_restamp('simp_shared_device_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_shared_device_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, '$device:D2'),
               (4, '$device:D2')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Step 4: "This new user now logs in." Events 3 and 4: "Retroactively updated."; event 5:
-- "Links D2 => U2".
INSERT INTO simp_shared_device_events (n, "$device_id", "$user_id", event) VALUES
    (5, 'D2', 'U2', 'Login');
SELECT mp_restamp('simp_shared_device_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM simp_shared_device_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U2'),
               (4, 'U2'),
               (5, 'U2')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";
SELECT mp_cluster('U1', 'simp-shared') AS "cluster of U1";
SELECT mp_cluster('U2', 'simp-shared') AS "cluster of U2";

-- Not in the doc's table: without the "reset", the second user would log in on the first
-- user's device D1. A device links to one user only; the event is still the second user's
-- (its distinct_id is its $user_id), and the refusal is recorded, never an error.
INSERT INTO simp_shared_device_events (n, "$device_id", "$user_id", event) VALUES
    (6, 'D1', 'U2', 'Login');
SELECT mp_restamp('simp_shared_device_events') AS "rows restamped";
SELECT * FROM simp_shared_device_rows WHERE "Event" >= 5 ORDER BY "Event";
SELECT mp_resolve('$device:D1', 'simp-shared') AS "$device:D1 still resolves to";
SELECT reason_code, operation, id_a, id_b
  FROM identity_merge.rejections
 WHERE source_table = 'simp_shared_device_events'::regclass ORDER BY rejection_id;

-- =============================================================================================
-- Part 2: New User Signup again, with $device_id / $user_id in the event's properties (a table
-- without those columns), as the HTTP API sends them.
-- =============================================================================================
CREATE TABLE simp_props_events (
    n            int PRIMARY KEY,
    distinct_id  text,
    event        text,
    properties   jsonb,
    canonical_id text
);
\o /dev/null
SELECT mp_attach('simp_props_events', 'simp-props');
\o
-- Step 1: "All events tracked at this point will send only a $device_id."
-- Step 2: "All events sent after this point are tracked with both the original $device_id and
-- the new $user_id." Event 3: "Links D1 => U1".
INSERT INTO simp_props_events (n, event, properties) VALUES
    (1, 'Page View', '{"$device_id": "D1"}'),
    (2, 'Page View', '{"$device_id": "D1"}'),
    (3, 'Sign Up',   '{"$device_id": "D1", "$user_id": "U1"}');
SELECT mp_restamp('simp_props_events') AS "rows restamped";
SELECT e.n AS "Event", e.properties, e.distinct_id, e.canonical_id AS "after mp_restamp",
       mp_resolve(e.distinct_id, 'simp-props') AS "mp_resolve(distinct_id)", doc.distinct_id AS "doc: distinct_id"
  FROM simp_props_events e
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U1')) doc(n, distinct_id) ON doc.n = e.n
 ORDER BY e.n;

-- =============================================================================================
-- Part 3: "Simplified vs Original ID Merge".
-- =============================================================================================
CREATE TABLE simp_rule_events (LIKE simp_user_events INCLUDING ALL);
\o /dev/null
SELECT mp_attach('simp_rule_events', 'simp-rules');
\o

-- "In the simplified API the $identify, $merge, and $create_alias events no longer have any
-- special meaning and will be ignored. Instead [...] identities are linked using the $user_id
-- and $device_id properties on regular events". Ignored identity events are recorded
-- (errIgnoredInSimplified); the rows are kept as ordinary events.
INSERT INTO simp_rule_events (n, "$device_id", "$user_id", distinct_id, event, properties) VALUES
    (1, 'D1', NULL, NULL, 'Page View', '{}'),
    (2, NULL, NULL, 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}'),
    (3, NULL, NULL, 'U1', '$create_alias', '{"alias": "$device:D1", "distinct_id": "U1"}'),
    (4, NULL, NULL, 'U1', '$merge', '{"$distinct_ids": ["U1", "$device:D1"]}');
SELECT n, event, distinct_id, canonical_id FROM simp_rule_events ORDER BY n;
SELECT mp_resolve('$device:D1', 'simp-rules') AS "$device:D1 resolves to";

-- "$distinct_id is predictable and matches $user_id for identified users."
INSERT INTO simp_rule_events (n, "$device_id", "$user_id", event) VALUES
    (5, 'D1', 'U1', 'Login'),
    (6, 'D1', NULL, 'Page View');
SELECT n, "$device_id", "$user_id", distinct_id, canonical_id FROM simp_rule_events WHERE n >= 5 ORDER BY n;

-- "There is no limit on the number of $device_ids that can be merged into a single $user_id
-- [...] although you can only merge $device_ids into $user_ids. It is not possible to merge
-- $user_ids with each other." 600 devices link to U1 (Original ID Merge stops at 500 ids).
INSERT INTO simp_rule_events (n, "$device_id", "$user_id", event)
SELECT 100 + g, 'D-many-' || g, 'U1', 'Login' FROM generate_series(1, 600) g;
SELECT count(*) AS "ids in U1's cluster" FROM mp_cluster('U1', 'simp-rules');
INSERT INTO simp_rule_events (n, "$device_id", "$user_id", event) VALUES
    (7, 'D2', 'U2', 'Login'),
    (8, 'D2', 'U1', 'Login');       -- D2 belongs to U2: U1 and U2 stay apart
SELECT n, "$device_id", "$user_id", distinct_id, canonical_id FROM simp_rule_events WHERE n IN (7, 8) ORDER BY n;
SELECT mp_resolve('U2', 'simp-rules') AS "U2 resolves to", mp_resolve('$device:D2', 'simp-rules') AS "$device:D2 resolves to";
-- The Original ID Merge functions are not available in a simplified project.
SELECT mp_merge('U1', 'U2', 'simp-rules');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT mp_identify('U1', '$device:D3', 'simp-rules');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT mp_alias('U1-email', 'U1', 'simp-rules');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- "We recommend using an ID that is unique to each user [...]" (FAQ): a $user_id that is a
-- device id is refused (recorded; the event keeps its device's distinct_id).
INSERT INTO simp_rule_events (n, "$device_id", "$user_id", event) VALUES
    (9, 'D9', '$device:D9', 'Login');
SELECT n, "$device_id", "$user_id", distinct_id, canonical_id FROM simp_rule_events WHERE n = 9;

-- An event with only a distinct_id: a value starting '$device:' is a device, any other a user.
INSERT INTO simp_rule_events (n, distinct_id, event) VALUES
    (10, '$device:D1', 'Page View'),
    (11, 'U7', 'Page View');
SELECT n, distinct_id, canonical_id FROM simp_rule_events WHERE n IN (10, 11) ORDER BY n;

-- Everything this table's events had refused or ignored, in order.
SELECT reason_code, operation, id_a, id_b, source_row->>'event' AS event
  FROM identity_merge.rejections
 WHERE source_table = 'simp_rule_events'::regclass ORDER BY rejection_id;

-- "How do I enable the Simplified API on a project? [...] You cannot switch between the original
-- and simplified APIs once a project contains data. You must choose to enable the simplified
-- API before sending the first event to a new project." The extension refuses the switch once
-- the project holds identities (here: after the first event that links a device to a user).
\o /dev/null
SELECT mp_create_project('simp-switch');
SELECT mp_set_project_mode('simp-switch', 'simplified');   -- no data yet: allowed
\o
SELECT token, mode FROM identity_merge.projects WHERE token = 'simp-switch';
SELECT mp_track('{"event": "Login", "properties": {"token": "simp-switch", "$device_id": "D1", "$user_id": "U1"}}') AS "first event";
SELECT mp_set_project_mode('simp-switch', 'original');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT check_name, detail FROM mp_check('simp-rules');
