#!/usr/bin/env bash
# What the scripts in tests/ share: the pass/fail helpers and the throwaway cluster. Source it
# from the repository's root (after `cd "$(dirname "$0")/.."`); it sources tools/pg_cluster.sh,
# which picks the PostgreSQL through PG_MAJOR (default 15).
#
# Checks count into $pass and $fail; `summary NAME` prints the line tools/test.sh and people read,
# `NAME: N passed, N failed`, and is true when nothing failed (a script ends with it).
#   ok [NAME]                    one check passed
#   bad MESSAGE                  one check failed
#   check NAME WANT GOT          passed when GOT is WANT
#   as ROLE [psql args...]       psql as ROLE: rows unaligned, errors as "ERROR:  SQLSTATE: message"
#   expect NAME ROLE SQL WANT    SQL's output as ROLE (errors included) is WANT
#   expect_err NAME ROLE SQL SQLSTATE   SQL as ROLE fails with SQLSTATE
#   poll SECONDS WANT COMMAND...  runs COMMAND until it prints WANT: prints the milliseconds taken
#                                (true) or "timeout" (false, after SECONDS)
# print_checks says what a check prints: "failures" (the default): nothing when it passes,
# "FAIL: MESSAGE" when it fails; "all" (citus.sh, package.sh): "ok   NAME" or "FAIL MESSAGE".
#
# The cluster:
#   cluster_throwaway NAME [SETTING...]   a new cluster of PG_MAJOR, its files in $dir/pg
#   throwaway_dir NAME                    only the directory $dir (for settings that name it)
#   cluster_extension [WRITER [READER]]   CREATE EXTENSION identity_merge and the two roles
source "$(dirname "${BASH_SOURCE[0]}")/../tools/pg_cluster.sh" || return

pass=0; fail=0
print_checks=failures
# expect_blank: "keep" (the default) compares blank lines of the output too; "drop" leaves them
# out (majors.sh compares its results so).
expect_blank=keep

ok() {
  pass=$((pass+1))
  if [ "$print_checks" = all ]; then echo "ok   $*"; fi
  return 0
}

bad() {
  fail=$((fail+1))
  if [ "$print_checks" = all ]; then echo "FAIL $*"; else echo "FAIL: $*"; fi
  return 0
}

# check NAME WANT GOT
check() {
  if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: expected [$2], got [$3]"; fi
}

# summary NAME [NOTE]: "NAME: N passed, N failed[ NOTE]" (an empty NAME: no "NAME: "); true when
# nothing failed.
summary() {
  echo "${1:+$1: }$pass passed, $fail failed${2:+ $2}"
  [ "$fail" = 0 ]
}

# as ROLE [psql args...]: output of SQL run as ROLE: rows unaligned, errors as
# "ERROR:  SQLSTATE: message"; never fails.
as() {
  local role=$1; shift
  "$PG_BIN/psql" -X -q -A -t -U "$role" -v ON_ERROR_STOP=1 -v VERBOSITY=verbose "$@" 2>&1 || true
}

# expect NAME ROLE SQL WANT: the output (errors included, without LOCATION: lines, and without
# blank lines when expect_blank=drop) must equal WANT.
expect() {
  local got skip=(-e '^LOCATION:')
  if [ "$expect_blank" = drop ]; then skip+=(-e '^$'); fi
  got=$(printf '%s\n' "$3" | as "$2" -f - | grep -v "${skip[@]}" || true)
  [ "$got" = "$4" ] && ok || bad "$1: wanted [$4], got [$got]"
}

# poll SECONDS WANT COMMAND...: what the background worker does is waited for, not slept for.
poll() {
  local limit=$1 want=$2 t0 ms got; shift 2
  t0=$(date +%s%N)
  while true; do
    got=$("$@")
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if [ "$got" = "$want" ]; then echo "$ms"; return 0; fi
    if [ "$ms" -gt $((limit * 1000)) ]; then echo timeout; return 1; fi
    sleep 0.05
  done
}

# expect_err NAME ROLE SQL SQLSTATE: SQL fails with SQLSTATE (and the server survives).
expect_err() {
  local got; got=$(printf '%s\n' "$3" | as "$2" -f -)
  if grep -q "ERROR:  $4:" <<<"$got"; then ok
  else bad "$1: wanted SQLSTATE $4, got [$(printf '%s' "$got" | head -3)]"; fi
}

# throwaway_dir NAME: a new directory, $dir (/tmp/identity_merge-NAME.XXXXXX, readable by the
# server's user), for a cluster in $dir/pg and the script's own files. At exit a cluster started
# there stops, and $dir is removed when the script succeeded (cluster_discard: a failed run keeps
# it). Then `cluster_start "$dir/pg" "$(free_port)" SETTING...` when a setting names $dir.
throwaway_dir() {
  dir=$(mktemp -d "/tmp/identity_merge-$1.XXXXXX"); chmod 755 "$dir"
  trap 'cluster_discard "$dir"' EXIT
}

# cluster_throwaway NAME [SETTING...]: throwaway_dir NAME, and a cluster of PG_MAJOR in $dir/pg
# (SETTINGs are postgres -c settings). Leaves PGHOST, PGPORT, PGUSER=postgres and
# PGDATABASE=postgres set (cluster_start).
cluster_throwaway() {
  throwaway_dir "$1"; shift
  cluster_start "$dir/pg" "$(free_port)" "$@"
}

# cluster_extension [WRITER [READER]]: CREATE EXTENSION identity_merge in the database postgres,
# and the roles a deployment hands out: WRITER (LOGIN, mp_grant_writer) and READER (LOGIN,
# mp_grant_reader), when named.
cluster_extension() {
  local sql="CREATE EXTENSION identity_merge;"
  if [ -n "${1:-}" ]; then sql+=$'\n'"CREATE ROLE $1 LOGIN;"$'\n'"SELECT mp_grant_writer('$1');"; fi
  if [ -n "${2:-}" ]; then sql+=$'\n'"CREATE ROLE $2 LOGIN;"$'\n'"SELECT mp_grant_reader('$2');"; fi
  printf '%s\n' "$sql" | cluster_psql >/dev/null
}
