#!/usr/bin/env bash
# Installs Debian's headless Chromium and its WebDriver for tests/page_browser.rs, if missing.
# Also the npm package oidc-provider under target/oidc-interop for the interoperability test.
# Idempotent: does nothing when all are already there.
set -euo pipefail
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium chromium-driver >/dev/null
fi
command -v chromium >/dev/null && command -v chromedriver >/dev/null
# The independent OpenID provider for the interoperability test (npm registry), under target/.
root="$(cd "$(dirname "$0")/.." && pwd)"
if command -v npm >/dev/null && [ ! -d "$root/target/oidc-interop/node_modules/oidc-provider" ]; then
  mkdir -p "$root/target/oidc-interop"
  npm install --no-audit --no-fund --prefix "$root/target/oidc-interop" oidc-provider@9.13.3 >/dev/null
fi
