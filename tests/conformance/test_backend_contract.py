"""The Backend contract, run unchanged against every backend: what the engine may rely on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from typing import TYPE_CHECKING

import fastcrc
import pytest

from ferry.engine.checksums import crc64
from ferry.errors import (
    DigestMismatchError,
    FerryError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
)
from ferry.objects import ObjectInfo, ObjectMeta
from ferry.storage.base import Backend, ListOrder

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from conftest import BackendFactory

PLAIN = ObjectMeta(content_type="application/octet-stream")

# Keys that trip up URL encoders, XML listings and filesystems. `a`, `a/` and `a/b` coexist in S3.
AWKWARD_KEYS = [
    "unicode/Grüße 日本語 ✓ 🎉.txt",
    "spaces/a b  c.txt",
    " leading and trailing space ",
    "plus/a+b.txt",
    "percent/100%.txt",
    "percent/%41%2F%zz",
    "question/why?.txt",
    "hash/#1.txt",
    "mixed/?a=1&b=2#frag;x=y",
    "quotes/'single' \"double\"",
    "pipe|angle<>*:",
    "tilde~/~",
    "a",
    "a/b",
    "a b/c",
    "a-",
    "a0",
    "dir-marker/",
    "/".join(["x" * 224] * 4),  # 899 bytes
    "/".join(["日" * 75] * 4),  # 903 bytes of UTF-8
    "d/" * 100 + "leaf",
]

# 900 bytes in ONE path segment: S3 allows it, SeaweedFS refuses segments over 255 bytes (KeyTooLongError).
LONG_SEGMENT_KEYS = ["x" * 900, "日" * 300, "deep/" + "y" * 890]

# Keys that URL normalisers and filesystems rewrite; S3 keeps them verbatim, so must we.
PATHLIKE_KEYS = ["dot/./x", "dotdot/../y", "double//slash", "/leading-slash", "trailing-dot/.", ".hidden", "..."]


def utf8(key: str) -> bytes:
    return key.encode("utf-8")


def body_of(key: str) -> bytes:
    # Directory markers are empty in practice; their content has its own (quirk-marked) test.
    return b"" if key.endswith("/") else utf8(key)


def expect_quirk(request: pytest.FixtureRequest, factory: BackendFactory, name: str) -> None:
    """Mark the test as an expected failure when this kind's store has the named quirk."""
    reason = factory.quirks.get(name)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


async def listed(backend: Backend, prefix: str = "", start_after: str | None = None) -> list[ObjectInfo]:
    return [info async for info in backend.list(prefix, start_after)]


def assert_listing(backend: Backend, infos: list[ObjectInfo], expected: set[str]) -> None:
    keys = [info.key for info in infos]
    assert len(keys) == len(set(keys)), "a key was listed twice"
    assert set(keys) == expected
    if backend.capabilities.list_order is ListOrder.LEXICOGRAPHIC:
        assert keys == sorted(keys, key=utf8), "listing is not in UTF-8 byte order"


async def put_all(backend: Backend, keys: list[str], body: bool = True) -> None:
    sem = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with sem:
            await backend.put(key, body_of(key) if body else b"", PLAIN)

    # SeaweedFS can lose `a`, or the marker `a/`, when it is written at the same moment as `a/b` (a file or
    # directory and a directory of one name, racing; see the quirks in conftest.py, and engine/pathlocks.py,
    # which keeps the copier from doing it), so such keys go first, one at a time.
    prefixes = {key[:i] for key in keys for i, ch in enumerate(key) if ch == "/"}
    first = sorted(k for k in keys if k.rstrip("/") in prefixes)
    for key in first:
        await one(key)
    await asyncio.gather(*(one(k) for k in keys if k not in first))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def needs_multipart(backend: Backend) -> None:
    """Skip a multipart test on a store without part uploads (the engine then streams every object)."""
    if not backend.capabilities.multipart:
        pytest.skip("the store has no part uploads")


