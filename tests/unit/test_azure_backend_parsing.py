"""AzureBackend without a server: List Blobs pages as Azure writes them, and every refusal mapped to the taxonomy."""

from __future__ import annotations

import base64

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from ferry.errors import (
    AccessError,
    ArchivedObjectError,
    DigestMismatchError,
    FerryError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
)
from ferry.storage.azure import AzureBackend, _block_id, _parse_block_id
from ferry.storage.azure_auth import account_credentials
from ferry.storage.http1 import HttpResponse

SAS = "sv=2023-11-03&sp=rl&sr=c&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"


def backend(prefix: str = "") -> AzureBackend:
    return AzureBackend(account_credentials("myaccount", sas=SAS), "photos", prefix)


PAGE = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<EnumerationResults ServiceEndpoint="https://myaccount.blob.core.windows.net/" ContainerName="photos">'
    b'<Prefix>p/</Prefix><MaxResults>3</MaxResults><Blobs><Blob><Name>p/a &amp; b.txt</Name><Properties>'
    b'<Creation-Time>Tue, 01 Dec 2026 10:00:00 GMT</Creation-Time>'
    b'<Last-Modified>Wed, 02 Dec 2026 10:00:00 GMT</Last-Modified><Etag>0x8DC0FFEE</Etag>'
    b'<Content-Length>5</Content-Length><Content-Type>text/plain</Content-Type>'
    b'<Content-MD5>XUFAKrxLKna5cZ2REBfFkg==</Content-MD5><BlobType>BlockBlob</BlobType>'
    b'<AccessTier>Cool</AccessTier><AccessTierInferred>false</AccessTierInferred></Properties>'
    b'<OrMetadata /></Blob><Blob><Name Encoded="true">p/ctl%01char</Name><Properties>'
    b'<Last-Modified>Wed, 02 Dec 2026 10:00:01 GMT</Last-Modified><Etag>"0x8DBEEF"</Etag>'
    b'<Content-Length>17179869184</Content-Length><BlobType>BlockBlob</BlobType>'
    b'<AccessTier>Archive</AccessTier><ArchiveStatus>rehydrate-pending-to-hot</ArchiveStatus></Properties>'
    b'</Blob><Blob><Name>p/cold</Name><Properties>'
    b'<Last-Modified>Wed, 02 Dec 2026 10:00:02 GMT</Last-Modified><Etag>0x8D1</Etag>'
    b'<Content-Length>0</Content-Length><AccessTier>Cold</AccessTier></Properties></Blob></Blobs>'
    b'<NextMarker>2!96!MDAwMDE2IXAvY29sZCEwMDAwMjgh</NextMarker></EnumerationResults>'
)


def test_a_list_blobs_page_parses_names_tiers_md5_and_the_marker() -> None:
    infos, marker = backend("p/")._parse_listing(PAGE, len("p/"))
    assert marker == "2!96!MDAwMDE2IXAvY29sZCEwMDAwMjgh"
    assert [(i.key, i.size, i.etag, i.storage_class) for i in infos] == [
        ("a & b.txt", 5, "0x8DC0FFEE", "IA"), ("ctl\x01char", 16 * 1024 ** 3, "0x8DBEEF", "ARCHIVE"),
        ("cold", 0, "0x8D1", "IA")]
    assert infos[0].md5 == base64.b64decode("XUFAKrxLKna5cZ2REBfFkg==").hex() and infos[1].md5 is None
    assert infos[0].mtime == 1796205600.0


def test_the_last_page_has_no_marker() -> None:
    last = (b'<?xml version="1.0"?><EnumerationResults><Blobs /><NextMarker /></EnumerationResults>')
    assert backend()._parse_listing(last, 0) == ([], None)


def refusal(status: int, code: str | None, message: str = "", headers: dict[str, str] | None = None) -> HttpResponse:
    h: CIMultiDict[str] = CIMultiDict(headers or {})
    if code:
        h["x-ms-error-code"] = code
    h["x-ms-request-id"] = "0f1e2d3c-0000-0000-0000-000000000000"
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}\nRequestId:x\nTime:y</Message>" \
           "</Error>" if code else b""
    return HttpResponse(status, CIMultiDictProxy(h), body.encode() if isinstance(body, str) else body)


@pytest.mark.parametrize("status, code, kind", [
    (409, "BlobArchived", ArchivedObjectError),
    (409, "BlobBeingRehydrated", ArchivedObjectError),
    (412, "ConditionNotMet", SourceChangedError),
    (412, "SourceConditionNotMet", SourceChangedError),
    (400, "Md5Mismatch", DigestMismatchError),
    (503, "ServerBusy", TransientError),
    (500, "OperationTimedOut", TransientError),
    (404, "BlobNotFound", NotFoundError),
    (404, None, NotFoundError),  # a HEAD's refusal has no body
    (400, "InvalidMetadata", PermanentError),
    (403, "AuthenticationFailed", AccessError),
    (404, "ContainerNotFound", AccessError),
])
def test_refusals_map_to_the_taxonomy(status: int, code: str | None, kind: type[FerryError]) -> None:
    err = backend()._error("read", "k", refusal(status, code, "it went wrong", {"Retry-After": "3"}))
    assert type(err) is kind
    assert err.http_status == status and f"HTTP {status}" in err.message
    if isinstance(err, TransientError) and not isinstance(err, DigestMismatchError):
        assert err.retry_after == 3.0


def test_access_errors_say_what_to_fix_and_carry_no_sas() -> None:
    b = backend()
    auth = b._error("read", "k", refusal(403, "AuthenticationFailed", f"Signature did not match. sig in {SAS}"))
    assert isinstance(auth, AccessError) and "secret key does not belong" in auth.fix("src_ak", "src_sk")
    assert "c2VjcmV0" not in auth.message and "request id 0f1e2d3c" in auth.message
    gone = b._error("list", None, refusal(404, "ContainerNotFound", "The specified container does not exist."))
    assert isinstance(gone, AccessError) and "bucket does not exist" in gone.fix("src_ak", "src_sk")
    write = b._error("put", "k", refusal(403, "AuthorizationPermissionMismatch"))
    assert isinstance(write, AccessError) and write.writing
    assert SAS not in repr(b.credentials) and "sig" not in repr(b)


def test_block_ids_carry_the_part_and_its_md5_at_one_length() -> None:
    ids = [_block_id("0123456789abcdef", n, "d41d8cd98f00b204e9800998ecf8427e") for n in (1, 2, 50_000)]
    assert len({len(i) for i in ids}) == 1
    assert _parse_block_id(ids[2]) == ("0123456789abcdef", 50_000, "d41d8cd98f00b204e9800998ecf8427e")
    assert _parse_block_id("bm90IG91cnM=") is None  # "not ours": another tool's block
