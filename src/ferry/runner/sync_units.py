"""Sync reconciliation in distributed mode: the server splits each one into key-range units, workers run them.

Embedded, one process claims a task's reconciliation (`sync_tasks.reconcile_owner`) and compares the two whole
listings. Distributed, `ReconcileDispatcher` (in `ferry serve`) claims it the same way, cuts the key space
into up to `units` contiguous ranges and adds one `reconcile` unit per range (owner_kind "sync", `run` growing
with each reconciliation); every worker runs the units it is sent with `reconcile_handler`, which compares and
copies its range on the worker's own SyncWorkers, so outcomes, statistics and the failed-object list are
recorded exactly as embedded. Once no unit of the run is open, the dispatcher records the reconciliation's end
(`reconciled_at`, and `last_error` from a failed unit) as the embedded reconciler does.

Range boundaries only balance the work: the ranges are contiguous, so every key falls in exactly one whatever
the boundaries. A byte-ordered source is probed, not listed: a skip-scan walks the first characters of its
keys (one short listing per branch found) until there are a few branches per unit. Any other source gives a
sample (its first `sample` keys), whose quantiles are the boundaries; such a source is listed whole by each
unit and filtered, so there the units spread the copying, not the listing. With deletes propagated a
reconciliation stays one unit: the delete cap is for the whole bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from sqlalchemy import Engine

from ferry.aio import wait_event
from ferry.db.sync_repo import SyncRepo, SyncTaskRow
from ferry.db.unit_repo import FAILED, UnitDraft, UnitRepo, UnitRow
from ferry.runner.loop_thread import LoopThread
from ferry.runner.sync import BackendOpener, KeyRange, RangeProgress, SyncBackground, SyncSettings
from ferry.runner.units import Handler, UnitContext, UnitFailed
from ferry.storage.base import Backend, ListOrder, listing
from ferry.storage.wrappers import RetryingBackend

log = logging.getLogger("ferry.sync")

RECONCILE_KIND: Final = "reconcile"
OWNER_KIND: Final = "sync"
# Above every character a key can hold: `p + _TOP` sorts after every key that starts with `p` (but one that
# goes on with U+10FFFF itself, which only moves a boundary, never loses a key).
_TOP: Final = "\U0010ffff"


def _no_wake() -> None:
    return None


@dataclass(frozen=True, slots=True)
class RangeSettings:
    """How a reconciliation is cut: at most `units` ranges, at most `probes` listing requests to find them on a
    byte-ordered source, the first `sample` keys of any other (FERRY_SYNC_RECONCILE_UNITS, default 8)."""

    units: int = 8
    probes: int = 256
    sample: int = 10_000


async def plan_ranges(src: Backend, settings: RangeSettings) -> list[KeyRange]:
    """Contiguous key ranges covering every key, about as many as `settings.units`, for one reconciliation."""
    if settings.units <= 1:
        return [(None, None)]
    if src.capabilities.list_order is ListOrder.LEXICOGRAPHIC:
        bounds = await _probe_bounds(src, settings.units, settings.probes)
    else:
        bounds = await _sample_bounds(src, settings.units, settings.sample)
    return _spans(bounds)


def _spans(bounds: list[str]) -> list[KeyRange]:
    """(None, b1], (b1, b2], ..., (bn, None) from sorted, distinct bounds."""
    edges: list[str | None] = [None, *bounds, None]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


async def _first(src: Backend, prefix: str, after: str | None) -> str | None:
    async for info in listing(src, prefix, after):
        return info.key
    return None


async def _children(src: Backend, prefix: str, budget: list[int]) -> list[str] | None:
    """The distinct one-character-longer prefixes of the keys under `prefix` (a key equal to `prefix` counts as
    its own), one probe each; None when the probe budget ran out first."""
    found: list[str] = []
    after: str | None = None
    while True:
        if budget[0] <= 0:
            return None
        budget[0] -= 1
        key = await _first(src, prefix, after)
        if key is None:
            return found
        child = key[:len(prefix) + 1]
        found.append(child)
        after = child if len(child) == len(prefix) else child + _TOP


async def _probe_bounds(src: Backend, units: int, probes: int) -> list[str]:
    """Skip-scan a byte-ordered source: expand key prefixes a character at a time, widest level first, until
    there are about four branches per unit (or the probes run out); then every unit gets as many branches."""
    budget = [probes]
    branches = [""]
    while len(branches) < units * 4:
        wider: list[str] = []
        grew = False
        for i, prefix in enumerate(branches):
            kids = await _children(src, prefix, budget)
            if kids is None:
                wider.extend(branches[i:])  # out of probes: keep the rest as they are
                break
            if not kids:
                continue  # a prefix with nothing under it any more
            grew = grew or len(kids) > 1 or kids[0] != prefix
            wider.extend(kids)
        if not grew or wider == branches:
            branches = wider
            break
        branches = sorted(set(wider))
        if budget[0] <= 0:
            break
    per = max(1, -(-len(branches) // units))
    groups = [branches[i:i + per] for i in range(0, len(branches), per)]
    # Each range ends after its last branch's keys; the last range is open.
    return sorted({g[-1] + _TOP for g in groups[:-1]})


async def _sample_bounds(src: Backend, units: int, sample: int) -> list[str]:
    keys: list[str] = []
    async for info in listing(src):
        keys.append(info.key)
        if len(keys) >= sample:
            break
    keys.sort()
    if len(keys) < 2:
        return []
    step = len(keys) / units
    return sorted({keys[min(len(keys) - 1, int(step * i)) - 1] for i in range(1, units) if int(step * i) >= 1})


# -- the server side ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Run:
    run: int
    generation: int
    units: int
    started: float


class ReconcileDispatcher(LoopThread):
    """In `ferry serve` (distributed mode): claims due reconciliations, splits each into range units, renews the
    claim while they run and records the end when none is open (see the module docstring)."""

    thread_name = "ferry-reconcile"

    def __init__(self, engine: Engine, opener: BackendOpener, settings: SyncSettings,
                 ranges: RangeSettings | None = None, *, wake_units: Callable[[], None] = _no_wake,
                 clock: Callable[[], float] = time.time, poll_seconds: float = 1.0) -> None:
        super().__init__()
        # Its own lease names: a worker of this host (another node id) never releases them, nor they its.
        self.node = f"{settings.node_id}/server"
        self.settings = replace(settings, node_id=self.node)
        self.repo = SyncRepo(engine)
        self.units = UnitRepo(engine)
        self.opener = opener
        self.ranges = ranges or RangeSettings()
        self.wake_units = wake_units
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.owner = f"{self.node}/{uuid.uuid4().hex[:12]}"
        self._runs: dict[str, _Run] = {}

    async def run(self) -> None:
        wake = self._wake_event()
        # Claims of this server's earlier life (a crash) are ours to take back now; their units are cancelled
        # when the task's next run is made.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.repo.release_leases, f"{self.node}/")
        while True:
            wake.clear()
            try:
                await self.tick()
            except Exception as exc:
                log.warning("sync: dispatching reconciliations waits: %s", type(exc).__name__, exc_info=True)
            # Woken by every API write of a sync task (events too): at most a few passes a second.
            await asyncio.sleep(min(0.25, self.poll_seconds))
            await wait_event(wake, self.poll_seconds)

    async def tick(self) -> None:
        """One pass: settle the runs under way, then split the reconciliations that are due."""
        rows = {r.id: r for r in await asyncio.to_thread(self.repo.active_tasks)}
        await self._settle(rows)
        now = self.clock()
        interval, lease = self.settings.reconcile_seconds, self.settings.lease_seconds
        for task_id, row in rows.items():
            if task_id in self._runs:
                continue
            if row.reconciled_at is not None and row.reconciled_at > now - interval:
                continue
            if await asyncio.to_thread(self.repo.claim_reconcile, task_id, self.owner, now, interval, lease):
                await self._split(row)

    async def _settle(self, rows: dict[str, SyncTaskRow]) -> None:
        for task_id, run in list(self._runs.items()):
            row = rows.get(task_id)
            if row is None or row.generation != run.generation:
                # Stopped, deleted or started again: its units stop at their next heartbeat.
                await asyncio.to_thread(self.units.cancel, OWNER_KIND, task_id)
                del self._runs[task_id]
                continue
            summary = await asyncio.to_thread(self.units.summary, OWNER_KIND, task_id, run.run)
            if summary.open:
                await asyncio.to_thread(self.repo.renew_reconcile, task_id, self.owner,
                                        self.clock() + self.settings.lease_seconds)
                continue
            failed = await asyncio.to_thread(self.units.of_owner, OWNER_KIND, task_id, run.run, (FAILED,), 1)
            error = (failed[0].error or "a range of the reconciliation failed") if failed else None
            await asyncio.to_thread(self.repo.finish_reconcile, task_id, self.owner, self.clock(), error)
            del self._runs[task_id]
            log.info("sync %s: reconciled in %.1fs over %d ranges: %d compared, %d copied%s", task_id,
                     time.monotonic() - run.started, run.units, summary.listed, summary.objects_done,
                     f" ({error})" if error else "")

    async def _split(self, row: SyncTaskRow) -> None:
        spans = await self._plan(row)
        last = await asyncio.to_thread(self.units.last_run, OWNER_KIND, row.id)
        run = (last or 0) + 1
        # Units of an earlier run (this server restarted mid-way) are not worked on any more.
        await asyncio.to_thread(self.units.cancel, OWNER_KIND, row.id)
        drafts = [UnitDraft(RECONCILE_KIND, a, b, {"generation": row.generation}) for a, b in spans]
        await asyncio.to_thread(self.units.add, OWNER_KIND, row.id, run, drafts)
        self._runs[row.id] = _Run(run, row.generation, len(drafts), time.monotonic())
        log.info("sync %s: reconciliation %d handed to the workers in %d ranges", row.id, run, len(drafts))
        self.wake_units()

    async def _plan(self, row: SyncTaskRow) -> list[KeyRange]:
        if self.settings.propagate_deletes:
            return [(None, None)]
        try:
            src, dst = self.opener(row)
        except Exception as exc:
            # The workers meet the same failure and report it (and stop the task if it fails as a whole).
            log.warning("sync %s: cannot open the source to split its reconciliation: %s", row.id,
                        type(exc).__name__)
            return [(None, None)]
        source = RetryingBackend(src, attempts=3, base_delay=0.1, max_delay=2.0)
        try:
            return await plan_ranges(source, self.ranges)
        except Exception as exc:
            log.warning("sync %s: splitting the reconciliation failed (%s): one range", row.id, type(exc).__name__)
            return [(None, None)]
        finally:
            for backend in (source, dst):
                with contextlib.suppress(Exception):
                    await backend.close()


# -- the worker side ---------------------------------------------------------------------------------------

def reconcile_handler(background: SyncBackground, beat_seconds: float = 1.0) -> Handler:
    """The handler of `reconcile` units on a worker (register it with `units.handles(RECONCILE_KIND)`): the
    range runs on the worker's own sync workers (`background`, started with the worker), whose loop records
    its outcomes; its progress (keys compared, copied, bytes) goes with the unit's heartbeats. A range that
    fails is a failed unit with the reason, which becomes the reconciliation's `last_error`."""

    async def handle(unit: UnitRow, ctx: UnitContext) -> None:
        progress = RangeProgress()
        span = (unit.start_after, unit.end_key)
        work = background.workers.reconcile_range(unit.owner_id, int(unit.spec.get("generation", 0)), span,
                                                  progress)
        future = background.submit(work)
        result: asyncio.Future[str | None] = asyncio.wrap_future(future)
        stopped: asyncio.Future[object] = asyncio.ensure_future(ctx.stop.wait())
        try:
            while True:
                waiting: set[asyncio.Future[object]] = {result, stopped}  # type: ignore[arg-type]
                done, _ = await asyncio.wait(waiting, timeout=beat_seconds,
                                             return_when=asyncio.FIRST_COMPLETED)
                ctx.progress.listed = progress.compared
                ctx.progress.objects_done = progress.copied
                ctx.progress.bytes_done = progress.bytes
                if result in done:
                    break
                if stopped in done:
                    return  # the lease was lost or the worker drains: the range runs again from its start
        finally:
            stopped.cancel()
            if not future.done():
                future.cancel()
                with contextlib.suppress(BaseException):
                    await result
        error = result.result()
        if error is not None:
            raise UnitFailed(error)

    return handle
