-- Original ID Merge: the "Example User Flows" of Mixpanel's "Identifying Users" page
-- (seed 002_f06f188177ad2724.txt, section "Example User Flows": New User Signup, Returning User,
-- Multiple Users, One Device), first through the functions, then as event rows with their
-- $identify rows in an attached event table; then $create_alias / $merge and the refusals.
--
-- The doc's tables show the distinct_id Mixpanel sets for every event after each step; every
-- table below puts that column ("doc: distinct_id", copied from the doc) next to what the
-- extension answers. The doc writes device ids as D1, D2; Original ID Merge wants a UUID v4 as
-- $anon_id (seed 000, "Create Identity"), so these projects accept any anon id format
-- (anon_id_format 'any'); the UUID rule itself is shown at the end.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project(token), mp_set_project_setting(token, 'anon_id_format', 'any')
  FROM (VALUES ('orig-fn-users'), ('orig-fn-shared'), ('orig-fn-more'),
               ('orig-rows-users'), ('orig-rows-shared'), ('orig-rows-more')) t(token);
SELECT mp_create_project('orig-uuid');   -- keeps the default anon_id_format, 'uuid'
\o
SELECT token, mode, anon_id_format FROM identity_merge.projects WHERE token LIKE 'orig-%' ORDER BY token COLLATE "C";

-- =============================================================================================
-- Part 1: the flows through the functions (mp_identify, mp_resolve, mp_cluster).
-- Each query lists the doc's events: the distinct_id the SDK sends with it, what mp_resolve
-- answers for it now, and the doc's distinct_id (set by Mixpanel) at that step.
-- =============================================================================================

-- New User Signup, step 1: "A user lands in your product on a new device and interacts with
-- your product before signing up. [...] All events tracked at this point will send only a
-- $device_id."
SELECT doc.n AS "Event", doc.sent AS "distinct_id sent",
       mp_resolve(doc.sent, 'orig-fn-users') AS "mp_resolve", doc.distinct_id AS "doc: distinct_id"
  FROM (VALUES (1, '$device:D1', '$device:D1'),
               (2, '$device:D1', '$device:D1')) doc(n, sent, distinct_id)
 ORDER BY doc.n;

-- New User Signup, step 2: "The user returns later and signs up for your product. You call
-- .identify(<user_id>). [...] Mixpanel will retroactively set the $user_id on any prior events
-- with the user's $device_id so that both event streams are joined." Event 3: "Links D1 => U1".
SELECT mp_identify('U1', '$device:D1', 'orig-fn-users');
SELECT doc.n AS "Event", doc.sent AS "distinct_id sent",
       mp_resolve(doc.sent, 'orig-fn-users') AS "mp_resolve", doc.distinct_id AS "doc: distinct_id",
       doc.notes AS "doc: notes"
  FROM (VALUES (1, '$device:D1', 'U1', ''),
               (2, '$device:D1', 'U1', ''),
               (3, 'U1',         'U1', 'Links D1 => U1')) doc(n, sent, distinct_id, notes)
 ORDER BY doc.n;
SELECT mp_cluster('U1', 'orig-fn-users') AS "cluster of U1";

-- Returning User, step 1: "The user from the previous flow returns, but is on a new device and
-- has not logged in yet." Events 4 and 5: "New device D2."
SELECT doc.n AS "Event", doc.sent AS "distinct_id sent",
       mp_resolve(doc.sent, 'orig-fn-users') AS "mp_resolve", doc.distinct_id AS "doc: distinct_id"
  FROM (VALUES (1, '$device:D1', 'U1'),
               (2, '$device:D1', 'U1'),
               (3, 'U1',         'U1'),
               (4, '$device:D2', '$device:D2'),
               (5, '$device:D2', '$device:D2')) doc(n, sent, distinct_id)
 ORDER BY doc.n;

