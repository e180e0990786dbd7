#!/usr/bin/env bash
# Idempotent: install Debian's headless-capable Chromium for the book's browser test
# (tests/e2e/test_book.py). Does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know the package yet.
if ! apt-cache show chromium >/dev/null 2>&1 || \
   ! $SUDO apt-get install -y -qq --no-install-recommends --dry-run chromium >/dev/null 2>&1; then
  echo "setup_browser: apt-get update"
  $SUDO apt-get update -qq
fi
echo "setup_browser: installing chromium (a few minutes the first time)"
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
