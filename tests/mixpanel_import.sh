#!/usr/bin/env bash
# Coming from Mixpanel (issue 29): a small data-pipeline export in exactly the documented shapes
# (identity mappings mp_identity_mappings_data (distinct_id, resolved_distinct_id), events
# (device_id, distinct_id, event_name, insert_id, properties, time, user_id), people
# (distinct_id, properties)), with a cluster merged only by an API call, Simplified `$device:`
# ids, a duplicate insert_id and malformed rows, imported with mp_import_mixpanel by an
# administrator from tables a writer `w` owns; checked as the reader `r` where reading is
# enough: every id resolves as the mapping says, the stamped events, the folded profiles, the
# re-import that changes nothing, the inverse view equal to the input mapping, the merge log's
# provenance, events and identity calls after the import, conflicts with the project's own
# people, and the refusals (privileges, shapes, hostile types). Prints
# `mixpanel_import: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
cluster_throwaway mixpanel_import
cluster_extension w r
as postgres >/dev/null <<'SQL'
GRANT CREATE ON SCHEMA public TO w;
SELECT mp_create_project('mp', 'simplified');
SQL

# The export, loaded by the writer into tables it owns (the shapes of Mixpanel's Json Pipelines).
as w >/dev/null <<'SQL'
CREATE TABLE mp_identity_mappings_data (distinct_id text, resolved_distinct_id text);
INSERT INTO mp_identity_mappings_data VALUES
  ('$device:D1', 'U1'), ('$device:D2', 'U1'),          -- a user on two devices
  ('crm-42', 'U2'), ('$device:D3', 'U2'),             -- crm-42 merged into U2 only by an API call
  ('$device:D4', '$device:D4'),                       -- a device that resolves to itself
  ('$device:D1', 'U1'),                               -- the same row twice
  (NULL, 'U1'), ('$device:D5', NULL),                 -- NULLs
  ('', 'U1'), ('undefined', 'U3'),                    -- an empty and a placeholder id
  ('$device:D6', 'U3'), ('$device:D6', 'U4'),         -- one id mapped to two resolved ids
  ('$device:D7', 'U5'), ('U5', 'U1');                 -- a chain: U5 is itself mapped to U1
CREATE TABLE mp_events (device_id text, distinct_id text, event_name text, insert_id text,
                        properties jsonb, time bigint, user_id text);
INSERT INTO mp_events VALUES
  ('D1', '$device:D1', 'Page View', 'i1', '{"$device_id": "D1"}', 1700000000, NULL),
  ('D1', 'U1', 'Sign Up', 'i2', '{"$device_id": "D1", "$user_id": "U1"}', 1700000100, 'U1'),
  ('D2', '$device:D2', 'Page View', 'i3', '{}', 1700000200, NULL),
  (NULL, 'crm-42', 'Invoice Paid', 'i4', '{}', 1700000300, NULL),
  (NULL, 'crm-42', 'Invoice Paid', 'i4', '{}', 1700000300, NULL),   -- a duplicate insert_id
  ('D4', '$device:D4', 'Page View', 'i5', '{}', 1700000400, NULL);
ALTER TABLE mp_events ADD COLUMN canonical_id text;
CREATE TABLE mp_people (distinct_id text, properties jsonb);
INSERT INTO mp_people VALUES
  ('U1', '{"$name": "Ann", "plan": "pro"}'),
  ('U2', '{"$name": "Bob"}'),
  ('null', '{"$name": "nobody"}'),                    -- a placeholder id
  ('U9', '[1, 2]');                                   -- properties not an object
GRANT SELECT ON mp_identity_mappings_data, mp_events, mp_people TO r;
SQL

# Administrators only: a writer may not import (as mp_backfill).
expect_err "a writer may not import" w "SELECT * FROM mp_import_mixpanel('mp', 'mp_identity_mappings_data')" 42501

