"""Asyncio helpers that stay correct on Python 3.11."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass; True when it was set.

    Not `asyncio.wait_for`: on 3.11 it swallows a cancellation that arrives as the event is set, and a loop
    that waits this way then never stops (a runner's loop missed its cancel exactly so, and hung a test).
    `asyncio.timeout` tells its own timeout from a cancellation.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
