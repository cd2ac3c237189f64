#!/usr/bin/env bash
# Hostile use of people profiles and identity records (issue 25, items 3, 6, 7, 10, 11 and the
# record that describes another person), as the roles a deployment hands out: a writer `w`
# (mp_grant_writer) and a reader `r` (mp_grant_reader), against a throwaway cluster with the
# installed build. Each refusal is an answer for that one update, never an exception that takes
# the batch down; a large $union neither slows every profile of its person nor ignores a
# statement_timeout. Prints `reliability_people: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
cluster_throwaway reliability-people
started=$(as postgres -c "SELECT pg_postmaster_start_time()")

cluster_extension w r
as postgres >/dev/null <<'SQL'
SELECT mp_set_project_setting('default', 'anon_id_format', 'any');
SELECT mp_create_project('other');
SQL
# The statuses of an mp_engage answer: the call's, then each result's.
statuses="SELECT concat_ws(' ', a->>'status', (SELECT string_agg(x->>'status', ' ') FROM jsonb_array_elements(a->'results') x)) FROM a;"

# 6. An out-of-range $time is a refusal of that update (status 0, naming $time), not 22008 for the batch.
expect "\$time 1e20 in a batch: that update refused, the others stored" w "WITH a(a) AS (SELECT mp_engage('[
  {\"\$token\": \"default\", \"\$distinct_id\": \"t6\", \"\$set\": {\"a\": 1}},
  {\"\$token\": \"default\", \"\$distinct_id\": \"t6\", \"\$time\": 1e20, \"\$set\": {\"b\": 2}},
  {\"\$token\": \"default\", \"\$distinct_id\": \"t6\", \"\$time\": 1700000000000, \"\$set\": {\"c\": 3}}]'))
$statuses
SELECT mp_profile('t6');" '0 1 0 1
{"a": 1, "c": 3}'
expect "\$time 1e20 alone: its reason" w "SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t6\", \"\$time\": 1e20, \"\$set\": {\"b\": 2}}') ->> 'error' LIKE 'errMalformedEvent: \$time % is out of range%';" "t"

# Same class: a NUL (the text form, granted to writers, reads \u0000) is a refusal of that
# update, never an error of jsonb that takes the batch down.
expect "a NUL in an update refuses that update only" w "WITH a(a) AS (SELECT identity_merge._engage('[
  {\"\$token\": \"default\", \"\$distinct_id\": \"t6n\", \"\$set\": {\"x\": \"a\\u0000b\"}},
  {\"\$token\": \"default\", \"\$distinct_id\": \"t6n\\u0000\", \"\$set\": {\"x\": 2}},
  {\"\$token\": \"default\", \"\$distinct_id\": \"t6n\", \"\$set\": {\"y\": 1}}]')::jsonb)
$statuses
SELECT mp_profile('t6n');" '0 0 0 1
{"y": 1}'
expect "a NUL in an identity record is a 400" w "SELECT identity_merge._identity_record_create('{\"display_name\": \"J\\u0000P\", \"creator\": \"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\"}') ->> 'field';" "display_name"

# 7 and 10. The ids the identity path refuses are refused by mp_engage (status 0, errInvalidID),
# 3.2 kB included (never 54000); nothing stored.
for id in '' '   ' 'null' 'undefined' 'Undefined' '[object Object]' "$(printf 'x%.0s' $(seq 3200))"; do
  expect "mp_engage refuses distinct_id [${id:0:20}]" w "SELECT (a->>'status') || ' ' || (a->>'error' LIKE 'errInvalidID: \$distinct_id %')
  FROM mp_engage(jsonb_build_object('\$token', 'default', '\$distinct_id', '$id', '\$set', '{\"a\": 1}'::jsonb)) a;" "0 true"
done
expect "a long id in a batch refuses that update only" w "WITH a(a) AS (SELECT mp_engage(jsonb_build_array(
  jsonb_build_object('\$token', 'default', '\$distinct_id', repeat('x', 3200), '\$set', '{\"a\": 1}'::jsonb),
  jsonb_build_object('\$token', 'default', '\$distinct_id', 't7', '\$set', '{\"a\": 1}'::jsonb))))
$statuses
SELECT mp_profile('t7');" '0 0 1
{"a": 1}'
expect "nothing stored for refused ids" postgres "SELECT count(*) FROM identity_merge.profile_updates WHERE distinct_id NOT IN ('t6', 't6n', 't7')" "0"
A=0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed
expect "a 3.2 kB distinct_id of an identity record is a 400 naming it" w "SELECT (a - 'message')::text || ' ' || (a->>'message' LIKE '%errInvalidID%')
  FROM mp_identity_record_create(jsonb_build_object('display_name', 'JP', 'creator', '$A', '\$token', 'default', 'distinct_id', repeat('y', 3200))) a;" '{"error": "Bad Request", "field": "distinct_id", "status": 400} true'
expect "a placeholder distinct_id of an identity record is a 400" w "SELECT mp_identity_record_create('{\"display_name\": \"JP\", \"creator\": \"$A\", \"\$token\": \"default\", \"distinct_id\": \"null\"}') ->> 'status';" "400"

# 11. Numbers beyond what a profile can hold: refused at ingest, naming the property; integers exact.
expect "\$time 1e400 is refused, not stored as now" w "SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11\", \"\$time\": 1e400, \"\$set\": {\"a\": 1}}') ->> 'status';
SELECT mp_profile('t11');" '0
{}'
expect "big integers add exactly" w "SELECT mp_engage('[{\"\$token\": \"default\", \"\$distinct_id\": \"t11\", \"\$add\": {\"n\": 9223372036854775807}},
  {\"\$token\": \"default\", \"\$distinct_id\": \"t11\", \"\$add\": {\"n\": 9223372036854775807}},
  {\"\$token\": \"default\", \"\$distinct_id\": \"t11\", \"\$add\": {\"n\": 3}}]') ->> 'status';
SELECT mp_profile('t11') ->> 'n';" '1
18446744073709551617'
expect "\$add 1e308 (309 digits in jsonb) is refused, the counter untouched" w "SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11\", \"\$add\": {\"n\": 1e308}}') ->> 'error' LIKE 'errMalformedEvent: \$add.n %';
SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11\", \"\$add\": {\"n\": 1}}') ->> 'status';
SELECT mp_profile('t11') ->> 'n';" 't
1
18446744073709551618'
expect "the text form's 1e308 is refused too" w "SELECT identity_merge._engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11b\", \"\$add\": {\"n\": 1e308}}') ->> 'status';" "0"
expect "a sum beyond what can be represented keeps the counter, which goes on" w "SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11b\", \"\$add\": {\"n\": 170141183460469231731687303715884105727}}') ->> 'status';
SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11b\", \"\$add\": {\"n\": 1}}') ->> 'status';
SELECT mp_profile('t11b') ->> 'n';
SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11b\", \"\$add\": {\"n\": -7}}') ->> 'status';
SELECT mp_profile('t11b') ->> 'n';" '1
1
170141183460469231731687303715884105727
1
170141183460469231731687303715884105720'
expect "the reader reads the counter" r "SELECT mp_profile('t11') ->> 'n';" "18446744073709551618"
expect_err "the reader cannot engage" r "SELECT mp_engage('{\"\$token\": \"default\", \"\$distinct_id\": \"t11\", \"\$add\": {\"n\": 1}}');" 42501

# 3. One \$union of 100k items: its person's profile answers quickly, and a statement_timeout
# (or a cancel) takes effect during the fold instead of at its end.
as w >/dev/null -c "SELECT mp_engage(jsonb_build_object('\$token', 'default', '\$distinct_id', 'u100k',
  '\$union', jsonb_build_object('tags', (SELECT jsonb_agg('item-' || g) FROM generate_series(1, 100000) g))))"
as w >/dev/null -c "SELECT mp_engage(jsonb_build_object('\$token', 'default', '\$distinct_id', 'u100k',
  '\$union', jsonb_build_object('more', (SELECT jsonb_agg(g) FROM generate_series(1, 100000) g))))"
as w >/dev/null -c "SELECT mp_identify('u100k', 'd100k')"
t0=$(date +%s%N)
expect "mp_profile of a 100k-item union, through another id, within 10 s" r "SET statement_timeout = '10s';
SELECT jsonb_array_length(mp_profile('d100k') -> 'tags');" "100000"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$ms" -lt 10000 ] && ok || bad "mp_profile of a 100k-item union took ${ms} ms"
t0=$(date +%s%N)
expect_err "statement_timeout interrupts mp_profile" r "SET statement_timeout = '5ms';
SELECT jsonb_array_length(mp_profile('d100k') -> 'tags');" 57014
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$ms" -lt 3000 ] && ok || bad "statement_timeout took ${ms} ms to interrupt mp_profile"
expect "mp_refresh_people with the 100k-item person, within 10 s" w "SET statement_timeout = '10s';
SELECT mp_refresh_people() IS NOT NULL;" "t"

