"""One copy-and-verify path: a migration task and a sync task with the same consistency_check verify alike."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.db.sync_models import sync_tasks
from ferry.db.sync_repo import SyncRepo, SyncTaskSpec
from ferry.objects import ObjectInfo, ObjectMeta, PutResult
from ferry.runner.migration import RunnerSettings, transfer_options
from ferry.runner.sync import SyncSettings
from ferry.service.transfers import run_migration
from ferry.storage.base import Backend
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import BackendWrapper
from sync_workers import running

CHECKS = ["size_last_modified", "crc64", "no_check"]
# One attempt per key: the calls counted are those of one copy, not of retries.
SETTINGS = SyncSettings(
    reconcile_seconds=3600, tasks_refresh_seconds=0.05, lease_seconds=5, retry_base_seconds=0.02,
    retry_max_seconds=0.05, max_attempts=1, poll_seconds=0.05, node_id="unit",
)
BODY = b"every byte counts"


class Store(BackendWrapper):
    """Counts the calls made for each key; `misreport` keeps one byte less than it is sent and answers with an
    ETag that is no MD5 (as a store encrypting under a KMS key does), so nothing in the write's answer shows
    the loss."""

    def __init__(self, inner: Backend, *, misreport: bool = False) -> None:
        super().__init__(inner)
        self.misreport = misreport
        self.calls: dict[str, Counter[str]] = {}

    def _count(self, key: str, call: str) -> None:
        self.calls.setdefault(key, Counter())[call] += 1

    async def head(self, key: str) -> ObjectInfo:
        self._count(key, "head")
        return await self.inner.head(key)

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        self._count(key, "read_object")
        return await self.inner.read_object(key, if_match=if_match)

    async def put(self, key: str, data: bytes, meta: ObjectMeta, **kw: Any) -> PutResult:
        self._count(key, "put")
        result = await self.inner.put(key, data[:-1] if self.misreport else data, meta, **kw)
        return dataclasses.replace(result, etag=f"{result.etag}-kms") if self.misreport else result

    async def delete(self, key: str) -> None:
        self._count(key, "delete")
        await self.inner.delete(key)


def _task_row(check: str, policy: str = "STANDARD") -> Any:
    """What runner.local reads of a migration task's row (task groups run their tasks the same way)."""
    return SimpleNamespace(
        options={"object_overwrite_mode": "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE", "consistency_check": check,
                 "dst_storage_policy": policy},
        dst_spec={"profile": "huaweicloud"},
    )


async def _migrate(src: Backend, dst: Backend, tmp_path: Path, check: str,
                   policy: str = "STANDARD") -> list[dict[str, Any]]:
    """Run a migration task's transfer; its failed objects as reported."""
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'jobs.db'}"))
    opts = transfer_options(_task_row(check, policy), RunnerSettings(concurrency=4))
    summary = await run_migration(src, dst, repo, opts, report_dir=tmp_path / "reports", spec={})
    assert summary.error is None
    if summary.report is None:
        return []
    return [json.loads(line) for line in Path(summary.report).read_text().splitlines()]


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    eng = open_database(f"sqlite:///{tmp_path / 'sync.db'}")
    yield eng
    eng.dispose()


def _sync_task(repo: SyncRepo, check: str, policy: str = "STANDARD", reconciled: bool = False) -> str:
    task_id = f"task-{time.monotonic_ns()}"
    spec = SyncTaskSpec("AWS", "us-east-1", "src", "cn-north-4", "dst", consistency_check=check,
                        dst_storage_policy=policy)
    assert repo.create_task(task_id, "project", spec, "sealed", time.time(), 5)
    if reconciled:
        with repo.engine.begin() as conn:
            conn.execute(sync_tasks.update().where(sync_tasks.c.id == task_id).values(reconciled_at=time.time()))
    return task_id


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def _reconciled(repo: SyncRepo, task_id: str) -> Callable[[], bool]:
    def done() -> bool:
        row = repo.get_task(task_id)
        return row is not None and row.reconciled_at is not None

    return done


