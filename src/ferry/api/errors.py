"""OMS-shaped errors: OmsError, request ids, and handlers so every failure is a JSON error body."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.errors import FerryError, NotFoundError, TransientError, UsageError
from ferry.settings import HttpLimits

log = logging.getLogger("ferry.api")

REQUEST_ID_HEADER: Final = "X-Request-Id"
_SCOPE_KEY: Final = "ferry.request_id"
# Huawei documents error_msg as at most 1024 characters; longer ones are cut rather than rejected by clients.
MAX_MESSAGE: Final = 1024
# Enough for a JSON request of this API (the largest documented field is a 16 KiB security token).
DEFAULT_MAX_BODY: Final = 1024 * 1024


class Codes:
    """Error codes used by the edge; OMS.* from the OMS error table, APIGW.* from the API gateway table."""

    INVALID_PARAMETER: Final = "OMS.0001"
    INVALID_TASK_ID: Final = "OMS.0054"
    INVALID_TASK_FORMAT: Final = "OMS.0061"
    DESCRIPTION_CHARS: Final = "OMS.0078"
    NOT_FOUND: Final = "OMS.1009"
    # Not in the recovered OMS table: a self-chosen code in the same family for "our fault".
    INTERNAL: Final = "OMS.0000"
    UNAVAILABLE: Final = "OMS.0503"
    NO_API: Final = "APIGW.0101"
    TOO_LARGE: Final = "APIGW.0201"
    # APIG answers every malformed or incomplete request with APIGW.0201, the code of 413 too.
    REQUEST_TIMEOUT: Final = "APIGW.0201"
    AUTH_FAILED: Final = "APIGW.0301"
    FORBIDDEN: Final = "APIGW.0302"


class Messages:
    """Fixed texts, so that no message is built from request data by accident."""

    INVALID_PARAMETER: Final = "Invalid parameter settings. Modify the request parameters."
    INVALID_TASK_ID: Final = "Invalid task ID. Enter a valid task ID."
    DESCRIPTION_CHARS: Final = "The description cannot contain the following special characters: ^<>()\"'&"
    NOT_FOUND: Final = "No resources found."
    INTERNAL: Final = "Internal server error. Retry later; if it persists, contact the administrator."
    UNAVAILABLE: Final = "The service is temporarily unavailable. Retry later."
    NO_API: Final = "The API does not exist or has not been published in the environment."
    NO_METHOD: Final = "The API does not exist."
    TOO_LARGE: Final = "Request entity too large."
    REQUEST_TIMEOUT: Final = "Request timeout: the request body did not arrive in time."
    AUTH_FAILED: Final = "Incorrect IAM authentication information: verify aksk signature fail"
    # Tells a replayer nothing new, and a client that sent the same call twice within a second what to do.
    REPLAYED: Final = ("Incorrect IAM authentication information: this signed request was already received; "
                       "sign it again (X-Sdk-Date moves every second)")
    FORBIDDEN: Final = "The IAM user is not authorized to access the API."


class OmsError(Exception):
    """An API failure with its HTTP status and the OMS `error_code`/`error_msg` pair the SDK parses."""

    def __init__(self, status: int, error_code: str, error_msg: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error_code}: {error_msg}")
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg[:MAX_MESSAGE]
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "error_msg": self.error_msg}

    @classmethod
    def invalid_parameter(cls, detail: str | None = None) -> OmsError:
        msg = Messages.INVALID_PARAMETER if not detail else f"{Messages.INVALID_PARAMETER} {detail}"
        return cls(400, Codes.INVALID_PARAMETER, msg)

    @classmethod
    def not_found(cls, detail: str | None = None) -> OmsError:
        msg = Messages.NOT_FOUND if not detail else f"{Messages.NOT_FOUND} {detail}"
        return cls(404, Codes.NOT_FOUND, msg)

    @classmethod
    def unauthorized(cls) -> OmsError:
        # One message for every authentication failure: which check failed is of use only to an attacker.
        return cls(401, Codes.AUTH_FAILED, Messages.AUTH_FAILED)

    @classmethod
    def replayed(cls) -> OmsError:
        return cls(401, Codes.AUTH_FAILED, Messages.REPLAYED)

    @classmethod
    def forbidden(cls) -> OmsError:
        return cls(403, Codes.FORBIDDEN, Messages.FORBIDDEN)

    @classmethod
    def internal(cls) -> OmsError:
        return cls(500, Codes.INTERNAL, Messages.INTERNAL)


def request_id_of(scope_or_request: Scope | Request) -> str:
    """The id of the request being served (assigned by `RequestContextMiddleware`)."""
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    rid = scope.get(_SCOPE_KEY)
    return rid if isinstance(rid, str) else ""


def error_response(exc: OmsError, request_id: str) -> JSONResponse:
    headers = {**exc.headers, REQUEST_ID_HEADER: request_id}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def from_ferry_error(exc: FerryError) -> OmsError:
    """Map the domain taxonomy onto API errors; only UsageError messages (written for users) are shown."""
    if isinstance(exc, UsageError):
        return OmsError.invalid_parameter(exc.message)
    if isinstance(exc, NotFoundError):
        return OmsError.not_found()
    if isinstance(exc, TransientError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        return OmsError(503, Codes.UNAVAILABLE, Messages.UNAVAILABLE, headers=headers)
    return OmsError.internal()


def _for_http_status(status: int, raw_headers: Mapping[str, str] | None) -> OmsError:
    headers = dict(raw_headers) if raw_headers else None
    if status == 404:
        return OmsError(404, Codes.NO_API, Messages.NO_API)
    if status == 405:
        # APIG answers a wrong method with APIGW.0101 too; we keep that code but the truthful status.
        return OmsError(405, Codes.NO_API, Messages.NO_METHOD, headers=headers)
    if status == 413:
        return OmsError(413, Codes.TOO_LARGE, Messages.TOO_LARGE)
    if status == 408:
        # The rest of the body is never read, so the connection cannot carry another request.
        return OmsError(408, Codes.REQUEST_TIMEOUT, Messages.REQUEST_TIMEOUT, headers={"Connection": "close"})
    if status >= 500:
        return OmsError.internal()
    return OmsError(status, Codes.INVALID_PARAMETER, Messages.INVALID_PARAMETER, headers=headers)


ValidationMapper = Callable[[Sequence[Any]], OmsError]


def install_error_handlers(app: FastAPI, validation_mapper: ValidationMapper) -> None:
    """Register handlers so that every error, expected or not, answers `{"error_code","error_msg"}`."""

    async def on_oms_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OmsError)
        if exc.status >= 500:
            log.error("request %s failed: %s %s", request_id_of(request), exc.error_code, exc.error_msg)
        return error_response(exc, request_id_of(request))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_mapper(exc.errors()), request_id_of(request))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(_for_http_status(exc.status_code, exc.headers), request_id_of(request))

    async def on_ferry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FerryError)
        mapped = from_ferry_error(exc)
        if mapped.status >= 500:
            # The class and code identify the failure; the message may come from deep layers, so it stays out.
            log.error("request %s failed: %s (%s)", request_id_of(request), type(exc).__name__, exc.code)
        return error_response(mapped, request_id_of(request))

    async def on_anything(request: Request, exc: Exception) -> Response:
        log.error("request %s failed", request_id_of(request), exc_info=exc)
        return error_response(OmsError.internal(), request_id_of(request))

    app.add_exception_handler(OmsError, on_oms_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(FerryError, on_ferry_error)
    app.add_exception_handler(Exception, on_anything)


class RequestContextMiddleware:
    """Gives each request an id (echoed as X-Request-Id on every answer), tolerates one trailing slash,
    caps the body size and the time it may take to arrive (so authentication, which reads the body to check
    its signature, and every route stop waiting for a slow client whatever server runs the app), and is the
    last resort that turns any escaped exception into an OMS 500.

    Every answer also carries `Server-Timing: app;dur=<ms>`, the time from the request reaching the
    application to its answer starting, so a slow call can be told apart from a slow network or client."""

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY, limits: HttpLimits | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.limits = limits or HttpLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        request_id = uuid.uuid4().hex
        scope[_SCOPE_KEY] = request_id
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # Routing sees the path without its trailing slash; raw_path keeps it, and the signature
            # check canonicalises both spellings alike, so no redirect (the SDK does not follow them).
            scope["path"] = path[:-1]
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                took = (time.perf_counter() - arrived) * 1000
                headers.append((b"server-timing", f"app;dur={took:.1f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await error_response(OmsError(413, Codes.TOO_LARGE, Messages.TOO_LARGE), request_id)(scope, receive, send)
            return
        received = 0
        body_done = False
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.limits.body_deadline(declared if declared is not None else self.max_body)

        async def capped_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # Past the body, receive() only waits for a disconnect, for as long as the answer takes.
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise StarletteHTTPException(408) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # An HTTPException, because FastAPI turns any other error raised while it reads
                    # the body into a generic 400.
                    raise StarletteHTTPException(413)
            return message

        try:
            await self.app(scope, capped_receive, send_with_id)
        except Exception:
            log.exception("request %s failed", request_id)
            if started:
                raise
            await error_response(OmsError.internal(), request_id)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
