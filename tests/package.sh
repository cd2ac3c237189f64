#!/usr/bin/env bash
# The packages of tools/package.sh work without Rust, on the machine's PostgreSQL of each major in
# PG_MAJORS (default "15 17 18"):
#   15: `apt-get install ./target/packages/postgresql-15-identity-merge_<version>_amd64.deb`, then in a
#       throwaway cluster CREATE EXTENSION (the packaged version), CREATE EXTENSION at the previous
#       released version (its frozen install script from sql/released/ put beside the package's
#       files) and ALTER EXTENSION identity_merge UPDATE to the packaged version, a merge and a
#       stamped insert; then `apt-get remove` and no file of the package is left;
#   17, 18: the tarball extracted into the prefix, the same checks, the files removed again.
# Whatever identity_merge files each major had before (a build from source, a test build) are put
# back as they were; a .deb already installed makes the test refuse (it would be removed).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib.sh
PG_MAJORS="${PG_MAJORS:-15 17 18}"
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
previous=$(ls sql/released/identity_merge--*.sql | sed 's/.*--\(.*\)\.sql/\1/' | grep -vx "$version" | sort -V | tail -1)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
pkg=postgresql-15-identity-merge
print_checks=all
installed() { dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; }
fingerprint() { (cd "$1" && find . -type f | sort | xargs -r md5sum); }

