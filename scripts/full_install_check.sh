#!/usr/bin/env bash
# `pip install` of sae-med into an empty venv with its dependencies from the registry
# (within requirements.txt's pins), then `pip check` and `sae-med --help`. It downloads
# ~2 GB, so `make test` does not run it: tests/test_install.py installs the wheel with
# --no-deps into a fresh venv and checks offline that the declared ranges resolve to the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" .
python3 -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --no-compile -c requirements.txt "$tmp"/dist/sae_med-*.whl
"${pip[@]}" check
(cd "$tmp" && venv/bin/sae-med --help | head -1)
echo "full install: ok"
