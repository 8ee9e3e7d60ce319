"""Sync workers over in-memory stores: coalescing, retries with backoff, restores, deletes with a cap, leases."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

import sync_workers
from ferry.db.database import open_database
from ferry.db.sync_models import sync_tasks
from ferry.db.sync_repo import EventOutcome, SyncRepo, SyncTaskRow, SyncTaskSpec
from ferry.errors import ArchivedObjectError, TransientError
from ferry.objects import ObjectInfo, ObjectMeta, Restore
from ferry.runner.sync import SyncSettings, SyncWorkers
from ferry.storage.base import Backend
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import BackendWrapper

FAST = SyncSettings(
    reconcile_seconds=3600, tasks_refresh_seconds=0.05, lease_seconds=5, retry_base_seconds=0.02,
    retry_max_seconds=0.05, max_attempts=3, poll_seconds=0.05, restore_poll_seconds=0.05, node_id="unit",
)
SPEC = SyncTaskSpec("AWS", "us-east-1", "src", "cn-north-4", "dst")


PG_ADMIN = os.environ.get("FERRY_TEST_PG", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same queue on the embedded SQLite and on PostgreSQL (skipped when none is reachable)."""
    if request.param == "sqlite":
        eng = open_database(f"sqlite:///{tmp_path / 'sync.db'}")
        yield eng
        eng.dispose()
        return
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # not reachable here
        pytest.skip(f"PostgreSQL not reachable: {type(exc).__name__}")
    name = f"ferry_sync_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        eng = open_database(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
        try:
            yield eng
        finally:
            eng.dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Flaky(BackendWrapper):
    """Puts of keys in `failing` raise TransientError that many times (forever for -1)."""

    def __init__(self, inner: Backend, failing: dict[str, int]) -> None:
        super().__init__(inner)
        self.failing = failing

    async def put(self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
                  crc64: int | None = None):  # type: ignore[no-untyped-def]
        left = self.failing.get(key, 0)
        if left:
            self.failing[key] = left - 1
            raise TransientError("HTTP 503 SlowDown")
        return await self.inner.put(key, data, meta, storage_class=storage_class, crc64=crc64)


class Archive(BackendWrapper):
    """Keys starting with `cold/` are archived until restored; a restore takes `polls` HEADs, which say it is
    under way meanwhile (as `x-amz-restore: ongoing-request="true"`)."""

    def __init__(self, inner: Backend, polls: int = 0) -> None:
        super().__init__(inner)
        self.polls = polls
        self.asked: dict[str, int] = {}  # key -> HEADs seen since its restore was asked for
        self.restore_calls = 0
        self.refused = 0

    def _restored(self, key: str) -> bool:
        return key in self.asked and self.asked[key] >= self.polls

    async def head(self, key: str) -> ObjectInfo:
        info = await self.inner.head(key)
        if not key.startswith("cold/"):
            return info
        if key in self.asked:
            self.asked[key] += 1
        state = None if key not in self.asked else Restore.DONE if self._restored(key) else Restore.ONGOING
        return replace(info, storage_class="ARCHIVE", restore=state)

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        if key.startswith("cold/") and not self._restored(key):
            self.refused += 1
            raise ArchivedObjectError("object is in ARCHIVE and not restored", key=key)
        return await self.inner.read_object(key, if_match=if_match)

    async def restore(self, key: str, days: int) -> None:
        self.restore_calls += 1
        self.asked.setdefault(key, 0)


def _stores() -> tuple[MemoryBackend, MemoryBackend]:
    # Two stores: no server-side copy, so the streamed path (and its verification) is what runs.
    return MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")


async def _put(backend: Backend, key: str, data: bytes) -> None:
    await backend.put(key, data, ObjectMeta(content_type="text/plain"))


def _task(repo: SyncRepo, spec: SyncTaskSpec = SPEC, reconciled: bool = True) -> str:
    task_id = f"task-{time.monotonic_ns()}"
    assert repo.create_task(task_id, "project", spec, "sealed", time.time(), 5)
    if reconciled:
        # As if the initial full copy had run: these tests drive the event queue alone.
        with repo.engine.begin() as conn:
            conn.execute(sync_tasks.update().where(sync_tasks.c.id == task_id).values(reconciled_at=time.time()))
    return task_id