# -- single objects -------------------------------------------------------------------------------------------
async def test_put_head_read_round_trip(backend: Backend) -> None:
    data = b"hello, ferry\n" * 100
    before = time.time()
    result = await backend.put("greeting.txt", data, ObjectMeta(content_type="text/plain"))
    info = await backend.head("greeting.txt")
    assert info.key == "greeting.txt" and info.size == len(data)
    assert info.etag == result.etag
    if backend.capabilities.etag_is_md5:
        assert info.etag == md5(data)
    # Servers keep their own clock and round to their precision; minutes of slack still catch unit mistakes.
    assert before - 120 < info.mtime < time.time() + 120
    assert info.meta is not None and info.meta.content_type == "text/plain"
    assert await backend.read("greeting.txt") == data
    whole_info, whole = await backend.read_object("greeting.txt")
    assert whole == data and whole_info.size == len(data) and whole_info.etag == info.etag
    assert whole_info.meta is not None and whole_info.meta.content_type == "text/plain"


async def test_ranged_read(backend: Backend) -> None:
    data = bytes(range(256)) * 4
    await backend.put("range.bin", data, PLAIN)
    assert await backend.read("range.bin", offset=10, length=20) == data[10:30]
    assert await backend.read("range.bin", offset=1000) == data[1000:]
    assert await backend.read("range.bin", offset=0, length=len(data)) == data
    assert await backend.read("range.bin", offset=1020, length=100) == data[1020:]  # clipped at the end


async def test_empty_object(backend: Backend) -> None:
    await backend.put("empty", b"", PLAIN)
    info = await backend.head("empty")
    assert info.size == 0
    if backend.capabilities.etag_is_md5:
        assert info.etag == md5(b"")
    assert await backend.read("empty") == b""
    assert (await backend.read_object("empty"))[1] == b""
    assert [i.key for i in await listed(backend)] == ["empty"]


async def test_overwrite_replaces_content_and_etag(backend: Backend) -> None:
    first = await backend.put("k", b"one", PLAIN)
    second = await backend.put("k", b"two!", ObjectMeta(content_type="text/x-two"))
    assert first.etag != second.etag
    info = await backend.head("k")
    assert (info.size, info.etag) == (4, second.etag)
    assert info.meta is not None and info.meta.content_type == "text/x-two"
    assert await backend.read("k") == b"two!"


async def test_awkward_keys_round_trip_and_list_once(backend: Backend) -> None:
    await put_all(backend, AWKWARD_KEYS)
    for key in AWKWARD_KEYS:
        info = await backend.head(key)
        assert info.key == key and info.size == len(body_of(key)), key
        assert await backend.read(key) == body_of(key), key
    assert_listing(backend, await listed(backend), set(AWKWARD_KEYS))


async def test_long_single_segment_keys(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "long-segment")
    await put_all(backend, LONG_SEGMENT_KEYS)
    for key in LONG_SEGMENT_KEYS:
        assert await backend.read(key) == utf8(key), key
    assert_listing(backend, await listed(backend), set(LONG_SEGMENT_KEYS))


async def test_path_like_keys_are_kept_verbatim(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "path-like")
    await put_all(backend, PATHLIKE_KEYS)
    for key in PATHLIKE_KEYS:
        assert await backend.read(key) == utf8(key), key
    assert_listing(backend, await listed(backend), set(PATHLIKE_KEYS))


async def test_a_beside_a_slash_b(backend: Backend) -> None:
    await put_all(backend, ["a", "a/b", "a b/c", "a/b/c"])
    assert await backend.read("a") == b"a"
    assert await backend.read("a/b") == b"a/b"
    assert_listing(backend, await listed(backend), {"a", "a/b", "a b/c", "a/b/c"})
    await backend.delete("a/b")
    assert_listing(backend, await listed(backend), {"a", "a b/c", "a/b/c"})
    await backend.delete("a")
    assert await backend.read("a/b/c") == b"a/b/c"


