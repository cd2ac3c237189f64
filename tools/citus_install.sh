#!/usr/bin/env bash
# Installs Citus into the PostgreSQL of PG_MAJOR (default 15; tools/pg_cluster.sh), for the
# scale-out tests and benchmarks: nothing to do when that server already has Citus; otherwise it
# builds the source tarball kept beside the project (../shared/citus, or $CITUS_SOURCE_DIR):
#   PostgreSQL 15: Citus 13.2.2 (the newest for 15), with the one-line patch that PostgreSQL
#                  15.20's headers need when they declare have_createdb_privilege(); ~1.5 minutes;
#   PostgreSQL 16-18: Citus 14.0.1 (no patch); about 40 seconds on 2 cores.
# Citus is not packaged by Debian and its package repository is not reachable here.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/pg_cluster.sh
case "$PG_MAJOR" in
  15) CITUS_VERSION=13.2.2 ;;
  16|17|18) CITUS_VERSION=14.0.1 ;;
  *) echo "citus: no Citus release for PostgreSQL $PG_MAJOR here" >&2; exit 2 ;;
esac
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if [ -e "$("$PG_CONFIG" --pkglibdir)/citus.so" ] && [ -e "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]; then
  exit 0
fi
src_dir=""
for d in "${CITUS_SOURCE_DIR:-}" ../shared/citus /work/shared/citus; do
  if [ -n "$d" ] && [ -e "$d/citus-$CITUS_VERSION.tar.gz" ]; then src_dir=$(cd "$d" && pwd); break; fi
done
if [ -z "$src_dir" ]; then
  echo "citus: no Citus source (citus-$CITUS_VERSION.tar.gz in ../shared/citus or \$CITUS_SOURCE_DIR)" >&2
  exit 2
fi
need=()
for p in libzstd-dev libkrb5-dev patch make gcc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
build=$(mktemp -d /tmp/identity_merge-citus-build.XXXXXX)
trap 'rm -rf "$build"' EXIT
tar xzf "$src_dir/citus-$CITUS_VERSION.tar.gz" -C "$build"
cd "$build"
# 13.2.2's archive has no top directory; 14.0.1's is citus-14.0.1/
[ -e configure ] || cd "citus-$CITUS_VERSION"
if [ "$CITUS_VERSION" = 13.2.2 ] && grep -q "have_createdb_privilege" "$("$PG_CONFIG" --includedir-server)/commands/dbcommands.h"; then
  patch -p1 -s < "$src_dir/pg15.20-have_createdb_privilege.patch"
fi
echo "citus: building $CITUS_VERSION for PostgreSQL $PG_MAJOR"
./configure PG_CONFIG="$PG_CONFIG" --without-libcurl --without-lz4 > configure.log 2>&1 || { tail -30 configure.log; exit 1; }
make -j"$(nproc)" with_llvm=no > make.log 2>&1 || { tail -40 make.log; exit 1; }
$SUDO make install with_llvm=no > install.log 2>&1 || { tail -30 install.log; exit 1; }
echo "citus: installed into $("$PG_CONFIG" --pkglibdir)"
