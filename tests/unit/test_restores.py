"""`enable_restore` in the engine: archived objects are restored ahead of the copy, tracked in the job database,
copied as they come back while the rest goes on; without it they fail at once with a clear reason."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.engine.progress import Counters
from ferry.engine.restores import RESTORE, RestorePolicy
from ferry.errors import ArchivedObjectError
from ferry.objects import ObjectInfo, ObjectMeta, Restore
from ferry.service.transfers import Summary, run_migration
from ferry.storage.base import Capabilities
from ferry.storage.memory import MemoryBackend
from ferry.storage.wrappers import BackendWrapper

POLL = 0.05


class Archive(BackendWrapper):
    """Keys under `cold/` are archived: refused on read until a restore was asked for and `polls` HEADs saw it
    under way. `listed`: the listing names their class (else only a refused read tells); `silent`: HEAD says
    nothing of restores (as a store without a restore status header)."""

    def __init__(self, inner: MemoryBackend, polls: int = 2, *, listed: bool = True, silent: bool = False) -> None:
        super().__init__(inner)
        self.polls, self.listed, self.silent = polls, listed, silent
        self.requests: collections.Counter[str] = collections.Counter()
        self.looks: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self.inner.capabilities, restore=True)

    def _state(self, key: str) -> Restore | None:
        if not key.startswith("cold/") or not self.requests[key]:
            return None
        return Restore.DONE if self.looks[key] >= self.polls else Restore.ONGOING

    def _check(self, key: str) -> None:
        if key.startswith("cold/") and self._state(key) is not Restore.DONE:
            self.refused[key] += 1
            raise ArchivedObjectError(f"read {key}: HTTP 403 InvalidObjectState (archived; restore it first)",
                                      key=key)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for o in self.inner.list(prefix, start_after):
            cold = o.key.startswith("cold/") and self.listed
            yield dataclasses.replace(o, storage_class="ARCHIVE") if cold else o

    async def head(self, key: str) -> ObjectInfo:
        info = await self.inner.head(key)
        if not key.startswith("cold/"):
            return info
        if self.requests[key]:
            self.looks[key] += 1
        return dataclasses.replace(info, storage_class="ARCHIVE",
                                   restore=None if self.silent else self._state(key))

    async def read(self, key: str, **kw: Any) -> bytes:
        self._check(key)
        return await self.inner.read(key, **kw)

    async def read_object(self, key: str, **kw: Any) -> tuple[ObjectInfo, bytes]:
        self._check(key)
        return await self.inner.read_object(key, **kw)

    async def read_stream(self, key: str, **kw: Any) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        self._check(key)
        return await self.inner.read_stream(key, **kw)

    async def restore(self, key: str, days: int) -> None:
        self.requests[key] += 1
        self.looks[key] = 0


def _opts(restore: bool = True, poll: float = POLL) -> TransferOptions:
    return TransferOptions(copy=CopyOptions(), concurrency=4,
                           restore=RestorePolicy(days=1, poll_seconds=poll) if restore else None)


async def _stores(cold: int = 3, hot: int = 3) -> tuple[MemoryBackend, MemoryBackend, dict[str, bytes]]:
    src, dst = MemoryBackend(bucket="src"), MemoryBackend(bucket="dst")
    bodies = {f"cold/{i}": os.urandom(50 + i) for i in range(cold)}
    bodies.update({f"hot/{i}": os.urandom(9) for i in range(hot)})
    for k, v in bodies.items():
        await src.put(k, v, ObjectMeta())
    return src, dst, bodies


async def _migrate(src: Any, dst: Any, tmp_path: Path, opts: TransferOptions,
                   counters: Counters | None = None) -> Summary:
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    return await run_migration(src, dst, repo, opts, report_dir=tmp_path / "reports", spec={}, counters=counters)


async def _copied(dst: MemoryBackend) -> dict[str, bytes]:
    return {o.key: await dst.read(o.key) async for o in dst.list()}


@pytest.mark.parametrize("listed,silent", [(True, False), (False, False), (True, True)])
async def test_archived_objects_are_restored_once_then_copied(tmp_path: Path, listed: bool, silent: bool) -> None:
    src, dst, bodies = await _stores()
    archive = Archive(src, listed=listed, silent=silent)
    counters = Counters()
    summary = await asyncio.wait_for(_migrate(archive, dst, tmp_path, _opts(), counters), 60)
    assert (summary.success, summary.failed, summary.restoring, summary.total) == (6, 0, 0, 6)
    assert await _copied(dst) == bodies
    assert counters.restoring == 0 and counters.success == 6
    cold = [k for k in bodies if k.startswith("cold/")]
    if silent:
        # No status to watch: the copy is tried a poll after each request, and a refusal asks again.
        assert all(archive.requests[k] >= 1 for k in cold)
    else:
        assert archive.requests == {k: 1 for k in cold}
        if listed:
            assert not archive.refused  # the listing's class sent them to a restore without a refused read


async def test_without_enable_restore_archived_objects_fail_at_once_and_the_rest_is_copied(tmp_path: Path) -> None:
    src, dst, bodies = await _stores()
    archive = Archive(src)
    started = time.monotonic()
    summary = await _migrate(archive, dst, tmp_path, _opts(restore=False))
    assert time.monotonic() - started < 30
    assert (summary.success, summary.failed) == (3, 3) and not archive.requests
    assert set(await _copied(dst)) == {k for k in bodies if k.startswith("hot/")}
    assert summary.report is not None
    reasons = [line for line in Path(summary.report).read_text().splitlines()]
    assert len(reasons) == 3 and all("enable_restore" in r and "archived" in r for r in reasons)


async def test_a_store_with_nothing_to_restore_copies_archive_classes_without_waiting(tmp_path: Path) -> None:
    src, dst = MemoryBackend(bucket="src"), MemoryBackend(bucket="dst")
    await src.put("cold", b"c", ObjectMeta(), storage_class="ARCHIVE")
    assert [o.storage_class async for o in src.list()] == ["ARCHIVE"] and not src.capabilities.restore
    started = time.monotonic()
    summary = await _migrate(src, dst, tmp_path, _opts(poll=60))
    assert summary.success == 1 and time.monotonic() - started < 30


async def test_a_restart_watches_the_restores_already_asked_for_and_asks_no_more(tmp_path: Path) -> None:
    src, dst, bodies = await _stores()
    archive = Archive(src, polls=10**9)  # restores never come back during the first run
    counters = Counters()
    run = asyncio.ensure_future(_migrate(archive, dst, tmp_path, _opts(), counters))
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    deadline = time.monotonic() + 30
    # The rest of the job goes on while the archived objects wait.
    while time.monotonic() < deadline:
        hot_done = {k for k in await _copied(dst)} == {k for k in bodies if k.startswith("hot/")}
        rows = [r for j in _jobs(repo) for r in repo.iter_results(j, RESTORE)]
        if hot_done and len(rows) == 3 and counters.restoring == 3 and sum(archive.requests.values()) == 3:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"hot objects not copied or restores not recorded: {counters}")
    assert not run.done()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    # The restores finish while nothing runs; the next run copies the objects without asking again.
    archive.polls = 0
    summary = await asyncio.wait_for(_migrate(archive, dst, tmp_path, _opts()), 60)
    assert summary.resumed and (summary.success, summary.failed, summary.restoring) == (6, 0, 0)
    assert await _copied(dst) == bodies
    assert archive.requests == {k: 1 for k in bodies if k.startswith("cold/")}


async def test_a_restarted_job_without_enable_restore_fails_what_waited(tmp_path: Path) -> None:
    src, dst, _ = await _stores(cold=2, hot=0)
    archive = Archive(src, polls=10**9)
    counters = Counters()
    run = asyncio.ensure_future(_migrate(archive, dst, tmp_path, _opts(), counters))
    deadline = time.monotonic() + 30
    while counters.restoring < 2 or sum(archive.requests.values()) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.8)  # the recorder writes its batch
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    summary = await _migrate(archive, dst, tmp_path, _opts(restore=False))
    assert (summary.failed, summary.restoring) == (2, 0)


def _jobs(repo: JobRepo) -> list[str]:
    with repo.db.begin() as tx:
        return [r[0] for r in tx.execute("SELECT id FROM jobs")]


async def test_many_archived_objects_are_copied_with_bounded_concurrency(tmp_path: Path) -> None:
    src, dst, bodies = await _stores(cold=300, hot=0)

    class Gauged(Archive):
        now = peak = 0

        async def read_object(self, key: str, **kw: Any) -> tuple[ObjectInfo, bytes]:
            self._check(key)
            Gauged.now += 1
            Gauged.peak = max(Gauged.peak, Gauged.now)
            try:
                await asyncio.sleep(0.001)
                return await self.inner.read_object(key, **kw)
            finally:
                Gauged.now -= 1

    archive = Gauged(src, polls=1)
    opts = dataclasses.replace(_opts(), concurrency=4)
    summary = await asyncio.wait_for(_migrate(archive, dst, tmp_path, opts), 120)
    assert (summary.success, summary.failed) == (300, 0) and await _copied(dst) == bodies
    assert 1 <= Gauged.peak <= 4 and set(archive.requests.values()) == {1}
