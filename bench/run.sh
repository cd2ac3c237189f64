#!/usr/bin/env bash
# Runs every benchmark side by side in one throwaway PostgreSQL 15 and prints the figures.
# Usage: bash bench/run.sh [--no-install]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--no-install" ] || bash tools/install.sh >/dev/null
source tools/pg_cluster.sh
dir=$(mktemp -d /tmp/identity_merge-bench.XXXXXX)
trap cluster_stop EXIT
cluster_start "$dir" "$(free_port)" shared_buffers=1GB max_wal_size=4GB synchronous_commit=on
echo "identity_merge benchmarks: $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
cluster_psql -f bench/setup.sql >/dev/null
cluster_psql -f bench/stamping.sql
