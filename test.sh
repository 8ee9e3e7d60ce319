#!/usr/bin/env bash
# Installs everything the tests need (SeaweedFS, rclone, s5cmd, moto, Azurite, the OMS SDK), lints (ruff, mypy, the
# import layers), and runs the suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh test
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-logo  # the layer contract in pyproject.toml: imports only point down
exec .venv/bin/pytest -q "$@"
