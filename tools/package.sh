#!/usr/bin/env bash
# Builds the installable packages of identity_merge with `cargo pgrx package` (release build), one
# per PostgreSQL major in PG_MAJORS (default "15 17 18"), into target/packages/:
#   postgresql-15-identity-merge_<version>_amd64.deb        Debian's PostgreSQL 15 (dpkg-deb;
#       Depends: postgresql-15). Install: apt-get install ./postgresql-15-identity-merge_<version>_amd64.deb
#   postgresql-NN-identity-merge_<version>_amd64.tar.gz     a source-built PostgreSQL NN (17, 18):
#       the install tree relative to the prefix PostgreSQL was configured with
#       (lib/postgresql/identity_merge.so, share/postgresql/extension/identity_merge*); install:
#       tar -xzf postgresql-NN-identity-merge_<version>_amd64.tar.gz -C "$(pg_config --bindir)/.."
# The build machine's PostgreSQL of each major must be present (tools/setup.sh,
# tools/build_postgres.sh): pgrx compiles against its headers. Packages need no Rust to install.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source tools/pg_cluster.sh   # pg_bin_of, cargo_locked
PG_MAJORS="${PG_MAJORS:-15 17 18}"
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
out=target/packages
mkdir -p "$out"

for m in $PG_MAJORS; do
  pc="$(pg_bin_of "$m")/pg_config"
  [ -x "$pc" ] || { echo "package: no PostgreSQL $m ($pc)" >&2; exit 1; }
  tree="$PWD/$out/build/pg$m"
  rm -rf "$tree"
  echo "package: cargo pgrx package for PostgreSQL $m ($pc)"
  cargo_locked pgrx package --pg-config "$pc" --out-dir "$tree" >"$out/build-pg$m.log" 2>&1 \
    || { tail -30 "$out/build-pg$m.log"; exit 1; }
  libdir=$("$pc" --pkglibdir); extdir="$("$pc" --sharedir)/extension"
  for f in "$tree$libdir/identity_merge.so" "$tree$extdir/identity_merge.control" "$tree$extdir/identity_merge--$version.sql"; do
    [ -f "$f" ] || { echo "package: $f missing from cargo pgrx package's output" >&2; exit 1; }
  done
  if [ "$m" = 15 ]; then
    name=postgresql-15-identity-merge
    deb="$out/${name}_${version}_${arch}.deb"
    stage="$out/build/deb-15"
    rm -rf "$stage"; mkdir -p "$stage/DEBIAN"
    cp -a "$tree"/. "$stage"/
    installed_kb=$(du -sk "$stage" | cut -f1)
    cat > "$stage/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: identity_merge maintainers <identity_merge@localhost>
Depends: postgresql-15, libc6
Section: database
Priority: optional
Installed-Size: $installed_kb
Description: Mixpanel-style ID Merge for PostgreSQL 15
 identity_merge keeps the identity graph (which anonymous device ids, aliases and
 user ids belong to one person) inside PostgreSQL and stamps every event row with
 the person's canonical distinct_id as it is inserted. Built with pgrx against
 Debian's PostgreSQL 15; CREATE EXTENSION identity_merge in a database to use it.
CONTROL
    find "$stage" -type d -exec chmod 755 {} +
    find "$stage" -type f ! -path '*/DEBIAN/*' -exec chmod 644 {} +
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    echo "package: $deb"
    dpkg-deb -c "$deb" | awk '{print "  " $6}' | grep -v '/$'
  else
    prefix=$(cd "$(dirname "$pc")/.." && pwd)
    case "$libdir" in "$prefix"/*) ;; *) echo "package: $libdir is not under $prefix" >&2; exit 1;; esac
    case "$extdir" in "$prefix"/*) ;; *) echo "package: $extdir is not under $prefix" >&2; exit 1;; esac
    tgz="$out/postgresql-$m-identity-merge_${version}_${arch}.tar.gz"
    (cd "$tree$prefix" && find . -type f | LC_ALL=C sort) > "$out/build/pg$m.files"
    tar -C "$tree$prefix" --owner=0 --group=0 --numeric-owner -czf "$tgz" -T "$out/build/pg$m.files"
    echo "package: $tgz (paths relative to the prefix $prefix)"
    tar -tzf "$tgz" | sed 's/^/  /'
  fi
done