# Refusals of the call itself: each changes nothing.
expect_err "NULL project" postgres "SELECT * FROM mp_import_mixpanel(NULL, 'mp_identity_mappings_data')" 22004
expect_err "unknown project" postgres "SELECT * FROM mp_import_mixpanel('nope', 'mp_identity_mappings_data')" 42704
expect_err "mapping without resolved_distinct_id" postgres "CREATE TABLE bad1 (distinct_id text, resolved text);
SELECT * FROM mp_import_mixpanel('mp', 'bad1')" 42703
expect_err "mapping id of type int" postgres "CREATE TABLE bad2 (distinct_id int, resolved_distinct_id text);
SELECT * FROM mp_import_mixpanel('mp', 'bad2')" 42804
as w >/dev/null -c "CREATE DOMAIN myid AS text" -c "CREATE TABLE bad3 (distinct_id myid, resolved_distinct_id text)"
expect_err "a writer's own type is refused (built-in types only)" postgres "SELECT * FROM mp_import_mixpanel('mp', 'bad3')" 42804
expect_err "people properties of type int" postgres "CREATE TABLE bad4 (distinct_id text, properties int);
SELECT * FROM mp_import_mixpanel('mp', 'mp_identity_mappings_data', people => 'bad4')" 42804
expect_err "events without a canonical column" postgres "CREATE TABLE bad5 (device_id text, distinct_id text, user_id text);
SELECT * FROM mp_import_mixpanel('mp', 'mp_identity_mappings_data', 'bad5')" 42703
check "the refused calls changed nothing" "0 0" "$(as r -c "SELECT (SELECT count(*) FROM identity_merge.identities) || ' ' || (SELECT count(*) FROM identity_merge.rejections)")"

# The import.
expect "the import's counts" postgres "SELECT * FROM mp_import_mixpanel('mp', 'mp_identity_mappings_data', 'mp_events', 'mp_people')" \
  "14|5|2|4|2|1|0|7|2|2|2|6"
# mappings 14 | joins 5 | unchanged 2 (the self row, the repeat) | invalid 4 | mapped_twice 2 |
# chains 1 | conflicts 0 | ids_written 7 | clusters_written 2 | people 2 | people_refused 2 | events 6

# Every accepted id resolves as the mapping says (the reader asks).
expect "every id resolves as mapped" r "SELECT count(*) FROM mp_identity_mappings_data m
 WHERE m.distinct_id IN ('\$device:D1', '\$device:D2', 'crm-42', '\$device:D3', '\$device:D4', 'U5')
   AND mp_resolve(m.distinct_id, 'mp') IS DISTINCT FROM m.resolved_distinct_id" "0"
expect "resolved ids are canonical (Mixpanel's choice)" r "SELECT mp_resolve('U1', 'mp') || ' ' || mp_resolve('crm-42', 'mp') || ' ' || mp_resolve('\$device:D4', 'mp')" "U1 U2 \$device:D4"
expect "refused rows joined nothing" r "SELECT mp_resolve('\$device:D6', 'mp') || ' ' || mp_resolve('\$device:D7', 'mp') || ' ' || mp_resolve('\$device:D5', 'mp')" "\$device:D6 \$device:D7 \$device:D5"
expect "rejections, by reason" postgres "SELECT operation, reason_code, count(*) FROM identity_merge.rejections GROUP BY 1, 2 ORDER BY 1, 2" \
"mixpanel_import|errInvalidID|2
mixpanel_import|errMappedTwice|2
mixpanel_import|errMappingChain|1
mixpanel_import|errNullID|2
mixpanel_people|errInvalidID|1
mixpanel_people|errMalformedEvent|1"
expect "a rejection names the table and row" postgres "SELECT source_table::text, source_row->>'row', message FROM identity_merge.rejections WHERE reason_code = 'errMappingChain'" \
  "mp_identity_mappings_data|13|errMappingChain: mapping of distinct_id \"\$device:D7\" to resolved_distinct_id \"U5\" not imported: the resolved id is itself mapped to \"U1\" (a chain)"