# The record whose content describes another person: a 409 naming the id holding it.
rec="{\"display_name\": \"JP\", \"creator\": \"$A\", \"description\": \"conflict\""
expect "a record created for U1" w "SELECT mp_identity_record_create('$rec, \"\$token\": \"default\", \"distinct_id\": \"U1\"}') ->> 'created';
SELECT mp_identity_record_create('$rec, \"\$token\": \"default\", \"distinct_id\": \"U1\"}') ->> 'created';
SELECT mp_identity_record_create('$rec}') ->> 'created';" 'true
false
false'
expect "the same content for U2 is a 409 naming U1" w "SELECT a->>'status', a->>'error', a->>'field', a->'held_by'->>'distinct_id', a->>'message' LIKE '%\"U1\"%'
  FROM mp_identity_record_create('$rec, \"\$token\": \"default\", \"distinct_id\": \"U2\"}') a;" '409|Conflict|distinct_id|U1|t'
expect "another id of the same person is the same person" w "SELECT mp_identify('U1', 'D1') IS NOT NULL;
SELECT mp_identity_record_create('$rec, \"\$token\": \"default\", \"distinct_id\": \"D1\"}') ->> 'created';" 't
false'
expect "the same id in another project is another person" w "SELECT mp_identity_record_create('$rec, \"\$token\": \"other\", \"distinct_id\": \"U1\"}') ->> 'status';" "409"
expect "the record stays U1's only" r "SELECT mp_profile('U2') ? '\$identity_records', mp_profile('U1') ? '\$identity_records';" "f|t"

# No check may have restarted the server.
[ "$(as postgres -c "SELECT pg_postmaster_start_time()")" = "$started" ] && ok || bad "the server restarted (a backend crashed)"
summary reliability_people
