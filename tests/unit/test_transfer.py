"""The engine end to end over in-memory stores: copy, re-run, resume, source changes, verification."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import fastcrc
import pytest

from ferry.db.database import open_database
from ferry.db.deferred import DeferredRepo
from ferry.db.job_repo import JobRepo
from ferry.engine.checksums import crc64
from ferry.engine.compare import ConsistencyCheck, OverwriteMode
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.engine.verified_copy import READ_ATTEMPTS
from ferry.errors import FatalError, SourceChangedError, TransientError
from ferry.objects import ObjectInfo, ObjectMeta, PutResult
from ferry.service.transfers import Summary, run_migration
from ferry.storage.base import Capabilities, ListOrder
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import BackendWrapper

MiB = 1024 * 1024


class Counting(BackendWrapper):
    """Counts calls; optionally dies (FatalError) after a number of successful writes."""

    def __init__(self, inner: Any, die_after: int | None = None, order: ListOrder | None = None) -> None:
        super().__init__(inner)
        self.calls: dict[str, int] = {}
        self.die_after = die_after
        self.writes = 0
        self.order = order

    @property
    def capabilities(self) -> Capabilities:
        caps = self.inner.capabilities
        return dataclasses.replace(caps, list_order=self.order) if self.order else caps

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _write(self) -> None:
        if self.die_after is not None and self.writes >= self.die_after:
            raise FatalError("injected crash")
        self.writes += 1

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        items = [o async for o in self.inner.list(prefix, start_after)]
        if self.order is ListOrder.UNORDERED:
            random.Random(7).shuffle(items)
        for o in items:
            yield o

    async def head(self, key: str) -> ObjectInfo:
        self._count("head")
        return await self.inner.head(key)

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        self._count("read_object")
        return await self.inner.read_object(key, if_match=if_match)

    async def put(self, key: str, data: bytes, meta: ObjectMeta, **kw: Any) -> PutResult:
        self._write()
        self._count("put")
        return await self.inner.put(key, data, meta, **kw)

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> Any:
        self._write()
        self._count("upload_part")
        return await self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)


def _opts(**kw: Any) -> TransferOptions:
    copy = CopyOptions(multipart_threshold=kw.pop("threshold", 8 * MiB), part_size=5 * MiB,
                       consistency=kw.pop("consistency", ConsistencyCheck.SIZE_LAST_MODIFIED))
    return TransferOptions(copy=copy, concurrency=kw.pop("concurrency", 8), **kw)


async def _migrate(src: Any, dst: Any, tmp_path: Path, opts: TransferOptions | None = None) -> Summary:
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    return await run_migration(src, dst, repo, opts or _opts(), report_dir=tmp_path / "reports", spec={})


async def _fill(b: MemoryBackend, n: int, size: int = 100) -> dict[str, bytes]:
    bodies = {f"k/{i:05d}": os.urandom(size) for i in range(n)}
    for k, v in bodies.items():
        await b.put(k, v, ObjectMeta(content_type="text/x-test"))
    return bodies


async def test_copies_then_rerun_skips_without_reading(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst_inner = MemoryBackend(MemoryStore(), "dst")
    bodies = await _fill(src, 300)
    s = await _migrate(src, dst_inner, tmp_path)
    assert (s.total, s.success, s.skipped, s.failed, s.status) == (300, 300, 0, 0, "succeeded")
    for k, v in bodies.items():
        info, data = await dst_inner.read_object(k)
        assert data == v and info.meta is not None and info.meta.content_type == "text/x-test"
    counted_src, counted_dst = Counting(src), Counting(dst_inner)
    s2 = await _migrate(counted_src, counted_dst, tmp_path)
    assert (s2.total, s2.success, s2.skipped) == (300, 0, 300)
    assert counted_src.calls == {} and counted_dst.calls == {}  # zero GET/HEAD/PUT on a no-op re-run


async def test_same_store_uses_server_side_copy(tmp_path: Path) -> None:
    store = MemoryStore()
    src, dst = Counting(MemoryBackend(store, "a")), Counting(MemoryBackend(store, "b"))
    await _fill(src.inner, 20)
    s = await _migrate(src, dst, tmp_path)
    assert s.success == 20
    assert "read_object" not in src.calls and "put" not in dst.calls


async def test_unordered_source_listing_is_planned_correctly(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    keys = ["a", "a/", "a/b", "a b/c", "a-b", "b", "é", "z/", "+", "%", "#x", "?q"]
    for k in keys:
        await src.put(k, k.encode(), ObjectMeta())
    for k in keys[::2]:  # half already in place
        await dst.put(k, k.encode(), ObjectMeta())
    s = await _migrate(Counting(src, order=ListOrder.UNORDERED), Counting(dst, order=ListOrder.UNORDERED),
                       tmp_path)
    assert (s.total, s.success, s.skipped, s.failed) == (len(keys), len(keys) // 2, len(keys) // 2, 0)
    assert sorted([o.key async for o in dst.list()]) == sorted(keys)


async def test_crash_then_resume_copies_only_what_is_missing(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    bodies = await _fill(src, 500)
    crashing = Counting(dst, die_after=200)
    s = await _migrate(src, crashing, tmp_path)
    assert s.error == "injected crash" and s.status == "failed"
    present = {o.key async for o in dst.list()}
    assert 0 < len(present) < 500

    healthy = Counting(dst)
    s2 = await _migrate(src, healthy, tmp_path)
    assert s2.resumed and s2.job_id == s.job_id
    assert (s2.total, s2.failed, s2.status) == (500, 0, "succeeded")
    assert healthy.calls.get("put", 0) == 500 - len(present)
    for k, v in bodies.items():
        assert (await dst.read_object(k))[1] == v


async def test_multipart_upload_resumes_from_its_parts(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    body = os.urandom(26 * MiB)  # 6 parts of 5 MiB
    await src.put("big.bin", body, ObjectMeta(content_type="application/x-big"))
    opts = _opts(concurrency=1, threshold=5 * MiB, memory_limit=5 * MiB)  # one part at a time
    crashing = Counting(dst, die_after=2)
    s = await _migrate(src, crashing, tmp_path, opts)
    assert s.error == "injected crash"

    healthy = Counting(dst)
    s2 = await _migrate(src, healthy, tmp_path, opts)
    assert s2.resumed and s2.success == 1 and s2.failed == 0
    assert healthy.calls.get("upload_part") == 4  # parts 1-2 were kept, not uploaded again
    info, data = await dst.read_object("big.bin")
    assert data == body and info.meta is not None and info.meta.content_type == "application/x-big"


async def test_source_changed_mid_copy_is_recopied_with_new_content(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    await src.put("k", b"old", ObjectMeta())

    class Changing(Counting):
        async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
            if not self.calls.get("read_object"):
                await self.inner.put(key, b"new content", ObjectMeta())  # changes after listing
            return await super().read_object(key, if_match=if_match)

    s = await _migrate(Changing(src), dst, tmp_path)
    assert (s.success, s.failed) == (1, 0)
    assert (await dst.read_object("k"))[1] == b"new content"


async def test_bad_write_fails_verification_and_is_removed(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    await src.put("good", b"fine", ObjectMeta())
    await src.put("bad", b"will be corrupted", ObjectMeta())

    class Corrupting(Counting):
        async def put(self, key: str, data: bytes, meta: ObjectMeta, **kw: Any) -> PutResult:
            if key == "bad":
                data = data[:-1] + b"!"
            return await super().put(key, data, meta, **kw)

    s = await _migrate(src, Corrupting(dst), tmp_path)
    assert (s.success, s.failed, s.status) == (1, 1, "failed")
    assert {o.key async for o in dst.list()} == {"good"}
    assert s.report is not None and "bad" in Path(s.report).read_text()


@pytest.mark.parametrize("mode,expect_copied", [
    (OverwriteMode.NO_OVERWRITE, 0),
    (OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE, 0),
    (OverwriteMode.FULL_OVERWRITE, 3),
])
async def test_overwrite_modes_on_existing_objects(tmp_path: Path, mode: OverwriteMode, expect_copied: int) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    await _fill(src, 3)
    await _migrate(src, dst, tmp_path / "first")
    s = await _migrate(src, dst, tmp_path / "second", _opts(overwrite=mode))
    assert (s.success, s.skipped) == (expect_copied, 3 - expect_copied)


async def test_crc64_overwrite_mode_detects_same_size_change(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    await src.put("k", b"AAAA", ObjectMeta())
    opts = _opts(overwrite=OverwriteMode.CRC64_COMPARISON_OVERWRITE, consistency=ConsistencyCheck.CRC64)
    assert (await _migrate(src, dst, tmp_path / "1", opts)).success == 1
    # Same size, destination newer: only a CRC64 comparison can tell the content differs.
    await src.put("k", b"BBBB", ObjectMeta())
    await dst.put("k", b"CCCC", ObjectMeta(), crc64=0x1234)
    s = await _migrate(src, dst, tmp_path / "2", opts)
    assert s.success == 1
    assert (await dst.read_object("k"))[1] == b"BBBB"


async def test_crc64_of_a_multipart_copy_is_stored_on_the_destination(tmp_path: Path) -> None:
    from ferry.engine.checksums import crc64

    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    body = os.urandom(12 * MiB)
    await src.put("big.bin", body, ObjectMeta(content_type="application/x-big"))
    opts = _opts(threshold=5 * MiB, consistency=ConsistencyCheck.CRC64)
    s = await _migrate(src, dst, tmp_path, opts)
    assert s.success == 1
    head = await dst.head("big.bin")
    assert head.crc64 == crc64(body)
    assert head.meta is not None and head.meta.content_type == "application/x-big"


class PartChecksums(Counting):
    """A destination that offers part CRC32C checks: `verify` checks them as a store would; otherwise it
    ignores them and, with `corrupt`, damages every part it stores."""

    def __init__(self, inner: Any, *, verify: bool, corrupt: bool = False) -> None:
        super().__init__(inner)
        self.verify = verify
        self.corrupt = corrupt
        self.sent: list[int | None] = []

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self.inner.capabilities, part_crc32c=True)

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> Any:
        self.sent.append(crc32c)
        if self.verify:
            if crc32c != fastcrc.crc32.iscsi(data):
                raise TransientError("BadDigest")
            part = await super().upload_part(key, upload_id, part_number, data)
            return dataclasses.replace(part, crc32c_verified=True)
        if self.corrupt:
            data = b"!" + data[1:]
        return await super().upload_part(key, upload_id, part_number, data)


async def test_parts_the_store_verified_by_crc32c_copy_intact(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    body = os.urandom(12 * MiB)  # parts of 5, 5 and 2 MiB
    await src.put("big", body, ObjectMeta())
    checked = PartChecksums(dst, verify=True)
    s = await _migrate(src, checked, tmp_path, _opts(threshold=5 * MiB, consistency=ConsistencyCheck.CRC64))
    assert (s.success, s.failed) == (1, 0)
    assert checked.sent == [fastcrc.crc32.iscsi(body[i:i + 5 * MiB]) for i in range(0, len(body), 5 * MiB)]
    info, data = await dst.read_object("big")
    assert data == body and info.crc64 == crc64(body)  # the whole-object CRC-64 still comes out right


async def test_a_store_that_does_not_confirm_the_crc32c_is_checked_by_md5(tmp_path: Path) -> None:
    src = MemoryBackend(MemoryStore(), "src")
    dst = MemoryBackend(MemoryStore(), "dst")
    await src.put("big", os.urandom(12 * MiB), ObjectMeta())
    silent = PartChecksums(dst, verify=False, corrupt=True)
    s = await _migrate(src, silent, tmp_path, _opts(threshold=5 * MiB))
    assert (s.success, s.failed) == (0, 1)
    assert [o.key async for o in dst.list()] == []


# -- objects streamed into one PUT ------------------------------------------------------------------------------
def _stream_opts(**kw: Any) -> TransferOptions:
    copy = CopyOptions(stream_threshold=1 * MiB, multipart_threshold=64 * MiB,
                       consistency=kw.pop("consistency", ConsistencyCheck.SIZE_LAST_MODIFIED))
    return TransferOptions(copy=copy, concurrency=kw.pop("concurrency", 8), **kw)


class Streams(Counting):
    """Records each streamed put's Content-MD5 and trailer request and counts streamed reads; `damage` flips
    a byte of every piece written."""

    def __init__(self, inner: Any, *, damage: bool = False) -> None:
        super().__init__(inner)
        self.damage = damage
        self.md5s: list[str | None] = []
        self.trailers: list[bool] = []

    async def read_stream(self, key: str, *, if_match: str | None = None) -> Any:
        self._count("read_stream")
        return await self.inner.read_stream(key, if_match=if_match)

    async def put_stream(self, key: str, size: int, body: Any, meta: ObjectMeta, **kw: Any) -> PutResult:
        self._count("put_stream")
        self.md5s.append(kw.get("content_md5"))
        self.trailers.append(kw.get("trailing_crc32c", False))

        async def damaged() -> AsyncGenerator[bytes, None]:
            async for chunk in body():
                yield b"!" + chunk[1:]

        return await self.inner.put_stream(key, size, damaged if self.damage else body, meta, **kw)


async def test_mid_size_objects_stream_through_a_few_chunks_of_memory(tmp_path: Path) -> None:
    src, dst = Streams(MemoryBackend(MemoryStore(), "src")), Streams(MemoryBackend(MemoryStore(), "dst"))
    bodies = {f"s{i}": os.urandom(3 * MiB + 100 * i) for i in range(6)}
    for k, v in bodies.items():
        await src.inner.put(k, v, ObjectMeta(content_type="text/x-streamed"))
    await src.inner.put("small", b"whole", ObjectMeta())
    # Budget for one stream at a time: six streams must take turns without deadlocking.
    async with asyncio.timeout(60):
        s = await _migrate(src, dst, tmp_path, _stream_opts(memory_limit=8 * MiB, concurrency=6))
    assert (s.success, s.failed) == (7, 0)
    assert dst.calls["put_stream"] == 6 and dst.calls["put"] == 1
    assert src.calls["read_stream"] == 6 and "head" not in src.calls  # one GET per object, no HEAD
    # The source's ETag is its MD5, so the destination checked the bytes against it.
    assert sorted(m or "" for m in dst.md5s) == sorted(hashlib.md5(v).hexdigest() for v in bodies.values())
    for k, v in bodies.items():
        info, data = await dst.read_object(k)
        assert data == v and info.meta is not None and info.meta.content_type == "text/x-streamed"


class Encrypted(Counting):
    """Its ETags look like MD5s but are not (a store that encrypts without saying so)."""

    async def read_stream(self, key: str, *, if_match: str | None = None) -> Any:
        info, pieces = await self.inner.read_stream(key, if_match=if_match)
        return dataclasses.replace(info, md5="0" * 32), pieces


async def test_a_source_md5_that_never_matches_fails_the_object_and_nothing_lands(tmp_path: Path) -> None:
    """An ETag that looks like the MD5 but is not (a store that encrypts without saying so) cannot be told from
    bytes damaged on every read: the object is read again a few times, then fails with the reason."""
    src, dst = MemoryBackend(MemoryStore(), "src"), Streams(MemoryBackend(MemoryStore(), "dst"))
    body = os.urandom(2 * MiB)
    await src.put("k", body, ObjectMeta())
    s = await _migrate(Encrypted(src), dst, tmp_path, _stream_opts())
    assert (s.success, s.failed) == (0, 1)
    assert dst.md5s == ["0" * 32] * READ_ATTEMPTS  # each read sent with the source's MD5 as Content-MD5
    assert [o.key async for o in dst.inner.list()] == []
    assert s.report is not None
    reason = json.loads(Path(s.report).read_text())["reason"]
    assert "source's MD5" in reason and f"each of {READ_ATTEMPTS} reads" in reason


class Untrusted(Counting):
    """Its ETags are composite (uploaded in parts), so there is no MD5 to trust."""

    async def read_stream(self, key: str, *, if_match: str | None = None) -> Any:
        info, pieces = await self.inner.read_stream(key, if_match=if_match)
        return dataclasses.replace(info, md5=None), pieces


@pytest.mark.parametrize("trusted", [True, False])
async def test_a_damaged_stream_fails_verification_and_is_removed(tmp_path: Path, trusted: bool) -> None:
    """Against the source's MD5 under the default check; with no MD5 to trust, by our own under CRC64."""
    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    await src.put("k", os.urandom(2 * MiB), ObjectMeta())
    opts = _stream_opts() if trusted else _stream_opts(consistency=ConsistencyCheck.CRC64)
    s = await _migrate(src if trusted else Untrusted(src), Streams(dst, damage=True), tmp_path, opts)
    assert (s.success, s.failed) == (0, 1)
    assert [o.key async for o in dst.list()] == []