-- Returning User, step 2: "The user logs in allowing us to tell that the user on this device is
-- the same $user_id we have seen before." The login event "Links D2 => U1" (the doc numbers it
-- 5 a second time; it is the sixth event).
SELECT mp_identify('U1', '$device:D2', 'orig-fn-users');
SELECT doc.n AS "Event", doc.sent AS "distinct_id sent",
       mp_resolve(doc.sent, 'orig-fn-users') AS "mp_resolve", doc.distinct_id AS "doc: distinct_id",
       doc.notes AS "doc: notes"
  FROM (VALUES (1, '$device:D1', 'U1', ''),
               (2, '$device:D1', 'U1', ''),
               (3, 'U1',         'U1', ''),
               (4, '$device:D2', 'U1', ''),
               (5, '$device:D2', 'U1', ''),
               (6, 'U1',         'U1', 'Links D2 => U1')) doc(n, sent, distinct_id, notes)
 ORDER BY doc.n;
SELECT mp_cluster('U1', 'orig-fn-users') AS "cluster of U1";

-- Multiple Users, One Device, step 1: "A first user begins using a new device."
SELECT mp_resolve('$device:D1', 'orig-fn-shared') AS "event 1: $device:D1 resolves to";

-- Step 2: "The user logs in, linking the $device_id to their $user_id." Event 1: "Retroactively
-- updated."; event 2: "Links D1 => U1".
SELECT mp_identify('U1', '$device:D1', 'orig-fn-shared');
SELECT doc.n AS "Event", doc.sent AS "distinct_id sent",
       mp_resolve(doc.sent, 'orig-fn-shared') AS "mp_resolve", doc.distinct_id AS "doc: distinct_id",
       doc.notes AS "doc: notes"
  FROM (VALUES (1, '$device:D1', 'U1', 'Retroactively updated.'),
               (2, 'U1',         'U1', 'Links D1 => U1')) doc(n, sent, distinct_id, notes)
 ORDER BY doc.n;

-- Step 3: "The user logs out. At this point, you should call the "reset" function [...] A new
-- user shows up and tracks events using this new $device_id." Event 3: "Reset generated new ID: D2."
SELECT doc.n AS "Event", doc.sent AS "distinct_id sent",
       mp_resolve(doc.sent, 'orig-fn-shared') AS "mp_resolve", doc.distinct_id AS "doc: distinct_id"
  FROM (VALUES (1, '$device:D1', 'U1'),
               (2, 'U1',         'U1'),
               (3, '$device:D2', '$device:D2'),
               (4, '$device:D2', '$device:D2')) doc(n, sent, distinct_id)
 ORDER BY doc.n;

-- Step 4: "This new user now logs in." Events 3 and 4: "Retroactively updated."; event 5:
-- "Links D2 => U2".
SELECT mp_identify('U2', '$device:D2', 'orig-fn-shared');
SELECT doc.n AS "Event", doc.sent AS "distinct_id sent",
       mp_resolve(doc.sent, 'orig-fn-shared') AS "mp_resolve", doc.distinct_id AS "doc: distinct_id",
       doc.notes AS "doc: notes"
  FROM (VALUES (1, '$device:D1', 'U1', ''),
               (2, 'U1',         'U1', ''),
               (3, '$device:D2', 'U2', 'Retroactively updated.'),
               (4, '$device:D2', 'U2', 'Retroactively updated.'),
               (5, 'U2',         'U2', 'Links D2 => U2')) doc(n, sent, distinct_id, notes)
 ORDER BY doc.n;
SELECT mp_cluster('U1', 'orig-fn-shared') AS "cluster of U1";
SELECT mp_cluster('U2', 'orig-fn-shared') AS "cluster of U2";

-- Seed 000 ("Create Identity"): "The $anon_id must be [...] not already merged to an
-- $identified_id." So the second user cannot take over the first user's device (the reason
-- was the "reset" of step 3), and the refusal changes nothing.
SELECT mp_identify('U2', '$device:D1', 'orig-fn-shared');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT mp_resolve('$device:D1', 'orig-fn-shared') AS "$device:D1 still resolves to";

