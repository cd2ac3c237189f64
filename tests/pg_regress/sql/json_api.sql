-- The seed's HTTP API bodies, handed to the database unchanged: Mixpanel Identity API (seed
-- 001_0fca6d462c344dff.txt, OpenAPI: POST /identity/create, /identity/create-alias,
-- /identity/merge, answering IdentityResponse {status: 1 for success, 0 for failure, error}) and
-- "Create Identity" (seed 000_15710e7df7518ed5.txt: the $identify event sent to /track).
-- docs/functions.md, "The seed's HTTP API shapes". Bad content never raises: the answer says
-- what is wrong (the OpenAPI's "400 Invalid request" becomes status 0 with an error).
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('json-api');                    -- Original ID Merge, $anon_id must be a UUID v4
SELECT mp_create_project('json-simple', 'simplified');
\o
-- The answers are printed as they come back, one JSON document per call.
\pset format unaligned
\pset tuples_only on

-- =============================================================================================
-- POST /identity/create: "Create an identity mapping between an anonymous (device) ID and an
-- identified (user) ID." required: $identified_id, $anon_id, $token.
-- =============================================================================================
SELECT mp_identity_create('{"$identified_id": "U1", "$anon_id": "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b", "$token": "json-api"}');
-- The same again: ids already together, nothing changes.
SELECT mp_identity_create('{"$identified_id": "U1", "$anon_id": "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b", "$token": "json-api"}');
-- Seed 000: "The $anon_id must be UUID v4 format and not already merged to an $identified_id."
SELECT mp_identity_create('{"$identified_id": "U2", "$anon_id": "NEW_ID", "$token": "json-api"}');
SELECT mp_identity_create('{"$identified_id": "U2", "$anon_id": "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b", "$token": "json-api"}');
-- A required field missing, a field of the wrong JSON type, no token, an unknown token, no body.
SELECT mp_identity_create('{"$identified_id": "U2", "$token": "json-api"}');
SELECT mp_identity_create('{"$identified_id": true, "$anon_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "$token": "json-api"}');
SELECT mp_identity_create('{"$identified_id": "U2", "$anon_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}');
SELECT mp_identity_create('{"$identified_id": "U2", "$anon_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "$token": "YOUR_PROJECT_TOKEN"}');
SELECT mp_identity_create(NULL);

-- =============================================================================================
-- POST /identity/create-alias (deprecated): "Create an alias that maps one distinct_id to
-- another." required: alias, distinct_id, $token.
-- =============================================================================================
SELECT mp_identity_create_alias('{"alias": "U1-email", "distinct_id": "U1", "$token": "json-api"}');
-- An alias already used for another cluster.
SELECT mp_identity_create_alias('{"alias": "U1-email", "distinct_id": "U2", "$token": "json-api"}');
SELECT mp_identity_create_alias('{"alias": "U1-email", "distinct_id": "U1-email", "$token": "json-api"}');

-- =============================================================================================
-- POST /identity/merge: "Merge two distinct_id values into a single identity cluster."
-- required: $distinct_ids (minItems 2, maxItems 2), $token.
-- =============================================================================================
SELECT mp_identity_merge('{"$distinct_ids": ["U1", "U2"], "$token": "json-api"}');
SELECT mp_identity_merge('{"$distinct_ids": ["U1"], "$token": "json-api"}');
SELECT mp_identity_merge('{"$distinct_ids": ["U1", "U2", "U3"], "$token": "json-api"}');
SELECT mp_identity_merge('{"$distinct_ids": "U1", "$token": "json-api"}');
-- Ids sent as JSON numbers are taken as their decimal text, also beyond 64 bits.
SELECT mp_identity_merge('{"$distinct_ids": ["U1", 12345678901234567890123], "$token": "json-api"}');

-- =============================================================================================
-- Seed 000, "Create Identity": the $identify event as /track receives it (mp_track).
-- =============================================================================================
-- The seed's example body, verbatim: its token is a placeholder.
SELECT mp_track('{
      "event": "$identify",
      "properties": {
          "$identified_id": "ORIGINAL_ID",
          "$anon_id": "NEW_ID",
          "token": "YOUR_PROJECT_TOKEN"
      }
}');
-- With this file's token: "The $anon_id must be UUID v4 format".
SELECT mp_track('{"event": "$identify", "properties": {"$identified_id": "ORIGINAL_ID", "$anon_id": "NEW_ID", "token": "json-api"}}');
SELECT mp_track('{"event": "$identify", "properties": {"$identified_id": "ORIGINAL_ID", "$anon_id": "$device:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "token": "json-api"}}');
-- $create_alias and $merge events, and ordinary events (no identity meaning).
SELECT mp_track('{"event": "$create_alias", "properties": {"alias": "ORIGINAL_ID-email", "distinct_id": "ORIGINAL_ID", "token": "json-api"}}');
SELECT mp_track('{"event": "Page View", "properties": {"distinct_id": "ORIGINAL_ID", "token": "json-api"}}');
-- A batch (/track takes an array): one result per event, each applied on its own.
SELECT mp_track('[
  {"event": "$identify", "properties": {"$identified_id": "U5", "$anon_id": "$device:1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "token": "json-api"}},
  {"event": "Page View", "properties": {"distinct_id": "U5", "token": "json-api"}},
  {"event": "$merge", "properties": {"$distinct_ids": ["U5"], "token": "json-api"}},
  {"event": "$merge", "properties": {"$distinct_ids": ["U5", "ORIGINAL_ID"], "token": "json-api"}}
]');
-- Not an event at all.
SELECT mp_track('{"event": "Page View"}');
SELECT mp_track('"hello"');

-- =============================================================================================
-- A Simplified ID Merge project: /track events link with $device_id / $user_id; the Identity
-- API has no meaning there (seed 002: "enabling the simplified API on a project disables the
-- original API on that project").
-- =============================================================================================
SELECT mp_track('{"event": "Page View", "properties": {"$device_id": "D1", "token": "json-simple"}}');
SELECT mp_track('{"event": "Sign Up", "properties": {"$device_id": "D1", "$user_id": "U1", "token": "json-simple"}}');
-- A device links to one user only: the event is U2's, its link to D1 is refused (and recorded).
SELECT mp_track('{"event": "Login", "properties": {"$device_id": "D1", "$user_id": "U2", "token": "json-simple"}}');
-- "the $identify, $merge, and $create_alias events no longer have any special meaning and will
-- be ignored": accepted as an event, ignored as an identity event (and recorded as such).
SELECT mp_track('{"event": "$identify", "properties": {"$identified_id": "U2", "$anon_id": "$device:D1", "token": "json-simple"}}');
SELECT mp_identity_create('{"$identified_id": "U2", "$anon_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "$token": "json-simple"}');

-- =============================================================================================
-- What all of this left behind.
-- =============================================================================================
\pset format aligned
\pset tuples_only off
SELECT id, mp_resolve(id, 'json-api') AS "mp_resolve (json-api)"
  FROM (VALUES (1, '3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b'), (2, 'U1'), (3, 'U1-email'), (4, 'U2'),
               (5, '12345678901234567890123'), (6, '$device:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d'),
               (7, 'ORIGINAL_ID'), (8, 'ORIGINAL_ID-email'), (9, 'NEW_ID'), (10, 'U5')) v(k, id)
 ORDER BY k;
SELECT id, mp_resolve(id, 'json-simple') AS "mp_resolve (json-simple)"
  FROM (VALUES (1, '$device:D1'), (2, 'U1'), (3, 'U2')) v(k, id)
 ORDER BY k;
-- mp_track is an ingest path: what it refused is recorded, with the event. The Identity API
-- functions only answer.
SELECT p.token, r.reason_code, r.operation, r.id_a, r.id_b, r.source_row->>'event' AS event
  FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id)
 WHERE p.token IN ('json-api', 'json-simple')
 ORDER BY r.rejection_id;
SELECT check_name, detail FROM mp_check('json-api');
