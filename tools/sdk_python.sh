#!/usr/bin/env bash
# Prints the path of a Python with the pinned official Mixpanel SDK, creating its venv (under
# target/, outside the source tree) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
MIXPANEL_VERSION=5.4.1
venv=target/sdk-venv
if ! "$venv/bin/python" -c "import mixpanel, sys; sys.exit(mixpanel.__version__ != '$MIXPANEL_VERSION')" 2>/dev/null; then
  mkdir -p target
  python3 -m venv "$venv" >&2 || { echo "python3 -m venv failed: install python3-venv" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "mixpanel==$MIXPANEL_VERSION" >&2
fi
echo "$venv/bin/python"
