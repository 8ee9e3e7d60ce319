"""AzureBackend: one container (+ prefix) of Azure Blob Storage, raw REST on Ferry's HTTP/1.1 client.

Why raw REST and not `azure-storage-blob` (aio) or obstore: the measured reason is in bench/azure_clients.py and
the commit that added this module. In short, the SDK's pipeline costs several times Ferry's CPU per small
blob and cannot hand a body to the kernel move (storage/splice.py); obstore reports no access tier, archive
status or Content-MD5 in its listing and has no Set Blob Tier. The calls needed are few: List Blobs, Get Blob
(Properties), Put Blob, Put Block / Put Block List, Get Block List, Copy Blob, Set Blob Properties, Set Blob
Tier, Delete Blob.

Multipart uploads map onto blocks: the upload id is a random nonce plus the metadata the final Put Block List
must set (Azure has no upload object to hold it), each part is a block whose id carries the nonce, the part
number and the part's MD5 (so `list_parts` can report what `upload_part` did), and completing commits them.
User metadata names must be C# identifiers in Azure; others (`x-trace`) are stored under a reversible
`ferryx_` encoding. Azure has no `Expires` property: it travels as metadata (`ferry_expires`), as the CRC-64
Ferry computed does (`ferry_crc64`).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from multidict import CIMultiDictProxy

from ferry.errors import (
    AccessError,
    ArchivedObjectError,
    DigestMismatchError,
    FatalError,
    FerryError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
    UsageError,
)
from ferry.objects import ObjectInfo, ObjectMeta, PartInfo, PutResult
from ferry.storage.azure_auth import (
    API_VERSION,
    AzureCredentials,
    SharedKeySigner,
    account_credentials,
    encode_query,
    http_date,
    parse_connection_string,
    redact,
    sas_params,
)
from ferry.storage.base import Backend, Capabilities
from ferry.storage.http1 import (
    Body,
    Http1Pool,
    HttpConnectError,
    HttpError,
    HttpResponse,
    HttpTimeout,
    StreamBody,
    pass_splice,
)
from ferry.storage.pressure import retry_after_seconds
from ferry.storage.profiles import ARCHIVE_CLASSES, Profile, get_profile
from ferry.storage.s3 import _decode_meta, _encode_meta, _header_value, _http_to_epoch, _xml_unescape
from ferry.storage.sigv4 import quote_path
from ferry.storage.stores import StoreAt, StoreKeys, store_profile

_META = "x-ms-meta-"
CRC64_META = "ferry_crc64"
EXPIRES_META = "ferry_expires"
_ENCODED_META = "ferryx_"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE_RE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]{1,1000})</Message>")
_UNSAFE_ID_RE = re.compile(r"[^A-Za-z0-9._:/+=-]")
_BLOB_FIELD_RE = re.compile(
    rb"<(Name|Last-Modified|Etag|Content-Length|Content-MD5|AccessTier|ArchiveStatus)( Encoded=\"true\")?>([^<]*)</")
_TRANSIENT_CODES = frozenset({"ServerBusy", "OperationTimedOut", "InternalError", "ServiceUnavailable"})
# Refused keys, permissions or containers: only the user can fix them. The S3 code beside each lets
# AccessError.fix() say what to change.
_ACCESS_CODES = {
    "AuthenticationFailed": "SignatureDoesNotMatch", "AuthorizationFailure": "AccessDenied",
    "AuthorizationPermissionMismatch": "AccessDenied", "AuthorizationResourceTypeMismatch": "AccessDenied",
    "AuthorizationServiceMismatch": "AccessDenied", "AuthorizationProtocolMismatch": "AccessDenied",
    "AuthorizationSourceIPMismatch": "AccessDenied", "InsufficientAccountPermissions": "AccessDenied",
    "AccountIsDisabled": "AccountProblem", "ContainerNotFound": "NoSuchBucket", "ContainerDisabled": "AccessDenied",
    "InvalidAuthenticationInfo": "SignatureDoesNotMatch", "NoAuthenticationInformation": "AccessDenied",
}
_WRITE_OPS = frozenset({"put", "put block", "put block list", "copy", "delete", "set properties", "set metadata",
                        "set tier"})
_BLOCK_NONCE = 16  # hex characters of an upload's nonce; every block id of a blob must have one length


class AzureBackend:
    """One container (optionally under a prefix) of one storage account.

    Requests are signed with SharedKey, or carry the SAS token, and go through one keep-alive pool per event loop
    (`http1.Http1Pool`), like S3Backend's, so a Get Blob's body can be moved to an S3 PUT in the kernel.
    """

    _list_page_size = 5000  # blobs per List Blobs request (the service's maximum; tests lower it)

    def __init__(
        self, credentials: AzureCredentials, container: str, prefix: str = "", *, profile: Profile | str = "azure",
        max_connections: int = 256, connect_timeout: float = 10.0, read_timeout: float = 120.0,
        rehydrate_tier: str = "Hot", rehydrate_priority: str = "Standard",
    ) -> None:
        self.profile = profile if isinstance(profile, Profile) else get_profile(profile)
        if container != "$root":
            self.profile.check_bucket(container)
        self.credentials = credentials
        self.account = credentials.account
        self.container = container
        self.prefix = prefix
        parts = urlsplit(credentials.endpoint)
        self.endpoint = credentials.endpoint
        self._scheme = parts.scheme
        self._hostname = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._netloc = parts.netloc
        self._base = parts.path.rstrip("/")  # Azurite's `/devstoreaccount1`; empty on the public cloud
        self._signer = SharedKeySigner(credentials.account, credentials.key) if credentials.key else None
        self._sas = sas_params(credentials.sas) if credentials.sas else []
        self._sas_raw = credentials.sas
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool: Http1Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self.rehydrate_tier = rehydrate_tier
        self.rehydrate_priority = rehydrate_priority
        group = hashlib.sha256(f"{self.endpoint}\0{self.account}".encode()).hexdigest()[:16]
        self._capabilities = self.profile.capabilities(copy_group=f"azure:{group}")

    # -- identity ---------------------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def name(self) -> str:
        return f"azure://{self.container}/{self.prefix}"

    def __repr__(self) -> str:
        return f"AzureBackend({self.endpoint!r}, container={self.container!r}, prefix={self.prefix!r})"

    # -- transport --------------------------------------------------------------------------------
    def _get_pool(self) -> Http1Pool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            self._pool = Http1Pool(self._scheme, self._hostname, self._port, limit=self._max_connections,
                                   connect_timeout=self._connect_timeout, read_timeout=self._read_timeout,
                                   keepalive=4.0)  # Azurite closes idle connections after 5 s
            self._pool_loop = loop
        return self._pool

    def _path(self, key: str | None, container: str | None = None) -> str:
        path = f"{self._base}/{container or self.container}"
        return path if key is None else f"{path}/{_quote_key(self.prefix + key)}"

    def blob_url(self, key: str) -> str:
        """The blob's URL, with the SAS token when that is the credential (Copy Blob's source)."""
        url = f"{self._scheme}://{self._netloc}{self._path(key)}"
        return f"{url}?{encode_query(self._sas)}" if self._sas else url

    def _signed(self, method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str] | None,
                length: int) -> tuple[str, dict[str, str]]:
        signed = {"x-ms-date": http_date(), "x-ms-version": API_VERSION, **(headers or {})}
        if self._signer is not None:
            signed["Authorization"] = self._signer.authorization(method, path, query, signed, length)
            qs = encode_query(query)
        else:
            qs = encode_query([*query, *self._sas])
        return (f"{path}?{qs}" if qs else path), signed

    async def _send(
        self, method: str, op: str, key: str | None, *, query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None, data: Body | None = None, ok: tuple[int, ...] = (200,),
        container: str | None = None,
    ) -> HttpResponse:
        """Sign and send one request; raise the mapped ferry error unless the status is in `ok`."""
        length = data.length if isinstance(data, StreamBody) else len(data) if data is not None else 0
        target, signed = self._signed(method, self._path(key, container), query, headers, length)
        failure: FerryError
        try:
            result = await self._get_pool().request(method, target, self._netloc, signed, data)
        except (HttpError, ValueError) as e:
            failure = self._failure(op, key, e)
        else:
            if result.status not in ok:
                raise self._error(op, key, result)
            return result
        raise failure  # outside the except block: no exception quoting a header stays attached

    async def _send_stream(self, op: str, key: str, headers: Mapping[str, str]
                           ) -> tuple[CIMultiDictProxy[str], AsyncGenerator[bytes, None]]:
        target, signed = self._signed("GET", self._path(key), (), headers, 0)
        failure: FerryError
        try:
            result = await self._get_pool().stream("GET", target, self._netloc, signed)
            if result.status != 200:
                whole = HttpResponse(result.status, result.headers, b"".join([p async for p in result.body]))
                raise self._error(op, key, whole)
        except (HttpError, ValueError) as e:
            failure = self._failure(op, key, e)
        else:
            pieces = self._pieces(op, key, result.body)
            pass_splice(pieces, result.body)
            return result.headers, pieces
        raise failure

    async def _pieces(self, op: str, key: str, body: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        failure: FerryError | None = None
        async with contextlib.aclosing(body):
            try:
                async for piece in body:
                    yield piece
            except HttpError as e:
                failure = self._failure(op, key, e)
        if failure is not None:
            raise failure

    def _where(self, key: str | None) -> str:
        return f"{self.name}{key}" if key is not None else self.name

    def _failure(self, op: str, key: str | None, exc: Exception) -> FerryError:
        if isinstance(exc, HttpConnectError):
            if exc.certificate:
                return FatalError(f"{op} {self._where(key)}: TLS certificate rejected by {self._hostname}", key=key)
            return FatalError(f"{op} {self._where(key)}: cannot connect to {self._hostname}:{self._port} "
                              f"({exc.reason})", key=key)
        if isinstance(exc, HttpTimeout):
            return TransientError(f"{op} {self._where(key)}: timed out", key=key)
        if isinstance(exc, HttpError):
            return TransientError(f"{op} {self._where(key)}: {exc}", key=key)
        return PermanentError(f"{op} {self._where(key)}: a header value holds a line break", key=key)

    def _error(self, op: str, key: str | None, resp: HttpResponse) -> FerryError:
        """The ferry error for a refused request: op, key, status and Azure's error code, and (unless a plain
        404 or 412) the service's message and request id, with any credential cut out."""
        status = resp.status
        code = resp.headers.get("x-ms-error-code")
        if not code:
            m = _CODE_RE.search(resp.body)
            code = m.group(1).decode("ascii", "replace") if m else None
        msg = f"{op} {self._where(key)}: HTTP {status}" + (f" {code}" if code else "")
        if status not in (404, 412):
            msg += self._detail(resp)
        err = self._classify(op, key, status, code, msg, resp)
        err.http_status = status
        if not isinstance(err, AccessError):
            err.s3_code = code
        return err

    def _detail(self, resp: HttpResponse) -> str:
        m = _MESSAGE_RE.search(resp.body)
        # Azure's message repeats the request id and time on lines of their own; the first line is the message.
        text = " ".join(_xml_unescape(m.group(1)).split("\n")[0].split())[:200] if m else ""
        text = redact(text, self._sas_raw)
        rid = _UNSAFE_ID_RE.sub("", resp.headers.get("x-ms-request-id", ""))[:100]
        parts = [p for p in (text, f"request id {rid}" if rid else "") if p]
        return f" ({'; '.join(parts)})" if parts else ""

    def _classify(self, op: str, key: str | None, status: int, code: str | None, msg: str,
                  resp: HttpResponse) -> FerryError:
        if code in ("Md5Mismatch", "InvalidMd5", "Crc64Mismatch"):
            return DigestMismatchError(msg, key=key)
        if status in (429, 500, 502, 503, 504) or code in _TRANSIENT_CODES:
            return TransientError(msg, key=key, retry_after=retry_after_seconds(resp.headers))
        if code == "BlobArchived":
            return ArchivedObjectError(msg + " (archived; rehydrate it first)", key=key)
        if code in _ACCESS_CODES or status in (401, 403):
            s3_code = _ACCESS_CODES.get(code or "", "AccessDenied")
            return AccessError(msg, key=key, s3_code=s3_code, writing=op in _WRITE_OPS, origin=self)
        if status == 404:
            return NotFoundError(msg, key=key)
        if status == 412 or code in ("ConditionNotMet", "SourceConditionNotMet"):
            return SourceChangedError(msg, key=key)
        if code == "BlobBeingRehydrated":
            return ArchivedObjectError(msg + " (being rehydrated)", key=key)
        if status in (301, 307, 308) or code == "UnsupportedHeader":
            return FatalError(msg, key=key)
        return PermanentError(msg, key=key)

    # -- listing ----------------------------------------------------------------------------------
    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Every blob under `prefix`, in the service's order (declared unordered: see profiles.json). List
        Blobs has no start-after and its marker is opaque, so a resumed listing reads from the start and skips
        the keys up to `start_after` in UTF-8 byte order (a request per 5,000 keys; copying costs far more)."""
        full_prefix = self.prefix + prefix
        cut = len(self.prefix)
        marker: str | None = None
        after = (self.prefix + start_after).encode() if start_after is not None else None
        while True:
            query = [("restype", "container"), ("comp", "list"), ("maxresults", str(self._list_page_size))]
            if full_prefix:
                query.append(("prefix", full_prefix))
            if marker:
                query.append(("marker", marker))
            resp = await self._send("GET", "list", None, query=query)
            infos, marker = self._parse_listing(resp.body, cut)
            for info in infos:
                if after is not None and (self.prefix + info.key).encode() <= after:
                    continue
                yield info
            if not marker:
                return

    def _parse_listing(self, body: bytes, cut: int) -> tuple[builtins.list[ObjectInfo], str | None]:
        """The blobs of one List Blobs page and the next marker; a regex scan of the flat `<Blob>` records."""
        chunks = body.split(b"<Blob>")
        if b"<EnumerationResults" not in chunks[0]:
            raise FatalError(f"list {self.name}: unparsable listing XML")
        out: builtins.list[ObjectInfo] = []
        for chunk in chunks[1:]:
            fields = {name: (enc, value) for name, enc, value in _BLOB_FIELD_RE.findall(chunk)}
            enc, raw = fields.get(b"Name", (b"", None))  # type: ignore[assignment]
            if raw is None:
                raise FatalError(f"list {self.name}: a listed blob has no name")
            key = _xml_unescape(raw)
            if enc:
                key = unquote(key)  # names with characters XML 1.0 cannot carry come percent-encoded
            md5_b64 = fields.get(b"Content-MD5", (b"", b""))[1]
            tier = fields.get(b"AccessTier", (b"", b""))[1]
            out.append(ObjectInfo(
                key=key[cut:],
                size=int(fields.get(b"Content-Length", (b"", b"0"))[1] or 0),
                mtime=_http_to_epoch(fields.get(b"Last-Modified", (b"", b""))[1].decode()),
                etag=fields.get(b"Etag", (b"", b""))[1].decode().strip('"') or None,
                storage_class=self._canonical(tier.decode() or "Hot"),
                md5=_md5_hex(md5_b64.decode()) if md5_b64 else None,
            ))
        tail = chunks[-1]
        m = re.search(rb"<NextMarker>([^<]*)</NextMarker>", tail)
        return out, (_xml_unescape(m.group(1)) if m and m.group(1) else None)

    def _canonical(self, tier: str | None) -> str | None:
        return self.profile.canonical_class(tier) if tier else None

    # -- reads ------------------------------------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo:
        resp = await self._send("HEAD", "head", key)
        return self._info(key, resp.headers, None)

    async def read(self, key: str, *, offset: int = 0, length: int | None = None,
                   if_match: str | None = None) -> bytes:
        if length == 0:
            return b""
        headers: dict[str, str] = {}
        if offset or length is not None:
            headers["x-ms-range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        if if_match:
            headers["If-Match"] = _quote_etag(if_match)
        try:
            resp = await self._send("GET", "read", key, headers=headers, ok=(200, 206))
        except PermanentError as e:
            if e.http_status == 416 and "x-ms-range" in headers:
                # A range starting at (or past) the end: an empty object's "rest" is empty, as in S3.
                info = await self.head(key)
                if if_match and info.etag != if_match.strip('"'):
                    raise SourceChangedError(f"read {self._where(key)}: the blob changed", key=key) from None
                if offset >= info.size:
                    return b""
            raise
        if resp.status == 200 and (offset or length is not None):
            return resp.body[offset: None if length is None else offset + length]
        return resp.body

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        headers = {"If-Match": _quote_etag(if_match)} if if_match else {}
        resp = await self._send("GET", "read", key, headers=headers)
        return self._info(key, resp.headers, len(resp.body)), resp.body

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        return None  # a block blob's ETag is no digest of its blocks; its Content-MD5, where set, checks it

    async def read_stream(self, key: str, *, if_match: str | None = None
                          ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        headers = {"If-Match": _quote_etag(if_match)} if if_match else {}
        got, pieces = await self._send_stream("read", key, headers)
        return self._info(key, got, None), pieces

    def _info(self, key: str, headers: Mapping[str, str], size: int | None) -> ObjectInfo:
        h = {name.lower(): value for name, value in headers.items()}
        user: dict[str, str] = {}
        crc64: int | None = None
        expires: str | None = None
        for lname, value in h.items():
            if not lname.startswith(_META):
                continue
            mkey = lname[len(_META):]
            if mkey == CRC64_META:
                with contextlib.suppress(ValueError):
                    crc64 = int(value.strip())
            elif mkey == EXPIRES_META:
                expires = _decode_meta(value)
            else:
                user[_decode_meta_name(mkey)] = _decode_meta(value)
        meta = ObjectMeta(
            content_type=h.get("content-type"), cache_control=h.get("cache-control"),
            content_disposition=h.get("content-disposition"), content_encoding=h.get("content-encoding"),
            content_language=h.get("content-language"), expires=expires, user=user,
        )
        # Content-MD5 of a whole answer is the blob's; a ranged one names it in x-ms-blob-content-md5.
        md5 = h.get("x-ms-blob-content-md5") or (h.get("content-md5") if "content-range" not in h else None)
        etag = (h.get("etag") or "").strip('"')
        return ObjectInfo(
            key=key, size=size if size is not None else int(h.get("content-length") or 0),
            mtime=_http_to_epoch(h.get("last-modified")), etag=etag or None,
            storage_class=self._canonical(h.get("x-ms-access-tier") or "Hot"), crc64=crc64, meta=meta,
            md5=_md5_hex(md5) if md5 else None,
        )

    # -- writes -----------------------------------------------------------------------------------
    def _tier(self, storage_class: str | None) -> str | None:
        return self.profile.vendor_class(storage_class) if storage_class else None

    def _property_headers(self, meta: ObjectMeta | None) -> dict[str, str]:
        """The Content-* properties as Put Blob, Put Block List and Set Blob Properties take them."""
        h: dict[str, str] = {}
        if meta is None:
            return h
        for name, value in (("content-type", meta.content_type), ("cache-control", meta.cache_control),
                            ("content-disposition", meta.content_disposition),
                            ("content-encoding", meta.content_encoding),
                            ("content-language", meta.content_language)):
            if value:
                h[f"x-ms-blob-{name}"] = _header_value(value)
        h.setdefault("x-ms-blob-content-type", "application/octet-stream")
        return h

    def _meta_headers(self, meta: ObjectMeta | None, crc64: int | None) -> dict[str, str]:
        h: dict[str, str] = {}
        if meta is not None:
            for mkey, value in meta.user.items():
                name = _encode_meta_name(mkey)
                if name.lower() not in (CRC64_META, EXPIRES_META):
                    h[_META + name] = _encode_meta(value)
            if meta.expires:
                h[_META + EXPIRES_META] = _encode_meta(meta.expires)
        if crc64 is not None:
            h[_META + CRC64_META] = str(crc64)
        return h

    def _put_headers(self, meta: ObjectMeta | None, storage_class: str | None, crc64: int | None
                     ) -> dict[str, str]:
        h = {"x-ms-blob-type": "BlockBlob", **self._property_headers(meta), **self._meta_headers(meta, crc64)}
        tier = self._tier(storage_class)
        if tier:
            h["x-ms-access-tier"] = tier
        return h

    async def put(self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
                  crc64: int | None = None) -> PutResult:
        self._check_key(key)
        resp = await self._send("PUT", "put", key, headers=self._put_headers(meta, storage_class, crc64), data=data,
                                ok=(201,))
        return PutResult(etag=_etag(resp.headers), mtime=_http_to_epoch(resp.headers.get("Last-Modified")))

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        self._check_key(key)
        headers = self._put_headers(meta, storage_class, crc64)
        if content_md5 is not None:
            headers["Content-MD5"] = base64.b64encode(bytes.fromhex(content_md5)).decode("ascii")
        resp = await self._send("PUT", "put", key, headers=headers, data=StreamBody(size, body()), ok=(201,))
        return PutResult(etag=_etag(resp.headers), mtime=_http_to_epoch(resp.headers.get("Last-Modified")))

    def _check_key(self, key: str) -> None:
        full = self.prefix + key
        if len(full) > self._capabilities.max_key_bytes:
            raise PermanentError(f"put {self._where(key)}: Azure blob names have at most 1024 characters", key=key)

    async def create_multipart(self, key: str, meta: ObjectMeta, *, storage_class: str | None = None,
                               crc64: int | None = None) -> str:
        self._check_key(key)
        headers = {**self._property_headers(meta), **self._meta_headers(meta, crc64)}
        tier = self._tier(storage_class)
        if tier:
            headers["x-ms-access-tier"] = tier
        # The headers Put Block List will send, carried in the upload id: Azure keeps nothing for an upload.
        blob = base64.urlsafe_b64encode(json.dumps(headers, separators=(",", ":")).encode()).decode("ascii")
        return f"{secrets.token_hex(_BLOCK_NONCE // 2)}.{blob}"

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *,
                          crc32c: int | None = None) -> PartInfo:
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        block = _block_id(_nonce(upload_id), part_number, digest.hex())
        # Content-MD5 has the service check the block as it arrives.
        await self._send("PUT", "put block", key, query=[("comp", "block"), ("blockid", block)], data=data,
                         headers={"Content-MD5": base64.b64encode(digest).decode("ascii")}, ok=(201,))
        return PartInfo(part_number=part_number, etag=digest.hex(), size=len(data))

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        """This upload's blocks not yet committed; NotFoundError when there are none (completed or aborted, or no
        part was sent yet, when starting the upload afresh costs nothing)."""
        nonce = _nonce(upload_id)
        resp = await self._send("GET", "list parts", key, query=[("comp", "blocklist"),
                                                                  ("blocklisttype", "uncommitted")])
        uncommitted = resp.body.split(b"<UncommittedBlocks>", 1)[-1] if b"<UncommittedBlocks>" in resp.body else b""
        found: dict[int, builtins.list[PartInfo]] = {}
        for name, size in re.findall(rb"<Block><Name>([^<]*)</Name><Size>(\d+)</Size></Block>", uncommitted):
            parsed = _parse_block_id(name.decode("ascii", "replace"))
            if parsed is None or parsed[0] != nonce:
                continue
            found.setdefault(parsed[1], []).append(PartInfo(parsed[1], parsed[2], int(size)))
        if not found:
            raise NotFoundError(f"list parts {self._where(key)}: no upload with that id", key=key)
        # A part sent twice with different bytes is two blocks, and nothing tells which is the later: leaving
        # it out makes a resuming copier send it again, which is always safe.
        return [ps[0] for n, ps in sorted(found.items()) if len(ps) == 1]

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        nonce = _nonce(upload_id)
        try:
            headers: dict[str, str] = json.loads(base64.urlsafe_b64decode(upload_id.split(".", 1)[1]))
        except (IndexError, ValueError):
            raise PermanentError(f"complete multipart {self._where(key)}: not an Azure upload id", key=key) from None
        ids = "".join(f"<Latest>{_block_id(nonce, p.part_number, p.etag.strip(chr(34)))}</Latest>"
                      for p in sorted(parts, key=lambda p: p.part_number))
        data = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{ids}</BlockList>'.encode()
        resp = await self._send("PUT", "put block list", key, query=[("comp", "blocklist")], headers=headers,
                                data=data, ok=(201,))
        return PutResult(etag=_etag(resp.headers), mtime=_http_to_epoch(resp.headers.get("Last-Modified")))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Azure cannot drop uncommitted blocks alone (it collects them after a week). Where no blob exists,
        committing an empty list drops them, and the empty blob is then deleted; an existing blob is left
        as it is (committing would replace it)."""
        try:
            await self._send("PUT", "abort multipart", key, query=[("comp", "blocklist")],
                             headers={"If-None-Match": "*"},
                             data=b'<?xml version="1.0" encoding="utf-8"?><BlockList></BlockList>', ok=(201,))
        except (SourceChangedError, PermanentError) as e:
            if e.http_status in (409, 412):
                return  # a blob is there: leave it and its uncommitted blocks be
            raise
        await self.delete(key)

    async def copy_from(
        self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
        if_match: str | None = None, storage_class: str | None = None, crc64: int | None = None,
    ) -> PutResult:
        """Copy Blob within the account (waiting for it to finish); given `meta` replaces the metadata and the
        Content-* properties (a Set Blob Properties after the copy)."""
        if not isinstance(source, AzureBackend) or source.capabilities.copy_group != self._capabilities.copy_group:
            raise UsageError(f"copy to {self.name}: server-side copy needs a source in the same storage account")
        headers = {"x-ms-copy-source": source.blob_url(src_key)}
        replaced = self._meta_headers(meta, crc64) if meta is not None else {}
        headers.update(replaced)
        if if_match:
            headers["x-ms-source-if-match"] = _quote_etag(if_match)
        tier = self._tier(storage_class)
        if tier:
            headers["x-ms-access-tier"] = tier
        try:
            resp = await self._send("PUT", "copy", key, headers=headers, ok=(202, 201))
        except NotFoundError as e:
            if e.s3_code == "CannotVerifyCopySource" or e.s3_code == "BlobNotFound":
                raise NotFoundError(f"copy {source._where(src_key)}: the source does not exist", key=src_key) from None
            raise
        status = resp.headers.get("x-ms-copy-status", "success")
        delay = 0.05
        while status == "pending":
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            head = await self._send("HEAD", "copy", key)
            status = head.headers.get("x-ms-copy-status", "success")
            resp = head
        if status != "success":
            raise TransientError(f"copy {self._where(key)}: the copy ended {status}", key=key)
        if meta is not None:
            if not replaced:
                # Copy Blob keeps the source's metadata unless some is given; none given means none wanted.
                await self._send("PUT", "set metadata", key, query=[("comp", "metadata")])
            props = self._property_headers(meta)
            resp = await self._send("PUT", "set properties", key, query=[("comp", "properties")], headers=props)
        return PutResult(etag=_etag(resp.headers), mtime=_http_to_epoch(resp.headers.get("Last-Modified")))

    async def delete(self, key: str) -> None:
        try:
            await self._send("DELETE", "delete", key, headers={"x-ms-delete-snapshots": "include"}, ok=(202,))
        except NotFoundError:
            return

    async def restore(self, key: str, days: int) -> None:
        """Rehydrate an archived blob (Set Blob Tier to `rehydrate_tier`). `days` has no meaning here: a
        rehydrated blob stays in its new tier. A no-op for a blob that is not archived or is already being
        rehydrated, so a Cool blob is never moved to Hot by it."""
        info = await self._send("HEAD", "restore", key)
        tier = self._canonical(info.headers.get("x-ms-access-tier"))
        if tier not in ARCHIVE_CLASSES or info.headers.get("x-ms-archive-status"):
            return
        try:
            await self._send("PUT", "set tier", key, query=[("comp", "tier")], ok=(200, 202), headers={
                "x-ms-access-tier": self.rehydrate_tier, "x-ms-rehydrate-priority": self.rehydrate_priority})
        except PermanentError as e:
            if e.s3_code == "BlobBeingRehydrated":
                return
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


