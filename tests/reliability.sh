#!/usr/bin/env bash
# Hostile use, as the roles a deployment hands out: a writer role `w` (mp_grant_writer plus
# CREATE on public) and a reader `r`, against a throwaway cluster with the installed build.
# Each check is one item of the reliability issue: tables whose columns have the wrong types
# (no input may crash the server), registrations a writer may not change, caches filled from
# a snapshot older than the invalidations they claim to include, two projects in one
# statement, backfill validation, big JSON numbers, varchar limits, nondeterministic
# collations, dropped and renamed tables, REPEATABLE READ races, statistics after a backfill,
# UPDATEs of the distinct_id, inheritance and generated columns, what readers may see, and
# misuse errors. Prints `reliability: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
# autovacuum off: the statistics check must see what mp_backfill did, not the daemon.
# max_prepared_transactions: check 17 prepares a join.
# RUST_BACKTRACE=1 in the server's environment: no error may carry a Rust backtrace (round 3).
RUST_BACKTRACE=1 cluster_throwaway reliability autovacuum=off max_prepared_transactions=4
started=$(as postgres -c "SELECT pg_postmaster_start_time()")

cluster_extension w r
as postgres >/dev/null <<'SQL'
GRANT CREATE ON SCHEMA public TO w;
SELECT mp_set_project_setting('default', 'anon_id_format', 'any');
SELECT mp_create_project('simp', 'simplified');
SQL

# 1. Columns of the wrong type: refused at attach, and at insert after ALTER TABLE; never a crash.
expect_err "event int refused at attach" w "CREATE TABLE c1 (distinct_id text, event int, properties jsonb, canonical_id text);
SELECT mp_attach('c1');
INSERT INTO c1 VALUES ('u', 1, '{}');" 42804
expect_err "\$device_id int refused at attach" w "CREATE TABLE c4 (distinct_id text, \"\$device_id\" int, canonical_id text);
SELECT mp_attach('c4', 'simp');
INSERT INTO c4 VALUES (NULL, 5);" 42804
for spec in "event|event TYPE int USING 0|('u', 1, '{}')" \
            "properties|properties TYPE int USING 0|('u', '\$identify', 5)" \
            "canonical_id|canonical_id TYPE int USING 0|('u', 'x', '{}')"; do
  IFS='|' read -r col alter row <<<"$spec"
  t="alt_$col"
  expect_err "$col altered after attach, insert refused" w "CREATE TABLE $t (distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('$t');
ALTER TABLE $t ALTER $alter;
INSERT INTO $t VALUES $row;" 42804
done
expect_err "\$device_id altered to int in a Simplified project" w "CREATE TABLE alt_dev (distinct_id text, \"\$device_id\" text, \"\$user_id\" text, canonical_id text);
SELECT mp_attach('alt_dev', 'simp');
ALTER TABLE alt_dev ALTER \"\$device_id\" TYPE int USING 0;
INSERT INTO alt_dev VALUES (NULL, 5, 'someone');" 42804
# The distinct_id column cannot change type under the trigger (UPDATE OF depends on it); a
# stamping trigger put on by hand on a bigint distinct_id is refused at insert.
expect_err "distinct_id altered after attach" w "CREATE TABLE alt_distinct (distinct_id text, canonical_id text);
SELECT mp_attach('alt_distinct');
ALTER TABLE alt_distinct ALTER distinct_id TYPE bigint USING 0;" 0A000
expect_err "hand-made trigger on a bigint distinct_id" w "CREATE TABLE hand (distinct_id bigint, canonical_id text);
CREATE TRIGGER s BEFORE INSERT ON hand FOR EACH ROW EXECUTE FUNCTION identity_merge.stamp_event('default', 'distinct_id', 'canonical_id');
INSERT INTO hand VALUES (5);" 42804
# json and text properties are read as what they are (JSON text), not as jsonb.
for typ in json text; do
  as w >/dev/null -c "CREATE TABLE props_$typ (distinct_id text, event text, properties $typ, canonical_id text)" -c "SELECT mp_attach('props_$typ')"
  expect "properties $typ applies \$identify" w "INSERT INTO props_$typ VALUES ('${typ}U', '\$identify', '{\"\$identified_id\": \"${typ}U\", \"\$anon_id\": \"${typ}D\"}'), ('${typ}D', 'x', '{}');
SELECT mp_resolve('${typ}D') || ' ' || (SELECT canonical_id FROM props_$typ WHERE event = 'x')" "${typ}U ${typ}U"
done
expect_err "malformed text properties are recorded, the row kept" w "INSERT INTO props_text VALUES ('tx', '\$identify', 'not json');
SELECT 1/0 WHERE (SELECT count(*) FROM props_text WHERE distinct_id = 'tx') = 1;" 22012

