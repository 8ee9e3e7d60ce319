"""MemoryBudget bounds the bytes held at once, lets an oversized request take all of it, and never leaks."""

from __future__ import annotations

import asyncio
import random

import pytest

from ferry.engine.budget import MemoryBudget


async def test_never_more_than_the_limit_in_use() -> None:
    budget = MemoryBudget(1000)
    peak = 0
    rng = random.Random(7)

    async def use(size: int) -> None:
        nonlocal peak
        async with budget.hold(size):
            peak = max(peak, budget.in_use)
            assert budget.in_use <= budget.limit
            await asyncio.sleep(rng.random() / 500)

    await asyncio.wait_for(asyncio.gather(*(use(rng.randint(0, 700)) for _ in range(300))), 20)
    assert 700 <= peak <= 1000 and budget.in_use == 0


async def test_an_oversized_request_waits_for_the_whole_budget() -> None:
    budget = MemoryBudget(100)
    order: list[str] = []

    async def small() -> None:
        async with budget.hold(60):
            order.append("small in")
            await asyncio.sleep(0.02)
        order.append("small out")

    async def huge() -> None:
        await asyncio.sleep(0.005)
        async with budget.hold(10_000):
            assert budget.in_use == 100
            order.append("huge in")

    await asyncio.gather(small(), huge())
    assert order == ["small in", "small out", "huge in"] and budget.in_use == 0


async def test_a_cancelled_wait_takes_nothing() -> None:
    budget = MemoryBudget(10)
    async with budget.hold(10):
        waiter = asyncio.create_task(budget.hold(5).__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert budget.in_use == 0
    async with budget.hold(10):  # the whole budget is free again, with nobody left waiting
        assert budget.in_use == 10


async def test_requests_are_served_in_order_and_try_acquire_does_not_jump_the_queue() -> None:
    budget = MemoryBudget(10)
    assert budget.try_acquire(8)
    served: list[str] = []

    async def want(name: str, n: int) -> None:
        await budget.acquire(n)
        served.append(name)

    big = asyncio.create_task(want("big", 6))
    await asyncio.sleep(0)
    small = asyncio.create_task(want("small", 1))
    await asyncio.sleep(0)
    assert served == [] and not budget.try_acquire(1)  # 2 bytes are free, but "big" waits ahead
    budget.release(8)
    await asyncio.gather(big, small)
    assert served == ["big", "small"] and budget.in_use == 7


async def test_a_wait_granted_as_it_is_cancelled_gives_the_bytes_back() -> None:
    budget = MemoryBudget(10)
    assert budget.try_acquire(10)
    waiter = asyncio.create_task(budget.acquire(4))
    await asyncio.sleep(0)
    budget.release(10)  # grants the waiter's 4 bytes ...
    waiter.cancel()  # ... just before it can run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 0
