#!/usr/bin/env bash
# Prints the path of a dbt with the pinned dbt-core and dbt-postgres, creating its venv (under
# target/, outside the source tree) on first use. dbt-core is pinned with the adapter: newer
# releases fetch a parser from GitHub while installing, which this machine cannot reach.
set -euo pipefail
cd "$(dirname "$0")/.."
DBT_CORE=1.8.9
DBT_POSTGRES=1.8.2
venv=target/dbt-venv
check="import importlib.metadata as m, sys; sys.exit(not (m.version('dbt-core') == '$DBT_CORE' and m.version('dbt-postgres') == '$DBT_POSTGRES'))"
if ! "$venv/bin/python" -c "$check" 2>/dev/null; then
  mkdir -p target
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2 || { echo "python3 -m venv failed: install python3-venv" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "dbt-core==$DBT_CORE" "dbt-postgres==$DBT_POSTGRES" >&2
fi
echo "$(pwd)/$venv/bin/dbt"
