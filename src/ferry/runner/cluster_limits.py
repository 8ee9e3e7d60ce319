"""Limits that hold for the whole cluster: a task's bandwidth and a source's request rate as one shared budget.

In distributed mode a task runs as many units on many workers at once. A per-process limiter would let each
worker take the task's whole `bandwidth_policy`, multiplying it by the worker count; here every worker draws on
one token bucket in the database (`BudgetRepo`, refilled by the database's clock). To keep the database out of
the per-read path, a worker takes tokens in chunks of about `chunk_seconds` of the rate and spends them locally;
with W workers, at most W chunks are held unspent at any moment, so the task's rate stays within a few percent of
the limit (proved by tests/integration/test_cluster_limits.py with 1 and 3 processes against PostgreSQL).

Budget names (rows of `cluster_budgets`):
- `task:<id>:bytes` — a migration task's bytes/s, following the window of its bandwidth policy in force now;
- `source:<scheme://host:port>/<bucket>:requests` — requests/s to one source bucket, for every task and worker
  reading it. Its rate is the deployment setting FERRY_SOURCE_REQUEST_RATE (requests per second, unset = no
  limit), set alike on every worker: it is a property of the source account's throttling, not of one task, and
  the OMS task API has no field for it.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Final

from sqlalchemy import Engine

from ferry.aio import wait_event
from ferry.db.cluster_repo import BudgetRepo
from ferry.engine.bandwidth import Window, limit_at
from ferry.errors import UsageError
from ferry.objects import ObjectInfo, PartInfo
from ferry.storage.base import Backend, close_listing
from ferry.storage.wrappers import BackendWrapper, BandwidthLimiter

__all__ = ["CHUNK_SECONDS", "ClusterBandwidthLimiter", "ClusterRequestRate", "RequestLimitedBackend",
           "request_rate_setting", "shared_task_limiter", "source_budget", "source_rate_for", "task_budget"]

# Tokens are taken from the database in chunks of this many seconds of the rate: at 10 MiB/s a chunk is
# 768 KiB, so a worker copying at the limit writes the budget row about 13 times a second.
CHUNK_SECONDS: Final = 0.075
# What an idle budget may save up: a task that starts, or resumes after a pause, may run this far ahead.
BURST_SECONDS: Final = 0.25
# A listing page of S3 and its kin holds up to 1,000 keys: one request per this many keys listed.
LIST_PAGE: Final = 1000
RATE_SETTING: Final = "FERRY_SOURCE_REQUEST_RATE"


def task_budget(task_id: int | str) -> str:
    return f"task:{task_id}:bytes"


def source_budget(endpoint: str, bucket: str) -> str:
    """The budget of one source bucket; `endpoint` is scheme://host:port, never with a user or password."""
    return f"source:{endpoint}/{bucket}:requests"


