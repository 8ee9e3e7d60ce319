"""Shared fixtures: real local servers (two SeaweedFS, a lazy moto, Azurite, the GCS emulator), fresh bucket names
per test, kernel moves, fault-injection proxies in front of them."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from faultproxy import FaultProxy
from ferry.sandbox import AzuriteServer, MotoServer, S3Server, SeaweedServer
from ferry.storage import splice

BucketFactory = Callable[[S3Server], str]
FaultProxyFactory = Callable[[S3Server | str], FaultProxy]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: run each async test on asyncio's loop and on uvloop")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """asyncio's own loop for every async test; uvloop too where marked (the CLI runs on uvloop)."""
    if item.get_closest_marker("both_loops"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}

_bucket_counter = itertools.count(1)


@pytest.fixture(scope="session")
def seaweed_a() -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 server for the whole session (started on first use)."""
    with SeaweedServer() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_b() -> Iterator[SeaweedServer]:
    """A second, independent SeaweedFS server: a different endpoint, credentials and copy group."""
    with SeaweedServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """A moto S3 server (started only by tests that ask for it): archive classes, restore, AWS key order."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Any]:
    """The PyPI `gcp-storage-emulator` (Google Cloud Storage JSON API), started only by tests that ask for it."""
    from gcs_servers import GcsEmulator

    server = GcsEmulator().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    """Azurite's blob service, in memory, with an account of its own (started only by tests that ask for it)."""
    with AzuriteServer() as server:
        yield server


@pytest.fixture
def bucket_factory(request: pytest.FixtureRequest) -> BucketFactory:
    """`bucket_factory(server)` creates a bucket no other test uses on `server` and returns its name."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:36].strip("-") or "t"

    def make(server: S3Server) -> str:
        name = f"t{next(_bucket_counter)}-{slug}-{uuid.uuid4().hex[:8]}"
        return server.create_bucket(name)

    return make


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of the kernel moves (storage/splice.py) made, each recorded once it ended however it
    ended."""
    made: list[int] = []
    real = splice.move

    def counted(src: int, dst: int, prefix: list[bytes], count: int, stopper: splice.Stopper,
                timeout: float, **kw: Any) -> None:
        try:
            real(src, dst, prefix, count, stopper, timeout, **kw)
        finally:
            made.append(sum(map(len, prefix)) + count)

    monkeypatch.setattr(splice, "move", counted)
    return made


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxyFactory]:
    """`fault_proxy(server or endpoint)` starts a FaultProxy (tests/faultproxy.py) in front of it; all stop at
    teardown."""
    started: list[FaultProxy] = []

    def make(upstream: S3Server | str) -> FaultProxy:
        proxy = FaultProxy(upstream if isinstance(upstream, str) else upstream.endpoint).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
