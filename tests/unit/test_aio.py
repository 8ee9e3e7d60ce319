"""wait_event: a timeout or the event, and a cancellation is never lost."""

from __future__ import annotations

import asyncio

import pytest

from ferry.aio import wait_event


async def test_set_event_and_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_a_cancellation_arriving_as_the_event_is_set_is_not_swallowed() -> None:
    """asyncio.wait_for on 3.11.7 returns normally here (checked when this was written); a loop stopped by
    cancellation then runs on."""
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 10))
    await asyncio.sleep(0)  # the waiter is now inside event.wait()
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter

