"""Runs one job: streams the plan into bounded copy workers and records results in batches.

Resume: results are written in batches with a listing watermark (every source key up to it, in byte order, is
finished). A restarted job lists only past the watermark (or filters, for stores that cannot list from a
key), and the planner also skips keys finished beyond it, so nothing verified is copied twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from ferry.aio import wait_event
from ferry.db.records import SIZE_ONLY, ObjectResult, PartRow, Tally, UploadRow
from ferry.engine.budget import MemoryBudget
from ferry.engine.checksums import Crc64
from ferry.engine.compare import CopyReason, OverwriteMode, SkipReason, decide
from ferry.engine.copier import CopyOptions
from ferry.engine.planner import Action, Fail, Planner, Skip
from ferry.engine.progress import Counters, ObjectProgress
from ferry.engine.restores import NOT_RESTORED, RESTORE, RestorePolicy, RestoreWaiter, archived_reason
from ferry.engine.verified_copy import VerifiedCopier
from ferry.errors import (
    AccessError,
    ArchivedObjectError,
    LocalStateError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from ferry.objects import ObjectInfo
from ferry.storage.base import Backend, ListOrder
from ferry.storage.profiles import ARCHIVE_CLASSES
from ferry.storage.wrappers import object_budget, unwrap

if TYPE_CHECKING:
    from ferry.db.job_repo import JobRepo

_T = TypeVar("_T")
log = logging.getLogger("ferry.engine")
MiB = 1024 * 1024
# How far completions may run ahead of the oldest unfinished action before dispatch waits; it bounds the
# memory the watermark bookkeeping needs when one huge object is slow.
_WATERMARK_WINDOW = 50_000


@dataclass(frozen=True, slots=True)
class TransferOptions:
    overwrite: OverwriteMode = OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE
    copy: CopyOptions = field(default_factory=CopyOptions)
    migrate_since: float | None = None
    concurrency: int = 64
    memory_limit: int = 96 * MiB
    restore: RestorePolicy | None = None  # enable_restore: archived objects are restored, then copied
    # How long the run waits, paused in place, for the job database to take writes again (space freed, a lock
    # released, a database restarted) before it stops with that LocalStateError.
    state_patience: float = 30.0


class StateWait:
    """Calls into the job database that wait out a LocalStateError that passes (see ferry.db.faults), for up to
    `patience` seconds, saying why in `counters.waiting_on` meanwhile; then they raise it."""

    def __init__(self, patience: float, counters: Counters) -> None:
        self.patience = patience
        self.counters = counters
        self.healthy = asyncio.Event()  # clear while the database refuses writes: no new object starts
        self.healthy.set()

    async def call(self, fn: Callable[[], Awaitable[_T]], patience: float | None = None) -> _T:
        deadline = time.monotonic() + (self.patience if patience is None else patience)
        delay = 0.1
        while True:
            try:
                out = await fn()
            except LocalStateError as exc:
                if not exc.passes or time.monotonic() + delay > deadline:
                    raise
                if self.counters.waiting_on is None:
                    log.warning("the run is paused: %s", exc.message)
                self.counters.waiting_on = exc.message
                self.healthy.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if self.counters.waiting_on is not None:
                log.warning("the run goes on: the job database takes writes again")
                self.counters.waiting_on = None
                self.healthy.set()
            return out


class RepoCheckpoints:
    """Multipart checkpoints kept in the job database, called off the event loop once the job's row exists
    (`ready`)."""

    def __init__(self, repo: JobRepo, job_id: str, ready: asyncio.Future[None] | None = None,
                 wait: StateWait | None = None) -> None:
        self.repo = repo
        self.job_id = job_id
        self.ready = ready
        self.wait = wait

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        if self.ready is not None:
            await asyncio.shield(self.ready)
        if self.wait is None:
            return await asyncio.to_thread(fn, self.job_id, *args)
        return await self.wait.call(lambda: asyncio.to_thread(fn, self.job_id, *args))

    async def get(self, key: str) -> UploadRow | None:
        return await self._call(self.repo.get_upload, key)

    async def save(self, upload: UploadRow) -> None:
        await self._call(self.repo.save_upload, upload)

    async def save_part(self, key: str, part: PartRow) -> None:
        await self._call(self.repo.save_part, key, part)

    async def parts(self, key: str) -> list[PartRow]:
        return await self._call(self.repo.get_parts, key)

    async def drop(self, key: str) -> None:
        await self._call(self.repo.drop_upload, key)


class Recorder:
    """Collects results and writes them in batches, advancing the watermark over contiguous completions.

    Only the recorder's own task writes, and it is stopped rather than cancelled: a write cut off by
    cancellation would still land later from its thread, after the job's final tally was read. A batch the
    database refuses (LocalStateError) is kept and written again, through `wait`; results are never dropped
    while the process lives, and an object is only ever "done" once its row is written.
    """

    final_patience = 10.0  # seconds the last write (the run ending or stopped) waits for the database

    def __init__(self, repo: JobRepo, job_id: str, batch: int = 2000, interval: float = 0.5,
                 ready: asyncio.Future[None] | None = None, wait: StateWait | None = None,
                 max_pending: int | None = None) -> None:
        self.repo = repo
        self.job_id = job_id
        self.ready = ready  # the job's row exists: nothing is written before
        self.wait = wait
        self.batch = batch
        self.interval = interval
        # Results waiting for their write are held in memory; past this many, new work waits (`wait_room`).
        # Without that bound a listing that outruns the database (an in-step rerun skips ~70k keys/s, SQLite
        # takes ~35k rows/s) piled up most of the bucket here: 0.3 KB a key, 300 MB at 1M keys.
        self.max_pending = max_pending if max_pending is not None else 4 * batch
        self._pending: list[ObjectResult] = []
        self._room = asyncio.Event()
        self._room.set()
        self._done: dict[int, str] = {}
        self._next = 0
        self._watermark: str | None = None
        self._dirty_watermark = False
        self._advanced = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def add(self, result: ObjectResult) -> None:
        """A result outside the listing's sequence (an object copied once its restore came back)."""
        self._pending.append(result)
        if len(self._pending) >= self.batch:
            self._wake.set()

    def complete(self, seq: int, key: str, result: ObjectResult | None) -> None:
        if result is not None:
            self._pending.append(result)
            if len(self._pending) >= self.batch:
                self._wake.set()
        self._done[seq] = key
        while self._next in self._done:
            self._watermark = self._done.pop(self._next)
            self._next += 1
            self._dirty_watermark = True
        self._advanced.set()

    @property
    def full(self) -> bool:
        """Whether as many results wait for their write as may (the caller then awaits `wait_room`)."""
        return len(self._pending) >= self.max_pending

    async def wait_room(self) -> None:
        """Return once fewer than `max_pending` results wait for their write."""
        while len(self._pending) >= self.max_pending:
            self._room.clear()
            self._wake.set()
            await self._room.wait()

    async def wait_window(self, seq: int) -> None:
        while seq - self._next > _WATERMARK_WINDOW:
            self._advanced.clear()
            await self._advanced.wait()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._room.set()
        watermark = self._watermark if self._dirty_watermark else None
        self._dirty_watermark = False
        if batch or watermark is not None:
            if self.ready is not None:
                await asyncio.shield(self.ready)
            try:
                await asyncio.to_thread(self.repo.record, self.job_id, batch, watermark)
            except BaseException:
                # Kept for the next write (one transaction: none of it landed); the watermark still stands.
                # Meanwhile new work waits for room again: a database that refuses writes must not let the
                # backlog grow without bound.
                self._pending[:0] = batch
                if len(self._pending) >= self.max_pending:
                    self._room.clear()
                self._dirty_watermark = self._dirty_watermark or watermark is not None
                raise

    async def _write(self, patience: float | None = None) -> None:
        if self.wait is None:
            await self._flush()
        else:
            await self.wait.call(self._flush, patience)

    async def run(self) -> None:
        """Write batches until stopped, then write whatever is left (waiting for the database at most the
        `final_patience` then: a run being stopped does not hang on it)."""
        while not self._stop.is_set():
            await wait_event(self._wake, self.interval)
            self._wake.clear()
            await self._write()
        await self._write(self.final_patience)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