@pytest.mark.parametrize("check", list(ConsistencyCheck))
async def test_a_pass_over_a_streamed_body_is_paid_only_under_crc64(tmp_path: Path, check: ConsistencyCheck) -> None:
    """With no MD5 to trust, checking the content costs a pass over all of it, the store's (a trailing
    CRC32C, asked for only where the store can check it) or ours: paid under CRC64, not under the default
    size_last_modified (the size is checked) nor no_check."""

    class CanTrail(Streams):
        @property
        def capabilities(self) -> Capabilities:
            return dataclasses.replace(self.inner.capabilities, trailing_crc32c=True)

        async def put_stream(self, key: str, size: int, body: Any, meta: ObjectMeta, **kw: Any) -> PutResult:
            result = await super().put_stream(key, size, body, meta, **kw)
            return dataclasses.replace(result, crc32c_verified=kw.get("trailing_crc32c", False))

    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    body = os.urandom(2 * MiB)
    await src.put("k", body, ObjectMeta())
    plain, trailing = Streams(dst), CanTrail(MemoryBackend(MemoryStore(), "dst2"))
    for target in (plain, trailing):
        s = await _migrate(Untrusted(src), target, tmp_path / target.inner.name, _stream_opts(consistency=check))
        assert (s.success, s.failed) == (1, 0)
        assert (await target.inner.read_object("k"))[1] == body
    assert trailing.trailers == [check is ConsistencyCheck.CRC64] and plain.trailers == [False]


