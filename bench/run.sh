#!/usr/bin/env bash
# Runs the benchmarks side by side in one throwaway PostgreSQL (PG_MAJOR: 15 by default, 17 or
# 18 from tools/build_postgres.sh) and prints the figures.
# Usage: [PG_MAJOR=18] bash bench/run.sh [--no-install] [SECTION...]
#   sections: stamping ingest streams online backfill restamp keep_fresh citus (default: all but
#   keep_fresh and citus, which start clusters of their own).
# Figures for the README come from a full run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source tools/pg_cluster.sh   # PG_BIN and PG_CONFIG of PG_MAJOR
if [ "${1:-}" = "--no-install" ]; then shift
elif [ "${PG_MAJOR:-15}" = 15 ]; then bash tools/install.sh >/dev/null
else
  bash tools/setup.sh >/dev/null
  SUDO_FLAG=""; [ "$(id -u)" = 0 ] || SUDO_FLAG="--sudo"
  cargo_locked pgrx install --release --pg-config "$PG_CONFIG" $SUDO_FLAG >/dev/null
fi
# The floor: a C trigger that only copies the row and sets one column (bench/floor).
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
make -s -C bench/floor PG_CONFIG="$PG_CONFIG" clean >/dev/null
make -s -C bench/floor PG_CONFIG="$PG_CONFIG" >/dev/null && $SUDO make -s -C bench/floor PG_CONFIG="$PG_CONFIG" install >/dev/null
sections=("$@"); [ ${#sections[@]} -gt 0 ] || sections=(stamping ingest streams online backfill restamp)
dir=$(mktemp -d /tmp/identity_merge-bench.XXXXXX)
trap 'cluster_discard "$dir"' EXIT
cluster_start "$dir" "$(free_port)" shared_buffers=1GB max_wal_size=4GB synchronous_commit=on
echo "identity_merge benchmarks: $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
cluster_psql -f bench/setup.sql >/dev/null
for s in "${sections[@]}"; do
  case "$s" in
    stamping) cluster_psql -f bench/stamping.sql ;;
    ingest) cluster_psql -f bench/ingest.sql ;;
    *) source "bench/$s.sh" ;;
  esac
done