async def _filtered(it: AsyncIterator[ObjectInfo], after: str) -> AsyncIterator[ObjectInfo]:
    async for obj in it:
        if obj.key > after:
            yield obj


def _listing(backend: Backend, after: str | None) -> AsyncIterator[ObjectInfo]:
    if after is None:
        return backend.list()
    if backend.capabilities.list_order is ListOrder.LEXICOGRAPHIC:
        return backend.list(start_after=after)
    return _filtered(backend.list(), after)


def name_side(exc: AccessError, src: Backend, dst: Backend) -> AccessError:
    """`exc` with its `side` filled in from the store that raised it (a message must say which keys to fix)."""
    if exc.side is None:
        origin = exc.origin
        exc.side = "source" if origin is unwrap(src) else "destination" if origin is unwrap(dst) else None
    return exc


async def _no_keys() -> AsyncIterator[str]:
    return
    yield


async def _finished_keys(repo: JobRepo, job_id: str, after: str | None, wait: StateWait) -> AsyncIterator[str]:
    last = after

    def page() -> list[str]:
        keys: list[str] = []
        for key in repo.iter_finished_keys(job_id, after=last, batch=5000):
            keys.append(key)
            if len(keys) == 5000:
                break
        return keys

    while True:
        # Each page is one query from the last key seen, so a database restart mid-listing costs one retry.
        chunk = await wait.call(lambda: asyncio.to_thread(page))
        if not chunk:
            return
        for key in chunk:
            yield key
        last = chunk[-1]


