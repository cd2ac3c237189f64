#!/usr/bin/env bash
# Freezes the install script of the current version as sql/released/identity_merge--VERSION.sql
# and records its checksum, and its upgrade script's, in sql/released/SHA256SUMS.
# Run once when a version is released; released scripts are never edited afterwards (the
# upgrade test checks it). The next version bumps Cargo.toml's version and ships
# sql/identity_merge--OLD--NEW.sql.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
out=sql/released/identity_merge--$version.sql
[ ! -e "$out" ] || { echo "$out exists: released scripts are never rewritten" >&2; exit 1; }
cargo pgrx schema pg15 --out "$out" >/dev/null
# Checksums of everything released (the install script and the upgrade script into this
# version): tests/upgrade.sh fails when a released script is edited afterwards.
for f in "$out" sql/identity_merge--*--"$version".sql; do
  [ -e "$f" ] && sha256sum "$f" >> sql/released/SHA256SUMS
done
echo "froze $out"
