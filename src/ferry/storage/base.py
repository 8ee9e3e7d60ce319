"""The Backend protocol every store implements, and the Capabilities it declares as data."""

from __future__ import annotations

import builtins
import enum
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ferry.errors import TransientError
from ferry.objects import ObjectInfo, ObjectMeta, PartInfo, PutResult


class ListOrder(enum.Enum):
    """The order in which a backend's listing yields keys."""

    LEXICOGRAPHIC = "lexicographic"  # ascending UTF-8 byte order, as AWS S3 does
    UNORDERED = "unordered"  # any order at all (SeaweedFS lists in directory-tree order)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do; the engine reads these, never the backend's type.

    `copy_group` identifies an endpoint+credential pair: two backends with the same non-None group can copy
    server-side between their buckets. Part limits follow the provider (S3: 5 MiB..5 GiB, 10,000 parts).
    """

    list_order: ListOrder = ListOrder.LEXICOGRAPHIC
    copy_group: str | None = None
    multipart: bool = True
    min_part_size: int = 5 * 1024 * 1024
    max_part_size: int = 5 * 1024 * 1024 * 1024
    max_parts: int = 10_000
    max_object_size: int = 48_800 * 1024 * 1024 * 1024
    etag_is_md5: bool = True  # single-part ETag is the MD5 of the content
    crc64: bool = False  # the store reports a CRC-64/ECMA of its own (OSS, COS, OBS)
    mtime_precision: float = 1.0  # seconds
    storage_classes: frozenset[str] = field(default_factory=frozenset)
    restore: bool = False  # objects may be archived: `restore` and `ObjectInfo.restore` mean something here
    max_key_bytes: int = 1024
    part_crc32c: bool = False  # upload_part can have the store verify a CRC32C (S3 flexible checksums)
    trailing_crc32c: bool = False  # put_stream has the store verify a CRC32C of the bytes sent after them


@runtime_checkable
class Backend(Protocol):
    """One bucket (optionally under a prefix) of one store.

    Keys passed in and yielded are relative to the backend's prefix. Every method raises only the
    errors of `ferry.errors`.
    """

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def name(self) -> str:
        """A display name with no secrets, e.g. `s3://bucket/prefix`."""
        ...

    def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Every object under `prefix` (keys ending in `/` included), in `capabilities.list_order`."""
        ...

    async def head(self, key: str) -> ObjectInfo:
        """The object with its `meta` filled; raises NotFoundError. A store with archive classes also says how
        a restore of the object stands (`ObjectInfo.restore`: ONGOING, DONE, or None when it reports none):
        this HEAD is how a restore is watched (engine/restores.py)."""
        ...

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        """The bytes of `key` in [offset, offset+length); SourceChangedError when `if_match` fails."""
        ...

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        """The whole object and its info with `meta` filled, from ONE response (GET headers), so the
        small-object hot path needs no HEAD; SourceChangedError when `if_match` fails."""
        ...

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        """The sizes of the parts `key` was uploaded in, in order, when it was a multipart upload and the store
        can tell (S3: HEAD with `partNumber`); None otherwise. What a multipart ETag is checked with."""
        ...

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        """The object's info with `meta` filled and its bytes, in pieces as they arrive, so a large object is
        never held whole. The caller reads the pieces to the end or closes them (`aclose`); the pieces raise
        a FerryError if the bytes stop short. SourceChangedError when `if_match` fails."""
        ...

    async def put(
        self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
        crc64: int | None = None,
    ) -> PutResult:
        """Write a whole object; `crc64` is stored with it so later checks need no read."""
        ...

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        """Write a whole object of `size` bytes as `body()` yields them, never holding it all; `body` makes a
        fresh iterator for each attempt. With `content_md5` (hex), the store checks the bytes against it and
        on a mismatch keeps nothing and raises DigestMismatchError. Else, with `trailing_crc32c`, a store
        that can (`capabilities.trailing_crc32c`) checks a CRC32C sent after the bytes and says so in
        `PutResult.crc32c_verified`; others ignore it. Fewer bytes than `size`, or more, fail the write and
        keep nothing."""
        ...

    async def create_multipart(
        self, key: str, meta: ObjectMeta, *, storage_class: str | None = None, crc64: int | None = None
    ) -> str:
        """Start a multipart upload and return its id."""
        ...

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> PartInfo:
        """Upload one part. With `crc32c`, a store that can (`capabilities.part_crc32c`) checks the part
        against it, refuses damaged bytes with a TransientError and says so in `PartInfo.crc32c_verified`;
        others ignore it and the caller checks the part another way."""
        ...

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        """Parts already uploaded; raises NotFoundError when the upload is gone."""
        ...

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...

    async def copy_from(
        self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
        if_match: str | None = None, storage_class: str | None = None, crc64: int | None = None,
    ) -> PutResult:
        """Server-side copy from `source` (same copy_group); `meta=None` keeps the source's metadata.

        `crc64` is stored with the copy when `meta` replaces the metadata (a copy onto itself records a
        CRC-64 computed after a multipart upload)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def restore(self, key: str, days: int) -> None:
        """Ask an archive store to restore `key` for `days` with the vendor's own call (S3 `?restore`, Baidu's
        `x-bce-restore-*` headers, Qiniu's `restoreAr`, Azure's Set Blob Tier); asking again while a restore is
        under way, or for an object that is not archived, is not an error. A no-op where nothing is archived
        (`capabilities.restore` False). Reading an archived object that is not restored raises
        ArchivedObjectError; `head` tells when the restore is done."""
        ...

    async def close(self) -> None: ...


def take(iterator: Iterator[ObjectInfo], count: int) -> builtins.list[ObjectInfo]:
    """Up to `count` items of a blocking listing walk: one thread hop per batch, not per object."""
    out: builtins.list[ObjectInfo] = []
    for item in iterator:
        out.append(item)
        if len(out) >= count:
            break
    return out


async def close_listing(iterator: AsyncIterator[Any]) -> None:
    """Close a listing left before its end, so the store's HTTP response is released now, not at GC."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def listing(backend: Backend, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
    """`backend.list(...)`, closed when the consumer stops early."""
    iterator = backend.list(prefix, start_after)
    try:
        async for info in iterator:
            yield info
    finally:
        await close_listing(iterator)


