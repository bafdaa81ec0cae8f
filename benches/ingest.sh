#!/bin/sh
# Bulk-ingest benchmark of issue 5: library vs `vault deposit` over HTTP vs restic.
# Installs Debian's restic when missing, builds the release binaries, runs benches/ingest.rs.
set -eu
cd "$(dirname "$0")/.."
if ! command -v restic >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y restic >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y restic >/dev/null; }
fi
restic version
cargo build --release -p vault-server -p vault-client
cargo bench --bench ingest "$@"
