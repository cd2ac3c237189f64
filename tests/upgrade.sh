#!/usr/bin/env bash
# Upgradability:
# 1. The frozen script of the current version (sql/released/) still matches what the code
#    generates: a change to the SQL surface needs a new version and an upgrade script.
# 2. For every older frozen version V: install V, load data, ALTER EXTENSION identity_merge UPDATE,
#    check the data and the functions, and that the upgraded catalog equals a fresh install's.
# On the PostgreSQL of PG_MAJOR (default 15; tools/pg_cluster.sh), with its installed build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source tests/lib.sh
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
extdir="$("$PG_BIN/pg_config" --sharedir)/extension"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# 0. Released scripts (install and upgrade) are never edited: their checksums are recorded at
#    release (tools/release.sh) in sql/released/SHA256SUMS.
if sha256sum --quiet -c sql/released/SHA256SUMS; then ok
else bad "a released script was edited (sql/released/SHA256SUMS): add a new version and its upgrade script instead"; fi

frozen=sql/released/identity_merge--$version.sql
if [ -e "$frozen" ]; then
  now="$(mktemp -d)/now.sql"
  cargo_locked pgrx schema "pg$PG_MAJOR" --out "$now" >/dev/null 2>&1
  if diff <(python3 tools/sql_normalize.py "$frozen") <(python3 tools/sql_normalize.py "$now") >/dev/null; then ok
  else bad "version $version is released but its SQL changed: bump the version and add sql/identity_merge--$version--NEW.sql"; fi
else
  echo "note: version $version is not frozen yet (tools/release.sh freezes it at release)"
fi

catalog="SELECT md5(string_agg(x, E'\n' ORDER BY x)) FROM (
  SELECT format('fn %s %s %s %s %s', p.oid::regprocedure, p.provolatile, p.proisstrict, p.proparallel, md5(p.prosrc)) x
    FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
   WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'identity_merge')
     AND p.pronamespace::regnamespace::text <> 'tests'
  UNION ALL SELECT format('col %s.%s %s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
   WHERE c.relnamespace = 'identity_merge'::regnamespace AND c.relkind = 'r'
  UNION ALL SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
   WHERE c.relnamespace = 'identity_merge'::regnamespace
  UNION ALL SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = 'identity_merge'::regnamespace AND NOT t.tgisinternal) s"

older=$(ls sql/released/identity_merge--*.sql 2>/dev/null | sed 's/.*--\(.*\)\.sql/\1/' | grep -vx "$version" || true)
if [ -n "$older" ]; then
  cluster_throwaway upgrade
  cluster_psql -c "CREATE DATABASE fresh" >/dev/null
  cluster_psql -d fresh -c "CREATE EXTENSION identity_merge" >/dev/null
  want=$(cluster_psql -d fresh -Atc "$catalog")
  for v in $older; do
    $SUDO cp "sql/released/identity_merge--$v.sql" "$extdir/identity_merge--$v.sql"
    db="up_$(echo "$v" | tr . _)"
    cluster_psql -c "CREATE DATABASE $db" >/dev/null
    # PostgreSQL chains upgrade scripts (0.1.0 -> 0.1.1 -> 0.1.2): a path must exist.
    path=$(cluster_psql -d "$db" -Atc "SELECT path FROM pg_extension_update_paths('identity_merge') WHERE source = '$v' AND target = '$version'")
    [ -n "$path" ] || { bad "no upgrade path from $v to $version (add sql/identity_merge--$v--$version.sql or a chain to it)"; continue; }
    cluster_psql -d "$db" >/dev/null <<SQL
CREATE EXTENSION identity_merge VERSION '$v';
SET identity_merge.anon_id_format = 'any';
SELECT mp_identify('U1', 'D1'), mp_alias('A1', 'U1'), mp_merge('M', 'U1');
CREATE TABLE events (distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('events');
INSERT INTO events VALUES ('D2', 'x', '{}'), ('U2', '\$identify', '{"\$identified_id": "U2", "\$anon_id": "D2"}');
ALTER EXTENSION identity_merge UPDATE;
SQL
    got=$(cluster_psql -d "$db" -Atc "SELECT extversion FROM pg_extension WHERE extname = 'identity_merge'")
    [ "$got" = "$version" ] && ok || bad "$v: updated to '$got', not $version"
    [ "$(cluster_psql -d "$db" -Atc "SELECT mp_resolve('A1')")" = "M" ] && ok || bad "$v: data lost in the upgrade"
    [ "$(cluster_psql -d "$db" -Atc "SELECT mp_alias('A2', 'D1')")" = "M" ] && ok || bad "$v: functions after the upgrade"
    [ "$(cluster_psql -d "$db" -Atc "INSERT INTO events VALUES ('D2', 'y', '{}') RETURNING canonical_id")" = "U2" ] && ok || bad "$v: trigger after the upgrade"
    [ "$(cluster_psql -d "$db" -Atc "SELECT count(*) FROM mp_check()")" = "0" ] && ok || bad "$v: mp_check after the upgrade"
    [ "$(cluster_psql -d "$db" -Atc "$catalog")" = "$want" ] && ok || bad "$v: upgraded catalog differs from a fresh install of $version"
  done
fi
summary upgrade
