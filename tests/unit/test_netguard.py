"""The outbound-connection guard: which addresses count as public, and resolve-once-check-every-address-pin."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ferry.storage.http1 import Http1Pool
from ferry.storage.netguard import HostLookupError, PinnedResolver, UnsafeHost, is_public_address, is_public_host


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "100.127.255.254",
    "169.254.169.254", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.1.1.1", "240.0.0.1", "255.255.255.255",
    "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.1", "203.0.113.1",
    "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1", "2001:db8::1",
    "2001::1",  # Teredo
    "::127.0.0.1", "::10.0.0.1", "::8.8.8.8",  # IPv4-compatible (::/96): refused whatever they embed
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:8.8.8.8",  # IPv4-mapped: the socket reaches the v4 address
    "::ffff:0:127.0.0.1",  # IPv4-translated (SIIT)
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe",  # NAT64 to loopback, private, link-local
    "64:ff9b:1::8.8.8.8",  # local-use NAT64 prefix
    "2002:7f00:1::1", "2002:a00:1::1",  # 6to4 around a private v4
    "100::1",  # discard-only
])
def test_internal_address_forms_are_refused(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is False
    assert is_public_host(address) is False
    assert is_public_host(f"[{address}]") is False


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
    "64:ff9b::808:808",  # NAT64 to a public v4
    "2002:808:808::1",  # 6to4 around a public v4
])
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is True
    assert is_public_host(address) is True


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "a.localhost", "printer.local",
                                  "metadata.google.internal", "db.corp.internal."])
def test_local_names_are_refused_without_a_lookup(host: str) -> None:
    assert is_public_host(host) is False


def _loopback_name() -> str | None:
    """A name of this machine that resolves only to loopback and carries no local suffix (e.g. its
    hostname from /etc/hosts): what a name-only check lets through."""
    for name in (socket.gethostname(), "localhost.localdomain"):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            continue
        if infos and is_public_host(name) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos):
            return name
    return None


async def test_names_are_resolved_and_every_address_checked() -> None:
    resolver = PinnedResolver()
    refused = []
    for host in ["localhost", "127.1", "2130706433", "0x7f000001", "127.0.0.1", "::ffff:127.0.0.1",
                 "no-such-host.invalid"]:
        with pytest.raises(UnsafeHost) as info:
            await resolver.pin(host, 80)
        refused.append(str(info.value))
    # One answer whatever the reason: a caller cannot tell an internal name from a missing one.
    assert len(set(refused)) == 1 and "no-such-host" not in refused[0]
    name = _loopback_name()
    if name is not None:
        with pytest.raises(UnsafeHost):
            await resolver.pin(name, 80)
    public = await resolver.pin("8.8.8.8", 53)  # a literal: no lookup goes out
    assert [(r.host, r.port) for r in public.addresses] == [("8.8.8.8", 53)] and public.hosts == ("8.8.8.8",)


async def test_the_operator_may_trust_a_host_which_is_then_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = PinnedResolver()
    pinned = await resolver.pin("LocalHost", 8080, trusted=True)
    assert {r.host for r in pinned.addresses} <= {"127.0.0.1", "::1"}

    async def no_second_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pinned host was looked up again")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_second_lookup)
    assert await resolver.pin("localhost", 8080, trusted=True) == pinned
    with pytest.raises(AssertionError):
        await resolver.pin("localhost", 9090, trusted=True)  # pinned for another port only: a lookup of its own


async def test_a_failed_lookup_of_a_trusted_host_is_not_a_refusal() -> None:
    with pytest.raises(HostLookupError):
        await PinnedResolver().pin("no-such-host.invalid", 80, trusted=True)


@pytest.fixture
def local_http() -> Iterator[int]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def test_a_pool_connects_only_to_pinned_addresses(local_http: int, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = await PinnedResolver().pin("localhost", local_http, trusted=True)

    async def no_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pool looked the host up again")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_lookup)
    # The server listens on 127.0.0.1 only: a pinned ::1 (if localhost has it) is refused, the next tried.
    pool = Http1Pool("http", "localhost", local_http, addresses=pinned.hosts)
    try:
        assert (await pool.request("GET", "/", f"localhost:{local_http}", {})).body == b"hello"
    finally:
        await pool.close()
