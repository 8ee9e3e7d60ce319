"""What `ferry serve` adds to uvicorn at the connection level: header, body and idle deadlines, an OMS-shaped
connection limit, and an access log that does not record query-string secrets."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any, ClassVar, Final, cast

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

from ferry.api.errors import DEFAULT_MAX_BODY, error_response
from ferry.oms import Codes, Messages, OmsError
from ferry.settings import HttpLimits

log = logging.getLogger("ferry.serve")

# The body deadline of the connection is a backstop: it comes this much after the one the application applies
# while it reads the body (RequestContextMiddleware), so that the caller gets the application's 408 first.
BODY_GRACE: Final = 1.0


def protocol_class(limits: HttpLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol bound to `limits` (uvicorn's `http=` takes a class)."""
    return cast("type[H11Protocol]", type("FerryH11Protocol", (DeadlineProtocol,), {"limits": limits}))


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines it lacks. uvicorn closes a connection idle between requests
    (`timeout_keep_alive`) but waits forever for a request that never completes: a client that connects and
    sends nothing, or a header or a body a byte at a time, would hold its connection for good. Here the request
    head must arrive within `header_timeout` of the connection opening (or of the previous answer), and a body
    within its `body_deadline`; then the connection is closed. Requests on connections beyond `max_connections`
    get an OMS-shaped 503 (uvicorn's own `limit_concurrency` answers plain text)."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self.limit_concurrency = None
        self.app = ConnectionLimit(self.app, self.server_state, self.limits.max_connections)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        self._follow(cycle)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and self.conn.their_state is h11.IDLE:
            # Waiting for the next request: its head has the same time as a new connection's.
            self._arm(self.limits.header_timeout)
        else:
            self._follow(cycle)

    def _follow(self, previous: RequestResponseCycle | None) -> None:
        """Move to the deadline of the phase the request is in after new events."""
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if self.cycle is not previous:
            # A request head arrived: its body now has its own deadline, or it has none and the app has the turn.
            if state is h11.SEND_BODY:
                self._arm(self.limits.body_deadline(_declared_length(self.headers)) + BODY_GRACE)
            else:
                self._disarm()
        elif state is h11.DONE:
            self._disarm()
        # Otherwise the head or the body is still arriving, under the deadline it started with.

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            phase = "body" if self.conn.their_state is h11.SEND_BODY else "request head"
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("closing the connection of %s: its %s did not arrive in time", client, phase)
            self.transport.close()


def _declared_length(headers: list[tuple[bytes, bytes]] | None) -> int:
    for name, value in headers or ():
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                break
    return DEFAULT_MAX_BODY  # chunked or unknown: the largest body the API accepts


class ConnectionLimit:
    """Answers 503 (OMS shape, Retry-After) to requests while more than `limit` connections or requests are open."""

    def __init__(self, app: ASGIApp, state: ServerState, limit: int) -> None:
        self.app = app
        self.state = state
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Both sets already hold this request's connection and task.
        if scope["type"] == "http" and (len(self.state.connections) > self.limit
                                        or len(self.state.tasks) > self.limit):
            log.warning("refusing a request: more than %d connections are open (FERRY_HTTP_MAX_CONNECTIONS)",
                        self.limit)
            busy = OmsError(503, Codes.UNAVAILABLE, Messages.UNAVAILABLE,
                            headers={"Retry-After": "1", "Connection": "close"})
            await error_response(busy, uuid.uuid4().hex)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# Query parameters whose values are secrets: the sync notification token above all (`?token=`).
_SECRET_QUERY: Final = re.compile(
    r"(?i)([?&](?:[^=&\s]*(?:token|secret|password|signature|credential)[^=&\s]*|ak|sk)=)[^&\s\"]*"
)


def redact_query(text: str) -> str:
    """`text` with the values of secret-looking query parameters replaced by ***."""
    return _SECRET_QUERY.sub(r"\1***", text)


class QuerySecretFilter(logging.Filter):
    """For uvicorn's access log, which records each request's path with its query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True
