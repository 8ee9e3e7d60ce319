"""The per-endpoint allowance (storage/pressure.py) and the retry budgets of RetryingBackend."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from test_wrappers import Flaky, Sleeps

from ferry.errors import FerryError, TransientError
from ferry.objects import ObjectMeta
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.pressure import EndpointPressure, is_throttle, pressure_for
from ferry.storage.wrappers import RetryingBackend, object_budget

META = ObjectMeta()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(status: int = 503, code: str | None = "SlowDown", retry_after: float | None = None) -> TransientError:
    exc = TransientError(f"HTTP {status} {code}", retry_after=retry_after)
    exc.http_status, exc.s3_code = status, code
    return exc


def test_what_counts_as_throttling() -> None:
    assert is_throttle(_throttle(503, "SlowDown"))
    assert is_throttle(_throttle(429, None))
    assert is_throttle(_throttle(400, "RequestLimitExceeded"))
    assert is_throttle(_throttle(500, "InternalError", retry_after=1.0))  # Retry-After asks to wait
    assert not is_throttle(_throttle(500, "InternalError"))
    assert not is_throttle(TransientError("the server reset the connection"))
    assert not is_throttle(FerryError("x"))


async def test_throttling_halves_the_window_once_per_burst_and_caps_requests_in_flight() -> None:
    clock = Clock()
    p = EndpointPressure("s3://store", ceiling=64, clock=clock)
    for _ in range(10):  # a burst of refusals in one moment counts once
        p.answered(throttled=True)
    assert p.window == 32 and p.backing_off
    clock.now += 1
    p.answered(throttled=True)
    assert p.window == 16
    for _ in range(4):
        clock.now += 1
        p.answered(throttled=True)
    assert p.window == 1
    p.rate = None  # look at the window alone
    await p.acquire()
    waiter = asyncio.ensure_future(p.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done() and p.in_flight == 1  # one in flight at most
    p.release()
    await asyncio.wait_for(waiter, 1)
    assert p.in_flight == 1
    p.release()
    assert p.in_flight == 0


async def test_the_window_grows_back_to_the_ceiling_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    p = EndpointPressure("s3://store", ceiling=64, clock=clock)
    p.answered(throttled=True)
    assert p.window == 32
    grown = 0
    while p.backing_off:
        clock.now += 0.01
        with caplog.at_level(logging.INFO, "ferry.storage.pressure"):
            p.answered()
        grown += 1
        assert grown < 100_000
    assert p.window == 64 and p.rate is None  # the rate no longer binding is dropped too
    assert grown > 32  # additive above the threshold, not all at once
    assert "stopped throttling" in caplog.text


async def test_the_rate_is_set_from_what_the_store_accepted_then_climbs() -> None:
    clock = Clock()
    p = EndpointPressure("s3://store", ceiling=64, clock=clock)
    for _ in range(300):  # 100 requests/s accepted for three seconds
        clock.now += 0.01
        p.answered()
    p.answered(throttled=True)
    assert p.rate is not None and 85 <= p.rate <= 95
    first = p.rate
    for _ in range(100):  # a second later, still 100/s accepted: it climbs (a tenth of the peak a second)
        clock.now += 0.01
        p.answered()
    assert p.rate is not None and first < p.rate <= first + 10


async def test_refusals_of_a_first_burst_do_not_pin_the_rate_low() -> None:
    clock = Clock()
    p = EndpointPressure("s3://store", ceiling=64, clock=clock)
    clock.now += 0.05
    p.answered()  # the refusals of the first burst come back before most of the answers the store took
    p.answered(throttled=True)
    assert p.rate is not None and p.rate < 50
    for _ in range(300):  # the store takes 100/s: the rate doubles every second up to the next refusal
        clock.now += 0.01
        p.answered()
    assert p.rate > 100


async def test_a_rate_spaces_requests_out() -> None:
    p = EndpointPressure("s3://store", ceiling=64)
    p.answered(throttled=True)  # nothing accepted before: starts at 10 requests/s
    assert p.rate == 10
    started = time.monotonic()
    for _ in range(6):
        await p.acquire()
        p.release()
    assert time.monotonic() - started >= 0.4


async def test_retry_after_holds_back_every_request_of_the_endpoint() -> None:
    p = EndpointPressure("s3://store", ceiling=64)
    p.answered(throttled=True, retry_after=0.3)
    p.rate = None
    started = time.monotonic()
    await p.acquire()
    assert time.monotonic() - started >= 0.25
    p.release()


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    p = EndpointPressure("s3://store", ceiling=1)
    await p.acquire()
    waiters = [asyncio.ensure_future(p.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    p.release()
    await asyncio.sleep(0.01)
    assert waiters[1].done() and p.in_flight == 1
    p.release()
    await asyncio.wait_for(waiters[2], 1)
    p.release()
    assert p.in_flight == 0


async def test_one_allowance_per_endpoint_on_a_loop() -> None:
    a = pressure_for("http://127.0.0.1:1", 8)
    assert pressure_for("http://127.0.0.1:1", 64) is a and a.ceiling == 64
    assert pressure_for("http://127.0.0.1:2") is not a


async def test_throttled_retries_use_no_attempts_until_the_patience_runs_out() -> None:
    flaky = Flaky(MemoryBackend(MemoryStore(), "b"))
    await flaky.inner.put("k", b"v", META)
    flaky.fail("head", *[_throttle() for _ in range(20)])
    sleeps = Sleeps()
    backend = RetryingBackend(flaky, attempts=3, sleep=sleeps, throttle_patience=600)
    assert (await backend.head("k")).size == 1  # 20 refusals, 3 attempts: throttling is waited out
    assert flaky.calls["head"] == 21

    clock = Clock()

    async def advancing(seconds: float) -> None:
        clock.now += 10

    flaky.fail("head", *[_throttle(429, None) for _ in range(100)])
    impatient = RetryingBackend(flaky, attempts=3, sleep=advancing, throttle_patience=60, clock=clock)
    with pytest.raises(TransientError, match=r"throttled for 60 s"):
        await impatient.head("k")


async def test_a_bad_object_fails_with_its_reason_after_its_budget() -> None:
    flaky = Flaky(MemoryBackend(MemoryStore(), "b"))
    flaky.fail("put", *[_throttle(500, "InternalError") for _ in range(10)])
    backend = RetryingBackend(flaky, attempts=5, sleep=Sleeps())
    with pytest.raises(TransientError, match=r"HTTP 500 InternalError \(gave up after 5 attempts\)"):
        await backend.put("bad", b"x", META)
    assert flaky.calls["put"] == 5


async def test_an_objects_budget_is_shared_by_all_its_requests() -> None:
    flaky = Flaky(MemoryBackend(MemoryStore(), "b", min_part_size=1))
    upload = await flaky.create_multipart("big", META)
    flaky.fail("upload_part", *[TransientError("reset") for _ in range(100)])
    backend = RetryingBackend(flaky, attempts=5, sleep=Sleeps())
    with object_budget(7):
        for n in (1, 2):  # part 1 spends 5 (its call's limit), part 2 the 2 left of the object's 7
            with pytest.raises(TransientError, match="gave up"):
                await backend.upload_part("big", upload, n, b"x")
    assert flaky.calls["upload_part"] == 7
    with object_budget(7) as budget:  # another object: a budget of its own
        with pytest.raises(TransientError):
            await backend.upload_part("big", upload, 3, b"x")
        assert budget.failures == 5


async def test_successes_give_failed_attempts_back_so_sporadic_failures_never_add_up() -> None:
    flaky = Flaky(MemoryBackend(MemoryStore(), "b", min_part_size=1))
    upload = await flaky.create_multipart("huge", META)
    backend = RetryingBackend(flaky, attempts=5, sleep=Sleeps())
    with object_budget(3) as budget:
        for n in range(1, 41):  # every part fails once, then goes: 40 failures on a budget of 3
            flaky.fail("upload_part", TransientError("reset"))
            await backend.upload_part("huge", upload, n, b"x")
        assert budget.failures == 0


async def test_a_url_source_backs_off_on_429_and_honours_retry_after() -> None:
    import http.server
    import threading

    answers = [429, 429, 200]
    seen: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(time.monotonic())
            status = answers.pop(0) if answers else 200
            body = b"payload" if status == 200 else b"busy"
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from ferry.storage.url_source import UrlSource

        where = f"127.0.0.1:{server.server_address[1]}"
        source = UrlSource([("k", f"http://{where}/k")], allowed_hosts=[where])
        backend = RetryingBackend(source, attempts=1)  # throttling uses up no attempt
        assert await backend.read("k") == b"payload"
        assert len(seen) == 3 and seen[2] - seen[0] >= 1.9  # waited at least the Retry-After each time
        assert pressure_for(f"http://{where}").throttled == 2
        await backend.close()
    finally:
        server.shutdown()
        server.server_close()
