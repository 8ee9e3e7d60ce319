"""Serialises writes of keys that are a file and a directory of each other (`a` and `a/b`).

Filer-backed stores (SeaweedFS) map `a/b` to a file inside directory `a`; a PUT of `a` racing a PUT of `a/b`
can answer 200 and still lose one of them. Holding such keys apart costs nothing for ordinary buckets: keys
only wait when an ancestor or descendant path is being written at that moment.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


def _ancestors(key: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]: the directory paths a filer creates for the key (without trailing slash)."""
    parts = key.rstrip("/").split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class PathLocks:
    """Lets a key be written only while no in-flight key has its path, is its ancestor, or lies beneath it."""

    def __init__(self) -> None:
        self._files: Counter[str] = Counter()  # in-flight keys, as paths without trailing slash
        self._dirs: Counter[str] = Counter()  # ancestor directories of in-flight keys
        self._changed = asyncio.Condition()

    def _conflicts(self, path: str, ancestors: list[str]) -> bool:
        return path in self._files or path in self._dirs or any(a in self._files for a in ancestors)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        path = key.rstrip("/")
        ancestors = _ancestors(key)
        if self._conflicts(path, ancestors):
            async with self._changed:
                await self._changed.wait_for(lambda: not self._conflicts(path, ancestors))
        self._files[path] += 1
        self._dirs.update(ancestors)
        try:
            yield
        finally:
            self._files[path] -= 1
            if not self._files[path]:
                del self._files[path]
            self._dirs.subtract(ancestors)
            for a in ancestors:
                if not self._dirs[a]:
                    del self._dirs[a]
            async with self._changed:
                self._changed.notify_all()
