"""Serialises writes of keys that are a file and a directory of each other (`a` and `a/b`).

Filer-backed stores (SeaweedFS) map `a/b` to a file inside directory `a`; a PUT of `a` racing a PUT of `a/b`
can answer 200 and still lose one of them. Holding such keys apart costs nothing for ordinary buckets: keys
only wait when an ancestor or descendant path is being written at that moment.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from types import TracebackType


def _ancestors(key: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]: the directory paths a filer creates for the key (without trailing slash)."""
    parts = key.rstrip("/").split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class PathLocks:
    """Lets a key be written only while no in-flight key has its path, is its ancestor, or lies beneath it.

    Taken once per object on the copy hot path, so a key without conflicts only updates two counters: the
    Condition is touched only while somebody waits.
    """

    def __init__(self) -> None:
        self._files: Counter[str] = Counter()  # in-flight keys, as paths without trailing slash
        self._dirs: Counter[str] = Counter()  # ancestor directories of in-flight keys
        self._waiting = 0
        self._changed = asyncio.Condition()

    def hold(self, key: str) -> _PathHold:
        """`async with locks.hold(key):` — write `key` while no related path is being written."""
        return _PathHold(self, key.rstrip("/"), _ancestors(key))

    def _conflicts(self, path: str, ancestors: list[str]) -> bool:
        return path in self._files or path in self._dirs or any(a in self._files for a in ancestors)

    async def _acquire(self, path: str, ancestors: list[str]) -> None:
        if self._conflicts(path, ancestors):
            async with self._changed:
                self._waiting += 1
                try:
                    await self._changed.wait_for(lambda: not self._conflicts(path, ancestors))
                finally:
                    self._waiting -= 1
        self._files[path] += 1
        self._dirs.update(ancestors)

    async def _release(self, path: str, ancestors: list[str]) -> None:
        # Unregistered before any await, so a cancelled release cannot leave the path held.
        self._files[path] -= 1
        if not self._files[path]:
            del self._files[path]
        self._dirs.subtract(ancestors)
        for a in ancestors:
            if not self._dirs[a]:
                del self._dirs[a]
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()


class _PathHold:
    __slots__ = ("_ancestors", "_locks", "_path")

    def __init__(self, locks: PathLocks, path: str, ancestors: list[str]) -> None:
        self._locks = locks
        self._path = path
        self._ancestors = ancestors

    async def __aenter__(self) -> None:
        await self._locks._acquire(self._path, self._ancestors)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._locks._release(self._path, self._ancestors)
