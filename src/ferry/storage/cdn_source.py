"""A source read through a CDN domain (OMS `source_cdn`): listed and described by its bucket, bytes from the CDN.

The wrapped Backend is the source bucket: it lists the keys and its HEAD is the truth (size, ETag/MD5, CRC64,
metadata). Each object's bytes come from `protocol://domain/key` with a URL signed afresh for every request
(`storage.cdn_signing`), so a retry never reuses an expired signature. What the CDN serves is checked against
the bucket's HEAD before the last piece is handed on, so a mismatch fails the write (nothing is kept) with
OMS's per-object reason COMPARE_SRC_AND_CDN_FAILURE (`CdnMismatchError`), never a silent copy of stale bytes.

The domain is chosen by whoever created the task, so it is an SSRF vector: it is resolved once, every address
must be public unless the operator allowed that host (`FERRY_CDN_ALLOWED_HOSTS`: comma-separated `host` or
`host:port` entries), and the HTTP client (`storage.http1`) connects only to those pinned addresses and never
follows a redirect (OMS documents that CDN redirects are not supported).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

from fastcrc import crc64 as _fastcrc64

from ferry.errors import (
    CdnMismatchError,
    FatalError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
)
from ferry.objects import ObjectInfo
from ferry.storage.base import Backend, Capabilities
from ferry.storage.cdn_signing import DEFAULT_TTL, CdnCredentials, sign_url
from ferry.storage.http1 import Http1Pool, HttpError, HttpTimeout, split_url
from ferry.storage.netguard import REFUSED, HostLookupError, PinnedResolver, UnsafeHost
from ferry.storage.wrappers import BackendWrapper

ALLOWED_HOSTS_ENV: Final = "FERRY_CDN_ALLOWED_HOSTS"
_BAD_DOMAIN_CHARS: Final = frozenset("/\\@?#%")
_CONNECTIONS: Final = 64
_REMEMBERED_SIZES: Final = 4096  # above the objects a task copies at once
_THREAD_HASH_MIN: Final = 1024 * 1024  # a batch worth a thread hop
_REFUSED_HINT: Final = ("check source_cdn.authentication_type and authentication_key (the source AK/SK for Qiniu "
                        "and Kingsoft), the clock, and the CDN's hotlink protection")


T = TypeVar("T")
_Answer = tuple[int, dict[str, str], T]  # status, headers, body


class CdnDomainError(ValueError):
    """The domain is malformed, or resolves to an address the operator did not allow."""


def load_allowed_hosts(raw: str | None = None) -> frozenset[str]:
    """The operator's allow-list of non-public CDN hosts (lower-cased `host` or `host:port` entries)."""
    text = os.environ.get(ALLOWED_HOSTS_ENV, "") if raw is None else raw
    return frozenset(part.strip().lower() for part in text.split(",") if part.strip())


def parse_domain(domain: str) -> tuple[str, int | None]:
    """Host and optional port of a CDN domain given as `host` or `host:port` (no scheme, path or user)."""
    text = domain.strip()
    if not text or any(ch.isspace() or ch in _BAD_DOMAIN_CHARS for ch in text):
        raise CdnDomainError("source_cdn.domain must be a host name, optionally with :port")
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise CdnDomainError("source_cdn.domain has an invalid port") from None
    if not host:
        raise CdnDomainError("source_cdn.domain must be a host name, optionally with :port")
    return host, port


@dataclass(frozen=True)
class CdnSite:
    """A task's CDN: `protocol` (http|https), `domain` (`host[:port]`), the authentication type (an OMS
    CDN_AUTH value) with what it signs with, and how long a signature is valid (Qiniu, Kingsoft)."""

    protocol: str
    domain: str
    auth_type: str
    creds: CdnCredentials = dataclasses.field(default_factory=CdnCredentials)
    ttl: int = DEFAULT_TTL


def site_of(stored: Mapping[str, str], key: str | None, ak: str | None, sk: str | None, bucket: str) -> CdnSite:
    """The CdnSite of a task's stored `source_cdn` (domain, protocol, authentication_type), with the
    authentication key and the source bucket's AK/SK and name from its sealed keys."""
    return CdnSite(stored["protocol"], stored["domain"], stored.get("authentication_type") or "NONE",
                   CdnCredentials(key=key, ak=ak, sk=sk, bucket=bucket))


def open_through_cdn(inner: Backend, stored: Mapping[str, str] | None, key: str | None, ak: str | None,
                     sk: str | None, bucket: str) -> Backend:
    """`inner` (a task's source bucket), its bytes fetched through the task's CDN when it has one; the
    operator's FERRY_CDN_ALLOWED_HOSTS is read now, so a running server follows its configuration."""
    if not stored:
        return inner
    return CdnBackend(inner, site_of(stored, key, ak, sk, bucket), allowed_hosts=load_allowed_hosts())


