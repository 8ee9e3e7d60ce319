"""End-to-end verification over in-memory stores: bytes damaged on the way from the source, on every copy path
and for every kind of checksum a source gives, never land; the object is read again, or fails with the reason."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import zlib
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import fastcrc
import pytest

from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.engine.budget import MemoryBudget
from ferry.engine.checksums import crc64
from ferry.engine.compare import ConsistencyCheck
from ferry.engine.content_check import ContentSums, SourceChecksum, source_checksum
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.engine.verified_copy import READ_ATTEMPTS, VerifiedCopier
from ferry.errors import VerificationError
from ferry.objects import ObjectInfo, ObjectMeta, composite_etag
from ferry.service.transfers import Summary, run_migration
from ferry.storage.base import Backend
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import BackendWrapper, RetryingBackend

KiB = 1024
MiB = 1024 * KiB
KINDS = ["md5", "multipart", "crc64", "sha256", "crc32c", "crc32"]
# Sizes that take each path of the copier under _opts(): read whole, streamed into one PUT, multipart in parts
# of 1.5 MiB (the sources' multipart objects are in parts of 1 MiB: another layout).
PATHS = {"small": 300 * KiB + 3, "stream": 2 * MiB + 5, "multipart": 5 * MiB + 7}
SOURCE_PART = 1 * MiB


def _opts(check: ConsistencyCheck = ConsistencyCheck.SIZE_LAST_MODIFIED, **kw: Any) -> TransferOptions:
    copy = CopyOptions(consistency=check, stream_threshold=1 * MiB, multipart_threshold=4 * MiB,
                       part_size=3 * MiB // 2, server_side=False, **kw)
    return TransferOptions(copy=copy, concurrency=4)


class Vouching(BackendWrapper):
    """A source that gives one kind of checksum of each object's content (computed here from what it holds),
    and no MD5 unless that is the kind: as OSS gives a CRC64, S3 an x-amz-checksum-*, a multipart upload its
    composite ETag. Kind "size" gives none."""

    def __init__(self, inner: MemoryBackend, kind: str) -> None:
        super().__init__(inner)
        self.kind = kind
        self.store = inner

    def _vouch(self, info: ObjectInfo) -> ObjectInfo:
        data = self._truth(info.key)
        kept = info.md5 if self.kind in ("md5", "multipart") else None
        info = dataclasses.replace(info, md5=kept, crc64=None)
        if self.kind == "crc64":
            return dataclasses.replace(info, crc64=crc64(data))
        if self.kind == "sha256":
            return dataclasses.replace(info, sha256=hashlib.sha256(data).hexdigest())
        if self.kind == "crc32c":
            return dataclasses.replace(info, crc32c=fastcrc.crc32.iscsi(data))
        if self.kind == "crc32":
            return dataclasses.replace(info, crc32=zlib.crc32(data))
        return info

    def _truth(self, key: str) -> bytes:
        return self.store._get(key).data

    async def head(self, key: str) -> ObjectInfo:
        return self._vouch(await self.inner.head(key))

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        info, data = await self.inner.read_object(key, if_match=if_match)
        return self._vouch(info), data

    async def read_stream(self, key: str, *, if_match: str | None = None) -> Any:
        info, pieces = await self.inner.read_stream(key, if_match=if_match)
        return self._vouch(info), pieces


class Damaging(BackendWrapper):
    """Flips one byte of what the first `times` reads of each key return (a faulty NIC or middlebox), in
    whichever way it is read: whole, streamed or by ranges."""

    def __init__(self, inner: Backend, times: int) -> None:
        super().__init__(inner)
        self.times = times
        self.reads: dict[str, int] = {}
        self.damaged: dict[str, int] = {}

    def _damage(self, key: str) -> bool:
        self.reads[key] = self.reads.get(key, 0) + 1
        if self.damaged.get(key, 0) >= self.times:
            return False
        self.damaged[key] = self.damaged.get(key, 0) + 1
        return True

    @staticmethod
    def _flip(data: bytes) -> bytes:
        at = len(data) // 2
        return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:] if data else data

    async def read(self, key: str, *, offset: int = 0, length: int | None = None,
                   if_match: str | None = None) -> bytes:
        data = await self.inner.read(key, offset=offset, length=length, if_match=if_match)
        return self._flip(data) if self._damage(key) else data

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        info, data = await self.inner.read_object(key, if_match=if_match)
        return info, self._flip(data) if self._damage(key) else data

    async def read_stream(self, key: str, *, if_match: str | None = None) -> Any:
        info, pieces = await self.inner.read_stream(key, if_match=if_match)
        if not self._damage(key):
            return info, pieces

        async def damaged() -> AsyncGenerator[bytes, None]:
            first = True
            async for piece in pieces:
                yield self._flip(piece) if first else piece
                first = False

        return info, damaged()


async def _source(kind: str, bodies: dict[str, bytes]) -> MemoryBackend:
    src = MemoryBackend(MemoryStore(), "src", min_part_size=64 * KiB)
    for key, body in bodies.items():
        if kind != "multipart":
            await src.put(key, body, ObjectMeta(content_type="text/x-k"))
            continue
        part = SOURCE_PART if len(body) > SOURCE_PART else 100 * KiB
        upload = await src.create_multipart(key, ObjectMeta(content_type="text/x-k"))
        parts = [await src.upload_part(key, upload, n + 1, body[at:at + part])
                 for n, at in enumerate(range(0, len(body), part))]
        await src.complete_multipart(key, upload, parts)
    return src


async def _migrate(src: Backend, dst: Backend, tmp_path: Path, opts: TransferOptions) -> Summary:
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    return await run_migration(src, dst, repo, opts, report_dir=tmp_path / "reports", spec={})


def _reasons(summary: Summary) -> list[str]:
    assert summary.report is not None
    return [json.loads(line)["reason"] for line in Path(summary.report).read_text().splitlines()]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", KINDS)
async def test_bytes_damaged_once_are_read_again_and_land_intact(tmp_path: Path, kind: str, path: str) -> None:
    bodies = {f"{path}-{i}": os.urandom(PATHS[path] + i) for i in range(3)}
    src = Damaging(Vouching(await _source(kind, bodies), kind), times=1)
    dst = MemoryBackend(MemoryStore(), "dst", min_part_size=64 * KiB)
    s = await _migrate(src, dst, tmp_path, _opts())
    assert (s.success, s.failed, s.size_only) == (3, 0, 0)
    for key, body in bodies.items():
        assert src.damaged[key] == 1 and src.reads[key] >= 2
        info, data = await dst.read_object(key)
        assert data == body and info.meta is not None and info.meta.content_type == "text/x-k"


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", KINDS)
async def test_bytes_damaged_on_every_read_never_land(tmp_path: Path, kind: str, path: str) -> None:
    bodies = {f"{path}-{i}": os.urandom(PATHS[path] + i) for i in range(2)}
    src = Damaging(Vouching(await _source(kind, bodies), kind), times=10 ** 6)
    dst = MemoryBackend(MemoryStore(), "dst", min_part_size=64 * KiB)
    s = await _migrate(src, dst, tmp_path, _opts(ConsistencyCheck.CRC64))
    assert (s.success, s.failed) == (0, 2)
    assert [o.key async for o in dst.list()] == []
    assert dst.store._uploads == {}  # no multipart upload left behind either
    for reason in _reasons(s):
        assert f"on each of {READ_ATTEMPTS} reads" in reason
        assert "do not match the source's" in reason or "refused the bytes read against the source's MD5" in reason


async def test_damage_behind_the_retrying_wrapper_is_read_again_by_the_copier(tmp_path: Path) -> None:
    """A stream refused mid-PUT for its content is not sent again by the store wrapper (that would reuse the
    same read): the copier reads again, and counts those reads."""
    bodies = {"k": os.urandom(PATHS["stream"])}
    src = Damaging(Vouching(await _source("crc64", bodies), "crc64"), times=2)
    dst = RetryingBackend(MemoryBackend(MemoryStore(), "dst"))
    s = await _migrate(RetryingBackend(src), dst, tmp_path, _opts())
    assert (s.success, s.failed) == (1, 0)
    assert src.reads["k"] == 3
    assert (await dst.read_object("k"))[1] == bodies["k"]


@pytest.mark.parametrize("path", list(PATHS))
async def test_a_source_without_a_checksum_is_counted_as_verified_by_size_only(tmp_path: Path, path: str) -> None:
    bodies = {f"{path}-{i}": os.urandom(PATHS[path] + i) for i in range(2)}
    src = Vouching(await _source("size", bodies), "size")
    dst = MemoryBackend(MemoryStore(), "dst", min_part_size=64 * KiB)
    s = await _migrate(src, dst, tmp_path, _opts())
    assert (s.success, s.failed, s.size_only) == (2, 0, 2)
    assert "(2 verified by size only)" in s.describe()
    for key, body in bodies.items():
        assert (await dst.read_object(key))[1] == body


async def test_under_no_check_nothing_counts_as_verified(tmp_path: Path) -> None:
    bodies = {"k": os.urandom(PATHS["small"])}
    s = await _migrate(Vouching(await _source("size", bodies), "size"), MemoryBackend(MemoryStore(), "dst"),
                       tmp_path, _opts(ConsistencyCheck.NO_CHECK))
    assert (s.success, s.size_only) == (1, 0)


@pytest.mark.parametrize("path", list(PATHS))
async def test_reread_catches_damage_a_size_only_source_cannot(tmp_path: Path, path: str) -> None:
    """Without a checksum, damage on the way is seen only by reading again: then the damaged copy is removed
    and the object copied again; without the option it lands, counted as verified by size only."""
    bodies = {f"{path}-{i}": os.urandom(PATHS[path] + i) for i in range(2)}
    plain = MemoryBackend(MemoryStore(), "dst", min_part_size=64 * KiB)
    s = await _migrate(Damaging(Vouching(await _source("size", bodies), "size"), times=1), plain,
                       tmp_path / "plain", _opts())
    assert (s.success, s.size_only) == (2, 2)
    assert all([(await plain.read_object(k))[1] != v for k, v in bodies.items()])  # what the option is for

    checked = MemoryBackend(MemoryStore(), "dst", min_part_size=64 * KiB)
    src = Damaging(Vouching(await _source("size", bodies), "size"), times=1)
    s = await _migrate(src, checked, tmp_path / "reread", _opts(reread_size_only=True))
    assert (s.success, s.failed, s.size_only) == (2, 0, 2)
    for key, body in bodies.items():
        assert (await checked.read_object(key))[1] == body


@pytest.mark.parametrize("path", list(PATHS))
async def test_a_crc64_is_stored_only_for_bytes_a_source_checksum_vouched_for(tmp_path: Path, path: str) -> None:
    bodies = {"k": os.urandom(PATHS[path])}
    for kind, stored in (("size", None), ("sha256", crc64(bodies["k"]))):
        dst = MemoryBackend(MemoryStore(), "dst", min_part_size=64 * KiB)
        s = await _migrate(Vouching(await _source(kind, bodies), kind), dst, tmp_path / kind,
                           _opts(ConsistencyCheck.CRC64))
        assert s.success == 1
        assert (await dst.head("k")).crc64 == stored


async def test_a_multipart_object_resumed_after_a_restart_is_still_checked_whole(tmp_path: Path) -> None:
    """Parts uploaded before a restart are read again for the source's checksum (not uploaded again)."""

    class Dies(BackendWrapper):
        def __init__(self, inner: Backend) -> None:
            super().__init__(inner)
            self.parts = 0

        async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, **kw: Any) -> Any:
            self.parts += 1
            if part_number == 3:
                from ferry.errors import FatalError
                raise FatalError("the destination went away")
            return await self.inner.upload_part(key, upload_id, part_number, data, **kw)

    body = os.urandom(PATHS["multipart"])
    src = Damaging(Vouching(await _source("multipart", {"k": body}), "multipart"), times=0)
    dst = MemoryBackend(MemoryStore(), "dst", min_part_size=64 * KiB)
    first = await _migrate(src, Dies(dst), tmp_path, _opts())
    assert first.error is not None
    s = await _migrate(src, dst, tmp_path, _opts())
    assert (s.success, s.failed) == (1, 0)
    assert (await dst.read_object("k"))[1] == body


