#!/usr/bin/env bash
# The main job, end to end: build and install the extension, start a throwaway PostgreSQL,
# load the example flows of Mixpanel's "Identifying Users" page as event rows (with their
# $identify rows), and print every row with the canonical distinct_id stamped on insert and
# after mp_restamp, beside the distinct_id the doc says Mixpanel sets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
source tools/pg_cluster.sh
dir=$(mktemp -d /tmp/identity_merge-demo.XXXXXX)
trap 'cluster_discard "$dir"' EXIT
cluster_start "$dir" "$(free_port)"
cluster_psql -f tools/demo.sql
