"""Google Cloud Storage over its JSON API (`/storage/v1`), on Ferry's own HTTP client, with service-account tokens.

Why the JSON API and not the S3-interoperable XML one: OMS authenticates Google with a service-account key file
(`json_auth_file`), which only OAuth2 bearer tokens use; HMAC keys are a different credential the user would
have to create. The JSON API also reports what verification needs on every object: `md5Hash` (absent for
composite objects) and `crc32c`, as the resource's fields and as `x-goog-hash` on downloads.

Mapping to the Backend protocol:
- an object's `etag` here is its *generation* (a number that changes with every write of the name); a read
  pinned to it sends `ifGenerationMatch`, so a rewritten object is a SourceChangedError, never mixed bytes;
- `md5`/`crc32c` come from `md5Hash`/`crc32c` (base64, big-endian for the CRC) or the `x-goog-hash` header;
- a download sends `Accept-Encoding: gzip`, so an object stored gzip-encoded comes as stored (the bytes its
  hashes are of), not decompressed on the way;
- storage classes map through the `google` profile (storage/profiles.json); nothing needs a restore;
- writes: `put` is one multipart/related upload, `put_stream` one resumable session fed by a single streamed
  PUT (its `content_md5` sent as `md5Hash`, which Google checks), `copy_from` is `rewriteTo` (repeated with its
  token until done). The JSON API has no part uploads, so `capabilities.multipart` is False and the engine
  streams every object with `put_stream`.

A download's answer carries the object's info in `x-goog-*` headers (generation, stored length, hashes, class);
a server that leaves them out (the `gcp-storage-emulator`) gets the object's resource fetched beside it, and
the bytes are checked to be that resource's.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import email.utils
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import quote, urlencode, urlsplit

from ferry.errors import (
    AccessError,
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
from ferry.storage.base import Backend, Capabilities
from ferry.storage.gcs_auth import ServiceAccount, TokenSource
from ferry.storage.http1 import Body, Http1Pool, HttpError, HttpResponse, HttpTimeout, StreamBody, split_url
from ferry.storage.profiles import Profile, get_profile
from ferry.storage.wrappers import unwrap

if TYPE_CHECKING:
    from ferry.storage.stores import StoreAt, StoreKeys

__all__ = ["DEFAULT_ENDPOINT", "GcsBackend", "open_at", "parse_goog_hash"]

DEFAULT_ENDPOINT: Final = "https://storage.googleapis.com"
CRC64_META: Final = "ferry-crc64"  # custom-metadata key of the CRC-64/ECMA Ferry computed, as on S3
EXPIRES_META: Final = "ferry-expires"  # GCS has no Expires field; kept so that it round-trips
_PAGE: Final = 1000
_CONNECTIONS: Final = 128
_META_FIELDS: Final = (("content_type", "contentType"), ("cache_control", "cacheControl"),
                       ("content_disposition", "contentDisposition"), ("content_encoding", "contentEncoding"),
                       ("content_language", "contentLanguage"))
_WRITE_OPS: Final = frozenset({"put", "put_stream", "copy", "delete"})


def _seg(name: str) -> str:
    return quote(name, safe="")


def parse_goog_hash(values: Sequence[str]) -> tuple[str | None, int | None]:
    """(md5 hex, crc32c) of `x-goog-hash` headers (`crc32c=<b64>, md5=<b64>`, one header or several)."""
    md5: str | None = None
    crc: int | None = None
    for value in values:
        for item in value.split(","):
            name, _, b64 = item.strip().partition("=")
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:
                continue
            if name.lower() == "md5" and len(raw) == 16:
                md5 = raw.hex()
            elif name.lower() == "crc32c" and len(raw) == 4:
                crc = int.from_bytes(raw, "big")
    return md5, crc


def _b64_md5(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 16 else None


def _b64_crc32c(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _rfc3339(value: Any) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _http_date(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _meta_of(fields: Mapping[str, Any], custom: Mapping[str, Any]) -> tuple[ObjectMeta, int | None]:
    """The HTTP and user metadata of a resource (or headers, named as resource fields), and the stored CRC-64."""
    user = {str(k): str(v) for k, v in custom.items() if k not in (CRC64_META, EXPIRES_META) and v is not None}
    expires = custom.get(EXPIRES_META)
    meta = ObjectMeta(**{ours: fields[theirs] for ours, theirs in _META_FIELDS if isinstance(fields.get(theirs), str)},
                      expires=str(expires) if expires is not None else None, user=user)
    return meta, _int(custom.get(CRC64_META))


class GcsBackend:
    """One bucket (optionally under a prefix) of Google Cloud Storage, or of a server speaking its JSON API."""

    def __init__(self, bucket: str, prefix: str = "", *, tokens: TokenSource | None,
                 endpoint: str | None = None, profile: Profile | None = None, copy_group: str | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 max_connections: int = _CONNECTIONS) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.profile = profile or get_profile("google")
        self._tokens = tokens
        url = split_url(endpoint or DEFAULT_ENDPOINT)
        self._origin = (url.scheme, url.host, url.port)
        self._host = url.host_header
        self._base = url.target.rstrip("/")
        self._pool = Http1Pool(url.scheme, url.host, url.port, limit=max_connections,
                               connect_timeout=connect_timeout, read_timeout=read_timeout)
        caps = self.profile.capabilities(copy_group)
        self._caps = Capabilities(
            list_order=caps.list_order, copy_group=copy_group, multipart=False, max_object_size=5 * 1024 ** 4,
            etag_is_md5=False, crc64=False, mtime_precision=1e-3, storage_classes=caps.storage_classes,
            restore=False, max_key_bytes=1024,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def name(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"

    def __repr__(self) -> str:
        return f"GcsBackend({self.bucket!r}, prefix={self.prefix!r})"

    # -- the wire ---------------------------------------------------------------------------------------------
    def _object_path(self, key: str, api: str = "/storage/v1") -> str:
        return f"{self._base}{api}/b/{_seg(self.bucket)}/o/{_seg(self.prefix + key)}"

    async def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._tokens is not None:
            headers["Authorization"] = "Bearer " + await self._tokens.token()
        return headers

    async def _call(self, method: str, op: str, key: str | None, target: str, *,
                    headers: Mapping[str, str] | None = None, body: Body | None = None,
                    ok: tuple[int, ...] = (200,)) -> HttpResponse:
        """One request, sent again once with a fresh token when the store says the token is not (any more)
        good; a streamed body cannot be sent twice, so its request is not."""
        for attempt in (1, 2):
            sent = await self._headers(headers)
            try:
                resp = await self._pool.request(method, target, self._host, sent, body)
            except HttpTimeout:
                raise TransientError(f"{op} {self._where(key)}: timed out", key=key) from None
            except HttpError as exc:
                raise TransientError(f"{op} {self._where(key)}: {exc}", key=key) from None
            if resp.status == 401 and attempt == 1 and self._tokens is not None \
                    and not isinstance(body, StreamBody):
                self._tokens.invalidate(sent["Authorization"][len("Bearer "):])
                continue
            if resp.status not in ok:
                raise self._error(op, key, resp.status, resp.body, resp.headers)
            return resp
        raise AssertionError("unreachable")

    async def _stream(self, op: str, key: str, target: str, headers: Mapping[str, str]
                      ) -> tuple[Mapping[str, str], AsyncGenerator[bytes, None]]:
        for attempt in (1, 2):
            sent = await self._headers(headers)
            try:
                resp = await self._pool.stream("GET", target, self._host, sent)
            except HttpTimeout:
                raise TransientError(f"{op} {self._where(key)}: timed out", key=key) from None
            except HttpError as exc:
                raise TransientError(f"{op} {self._where(key)}: {exc}", key=key) from None
            if resp.status in (200, 206):
                return resp.headers, self._pieces(op, key, resp.body, _int(resp.headers.get("content-length")))
            body = b"".join([piece async for piece in resp.body])
            if resp.status == 401 and attempt == 1 and self._tokens is not None:
                self._tokens.invalidate(sent["Authorization"][len("Bearer "):])
                continue
            raise self._error(op, key, resp.status, body, resp.headers)
        raise AssertionError("unreachable")

    async def _pieces(self, op: str, key: str, body: AsyncGenerator[bytes, None], length: int | None
                      ) -> AsyncGenerator[bytes, None]:
        got = 0
        try:
            async for piece in body:
                if piece:
                    got += len(piece)
                    yield piece
        except (HttpError, HttpTimeout) as exc:
            raise TransientError(f"{op} {self._where(key)}: {exc}", key=key) from None
        finally:
            await body.aclose()
        if length is not None and got != length:
            raise TransientError(f"{op} {self._where(key)}: {got} of {length} bytes arrived", key=key)

    def _where(self, key: str | None) -> str:
        return self.name + (key or "")

    def _error(self, op: str, key: str | None, status: int, body: bytes, headers: Mapping[str, str]) -> FerryError:
        """The taxonomy's error for an answer; the message has the store's own text, never a token or a key."""
        message = ""
        try:
            doc = json.loads(body)
            err = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(err, dict):
                message = str(err.get("message") or "")
        except ValueError:
            message = body[:200].decode("utf-8", "replace") if body and not body.lstrip().startswith(b"<") else ""
        message = " ".join(message.split())[:200]
        msg = f"{op} {self._where(key)}: HTTP {status}" + (f" ({message})" if message else "")
        lowered = message.lower()
        if status in (400, 409) and ("hash" in lowered or "checksum" in lowered or "md5" in lowered):
            # The bytes did not match the md5Hash/crc32c sent with them; nothing was kept.
            return DigestMismatchError(msg, key=key)
        if status in (408, 429) or status >= 500:
            retry = _int(headers.get("retry-after"))
            return TransientError(msg, key=key, retry_after=float(retry) if retry is not None else None)
        if status == 404 and (key is None or ("bucket" in lowered and "object" not in lowered)):
            return AccessError(f"{msg} NoSuchBucket", key=key, s3_code="NoSuchBucket", writing=op in _WRITE_OPS,
                               origin=self, credentials="json_auth_file")
        if status in (401, 403):
            # A 401 comes after a freshly fetched token was refused too: the account is not (any more) valid.
            code = "InvalidAccessKeyId" if status == 401 else "AccessDenied"
            return AccessError(f"{msg} {code}", key=key, s3_code=code, writing=op in _WRITE_OPS, origin=self,
                               credentials="json_auth_file")
        if status == 404:
            return NotFoundError(msg, key=key)
        if status == 412:
            return SourceChangedError(msg, key=key)
        return PermanentError(msg, key=key)

    # -- object info ------------------------------------------------------------------------------------------
    def _info_of(self, res: Mapping[str, Any], *, with_meta: bool) -> ObjectInfo:
        name = str(res.get("name", ""))
        custom = res.get("metadata")
        meta, crc64 = _meta_of(res, custom if isinstance(custom, dict) else {})
        return ObjectInfo(
            key=name[len(self.prefix):], size=_int(res.get("size")) or 0, mtime=_rfc3339(res.get("updated")),
            etag=str(res["generation"]) if res.get("generation") is not None else None,
            storage_class=self.profile.canonical_class(res.get("storageClass") or "STANDARD"), crc64=crc64,
            meta=meta if with_meta else None, md5=_b64_md5(res.get("md5Hash")) if with_meta else None,
            crc32c=_b64_crc32c(res.get("crc32c")),
        )

    def _info_of_headers(self, key: str, headers: Mapping[str, str]) -> ObjectInfo | None:
        """The object's info from a download's `x-goog-*` headers; None when the server does not send them."""
        generation = headers.get("x-goog-generation")
        size = _int(headers.get("x-goog-stored-content-length"))
        if generation is None or size is None:
            return None
        md5, crc = parse_goog_hash(headers.getall("x-goog-hash", []) if hasattr(headers, "getall")
                                   else [headers.get("x-goog-hash", "")])
        custom = {name[len("x-goog-meta-"):]: value for name, value in headers.items()
                  if name.lower().startswith("x-goog-meta-")}
        fields = {"contentType": headers.get("content-type"), "cacheControl": headers.get("cache-control"),
                  "contentDisposition": headers.get("content-disposition"),
                  "contentLanguage": headers.get("content-language"),
                  "contentEncoding": headers.get("x-goog-stored-content-encoding")}
        if fields["contentEncoding"] == "identity":
            fields["contentEncoding"] = None
        meta, crc64 = _meta_of(fields, custom)
        return ObjectInfo(key, size, _http_date(headers.get("last-modified")), generation,
                          self.profile.canonical_class(headers.get("x-goog-storage-class") or "STANDARD"), crc64,
                          meta, md5, crc)

    async def head(self, key: str) -> ObjectInfo:
        resp = await self._call("GET", "head", key, self._object_path(key))
        return self._info_of(json.loads(resp.body), with_meta=True)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        query: dict[str, str] = {"prefix": self.prefix + prefix, "maxResults": str(_PAGE)}
        if start_after is not None:
            query["startOffset"] = self.prefix + start_after  # inclusive: the key itself is skipped below
        target = f"{self._base}/storage/v1/b/{_seg(self.bucket)}/o"
        while True:
            resp = await self._call("GET", "list", None, target + "?" + urlencode(query, quote_via=quote))
            doc = json.loads(resp.body)
            for res in doc.get("items") or ():
                info = self._info_of(res, with_meta=False)
                # A server that ignores startOffset (the emulator) still resumes right.
                if start_after is None or info.key.encode() > start_after.encode():
                    yield info
            token = doc.get("nextPageToken")
            if not token:
                return
            query["pageToken"] = token

    # -- reads ------------------------------------------------------------------------------------------------
    def _media(self, key: str, if_match: str | None, generation: str | None = None) -> str:
        query = {"alt": "media"}
        if generation is not None:
            query["generation"] = generation
        if if_match is not None:
            query["ifGenerationMatch"] = if_match
        return self._object_path(key) + "?" + urlencode(query)

    def _check_generation(self, key: str, if_match: str | None) -> str | None:
        """`if_match` as a generation (quotes dropped, as an ETag may come); SourceChangedError when it is none."""
        if if_match is None:
            return None
        if_match = if_match.strip('"')
        if not if_match.isdigit():
            # Not a generation at all (an S3 ETag, say): it cannot be this object's.
            raise SourceChangedError(f"read {self._where(key)}: {if_match!r} is not a generation", key=key)
        return if_match

    async def _pinned_info(self, key: str, if_match: str | None) -> ObjectInfo:
        info = await self.head(key)
        if if_match is not None and info.etag != if_match:
            raise SourceChangedError(f"read {self._where(key)}: generation {info.etag}, expected {if_match}",
                                     key=key)
        return info

    async def read(self, key: str, *, offset: int = 0, length: int | None = None,
                   if_match: str | None = None) -> bytes:
        if_match = self._check_generation(key, if_match)
        headers = {"Accept-Encoding": "gzip"}
        if offset or length is not None:
            if length == 0:
                return b""
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        # A server that ignores ifGenerationMatch and says no generation (the emulator) gets the read pinned
        # by `generation=` after a lookup.
        generation = None
        if if_match is not None and not self._sends_generation:
            generation = (await self._pinned_info(key, if_match)).etag
        resp = await self._call("GET", "read", key, self._media(key, if_match, generation), headers=headers,
                                ok=(200, 206, 416))
        if if_match is not None and generation is None and resp.headers.get("x-goog-generation") != if_match:
            if "x-goog-generation" in resp.headers:
                raise SourceChangedError(f"read {self._where(key)}: the generation is not {if_match}", key=key)
            self._sends_generation = False
            return await self.read(key, offset=offset, length=length, if_match=if_match)
        if resp.status == 416:
            return b""
        if resp.status == 200 and (offset or length is not None):
            return resp.body[offset:None if length is None else offset + length]
        return resp.body

    # Whether downloads from this server carry x-goog-generation (learnt from the first one): Google's do.
    _sends_generation: bool = True

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        if_match = self._check_generation(key, if_match)
        if not self._sends_generation:
            info = await self._pinned_info(key, if_match)
            resp = await self._call("GET", "read", key, self._media(key, None, info.etag),
                                    headers={"Accept-Encoding": "gzip"})
            return self._checked(info, resp.body), resp.body
        resp = await self._call("GET", "read", key, self._media(key, if_match), headers={"Accept-Encoding": "gzip"})
        found = self._info_of_headers(key, resp.headers)
        if found is None:
            self._sends_generation = False
            return self._checked(await self._pinned_info(key, if_match), resp.body), resp.body
        return found, resp.body

    def _checked(self, info: ObjectInfo, body: bytes) -> ObjectInfo:
        if len(body) != info.size:
            raise SourceChangedError(f"read {self._where(info.key)}: {len(body)} bytes, the object has {info.size}",
                                     key=info.key)
        return info

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        return None  # a composite object's components are not its upload's parts; its CRC32C checks it

    async def read_stream(self, key: str, *, if_match: str | None = None
                          ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        if_match = self._check_generation(key, if_match)
        info: ObjectInfo | None = None
        if not self._sends_generation:
            info = await self._pinned_info(key, if_match)
        headers, pieces = await self._stream("read", key, self._media(key, if_match, info.etag if info else None),
                                             {"Accept-Encoding": "gzip"})
        if info is None:
            info = self._info_of_headers(key, headers)
        if info is None:
            self._sends_generation = False
            try:
                info = await self._pinned_info(key, if_match)
            except BaseException:
                await pieces.aclose()
                raise
        if _int(headers.get("content-length")) not in (None, info.size):
            await pieces.aclose()
            raise SourceChangedError(f"read {self._where(key)}: the object changed while it was looked up", key=key)
        return info, pieces

    # -- writes -----------------------------------------------------------------------------------------------
    def _resource(self, key: str, meta: ObjectMeta, storage_class: str | None, crc64: int | None,
                  md5_hex: str | None = None) -> dict[str, Any]:
        res: dict[str, Any] = {"name": self.prefix + key}
        for ours, theirs in _META_FIELDS:
            value = getattr(meta, ours)
            if value:
                res[theirs] = value
        custom = dict(meta.user)
        if meta.expires:
            custom[EXPIRES_META] = meta.expires
        if crc64 is not None:
            custom[CRC64_META] = str(crc64)
        if custom:
            res["metadata"] = custom
        if storage_class:
            res["storageClass"] = self.profile.vendor_class(storage_class)
        if md5_hex:
            res["md5Hash"] = base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")
        return res

    def _upload_target(self, kind: str) -> str:
        return f"{self._base}/upload/storage/v1/b/{_seg(self.bucket)}/o?uploadType={kind}"

    def _put_result(self, body: bytes) -> PutResult:
        # The generation, as `head` reports it: what a later read is pinned to.
        res = json.loads(body)
        generation = str(res["generation"]) if res.get("generation") else None
        return PutResult(generation, _rfc3339(res.get("updated")) or None)

    async def put(self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
                  crc64: int | None = None) -> PutResult:
        boundary = "ferry-" + uuid.uuid4().hex
        resource = json.dumps(self._resource(key, meta, storage_class, crc64)).encode("utf-8")
        body = b"".join((
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(), resource,
            f"\r\n--{boundary}\r\nContent-Type: {meta.content_type or 'application/octet-stream'}\r\n\r\n".encode(),
            data, f"\r\n--{boundary}--\r\n".encode(),
        ))
        resp = await self._call("POST", "put", key, self._upload_target("multipart"), body=body,
                                headers={"Content-Type": f"multipart/related; boundary={boundary}"})
        return self._put_result(resp.body)

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        resource = self._resource(key, meta, storage_class, crc64, content_md5)
        started = await self._call("POST", "put_stream", key, self._upload_target("resumable"),
                                   body=json.dumps(resource).encode("utf-8"),
                                   headers={"Content-Type": "application/json; charset=UTF-8",
                                            "X-Upload-Content-Length": str(size),
                                            "X-Upload-Content-Type": meta.content_type or "application/octet-stream"})
        session = self._session_target(key, started.headers.get("location"))
        content_range = f"bytes 0-{size - 1}/{size}" if size else "bytes */0"
        sent = _Counted(body(), size)
        try:
            resp = await self._call("PUT", "put_stream", key, session, body=StreamBody(size, sent.pieces()),
                                    headers={"Content-Range": content_range}, ok=(200, 201))
        except BaseException:
            await self._cancel(session)
            if sent.failure is not None:
                raise sent.failure from None
            raise
        return self._put_result(resp.body)

    def _session_target(self, key: str, location: str | None) -> str:
        # The session URI must be on the store we talk to: a Location elsewhere is not followed.
        if not location:
            raise PermanentError(f"put_stream {self._where(key)}: no resumable session was given", key=key)
        url = split_url(location) if "://" in location else None
        if url is not None and (url.scheme, url.host, url.port) != self._origin:
            raise PermanentError(f"put_stream {self._where(key)}: the session is on another host", key=key)
        return url.target if url is not None else location

    async def _cancel(self, session: str) -> None:
        # Google: DELETE on a session URI cancels it (499); an unfinished session keeps no object anyway.
        with contextlib.suppress(FerryError, HttpError, HttpTimeout, ValueError):
            await self._pool.request("DELETE", session, self._host, await self._headers({"Content-Length": "0"}))

    async def copy_from(self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
                        if_match: str | None = None, storage_class: str | None = None,
                        crc64: int | None = None) -> PutResult:
        src = unwrap(source)
        if not isinstance(src, GcsBackend) or src.capabilities.copy_group != self._caps.copy_group \
                or self._caps.copy_group is None:
            raise FatalError(f"copy {self._where(key)}: the source is not in this store's copy group", key=key)
        if_match = src._check_generation(src_key, if_match)
        target = (f"{src._object_path(src_key)}/rewriteTo/b/{_seg(self.bucket)}/o/{_seg(self.prefix + key)}")
        query: dict[str, str] = {}
        if if_match is not None:
            query["ifSourceGenerationMatch"] = if_match
            if not self._sends_generation or not src._sends_generation:
                await src._pinned_info(src_key, if_match)
        resource: dict[str, Any] = {}
        if meta is not None:
            resource = self._resource(key, meta, storage_class, crc64)
            del resource["name"]
        elif storage_class:
            resource["storageClass"] = self.profile.vendor_class(storage_class)
        body = b"" if meta is None and storage_class is None else json.dumps(resource).encode("utf-8")
        while True:
            resp = await self._call("POST", "copy", key, target + ("?" + urlencode(query) if query else ""),
                                    body=body, headers={"Content-Type": "application/json; charset=UTF-8"})
            doc = json.loads(resp.body)
            if doc.get("done"):
                return self._put_result(json.dumps(doc.get("resource") or {}).encode())
            token = doc.get("rewriteToken")
            if not isinstance(token, str) or not token:
                raise TransientError(f"copy {self._where(key)}: the rewrite stopped without a token", key=key)
            query["rewriteToken"] = token

    async def delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError):  # deleting what is not there succeeds, as on S3
            await self._call("DELETE", "delete", key, self._object_path(key), ok=(200, 204))

    async def restore(self, key: str, days: int) -> None:
        return None  # every class reads at once (Archive too, for a retrieval fee)

    # -- no part uploads in the JSON API -------------------------------------------------------------------------
    def _no_parts(self) -> NoReturn:
        raise FatalError("Google Cloud Storage (JSON API) has no part uploads; objects are written whole")

    async def create_multipart(self, key: str, meta: ObjectMeta, *, storage_class: str | None = None,
                               crc64: int | None = None) -> str:
        self._no_parts()

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *,
                          crc32c: int | None = None) -> PartInfo:
        self._no_parts()

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        self._no_parts()

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        self._no_parts()

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._no_parts()

    async def close(self) -> None:
        await self._pool.close()
        if self._tokens is not None:
            await self._tokens.close()


class _Counted:
    """A body generator that must yield exactly `size` bytes; a source's own error is kept to re-raise."""

    def __init__(self, source: AsyncGenerator[bytes, None], size: int) -> None:
        self._source = source
        self._size = size
        self.failure: FerryError | None = None

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        sent = 0
        try:
            async for piece in self._source:
                sent += len(piece)
                if sent > self._size:
                    self.failure = PermanentError(f"the body ran past its {self._size} bytes")
                    raise self.failure
                yield piece
        except FerryError as exc:
            self.failure = self.failure or exc
            raise
        finally:
            await self._source.aclose()
        if sent != self._size:
            self.failure = PermanentError(f"the body ended after {sent} of {self._size} bytes")
            raise self.failure