# 2. A writer may not re-register an administrator's table, nor register what the trigger does not say.
as postgres >/dev/null -c "CREATE TABLE adm_ev (distinct_id text, canonical_id text, secret text)" -c "SELECT mp_attach('adm_ev')"
expect_err "re-register another owner's table" w "SELECT identity_merge._register_attachment('adm_ev', 1, 'distinct_id', 'secret')" 42501
expect "registration unchanged" postgres "SELECT canonical_column FROM identity_merge.attachments WHERE events = 'adm_ev'::regclass" "canonical_id"
as w >/dev/null -c "CREATE TABLE own_ev (distinct_id text, canonical_id text, other text)" -c "SELECT mp_attach('own_ev')"
expect_err "register what the trigger does not say" w "SELECT identity_merge._register_attachment('own_ev', 1, 'distinct_id', 'other')" 55000

# 3. Invalidations accepted mid-statement (first lock on a partition): later statements must
# not keep an answer read with the statement's older snapshot.
as postgres >/dev/null <<'SQL'
SELECT mp_create_project('stale'), mp_set_project_setting('stale', 'anon_id_format', 'any');
SELECT mp_create_project('stale2'), mp_set_project_setting('stale2', 'anon_id_format', 'any');
CREATE TABLE pe (k int, distinct_id text, event text, properties jsonb, canonical_id text) PARTITION BY LIST (k);
CREATE TABLE pe1 PARTITION OF pe FOR VALUES IN (1);
CREATE TABLE pe2 PARTITION OF pe FOR VALUES IN (2);
SELECT mp_attach('pe', 'stale');
CREATE TABLE pf (k int, distinct_id text, event text, properties jsonb, canonical_id text) PARTITION BY LIST (k);
CREATE TABLE pf1 PARTITION OF pf FOR VALUES IN (1);
CREATE TABLE pf2 PARTITION OF pf FOR VALUES IN (2);
SELECT mp_attach('pf', 'stale2');
GRANT ALL ON pe, pf TO w;
SQL
expect "merge committed while a statement routes to a new partition" w "\\! (sleep 1; $PG_BIN/psql -X -q -U w -c \"SELECT mp_identify('user', 'xid', 'stale')\" >/dev/null) &
INSERT INTO pe SELECT v.k, v.d || (SELECT '' FROM pg_sleep(v.s)), 'x', '{}' FROM (VALUES (1, 'warm', 0), (2, 'xid', 3)) v(k, d, s);
INSERT INTO pe VALUES (2, 'xid', 'x', '{}') RETURNING canonical_id;" "user"
expect "project setting committed while a statement routes to a new partition" w "\\! (sleep 1; $PG_BIN/psql -X -q -U postgres -c \"SELECT mp_set_project_setting('stale2', 'blocked_ids', '{badid}')\" >/dev/null) &
INSERT INTO pf SELECT v.k, v.d || (SELECT '' FROM pg_sleep(v.s)), 'x', '{}' FROM (VALUES (1, 'warm', 0), (2, 'zz', 3)) v(k, d, s);
INSERT INTO pf VALUES (2, 'u9', '\$identify', '{\"\$identified_id\": \"u9\", \"\$anon_id\": \"badid\"}');
SELECT mp_resolve('badid', 'stale2');" "badid"

# 4. One statement over partitions of two projects: a join in one is seen by its later rows.
as postgres >/dev/null <<'SQL'
SELECT mp_create_project('tp1'), mp_set_project_setting('tp1', 'anon_id_format', 'any');
SELECT mp_create_project('tp2'), mp_set_project_setting('tp2', 'anon_id_format', 'any');
CREATE TABLE tq (n serial, k int, distinct_id text, event text, properties jsonb, canonical_id text) PARTITION BY LIST (k);
CREATE TABLE tq1 PARTITION OF tq FOR VALUES IN (1);
CREATE TABLE tq2 PARTITION OF tq FOR VALUES IN (2);
SELECT mp_attach('tq1', 'tp1'), mp_attach('tq2', 'tp2');
GRANT ALL ON tq, tq_n_seq TO w;
SQL
expect "a join is seen after a row of another project" w "BEGIN;
INSERT INTO tq (k, distinct_id, event, properties) VALUES (1, 'ma', 'e', '{}'), (1, 'mb', 'e', '{}');
INSERT INTO tq (k, distinct_id, event, properties) VALUES (1, 'ma', '\$merge', '{\"\$distinct_ids\": [\"ma\", \"mb\"]}'),
  (2, 'x', 'e', '{}'), (1, 'ma', 'e', '{}'), (1, 'mb', 'e', '{}');
INSERT INTO tq (k, distinct_id, event, properties) VALUES (1, 'ma', 'e', '{}'), (1, 'mb', 'e', '{}');
SELECT count(*) FROM tq WHERE k = 1 AND n > 2 AND canonical_id <> mp_resolve(distinct_id, 'tp1');
COMMIT;" "0"

