"""`ferry demo`: a real migration between two sandbox stores, run through the migration service itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ferry.demo import EDGE_KEYS

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

# Runs the demo in a fresh interpreter and reports what it left behind: which modules it loaded and which
# environment variables it changed (names only: the values are the sandbox's keys).
_PROBE = """
import json, os, sys
before = dict(os.environ)
from ferry.demo import run_demo
code = run_demo(objects=3, as_json=True)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"code": code, "cli_loaded": "ferry.cli" in sys.modules, "env_changed": changed}))
"""


def test_demo_migrates_twice_through_the_service_without_argv_or_environment() -> None:
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=280,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr[-3000:]
    first, second, probe = (json.loads(line) for line in run.stdout.splitlines())
    assert probe == {"code": 0, "cli_loaded": False, "env_changed": []}
    objects = 3 + len(EDGE_KEYS) + 2  # small ones, edge-case keys, two large ones
    assert (first["total"], first["success"], first["failed"], first["error"]) == (objects, objects, 0, None)
    # The second run finds everything in place: nothing copied.
    assert (second["total"], second["success"], second["skipped"], second["failed"]) == (objects, 0, objects, 0)
