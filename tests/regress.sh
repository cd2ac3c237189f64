#!/usr/bin/env bash
# Golden SQL flows: runs tests/pg_regress/sql/*.sql with PostgreSQL's pg_regress against a
# throwaway cluster with the installed identity_merge build, and compares each output with
# tests/pg_regress/expected/*.out (the layout `cargo pgrx regress` uses). The files replay the
# example flows of Mixpanel's "Identifying Users" page, the README's tour and the seed's HTTP API
# bodies; see tests/pg_regress/README.md. Prints the diffs on failure and ends with
# `regress: N passed, N failed`. Works as root (the server runs as the postgres user) or as a
# normal user. On the PostgreSQL of PG_MAJOR (default 15; tools/pg_cluster.sh).
#
#   bash tests/regress.sh              every test, in file-name order, in one database
#   bash tests/regress.sh NAME...      only these tests (tests/pg_regress/sql/NAME.sql)
#   bash tests/regress.sh --add NAME   run NAME and (re)record expected/NAME.out from its actual
#                                      output, like `cargo pgrx regress --add NAME`; read the
#                                      recorded file against the doc before committing it
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
# pg_regress of the PostgreSQL in use (PG_MAJOR, tools/pg_cluster.sh): beside its PGXS makefiles.
PG_REGRESS="$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress"
suite=tests/pg_regress
db=identity_merge_regress

add=""
tests=()
while [ $# -gt 0 ]; do
  case "$1" in
    --add) [ $# -ge 2 ] || { echo "usage: $0 [--add NAME] [NAME...]" >&2; exit 2; }
           add="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) tests+=("$1"); shift ;;
  esac
done
if [ -n "$add" ]; then tests=("$add"); fi
if [ ${#tests[@]} = 0 ]; then
  for f in $(ls "$suite"/sql/*.sql | LC_ALL=C sort); do tests+=("$(basename "$f" .sql)"); done
fi
for t in "${tests[@]}"; do
  [ -f "$suite/sql/$t.sql" ] || { echo "no test $suite/sql/$t.sql" >&2; exit 2; }
done

out=$(mktemp -d /tmp/identity_merge-regress-out.XXXXXX)   # pg_regress runs as the invoking user
# Messages in C (stable text); client_min_messages=warning as `cargo pgrx regress` sets it, so
# the expected files are the same under both runners.
cluster_throwaway regress lc_messages=C client_min_messages=warning
cluster_psql -d postgres -c "CREATE DATABASE $db"
cluster_psql -d "$db" -c "CREATE EXTENSION identity_merge"

set +e
"$PG_REGRESS" --use-existing --bindir="$PG_BIN" --dbname="$db" --host="$CLUSTER_DIR" --port="$CLUSTER_PORT" \
  --user=postgres --inputdir="$suite" --outputdir="$out" "${tests[@]}" >"$out/pg_regress.log" 2>&1
status=$?
set -e
cat "$out/pg_regress.log"

if [ -n "$add" ]; then
  [ -f "$out/results/$add.out" ] || { echo "regress: no output for $add" >&2; exit 1; }
  if [ -f "$suite/expected/$add.out" ] && cmp -s "$out/results/$add.out" "$suite/expected/$add.out"; then
    echo "regress: $suite/expected/$add.out unchanged"
  else
    [ ! -f "$suite/expected/$add.out" ] || diff -u "$suite/expected/$add.out" "$out/results/$add.out" || true
    cp "$out/results/$add.out" "$suite/expected/$add.out"
    echo "regress: recorded $suite/expected/$add.out"
  fi
  rm -rf "$out"
  exit 0
fi

# pg_regress 15 prints "test NAME ... ok" / "... FAILED"; 16 and later "ok N - NAME" / "not ok N - NAME".
passed=$(grep -cE '^(test .* \.\.\. ok|ok [0-9]+ )' "$out/pg_regress.log" || true)
failed=$(grep -cE '^(test .* \.\.\. FAILED|not ok [0-9]+ )' "$out/pg_regress.log" || true)
if [ "$status" != 0 ] || [ "$failed" != 0 ] || [ "$passed" != "${#tests[@]}" ]; then
  [ ! -f "$out/regression.diffs" ] || cat "$out/regression.diffs"
  echo "actual output kept in $out/results"
  [ "$failed" != 0 ] || failed=$(( ${#tests[@]} - passed ))
  [ "$failed" != 0 ] || failed=1   # pg_regress itself failed
  echo "regress: $passed passed, $failed failed"
  exit 1
fi
rm -rf "$out"
echo "regress: $passed passed, $failed failed"
