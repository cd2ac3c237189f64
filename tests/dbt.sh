#!/usr/bin/env bash
# The dbt package (dbt/identity_merge) and its example project (dbt/example) against a
# throwaway PostgreSQL 15 with the installed extension: dbt deps, seed (the Identifying Users
# page's flows as a Segment-shaped table), run (attach, backfill, stamp every row, a model of
# events per person) and test (each event's person is the doc's; mp_check finds nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
dbt=$(bash tools/dbt_python.sh)
cluster_throwaway dbt
cluster_extension
# dbt writes target/, logs/ and dbt_packages/ into the project: run a copy.
cp -r dbt "$dir/dbt"
cd "$dir/dbt/example"
step() {
  if "$dbt" "$@" --profiles-dir . > "$dir/dbt-$1.log" 2>&1; then ok
  else bad "dbt $*"; tail -25 "$dir/dbt-$1.log"; fi
}
step deps
step seed
step run
step test
totals=$(grep -Eo "PASS=[0-9]+ WARN=[0-9]+ ERROR=[0-9]+" "$dir/dbt-test.log" | tail -1 || true)
summary dbt "(dbt test: ${totals:-none})"
