"""A byte budget that bounds how much object data is held in memory at once."""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType


class MemoryBudget:
    """Async semaphore counted in bytes, first come first served; a request larger than the whole budget
    waits for all of it.

    Taken once per object (or streamed chunk) on the copy hot path, so the uncontended case is a plain
    counter update. Releasing never awaits, so bytes are returned even by a task being cancelled.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _clamp(self, nbytes: int) -> int:
        return min(max(nbytes, 1), self.limit)

    def hold(self, nbytes: int) -> _Hold:
        """`async with budget.hold(n):` — n bytes (at least 1, at most the whole budget) for the block."""
        return _Hold(self, self._clamp(nbytes))

    def try_acquire(self, nbytes: int) -> bool:
        """Take `nbytes` now if they are free and nobody waits ahead; the caller must `release` them."""
        need = self._clamp(nbytes)
        if not self._waiters and self._free >= need:
            self._free -= need
            return True
        return False

    async def acquire(self, nbytes: int) -> None:
        """Take `nbytes`, waiting behind earlier requests; the caller must `release` them."""
        need = self._clamp(nbytes)
        if self.try_acquire(need):
            return
        entry = (need, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        except BaseException:
            if entry[1].done() and not entry[1].cancelled():
                self.release(need)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()  # whoever waited behind us may fit now
            raise

    def release(self, nbytes: int) -> None:
        self._free += self._clamp(nbytes)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._free >= self._waiters[0][0]:
            need, fut = self._waiters.popleft()
            if not fut.done():
                self._free -= need
                fut.set_result(None)

    @property
    def in_use(self) -> int:
        return self.limit - self._free


class _Hold:
    __slots__ = ("_budget", "_need")

    def __init__(self, budget: MemoryBudget, need: int) -> None:
        self._budget = budget
        self._need = need

    async def __aenter__(self) -> None:
        await self._budget.acquire(self._need)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._budget.release(self._need)
