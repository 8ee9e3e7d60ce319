"""Sync reconciliation in distributed mode: the server splits each one into key-range units, workers run them.

Embedded, one process claims a task's reconciliation (`sync_tasks.reconcile_owner`) and compares the two whole
listings. Distributed, `ReconcileDispatcher` (in `ferry serve`) claims it the same way, cuts the key space
into up to `units` contiguous ranges and adds one `reconcile` unit per range (owner_kind "sync", `run` growing
with each reconciliation); every worker runs the units it is sent with `reconcile_handler`, which compares and
copies its range on the worker's own SyncWorkers, so outcomes, statistics and the failed-object list are
recorded exactly as embedded. Once no unit of the run is open, the dispatcher records the reconciliation's end
(`reconciled_at`, and `last_error` from a failed unit) as the embedded reconciler does.

Range boundaries only balance the work: the ranges are contiguous, so every key falls in exactly one whatever
the boundaries. A byte-ordered source is probed, not listed (runner.key_ranges): a skip-scan walks the first
characters of its keys (one short listing per branch found) until there are a few branches per unit. Any other
source (an endpoint override, say) is cut by its top-level folders when both stores list by folder (the S3 family):
groups of folders, each unit listing its own, and one unit for the objects at the root. Failing that, a
sample (its first `sample` keys) gives quantiles as boundaries; such ranges list both buckets whole and
filter, so there the units spread the copying, not the listing, and it is one unit unless the operator asks
for more (`RangeSettings`). A folder made after the cut waits for the next reconciliation (its events are
copied meanwhile). With deletes propagated a reconciliation stays one unit: the delete
cap is for the whole bucket.

A server that restarts mid-reconciliation adopts the open units of the task's last run (same generation)
instead of cutting the reconciliation again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Final

from sqlalchemy import Engine

from ferry.aio import wait_event
from ferry.db.sync_repo import SyncRepo, SyncTaskRow
from ferry.db.unit_repo import FAILED, UnitDraft, UnitRepo, UnitRow
from ferry.objects import ObjectInfo
from ferry.runner.key_ranges import probe_bounds, spans
from ferry.runner.loop_thread import LoopThread
from ferry.runner.sync import BackendOpener, KeyRange, Lister, RangeProgress, SyncBackground, SyncSettings
from ferry.runner.task_units import _direct_objects, _folder_lister, _sub_folders
from ferry.runner.units import Handler, UnitContext, UnitFailed
from ferry.storage.base import Backend, ListOrder, listing
from ferry.storage.wrappers import RetryingBackend

log = logging.getLogger("ferry.sync")

RECONCILE_KIND: Final = "reconcile"
OWNER_KIND: Final = "sync"


def _no_wake() -> None:
    return None


@dataclass(frozen=True, slots=True)
class RangeSettings:
    """How a reconciliation is cut: at most `units` ranges of a byte-ordered source, found with at most
    `probes` listing requests; at most `unordered_units` of any other source, from its first `sample` keys.
    Each range of an unordered source lists both buckets whole, so by default such a source is one range
    (FERRY_SYNC_RECONCILE_UNITS, default 8, and FERRY_SYNC_RECONCILE_UNITS_UNORDERED, default 1)."""

    units: int = 8
    unordered_units: int = 1
    probes: int = 256
    sample: int = 10_000


async def plan_ranges(src: Backend, settings: RangeSettings) -> list[KeyRange]:
    """Contiguous key ranges covering every key, about as many as the settings say, for one reconciliation."""
    ordered = src.capabilities.list_order is ListOrder.LEXICOGRAPHIC
    units = settings.units if ordered else settings.unordered_units
    if units <= 1:
        return [(None, None)]
    if ordered:
        bounds = await probe_bounds(src, units, settings.probes)
    else:
        bounds = await _sample_bounds(src, units, settings.sample)
    return spans(bounds)


@dataclass(frozen=True, slots=True)
class Part:
    """What one reconciliation unit compares: a key range, or some top-level folders (`prefixes`), or the
    objects directly at the bucket's root (`direct`)."""

    span: KeyRange = (None, None)
    prefixes: tuple[str, ...] = ()
    direct: bool = False

    def spec(self) -> dict[str, object]:
        if self.direct:
            return {"direct": True}
        return {"prefixes": list(self.prefixes)} if self.prefixes else {}