expect "the writer sees the rejections of its tables" w "SELECT count(*) FROM identity_merge.rejections" "9"

# The stamped events, and the profiles.
expect "events stamped" r "SELECT string_agg(coalesce(canonical_id, '-'), ' ' ORDER BY time, insert_id) FROM mp_events" "U1 U1 U1 U2 U2 \$device:D4"
expect "events stamped as mp_resolve says" r "SELECT count(*) FROM mp_events WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'mp')" "0"
expect "profiles fold" r "SELECT mp_profile('\$device:D2', 'mp')->>'\$name', mp_profile('\$device:D2', 'mp')->>'plan', mp_profile('crm-42', 'mp')->>'\$name'" "Ann|pro|Bob"

# The merge log says where each join came from.
expect "mp_explain shows the import" r "SELECT operation, source, source_detail->>'note', source_detail->>'table', source_detail->>'mapping_row' FROM mp_explain('crm-42', 'mp')" \
  "identify|mixpanel_import|imported from Mixpanel|public.mp_identity_mappings_data|3"
expect "devices are logged as links" r "SELECT operation, id_a, id_b FROM mp_explain('\$device:D2', 'mp')" "link|U1|\$device:D2"
expect "mp_check finds nothing" r "SELECT count(*) FROM mp_check('mp')" "0"

# The inverse view equals the input mapping (its accepted rows that resolve to another id).
expect "the inverse view equals the mapping" r "WITH want AS (SELECT DISTINCT distinct_id, resolved_distinct_id FROM mp_identity_mappings_data
   WHERE distinct_id IN ('\$device:D1', '\$device:D2', 'crm-42', '\$device:D3', 'U5') ),
 got AS (SELECT distinct_id, resolved_distinct_id FROM identity_merge.mixpanel_identity_mappings WHERE project = 'mp')
SELECT (SELECT count(*) FROM want), (SELECT count(*) FROM got), (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM got) x), (SELECT count(*) FROM (SELECT * FROM got EXCEPT SELECT * FROM want) y)" "5|5|0|0"

# The same export again changes nothing.
state="SELECT md5(string_agg(t, ',' ORDER BY t)) FROM (
  SELECT format('%s', i) t FROM identity_merge.identities i UNION ALL SELECT format('%s', c) FROM identity_merge.clusters c
  UNION ALL SELECT format('%s', l) FROM identity_merge.merge_log l UNION ALL SELECT format('%s', x) FROM identity_merge.rejections x
  UNION ALL SELECT format('%s', u) FROM identity_merge.profile_updates u UNION ALL SELECT format('%s', e) FROM mp_events e) s"
before=$(as postgres -c "$state")
expect "the re-import joins nothing" postgres "SELECT * FROM mp_import_mixpanel('mp', 'mp_identity_mappings_data', 'mp_events', 'mp_people')" \
  "14|0|7|4|2|1|0|0|0|0|2|0"
check "the re-import changed nothing" "$before" "$(as postgres -c "$state")"

# After the import: new events are stamped as they land, with the project's mode and rules.
expect "a new event links its device and is stamped" w "INSERT INTO mp_events VALUES ('D8', NULL, 'Sign In', 'i9', '{}', 1700000900, 'U2') RETURNING distinct_id, canonical_id" "U2|U2"
expect "the device is U2's now" r "SELECT mp_resolve('\$device:D8', 'mp')" "U2"
expect "a device imported as U1's is not relinked" w "INSERT INTO mp_events VALUES ('D1', 'U2', 'Sign In', 'i10', '{}', 1700001000, 'U2') RETURNING canonical_id" "U2"
expect "the refusal is recorded" r "SELECT count(*) FROM identity_merge.rejections WHERE reason_code = 'errDeviceLinkedToOtherUser'" "1"
expect "and D1 stays U1's" r "SELECT mp_resolve('\$device:D1', 'mp')" "U1"

