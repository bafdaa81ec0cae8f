#!/usr/bin/env bash
# Makes sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are on this machine for
# the tests on the PostgreSQL metadata store (tests/common/pg.rs starts a throwaway cluster per
# test binary), and, when the tests run as root (PostgreSQL refuses to run as root), that the
# unprivileged user `postgres` exists to run them. Idempotent: does nothing when all is there.
set -euo pipefail
have_bin() {
  local d
  d="$(pg_config --bindir 2>/dev/null || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then return 0; fi
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then return 0; fi
  done
  return 1
}
if ! have_bin; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
have_bin || { echo "PostgreSQL server binaries not found (initdb, pg_ctl)"; exit 1; }
if [ "$(id -u)" = 0 ]; then
  id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
  command -v runuser >/dev/null || { echo "runuser (util-linux) is needed to run PostgreSQL as postgres"; exit 1; }
fi
echo "PostgreSQL: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ')"
