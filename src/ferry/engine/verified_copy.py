"""Copy one object and make sure it arrived: the one routine of migration tasks, task groups, sync events and sync
reconciliation, so that one consistency_check verifies the same way whoever copies.

The Copier checks what a write's own answer can prove (an ETag equal to the MD5 of the bytes sent, a Content-MD5
or CRC32C the store checked, a multipart ETag recomputed from the parts) and says so in CopyOutcome.verified. Only
where that answer proves nothing (a server-side copy that got a new ETag, a store whose ETag is no MD5, a stream
with no MD5 to send) is the written object looked at, with one HEAD, and judged by compare.check_consistency; what
fails is removed. So the small-object path of an S3 store costs one GET and one PUT, and nothing more.

A source that changes during the copy (its ETag pin fails) is looked at again and copied anew, a few times at most.
Writes of keys that are a file and a directory of each other are held apart (engine.pathlocks).
"""

from __future__ import annotations

from typing import Final

from ferry.engine.budget import MemoryBudget
from ferry.engine.compare import ConsistencyCheck, check_consistency
from ferry.engine.copier import UNWATCHED, Copier, CopyOptions, CopyOutcome, Progress, UploadCheckpoints
from ferry.engine.pathlocks import PathLocks
from ferry.errors import NotFoundError, SourceChangedError, VerificationError
from ferry.objects import ObjectInfo
from ferry.storage.base import Backend

_SOURCE_CHANGE_ATTEMPTS: Final = 3


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
        self._paths = PathLocks()

    async def copy(self, obj: ObjectInfo, progress: Progress = UNWATCHED) -> CopyOutcome:
        """Copy `obj` (as listed, or as a HEAD saw it), reporting moved bytes to `progress`, and verify it.

        Raises a FerryError when it cannot: NotFoundError when the source is gone, SourceChangedError when it
        kept changing, VerificationError when what was written does not match (it is removed by then),
        FatalError when the run as a whole cannot go on."""
        for _ in range(_SOURCE_CHANGE_ATTEMPTS):
            try:
                async with self._paths.hold(obj.key):
                    out = await self.copier.copy(obj, progress)
                    if self._check and not out.verified:
                        await self._look(obj)
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
