"""The fault proxy (tests/faultproxy.py): transparent for Ferry's S3 traffic, and each fault does what it says."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import fastcrc
import pytest

from faultproxy import Blackhole, Damage, FaultProxy, RateCap, Reset, Stall, Status, Trickle
from ferry.errors import DigestMismatchError, FerryError, NotFoundError, TransientError
from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer
from ferry.storage.profiles import get_profile
from ferry.storage.s3 import S3Backend
from ferry.storage.sigv4 import SigV4Signer

Proxied = Callable[..., S3Backend]


@pytest.fixture
def proxy(seaweed_a: SeaweedServer, fault_proxy: Callable[[Any], FaultProxy]) -> FaultProxy:
    return fault_proxy(seaweed_a)


@pytest.fixture
async def backends(seaweed_a: SeaweedServer, bucket_factory: Any) -> AsyncIterator[Proxied]:
    """`make(endpoint, bucket=None, **kw)`: an S3Backend on seaweed_a's keys reached through `endpoint`."""
    made: list[S3Backend] = []
    default_bucket = bucket_factory(seaweed_a)

    def make(endpoint: str, bucket: str | None = None, **kw: Any) -> S3Backend:
        b = S3Backend(endpoint, seaweed_a.region, seaweed_a.access_key, seaweed_a.secret_key,
                      bucket or default_bucket, profile=get_profile("seaweedfs"), **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        await b.close()


def _diff(a: bytes, b: bytes) -> int:
    assert len(a) == len(b)
    return sum(x != y for x, y in zip(a, b, strict=True))


# -- transparency ------------------------------------------------------------------------------------------
async def test_put_get_multipart_and_streams_pass_through_untouched(
        proxy: FaultProxy, backends: Proxied, seaweed_a: SeaweedServer, bucket_factory: Any,
        moves: list[int]) -> None:
    b = backends(proxy.endpoint)
    data = os.urandom(300_000)
    put = await b.put("dir/one", data, ObjectMeta(content_type="text/plain", user={"a": "ü"}))
    assert put.etag == hashlib.md5(data).hexdigest()  # signed for the proxy's Host, verified upstream
    assert await b.read("dir/one") == data
    info, body = await b.read_object("dir/one")
    assert body == data and info.meta is not None and info.meta.user == {"a": "ü"}
    assert (await b.head("dir/one")).size == len(data)
    assert [o.key async for o in b.list("dir/")] == ["dir/one"]

    part1, part2 = os.urandom(b.capabilities.min_part_size), os.urandom(1000)
    upload = await b.create_multipart("big", ObjectMeta())
    with pytest.raises(DigestMismatchError):  # a part's CRC32C header goes through and is checked
        await b.upload_part("big", upload, 1, part1, crc32c=fastcrc.crc32.iscsi(part1) ^ 1)
    p1 = await b.upload_part("big", upload, 1, part1, crc32c=fastcrc.crc32.iscsi(part1))
    assert p1.crc32c_verified
    p2 = await b.upload_part("big", upload, 2, part2)
    await b.complete_multipart("big", upload, [p1, p2])
    assert await b.read("big") == part1 + part2

    async def pieces() -> AsyncGenerator[bytes, None]:
        for at in range(0, len(data), 65536):
            yield data[at:at + 65536]

    streamed = await b.put_stream("streamed", len(data), pieces, ObjectMeta(), trailing_crc32c=True)
    assert streamed.crc32c_verified  # an aws-chunked body with its trailer went through whole
    md5 = hashlib.md5(data).hexdigest()
    await b.put_stream("md5", len(data), pieces, ObjectMeta(), content_md5=md5)

    # A streamed GET moved in the kernel into a streamed PUT, both through the proxy.
    other = backends(proxy.endpoint, bucket_factory(seaweed_a))
    _, body_pieces = await b.read_stream("md5")
    await other.put_stream("spliced", len(data), lambda: body_pieces, ObjectMeta())
    assert moves, "the copy was not moved in the kernel"
    assert await other.read("spliced") == data
    assert proxy.requests == sum(proxy.methods.values()) > 10
    assert {"GET", "PUT", "POST", "HEAD"} <= set(proxy.methods)


def test_expect_continue_and_chunked_bodies_pass_through(proxy: FaultProxy, seaweed_a: SeaweedServer,
                                                          bucket_factory: Any) -> None:
    bucket = bucket_factory(seaweed_a)
    host = f"127.0.0.1:{proxy.port}"
    signer = SigV4Signer(seaweed_a.access_key, seaweed_a.secret_key, seaweed_a.region)
    body = b"x" * 5000
    headers = signer.sign("PUT", host, f"/{bucket}/expect", "", {"Expect": "100-continue"},
                          payload_hash=hashlib.sha256(body).hexdigest())
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        head = f"PUT /{bucket}/expect HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(head.encode())
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        s.sendall(body)
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    status, got = seaweed_a.request("GET", f"/{bucket}/expect")
    assert status == 200 and got == body


# -- faults ------------------------------------------------------------------------------------------------
async def test_damage_alters_bytes_of_a_get_keeping_its_length(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint)
    data = os.urandom(100_000)
    await b.put("k.bin", data, ObjectMeta())
    rule = proxy.add(Damage(count=3), method="GET", key=r"\.bin$", first=1)
    assert _diff(await b.read("k.bin"), data) == 3
    assert await b.read("k.bin") == data  # first=1: only once
    assert (rule.matched, rule.fired) == (2, 1)


async def test_damage_of_request_bodies_is_caught_by_the_store(proxy: FaultProxy, backends: Proxied,
                                                               seaweed_a: SeaweedServer) -> None:
    b = backends(proxy.endpoint)
    data = os.urandom(50_000)
    rule = proxy.add(Damage(count=1), method="PUT")
    put = await b.put("plain", data, ObjectMeta())  # no checksum sent: the damaged bytes land
    assert put.etag != hashlib.md5(data).hexdigest()
    direct = backends(seaweed_a.endpoint)
    assert _diff(await direct.read("plain"), data) == 1

    async def pieces() -> AsyncGenerator[bytes, None]:
        yield data

    # aws-chunked: the data is damaged, never its framing, so the store reads it and finds the CRC wrong.
    with pytest.raises(DigestMismatchError):
        await b.put_stream("trailer", len(data), pieces, ObjectMeta(), trailing_crc32c=True)
    with pytest.raises(DigestMismatchError):
        await b.put_stream("md5", len(data), pieces, ObjectMeta(), content_md5=hashlib.md5(data).hexdigest())
    assert rule.fired == 3


async def test_status_answers_without_forwarding(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint)
    await b.put("k", b"data", ObjectMeta())
    rule = proxy.add(Status(503, retry_after=2), method="GET", every=2)
    assert await b.read("k") == b"data"
    with pytest.raises(TransientError) as caught:
        await b.read("k")
    assert caught.value.s3_code == "SlowDown" and caught.value.http_status == 503
    assert caught.value.retry_after == 2
    proxy.add(Status(500), method="PUT", first=1)
    with pytest.raises(TransientError) as caught:
        await b.put("new", b"x" * 10_000, ObjectMeta())
    assert caught.value.s3_code == "InternalError"
    with pytest.raises(NotFoundError):
        await b.head("new")  # it never reached the store
    assert await b.read("k") == b"data" and rule.fired == 1


async def test_reset_cuts_a_get_and_a_put_mid_body(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint)
    data = os.urandom(200_000)
    await b.put("k", data, ObjectMeta())
    get = proxy.add(Reset(after=10_000), method="GET", first=1)
    with pytest.raises(TransientError, match=r"reset|closed"):
        await b.read("k")
    assert get.fired == 1 and await b.read("k") == data

    put = proxy.add(Reset(after=10_000), method="PUT", key="^cut$")
    with pytest.raises(TransientError):
        await b.put("cut", data, ObjectMeta())
    assert put.fired >= 1  # the pool sends a PUT again once when a reused connection fails unanswered
    with pytest.raises(NotFoundError):
        await b.head("cut")


async def test_stall_holds_then_times_out_or_goes_on(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint, read_timeout=1.0)
    data = os.urandom(200_000)
    await b.put("k", data, ObjectMeta())
    rule = proxy.add(Stall(after=5000), method="GET", first=1)
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        await b.read("k")
    assert rule.fired == 1 and time.monotonic() - started < 30
    proxy.clear()
    proxy.add(Stall(after=5000, seconds=0.5), method="GET", first=1)
    started = time.monotonic()
    assert await b.read("k") == data
    assert time.monotonic() - started >= 0.5


async def test_blackhole_never_answers(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint, read_timeout=1.0)
    rule = proxy.add(Blackhole(), method="HEAD")
    with pytest.raises(TransientError, match="timed out"):
        await b.head("anything")
    assert rule.fired == 1


async def test_trickle_slows_a_body_and_keeps_it_whole(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint)
    data = os.urandom(100_000)
    await b.put("k", data, ObjectMeta())
    rule = proxy.add(Trickle(rate=50_000), method="GET")
    started = time.monotonic()
    assert await b.read("k") == data
    assert time.monotonic() - started >= 1.5  # 100 kB at 50 kB/s; a loaded machine is only slower
    assert rule.fired == 1


async def test_rate_cap_lets_n_per_second_through(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint)
    await b.put("k", b"x", ObjectMeta())
    rule = proxy.add(RateCap(per_second=5, burst=5), method="HEAD")
    passed = refused = 0
    started = time.monotonic()
    for _ in range(30):
        try:
            await b.head("k")
            passed += 1
        except TransientError as e:
            assert e.http_status == 503  # a HEAD answer has no body to name SlowDown in
            refused += 1
    elapsed = time.monotonic() - started
    assert refused == rule.fired > 0
    assert 5 <= passed <= 5 + 5 * elapsed + 1


async def test_probability_is_seeded_and_matchers_narrow(proxy: FaultProxy, backends: Proxied) -> None:
    b = backends(proxy.endpoint)
    await b.put("a/1", b"x", ObjectMeta())
    outcomes: list[list[bool]] = []
    for _ in range(2):
        # 500, not 503: a 503 is throttling, and Ferry's pressure would slow these 40 HEADs to one a second.
        rule = proxy.add(Status(500), method="HEAD", path="/a/", probability=0.5, seed=7)
        seen = []
        for _ in range(20):
            try:
                await b.head("a/1")
                seen.append(True)
            except FerryError:
                seen.append(False)
        proxy.remove(rule)
        outcomes.append(seen)
        assert rule.matched == 20 and rule.fired == seen.count(False)
    assert outcomes[0] == outcomes[1] and 0 < outcomes[0].count(False) < 20
    proxy.add(Status(503), query="partNumber=")
    assert (await b.head("a/1")).size == 1  # no partNumber in a plain HEAD
