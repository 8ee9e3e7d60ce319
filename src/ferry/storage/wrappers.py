"""Backend wrappers for cross-cutting concerns: retry with backoff, bandwidth limits (principle 5).

A wrapper is itself a Backend, keeps the wrapped backend's `name` and `capabilities`, and exposes it as
`inner`; `unwrap` finds the real backend under any stack of wrappers, which server-side copy needs.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

from ferry.aio import wait_event
from ferry.errors import DamagedReadError, DigestMismatchError, FerryError, NotFoundError, TransientError
from ferry.metrics import STORE_REQUEST_ERRORS, STORE_RETRIES, backend_kind, error_code
from ferry.objects import ObjectInfo, ObjectMeta, PartInfo, PutResult
from ferry.settings import StoreTimeouts
from ferry.storage.base import Backend, Capabilities, close_listing
from ferry.storage.pressure import is_throttle

__all__ = ["BackendWrapper", "BandwidthLimiter", "ObjectBudget", "RetryingBackend", "ThrottledBackend", "object_budget",
           "unwrap"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def unwrap(backend: Backend) -> Backend:
    """The innermost backend under any stack of wrappers."""
    while isinstance(backend, BackendWrapper):
        backend = backend.inner
    return backend


class BackendWrapper:
    """Passes every call through to `inner`; subclasses override what they add to."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    @property
    def name(self) -> str:
        return self.inner.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        iterator = self.inner.list(prefix, start_after)
        try:
            async for info in iterator:
                yield info
        finally:
            await close_listing(iterator)

    async def head(self, key: str) -> ObjectInfo:
        return await self.inner.head(key)

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        return await self.inner.read(key, offset=offset, length=length, if_match=if_match)

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        return await self.inner.read_object(key, if_match=if_match)

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        return await self.inner.part_sizes(key, if_match=if_match)

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        return await self.inner.read_stream(key, if_match=if_match)

    async def put(
        self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
        crc64: int | None = None,
    ) -> PutResult:
        return await self.inner.put(key, data, meta, storage_class=storage_class, crc64=crc64)

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        return await self.inner.put_stream(key, size, body, meta, storage_class=storage_class, crc64=crc64,
                                           content_md5=content_md5, trailing_crc32c=trailing_crc32c)

    async def create_multipart(
        self, key: str, meta: ObjectMeta, *, storage_class: str | None = None, crc64: int | None = None
    ) -> str:
        return await self.inner.create_multipart(key, meta, storage_class=storage_class, crc64=crc64)

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> PartInfo:
        return await self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        return await self.inner.list_parts(key, upload_id)

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        return await self.inner.complete_multipart(key, upload_id, parts)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self.inner.abort_multipart(key, upload_id)

    async def copy_from(
        self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
        if_match: str | None = None, storage_class: str | None = None, crc64: int | None = None,
    ) -> PutResult:
        # The inner backend recognises only its own kind as a source, never a wrapper around it.
        return await self.inner.copy_from(
            unwrap(source), src_key, key, meta, if_match=if_match, storage_class=storage_class, crc64=crc64
        )

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def restore(self, key: str, days: int) -> None:
        await self.inner.restore(key, days)

    async def close(self) -> None:
        await self.inner.close()


