#!/usr/bin/env bash
# Installs what building and testing identity_merge needs on Debian bookworm (as root or with
# sudo): system packages, cargo-pgrx 0.18.1, and `cargo pgrx init` against PostgreSQL 15.
# Idempotent: each step is skipped when already done. PostgreSQL 17 and 18 (not in bookworm) are
# built from source and registered with pgrx by tools/build_postgres.sh (tools/test.sh runs both).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
export PATH="$HOME/.cargo/bin:$PATH"

need_pkgs=()
for p in build-essential pkg-config clang libclang-dev libssl-dev postgresql-15 postgresql-server-dev-15 sudo \
         postgresql-contrib python3 python3-venv postgresql-15-cron; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1
fi
if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
  echo "setup: installing cargo-pgrx 0.18.1 (a few minutes)"
  cargo install cargo-pgrx --version 0.18.1 --locked
fi
PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if ! grep -q "^pg15" "$PGRX_HOME/config.toml" 2>/dev/null; then
  # keep the source-built majors already registered (tools/build_postgres.sh)
  init_args=(--pg15 "$PG_CONFIG")
  for m in 17 18; do
    pc="${IDENTITY_MERGE_PG_PREFIX:-/opt/identity_merge}/pg$m/bin/pg_config"
    [ ! -x "$pc" ] || init_args+=(--pg$m "$pc")
  done
  cargo pgrx init "${init_args[@]}"
fi