# 5. mp_backfill validates the raw device id, as the online path does.
as postgres >/dev/null -c "SELECT mp_create_project('bf', 'simplified')"
expect "backfill refuses blank and placeholder devices" postgres "SELECT refused FROM mp_backfill(\$\$SELECT * FROM (VALUES ('link', 'bu1', ''), ('link', 'bu2', ' '), ('link', 'bu3', 'null'), ('link', 'bu4', 'undefined'), ('link', 'bu5', 'realdev')) v\$\$, 'bf');
SELECT count(*) FROM identity_merge.identities i JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'bf';" "4
2"

expect_err "backfill source columns that are not text" postgres "SELECT * FROM mp_backfill('SELECT 1, 2, 3', 'bf')" 22023

# 6. Numbers beyond 64 bits keep their own decimal text (no float rounding).
expect "mp_track with big numeric ids" w "SELECT mp_track('{\"event\": \"\$identify\", \"properties\": {\"token\": \"default\", \"\$identified_id\": \"big1\", \"\$anon_id\": 123456789012345678901234567890}}') IS NOT NULL;
SELECT mp_track('{\"event\": \"\$identify\", \"properties\": {\"token\": \"default\", \"\$identified_id\": \"big2\", \"\$anon_id\": 123456789012345678901234567891}}') IS NOT NULL;
SELECT mp_resolve('123456789012345678901234567890') || ' ' || mp_resolve('123456789012345678901234567891');" "t
t
big1 big2"
as w >/dev/null -c "CREATE TABLE bign (distinct_id text, event text, properties jsonb, canonical_id text)" -c "SELECT mp_attach('bign')"
expect "event rows with big numeric ids" w "INSERT INTO bign VALUES ('big3', '\$identify', '{\"\$identified_id\": \"big3\", \"\$anon_id\": 123456789012345678901234567892}');
SELECT mp_resolve('123456789012345678901234567892');" "big3"

# 7. varchar(n) limits hold for stamps and filled-in distinct_ids.
expect_err "canonical varchar(5) refused at attach" w "CREATE TABLE vc (distinct_id text, canonical_id varchar(5));
SELECT mp_attach('vc');" 42804
expect_err "canonical narrowed after attach: too long is an error" w "CREATE TABLE vc2 (distinct_id text, canonical_id varchar(300));
SELECT mp_attach('vc2');
ALTER TABLE vc2 ALTER canonical_id TYPE varchar(5);
SELECT mp_identify('longuser_abcdefghijklmnop', 'vdev');
INSERT INTO vc2 VALUES ('vdev');" 22001
expect_err "filled-in distinct_id longer than varchar(5)" w "CREATE TABLE vs (distinct_id varchar(5), \"\$user_id\" text, \"\$device_id\" text, canonical_id text);
SELECT mp_attach('vs', 'simp');
INSERT INTO vs VALUES (NULL, 'longuser_x', 'dev');" 22001

# 8. A nondeterministic collation on the canonical column does not make restamp match other ids.
as postgres >/dev/null -c "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
expect "restamp compares ids exactly" w "CREATE TABLE cc (distinct_id text, canonical_id text COLLATE ci);
SELECT 'attached' FROM mp_attach('cc');
SELECT mp_identify('KEEP', 'kdev') IS NOT NULL;
INSERT INTO cc VALUES ('kdev');
SELECT mp_identify('other', 'keep') IS NOT NULL;
SELECT mp_restamp('cc');
SELECT canonical_id FROM cc;" "attached
t
t
0
KEEP"

# 9. Dropped and renamed tables: cleaned up, reported, never a syntax error.
expect "a dropped table leaves no registration" w "CREATE TABLE dr (distinct_id text, canonical_id text);
SELECT 'attached' FROM mp_attach('dr');
DROP TABLE dr;
SELECT count(*) FROM identity_merge.attachments a WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = a.events);" "attached
0"
expect "mp_check runs after a drop" postgres "SELECT count(*) FROM mp_check() WHERE check_name <> 'attachment_broken'" "0"
as w >/dev/null -c "CREATE TABLE rn (distinct_id text, canonical_id text)" -c "SELECT mp_attach('rn')" -c "ALTER TABLE rn RENAME canonical_id TO cid"
expect_err "restamp of a renamed column" w "SELECT mp_restamp('rn')" 55000
expect "mp_check reports a renamed column" postgres "SELECT check_name FROM mp_check() WHERE detail LIKE 'table public.rn:%'" "attachment_broken"
as w >/dev/null -c "SELECT mp_detach('rn')"

