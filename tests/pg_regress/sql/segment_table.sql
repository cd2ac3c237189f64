-- A Segment / RudderStack warehouse table (tracks: anonymous_id, user_id, event), stamped as it
-- lands: mp_attach names the columns that hold the device and the user id, and in a Simplified
-- project the trigger links anonymous_id to user_id as Mixpanel links $device_id to $user_id,
-- filling distinct_id (user_id, else '$device:' || anonymous_id) and stamping canonical_id.
-- Only two columns are added to the table Segment writes: distinct_id and canonical_id.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('segment-warehouse', 'simplified');
\o
CREATE TABLE tracks (
    id           text PRIMARY KEY,
    anonymous_id text,
    user_id      text,
    event        text,
    received_at  timestamptz DEFAULT '2026-01-01',
    distinct_id  text,
    canonical_id text
);
SELECT mp_attach('tracks', 'segment-warehouse', device_id_column => 'anonymous_id', user_id_column => 'user_id');
INSERT INTO tracks (id, anonymous_id, user_id, event) VALUES
    ('m1', 'a-1', NULL, 'Page Viewed'),
    ('m2', 'a-1', NULL, 'Product Viewed'),
    ('m3', 'a-1', 'user-1', 'Signed Up'),
    ('m4', NULL, 'user-1', 'Order Completed'),
    ('m5', 'a-2', NULL, 'Page Viewed'),
    ('m6', 'a-2', 'user-1', 'Signed In');
SELECT mp_restamp('tracks');
SELECT id, anonymous_id, user_id, event, distinct_id, canonical_id FROM tracks ORDER BY id;
SELECT * FROM mp_cluster('user-1', 'segment-warehouse');

-- The columns must exist and hold text.
CREATE TABLE pages (anonymous_id text, user_id int, distinct_id text, canonical_id text);
SELECT mp_attach('pages', 'segment-warehouse', device_id_column => 'anon_id', user_id_column => 'user_id');
SELECT mp_attach('pages', 'segment-warehouse', device_id_column => 'anonymous_id', user_id_column => 'user_id');
SELECT count(*) AS violations FROM mp_check('segment-warehouse');
