#!/usr/bin/env bash
# Runs every test: plain Rust unit tests of the rules, then the PostgreSQL tests (pgrx-tests
# starts a throwaway PostgreSQL 15 and installs the extension into it), then the pg_dump /
# restore, SDK, crash, upgrade and reliability (hostile roles and tables) checks; finally puts
# back whatever identity_merge build was installed before. Works as root (the server runs as
# the postgres user) or as a normal user.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export USER="${USER:-$(id -un)}"
if [ "$(id -u)" = 0 ]; then
  # initdb refuses root: run the test server as postgres, in a directory postgres owns.
  export CARGO_PGRX_TEST_RUNAS=postgres
  export CARGO_PGRX_TEST_PGDATA="${CARGO_PGRX_TEST_PGDATA:-/tmp/identity_merge-test/pgdata}"
  mkdir -p "$(dirname "$CARGO_PGRX_TEST_PGDATA")"
  chown postgres "$(dirname "$CARGO_PGRX_TEST_PGDATA")"
fi
# cargo pgrx test installs its (debug, test-schema) build into the system PostgreSQL 15. Keep
# what was installed before and put it back at the end, so a user's release build is left as
# it was (or nothing, when nothing was installed).
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
libdir=$("$PG_CONFIG" --pkglibdir); extdir="$("$PG_CONFIG" --sharedir)/extension"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
saved=$(mktemp -d /tmp/identity_merge-installed.XXXXXX)
mkdir -p "$saved/lib" "$saved/ext"
cp -p "$libdir"/identity_merge.so "$saved/lib/" 2>/dev/null || true
cp -p "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql "$saved/ext/" 2>/dev/null || true
fingerprint() { (cd "$1" && find . -type f -name 'identity_merge*' | sort | xargs -r md5sum); }
before=$(fingerprint "$saved")
restore_installed() {
  $SUDO rm -f "$libdir"/identity_merge.so "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql
  [ -z "$(ls -A "$saved/lib")" ] || $SUDO cp -p "$saved"/lib/* "$libdir/"
  [ -z "$(ls -A "$saved/ext")" ] || $SUDO cp -p "$saved"/ext/* "$extdir/"
}
trap 'restore_installed; rm -rf "$saved"' EXIT

rm -f target/stress-summary.txt
cargo pgrx test pg15 "$@"
cat target/stress-summary.txt 2>/dev/null || true
# cargo pgrx test installed the extension into PostgreSQL 15; check dump and restore with it.
bash tests/dump_restore.sh
bash tests/sdk.sh
bash tests/crash.sh
bash tests/upgrade.sh
bash tests/reliability.sh
bash tests/cron.sh
bash tests/dbt.sh
bash tests/identity_records.sh
bash tests/regress.sh
bash tests/citus.sh

# The installed build is put back as it was found (checked here, before the trap runs it again).
restore_installed
after=$( d=$(mktemp -d); mkdir -p "$d/lib" "$d/ext"
  cp -p "$libdir"/identity_merge.so "$d/lib/" 2>/dev/null || true
  cp -p "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql "$d/ext/" 2>/dev/null || true
  fingerprint "$d"; rm -rf "$d" )
if [ "$before" = "$after" ]; then echo "installed build: left as found"; else echo "installed build: changed by the tests" >&2; exit 1; fi