async def test_a_copier_used_by_itself_fails_with_a_verification_error(tmp_path: Path) -> None:
    """What sync events and reconciliation call: the same VerifiedCopier, the same verdict."""
    body = os.urandom(PATHS["small"])
    src = Damaging(Vouching(await _source("crc32c", {"k": body}), "crc32c"), times=10 ** 6)
    dst = MemoryBackend(MemoryStore(), "dst")
    copier = VerifiedCopier(src, dst, CopyOptions(server_side=False), MemoryBudget(64 * MiB))
    with pytest.raises(VerificationError, match="CRC32C"):
        await copier.copy(await src.head("k"))
    assert [o.key async for o in dst.list()] == []


# -- the sums themselves ---------------------------------------------------------------------------------------
def test_a_multipart_etag_is_recomputed_along_the_source_parts_whatever_the_pieces() -> None:
    body = os.urandom(3 * 1000 + 17)
    layout = (1000, 1000, 1000, 17)
    etag = composite_etag([hashlib.md5(body[a:a + 1000]).hexdigest() for a in range(0, len(body), 1000)])
    info = ObjectInfo("k", len(body), 0.0, etag=etag)
    check = source_checksum(info, layout)
    assert check == SourceChecksum("multipart ETag", etag, layout)
    for step in (1, 7, 999, 1000, 1001, 4096):
        sums = ContentSums(check)
        for at in range(0, len(body), step):
            sums.update(memoryview(body)[at:at + step])
        assert sums.problem(len(body)) is None, step
    sums = ContentSums(check)
    sums.update(body[:-1] + b"\0")
    assert "multipart ETag" in (sums.problem(len(body)) or "")