async def test_crc64_of_a_streamed_copy_is_stored_on_the_destination(tmp_path: Path) -> None:
    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    body = os.urandom(3 * MiB + 7)
    await src.put("k", body, ObjectMeta(content_type="application/x-k"))
    s = await _migrate(src, dst, tmp_path, _stream_opts(consistency=ConsistencyCheck.CRC64))
    assert (s.success, s.failed) == (1, 0)
    info, data = await dst.read_object("k")
    assert data == body and info.crc64 == crc64(body)
    assert info.meta is not None and info.meta.content_type == "application/x-k"


async def test_source_changed_mid_stream_is_recopied_with_new_content(tmp_path: Path) -> None:
    class ChangingMidStream(Counting):
        """The object is replaced after the first piece of the first read."""

        async def read_stream(self, key: str, *, if_match: str | None = None) -> Any:
            info, pieces = await self.inner.read_stream(key, if_match=if_match)
            if self.calls.get("changed"):
                return info, pieces

            async def then_changed() -> AsyncGenerator[bytes, None]:
                yield await anext(pieces)
                self._count("changed")
                await self.inner.put(key, new, ObjectMeta())
                raise SourceChangedError("the object changed mid-read", key=key)

            return info, then_changed()

    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    old, new = os.urandom(2 * MiB), os.urandom(2 * MiB + 5)
    await src.put("k", old, ObjectMeta())
    s = await _migrate(ChangingMidStream(src), dst, tmp_path, _stream_opts())
    assert (s.success, s.failed) == (1, 0)
    assert (await dst.read_object("k"))[1] == new


