"""Copy one object and make sure it arrived: the one routine of migration tasks, task groups, sync events and sync
reconciliation, so that one consistency_check verifies the same way whoever copies.

The Copier checks what a write's own answer can prove (an ETag equal to the MD5 of the bytes sent, a Content-MD5
or CRC32C the store checked, a multipart ETag recomputed from the parts) and says so in CopyOutcome.verified. Only
where that answer proves nothing (a server-side copy that got a new ETag, a store whose ETag is no MD5, a stream
with no MD5 to send) is the written object looked at, with one HEAD, and judged by compare.check_consistency; what
fails is removed. So the small-object path of an S3 store costs one GET and one PUT, and nothing more.

What was READ is checked against a checksum the source itself gave (engine.content_check) on every path but a
server-side copy, where the bytes never leave the store and the store's own answer (the same ETag, or the HEAD
comparison) is what there is. Bytes that do not match are damaged on the way: nothing of them is kept, and the
object is read again from its first byte, a few times at most before it fails with the reason. Where the source
gave no checksum, the copy is checked by its size only and says so (CopyOutcome.size_only); with
`CopyOptions.reread_size_only` such an object is then read again from the source and from the destination,
and the two compared.

A source that changes during the copy (its ETag pin fails) is looked at again and copied anew, a few times at most.
Writes of keys that are a file and a directory of each other are held apart (engine.pathlocks).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Final

from ferry.engine.budget import MemoryBudget
from ferry.engine.compare import ConsistencyCheck, check_consistency
from ferry.engine.copier import UNWATCHED, Copier, CopyOptions, CopyOutcome, Progress, UploadCheckpoints
from ferry.engine.pathlocks import PathLocks
from ferry.errors import DamagedReadError, NotFoundError, SourceChangedError, VerificationError
from ferry.objects import ObjectInfo
from ferry.storage.base import Backend

_SOURCE_CHANGE_ATTEMPTS: Final = 3
# Reads of an object whose bytes came damaged before it fails. Damage that random heals on the next read;
# one that stays (a cache serving bad bytes, an ETag that is no MD5 after all) is reported, never copied.
READ_ATTEMPTS: Final = 4
_REREAD_PIECE: Final = 8 * 1024 * 1024


class VerifiedCopier:
    """Copies single objects from `src` to `dst` and verifies them by `opts.consistency`; one per task."""

    def __init__(
        self, src: Backend, dst: Backend, opts: CopyOptions, budget: MemoryBudget,
        checkpoints: UploadCheckpoints | None = None,
    ) -> None:
        """Raises UsageError when `opts.storage_class` names a class the destination does not have."""
        self.src = src
        self.dst = dst
        self.copier = Copier(src, dst, opts, budget, checkpoints)
        self._check = opts.consistency is not ConsistencyCheck.NO_CHECK
        self._consistency = opts.consistency
        self._reread = opts.reread_size_only and self._check
        self._budget = budget
        self._paths = PathLocks()

    async def copy(self, obj: ObjectInfo, progress: Progress = UNWATCHED) -> CopyOutcome:
        """Copy `obj` (as listed, or as a HEAD saw it), reporting moved bytes to `progress`, and verify it.

        Raises a FerryError when it cannot: NotFoundError when the source is gone, SourceChangedError when it
        kept changing, VerificationError when what was written does not match (it is removed by then),
        FatalError when the run as a whole cannot go on; VerificationError too when every read of the source
        came damaged (nothing of them is kept)."""
        damaged: DamagedReadError | None = None
        for _ in range(READ_ATTEMPTS):
            try:
                return await self._copy(obj, progress)
            except DamagedReadError as exc:
                progress.restart()
                damaged = exc
        assert damaged is not None
        raise VerificationError(f"{damaged.message}, on each of {READ_ATTEMPTS} reads; nothing of them was kept",
                                key=obj.key)

    async def _copy(self, obj: ObjectInfo, progress: Progress) -> CopyOutcome:
        for _ in range(_SOURCE_CHANGE_ATTEMPTS):
            try:
                async with self._paths.hold(obj.key):
                    out = await self.copier.copy(obj, progress)
                    if self._check and not out.verified:
                        await self._look(obj)
                    if out.size_only and self._reread:
                        await self._compare_reads(obj)
                return out
            except SourceChangedError:
                progress.restart()
                try:
                    obj = await self.src.head(obj.key)
                except NotFoundError:
                    raise NotFoundError("the source object was deleted during the copy", key=obj.key) from None
        raise SourceChangedError("the source kept changing during the copy", key=obj.key)

    async def _look(self, obj: ObjectInfo) -> None:
        """HEAD what was written and judge it against `obj`; remove it when it does not match."""
        try:
            written = await self.dst.head(obj.key)
        except NotFoundError:
            raise VerificationError("the destination does not have the object just written", key=obj.key) from None
        problem = check_consistency(self._consistency, obj, written)
        if problem is not None:
            await self.copier.discard(obj.key)
            raise VerificationError(problem, key=obj.key)

    async def _compare_reads(self, obj: ObjectInfo) -> None:
        """Read `obj` again from the source and what was written from the destination, and compare their
        MD5s; on a difference the written object is removed and the copy reads again (DamagedReadError)."""
        src, dst = await asyncio.gather(self._md5_of(self.src, obj.key, obj.size, obj.etag),
                                        self._md5_of(self.dst, obj.key, obj.size, None))
        if src != dst:
            await self.copier.discard(obj.key)
            raise DamagedReadError("the object read again from the source differs from what was written "
                                   "(the source gives no checksum to check a read by)", key=obj.key)

    async def _md5_of(self, store: Backend, key: str, size: int, etag: str | None) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        for offset in range(0, size, _REREAD_PIECE):
            length = min(_REREAD_PIECE, size - offset)
            async with self._budget.hold(length):
                data = await store.read(key, offset=offset, length=length, if_match=etag)
                if len(data) != length:
                    raise DamagedReadError(f"a read again of {store.name} stopped short", key=key)
                if length >= 1024 * 1024:
                    await asyncio.to_thread(digest.update, data)  # MD5 lets go of the GIL
                else:
                    digest.update(data)
        return digest.hexdigest()
