#!/usr/bin/env bash
# Every test: README's second command, and what `.ci/run` runs after fmt and clippy.
#   tests/all.sh
# Installs and starts what the tests need (Debian's Chromium and chromedriver for the citizen
# page's browser tests, Debian's PostgreSQL server binaries for the PostgreSQL metadata tests,
# which start their own throwaway cluster, an OpenID provider from npm for the sign-in interop
# test, an S3 server built once into a cache folder), then runs the workspace's tests (unit,
# property, crash, end-to-end), the HTTP suites a second time with every server's blobs in S3
# and a third time with every server two instances on one PostgreSQL database and S3 bucket,
# the schema-driven fuzzer against the server (tests/schemathesis.sh, 2 minutes) and every
# cargo-fuzz target for 10 s (fuzz/run.sh, when nightly is present).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== browser"; bash tests/browser-setup.sh   # Chromium + chromedriver (Debian), oidc-provider (npm)
echo "== postgresql"; bash tests/pg-setup.sh     # PostgreSQL server binaries (Debian), the user postgres
echo "== s3 server"; VAULT_S3_SERVER=$(tests/s3-setup.sh); export VAULT_S3_SERVER   # s3s-fs, cached
echo "== cargo test"; cargo test --workspace
echo "== cargo test, blobs in S3"   # the end-to-end HTTP suites again, each server on --blobs s3://
VAULT_TEST_BLOBS=s3 cargo test --test server --test server_limits --test server_matrix --test client \
  --test audit_log --test events --test races --test server_durability --test tlog_tiles --test page --test webhooks
echo "== cargo test, two instances"   # the same suites, each server two instances on one PostgreSQL
# database and one S3 bucket, requests alternating between them (SPEC.md §9a "Several instances")
VAULT_TEST_INSTANCES=2 cargo test --test server --test server_limits --test server_matrix --test client \
  --test audit_log --test events --test races --test server_durability --test tlog_tiles --test page --test webhooks
echo "== schemathesis"   # tests/schemathesis.sh: the server against its own /openapi.json, 2 min
if command -v python3 >/dev/null 2>&1; then
  tests/schemathesis.sh target/debug/vault-server
else
  echo "no python3: schemathesis cannot run"; exit 1
fi
echo "== fuzz"   # fuzz/run.sh: every cargo-fuzz target for 10 s (SPEC.md §20 "Fuzzing")
# The instrumented build is kept in a cache folder outside the repository; it is bounded (20 min)
# so that CI stays within its time on a slow machine: past that, fuzzing is reported skipped.
if [ "${VAULT_CI_FUZZ:-1}" = 0 ]; then
  echo "fuzzing skipped (VAULT_CI_FUZZ=0)"
elif cargo +nightly --version >/dev/null 2>&1; then
  if cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz; then
    set +e
    FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-ci/fuzz-target} \
      FUZZ_BUILD_TIMEOUT=${FUZZ_BUILD_TIMEOUT:-1200} fuzz/run.sh 10
    rc=$?
    set -e
    if [ $rc -eq 3 ]; then
      echo "fuzzing skipped: the instrumented build did not finish in time"
    elif [ $rc -ne 0 ]; then
      echo "fuzzing found a failure"; exit 1
    fi
  else
    echo "cargo-fuzz could not be installed: fuzzing skipped"
  fi
else
  echo "no nightly toolchain: fuzzing skipped"
fi
