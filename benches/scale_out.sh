#!/usr/bin/env bash
# Issue #12's scale-out benchmark (benches/scale_out.rs): ingest and audited reads on one
# instance with the embedded storage, one on PostgreSQL + S3, and two on one PostgreSQL + S3,
# in one run. Prints a Markdown table (BENCHMARKS.md).
#   benches/scale_out.sh [seconds per read run, default 10] [clients, default 16]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/pg-setup.sh >/dev/null
VAULT_S3_SERVER=$(tests/s3-setup.sh)
export VAULT_S3_SERVER
cargo build --release -q -p vault-server
VAULT_SCALE_SECONDS=${1:-10} VAULT_SCALE_CLIENTS=${2:-16} cargo bench -q --bench scale_out
