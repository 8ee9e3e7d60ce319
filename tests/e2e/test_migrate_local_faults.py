"""`ferry migrate` when its job database's disk fills mid-run: one line, a non-zero exit, and the next run resumes."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import ferry_env, migrate_argv, run_ferry, s3_client

from ferry.db import schema_sqlite

pytestmark = pytest.mark.timeout(240)



def _fresh_schema_pages() -> int:
    db = sqlite3.connect(":memory:")
    for statement in schema_sqlite.statements():
        db.execute(statement)
    return int(db.execute("PRAGMA page_count").fetchone()[0])


# The CLI as it is, on a job database that cannot grow past two pages more than the fresh schema takes: SQLite
# answers SQLITE_FULL then, as it does on a full disk. No privileges needed.
_CAP = f"PRAGMA max_page_count={_fresh_schema_pages() + 2}"
CAPPED = [sys.executable, "-c",
          f"import sys, ferry.db.sqlconn as c; c.SQLITE_PRAGMAS += ({_CAP!r},); "
          "from ferry.cli import main; sys.argv[0] = 'ferry'; sys.exit(main())"]


def test_disk_full_stops_with_one_line_then_the_next_run_resumes(seaweed_a: Any, seaweed_b: Any,
                                                                  bucket_factory: Any, tmp_path: Path) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    src = s3_client(seaweed_a)
    bodies = {f"k/{i:04d}-{'x' * 40}": os.urandom(512) for i in range(400)}
    for key, body in bodies.items():
        src.put_object(Bucket=sb, Key=key, Body=body)
    state = tmp_path / "state"
    argv = migrate_argv(seaweed_a, sb, seaweed_b, db, state)
    env = {**ferry_env(seaweed_a, seaweed_b), "FERRY_STATE_PATIENCE": "1"}

    full = run_ferry([*CAPPED, *argv[3:]], env)
    assert full.code == 1, (full.stdout, full.stderr)
    errors = [line for line in full.stderr.splitlines() if line.startswith("ferry: error:")]
    assert len(errors) == 1 and full.stdout == "", full.stderr
    assert f"the disk of the data directory {state} is full" in errors[0], errors[0]
    assert errors[0].endswith("free at least 64.0 MiB there; run the same command again to resume"), errors[0]

    again = run_ferry(argv, env)
    assert again.code == 0, again.stderr
    s = again.summary
    assert s["resumed"] is True and s["failed"] == 0, s
    # What the first run recorded is not looked at again; what it copied unrecorded is found and skipped.
    assert s["total"] == s["success"] + s["skipped"] == len(bodies), s
    keys = {o["Key"] for page in s3_client(seaweed_b).get_paginator("list_objects_v2").paginate(Bucket=db)
            for o in page.get("Contents", [])}
    assert keys == set(bodies)
