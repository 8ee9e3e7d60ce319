"""The server's wall clock stepping back under a run: durations, speed and retry timers stay right."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

import ferry.runner.migration as migration
from ferry.db.api_models import migration_tasks
from ferry.db.database import open_database
from ferry.db.job_repo import Tally
from ferry.db.task_repo import RETRYING, RUNNING, SUCCEEDED, WAITING, TaskRepo
from ferry.runner.migration import LocalRunner, RunnerSettings, RunResult, _Speed
from ferry.secrets import SecretBox
from ferry.service.smn import publish_end

HOUR = 3600.0


class SteppedClock:
    """`time.time` that jumps an hour back when told to; everything else about `time` as it is."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _task(repo: TaskRepo, status: int = WAITING) -> int:
    now = time.time()
    return repo.insert({
        "project_id": uuid.uuid4().hex, "group_id": None, "group_type": "NORMAL_TASK", "name": "t",
        "description": "", "task_type": "prefix", "status": status, "priority": 2,
        "src_spec": {}, "dst_spec": {}, "options": {}, "bandwidth_policy": [], "secrets": None, "job_id": None,
        "run_mode": "full", "created_at": now, "updated_at": now, "elapsed": 0.0,
    })


def test_elapsed_and_speed_survive_the_clock_stepping_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = open_database(f"sqlite:///{tmp_path / 'ferry.db'}")
    repo = TaskRepo(eng)
    task_id = _task(repo)
    runner = LocalRunner(eng, SecretBox(os.urandom(32)), tmp_path,
                         RunnerSettings(poll_interval=0.05, progress_interval=0.05), publish_end=publish_end)
    clock = SteppedClock()
    monkeypatch.setattr(migration, "time", clock)
    speeds: list[int] = []

    async def run(row: Any, counters: Any, _limiter: Any) -> RunResult:
        for i in range(10):
            counters.bytes_copied += 1_000_000
            await asyncio.sleep(0.05)
            if i == 3:
                clock.offset = -HOUR  # the wall clock steps back an hour, mid-run
            speeds.append((await asyncio.to_thread(repo.get, row.id)).speed)  # type: ignore[union-attr]
        counters.success = 1
        return RunResult(Tally(1, 0, 0, 10_000_000, 0, 0), True)

    monkeypatch.setattr(runner, "_run", run)

    async def drive() -> None:
        loop = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(repo.get, task_id)).status != SUCCEEDED:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(drive())
    row = repo.get(task_id)
    assert row is not None
    # About half a second of work: not minus an hour (wall-clock arithmetic across the step gave -3599.5 s).
    assert 0.3 < row.elapsed < 30, row.elapsed
    assert all(0 <= s < 10**9 for s in speeds), speeds
    eng.dispose()


def test_a_retry_timed_before_the_clock_stepped_back_is_not_held_for_an_hour(tmp_path: Path) -> None:
    eng = open_database(f"sqlite:///{tmp_path / 'ferry.db'}")
    repo = TaskRepo(eng)
    stepped = _task(repo, status=RETRYING)
    soon = _task(repo, status=RETRYING)
    with eng.begin() as conn:
        # Set 10 s ahead by a clock that has since stepped back an hour: due in 3610 s by the clock now.
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == stepped)
                     .values(retry_at=time.time() + HOUR + 10))
        conn.execute(update(migration_tasks).where(migration_tasks.c.id == soon).values(retry_at=time.time() + 60))
    assert repo.claim("h/1/a", ttl=30) == []  # without a horizon, held
    # No retry is ever set further off than the runner's horizon (here 120 s): past it, the clock stepped.
    claimed = repo.claim("h/1/a", ttl=30, horizon=120)
    assert [r.id for r in claimed] == [stepped] and claimed[0].status == RUNNING
    eng.dispose()


def test_speed_is_measured_on_a_monotonic_clock() -> None:
    speed = _Speed(5.0)
    assert speed.update(100.0, 0) == 0
    assert speed.update(101.0, 1_000_000) == 1_000_000
    # A sample "before" the last one (a wall clock stepped back) gives no negative or absurd speed.
    assert 0 <= speed.update(99.0, 2_000_000) < 10**9
