#!/usr/bin/env bash
# Docs that run as written, on Citus: every file of README.md and docs/*.md that has a ```sql citus
# block is run whole, in order, on the coordinator of a three-node Citus cluster of PG_MAJOR
# (tools/citus_cluster.sh), as tests/docs.sh runs it on one server, the citus blocks included
# (pg_cron blocks are left to tests/docs.sh). Prints `docs on Citus: N blocks passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/citus_install.sh
source tests/lib.sh
source tools/citus_cluster.sh
dir=$(mktemp -d /tmp/identity_merge-docs-citus.XXXXXX); chmod 755 "$dir"
cleanup() { local rc=$?; citus_stop; if [ "$rc" = 0 ]; then rm -rf "$dir"; else echo "kept $dir (the run failed)" >&2; fi; }
trap cleanup EXIT
citus_start "$dir/citus"
export PGPORT="$COORD" DOCS_WITH=citus

passed=0; failed=0; skipped=0
for f in README.md docs/*.md; do
  grep -q '^```sql citus' "$f" || continue
  db=docs
  citus_psql "$COORD" -c "CREATE DATABASE $db" >/dev/null
  for p in $W1 $W2; do citus_psql "$p" -c "CREATE DATABASE $db" >/dev/null; done
  citus_psql "$COORD" -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION citus" >/dev/null
  for p in $W1 $W2; do citus_psql "$p" -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION citus" >/dev/null; done
  citus_psql "$COORD" -d "$db" -c "SELECT citus_set_coordinator_host('localhost', $COORD)" \
    -c "SELECT citus_add_node('localhost', $W1)" -c "SELECT citus_add_node('localhost', $W2)" >/dev/null
  if [ "$(basename "$f")" != README.md ]; then
    citus_psql "$COORD" -d "$db" -c "CREATE EXTENSION identity_merge" >/dev/null
  fi
  out=$(PGDATABASE=$db python3 tests/docs_run.py "$f" "$PG_BIN/psql" 2>&1) || true
  result=$(printf '%s\n' "$out" | sed -n 's/^RESULT //p')
  [ -n "$result" ] || result="0 1 0"
  printf '%s\n' "$out" | grep -v '^RESULT ' || true
  read -r p fl s <<<"$result"
  echo "docs on Citus: $f: $p blocks passed, $fl failed, $s skipped"
  passed=$((passed + p)); failed=$((failed + fl)); skipped=$((skipped + s))
done
echo "docs on Citus: $passed blocks passed, $failed failed, $skipped skipped (they need pg_cron)"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
