"""The one per-object copy routine: server-side when allowed; else small objects read whole, larger ones
streamed from one GET into one PUT, and multipart above a threshold.

Every path pins the source by ETag (If-Match) so an object that changes mid-copy is detected, checks what it
READ against the strongest checksum the source gave (engine.content_check) before the write can land (a small
object before its PUT, a stream before its last piece, a multipart upload before it is completed; a mismatch is
a DamagedReadError, and nothing of it is kept), verifies what it wrote according to the consistency check as far
as the write's own answer allows, and removes a destination object that failed verification. Whether that
answer proved the write is `CopyOutcome.verified`: where it did not, engine.verified_copy (the routine every
caller uses) looks at the written object; `CopyOutcome.size_only` says the source gave no checksum to check
the read by.
Multipart uploads are checkpointed part by part so a restarted job continues them instead of starting at 0 %.
Progress is reported as bytes move: each part once uploaded, a streamed object piece by piece (in steps of a few
MiB from the thread of a kernel move), and small or server-side copies whole by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import fastcrc

from ferry.db.records import PartRow, UploadRow
from ferry.engine.budget import MemoryBudget
from ferry.engine.checksums import Crc64, crc64_combine
from ferry.engine.compare import ConsistencyCheck
from ferry.engine.content_check import (
    CRC32,
    CRC32C,
    MD5,
    SIZE,
    UNCHECKED,
    ContentSums,
    SourceChecksum,
    multipart_count,
    source_checksum,
)
from ferry.errors import (
    DamagedReadError,
    DigestMismatchError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
    UsageError,
    VerificationError,
)
from ferry.objects import ObjectInfo, ObjectMeta, PartInfo, composite_etag
from ferry.storage.base import Backend
from ferry.storage.http1 import pass_splice
from ferry.storage.profiles import CANONICAL_CLASSES

MiB = 1024 * 1024
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
# Hashing a big part holds the GIL-free C loop for milliseconds; off the event loop it overlaps with I/O.
_THREAD_HASH_MIN = 1 * MiB
_T = TypeVar("_T")
_THREAD_CRC32C_MIN = 32 * MiB  # CRC32C runs at ~5 GB/s: below this it costs the event loop under 7 ms
_STREAM_MEMORY = 8 * MiB
_THREAD_STREAM_HASH_MIN = 64 * 1024  # a streamed piece this big is hashed in a thread, while it is sent


class Progress(Protocol):
    """Where an object's moved bytes are reported (engine.progress.ObjectProgress)."""

    def add(self, n: int) -> None: ...
    def restart(self) -> None: ...


class _Unwatched:
    def add(self, n: int) -> None:
        pass

    def restart(self) -> None:
        pass


UNWATCHED = _Unwatched()


class UploadCheckpoints(Protocol):
    """Where in-flight multipart uploads are remembered (the job database)."""

    async def get(self, key: str) -> UploadRow | None: ...
    async def save(self, upload: UploadRow) -> None: ...
    async def save_part(self, key: str, part: PartRow) -> None: ...
    async def parts(self, key: str) -> list[PartRow]: ...
    async def drop(self, key: str) -> None: ...


KEEP_SOURCE_CLASS: Final = "SRC_STORAGE_MAPPING"


@dataclass(frozen=True, slots=True)
class CopyOptions:
    consistency: ConsistencyCheck = ConsistencyCheck.SIZE_LAST_MODIFIED
    metadata: bool = False
    # A task's dst_storage_policy or `--storage-class`: a canonical class or one of the store's own names,
    # KEEP_SOURCE_CLASS for each source object's own class, None or STANDARD for the store's default.
    storage_class: str | None = None
    # Objects from `stream_threshold` up to `multipart_threshold` are streamed from one GET into one PUT,
    # so memory holds a few MiB of each rather than the object. One PUT beat parallel 16 MiB parts on
    # SeaweedFS (rclone also uploads up to 200 MiB in one PUT); the price is that an interrupted one
    # starts again, where a multipart upload resumes.
    multipart_threshold: int = 128 * MiB
    part_size: int = 16 * MiB
    stream_threshold: int = 16 * MiB
    server_side: bool = True
    # Objects whose source gives no checksum of their content (checked by their size only) are read again
    # from the source and the destination after the copy, and compared.
    reread_size_only: bool = False


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    size: int
    etag: str | None
    method: str  # put, stream, multipart, server
    # The write's own answer proved the destination holds the source's bytes: an ETag equal to the MD5 of the
    # bytes sent (or to the composite of the parts sent, or to the source's after a server-side copy), or a
    # Content-MD5 or CRC32C the store checked. False says nothing was learnt about what was written.
    verified: bool = False
    # The source gave no checksum of its content, so what was read was checked by its size only.
    size_only: bool = False