work=$(mktemp -d /tmp/identity_merge-package.XXXXXX); chmod 755 "$work"
cur_major=""; libdir=""; extdir=""
save_major() {  # moves the major's identity_merge files aside, into $work/saved-MAJOR
  local s="$work/saved-$cur_major"
  mkdir -p "$s/lib" "$s/ext"
  cp -p "$libdir"/identity_merge.so "$s/lib/" 2>/dev/null || true
  cp -p "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql "$s/ext/" 2>/dev/null || true
  $SUDO rm -f "$libdir"/identity_merge.so "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql
}
restore_major() {  # removes what the test installed and puts the saved files back
  local s="$work/saved-$cur_major"
  [ -d "$s" ] || return 0
  $SUDO rm -f "$libdir"/identity_merge.so "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql
  [ -z "$(ls -A "$s/lib")" ] || $SUDO cp -p "$s"/lib/* "$libdir/"
  [ -z "$(ls -A "$s/ext")" ] || $SUDO cp -p "$s"/ext/* "$extdir/"
  rm -rf "$s"
}
cleanup() {
  local rc=$?
  cluster_stop
  if [ "$cur_major" = 15 ] && installed; then $SUDO env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "$pkg" >/dev/null 2>&1 || true; fi
  [ -z "$cur_major" ] || restore_major
  if [ "$rc" = 0 ]; then rm -rf "$work"; else echo "kept $work (the run failed)" >&2; fi
  return "$rc"
}
trap cleanup EXIT

# The extension from the package's files, in a throwaway cluster of PostgreSQL $cur_major.
check_extension() {
  cluster_start "$work/pg$cur_major" "$(free_port)"
  check "pg$cur_major: CREATE EXTENSION gives $version" "$version" \
    "$(cluster_psql -Atc "CREATE EXTENSION identity_merge" -c "SELECT extversion FROM pg_extension WHERE extname = 'identity_merge'")"
  check "pg$cur_major: a merge and a stamped insert" "U1|U1" "$(cluster_psql -At <<'SQL'
SET identity_merge.anon_id_format = 'any';
SELECT mp_identify('U1', 'D1') \gset
CREATE TABLE events (distinct_id text, event text, properties jsonb, canonical_id text);
SELECT mp_attach('events') \gset
WITH i AS (INSERT INTO events VALUES ('D1', 'x', '{}') RETURNING canonical_id) SELECT mp_resolve('D1') || '|' || canonical_id FROM i;
SQL
)"
  if [ -n "$previous" ]; then
    # The previous release's frozen install script beside the package's upgrade scripts.
    $SUDO cp "sql/released/identity_merge--$previous.sql" "$extdir/"
    cluster_psql -c "CREATE DATABASE upgrade_from_previous" >/dev/null
    check "pg$cur_major: CREATE EXTENSION VERSION '$previous' then ALTER EXTENSION UPDATE gives $version" "$previous $version" \
      "$(cluster_psql -d upgrade_from_previous -At <<SQL
SET client_min_messages = warning;
CREATE EXTENSION identity_merge VERSION '$previous';
SET identity_merge.anon_id_format = 'any';
SELECT mp_identify('U1', 'D1') \gset
SELECT extversion FROM pg_extension WHERE extname = 'identity_merge' \gset before_
ALTER EXTENSION identity_merge UPDATE;
SELECT :'before_extversion' || ' ' || extversion FROM pg_extension WHERE extname = 'identity_merge';
SQL
)"
    check "pg$cur_major: identities kept by the upgrade" "U1" "$(cluster_psql -d upgrade_from_previous -Atc "SELECT mp_resolve('D1')")"
    $SUDO rm -f "$extdir/identity_merge--$previous.sql"
  fi
  cluster_stop
  rm -rf "$work/pg$cur_major"
}

for m in $PG_MAJORS; do
  PG_MAJOR=$m; PG_BIN="$(pg_bin_of "$m")"; PG_CONFIG="$PG_BIN/pg_config"
  libdir=$("$PG_CONFIG" --pkglibdir); extdir="$("$PG_CONFIG" --sharedir)/extension"
  before=$(d=$(mktemp -d); cp -p "$libdir"/identity_merge.so "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql "$d"/ 2>/dev/null || true; fingerprint "$d"; rm -rf "$d")
  if [ "$m" = 15 ]; then
    deb="./target/packages/${pkg}_${version}_${arch}.deb"
    [ -f "$deb" ] || { bad "no $deb (bash tools/package.sh)"; continue; }
    if installed; then
      bad "$pkg is installed on this machine: the test would remove it (apt-get remove $pkg first)"; continue
    fi
    cur_major=15
    save_major
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$work/apt-install.log" 2>&1 \
      || { cat "$work/apt-install.log"; bad "apt-get install $deb"; exit 1; }
    installed && ok "apt-get install $deb" || bad "apt-get install $deb: not installed"
    check "the package owns identity_merge.so in $libdir" "$libdir/identity_merge.so" "$(dpkg -L "$pkg" | grep -x "$libdir/identity_merge.so")"
    check_extension
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "$pkg" >"$work/apt-remove.log" 2>&1 \
      || { cat "$work/apt-remove.log"; bad "apt-get remove $pkg"; }
    installed && bad "apt-get remove $pkg: still installed" || ok "apt-get remove $pkg"
    check "no identity_merge file left after apt-get remove" "" \
      "$(ls "$libdir"/identity_merge.so "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql 2>/dev/null || true)"
  else
    tgz="target/packages/postgresql-$m-identity-merge_${version}_${arch}.tar.gz"
    [ -f "$tgz" ] || { bad "no $tgz (bash tools/package.sh)"; continue; }
    cur_major=$m
    save_major
    prefix=$(cd "$PG_BIN/.." && pwd)
    $SUDO tar -xzf "$tgz" -C "$prefix" --no-same-owner
    check "pg$m: the tarball installs identity_merge.so into $libdir" "yes" "$([ -f "$libdir/identity_merge.so" ] && echo yes || echo no)"
    check_extension
  fi
  restore_major; cur_major=""
  after=$(d=$(mktemp -d); cp -p "$libdir"/identity_merge.so "$extdir"/identity_merge.control "$extdir"/identity_merge--*.sql "$d"/ 2>/dev/null || true; fingerprint "$d"; rm -rf "$d")
  check "pg$m: the previous install is left as found" "$before" "$after"
done
summary package