async def first_listed(backend: Backend) -> ObjectInfo | None:
    """The first object of the listing, or None: proof that the keys work and the bucket is there."""
    iterator = backend.list()
    try:
        return await anext(aiter(iterator), None)
    finally:
        await close_listing(iterator)


class LineTooLong(ValueError):
    """A line of a file read by `ranged_lines` is longer than its `max_line` bytes."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"a line at byte {offset} is too long")
        self.offset = offset


async def ranged_lines(
    backend: Backend, key: str, size: int, etag: str | None, *, offset: int = 0, chunk: int = 1024 * 1024,
    max_line: int | None = None,
) -> AsyncGenerator[tuple[bytes, int], None]:
    """The lines of `key` from byte `offset` on, read in `chunk`-byte ranges pinned to `etag`, so memory
    stays bounded whatever the size: each line's bytes without its `\n`, and the offset just after it (a
    checkpoint to resume from). LineTooLong once a line passes `max_line` bytes."""
    pending = b""
    consumed = offset  # bytes of the file up to the end of the last line yielded
    while offset < size:
        data = await backend.read(key, offset=offset, length=min(chunk, size - offset), if_match=etag)
        if not data:
            break
        offset += len(data)
        buf = pending + data if pending else data
        start = 0
        # One line at a time (not split()): a chunk of short lines as a list would cost a few times its size.
        while (end := buf.find(b"\n", start)) >= 0:
            if max_line is not None and end - start > max_line:
                raise LineTooLong(consumed)
            consumed += end - start + 1
            yield buf[start:end], consumed
            start = end + 1
        pending = buf[start:]
        del buf, data
        if max_line is not None and len(pending) > max_line:
            raise LineTooLong(consumed)
    if pending:
        consumed += len(pending)
        yield pending, consumed


async def ranged_pieces(
    backend: Backend, key: str, size: int, etag: str | None, piece: int = 4 * 1024 * 1024
) -> AsyncGenerator[bytes, None]:
    """`key`'s `size` bytes by ranged reads of `piece` bytes pinned to `etag`: `read_stream` for a store
    whose answers cannot be streamed."""
    for offset in range(0, size, piece):
        length = min(piece, size - offset)
        data = await backend.read(key, offset=offset, length=length, if_match=etag)
        if len(data) != length:
            raise TransientError(f"short read at {offset}: {len(data)} of {length} bytes", key=key)
        yield data
