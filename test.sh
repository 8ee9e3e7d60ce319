#!/usr/bin/env bash
# Installs everything the tests need (SeaweedFS, rclone, s5cmd, moto, the OMS SDK), lints, and runs the suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh test
.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
