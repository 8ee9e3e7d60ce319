"""Caps on what API callers may queue: pending sync events per task and per project, and a notification rate.

Deployment settings (environment): FERRY_SYNC_MAX_PENDING_PER_TASK (100000), FERRY_SYNC_MAX_PENDING_PER_PROJECT
(200000), FERRY_SYNC_NOTIFY_RATE (records per second per project, 1000), FERRY_SYNC_NOTIFY_BURST (5000).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from ferry.db.sync_repo import PendingLimits
from ferry.errors import UsageError
from ferry.runner.sync import env_number

# Idle buckets are full again after burst/rate seconds; dropping them then keeps the table small and changes nothing.
_SWEEP_EVERY: Final = 1024


class RateLimitedError(UsageError):
    """The caller sent more than its rate allows; `retry_after` seconds from now it may send this much again."""

    code = "FERRY.0429"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EventLimits:
    """How much a project may queue: pending (not yet synced) keys per sync task and per project, and how
    many notification records per second it may send (a token bucket holding `notify_burst`)."""

    pending_per_task: int = 100_000
    pending_per_project: int = 200_000
    notify_rate: float = 1000.0
    notify_burst: int = 5000

    def __post_init__(self) -> None:
        if self.pending_per_task < 1 or self.pending_per_project < 1:
            raise UsageError("the pending-event limits must be at least 1")
        if self.notify_rate <= 0 or self.notify_burst < 1:
            raise UsageError("FERRY_SYNC_NOTIFY_RATE must be positive and FERRY_SYNC_NOTIFY_BURST at least 1")

    @property
    def pending(self) -> PendingLimits:
        return PendingLimits(self.pending_per_task, self.pending_per_project)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EventLimits:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            pending_per_task=int(env_number(env, "FERRY_SYNC_MAX_PENDING_PER_TASK", d.pending_per_task)),
            pending_per_project=int(env_number(env, "FERRY_SYNC_MAX_PENDING_PER_PROJECT", d.pending_per_project)),
            notify_rate=env_number(env, "FERRY_SYNC_NOTIFY_RATE", d.notify_rate),
            notify_burst=int(env_number(env, "FERRY_SYNC_NOTIFY_BURST", d.notify_burst)),
        )


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """One token bucket per key (a project), safe to share between threads.

    `take(key, n)` passes when the bucket holds `n` tokens (or is full, for an `n` above its size) and then
    takes all `n`, possibly into debt: a request larger than the burst still gets through, and the ones after
    it wait in proportion, so the long-run rate holds whatever the request sizes.
    """

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _calls: int = field(default=0, repr=False)

    def take(self, key: str, n: float) -> float:
        """0.0 when `n` tokens were taken; else the seconds until they would be there (nothing taken)."""
        now = self.clock()
        with self._lock:
            self._calls += 1
            if self._calls % _SWEEP_EVERY == 0:
                self._sweep(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            needed = min(n, self.burst)
            if bucket.tokens < needed:
                return (needed - bucket.tokens) / self.rate
            bucket.tokens -= n
            return 0.0

    def _sweep(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
