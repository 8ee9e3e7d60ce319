"""PathLocks keeps a key and the keys beneath it from being written at the same time."""

from __future__ import annotations

import asyncio

from ferry.engine.pathlocks import PathLocks


async def test_file_and_directory_of_the_same_name_never_overlap() -> None:
    locks = PathLocks()
    active: set[str] = set()
    overlaps: list[tuple[str, str]] = []

    async def write(key: str) -> None:
        async with locks.hold(key):
            for other in active:
                a, b = key.rstrip("/"), other.rstrip("/")
                if a.startswith(b + "/") or b.startswith(a + "/"):
                    overlaps.append((key, other))
            active.add(key)
            await asyncio.sleep(0.01)
            active.discard(key)

    keys = ["a", "a/b", "a/b/c", "a/", "a b/c", "a-b", "b", "b/x", "c/d", "c/e"] * 3
    await asyncio.wait_for(asyncio.gather(*(write(k) for k in keys)), 10)
    assert overlaps == []


async def test_unrelated_keys_run_concurrently() -> None:
    locks = PathLocks()
    running = 0
    peak = 0

    async def write(key: str) -> None:
        nonlocal running, peak
        async with locks.hold(key):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(write(f"dir/{i}") for i in range(20)))
    assert peak == 20


async def test_a_cancelled_wait_holds_nothing() -> None:
    locks = PathLocks()
    async with locks.hold("a"):
        waiter = asyncio.create_task(locks.hold("a/b").__aenter__())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # `a/b` waits while its directory `a` is written as a file
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    async with locks.hold("a/b"), locks.hold("c"):
        pass
    assert not locks._files and not locks._dirs and not locks._waiting
