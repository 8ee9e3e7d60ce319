"""A fault-injection HTTP/1.1 reverse proxy between Ferry and one S3 store, programmable by tests at run time.

    proxy = FaultProxy(server.endpoint).start()      # or the `fault_proxy(server)` fixture (tests/conftest.py)
    backend = S3Backend(proxy.endpoint, server.region, server.access_key, server.secret_key, bucket, ...)
    rule = proxy.add(Damage(), method="GET", key=r"\\.bin$", first=3)
    ...                                              # run Ferry against proxy.endpoint
    assert rule.fired > 0                            # a fault that never fired proves nothing
    proxy.remove(rule)                               # or proxy.clear(); proxy.stop() at the end

The proxy runs its own asyncio loop in a thread on a free 127.0.0.1 port. Each client connection gets its own
keep-alive upstream connection; requests and answers go through byte for byte (the Host header too, so SigV4
signatures made for the proxy's address still verify upstream), framed by Content-Length, chunked encoding or
the server closing, with interim 1xx answers (`Expect: 100-continue`) passed on. Nothing is re-signed.

Rules (`add(action, **matcher)`), tried in the order added; the first one that matches and is selected acts on
the request, and no other does (except a `RateCap` that lets the request through: the search goes on).
Matcher, all optional and all required to hold:
    method="GET"          the request method;
    path=r"regex"         searched in the URL-decoded path (`/bucket/key`);
    query="partNumber="   substring(s) of the raw query string (a str or a sequence of them, all required);
    key=r"regex"          searched in the object key (the decoded path after the bucket; no key, no match);
    first=N               only the first N matching requests;
    every=N               only every Nth matching request (the Nth, 2Nth, ...);
    probability=p, seed=s each matching request with probability p, drawn from a seeded RNG.
Actions:
    Damage(count=3, offset=None, side="auto")  alter `count` bytes of the body (XOR 0xFF), its length kept: from
        `offset` of the data, else around its middle. The data of a chunked or aws-chunked body is altered, never
        its framing. A response body is altered only in a 2xx answer.
    Status(503, code=None, retry_after=None)  answer without forwarding (the request body is read first), with an
        S3 `<Error>` XML body; `code` defaults by status (503 SlowDown, 500 InternalError, 429 TooManyRequests).
    Reset(after=0, side="auto")  forward, then cut both connections with an RST (SO_LINGER 0) once `after` bytes
        of the body went through.
    Stall(after=0, seconds=None, side="auto")  stop passing bytes once `after` went through and hold the
        connection open: for ever (until the client or the proxy goes), else for `seconds`, then go on.
    Blackhole()  read the request and never answer.
    Trickle(rate)  pass the body at `rate` bytes/s.
    RateCap(per_second, burst=None)  a token bucket: at most `per_second` requests/s (bursts of `burst`,
        default max(1, per_second)) pass; the others get 503 SlowDown.
`side`: "request" (the body sent, e.g. a PUT or UploadPart) or "response" (the body received, e.g. a GET);
"auto" is the request when it has a body, else the response. Reset and Stall stop before the body's last byte
whatever `after` says (an answer cut after its end would be no fault), and before the head of an answer with no
body. Damage on an empty body does nothing and does not count.

Counters: `rule.matched` (requests that matched), `rule.fired` (the fault really happened); `proxy.requests`
and `proxy.methods` (a Counter by method) count every request seen. `proxy.wait(lambda: rule.fired >= 2)` waits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

Side = Literal["auto", "request", "response"]

_PIECE = 256 * 1024
_HEAD_LIMIT = 64 * 1024
_NO_BODY_STATUS = (204, 304)
_CODES = {503: "SlowDown", 500: "InternalError", 429: "TooManyRequests", 502: "BadGateway",
          504: "GatewayTimeout", 400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey"}
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


# -- actions -----------------------------------------------------------------------------------------------------
@dataclass
class Damage:
    count: int = 3
    offset: int | None = None
    side: Side = "auto"


@dataclass
class Status:
    status: int = 503
    code: str | None = None
    retry_after: float | None = None
    message: str = "injected by the fault proxy"


@dataclass
class Reset:
    after: int = 0
    side: Side = "auto"


@dataclass
class Stall:
    after: int = 0
    seconds: float | None = None
    side: Side = "auto"


@dataclass
class Blackhole:
    pass


@dataclass
class Trickle:
    rate: float
    side: Side = "auto"


@dataclass
class RateCap:
    per_second: float
    burst: float | None = None
    _tokens: float = field(default=-1.0, repr=False)
    _stamp: float = field(default=0.0, repr=False)

    def take(self, now: float) -> bool:
        burst = self.burst if self.burst is not None else max(1.0, self.per_second)
        if self._tokens < 0:
            self._tokens, self._stamp = burst, now
        self._tokens = min(burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


Action = Damage | Status | Reset | Stall | Blackhole | Trickle | RateCap
_BodyAction = Damage | Reset | Stall | Trickle


@dataclass
class Rule:
    """One fault and the requests it applies to; `matched` and `fired` count them (read from any thread)."""

    action: Action
    method: str | None = None
    path: str | None = None
    query: tuple[str, ...] = ()
    key: str | None = None
    first: int | None = None
    every: int | None = None
    probability: float | None = None
    seed: int = 0
    matched: int = 0
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    def _matches(self, req: _Request) -> bool:
        if self.method is not None and req.method != self.method.upper():
            return False
        if self.path is not None and not re.search(self.path, req.path):
            return False
        if any(q not in req.query for q in self.query):
            return False
        return self.key is None or (req.key is not None and re.search(self.key, req.key) is not None)

    def _selects(self) -> bool:
        """Counts a matching request and says whether this rule takes it."""
        self.matched += 1
        if self.first is not None and self.matched > self.first:
            return False
        if self.every is not None and self.matched % self.every:
            return False
        return self.probability is None or self._rng.random() < self.probability


# -- HTTP framing ------------------------------------------------------------------------------------------------
@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: str
    key: str | None
    headers: dict[str, str]

    @property
    def has_body(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower() \
            or int(self.headers.get("content-length", "0") or 0) > 0


def _headers(lines: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        out[name] = f"{out[name]}, {value.strip()}" if name in out else value.strip()
    return out


def _parse_request(head: bytes) -> _Request:
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
    parts = urlsplit(target)
    path = unquote(parts.path)
    segments = path.split("/", 2)
    key = segments[2] if len(segments) == 3 and segments[2] else None
    return _Request(method.upper(), target, path, parts.query, key, _headers([x for x in lines[1:] if x]))


class _Framing:
    """How a message's body ends, and how many bytes of data it holds when that is known."""

    def __init__(self, kind: Literal["none", "length", "chunked", "close"], length: int = 0,
                 inner_chunked: bool = False, data: int | None = None) -> None:
        self.kind = kind
        self.length = length
        self.inner_chunked = inner_chunked  # aws-chunked inside a Content-Length body
        self.data = data  # bytes of data, None when unknown

    @classmethod
    def of_request(cls, headers: dict[str, str]) -> _Framing:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return cls("chunked")
        length = int(headers.get("content-length", "0") or 0)
        if not length:
            return cls("none", data=0)
        aws = "aws-chunked" in headers.get("content-encoding", "").lower() \
            or headers.get("x-amz-content-sha256", "").startswith("STREAMING-")
        if aws:
            decoded = headers.get("x-amz-decoded-content-length")
            return cls("length", length, True, int(decoded) if decoded else None)
        return cls("length", length, data=length)

    @classmethod
    def of_response(cls, method: str, status: int, headers: dict[str, str]) -> _Framing:
        if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
            return cls("none", data=0)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return cls("chunked")
        if "content-length" in headers:
            length = int(headers["content-length"])
            return cls("length", length, data=length) if length else cls("none", data=0)
        return cls("close")


