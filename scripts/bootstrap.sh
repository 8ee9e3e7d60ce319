#!/usr/bin/env bash
# Creates .venv (if missing) and installs Ferry into it; with "test", also everything the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
  # Azurite (the Azure Blob emulator the tests run against) comes from npm, pinned by tools/azurite's lockfile.
  # `npm ci` starts from an empty node_modules (~35 s), so it runs only when the lockfile changed since.
  if [ ! -x tools/azurite/node_modules/.bin/azurite-blob ] \
      || [ tools/azurite/package-lock.json -nt tools/azurite/node_modules/.package-lock.json ]; then
    command -v npm >/dev/null || { echo "bootstrap: npm (Node.js 18+) is needed to install Azurite" >&2; exit 1; }
    npm ci --prefix tools/azurite --no-audit --no-fund --ignore-scripts --loglevel=error
  fi
  # The console's browser tests drive Debian's Chromium through Playwright (which never downloads a browser
  # here: the tests give it this executable). Installed only when missing: apt is slow and needs root.
  if [ ! -x /usr/bin/chromium ]; then
    command -v apt-get >/dev/null || { echo "bootstrap: apt-get is needed to install chromium" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
else
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
fi
# An editable install leaves our own sources uncompiled (pip compiles only what it copies), and where
# PYTHONDONTWRITEBYTECODE is set, as in many CI images, every run would compile ~40 modules again before
# moving any data (~35 ms of CPU per run, measured). Cached bytecode is still read under that setting.
.venv/bin/python -m compileall -q src
