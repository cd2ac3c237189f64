#!/usr/bin/env bash
# Docs that run as written: every ```sql block of README.md and of each docs/*.md (docs/design/
# excluded), in order, in a fresh database per file of a throwaway cluster, with the installed
# identity_merge build. Docs get a database with only the extension created; the README not even
# that (it shows CREATE EXTENSION). Roles a file creates are dropped after it (roles belong to the
# cluster, not the database). Conventions (see tests/docs_run.py): `-- ERROR 22023` marks a
# refusal shown on purpose, `-- → value` a result that is checked. ```sql pg_cron blocks run when
# pg_cron is installed (the cluster preloads it for the database "docs"; the blocks create it);
# ```sql citus blocks are skipped here and counted (tests/docs_citus.sh runs those files on Citus).
# Usage: bash tests/docs.sh [FILE.md...]   (default: README.md docs/*.md)
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
if [ ! -f "$("$PG_BIN/pg_config" --pkglibdir)/identity_merge.so" ]; then
  echo "docs: identity_merge is not installed in $PG_BIN/.. (bash tools/install.sh)" >&2; exit 1
fi
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(README.md docs/*.md)

cron=()
if [ -f "$("$PG_BIN/pg_config" --pkglibdir)/pg_cron.so" ]; then
  cron=(shared_preload_libraries=pg_cron cron.database_name=docs)
  export DOCS_WITH=pg_cron
fi
cluster_throwaway docs "${cron[@]}"
roles_before=$(cluster_psql -At -c "SELECT string_agg(quote_literal(rolname), ',') FROM pg_roles")

passed=0; failed=0; skipped=0
for f in "${files[@]}"; do
  db=docs
  cluster_psql -c "CREATE DATABASE $db"
  if [ "$(basename "$f")" != README.md ]; then
    PGDATABASE=$db cluster_psql -c "CREATE EXTENSION identity_merge"
  fi
  out=$(PGDATABASE=$db python3 tests/docs_run.py "$f" "$PG_BIN/psql" 2>&1) || true
  result=$(printf '%s\n' "$out" | sed -n 's/^RESULT //p')
  [ -n "$result" ] || result="0 1 0"   # the runner itself failed (a malformed block): say why
  printf '%s\n' "$out" | grep -v '^RESULT ' || true
  read -r p fl s <<<"$result"
  if [ "$s" != 0 ]; then echo "docs: $f: $p blocks passed, $fl failed, $s skipped"; else echo "docs: $f: $p blocks passed, $fl failed"; fi
  passed=$((passed + p)); failed=$((failed + fl)); skipped=$((skipped + s))
  # Leave the cluster as this file found it: its database, and the roles its blocks created.
  cluster_psql -c "DROP DATABASE $db WITH (FORCE)"   # pg_cron's launcher may be connected
  for r in $(cluster_psql -At -c "SELECT quote_ident(rolname) FROM pg_roles WHERE rolname NOT IN ($roles_before)"); do
    cluster_psql -c "DROP ROLE $r"
  done
done

needs="Citus"; [ ${#cron[@]} -gt 0 ] || needs="Citus or pg_cron"
echo "docs: $passed blocks passed, $failed failed, $skipped skipped (they need $needs)"
[ "$failed" = 0 ]
