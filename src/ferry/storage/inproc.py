"""What the in-process backends (local directory, memory) share, so both declare and refuse the same things."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ferry.errors import PermanentError
from ferry.objects import PartInfo
from ferry.storage.base import Capabilities, ListOrder
from ferry.storage.profiles import CANONICAL_CLASSES


class InProcessBackend:
    """The key prefix, the capabilities and the key check of a backend that Ferry itself stores."""

    def __init__(self, prefix: str, *, copy_group: str, min_part_size: int, mtime_precision: float) -> None:
        self._prefix = prefix
        self._capabilities = Capabilities(
            list_order=ListOrder.LEXICOGRAPHIC,
            copy_group=copy_group,
            min_part_size=min_part_size,
            etag_is_md5=True,
            crc64=False,
            mtime_precision=mtime_precision,
            storage_classes=frozenset(CANONICAL_CLASSES),
            restore=False,
        )

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def _full_key(self, key: str) -> str:
        return full_key(self._prefix, key, self._capabilities)


def full_key(prefix: str, key: str, caps: Capabilities) -> str:
    """`prefix + key`, refused when the key is empty, not UTF-8, or too long for the store with the prefix."""
    if not key:
        raise PermanentError("an object key must not be empty", key=key)
    full = prefix + key
    try:
        size = len(full.encode("utf-8"))
    except UnicodeEncodeError:
        raise PermanentError("an object key must be valid UTF-8", key=key) from None
    if size > caps.max_key_bytes:
        raise PermanentError(f"key is {size} bytes with the prefix; the limit is {caps.max_key_bytes}", key=key)
    return full


def check_range(key: str, offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise PermanentError(f"invalid range offset={offset} length={length}", key=key)


def check_part(key: str, part_number: int, size: int, caps: Capabilities) -> None:
    """An upload_part within the store's part-number and part-size limits."""
    if not 1 <= part_number <= caps.max_parts:
        raise PermanentError(f"part number {part_number} is outside 1..{caps.max_parts}", key=key)
    if size > caps.max_part_size:
        raise PermanentError(f"part of {size} bytes exceeds {caps.max_part_size}", key=key)


def check_parts(key: str, parts: Sequence[PartInfo], stored: Mapping[int, PartInfo], min_part_size: int) -> None:
    """A complete_multipart's part list: ascending, each uploaded with that ETag, all but the last big enough."""
    previous = 0
    for index, part in enumerate(parts):
        if part.part_number <= previous:
            raise PermanentError("parts must be listed in ascending part-number order", key=key)
        previous = part.part_number
        found = stored.get(part.part_number)
        if found is None or found.etag != part.etag.strip('"'):
            raise PermanentError(f"part {part.part_number} was not uploaded with that ETag", key=key)
        if index < len(parts) - 1 and found.size < min_part_size:
            raise PermanentError(
                f"part {part.part_number} is {found.size} bytes, below the minimum "
                f"{min_part_size} for all parts but the last", key=key,
            )
