"""Retry and bandwidth wrappers, driven by a backend that fails on cue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ferry.errors import FatalError, NotFoundError, SourceChangedError, TransientError
from ferry.objects import ObjectInfo, ObjectMeta, PartInfo, PutResult
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import (
    BackendWrapper,
    BandwidthLimiter,
    RetryingBackend,
    ThrottledBackend,
    unwrap,
)

META = ObjectMeta(content_type="text/plain")


class Flaky(BackendWrapper):
    """Raises the queued errors of an operation, one per call, before letting calls through."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.errors: dict[str, list[Exception]] = {}
        self.calls: dict[str, int] = {}
        self.list_calls: list[str | None] = []
        self.list_fail_after: list[int] = []  # per list call: fail after yielding this many (one entry a call)

    def fail(self, op: str, *errors: Exception) -> None:
        self.errors.setdefault(op, []).extend(errors)

    def _hit(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        queue = self.errors.get(op)
        if queue:
            raise queue.pop(0)

    async def head(self, key: str) -> ObjectInfo:
        self._hit("head")
        return await self.inner.head(key)

    async def put(self, key: str, data: bytes, meta: ObjectMeta, **kw: Any) -> PutResult:
        self._hit("put")
        return await self.inner.put(key, data, meta, **kw)

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> PartInfo:
        self._hit("upload_part")
        return await self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        self.list_calls.append(start_after)
        fail_after = self.list_fail_after.pop(0) if self.list_fail_after else None
        count = 0
        async for info in self.inner.list(prefix, start_after):
            if fail_after is not None and count == fail_after:
                raise TransientError("connection reset mid-listing")
            yield info
            count += 1


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def retrying(inner: Any, **kw: Any) -> tuple[RetryingBackend, Sleeps]:
    sleeps = Sleeps()
    return RetryingBackend(inner, sleep=sleeps, **kw), sleeps


async def filled(keys: list[str]) -> MemoryBackend:
    backend = MemoryBackend(MemoryStore(), "b")
    for key in keys:
        await backend.put(key, key.encode(), META)
    return backend


async def test_transient_errors_are_retried_until_success() -> None:
    flaky = Flaky(await filled(["k"]))
    flaky.fail("head", TransientError("503"), TransientError("reset"))
    backend, sleeps = retrying(flaky)
    assert (await backend.head("k")).size == 1
    assert flaky.calls["head"] == 3 and len(sleeps.waits) == 2


async def test_gives_up_after_the_configured_attempts() -> None:
    flaky = Flaky(await filled(["k"]))
    flaky.fail("put", *[TransientError(f"503 #{i}") for i in range(10)])
    backend, sleeps = retrying(flaky, attempts=3)
    with pytest.raises(TransientError, match="#2"):
        await backend.put("k", b"x", META)
    assert flaky.calls["put"] == 3 and len(sleeps.waits) == 2


async def test_default_is_five_attempts() -> None:
    flaky = Flaky(await filled(["k"]))
    flaky.fail("head", *[TransientError("503") for _ in range(10)])
    backend, _ = retrying(flaky)
    with pytest.raises(TransientError):
        await backend.head("k")
    assert flaky.calls["head"] == 5


@pytest.mark.parametrize("error", [NotFoundError("gone"), SourceChangedError("etag"), FatalError("403")])
async def test_other_errors_pass_through_at_once(error: Exception) -> None:
    flaky = Flaky(await filled(["k"]))
    flaky.fail("head", error)
    backend, sleeps = retrying(flaky)
    with pytest.raises(type(error)):
        await backend.head("k")
    assert flaky.calls["head"] == 1 and sleeps.waits == []


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    top = RetryingBackend(MemoryBackend(), base_delay=0.5, max_delay=3.0, jitter=lambda: 1.0)
    assert [top.delay(n, TransientError("x")) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    bottom = RetryingBackend(MemoryBackend(), jitter=lambda: 0.0)
    assert bottom.delay(4, TransientError("x")) == 0.0
    half = RetryingBackend(MemoryBackend(), base_delay=1.0, jitter=lambda: 0.5)
    assert half.delay(3, TransientError("x")) == 2.0


def test_retry_after_is_a_floor_with_a_sanity_cap() -> None:
    backend = RetryingBackend(MemoryBackend(), base_delay=0.1, jitter=lambda: 1.0, max_retry_after=60.0)
    assert backend.delay(1, TransientError("slow down", retry_after=7.0)) == 7.0
    assert backend.delay(1, TransientError("slow down", retry_after=0.01)) == pytest.approx(0.1)
    assert backend.delay(1, TransientError("slow down", retry_after=3600.0)) == 60.0


async def test_retry_after_is_waited() -> None:
    flaky = Flaky(await filled(["k"]))
    flaky.fail("upload_part", TransientError("SlowDown", retry_after=2.5))
    backend, sleeps = retrying(flaky, jitter=lambda: 0.0)
    upload = await backend.create_multipart("k", META)
    await backend.upload_part("k", upload, 1, b"x")
    assert sleeps.waits == [2.5]


async def test_listing_resumes_after_the_last_key_without_duplicates() -> None:
    keys = [f"k{i:03d}" for i in range(50)]
    flaky = Flaky(await filled(keys))
    flaky.list_fail_after = [10, 0, 25]  # fail after 10 keys, then at once, then after 25 more
    backend, sleeps = retrying(flaky)
    assert [i.key async for i in backend.list()] == keys
    assert flaky.list_calls == [None, "k009", "k009", "k034"]
    assert len(sleeps.waits) == 3


async def test_listing_attempts_renew_with_progress_but_not_without() -> None:
    keys = [f"k{i}" for i in range(8)]
    flaky = Flaky(await filled(keys))
    flaky.list_fail_after = [1] * 7  # one key per call, seven failures: more than `attempts`
    backend, _ = retrying(flaky, attempts=2)
    assert [i.key async for i in backend.list()] == keys
    stuck = Flaky(await filled(keys))
    stuck.list_fail_after = [0] * 10
    backend, _ = retrying(stuck, attempts=3)
    with pytest.raises(TransientError):
        _ = [i async for i in backend.list()]
    assert len(stuck.list_calls) == 3


async def test_listing_keeps_the_callers_prefix_and_start_after() -> None:
    flaky = Flaky(await filled(["a/1", "a/2", "a/3", "b/1"]))
    flaky.list_fail_after = [1]
    backend, _ = retrying(flaky)
    assert [i.key async for i in backend.list("a/", start_after="a/1")] == ["a/2", "a/3"]
    assert flaky.list_calls == ["a/1", "a/2"]


async def test_wrappers_keep_name_and_capabilities_and_unwrap() -> None:
    inner = MemoryBackend(MemoryStore(), "bucket", "pre/", min_part_size=1024)
    stacked = RetryingBackend(ThrottledBackend(inner, BandwidthLimiter(None)))
    assert stacked.name == inner.name == "mem://bucket/pre/"
    assert stacked.capabilities == inner.capabilities
    assert unwrap(stacked) is inner and unwrap(inner) is inner


async def test_copy_between_wrapped_backends_reaches_the_real_ones() -> None:
    store = MemoryStore()
    src = RetryingBackend(ThrottledBackend(MemoryBackend(store, "a"), BandwidthLimiter(None)))
    dst = RetryingBackend(MemoryBackend(store, "b"))
    await src.put("k", b"data", META)
    await dst.copy_from(src, "k", "copy", None)
    assert await dst.read("copy") == b"data"


class CountingLimiter(BandwidthLimiter):
    def __init__(self) -> None:
        super().__init__(None)
        self.charged: list[int] = []

    async def acquire(self, n: int) -> None:
        self.charged.append(n)


async def test_throttled_backend_charges_bytes_moved() -> None:
    limiter = CountingLimiter()
    backend = ThrottledBackend(MemoryBackend(), limiter)
    await backend.put("k", b"12345", META)
    assert await backend.read("k", offset=1, length=2) == b"23"
    await backend.read_object("k")
    upload = await backend.create_multipart("m", META)
    await backend.upload_part("m", upload, 1, b"xyz")
    await backend.head("k")
    await backend.copy_from(backend, "k", "k2", None)  # server side: no bytes through us
    assert limiter.charged == [5, 2, 5, 3]


async def test_limiter_holds_the_rate() -> None:
    limiter = BandwidthLimiter(1_000_000, burst_seconds=0.1)  # 1 MB/s, 100 KB burst
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire(50_000) for _ in range(10)))
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 5  # 500 KB - 100 KB burst at 1 MB/s = 0.4 s; a busy machine is only slower


async def test_unlimited_and_raised_limits_release_waiters() -> None:
    assert BandwidthLimiter(None).limit is None
    start = time.monotonic()
    await BandwidthLimiter(None).acquire(10**12)
    assert time.monotonic() - start < 2  # at once: any rate would take hours
    limiter = BandwidthLimiter(1000, burst_seconds=0.1)
    waiter = asyncio.create_task(limiter.acquire(100_000))  # 100 s at 1 KB/s
    await asyncio.sleep(0.05)
    assert not waiter.done()
    limiter.set_limit(None)
    await asyncio.wait_for(waiter, 5.0)
    limiter.set_limit(1000)
    waiter = asyncio.create_task(limiter.acquire(100_000))
    await asyncio.sleep(0.05)
    limiter.set_limit(10_000_000)
    await asyncio.wait_for(waiter, 5.0)
    assert limiter.limit == 10_000_000


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryingBackend(MemoryBackend(), attempts=0)
    with pytest.raises(ValueError):
        BandwidthLimiter(0)
    with pytest.raises(ValueError):
        BandwidthLimiter(100, burst_seconds=0)
