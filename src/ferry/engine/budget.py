"""A byte budget that bounds how much object data is held in memory at once."""

from __future__ import annotations

import asyncio
from types import TracebackType


class MemoryBudget:
    """Async semaphore counted in bytes; a request larger than the whole budget waits for all of it.

    Taken once per object on the copy hot path, so the uncontended case is a plain counter update: the
    Condition is touched only while somebody waits.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._waiting = 0
        self._cond = asyncio.Condition()

    def hold(self, nbytes: int) -> _Hold:
        """`async with budget.hold(n):` — n bytes (at least 1, at most the whole budget) for the block."""
        return _Hold(self, min(max(nbytes, 1), self.limit))

    async def _acquire(self, need: int) -> None:
        if not self._waiting and self._free >= need:
            self._free -= need  # nobody queued ahead and enough free: no await, so nothing can interleave
            return
        async with self._cond:
            self._waiting += 1
            try:
                await self._cond.wait_for(lambda: self._free >= need)
            finally:
                self._waiting -= 1
            self._free -= need

    async def _release(self, need: int) -> None:
        self._free += need  # before any await: a cancelled release still returns its bytes
        if self._waiting:
            async with self._cond:
                self._cond.notify_all()

    @property
    def in_use(self) -> int:
        return self.limit - self._free


class _Hold:
    __slots__ = ("_budget", "_need")

    def __init__(self, budget: MemoryBudget, need: int) -> None:
        self._budget = budget
        self._need = need

    async def __aenter__(self) -> None:
        await self._budget._acquire(self._need)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._budget._release(self._need)
