#!/usr/bin/env bash
# What differs between PostgreSQL majors, checked on the major PG_MAJOR names (default 15), with
# the installed build, as the writer role: generated columns (stored on every major, virtual on
# 18, where a plain GENERATED column is virtual), MERGE ... WHEN NOT MATCHED THEN INSERT into an
# attached table (stamped like INSERT, identity rows applied), and COPY ... ON_ERROR ignore
# (17+: a skipped row reaches no trigger, so it has no identity effect). Prints
# `majors (pgNN): N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
major="${PG_MAJOR:-15}"
cluster_throwaway majors
expect_blank=drop   # results are compared without blank lines

cluster_extension w
as postgres >/dev/null <<'SQL'
GRANT CREATE ON SCHEMA public TO w;
SELECT mp_set_project_setting('default', 'anon_id_format', 'any');
SQL

# Generated columns: the trigger writes the canonical column and reads the distinct_id before
# generated columns are computed, so mp_attach refuses either as generated, of every kind the
# major has; a stamping trigger put on by hand refuses a generated canonical column.
kinds="STORED"
[ "$major" -ge 18 ] && kinds="STORED VIRTUAL"
for kind in $kinds; do
  expect_err "mp_attach refuses a $kind generated canonical column" w "CREATE TABLE gen_c_$kind (distinct_id text, canonical_id text GENERATED ALWAYS AS (distinct_id || '') $kind);
SELECT mp_attach('gen_c_$kind');" 0A000
  expect_err "mp_attach refuses a $kind generated distinct_id column" w "CREATE TABLE gen_d_$kind (raw text, distinct_id text GENERATED ALWAYS AS (lower(raw)) $kind, canonical_id text);
SELECT mp_attach('gen_d_$kind');" 0A000
  expect_err "a hand-made trigger refuses a $kind generated canonical column" w "CREATE TABLE gen_h_$kind (distinct_id text, canonical_id text GENERATED ALWAYS AS (distinct_id || '') $kind);
CREATE TRIGGER s BEFORE INSERT ON gen_h_$kind FOR EACH ROW EXECUTE FUNCTION identity_merge.stamp_event('default', 'distinct_id', 'canonical_id');
INSERT INTO gen_h_$kind (distinct_id) VALUES ('u');" 39P01
done
if [ "$major" -ge 18 ]; then
  # PostgreSQL 18: GENERATED without STORED is virtual.
  expect "a plain GENERATED column is virtual on 18" w "CREATE TABLE gen_plain (a text, b text GENERATED ALWAYS AS (a));
SELECT attgenerated FROM pg_attribute WHERE attrelid = 'gen_plain'::regclass AND attname = 'b';" "v"
fi
# Other generated columns of an attached table are left alone, and rows are stamped.
expect "a table with an unrelated generated column is stamped" w "CREATE TABLE gen_other (distinct_id text, canonical_id text, n int, m int GENERATED ALWAYS AS (n * 2) STORED);
SELECT mp_attach('gen_other');
INSERT INTO gen_other (distinct_id, n) VALUES ('g1', 1);
SELECT canonical_id, m FROM gen_other;" "g1|2"

# MERGE ... WHEN NOT MATCHED THEN INSERT: stamped like INSERT, identity rows applied.
expect "MERGE inserts are stamped and apply identity rows" w "CREATE TABLE m_ev (k int PRIMARY KEY, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('m_ev');
CREATE TABLE m_src (k int, distinct_id text, event text, properties jsonb);
INSERT INTO m_src VALUES (1, 'anon-m', 'view', '{}'),
  (2, 'user-m', '\$identify', '{\"\$identified_id\": \"user-m\", \"\$anon_id\": \"anon-m\"}'),
  (3, 'anon-m', 'click', '{}');
MERGE INTO m_ev e USING m_src s ON e.k = s.k
  WHEN NOT MATCHED THEN INSERT (k, distinct_id, event, properties) VALUES (s.k, s.distinct_id, s.event, s.properties);
SELECT string_agg(k || ':' || canonical_id, ' ' ORDER BY k) FROM m_ev;
SELECT mp_resolve('anon-m');" "1:anon-m 2:user-m 3:user-m
user-m"
expect "MERGE ... WHEN MATCHED THEN UPDATE of the distinct_id restamps" w "INSERT INTO m_src VALUES (4, 'other', 'view', '{}');
MERGE INTO m_ev e USING (SELECT 1 AS k, 'user-m' AS d) s ON e.k = s.k WHEN MATCHED THEN UPDATE SET distinct_id = 'solo-m';
SELECT canonical_id FROM m_ev WHERE k = 1;" "solo-m"
expect "mp_check is clean after MERGE" w "SELECT count(*) FROM mp_check();" "0"

# COPY ... ON_ERROR ignore (PostgreSQL 17+): a row skipped for a bad value never reaches the
# trigger: no stamp, no identity effect; the good rows are stamped and their events applied.
if [ "$major" -ge 17 ]; then
  expect "COPY ON_ERROR ignore: skipped rows have no identity effect" w "CREATE TABLE c_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('c_ev');
SET client_min_messages = warning;
COPY c_ev (n, distinct_id, event, properties) FROM STDIN WITH (FORMAT csv, ON_ERROR ignore);
1,anon-c,view,{}
oops,user-skip,\$identify,\"{\"\"\$identified_id\"\": \"\"user-skip\"\", \"\"\$anon_id\"\": \"\"anon-c\"\"}\"
2,user-c,\$identify,\"{\"\"\$identified_id\"\": \"\"user-c\"\", \"\"\$anon_id\"\": \"\"anon-c\"\"}\"
\\.
SELECT count(*), string_agg(n || ':' || canonical_id, ' ' ORDER BY n) FROM c_ev;
SELECT mp_resolve('anon-c'), mp_resolve('user-skip');" "2|1:anon-c 2:user-c
user-c|user-skip"
fi

summary "majors (pg$major)"