# Hosts of Azure's public clouds a caller's connection string may point at (public, China, US Government); any
# other endpoint is the operator's to map (FERRY_ENDPOINT_OVERRIDES), or an API caller could aim Ferry inward.
_PUBLIC_SUFFIXES = (".blob.core.windows.net", ".blob.core.chinacloudapi.cn", ".blob.core.usgovcloudapi.net")


def open_at(at: StoreAt, keys: StoreKeys) -> AzureBackend:
    """The container `at.bucket` for a task (storage/stores.py): the account name and key as `ak`/`sk`, or a
    connection string. The endpoint is the account's on the public cloud (`at.endpoint` names the service's
    host), or the operator's override for the region, which wins over a connection string's."""
    profile = store_profile(at)
    if keys.connection_string:
        creds = parse_connection_string(keys.connection_string)
        if at.from_override and at.endpoint:
            creds = dataclasses.replace(creds, endpoint=at.endpoint)
        elif not (urlsplit(creds.endpoint).hostname or "").endswith(_PUBLIC_SUFFIXES):
            raise UsageError("the connection string's blob endpoint is not one of Azure's public endpoints")
    elif keys.ak and keys.sk:
        if at.from_override and at.endpoint:
            endpoint = at.endpoint
        else:
            service = urlsplit(at.endpoint or profile.endpoint(at.region))
            endpoint = f"{service.scheme or 'https'}://{keys.ak}.{service.hostname}"
        creds = account_credentials(keys.ak, key=keys.sk, endpoint=endpoint)
    else:
        raise UsageError(f"{profile.title} needs the account name and key (ak and sk) or a connection string")
    return AzureBackend(creds, at.bucket, at.prefix, profile=profile)


