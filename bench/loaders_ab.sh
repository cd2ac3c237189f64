#!/usr/bin/env bash
# A/B of four loaders of mixed streams (bench/online.sh's target 5) between two builds of the
# library, in one cluster: bash bench/loaders_ab.sh OLD.so NEW.so [ROUNDS]. Each round swaps the
# library file and runs, on a fresh project and table each, four pgbench clients of 500-row
# INSERT ... SELECTs (2% $identify of 2,000 users shared by all, 20,000 devices) for
# BENCH_SECONDS (default 10), beside four plain loaders; prints rows/s and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1; new=$2; rounds=${3:-3}; secs=${BENCH_SECONDS:-10}
source tools/pg_cluster.sh
libdir=$("$PG_BIN/pg_config" --pkglibdir)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
keep=$(mktemp -d); cp "$libdir/identity_merge.so" "$keep/installed.so"
dir=$(mktemp -d /tmp/identity_merge-lab.XXXXXX)
put() { $SUDO cp "$1" "$libdir/.identity_merge.so.ab" && $SUDO mv -f "$libdir/.identity_merge.so.ab" "$libdir/identity_merge.so"; }
trap 'cluster_discard "$dir"; put "$keep/installed.so"' EXIT
cluster_start "$dir" "$(free_port)" shared_buffers=1GB max_wal_size=4GB synchronous_commit=on
cluster_psql -c "CREATE EXTENSION identity_merge" >/dev/null
loaders() {  # table: rows/s of four loaders
  sed "s/mix_ours/$1/" bench/pgbench/mixed_ours.sql > "$dir/script.sql"
  "$PG_BIN/pgbench" -n -M prepared -c 4 -j 4 -T "$secs" --max-tries=10 -f "$dir/script.sql" 2>&1 \
    | awk '/^tps = /{t=$3} END{printf "%.0f", t * 500}'
}
n=0
printf '%-6s %-4s %12s %12s %7s\n' round lib "plain rows/s" "ours rows/s" ratio
for r in $(seq 1 "$rounds"); do
  for which in old new; do
    n=$((n + 1))
    if [ "$which" = old ]; then put "$old"; else put "$new"; fi
    cluster_psql >/dev/null <<SQL
SELECT mp_create_project('lab$n'), mp_set_project_setting('lab$n', 'anon_id_format', 'any');
CREATE TABLE plain$n (distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE ours$n (LIKE plain$n);
SELECT mp_attach('ours$n', 'lab$n', create_index => false);
SQL
    p=$(loaders "plain$n"); o=$(loaders "ours$n")
    # A round writes gigabytes: drop them before the next.
    cluster_psql -c "DROP TABLE plain$n, ours$n" >/dev/null
    printf '%-6s %-4s %12s %12s %7s\n' "$r" "$which" "$p" "$o" "$(awk "BEGIN{printf \"%.2f\", $o/$p}")"
  done
done
