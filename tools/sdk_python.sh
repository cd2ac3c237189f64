#!/usr/bin/env bash
# Prints the path of a Python with the pinned official Mixpanel, Segment and RudderStack Python
# SDKs, creating its venv (under target/, outside the source tree) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
MIXPANEL_VERSION=5.4.1
SEGMENT_VERSION=2.4.0
RUDDER_VERSION=2.1.9
venv=target/sdk-venv
check="import mixpanel, importlib.metadata as m, sys; sys.exit(not (mixpanel.__version__ == '$MIXPANEL_VERSION' \
  and m.version('segment-analytics-python') == '$SEGMENT_VERSION' and m.version('rudder-sdk-python') == '$RUDDER_VERSION'))"
if ! "$venv/bin/python" -c "$check" 2>/dev/null; then
  mkdir -p target
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2 || { echo "python3 -m venv failed: install python3-venv" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "mixpanel==$MIXPANEL_VERSION" \
    "segment-analytics-python==$SEGMENT_VERSION" "rudder-sdk-python==$RUDDER_VERSION" >&2
fi
echo "$venv/bin/python"
