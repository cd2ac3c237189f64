#!/usr/bin/env bash
# Runs tests/sdk_test.py (the official Mixpanel Python SDK's payloads) against a throwaway
# PostgreSQL 15 with the installed extension.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/pg_cluster.sh
dir=$(mktemp -d /tmp/identity_merge-sdk.XXXXXX)
trap cluster_stop EXIT
cluster_start "$dir" "$(free_port)"
PATH="$PG_BIN:$PATH" "$(bash tools/sdk_python.sh)" tests/sdk_test.py
