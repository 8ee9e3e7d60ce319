"""A read-only Backend over plain HTTP(S) URLs (OMS url_list tasks): HEAD for object info, GET for the bytes.

Each object is one `(key, url)` pair from a URL list. Redirects are not followed (a CDN that redirects is
reported, as OMS documents), and a URL whose host is a local name, or resolves to any loopback, private or other
non-public address, is refused unless the operator allowed that `host:port` (FERRY_ENDPOINT_OVERRIDES entries
`URLSource/<name>`), so a URL list cannot make Ferry probe internal services. Each host is resolved once and the
connection pinned to the checked addresses (`storage.netguard`), so DNS rebinding cannot turn it inward later.
The client is `storage.http1` (one keep-alive pool per origin), as for every outbound call.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import email.utils
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping, Sequence
from typing import Final
from urllib.parse import unquote, urlsplit

from ferry.errors import (
    FerryError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
)
from ferry.objects import ObjectInfo, ObjectMeta, md5_of_etag
from ferry.settings import StoreTimeouts
from ferry.storage.base import Backend, Capabilities, ListOrder, ranged_pieces
from ferry.storage.http1 import Http1Pool, HttpError, HttpTimeout, split_url
from ferry.storage.netguard import REFUSED, HostLookupError, PinnedResolver, UnsafeHost
from ferry.storage.pressure import EndpointPressure, pressure_for, retry_after_seconds
from ferry.storage.read_only import ReadOnlySource

_CAPS: Final = Capabilities(list_order=ListOrder.LEXICOGRAPHIC, copy_group=None, multipart=False,
                            etag_is_md5=False)
_LOOKAHEAD: Final = 32
_CONNECTIONS: Final = 100  # per origin


def host_port(url: str) -> str:
    """`host:port` of an http(s) URL (the form of the operator's allow-list); ValueError for a bad port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def parse_url_line(line: str) -> tuple[str, str]:
    """`(key, url)` of one non-blank URL-list line, `URL[<TAB>object key]`: the key URL-encoded, by default
    the URL's path. ValueError says why a line cannot be used (a bad port fails only its object, later)."""
    url, _, key = line.strip().partition("\t")
    url, key = url.strip(), unquote(key.strip())
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    if not key:
        key = unquote(parts.path).lstrip("/")
    if not key:
        raise ValueError("no object name (give one after a tab)")
    return key, url


def _mtime(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _etag(value: str | None) -> str | None:
    # Weak validators (W/"...") cannot pin bytes for a ranged read; treat them as absent.
    if not value or value.startswith("W/"):
        return None
    return value.strip('"')


def _content_md5(value: str | None) -> str | None:
    """The hex of a Content-MD5 header (base64 of the 16 bytes), None when absent or malformed."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 16 else None


class UrlSource(ReadOnlySource):
    """The objects of a URL list as a read-only store whose listing is sorted by key."""

    READ_ONLY = "an HTTP source is read-only"

    def __init__(self, entries: Sequence[tuple[str, str]], *, allowed_hosts: Collection[str] = (),
                 connect_timeout: float | None = None, read_timeout: float | None = None) -> None:
        self._urls = dict(entries)
        self._keys = sorted(self._urls)
        self._allowed = {h.lower() for h in allowed_hosts}
        timeouts = StoreTimeouts.from_env()
        self._connect_timeout = connect_timeout if connect_timeout is not None else timeouts.connect
        self._read_timeout = read_timeout if read_timeout is not None else timeouts.stall
        self._pools: dict[tuple[str, str, int], Http1Pool] = {}
        self._resolver = PinnedResolver()
        # Objects a listing had to leave out, with the reason (unreachable, refused address, no length...).
        self.failed: dict[str, str] = {}

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def name(self) -> str:
        return "url-list://"

    def __repr__(self) -> str:
        return f"UrlSource({len(self._keys)} URLs)"

    def entries(self) -> builtins.list[tuple[str, str]]:
        """The `(key, url)` pairs of the list, sorted by key."""
        return [(k, self._urls[k]) for k in self._keys]

    async def _url(self, key: str) -> tuple[Http1Pool, str, str, str, EndpointPressure]:
        """The pool to fetch `key` through (its host checked, connections pinned to the checked addresses),
        the Host header, the request target, `host:port` for messages, and the endpoint's allowance."""
        url = self._urls.get(key)
        if url is None:
            raise NotFoundError(f"{key}: not in the URL list", key=key)
        try:
            scheme, host, port, header, target = split_url(url)
        except UnicodeError:  # a ValueError too: before it
            raise PermanentError(f"{key}: the URL's host is {REFUSED}, and is not allowed by the operator",
                                 key=key) from None
        except ValueError:  # parse_url_line let only http(s) URLs with a host in
            raise PermanentError(f"{key}: the URL's port is not a number from 1 to 65535", key=key) from None
        where = host_port(url)
        try:
            pinned = await self._resolver.pin(host, port, trusted=where in self._allowed)
        except UnsafeHost:
            raise PermanentError(f"{key}: the URL's host is {REFUSED}, and is not allowed by the operator",
                                 key=key) from None
        except HostLookupError as exc:
            raise TransientError(f"{key}: {exc}", key=key) from None
        pool = self._pools.get((scheme, host, port))
        if pool is None:
            pool = self._pools[(scheme, host, port)] = Http1Pool(
                scheme, host, port, limit=_CONNECTIONS, connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout, addresses=pinned.hosts)
        return pool, header, target, where, pressure_for(f"{scheme}://{header}", _CONNECTIONS)

    async def _request(self, method: str, key: str, headers: Mapping[str, str] | None = None,
                       ok: tuple[int, ...] = (200,)) -> tuple[int, Mapping[str, str], bytes]:
        pool, host, target, where, pressure = await self._url(key)
        where = f"{method} {where} ({key})"
        failure: FerryError
        try:
            async with pressure.slot():
                resp = await pool.request(method, target, host, headers or {})
                retry_after = retry_after_seconds(resp.headers) if resp.status >= 400 else None
                pressure.answered_status(resp.status, retry_after=retry_after)
            status, got, body = resp.status, dict(resp.headers), resp.body
        except HttpTimeout:
            failure = TransientError(f"{where}: timed out", key=key)
        except HttpError as exc:
            failure = TransientError(f"{where}: {exc}", key=key)
        except ValueError:
            raise PermanentError(f"{where}: a header value holds a line break", key=key) from None
        else:
            if status in ok:
                return status, got, body
            msg = f"{where}: HTTP {status}"
            if status == 404:
                raise NotFoundError(msg, key=key)
            if status == 412:
                raise SourceChangedError(msg, key=key)
            if status in (408, 429) or status >= 500:
                busy = TransientError(msg, key=key, retry_after=retry_after)
                busy.http_status = status
                raise busy
            if 300 <= status < 400:
                raise PermanentError(msg + " (redirects are not followed)", key=key)
            raise PermanentError(msg, key=key)
        raise failure

    def _info(self, key: str, headers: Mapping[str, str], size: int | None = None) -> ObjectInfo:
        h = {k.lower(): v for k, v in headers.items()}
        if size is None:
            length = h.get("content-length")
            if length is None or not length.isdigit():
                raise PermanentError(f"{key}: the server gives no Content-Length", key=key)
            size = int(length)
        meta = ObjectMeta(
            content_type=h.get("content-type"), cache_control=h.get("cache-control"),
            content_disposition=h.get("content-disposition"), content_encoding=h.get("content-encoding"),
            content_language=h.get("content-language"), expires=h.get("expires"),
        )
        etag = _etag(h.get("etag"))
        return ObjectInfo(key, size, _mtime(h.get("last-modified")), etag, meta=meta,
                          md5=_content_md5(h.get("content-md5")) or md5_of_etag(etag))

    # -- reading ---------------------------------------------------------------------------------------------

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        keys = [k for k in self._keys if k.startswith(prefix) and (start_after is None or k > start_after)]
        for i in range(0, len(keys), _LOOKAHEAD):
            found = await asyncio.gather(*(self._listed(k) for k in keys[i:i + _LOOKAHEAD]))
            for info in found:
                if info is not None:
                    yield info

    async def _listed(self, key: str) -> ObjectInfo | None:
        # One dead URL must not stop the list: it is set aside with its reason and reported as failed.
        try:
            return await self.head(key)
        except FerryError as exc:
            self.failed[key] = exc.message
            return None

    async def head(self, key: str) -> ObjectInfo:
        _, headers, _ = await self._request("HEAD", key)
        return self._info(key, headers)

    async def read(self, key: str, *, offset: int = 0, length: int | None = None,
                   if_match: str | None = None) -> bytes:
        headers = {"If-Match": f'"{if_match}"'} if if_match else {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        status, _, body = await self._request("GET", key, headers, ok=(200, 206))
        if status == 200 and (offset or length is not None):
            # A server without range support sends the whole object.
            body = body[offset:None if length is None else offset + length]
        return body

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        info = await self.head(key)
        if if_match is not None and info.etag != if_match.strip('"'):
            raise SourceChangedError(f"{key}: the ETag is now {info.etag}, expected {if_match}", key=key)
        return info, ranged_pieces(self, key, info.size, info.etag)

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        return None  # an HTTP server does not say how the object was uploaded

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        headers = {"If-Match": f'"{if_match}"'} if if_match else {}
        _, got, body = await self._request("GET", key, headers)
        return self._info(key, got, len(body)), body

    # -- a source is never written ---------------------------------------------------------------------------

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.close()


def _conforms(source: UrlSource) -> Backend:
    return source  # mypy proves here that UrlSource satisfies the protocol
