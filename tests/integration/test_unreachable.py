"""DNS failure and an unreachable endpoint: a blip is ridden out, an outage stops the run with a clear error in
bounded time, and an endpoint never reached fails at once. Names resolve through a fake resolver (asyncio looks
names up with socket.getaddrinfo), so no real DNS is asked."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ferry.errors import FatalError
from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer
from ferry.storage.profiles import get_profile
from ferry.storage.s3 import S3Backend

NAME = "store.ferry-test.invalid"


class Resolver:
    """Resolves NAME to 127.0.0.1 unless told the name is gone; other names as usual."""

    def __init__(self) -> None:
        self.failing = False
        self.lookups = 0
        self._real = socket.getaddrinfo
        self._lock = threading.Lock()

    def __call__(self, host: Any, *args: Any, **kw: Any) -> Any:
        if host == NAME:
            with self._lock:
                self.lookups += 1
            if self.failing:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            host = "127.0.0.1"
        return self._real(host, *args, **kw)


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Resolver]:
    r = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", r)
    yield r


def _backend(server: SeaweedServer, bucket: str) -> S3Backend:
    port = server.endpoint.rsplit(":", 1)[1]
    return S3Backend(f"http://{NAME}:{port}", server.region, server.access_key, server.secret_key, bucket,
                     profile=get_profile("seaweedfs"))


async def test_a_dns_blip_is_ridden_out(seaweed_a: SeaweedServer, bucket_factory: Any, resolver: Resolver) -> None:
    bucket = bucket_factory(seaweed_a)
    first = _backend(seaweed_a, bucket)
    await first.put("k", b"data", ObjectMeta())  # the endpoint answered once
    fresh = _backend(seaweed_a, bucket)  # no connection of its own yet: it must look the name up
    resolver.failing = True
    read = asyncio.ensure_future(fresh.read("k"))
    await asyncio.sleep(2.5)  # tried once a second meanwhile
    assert not read.done() and resolver.lookups >= 2
    resolver.failing = False
    assert await asyncio.wait_for(read, 30) == b"data"
    await first.close()
    await fresh.close()


async def test_an_outage_stops_with_a_clear_error_in_bounded_time(
        seaweed_a: SeaweedServer, bucket_factory: Any, resolver: Resolver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_UNREACHABLE_SECONDS", "1.5")
    bucket = bucket_factory(seaweed_a)
    first = _backend(seaweed_a, bucket)
    await first.put("k", b"data", ObjectMeta())
    fresh = _backend(seaweed_a, bucket)
    resolver.failing = True
    started = time.monotonic()
    with pytest.raises(FatalError, match=r"cannot connect to store\.ferry-test\.invalid:\d+ \(Name or service"):
        await fresh.read("k")
    assert 1.4 <= time.monotonic() - started < 15
    await first.close()
    await fresh.close()


async def test_an_endpoint_never_reached_fails_at_once(seaweed_a: SeaweedServer, bucket_factory: Any,
                                                       resolver: Resolver) -> None:
    resolver.failing = True
    backend = _backend(seaweed_a, bucket_factory(seaweed_a))
    started = time.monotonic()
    with pytest.raises(FatalError, match="cannot connect"):
        await backend.head("k")
    assert time.monotonic() - started < 5 and resolver.lookups == 1
    await backend.close()
