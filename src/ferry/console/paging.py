"""Paging and status filters of the console's lists, in the OMS API's own limit/offset terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

PAGE_SIZES: Final = (20, 50, 100)
MAX_OFFSET: Final = 10_000  # the API's own bound on `offset` (PageOffset)


@dataclass(frozen=True)
class Paging:
    """One page of a list: where it starts, how long it is, how many rows match, and the links around it."""

    path: str
    limit: int
    offset: int
    count: int
    status: str

    @classmethod
    def parse(cls, path: str, limit: str | None, offset: str | None, status: str | None) -> Paging:
        """From query parameters; anything unparsable falls back to the first page of 20 (a typed URL is not
        worth an error page)."""
        size = int(limit) if limit and limit.isdigit() and int(limit) in PAGE_SIZES else PAGE_SIZES[0]
        start = int(offset) if offset and offset.isdigit() else 0
        start = min(start - start % size, MAX_OFFSET)
        return cls(path, size, start, 0, status or "")

    def with_count(self, count: int) -> Paging:
        return Paging(self.path, self.limit, self.offset, count, self.status)

    def link(self, offset: int, status: str | None = None, limit: int | None = None) -> str:
        query = {"limit": str(limit or self.limit), "offset": str(max(offset, 0))}
        chosen = self.status if status is None else status
        if chosen:
            query["status"] = chosen
        return f"{self.path}?{urlencode(query)}"

    @property
    def first_row(self) -> int:
        return self.offset + 1 if self.count else 0

    @property
    def last_row(self) -> int:
        return min(self.offset + self.limit, self.count)

    @property
    def prev_link(self) -> str | None:
        return self.link(self.offset - self.limit) if self.offset > 0 else None

    @property
    def next_link(self) -> str | None:
        nxt = self.offset + self.limit
        return self.link(nxt) if nxt < self.count and nxt <= MAX_OFFSET else None

    @property
    def last_link(self) -> str | None:
        if self.count <= self.offset + self.limit:
            return None
        last = min((self.count - 1) // self.limit * self.limit, MAX_OFFSET - MAX_OFFSET % self.limit)
        return self.link(last)