async def plan_parts(src: Backend, dst: Backend, settings: RangeSettings) -> list[Part]:
    """The parts of one reconciliation. A byte-ordered source: key ranges (`plan_ranges`). Any other whose
    stores both list by folder (a delimiter listing, the S3 family): its top-level folders, in up to
    `units - 1` groups, and the root's own objects, so that no unit lists more than its part; else sampled
    key ranges, each listing both buckets whole (`unordered_units`)."""
    if src.capabilities.list_order is not ListOrder.LEXICOGRAPHIC and settings.units > 1:
        src_lister, dst_lister = _folder_lister(src), _folder_lister(dst)
        if src_lister is not None and dst_lister is not None:
            folders = await _sub_folders(src_lister, "")
            if folders:
                groups = max(1, min(settings.units - 1, len(folders)))
                per = -(-len(folders) // groups)
                return [Part(direct=True)] + [Part(prefixes=tuple(folders[i:i + per]))
                                              for i in range(0, len(folders), per)]
    return [Part(span) for span in await plan_ranges(src, settings)]


def part_lister(spec: dict[str, object]) -> Lister | None:
    """How a unit of `spec` lists each bucket: its folders, or the root's own objects; None for a key range."""
    if spec.get("direct"):
        return _root_objects
    prefixes = spec.get("prefixes")
    if isinstance(prefixes, list) and prefixes:
        return partial(_in_folders, tuple(str(p) for p in prefixes))
    return None


async def _in_folders(prefixes: tuple[str, ...], backend: Backend) -> AsyncIterator[ObjectInfo]:
    for prefix in prefixes:  # sorted, so a byte-ordered listing stays in order
        async for info in listing(backend, prefix):
            yield info


async def _root_objects(backend: Backend) -> AsyncIterator[ObjectInfo]:
    lister = _folder_lister(backend)
    if lister is None:  # the planner found a folder listing; a store without one is read whole and filtered
        async for info in listing(backend):
            if "/" not in info.key:
                yield info
        return
    async for info in _direct_objects(lister, "", None):
        yield info


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
        last = await asyncio.to_thread(self.units.last_run, OWNER_KIND, row.id)
        if last is not None:
            # A run under way when this server (or its predecessor) stopped goes on: the workers still run it.
            open_units = await asyncio.to_thread(self.units.of_owner, OWNER_KIND, row.id, last)
            if open_units and all(u.spec.get("generation") == row.generation for u in open_units):
                total = (await asyncio.to_thread(self.units.summary, OWNER_KIND, row.id, last)).total
                self._runs[row.id] = _Run(last, row.generation, total, time.monotonic())
                log.info("sync %s: reconciliation %d goes on (%d ranges open)", row.id, last, len(open_units))
                return
        parts = await self._plan(row)
        run = (last or 0) + 1
        # Units of an earlier run (this server restarted mid-way) are not worked on any more.
        await asyncio.to_thread(self.units.cancel, OWNER_KIND, row.id)
        drafts = [UnitDraft(RECONCILE_KIND, p.span[0], p.span[1], {"generation": row.generation, **p.spec()})
                  for p in parts]
        await asyncio.to_thread(self.units.add, OWNER_KIND, row.id, run, drafts)
        self._runs[row.id] = _Run(run, row.generation, len(drafts), time.monotonic())
        log.info("sync %s: reconciliation %d handed to the workers in %d ranges", row.id, run, len(drafts))
        self.wake_units()

    async def _plan(self, row: SyncTaskRow) -> list[Part]:
        if self.settings.propagate_deletes:
            return [Part()]
        try:
            src, dst = self.opener(row)
        except Exception as exc:
            # The workers meet the same failure and report it (and stop the task if it fails as a whole).
            log.warning("sync %s: cannot open the source to split its reconciliation: %s", row.id,
                        type(exc).__name__)
            return [Part()]
        source = RetryingBackend(src, attempts=3, base_delay=0.1, max_delay=2.0)
        try:
            return await plan_parts(source, dst, self.ranges)
        except Exception as exc:
            log.warning("sync %s: splitting the reconciliation failed (%s): one range", row.id, type(exc).__name__)
            return [Part()]
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
                                                  progress, part_lister(unit.spec))
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
