#!/usr/bin/env bash
# Stamps kept fresh with pg_cron (Debian's postgresql-15-cron): in a throwaway cluster with
# pg_cron preloaded, mp_schedule_restamp puts a job on the table, a merge makes rows stale, and
# within about a minute pg_cron's run of the job has brought them back; the schedule is replaced
# and removed; bad schedules and a database without pg_cron get their errors.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
throwaway_dir cron
# pg_cron connects to run a job: through this cluster's socket directory (no TCP here).
cluster_start "$dir/pg" "$(free_port)" shared_preload_libraries=pg_cron cron.database_name=postgres "cron.host=$dir/pg"
q() { cluster_psql -At "$@" 2>&1 || true; }

cluster_extension
cluster_psql >/dev/null <<'SQL'
CREATE EXTENSION pg_cron;
SELECT mp_set_project_setting('default', 'anon_id_format', 'any');
CREATE TABLE events (distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('events');
INSERT INTO events VALUES ('dev-1', 'Page View', '{}'), ('user-1', 'Login', '{}');
SELECT mp_identify('user-1', 'dev-1');
SQL
[ "$(q -c "SELECT count(*) FROM events WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)")" = 1 ] && ok || bad "a stale row to start with"
job=$(q -c "SELECT mp_schedule_restamp('events', '1 minute')")
[ "$(q -c "SELECT schedule || ' ' || command FROM cron.job WHERE jobid = $job")" = "* * * * * SELECT public.mp_restamp('public.events'::regclass)" ] && ok || bad "the job: $(q -c "SELECT schedule, command FROM cron.job")"
q -c "SELECT mp_schedule_restamp('events', '15 minutes')" >/dev/null
[ "$(q -c "SELECT count(*) || ' ' || min(schedule) FROM cron.job")" = "1 */15 * * * *" ] && ok || bad "scheduling again replaces: $(q -c "SELECT jobid, schedule FROM cron.job")"
q -c "SELECT mp_schedule_restamp('events', '1 minute')" >/dev/null
# pg_cron runs jobs at the start of each minute: wait for one run of ours.
for _ in $(seq 1 80); do
  [ "$(q -c "SELECT count(*) FROM cron.job_run_details WHERE command LIKE '%mp_restamp%' AND status = 'succeeded'")" != 0 ] && break
  sleep 1
done
[ "$(q -c "SELECT count(*) FROM events WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)")" = 0 ] && ok || bad "pg_cron's run restamped: $(q -c "SELECT status, return_message FROM cron.job_run_details")"
[ "$(q -c "SELECT mp_unschedule_restamp('events')")" = t ] && ok || bad "unschedule"
[ "$(q -c "SELECT count(*) FROM cron.job")" = 0 ] && ok || bad "no job left"
[ "$(q -c "SELECT mp_unschedule_restamp('events')")" = f ] && ok || bad "unschedule twice"
q -c "SELECT mp_schedule_restamp('events', '7 minutes')" | grep -q "invalid schedule" && ok || bad "7 minutes refused"
q -c "SELECT mp_schedule_restamp('events', '90 seconds')" | grep -q "invalid schedule" && ok || bad "90 seconds refused"
cluster_psql -c "CREATE DATABASE nocron" >/dev/null
q -d nocron -c "CREATE EXTENSION identity_merge; CREATE TABLE t (distinct_id text, canonical_id text); SELECT mp_attach('t');" >/dev/null
q -d nocron -v VERBOSITY=verbose -c "SELECT mp_schedule_restamp('t')" | grep -q "0A000" && ok || bad "without pg_cron: 0A000"
summary pg_cron
