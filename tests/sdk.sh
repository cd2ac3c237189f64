#!/usr/bin/env bash
# Runs tests/sdk_test.py (the official Mixpanel Python SDK's payloads) and
# tests/sdk_segment_test.py (the Segment and RudderStack Python SDKs') against a throwaway
# PostgreSQL (PG_MAJOR, default 15: tools/pg_cluster.sh) with the installed extension.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
cluster_throwaway sdk
py=$(bash tools/sdk_python.sh)
PATH="$PG_BIN:$PATH" "$py" tests/sdk_test.py
PATH="$PG_BIN:$PATH" "$py" tests/sdk_segment_test.py