class ObjectBudget:
    """How many failed attempts one object may spend over all its requests (a multipart copy makes many), so a
    bad object fails with its reason in bounded time instead of retrying each part in turn. Each request that
    succeeds gives one back, so the sporadic failures of a huge object's thousands of parts never add up to its
    end. Throttling answers are not counted: they say the store is busy, not that the object is bad."""

    __slots__ = ("failures", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0


_OBJECT_BUDGET: contextvars.ContextVar[ObjectBudget | None] = contextvars.ContextVar("ferry_object_budget",
                                                                                       default=None)


@contextlib.contextmanager
def object_budget(limit: int = 12) -> Iterator[ObjectBudget]:
    """Every RetryingBackend call made within (and in tasks started within) charges its failures to one budget."""
    budget = ObjectBudget(limit)
    token = _OBJECT_BUDGET.set(budget)
    try:
        yield budget
    finally:
        _OBJECT_BUDGET.reset(token)


class _Tries:
    """One call's retry state: failures counted, and since when the store has been throttling it."""

    __slots__ = ("failures", "throttled", "throttled_since")

    def __init__(self) -> None:
        self.failures = 0
        self.throttled = 0
        self.throttled_since: float | None = None


class RetryingBackend(BackendWrapper):
    """Retries TransientError with exponential backoff and full jitter; everything else passes through.

    Attempt `n` (1-based) that fails waits `uniform(0, min(max_delay, base_delay * 2**(n-1)))`, or at least the
    error's `retry_after` (capped at `max_retry_after`); after `attempts` tries the last error is raised, its
    message saying how many were made. Throttling answers (storage/pressure.py: 429, 503 SlowDown, Retry-After)
    are not counted as attempts: such a request is tried again, waiting under its endpoint's allowance, for up to
    `throttle_patience` seconds (FERRY_THROTTLE_SECONDS), so no object fails because the store is merely slow.
    Within `object_budget()`, failures also count against the object's budget, shared by all its calls.
    A listing that fails midway resumes with `start_after` = the last key it yielded, so nothing is yielded
    twice; its attempt budget is renewed whenever it makes progress, so a long listing survives sporadic errors.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 20.0,
        max_retry_after: float = 300.0,
        throttle_patience: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        super().__init__(inner)
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self.throttle_patience = StoreTimeouts.from_env().throttle if throttle_patience is None \
            else throttle_patience
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        self._kind = backend_kind(inner.name)  # the label of its tallies: the kind of store, no bucket

    def _count_error(self, op: str, exc: FerryError) -> None:
        # A missing object is an answer the callers expect (a HEAD of a destination key), not a failure.
        if not isinstance(exc, NotFoundError):
            STORE_REQUEST_ERRORS.inc(self._kind, op, error_code(exc))

    def delay(self, failures: int, exc: TransientError) -> float:
        """How long to wait after the `failures`-th consecutive failure."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))
        wait = self._jitter() * ceiling
        if exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, self.max_retry_after))
        return wait

    async def _backoff(self, op: str, key: str | None, tries: _Tries, exc: TransientError) -> None:
        self._count_error(op, exc)
        if is_throttle(exc):
            now = self._clock()
            if tries.throttled_since is None:
                tries.throttled_since = now
            tries.throttled += 1
            if now - tries.throttled_since < self.throttle_patience:
                STORE_RETRIES.inc(self._kind, op, "throttled")
                # Logged per endpoint by its allowance (storage/pressure.py), not per request.
                wait = self.delay(tries.throttled, exc)
                log.debug("%s %s on %s: throttled (%s); retrying in %.2fs", op, key or "", self.name, exc, wait)
                await self._sleep(wait)
                return
            _gave_up(exc, f"throttled for {self.throttle_patience:g} s")
            log.warning("%s %s on %s: %s", op, key or "", self.name, exc)
            raise exc
        tries.failures += 1
        budget = _OBJECT_BUDGET.get()
        if budget is not None:
            budget.failures += 1
        if tries.failures >= self.attempts:
            _gave_up(exc, f"gave up after {tries.failures} attempts")
        elif budget is not None and budget.failures >= budget.limit:
            _gave_up(exc, f"gave up: the object's {budget.limit} failed attempts are spent")
        else:
            wait = self.delay(tries.failures, exc)
            STORE_RETRIES.inc(self._kind, op, "failed")
            log.info("%s %s on %s: attempt %d failed (%s); retrying in %.2fs", op, key or "", self.name,
                     tries.failures, exc, wait)
            await self._sleep(wait)
            return
        log.warning("%s %s on %s: %s", op, key or "", self.name, exc)
        raise exc

    async def _call(self, op: str, key: str | None, fn: Callable[[], Awaitable[T]],
                    final: tuple[type[TransientError], ...] = ()) -> T:
        tries = _Tries()
        while True:
            try:
                result = await fn()
            except TransientError as exc:
                if isinstance(exc, final):
                    self._count_error(op, exc)
                    raise
                await self._backoff(op, key, tries, exc)
            except FerryError as exc:
                self._count_error(op, exc)
                raise
            else:
                budget = _OBJECT_BUDGET.get()
                if budget is not None and budget.failures:
                    budget.failures -= 1
                return result

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        last = start_after
        tries = _Tries()
        while True:
            iterator = self.inner.list(prefix, last)
            try:
                async for info in iterator:
                    yield info
                    last = info.key
                    tries = _Tries()
                return
            except TransientError as exc:
                await self._backoff("list", prefix, tries, exc)
            except FerryError as exc:
                self._count_error("list", exc)
                raise
            finally:
                await close_listing(iterator)

    async def head(self, key: str) -> ObjectInfo:
        return await self._call("head", key, lambda: self.inner.head(key))

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        return await self._call(
            "read", key, lambda: self.inner.read(key, offset=offset, length=length, if_match=if_match)
        )

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        return await self._call("read", key, lambda: self.inner.read_object(key, if_match=if_match))

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        return await self._call("head", key, lambda: self.inner.part_sizes(key, if_match=if_match))

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        # Opening is retried; a failure once the pieces flow is the caller's to retry (it holds them).
        return await self._call("read", key, lambda: self.inner.read_stream(key, if_match=if_match))

    async def put(
        self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
        crc64: int | None = None,
    ) -> PutResult:
        return await self._call(
            "put", key, lambda: self.inner.put(key, data, meta, storage_class=storage_class, crc64=crc64)
        )

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        # A refused Content-MD5 is handed straight back: the caller may have taken it on trust (a source's
        # ETag), and sending the same bytes with it again would be refused again. So are bytes read that do
        # not match the source's checksum: the copier reads again, and counts those reads.
        return await self._call(
            "put", key,
            lambda: self.inner.put_stream(key, size, body, meta, storage_class=storage_class, crc64=crc64,
                                          content_md5=content_md5, trailing_crc32c=trailing_crc32c),
            final=(DigestMismatchError, DamagedReadError) if content_md5 is not None else (DamagedReadError,),
        )

    async def create_multipart(
        self, key: str, meta: ObjectMeta, *, storage_class: str | None = None, crc64: int | None = None
    ) -> str:
        return await self._call(
            "create_multipart", key,
            lambda: self.inner.create_multipart(key, meta, storage_class=storage_class, crc64=crc64),
        )

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> PartInfo:
        return await self._call(
            "upload_part", key, lambda: self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)
        )

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        return await self._call("list_parts", key, lambda: self.inner.list_parts(key, upload_id))

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        # A retry after a lost response can meet NotFoundError (the upload already completed); the engine
        # settles that by a HEAD, since only it knows what it expected.
        return await self._call(
            "complete_multipart", key, lambda: self.inner.complete_multipart(key, upload_id, parts)
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._call("abort_multipart", key, lambda: self.inner.abort_multipart(key, upload_id))

    async def copy_from(
        self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
        if_match: str | None = None, storage_class: str | None = None, crc64: int | None = None,
    ) -> PutResult:
        real_source = unwrap(source)
        return await self._call(
            "copy", key,
            lambda: self.inner.copy_from(
                real_source, src_key, key, meta, if_match=if_match, storage_class=storage_class, crc64=crc64
            ),
        )

    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda: self.inner.delete(key))

    async def restore(self, key: str, days: int) -> None:
        await self._call("restore", key, lambda: self.inner.restore(key, days))