async def test_a_beside_a_slash_and_a_slash_b(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "dir-marker-beside-object")
    await backend.put("a", b"file", PLAIN)
    await backend.put("a/", b"", PLAIN)
    await backend.put("a/b", b"child", PLAIN)
    assert (await backend.head("a")).size == 4
    assert (await backend.head("a/")).size == 0
    assert await backend.read("a/b") == b"child"
    assert_listing(backend, await listed(backend), {"a", "a/", "a/b"})
    await backend.delete("a")
    assert_listing(backend, await listed(backend), {"a/", "a/b"})
    await backend.delete("a/b")
    assert_listing(backend, await listed(backend), {"a/"})
    assert (await backend.head("a/")).size == 0


async def test_dir_marker_keeps_its_content(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "dir-marker-content")
    await backend.put("marker/", b"not empty", PLAIN)
    assert await backend.read("marker/") == b"not empty"


async def test_backslash_is_not_a_slash(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "backslash-key")
    await put_all(backend, ["back\\slash", "back/slash"])
    assert await backend.read("back\\slash") == b"back\\slash"
    assert_listing(backend, await listed(backend), {"back\\slash", "back/slash"})


async def test_key_too_long_is_refused(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "key-length-limit")
    limit = backend.capabilities.max_key_bytes
    with pytest.raises(PermanentError):
        await backend.put("z" * (limit + 1), b"x", PLAIN)


# -- listing --------------------------------------------------------------------------------------------------
def random_keys(count: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    alphabet = "ab/ -~_é日"
    keys: set[str] = set()
    while len(keys) < count:
        key = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 10)))
        # Path-like keys and directory markers have their own tests.
        if "//" not in key and not key.startswith("/") and not key.endswith("/"):
            keys.add(key)
    return sorted(keys)


async def test_listing_yields_every_key_once_in_declared_order(
        backend: Backend, backend_factory: BackendFactory) -> None:
    # More than one page of every backend (S3 pages hold 1000, the local walker batches 256). The GCS emulator
    # answers every listing in one page whatever maxResults says (pages are tested against FakeGcs in
    # tests/integration/test_gcs.py) and serves one request at a time: 1100 writes there took ~13 s for nothing.
    keys = random_keys(250 if backend_factory.kind == "gcs" else 1100)
    await put_all(backend, keys, body=False)
    infos = await listed(backend)
    assert_listing(backend, infos, set(keys))
    assert all(info.meta is None for info in infos), "listings never carry meta"
    assert all(info.size == 0 and info.mtime > 0 for info in infos)


async def test_list_with_prefix(backend: Backend) -> None:
    keys = ["p/", "p/1", "p/2/x", "p0", "p-q", "p.txt", "q/1", "pp/1"]
    await put_all(backend, keys)
    assert_listing(backend, await listed(backend, "p/"), {"p/", "p/1", "p/2/x"})
    assert_listing(backend, await listed(backend, "p"), {"p/", "p/1", "p/2/x", "p0", "p-q", "p.txt", "pp/1"})
    assert_listing(backend, await listed(backend, "p/2/"), {"p/2/x"})
    assert_listing(backend, await listed(backend, "nothing/"), set())


