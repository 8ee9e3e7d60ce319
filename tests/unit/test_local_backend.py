"""LocalBackend beyond the shared contract: the key encoding, order proofs by example, crashes and restarts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.errors import FatalError, NotFoundError, PermanentError, SourceChangedError
from ferry.objects import ObjectMeta
from ferry.storage import local
from ferry.storage.local import FRAGMENT_CHARS, LocalBackend, key_to_relpath, relpath_to_key

META = ObjectMeta(content_type="text/plain", user={"k": "v"})

# Few characters, chosen to collide: `/` against its neighbours in byte order (`.` < `/` < `0`), the escape
# character, a control character, a leading dot, multi-byte UTF-8, and enough length for CONT chunks.
ALPHABET = st.sampled_from(list("ab/.-0%~ \x01é日"))
KEYS = st.text(ALPHABET, min_size=1, max_size=150)


def utf8(key: str) -> bytes:
    return key.encode("utf-8")


@given(KEYS)
def test_every_key_round_trips_through_its_path(key: str) -> None:
    relpath = key_to_relpath(key)
    assert relpath_to_key(relpath) == key
    for name in relpath.split("/"):
        assert name and not name.startswith(".") and len(name.encode()) <= 240
        assert len(("." + name + ".meta.json").encode()) <= 255


def test_encoding_examples() -> None:
    assert key_to_relpath("photos/2024/cat.jpg") == "photos%2F/2024%2F/cat.jpg"
    assert key_to_relpath("a") == "a"
    assert key_to_relpath("a/") == "a%2F/%_"
    assert key_to_relpath("a//b") == "a%2F/%2F/b"
    assert key_to_relpath("../x") == "%2E.%2F/x"
    assert key_to_relpath("100%") == "100%25"
    long = "x" * (FRAGMENT_CHARS + 5)
    assert key_to_relpath(long) == "x" * FRAGMENT_CHARS + "%+/xxxxx"
    assert relpath_to_key("a%41") is None  # non-canonical spelling
    assert relpath_to_key("stray%") is None
    assert relpath_to_key("x" * FRAGMENT_CHARS + "%+/%_") is None  # the empty leaf never lives in a CONT


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(KEYS, min_size=1, max_size=25), KEYS, st.text(ALPHABET, max_size=4))
def test_listing_is_byte_ordered_and_complete(keys: set[str], probe: str, prefix: str) -> None:
    async def check() -> None:
        with tempfile.TemporaryDirectory() as root:
            backend = LocalBackend(root, fsync=False)
            for key in keys:
                await backend.put(key, utf8(key), META)
            expected = sorted(keys, key=utf8)
            assert [i.key async for i in backend.list()] == expected
            assert [i.key async for i in backend.list(start_after=probe)] == [
                k for k in expected if utf8(k) > utf8(probe)
            ]
            assert [i.key async for i in backend.list(prefix)] == [k for k in expected if k.startswith(prefix)]
            assert [i.key async for i in backend.list(prefix, start_after=probe)] == [
                k for k in expected if k.startswith(prefix) and utf8(k) > utf8(probe)
            ]
            for key in keys:
                await backend.delete(key)
            # Deletes prune the directories they emptied; the layout's marker stays.
            assert [n for n in os.listdir(root) if n != ".%ferry"] == []

    run(check())


async def test_prefixed_backend_lists_relative_keys(tmp_path: Path) -> None:
    whole = LocalBackend(tmp_path)
    for key in ["p/1", "p/2", "p", "p0/1", "q"]:
        await whole.put(key, b"x", META)
    under = LocalBackend(tmp_path, "p/")
    assert [i.key async for i in under.list()] == ["1", "2"]
    assert await under.read("1") == b"x"


async def test_missing_root_is_fatal_and_created_only_by_writes(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "nope")
    with pytest.raises(FatalError, match="does not exist"):
        _ = [i async for i in backend.list()]
    with pytest.raises(FatalError):
        await backend.head("k")
    with pytest.raises(FatalError):
        await backend.put("k", b"x", META)
    creating = LocalBackend(tmp_path / "made", create=True)
    with pytest.raises(FatalError):
        _ = [i async for i in creating.list()]
    await creating.put("k", b"x", META)
    assert [i.key async for i in creating.list()] == ["k"]


async def test_multipart_survives_a_restart(tmp_path: Path) -> None:
    first = LocalBackend(tmp_path, min_part_size=4)
    upload = await first.create_multipart("big", META, storage_class="IA", crc64=42)
    await first.upload_part("big", upload, 1, b"1111")
    await first.upload_part("big", upload, 2, b"22")
    second = LocalBackend(tmp_path, min_part_size=4)  # a new process, as far as the backend knows
    parts = await second.list_parts("big", upload)
    assert [(p.part_number, p.size) for p in parts] == [(1, 4), (2, 2)]
    await second.complete_multipart("big", upload, parts)
    info = await second.head("big")
    assert (info.size, info.storage_class, info.crc64) == (6, "IA", 42)
    assert info.meta == META
    assert await second.read("big") == b"111122"
    assert [i.key async for i in second.list()] == ["big"]
    assert os.listdir(tmp_path / ".%ferry" / "uploads") == []


async def test_completing_an_upload_whose_folder_and_key_share_a_lock_stripe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one stripe every path collides: completing holds the upload folder's stripe and then takes the
    key's, which must not deadlock (with 64 stripes this hung one completion in 64)."""
    monkeypatch.setattr(local, "_KEY_LOCKS", local._KEY_LOCKS[:1])
    backend = LocalBackend(tmp_path, min_part_size=4)
    upload = await backend.create_multipart("k", META)
    parts = [await backend.upload_part("k", upload, 1, b"1111"), await backend.upload_part("k", upload, 2, b"2")]
    # The completion's body runs on a daemon thread of its own (not the executor, which is joined at exit),
    # so that a deadlock fails this test instead of hanging the run.
    worker = threading.Thread(target=backend._complete_sync, args=("k", upload, parts), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "complete_multipart deadlocked on its own lock stripe"
    assert await backend.read("k") == b"11112"


async def test_multipart_refuses_small_parts_and_foreign_ids(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path, min_part_size=10)
    upload = await backend.create_multipart("k", META)
    p1 = await backend.upload_part("k", upload, 1, b"short")
    p2 = await backend.upload_part("k", upload, 2, b"tail")
    with pytest.raises(PermanentError, match="below the minimum"):
        await backend.complete_multipart("k", upload, [p1, p2])
    with pytest.raises(NotFoundError):
        await backend.list_parts("other-key", upload)
    for bad in ("../../etc", "0" * 32, upload.upper()):
        with pytest.raises(NotFoundError):
            await backend.list_parts("k", bad)


async def test_stale_sidecar_is_ignored(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    v1 = await backend.put("doc", b"version one", META, crc64=1)
    sidecar = tmp_path / ".doc.meta.json"
    saved = sidecar.read_bytes()
    await backend.put("doc", b"version TWO", META, crc64=2)
    # A crash between the data rename and the sidecar rename leaves the old sidecar beside new data.
    sidecar.write_bytes(saved)
    info = await backend.head("doc")
    assert (info.size, info.etag, info.crc64) == (11, None, None)
    assert info.meta == ObjectMeta()
    with pytest.raises(SourceChangedError):
        await backend.read("doc", if_match=v1.etag)
    assert await backend.read("doc") == b"version TWO"


async def test_edited_file_loses_its_etag(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    await backend.put("doc", b"abc", META)
    path = tmp_path / "doc"
    path.write_bytes(b"xyz")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000))
    assert (await backend.head("doc")).etag is None


async def test_foreign_files_are_listed_plainly_and_junk_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    backend = LocalBackend(tmp_path)
    await backend.put("ours", b"1", META)
    (tmp_path / "readme.txt").write_text("hand made")
    (tmp_path / "plain-dir").mkdir()  # a directory without the `%2F` mark is not part of any key
    (tmp_path / "plain-dir" / "inside").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / ".%tmp-0123").write_text("half written")
    (tmp_path / "bad%zz").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "readme.txt")
    (tmp_path / os.fsdecode(b"latin1-\xe9")).write_text("x")
    with caplog.at_level("WARNING", logger="ferry.storage.local"):
        infos = [i async for i in backend.list()]
    assert [i.key for i in infos] == ["ours", "readme.txt"]
    assert infos[1].etag is None and infos[1].size == 9
    # What was skipped is named, so a hand-made tree does not look migrated when it was not; our own dot
    # files and hidden ones are not.
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for name in ("'plain-dir/'", "'bad%zz'", "'link'", "latin1-"):
        assert name in warning
    assert ".hidden" not in warning and ".%tmp" not in warning and "%2F" in warning


async def test_sidecar_content(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    await backend.put("a/b", b"x", META, storage_class="ARCHIVE", crc64=7)
    doc = json.loads((tmp_path / "a%2F" / ".b.meta.json").read_text())
    assert doc["key"] == "a/b" and doc["crc64"] == 7 and doc["storage_class"] == "ARCHIVE"
    assert doc["meta"] == {"content_type": "text/plain", "user": {"k": "v"}}


async def test_concurrent_overwrites_leave_a_consistent_object(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path, fsync=False)
    bodies = [bytes([i]) * 1000 for i in range(20)]
    await asyncio.gather(*(backend.put("hot", body, META) for body in bodies))
    info, data = await backend.read_object("hot")
    assert data in bodies
    assert info.etag == hashlib.md5(data).hexdigest()  # the sidecar describes the data that won
