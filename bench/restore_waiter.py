"""The cost of `enable_restore` bookkeeping: a job of N archived in-memory objects (each restore done after one
look) against the same job of N plain objects, wall and CPU seconds, in process.

    .venv/bin/python bench/restore_waiter.py --objects 20000

Every archived object costs a HEAD, a restore request, a second HEAD and its copy, against the copy alone; the
waiter keeps its looks in a heap, so the cost per object must stay flat as N grows (compare 5,000 and 50,000).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ferry.db.jobdb import open_job_repo
from ferry.engine.pipeline import TransferOptions
from ferry.engine.restores import RestorePolicy
from ferry.errors import ArchivedObjectError
from ferry.objects import ObjectInfo, ObjectMeta, Restore
from ferry.service.transfers import run_migration
from ferry.storage.base import Capabilities
from ferry.storage.memory import MemoryBackend
from ferry.storage.wrappers import BackendWrapper


class Archived(BackendWrapper):
    """Every object is ARCHIVE, refused on read until its restore was asked for (then done at once)."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.asked: set[str] = set()

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self.inner.capabilities, restore=True)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for o in self.inner.list(prefix, start_after):
            yield dataclasses.replace(o, storage_class="ARCHIVE")

    async def head(self, key: str) -> ObjectInfo:
        info = await self.inner.head(key)
        return dataclasses.replace(info, storage_class="ARCHIVE",
                                   restore=Restore.DONE if key in self.asked else None)

    async def read_object(self, key: str, **kw: object) -> tuple[ObjectInfo, bytes]:
        if key not in self.asked:
            raise ArchivedObjectError("archived", key=key)
        return await self.inner.read_object(key, **kw)  # type: ignore[arg-type]

    async def restore(self, key: str, days: int) -> None:
        self.asked.add(key)


async def _run(n: int, archived: bool) -> tuple[float, float]:
    src, dst = MemoryBackend(bucket="src"), MemoryBackend(bucket="dst")
    for i in range(n):
        await src.put(f"k/{i:08d}", b"x" * 64, ObjectMeta())
    opts = TransferOptions(concurrency=64, restore=RestorePolicy(poll_seconds=0.01) if archived else None)
    with tempfile.TemporaryDirectory() as tmp:
        repo = open_job_repo(f"sqlite:///{Path(tmp) / 'state.db'}")
        wall, cpu = time.perf_counter(), time.process_time()
        summary = await run_migration(Archived(src) if archived else src, dst, repo, opts,
                                      report_dir=Path(tmp), spec={})
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert summary.success == n, summary
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[5000, 50000])
    args = parser.parse_args()
    for n in args.objects:
        plain = asyncio.run(_run(n, False))
        cold = asyncio.run(_run(n, True))
        print(f"{n:>7} objects: plain {plain[0]:6.2f} s wall {plain[1]:6.2f} s CPU | archived {cold[0]:6.2f} s "
              f"wall {cold[1]:6.2f} s CPU | {1e6 * (cold[1] - plain[1]) / n:6.1f} us CPU more per object")


if __name__ == "__main__":
    main()