# 10. REPEATABLE READ: a join racing a concurrent commit is 40001, not 23505.
expect_err "function under REPEATABLE READ" w "BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 1;
\\! $PG_BIN/psql -X -q -U w -c \"SELECT mp_identify('rr_u', 'rr_d1')\" >/dev/null
SELECT mp_identify('rr_u', 'rr_d2');" 40001
as w >/dev/null -c "CREATE TABLE rr_ev (distinct_id text, event text, properties jsonb, canonical_id text)" -c "SELECT mp_attach('rr_ev')"
expect_err "trigger under REPEATABLE READ" w "BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 1;
\\! $PG_BIN/psql -X -q -U w -c \"SELECT mp_identify('rr_v', 'rr_e1')\" >/dev/null
INSERT INTO rr_ev VALUES ('rr_v', '\$identify', '{\"\$identified_id\": \"rr_v\", \"\$anon_id\": \"rr_e2\"}');" 40001

# 11. mp_backfill leaves statistics behind (mp_check plans on them).
as postgres >/dev/null -c "CREATE DATABASE stats"
got=$(as postgres -d stats <<'SQL'
CREATE EXTENSION identity_merge;
SELECT joins FROM mp_backfill('SELECT ''merge'', ''a'' || g, ''b'' || g FROM generate_series(1, 1000) g');
SELECT reltuples::bigint FROM pg_class WHERE oid = 'identity_merge.identities'::regclass;
SQL
)
[ "$got" = "$(printf '1000\n2000')" ] && ok || bad "statistics after a backfill: [$got]"

# 12. UPDATE of the distinct_id restamps; inheritance and generated columns refused at attach.
expect "UPDATE and ON CONFLICT DO UPDATE stamp the new distinct_id" w "CREATE TABLE up (id int PRIMARY KEY, distinct_id text, canonical_id text);
SELECT 'attached' FROM mp_attach('up');
SELECT mp_identify('upU', 'upd') IS NOT NULL;
INSERT INTO up VALUES (1, 'zz'), (2, 'zz');
UPDATE up SET distinct_id = 'upd' WHERE id = 1 RETURNING canonical_id;
INSERT INTO up VALUES (2, 'q') ON CONFLICT (id) DO UPDATE SET distinct_id = 'upd' RETURNING canonical_id;" "attached
t
upU
upU"
expect_err "a table with INHERITS children" w "CREATE TABLE ih (distinct_id text, canonical_id text);
CREATE TABLE ihc () INHERITS (ih);
SELECT mp_attach('ih');" 0A000
expect_err "a generated canonical column" w "CREATE TABLE gn (distinct_id text, canonical_id text GENERATED ALWAYS AS (upper(distinct_id)) STORED);
SELECT mp_attach('gn');" 0A000

# 13. Readers see refusals only from tables they may read; mp_check audits what it can.
as w >/dev/null -c "CREATE TABLE wt (distinct_id text, event text, properties jsonb, canonical_id text)" -c "SELECT mp_attach('wt')" \
  -c "INSERT INTO wt VALUES ('s', '\$identify', '{\"\$identified_id\": \"s\", \"\$anon_id\": \"s\"}')"
expect "the owner sees the refusal" w "SELECT count(*) FROM identity_merge.rejections WHERE source_table = 'wt'::regclass" "1"
expect "a reader without SELECT does not" r "SELECT count(*) FROM identity_merge.rejections WHERE source_table = 'wt'::regclass" "0"
expect "mp_check as a reader reports unreadable tables" r "SELECT check_name FROM mp_check() WHERE detail LIKE 'table public.wt:%'" "stamps_not_checked"
as postgres >/dev/null -c "CREATE TABLE mis (distinct_id text, canonical_id text)" \
  -c "CREATE TRIGGER t AFTER INSERT ON mis FOR EACH ROW EXECUTE FUNCTION identity_merge.stamp_event('default', 'distinct_id', 'canonical_id')"
got=$(as postgres -c "INSERT INTO mis VALUES ('a')")
if grep -q "ERROR:  39P01:" <<<"$got" && ! grep -qi panic <<<"$got"; then ok; else bad "misattached trigger: [$got]"; fi

# 15. Explain and undo as the roles: a reader may explain but not split; a writer may split, and
# the retraction and the joins name the role that made them.
as postgres >/dev/null -c "SELECT mp_create_project('undo'), mp_set_project_setting('undo', 'anon_id_format', 'any')"
as w >/dev/null -c "SELECT mp_identify('uU', 'uD', 'undo'), mp_merge('uV', 'uU', 'undo')"
expect "a reader explains" r "SELECT string_agg(operation || ':' || role_name, ',' ORDER BY step) FROM mp_explain('uD', 'undo')" "identify:w,merge:w"
expect_err "a reader may not split" r "SELECT * FROM mp_split('uD', 'undo')" 42501
expect_err "nor unjoin" r "SELECT * FROM mp_unjoin(1)" 42501
expect "a writer splits" w "SELECT string_agg(id || '>' || new_canonical, ',' ORDER BY id) FROM mp_split('uU', 'undo')" "uD>uD,uU>uU"
expect "the retraction names the writer" postgres "SELECT operation || ':' || role_name || ':' || cardinality(retracted) FROM identity_merge.retractions r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'undo'" "split:w:2"
expect_err "a writer cannot rewrite the retractions" w "DELETE FROM identity_merge.retractions" 42501

