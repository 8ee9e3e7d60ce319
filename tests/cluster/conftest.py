"""Fixtures of the distributed-mode tests: PostgreSQL, a Redis of the module's own, `ferry worker` processes."""

from __future__ import annotations

import sys
from pathlib import Path

# The API tests' helpers (a live Ferry service, task requests, listings) serve here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
