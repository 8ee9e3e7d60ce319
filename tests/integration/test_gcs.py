"""Google Cloud Storage: service-account tokens, and what the emulator lacks, against FakeGcs (tests/gcs_servers.py),
which behaves as Google documents: x-goog-* download headers, preconditions, pages, key order, a token endpoint."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator

import fastcrc
import pytest

from ferry.errors import AccessError, NotFoundError, SourceChangedError, UsageError
from ferry.storage.base import ListOrder
from ferry.storage.gcs import GcsBackend, open_at, parse_goog_hash
from ferry.storage.gcs_auth import ServiceAccount, TokenSource
from ferry.storage.profiles import get_profile
from ferry.storage.stores import StoreAt, StoreKeys
from ferry.storage.stores import open_at as open_store
from gcs_servers import Account, FakeGcs

BUCKET = "photos"


@pytest.fixture(scope="module")
def account() -> Account:
    return Account()


@pytest.fixture
def fake(account: Account) -> Iterator[FakeGcs]:
    with FakeGcs(account) as server:
        yield server


def _backend(fake: FakeGcs, account: Account, prefix: str = "") -> GcsBackend:
    # Through the seam, as a task opens it, with the endpoint from the operator's table: the key file's
    # token_uri may then be on that server's host.
    at = StoreAt("google", fake.endpoint, "us", BUCKET, prefix, from_override=True)
    backend = open_store(at, StoreKeys(json_auth=account.json(fake.token_uri)))
    assert isinstance(backend, GcsBackend)
    return backend


@pytest.fixture
async def gcs(fake: FakeGcs, account: Account) -> AsyncIterator[GcsBackend]:
    backend = _backend(fake, account)
    yield backend
    await backend.close()


async def test_listing_pages_in_key_order_and_resumes_after_a_key(fake: FakeGcs, gcs: GcsBackend) -> None:
    names = ["b", "a/2", "a/10", "é", "a/1", "z", "a b"]
    for name in names:
        fake.put(BUCKET, name, name.encode())
    assert get_profile("google").list_order is ListOrder.LEXICOGRAPHIC  # Google's own endpoint
    listed = [info.key async for info in gcs.list()]
    assert listed == sorted(names, key=str.encode)  # over four pages of two
    assert [i.key async for i in gcs.list("a/")] == ["a/1", "a/10", "a/2"]
    assert [i.key async for i in gcs.list(start_after="a/10")] == ["a/2", "b", "z", "é"]
    pages = [p for m, p, _ in fake.requests if m == "GET" and "/o?" in p]
    assert any("pageToken=" in p for p in pages) and any("startOffset=a%2F10" in p for p in pages)


async def test_head_fills_md5_crc32c_class_and_metadata(fake: FakeGcs, gcs: GcsBackend) -> None:
    data = b"some bytes" * 100
    generation = fake.put(BUCKET, "doc.txt", data, storage_class="COLDLINE", content_type="text/plain",
                          metadata={"owner": "team", "ferry-crc64": "42"})
    info = await gcs.head("doc.txt")
    assert (info.size, info.etag, info.storage_class, info.crc64) == (len(data), str(generation), "IA", 42)
    assert info.md5 == hashlib.md5(data).hexdigest()
    assert info.crc32c == fastcrc.crc32.iscsi(data)
    assert info.meta is not None and info.meta.content_type == "text/plain" and info.meta.user == {"owner": "team"}
    fake.put(BUCKET, "cold", b"x", storage_class="ARCHIVE")
    assert (await gcs.head("cold")).storage_class == "ARCHIVE"


async def test_one_download_gives_the_info_from_x_goog_headers(fake: FakeGcs, gcs: GcsBackend) -> None:
    data = bytes(range(256)) * 40
    generation = fake.put(BUCKET, "bin", data, metadata={"k": "v"})
    fake.requests.clear()
    info, body = await gcs.read_object("bin")
    assert body == data and len(fake.requests) == 1  # no lookup beside the download
    assert (info.etag, info.size, info.md5, info.crc32c) == (
        str(generation), len(data), hashlib.md5(data).hexdigest(), fastcrc.crc32.iscsi(data))
    assert info.meta is not None and info.meta.user == {"k": "v"}
    assert fake.requests[0][2].get("Accept-Encoding") == "gzip"  # stored bytes, never transcoded

    info, pieces = await gcs.read_stream("bin", if_match=str(generation))
    assert b"".join([p async for p in pieces]) == data and info.crc32c == fastcrc.crc32.iscsi(data)


async def test_a_composite_object_has_a_crc32c_and_no_md5(fake: FakeGcs, gcs: GcsBackend) -> None:
    fake.put(BUCKET, "composed", b"x" * 1000, composite=True)
    info, _ = await gcs.read_object("composed")
    assert info.md5 is None and info.crc32c == fastcrc.crc32.iscsi(b"x" * 1000)
    head = await gcs.head("composed")
    assert head.md5 is None and head.crc32c == info.crc32c


async def test_ranged_reads_and_pinned_generations(fake: FakeGcs, gcs: GcsBackend) -> None:
    data = bytes(range(200))
    first = fake.put(BUCKET, "r", data)
    assert await gcs.read("r", offset=10, length=5) == data[10:15]
    assert await gcs.read("r", offset=190) == data[190:]
    assert await gcs.read("r", offset=5, length=3, if_match=str(first)) == data[5:8]
    fake.put(BUCKET, "r", b"new")
    with pytest.raises(SourceChangedError):
        await gcs.read("r", offset=0, length=1, if_match=str(first))
    with pytest.raises(SourceChangedError):
        await gcs.read_object("r", if_match=str(first))
    with pytest.raises(SourceChangedError):
        await gcs.read_stream("r", if_match="d41d8cd98f00b204e9800998ecf8427e")  # an MD5 is no generation
    with pytest.raises(NotFoundError):
        await gcs.read_object("missing")


async def test_a_missing_bucket_is_an_access_error(fake: FakeGcs, account: Account) -> None:
    backend = _backend(fake, account)
    backend.bucket = "nope"
    try:
        with pytest.raises(AccessError) as err:
            [i async for i in backend.list()]
        assert err.value.s3_code == "NoSuchBucket"
    finally:
        await backend.close()


async def test_one_token_serves_many_requests_and_a_refused_one_is_replaced(fake: FakeGcs, gcs: GcsBackend) -> None:
    fake.put(BUCKET, "k", b"v")
    for _ in range(5):
        assert await gcs.read("k") == b"v"
    assert fake.token_requests == 1
    fake.tokens.clear()  # revoked: the store answers 401, the token is fetched again and the call repeated
    assert await gcs.read("k") == b"v"
    assert fake.token_requests == 2


async def test_a_token_is_replaced_before_it_expires(account: Account) -> None:
    with FakeGcs(account, token_lifetime=100) as fake:
        now = [1000.0]
        tokens = TokenSource(ServiceAccount.parse(account.json(fake.token_uri)), clock=lambda: now[0])
        try:
            first = await tokens.token()
            now[0] += 30
            assert await tokens.token() == first
            now[0] += 20  # 50 s in: within a minute of the end of 100 s
            assert await tokens.token() != first and fake.token_requests == 2
        finally:
            await tokens.close()


async def test_a_key_the_token_endpoint_refuses_is_an_access_error(fake: FakeGcs) -> None:
    other = Account()  # signs with a key the fake does not know
    tokens = TokenSource(ServiceAccount.parse(other.json(fake.token_uri)))
    try:
        with pytest.raises(AccessError, match="invalid_grant"):
            await tokens.token()
    finally:
        await tokens.close()


async def test_a_key_file_from_the_api_may_not_send_its_jwt_to_any_host(fake: FakeGcs, account: Account) -> None:
    at = StoreAt("google", "https://storage.googleapis.com", "us", BUCKET)
    backend = open_at(at, StoreKeys(json_auth=account.json(fake.token_uri)))
    try:
        with pytest.raises(AccessError, match="token_uri"):
            await backend.head("k")
        assert fake.token_requests == 0
    finally:
        await backend.close()


PEM_MARK = "PRIVATE KEY"


@pytest.mark.parametrize(("doc", "problem"), [
    ("not json {", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ({"type": "authorized_user"}, '"type" is not "service_account"'),
    ({"type": "service_account", "private_key": "x"}, '"client_email" is missing'),
    ({"type": "service_account", "client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"
      "-----END PRIVATE KEY-----\n"}, "not an unencrypted PEM private key"),
    ({"type": "service_account", "client_email": "a@b", "private_key": "k", "token_uri": "file:///etc/passwd"},
     "token_uri"),
])
def test_a_malformed_key_file_is_a_usage_error_that_quotes_nothing(
    doc: object, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UsageError) as err:
        ServiceAccount.parse(text)
    assert problem in err.value.message and err.value.message.startswith("json_auth_file is not")
    assert PEM_MARK not in err.value.message and "AAAA" not in err.value.message and PEM_MARK not in caplog.text


def test_the_key_never_shows(account: Account) -> None:
    parsed = ServiceAccount.parse(account.json("https://oauth2.googleapis.com/token"))
    tokens = TokenSource(parsed)
    shown = f"{parsed!r} {parsed!s} {tokens!r} {StoreKeys(json_auth=account.json('x'))!r}"
    assert PEM_MARK not in shown and "ferry-test@" in shown


def test_without_a_key_file_google_is_refused() -> None:
    with pytest.raises(UsageError, match="json_auth_file"):
        open_at(StoreAt("google", None, "us", BUCKET), StoreKeys("ak", "sk"))


def test_x_goog_hash_parses_one_header_or_several() -> None:
    md5 = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    crc = base64.b64encode(fastcrc.crc32.iscsi(b"x").to_bytes(4, "big")).decode()
    assert parse_goog_hash([f"crc32c={crc}, md5={md5}"]) == (hashlib.md5(b"x").hexdigest(), fastcrc.crc32.iscsi(b"x"))
    assert parse_goog_hash([f"crc32c={crc}", f"md5={md5}"]) == parse_goog_hash([f"md5={md5},crc32c={crc}"])
    assert parse_goog_hash([f"crc32c={crc}"]) == (None, fastcrc.crc32.iscsi(b"x"))
    assert parse_goog_hash(["md5=not-base64!", ""]) == (None, None)
