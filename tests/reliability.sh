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
source tools/pg_cluster.sh
dir=$(mktemp -d /tmp/identity_merge-reliability.XXXXXX); chmod 755 "$dir"
trap 'cluster_discard "$dir"' EXIT
# autovacuum off: the statistics check must see what mp_backfill did, not the daemon.
# max_prepared_transactions: check 17 prepares a join.
cluster_start "$dir/pg" "$(free_port)" autovacuum=off max_prepared_transactions=4
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "FAIL: $*"; fail=$((fail+1)); }

# Output of SQL run as ROLE: rows unaligned, errors as "ERROR:  SQLSTATE: message".
as() {
  local role=$1; shift
  "$PG_BIN/psql" -X -q -A -t -U "$role" -v ON_ERROR_STOP=1 -v VERBOSITY=verbose "$@" 2>&1 || true
}
# expect NAME ROLE SQL WANT: the output (errors included) must equal WANT.
expect() {
  local got; got=$(printf '%s\n' "$3" | as "$2" -f - | grep -v '^LOCATION:' || true)
  [ "$got" = "$4" ] && ok || bad "$1: wanted [$4], got [$got]"
}
# expect_err NAME ROLE SQL SQLSTATE: SQL fails with SQLSTATE (and the server survives).
expect_err() {
  local got; got=$(printf '%s\n' "$3" | as "$2" -f -)
  if printf '%s' "$got" | grep -q "ERROR:  $4:"; then ok
  else bad "$1: wanted SQLSTATE $4, got [$(printf '%s' "$got" | head -3)]"; fi
}
started=$(as postgres -c "SELECT pg_postmaster_start_time()")

as postgres >/dev/null <<'SQL'
CREATE EXTENSION identity_merge;
CREATE ROLE w LOGIN; CREATE ROLE r LOGIN;
SELECT mp_grant_writer('w'), mp_grant_reader('r');
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
if printf '%s' "$got" | grep -q "ERROR:  39P01:" && ! printf '%s' "$got" | grep -qi panic; then ok; else bad "misattached trigger: [$got]"; fi

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

# No check may have restarted the server.
[ "$(as postgres -c "SELECT pg_postmaster_start_time()")" = "$started" ] && ok || bad "the server restarted (a backend crashed)"
echo "reliability: $pass passed, $fail failed"
[ "$fail" = 0 ]