async def test_a_store_that_claims_a_trailing_crc32c_must_confirm_it(tmp_path: Path) -> None:
    """Under CRC64 with the source's ETag no MD5, a destination whose profile says it checks a trailing
    CRC32C is trusted to; if its answer does not confirm the check, the object is removed and fails."""

    class Claims(Streams):
        @property
        def capabilities(self) -> Capabilities:
            return dataclasses.replace(self.inner.capabilities, trailing_crc32c=True)

    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    await src.put("k", os.urandom(2 * MiB), ObjectMeta())
    claims = Claims(dst)
    s = await _migrate(Untrusted(src), claims, tmp_path, _stream_opts(consistency=ConsistencyCheck.CRC64))
    assert (s.success, s.failed) == (0, 1) and claims.md5s == [None] and claims.trailers == [True]
    assert [o.key async for o in dst.list()] == []
    assert s.report is not None and "did not confirm the CRC32C" in Path(s.report).read_text()


async def test_a_fresh_job_moves_data_while_its_database_opens(tmp_path: Path) -> None:
    """With no database yet, the job starts at once and its row and results land once the database is
    open; a second run over the same database resumes nothing and skips everything."""
    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    bodies = await _fill(src, 30)
    url = f"sqlite:///{tmp_path / 'state.db'}"

    async def run(fresh: bool) -> Summary:
        repo = cast(JobRepo, DeferredRepo(url))
        return await run_migration(src, dst, repo, _opts(), report_dir=tmp_path / "reports", spec={},
                                   fresh=fresh)

    s = await run(fresh=True)
    assert (s.status, s.success, s.failed, s.resumed) == ("succeeded", 30, 0, False)
    repo = JobRepo(open_database(url))
    job = repo.get(s.job_id)
    assert job is not None and job.status == "succeeded" and repo.tally(s.job_id).success == 30
    for k, v in bodies.items():
        assert (await dst.read_object(k))[1] == v
    again = await run(fresh=False)
    assert (again.success, again.skipped, again.resumed) == (0, 30, False)