# 16. CALL mp_restamp_all keeps its progress as the caller: a writer sees and changes only the
# progress of tables it owns (an administrator's run cannot be made to skip blocks).
as postgres >/dev/null -c "INSERT INTO identity_merge.restamp_progress (events, next_block, blocks) VALUES ('adm_ev', 0, 10)"
expect "a writer does not see another owner's progress" w "SELECT count(*) FROM identity_merge.restamp_progress" "0"
expect "nor change it" w "UPDATE identity_merge.restamp_progress SET next_block = 999 RETURNING 1" ""
expect "the administrator's run is intact" postgres "SELECT next_block FROM identity_merge.restamp_progress WHERE events = 'adm_ev'::regclass" "0"
expect_err "a writer cannot record progress for another owner's table" w "INSERT INTO identity_merge.restamp_progress (events, next_block, blocks) VALUES ('adm_ev', 5, 10)" 42501
expect "a writer restamps its own table" w "INSERT INTO own_ev (distinct_id) VALUES ('zz1');
SET client_min_messages = warning;
CALL mp_restamp_all('own_ev');
SELECT count(*) FROM own_ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)" "0"

# 17. A prepared join (two-phase commit) may be committed by another session much later: it does
# not go through the ring (ring.rs) but sends the change signal with the prepared state, so a
# session whose stamp cache is warm sees the join from its first statement after COMMIT PREPARED.
# The loader is one session that stays open (a coprocess), so its cache stays warm.
as postgres >/dev/null <<'SQL'
SELECT mp_create_project('tpc'), mp_set_project_setting('tpc', 'anon_id_format', 'any');
CREATE TABLE tpc_ev (n serial, distinct_id text, canonical_id text);
SELECT mp_attach('tpc_ev', 'tpc');
SELECT mp_merge('p1', 'q1', 'tpc'), mp_merge('p2', 'q2', 'tpc');
SQL
coproc LOADER { "$PG_BIN/psql" -X -q -A -t -U postgres 2>&1; }
# loader SQL: runs SQL in the loader session; its output, up to the end of SQL, in $said
# (coprocess descriptors do not reach a $(...) subshell).
said=""
loader() {
  printf '%s\n%s\n' "$1" '\echo __end__' >&"${LOADER[1]}"
  local line
  said=""
  while IFS= read -r -t 60 line <&"${LOADER[0]}"; do
    [ "$line" = "__end__" ] && break
    said+="$line"
  done
}
# stale_since N: the loader's rows after row N stamped other than mp_resolve says now.
stale_since() {
  loader "SELECT count(*) FROM tpc_ev WHERE n > $1 AND canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'tpc');"
}
stamp_all="INSERT INTO tpc_ev (distinct_id) SELECT unnest(ARRAY['p1', 'q1', 'p2', 'q2']); SELECT max(n) - 4 FROM tpc_ev;"
loader "$stamp_all"
as postgres >/dev/null <<'SQL'
BEGIN;
SELECT mp_merge('p1', 'p2', 'tpc');
PREPARE TRANSACTION 'tpc_join';
SQL
loader "$stamp_all"; before=$said
expect "a prepared join is not seen before it commits" postgres "SELECT count(DISTINCT canonical_id) FROM tpc_ev WHERE n > $before" "2"
as postgres >/dev/null -c "COMMIT PREPARED 'tpc_join'"
loader "$stamp_all"; after=$said
stale_since "$after"
[ "$said" = "0" ] && ok || bad "a warm cache sees a committed prepared join at its next statement: [$said] stale"
expect "the four ids are one person" postgres "SELECT count(DISTINCT canonical_id) FROM tpc_ev WHERE n > $after" "1"
# And a plain join elsewhere, through the ring, the same way.
as postgres >/dev/null -c "SELECT mp_merge('p1', 'r1', 'tpc')"
loader "INSERT INTO tpc_ev (distinct_id) VALUES ('r1'), ('q2'); SELECT max(n) - 2 FROM tpc_ev;"; after=$said
stale_since "$after"
[ "$said" = "0" ] && ok || bad "a warm cache sees a join committed elsewhere at its next statement: [$said] stale"
printf '\\q\n' >&"${LOADER[1]}"; wait "$LOADER_PID" 2>/dev/null || true
# A transaction that stamped rows and resolved ids through the direct probes, then prepared
# (what Citus does on a worker node): the probes are closed before the prepare, so PostgreSQL
# has no reference of ours left to release (it would warn of each leak) and the rows commit.
out=$(as postgres <<'SQL'
BEGIN;
INSERT INTO tpc_ev (distinct_id) VALUES ('p1'), ('prep-new');
SELECT mp_resolve('q1', 'tpc');
PREPARE TRANSACTION 'tpc_stamp';
COMMIT PREPARED 'tpc_stamp';
SQL
)
check "stamping, then PREPARE TRANSACTION: no reference leak" "" "$(grep -i 'leak' <<<"$out" || true)"
expect "the prepared rows are stamped" postgres "SELECT count(*) FROM tpc_ev WHERE n > (SELECT max(n) - 2 FROM tpc_ev) AND canonical_id = mp_resolve(distinct_id, 'tpc')" "2"