async def test_list_start_after_resumes_after_that_key(backend: Backend) -> None:
    keys = [*random_keys(60, seed=11), "s/1", "s/2", "s/3"]
    await put_all(backend, keys)
    full = [i.key for i in await listed(backend)]
    # Resuming after any listed key gives the rest, in every order (it is how listings are checkpointed).
    for cut in (0, 1, len(full) // 2, len(full) - 2, len(full) - 1):
        rest = [i.key for i in await listed(backend, start_after=full[cut])]
        assert rest == full[cut + 1:], cut
    sub = [i.key for i in await listed(backend, "s/")]
    assert [i.key for i in await listed(backend, "s/", start_after=sub[0])] == sub[1:]
    if backend.capabilities.list_order is ListOrder.LEXICOGRAPHIC:
        # A start_after that is not a key: everything greater, in byte order.
        probe = "a~"
        expected = sorted((k for k in keys if utf8(k) > utf8(probe)), key=utf8)
        assert [i.key for i in await listed(backend, start_after=probe)] == expected


async def test_prefix_isolates_backends(backend_factory: BackendFactory, backend: Backend) -> None:
    left, right = backend_factory.make(sub="left/"), backend_factory.make(sub="right/")
    await left.put("k", b"L", PLAIN)
    await right.put("k", b"R", PLAIN)
    assert [i.key for i in await listed(left)] == ["k"]
    assert await right.read("k") == b"R"
    assert_listing(backend, await listed(backend), {"left/k", "right/k"})
    assert await backend.read("left/k") == b"L"


# -- errors ---------------------------------------------------------------------------------------------------
async def test_missing_key_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        await backend.head("missing")
    with pytest.raises(NotFoundError):
        await backend.read("missing")
    with pytest.raises(NotFoundError):
        await backend.read_object("missing")
    await backend.delete("missing")  # deleting what is not there is not an error (as in S3)


async def test_wrong_if_match_is_source_changed(backend: Backend) -> None:
    result = await backend.put("pinned", b"v1", PLAIN)
    assert result.etag
    assert await backend.read("pinned", if_match=result.etag) == b"v1"
    assert await backend.read("pinned", if_match=f'"{result.etag}"') == b"v1"
    with pytest.raises(SourceChangedError):
        await backend.read("pinned", if_match="0" * 32)
    with pytest.raises(SourceChangedError):
        await backend.read_object("pinned", if_match="0" * 32)
    await backend.put("pinned", b"v2", PLAIN)
    with pytest.raises(SourceChangedError):
        await backend.read("pinned", offset=0, length=1, if_match=result.etag)


# -- metadata -------------------------------------------------------------------------------------------------
FULL_META = ObjectMeta(
    content_type="text/csv; charset=utf-8",
    cache_control="max-age=3600, public",
    content_disposition='attachment; filename="report.csv"',
    content_encoding="identity",
    content_language="de-DE",
    expires="Wed, 21 Oct 2037 07:28:00 GMT",
    user={"owner": "team-a", "x-trace": "abc-123", "empty-ish": "-"},
)


async def test_metadata_round_trip(backend: Backend) -> None:
    await backend.put("meta.csv", b"a,b\n", FULL_META)
    info = await backend.head("meta.csv")
    assert info.meta is not None
    meta = info.meta
    assert (meta.content_type, meta.cache_control, meta.content_disposition, meta.content_language) == (
        FULL_META.content_type, FULL_META.cache_control, FULL_META.content_disposition,
        FULL_META.content_language,
    )
    assert meta.content_encoding == FULL_META.content_encoding
    assert meta.expires == FULL_META.expires
    assert {k: v for k, v in meta.user.items() if k in FULL_META.user} == dict(FULL_META.user)
    _, data = await backend.read_object("meta.csv")
    assert data == b"a,b\n"


async def test_crc64_round_trip(backend: Backend) -> None:
    data = os.urandom(3000)
    await backend.put("crc.bin", data, PLAIN, crc64=crc64(data))
    assert (await backend.head("crc.bin")).crc64 == crc64(data)
    info, _ = await backend.read_object("crc.bin")
    assert info.crc64 == crc64(data)
    await backend.put("plain.bin", data, PLAIN)
    if not backend.capabilities.crc64:
        assert (await backend.head("plain.bin")).crc64 is None


async def test_storage_class_round_trip(backend: Backend) -> None:
    classes = sorted(backend.capabilities.storage_classes - {"STANDARD"})
    if not classes:
        pytest.skip("the backend offers only the standard class")
    await backend.put("cold", b"brr", PLAIN, storage_class=classes[0])
    assert (await backend.head("cold")).storage_class == classes[0]


# -- streamed put ---------------------------------------------------------------------------------------------
def chunked(data: bytes, size: int, *, fail_after: int | None = None) -> Callable[[], AsyncGenerator[bytes, None]]:
    """A body factory yielding `data` in `size`-byte chunks (raising SourceChangedError after `fail_after`
    chunks); each call starts a fresh iterator and counts itself in `.calls`."""

    async def body() -> AsyncGenerator[bytes, None]:
        calls.append(1)
        for n, at in enumerate(range(0, len(data), size)):
            if fail_after is not None and n == fail_after:
                raise SourceChangedError("the source changed mid-stream")
            await asyncio.sleep(0)
            yield data[at:at + size]

    calls: list[int] = []
    body.calls = calls  # type: ignore[attr-defined]
    return body


async def test_put_stream_round_trip(backend: Backend) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1234)  # several of the HTTP client's 1 MiB write slices
    md5 = hashlib.md5(data).hexdigest()
    meta = ObjectMeta(content_type="text/x-streamed")
    result = await backend.put_stream("streamed", len(data), chunked(data, 700_000), meta, crc64=crc64(data),
                                      content_md5=md5)
    assert result.etag is not None
    if backend.capabilities.etag_is_md5:
        assert result.etag.strip('"') == md5
    info = await backend.head("streamed")
    assert (info.size, info.crc64, info.md5, info.meta and info.meta.content_type) == (
        len(data), crc64(data), md5, "text/x-streamed")
    assert await backend.read("streamed") == data
    # Without a Content-MD5: asked to, a store that can checks a trailing CRC32C instead, and says so.
    again = await backend.put_stream("again", len(data), chunked(data, 1_000_000), PLAIN, trailing_crc32c=True)
    assert again.crc32c_verified is backend.capabilities.trailing_crc32c
    assert await backend.read("again") == data
    plain = await backend.put_stream("plain", len(data), chunked(data, 1_000_000), PLAIN)
    assert not plain.crc32c_verified and plain.etag is not None
    assert plain.etag.strip('"') == md5 or not backend.capabilities.etag_is_md5
    assert await backend.read("plain") == data
    await backend.put_stream("empty", 0, chunked(b"", 1), PLAIN)
    assert (await backend.head("empty")).size == 0


