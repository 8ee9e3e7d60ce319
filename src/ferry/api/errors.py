"""OMS-shaped answers: request ids, and handlers so every failure is a JSON error body (the codes: ferry.oms)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.errors import FerryError
from ferry.metrics import API_REQUEST_DURATION, OTHER
from ferry.oms import Codes, Messages, OmsError, refusal
from ferry.settings import HttpLimits

log = logging.getLogger("ferry.api")

REQUEST_ID_HEADER: Final = "X-Request-Id"
_SCOPE_KEY: Final = "ferry.request_id"
# Enough for a JSON request of this API (the largest documented field is a 16 KiB security token).
DEFAULT_MAX_BODY: Final = 1024 * 1024
# The route label of a request no route matched: raw paths are the caller's to choose, so never a label.
UNMATCHED_ROUTE: Final = "unmatched"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def request_id_of(scope_or_request: Scope | Request) -> str:
    """The id of the request being served (assigned by `RequestContextMiddleware`)."""
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    rid = scope.get(_SCOPE_KEY)
    return rid if isinstance(rid, str) else ""


def error_response(exc: OmsError, request_id: str) -> JSONResponse:
    headers = {**exc.headers, REQUEST_ID_HEADER: request_id}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def from_ferry_error(exc: FerryError) -> OmsError:
    """Map the domain taxonomy onto API errors (the mapping the console shares, `ferry.oms.refusal`)."""
    return refusal(exc)


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
    application to its answer starting, so a slow call can be told apart from a slow network or client; the
    same time is tallied by method, route template and status for /metrics."""

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
                took = time.perf_counter() - arrived
                headers.append((b"server-timing", f"app;dur={took * 1000:.1f}".encode()))
                _observe(scope, int(message["status"]), took)
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


def _observe(scope: Scope, status: int, seconds: float) -> None:
    method = scope.get("method", "")
    API_REQUEST_DURATION.observe(seconds, method if method in _METHODS else OTHER, route_template(scope), str(status))


_TEMPLATES_STATE: Final = "ferry_route_templates"  # on app.state: id(route as the router holds it) -> template


def route_template(scope: Scope) -> str:
    """The path template of the route that served the request (`/v2/{project_id}/tasks/{task_id}`), so project
    and task ids never become label values; UNMATCHED_ROUTE when no route matched.

    The router puts the matched route in the scope, but a route of an included router carries its path relative
    to the router's prefix; the app's route contexts give the full template, looked up once per app."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    app = scope.get("app")
    state = getattr(app, "state", None)
    templates: dict[int, str] | None = getattr(state, _TEMPLATES_STATE, None)
    if templates is None and app is not None and state is not None:
        templates = {id(ctx.original_route): ctx.path for ctx in iter_route_contexts(app.routes) if ctx.path}
        setattr(state, _TEMPLATES_STATE, templates)
    path = (templates or {}).get(id(route)) or getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE
    # A mounted app (the console at /console) matched its route below the mount: its own templates lack it.
    return str(scope.get("root_path", "")) + path


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