def running(engine: Engine, opener: Callable[[SyncTaskRow], tuple[Backend, Backend]],
            settings: SyncSettings = FAST) -> AbstractAsyncContextManager[SyncWorkers]:
    return sync_workers.running(engine, opener, settings)


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def _exists(backend: Backend, key: str) -> bool:
    try:
        await backend.head(key)
        return True
    except Exception:
        return False


def test_a_newer_event_during_work_keeps_the_key_pending(engine: Engine) -> None:
    repo = SyncRepo(engine)
    task_id = _task(repo)
    now = time.time()
    repo.enqueue(task_id, ["k", "k", "j"], now)
    first = {e.key: e for e in repo.claim("w", now, 30, 10)}
    assert set(first) == {"k", "j"} and repo.claim("other", now, 30, 10) == []  # leased
    repo.enqueue(task_id, ["k"], now)  # arrives mid-copy
    repo.complete([EventOutcome(task_id, "k", first["k"].version, "success", size=1),
                   EventOutcome(task_id, "j", first["j"].version, "skip")], now)
    again = repo.claim("w", now, 30, 10)
    assert [(e.key, e.version) for e in again] == [("k", first["k"].version + 1)]
    totals = repo.stat_totals(task_id, 0, now + 600)
    assert (totals.request, totals.success, totals.skip, totals.size) == (4, 1, 1, 1)


async def test_events_copy_and_transient_failures_retry_then_give_up(engine: Engine) -> None:
    repo = SyncRepo(engine)
    task_id = _task(repo)
    src, dst = _stores()
    flaky = Flaky(dst, {"twice": 2, "never": -1})
    for key in ("ok", "twice", "never"):
        await _put(src, key, key.encode())
    async with running(engine, lambda _row: (src, flaky)):
        repo.enqueue(task_id, ["ok", "twice", "never"], time.time())
        await _until(lambda: repo.stat_totals(task_id, 0, 2e10).failure == 1)
        await _until(lambda: repo.stat_totals(task_id, 0, 2e10).success == 2)
    assert await _exists(dst, "ok") and await _exists(dst, "twice") and not await _exists(dst, "never")
    problems, count = repo.problems("project", task_id, 10, 0)
    assert count == 1 and problems[0].key == "never" and problems[0].state == "failed"
    assert problems[0].attempts == FAST.max_attempts and "SlowDown" in (problems[0].reason or "")
    assert repo.pending_count(task_id) == 0


async def test_archived_sources_restore_or_fail(engine: Engine) -> None:
    repo = SyncRepo(engine)
    without = _task(repo)
    with_restore = _task(repo, replace(SPEC, enable_restore=True))
    src, dst = _stores()
    archive = Archive(src)
    await _put(src, "cold/a", b"frozen")
    async with running(engine, lambda _row: (archive, dst)):
        repo.enqueue(without, ["cold/a"], time.time())
        await _until(lambda: repo.stat_totals(without, 0, 2e10).failure == 1)
        repo.enqueue(with_restore, ["cold/a"], time.time())
        await _until(lambda: repo.stat_totals(with_restore, 0, 2e10).success == 1)
    (problem,), _ = repo.problems("project", without, 10, 0)
    assert "enable_restore is off" in (problem.reason or "") and problem.state == "failed"
    assert archive.restore_calls == 1 and (await dst.read_object("cold/a"))[1] == b"frozen"


async def test_a_restore_under_way_is_waited_for_without_asking_or_reading_again(engine: Engine) -> None:
    repo = SyncRepo(engine)
    task_id = _task(repo, replace(SPEC, enable_restore=True))
    src, dst = _stores()
    archive = Archive(src, polls=4)
    await _put(src, "cold/b", b"thawed")
    async with running(engine, lambda _row: (archive, dst)):
        repo.enqueue(task_id, ["cold/b"], time.time())
        await _until(lambda: repo.stat_totals(task_id, 0, 2e10).success == 1)
    # One refused read before the restore was asked for; then the HEADs said "under way" until it was done.
    assert (archive.restore_calls, archive.refused) == (1, 1)
    assert (await dst.read_object("cold/b"))[1] == b"thawed"


