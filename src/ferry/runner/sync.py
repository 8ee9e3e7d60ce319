"""Sync workers: drain each sync task's durable event queue and periodically reconcile its two buckets.

Two kinds of work run side by side in one event loop:
- events: claim due rows from `sync_events` under a lease, and for each key HEAD both sides, decide with the
  task's consistency rule, copy and verify with the engine's VerifiedCopier (as migration tasks do), and record
  the outcome with the statistics in one batched transaction. Failures are retried with exponential backoff
  and listed with their reason.
- failed lists: the keys a task gave up on are written into its destination bucket, at
  `failed_lists.sync_list_key` (JSON lines of key, reason, attempts, failed_at), within a few seconds of a
  key failing or recovering and after every reconciliation; the list is removed once nothing has failed.
- reconciliation: every `reconcile_seconds` per task (at once for a new or restarted task, which is therefore
  its initial full copy) the streaming Planner merges the two listings and whatever events missed is copied.
  Source deletions are propagated only when the deployment enables it, and never more than a cap per run; the
  same pass over the listings names the destination keys without a source.

Deployment settings (environment): FERRY_SYNC_RECONCILE_SECONDS (300), FERRY_SYNC_PROPAGATE_DELETES (off),
FERRY_SYNC_DELETE_CAP (1000), FERRY_SYNC_CONCURRENCY (32), FERRY_SYNC_RECONCILE_CONCURRENCY (16),
FERRY_SYNC_LEASE_SECONDS (60), FERRY_SYNC_MAX_ATTEMPTS (8), FERRY_SYNC_RETRY_BASE_SECONDS (1),
FERRY_SYNC_RETRY_MAX_SECONDS (300), FERRY_SYNC_RESTORE_POLL_SECONDS (600), FERRY_SYNC_POLL_SECONDS (1),
FERRY_NODE_ID (host name).

When the task as a whole stops working (its keys are refused, a bucket is gone, a listing is denied: the
failures a migration task reports as TRF.0151/0152/0155/0051/0057/0058), a key or a reconciliation that meets
it has one object of each bucket listed to confirm it, and the task is stopped with that reason: the API shows
it as STOPPED with `error_reason`, and starting it again with working keys resumes it (its pending keys, and
those that failed meanwhile, are retried). A failure only one object meets leaves the task running.

The runner never sees credentials: it is handed an opener that turns a task row into its two backends.

In distributed mode every `ferry worker` runs these workers for the events alone (`reconcile_here` off): the
server cuts each reconciliation into key ranges (`ferry.runner.sync_units`), which a worker runs on this same
loop with `reconcile_range`, so outcomes, statistics and failed lists are recorded as here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final, TypeVar

from sqlalchemy import Engine

from ferry.aio import wait_event
from ferry.db.sync_repo import ClaimedEvent, EventOutcome, SyncRepo, SyncTaskRow
from ferry.db.task_repo import owner_is_dead
from ferry.engine.budget import MemoryBudget
from ferry.engine.compare import ConsistencyCheck, CopyReason, OverwriteMode, SkipReason, decide
from ferry.engine.copier import CopyOptions
from ferry.engine.planner import Action, Copy, DstOnly, Fail, Planner
from ferry.engine.verified_copy import VerifiedCopier
from ferry.errors import (
    ArchivedObjectError,
    CdnMismatchError,
    FatalError,
    FerryError,
    LocalStateError,
    NotFoundError,
    UsageError,
)
from ferry.metrics import SYNC_EVENT_LATENCY
from ferry.objects import ObjectInfo, Restore
from ferry.runner import failed_lists
from ferry.runner.key_ranges import KeyRange as KeyRange
from ferry.runner.key_ranges import ranged_listing
from ferry.runner.loop_thread import LoopThread
from ferry.runner.migration import TaskFailure, failure_for
from ferry.storage.base import Backend, first_listed
from ferry.storage.pressure import is_throttle
from ferry.storage.wrappers import RetryingBackend, object_budget

log = logging.getLogger("ferry.sync")
T = TypeVar("T")


def _log_failure(what: str, exc: BaseException) -> None:
    """One line for a fault of Ferry's own database (it passes, and the work is tried again); a traceback for
    anything else."""
    if isinstance(exc, LocalStateError):
        log.warning("sync: %s waits: %s", what, exc.message)
    else:
        log.error("sync: %s failed", what, exc_info=exc)

MiB: Final = 1024 * 1024
BackendOpener = Callable[[SyncTaskRow], tuple[Backend, Backend]]
_MD5_ETAG: Final = re.compile(r"^[0-9a-f]{32}$")
_RESTORE_DAYS: Final = 1
_REASON_MAX: Final = 1024
_PROBE_SECONDS: Final = 5.0
# failure_for's code for a fatal refusal that names no cause of the task's (a TLS or connection failure...).
_NO_TASK_CAUSE: Final = "TRF.0001"
_FAILED_LIST_MAX: Final = 100_000  # keys in a failed list at most, as in OMS
_FAILED_LIST_EVERY: Final = 5.0  # seconds between two writes of one task's failed list, at least


def env_number(env: Mapping[str, str], name: str, default: float) -> float:
    """The non-negative number of the environment variable `name`, or `default` when it is unset or blank."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise UsageError(f"{name} must not be negative")
    return value


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """Deployment settings of the sync workers (see the module docstring for the environment names)."""

    reconcile_seconds: float = 300.0
    propagate_deletes: bool = False
    delete_cap: int = 1000
    concurrency: int = 32
    reconcile_concurrency: int = 16
    lease_seconds: float = 60.0
    max_attempts: int = 8
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    restore_poll_seconds: float = 600.0
    poll_seconds: float = 1.0
    tasks_refresh_seconds: float = 2.0
    flush_seconds: float = 0.05
    claim_gather_seconds: float = 0.01
    memory_limit: int = 256 * MiB
    node_id: str = field(default_factory=socket.gethostname)
    # Whether these workers claim and run whole reconciliations themselves (embedded mode). In distributed
    # mode the server splits each reconciliation into range units instead, and workers only run those.
    reconcile_here: bool = True
    # Whether to take back, at start, the event leases of dead processes of this host (owners named
    # `host/pid/...`, as the workers of distributed mode are): a worker restarted after a crash goes on with
    # what its predecessor held at once instead of after the lease.
    reclaim_dead: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SyncSettings:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            reconcile_seconds=env_number(env, "FERRY_SYNC_RECONCILE_SECONDS", d.reconcile_seconds),
            propagate_deletes=_env_bool(env, "FERRY_SYNC_PROPAGATE_DELETES"),
            delete_cap=int(env_number(env, "FERRY_SYNC_DELETE_CAP", d.delete_cap)),
            concurrency=max(1, int(env_number(env, "FERRY_SYNC_CONCURRENCY", d.concurrency))),
            reconcile_concurrency=max(1, int(env_number(env, "FERRY_SYNC_RECONCILE_CONCURRENCY",
                                                        d.reconcile_concurrency))),
            lease_seconds=max(1.0, env_number(env, "FERRY_SYNC_LEASE_SECONDS", d.lease_seconds)),
            max_attempts=max(1, int(env_number(env, "FERRY_SYNC_MAX_ATTEMPTS", d.max_attempts))),
            retry_base_seconds=env_number(env, "FERRY_SYNC_RETRY_BASE_SECONDS", d.retry_base_seconds),
            retry_max_seconds=env_number(env, "FERRY_SYNC_RETRY_MAX_SECONDS", d.retry_max_seconds),
            restore_poll_seconds=env_number(env, "FERRY_SYNC_RESTORE_POLL_SECONDS", d.restore_poll_seconds),
            poll_seconds=max(0.01, env_number(env, "FERRY_SYNC_POLL_SECONDS", d.poll_seconds)),
            node_id=env.get("FERRY_NODE_ID") or d.node_id,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number `attempts` (1-based): exponential, capped, with jitter."""
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2.0 ** (attempts - 1))
        # Half fixed, half random: spreads a burst of failures without ever retrying at once.
        return ceiling * (0.5 + random.random() / 2)


class SyncWaker:
    """Lets any thread (an API request that just committed events) wake the workers' event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: list[asyncio.Event] = []

    def subscribe(self) -> asyncio.Event:
        """Called inside the workers' loop: an event that every `notify` sets (set to begin with, so what
        was notified before anyone listened is looked at straight away)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is not loop:
                self._loop, self._events = loop, []
            event = asyncio.Event()
            event.set()
            self._events.append(event)
            return event

    def unbind(self) -> None:
        with self._lock:
            self._loop, self._events = None, []

    def notify(self) -> None:
        with self._lock:
            loop, events = self._loop, tuple(self._events)
        if loop is not None and events:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to wake
                loop.call_soon_threadsafe(_set_all, events)


def _set_all(events: tuple[asyncio.Event, ...]) -> None:
    for event in events:
        event.set()


def _overwrite_mode(consistency: ConsistencyCheck) -> OverwriteMode:
    # The task's consistency rule decides both "does this key need copying" and "did the copy succeed".
    if consistency is ConsistencyCheck.CRC64:
        return OverwriteMode.CRC64_COMPARISON_OVERWRITE
    return OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE


class _Runtime:
    """One task generation's live state: its backends and the routine that copies and verifies its keys."""

    def __init__(self, row: SyncTaskRow, src: Backend, dst: Backend, budget: MemoryBudget) -> None:
        """Raises UsageError when the destination has no class of the task's dst_storage_policy."""
        self.row = row
        self.src = src
        self.dst = dst
        spec = row.spec
        consistency = ConsistencyCheck(spec.consistency_check)
        self.overwrite = _overwrite_mode(consistency)
        self.restore = spec.enable_restore
        opts = CopyOptions(consistency=consistency, metadata=spec.enable_metadata_migration,
                           storage_class=spec.dst_storage_policy)
        self.copier = VerifiedCopier(src, dst, opts, budget)
        self.users = 0
        self.retired = False
        # The last check of whether the task as a whole works (see SyncWorkers._task_failure), and when.
        self.probe: asyncio.Future[TaskFailure | None] | None = None
        self.probed_at = 0.0

    async def close(self) -> None:
        for backend in (self.src, self.dst):
            with contextlib.suppress(Exception):
                await backend.close()


