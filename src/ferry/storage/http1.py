"""Lean HTTP/1.1 client, Ferry's one HTTP client: a keep-alive connection pool, bodies whole or streamed.

Why not aiohttp here: copying small objects is CPU-bound on the copier's one event loop, and aiohttp's
general-purpose request machinery (request and response objects, stream readers, tracing, cookie and
redirect handling) was most of that CPU. S3 needs none of it: one request at a time per connection, a
body in memory or streamed from an async generator of known total length, an answer read whole or (a
successful one of known length) handed over piece by piece with reading paused while its reader is behind.
This module does exactly that, on an asyncio.Protocol, and frames responses as RFC 9112 section 6.3 says
(no body for HEAD, 1xx, 204 and 304; chunked; Content-Length; else until the server closes).

A streamed answer over plain TCP can also be moved straight into a streamed request over plain TCP inside
the kernel (`splice_source`, `storage/splice.py`), when whoever sits between them passes its bytes through
untouched.

The other outbound calls (URL-list sources, CDN probes, SMN publishes) use it too: it follows no redirect,
reads no proxy setting, keeps no cookie and decompresses nothing, which is what a client reaching hosts a
caller chose needs; and it can connect to addresses checked beforehand (`addresses`, see
`storage/netguard.py`) while the host's name still goes in Host, SNI and the certificate check.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import socket
import ssl
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Final, NamedTuple, cast
from urllib.parse import quote, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from ferry.storage import splice

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024  # a status line and headers larger than this are not a sane S3 answer
_WRITE_SLICE = 1024 * 1024  # large bodies go out in slices, so the transport never copies a whole part
_KEEP_BUFFER = 1024 * 1024  # a connection keeps a receive buffer up to this size for its next answer
# A streamed answer pauses reading once this much waits for its reader, and resumes below a quarter of it.
_STREAM_HIGH = 2 * 1024 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_STATUS = re.compile(r"[1-5][0-9][0-9]")
_DIGITS = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")
_UNTIL_CLOSE = -1
_CHUNKED = -2


# What may stay as it is in a request target: RFC 3986's reserved and unreserved characters and existing
# %-escapes; anything else (a space, non-ASCII text, a line break) is percent-encoded as a browser would.
_TARGET_SAFE: Final = "!#$%&'()*+,/:;=?@[]~"


class Url(NamedTuple):
    """An http(s) URL as a pool and a request need it."""

    scheme: str
    host: str  # lower-case and IDNA-encoded: what is looked up, and the name given to TLS
    port: int
    host_header: str  # the Host header: the host, bracketed if IPv6, with the port unless it is the default
    target: str  # the path and query, percent-encoded where RFC 3986 requires it


def split_url(url: str) -> Url:
    """ValueError for a scheme other than http(s), no host, or a port that is not a number from 1 to 65535;
    UnicodeError for a host name IDNA cannot encode."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    port = parts.port  # ValueError when out of range or not a number
    if port == 0:
        raise ValueError("port 0")
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    shown = f"[{host}]" if ":" in host else host
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return Url(parts.scheme, host, port or default, shown if port in (None, default) else f"{shown}:{port}", target)