async def test_reconciliation_copies_and_deletes_only_under_the_cap(engine: Engine) -> None:
    repo = SyncRepo(engine)
    task_id = _task(repo, reconciled=False)
    src, dst = _stores()
    for i in range(20):
        await _put(src, f"k{i:02d}", b"x" * i)
    for key in ("stale-1", "stale-2", "stale-3"):
        await _put(dst, key, b"old")

    def finished() -> bool:
        row = repo.get_task(task_id)
        return row is not None and row.reconciled_at is not None

    # Default: deletes are not propagated.
    async with running(engine, lambda _row: (src, dst)):
        await _until(finished)
    assert all([await _exists(dst, f"k{i:02d}") for i in range(20)]) and await _exists(dst, "stale-1")
    assert repo.stat_totals(task_id, 0, 2e10).success == 20

    # Enabled with a cap below the candidates: nothing is deleted and the reason is recorded.
    repo.request_reconcile(task_id)
    async with running(engine, lambda _row: (src, dst), replace(FAST, propagate_deletes=True, delete_cap=2)):
        await _until(finished)
    row = repo.get_task(task_id)
    assert row is not None and "none deleted" in (row.last_error or "")
    assert all([await _exists(dst, f"stale-{i}") for i in (1, 2, 3)])

    # Within the cap: the orphans go, everything with a source stays, nothing is copied twice.
    repo.request_reconcile(task_id)
    async with running(engine, lambda _row: (src, dst), replace(FAST, propagate_deletes=True, delete_cap=3)):
        await _until(finished)
    assert not any([await _exists(dst, f"stale-{i}") for i in (1, 2, 3)])
    assert all([await _exists(dst, f"k{i:02d}") for i in range(20)])
    assert repo.stat_totals(task_id, 0, 2e10).success == 20
    row = repo.get_task(task_id)
    assert row is not None and row.last_error is None


async def test_reconciliation_copies_and_deletes_from_one_listing_of_each_bucket(engine: Engine) -> None:
    """One pass of the planner says what to copy and what has no source any more: each bucket is listed once."""
    repo = SyncRepo(engine)
    task_id = _task(repo, reconciled=False)
    src, dst = _stores()
    await _put(src, "new", b"n")
    await _put(src, "same", b"s")
    await _put(dst, "same", b"s")
    await _put(dst, "orphan", b"o")

    class Listed(BackendWrapper):
        lists = 0

        async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
            self.lists += 1
            async for info in self.inner.list(prefix, start_after):
                yield info

    listed_src, listed_dst = Listed(src), Listed(dst)
    async with running(engine, lambda _row: (listed_src, listed_dst), replace(FAST, propagate_deletes=True)):
        await _until(lambda: (row := repo.get_task(task_id)) is not None and row.reconciled_at is not None)
    assert sorted([o.key async for o in dst.list()]) == ["new", "same"]
    assert (listed_src.lists, listed_dst.lists) == (1, 1)


async def test_given_up_keys_are_listed_in_the_destination_and_spared_by_deletes(engine: Engine) -> None:
    repo = SyncRepo(engine)
    task_id = _task(repo)
    src, dst = _stores()
    await _put(src, "ok", b"fine")
    list_key = f"oms/sync_task/{task_id}/failed_object_lists/failed_list.txt"

    deleted: list[str] = []

    class Deletes(BackendWrapper):
        async def delete(self, key: str) -> None:
            deleted.append(key)
            await self.inner.delete(key)

    watched = Deletes(dst)
    async with running(engine, lambda _row: (src, watched)):
        repo.enqueue(task_id, ["ok", "gone/ü"], time.time())
        await _until(lambda: repo.stat_totals(task_id, 0, 2e10).failure == 1)
        async with asyncio.timeout(10):  # written within a poll or two of the failure
            while not await _exists(dst, list_key):
                await asyncio.sleep(0.02)
    lines = (await dst.read_object(list_key))[1].decode().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["gone/ü"]
    assert json.loads(lines[0])["reason"] == "the source object does not exist"

    # A reconciliation that propagates deletes: the list has no source twin, yet it is not an orphan.
    repo.request_reconcile(task_id)
    async with running(engine, lambda _row: (src, watched), replace(FAST, propagate_deletes=True)):
        await _until(lambda: (row := repo.get_task(task_id)) is not None and row.reconciled_at is not None)
    assert list_key not in deleted and await _exists(dst, list_key)
    assert (await dst.read_object(list_key))[1].decode().splitlines() == lines


async def test_a_restarted_node_takes_back_its_own_leases_at_once(engine: Engine) -> None:
    repo = SyncRepo(engine)
    task_id = _task(repo)
    src, dst = _stores()
    await _put(src, "k", b"v")
    repo.enqueue(task_id, ["k"], time.time())
    assert len(repo.claim("unit/dead-process", time.time(), 3600, 10)) == 1  # leased for an hour, then killed
    async with running(engine, lambda _row: (src, dst)):
        await _until(lambda: repo.stat_totals(task_id, 0, 2e10).success == 1)


