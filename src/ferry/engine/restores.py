"""Archived source objects of one job: restores asked for ahead of the copy, tracked in the job database, and each
object copied as its restore comes back, while the rest of the job goes on.

An object reaches the waiter when the listing names an archive class or a read is refused as archived. The
waiter records it at once as a `restore` row of the job (so the job's watermark moves past it, and a restarted
job finds it again in the database instead of asking for a second restore), asks the store for the restore in
the background (`Backend.restore`, the vendor's own call; at most `concurrency` requests and HEADs at once),
and looks at it again every `poll_seconds` with a HEAD: `ObjectInfo.restore` DONE (or no restore status and a
class that needs none) means copy it now. A store that reports no status at all (ObjectInfo.restore None for an
archived object) is polled by trying the copy: a read still refused as archived asks again and waits again, which
also covers a restored copy that expired before it was copied. The job ends when nothing waits any more.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ferry.aio import wait_event
from ferry.db.records import ObjectResult
from ferry.engine.progress import Counters
from ferry.errors import ArchivedObjectError, NotFoundError, PermanentError, TransientError
from ferry.objects import ObjectInfo, Restore
from ferry.storage.base import Backend
from ferry.storage.profiles import ARCHIVE_CLASSES

RESTORE: Final = "restore"  # job_objects status of an object that waits for its restore
NOT_RESTORED: Final = ("the source object is archived and not restored; with enable_restore (ferry migrate "
                       "--restore) it is restored first, then copied")


def archived_reason(exc: ArchivedObjectError) -> str:
    """The failure of an archived object when restores are off: what happened and what to do."""
    return f"{NOT_RESTORED} ({exc.message})"


@dataclass(frozen=True, slots=True)
class RestorePolicy:
    """How restores are asked for and watched (the `enable_restore` of a task)."""

    days: int = 1  # how long the restored copy stays readable
    poll_seconds: float = 600.0  # between two looks at an object whose restore is under way
    concurrency: int = 16  # restore requests and HEADs in flight


@dataclass(slots=True)
class _Waiting:
    obj: ObjectInfo
    due: float  # monotonic time of the next look (inf while it is being copied)
    requested: bool  # a restore was asked for (by this run or, per the job's row, an earlier one)
    refused: bool  # a read was refused as archived, whatever class the store names


class RestoreWaiter:
    """The archived objects of one running job (see the module docstring).

    `copy(info)` copies one object and returns its result, raising ArchivedObjectError when the store still
    refuses the read; `record(result)` hands a final result to the job's recorder. At most `copies` restored
    objects are copied at once. Looks are due in a heap, so a job with a million archived objects costs
    O(log n) per look, not a scan per wake-up.
    """

    def __init__(self, src: Backend, policy: RestorePolicy, counters: Counters,
                 copy: Callable[[ObjectInfo], Awaitable[ObjectResult]], record: Callable[[ObjectResult], None],
                 *, copies: int = 64) -> None:
        self.src = src
        self.policy = policy
        self.counters = counters
        self.copy = copy
        self.record = record
        self._waiting: dict[str, _Waiting] = {}
        self._due: list[tuple[float, int, str]] = []  # heap of (due, tie-break, key); stale entries skipped
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._closed = False
        self._copies: set[asyncio.Task[None]] = set()
        self._copy_gate = asyncio.Semaphore(copies)
        self._max_copies = copies * 4  # copy tasks started (most waiting for the gate) before looks pause
        self._failure: BaseException | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _schedule(self, w: _Waiting, due: float) -> None:
        w.due = due
        if due != math.inf:
            heapq.heappush(self._due, (due, next(self._order), w.obj.key))
        self._wake.set()

    def add(self, obj: ObjectInfo, *, refused: bool = False) -> ObjectResult:
        """Take an archived object (`refused`: a read said so): the `restore` row to record for it now; its
        final result is recorded when it is copied."""
        if obj.key not in self._waiting:
            w = self._waiting[obj.key] = _Waiting(obj, 0.0, requested=False, refused=refused)
            self.counters.restoring += 1
            self._schedule(w, time.monotonic())
        else:  # listed again after a restart that found its row: it is counted once
            self.counters.listed -= 1
            self.counters.listed_bytes -= obj.size
        return ObjectResult(obj.key, RESTORE, obj.size, obj.etag, "waiting for the source object's restore")

    def resume(self, rows: Iterable[ObjectResult]) -> None:
        """Objects an earlier run of the job asked restores for (its `restore` rows): watched, not asked again."""
        now = time.monotonic()
        for row in rows:
            if row.key not in self._waiting:
                info = ObjectInfo(row.key, row.size, 0.0, row.etag)
                w = self._waiting[row.key] = _Waiting(info, 0.0, requested=True, refused=True)
                self.counters.restoring += 1
                self.counters.listed += 1
                self.counters.listed_bytes += row.size
                self._schedule(w, now)

    def close(self) -> None:
        """No more objects will come: `run` returns once every waiting one is finished."""
        self._closed = True
        self._wake.set()

    def _take_due(self, now: float, limit: int) -> list[_Waiting]:
        batch: list[_Waiting] = []
        while self._due and self._due[0][0] <= now and len(batch) < limit:
            due, _, key = heapq.heappop(self._due)
            w = self._waiting.get(key)
            if w is not None and w.due == due:
                batch.append(w)
        return batch

    async def run(self) -> None:
        """Look at each waiting object when it is due, until closed and none waits; a FatalError of a store
        (keys refused, say) ends it."""
        gate = asyncio.Semaphore(self.policy.concurrency)
        try:
            while self._waiting or not self._closed:
                if self._failure is not None:
                    raise self._failure
                self._wake.clear()
                if len(self._copies) >= self._max_copies:
                    await asyncio.wait(self._copies, return_when=asyncio.FIRST_COMPLETED)
                    continue
                now = time.monotonic()
                batch = self._take_due(now, self.policy.concurrency * 8)
                if batch:
                    await asyncio.gather(*(self._look(w, gate) for w in batch))
                    continue
                timeout = max(self._due[0][0] - now, 0.0) if self._due else self.policy.poll_seconds
                await wait_event(self._wake, timeout)
            await asyncio.gather(*self._copies)
        finally:
            for task in self._copies:
                task.cancel()
            await asyncio.gather(*self._copies, return_exceptions=True)

    async def _look(self, w: _Waiting, gate: asyncio.Semaphore) -> None:
        """One look at a waiting object: ask for its restore, wait on, or copy it."""
        key = w.obj.key
        asked = False
        async with gate:
            try:
                info = await self.src.head(key)
                archived = w.refused or info.storage_class in ARCHIVE_CLASSES
                if info.restore is None and archived and not w.requested:
                    await self.src.restore(key, self.policy.days)
                    w.requested = asked = True
                    info = await self.src.head(key)
            except NotFoundError:
                self._finish(ObjectResult(key, "failed", w.obj.size, w.obj.etag,
                                          "the source object was deleted while it waited for its restore"))
                return
            except TransientError:
                self._schedule(w, time.monotonic() + self.policy.poll_seconds)  # the store is busy: look later
                return
            except PermanentError as exc:
                self._finish(ObjectResult(key, "failed", w.obj.size, w.obj.etag, f"restore: {exc.message}"))
                return
        if info.restore is Restore.ONGOING or (info.restore is None and archived and asked):
            self._schedule(w, time.monotonic() + self.policy.poll_seconds)
            return
        # Restored, or a store that says nothing of restores (asked a poll ago at least): the copy tells.
        w.due = math.inf  # looked at no more while it is copied
        task = asyncio.create_task(self._copy(w, info))
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)

    async def _copy(self, w: _Waiting, info: ObjectInfo) -> None:
        try:
            async with self._copy_gate:
                result = await self.copy(info)
        except ArchivedObjectError:
            # Not readable yet (a store with no restore status), or its restored copy expired: ask, wait again.
            w.requested, w.refused = False, True
            self._schedule(w, time.monotonic() + self.policy.poll_seconds)
            return
        except Exception as exc:  # a FatalError: `run` raises it
            self._failure = exc
            return
        finally:
            self._wake.set()
        self._finish(result)

    def _finish(self, result: ObjectResult) -> None:
        if self._waiting.pop(result.key, None) is None:
            return
        self.counters.restoring -= 1
        if result.status == "success":
            self.counters.success += 1
        else:
            self.counters.failed += 1
        self.record(result)
