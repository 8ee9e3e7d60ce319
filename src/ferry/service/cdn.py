"""Probing objects through a CDN domain (show_cdn_info) without letting a caller reach internal hosts.

A caller names the CDN domain, so it is an SSRF vector: the domain is resolved once, every address must
be public (`endpoints.is_public_host`), and the HTTP client connects only to those pinned addresses (no
second lookup that DNS rebinding could turn to 127.0.0.1), never follows redirects and ignores proxy
settings. The operator may allow non-public CDN hosts (a CDN inside a private network, or a test server)
with `FERRY_CDN_ALLOWED_HOSTS`: a comma-separated list of `host` or `host:port` entries, e.g.
`FERRY_CDN_ALLOWED_HOSTS=127.0.0.1:8080,cdn.corp.internal`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ferry.service.endpoints import is_public_host

ALLOWED_HOSTS_ENV: Final = "FERRY_CDN_ALLOWED_HOSTS"
_BAD_DOMAIN_CHARS: Final = frozenset("/\\@?#%")
_NUMERIC_FLAGS: Final = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV

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


def same_cloud(cloud: str, names: tuple[str, ...]) -> bool:
    """Whether any of `names` (the domain and its CNAME target) belongs to `cloud`'s CDN."""
    key = "huaweicloud" if cloud == "hec" else cloud
    suffixes = CDN_SUFFIXES.get(key, ())
    for name in names:
        n = name.lower().rstrip(".")
        if any(n == s or n.endswith("." + s) for s in suffixes):
            return True
    return False


class _PinnedResolver(AbstractResolver):
    """Answers only for the checked host, with the addresses checked: no second DNS lookup."""

    def __init__(self, host: str, results: list[ResolveResult]) -> None:
        self._host = host
        self._results = results

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower() != self._host:
            raise OSError("host not pinned")
        return list(self._results)

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Probe:
    """What the CDN said about one key: reachable with a 2xx, and the ETag it sent."""

    ok: bool
    etag: str | None


class CdnClient:
    """HEAD (or a 1-byte GET where HEAD is refused) of objects through one CDN domain."""

    def __init__(self, protocol: str, host: str, port: int | None, query: str, timeout: float) -> None:
        self._base = f"{protocol}://{host}" + (f":{port}" if port else "")
        self._query = query
        self._host = host
        self._port = port or (443 if protocol == "https" else 80)
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self.names: tuple[str, ...] = (host,)

    async def connect(self, allowed: frozenset[str]) -> bool:
        """Resolve and check the domain; False when it does not resolve (nothing can be downloaded).

        Raises CdnDomainError when an address is not public and the operator did not allow the host.
        """
        trusted = self._host in allowed or f"{self._host}:{self._port}" in allowed
        if not trusted and not is_public_host(self._host):
            raise CdnDomainError("source_cdn.domain is not a public address")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_CANONNAME)
        except (socket.gaierror, UnicodeError):
            return False
        results: list[ResolveResult] = []
        for family, _type, proto, canon, address in infos:
            ip = str(address[0])
            if not trusted and not is_public_host(ip):
                raise CdnDomainError("source_cdn.domain resolves to a non-public address")
            if canon:
                self.names = (self._host, canon)
            results.append(ResolveResult(hostname=self._host, host=ip, port=int(address[1]),
                                         family=family, proto=proto, flags=_NUMERIC_FLAGS))
        if not results:
            return False
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(self._host, results), limit=8,
                                         use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self._timeout, sock_connect=min(10.0, self._timeout)),
            headers={"User-Agent": "ferry-cdn-check"},
        )
        return True

    def url(self, key: str) -> str:
        return f"{self._base}/{quote(key, safe='/~')}" + (f"?{self._query}" if self._query else "")

    async def probe(self, key: str) -> Probe:
        if self._session is None:
            return Probe(False, None)
        url = self.url(key)
        try:
            async with self._session.head(url, allow_redirects=False) as resp:
                status, etag = resp.status, resp.headers.get("ETag")
            if status in (405, 501):
                # Some CDNs refuse HEAD; one byte of a GET proves the same.
                async with self._session.get(url, allow_redirects=False, headers={"Range": "bytes=0-0"}) as resp:
                    status, etag = resp.status, resp.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError, OSError):
            return Probe(False, None)
        return Probe(status in (200, 206), etag)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


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
