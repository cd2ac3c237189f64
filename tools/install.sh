#!/usr/bin/env bash
# Builds identity_merge in release mode and installs it into the system PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="--sudo"
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config $SUDO
