"""`kill -9` in the middle of `ferry migrate`, then the same command again: the job resumes and finishes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cli_helpers import ferry_env, migrate_argv, run_ferry, s3_client

N = 3000


def _finished(db: Path) -> dict[str, float]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return dict(conn.execute("SELECT key, updated_at FROM job_objects WHERE status='success'"))
    except sqlite3.OperationalError:
        return {}


def test_kill_9_then_rerun_resumes_without_recopying(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                     tmp_path: Path) -> None:
    src_c, dst_c = s3_client(seaweed_a), s3_client(seaweed_b)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"obj/{i:05d}": os.urandom(1024 + i % 97) for i in range(N)}
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda kv: src_c.put_object(Bucket=sb, Key=kv[0], Body=kv[1]), bodies.items()))

    state = tmp_path / "state"
    argv = migrate_argv(seaweed_a, sb, seaweed_b, db, state, "--concurrency", "4")
    env = ferry_env(seaweed_a, seaweed_b)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_finished(state / "ferry.db")) < N // 5:
        assert proc.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished(state / "ferry.db")
    assert N // 5 <= len(before) < N
    time.sleep(1.1)  # a re-copy would now show a newer LastModified

    stamps = {k: dst_c.head_object(Bucket=db, Key=k)["LastModified"] for k in list(before)[:200]}
    run = run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, db, state), env)
    assert run.code == 0, run.stderr
    s = run.summary
    assert s["resumed"] is True
    assert (s["total"], s["failed"]) == (N, 0)
    assert s["success"] + s["skipped"] == N

    after = _finished(state / "ferry.db")
    assert all(after[k] == t for k, t in before.items()), "a verified object was recorded again"
    assert all(dst_c.head_object(Bucket=db, Key=k)["LastModified"] == t for k, t in stamps.items())
    listed: dict[str, int] = {}
    for page in dst_c.get_paginator("list_objects_v2").paginate(Bucket=db):
        listed.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    assert listed == {k: len(v) for k, v in bodies.items()}
    for k in list(bodies)[::300]:
        assert dst_c.get_object(Bucket=db, Key=k)["Body"].read() == bodies[k]


def test_a_second_run_of_a_running_job_is_refused(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                  tmp_path: Path) -> None:
    """Two `ferry migrate` of one job at once would share its multipart checkpoints (NoSuchUpload in one, a
    false success in the other): the second is refused while the first lives, and a kill -9 frees the job."""
    src_c = s3_client(seaweed_a)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    n = 400
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: src_c.put_object(Bucket=sb, Key=f"o/{i:04d}", Body=b"x" * 100), range(n)))
    state = tmp_path / "state"
    argv = migrate_argv(seaweed_a, sb, seaweed_b, db, state, "--concurrency", "1")
    env = ferry_env(seaweed_a, seaweed_b)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _finished(state / "ferry.db"):
            assert first.poll() is None, "finished before the second run could start"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-run, holding whatever it holds
        second = run_ferry(argv, env, timeout=60)
        assert second.code == 2, (second.stdout, second.stderr)
        assert f"job already running (pid {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # The lock died with its process: the same command resumes the job and finishes it.
    third = run_ferry(argv, env)
    assert third.code == 0, third.stderr
    assert third.summary["resumed"] is True
    assert (third.summary["total"], third.summary["failed"]) == (n, 0)