@dataclass(frozen=True, slots=True)
class _Done:
    outcome: str  # success | skip
    size: int = 0


class _Retry(Exception):
    """Try the key again later: `delay` seconds from now, `counts` = whether it uses up an attempt."""

    def __init__(self, reason: str, delay: float | None = None, counts: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.counts = counts


class _GiveUp(Exception):
    def __init__(self, reason: str, stop: TaskFailure | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stop = stop  # the task as a whole failed: stop it once this key's outcome is on disk


Lister = Callable[[Backend], AsyncIterator[ObjectInfo]]  # the part of a bucket one reconciliation unit compares


@dataclass(slots=True)
class RangeProgress:
    """How far one range of a reconciliation got: source keys compared, copied (and their bytes), and the
    last source key planned (the listing is merged in ascending order)."""

    compared: int = 0
    copied: int = 0
    bytes: int = 0
    last_key: str | None = None


def _in_range(backend: Backend, span: KeyRange) -> AsyncIterator[ObjectInfo]:
    """The backend's listing, limited to `span` (the whole listing for an open span)."""
    if span == (None, None):
        return backend.list()
    return ranged_listing(backend, *span)


def _reason(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, FerryError) else f"{type(exc).__name__}: {exc}"
    return text[:_REASON_MAX]


class SyncWorkers:
    """The event workers and reconcilers of every SYNCHRONIZING task, in one asyncio loop."""

    def __init__(
        self, engine: Engine, opener: BackendOpener, settings: SyncSettings | None = None, *,
        waker: SyncWaker | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = SyncRepo(engine)
        self.opener = opener
        self.settings = settings or SyncSettings()
        self.waker = waker or SyncWaker()
        self.clock = clock
        self.owner = f"{self.settings.node_id}/{uuid.uuid4().hex[:12]}"
        self._runtimes: dict[str, _Runtime] = {}
        self._open_errors: dict[str, str] = {}
        self._rows: dict[str, SyncTaskRow] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._outcomes: list[EventOutcome] = []
        self._stops: dict[str, tuple[_Runtime, TaskFailure]] = {}  # tasks to stop once their outcomes are flushed
        self._flush_lock = asyncio.Lock()
        self._budget: MemoryBudget | None = None
        self._wake: asyncio.Event | None = None
        self._tasks_changed: asyncio.Event | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._lists_due: set[str] = set()  # tasks whose failed list must be written again
        self._listed: dict[str, tuple[int, float]] = {}  # per task: keys in the list last written, and when

    # -- the whole -------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then finish in-flight keys, record them, and return."""
        self._budget = MemoryBudget(self.settings.memory_limit)
        self._wake = self.waker.subscribe()
        self._tasks_changed = self.waker.subscribe()
        # Leases of this node's earlier life (a crash, a kill -9) are ours to take back now, not after expiry.
        released = await asyncio.to_thread(self.repo.release_leases, f"{self.settings.node_id}/")
        if self.settings.reclaim_dead:
            released += await asyncio.to_thread(self._release_dead)
        if released:
            log.info("reclaimed %d sync events leased before a restart", released)
        loops = [
            asyncio.create_task(self._claim_loop(stop), name="sync-claim"),
            asyncio.create_task(self._tasks_loop(stop), name="sync-tasks"),
            asyncio.create_task(self._flush_loop(stop), name="sync-flush"),
            asyncio.create_task(self._heartbeat_loop(stop), name="sync-heartbeat"),
            asyncio.create_task(self._failed_lists_loop(stop), name="sync-failed-lists"),
        ]
        try:
            await stop.wait()
        finally:
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for t in self._reconciling.values():
                t.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            await asyncio.gather(*self._reconciling.values(), return_exceptions=True)
            await self._flush()
            for rt in self._runtimes.values():
                await rt.close()
            self._runtimes.clear()
            self.waker.unbind()

    def _release_dead(self) -> int:
        host = socket.gethostname()
        released = 0
        for owner in self.repo.lease_owners(f"{host}/"):
            if owner_is_dead(owner, host):
                released += self.repo.release_leases(owner)
        return released

    async def _sleep_or_stop(self, stop: asyncio.Event, seconds: float) -> None:
        await wait_event(stop, seconds)

    # -- tasks and their runtimes ----------------------------------------------------------------------------
    async def _tasks_loop(self, stop: asyncio.Event) -> None:
        assert self._tasks_changed is not None
        while not stop.is_set():
            self._tasks_changed.clear()
            try:
                await self._refresh_tasks()
            except Exception as exc:
                _log_failure("refreshing the task list", exc)
            # Every tasks_refresh_seconds, or soon after a notification (a task created or started starts
            # its first reconciliation within a fraction of a second), but never more than 4 times a second.
            await self._sleep_or_stop(stop, min(0.25, self.settings.tasks_refresh_seconds))
            await wait_event(self._tasks_changed, self.settings.tasks_refresh_seconds)

    async def _refresh_tasks(self) -> None:
        """Reload the running tasks (one reload at a time: concurrent callers share it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._reload_tasks())
        await asyncio.shield(self._refreshing)

    async def _reload_tasks(self) -> None:
        rows = {r.id: r for r in await asyncio.to_thread(self.repo.active_tasks)}
        self._rows = rows
        for task_id, rt in list(self._runtimes.items()):
            row = rows.get(task_id)
            if row is None or row.generation != rt.row.generation:
                # Stopped, deleted or restarted with new credentials: in-flight work finishes on the old one.
                del self._runtimes[task_id]
                rt.retired = True
                if rt.users == 0:
                    await rt.close()
                task = self._reconciling.get(task_id)
                if task is not None and row is None:
                    task.cancel()
        if not self.settings.reconcile_here:
            return
        now = self.clock()
        interval = self.settings.reconcile_seconds
        for task_id, row in rows.items():
            if task_id in self._reconciling:
                continue
            if row.reconciled_at is not None and row.reconciled_at > now - interval:
                continue  # not due: no need to ask the database (a write) for the right to run it
            claimed = await asyncio.to_thread(
                self.repo.claim_reconcile, task_id, self.owner, now, interval, self.settings.lease_seconds,
            )
            if claimed:
                task = asyncio.create_task(self._reconcile(row), name=f"sync-reconcile-{task_id}")
                self._reconciling[task_id] = task
                task.add_done_callback(self._reconcile_done(task_id))

    def _reconcile_done(self, task_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._reconciling.pop(task_id, None)

        return forget

    async def _runtime(self, task_id: str) -> _Runtime | None:
        rt = self._runtimes.get(task_id)
        if rt is not None:
            return rt
        row = self._rows.get(task_id)
        if row is None:
            return None
        try:
            src, dst = self.opener(row)
        except Exception as exc:
            # Bad endpoint table, undecryptable credentials...: the keys wait (with backoff) for a fix.
            log.warning("sync %s: cannot open the task's stores: %s", task_id, _reason(exc))
            self._open_errors[task_id] = _reason(exc)
            return None
        # Short in-call retries smooth over a hiccup; the queue's own backoff handles anything longer.
        # Throttling is waited out in the call for a minute, then by the queue (without using up attempts).
        src = RetryingBackend(src, attempts=3, base_delay=0.1, max_delay=2.0, throttle_patience=60.0)
        dst = RetryingBackend(dst, attempts=3, base_delay=0.1, max_delay=2.0, throttle_patience=60.0)
        assert self._budget is not None
        try:
            rt = _Runtime(row, src, dst, self._budget)
        except UsageError as exc:
            # A storage policy the destination cannot honour: the keys wait (with backoff) for a fix.
            log.warning("sync %s: %s", task_id, _reason(exc))
            self._open_errors[task_id] = _reason(exc)
            await asyncio.gather(src.close(), dst.close(), return_exceptions=True)
            return None
        self._runtimes[task_id] = rt
        return rt

    @contextlib.asynccontextmanager
    async def _using(self, task_id: str):  # type: ignore[no-untyped-def]
        rt = await self._runtime(task_id)
        if rt is not None:
            rt.users += 1
        try:
            yield rt
        finally:
            if rt is not None:
                rt.users -= 1
                if rt.retired and rt.users == 0:
                    await rt.close()

    # -- the event queue ---------------------------------------------------------------------------------
    async def _claim_loop(self, stop: asyncio.Event) -> None:
        assert self._wake is not None
        s = self.settings
        while not stop.is_set():
            free = s.concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not self._rows:
                # No running task known yet (or the list is stale): look again before claiming.
                await self._refresh_tasks()
            if s.claim_gather_seconds:
                # Events arrive one request at a time; a moment's wait lets a burst be claimed in one
                # transaction instead of one each, for a few milliseconds of latency.
                await asyncio.sleep(s.claim_gather_seconds)
            self._wake.clear()
            try:
                claimed = await asyncio.to_thread(self.repo.claim, self.owner, self.clock(), s.lease_seconds, free)
            except Exception as exc:
                _log_failure("claiming events", exc)
                claimed = []
                await self._sleep_or_stop(stop, s.poll_seconds)
            for ev in claimed:
                task = asyncio.create_task(self._process(ev))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if len(claimed) == free:
                continue
            timeout = s.poll_seconds
            if not claimed:
                try:
                    due = await asyncio.to_thread(self.repo.next_due)
                except Exception as exc:  # the loop must outlive a database restart
                    _log_failure("reading the queue", exc)
                    due = None
                if due is not None:
                    timeout = min(timeout, max(0.0, due - self.clock()))
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _process(self, ev: ClaimedEvent) -> None:
        if ev.task_id not in self._rows:
            # Claimed events belong to running tasks; one we do not know yet was created a moment ago.
            await self._refresh_tasks()
        async with self._using(ev.task_id) as rt:
            if rt is None and ev.task_id not in self._rows:
                # The task stopped (or is being refreshed): hand the key back untouched.
                self._record(EventOutcome(ev.task_id, ev.key, ev.version, "release"))
                return
            outcome = await self._attempt(rt, ev.task_id, ev.key, None, ev.attempts)
            if outcome.outcome in ("success", "skip"):
                # From the first acceptance of this version of the key: retries and backoff are in it.
                SYNC_EVENT_LATENCY.observe(max(self.clock() - ev.received_at, 0.0), outcome.outcome)
            self._record(dataclasses.replace(outcome, version=ev.version))
            await self._stop_if_failed(ev.task_id)

    async def _attempt(
        self, rt: _Runtime | None, task_id: str, key: str, listed: ObjectInfo | None, attempts: int
    ) -> EventOutcome:
        """Sync one key and say what became of it (`version` left None for the caller to fill)."""
        s = self.settings
        try:
            if rt is None:
                why = self._open_errors.get(task_id, "unknown error")
                raise _Retry(f"the task's stores could not be opened: {why}")
            with object_budget():
                done = await self._sync_key(rt, key, listed)
            return EventOutcome(task_id, key, None, done.outcome, size=done.size)  # type: ignore[arg-type]
        except _GiveUp as exc:
            log.info("sync %s: %r failed: %s", task_id, key, exc.reason)
            if exc.stop is not None and rt is not None:
                self._stops[task_id] = (rt, exc.stop)
            return EventOutcome(task_id, key, None, "failed", reason=exc.reason)
        except _Retry as exc:
            tries = attempts + 1
            if exc.counts and tries >= s.max_attempts:
                log.info("sync %s: %r failed after %d attempts: %s", task_id, key, tries, exc.reason)
                return EventOutcome(task_id, key, None, "failed", reason=exc.reason)
            delay = exc.delay if exc.delay is not None else s.backoff(tries)
            return EventOutcome(task_id, key, None, "retry", reason=exc.reason,
                                next_attempt_at=self.clock() + delay)
        except asyncio.CancelledError:
            return EventOutcome(task_id, key, None, "release")

    async def _sync_key(self, rt: _Runtime, key: str, listed: ObjectInfo | None) -> _Done:
        """HEAD both sides (unless reconciliation listed the source), decide, copy, verify."""
        try:
            if listed is None:
                src_info, dst_info = await asyncio.gather(rt.src.head(key), self._head_or_none(rt.dst, key))
            else:
                src_info, dst_info = listed, None  # the planner already decided that it must be copied
        except FerryError as exc:
            raise await self._failed(rt, exc) from None
        if listed is None:
            decision = decide(src_info, dst_info, rt.overwrite)
            if isinstance(decision, SkipReason) and _etags_differ(src_info, dst_info):
                # Same size and a destination not older (both within the same second, say) yet different
                # content: an event says the key changed, and MD5 ETags prove it did.
                decision = CopyReason.SIZE_DIFFERS
            if isinstance(decision, SkipReason):
                return _Done("skip")
        return await self._copy_verified(rt, src_info)

    @staticmethod
    async def _head_or_none(backend: Backend, key: str) -> ObjectInfo | None:
        try:
            return await backend.head(key)
        except NotFoundError:
            return None

    async def _copy_verified(self, rt: _Runtime, src_info: ObjectInfo) -> _Done:
        if rt.restore and src_info.restore is Restore.ONGOING:
            # The HEAD says its restore is under way: no read to be refused, no request to repeat.
            raise _Retry("archived: its restore is under way", delay=self.settings.restore_poll_seconds,
                         counts=False)
        try:
            out = await rt.copier.copy(src_info)
        except ArchivedObjectError as exc:
            if not rt.restore:
                raise _GiveUp(f"the source object is archived and enable_restore is off ({exc.message})") from None
            with contextlib.suppress(FerryError):
                # Asking again is harmless (stores answer "already in progress"); it covers a lost request.
                await rt.src.restore(src_info.key, _RESTORE_DAYS)
            # Restores take minutes to hours: wait without using up attempts.
            raise _Retry("archived: restore requested, waiting for it to finish",
                         delay=self.settings.restore_poll_seconds, counts=False) from None
        except FerryError as exc:
            raise await self._failed(rt, exc) from None
        return _Done("success", out.size)

    async def _failed(self, rt: _Runtime, exc: FerryError) -> _GiveUp | _Retry:
        """What becomes of a key whose HEAD or copy failed with `exc`."""
        if isinstance(exc, NotFoundError):
            return _GiveUp("the source object does not exist")  # before the copy or during it
        if isinstance(exc, UsageError | CdnMismatchError):
            # A CDN serving other bytes than the bucket is OMS's per-object failure; the next reconciliation
            # (or a restart) tries the key again, checked again.
            return _GiveUp(_reason(exc))
        if isinstance(exc, FatalError):
            return await self._fatal(rt, exc)
        # The source kept changing, the write failed verification, a store kept failing: later, again. A store
        # that is only throttling uses up no attempt: the key waits its turn.
        return _Retry(_reason(exc), counts=not is_throttle(exc))

    # -- failures of the task as a whole -----------------------------------------------------------------------
    async def _fatal(self, rt: _Runtime, exc: FatalError) -> _GiveUp | _Retry:
        """What becomes of a key that met a fatal store error: when the task as a whole fails, the key fails
        with the task's reason (it is retried when the task is started again) and the task stops; when only
        this object is refused, it is retried as before."""
        failure = await self._task_failure(rt)
        if failure is None:
            return _Retry(_reason(exc))
        return _GiveUp(f"the sync task stopped: {failure.code} {failure.message}"[:_REASON_MAX], stop=failure)

    async def _stop_if_failed(self, task_id: str) -> None:
        """Stop a task that a key found failing as a whole, after that key's outcome is on disk: a task shown
        stopped already counts the key that stopped it."""
        pending = self._stops.pop(task_id, None)
        if pending is not None:
            await self._flush()
            await self._stop_failed(*pending)

    async def _task_failure(self, rt: _Runtime) -> TaskFailure | None:
        """Whether the task's keys and buckets work, by listing one object on each side; one check at a time
        per task, and its answer reused for _PROBE_SECONDS, so a burst of failing keys costs one check."""
        now = time.monotonic()
        if rt.probe is None or (rt.probe.done() and now - rt.probed_at >= _PROBE_SECONDS):
            rt.probed_at = now
            rt.probe = asyncio.ensure_future(self._probe(rt))
        return await asyncio.shield(rt.probe)

    @staticmethod
    async def _probe(rt: _Runtime) -> TaskFailure | None:
        for side, backend in (("source", rt.src), ("destination", rt.dst)):
            try:
                await first_listed(backend)
            except FatalError as exc:
                failure = failure_for(side, exc)
                if failure.code != _NO_TASK_CAUSE:
                    return failure
            except Exception:
                # Unreachable or busy for now (or a fault of ours, logged): no verdict on the keys or the bucket.
                log.debug("sync %s: checking the %s bucket failed", rt.row.id, side, exc_info=True)
                continue
        return None

    async def _stop_failed(self, rt: _Runtime, failure: TaskFailure) -> None:
        if rt.retired:
            return  # stopped (or started with other keys) meanwhile
        if await asyncio.to_thread(self.repo.fail_task, rt.row.id, rt.row.generation, failure.code,
                                   failure.message, self.clock()):
            log.warning("sync %s: stopped: %s %s", rt.row.id, failure.code, failure.message)
        if self._tasks_changed is not None:
            self._tasks_changed.set()  # retire the runtime now rather than at the next refresh

    def _record(self, outcome: EventOutcome) -> None:
        self._outcomes.append(outcome)

    # -- recording -------------------------------------------------------------------------------------------
    async def _flush(self) -> None:
        # One flush at a time: a caller that must know its outcomes are on disk (a reconciliation about to
        # report itself finished) waits for the flush already under way, which may hold them.
        async with self._flush_lock:
            batch, self._outcomes = self._outcomes, []
            if not batch:
                return
            try:
                await asyncio.to_thread(self.repo.complete, batch, self.clock())
            except Exception as exc:
                # Put them back: the next flush tries again; the leases keep the keys from being re-claimed.
                _log_failure(f"recording {len(batch)} outcomes (tried again)", exc)
                self._outcomes[:0] = batch
                return
            for o in batch:
                # A new failure, or a success that may end one in a list already written.
                listed = self._listed.get(o.task_id)
                if o.outcome == "failed" or (o.outcome == "success" and listed is not None and listed[0]):
                    self._lists_due.add(o.task_id)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._sleep_or_stop(stop, self.settings.flush_seconds)
            before = len(self._outcomes)
            await self._flush()
            if before and self._wake is not None:
                # A key whose newer event arrived mid-copy is pending again: look at the queue now.
                self._wake.set()

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        s = self.settings
        while not stop.is_set():
            await self._sleep_or_stop(stop, s.lease_seconds / 3)
            until = self.clock() + s.lease_seconds
            try:
                await asyncio.to_thread(self.repo.renew, self.owner, until)
                for task_id in list(self._reconciling):
                    await asyncio.to_thread(self.repo.renew_reconcile, task_id, self.owner, until)
            except Exception as exc:
                _log_failure("renewing leases", exc)

    # -- reconciliation --------------------------------------------------------------------------------------
    async def _reconcile(self, row: SyncTaskRow) -> None:
        error: str | None = None
        started = time.monotonic()
        copied = failed = deleted = 0
        try:
            async with self._using(row.id) as rt:
                if rt is None:
                    return
                try:
                    copied, failed, orphans = await self._reconcile_copies(rt)
                    if orphans is not None:
                        deleted, error = await self._reconcile_deletes(rt, orphans)
                except FatalError:
                    # A listing refused: the task as a whole may have stopped working (keys, bucket).
                    failure = await self._task_failure(rt)
                    if failure is not None:
                        await self._stop_failed(rt, failure)
                    raise
        except asyncio.CancelledError:
            error = "interrupted"
            raise
        except FerryError as exc:
            error = _reason(exc)
            log.warning("sync %s: reconciliation failed: %s", row.id, error)
        except Exception as exc:
            error = _reason(exc)
            log.exception("sync %s: reconciliation failed", row.id)
        finally:
            # Outcomes first, so that a finished reconciliation is always fully counted in the statistics.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flush())
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(
                    self.repo.finish_reconcile, row.id, self.owner, self.clock(),
                    None if error == "interrupted" else error,
                ))
            self._lists_due.add(row.id)
            if error != "interrupted":
                log.info("sync %s: reconciled in %.1fs: %d copied, %d failed, %d deleted%s", row.id,
                         time.monotonic() - started, copied, failed, deleted, f" ({error})" if error else "")

    async def reconcile_range(self, task_id: str, generation: int, span: KeyRange,
                              progress: RangeProgress | None = None, lister: Lister | None = None) -> str | None:
        """Reconcile one range of `task_id` (distributed mode): what differs is copied, and its outcomes are
        recorded in the statistics as a whole reconciliation records them. None, or why it failed. The server
        that split the reconciliation records its end once every range is done. `lister`, when given, lists
        the part of each bucket to compare instead of `span` (some folders, say). Must run on this object's
        loop (see SyncBackground.submit) while `run` runs."""
        await self._refresh_tasks()
        row = self._rows.get(task_id)
        if row is None or row.generation != generation:
            return None  # stopped, deleted or started again meanwhile: the server drops this run
        error: str | None = None
        started = time.monotonic()
        copied = failed = deleted = 0
        try:
            async with self._using(task_id) as rt:
                if rt is None:
                    return f"the task's stores could not be opened: {self._open_errors.get(task_id, 'unknown error')}"
                try:
                    copied, failed, orphans = await self._reconcile_copies(rt, span, progress, lister)
                    if orphans is not None:
                        deleted, error = await self._reconcile_deletes(rt, orphans)
                except FatalError:
                    failure = await self._task_failure(rt)
                    if failure is not None:
                        await self._stop_failed(rt, failure)
                    raise
        except FerryError as exc:
            error = _reason(exc)
            log.warning("sync %s: reconciling %s failed: %s", task_id, _span_text(span), error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _reason(exc)
            log.exception("sync %s: reconciling %s failed", task_id, _span_text(span))
        finally:
            # Outcomes first, so that a range reported done is fully counted in the statistics.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flush())
            self._lists_due.add(task_id)
        log.info("sync %s: reconciled %s in %.1fs: %d copied, %d failed, %d deleted%s", task_id, _span_text(span),
                 time.monotonic() - started, copied, failed, deleted, f" ({error})" if error else "")
        return error

    async def _reconcile_copies(
        self, rt: _Runtime, span: KeyRange = (None, None), progress: RangeProgress | None = None,
        lister: Lister | None = None,
    ) -> tuple[int, int, list[str] | None]:
        """Copy what differs; with deletes propagated, the same pass also collects the destination keys that have
        no source (up to one past the cap: enough to know there are too many). Returns copied, failed, those keys
        (None when deletes are not propagated). `span` limits the comparison to the keys after its first and up
        to its second (None: open), one range unit of a distributed reconciliation."""
        propagate, cap = self.settings.propagate_deletes, self.settings.delete_cap
        own_list = failed_lists.sync_list_key(rt.row.id)
        orphans: list[str] | None = [] if propagate else None
        side: Lister = lister or (lambda backend: _in_range(backend, span))
        planner = Planner(
            side(rt.src), rt.src.capabilities.list_order, side(rt.dst),
            rt.dst.capabilities.list_order, overwrite_mode=rt.overwrite,
            max_key_bytes=rt.dst.capabilities.max_key_bytes,
        )
        plan: AsyncIterator[Action | DstOnly] = planner.march() if propagate else aiter(planner)
        queue: asyncio.Queue[ObjectInfo | None] = asyncio.Queue(maxsize=self.settings.reconcile_concurrency * 2)
        counts = {"success": 0, "failed": 0}

        async def worker() -> None:
            while (obj := await queue.get()) is not None:
                out = await self._attempt(rt, rt.row.id, obj.key, obj, 0)
                if out.outcome == "success":
                    counts["success"] += 1
                    if progress is not None:
                        progress.copied += 1
                        progress.bytes += out.size
                elif out.outcome in ("failed", "retry"):
                    counts["failed"] += 1
                if out.outcome != "release":
                    self._record(out)
                await self._stop_if_failed(rt.row.id)

        workers = [asyncio.create_task(worker()) for _ in range(self.settings.reconcile_concurrency)]
        try:
            async for action in plan:
                if progress is not None and not isinstance(action, DstOnly):
                    progress.compared += 1
                    progress.last_key = action.src.key
                if isinstance(action, Copy):
                    await queue.put(action.src)
                elif isinstance(action, Fail):
                    self._record(EventOutcome(rt.row.id, action.src.key, None, "failed", reason=action.reason))
                    counts["failed"] += 1
                elif (isinstance(action, DstOnly) and orphans is not None and len(orphans) <= cap
                      and action.dst.key != own_list):
                    orphans.append(action.dst.key)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await planner.aclose()
        return counts["success"], counts["failed"], orphans

    async def _reconcile_deletes(self, rt: _Runtime, orphans: list[str]) -> tuple[int, str | None]:
        """Delete destination objects whose source is gone — all of them or, above the cap, none."""
        cap = self.settings.delete_cap
        if len(orphans) > cap:
            # A mass disappearance is more likely a mistake (wrong bucket, emptied by accident) than intent.
            msg = (f"more than {cap} destination objects have no source; none deleted "
                   "(raise FERRY_SYNC_DELETE_CAP if this is intended)")
            log.warning("sync %s: %s", rt.row.id, msg)
            return 0, msg
        deleted = 0
        for key in orphans:
            try:
                await rt.src.head(key)
                continue  # it came back (or the listing missed it): keep the copy
            except NotFoundError:
                pass
            await rt.dst.delete(key)
            deleted += 1
        return deleted, None

    # -- failed lists in the destination bucket --------------------------------------------------------------
    async def _failed_lists_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._sleep_or_stop(stop, self.settings.poll_seconds)
            now = time.monotonic()
            for task_id in list(self._lists_due):
                if now - self._listed.get(task_id, (0, -_FAILED_LIST_EVERY))[1] >= _FAILED_LIST_EVERY:
                    self._lists_due.discard(task_id)
                    try:
                        await self._write_failed_list(task_id)
                    except Exception:
                        log.exception("sync %s: writing the failed object list failed", task_id)

    async def _write_failed_list(self, task_id: str) -> None:
        """Write the keys `task_id` gave up on into its destination bucket, or remove the list if none are left."""
        key = failed_lists.sync_list_key(task_id)
        async with self._using(task_id) as rt:
            if rt is None:
                return  # stopped or deleted: its list stays as it was
            last = self._listed.get(task_id)
            try:
                with tempfile.TemporaryFile() as fh:
                    size, count = await asyncio.to_thread(self._failed_list_file, task_id, fh)
                    if count:
                        await failed_lists.upload(rt.dst, key, fh, size)
                    elif last is None or last[0] != 0:  # a list may be there (written before, or by a past run)
                        with contextlib.suppress(NotFoundError):
                            await rt.dst.delete(key)
            except FerryError as exc:
                log.warning("sync %s: the failed object list was not written to the destination bucket: %s",
                            task_id, _reason(exc))
                self._lists_due.add(task_id)  # tried again after a pause
                count = -1  # unknown: the next write or removal is not skipped
            self._listed[task_id] = (count, time.monotonic())

    def _failed_list_file(self, task_id: str, fh: IO[bytes]) -> tuple[int, int]:
        """Write the task's given-up keys as JSON lines into `fh`: (bytes, keys)."""
        count, after = 0, None
        while count < _FAILED_LIST_MAX:
            page = self.repo.given_up(task_id, after, min(1000, _FAILED_LIST_MAX - count))
            if not page:
                break
            for p in page:
                fh.write(json.dumps({"key": p.key, "reason": p.reason, "attempts": p.attempts,
                                     "failed_at": int(p.updated_at * 1000)}, ensure_ascii=False).encode() + b"\n")
            count += len(page)
            after = page[-1].key
        return fh.tell(), count


def _span_text(span: KeyRange) -> str:
    after, last = span
    return f"keys ({after!r}, {last!r}]" if span != (None, None) else "every key"


def _etags_differ(src: ObjectInfo, dst: ObjectInfo | None) -> bool:
    if dst is None or not src.etag or not dst.etag:
        return False
    a, b = src.etag.lower(), dst.etag.lower()
    return bool(_MD5_ETAG.match(a) and _MD5_ETAG.match(b) and a != b)


class SyncBackground(LoopThread):
    """The sync workers running in a thread of their own (their own event loop), as `ferry serve` uses them.

    Stopping does not cancel them: they finish in-flight keys and record them, and `stop()` waits for that.
    """

    thread_name = "ferry-sync"

    def __init__(self, workers: SyncWorkers) -> None:
        super().__init__()
        self.workers = workers
        self.waker = workers.waker
        self._stop: asyncio.Event | None = None

    def notify(self) -> None:
        self.waker.notify()

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `work` on the workers' own loop (a distributed reconciliation range, from a worker's unit
        thread); cancelling the future cancels it there."""
        loop = self._loop
        if loop is None or loop.is_closed():
            work.close()
            raise RuntimeError("the sync workers are not running")
        return asyncio.run_coroutine_threadsafe(work, loop)

    async def run(self) -> None:
        self._stop = stop = asyncio.Event()
        await self.workers.run(stop)

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