# ---- Round 3 (issue 25): administrators' functions on a writer's table, and the new surface ----
# 1. A writer retypes its attached table's properties to a type of its own whose cast to jsonb
#    makes it superuser; the administrator's mp_backfill_from must not run it (the columns are
#    checked again, and the history is read as the table's owner).
as w >/dev/null <<'SQL'
CREATE TABLE esc_ev (distinct_id text, event text, properties jsonb, canonical_id text, "time" timestamptz DEFAULT now());
SELECT mp_attach('esc_ev');
INSERT INTO esc_ev (distinct_id, event, properties) VALUES ('esc-u', '$identify', '{"$identified_id": "esc-u", "$anon_id": "esc-a"}');
CREATE TYPE esc_t AS (v text);
CREATE FUNCTION esc_cast(esc_t) RETURNS jsonb LANGUAGE plpgsql AS $f$
BEGIN EXECUTE 'ALTER ROLE w SUPERUSER'; RETURN '{}'::jsonb; EXCEPTION WHEN OTHERS THEN RETURN '{}'::jsonb; END $f$;
CREATE CAST (esc_t AS jsonb) WITH FUNCTION esc_cast(esc_t);
ALTER TABLE esc_ev ALTER properties TYPE esc_t USING ROW(properties::text)::esc_t;
SQL
expect_err "backfill_from refuses a properties column of a writer's type" postgres "SELECT * FROM mp_backfill_from('esc_ev')" 42804
expect "and the writer did not become superuser" postgres "SELECT rolsuper FROM pg_roles WHERE rolname = 'w'" "f"
# The time order column and a Simplified table's device column, of a writer's type, likewise.
as w >/dev/null <<'SQL'
CREATE TYPE esc_ts AS (v timestamptz);
CREATE TABLE esc_ord (distinct_id text, event text, properties jsonb, canonical_id text, t esc_ts);
SELECT mp_attach('esc_ord');
CREATE TABLE esc_simp (distinct_id text, canonical_id text, anonymous_id text, user_id text, "timestamp" timestamptz);
SELECT mp_attach('esc_simp', 'simp', device_id_column => 'anonymous_id', user_id_column => 'user_id');
CREATE DOMAIN esc_dom AS text;
ALTER TABLE esc_simp ALTER anonymous_id TYPE esc_dom;
SQL
expect_err "backfill_from refuses to order by a writer's type" postgres "SELECT * FROM mp_backfill_from('esc_ord', order_by => 't')" 42804
expect_err "backfill_from refuses a device column of a writer's type" postgres "SELECT * FROM mp_backfill_from('esc_simp')" 42804
# An administrator's mp_restamp runs the writer's own UPDATE trigger as the writer (as its
# owner, in a security-restricted operation), never as the administrator.
as w >/dev/null <<'SQL'
CREATE TABLE esc_rs (distinct_id text, canonical_id text);
SELECT mp_attach('esc_rs');
INSERT INTO esc_rs VALUES ('rs-a'), ('rs-b');
CREATE FUNCTION esc_upd() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN EXECUTE 'ALTER ROLE w SUPERUSER'; RETURN NEW; EXCEPTION WHEN OTHERS THEN RETURN NEW; END $f$;
CREATE TRIGGER esc_upd BEFORE UPDATE ON esc_rs FOR EACH ROW EXECUTE FUNCTION esc_upd();
SELECT mp_merge('rs-a', 'rs-b');
SQL
expect "an administrator's restamp of a writer's table" postgres "SELECT mp_restamp('esc_rs')" "1"
expect "runs the writer's trigger without the administrator's rights" postgres "SELECT rolsuper FROM pg_roles WHERE rolname = 'w'" "f"
expect "the restamp did its work" postgres "SELECT count(DISTINCT canonical_id) FROM esc_rs" "1"
# A writer's mp_backfill_from of its own history still works for the administrator (read as its owner).
as w >/dev/null <<'SQL'
CREATE TABLE bf_own (distinct_id text, event text, properties jsonb, canonical_id text, "time" timestamptz DEFAULT now());
ALTER TABLE bf_own ENABLE ROW LEVEL SECURITY;
CREATE POLICY bf_all ON bf_own USING (true);
INSERT INTO bf_own (distinct_id, event, properties) VALUES ('bf-u', '$identify', '{"$identified_id": "bf-u", "$anon_id": "bf-a"}');
SELECT mp_attach('bf_own');
SQL
expect "an administrator's backfill_from reads a writer's table as its owner" postgres "SELECT events_read, joins FROM mp_backfill_from('bf_own')" "1|1"
# A role that may not act as the table's owner is refused: w2 may not act as w.
as postgres >/dev/null -c "CREATE ROLE w2 LOGIN; SELECT mp_grant_writer('w2'); GRANT UPDATE ON esc_rs TO w2;"
expect_err "a role that may not act as the owner cannot restamp its table" w2 "SELECT mp_restamp('esc_rs')" 42501

