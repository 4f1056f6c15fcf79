#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python: Chromium and ChromeDriver for the
# browser tests (tests/web). Installed once; a no-op when already present. Without root
# (or apt-get), say in one line what to install instead of failing obscurely.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
need="the browser tests need Chromium and ChromeDriver: install the Debian packages 'chromium chromium-driver' (apt-get install chromium chromium-driver) and run make test again"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: $need" >&2
  exit 1
fi
echo "system-deps: installing chromium and chromium-driver (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
  echo "system-deps: apt-get could not install them; $need" >&2
  exit 1
fi