async def test_a_job_database_that_cannot_open_fails_the_run(tmp_path: Path) -> None:
    src, dst = MemoryBackend(MemoryStore(), "src"), MemoryBackend(MemoryStore(), "dst")
    await _fill(src, 3)
    repo = cast(JobRepo, DeferredRepo("nosuchdialect://nowhere"))
    with pytest.raises(Exception, match="nosuchdialect"):
        await asyncio.wait_for(run_migration(src, dst, repo, _opts(), report_dir=tmp_path, spec={}, fresh=True), 30)


def test_job_lock_refuses_a_second_holder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from ferry.service.transfers import job_lock

    with job_lock(tmp_path, "f" * 64):
        # flock belongs to the open file: a second open, even in this process, is another holder.
        with pytest.raises(FatalError, match=rf"job already running \(pid {os.getpid()}\)"), \
                job_lock(tmp_path, "f" * 64):
            pass
        with job_lock(tmp_path, "e" * 64):
            pass  # another job is not held up
    assert list((tmp_path / "locks").iterdir()) == []
    with job_lock(tmp_path, "f" * 64):
        pass


class _Generated(MemoryBackend):
    """`n` 0-byte objects made up as they are listed (nothing stored): a big bucket that costs no memory."""

    def __init__(self, n: int, mtime: float) -> None:
        super().__init__(MemoryStore())
        self.n, self.mtime = n, mtime

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        empty = hashlib.md5(b"").hexdigest()
        for i in range(self.n):
            yield ObjectInfo(f"k/{i:07d}", 0, self.mtime, empty)


class _SlowWrites:
    """A job database that writes 10,000 rows a second: far slower than a run skips keys."""

    def __init__(self, repo: JobRepo) -> None:
        self.repo = repo
        self.largest = 0

    def record(self, job_id: str, results: Any, watermark: str | None = None) -> None:
        self.largest = max(self.largest, len(results))
        time.sleep(0.01 + len(results) / 10_000)
        self.repo.record(job_id, results, watermark)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.repo, name)


async def test_results_waiting_for_a_slow_database_stay_bounded(tmp_path: Path) -> None:
    # An in-step rerun skips keys much faster than a database writes their rows; the results not yet written
    # are held in memory, so their number must not grow with the bucket (it once held most of it: 0.3 KB a
    # key, 300 MB at 1M keys). What one write carries is what was held.
    n = 40_000
    repo = _SlowWrites(JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}")))
    src, dst = _Generated(n, 1_700_000_000.0), _Generated(n, 1_800_000_000.0)
    summary = await run_migration(src, dst, cast("JobRepo", repo), _opts(concurrency=16),
                                  report_dir=tmp_path / "reports", spec={})
    assert (summary.skipped, summary.success, summary.failed) == (n, 0, 0)
    assert 0 < repo.largest <= 4 * 2000 + 16 * 3