class Transfer:
    """One job's execution: plan, dispatch to workers, record. Counters are live while it runs."""

    def __init__(self, src: Backend, dst: Backend, repo: JobRepo, job_id: str, opts: TransferOptions,
                 counters: Counters | None = None, *, ready: asyncio.Future[None] | None = None) -> None:
        """`ready`, when given, is the creation of the job's row, still under way: the job is new (nothing
        of it is finished) and nothing is written to the database before that row exists."""
        self.src = src
        self.dst = dst
        self.repo = repo
        self.job_id = job_id
        self.opts = opts
        self.counters = counters or Counters()
        self.budget = MemoryBudget(opts.memory_limit)
        self.ready = ready
        self.wait = StateWait(opts.state_patience, self.counters)
        self.copier = VerifiedCopier(src, dst, opts.copy, self.budget,
                                     RepoCheckpoints(repo, job_id, ready, self.wait))
        self.recorder = Recorder(repo, job_id, ready=ready, wait=self.wait)
        self.restores: RestoreWaiter | None = None
        if opts.restore is not None and src.capabilities.restore:
            self.restores = RestoreWaiter(src, opts.restore, self.counters, self._copy, self.recorder.add,
                                          copies=opts.concurrency)

    async def _crc_decide(self, src: ObjectInfo) -> CopyReason | SkipReason:
        # Listings carry no CRC64, so ask both stores (HEAD). When only the destination knows its CRC64 (Ferry
        # stored it), the source's is computed by reading it: that read is what this mode is chosen for.
        try:
            s, d = await asyncio.gather(self.src.head(src.key), self.dst.head(src.key))
        except NotFoundError:
            return CopyReason.MISSING
        if s.crc64 is None and d.crc64 is not None and s.size == d.size:
            s = dataclasses.replace(s, crc64=await self._source_crc64(s))
        return decide(s, d, OverwriteMode.CRC64_COMPARISON_OVERWRITE, self.opts.migrate_since)

    async def _source_crc64(self, obj: ObjectInfo) -> int:
        crc, offset, chunk = Crc64(), 0, self.opts.copy.part_size
        while offset < obj.size:
            length = min(chunk, obj.size - offset)
            async with self.budget.hold(length):
                crc.update(await self.src.read(obj.key, offset=offset, length=length, if_match=obj.etag))
            offset += length
        return crc.value

    async def _copy(self, obj: ObjectInfo) -> ObjectResult:
        moving = ObjectProgress(self.counters)
        try:
            with object_budget():
                out = await self.copier.copy(obj, moving)
            moving.finish(out.size)
            return ObjectResult(obj.key, "success", out.size, out.etag, SIZE_ONLY if out.size_only else None)
        except ArchivedObjectError as exc:
            if self.restores is not None:
                raise  # restored first, then copied
            return ObjectResult(obj.key, "failed", obj.size, obj.etag, archived_reason(exc))
        except (PermanentError, TransientError) as exc:
            return ObjectResult(obj.key, "failed", obj.size, obj.etag, exc.message)
        finally:
            moving.close()  # failed or cancelled: what it moved no longer counts

    async def _handle(self, action: Action) -> ObjectResult:
        src = action.src
        if isinstance(action, Fail):
            self.counters.failed += 1
            return ObjectResult(src.key, "failed", src.size, src.etag, action.reason)
        reason: CopyReason | SkipReason = action.reason
        if (self.opts.overwrite is OverwriteMode.CRC64_COMPARISON_OVERWRITE
                and reason in (SkipReason.SAME_SIZE_NOT_OLDER, CopyReason.SOURCE_NEWER)):
            reason = await self._crc_decide(src)
        if isinstance(reason, SkipReason):
            self.counters.skipped += 1
            self.counters.bytes_skipped += src.size
            return ObjectResult(src.key, "skipped", src.size, src.etag, reason.value)
        if self.restores is not None and src.storage_class in ARCHIVE_CLASSES:
            return self.restores.add(src)
        try:
            result = await self._copy(src)
        except ArchivedObjectError:
            assert self.restores is not None
            return self.restores.add(src, refused=True)
        if result.status == "success":
            self.counters.success += 1
            self.counters.size_only += result.reason == SIZE_ONLY
        else:
            self.counters.failed += 1
        return result

    async def run(self, resume_after: str | None, prior: Tally) -> None:
        """Run to completion; a FatalError propagates after everything finished so far is recorded (an
        AccessError with its `side` named)."""
        c = self.counters
        c.success, c.skipped, c.failed, c.size_only = prior.success, prior.skipped, prior.failed, prior.size_only
        c.bytes_copied, c.bytes_skipped = prior.success_bytes, prior.skipped_bytes
        c.listed = prior.success + prior.skipped + prior.failed
        c.listed_bytes = prior.success_bytes + prior.skipped_bytes + prior.failed_bytes
        waiting = await self._waiting_restores()
        queue: asyncio.Queue[tuple[int, Action] | None] = asyncio.Queue(maxsize=self.opts.concurrency * 2)
        recorder_task = asyncio.create_task(self.recorder.run())
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.opts.concurrency)]

        async def feed() -> None:
            await self._dispatch(queue, resume_after)
            for _ in workers:
                await queue.put(None)
            if self.restores is not None:
                await asyncio.wait(workers)  # a worker's failure is raised by the wait below
                self.restores.close()

        tasks: set[asyncio.Task[None]] = {asyncio.create_task(feed()), *workers}
        if self.restores is not None:
            self.restores.resume(waiting)
            tasks.add(asyncio.create_task(self.restores.run()))
        elif waiting:
            # An earlier run of the job waited for these restores; this one does not restore.
            c.listed += len(waiting)
            c.listed_bytes += sum(r.size for r in waiting)
            c.failed += len(waiting)
            for r in waiting:
                self.recorder.add(ObjectResult(r.key, "failed", r.size, r.etag, NOT_RESTORED))
        # A recorder that gave up (the database stayed unwritable past the patience) ends the run.
        watch = asyncio.create_task(self._recorder_failed(recorder_task))
        tasks.add(watch)
        try:
            pending = tasks
            while pending - {watch}:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    exc = t.exception()
                    if isinstance(exc, AccessError):
                        raise name_side(exc, self.src, self.dst)
                    if exc is not None:
                        raise exc
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.recorder.stop()
            # Shielded: even if this run is being cancelled, the last results must reach the database.
            await asyncio.shield(recorder_task)

    async def _waiting_restores(self) -> list[ObjectResult]:
        """The objects an earlier run of this job left waiting for a restore (none for a new job)."""
        if self.ready is not None:
            return []
        return await asyncio.to_thread(lambda: list(self.repo.iter_results(self.job_id, RESTORE)))

    async def _dispatch(self, queue: asyncio.Queue[tuple[int, Action] | None], resume_after: str | None) -> None:
        planner = Planner(
            _listing(self.src, resume_after),
            self.src.capabilities.list_order,
            _listing(self.dst, resume_after),
            self.dst.capabilities.list_order,
            finished=(_no_keys() if self.ready is not None
                      else _finished_keys(self.repo, self.job_id, resume_after, self.wait)),
            overwrite_mode=self.opts.overwrite,
            migrate_since=self.opts.migrate_since,
            max_key_bytes=self.dst.capabilities.max_key_bytes,
        )
        seq = 0
        recorder = self.recorder
        try:
            async for action in planner:
                if recorder.full:
                    await recorder.wait_room()
                if isinstance(action, Skip) and action.reason is SkipReason.ALREADY_DONE:
                    recorder.complete(seq, action.src.key, None)
                else:
                    self.counters.listed += 1
                    self.counters.listed_bytes += action.src.size
                    await recorder.wait_window(seq)
                    await queue.put((seq, action))
                seq += 1
        finally:
            await planner.aclose()
        self.counters.listing_done = True

    @staticmethod
    async def _recorder_failed(recorder_task: asyncio.Task[None]) -> None:
        await asyncio.wait({recorder_task})
        exc = recorder_task.exception()
        if exc is not None:
            raise exc

    async def _worker(self, queue: asyncio.Queue[tuple[int, Action] | None]) -> None:
        while True:
            # While results cannot be recorded, nothing new starts: what is done waits in memory, bounded.
            await self.wait.healthy.wait()
            item = await queue.get()
            if item is None:
                return
            seq, action = item
            result = await self._handle(action)
            self.recorder.complete(seq, action.src.key, result)
