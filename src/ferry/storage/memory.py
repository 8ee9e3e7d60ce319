"""In-memory Backend: a fast, faithful stand-in for an S3 bucket in tests and the sandbox.

A `MemoryStore` is one "endpoint": it holds several buckets and the in-flight multipart uploads, and every
`MemoryBackend` opened on the same store shares one `copy_group`, so server-side copies work between them.
Semantics follow S3 where tests could notice: ETag is the MD5 hex of a single put and `md5(md5s)-N` after a
multipart upload, listings are in UTF-8 byte order, non-last parts below `min_part_size` are rejected at
completion, a missing upload is NotFoundError.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from ferry.errors import DigestMismatchError, FatalError, NotFoundError, PermanentError, SourceChangedError
from ferry.objects import ObjectInfo, ObjectMeta, PartInfo, PutResult, composite_etag, md5_of_etag
from ferry.storage.base import Backend
from ferry.storage.inproc import InProcessBackend, check_part, check_parts, check_range
from ferry.storage.wrappers import unwrap

__all__ = ["MemoryBackend", "MemoryStore"]

_LIST_BATCH = 1000
_PIECE = 1024 * 1024  # read_stream's pieces


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _own_meta(meta: ObjectMeta) -> ObjectMeta:
    # The caller's `user` mapping may be a dict it keeps mutating; the stored object must not change with it.
    return replace(meta, user=dict(meta.user))


@dataclass(frozen=True, slots=True)
class _Object:
    data: bytes
    etag: str
    mtime: float
    meta: ObjectMeta
    storage_class: str | None
    crc64: int | None
    parts: tuple[int, ...] = ()  # the part sizes of a multipart upload


@dataclass(slots=True)
class _Bucket:
    objects: dict[str, _Object] = field(default_factory=dict)
    keys: builtins.list[str] = field(default_factory=builtins.list)  # sorted; str order == UTF-8 byte order


@dataclass(slots=True)
class _Upload:
    bucket: str
    key: str
    meta: ObjectMeta
    storage_class: str | None
    crc64: int | None
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


class MemoryStore:
    """One in-memory endpoint: buckets plus in-flight multipart uploads, shared by its backends."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or uuid.uuid4().hex[:12]
        # A threading lock, not an asyncio one: the API server and a runner may share a store across threads,
        # and no critical section awaits, so it never blocks an event loop for long.
        self.lock = threading.RLock()
        self._buckets: dict[str, _Bucket] = {}
        self._uploads: dict[str, _Upload] = {}

    @property
    def copy_group(self) -> str:
        return f"memory:{self.name}"

    def create_bucket(self, name: str) -> None:
        with self.lock:
            self._buckets.setdefault(name, _Bucket())

    def bucket_names(self) -> builtins.list[str]:
        with self.lock:
            return sorted(self._buckets)

    def _bucket(self, name: str) -> _Bucket:
        try:
            return self._buckets[name]
        except KeyError:
            raise FatalError(f"bucket {name!r} does not exist in memory store {self.name}") from None


