"""The notification rate's token bucket and the event limits' settings, on a hand-driven clock."""

from __future__ import annotations

import pytest

from ferry.errors import UsageError
from ferry.service.quotas import EventLimits, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_rate_holds_per_key() -> None:
    clock = Clock()
    bucket = RateLimiter(rate=10.0, burst=20.0, clock=clock)
    assert bucket.take("p1", 15) == 0.0
    assert bucket.take("p1", 5) == 0.0
    assert bucket.take("p1", 1) == pytest.approx(0.1)  # empty: one token every 0.1 s
    assert bucket.take("p2", 20) == 0.0  # another project has a bucket of its own
    clock.now += 0.5
    assert bucket.take("p1", 6) == pytest.approx(0.1)  # 5 tokens came back, not 6, and none was taken
    assert bucket.take("p1", 5) == 0.0
    clock.now += 60
    assert bucket.take("p1", 20) == 0.0  # refilled, but never beyond the burst
    assert bucket.take("p1", 1) > 0


def test_a_request_above_the_burst_passes_when_full_and_the_debt_is_waited_out() -> None:
    clock = Clock()
    bucket = RateLimiter(rate=10.0, burst=20.0, clock=clock)
    assert bucket.take("p", 50) == 0.0  # 30 tokens in debt
    assert bucket.take("p", 1) == pytest.approx(3.1)
    clock.now += 3.0
    assert bucket.take("p", 1) == pytest.approx(0.1)
    clock.now += 0.2
    assert bucket.take("p", 1) == 0.0


def test_idle_buckets_are_forgotten() -> None:
    clock = Clock()
    bucket = RateLimiter(rate=1.0, burst=1.0, clock=clock)
    for i in range(1023):
        bucket.take(f"p{i}", 1)
    clock.now += 2
    bucket.take("last", 1)  # the 1024th call sweeps the buckets that are full again
    assert set(bucket._buckets) == {"last"}


def test_limits_from_the_environment() -> None:
    limits = EventLimits.from_env({"FERRY_SYNC_MAX_PENDING_PER_TASK": "7", "FERRY_SYNC_NOTIFY_RATE": "2.5"})
    assert (limits.pending_per_task, limits.pending_per_project, limits.notify_rate, limits.notify_burst) == (
        7, EventLimits().pending_per_project, 2.5, EventLimits().notify_burst)
    for bad in ({"FERRY_SYNC_MAX_PENDING_PER_TASK": "0"}, {"FERRY_SYNC_NOTIFY_RATE": "fast"},
                {"FERRY_SYNC_NOTIFY_BURST": "-1"}):
        with pytest.raises(UsageError):
            EventLimits.from_env(bad)
