#!/usr/bin/env bash
# The maintenance worker on a Citus cluster (issue 27): a coordinator and two workers with
# shared_preload_libraries = 'citus,identity_merge'. Checks, each printed as ok / FAIL:
#   - an $identify row inserted through the coordinator takes effect on every node (mp_resolve
#     and the stamps of the rows before it) with no manual call, within 2 s;
#   - a node stopped with pg_ctl -m immediate right after a burst of identity rows: after its
#     restart every event is applied exactly once (one join each, no queue left) and mp_check
#     is clean on every node;
#   - identity_merge.stats shows the queued events and the worker on each node.
# Prints "citus worker: N passed, N failed"; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/citus_install.sh
source tests/lib.sh
source tools/citus_cluster.sh
print_checks=all
dir=$(mktemp -d /tmp/identity_merge-citus-worker.XXXXXX); chmod 755 "$dir"
cleanup() { local rc=$?; citus_stop; if [ "$rc" = 0 ]; then rm -rf "$dir"; fi; }
trap cleanup EXIT
q() { local port=$1 sql=$2; shift 2; citus_psql "$port" -At "$@" -c "SET client_min_messages = warning" -c "$sql"; }

echo "== a coordinator and two workers, identity_merge preloaded"
citus_start "$dir/citus" shared_preload_libraries=citus,identity_merge identity_merge.worker_naptime=1000
NODES="$COORD $W1 $W2"
q "$COORD" "CREATE EXTENSION identity_merge" >/dev/null
q "$COORD" "SELECT mp_distribute()" >/dev/null
citus_psql "$COORD" -q >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT mp_create_project('auto'), mp_set_project_setting('auto', 'anon_id_format', 'any');
CREATE TABLE ev (n serial, distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_distribute_events('ev', 'distinct_id');
SELECT mp_attach('ev', 'auto');
SQL

# until_all SECONDS SQL WANT: every node answers WANT within SECONDS; prints the time taken.
answers() { local p; for p in $NODES; do q "$p" "$1"; done | sort -u | paste -sd ' '; }
until_all() { poll "$1" "$3" answers "$2"; }

# Each node's worker starts when the extension's creation commits there (on the workers, a
# prepared transaction Citus commits a moment later).
running="SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'identity_merge worker'"
ms=$(until_all 5 "$running" "1") && ok "every node's worker runs (${ms} ms after the set-up)" \
  || bad "a node's worker does not run within 5 s: $(for p in $NODES; do printf '%s:%s ' "$p" "$(q "$p" "$running")"; done)"

# 1. Through the coordinator: a page view, then the $identify; no mp_apply_pending.
q "$COORD" "INSERT INTO ev (distinct_id, event, properties) VALUES ('dev-auto', 'Page View', '{}')" >/dev/null
q "$COORD" "INSERT INTO ev (distinct_id, event, properties) VALUES ('user-auto', '\$identify', '{\"\$identified_id\": \"user-auto\", \"\$anon_id\": \"dev-auto\"}')" >/dev/null
ms=$(until_all 2 "SELECT mp_resolve('dev-auto', 'auto')" "user-auto") && ok "identify applied on every node in ${ms} ms" || bad "identify not applied on every node within 2 s"
ms=$(until_all 2 "SELECT string_agg(canonical_id, ',') FROM ev WHERE distinct_id = 'dev-auto'" "user-auto") \
  && ok "the page view restamped in ${ms} ms" || bad "the page view not restamped within 2 s"
check "stats: the queued event and this node's worker" "t" \
  "$(for p in $NODES; do q "$p" "SELECT events_queued > 0 FROM identity_merge.stats WHERE project = 'auto'"; done | grep -c t | awk '{print ($1 >= 1) ? "t" : "f"}')"
for p in $NODES; do
  check "node $p: worker in the view" "t" "$(q "$p" "SELECT worker_pid IS NOT NULL FROM identity_merge.stats WHERE project = 'auto'")"
done

# 2. A burst of identity rows, then a worker node stopped at once with pg_ctl -m immediate.
q "$COORD" "INSERT INTO ev (distinct_id, event, properties)
            SELECT 'u-' || g, '\$identify', jsonb_build_object('\$identified_id', 'u-' || g, '\$anon_id', 'd-' || g)
              FROM generate_series(1, 200) g" >/dev/null
citus_node_stop "$W1" immediate
sleep 1
citus_node_start "$W1"
q "$COORD" "SELECT recover_prepared_transactions()" >/dev/null
ms=$(until_all 20 "SELECT count(*) FROM generate_series(1, 200) g WHERE mp_resolve('d-' || g, 'auto') = 'u-' || g" "200") \
  && ok "every identify of the burst applied after the crash (${ms} ms)" || bad "the burst was not applied on every node"
ms=$(until_all 10 "SELECT count(*) FROM identity_merge.pending_events" "0") && ok "no queue left" || bad "a queue left"
check "each event applied once: one join each" "201" \
  "$(q "$COORD" "SELECT count(*) FROM identity_merge.merge_log l JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'auto'")"
for p in $NODES; do
  check "node $p: mp_check('auto') clean" "0" "$(q "$p" "SELECT count(*) FROM mp_check('auto')")"
done
# mp_import_mixpanel is one server's: once distributed, a clear refusal.
out=$("$PG_BIN/psql" -X -q -At -v VERBOSITY=sqlstate -h "$CITUS_DIR" -p "$COORD" -U postgres -d postgres \
        -c "CREATE TABLE mm (distinct_id text, resolved_distinct_id text)" -c "SELECT mp_import_mixpanel('auto', 'mm')" 2>&1 || true)
got=$(sed -n 's/^ERROR: *\([0-9A-Z]\{5\}\).*/\1/p' <<<"$out" | head -1)
check "mp_import_mixpanel once distributed: 0A000" "0A000" "$got"
summary "citus worker"