async def test_read_stream_yields_the_object_in_pieces_with_its_info(backend: Backend) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    await backend.put("big", data, ObjectMeta(content_type="text/x-big"), crc64=crc64(data))
    info, pieces = await backend.read_stream("big")
    assert (info.size, info.crc64, info.meta and info.meta.content_type) == (len(data), crc64(data), "text/x-big")
    got = [piece async for piece in pieces]
    assert b"".join(got) == data and len(got) > 1
    _, empty = await backend.read_stream("big", if_match=info.etag)
    await empty.aclose()  # closed unread: nothing leaks, and the next read works
    with pytest.raises(SourceChangedError):
        await backend.read_stream("big", if_match="0" * 32)
    with pytest.raises(NotFoundError):
        await backend.read_stream("missing")
    _, pieces = await backend.read_stream("big", if_match=info.etag)
    assert b"".join([piece async for piece in pieces]) == data


async def test_put_stream_refuses_a_wrong_content_md5_and_keeps_the_old_object(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "content-md5")
    await backend.put("kept", b"old", PLAIN)
    data = os.urandom(100_000)
    wrong = hashlib.md5(data + b"x").hexdigest()
    with pytest.raises(DigestMismatchError):
        await backend.put_stream("kept", len(data), chunked(data, 30_000), PLAIN, content_md5=wrong)
    assert await backend.read("kept") == b"old"
    with pytest.raises(DigestMismatchError):
        await backend.put_stream("never", len(data), chunked(data, 30_000), PLAIN, content_md5=wrong)
    with pytest.raises(NotFoundError):
        await backend.head("never")


@pytest.mark.parametrize("case", ["short", "long", "source fails"])
async def test_put_stream_with_a_bad_body_keeps_nothing(backend: Backend, case: str) -> None:
    """A body that ends early, runs long, or fails midway (the source changed) fails the write; the
    object is not created, and the source's own error comes through unchanged."""
    data = os.urandom(200_000)
    size = {"short": len(data) + 1, "long": len(data) - 1, "source fails": len(data)}[case]
    body = chunked(data, 50_000, fail_after=2 if case == "source fails" else None)
    with pytest.raises(SourceChangedError if case == "source fails" else FerryError):
        await backend.put_stream("bad", size, body, PLAIN)
    with pytest.raises(NotFoundError):
        await backend.head("bad")
    assert await listed(backend) == []