# insert_id deduplication (on for an events table the import attached, Mixpanel's /import rule):
# a row whose insert_id the table holds is skipped and recorded with the whole row.
expect "a duplicate insert_id is skipped" w "INSERT INTO mp_events VALUES ('D1', '\$device:D1', 'Page View', 'i1', '{\"again\": true}', 1700002000, NULL) RETURNING insert_id" ""
expect "within one statement too" w "INSERT INTO mp_events VALUES ('D1', '\$device:D1', 'A', 'i20', '{}', 1700002100, NULL), ('D1', '\$device:D1', 'B', 'i20', '{}', 1700002101, NULL), ('D1', '\$device:D1', 'C', NULL, '{}', 1700002102, NULL) RETURNING event_name" "A
C"
expect "skipped rows are recorded, whole" r "SELECT id_a, source_row->>'properties', source_row->>'event_name' FROM identity_merge.rejections WHERE reason_code = 'errDuplicateInsertId' ORDER BY rejection_id" \
  "i1|{\"again\": true}|Page View
i20|{}|B"
expect "the table holds one row per insert_id" r "SELECT count(*) FROM (SELECT insert_id FROM mp_events WHERE insert_id IS NOT NULL AND insert_id <> 'i4' GROUP BY 1 HAVING count(*) > 1) x" "0"
expect "the table's owner turns it off" w "SELECT mp_dedup_insert_id('mp_events', false);
INSERT INTO mp_events VALUES ('D1', '\$device:D1', 'Page View', 'i1', '{}', 1700003000, NULL) RETURNING canonical_id" "
U1"
expect "and on again, with another column" w "SELECT mp_dedup_insert_id('mp_events', insert_id_column => 'event_name');
INSERT INTO mp_events VALUES ('D1', '\$device:D1', 'Sign Up', 'i30', '{}', 1700003100, NULL) RETURNING canonical_id" ""
expect_err "a column that does not exist" w "SELECT mp_dedup_insert_id('mp_events', insert_id_column => 'nope')" 42703
expect_err "a table not attached" w "CREATE TABLE plain (insert_id text); SELECT mp_dedup_insert_id('plain')" 55000
expect_err "the reader may not" r "SELECT mp_dedup_insert_id('mp_events', false)" 42501
as w >/dev/null -c "SELECT mp_dedup_insert_id('mp_events')"
as postgres >/dev/null <<'SQL'
CREATE TABLE admins (distinct_id text, canonical_id text, insert_id text);
SELECT mp_attach('admins', 'mp');
SQL
expect_err "a writer may not deduplicate another's table" w "SELECT mp_dedup_insert_id('admins')" 42501
expect "tables without it take duplicates" postgres "INSERT INTO admins VALUES ('x', NULL, 'k'), ('y', NULL, 'k') RETURNING distinct_id" "x
y"
# mp_detach takes the deduplication with the stamping (since 0.1.15); turning it off needs no
# attachment (a table a 0.1.14 mp_detach left with its trigger).
as w >/dev/null <<'SQL'
CREATE TABLE dd (distinct_id text, canonical_id text, insert_id text);
SELECT mp_attach('dd', 'mp');
SELECT mp_dedup_insert_id('dd');
SELECT mp_detach('dd');
SQL
expect "mp_detach drops the deduplication trigger" w "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'dd'::regclass" "0"
expect "a detached table takes duplicates, unstamped" w "INSERT INTO dd VALUES ('x', NULL, 'k'), ('y', NULL, 'k') RETURNING distinct_id, canonical_id" "x|
y|"
expect "turning it off on a table not attached: nothing to do, no error" w "SELECT mp_dedup_insert_id('dd', false)" ""