async def _source(key: str = "k", storage_class: str | None = None) -> MemoryBackend:
    src = MemoryBackend(MemoryStore(), "src")
    await src.put(key, BODY, ObjectMeta(content_type="text/plain"), storage_class=storage_class)
    return src


async def _holds(backend: Backend, key: str) -> bool:
    return key in [o.key async for o in backend.list()]


def _outcome(repo: SyncRepo, task_id: str) -> tuple[int, int, str | None]:
    totals = repo.stat_totals(task_id, 0, 2e10)
    problems, _ = repo.problems("project", task_id, 10, 0)
    return totals.success, totals.failure, problems[0].reason if problems else None


@pytest.mark.parametrize("misreport", [False, True], ids=["honest", "misreporting"])
@pytest.mark.parametrize("check", CHECKS)
async def test_a_sync_task_and_a_migration_task_verify_the_same_way(
        tmp_path: Path, engine: Engine, check: str, misreport: bool) -> None:
    """Same consistency_check, same store: the same verdict, the same reason and the same requests per object,
    whichever runs the copy (a migration task, a sync reconciliation, a sync event)."""
    migration_dst = Store(MemoryBackend(MemoryStore(), "dst"), misreport=misreport)
    failures = await _migrate(await _source(), migration_dst, tmp_path, check)

    repo = SyncRepo(engine)
    reconciling = _sync_task(repo, check)
    reconcile_dst = Store(MemoryBackend(MemoryStore(), "dst"), misreport=misreport)
    src = await _source()
    async with running(engine, lambda _row: (src, reconcile_dst), SETTINGS):
        await _until(_reconciled(repo, reconciling))
    evented = _sync_task(repo, check, reconciled=True)
    event_dst = Store(MemoryBackend(MemoryStore(), "dst"), misreport=misreport)
    async with running(engine, lambda _row: (src, event_dst), SETTINGS):
        repo.enqueue(evented, ["k"], time.time())
        await _until(lambda: sum(_outcome(repo, evented)[:2]) == 1)

    rejected = misreport and check != "no_check"
    migrated = (0, 1, failures[0]["reason"]) if failures else (1, 0, None)
    assert migrated == _outcome(repo, reconciling) == _outcome(repo, evented)
    if rejected:
        assert migrated[2] == f"size differs: source {len(BODY)}, destination {len(BODY) - 1}"
    else:
        assert migrated == (1, 0, None)
    # The written object proves itself by its ETag (the MD5 of the bytes sent) unless the store's answer
    # proves nothing: then one HEAD checks it, and what failed is removed.
    expected = Counter(put=1, head=1, delete=1) if rejected else Counter(put=1)
    assert migration_dst.calls["k"] == reconcile_dst.calls["k"] == expected
    # An event also looks at the destination once to decide whether the key needs copying at all.
    assert event_dst.calls["k"] == expected + Counter(head=1)
    for dst in (migration_dst, reconcile_dst, event_dst):
        assert await _holds(dst, "k") is not rejected


@pytest.mark.parametrize(("policy", "source_class", "written"), [
    ("SRC_STORAGE_MAPPING", "IA", "IA"),
    ("SRC_STORAGE_MAPPING", "STANDARD", None),
    ("ARCHIVE", "IA", "ARCHIVE"),
    ("STANDARD", "IA", None),
])
async def test_a_sync_task_and_a_migration_task_write_the_same_storage_class(
        tmp_path: Path, engine: Engine, policy: str, source_class: str, written: str | None) -> None:
    migration_dst = MemoryBackend(MemoryStore(), "dst")
    assert await _migrate(await _source("k", source_class), migration_dst, tmp_path, "size_last_modified",
                          policy) == []

    repo = SyncRepo(engine)
    task_id = _sync_task(repo, "size_last_modified", policy)
    sync_dst = MemoryBackend(MemoryStore(), "dst")
    src = await _source("k", source_class)
    async with running(engine, lambda _row: (src, sync_dst), SETTINGS):
        await _until(_reconciled(repo, task_id))
    assert _outcome(repo, task_id) == (1, 0, None)
    assert (await migration_dst.head("k")).storage_class == (await sync_dst.head("k")).storage_class == written
