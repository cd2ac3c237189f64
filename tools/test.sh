#!/usr/bin/env bash
# Runs every test on every supported PostgreSQL major (PG_MAJORS, default "15 17 18"; narrow it
# for a quick local run, e.g. PG_MAJORS=15). Per major:
#   15 (Debian's): plain Rust unit tests of the rules and the pgrx tests (pgrx-tests starts a
#      throwaway PostgreSQL and installs the extension into it), then the pg_dump / restore, SDK,
#      crash, upgrade, reliability (hostile roles and tables), pg_cron, dbt, identity-record,
#      golden pg_regress and Citus 13.2.2 checks, and the package test (the .deb of
#      tools/package.sh installed with apt-get, created, upgraded, removed);
#   17, 18 (built from source by tools/build_postgres.sh into /opt/identity_merge/pgNN): the pgrx
#      tests, golden pg_regress flows, dump / restore, SDK, crash, reliability, Mixpanel import
#      and upgrade checks;
#      on every major also tests/majors.sh (what differs between majors) and tests/docs.sh (every
#      SQL example of README.md and docs/ run as written);
#      on 18 also Citus 14.0.1. The docs' Citus blocks run on each Citus (tests/docs_citus.sh);
#      the maintenance worker runs on every major (tests/worker.sh) and on each Citus
#      (tests/citus_worker.sh).
# Finally puts back whatever identity_merge build was installed in each major before. Works as
# root (the servers run as the postgres user) or as a normal user. Prints the time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJORS="${PG_MAJORS:-15 17 18}"
t0=$(date +%s)
bash tools/setup.sh
src_majors=$(for m in $PG_MAJORS; do [ "$m" = 15 ] || echo "$m"; done | xargs)
if [ -n "$src_majors" ]; then bash tools/build_postgres.sh $src_majors; fi
export PATH="$HOME/.cargo/bin:$PATH"
export USER="${USER:-$(id -un)}"
source tools/pg_cluster.sh   # cargo_locked, pg_bin_of
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
test_dir="${IDENTITY_MERGE_TEST_DIR:-/tmp/identity_merge-test}"

# cargo pgrx test installs its (debug, test-schema) build into the PostgreSQL it tests; the shell
# suites use that build. Keep what was installed in each major before and put it back at the end,
# so a user's release build is left as it was (or nothing, when nothing was installed).
saved=$(mktemp -d /tmp/identity_merge-installed.XXXXXX)
dirs_of() {  # MAJOR -> "pkglibdir extension-dir"
  local pc; pc="$(pg_bin_of "$1")/pg_config"
  echo "$("$pc" --pkglibdir) $("$pc" --sharedir)/extension"
}
snapshot() {  # MAJOR DEST: copy the installed identity_merge files of MAJOR into DEST/{lib,ext}
  local libdir extdir; read -r libdir extdir <<<"$(dirs_of "$1")"
  mkdir -p "$2/lib" "$2/ext"
  cp -p "$libdir"/identity_merge.so "$2/lib/" 2>/dev/null || true
  cp -p "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql "$2/ext/" 2>/dev/null || true
}
fingerprint() { (cd "$1" && find . -type f -name 'identity_merge*' | sort | xargs -r md5sum); }
restore_installed() {
  local m libdir extdir
  for m in $PG_MAJORS; do
    [ -d "$saved/$m" ] || continue
    read -r libdir extdir <<<"$(dirs_of "$m")"
    $SUDO rm -f "$libdir"/identity_merge.so "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql
    [ -z "$(ls -A "$saved/$m/lib")" ] || $SUDO cp -p "$saved/$m"/lib/* "$libdir/"
    [ -z "$(ls -A "$saved/$m/ext")" ] || $SUDO cp -p "$saved/$m"/ext/* "$extdir/"
  done
}
for m in $PG_MAJORS; do snapshot "$m" "$saved/$m"; done
trap 'restore_installed; rm -rf "$saved"' EXIT

timings=""
step() {  # step LABEL COMMAND...: runs it, records its time
  local label=$1 s; shift
  s=$(date +%s)
  echo "=== [$label] $*"
  "$@"
  timings="$timings$(printf '%-34s %5ss' "$label" $(( $(date +%s) - s )))"$'\n'
}

run_major() {
  local m=$1
  export PG_MAJOR=$m
  if [ "$(id -u)" = 0 ]; then
    # initdb refuses root: the pgrx test server runs as postgres, in a directory postgres owns,
    # one per major so that runs never share a data directory.
    export CARGO_PGRX_TEST_RUNAS=postgres
    export CARGO_PGRX_TEST_PGDATA="$test_dir/pg$m/pgdata"
    mkdir -p "$test_dir/pg$m"; chmod 755 "$test_dir"; chown postgres "$test_dir/pg$m"
  fi
  rm -f target/stress-summary.txt
  step "pg$m cargo pgrx test" cargo_locked pgrx test "pg$m" "${test_args[@]}"
  cat target/stress-summary.txt 2>/dev/null || true
  step "pg$m regress" bash tests/regress.sh
  step "pg$m dump_restore" bash tests/dump_restore.sh
  step "pg$m sdk" bash tests/sdk.sh
  step "pg$m crash" bash tests/crash.sh
  step "pg$m upgrade" bash tests/upgrade.sh
  step "pg$m reliability" bash tests/reliability.sh
  step "pg$m worker" bash tests/worker.sh
  step "pg$m mixpanel_import" bash tests/mixpanel_import.sh
  step "pg$m majors" bash tests/majors.sh
  step "pg$m docs" bash tests/docs.sh
  case "$m" in
    15)
      # Debian-only add-ons (postgresql-15-cron) and checks that need no second major.
      step "pg15 cron" bash tests/cron.sh
      step "pg15 dbt" bash tests/dbt.sh
      step "pg15 identity_records" bash tests/identity_records.sh
      step "pg15 citus 13.2.2" bash tests/citus.sh
      step "pg15 citus worker" bash tests/citus_worker.sh
      step "pg15 docs on citus" bash tests/docs_citus.sh
      ;;
    18)
      step "pg18 citus 14.0.1" bash tests/citus.sh
      step "pg18 citus worker" bash tests/citus_worker.sh
      step "pg18 docs on citus" bash tests/docs_citus.sh
      ;;
  esac
}

test_args=("$@")
for m in $PG_MAJORS; do run_major "$m"; done
unset PG_MAJOR

# Packages (tools/package.sh): the .deb for Debian's 15 installed, created, upgraded and removed;
# the tarball of each source-built major installed into its prefix and created.
step "packages (build)" env PG_MAJORS="$PG_MAJORS" bash tools/package.sh
step "packages (test)" env PG_MAJORS="$PG_MAJORS" bash tests/package.sh

# The installed builds are put back as they were found (checked here, before the trap runs it again).
restore_installed
changed=0
for m in $PG_MAJORS; do
  d=$(mktemp -d); snapshot "$m" "$d"
  if [ "$(fingerprint "$saved/$m")" != "$(fingerprint "$d")" ]; then echo "installed build of PostgreSQL $m: changed by the tests" >&2; changed=1; fi
  rm -rf "$d"
done
printf '\ntimes (PG_MAJORS="%s"):\n%s%-34s %5ss\n' "$PG_MAJORS" "$timings" "total" $(( $(date +%s) - t0 ))
[ "$changed" = 0 ] || exit 1
echo "installed builds: left as found (PostgreSQL $PG_MAJORS)"
