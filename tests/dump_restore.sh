#!/usr/bin/env bash
# pg_dump / pg_restore keeps every cluster: builds state in a throwaway cluster, dumps the
# database, restores it into a new one, and compares the identity state, the default project's
# changed settings, stamps, and that the trigger still works after the restore. PG_MAJOR picks
# the PostgreSQL (default 15: tools/pg_cluster.sh), with its pg_dump and pg_restore.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
# check NAME WANT GOT, with this script's own failure text
check() { if [ "$2" = "$3" ]; then ok; else bad "$1: '$2' != '$3'"; fi; }
cluster_throwaway dump
cluster_psql -d postgres -c "CREATE DATABASE src" -c "CREATE DATABASE dst"
cluster_psql -d src >/dev/null <<'SQL'
CREATE EXTENSION identity_merge;
SET identity_merge.anon_id_format = 'any';
SELECT mp_set_project_setting('default', 'max_cluster_size', '321');
SELECT mp_set_project_setting('default', 'carry_device_profile', 'on');
SELECT mp_create_project('other');
SELECT mp_identify('U1', 'D1'), mp_alias('A1', 'U1'), mp_merge('M', 'U1'), mp_merge('x', 'y', 'other');
CREATE TABLE events (distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('events');
INSERT INTO events VALUES ('D2', 'Page View', '{}'),
  ('U2', '$identify', '{"$identified_id": "U2", "$anon_id": "D2"}'),
  ('U3', '$identify', '{"$identified_id": "U3", "$anon_id": "D2"}');
SQL
state_query="SELECT md5(string_agg(x, ';' ORDER BY x)) FROM (
  SELECT format('%s|%s|%s', p.token, i.distinct_id, i.canonical_id) x FROM identity_merge.identities i JOIN identity_merge.projects p USING (project_id)
  UNION ALL SELECT format('c|%s|%s|%s|%s', project_id, canonical_id, size, identified) FROM identity_merge.clusters
  UNION ALL SELECT format('l|%s|%s|%s', seq, absorbed_canonical, kept_canonical) FROM identity_merge.merge_log
  UNION ALL SELECT format('r|%s|%s', reason_code, id_a) FROM identity_merge.rejections
  UNION ALL SELECT format('p|%s|%s|%s', token, mode, max_cluster_size) FROM identity_merge.projects
  UNION ALL SELECT format('e|%s|%s', distinct_id, canonical_id) FROM events) s"
before=$(cluster_psql -d src -Atc "$state_query")
# (in the cluster's directory, which the server's user may write)
as_pg "$PG_BIN/pg_dump" -h "$PGHOST" -p "$PGPORT" -U postgres -Fc -d src -f "$CLUSTER_DIR/src.dump"
as_pg "$PG_BIN/pg_restore" -h "$PGHOST" -p "$PGPORT" -U postgres -d dst --exit-on-error "$CLUSTER_DIR/src.dump"
after=$(cluster_psql -d dst -Atc "$state_query")
check "identity state survives dump/restore" "$before" "$after"
check "default project setting survives" "321 true" "$(cluster_psql -d dst -Atc "SELECT max_cluster_size || ' ' || carry_device_profile FROM identity_merge.projects WHERE token = 'default'")"
check "resolve after restore" "M" "$(cluster_psql -d dst -Atc "SELECT mp_resolve('A1')")"
check "trigger after restore" "U2" "$(cluster_psql -d dst -Atc "INSERT INTO events VALUES ('D2', 'x', '{}') RETURNING canonical_id")"
check "merges continue after restore" "M" "$(cluster_psql -d dst -Atc "SELECT mp_alias('A2', 'A1')")"
check "project ids continue after restore" "3" "$(cluster_psql -d dst -Atc "SELECT mp_create_project('third'); SELECT count(DISTINCT project_id) FROM identity_merge.projects" | tail -1)"
summary dump/restore