-- =============================================================================================
-- Part 2: the same flows as event rows in an attached table. The trigger stamps each row's
-- canonical_id on insert and applies the $identify rows; mp_restamp brings earlier rows up to
-- date ("Mixpanel will retroactively set [...]"). device_id / user_id are the doc's $device_id /
-- $user_id columns, for reading only: Original ID Merge links ids through $identify events.
-- stamped_on_insert keeps the stamp written on insert (a second BEFORE INSERT trigger; row
-- triggers fire in name order, so identity_merge_stamp has run when it copies canonical_id).
-- =============================================================================================
CREATE FUNCTION orig_keep_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.stamped_on_insert := NEW.canonical_id; RETURN NEW; END $$;

CREATE TABLE orig_user_events (
    n                 int PRIMARY KEY,   -- the doc's "Event" number
    device_id         text,              -- the doc's $device_id, for reading
    user_id           text,              -- the doc's $user_id, for reading
    distinct_id       text,              -- what the SDK sends
    event             text,
    properties        jsonb,
    canonical_id      text,              -- stamped by identity_merge
    stamped_on_insert text
);
CREATE TABLE orig_shared_device_events (LIKE orig_user_events INCLUDING ALL);
\o /dev/null
SELECT mp_attach('orig_user_events', 'orig-rows-users'),
       mp_attach('orig_shared_device_events', 'orig-rows-shared');
\o
CREATE TRIGGER keep_stamp_on_insert BEFORE INSERT ON orig_user_events
    FOR EACH ROW EXECUTE FUNCTION orig_keep_stamp();
CREATE TRIGGER keep_stamp_on_insert BEFORE INSERT ON orig_shared_device_events
    FOR EACH ROW EXECUTE FUNCTION orig_keep_stamp();

-- Every row of a table as the doc's tables show it, plus the stamps and mp_resolve(distinct_id).
-- $device_id / $user_id are the ids the SDK knew when it sent the event (the doc's tables show
-- the $user_id retroactively on earlier events too; the stamps are what changes here).
CREATE VIEW orig_user_rows AS
SELECT n AS "Event", coalesce(device_id, '') AS "$device_id", coalesce(user_id, '') AS "$user_id",
       event, distinct_id AS "distinct_id sent", stamped_on_insert AS "stamp on insert",
       canonical_id AS "after mp_restamp",
       mp_resolve(distinct_id, 'orig-rows-users') AS "mp_resolve(distinct_id)"
  FROM orig_user_events;
CREATE VIEW orig_shared_device_rows AS
SELECT n AS "Event", coalesce(device_id, '') AS "$device_id", coalesce(user_id, '') AS "$user_id",
       event, distinct_id AS "distinct_id sent", stamped_on_insert AS "stamp on insert",
       canonical_id AS "after mp_restamp",
       mp_resolve(distinct_id, 'orig-rows-shared') AS "mp_resolve(distinct_id)"
  FROM orig_shared_device_events;

-- New User Signup, step 1: "All events tracked at this point will send only a $device_id."
INSERT INTO orig_user_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (1, 'D1', NULL, '$device:D1', 'Page View', '{}'),
    (2, 'D1', NULL, '$device:D1', 'Page View', '{}');