async def test_stopped_tasks_keep_their_events_until_started(engine: Engine) -> None:
    repo = SyncRepo(engine)
    task_id = _task(repo)
    src, dst = _stores()
    await _put(src, "k", b"v")
    assert repo.stop_task("project", task_id, time.time())
    repo.enqueue(task_id, ["k"], time.time())
    async with running(engine, lambda _row: (src, dst)):
        await asyncio.sleep(0.3)
        assert not await _exists(dst, "k") and repo.pending_count(task_id) == 1
        assert repo.start_task("project", task_id, "sealed", time.time())
        # Starting also reconciles: the key is copied by its event or by that pass (maybe both), once done
        # the queue is empty.
        await _until(lambda: repo.stat_totals(task_id, 0, 2e10).success >= 1 and repo.pending_count(task_id) == 0)
    assert await _exists(dst, "k")


def test_group_commit_carries_concurrent_requests_and_isolates_a_bad_one(engine: Engine) -> None:
    import threading

    repo = SyncRepo(engine)
    task_id = _task(repo)
    errors: list[BaseException] = []

    def send(j: int) -> None:
        for i in range(20):
            try:
                # Requests for a task that does not exist break their own commit, never the others'.
                repo.enqueue("no-such-task" if (j, i) == (3, 7) else task_id, [f"k{j}-{i}", f"k{j}-{i}"],
                             time.time())
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=send, args=(j,)) for j in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1
    assert repo.pending_count(task_id) == 8 * 20 - 1
    assert repo.stat_totals(task_id, 0, 2e10).request == 2 * (8 * 20 - 1)


async def test_event_committer_commits_concurrent_requests_and_isolates_bad_ones(engine: Engine) -> None:
    """The API's event path: requests awaited on the loop, committed by one thread, each refused on its own."""
    import threading

    from ferry.errors import NotFoundError
    from ferry.secrets import SecretBox
    from ferry.service.sync import SyncContext, TaskStateError, create_sync_events

    wakes: list[float] = []
    ctx = SyncContext(engine, SecretBox(os.urandom(32)), wake=lambda: wakes.append(time.time()))
    task_id, stopped = _task(ctx.repo), _task(ctx.repo)
    assert ctx.repo.stop_task("project", stopped, time.time())

    async def send(i: int) -> int | BaseException:
        target = {37: "no-such-task", 61: stopped}.get(i, task_id)
        try:
            return await create_sync_events(ctx, "project", target, [f"k{i}", f"k{i}", "shared%20key"])
        except Exception as exc:
            return exc

    def committers() -> int:
        return sum(t.name == "ferry-event-commits" for t in threading.enumerate())

    before = committers()
    results = await asyncio.gather(*(send(i) for i in range(200)))
    assert isinstance(results[37], NotFoundError) and isinstance(results[61], TaskStateError)
    assert [r for i, r in enumerate(results) if i not in (37, 61)] == [3] * 198
    assert ctx.repo.pending_count(task_id) == 198 + 1  # k0..k199 less the two refused, plus "shared key"
    assert ctx.repo.pending_count(stopped) == 0
    assert ctx.repo.stat_totals(task_id, 0, 2e10).request == 3 * 198
    assert 1 <= len(wakes) <= 198  # woken once per commit, and commits are shared
    assert committers() - before <= 1  # one thread carried all 200 requests
    # Another project's caller cannot reach the task, whatever its id.
    with pytest.raises(NotFoundError):
        await create_sync_events(ctx, "other-project", task_id, ["k"])


async def test_event_committer_thread_ends_when_idle_and_comes_back(tmp_path: Path) -> None:
    from ferry.secrets import SecretBox
    from ferry.service.sync import SyncContext, create_sync_events

    engine = open_database(f"sqlite:///{tmp_path / 'idle.db'}")
    ctx = SyncContext(engine, SecretBox(os.urandom(32)))
    ctx.committer.IDLE_SECONDS = 0.05  # type: ignore[misc]
    task_id = _task(ctx.repo)
    assert await create_sync_events(ctx, "project", task_id, ["a"]) == 1
    await _until(lambda: ctx.committer._thread is None)
    assert await create_sync_events(ctx, "project", task_id, ["b"]) == 1
    assert ctx.repo.pending_count(task_id) == 2
    engine.dispose()