class BandwidthLimiter:
    """A token bucket in bytes per second; `limit=None` means unlimited, and the limit may change at any time.

    `acquire(n)` takes n tokens and, when that leaves the bucket in debt, waits until the debt is paid, so a
    request larger than the burst still passes (after a proportionate wait). Waiters are served in FIFO order.
    One limiter can be shared by many backends and tasks on one event loop.
    """

    def __init__(self, limit: float | None = None, *, burst_seconds: float = 0.5) -> None:
        if burst_seconds <= 0:
            raise ValueError("burst_seconds must be positive")
        self._burst_seconds = burst_seconds
        self._limit: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.set_limit(limit)

    @property
    def limit(self) -> float | None:
        return self._limit

    def set_limit(self, limit: float | None) -> None:
        """Change the rate (bytes/second, None = unlimited); waiters re-plan at once."""
        if limit is not None and limit <= 0:
            raise ValueError("a bandwidth limit must be positive (None means unlimited)")
        self._refill()
        if limit is not None and self._limit is None:
            self._tokens = limit * self._burst_seconds
        self._limit = limit
        if limit is not None:
            self._tokens = min(self._tokens, limit * self._burst_seconds)
        # Wake the current waiter so it recomputes its wait under the new rate.
        self._changed.set()

    def _refill(self) -> None:
        now = time.monotonic()
        if self._limit is not None:
            self._tokens = min(self._limit * self._burst_seconds,
                               self._tokens + (now - self._stamp) * self._limit)
        self._stamp = now

    async def acquire(self, n: int) -> None:
        """Take `n` bytes' worth of tokens, waiting as long as the rate requires."""
        if n <= 0 or self._limit is None:
            return
        async with self._lock:
            if self._limit is None:
                return
            self._refill()
            self._tokens -= n
            while self._tokens < 0:
                limit = self._limit
                if limit is None:
                    self._tokens = 0.0
                    return
                self._changed.clear()
                await wait_event(self._changed, -self._tokens / limit)
                self._refill()


