"""Probing objects through a CDN domain (show_cdn_info) without letting a caller reach internal hosts.

A caller names the CDN domain, so it is an SSRF vector: the domain is resolved once, every address must
be public, and the HTTP client (`storage.http1`) connects only to those pinned addresses (`storage.netguard`:
no second lookup that DNS rebinding could turn to 127.0.0.1), never follows redirects and ignores proxy
settings. A domain that does not resolve is refused with the same answer as an internal one, so the answers
tell nothing about internal names. The operator may allow non-public CDN hosts (a CDN inside a private
network, or a test server) with `FERRY_CDN_ALLOWED_HOSTS`: a comma-separated list of `host` or `host:port`
entries, e.g. `FERRY_CDN_ALLOWED_HOSTS=127.0.0.1:8080,cdn.corp.internal`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from ferry.storage.cdn_source import CdnDomainError
from ferry.storage.http1 import Http1Pool, HttpError, HttpResponse, split_url
from ferry.storage.netguard import REFUSED, HostLookupError, PinnedResolver, UnsafeHost

# Domain suffixes each cloud's CDN (and its object-storage website endpoints) hands out; a custom domain
# is recognised through its CNAME target. Clouds keyed by their lower-cased OMS cloud type.
CDN_SUFFIXES: Final[Mapping[str, tuple[str, ...]]] = {
    "aliyun": ("aliyuncs.com", "alikunlun.com", "alikunlun.net", "kunlunsl.com", "kunlunca.com", "alicdn.com"),
    "tencent": ("myqcloud.com", "dnsv1.com", "tcdnos.com", "qcloudcdn.com", "cdn.dnsv1.com"),
    "huaweicloud": ("myhuaweicloud.com", "huaweicloud.com", "cdnhwc1.com", "cdnhwc2.com", "cdnhwc3.com",
                    "cdnhwc6.com", "cdnhwc8.com"),
    "aws": ("cloudfront.net", "amazonaws.com"),
    "qiniu": ("qiniucdn.com", "clouddn.com", "qbox.me", "qiniudns.com", "qnssl.com", "qiniucs.com"),
    "baidu": ("bcebos.com", "bdydns.com", "jomodns.com", "bcedocument.com"),
    "kingsoftcloud": ("ksyuncs.com", "ksyun.com", "ksyuncdn.com"),
    "ucloud": ("ufileos.com", "ucloud.cn", "ucloudnaming.cn"),
    "qingcloud": ("qingstor.com", "qingcloud.com"),
    "azure": ("azureedge.net", "azurefd.net", "windows.net"),
}


def same_cloud(cloud: str, names: tuple[str, ...]) -> bool:
    """Whether any of `names` (the domain and its CNAME target) belongs to `cloud`'s CDN."""
    key = "huaweicloud" if cloud == "hec" else cloud
    suffixes = CDN_SUFFIXES.get(key, ())
    for name in names:
        n = name.lower().rstrip(".")
        if any(n == s or n.endswith("." + s) for s in suffixes):
            return True
    return False


@dataclass(frozen=True)
class Probe:
    """What the CDN said about one key: reachable with a 2xx, and the ETag it sent."""

    ok: bool
    etag: str | None


class CdnClient:
    """HEAD (or a 1-byte GET where HEAD is refused) of objects through one CDN domain."""

    def __init__(self, protocol: str, host: str, port: int | None, sign: Callable[[str], str], timeout: float) -> None:
        """`sign(key)` is the request target (path and query) that fetches `key`, signed when it is called."""
        self._base = f"{protocol}://{f'[{host}]' if ':' in host else host}" + (f":{port}" if port else "")
        self._sign = sign
        self._host = host
        self._port = port or (443 if protocol == "https" else 80)
        self._timeout = timeout
        self._pool: Http1Pool | None = None
        self.names: tuple[str, ...] = (host,)

    async def connect(self, allowed: frozenset[str]) -> bool:
        """Resolve, check and pin the domain; False when a host the operator allowed does not resolve now
        (nothing can be downloaded).

        Raises CdnDomainError when the host is not allowed and is not public or does not resolve: one answer
        for both, so that it does not tell whether an internal name exists.
        """
        trusted = self._host in allowed or f"{self._host}:{self._port}" in allowed
        try:
            origin = split_url(self._base)
            pinned = await PinnedResolver().pin(origin.host, origin.port, trusted=trusted)
        except (UnsafeHost, UnicodeError):
            raise CdnDomainError(f"source_cdn.domain is {REFUSED} (an operator can allow a private CDN host)"
                                 ) from None
        except HostLookupError:
            return False
        if pinned.canonical:
            self.names = (self._host, pinned.canonical)
        self._pool = Http1Pool(origin.scheme, origin.host, origin.port, limit=8, addresses=pinned.hosts,
                               connect_timeout=min(10.0, self._timeout), read_timeout=self._timeout,
                               user_agent="ferry-cdn-check")
        return True

    def url(self, key: str) -> str:
        return self._base + self._sign(key)

    async def probe(self, key: str) -> Probe:
        if self._pool is None:
            return Probe(False, None)
        try:
            resp = await self._ask(self._pool, "HEAD", key)
            if resp.status in (405, 501):
                # Some CDNs refuse HEAD; one byte of a GET proves the same.
                resp = await self._ask(self._pool, "GET", key)
        except (HttpError, TimeoutError, OSError, ValueError):
            return Probe(False, None)
        return Probe(resp.status in (200, 206), resp.headers.get("ETag"))

    async def _ask(self, pool: Http1Pool, method: str, key: str) -> HttpResponse:
        url = split_url(self.url(key))
        async with asyncio.timeout(self._timeout):
            if method == "HEAD":
                return await pool.request("HEAD", url.target, url.host_header, {})
            # The body is never read: a CDN that ignores the range must not send us the whole object.
            answer = await pool.stream("GET", url.target, url.host_header, {"Range": "bytes=0-0"})
            await answer.body.aclose()
            return HttpResponse(answer.status, answer.headers, b"")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def etags_match(a: str | None, b: str | None) -> bool:
    """Equal ETags, ignoring quotes, weakness and case (CDNs re-quote and sometimes weaken them)."""
    if not a or not b:
        return False

    def norm(v: str) -> str:
        v = v.strip()
        if v.startswith("W/"):
            v = v[2:]
        return v.strip('"').lower()

    return norm(a) == norm(b)
