#!/usr/bin/env bash
# Builds PostgreSQL 17 and 18 from the release tarballs in ../shared/postgres (Debian bookworm ships
# only 15), each into a prefix outside the repository, and registers them with `cargo pgrx init`
# beside Debian's 15.
#
#   bash tools/build_postgres.sh [MAJOR...]      # default: 17 18
#
# Where things go (environment overrides):
#   IDENTITY_MERGE_PG_PREFIX   root of the prefixes      (default /opt/identity_merge: pg17/, pg18/)
#   IDENTITY_MERGE_PG_SRC      directory of the tarballs (default ../shared/postgres, then /work/shared/postgres)
#   IDENTITY_MERGE_PG_BUILD    scratch build directory   (default /var/tmp/identity_merge-pgbuild)
#   IDENTITY_MERGE_PG_NO_INIT=1  build only, do not run `cargo pgrx init`
# Idempotent: a major whose PREFIX/bin/pg_config reports the expected version is not rebuilt, and
# `cargo pgrx init` runs only when $PGRX_HOME/config.toml lacks one of the majors.
# Each build: sha256 of the tarball checked first, then
#   ./configure --prefix=PREFIX --without-readline && make -j2 && make install
# (about 4-5 minutes per major on 2 cores). ICU stays on (libicu-dev), as in Debian's and PGDG's
# builds: tests/reliability.sh needs a nondeterministic (ICU) collation. A prefix built with other
# configure flags (e.g. --without-icu) is rebuilt. The prefix is owned by root; servers run as postgres.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export PATH="$HOME/.cargo/bin:$PATH"

PREFIX_ROOT="${IDENTITY_MERGE_PG_PREFIX:-/opt/identity_merge}"
BUILD_ROOT="${IDENTITY_MERGE_PG_BUILD:-/var/tmp/identity_merge-pgbuild}"
if [ -n "${IDENTITY_MERGE_PG_SRC:-}" ]; then
  SRC_DIR="$IDENTITY_MERGE_PG_SRC"
elif [ -d "$repo/../shared/postgres" ]; then
  SRC_DIR="$(cd "$repo/../shared/postgres" && pwd)"
else
  SRC_DIR=/work/shared/postgres
fi

# major -> version, tarball, sha256 (from ../shared/postgres/README.md)
pg_version() { case "$1" in 17) echo 17.11;; 18) echo 18.6;; *) return 1;; esac; }
pg_tarball() { case "$1" in 17) echo postgresql-17_17.11.orig.tar.bz2;; 18) echo postgresql-18_18.6.orig.tar.bz2;; esac; }
pg_sha256() {
  case "$1" in
    17) echo dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979;;
    18) echo 555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f;;
  esac
}

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(17 18)

configure_flags() { echo "--prefix=$PREFIX_ROOT/pg$1 --without-readline"; }
built_ok() {  # MAJOR: the prefix holds the expected version, built with configure_flags
  local pc="$PREFIX_ROOT/pg$1/bin/pg_config"
  [ -x "$pc" ] && [ "$("$pc" --version 2>/dev/null)" = "PostgreSQL $(pg_version "$1")" ] \
    && [ "$("$pc" --configure 2>/dev/null | tr -d "'" | xargs)" = "$(configure_flags "$1")" ]
}

need_tools() {
  local need=()
  command -v bison >/dev/null || need+=(bison)
  command -v flex >/dev/null || need+=(flex)
  # headers the configure wants (zlib, ICU; readline is turned off)
  for p in zlib1g-dev libicu-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "build_postgres: installing ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

for major in "${majors[@]}"; do
  version="$(pg_version "$major")" || { echo "build_postgres: no source for PostgreSQL $major (17 or 18)" >&2; exit 2; }
  prefix="$PREFIX_ROOT/pg$major"
  if built_ok "$major"; then
    echo "build_postgres: PostgreSQL $version already in $prefix"
    continue
  fi
  tarball="$SRC_DIR/$(pg_tarball "$major")"
  [ -f "$tarball" ] || { echo "build_postgres: $tarball not found (set IDENTITY_MERGE_PG_SRC)" >&2; exit 1; }
  echo "$(pg_sha256 "$major")  $tarball" | sha256sum -c --quiet - \
    || { echo "build_postgres: sha256 mismatch for $tarball" >&2; exit 1; }
  need_tools
  start=$(date +%s)
  echo "build_postgres: building PostgreSQL $version into $prefix (about 4 minutes)"
  work="$BUILD_ROOT/pg$major"
  rm -rf "$work"; mkdir -p "$work"
  tar -xjf "$tarball" -C "$work" --strip-components=1
  log="$BUILD_ROOT/pg$major.log"
  (
    cd "$work"
    # shellcheck disable=SC2046
    ./configure $(configure_flags "$major")
    make -j"${IDENTITY_MERGE_PG_JOBS:-2}"
    # a prefix of another version or other configure flags is replaced (only now: it stays usable
    # during the build)
    [ ! -e "$prefix" ] || { echo "build_postgres: replacing $prefix"; $SUDO rm -rf "$prefix"; }
    $SUDO make install
  ) >"$log" 2>&1 || { tail -40 "$log"; echo "build_postgres: build of $version failed; log: $log" >&2; exit 1; }
  built_ok "$major" || { echo "build_postgres: $prefix/bin/pg_config does not report $version" >&2; exit 1; }
  rm -rf "$work"
  echo "build_postgres: PostgreSQL $version built in $(( $(date +%s) - start ))s (log: $log)"
done

if [ "${IDENTITY_MERGE_PG_NO_INIT:-0}" = 1 ]; then exit 0; fi

# Register with pgrx: 15 (Debian's) plus every source-built major present, once.
PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
cfg="$PGRX_HOME/config.toml"
args=(--pg15 /usr/lib/postgresql/15/bin/pg_config)
missing=0
grep -q '^pg15' "$cfg" 2>/dev/null || missing=1
for major in 17 18; do
  if built_ok "$major"; then
    args+=(--pg"$major" "$PREFIX_ROOT/pg$major/bin/pg_config")
    grep -q "^pg$major" "$cfg" 2>/dev/null || missing=1
  fi
done
if [ "$missing" = 1 ]; then
  if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
    echo "build_postgres: cargo-pgrx 0.18.1 not installed; run tools/setup.sh" >&2; exit 1
  fi
  echo "build_postgres: cargo pgrx init ${args[*]}"
  flock /tmp/identity_merge-cargo.lock cargo pgrx init "${args[@]}"
else
  echo "build_postgres: $cfg already lists every built major"
fi
