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