# Original project: ids already there are merged by the rules, conflicts refused and recorded.
as postgres >/dev/null <<'SQL'
SELECT mp_create_project('orig');
SELECT mp_set_project_setting('orig', 'anon_id_format', 'any');
SELECT mp_identify('P1', 'a1', 'orig');                  -- an identified person
SELECT mp_merge('m1', 'm2', 'orig');                     -- an anonymous merge
CREATE TABLE later (distinct_id text, resolved_distinct_id text);
INSERT INTO later VALUES ('a1', 'Q1'),                  -- a1 is P1's: a conflict
                         ('m2', 'Q1'),                  -- the anonymous cluster joins Q1
                         ('n1', 'P1');                  -- a new id joins the stored person
SQL
expect "existing ids: merged by the rules or refused" postgres "SELECT joins, conflicts FROM mp_import_mixpanel('orig', 'later')" "2|1"
expect "the project's people stand" r "SELECT mp_resolve('a1', 'orig') || ' ' || mp_resolve('m1', 'orig') || ' ' || mp_resolve('n1', 'orig')" "P1 Q1 P1"
expect "the conflict is recorded" postgres "SELECT reason_code, id_a, id_b FROM identity_merge.rejections WHERE operation = 'mixpanel_import' AND project_id = (SELECT project_id FROM identity_merge.projects WHERE token = 'orig')" \
  "errImportConflict|a1|Q1"
expect "identity calls continue with the rules" w "SELECT mp_identify('Q1', 'fresh-anon', 'orig'), mp_resolve('m2', 'orig')" "Q1|Q1"
expect "mp_check finds nothing (orig)" r "SELECT count(*) FROM mp_check('orig')" "0"
expect "a split takes an imported join back" w "SELECT id, old_canonical, new_canonical FROM mp_split('n1', 'orig')" "n1|P1|n1"
expect "mp_check after the split" r "SELECT count(*) FROM mp_check('orig')" "0"

# An Original project's events in the export's shape keep merging as they land (since 0.1.15):
# the trigger, mp_ingest and mp_backfill_from read the event name from event_name.
as w >/dev/null <<'SQL'
CREATE TABLE orig_ev (device_id text, distinct_id text, event_name text, insert_id text, properties jsonb,
                      time bigint, user_id text, canonical_id text);
SELECT mp_attach('orig_ev', 'orig', 'distinct_id', 'canonical_id', true, 'device_id', 'user_id');
SQL
expect "an \$identify in event_name is applied as it lands" w "INSERT INTO orig_ev (distinct_id, event_name, properties) VALUES
  ('anon-e1', 'Page View', '{}'),
  ('R1', '\$identify', '{\"\$identified_id\": \"R1\", \"\$anon_id\": \"anon-e1\"}');
INSERT INTO orig_ev (distinct_id, event_name, properties) VALUES ('anon-e1', 'Page View', '{}') RETURNING canonical_id;
SELECT mp_resolve('anon-e1', 'orig')" "R1
R1"
expect "a refused \$identify in event_name keeps its row" w "INSERT INTO orig_ev (distinct_id, event_name, properties) VALUES
  ('P1', '\$identify', '{\"\$identified_id\": \"P1\", \"\$anon_id\": \"R1\"}') RETURNING canonical_id" "P1"
expect "and is recorded with it (seen by the table's owner)" w "SELECT source_row->>'event' FROM identity_merge.rejections WHERE source_row->>'distinct_id' = 'P1'" "\$identify"
as w >/dev/null <<'SQL'
CREATE TABLE orig_stage (LIKE orig_ev);
INSERT INTO orig_stage (distinct_id, event_name, properties) VALUES
  ('anon-e2', 'Page View', '{}'),
  ('R2', '$create_alias', '{"alias": "anon-e2", "distinct_id": "R2"}');
