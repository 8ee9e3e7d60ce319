"""`ferry serve` refuses a bad configuration at start, in one line naming what to fix, instead of serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.errors import UsageError
from ferry.serve import build

FERRY = [sys.executable, "-m", "ferry.cli"]
BAD_OVERRIDES = [
    # Python's quotes, as a dict pasted from a script.
    ("{'HuaweiCloud/cn-north-4': 'http://127.0.0.1:9000'}", "double quotes"),
    # A URL without its scheme.
    ('{"HuaweiCloud/cn-north-4": "127.0.0.1:9000"}', "'HuaweiCloud/cn-north-4'"),
]


@pytest.mark.parametrize(("table", "named"), BAD_OVERRIDES)
def test_serve_refuses_malformed_endpoint_overrides(tmp_path: Path, table: str, named: str) -> None:
    env = dict(os.environ, FERRY_DATA_DIR=str(tmp_path), FERRY_ENDPOINT_OVERRIDES=table)
    env.pop("FERRY_DATABASE_URL", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*FERRY, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("ferry serve started with a malformed FERRY_ENDPOINT_OVERRIDES") from None
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry: error: FERRY_ENDPOINT_OVERRIDES"), err
    assert named in lines[0], lines[0]


def test_a_service_that_runs_tasks_refuses_them_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", BAD_OVERRIDES[1][0])
    with pytest.raises(UsageError, match="FERRY_ENDPOINT_OVERRIDES entry 'HuaweiCloud/cn-north-4'"):
        build(tmp_path, f"sqlite:///{tmp_path / 'ferry.db'}")