async def _pieces(reader: asyncio.StreamReader, framing: _Framing) -> AsyncIterator[tuple[bytes, bool]]:
    """The body's bytes as (piece, is_data): framing pieces (chunk sizes, CRLFs, trailers) are not data."""
    if framing.kind == "none":
        return
    if framing.kind == "close":
        while piece := await reader.read(_PIECE):
            yield piece, True
        return
    if framing.kind == "length" and not framing.inner_chunked:
        left = framing.length
        while left:
            piece = await reader.read(min(left, _PIECE))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece, True
        return
    while True:
        line = await reader.readuntil(b"\r\n")
        yield line, False
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:
                trailer = await reader.readuntil(b"\r\n")
                yield trailer, False
                if trailer == b"\r\n":
                    return
        while size:
            piece = await reader.read(min(size, _PIECE))
            if not piece:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(piece)
            yield piece, True
        yield await reader.readexactly(2), False


async def _drain_body(reader: asyncio.StreamReader, framing: _Framing) -> None:
    async for _ in _pieces(reader, framing):
        pass


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with an RST rather than a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Cut(Exception):
    """The fault cut the exchange: both connections go."""


def _error_answer(status: int, code: str, message: str, resource: str, retry_after: float | None,
                  head_only: bool, close: bool) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>faultproxy</RequestId></Error>").encode()
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/xml",
             f"Content-Length: {len(body)}", "x-amz-request-id: faultproxy"]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after:g}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


