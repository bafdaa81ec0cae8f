#!/usr/bin/env bash
# Issue #11's read-path benchmark: wrk (a second process) against the release vault-server on
# 127.0.0.1, in the same run as a minimal axum "hello" server: hello, /healthz, an agency's
# audited 10 KiB content read under a grant, the owner's read, the agency's record read.
#   benches/reads.sh [seconds per workload, default 10] [connections, default 64]
# Installs wrk from Debian's packages when it is missing. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get install -y -q wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }; }
cargo build --release -q -p vault-server
VAULT_HTTP_WRK=wrk VAULT_HTTP_SECONDS=${1:-10} VAULT_HTTP_CONNECTIONS=${2:-64} \
  cargo bench -q --bench http
