#!/usr/bin/env bash
# Installs everything the tests need (SeaweedFS, rclone, s5cmd, moto, Azurite, the OMS SDK), lints (ruff, mypy, the
# import layers), and runs the suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh test
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-logo  # the layer contract in pyproject.toml: imports only point down
# Two worker processes (pytest-xdist), each test file on one worker so module-scoped servers start once: the
# suite spends most of its time waiting on servers and subprocesses, not computing. Later options win, so
# `./test.sh -n 0` runs it in one process.
exec .venv/bin/pytest -q -n 2 --dist loadfile "$@"