def _quote_key(key: str) -> str:
    """A blob name as a URL path: every byte but the unreserved set and `/` encoded, and each `.` or `..`
    segment too, so that no proxy or server resolves it (the service decodes them back)."""
    path = quote_path(key)
    if "." not in path:
        return path
    return "/".join("%2E" * len(seg) if seg in (".", "..") else seg for seg in path.split("/"))


def _quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') or etag == "*" else f'"{etag}"'


def _etag(h: Mapping[str, str]) -> str | None:
    v = h.get("ETag")
    return v.strip('"') if v else None


def _md5_hex(b64: str) -> str | None:
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 16 else None


def _nonce(upload_id: str) -> str:
    nonce = upload_id.split(".", 1)[0]
    if not re.fullmatch(rf"[0-9a-f]{{{_BLOCK_NONCE}}}", nonce):
        raise PermanentError("not an Azure upload id")
    return nonce


def _block_id(nonce: str, part_number: int, md5_hex: str) -> str:
    # One length for every block of a blob, as Azure requires: 16 + 1 + 5 + 1 + 32 characters.
    return base64.b64encode(f"{nonce}-{part_number:05d}-{md5_hex}".encode("ascii")).decode("ascii")


def _parse_block_id(block: str) -> tuple[str, int, str] | None:
    try:
        nonce, number, md5_hex = base64.b64decode(block, validate=True).decode("ascii").split("-")
        return nonce, int(number), md5_hex
    except ValueError:
        return None


def _encode_meta_name(name: str) -> str:
    """A metadata name Azure accepts (a C# identifier): valid names unchanged, others as `ferryx_` and the name
    with each byte outside [a-z0-9] written `_xx` (hex)."""
    if _IDENTIFIER.fullmatch(name) and not name.lower().startswith(_ENCODED_META):
        return name
    out = []
    for byte in name.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if ch.isascii() and (ch.isdigit() or "a" <= ch <= "z") else f"_{byte:02x}")
    return _ENCODED_META + "".join(out)


def _decode_meta_name(name: str) -> str:
    if not name.lower().startswith(_ENCODED_META):
        return name
    raw = bytearray()
    body, i = name[len(_ENCODED_META):], 0
    while i < len(body):
        if body[i] == "_" and i + 2 < len(body) + 1:
            try:
                raw.append(int(body[i + 1:i + 3], 16))
                i += 3
                continue
            except ValueError:
                return name
        raw += body[i].encode("ascii", "replace")
        i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return name


if TYPE_CHECKING:
    def _conforms(b: AzureBackend) -> Backend:
        return b