# 2. mp_refresh_people reads an update committed after a later one (ids are handed out at
#    insert, not at commit): the refresh waits for the writers in flight.
( printf '%s\n' "BEGIN;" "SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"rp-1\", \"\$set\": {\"first\": 1}}');" \
    "SELECT pg_sleep(2);" "COMMIT;" | as w -f - >/dev/null ) &
slow=$!
sleep 0.7
as w >/dev/null -c "SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"rp-1\", \"\$set\": {\"second\": 2}}')"
as w >/dev/null -c "SELECT mp_refresh_people('default')"
wait "$slow"
as w >/dev/null -c "SELECT mp_refresh_people('default')"
expect "a refresh sees an update committed after a later one" r "SELECT properties->>'first', properties->>'second' FROM identity_merge.people WHERE canonical_id = 'rp-1'" "1|2"

# 4. mp_restamp_all's saved progress is void after TRUNCATE and reload; 5. rows loaded before
#    mp_attach (Segment-shaped, NULL distinct_id) are stamped by the documented workflow, and
#    mp_check reports them until then.
as w >/dev/null <<'SQL'
CREATE TABLE ra_ev (distinct_id text, canonical_id text, n int);
SELECT mp_attach('ra_ev');
INSERT INTO ra_ev (distinct_id, n) SELECT 'ra-' || g, g FROM generate_series(1, 2000) g;
SQL
as postgres >/dev/null -c "INSERT INTO identity_merge.restamp_progress (events, next_block, blocks, filenode, attached_at)
  SELECT 'ra_ev', 1000, 1000, pg_relation_filenode('ra_ev'), attached_at FROM identity_merge.attachments WHERE events = 'ra_ev'::regclass"
as w >/dev/null <<'SQL'
TRUNCATE ra_ev;
ALTER TABLE ra_ev DISABLE TRIGGER identity_merge_stamp;
INSERT INTO ra_ev (distinct_id, n) SELECT 'ra-' || g, g FROM generate_series(1, 2000) g;
ALTER TABLE ra_ev ENABLE TRIGGER identity_merge_stamp;
SQL
expect "mp_check reports rows without a stamp" w "SELECT check_name FROM mp_check() WHERE detail LIKE 'table public.ra_ev:%'" "unstamped_rows"
as w >/dev/null -c "CALL mp_restamp_all('ra_ev', 1)" 2>/dev/null
expect "a restamp after TRUNCATE and reload stamps every row" w "SELECT count(*) FROM ra_ev WHERE canonical_id IS NULL" "0"
as w >/dev/null <<'SQL'
CREATE TABLE seg_ev (distinct_id text, canonical_id text, anonymous_id text, user_id text, "timestamp" timestamptz DEFAULT now());
INSERT INTO seg_ev (anonymous_id, user_id) VALUES ('4f0c1d2e-0000-4000-8000-000000000001', NULL),
    ('4f0c1d2e-0000-4000-8000-000000000001', 'seg-user'), (NULL, 'seg-user');
SELECT mp_attach('seg_ev', 'simp', device_id_column => 'anonymous_id', user_id_column => 'user_id');
SQL
expect "mp_check reports Segment rows loaded before attach" w "SELECT check_name FROM mp_check('simp') WHERE detail LIKE 'table public.seg_ev:%'" "unstamped_rows"
as postgres >/dev/null -c "SELECT * FROM mp_backfill_from('seg_ev')"
as w >/dev/null -c "CALL mp_restamp_all('seg_ev')" 2>/dev/null
expect "rows loaded before attach get the trigger's distinct_id and stamp" w "SELECT count(*) FILTER (WHERE distinct_id IS NULL OR canonical_id IS NULL), count(DISTINCT canonical_id) FROM seg_ev" "0|1"
expect "and mp_check is clean" w "SELECT count(*) FROM mp_check('simp') WHERE detail LIKE 'table public.seg_ev:%'" "0"

