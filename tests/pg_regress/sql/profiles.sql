-- People: Mixpanel profiles (the /engage API) that belong to people, not ids. An update sent to
-- any id of a person changes that person's profile; when two people merge their profiles combine
-- (the newest $set wins, the oldest $set_once wins, $add counters sum, $union lists union), and a
-- split separates them again. In Simplified projects a device's properties from before it was
-- linked stay with the device, as Mixpanel documents.
\set VERBOSITY terse
\o /dev/null
SELECT mp_create_project('people');
SELECT mp_set_project_setting('people', 'anon_id_format', 'any');
\o
-- Two ids, two profiles, before anyone knows they are one person.
SELECT mp_engage('[
  {"$token": "people", "$distinct_id": "D1", "$time": 1767225600000, "$set_once": {"first_seen": "2026-01-01", "source": "ad"}},
  {"$token": "people", "$distinct_id": "D1", "$time": 1767225601000, "$set": {"plan": "free"}},
  {"$token": "people", "$distinct_id": "D1", "$time": 1767225602000, "$add": {"visits": 2}},
  {"$token": "people", "$distinct_id": "U1", "$time": 1767312000000, "$set_once": {"first_seen": "2026-01-02"}},
  {"$token": "people", "$distinct_id": "U1", "$time": 1767312001000, "$set": {"plan": "pro", "email": "u1@example.com"}},
  {"$token": "people", "$distinct_id": "U1", "$time": 1767312002000, "$add": {"visits": 3}},
  {"$token": "people", "$distinct_id": "U1", "$time": 1767312003000, "$union": {"devices": ["mac"]}}]') ->> 'status' AS status;
SELECT mp_profile('D1', 'people') AS d1, mp_profile('U1', 'people') AS u1;

-- $identify makes them one person: one profile, from either id.
SELECT mp_identify('U1', 'D1', 'people');
SELECT mp_profile('D1', 'people') = mp_profile('U1', 'people') AS same, mp_profile('D1', 'people') AS person;

-- Later updates through either id change the person.
SELECT mp_engage('{"$token": "people", "$distinct_id": "D1", "$time": 1767398400000, "$union": {"devices": ["phone", "mac"]}}') ->> 'status';
SELECT mp_engage('{"$token": "people", "$distinct_id": "U1", "$time": 1767398401000, "$unset": ["email"]}') ->> 'status';
SELECT mp_profile('D1', 'people') AS person;

-- A split takes the device's own properties back with it.
SELECT count(*) FROM mp_split('D1', 'people');
SELECT mp_profile('D1', 'people') AS d1, mp_profile('U1', 'people') AS u1;

-- $delete clears what came before; an id never updated has an empty profile.
SELECT mp_engage('{"$token": "people", "$distinct_id": "D1", "$time": 1767484800000, "$delete": ""}') ->> 'status';
SELECT mp_profile('D1', 'people') AS d1, mp_profile('nobody', 'people') AS nobody;

-- Simplified: what was set on the device before its link stays with the device.
\o /dev/null
SELECT mp_create_project('people-simplified', 'simplified');
\o
SELECT mp_engage('{"$token": "people-simplified", "$distinct_id": "$device:L", "$time": 1767225600000, "$set": {"theme": "dark"}}') ->> 'status';
SELECT mp_track('{"event": "Login", "properties": {"token": "people-simplified", "$device_id": "L", "$user_id": "V"}}') ->> 'status';
SELECT mp_engage('{"$token": "people-simplified", "$distinct_id": "$device:L", "$set": {"lang": "fr"}}') ->> 'status';
SELECT mp_profile('V', 'people-simplified') AS v, mp_profile('$device:L', 'people-simplified') AS via_device;
-- Unless the project says to carry a device's profile over (carry_device_profile 'on').
SELECT mp_set_project_setting('people-simplified', 'carry_device_profile', 'on');
SELECT value FROM mp_project_settings('people-simplified') WHERE setting = 'carry_device_profile';
SELECT mp_profile('V', 'people-simplified') AS v_carried;
SELECT mp_set_project_setting('people-simplified', 'carry_device_profile', 'yes');

-- Bad bodies answer status 0 naming the field, and store nothing.
SELECT mp_engage('{"$token": "people", "$distinct_id": "U1"}') ->> 'error' AS error;
SELECT mp_engage('{"$token": "people", "$distinct_id": "U1", "$add": {"visits": "many"}}') ->> 'error' AS error;
SELECT mp_engage('{"$token": "people", "$distinct_id": "U1", "$set": {"a": 1}, "$unset": ["b"]}') ->> 'error' AS error;
SELECT mp_engage('{"$token": "nope", "$distinct_id": "U1", "$set": {"a": 1}}') ->> 'error' AS error;
SELECT mp_engage('[1, {"$token": "people", "$distinct_id": "U1", "$set": {"ok": true}}]') -> 'results' AS results;
SELECT count(*) AS stored FROM identity_merge.profile_updates u JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'people';

-- A table to join to stamped events: identity_merge.people (canonical_id -> properties), brought
-- up to date for the people that changed since the last refresh.
SELECT mp_refresh_people('people') > 0 AS wrote;
SELECT canonical_id, properties FROM identity_merge.people pe JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'people' ORDER BY canonical_id;
SELECT mp_refresh_people('people') AS nothing_changed;
-- A merge and an update later: only those people are recomputed.
SELECT mp_merge('U1', 'U9', 'people');
SELECT mp_engage('{"$token": "people", "$distinct_id": "U9", "$time": 1767571200000, "$add": {"visits": 10}}') ->> 'status';
SELECT mp_refresh_people('people') AS rows_written;
SELECT canonical_id, properties ->> 'visits' AS visits FROM identity_merge.people pe JOIN identity_merge.projects p USING (project_id)
 WHERE p.token = 'people' ORDER BY canonical_id;
