"""Adaptive pressure per endpoint: how many requests may be in flight to one store, and how fast they may start.

Every S3 request waits here for a slot of its endpoint (scheme://host:port) before it is sent, and reports how it
was answered. A throttling answer (429, 503, SlowDown and its kin, or any Retry-After) shrinks the endpoint's
allowance multiplicatively; other answers grow it back additively, up to the connection ceiling:

- the window of requests in flight works like TCP Reno's congestion window: halved on throttling (at most once per
  `cooldown`, so one burst of refusals counts once), grown by one per answer below the slow-start threshold and by
  1/window above it;
- a request rate, unset until the store first throttles: then 0.9 x the rate the store accepted over the last
  seconds (or half the current rate when it accepted nothing), grown every second without throttling by a tenth
  of the highest rate the store ever accepted (doubled every second while below the last rate the store took),
  and dropped again once it no longer binds.

A store that refuses everything for a while (a 503 storm) drives both down to one request at a time, one a
second, probing; the thresholds stay where the store last took requests, so once it does again Ferry is back near
its former speed within seconds. A fast store answers even a
  single request at a time quicker than its rate limit allows, so the window alone could not stop a store that
  caps requests per second from refusing; the rate is what makes Ferry settle near that cap;
- a Retry-After holds back every request to the endpoint until it has passed (at most `max_pause`).

Retries go through here like any other request, so they wait under the allowance, not beside it. One allowance is
shared by every backend on one event loop that talks to the same endpoint (all tasks of the migration runner, or of
the sync workers); backends on another loop adapt on their own, as two TCP flows share a link. While an endpoint is
backing off, a warning says so once every `log_every` seconds, never per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Final

from ferry.errors import FerryError

__all__ = ["THROTTLE_CODES", "EndpointPressure", "is_throttle", "pressure_for", "retry_after_seconds"]

log = logging.getLogger(__name__)

THROTTLE_CODES: Final = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "ServiceUnavailable", "RequestThrottled", "TooManyRequestsException", "ProvisionedThroughputExceededException",
})
_RATE_FLOOR: Final = 1.0  # requests/s: never slower than this, so a store that recovers is noticed
_MEASURE_SPAN: Final = 2.0  # seconds of answers the accepted rate is measured over


def is_throttle(exc: FerryError) -> bool:
    """Whether a store's error answer asks Ferry to slow down (rather than saying the request failed)."""
    return exc.http_status in (429, 503) or exc.s3_code in THROTTLE_CODES \
        or getattr(exc, "retry_after", None) is not None