class StorageClassRule:
    """The storage class each write asks for, resolved once per task from CopyOptions.storage_class against
    what the destination offers: a fixed class, None for the store's default (STANDARD is every bucket's
    default, so nothing is sent for it), or with KEEP_SOURCE_CLASS each source object's class where the
    destination has that class (else its default: a class it lacks cannot be kept, and nothing is lost)."""

    __slots__ = ("_fixed", "_keep", "_offered")

    def __init__(self, wanted: str | None, dst: Backend) -> None:
        upper = (wanted or "STANDARD").upper()
        self._offered = dst.capabilities.storage_classes
        self._keep = upper == KEEP_SOURCE_CLASS
        self._fixed = None if upper in ("STANDARD", KEEP_SOURCE_CLASS) else wanted
        if self._fixed is not None and upper in CANONICAL_CLASSES and self._offered and upper not in self._offered:
            raise UsageError(f"{dst.name} has no {upper} storage class")

    def __call__(self, obj: ObjectInfo) -> str | None:
        if not self._keep:
            return self._fixed
        wanted = (obj.storage_class or "STANDARD").upper()
        return wanted if wanted != "STANDARD" and wanted in self._offered else None


def choose_part_size(size: int, preferred: int, min_part: int, max_part: int, max_parts: int) -> int:
    """The preferred part size, grown (in whole MiB) until the object fits the provider's part count."""
    part = max(preferred, min_part)
    if size > part * max_parts:
        part = -(-size // max_parts)
        part = -(-part // MiB) * MiB
    return min(part, max_part)


def _digest(data: bytes, crc: bool) -> tuple[str, int | None]:
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return md5, _crc64(data) if crc else None


_NOTHING: Final = SourceChecksum(UNCHECKED)


def _crc64(data: bytes) -> int:
    c = Crc64()
    c.update(data)
    return c.value


async def _off_loop(fn: Callable[[bytes], _T], data: bytes, thread_min: int = _THREAD_HASH_MIN) -> _T:
    """`fn(data)`, in a thread once `data` is big enough for the event loop to feel it (the hashes used here
    all let go of the GIL)."""
    if len(data) >= thread_min:
        return await asyncio.to_thread(fn, data)
    return fn(data)


async def _digest_async(data: bytes, crc: bool) -> tuple[str, int | None]:
    return await _off_loop(functools.partial(_digest, crc=crc), data)


class Copier:
    """Copies single objects from `src` to `dst` under a shared memory budget."""

    def __init__(
        self, src: Backend, dst: Backend, opts: CopyOptions, budget: MemoryBudget,
        checkpoints: UploadCheckpoints | None = None,
    ) -> None:
        self.src = src
        self.dst = dst
        self.opts = opts
        self.budget = budget
        self.checkpoints = checkpoints
        self.storage_class = StorageClassRule(opts.storage_class, dst)
        group = src.capabilities.copy_group
        self.server_side = bool(opts.server_side and group is not None and group == dst.capabilities.copy_group)
        caps = dst.capabilities
        self._verify = opts.consistency is not ConsistencyCheck.NO_CHECK
        self._crc = opts.consistency is ConsistencyCheck.CRC64
        self._etag_md5 = caps.etag_is_md5
        self._part_crc32c = caps.part_crc32c

    def _meta(self, meta: ObjectMeta | None) -> ObjectMeta:
        if meta is None:
            return ObjectMeta()
        return meta if self.opts.metadata else meta.content_type_only()

    async def copy(self, obj: ObjectInfo, progress: Progress = UNWATCHED) -> CopyOutcome:
        """Copy `obj` (as listed), reporting the bytes of parts and streams to `progress` as they move;
        raises a PermanentError subclass when it cannot be copied."""
        if self.server_side and obj.size <= self.dst.capabilities.max_part_size:
            return await self._copy_server(obj)
        if obj.size >= self.opts.multipart_threshold and self.dst.capabilities.multipart:
            return await self._copy_multipart(obj, progress)
        if obj.size >= self.opts.stream_threshold:
            return await self._copy_stream(obj, progress)
        return await self._copy_small(obj)

    async def source_check(self, info: ObjectInfo) -> SourceChecksum:
        """What the bytes read of `info` (as the GET or HEAD that started the copy saw it) must match: the
        strongest checksum the source gave, a size alone under no_check or where it gave none."""
        if not self._verify:
            return _NOTHING
        check = source_checksum(info)
        if check.kind in (SIZE, CRC32C, CRC32) and multipart_count(info) is not None:
            # Only a multipart ETag is better: its part layout costs a HEAD or a few.
            sizes = await self.src.part_sizes(info.key, if_match=info.etag)
            if sizes is not None:
                check = source_checksum(info, sizes)
        return check

    async def discard(self, key: str) -> None:
        """Remove what was written at `key` (it failed verification), whatever stands in the way."""
        with contextlib.suppress(Exception):
            await self.dst.delete(key)

    async def _copy_server(self, obj: ObjectInfo) -> CopyOutcome:
        # Server-side copy keeps all source metadata (COPY directive): nothing leaves the store, and keeping
        # more metadata than asked for never loses anything.
        result = await self.dst.copy_from(
            self.src, obj.key, obj.key, None, if_match=obj.etag, storage_class=self.storage_class(obj)
        )
        # A new ETag (a multipart source copied whole, an encrypting store) proves nothing either way.
        return CopyOutcome(obj.size, result.etag, "server", bool(result.etag and result.etag == obj.etag))

    async def _copy_small(self, obj: ObjectInfo) -> CopyOutcome:
        async with self.budget.hold(obj.size):
            info, data = await self.src.read_object(obj.key, if_match=obj.etag)
            if len(data) != info.size:
                raise TransientError(f"short read: got {len(data)} of {info.size} bytes")
            if len(data) != obj.size:
                raise SourceChangedError("source size changed since it was listed", key=obj.key)
            md5: str | None = None
            crc = info.crc64
            check = _NOTHING
            if self._verify:
                # Checked before anything is written: damaged bytes never reach the destination.
                check = await self.source_check(info)
                sums = ContentSums(check, md5=True, crc64=self._crc)
                await _off_loop(sums.update, data)
                problem = sums.problem(obj.size)
                if problem is not None:
                    raise DamagedReadError(problem, key=obj.key)
                md5 = sums.md5
                if crc is None and not check.size_only:
                    crc = sums.crc64  # only a CRC of bytes the source's own checksum vouched for is stored
            result = await self.dst.put(
                obj.key, data, self._meta(info.meta), storage_class=self.storage_class(obj), crc64=crc
            )
        etag = result.etag
        told = md5 is not None and self._etag_md5 and etag is not None and _MD5_HEX.match(etag) is not None
        if told and etag != md5:
            await self.discard(obj.key)
            raise VerificationError("destination ETag does not match the MD5 of the bytes sent")
        return CopyOutcome(obj.size, result.etag, "put", told, check.size_only)

    async def _copy_stream(self, obj: ObjectInfo, progress: Progress) -> CopyOutcome:
        # What one stream holds at most: the answer being read (paused at 2 MiB behind) and the socket
        # buffer of the request being written.
        async with self.budget.hold(_STREAM_MEMORY):
            info, pieces = await self.src.read_stream(obj.key, if_match=obj.etag)
            async with contextlib.aclosing(pieces):
                if info.size != obj.size:
                    raise SourceChangedError("source size changed since it was listed", key=obj.key)
                check = await self.source_check(info)
                # Where the source vouches that its ETag is the content's MD5, the destination checks the
                # bytes against it (Content-MD5) as they arrive: end to end, and nothing to hash here.
                trusted = check.value if check.kind == MD5 else None
                try:
                    return await self._stream_once(info, check, trusted, pieces, progress)
                except DigestMismatchError:
                    if trusted is None:
                        raise
        # Refused against the source's MD5: damaged on the way (or that ETag is no MD5 after all, which no
        # number of reads can tell apart: the object then fails after them, never lands unverified).
        raise DamagedReadError("the destination refused the bytes read against the source's MD5, sent as "
                               "their Content-MD5", key=obj.key)

    async def _stream_once(self, info: ObjectInfo, check: SourceChecksum, content_md5: str | None,
                           opened: AsyncGenerator[bytes, None] | None, progress: Progress) -> CopyOutcome:
        """One streamed PUT of `info`, fed by `opened` (a read already under way) on its first attempt and by a
        new read on any retry. Without a Content-MD5 for the destination to check, the bytes are checked
        against the source's `check` as they pass, the last piece held back until they are: damaged bytes
        fail the PUT short of its length, so the store keeps nothing."""
        key, size = info.key, info.size
        # The upload leg, without a Content-MD5, can be checked only at the price of a pass over all the
        # bytes: the store's (a trailing CRC32C; SeaweedFS also hashes such a body with SHA-256) or ours
        # (MD5). That is paid under the CRC64 check; size_last_modified trusts TCP for that leg.
        check_content = content_md5 is None and self._crc
        by_trailer = check_content and self.dst.capabilities.trailing_crc32c
        sums = ContentSums(_NOTHING if content_md5 is not None else check,
                           md5=check_content and self._etag_md5 and not by_trailer, crc64=self._crc)
        first = [opened] if opened is not None else []

        def body() -> AsyncGenerator[bytes, None]:
            progress.restart()  # each attempt sends the body from its first byte
            if first and not sums.hashing:
                # Nothing to see in the bytes: the read under way goes through untouched, so a store whose
                # connection allows it moves it socket to socket in the kernel (storage/splice.py).
                return _counted(first.pop(), progress)
            return self._hashed(info, first.pop() if first else None, sums, progress)

        result = await self.dst.put_stream(key, size, body, self._meta(info.meta), crc64=info.crc64,
                                           storage_class=self.storage_class(info), content_md5=content_md5,
                                           trailing_crc32c=by_trailer)
        got = result.etag
        if by_trailer and not result.crc32c_verified:
            await self.discard(key)
            raise VerificationError("the destination did not confirm the CRC32C of the bytes sent")
        expected = content_md5 or sums.md5
        told = expected is not None and self._etag_md5 and got is not None and _MD5_HEX.match(got) is not None
        if told and got != expected:
            await self.discard(key)
            raise VerificationError("destination ETag does not match the MD5 of the bytes sent")
        if sums.crc64 is not None:
            await self._check_crc(info, sums.crc64, vouched=not check.size_only)
        # A Content-MD5 is checked by the store itself (a mismatch keeps nothing); so is a confirmed trailer.
        return CopyOutcome(size, got, "stream", content_md5 is not None or by_trailer or told, check.size_only)

    async def _hashed(self, info: ObjectInfo, pieces: AsyncGenerator[bytes, None] | None,
                      sums: ContentSums, progress: Progress) -> AsyncGenerator[bytes, None]:
        """The source's bytes (from `pieces`, else a new read pinned to the ETag), hashed as they pass; the
        last piece goes only once all of them match the source's checksum (DamagedReadError if not)."""
        sums.reset()  # a retried PUT reads (and hashes) from the start again
        if pieces is None:
            again, pieces = await self.src.read_stream(info.key, if_match=info.etag)
            if again.size != info.size:
                await pieces.aclose()
                raise SourceChangedError("source size changed since it was listed", key=info.key)
        held: bytes | None = None
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                progress.add(len(piece))
                if held is not None:
                    # Hashed in a thread (the hashes let go of the GIL) while the piece is being sent.
                    hashing = asyncio.ensure_future(_off_loop(sums.update, held, _THREAD_STREAM_HASH_MIN))
                    try:
                        yield held
                    finally:
                        await hashing
                held = piece
        if held is not None:
            await _off_loop(sums.update, held, _THREAD_STREAM_HASH_MIN)
        problem = sums.problem(info.size)
        if problem is not None:
            raise DamagedReadError(problem, key=info.key)
        if held is not None:
            yield held

    async def _check_crc(self, info: ObjectInfo, crc: int, *, vouched: bool) -> None:
        """Compare the CRC-64 of the bytes copied with the source's, or store it where the source had none
        and the bytes were `vouched` for by another checksum of the source's (else it could be the CRC of
        damaged bytes, stored as the truth)."""
        if info.crc64 is not None and crc != info.crc64:
            await self.discard(info.key)
            raise VerificationError("CRC64 of the copied bytes differs from the source's CRC64")
        if info.crc64 is None and vouched and info.size <= self.dst.capabilities.max_part_size:
            # The CRC is known only now; a metadata-replacing copy onto itself stores it so later CRC64
            # comparisons need no read. (Above the single-copy limit it stays in the job db.)
            await self.dst.copy_from(self.dst, info.key, info.key, self._meta(info.meta),
                                     storage_class=self.storage_class(info), crc64=crc)

    async def _copy_multipart(self, obj: ObjectInfo, progress: Progress) -> CopyOutcome:
        info = await self.src.head(obj.key)
        if obj.etag and info.etag != obj.etag:
            raise SourceChangedError("source changed since it was listed", key=obj.key)
        size, etag = info.size, info.etag
        caps = self.dst.capabilities
        part_size = choose_part_size(size, self.opts.part_size, caps.min_part_size, caps.max_part_size,
                                     caps.max_parts)
        done: dict[int, PartRow] = {}
        upload_id: str | None = None
        ck = await self.checkpoints.get(obj.key) if self.checkpoints else None
        if ck is not None:
            if ck.src_etag == etag and ck.size == size:
                try:
                    stored = {p.part_number: p for p in await self.dst.list_parts(obj.key, ck.upload_id)}
                except NotFoundError:
                    stored = None
                if stored is not None and self.checkpoints is not None:
                    upload_id, part_size = ck.upload_id, ck.part_size
                    for p in await self.checkpoints.parts(obj.key):
                        s = stored.get(p.part_number)
                        if s is not None and s.etag == p.etag and s.size == p.size:
                            done[p.part_number] = p
            if upload_id is None:
                await self._abandon(obj.key, ck.upload_id)
        if upload_id is None:
            upload_id = await self.dst.create_multipart(
                obj.key, self._meta(info.meta), storage_class=self.storage_class(info), crc64=info.crc64
            )
            if self.checkpoints:
                await self.checkpoints.save(UploadRow(obj.key, upload_id, etag, size, part_size))
        nparts = max(1, -(-size // part_size))
        progress.add(sum(p.size for p in done.values()))
        check = await self.source_check(info)
        sums = ContentSums(check)
        # The parts travel concurrently, but the source's checksum is over its bytes in order (along its own
        # part boundaries for a multipart ETag, whatever part size this copy uses): each part's bytes join
        # the sums in turn, in a thread, while the part uploads. Parts done before a restart are read again
        # for this alone.
        ordered = _InOrder(sums) if sums.hashing else None
        try:
            fresh = [row for row in await _together(*(
                self._rehash(obj.key, n, part_size, size, etag, ordered) if n in done
                else self._part(obj.key, upload_id, n, part_size, size, etag, progress, ordered)
                for n in range(1, nparts + 1) if n not in done or ordered is not None)) if row is not None]
        except PermanentError:
            await self._abandon(obj.key, upload_id)
            raise
        problem = sums.problem(size) if ordered is not None else None
        if problem is not None:
            # Damaged on the way in: never completed, so nothing of it lands; read again from the start.
            await self._abandon(obj.key, upload_id)
            raise DamagedReadError(problem, key=obj.key)
        rows = sorted([*done.values(), *fresh], key=lambda r: r.part_number)
        result = await self.dst.complete_multipart(
            obj.key, upload_id, [PartInfo(r.part_number, r.etag, r.size) for r in rows]
        )
        if self.checkpoints:
            await self.checkpoints.drop(obj.key)
        told = False
        if self._verify:
            md5s = [r.md5 for r in rows]
            got = result.etag
            told = bool(self._etag_md5 and got and all(md5s) and "-" in got)
            if told and got != composite_etag([m for m in md5s if m]):
                await self.discard(obj.key)
                raise VerificationError("destination multipart ETag does not match the parts sent")
            if self._crc and all(r.crc64 is not None for r in rows):
                whole = rows[0].crc64 or 0
                for r in rows[1:]:
                    whole = crc64_combine(whole, r.crc64 or 0, r.size)
                await self._check_crc(info, whole, vouched=not check.size_only)
        # Parts the store checked by CRC32C carry no MD5: the whole is then looked at by the caller.
        return CopyOutcome(size, result.etag, "multipart", told, check.size_only)

    async def _rehash(self, key: str, n: int, part_size: int, size: int, etag: str | None,
                      ordered: _InOrder | None) -> None:
        """Read part `n` (uploaded before a restart) again, only for the source's checksum."""
        offset = (n - 1) * part_size
        length = min(part_size, size - offset)
        async with self.budget.hold(length):
            data = await self.src.read(key, offset=offset, length=length, if_match=etag)
            if ordered is not None:
                await ordered.feed(offset, data)

    async def _part(self, key: str, upload_id: str, n: int, part_size: int, size: int,
                    etag: str | None, progress: Progress, ordered: _InOrder | None) -> PartRow:
        offset = (n - 1) * part_size
        length = min(part_size, size - offset)
        async with self.budget.hold(length):
            data = await self.src.read(key, offset=offset, length=length, if_match=etag)
            if len(data) != length:
                raise TransientError(f"short read of part {n}: {len(data)} of {length} bytes")
            feeding = asyncio.ensure_future(ordered.feed(offset, data)) if ordered is not None else None
            try:
                part, md5, crc = await self._send_part(key, upload_id, n, data)
            except BaseException:
                if feeding is not None:
                    feeding.cancel()
                    await asyncio.gather(feeding, return_exceptions=True)
                raise
            if feeding is not None:
                await feeding
            progress.add(length)
            del data
        if md5 is not None and self._verify and self._etag_md5 and _MD5_HEX.match(part.etag) and part.etag != md5:
            raise TransientError(f"part {n} ETag does not match the MD5 of the bytes sent")
        row = PartRow(n, part.etag, length, crc, md5)
        if self.checkpoints:
            await self.checkpoints.save_part(key, row)
        return row

    async def _send_part(self, key: str, upload_id: str, n: int,
                         data: bytes) -> tuple[PartInfo, str | None, int | None]:
        """Upload part `n`: its answer, and the MD5 and CRC-64 of its bytes where they were computed."""
        md5: str | None
        crc: int | None
        if self._part_crc32c:
            # The store checks the part against a CRC32C (about 20x cheaper than MD5 here); only if it
            # did not confirm that is the part hashed to compare with its ETag.
            crc32c = await _off_loop(fastcrc.crc32.iscsi, data, _THREAD_CRC32C_MIN)
            part = await self.dst.upload_part(key, upload_id, n, data, crc32c=crc32c)
            if part.crc32c_verified:
                md5, crc = None, (await _off_loop(_crc64, data) if self._crc else None)
            else:
                md5, crc = await _digest_async(data, self._crc)
        else:
            # Hashing (in a thread for large parts) overlaps the upload: the check needs both, not one
            # after the other.
            hashing = asyncio.ensure_future(_digest_async(data, self._crc))
            try:
                part = await self.dst.upload_part(key, upload_id, n, data)
            finally:
                md5, crc = await hashing
        return part, md5, crc

    async def _abandon(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.dst.abort_multipart(key, upload_id)
        if self.checkpoints:
            await self.checkpoints.drop(key)


class _InOrder:
    """Feeds pieces of one object to its ContentSums in byte order, whatever order they are read in."""

    def __init__(self, sums: ContentSums) -> None:
        self.sums = sums
        self._at = 0
        self._turn = asyncio.Condition()

    async def feed(self, offset: int, data: bytes) -> None:
        """Wait until every byte before `offset` is in, then add `data` (in a thread when it is big)."""
        async with self._turn:
            await self._turn.wait_for(lambda: self._at == offset)
        await _off_loop(self.sums.update, data)
        async with self._turn:
            self._at += len(data)
            self._turn.notify_all()


async def _together(*steps: Awaitable[_T]) -> list[_T]:
    """All of `steps` at once; when one fails, the others are cancelled (and awaited) before it is raised,
    so none is left running, holding memory or waiting for its turn."""
    jobs = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*jobs)
    except BaseException:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        raise


def _counted(pieces: AsyncGenerator[bytes, None], progress: Progress) -> AsyncGenerator[bytes, None]:
    """`pieces` untouched, reported to `progress` as they pass; moved in the kernel instead, they are reported
    by the move (in steps of a few MiB, from its thread, through the event loop)."""

    async def counting() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                progress.add(len(piece))
                yield piece

    outer = counting()
    pass_splice(outer, pieces, progress.add)
    return outer