SELECT mp_restamp('orig_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_user_rows r
  JOIN (VALUES (1, '$device:D1'),
               (2, '$device:D1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- New User Signup, step 2: "You call .identify(<user_id>). All events sent after this point are
-- tracked with both the original $device_id and the new $user_id. Mixpanel will retroactively
-- set the $user_id on any prior events [...]". The SDK sends $identify: "Links D1 => U1".
INSERT INTO orig_user_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (3, 'D1', 'U1', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}');
SELECT mp_restamp('orig_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_user_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Returning User, step 1: "The user from the previous flow returns, but is on a new device and
-- has not logged in yet." Event 4: "New device D2."
INSERT INTO orig_user_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (4, 'D2', NULL, '$device:D2', 'Page View', '{}'),
    (5, 'D2', NULL, '$device:D2', 'Page View', '{}');
SELECT mp_restamp('orig_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_user_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U1'),
               (4, '$device:D2'),
               (5, '$device:D2')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Returning User, step 2: "The user logs in allowing us to tell that the user on this device is
-- the same $user_id we have seen before." The login's $identify "Links D2 => U1" (the doc
-- numbers it 5 a second time; it is event 6).
INSERT INTO orig_user_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (6, 'D2', 'U1', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D2"}');
SELECT mp_restamp('orig_user_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_user_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U1'),
               (4, 'U1'),
               (5, 'U1'),
               (6, 'U1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Multiple Users, One Device, step 1: "A first user begins using a new device."
INSERT INTO orig_shared_device_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (1, 'D1', NULL, '$device:D1', 'Page View', '{}');
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_shared_device_rows r
  JOIN (VALUES (1, '$device:D1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Step 2: "The user logs in, linking the $device_id to their $user_id." Event 1: "Retroactively
-- updated."; event 2 "Links D1 => U1".
INSERT INTO orig_shared_device_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (2, 'D1', 'U1', 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}');
SELECT mp_restamp('orig_shared_device_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_shared_device_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Step 3: "The user logs out. [...] A new user shows up and tracks events using this new
-- $device_id." Event 3: "Reset generated new ID: D2."
INSERT INTO orig_shared_device_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (3, 'D2', NULL, '$device:D2', 'Page View', '{}'),
    (4, 'D2', NULL, '$device:D2', 'Page View', '{}');
SELECT mp_restamp('orig_shared_device_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_shared_device_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, '$device:D2'),
               (4, '$device:D2')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Step 4: "This new user now logs in." Events 3 and 4: "Retroactively updated."; event 5:
-- "Links D2 => U2".
INSERT INTO orig_shared_device_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (5, 'D2', 'U2', 'U2', '$identify', '{"$identified_id": "U2", "$anon_id": "$device:D2"}');
SELECT mp_restamp('orig_shared_device_events') AS "rows restamped";
SELECT r.*, doc.distinct_id AS "doc: distinct_id"
  FROM orig_shared_device_rows r
  JOIN (VALUES (1, 'U1'),
               (2, 'U1'),
               (3, 'U2'),
               (4, 'U2'),
               (5, 'U2')) doc(n, distinct_id) ON doc.n = r."Event"
 ORDER BY r."Event";

-- Not in the doc's table: the second user's $identify of the first user's device D1 (seed 000:
-- "$anon_id must be [...] not already merged to an $identified_id"). The INSERT does not fail:
-- the row is stored with its own stamp and the refusal is recorded in identity_merge.rejections.
INSERT INTO orig_shared_device_events (n, device_id, user_id, distinct_id, event, properties) VALUES
    (6, 'D1', 'U2', 'U2', '$identify', '{"$identified_id": "U2", "$anon_id": "$device:D1"}');
SELECT mp_restamp('orig_shared_device_events') AS "rows restamped";
SELECT * FROM orig_shared_device_rows WHERE "Event" >= 5 ORDER BY "Event";
SELECT reason_code, operation, id_a, id_b, source_row->>'event' AS event
  FROM identity_merge.rejections
 WHERE source_table = 'orig_shared_device_events'::regclass ORDER BY rejection_id;

-- =============================================================================================
-- Part 3: $create_alias and $merge. The doc's FAQ: "Is it possible to merge two $user_ids? [...]
-- If you are on Original ID Merge, we do have a $merge API call that can merge two $user_ids."
-- and "What is the status of Mixpanel's legacy alias method? [...] Alias is still supported".
-- =============================================================================================

-- Through the functions: an alias joins its target's cluster (the target's canonical survives);
-- $merge joins two identified users (the first id's canonical survives).
SELECT mp_identify('U1', '$device:D1', 'orig-fn-more') AS "identify D1 => U1",
       mp_identify('U2', '$device:D2', 'orig-fn-more') AS "identify D2 => U2";
SELECT mp_alias('U1-email', 'U1', 'orig-fn-more') AS "alias U1-email => U1";
SELECT mp_alias('U1-login', 'U1-email', 'orig-fn-more') AS "alias of the alias";
SELECT mp_merge('U2', 'U1', 'orig-fn-more') AS "merge U2 and U1";
SELECT id, mp_resolve(id, 'orig-fn-more') AS "mp_resolve"
  FROM (VALUES (1, '$device:D1'), (2, '$device:D2'), (3, 'U1'), (4, 'U2'), (5, 'U1-email'),
               (6, 'U1-login')) v(k, id)
 ORDER BY k;
SELECT mp_cluster('U1', 'orig-fn-more') AS "cluster of U1";
-- Replaying an operation on ids already together changes nothing.
SELECT mp_identify('U1', '$device:D1', 'orig-fn-more') AS "identify again",
       mp_merge(ARRAY['U1', 'U2'], 'orig-fn-more') AS "merge again (array form)";

-- As event rows: $create_alias (properties.alias, properties.distinct_id) and $merge
-- (properties.$distinct_ids), applied in row order within one INSERT.
CREATE TABLE orig_more_events (LIKE orig_user_events INCLUDING ALL);
\o /dev/null
SELECT mp_attach('orig_more_events', 'orig-rows-more');
\o
CREATE TRIGGER keep_stamp_on_insert BEFORE INSERT ON orig_more_events
    FOR EACH ROW EXECUTE FUNCTION orig_keep_stamp();
INSERT INTO orig_more_events (n, distinct_id, event, properties) VALUES
    (1, '$device:D1', 'Page View', '{}'),
    (2, 'U1', '$identify', '{"$identified_id": "U1", "$anon_id": "$device:D1"}'),
    (3, 'U1-email', 'Page View', '{}'),
    (4, 'U1-email', '$create_alias', '{"alias": "U1-email", "distinct_id": "U1"}'),
    (5, 'U1-email', 'Page View', '{}'),
    (6, 'U2', 'Page View', '{}'),
    (7, 'U2', '$merge', '{"$distinct_ids": ["U2", "U1"]}'),
    (8, 'U1', 'Page View', '{}');
SELECT mp_restamp('orig_more_events') AS "rows restamped";
SELECT n AS "Event", event, distinct_id AS "distinct_id sent", stamped_on_insert AS "stamp on insert",
       canonical_id AS "after mp_restamp", mp_resolve(distinct_id, 'orig-rows-more') AS "mp_resolve(distinct_id)"
  FROM orig_more_events ORDER BY n;

-- =============================================================================================
-- Part 4: the refusals, with Mixpanel's reason codes. A refusal raises and changes nothing; in
-- an event table it is recorded instead (Part 2).
-- =============================================================================================

-- Seed 000: "The $anon_id must be UUID v4 format" (here the default anon_id_format, 'uuid').
SELECT mp_identify('U1', '$device:D1', 'orig-uuid');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT mp_identify('U1', '$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b', 'orig-uuid') AS "UUID v4 anon_id";
SELECT mp_identify('U1', '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d', 'orig-uuid') AS "also without $device:";
-- "... and not already merged to an $identified_id."
SELECT mp_identify('U2', '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d', 'orig-uuid');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- The same id on both sides.
SELECT mp_identify('U1', 'U1', 'orig-fn-more');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- An alias that already belongs to another cluster.
SELECT mp_identify('U3', '$device:D3', 'orig-fn-more');
SELECT mp_alias('U1-email', 'U3', 'orig-fn-more');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- NULL and blocked ids.
SELECT mp_identify(NULL, '$device:D4', 'orig-fn-more');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT mp_identify('undefined', '$device:D4', 'orig-fn-more');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- "In the original API a maximum of 500 IDs can be merged into a single cluster" (the doc's
-- "Key Changes"); max_cluster_size makes the limit 3 here.
\o /dev/null
SELECT mp_set_project_setting('orig-fn-more', 'max_cluster_size', '3');
\o
SELECT setting, value FROM mp_project_settings('orig-fn-more') WHERE setting = 'max_cluster_size';
SELECT mp_merge('U3', 'U1', 'orig-fn-more');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- $merge takes exactly two ids.
SELECT mp_merge(ARRAY['U1'], 'orig-fn-more');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- None of these changed anything.
SELECT id, mp_resolve(id, 'orig-fn-more') AS "mp_resolve"
  FROM (VALUES (1, '$device:D1'), (2, 'U1'), (3, 'U1-email'), (4, 'U3'), (5, '$device:D3'),
               (6, '$device:D4')) v(k, id)
 ORDER BY k;
SELECT check_name, detail FROM mp_check('orig-fn-more');
