"""The lean HTTP/1.1 client against scripted loopback servers: framing, keep-alive, retries, timeouts, errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import struct
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ferry.storage import splice
from ferry.storage.http1 import (
    Http1Pool,
    HttpConnectError,
    HttpError,
    HttpTimeout,
    StreamBody,
    pass_splice,
    split_url,
)

# Every test on both loops: the CLI runs on uvloop, the API server on asyncio's own.
pytestmark = pytest.mark.both_loops


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]  # returns False to close the connection


@dataclass
class Server:
    port: int
    requests: list[Request] = field(default_factory=list)
    connections: int = 0


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, target, headers, body)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        state = Server(0)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            try:
                while (request := await _read_request(reader)) is not None:
                    state.requests.append(request)
                    keep = await handler(request, writer)
                    await writer.drain()
                    if not keep:
                        break
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    for server in servers:
        server.close()


def answer(status: int = 200, body: bytes = b"", headers: str = "", *, length: bool = True) -> Handler:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        head = f"HTTP/1.1 {status} X\r\n{headers}"
        if length:
            head += f"Content-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (b"" if request.method == "HEAD" else body))
        return length

    return handle


def pool(port: int, read_timeout: float = 120.0) -> Http1Pool:
    return Http1Pool("http", "127.0.0.1", port, read_timeout=read_timeout)


async def test_content_length_answer_and_keep_alive(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer(200, b"hello", "ETag: \"abc\"\r\nX-Amz-Meta-A: 1\r\nX-Amz-Meta-A: 2\r\n"))
    p = pool(server.port)
    for _ in range(3):
        r = await p.request("GET", "/b/k?x=1", "h:1", {"Range": "bytes=0-4"})
        assert (r.status, r.body, r.headers["etag"], r.headers.getall("x-amz-meta-a")) == (200, b"hello", '"abc"',
                                                                                           ["1", "2"])
    assert server.connections == 1
    request = server.requests[0]
    assert (request.method, request.target, request.headers["host"], request.headers["range"]) == (
        "GET", "/b/k?x=1", "h:1", "bytes=0-4")
    assert "content-length" not in request.headers  # a GET without a body announces none
    await p.close()


async def test_put_sends_the_body_with_its_length(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer(200))
    p = pool(server.port)
    big = bytes(range(256)) * 40_000  # 10 MB: written in slices under the transport's flow control
    for body in (b"", b"small", big):
        assert (await p.request("PUT", "/b/k", "h", {}, body)).status == 200
    assert [r.body for r in server.requests] == [b"", b"small", big]
    assert [r.headers["content-length"] for r in server.requests] == ["0", "5", str(len(big))]
    await p.close()


async def test_a_large_answer_arrives_whole(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    body = bytes(range(251)) * 50_000
    server = await serve(answer(200, body))
    p = pool(server.port)
    assert (await p.request("GET", "/k", "h", {})).body == body
    await p.close()


async def test_chunked_answer_fed_byte_by_byte(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n")
        for i in range(len(raw)):
            writer.write(raw[i:i + 1])
            await writer.drain()
        return True

    server = await serve(handle)
    p = pool(server.port)
    for _ in range(2):
        r = await p.request("GET", "/k", "h", {})
        assert (r.status, r.body) == (200, b"hello" + b"z" * 26)
    assert server.connections == 1
    await p.close()


async def test_answer_without_length_reads_to_close(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer(200, b"until the end", length=False))
    p = pool(server.port)
    for _ in range(2):
        assert (await p.request("GET", "/k", "h", {})).body == b"until the end"
    assert server.connections == 2  # such an answer ends the connection
    await p.close()


async def test_no_body_for_head_204_and_after_100_continue(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        elif request.method == "DELETE":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        return True

    server = await serve(handle)
    p = pool(server.port)
    head = await p.request("HEAD", "/k", "h", {})
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "1234")
    assert (await p.request("DELETE", "/k", "h", {})).status == 204
    posted = await p.request("POST", "/k", "h", {})
    assert (posted.status, posted.body) == (201, b"ok")
    assert server.connections == 1
    await p.close()


async def test_idle_connection_closed_by_the_server_is_retried_for_idempotent_methods(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # closes the socket after answering, without saying Connection: close

    server = await serve(handle)
    p = pool(server.port)
    assert (await p.request("GET", "/k", "h", {})).body == b"ok"
    await asyncio.sleep(0.05)  # the close reaches the client, which still holds the connection as idle
    assert (await p.request("GET", "/k", "h", {})).body == b"ok"
    assert (await p.request("PUT", "/k", "h", {}, b"x")).body == b"ok"
    assert server.connections == 3
    await p.close()


async def test_a_reset_mid_answer_is_an_error_and_not_resent(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False

    server = await serve(handle)
    p = pool(server.port)
    with pytest.raises(HttpError, match="mid-answer"):
        await p.request("GET", "/k", "h", {})
    assert len(server.requests) == 1
    await p.close()


async def test_read_timeout(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    server = await serve(silent)
    p = pool(server.port, read_timeout=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(HttpTimeout):
        await p.request("GET", "/k", "h", {})
    assert 0.15 < loop.time() - start < 2
    await p.close()


async def test_a_slow_but_steady_answer_is_not_timed_out(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
        for byte in b"steady" * 2:
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()
        return True

    server = await serve(trickle)
    p = pool(server.port, read_timeout=0.5)  # 0.4 s to spare per byte for a busy machine
    assert (await p.request("GET", "/k", "h", {})).body == b"steady" * 2  # 1.2 s in all, never 0.5 s idle
    await p.close()


async def test_refused_connection_names_the_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        p = pool(port)
        with pytest.raises(HttpConnectError) as info:
            await p.request("GET", "/k", "h", {})
    assert "refused" in info.value.reason.lower() and not info.value.certificate


@pytest.mark.parametrize("raw", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\nab",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
])
async def test_malformed_answers_are_errors(serve: Callable[[Handler], Awaitable[Server]], raw: bytes) -> None:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await asyncio.sleep(0.2)
        return False

    server = await serve(handle)
    p = pool(server.port)
    with pytest.raises(HttpError):
        await p.request("GET", "/k", "h", {})
    await p.close()


async def test_extra_bytes_after_the_answer_retire_the_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server = await serve(lambda r, w: _write_and_keep(w, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"))
    p = pool(server.port)
    for _ in range(2):
        assert (await p.request("GET", "/k", "h", {})).body == b"ok"
    assert server.connections == 2
    await p.close()


async def _write_and_keep(writer: asyncio.StreamWriter, raw: bytes) -> bool:
    writer.write(raw)
    return True


@pytest.mark.parametrize("headers", [{"X-Amz-Meta-A": "v\r\nX-Evil: 1"}, {"X-Amz-Meta-A": "v\n"},
                                     {"Bad\rName": "v"}])
async def test_header_injection_is_refused_before_sending(
    serve: Callable[[Handler], Awaitable[Server]], headers: dict[str, str],
) -> None:
    server = await serve(answer(200))
    p = pool(server.port)
    with pytest.raises(ValueError):
        await p.request("PUT", "/k", "h", headers, b"x")
    with pytest.raises(ValueError):
        await p.request("GET", "/a b", "h", {})
    assert server.connections == 0
    await p.close()


async def test_a_cancelled_request_drops_its_connection(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def slow_then_fast(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/slow":
            await asyncio.sleep(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    server = await serve(slow_then_fast)
    p = pool(server.port)
    task = asyncio.ensure_future(p.request("GET", "/slow", "h", {}))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The late answer to /slow must never be taken for the answer to the next request.
    assert (await p.request("GET", "/fast", "h", {})).body == b"ok"
    assert server.connections == 2
    await p.close()


async def test_connections_are_bounded_by_the_limit(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    server = await serve(slow)
    p = Http1Pool("http", "127.0.0.1", server.port, limit=3)
    await asyncio.gather(*(p.request("GET", f"/{i}", "h", {}) for i in range(12)))
    assert server.connections == 3
    await p.close()
    with pytest.raises(HttpError, match="closed"):
        await p.request("GET", "/k", "h", {})


def _self_signed(tmp: Path, dns_name: str | None = None) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (or for `dns_name`) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(dns_name)] if dns_name else [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_a_pool_connects_only_to_the_given_addresses_in_the_hosts_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The name does not resolve anywhere: the pool must reach the server by the checked address alone, and
    # still say the name to TLS (SNI, certificate check) and in Host.
    name = "cdn.pinned.invalid"
    cert, key = _self_signed(tmp_path, name)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, server_name, _ctx: sni.append(server_name)  # type: ignore[assignment, misc]
    hosts: list[str] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await _read_request(reader)) is not None:
            hosts.append(request.headers["host"])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    lookup = loop.getaddrinfo

    async def numeric_only(host: str, *args: object, **kwargs: object) -> object:
        assert host != name, "the pinned name was looked up"
        return await lookup(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", numeric_only)
    trust = ssl.create_default_context(cafile=cert)
    url = split_url(f"https://{name.upper()}:{port}/a b/ü?q=1 2")
    assert (url.host, url.port, url.host_header, url.target) == (
        name, port, f"{name}:{port}", "/a%20b/%C3%BC?q=1%202")
    try:
        # 127.0.0.2 is loopback too but nobody listens there: refused, the next address is tried.
        pinned = Http1Pool("https", url.host, url.port, ssl_context=trust, addresses=("127.0.0.2", "127.0.0.1"))
        assert (await pinned.request("GET", url.target, url.host_header, {})).body == b"ok"
        await pinned.close()
        assert hosts == [f"{name}:{port}"] and sni == [name]
        monkeypatch.undo()
        unpinned = Http1Pool("https", url.host, url.port, ssl_context=trust)
        with pytest.raises(HttpConnectError):
            await unpinned.request("GET", url.target, url.host_header, {})  # looked up: no such name
        await unpinned.close()
    finally:
        server.close()

async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = Http1Pool("https", "127.0.0.1", port, ssl_context=ssl.create_default_context(cafile=cert))
        for _ in range(2):
            assert (await trusting.request("GET", "/k", "h", {})).body == b"secret"
        await trusting.close()
        default = Http1Pool("https", "127.0.0.1", port)  # the system's CAs do not know this certificate
        with pytest.raises(HttpConnectError) as info:
            await default.request("GET", "/k", "h", {})
        assert info.value.certificate
        await default.close()
    finally:
        server.close()


async def test_an_answer_before_the_whole_body_retires_the_connection() -> None:
    """A server that refuses an upload after its headers and stops reading: the client takes the answer,
    stops sending, and does not reuse the socket (the rest of the body would pass for a request)."""
    connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3)  # reads nothing more
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    p = pool(server.sockets[0].getsockname()[1], read_timeout=5)
    try:
        for expected in (1, 2):
            r = await asyncio.wait_for(p.request("PUT", "/k", "h", {}, b"x" * (64 * 1024 * 1024)), 5)
            assert r.status == 413 and connections == expected
    finally:
        await p.close()
        server.close()


async def test_a_body_read_to_close_that_ends_in_a_reset_is_an_error(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST
        writer.transport.abort()
        return False

    server = await serve(handle)
    p = pool(server.port)
    with pytest.raises(HttpError, match="reset"):
        await p.request("GET", "/k", "h", {})
    await p.close()


class Producer:
    """A streamed body: `pieces` in turn, then optionally an error; records whether it was closed."""

    def __init__(self, pieces: list[bytes], error: Exception | None = None) -> None:
        self.pieces = pieces
        self.error = error
        self.closed = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            for piece in self.pieces:
                await asyncio.sleep(0)
                yield piece
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


async def test_a_streamed_body_goes_whole_on_a_fresh_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server = await serve(answer(200, b"ok"))
    p = pool(server.port)
    await p.request("GET", "/warm", "h", {})  # leaves an idle connection a streamed body must not take
    # Tiny pieces gathered into writes, a piece larger than a write slice, an empty one, many small ones.
    pieces = [os.urandom(n) for n in (1, 3 * 1024 * 1024 + 5, 0, 70_000, *[999] * 3000)]
    producer = Producer(pieces)
    r = await p.request("PUT", "/k", "h", {}, StreamBody(sum(map(len, pieces)), producer.chunks()))
    assert r.status == 200 and producer.closed
    assert server.requests[-1].body == b"".join(pieces)
    assert server.requests[-1].headers["content-length"] == str(sum(map(len, pieces)))
    assert server.connections == 2
    await p.close()


@pytest.mark.parametrize("announced", [99, 101])
async def test_a_streamed_body_of_the_wrong_length_is_an_error(
    serve: Callable[[Handler], Awaitable[Server]], announced: int,
) -> None:
    server = await serve(answer(200, b"ok"))
    p = pool(server.port)
    producer = Producer([b"x" * 60, b"y" * 40])
    with pytest.raises(HttpError, match="announced"):
        await p.request("PUT", "/k", "h", {}, StreamBody(announced, producer.chunks()))
    assert producer.closed and server.requests == []  # the server never saw a whole request
    assert (await p.request("GET", "/k", "h", {})).status == 200  # and the pool goes on
    await p.close()


async def test_a_producer_error_comes_through_and_the_connection_is_dropped(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    class SourceGone(Exception):
        pass

    server = await serve(answer(200, b"ok"))
    p = pool(server.port)
    producer = Producer([b"x" * 1000], SourceGone("the source changed"))
    with pytest.raises(SourceGone):
        await p.request("PUT", "/k", "h", {}, StreamBody(5000, producer.chunks()))
    assert producer.closed and server.requests == []
    assert (await p.request("GET", "/k", "h", {})).status == 200 and server.connections == 2
    await p.close()


async def test_an_early_answer_stops_a_streamed_body_and_closes_its_producer() -> None:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 400 BadDigest\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    p = pool(server.sockets[0].getsockname()[1], read_timeout=5)
    endless = Producer([b"z" * (1024 * 1024)] * 256)  # 256 MiB that the server never reads
    try:
        r = await asyncio.wait_for(p.request("PUT", "/k", "h", {}, StreamBody(256 * 1024 * 1024, endless.chunks())), 5)
        assert r.status == 400 and endless.closed
    finally:
        await p.close()
        server.close()


async def test_a_streamed_answer_arrives_in_pieces_and_keeps_its_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    body = os.urandom(8 * 1024 * 1024 + 3)
    server = await serve(answer(200, body, "ETag: \"e\"\r\n"))
    p = Http1Pool("http", "127.0.0.1", server.port, limit=1)
    r = await p.stream("GET", "/k", "h", {})
    assert (r.status, r.headers["etag"]) == (200, '"e"')
    pieces = [piece async for piece in r.body]
    assert b"".join(pieces) == body and len(pieces) > 1
    for _ in range(2):  # the connection (the only one the limit allows) went back for reuse
        r = await p.stream("GET", "/k", "h", {})
        assert b"".join([piece async for piece in r.body]) == body
    assert server.connections == 1
    await p.close()


async def test_an_error_answer_to_a_stream_is_read_whole(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer(404, b"<Code>NoSuchKey</Code>"))
    p = Http1Pool("http", "127.0.0.1", server.port, limit=1)
    for _ in range(2):
        r = await p.stream("GET", "/k", "h", {})
        assert (r.status, [piece async for piece in r.body]) == (404, [b"<Code>NoSuchKey</Code>"])
    assert server.connections == 1
    await p.close()


async def test_a_stream_closed_early_drops_its_connection_and_frees_its_slot(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server = await serve(answer(200, os.urandom(16 * 1024 * 1024)))
    p = Http1Pool("http", "127.0.0.1", server.port, limit=1)
    r = await p.stream("GET", "/k", "h", {})
    await anext(r.body)
    await r.body.aclose()
    r = await asyncio.wait_for(p.stream("GET", "/k", "h", {}), 5)  # the one slot is free again
    assert sum([len(piece) async for piece in r.body]) == 16 * 1024 * 1024
    assert server.connections == 2  # the half-read connection was not reused
    await p.close()


async def test_a_slow_reader_pauses_the_stream(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """Reading stops while the reader is behind, so what waits in memory stays near the pause mark
    however large the body."""
    server = await serve(answer(200, os.urandom(48 * 1024 * 1024)))
    p = pool(server.port)
    r = await p.stream("GET", "/k", "h", {})
    conn = next(iter(p._busy))
    peak = total = 0
    async for piece in r.body:
        total += len(piece)
        await asyncio.sleep(0.002)
        assert conn._body is not None
        peak = max(peak, conn._body.buffered)
    assert total == 48 * 1024 * 1024 and peak <= 4 * 1024 * 1024
    await p.close()


async def test_a_reset_or_a_stall_mid_stream_is_an_error(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        if request.target == "/reset":
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            await asyncio.sleep(2)
        return False

    server = await serve(handle)
    p = pool(server.port, read_timeout=0.3)
    for target, error in (("/reset", "mid-answer"), ("/stall", "no more")):
        r = await p.stream("GET", target, "h", {})
        with pytest.raises(HttpError, match=error):
            async for _ in r.body:
                pass
    await p.close()


# -- a streamed answer moved into a streamed request in the kernel -------------------------------------
def source(body: bytes, *, cut: int | None = None, reset: bool = False, stall: float = 0.0) -> Handler:
    """Answers every GET with `body`; with `cut`, only its first `cut` bytes, then (after `stall` s) a close
    or with `reset` a RST."""
    async def handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        if cut is None:
            writer.write(body)
            return True
        writer.write(body[:cut])
        await writer.drain()
        await asyncio.sleep(stall)
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return False

    return handle


async def _moving(src: Http1Pool) -> None:
    """Wait (up to 5 s, however busy the machine) until a connection of `src` is being moved in the kernel."""
    async with asyncio.timeout(5):
        while not any(conn._stopper is not None for conn in src._busy):
            await asyncio.sleep(0.01)


async def _relay(src: Http1Pool, dst: Http1Pool, target: str = "/k") -> int:
    got = await src.stream("GET", target, "h", {})
    length = int(got.headers["content-length"])
    async with contextlib.aclosing(got.body):
        r = await dst.request("PUT", "/copy", "h", {}, StreamBody(length, got.body))
    return r.status


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
async def test_a_streamed_answer_moves_into_a_streamed_request_in_the_kernel(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int],
) -> None:
    body = os.urandom(9 * 1024 * 1024 + 17)
    src_server, dst_server = await serve(source(body)), await serve(answer(200, b""))
    src, dst = pool(src_server.port), pool(dst_server.port)
    for n in (1, 2):
        assert await _relay(src, dst) == 200
        assert dst_server.requests[-1].body == body and len(moves) == n
    assert moves == [len(body)] * 2
    assert src_server.connections == 1  # the source's connection went back for reuse after each move
    assert (await src.request("GET", "/k", "h", {})).body == body  # and still speaks HTTP in step
    await src.close()
    await dst.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
async def test_a_move_reports_its_progress_in_steps_before_it_ends(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int],
) -> None:
    body = os.urandom(5 * splice.PROGRESS_STEP + 1000)
    src_server, dst_server = await serve(source(body)), await serve(answer(200, b""))
    src, dst = pool(src_server.port), pool(dst_server.port)
    got = await src.stream("GET", "/k", "h", {})
    reports: list[int] = []

    async def passed_through() -> AsyncGenerator[bytes, None]:
        async for piece in got.body:
            yield piece  # never runs: the bytes are moved in the kernel

    outer = passed_through()
    pass_splice(outer, got.body, reports.append)
    r = await dst.request("PUT", "/copy", "h", {}, StreamBody(len(body), outer))
    # Every report reached the event loop before the request ended: a progress bar saw the bytes move.
    assert r.status == 200 and dst_server.requests[-1].body == body and moves == [len(body)]
    assert sum(reports) == len(body) and len(reports) >= 5
    assert all(n >= splice.PROGRESS_STEP for n in reports[:-1]), reports
    await src.close()
    await dst.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
async def test_bytes_seen_on_the_way_are_not_moved_in_the_kernel(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int],
) -> None:
    body = os.urandom(3 * 1024 * 1024)
    src_server, dst_server = await serve(source(body)), await serve(answer(200, b""))
    src, dst = pool(src_server.port), pool(dst_server.port)
    got = await src.stream("GET", "/k", "h", {})

    async def looked_at() -> AsyncGenerator[bytes, None]:
        async for piece in got.body:
            yield piece

    r = await dst.request("PUT", "/copy", "h", {}, StreamBody(len(body), looked_at()))
    assert r.status == 200 and dst_server.requests[-1].body == body and moves == []
    await src.close()
    await dst.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
@pytest.mark.parametrize("reset", [False, True])
async def test_a_source_that_ends_early_fails_the_move_and_both_connections_go(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int], reset: bool,
) -> None:
    body = os.urandom(4 * 1024 * 1024)
    src_server = await serve(source(body, cut=1024 * 1024, reset=reset, stall=0.1))
    dst_server = await serve(answer(200, b""))
    src, dst = pool(src_server.port, read_timeout=5), pool(dst_server.port, read_timeout=5)
    with pytest.raises(HttpError, match="reading the body to send"):
        await asyncio.wait_for(_relay(src, dst), 5)
    assert moves == [len(body)] and dst_server.requests == []  # the destination never got a whole request
    assert src._idle == [] and dst._idle == []
    await src.close()
    await dst.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
async def test_a_stalled_source_times_the_move_out(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int],
) -> None:
    src_server = await serve(source(os.urandom(2 * 1024 * 1024), cut=100_000, stall=5))
    dst_server = await serve(answer(200, b""))
    src, dst = pool(src_server.port), pool(dst_server.port, read_timeout=0.3)
    with pytest.raises(HttpTimeout, match="no progress"):
        await asyncio.wait_for(_relay(src, dst), 5)
    assert len(moves) == 1
    await src.close()
    await dst.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
async def test_an_early_answer_stops_the_move(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int],
) -> None:
    """The destination refuses after the head and reads nothing more while the source keeps the rest coming
    slowly: the answer comes back at once, the move ends, and neither connection is kept."""
    connections = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3)
        writer.close()

    body = os.urandom(64 * 1024 * 1024)
    src_server = await serve(source(body, cut=512 * 1024, stall=3))
    refuser = await asyncio.start_server(refuse, "127.0.0.1", 0)
    src, dst = pool(src_server.port, read_timeout=10), pool(refuser.sockets[0].getsockname()[1], read_timeout=10)
    try:
        assert await asyncio.wait_for(_relay(src, dst), 2) == 403
        assert moves == [len(body)] and src._idle == [] and dst._idle == []
    finally:
        await src.close()
        await dst.close()
        refuser.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
async def test_a_cancelled_move_ends_before_the_request_does(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stopper is set when the move is handed to its thread; on a busy machine the thread may not have
    # taken it yet (cancelling then withdraws it unstarted), so the cancellation waits until it runs.
    started = threading.Event()
    recorded = splice.move

    def starting(*args: object, **kw: object) -> None:
        started.set()
        recorded(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(splice, "move", starting)
    src_server = await serve(source(os.urandom(8 * 1024 * 1024), cut=1024 * 1024, stall=5))
    dst_server = await serve(answer(200, b""))
    src, dst = pool(src_server.port), pool(dst_server.port)
    task = asyncio.ensure_future(_relay(src, dst))
    await _moving(src)
    assert await asyncio.to_thread(started.wait, 10)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)  # generous: a loaded 2-core machine
    assert len(moves) == 1  # the move had already ended when the cancellation came through
    assert src._idle == [] and dst._idle == []
    await src.close()
    await dst.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
def test_move_writes_the_prefix_then_exactly_the_count() -> None:
    a_out, a_in = socket.socketpair()
    b_out, b_in = socket.socketpair()
    for s in (a_in, b_out):
        s.setblocking(False)
    data = os.urandom(3 * 1024 * 1024)
    a_out.sendall(data[:200_000])
    stopper = splice.Stopper()
    feeder = threading.Thread(target=a_out.sendall, args=(data[200_000:] + b"next request",))
    feeder.start()
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_recv_exactly(b_in, len(data) + 3)))
    reader.start()
    splice.move(a_in.fileno(), b_out.fileno(), [b"pre"], len(data), stopper, 5)
    feeder.join()
    reader.join()
    assert bytes(received) == b"pre" + data
    assert _recv_exactly(a_in, 12, blocking=True) == b"next request"  # not a byte more was taken
    stopper.close()
    for s in (a_out, a_in, b_out, b_in):
        s.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
def test_a_stopped_move_ends_at_once() -> None:
    a_out, a_in = socket.socketpair()
    b_out, b_in = socket.socketpair()
    for s in (a_in, b_out):
        s.setblocking(False)
    stopper = splice.Stopper()
    threading.Timer(0.2, stopper.stop).start()
    with pytest.raises(splice.SpliceError) as caught:
        splice.move(a_in.fileno(), b_out.fileno(), [], 1000, stopper, 30)
    assert caught.value.side == "stopped"
    stopper.close()
    for s in (a_out, a_in, b_out, b_in):
        s.close()


def _recv_exactly(sock: socket.socket, n: int, blocking: bool = True) -> bytes:
    sock.setblocking(blocking)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
async def test_a_source_connection_dropped_mid_move_fails_the_request_at_once(
    serve: Callable[[Handler], Awaitable[Server]], moves: list[int],
) -> None:
    """The source's connection is aborted on our side while the destination still waits for the body: the
    request fails now rather than when the destination gives up waiting."""
    src_server = await serve(source(os.urandom(8 * 1024 * 1024), cut=1024 * 1024, stall=5))
    dst_server = await serve(answer(200, b""))
    src, dst = pool(src_server.port), pool(dst_server.port, read_timeout=30)
    task = asyncio.ensure_future(_relay(src, dst))
    await _moving(src)
    (conn,) = src._busy
    conn.abort()
    with pytest.raises(HttpError, match="source's connection failed"):
        await asyncio.wait_for(task, 2)
    assert len(moves) == 1 and dst._idle == []
    await src.close()
    await dst.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="no splice on this system")
def test_stopping_a_closed_stopper_writes_nowhere() -> None:
    """An exchange may end (and stop its move) just after the move closed its stopper: by then the number
    may be another file's, which must not get the stopper's 8 bytes."""
    stopper = splice.Stopper()
    number = stopper.fd
    r, w = os.pipe()
    stopper.close()
    os.dup2(w, number)  # the old number now writes into this pipe
    try:
        stopper.stop()
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 16)
    finally:
        for fd in (r, w, number):
            os.close(fd)
