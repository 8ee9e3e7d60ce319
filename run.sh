#!/usr/bin/env bash
# Quick start: install Ferry and run a real migration between two sandbox S3 servers it starts itself.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/ferry demo "$@"
