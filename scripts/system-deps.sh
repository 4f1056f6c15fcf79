#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python: Chromium and ChromeDriver for the
# browser tests (tests/web). Installed once; a no-op when already present.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "system-deps: installing chromium and chromium-driver (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