def test_a_layout_that_does_not_add_up_is_not_used() -> None:
    info = ObjectInfo("k", 3000, 0.0, etag="0" * 32 + "-3")
    assert source_checksum(info, [1000, 1000]).size_only
    assert source_checksum(info, [1000, 1000, 999]).size_only
    assert source_checksum(info, None).size_only


def test_the_strongest_cheapest_checksum_wins() -> None:
    info = ObjectInfo("k", 1, 0.0, etag="a" * 32 + "-1", crc64=5, crc32c=6, crc32=7, sha256="B" * 64)
    assert source_checksum(info).kind == "SHA-256"
    assert source_checksum(dataclasses.replace(info, md5="C" * 32)) == SourceChecksum("MD5", "c" * 32)
    assert source_checksum(dataclasses.replace(info, sha256=None)).kind == "CRC64"
    assert source_checksum(dataclasses.replace(info, sha256=None, crc64=None), [1]).kind == "multipart ETag"
    assert source_checksum(dataclasses.replace(info, sha256=None, crc64=None)).kind == "CRC32C"


def test_url_source_content_md5_is_read_from_base64() -> None:
    from ferry.storage.url_source import _content_md5

    digest = hashlib.md5(b"x").digest()
    assert _content_md5(base64.b64encode(digest).decode()) == digest.hex()
    assert _content_md5("not base64!") is None and _content_md5(None) is None


def test_the_success_list_marks_objects_verified_by_size_only(tmp_path: Path) -> None:
    from ferry.db.records import SIZE_ONLY, ObjectResult
    from ferry.runner.migration import write_records

    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    repo.create("fp", "{}", job_id="j")
    repo.record("j", [ObjectResult("a", "success", 1, None, None), ObjectResult("b", "success", 2, None, SIZE_ONLY)])
    paths = write_records(repo, "j", tmp_path / "lists", "to/")
    lines = [json.loads(line) for line in Path(paths["success"]).read_text().splitlines()]
    assert lines == [{"key": "a", "dst_key": "to/a", "size": 1},
                     {"key": "b", "dst_key": "to/b", "size": 2, "verified": "size only"}]
