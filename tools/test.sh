#!/usr/bin/env bash
# Runs every test: plain Rust unit tests of the rules, then the PostgreSQL tests (pgrx-tests
# starts a throwaway PostgreSQL 15 and installs the extension into it), then the pg_dump /
# restore check. Works as root (the server runs as the postgres user) or as a normal user.
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
rm -f target/stress-summary.txt
cargo pgrx test pg15 "$@"
cat target/stress-summary.txt 2>/dev/null || true
# cargo pgrx test installed the extension into PostgreSQL 15; check dump and restore with it.
bash tests/dump_restore.sh
bash tests/sdk.sh
bash tests/crash.sh
bash tests/upgrade.sh
