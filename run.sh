#!/usr/bin/env bash
# Quick start: install Ferry and start the OMS v2 API service (http://127.0.0.1:8780; arguments go to `ferry serve`).
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/ferry serve "$@"