# 8. A registered device or user column renamed after attach: inserts refused, mp_check reports it.
as w >/dev/null -c "ALTER TABLE seg_ev RENAME anonymous_id TO anon"
expect_err "an insert after renaming the registered device column is refused" w "INSERT INTO seg_ev (anon, user_id) VALUES ('4f0c1d2e-0000-4000-8000-000000000002', 'x')" 42703
expect "mp_check reports the broken attachment" w "SELECT check_name FROM mp_check('simp') WHERE detail LIKE 'table public.seg_ev:%'" "attachment_broken"
as w >/dev/null -c "SELECT mp_attach('seg_ev', 'simp', device_id_column => 'anon', user_id_column => 'user_id')"
expect "re-attaching with the new name mends it" w "SELECT count(*) FROM mp_check('simp') WHERE detail LIKE 'table public.seg_ev:%'" "0"

# 9. Two restamps of one table take turns (a table's lock) instead of deadlocking.
( printf '%s\n' "BEGIN;" "SELECT mp_restamp('esc_rs');" "SELECT pg_sleep(2);" "COMMIT;" | as w -f - >/dev/null ) &
first=$!
sleep 0.5
( as w -c "SELECT mp_restamp('esc_rs')" >/dev/null ) &
second=$!
sleep 0.5
expect "the second restamp waits for the first on the table's lock" postgres "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted" "1"
wait "$first" "$second"

# Administrators' functions given NULL: an error naming the argument, or a reset.
for call in "mp_create_project(NULL)" "mp_attach(NULL)" "mp_restamp(NULL)" "mp_grant_writer(NULL)" "mp_backfill(NULL)" \
            "mp_set_project_setting('default', NULL, 'x')"; do
  expect_err "$call is an error" postgres "SELECT $call" 22004
done
as postgres >/dev/null -c "SELECT mp_create_project('nullreset'); SELECT mp_set_project_setting('nullreset', 'max_cluster_size', '5')"
as postgres >/dev/null -c "SELECT mp_set_project_setting('nullreset', 'max_cluster_size', NULL)"
expect "a NULL value resets a setting to its default" postgres "SELECT (SELECT value FROM mp_project_settings('nullreset') WHERE setting = 'max_cluster_size') = (SELECT value FROM mp_project_settings('simp') WHERE setting = 'max_cluster_size')" "t"
# Clear errors on history loading.
expect_err "an empty backfill source" postgres "SELECT * FROM mp_backfill('')" 22023
expect "a backfill source of the wrong types names the column and type" postgres "SELECT count(*) FROM mp_backfill('SELECT 1, 2, 3')" "$(printf 'psql:<stdin>:1: ERROR:  22023: invalid backfill source query: "column 1 is of type integer, not text"\nHINT:  Its three columns (operation, id_a, id_b) must be text: cast them with ::text.')"
as postgres >/dev/null -c "CREATE TABLE seg_identifies (anonymous_id text, \"timestamp\" timestamptz)"
expect_err "identifies without user_id" postgres "SELECT * FROM mp_backfill_from('seg_identifies', NULL, 'default')" 42703
expect_err "a malformed blocked_ids value" postgres "SELECT mp_set_project_setting('nullreset', 'blocked_ids', '{\"a')" 22P02
expect_err "mp_explain(a, b) is the one-id form" r "SELECT * FROM mp_explain('a', 'b')" 42704
got=$(as r -c "SELECT * FROM mp_explain('a', 'b')")
grep -q "mp_explain(id_a, 'b', project)" <<<"$got" && ok || bad "mp_explain(a, b)'s hint names the two-id form: [$got]"
# No Rust backtrace on errors the extension's hooks pass through (the server has RUST_BACKTRACE=1).
got=$(as w -c "SELECT mp_resolve('x')" -c "CREATE TABLE bt_dup (a int primary key)" -c "CREATE TABLE bt_dup (a int)")
grep -q "42P07" <<<"$got" && ! grep -qiE "backtrace|identity_merge::|DETAIL" <<<"$got" && ok \
  || bad "a failing DDL statement carries no Rust backtrace: [$got]"
got=$(as w -c "SELECT mp_resolve('x')" -c "CREATE TABLE bt_fk (a int REFERENCES bt_dup)" -c "INSERT INTO bt_fk VALUES (1)")
grep -q "23503" <<<"$got" && ! grep -qiE "backtrace|identity_merge::" <<<"$got" && ok \
  || bad "a foreign-key violation carries no Rust backtrace: [$got]"

# No check may have restarted the server.
[ "$(as postgres -c "SELECT pg_postmaster_start_time()")" = "$started" ] && ok || bad "the server restarted (a backend crashed)"
summary reliability || true   # the verdict is this and reliability_people.sh's, below
# Profiles, Engage and identity records (their own cluster, the same roles).
people=0; bash tests/reliability_people.sh || people=$?
[ "$fail" = 0 ] && [ "$people" = 0 ]
