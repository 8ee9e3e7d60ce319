"""A Backend wrapper whose listing holds only chosen prefixes and exact keys (OMS object/prefix/list tasks)."""

from __future__ import annotations

import asyncio
import bisect
import builtins
from collections.abc import AsyncIterator, Iterable

from ferry.errors import NotFoundError
from ferry.objects import ObjectInfo
from ferry.storage.base import Backend, listing
from ferry.storage.wrappers import BackendWrapper


def normalise(prefixes: Iterable[str], keys: Iterable[str]) -> list[tuple[str, bool]]:
    """Sorted, non-overlapping `(text, is_prefix)` items: prefixes inside a shorter chosen prefix and keys
    under a chosen prefix are dropped, and repeats are merged.

    Each item covers a key range that no other item touches, and the ranges come in ascending order (a key
    that does not start with a prefix compares to every key under it as it compares to the prefix itself),
    so listing the items one after another yields a sorted listing when the inner store lists sorted.
    """
    kept: list[str] = []
    for p in sorted(set(prefixes)):
        if not kept or not p.startswith(kept[-1]):
            kept.append(p)
    items = [(p, True) for p in kept]
    items.extend((k, False) for k in set(keys) if not _covered(k, kept))
    items.sort()
    return items


def _covered(key: str, prefixes: list[str]) -> bool:
    # `prefixes` is sorted and prefix-free; the only candidate is the greatest one not above the key.
    i = bisect.bisect_right(prefixes, key)
    return i > 0 and key.startswith(prefixes[i - 1])


class SelectedBackend(BackendWrapper):
    """Lists only `items` (see `normalise`) of the inner backend; everything else passes through.

    Exact keys are looked up with HEAD (`lookahead` at a time, in order); those that do not exist are
    collected in `missing` so the caller can report them.
    """

    def __init__(self, inner: Backend, items: list[tuple[str, bool]], *, lookahead: int = 32) -> None:
        super().__init__(inner)
        self.items = items
        self.lookahead = lookahead
        self.missing: builtins.list[str] = []

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        batch: builtins.list[str] = []
        for text, is_prefix in self.items:
            if is_prefix:
                if not (text.startswith(prefix) or prefix.startswith(text)):
                    continue
                async for obj in self._drain(batch):
                    yield obj
                async for obj in listing(self.inner, max(text, prefix, key=len), start_after):
                    yield obj
            elif text.startswith(prefix) and (start_after is None or text > start_after):
                batch.append(text)
                if len(batch) >= self.lookahead:
                    async for obj in self._drain(batch):
                        yield obj
        async for obj in self._drain(batch):
            yield obj

    async def _drain(self, batch: builtins.list[str]) -> AsyncIterator[ObjectInfo]:
        if not batch:
            return
        keys = list(batch)
        batch.clear()
        found = await asyncio.gather(*(self._head(k) for k in keys))
        for obj in found:
            if obj is not None:
                yield obj

    async def _head(self, key: str) -> ObjectInfo | None:
        try:
            return await self.inner.head(key)
        except NotFoundError:
            self.missing.append(key)
            return None
