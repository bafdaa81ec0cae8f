#!/usr/bin/env bash
# Installs Debian's headless Chromium and its WebDriver for tests/page_browser.rs, if missing.
# Idempotent: does nothing when both are already there.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromium && command -v chromedriver
