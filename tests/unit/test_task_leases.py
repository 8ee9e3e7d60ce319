"""Task claims and leases (SQLite and PostgreSQL), bandwidth windows, selections, and the runner's retry path."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update

from ferry.db.api_models import migration_tasks
from ferry.db.database import open_database
from ferry.db.task_repo import FAILED, PAUSED, PAUSING, RETRYING, RUNNING, WAITING, TaskRepo, owner_is_dead
from ferry.engine.bandwidth import limit_at, parse_policy
from ferry.runner.local import LocalRunner, RunnerSettings, TaskFailure, read_list_keys
from ferry.secrets import SecretBox
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.selection import SelectedBackend, normalise
from pgdb import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = open_database(f"sqlite:///{tmp_path / 'ferry.db'}")
        yield eng
        eng.dispose()
        return
    gen = pg_database()
    url = next(gen)
    eng = open_database(url)
    try:
        yield eng
    finally:
        eng.dispose()
        gen.close()


def _task(repo: TaskRepo, priority: int = 2, status: int = WAITING, created: float | None = None) -> int:
    now = created or time.time()
    return repo.insert({
        "project_id": uuid.uuid4().hex, "group_id": None, "group_type": "NORMAL_TASK", "name": "t",
        "description": "", "task_type": "prefix", "status": status, "priority": priority,
        "src_spec": {}, "dst_spec": {}, "options": {}, "bandwidth_policy": [], "secrets": None, "job_id": None,
        "run_mode": "full", "created_at": now, "updated_at": now, "elapsed": 0.0,
    })


def test_claims_follow_priority_and_never_double(engine: Engine) -> None:
    repo = TaskRepo(engine)
    low = _task(repo, priority=1, created=1.0)
    high = _task(repo, priority=3, created=3.0)
    mid = _task(repo, priority=2, created=2.0)
    first = repo.claim("host-x/1/a", ttl=30, limit=2)
    assert [r.id for r in first] == [high, mid] and all(r.status == RUNNING for r in first)
    # Leased rows are not claimable by anyone else while the lease lasts.
    assert [r.id for r in repo.claim("host-y/2/b", ttl=30, limit=5)] == [low]
    assert repo.claim("host-z/3/c", ttl=30) == []
    # A heartbeat by someone who does not hold the lease changes nothing.
    assert repo.heartbeat(high, "host-y/2/b", 30, {"success_num": 5}) is None
    hb = repo.heartbeat(high, "host-x/1/a", 30, {"success_num": 5})
    assert hb is not None and hb.success_num == 5
    # An expired lease is taken over; a stop requested meanwhile completes to paused without a run.
    with engine.begin() as conn:
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == mid).values(lease_expires=0.0))
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == low)
                     .values(lease_expires=0.0, status=PAUSING))
    taken = repo.claim("host-z/3/c", ttl=30)
    assert [r.id for r in taken] == [mid]
    assert repo.get(low).status == PAUSED  # type: ignore[union-attr]
    assert repo.release(mid, "host-x/1/a", {"status": FAILED}) is False


def test_retrying_waits_for_its_time_and_dead_owners_are_taken_over(engine: Engine) -> None:
    repo = TaskRepo(engine)
    later = _task(repo, status=RETRYING)
    with engine.begin() as conn:
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == later).values(retry_at=time.time() + 60))
    assert repo.claim("h/1/a", ttl=30) == []
    # A lease held by a process of this host that no longer exists is free at once, whatever its expiry.
    import socket
    import subprocess

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{socket.gethostname()}/{gone.stdout.strip()}/x"
    assert owner_is_dead(dead_owner) and not owner_is_dead(f"{socket.gethostname()}/{os.getpid()}/y")
    running = _task(repo, status=RUNNING)
    with engine.begin() as conn:
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == running)
                     .values(lease_owner=dead_owner, lease_expires=time.time() + 3600))
    assert [r.id for r in repo.claim("h/1/a", ttl=30)] == [running]


def test_bandwidth_windows() -> None:
    windows = parse_policy([
        {"start": "22:00", "end": "06:00", "max_bandwidth": 1_048_576},
        {"start": "09:00", "end": "18:00", "max_bandwidth": 5_242_880},
    ])
    at = lambda h, m: limit_at(windows, datetime(2026, 1, 1, h, m))  # noqa: E731
    assert (at(23, 0), at(5, 59), at(6, 0), at(9, 0), at(17, 59), at(18, 0)) == (
        1_048_576, 1_048_576, None, 5_242_880, 5_242_880, None)
    assert limit_at(parse_policy([{"start": "00:00", "end": "00:00", "max_bandwidth": 7}]),
                    datetime(2026, 1, 1, 13, 37)) == 7


def test_selection_lists_only_what_was_chosen() -> None:
    assert normalise(["a/", "a/b/", "c"], ["a/x", "b", "cz", "d"]) == [("a/", True), ("b", False), ("c", True),
                                                                       ("d", False)]
    store = MemoryStore("sel")
    backend = MemoryBackend(store, "bucket")

    async def run() -> tuple[list[str], list[str], list[str]]:
        for key in ("a/1", "a/2", "b", "bb", "c/1", "z"):
            await backend.put(key, b"x", _meta())
        chosen = SelectedBackend(backend, normalise(["a/"], ["b", "missing", "c/1"]))
        keys = [o.key async for o in chosen.list()]
        after = [o.key async for o in chosen.list(start_after="a/2")]
        return keys, after, chosen.missing

    keys, after, missing = asyncio.run(run())
    assert keys == ["a/1", "a/2", "b", "c/1"] and after == ["b", "c/1"] and "missing" in missing


def _meta() -> Any:
    from ferry.objects import ObjectMeta

    return ObjectMeta(content_type="text/plain")


def test_list_file_parsing() -> None:
    async def keys(data: bytes) -> list[str]:
        backend = MemoryBackend(MemoryStore("lists"), "bucket")
        await backend.put("list.txt", data, _meta())
        return await read_list_keys(backend, "list.txt")

    assert asyncio.run(keys("\ufeffa%2Fb\r\n c \n\nd%20e\na%2Fb\n".encode())) == ["a/b", "c", "d e"]
    for data, code in ((b"", "TRF.0017"), (b"\n\n", "TRF.0017"), (b"\xff\xfe", "TRF.0016"),
                       (b"x" * 70000, "TRF.0018"), (b"a\n" + b"x" * 300_000, "TRF.0018")):
        with pytest.raises(TaskFailure) as info:
            asyncio.run(keys(data))
        assert info.value.code == code


def test_runner_retries_unexpected_failures_then_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = open_database(f"sqlite:///{tmp_path / 'ferry.db'}")
    repo = TaskRepo(eng)
    box = SecretBox(os.urandom(32))
    task_id = _task(repo)
    runner = LocalRunner(eng, box, tmp_path, RunnerSettings(poll_interval=0.05, progress_interval=0.05,
                                                            retry_attempts=2, retry_delay=0.1))

    async def broken(*_args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "_run", broken)
    seen: list[int] = []

    async def drive() -> None:
        loop = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = await asyncio.to_thread(repo.get, task_id)
            assert row is not None
            seen.append(row.status)
            if row.status == FAILED:
                break
            await asyncio.sleep(0.02)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(drive())
    row = repo.get(task_id)
    assert row is not None and row.status == FAILED and row.error_code == "TRF.0001" and row.attempts == 2
    assert RETRYING in seen and row.lease_owner is None
    eng.dispose()



def test_tasks_waiting_too_long_fail_with_trf_0003(engine: Engine, tmp_path: Path) -> None:
    repo = TaskRepo(engine)
    old = time.time() - 3600
    stale = _task(repo, created=old)
    fresh = _task(repo)
    running = _task(repo, status=RUNNING, created=old)
    leased = _task(repo, created=old)
    with engine.begin() as conn:
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == stale).values(secrets="sealed"))
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == leased)
                     .values(lease_owner="h/1/a", lease_expires=time.time() + 60))
    # No slot to run anything: the runner's only work is to notice the stale task.
    runner = LocalRunner(engine, SecretBox(os.urandom(32)), tmp_path,
                         RunnerSettings(max_tasks=0, poll_interval=0.05, max_wait=1800, expiry_interval=0.05))

    async def drive() -> None:
        loop = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(repo.get, stale)).status != FAILED:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(drive())
    row = repo.get(stale)
    assert row is not None and (row.error_code, row.secrets) == ("TRF.0003", None) and row.finished_at
    assert [repo.get(i).status for i in (fresh, running, leased)] == [WAITING, RUNNING, WAITING]  # type: ignore[union-attr]