class EndpointPressure:
    """The allowance of one endpoint on one event loop: `async with pressure.slot():` around each request, and
    `answered(throttled=..., retry_after=...)` when its answer (its status and headers) is in."""

    def __init__(self, name: str, ceiling: int = 256, *, cooldown: float = 0.5, max_pause: float = 60.0,
                 log_every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.ceiling = ceiling
        self.cooldown = cooldown
        self.max_pause = max_pause
        self.log_every = log_every
        self._clock = clock
        self.window = float(ceiling)
        self._ssthresh = float(ceiling)
        self.rate: float | None = None  # requests/s; None: no rate limit
        self._rate_ssthresh = math.inf  # below it the rate doubles every second; above, it grows by a step
        self._peak = 0.0  # the highest accepted rate measured: how fast recovery may climb back
        self._tokens = 0.0
        self._stamp = self._born = clock()
        self._grown_at = self._stamp
        self.in_flight = 0
        self._paused_until = 0.0
        self._last_decrease = -math.inf
        self._accepted: collections.deque[float] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self.throttled = 0  # throttling answers seen, ever
        self._throttled_logged = 0
        self._last_log = -math.inf
        self._backing_off = False
        self.reached = False  # the endpoint has answered at least once
        self.unreachable_since: float | None = None  # (loop time) connecting has failed since, not answered

    # -- the allowance ---------------------------------------------------------------------------------------
    @property
    def backing_off(self) -> bool:
        return self._backing_off

    def _refill(self, now: float) -> None:
        if self.rate is not None:
            self._tokens = min(max(1.0, self.rate / 10), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def _wait_for(self, now: float) -> float:
        """Seconds until one more request may start (0: now), window aside."""
        wait = max(0.0, self._paused_until - now)
        if self.rate is not None:
            self._refill(now)
            if self._tokens < 1.0:
                wait = max(wait, (1.0 - self._tokens) / self.rate)
        return wait

    def _take(self) -> None:
        self.in_flight += 1
        if self.rate is not None:
            self._tokens -= 1.0

    def _can_start(self, now: float) -> bool:
        return self.in_flight < max(1, int(self.window)) and self._wait_for(now) <= 0.0

    async def acquire(self) -> None:
        """Wait for a slot (first come, first served); the caller must `release` it."""
        if not self._waiters and self._can_start(self._clock()):
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._pump()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):  # already dropped by _pump as cancelled
                    self._waiters.remove(fut)
                self._pump()
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._pump()

    def slot(self) -> _Slot:
        return _Slot(self)

    def _pump(self) -> None:
        """Grant waiting requests what the allowance lets start now, and come back when the rate or a pause
        lets the next one start."""
        now = self._clock()
        while self._waiters:
            if self._waiters[0].done():  # cancelled meanwhile
                self._waiters.popleft()
                continue
            if not self._can_start(now):
                break
            self._take()
            self._waiters.popleft().set_result(None)
        if self._waiters and self.in_flight < max(1, int(self.window)) and self._timer is None:
            delay = self._wait_for(now)
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    # -- feedback ---------------------------------------------------------------------------------------------
    def answered(self, *, throttled: bool = False, retry_after: float | None = None) -> None:
        """Report one answer of the endpoint: throttling (or carrying Retry-After) shrinks the allowance,
        anything else grows it."""
        now = self._clock()
        self.reached = True
        self.unreachable_since = None
        if throttled or retry_after is not None:
            self._decrease(now, retry_after)
        else:
            self._increase(now)
        self._pump()

    def answered_status(self, status: int, code: str | None = None, retry_after: float | None = None) -> None:
        """Report an answer by its HTTP status (and S3 error code, Retry-After): a throttling one shrinks the
        allowance, anything else below 500 grows it, and other server errors say nothing about load."""
        if status in (429, 503) or code in THROTTLE_CODES or retry_after is not None:
            self.answered(throttled=True, retry_after=retry_after)
        elif status < 500:
            self.answered()

    def _accepted_rate(self, now: float) -> float:
        while self._accepted and now - self._accepted[0] > _MEASURE_SPAN:
            self._accepted.popleft()
        # Over the span, or since the first request when that is shorter (the start of a run).
        return len(self._accepted) / max(min(_MEASURE_SPAN, now - self._born), 0.05)

    def _decrease(self, now: float, retry_after: float | None) -> None:
        self.throttled += 1
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + min(retry_after, self.max_pause))
        if now - self._last_decrease >= self.cooldown:
            self._last_decrease = now
            accepted = self._accepted_rate(now)
            self._peak = max(self._peak, accepted)
            old = self.rate
            if accepted:
                # The store takes this much: just below it is where to be, and where slow start ends.
                self._ssthresh = max(1.0, self.window / 2)
                self.rate = max(_RATE_FLOOR, min(0.9 * accepted, old if old is not None else math.inf))
                if now - self._born >= _MEASURE_SPAN:
                    # Measured over the whole span, not the first moments of a run (where the refusals of its
                    # first burst come back before the answers the store took): a rate to climb back to.
                    self._rate_ssthresh = self.rate
            else:
                # Nothing got through lately (the store is down or refusing everything): halve what was tried,
                # but keep the thresholds, so Ferry climbs back fast once the store recovers.
                self.rate = max(_RATE_FLOOR, old / 2 if old is not None else 10 * _RATE_FLOOR)
            self.window = max(1.0, self.window / 2)
            self._tokens = min(self._tokens, 1.0)
            self._grown_at = now
            self._backing_off = True
        if now - self._last_log >= self.log_every:
            self._last_log = now
            log.warning(
                "%s is throttling requests (%d answers asking to slow down since the last report): backing off to %d "
                "in flight, %s", self.name, self.throttled - self._throttled_logged, max(1, int(self.window)),
                f"{self.rate:.1f} requests/s" if self.rate is not None else "no rate limit",
            )
            self._throttled_logged = self.throttled

    def _increase(self, now: float) -> None:
        self._accepted.append(now)
        if len(self._accepted) > 20_000:
            self._accepted.popleft()
        if len(self._accepted) & 63 == 0:
            self._peak = max(self._peak, self._accepted_rate(now))
        if not self._backing_off:
            return
        if self.window < self.ceiling:
            self.window = min(float(self.ceiling), self.window + (1.0 if self.window < self._ssthresh
                                                                   else 1.0 / self.window))
        if self.rate is not None and now - self._last_decrease >= self.cooldown:
            self._refill(now)
            dt = now - self._grown_at
            if self.rate < self._rate_ssthresh:  # slow start: doubling every second
                self.rate = min(self._rate_ssthresh, self.rate * 2.0 ** dt)
            else:
                self.rate += max(_RATE_FLOOR, self._peak / 10) * dt
            # Well above what was accepted lately, the rate no longer binds: Ferry is not being held back.
            if self.rate > 4 * max(self._accepted_rate(now), 1.0) and now - self._last_decrease > 4 * _MEASURE_SPAN:
                self.rate = None
        self._grown_at = now
        if self.rate is None and self.window >= self.ceiling and now >= self._paused_until:
            self._backing_off = False
            log.info("%s stopped throttling: back to %d requests in flight, no rate limit", self.name,
                     self.ceiling)


class _Slot:
    __slots__ = ("_pressure",)

    def __init__(self, pressure: EndpointPressure) -> None:
        self._pressure = pressure

    async def __aenter__(self) -> None:
        await self._pressure.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._pressure.release()


_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EndpointPressure]] = \
    weakref.WeakKeyDictionary()


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header in seconds from now (given as seconds or as an HTTP date), None when absent."""
    v = headers.get("Retry-After")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        when = email.utils.parsedate_tz(v)
        return max(0.0, email.utils.mktime_tz(when) - time.time()) if when else None


def pressure_for(endpoint: str, ceiling: int = 256) -> EndpointPressure:
    """The allowance of `endpoint` (scheme://host:port) on the running event loop, made on first use; its ceiling
    is the largest any user asked for."""
    loop = asyncio.get_running_loop()
    endpoints = _REGISTRY.setdefault(loop, {})
    pressure = endpoints.get(endpoint)
    if pressure is None:
        pressure = endpoints[endpoint] = EndpointPressure(endpoint, ceiling)
    elif ceiling > pressure.ceiling:
        pressure.ceiling = ceiling
        if not pressure.backing_off:
            pressure.window = float(ceiling)
    return pressure