def request_rate_setting(environ: dict[str, str] | None = None) -> float | None:
    """FERRY_SOURCE_REQUEST_RATE as requests/s, None when unset."""
    raw = (os.environ if environ is None else environ).get(RATE_SETTING, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1_000_000:
        raise UsageError(f"{RATE_SETTING} must be a number of requests per second above 0, not {raw!r}")
    return value


class _SharedBucket:
    """Spends a cluster-wide token bucket through a local reserve, one database write per chunk taken."""

    def __init__(self, budgets: BudgetRepo, name: str, chunk_seconds: float, burst_seconds: float,
                 min_chunk: float) -> None:
        self.budgets = budgets
        self.name = name
        self.chunk_seconds = chunk_seconds
        self.burst_seconds = burst_seconds
        self.min_chunk = min_chunk
        self.held = 0.0  # tokens paid for in the shared bucket, not yet spent here
        self.takes = 0  # database writes made (for tests and measurements)

    async def spend(self, amount: float, rate: float, changed: asyncio.Event) -> None:
        """Spend `amount` at `rate`/s, taking a chunk from the shared bucket when the reserve runs short and
        waiting as long as the shared bucket's debt says; a rate change (`changed`) cuts the wait short."""
        if self.held >= amount:
            self.held -= amount
            return
        chunk = max(amount - self.held, rate * self.chunk_seconds, self.min_chunk)
        burst = max(rate * self.burst_seconds, chunk)
        wait = await asyncio.to_thread(self.budgets.take, self.name, chunk, rate, burst)
        self.takes += 1
        self.held += chunk - amount
        if wait > 0:
            changed.clear()
            await wait_event(changed, wait)


class ClusterBandwidthLimiter(BandwidthLimiter):
    """A BandwidthLimiter (the interface ThrottledBackend charges) whose bucket is shared by every worker of a
    task: bytes/s for the task as a whole. `limit=None` is unlimited and touches no database."""

    def __init__(self, engine: Engine, name: str, limit: float | None = None, *,
                 windows: Iterable[Window] | None = None, chunk_seconds: float = CHUNK_SECONDS,
                 burst_seconds: float = BURST_SECONDS, clock: Callable[[], datetime] = datetime.now) -> None:
        """`windows` (a bandwidth policy): the limit is the window's in force, looked at again at most once a
        second as bytes are charged, so a unit running across a window's edge changes rate there; else the
        fixed `limit` (None = unlimited), which `set_limit`/`follow` may change."""
        self._engine = engine
        self._shared = _SharedBucket(BudgetRepo(engine), name, chunk_seconds, burst_seconds, min_chunk=1.0)
        self._windows = list(windows) if windows is not None else None
        self._clock = clock
        self._looked = time.monotonic()
        if self._windows is not None:
            limit = limit_at(self._windows, clock())
        super().__init__(limit, burst_seconds=burst_seconds)

    @property
    def takes(self) -> int:
        return self._shared.takes

    def set_windows(self, windows: Iterable[Window]) -> None:
        """Follow this policy from now on (a task's policy changed through the API)."""
        self._windows = list(windows)
        self._looked = time.monotonic()
        self.follow(self._windows, self._clock())

    def follow(self, windows: Iterable[Window], when: datetime | None = None) -> None:
        """Take the rate of the policy window in force at `when` (now): call it as the runner calls
        `_apply_limit`, every progress interval, so a window that opens or closes applies within one."""
        wanted = limit_at(windows, when or datetime.now())
        if wanted != self.limit:
            self.set_limit(wanted)

    @property
    def limit(self) -> float | None:
        if self._windows is not None and time.monotonic() - self._looked >= 1.0:
            self._looked = time.monotonic()
            self.follow(self._windows, self._clock())
        return self._limit

    async def acquire(self, n: int) -> None:
        if n <= 0 or self.limit is None:
            return
        # One taker at a time per process, in FIFO order: the shared bucket's debt is what spaces them.
        async with self._lock:
            limit = self._limit
            if limit is None:
                return
            await self._shared.spend(float(n), limit, self._changed)


_SHARED: collections.OrderedDict[tuple[int, str], ClusterBandwidthLimiter] = collections.OrderedDict()
_SHARED_MAX: Final = 256


def shared_task_limiter(engine: Engine, task_id: int | str, windows: Iterable[Window]) -> ClusterBandwidthLimiter:
    """The one limiter of a task in this process (on this event loop), whichever of its units runs: tokens a
    finished unit took but did not spend are spent by the next, instead of being lost to the task's rate, and
    units running at once queue behind one another instead of each holding a chunk."""
    key = (id(engine), task_budget(task_id))
    limiter = _SHARED.get(key)
    if limiter is None or limiter._engine is not engine:
        limiter = _SHARED[key] = ClusterBandwidthLimiter(engine, key[1], windows=windows)
    else:
        limiter.set_windows(windows)
    _SHARED.move_to_end(key)
    while len(_SHARED) > _SHARED_MAX:
        _SHARED.popitem(last=False)
    return limiter


class ClusterRequestRate:
    """Requests/s to one source bucket, shared by every worker of the cluster; `rate=None` is unlimited."""

    def __init__(self, engine: Engine, name: str, rate: float | None, *,
                 chunk_seconds: float = CHUNK_SECONDS, burst_seconds: float = BURST_SECONDS) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("a request rate must be positive (None means unlimited)")
        self.rate = rate
        self._shared = _SharedBucket(BudgetRepo(engine), name, chunk_seconds, burst_seconds, min_chunk=1.0)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    @property
    def takes(self) -> int:
        return self._shared.takes

    async def acquire(self, n: int = 1) -> None:
        """Wait until `n` more requests may start."""
        if n <= 0 or self.rate is None:
            return
        async with self._lock:
            await self._shared.spend(float(n), self.rate, self._changed)


class RequestLimitedBackend(BackendWrapper):
    """Charges each request made to the wrapped (source) backend to a ClusterRequestRate: one per head, read,
    stream, part listing or restore, and one per listing page. Put it under RetryingBackend so retries are
    charged too: `RetryingBackend(RequestLimitedBackend(raw_source, rate))`."""

    def __init__(self, inner: Backend, rate: ClusterRequestRate) -> None:
        super().__init__(inner)
        self.rate = rate

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        await self.rate.acquire()
        iterator = self.inner.list(prefix, start_after)
        seen = 0
        try:
            async for info in iterator:
                seen += 1
                if seen % LIST_PAGE == 0:
                    await self.rate.acquire()  # the next page's request
                yield info
        finally:
            await close_listing(iterator)

    async def head(self, key: str) -> ObjectInfo:
        await self.rate.acquire()
        return await self.inner.head(key)

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        await self.rate.acquire()
        return await self.inner.read(key, offset=offset, length=length, if_match=if_match)

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        await self.rate.acquire()
        return await self.inner.read_object(key, if_match=if_match)

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        await self.rate.acquire()
        return await self.inner.part_sizes(key, if_match=if_match)

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        await self.rate.acquire()
        return await self.inner.read_stream(key, if_match=if_match)

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        await self.rate.acquire()
        return await self.inner.list_parts(key, upload_id)

    async def restore(self, key: str, days: int) -> None:
        await self.rate.acquire()
        await self.inner.restore(key, days)


def source_rate_for(engine: Engine, endpoint: str, bucket: str,
                    setting: Callable[[], float | None] = request_rate_setting) -> ClusterRequestRate | None:
    """The shared request rate of a source bucket per FERRY_SOURCE_REQUEST_RATE; None when it is unset."""
    rate = setting()
    return None if rate is None else ClusterRequestRate(engine, source_budget(endpoint, bucket), rate)