class ThrottledBackend(BackendWrapper):
    """Charges the bytes of reads, writes and uploaded parts to a BandwidthLimiter.

    Reads are charged after the data arrives (their size is known only then), writes before they are sent;
    server-side copies move no bytes through us and are not charged.
    """

    def __init__(self, inner: Backend, limiter: BandwidthLimiter) -> None:
        super().__init__(inner)
        self.limiter = limiter

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        data = await self.inner.read(key, offset=offset, length=length, if_match=if_match)
        await self.limiter.acquire(len(data))
        return data

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        info, data = await self.inner.read_object(key, if_match=if_match)
        await self.limiter.acquire(len(data))
        return info, data

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        info, pieces = await self.inner.read_stream(key, if_match=if_match)
        # Unlimited, nothing is charged: the pieces pass untouched, so they can still be moved in the kernel
        # (storage/splice.py). A limit set meanwhile applies from the next object on.
        return info, pieces if self.limiter.limit is None else self._charged(pieces)

    async def _charged(self, pieces: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                await self.limiter.acquire(len(piece))
                yield piece

    async def put(
        self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
        crc64: int | None = None,
    ) -> PutResult:
        await self.limiter.acquire(len(data))
        return await self.inner.put(key, data, meta, storage_class=storage_class, crc64=crc64)

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        charged = body if self.limiter.limit is None else lambda: self._charged(body())  # as in read_stream
        return await self.inner.put_stream(key, size, charged, meta,
                                           storage_class=storage_class, crc64=crc64, content_md5=content_md5,
                                           trailing_crc32c=trailing_crc32c)

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> PartInfo:
        await self.limiter.acquire(len(data))
        return await self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)


def _gave_up(exc: TransientError, why: str) -> None:
    """Say in the error's own message (the object's failure reason) that and why retrying stopped."""
    exc.message = f"{exc.message} ({why})"
    exc.args = (exc.message,)


def _conforms(wrapper: BackendWrapper) -> Backend:
    return wrapper  # mypy proves here that wrappers still satisfy the protocol
