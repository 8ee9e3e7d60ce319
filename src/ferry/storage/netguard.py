"""Connections to hosts a caller chose (URL-list sources, CDN domains): resolved once, every address public, pinned.

A name is looked up once; every address it resolves to must be public (`is_public_address`), or the host is
refused; the HTTP client then connects only to those checked addresses (`Http1Pool(addresses=...)`, with the
name kept for Host, SNI and the certificate check), so a second lookup that DNS rebinding could point at
127.0.0.1 never happens. A host the operator trusts is pinned
the same way but not checked. Every refusal reads the same, whether the name is local, resolves to an internal
address or does not resolve at all, so a caller cannot use the answers to map internal DNS names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Final, NamedTuple

REFUSED: Final = "not a public address, or does not resolve"
_LOCAL_SUFFIXES: Final = (".localhost", ".local", ".internal")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_V4_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")
_LOCAL_NAT64: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
# Not global, whatever the running Python's tables say ("this network", IETF protocol assignments).
_NOT_GLOBAL_V4: Final = (ipaddress.IPv4Network("0.0.0.0/8"), ipaddress.IPv4Network("192.0.0.0/24"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeHost(Exception):
    """The host is a local name, resolves to a non-public address, or does not resolve (one answer for all)."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


class HostLookupError(OSError):
    """A trusted host does not resolve, or the lookup failed for now (a DNS server that did not answer)."""


def _public_v4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or any(ip in n for n in _NOT_GLOBAL_V4))


def is_public_address(ip: IPAddress) -> bool:
    """Whether a connection to `ip` reaches the public internet: False for loopback, private, link-local,
    multicast, reserved, unspecified and shared (CGNAT) addresses, and for IPv6 forms that carry an IPv4
    address a socket would reach (mapped, compatible, translated) or that embed a non-public one (NAT64, 6to4)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _public_v4(ip)
    if ip.ipv4_mapped is not None or ip in _V4_COMPATIBLE or ip in _V4_TRANSLATED or ip in _LOCAL_NAT64:
        return False
    if ip in _NAT64:
        return _public_v4(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None and not _public_v4(ip.sixtofour):
        return False
    if ip.teredo is not None:
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_site_local)


def is_public_host(host: str) -> bool:
    """False for a local name (`localhost`, `*.local`, `*.internal`...) or a non-public address literal.

    A DNS name passes without a lookup: use it for names from a trusted table, and `PinnedResolver.pin` for
    names a caller chose.
    """
    h = host.strip("[]").lower().rstrip(".")
    if h == "localhost" or h.endswith(_LOCAL_SUFFIXES):
        return False
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return True
    return is_public_address(ip)


class Address(NamedTuple):
    """One checked address of a host: what a connection is made to, by number."""

    host: str
    port: int
    family: int


@dataclass(frozen=True)
class Pinned:
    """The checked addresses of one host and port, and the canonical name the lookup reported."""

    addresses: tuple[Address, ...]
    canonical: str | None

    @property
    def hosts(self) -> tuple[str, ...]:
        """The addresses as numeric hosts, in the order the lookup gave them (`Http1Pool(addresses=...)`)."""
        return tuple(dict.fromkeys(a.host for a in self.addresses))


class PinnedResolver:
    """The lookups of a client that may connect only to pinned hosts: `pin` looks a host up once, checks it
    and remembers the answer (or the refusal); the client then connects to those addresses by number."""

    def __init__(self) -> None:
        self._pinned: dict[tuple[str, int], Pinned] = {}
        self._refused: set[tuple[str, int]] = set()
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def pin(self, host: str, port: int, *, trusted: bool = False) -> Pinned:
        """The checked addresses of `host:port`, looked up on first use only.

        Raises UnsafeHost when the host is not trusted and is local, does not resolve, or any of its
        addresses is not public; HostLookupError when a trusted host does not resolve or the lookup failed
        for now (neither is remembered, so a later call tries again).
        """
        key = (host.lower(), port)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._refused:
                raise UnsafeHost()
            found = self._pinned.get(key)
            if found is None:
                try:
                    found = await self._lookup(key[0], port, trusted)
                except UnsafeHost:
                    self._refused.add(key)
                    raise
                self._pinned[key] = found
            return found

    @staticmethod
    async def _lookup(host: str, port: int, trusted: bool) -> Pinned:
        if not trusted and not is_public_host(host):
            raise UnsafeHost()
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN or trusted:
                raise HostLookupError(f"{host}: the name lookup failed") from None
            raise UnsafeHost() from None
        except UnicodeError:
            if trusted:
                raise HostLookupError(f"{host}: not a valid host name") from None
            raise UnsafeHost() from None
        results: list[Address] = []
        canonical = None
        for family, _type, _proto, canon, address in infos:
            ip = str(address[0])
            if not trusted and not is_public_host(ip):
                raise UnsafeHost()
            canonical = canon or canonical
            results.append(Address(ip, int(address[1]), family))
        if not results:
            if trusted:
                raise HostLookupError(f"{host}: the name has no address")
            raise UnsafeHost()
        return Pinned(tuple(results), canonical)