# -- multipart ------------------------------------------------------------------------------------------------
async def test_multipart_upload(backend: Backend) -> None:
    needs_multipart(backend)
    size = backend.capabilities.min_part_size
    one, two = os.urandom(size), os.urandom(size)
    whole_crc = crc64(one + two)
    meta = ObjectMeta(content_type="video/mp4", user={"owner": "mp"})
    upload = await backend.create_multipart("big/video.mp4", meta, crc64=whole_crc)
    # Parts may arrive in any order.
    p2 = await backend.upload_part("big/video.mp4", upload, 2, two)
    p1 = await backend.upload_part("big/video.mp4", upload, 1, one)
    assert (p1.part_number, p1.size, p2.part_number, p2.size) == (1, size, 2, size)
    parts = await backend.list_parts("big/video.mp4", upload)
    assert [(p.part_number, p.size, p.etag.strip('"')) for p in parts] == [
        (1, size, p1.etag.strip('"')), (2, size, p2.etag.strip('"'))
    ]
    if backend.capabilities.etag_is_md5:
        assert p1.etag.strip('"') == md5(one)
    result = await backend.complete_multipart("big/video.mp4", upload, [p1, p2])
    info = await backend.head("big/video.mp4")
    assert info.size == 2 * size and info.etag == result.etag
    if backend.capabilities.etag_is_md5:
        composite = hashlib.md5(bytes.fromhex(md5(one)) + bytes.fromhex(md5(two))).hexdigest() + "-2"
        assert info.etag == composite
    assert info.meta is not None and info.meta.content_type == "video/mp4"
    assert info.meta.user.get("owner") == "mp"
    assert info.crc64 == whole_crc
    assert await backend.read("big/video.mp4", offset=size - 5, length=10) == (one + two)[size - 5:size + 5]
    assert await backend.read("big/video.mp4") == one + two
    with pytest.raises(NotFoundError):
        await backend.list_parts("big/video.mp4", upload)
    assert [i.key for i in await listed(backend)] == ["big/video.mp4"]


async def test_multipart_part_reupload_replaces_it(backend: Backend) -> None:
    needs_multipart(backend)
    size = backend.capabilities.min_part_size
    upload = await backend.create_multipart("re", PLAIN)
    await backend.upload_part("re", upload, 1, b"\0" * size)
    p1 = await backend.upload_part("re", upload, 1, b"\1" * size)
    p2 = await backend.upload_part("re", upload, 2, b"tail")
    await backend.complete_multipart("re", upload, [p1, p2])
    assert await backend.read("re") == b"\1" * size + b"tail"


async def test_part_crc32c_is_verified_where_the_store_can(backend: Backend) -> None:
    """A store that can (`part_crc32c`) confirms a good CRC32C and refuses a part whose bytes do not match
    it, keeping nothing; any other accepts the part and says it checked nothing."""
    needs_multipart(backend)
    size = backend.capabilities.min_part_size
    data = os.urandom(size)
    can = backend.capabilities.part_crc32c
    upload = await backend.create_multipart("crc", PLAIN)
    try:
        good = await backend.upload_part("crc", upload, 1, data, crc32c=fastcrc.crc32.iscsi(data))
        assert good.crc32c_verified is can and good.etag.strip('"') == hashlib.md5(data).hexdigest()
        wrong = fastcrc.crc32.iscsi(data) ^ 1
        if can:
            with pytest.raises(TransientError):
                await backend.upload_part("crc", upload, 2, b"tail", crc32c=wrong)
            assert [p.part_number for p in await backend.list_parts("crc", upload)] == [1]
        else:
            assert not (await backend.upload_part("crc", upload, 2, b"tail", crc32c=wrong)).crc32c_verified
    finally:
        await backend.abort_multipart("crc", upload)