SQL
expect "mp_ingest of export-shaped rows applies their identity events" w "SELECT rows_inserted, identity_events FROM mp_ingest('orig_stage', 'orig_ev');
SELECT string_agg(canonical_id, ',') FROM orig_ev WHERE distinct_id IN ('anon-e2', 'R2')" "2|1
R2,R2"
expect "mp_backfill_from reads event_name" postgres "SELECT events_read, joins FROM mp_backfill_from('orig_ev', 'insert_id')" "3|0"
expect_err "an event_name that is not text is refused at attach" w "CREATE TABLE orig_bad (distinct_id text, event_name int, properties jsonb, canonical_id text);
SELECT mp_attach('orig_bad', 'orig')" 42804
expect "mp_check finds nothing (orig, export-shaped table)" w "SELECT coalesce(string_agg(check_name || ': ' || detail, '; '), 'clean') FROM mp_check('orig')" "clean"

# A session whose stamp cache already holds an id sees the import another session committed.
as postgres >/dev/null <<'SQL'
CREATE TABLE warm (distinct_id text, canonical_id text);
SELECT mp_attach('warm', 'mp');
CREATE TABLE later_map (distinct_id text, resolved_distinct_id text);
INSERT INTO later_map VALUES ('$device:W1', 'U1');
SQL
expect "a warm cache learns of the import" postgres "INSERT INTO warm VALUES ('\$device:W1'), ('\$device:W1');
\\! $PG_BIN/psql -X -q -At -c \"SELECT joins FROM mp_import_mixpanel('mp', 'later_map')\"
INSERT INTO warm VALUES ('\$device:W1') RETURNING canonical_id;" "1
U1"

# A hostile table: the writer's mapping table whose row-level security policy (forced on its
# owner) tries to make the writer superuser; the administrator's import reads it as its owner, in a
# security-restricted operation, so the policy runs with the writer's rights and gains nothing.
as w >/dev/null <<'SQL'
CREATE FUNCTION evil() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        ALTER ROLE w SUPERUSER;
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    RETURN true;
END $$;
CREATE TABLE hostile (distinct_id text, resolved_distinct_id text);
INSERT INTO hostile VALUES ('h1', 'H');
ALTER TABLE hostile ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON hostile USING (evil());
SQL
expect "a hostile mapping table is read as its owner" postgres "SELECT mp_create_project('h');
SELECT joins FROM mp_import_mixpanel('h', 'hostile');
SELECT rolsuper FROM pg_roles WHERE rolname = 'w'" "
1
f"
expect_err "a caller who may not act as the table's owner is refused" postgres "CREATE ROLE admin2 LOGIN;
SELECT mp_grant_reader('admin2');
GRANT EXECUTE ON FUNCTION mp_import_mixpanel(text, regclass, regclass, regclass), identity_merge._import_mixpanel(text, regclass, text, regclass, text),
      identity_merge._mixpanel_columns(regclass, text, name[], text[]), identity_merge._project(text), identity_merge._no_nulls(text, text[], boolean[]) TO admin2;
SET ROLE admin2;
SELECT joins FROM mp_import_mixpanel('h', 'hostile');" 42501
check "the refusal names the owner" "1" "$(printf '%s\n' "SET ROLE admin2; SELECT joins FROM mp_import_mixpanel('h', 'hostile');" | as postgres -f - | grep -c 'role admin2 may not act as w')"

# pg_dump and restore keep the import (its joins, the view) and the deduplication trigger.
as_pg "$PG_BIN/pg_dump" -h "$PGHOST" -p "$PGPORT" -U postgres -Fc -d postgres -f "$dir/pg/src.dump"
cluster_psql -c "CREATE DATABASE dst" >/dev/null
as_pg "$PG_BIN/pg_restore" -h "$PGHOST" -p "$PGPORT" -U postgres -d dst --exit-on-error "$dir/pg/src.dump"
expect "after restore: resolves and the view" postgres "\\c dst
SELECT mp_resolve('crm-42', 'mp'), (SELECT count(*) FROM identity_merge.mixpanel_identity_mappings WHERE project = 'mp')" "U2|7"
expect "after restore: duplicates still skipped" postgres "\\c dst
INSERT INTO mp_events VALUES ('D1', '\$device:D1', 'Page View', 'i2', '{}', 1700009000, NULL) RETURNING insert_id" ""

summary mixpanel_import