# -- the proxy ---------------------------------------------------------------------------------------------------
class FaultProxy:
    """See the module's docstring. `start()` returns self; `stop()` closes every connection."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the upstream must be an http://host:port URL")
        self.upstream = upstream
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self.port = 0
        self.requests = 0
        self.methods: collections.Counter[str] = collections.Counter()
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("the fault proxy is not started")
        return f"http://127.0.0.1:{self.port}"

    # -- rules -----------------------------------------------------------------------------------------------
    def add(self, action: Action, *, method: str | None = None, path: str | None = None,
            query: str | Sequence[str] = (), key: str | None = None, first: int | None = None,
            every: int | None = None, probability: float | None = None, seed: int = 0) -> Rule:
        rule = Rule(action, method, path, (query,) if isinstance(query, str) else tuple(query), key, first, every,
                    probability, seed)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def wait(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Poll `condition` until it holds (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _pick(self, req: _Request) -> Rule | None:
        with self._lock:
            self.requests += 1
            self.methods[req.method] += 1
            for rule in self._rules:
                if not rule._matches(req) or not rule._selects():
                    continue
                if isinstance(rule.action, RateCap):
                    if rule.action.take(time.monotonic()):
                        continue  # let through: another rule may still apply
                    rule.fired += 1
                return rule
        return None

    @staticmethod
    def _fire(rule: Rule) -> None:
        rule.fired += 1  # one int store, made on the proxy's loop; tests only read it

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_HEAD_LIMIT))
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                for writer in list(self._writers):
                    writer.transport.abort()
                for task in list(self._tasks):
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        if not self.port:
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one client connection ---------------------------------------------------------------------------------
    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(cwriter)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await creader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                req = _parse_request(head)
                rule = self._pick(req)
                action = rule.action if rule is not None else None
                if rule is not None and isinstance(action, Status | RateCap | Blackhole):
                    if not await self._answer_here(rule, req, creader, cwriter):
                        return
                    continue
                if upstream is None or upstream[0].at_eof() or upstream[1].is_closing():
                    if upstream is not None:
                        upstream[1].transport.abort()
                    upstream = await asyncio.open_connection(self._up_host, self._up_port, limit=_HEAD_LIMIT)
                    self._writers.add(upstream[1])
                keep = await self._exchange(req, head, rule, creader, cwriter, upstream)
                if not keep:
                    return
        except _Cut:
            _rst(cwriter)
            if upstream is not None:
                _rst(upstream[1])
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy stops: asyncio's stream callback would log a cancelled task as an error
        finally:
            self._tasks.discard(task)
            self._writers.discard(cwriter)
            cwriter.transport.abort()
            if upstream is not None:
                self._writers.discard(upstream[1])
                upstream[1].transport.abort()

    async def _answer_here(self, rule: Rule, req: _Request, creader: asyncio.StreamReader,
                           cwriter: asyncio.StreamWriter) -> bool:
        """Status, a refused RateCap or Blackhole: the request goes no further. Whether the connection goes on."""
        action = rule.action
        expect = "100-continue" in req.headers.get("expect", "").lower()
        if not expect:
            await _drain_body(creader, _Framing.of_request(req.headers))
        if isinstance(action, Blackhole):
            self._fire(rule)
            await asyncio.Future()  # for ever: the client gives up, or the proxy stops
        if isinstance(action, Status):
            self._fire(rule)
            status, code, message, retry = action.status, action.code or _CODES.get(action.status, "Error"), \
                action.message, action.retry_after
        else:  # a RateCap that refused (counted in _pick)
            status, code, message, retry = 503, "SlowDown", "Please reduce your request rate.", None
        close = expect or "close" in req.headers.get("connection", "").lower()
        cwriter.write(_error_answer(status, code, message, req.path, retry, req.method == "HEAD", close))
        await cwriter.drain()
        return not close

    async def _exchange(self, req: _Request, head: bytes, rule: Rule | None, creader: asyncio.StreamReader,
                        cwriter: asyncio.StreamWriter,
                        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
        """Forward one request and its answer; whether both connections may carry another."""
        ureader, uwriter = upstream
        action = rule.action if rule is not None else None
        req_fault = resp_fault = None
        if rule is not None and isinstance(action, Damage | Reset | Stall | Trickle):
            side = action.side if action.side != "auto" else ("request" if req.has_body else "response")
            if side == "request":
                req_fault = (rule, action)
            else:
                resp_fault = (rule, action)
        framing = _Framing.of_request(req.headers)
        uwriter.write(head)
        send = asyncio.create_task(self._send_body(creader, uwriter, framing, req_fault))
        recv = asyncio.create_task(self._relay_answer(req, ureader, cwriter, resp_fault))
        try:
            done, _ = await asyncio.wait({send, recv}, return_when=asyncio.FIRST_COMPLETED)
            if send in done:
                send.result()  # a cut or a failure sending ends the exchange
                keep = await recv
                return keep and "close" not in req.headers.get("connection", "").lower()
            keep = recv.result()
            # Answered before the whole body went (an early refusal), or just before the last drain ended.
            finished, _ = await asyncio.wait({send}, timeout=1.0)
            if not finished:
                return False
            send.result()
            return keep
        finally:
            for task in (send, recv):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _send_body(self, creader: asyncio.StreamReader, uwriter: asyncio.StreamWriter, framing: _Framing,
                         fault: tuple[Rule, _BodyAction] | None) -> None:
        if fault is not None and isinstance(fault[1], Reset | Stall) and framing.data == 0:
            await uwriter.drain()
            await self._cut_or_hold(*fault)
        await self._pass(_pieces(creader, framing), uwriter, framing.data, fault)

    async def _relay_answer(self, req: _Request, ureader: asyncio.StreamReader, cwriter: asyncio.StreamWriter,
                            fault: tuple[Rule, _BodyAction] | None) -> bool:
        while True:
            head = await ureader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            headers = _headers([x for x in lines[1:] if x])
            if 100 <= status < 200 and status != 101:
                cwriter.write(head)  # 100 Continue and other interim answers: the final one follows
                await cwriter.drain()
                continue
            break
        framing = _Framing.of_response(req.method, status, headers)
        if fault is not None and isinstance(fault[1], Damage) and not 200 <= status < 300:
            fault = None
        if fault is not None and isinstance(fault[1], Reset | Stall) and framing.data == 0:
            await self._cut_or_hold(*fault)  # no body to cut inside: the answer never starts
        cwriter.write(head)
        await self._pass(_pieces(ureader, framing), cwriter, framing.data, fault)
        return framing.kind != "close" and "close" not in headers.get("connection", "").lower()

    async def _cut_or_hold(self, rule: Rule, action: _BodyAction) -> None:
        self._fire(rule)
        if isinstance(action, Reset):
            raise _Cut
        assert isinstance(action, Stall)
        if action.seconds is None:
            await asyncio.Future()
        else:
            await asyncio.sleep(action.seconds)

    async def _pass(self, pieces: AsyncIterator[tuple[bytes, bool]], writer: asyncio.StreamWriter,
                    total: int | None, fault: tuple[Rule, _BodyAction] | None) -> None:
        """Write the body's pieces to `writer`, applying `fault` to its data bytes."""
        rule, action = fault if fault is not None else (None, None)
        cut_at: int | None = None
        damaged: range = range(0)
        if isinstance(action, Reset | Stall):
            cut_at = action.after if total is None else min(action.after, max(total - 1, 0))
        elif isinstance(action, Damage):
            start = action.offset if action.offset is not None else \
                max(0, (total or 0) // 2 - action.count // 2)
            damaged = range(start, start + action.count)
        passed = 0
        hit = False
        async for piece, is_data in pieces:
            if not is_data:
                writer.write(piece)
                await writer.drain()
                continue
            end = passed + len(piece)
            if damaged and damaged.start < end and damaged.stop > passed:
                buf = bytearray(piece)
                for at in range(max(damaged.start, passed), min(damaged.stop, end)):
                    buf[at - passed] ^= 0xFF
                piece = bytes(buf)
                hit = True
            if cut_at is not None and end > cut_at:
                assert rule is not None and isinstance(action, Reset | Stall)
                writer.write(piece[:cut_at - passed])
                await writer.drain()
                await asyncio.sleep(0.05)  # the bytes before the cut reach the peer first
                await self._cut_or_hold(rule, action)
                piece, passed, cut_at = piece[cut_at - passed:], cut_at, None  # a stall that ended goes on
            if isinstance(action, Trickle) and piece:
                if not hit and rule is not None:
                    self._fire(rule)  # now, as the client may have the whole body before the last pause ends
                step = max(1, int(action.rate / 20))
                for at in range(0, len(piece), step):
                    writer.write(piece[at:at + step])
                    await writer.drain()
                    await asyncio.sleep(min(step, len(piece) - at) / action.rate)
                hit = True
            else:
                writer.write(piece)
                await writer.drain()
            passed = end
        if hit and rule is not None and not isinstance(action, Trickle):
            self._fire(rule)
