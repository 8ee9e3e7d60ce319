"""Progress counts bytes as they move (parts, streamed pieces), never twice, and the bar is honest while listing."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.engine.compare import ConsistencyCheck
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.engine.progress import Counters, TerminalProgress
from ferry.errors import TransientError
from ferry.objects import ObjectMeta, PartInfo, PutResult
from ferry.service.transfers import Summary, run_migration
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import BackendWrapper, RetryingBackend

MiB = 1024 * 1024


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)


def _opts(**copy: Any) -> TransferOptions:
    return TransferOptions(copy=CopyOptions(consistency=ConsistencyCheck.SIZE_LAST_MODIFIED, server_side=False,
                                            **copy), concurrency=4)


async def _migrate(src: Any, dst: Any, tmp_path: Path, opts: TransferOptions, counters: Counters) -> Summary:
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    return await run_migration(src, dst, repo, opts, report_dir=tmp_path / "reports", spec={}, counters=counters)


class Gate:
    """Holds a write until released, and says when one is being held."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self) -> None:
        self.reached.set()
        await self.release.wait()


async def _while_held(gate: Gate, run: asyncio.Task[Summary], look: Callable[[], int]) -> tuple[int, Summary]:
    """What `look()` says while the gate holds a write; then the run's outcome once released."""
    async with asyncio.timeout(30):
        await asyncio.wait({run, asyncio.ensure_future(gate.reached.wait())}, return_when=asyncio.FIRST_COMPLETED)
        assert gate.reached.is_set(), run.result()
        seen = look()
        gate.release.set()
        return seen, await run


class HeldLastPart(BackendWrapper):
    def __init__(self, inner: Any, last: int, gate: Gate) -> None:
        super().__init__(inner)
        self.last, self.gate = last, gate

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *,
                          crc32c: int | None = None) -> PartInfo:
        if part_number == self.last:
            await self.gate.hold()
        return await self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)


async def test_a_multipart_copy_counts_each_part_as_it_completes(tmp_path: Path) -> None:
    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    body = os.urandom(12 * MiB)  # parts of 5, 5 and 2 MiB
    await src.put("big", body, ObjectMeta())
    gate, counters = Gate(), Counters()
    # One part's worth of memory: the parts go one after another, so two are done when the third is held.
    opts = _opts(multipart_threshold=5 * MiB, part_size=5 * MiB)
    opts = TransferOptions(copy=opts.copy, concurrency=1, memory_limit=5 * MiB)
    run = asyncio.create_task(_migrate(src, HeldLastPart(dst, 3, gate), tmp_path, opts, counters))
    seen, summary = await _while_held(gate, run, lambda: counters.bytes_copied)
    assert seen == 10 * MiB, "the two finished parts were not counted before the object completed"
    assert (summary.success, summary.failed) == (1, 0)
    assert counters.bytes_copied == len(body) and (await dst.read_object("big"))[1] == body


class HeldMidStream(BackendWrapper):
    """Takes `before` bytes of a streamed body, then holds until released; `fail` then ends the write."""

    def __init__(self, inner: Any, before: int, gate: Gate | None = None, fail: int = 0) -> None:
        super().__init__(inner)
        self.before, self.gate, self.fail = before, gate, fail

    async def put_stream(self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]],
                         meta: ObjectMeta, **kw: Any) -> PutResult:
        taken: list[bytes] = []
        pieces = body()
        async for piece in pieces:
            taken.append(piece)
            if sum(map(len, taken)) >= self.before:
                break
        if self.gate is not None:
            await self.gate.hold()
        if self.fail:
            self.fail -= 1
            await pieces.aclose()
            raise TransientError("the connection was reset mid-body", key=key)

        async def rest() -> AsyncGenerator[bytes, None]:
            for piece in taken:
                yield piece
            async for piece in pieces:
                yield piece

        return await self.inner.put_stream(key, size, rest, meta, **kw)


async def test_a_streamed_copy_counts_pieces_as_they_pass(tmp_path: Path) -> None:
    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    body = os.urandom(6 * MiB)
    await src.put("mid", body, ObjectMeta())
    gate, counters = Gate(), Counters()
    opts = _opts(stream_threshold=1 * MiB, multipart_threshold=64 * MiB)
    run = asyncio.create_task(_migrate(src, HeldMidStream(dst, 2 * MiB, gate), tmp_path, opts, counters))
    seen, summary = await _while_held(gate, run, lambda: counters.bytes_copied)
    assert 0 < seen < len(body), "nothing of the streamed object was counted before it completed"
    assert (summary.success, summary.failed) == (1, 0)
    assert counters.bytes_copied == len(body) and (await dst.read_object("mid"))[1] == body


async def test_bytes_of_failed_or_retried_attempts_are_not_counted_twice(tmp_path: Path) -> None:
    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    bodies = {"retried": os.urandom(4 * MiB), "doomed": os.urandom(3 * MiB), "small": b"x" * 1000}
    for k, v in bodies.items():
        await src.put(k, v, ObjectMeta())

    class Flaky(BackendWrapper):
        """`retried` breaks once mid-body, `doomed` every time."""

        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            self.once = HeldMidStream(inner, MiB, fail=1)
            self.always = HeldMidStream(inner, MiB, fail=1_000)

        async def put_stream(self, key: str, *args: Any, **kw: Any) -> PutResult:
            return await (self.once if key == "retried" else self.always).put_stream(key, *args, **kw)

    counters = Counters()
    opts = _opts(stream_threshold=1 * MiB, multipart_threshold=64 * MiB)
    flaky = RetryingBackend(Flaky(dst), attempts=3, sleep=_no_wait)
    summary = await _migrate(src, flaky, tmp_path, opts, counters)
    assert (summary.success, summary.failed) == (2, 1)
    # The successful objects once each; nothing of the failed one, though a MiB of it went three times.
    assert counters.bytes_copied == len(bodies["retried"]) + len(bodies["small"])
    assert summary.bytes == counters.bytes_copied


def _bar_line(counters: Counters) -> str:
    out = io.StringIO()
    progress = TerminalProgress(counters, out)
    progress.console.width = 100
    progress._refresh()
    progress.console.print(progress.bar.get_renderable())
    return out.getvalue().splitlines()[0]


def test_the_bar_is_not_drawn_full_while_the_total_is_unknown() -> None:
    counters = Counters(listed=3, listed_bytes=300 * MiB, bytes_copied=30 * MiB)
    listing = _bar_line(counters)
    assert "listing" in listing and "0/3+ objects" in listing
    assert "━" not in listing, f"a bar with no known total was drawn: {listing!r}"
    counters.listing_done, counters.bytes_copied = True, 150 * MiB
    halfway = _bar_line(counters)
    assert "50%" in halfway and 15 <= halfway.count("━") <= 25, halfway


def test_the_bar_names_failed_objects_and_those_waiting_for_a_restore() -> None:
    out = io.StringIO()
    progress = TerminalProgress(Counters(listed=9, success=4, failed=1, restoring=3, listing_done=True), out)
    progress.console.width = 200
    progress._refresh()
    progress.console.print(progress.bar.get_renderable())
    assert "5/9 objects (1 failed, 3 waiting for a restore)" in out.getvalue()