async def test_list_parts_after_reupload_lists_each_part_once(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "part-reupload-listing")
    needs_multipart(backend)
    size = backend.capabilities.min_part_size
    upload = await backend.create_multipart("re", PLAIN)
    try:
        await backend.upload_part("re", upload, 1, b"\0" * size)
        p1 = await backend.upload_part("re", upload, 1, b"\1" * size)
        p2 = await backend.upload_part("re", upload, 2, b"tail")
        parts = await backend.list_parts("re", upload)
        assert [(p.part_number, p.etag.strip('"')) for p in parts] == [
            (1, p1.etag.strip('"')), (2, p2.etag.strip('"'))
        ]
    finally:
        await backend.abort_multipart("re", upload)


async def test_multipart_abort(backend: Backend) -> None:
    needs_multipart(backend)
    upload = await backend.create_multipart("aborted", PLAIN)
    await backend.upload_part("aborted", upload, 1, b"x" * 1000)
    assert len(await backend.list_parts("aborted", upload)) == 1
    await backend.abort_multipart("aborted", upload)
    with pytest.raises(NotFoundError):
        await backend.list_parts("aborted", upload)
    with pytest.raises(NotFoundError):
        await backend.head("aborted")
    assert await listed(backend) == []


# -- copy and delete ------------------------------------------------------------------------------------------
async def test_copy_from_within_copy_group(backend_factory: BackendFactory, backend: Backend) -> None:
    other = backend_factory.make(other=True)
    assert backend.capabilities.copy_group is not None
    assert other.capabilities.copy_group == backend.capabilities.copy_group
    data = os.urandom(5000)
    put = await backend.put("src/obj", data, FULL_META, crc64=crc64(data))

    # meta=None keeps the source's metadata (and the CRC Ferry stored with it).
    await other.copy_from(backend, "src/obj", "dst/obj", None, if_match=put.etag)
    info = await other.head("dst/obj")
    assert info.size == len(data) and info.crc64 == crc64(data)
    assert info.meta is not None and info.meta.content_type == FULL_META.content_type
    assert info.meta.user.get("owner") == "team-a"
    assert await other.read("dst/obj") == data
    if backend.capabilities.etag_is_md5:
        assert info.etag == md5(data)

    with pytest.raises(NotFoundError):
        await other.copy_from(backend, "src/missing", "dst/none", None)
    assert_listing(other, await listed(other), {"dst/obj"})


async def test_copy_from_with_meta_replaces_it(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "copy-replace-meta")
    data = os.urandom(5000)
    await backend.put("src/obj", data, FULL_META, crc64=crc64(data))
    # Given meta replaces the source's; copying within one bucket works too.
    await backend.copy_from(backend, "src/obj", "src/copy", ObjectMeta(content_type="text/x-new"))
    copied = await backend.head("src/copy")
    assert copied.meta is not None and copied.meta.content_type == "text/x-new"
    assert await backend.read("src/copy") == data


async def test_copy_from_with_wrong_if_match_is_source_changed(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, backend: Backend
) -> None:
    expect_quirk(request, backend_factory, "copy-if-match")
    other = backend_factory.make(other=True)
    await backend.put("src/obj", b"v1", PLAIN)
    with pytest.raises(SourceChangedError):
        await other.copy_from(backend, "src/obj", "dst/bad", None, if_match="0" * 32)
    with pytest.raises(NotFoundError):
        await other.head("dst/bad")


async def test_delete(backend: Backend) -> None:
    await put_all(backend, ["d/1", "d/2", "d/sub/3", "keep"])
    await backend.delete("d/sub/3")
    with pytest.raises(NotFoundError):
        await backend.head("d/sub/3")
    await backend.delete("d/1")
    assert_listing(backend, await listed(backend), {"d/2", "keep"})
    await backend.put("d/sub/3", b"back", PLAIN)  # a deleted prefix can be written again
    assert await backend.read("d/sub/3") == b"back"


async def test_restore_is_harmless_on_a_standard_object(backend: Backend) -> None:
    await backend.put("warm", b"x", PLAIN)
    if backend.capabilities.restore:
        pytest.skip("a store with real archives has its own restore tests")
    await backend.restore("warm", 1)
    assert await backend.read("warm") == b"x"


async def test_name_is_a_display_string(backend: Backend) -> None:
    assert isinstance(backend.name, str) and backend.name
    assert "secret" not in backend.name.lower()
