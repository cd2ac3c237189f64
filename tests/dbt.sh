#!/usr/bin/env bash
# The dbt package (dbt/identity_merge) and its example project (dbt/example) against a
# throwaway PostgreSQL 15 with the installed extension: dbt deps, seed (the Identifying Users
# page's flows as a Segment-shaped table), run (attach, backfill, stamp every row, a model of
# events per person) and test (each event's person is the doc's; mp_check finds nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/pg_cluster.sh
dbt=$(bash tools/dbt_python.sh)
dir=$(mktemp -d /tmp/identity_merge-dbt.XXXXXX); chmod 755 "$dir"
trap 'cluster_discard "$dir"' EXIT
cluster_start "$dir/pg" "$(free_port)"
cluster_psql -c "CREATE EXTENSION identity_merge" >/dev/null
# dbt writes target/, logs/ and dbt_packages/ into the project: run a copy.
cp -r dbt "$dir/dbt"
cd "$dir/dbt/example"
pass=0; fail=0
step() {
  if "$dbt" "$@" --profiles-dir . > "$dir/dbt-$1.log" 2>&1; then pass=$((pass+1));
  else fail=$((fail+1)); echo "FAIL: dbt $*"; tail -25 "$dir/dbt-$1.log"; fi
}
step deps
step seed
step run
step test
summary=$(grep -Eo "PASS=[0-9]+ WARN=[0-9]+ ERROR=[0-9]+" "$dir/dbt-test.log" | tail -1 || true)
echo "dbt: $pass passed, $fail failed (dbt test: ${summary:-none})"
[ "$fail" = 0 ]
