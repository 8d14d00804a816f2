#!/usr/bin/env bash
# Headless Chromium for tests/test_turing_browser.py: Debian's `chromium` package, driven by Playwright's Python
# client through executable_path=/usr/bin/chromium (no `playwright install`, no browser download).
# Idempotent: does nothing when chromium is already installed. Needs root (or sudo) and the Debian mirrors.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
command -v chromium
