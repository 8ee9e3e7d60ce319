"""A byte budget that bounds how much object data is held in memory at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class MemoryBudget:
    """Async semaphore counted in bytes; a request larger than the whole budget waits for all of it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        need = min(max(nbytes, 1), self.limit)
        async with self._cond:
            await self._cond.wait_for(lambda: self._free >= need)
            self._free -= need
        try:
            yield
        finally:
            async with self._cond:
                self._free += need
                self._cond.notify_all()

    @property
    def in_use(self) -> int:
        return self.limit - self._free
