"""Cluster-wide limits against the real PostgreSQL: a task's bandwidth and a source's request rate hold for the
cluster as a whole (within 10 %) whether one process or three draw on them, and cost one database write per
chunk, not per read."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ferry.db.cluster_models import cluster_budgets
from ferry.db.database import open_database
from ferry.engine.bandwidth import parse_policy
from ferry.objects import ObjectMeta
from ferry.runner.cluster_limits import (
    ClusterBandwidthLimiter,
    ClusterRequestRate,
    RequestLimitedBackend,
    source_budget,
    task_budget,
)
from ferry.storage.memory import MemoryBackend
from ferry.storage.wrappers import ThrottledBackend
from pgdb import pg_database

MIB = 1 << 20
PIECE = 64 * 1024
WARMUP, SPAN = 1.0, 5.0  # seconds: the budget's saved-up burst is spent first, then the rate is measured


@pytest.fixture
def pg_url() -> Iterator[str]:
    for url in pg_database():
        engine = open_database(url)  # the schema, once, before the processes race to make it
        engine.dispose()
        yield url


async def _move_bytes(url: str, limit: float, go: Any) -> float:
    engine = open_database(url)
    limiter = ClusterBandwidthLimiter(engine, task_budget(41), limit)
    store = MemoryBackend()
    await store.put("obj", b"x" * PIECE, ObjectMeta())
    src = ThrottledBackend(store, limiter)
    counted = 0
    start = await _ready(go)
    while (now := time.time()) < start + WARMUP + SPAN:
        data = await src.read("obj")  # charged after it arrives: counted when the limiter let it through
        if time.time() >= start + WARMUP and now >= start:
            counted += len(data)
    engine.dispose()
    return counted


async def _make_requests(url: str, rate: float, go: Any) -> float:
    engine = open_database(url)
    limiter = ClusterRequestRate(engine, source_budget("http://127.0.0.1:9", "src"), rate)
    store = MemoryBackend()
    await store.put("obj", b"x", ObjectMeta())
    src = RequestLimitedBackend(store, limiter)
    counted = 0
    start = await _ready(go)
    while time.time() < start + WARMUP + SPAN:
        await src.head("obj")
        if time.time() >= start + WARMUP:
            counted += 1
    engine.dispose()
    return counted


async def _ready(go: Any) -> float:
    """Say this process is set up, and wait for the common start time (epoch seconds)."""
    ready, start = go
    ready.put(True)
    while start.value == 0.0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(max(0.0, start.value - time.time()))
    return float(start.value)


def _worker(kind: str, url: str, rate: float, go: Any, out: Any) -> None:
    fn = _move_bytes if kind == "bytes" else _make_requests
    out.put(asyncio.run(fn(url, rate, go)))


def _cluster_rate(kind: str, url: str, rate: float, processes: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    out, ready, start = ctx.Queue(), ctx.Queue(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_worker, args=(kind, url, rate, (ready, start), out)) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        # Every process starts drawing at the same moment, once all are set up (spawning takes a while here).
        for _ in procs:
            ready.get(timeout=60)
        start.value = time.time() + 0.5
        total = sum(out.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    return total / SPAN


@pytest.mark.parametrize("processes", [1, 3])
def test_a_task_bandwidth_holds_for_all_workers_together(pg_url: str, processes: int) -> None:
    limit = 4 * MIB
    measured = _cluster_rate("bytes", pg_url, limit, processes)
    # Without the shared budget, three processes would move three times the limit.
    print(f"bandwidth limit 4 MiB/s, {processes} processes: {measured / MIB:.3f} MiB/s")
    assert abs(measured - limit) <= 0.10 * limit, f"{measured / MIB:.2f} MiB/s with {processes} processes"


@pytest.mark.parametrize("processes", [1, 3])
def test_a_source_request_rate_holds_for_all_workers_together(pg_url: str, processes: int) -> None:
    rate = 200.0
    measured = _cluster_rate("requests", pg_url, rate, processes)
    print(f"request rate 200/s, {processes} processes: {measured:.1f} requests/s")
    assert abs(measured - rate) <= 0.10 * rate, f"{measured:.1f} requests/s with {processes} processes"


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = open_database(pg_url)
    yield engine
    engine.dispose()


async def test_tokens_are_taken_in_chunks_and_an_unlimited_task_never_touches_the_database(
    pg_engine: Engine,
) -> None:
    unlimited = ClusterBandwidthLimiter(pg_engine, task_budget(7), None)
    for _ in range(100):
        await unlimited.acquire(PIECE)
    assert unlimited.takes == 0
    with pg_engine.connect() as conn:
        assert conn.execute(select(cluster_budgets.c.name)).all() == []

    limiter = ClusterBandwidthLimiter(pg_engine, task_budget(8), 16 * MIB)
    reads = 200  # 200 x 16 KiB = 3.1 MiB: ~0.2 s at the rate, chunks of 1.2 MiB
    for _ in range(reads):
        await limiter.acquire(16 * 1024)
    assert 2 <= limiter.takes <= 4, limiter.takes
    with pg_engine.connect() as conn:
        assert conn.execute(select(cluster_budgets.c.name)).scalars().all() == [task_budget(8)]


async def test_the_rate_follows_the_policy_window_in_force(pg_engine: Engine) -> None:
    windows = parse_policy([{"start": "08:00", "end": "18:00", "max_bandwidth": 2 * MIB}])
    limiter = ClusterBandwidthLimiter(pg_engine, task_budget(9))
    limiter.follow(windows, datetime(2026, 12, 3, 9, 30))
    assert limiter.limit == 2 * MIB
    started = time.monotonic()
    await limiter.acquire(MIB // 2)  # the burst: 0.25 s of the rate, spent at once
    await limiter.acquire(MIB // 2)  # in debt by 0.5 MiB: waits 0.25 s
    assert time.monotonic() - started >= 0.2
    limiter.follow(windows, datetime(2026, 12, 3, 19, 0))
    assert limiter.limit is None  # outside every window: unlimited, at once
    started = time.monotonic()
    await limiter.acquire(64 * MIB)
    assert time.monotonic() - started < 2  # at once: 64 s at the window's rate


async def test_a_limiter_given_the_policy_changes_rate_at_a_window_edge(pg_engine: Engine) -> None:
    windows = parse_policy([{"start": "08:00", "end": "18:00", "max_bandwidth": MIB}])
    now = [datetime(2026, 12, 3, 17, 59, 59)]
    limiter = ClusterBandwidthLimiter(pg_engine, task_budget(10), windows=windows, clock=lambda: now[0])
    assert limiter.limit == MIB
    now[0] = datetime(2026, 12, 3, 18, 0, 1)
    assert limiter.limit == MIB  # looked at again at most once a second
    await asyncio.sleep(1.05)
    assert limiter.limit is None  # the window closed: unlimited
    started = time.monotonic()
    await limiter.acquire(64 * MIB)
    assert time.monotonic() - started < 2 and limiter.takes == 0  # 64 s at the closed window's rate
