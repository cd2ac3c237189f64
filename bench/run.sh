#!/usr/bin/env bash
# Runs the benchmarks side by side in one throwaway PostgreSQL 15 and prints the figures.
# Usage: bash bench/run.sh [--no-install] [SECTION...]   sections: stamping streams online backfill restamp citus
# (default: all). Figures for the README come from a full run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-install" ]; then shift; else bash tools/install.sh >/dev/null; fi
# The floor: a C trigger that only copies the row and sets one column (bench/floor).
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
make -s -C bench/floor >/dev/null && $SUDO make -s -C bench/floor install >/dev/null
sections=("$@"); [ ${#sections[@]} -gt 0 ] || sections=(stamping streams online backfill restamp)
source tools/pg_cluster.sh
dir=$(mktemp -d /tmp/identity_merge-bench.XXXXXX)
trap 'cluster_discard "$dir"' EXIT
cluster_start "$dir" "$(free_port)" shared_buffers=1GB max_wal_size=4GB synchronous_commit=on
echo "identity_merge benchmarks: $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
cluster_psql -f bench/setup.sql >/dev/null
for s in "${sections[@]}"; do
  case "$s" in
    stamping) cluster_psql -f bench/stamping.sql ;;
    *) source "bench/$s.sh" ;;
  esac
done