class HttpResponse(NamedTuple):
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class StreamedResponse(NamedTuple):
    """An answer whose body arrives as `body` is iterated. The connection is busy until the body has been
    read to its end (then it is kept for reuse) or closed early with `aclose()` (then it is dropped)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: AsyncGenerator[bytes, None]


class StreamBody(NamedTuple):
    """A request body sent as it is produced: exactly `length` bytes from `chunks`.

    It can be sent once only, so a request carrying one is never sent again on a fresh connection."""

    length: int
    chunks: AsyncGenerator[bytes | memoryview, None]


Body = bytes | memoryview | StreamBody


class HttpError(Exception):
    """The exchange failed below HTTP: reset, early close, malformed answer. Another try may succeed."""


class HttpConnectError(HttpError):
    """No connection could be made (refused, unresolvable name, TLS certificate rejected)."""

    def __init__(self, reason: str, *, certificate: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.certificate = certificate


class HttpTimeout(HttpError):
    """Connecting, or waiting for the next bytes of an answer, took longer than allowed."""


class SpliceSource:
    """The rest of a streamed answer's body, still in its socket, for a request writer to move in the kernel."""

    __slots__ = ("_conn", "_lease", "_taken", "on_moved")

    def __init__(self, conn: _Connection, lease: _Lease) -> None:
        self._conn = conn
        self._lease = lease
        self._taken = False
        self.on_moved: Callable[[int], None] | None = None  # told, on the event loop, of the bytes moved

    def take(self) -> tuple[int, list[bytes], int] | None:
        """Stop the event loop reading the socket and hand over (a duplicate of its descriptor, the pieces
        already received, the bytes still to come); None when the body can no longer be handed over."""
        conn, body = self._conn, self._conn._body
        if self._taken or body is None or body.error is not None or conn.closed or conn.transport is None:
            return None
        self._taken = True
        if not conn._reading_paused:
            conn.transport.pause_reading()
            conn._reading_paused = True
        pieces = list(body.pieces)
        body.pieces.clear()
        body.buffered = 0
        return os.dup(conn.fileno()), pieces, body.remaining

    def finish(self, moved: bool) -> None:
        """After the move: the connection is kept for reuse if the whole body went, else dropped."""
        conn, body = self._conn, self._conn._body
        conn._stopper = None
        if moved and body is not None and not conn.closed and conn.transport is not None:
            body.remaining = 0
            conn._reading_paused = False
            conn.transport.resume_reading()
        else:
            conn.abort()
        self._lease.end()

    def watch(self, stopper: splice.Stopper) -> None:
        """Stop the move if this connection fails meanwhile."""
        self._conn._stopper = stopper


# The pieces of a streamed answer that may be moved in the kernel, and the wrappers that pass them through.
_SPLICEABLE: weakref.WeakKeyDictionary[AsyncGenerator[bytes, None], SpliceSource] = weakref.WeakKeyDictionary()


def splice_source(pieces: AsyncGenerator[bytes | memoryview, None]) -> SpliceSource | None:
    """The socket behind `pieces`, if they are a streamed answer (or pass one through untouched) not yet read."""
    return _SPLICEABLE.get(cast(AsyncGenerator[bytes, None], pieces))


def pass_splice(outer: AsyncGenerator[bytes, None], inner: AsyncGenerator[bytes, None],
                on_moved: Callable[[int], None] | None = None) -> None:
    """Declare that `outer` yields exactly `inner`'s bytes, so whatever may move `inner` may move `outer`;
    `on_moved`, if given, is told of the bytes a kernel move carries (in steps of a few MiB), since `outer`
    then never sees them."""
    source = _SPLICEABLE.get(inner)
    if source is not None:
        _SPLICEABLE[outer] = source
        if on_moved is not None:
            source.on_moved = on_moved


class _Exchange:
    """Parser state of the response to one request."""

    __slots__ = ("body_start", "chunks", "head_only", "headers", "keep_alive", "length", "received", "scan",
                 "status", "stream")

    def __init__(self, head_only: bool, stream: bool = False) -> None:
        self.head_only = head_only
        self.stream = stream  # a successful body of known length goes to its reader as it arrives
        self.status = 0
        self.headers: CIMultiDictProxy[str] | None = None
        self.keep_alive = True
        self.length = 0  # bytes of body expected, or _UNTIL_CLOSE / _CHUNKED
        self.body_start = 0
        self.scan = 0  # chunked: where the next chunk-size line starts
        self.chunks: list[bytes] = []  # the body's pieces as they arrived (known length) or decoded (chunked)
        self.received = 0  # bytes in `chunks`, for a body of known length