def token_hosts(at_endpoint: str | None, from_override: bool) -> Callable[[str, int], bool]:
    """Where a key file given through the API may send its JWT: Google's token endpoint, and for a store the
    operator mapped to a self-hosted server (an emulator), that server's host, on any port."""
    own = (urlsplit(at_endpoint).hostname or "").lower() if from_override and at_endpoint else ""

    def allowed(host: str, port: int) -> bool:
        return (host, port) == ("oauth2.googleapis.com", 443) or (bool(own) and host == own)

    return allowed


def open_at(at: StoreAt, keys: StoreKeys) -> GcsBackend:
    """The seam's opener (storage/stores.py): a Google bucket from a StoreAt and StoreKeys."""
    from ferry.storage.stores import store_profile

    if not keys.json_auth:
        raise UsageError("Google Cloud Storage needs a service-account key file (json_auth_file)")
    # Checked when the task was created (or started) with it; a stored key is not validated again at every run.
    account = ServiceAccount.parse(keys.json_auth, validate=False)
    tokens = TokenSource(account, allowed=token_hosts(at.endpoint, at.from_override))
    endpoint = at.endpoint or DEFAULT_ENDPOINT
    return GcsBackend(at.bucket, at.prefix, tokens=tokens, endpoint=endpoint, profile=store_profile(at),
                      copy_group=f"gcs:{endpoint}:{account.client_email}")


def _conforms(backend: GcsBackend) -> Backend:
    return backend  # mypy proves here that GcsBackend satisfies the protocol

