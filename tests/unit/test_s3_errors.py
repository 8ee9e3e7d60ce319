"""S3Backend maps every failure a store can produce to the error taxonomy, with no secret in messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from ferry.errors import (
    ArchivedObjectError,
    FatalError,
    FerryError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
    VerificationError,
)
from ferry.objects import ObjectMeta, PartInfo
from ferry.storage.s3 import S3Backend

SECRET = "TopSecret/Key+0123456789abcdefghijklmnopq"


@dataclass
class FakeS3:
    """A loopback HTTP server answering every request with whatever `reply` is set to."""

    reply: Callable[[web.Request], web.StreamResponse] | None = None
    delay: float = 0.0
    seen: list[web.Request] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        assert self.reply is not None
        return self.reply(request)


@pytest.fixture
async def fake() -> AsyncIterator[FakeS3]:
    state = FakeS3()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


def _error(status: int, code: str, extra: str = "", headers: dict[str, str] | None = None,
           ) -> Callable[[web.Request], web.StreamResponse]:
    body = f'<?xml version="1.0"?><Error><Code>{code}</Code><Message>m</Message>{extra}</Error>'

    def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body.encode() if request.method != "HEAD" else None,
                            headers=headers, content_type="application/xml")
    return reply


def _backend(fake: FakeS3, **kw: object) -> S3Backend:
    return S3Backend(f"http://127.0.0.1:{fake.port}", "us-east-1", "AKIDFERRY", SECRET, "bkt",
                     profile="s3", **kw)  # type: ignore[arg-type]


def _secret_free(exc: BaseException) -> None:
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen)):
            assert SECRET not in text and "Signature=" not in text and "deadbeef" not in text
        seen = seen.__cause__ or seen.__context__


@pytest.mark.parametrize(("status", "code", "expected"), [
    (503, "SlowDown", TransientError),
    (500, "InternalError", TransientError),
    (502, "BadGateway", TransientError),
    (429, "TooManyRequests", TransientError),
    (400, "RequestTimeout", TransientError),
    (404, "NoSuchKey", NotFoundError),
    (404, "NoSuchBucket", FatalError),
    (412, "PreconditionFailed", SourceChangedError),
    (403, "InvalidObjectState", ArchivedObjectError),
    (403, "AccessDenied", FatalError),
    (403, "InvalidAccessKeyId", FatalError),
    (403, "SignatureDoesNotMatch", FatalError),
    (301, "PermanentRedirect", FatalError),
    (400, "InvalidArgument", PermanentError),
])
async def test_status_mapping(fake: FakeS3, status: int, code: str, expected: type[FerryError]) -> None:
    # A real SignatureDoesNotMatch body quotes the signature the client sent.
    # Retry-After 2, not more: the endpoint then holds back the PUT below for that long.
    fake.reply = _error(status, code, "<SignatureProvided>deadbeef</SignatureProvided>",
                        {"Retry-After": "2"} if status == 503 else None)
    b = _backend(fake)
    try:
        with pytest.raises(expected) as ei:
            await b.read("some key")
        _secret_free(ei.value)
        assert ei.value.key == "some key"
        if status == 503:
            assert isinstance(ei.value, TransientError) and ei.value.retry_after == 2.0
        with pytest.raises(FerryError) as ei2:
            await b.put("k", b"x", ObjectMeta(expires="soon"))
        _secret_free(ei2.value)
        assert type(ei2.value) is type(ei.value)
    finally:
        await b.close()


async def test_head_has_no_body_but_maps_by_status(fake: FakeS3) -> None:
    b = _backend(fake)
    for status, expected in ((404, NotFoundError), (403, FatalError), (503, TransientError)):
        fake.reply = _error(status, "X")
        with pytest.raises(expected):
            await b.head("k")
    await b.close()


async def test_error_inside_200_is_detected(fake: FakeS3) -> None:
    b = _backend(fake)
    fake.reply = _error(200, "InternalError")
    with pytest.raises(TransientError):
        await b.complete_multipart("k", "up", [PartInfo(1, "e", 1)])
    fake.reply = _error(200, "InvalidPart")
    with pytest.raises(PermanentError):
        await b.complete_multipart("k", "up", [PartInfo(1, "e", 1)])
    with pytest.raises(PermanentError):
        await b.copy_from(_backend(fake), "a", "b", None)
    await b.close()


async def test_timeout_and_reset_are_transient(fake: FakeS3) -> None:
    b = _backend(fake, read_timeout=0.2)
    fake.reply = lambda request: web.Response(body=b"late")
    fake.delay = 1.0
    with pytest.raises(TransientError):
        await b.read("k")
    fake.delay = 0.0

    def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response(body=b"never sent")

    fake.reply = reset
    with pytest.raises(TransientError) as ei:
        await b.read("k")
    _secret_free(ei.value)
    await b.close()


async def test_wire_format(fake: FakeS3) -> None:
    """Keys are encoded once in the path, query values fully, copy sources URL-encoded."""
    listing = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
               b"<IsTruncated>false</IsTruncated><EncodingType>url</EncodingType>"
               b"<Contents><Key>a+b%2Bc%20d/%C3%BC</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified>"
               b"<ETag>&quot;e1&quot;</ETag><Size>3</Size><StorageClass>GLACIER</StorageClass></Contents>"
               b"</ListBucketResult>")
    fake.reply = lambda request: web.Response(body=listing, content_type="application/xml")
    b = _backend(fake)
    [info] = [o async for o in b.list("x/ y")]
    assert (info.key, info.size, info.etag, info.storage_class) == ("a b+c d/ü", 3, "e1", "ARCHIVE")
    assert info.mtime == 1704164645.0
    req = fake.seen[-1]
    assert req.path == "/bkt" and req.query["prefix"] == "x/ y" and req.query["encoding-type"] == "url"
    assert "%2F" in req.raw_path  # "/" inside a query value is encoded, as SigV4 signs it

    fake.reply = lambda request: web.Response(body=b"")
    await b.put("a b/c+d?#%", b"", ObjectMeta(user={"k": "ü"}))
    req = fake.seen[-1]
    assert req.raw_path == "/bkt/a%20b/c%2Bd%3F%23%25"
    assert req.headers["x-amz-meta-k"] == "=?UTF-8?B?w7w=?="
    assert req.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert SECRET not in str(dict(req.headers))

    fake.reply = lambda request: web.Response(body=b"<CopyObjectResult><ETag>&quot;e2&quot;</ETag>"
                                                   b"<LastModified>2024-01-02T03:04:05.000Z</LastModified>"
                                                   b"</CopyObjectResult>")
    result = await b.copy_from(_backend(fake), "s p+ü", "dst", None, if_match="e1")
    assert result.etag == "e2" and result.mtime == 1704164645.0
    req = fake.seen[-1]
    assert req.headers["x-amz-copy-source"] == "bkt/s%20p%2B%C3%BC"
    assert req.headers["x-amz-copy-source-if-match"] == '"e1"'
    assert req.headers["x-amz-metadata-directive"] == "COPY"
    await b.close()


async def test_sse_kms_write_the_store_does_not_confirm_is_deleted_and_failed(fake: FakeS3) -> None:
    """A store that ignores the SSE-KMS header must not keep the object in plaintext."""
    key_id = "0123abcd-0000-1111-2222-333344445555"

    def reply(request: web.Request) -> web.StreamResponse:
        if request.method == "PUT" and request.headers.get("x-amz-server-side-encryption") == "aws:kms":
            return web.Response(status=200, headers={"ETag": '"e"'})  # stored, but no SSE header echoed
        return web.Response(status=204)

    fake.reply = reply
    b = _backend(fake, sse_kms_key_id=key_id)
    with pytest.raises(VerificationError) as ei:
        await b.put("plain.txt", b"data", ObjectMeta())
    assert "did not confirm SSE-KMS" in ei.value.message and "was removed" in ei.value.message
    put, delete = fake.seen
    assert put.headers["x-amz-server-side-encryption-aws-kms-key-id"] == key_id
    assert (delete.method, delete.path) == ("DELETE", "/bkt/plain.txt")

    fake.seen.clear()
    fake.reply = lambda request: web.Response(
        status=200, headers={"ETag": '"e"', "x-amz-server-side-encryption": "aws:kms"})
    assert (await b.put("ok.txt", b"data", ObjectMeta())).etag == "e"
    assert [r.method for r in fake.seen] == ["PUT"]
    await b.close()


async def test_a_refusal_carries_the_store_reason_and_request_id_but_no_key(fake: FakeS3) -> None:
    """A 401 said only `HTTP 401`: the store's message and request id are what its operator can look up."""
    body = ('<?xml version="1.0"?><Error><Code>InvalidToken</Code><Message>The provided token is malformed'
            ' for AKIDFERRY &amp; co.</Message><RequestId>REQ-body-1</RequestId></Error>')
    fake.reply = lambda request: web.Response(status=401, body=body.encode(), content_type="application/xml",
                                              headers={"x-amz-request-id": "REQ-7F3A"})
    b = _backend(fake)
    try:
        with pytest.raises(FatalError) as ei:
            await b.read("k")
        msg = ei.value.message
        assert "HTTP 401 InvalidToken" in msg and "The provided token is malformed" in msg and "& co." in msg
        assert "request id REQ-7F3A" in msg
        assert "AKIDFERRY" not in msg
        _secret_free(ei.value)
        # A HEAD has no body: the request id still comes from the header.
        with pytest.raises(FatalError) as ei2:
            await b.head("k")
        assert "HTTP 401" in ei2.value.message and "request id REQ-7F3A" in ei2.value.message
    finally:
        await b.close()