class _BodyPieces:
    """A streamed body: the pieces received and not yet read, and how much is still to come."""

    __slots__ = ("buffered", "error", "pieces", "remaining", "waiter")

    def __init__(self, remaining: int) -> None:
        self.pieces: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.remaining = remaining
        self.error: HttpError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One socket, one exchange at a time.

    An answer's head collects in `_buf`. A body of known length is kept as the pieces the transport
    delivered and joined once at the end (one copy, however large); chunked and read-to-close bodies
    collect in `_buf`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float, plain: bool = False) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self.plain = plain  # plain TCP: its socket may be written or read by a kernel move (splice)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.last_used = 0.0
        self._buf = bytearray()
        self._ex: _Exchange | None = None
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._got_bytes = False
        self._writing = False
        self._last_progress = 0.0  # when the exchange last made progress, either way
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self._body: _BodyPieces | None = None  # the body being streamed to its reader
        self._reading_paused = False
        self._stopper: splice.Stopper | None = None  # a kernel move using this socket, told if it fails

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)
        # Room for a few slices of a large body, so the socket never idles while the next is written.
        self.transport.set_write_buffer_limits(high=4 * _WRITE_SLICE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._stopper is not None:
            self._stopper.stop()
        self._wake_drain(exc)
        body = self._body
        if body is not None and body.remaining:
            what = "reset the connection" if exc is not None else "closed the connection"
            body.error = HttpError(f"the server {what} mid-answer")
            body.wake()
        ex, waiter = self._ex, self._waiter
        if waiter is None or waiter.done() or ex is None:
            return
        if ex.headers is not None and ex.length == _UNTIL_CLOSE and exc is None:
            # Such a body ends where the server closes; a reset instead means it was cut short.
            self._finish(self._take(ex.body_start, len(self._buf)))
            return
        what = "reset the connection" if exc is not None else "closed the connection"
        self._fail(HttpError(f"the server {what} {'mid-answer' if self._got_bytes else 'before answering'}"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._last_progress = self._loop.time()
        self._wake_drain(None)

    def data_received(self, data: bytes) -> None:
        if self._body is not None:
            self._feed(self._body, data)
            return
        ex = self._ex
        if ex is None or self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: the connection is out of step, so it must not be reused.
            self.abort()
            return
        self._got_bytes = True
        self._last_progress = self._loop.time()
        try:
            if ex.headers is not None and ex.length >= 0:
                ex.chunks.append(data)
                ex.received += len(data)
                if ex.received >= ex.length:
                    self._finish_known_length(ex)
                return
            self._buf += data
            if ex.headers is None:
                if not self._parse_head(ex):
                    return
                if ex.length > 0 and ex.stream and 200 <= ex.status < 300:
                    rest = self._take(ex.body_start, len(self._buf)) if len(self._buf) > ex.body_start else b""
                    self._buf.clear()
                    body = self._body = _BodyPieces(ex.length)
                    self._finish(b"")  # the answer goes to its reader now; the body follows piece by piece
                    if rest:
                        self._feed(body, rest)
                    return
                if ex.length >= 0:
                    if len(self._buf) > ex.body_start:
                        ex.chunks.append(self._take(ex.body_start, len(self._buf)))
                        ex.received = len(ex.chunks[0])
                    self._buf.clear()
                    if ex.received >= ex.length:
                        self._finish_known_length(ex)
                    return
            if ex.length == _CHUNKED:
                self._parse_chunks(ex)
        except HttpError as e:
            self._fail(e)
            self.abort()

    # -- a streamed body ---------------------------------------------------------------------------
    def _feed(self, body: _BodyPieces, data: bytes) -> None:
        if not body.remaining:
            self.abort()  # more than the answer announced: the connection is out of step
            return
        self._last_progress = self._loop.time()
        if len(data) > body.remaining:
            data = data[:body.remaining]
            self.abort()
        body.remaining -= len(data)
        body.pieces.append(data)
        body.buffered += len(data)
        if body.buffered >= _STREAM_HIGH and not self._reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        body.wake()

    @property
    def streaming(self) -> bool:
        return self._body is not None

    async def next_piece(self) -> bytes | None:
        """The next piece of the streamed body, or None after its last."""
        body = self._body
        assert body is not None
        while not body.pieces:
            if not body.remaining:
                return None
            if body.error is not None:
                raise body.error
            body.waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await body.waiter
            except TimeoutError:
                self.abort()
                raise HttpTimeout(f"no more of the answer for {self._read_timeout:g} s") from None
        piece = body.pieces.popleft()
        body.buffered -= len(piece)
        if self._reading_paused and body.buffered <= _STREAM_HIGH // 4 and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return piece

    # -- parsing ---------------------------------------------------------------------------------
    def _parse_head(self, ex: _Exchange) -> bool:
        """Parse the status line and headers once they are all in; skip 1xx answers. True when done."""
        buf = self._buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end > _MAX_HEAD:
                if len(buf) > _MAX_HEAD:
                    raise HttpError("the answer's headers are too large")
                return False
            lines = bytes(buf[:end]).decode("utf-8", "surrogateescape").split("\r\n")
            status_line = lines[0]
            version, _, rest = status_line.partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not _STATUS.fullmatch(code) or rest[3:4] not in ("", " "):
                raise HttpError("the answer is not HTTP/1.x")
            status = int(code)
            if 100 <= status < 200:
                del buf[:end + 4]  # an interim answer (100 Continue, 103 Early Hints); the real one follows
                continue
            break
        pairs: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t" or line[0] in " \t":
                raise HttpError("the answer has a malformed header line")
            pairs.append((name, value.strip(" \t")))
        headers = CIMultiDictProxy(CIMultiDict(pairs))
        ex.status = status
        ex.headers = headers
        ex.body_start = end + 4
        connection = headers.get("Connection", "").lower()
        ex.keep_alive = version == "HTTP/1.1" and "close" not in connection
        if ex.head_only or status in (204, 304):
            ex.length = 0
        elif "Transfer-Encoding" in headers:
            codings = ",".join(headers.getall("Transfer-Encoding")).lower()
            if codings.rsplit(",", 1)[-1].strip() == "chunked":
                ex.length = _CHUNKED
                ex.scan = ex.body_start
            else:
                ex.length = _UNTIL_CLOSE
        elif "Content-Length" in headers:
            values = {v.strip() for v in headers.getall("Content-Length")}
            value = values.pop()
            if values or not _DIGITS.fullmatch(value):
                raise HttpError("the answer has an invalid Content-Length")
            ex.length = int(value)
        else:
            ex.length = _UNTIL_CLOSE
        if ex.length == _UNTIL_CLOSE:
            ex.keep_alive = False
        return True

    def _parse_chunks(self, ex: _Exchange) -> None:
        buf = self._buf
        pos = ex.scan
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 4096:
                    raise HttpError("the answer has a malformed chunk size")
                break
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise HttpError("the answer has a malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                # The last chunk, then optional trailer fields, then an empty line.
                trailer_end = buf.find(b"\r\n", eol + 2) if buf[eol + 2:eol + 4] == b"\r\n" else \
                    buf.find(b"\r\n\r\n", eol + 2)
                if trailer_end < 0:
                    break
                self._finish(b"".join(ex.chunks))
                return
            data_end = eol + 2 + size
            if len(buf) < data_end + 2:
                break
            if buf[data_end:data_end + 2] != b"\r\n":
                raise HttpError("the answer has a malformed chunk")
            with memoryview(buf) as view:
                ex.chunks.append(bytes(view[eol + 2:data_end]))
            pos = data_end + 2
        # Drop what is consumed, so a long chunked body is not scanned from its start again.
        del buf[:pos]
        ex.scan = 0

    def _take(self, start: int, end: int) -> bytes:
        """Bytes out of the buffer in one copy; a large buffer is let go rather than kept for reuse."""
        with memoryview(self._buf) as view:
            body = bytes(view[start:end])
        if len(self._buf) > _KEEP_BUFFER:
            self._buf = bytearray()
        return body

    def _finish_known_length(self, ex: _Exchange) -> None:
        body = b"".join(ex.chunks)  # a single piece is returned as it is, without a copy
        ex.chunks = []
        if len(body) > ex.length:
            ex.keep_alive = False  # more than was announced: do not trust the socket again
            body = body[:ex.length]
        self._finish(body)

    def _finish(self, body: bytes) -> None:
        ex, waiter = self._ex, self._waiter
        assert ex is not None and ex.headers is not None and waiter is not None
        if self._writing:
            # Answered before the whole body went out: the server may not read the rest, which would
            # then be taken for the next request. This connection is done, and the writer stops.
            ex.keep_alive = False
            self._wake_drain(None)
            if self._stopper is not None:
                self._stopper.stop()
        self._cancel_timer()
        if not waiter.done():
            waiter.set_result(HttpResponse(ex.status, ex.headers, body))

    def _fail(self, exc: Exception) -> None:
        self._cancel_timer()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    # -- the idle timer --------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        self._timer = self._loop.call_at(self._last_progress + self._read_timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        if self._loop.time() - self._last_progress >= self._read_timeout:
            self._fail(HttpTimeout(f"no answer for {self._read_timeout:g} s"))
            self.abort()
        else:
            self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- writing ---------------------------------------------------------------------------------
    def _wake_drain(self, exc: Exception | None) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            if exc is not None:
                drain.set_exception(HttpError("the server reset the connection"))
            else:
                drain.set_result(None)

    async def _write(self, head: bytes, body: Body | None) -> None:
        transport = self.transport
        assert transport is not None
        if isinstance(body, StreamBody):
            transport.write(head)
            await self._write_stream(body)
            return
        if not body:
            transport.write(head)
            return
        if len(body) <= _WRITE_SLICE:
            transport.write(head + body)
            return
        transport.write(head)
        await self._write_slices(memoryview(body))

    async def _write_slices(self, view: memoryview) -> bool:
        """Write `view` in slices under flow control; False when the exchange ended meanwhile."""
        for offset in range(0, len(view), _WRITE_SLICE):
            if not await self._write_gathered([view[offset:offset + _WRITE_SLICE]]):
                return False
        return True

    async def _write_gathered(self, pieces: list[bytes | memoryview]) -> bool:
        """Write `pieces` at once (one writev) under flow control; False when the exchange ended meanwhile
        (failed by connection_lost, or answered early: see _finish)."""
        transport = self.transport
        assert transport is not None
        if self.closed or self._waiter is None or self._waiter.done():
            return False
        if len(pieces) == 1:
            transport.write(pieces[0])  # asyncio's writelines would join (copy) even a single piece
        else:
            transport.writelines(pieces)
        self._last_progress = self._loop.time()
        if self._paused:
            self._drain = self._loop.create_future()
            await self._drain
        return True

    async def _write_stream(self, body: StreamBody) -> None:
        source = splice_source(body.chunks) if self.plain and splice.usable() else None
        if source is not None and await self._splice(source, body):
            return
        sent = 0
        # However the exchange ends, the producer's own cleanup (memory it holds, reads it started) runs
        # now rather than whenever the generator is collected.
        # Small chunks (a streamed answer arrives in pieces of up to 256 KiB, framing adds a few bytes) go out
        # gathered up to a slice at a time: one writev instead of many sends and many small TCP segments.
        batch: list[bytes | memoryview] = []
        batched = 0
        async with contextlib.aclosing(body.chunks) as chunks:
            async for chunk in chunks:
                sent += len(chunk)
                if sent > body.length:
                    raise HttpError(f"the request body is longer than the {body.length} bytes announced")
                if len(chunk) < _WRITE_SLICE:
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched < _WRITE_SLICE and sent < body.length:
                        continue
                    chunk = b""
                if batch and not await self._write_gathered(batch):
                    return
                batch, batched = [], 0
                if chunk:
                    with memoryview(chunk) as view:
                        if not await self._write_slices(view):
                            return
        if sent != body.length:
            raise HttpError(f"the request body ended after {sent} of the {body.length} bytes announced")

    async def _splice(self, source: SpliceSource, body: StreamBody) -> bool:
        """Move the body from `source`'s socket into ours in the kernel; False (nothing taken) when it cannot
        go that way. The move runs in a thread on duplicates of both descriptors, which it closes itself, so
        neither socket can be closed and reused under it; a connection is kept only once it has ended."""
        transport = self.transport
        assert transport is not None
        if transport.get_write_buffer_size() or self.closed or self._waiter is None or self._waiter.done():
            return False  # the head is not all out yet (the body must queue behind it), or already answered
        taken = source.take()
        if taken is None:
            return False
        src, prefix, remaining = taken
        total = sum(map(len, prefix)) + remaining
        if total != body.length:
            os.close(src)
            source.finish(False)
            raise HttpError(f"the request body has {total} bytes, not the {body.length} announced")
        try:
            dst = os.dup(self.fileno())
        except (OSError, HttpError):  # no socket any more (it closed meanwhile)
            os.close(src)
            source.finish(False)
            raise HttpError("the connection closed before the body went") from None
        stopper = splice.Stopper()
        moved = False
        try:
            self._stopper = stopper
            source.watch(stopper)
            self._cancel_timer()  # the move keeps its own time; the answer's wait is timed again after it
            job = splice.executor().submit(_move_and_close, src, dst, prefix, remaining, stopper,
                                           self._read_timeout, self._reporter(source.on_moved))
            try:
                await asyncio.wrap_future(job)
            except asyncio.CancelledError:
                stopper.stop()
                with contextlib.suppress(BaseException):
                    await asyncio.wrap_future(job)  # the sockets are ours again only once it ended
                if job.cancelled():  # it never started, so nothing else closes the descriptors
                    os.close(src)
                    os.close(dst)
                    stopper.close()
                raise
            moved = True
        except splice.SpliceError as e:
            waiter = self._waiter
            if waiter is not None and waiter.done() and e.side in ("stopped", "destination"):
                return True  # answered (early) or failed meanwhile: the answer, or its error, decides
            if e.side == "stopped":
                raise HttpError("the source's connection failed while the body was being sent") from None
            if e.side == "unsupported":
                splice.refuse()
                log.warning("the kernel refused to splice sockets (%s): bodies are copied through Python from "
                            "now on", e)
                raise HttpError(f"the kernel refused to splice the body ({e})") from None
            if e.side == "destination":
                raise HttpError(f"the server {e} while the body was being sent") from None
            if e.side == "timeout":
                raise HttpTimeout(str(e)) from None
            raise HttpError(f"reading the body to send: {e}") from None
        finally:
            self._stopper = None
            source.finish(moved)
            if self._waiter is not None and not self._waiter.done():
                self._last_progress = self._loop.time()
                self._arm_timer()
        await body.chunks.aclose()
        return True

    def _reporter(self, on_moved: Callable[[int], None] | None) -> Callable[[int], None] | None:
        """`on_moved`, callable from a move's thread: it runs on this connection's event loop."""
        if on_moved is None:
            return None
        loop = self._loop

        def report(n: int) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is watching any more
                loop.call_soon_threadsafe(on_moved, n)

        return report

    def fileno(self) -> int:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            raise HttpError("the connection has no socket")
        return int(sock.fileno())

    # -- one exchange ----------------------------------------------------------------------------
    async def exchange(self, head: bytes, body: Body | None, head_only: bool, stream: bool = False) -> HttpResponse:
        self._got_bytes = False
        if self.closed:
            raise HttpError("the server closed the connection before answering")
        self._ex = _Exchange(head_only, stream)
        self._body = None
        self._buf.clear()
        waiter = self._waiter = self._loop.create_future()
        self._last_progress = self._loop.time()
        self._arm_timer()
        try:
            self._writing = True
            await self._write(head, body)
            self._writing = False
            response: HttpResponse = await waiter
            return response
        finally:
            self._writing = False
            self._cancel_timer()
            if not waiter.done():
                waiter.cancel()  # the writer failed first: no answer is awaited, and none may be set later
            elif not waiter.cancelled():
                waiter.exception()  # retrieved, so a failure raised another way is not logged as lost

    @property
    def answered(self) -> bool:
        """Whether any byte of an answer to the last request arrived."""
        return self._got_bytes

    @property
    def reusable(self) -> bool:
        ex, body = self._ex, self._body
        return not self.closed and ex is not None and ex.keep_alive and self._waiter is not None \
            and self._waiter.done() and not self._waiter.cancelled() and self._waiter.exception() is None \
            and (body is None or not (body.remaining or body.pieces))

    def abort(self) -> None:
        self.closed = True
        if self._stopper is not None:
            self._stopper.stop()
        if self.transport is not None:
            self.transport.abort()


class _Lease:
    """A streamed answer's hold on its connection and its slot in the pool, given back once however the body
    ends: read to its end, closed early, or moved in the kernel."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: Http1Pool, conn: _Connection) -> None:
        self._pool: Http1Pool | None = pool
        self._conn = conn

    def end(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self._conn)  # kept only if the whole body was read
            pool._limit.release()


def _move_and_close(src: int, dst: int, prefix: list[bytes], count: int, stopper: splice.Stopper,
                    timeout: float, progress: Callable[[int], None] | None) -> None:
    try:
        splice.move(src, dst, prefix, count, stopper, timeout, progress=progress)
    finally:
        os.close(src)
        os.close(dst)
        stopper.close()


class Http1Pool:
    """Keep-alive connections to one origin (`scheme://host:port`), at most `limit` open at once.

    `request` sends one request and returns the whole answer; `stream` hands a body over as it arrives.
    A request on a reused connection that the server closed before answering (it timed the idle
    connection out) is sent again on a new connection, when its method is idempotent.

    With `addresses` (numeric hosts, checked beforehand) the pool connects only to those, in order until one
    answers, and never looks `host` up; `host` still names the server to TLS (SNI, certificate check).
    """

    def __init__(
        self, scheme: str, host: str, port: int, *, limit: int = 256, connect_timeout: float = 10.0,
        read_timeout: float = 120.0, keepalive: float = 10.0, user_agent: str = "ferry",
        ssl_context: ssl.SSLContext | None = None, addresses: Sequence[str] = (),
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {scheme!r}")
        self._host = host
        self._port = port
        self._addresses = tuple(addresses)
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive
        self._user_agent = user_agent
        self._limit = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closed = False

    def _head(self, method: str, target: str, host: str, headers: Mapping[str, str], body: Body | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {self._user_agent}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if body is not None or method in ("PUT", "POST"):
            length = body.length if isinstance(body, StreamBody) else len(body) if body is not None else 0
            lines.append(f"Content-Length: {length}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Every line ends in exactly one CRLF (the first item holds three lines); one more CR or LF
        # anywhere is an injected header.
        if text.count("\n") != len(lines) + 2 or text.count("\r") != len(lines) + 2 or " " in target:
            raise ValueError("a header name or value, or the target, contains a line break or a space")
        return text.encode("utf-8")

    async def request(
        self, method: str, target: str, host: str, headers: Mapping[str, str], body: Body | None = None,
    ) -> HttpResponse:
        """Send `method target` with `Host: host` and `headers`; raise HttpError (or a subclass) when no
        answer came. Header names and values must not contain CR or LF (ValueError)."""
        head = self._head(method, target, host, headers, body)
        async with self._limit:
            # A streamed body cannot be sent twice, so it never risks an idle socket the server may have
            # just closed.
            _, response = await self._exchange(method, head, body, fresh=isinstance(body, StreamBody))
            return response

    async def stream(self, method: str, target: str, host: str, headers: Mapping[str, str]) -> StreamedResponse:
        """Like `request` (with no body), but a successful answer of known length comes back as soon as its
        headers have, its body to be read from `StreamedResponse.body`; any other answer is read whole
        first. The connection counts against the limit until that body is read or closed."""
        head = self._head(method, target, host, headers, None)
        await self._limit.acquire()
        try:
            conn, response = await self._exchange(method, head, None, stream=True)
        except BaseException:
            self._limit.release()
            raise
        if not conn.streaming:
            self._limit.release()
            return StreamedResponse(response.status, response.headers, _whole(response.body))
        lease = _Lease(self, conn)
        pieces = self._pieces(conn, lease)
        await anext(pieces)  # started, so closing it (or collecting it) always hands the connection back
        if conn.plain and splice.usable():
            _SPLICEABLE[pieces] = SpliceSource(conn, lease)
        return StreamedResponse(response.status, response.headers, pieces)

    async def _exchange(self, method: str, head: bytes, body: Body | None, *, fresh: bool = False,
                        stream: bool = False) -> tuple[_Connection, HttpResponse]:
        conn = await self._connection(fresh)
        try:
            return conn, await self._send(conn, head, body, method == "HEAD", stream)
        except HttpError:
            if not (conn.reused and not conn.answered and method in _IDEMPOTENT):
                raise
        # The server had closed the idle connection: once more, on a fresh one.
        conn = await self._connection(fresh=True)
        return conn, await self._send(conn, head, body, method == "HEAD", stream)

    async def _send(self, conn: _Connection, head: bytes, body: Body | None, head_only: bool,
                    stream: bool = False) -> HttpResponse:
        self._busy.add(conn)
        try:
            response = await conn.exchange(head, body, head_only, stream)
        except BaseException:
            self._release(conn)
            raise
        if not conn.streaming:
            self._release(conn)
        return response

    def _release(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if conn.reusable and not self._closed:
            conn.last_used = asyncio.get_running_loop().time()
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.abort()

    async def _pieces(self, conn: _Connection, lease: _Lease) -> AsyncGenerator[bytes, None]:
        try:
            yield b""
            while (piece := await conn.next_piece()) is not None:
                yield piece
        finally:
            lease.end()

    async def _connection(self, fresh: bool = False) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise HttpError("the connection pool is closed")
        now = loop.time()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and now - conn.last_used < self._keepalive:
                return conn
            conn.abort()
        if not self._addresses:
            return await self._connect(loop, self._host, 0)
        failure: HttpError | None = None
        for address in self._addresses:
            try:
                return await self._connect(loop, address, socket.AI_NUMERICHOST)
            except HttpConnectError as e:
                if e.certificate:
                    raise
                failure = e
            except HttpTimeout as e:
                failure = e
        assert failure is not None
        raise failure

    async def _connect(self, loop: asyncio.AbstractEventLoop, address: str, flags: int) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout, self._ssl is None), address, self._port,
                    ssl=self._ssl, flags=flags,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise HttpTimeout(f"connecting took over {self._connect_timeout:g} s") from None
        except ssl.SSLCertVerificationError:
            raise HttpConnectError("TLS certificate rejected", certificate=True) from None
        except socket.gaierror as e:
            raise HttpConnectError(e.strerror or "the name does not resolve") from None
        except OSError as e:
            # asyncio's own message ("Connect call failed (address)") says less than the errno does.
            raise HttpConnectError(os.strerror(e.errno) if e.errno else type(e).__name__) from None
        return conn

    async def close(self) -> None:
        self._closed = True
        for conn in (*self._idle, *self._busy):
            conn.abort()
        self._idle.clear()
        self._busy.clear()


async def _whole(body: bytes) -> AsyncGenerator[bytes, None]:
    if body:
        yield body