class _Verifier:
    """Size, MD5 and CRC64 of the bytes served, against the bucket's HEAD of the same object."""

    def __init__(self, info: ObjectInfo) -> None:
        self.info = info
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False) if info.md5 else None
        self._crc = 0 if info.crc64 is not None else None

    def update(self, data: bytes) -> None:
        self.size += len(data)
        if self._md5 is not None:
            self._md5.update(data)
        if self._crc is not None:
            self._crc = _fastcrc64.xz(data, self._crc)

    def update_all(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.update(piece)

    def check(self) -> None:
        info = self.info
        if self.size != info.size:
            raise CdnMismatchError(f"the CDN served {self.size} bytes, the source bucket holds {info.size}",
                                   key=info.key)
        if self._md5 is not None and self._md5.hexdigest() != info.md5:
            raise CdnMismatchError("the MD5 of what the CDN served differs from the source's", key=info.key)
        if self._crc is not None and self._crc != info.crc64:
            raise CdnMismatchError("the CRC64 of what the CDN served differs from the source's", key=info.key)


class CdnBackend(BackendWrapper):
    """The source bucket `inner`, its objects' bytes fetched through a CDN; read-only in use (a source)."""

    def __init__(self, inner: Backend, site: CdnSite, *, allowed_hosts: frozenset[str] = frozenset(),
                 key_prefix: str = "", connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 clock: Callable[[], float] = time.time) -> None:
        """`key_prefix` is the inner backend's prefix: the CDN path is the object's full key in the bucket."""
        super().__init__(inner)
        self.site = site
        try:
            self._host, port = parse_domain(site.domain)
        except CdnDomainError as exc:
            raise FatalError(str(exc)) from None
        self._port = port or (443 if site.protocol == "https" else 80)
        self._allowed = allowed_hosts
        self._prefix = key_prefix
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._clock = clock
        self._pool: Http1Pool | None = None
        self._opening = asyncio.Lock()
        self._caps = dataclasses.replace(inner.capabilities, copy_group=None)
        # The bucket's size of each object HEAD described, so a ranged read can tell a CDN object of another size.
        self._sizes: dict[str, int] = {}

    @property
    def capabilities(self) -> Capabilities:
        # No server-side copy: the bytes must come through the CDN.
        return self._caps

    @property
    def name(self) -> str:
        return f"{self.inner.name} via {self.site.protocol}://{self.site.domain}"

    def __repr__(self) -> str:
        return f"CdnBackend({self.inner!r}, {self.site.protocol}://{self.site.domain}, {self.site.auth_type})"

    async def _connect(self) -> Http1Pool:
        async with self._opening:
            if self._pool is None:
                trusted = self._host in self._allowed or f"{self._host}:{self._port}" in self._allowed
                try:
                    origin = split_url(f"{self.site.protocol}://{self.site.domain}/")
                    pinned = await PinnedResolver().pin(origin.host, origin.port, trusted=trusted)
                except (UnsafeHost, UnicodeError, ValueError):
                    raise FatalError(f"source_cdn.domain is {REFUSED} (an operator can allow a private CDN host "
                                     "with FERRY_CDN_ALLOWED_HOSTS)") from None
                except HostLookupError as exc:
                    raise TransientError(f"source_cdn.domain: {exc}") from None
                self._pool = Http1Pool(origin.scheme, origin.host, origin.port, limit=_CONNECTIONS,
                                       addresses=pinned.hosts, connect_timeout=self._connect_timeout,
                                       read_timeout=self._read_timeout, user_agent="ferry-cdn")
            return self._pool

    def _target(self, key: str) -> tuple[str, str]:
        signed = sign_url(self.site.auth_type, self.site.protocol, self.site.domain, self._prefix + key,
                          self.site.creds, now=self._clock(), ttl=self.site.ttl)
        return split_url(signed.url).host_header, signed.target

    async def _get(self, key: str, headers: Mapping[str, str], ok: tuple[int, ...]) -> _Answer[bytes]:
        async def send(pool: Http1Pool, host: str, target: str) -> _Answer[bytes]:
            resp = await pool.request("GET", target, host, headers)
            return resp.status, dict(resp.headers), resp.body

        return await self._signed(key, ok, send)

    async def _stream(self, key: str) -> AsyncGenerator[bytes, None]:
        async def send(pool: Http1Pool, host: str, target: str) -> _Answer[AsyncGenerator[bytes, None]]:
            answer = await pool.stream("GET", target, host, {})
            if answer.status != 200:
                await answer.body.aclose()
            return answer.status, dict(answer.headers), answer.body

        _, _, body = await self._signed(key, (200,), send)
        return body

    async def _signed(self, key: str, ok: tuple[int, ...],
                      send: Callable[[Http1Pool, str, str], Awaitable[_Answer[T]]]) -> _Answer[T]:
        """`send` a GET of `key` with a URL signed now; a refused signature is made once more at once: a URL that
        expired between signing and arriving (a clock step, a long queue) is the refusal a fresh one cures."""
        pool = await self._connect()
        where = f"GET {self.site.protocol}://{self.site.domain} ({key})"
        status = 0
        for _ in range(2):
            host, target = self._target(key)
            try:
                status, got, body = await send(pool, host, target)
            except HttpTimeout:
                raise TransientError(f"{where}: timed out", key=key) from None
            except HttpError as exc:
                raise TransientError(f"{where}: {exc}", key=key) from None
            if status in ok:
                return status, got, body
            if status not in (401, 403):
                break
        raise _refusal(where, key, status)

    # -- reading: the bucket describes, the CDN serves ----------------------------------------------------------

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        # The domain is checked before anything is listed: a task's preflight (one listed object) then
        # refuses a domain the operator did not allow, as the source's failure, before any work.
        await self._connect()
        async for info in super().list(prefix, start_after):
            yield info

    async def head(self, key: str) -> ObjectInfo:
        info = await self.inner.head(key)
        if len(self._sizes) >= _REMEMBERED_SIZES:
            del self._sizes[next(iter(self._sizes))]
        self._sizes[key] = info.size
        return info

    async def _described(self, key: str, if_match: str | None) -> ObjectInfo:
        info = await self.head(key)
        if if_match is not None and info.etag != if_match.strip('"'):
            raise SourceChangedError(f"{key}: the source's ETag is now {info.etag}, expected {if_match}", key=key)
        return info

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        info = await self._described(key, if_match)
        _, _, body = await self._get(key, {}, (200,))
        check = _Verifier(info)
        if len(body) >= _THREAD_HASH_MIN:
            await asyncio.to_thread(check.update, body)
        else:
            check.update(body)
        check.check()
        return info, body

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        info = await self._described(key, if_match)
        return info, _checked(await self._stream(key), _Verifier(info))

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        headers = {}
        if offset or length is not None:
            headers["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        status, got, body = await self._get(key, headers, (200, 206))
        total = len(body) if status == 200 else _range_total(got.get("Content-Range"))
        expected = self._sizes.get(key)
        if expected is not None and total is not None and total != expected:
            raise CdnMismatchError(f"the CDN has {total} bytes, the source bucket holds {expected}", key=key)
        if status == 200 and headers:
            # A CDN that ignores the range sends the whole object.
            body = body[offset:None if length is None else offset + length]
        return body

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        await self.inner.close()


def _range_total(value: str | None) -> int | None:
    # `bytes 0-99/1234` -> 1234; `*` (unknown) -> None.
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


async def _checked(pieces: AsyncGenerator[bytes, None], check: _Verifier) -> AsyncGenerator[bytes, None]:
    """`pieces`, each held back until the next arrives, so the last one is handed on only after the whole
    answer matched the bucket: a mismatch then fails the write short of its size, and nothing is kept.

    The hashing runs in a thread, a batch of pieces at a time (MD5 and CRC64 let go of the GIL), while the loop
    moves other bytes; batches are hashed one after the other, in order."""
    held: bytes | None = None
    batch: list[bytes] = []
    batched = 0
    hashing: asyncio.Future[None] | None = None
    try:
        async for piece in pieces:
            batch.append(piece)
            batched += len(piece)
            if batched >= _THREAD_HASH_MIN:
                if hashing is not None:
                    await hashing
                hashing = asyncio.ensure_future(asyncio.to_thread(check.update_all, batch))
                batch, batched = [], 0
            if held is not None:
                yield held
            held = piece
        if hashing is not None:
            await hashing
        check.update_all(batch)
        check.check()
        if held is not None:
            yield held
    finally:
        if hashing is not None and not hashing.done():
            await asyncio.gather(hashing, return_exceptions=True)
        await pieces.aclose()


def _refusal(where: str, key: str, status: int) -> Exception:
    msg = f"{where}: HTTP {status}"
    if status in (401, 403):
        return PermanentError(f"{msg}, the CDN refused the signed URL: {_REFUSED_HINT}", key=key)
    if status == 404:
        return NotFoundError(f"{msg}, the CDN does not serve this object", key=key)
    if status == 412:
        return SourceChangedError(msg, key=key)
    if status in (408, 429) or status >= 500:
        return TransientError(msg, key=key)
    if 300 <= status < 400:
        return PermanentError(f"{msg} (CDN redirects are not followed)", key=key)
    return PermanentError(msg, key=key)


def _conforms(source: CdnBackend) -> Backend:
    return source  # mypy proves here that CdnBackend satisfies the protocol