class MemoryBackend(InProcessBackend):
    """One bucket (optionally under a key prefix) of a MemoryStore."""

    def __init__(
        self,
        store: MemoryStore | None = None,
        bucket: str = "bucket",
        prefix: str = "",
        *,
        create_bucket: bool = True,
        min_part_size: int = 5 * 1024 * 1024,
    ) -> None:
        self._store = store if store is not None else MemoryStore()
        super().__init__(prefix, copy_group=self._store.copy_group, min_part_size=min_part_size, mtime_precision=1e-6)
        self._bucket_name = bucket
        if create_bucket:
            self._store.create_bucket(bucket)

    @property
    def store(self) -> MemoryStore:
        return self._store

    @property
    def bucket(self) -> str:
        return self._bucket_name

    @property
    def name(self) -> str:
        return f"mem://{self._bucket_name}/{self._prefix}"

    # -- helpers ------------------------------------------------------------------------------------------
    def _get(self, key: str) -> _Object:
        full = self._full_key(key)
        with self._store.lock:
            obj = self._store._bucket(self._bucket_name).objects.get(full)
        if obj is None:
            raise NotFoundError(f"{self.name}: no such object", key=key)
        return obj

    def _info(self, key: str, obj: _Object, *, with_meta: bool) -> ObjectInfo:
        return ObjectInfo(
            key=key, size=len(obj.data), mtime=obj.mtime, etag=obj.etag, storage_class=obj.storage_class,
            crc64=obj.crc64, meta=obj.meta if with_meta else None,
            md5=md5_of_etag(obj.etag) if with_meta else None,
        )

    def _store_object(self, full: str, obj: _Object) -> None:
        with self._store.lock:
            bucket = self._store._bucket(self._bucket_name)
            if full not in bucket.objects:
                bisect.insort(bucket.keys, full)
            bucket.objects[full] = obj

    @staticmethod
    def _check_if_match(key: str, obj: _Object, if_match: str | None) -> None:
        if if_match is not None and if_match.strip('"') != obj.etag:
            raise SourceChangedError(f"object changed: ETag is now {obj.etag}, expected {if_match}", key=key)

    # -- Backend ------------------------------------------------------------------------------------------
    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        full_prefix = self._prefix + prefix
        after = None if start_after is None else self._prefix + start_after
        strip = len(self._prefix)
        last: str | None = None
        while True:
            # Position again by key after every batch: the consumer may put or delete between our yields.
            with self._store.lock:
                bucket = self._store._bucket(self._bucket_name)
                keys = bucket.keys
                if last is not None:
                    i = bisect.bisect_right(keys, last)
                else:
                    i = bisect.bisect_left(keys, full_prefix)
                    if after is not None:
                        i = max(i, bisect.bisect_right(keys, after))
                batch: builtins.list[ObjectInfo] = []
                while i < len(keys) and len(batch) < _LIST_BATCH:
                    full = keys[i]
                    if not full.startswith(full_prefix):
                        break
                    batch.append(self._info(full[strip:], bucket.objects[full], with_meta=False))
                    i += 1
                done = len(batch) < _LIST_BATCH
            for info in batch:
                yield info
            if done:
                return
            last = self._prefix + batch[-1].key

    async def head(self, key: str) -> ObjectInfo:
        return self._info(key, self._get(key), with_meta=True)

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        check_range(key, offset, length)
        obj = self._get(key)
        self._check_if_match(key, obj, if_match)
        end = len(obj.data) if length is None else offset + length
        return obj.data[offset:end]

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        obj = self._get(key)
        self._check_if_match(key, obj, if_match)
        return self._info(key, obj, with_meta=True), obj.data

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        obj = self._get(key)
        self._check_if_match(key, obj, if_match)
        return list(obj.parts) if obj.parts else None

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        obj = self._get(key)
        self._check_if_match(key, obj, if_match)

        async def pieces() -> AsyncGenerator[bytes, None]:
            for at in range(0, len(obj.data), _PIECE):
                yield obj.data[at:at + _PIECE]

        return self._info(key, obj, with_meta=True), pieces()

    async def put(
        self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
        crc64: int | None = None,
    ) -> PutResult:
        full = self._full_key(key)
        body = bytes(data)
        obj = _Object(body, _md5_hex(body), time.time(), _own_meta(meta), storage_class, crc64)
        self._store_object(full, obj)
        return PutResult(etag=obj.etag, mtime=obj.mtime)

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        async with contextlib.aclosing(body()) as chunks:
            pieces = [bytes(chunk) async for chunk in chunks]
        data = b"".join(pieces)
        if len(data) != size:
            raise PermanentError(f"put {self.name}{key}: the body held {len(data)} bytes, not {size}", key=key)
        if content_md5 is not None and _md5_hex(data) != content_md5.lower():
            raise DigestMismatchError(f"put {self.name}{key}: the bytes do not match their Content-MD5", key=key)
        return await self.put(key, data, meta, storage_class=storage_class, crc64=crc64)

    async def create_multipart(
        self, key: str, meta: ObjectMeta, *, storage_class: str | None = None, crc64: int | None = None
    ) -> str:
        full = self._full_key(key)
        upload_id = uuid.uuid4().hex
        with self._store.lock:
            self._store._bucket(self._bucket_name)
            self._store._uploads[upload_id] = _Upload(
                self._bucket_name, full, _own_meta(meta), storage_class, crc64
            )
        return upload_id

    def _upload(self, key: str, upload_id: str) -> _Upload:
        full = self._full_key(key)
        upload = self._store._uploads.get(upload_id)
        if upload is None or upload.bucket != self._bucket_name or upload.key != full:
            raise NotFoundError(f"{self.name}: no such multipart upload {upload_id}", key=key)
        return upload

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> PartInfo:
        check_part(key, part_number, len(data), self._capabilities)
        body = bytes(data)
        etag = _md5_hex(body)
        with self._store.lock:
            self._upload(key, upload_id).parts[part_number] = (body, etag)
        return PartInfo(part_number=part_number, etag=etag, size=len(body))

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        with self._store.lock:
            parts = dict(self._upload(key, upload_id).parts)
        return [PartInfo(n, etag, len(body)) for n, (body, etag) in sorted(parts.items())]

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        if not parts:
            raise PermanentError("completing a multipart upload needs at least one part", key=key)
        with self._store.lock:
            upload = self._upload(key, upload_id)
            stored = {n: PartInfo(n, etag, len(body)) for n, (body, etag) in upload.parts.items()}
            check_parts(key, parts, stored, self._capabilities.min_part_size)
            chunks = [upload.parts[part.part_number][0] for part in parts]
            etags = [upload.parts[part.part_number][1] for part in parts]
            obj = _Object(
                b"".join(chunks), composite_etag(etags), time.time(), upload.meta, upload.storage_class,
                upload.crc64, tuple(len(c) for c in chunks),
            )
            self._store_object(upload.key, obj)
            del self._store._uploads[upload_id]
        return PutResult(etag=obj.etag, mtime=obj.mtime)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        with self._store.lock:
            self._upload(key, upload_id)
            del self._store._uploads[upload_id]

    async def copy_from(
        self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
        if_match: str | None = None, storage_class: str | None = None, crc64: int | None = None,
    ) -> PutResult:
        src = unwrap(source)
        if not isinstance(src, MemoryBackend) or src._store is not self._store:
            raise PermanentError(
                f"server-side copy from {source.name} to {self.name} needs the same copy group", key=key
            )
        full = self._full_key(key)
        obj = src._get(src_key)
        self._check_if_match(src_key, obj, if_match)
        # Like S3 CopyObject: a new single-part object (ETag = MD5 of the data), class reset unless given.
        copied = _Object(
            obj.data, _md5_hex(obj.data), time.time(), obj.meta if meta is None else _own_meta(meta),
            storage_class, crc64 if meta is not None and crc64 is not None else obj.crc64,
        )
        self._store_object(full, copied)
        return PutResult(etag=copied.etag, mtime=copied.mtime)

    async def delete(self, key: str) -> None:
        full = self._full_key(key)
        with self._store.lock:
            bucket = self._store._bucket(self._bucket_name)
            if bucket.objects.pop(full, None) is not None:
                i = bisect.bisect_left(bucket.keys, full)
                del bucket.keys[i]

    async def restore(self, key: str, days: int) -> None:
        self._get(key)  # nothing here is ever archived; only a missing key is an error

    async def close(self) -> None:
        return None


def _conforms(backend: MemoryBackend) -> Backend:
    return backend  # mypy proves here that MemoryBackend still satisfies the protocol
