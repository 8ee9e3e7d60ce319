"""Sync workers run on the test's own event loop, for the tests that drive them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import Engine

from ferry.db.sync_repo import SyncTaskRow
from ferry.runner.sync import SyncSettings, SyncWorkers
from ferry.storage.base import Backend


@asynccontextmanager
async def running(engine: Engine, opener: Callable[[SyncTaskRow], tuple[Backend, Backend]],
                  settings: SyncSettings) -> AsyncIterator[SyncWorkers]:
    """SyncWorkers running until the block ends; then stopped, and waited for (10 s at most)."""
    workers = SyncWorkers(engine, opener, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(workers.run(stop))
    try:
        yield workers
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
