"""The console application: its routers, static files and error pages, mounted under /console by `ferry serve`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ferry.console.context import CONSOLE_STATE, ConsoleContext
from ferry.console.render import render
from ferry.console.routes import auth, forms, groups, sync_pages, sync_tasks, tasks
from ferry.console.session import CsrfRefused, SignInRequired, checked_form, session_of
from ferry.errors import FerryError, LocalStateError, NotFoundError, TransientError, UsageError
from ferry.service.tasks import TaskError

PREFIX: Final = "/console"
log = logging.getLogger("ferry.console")
STATIC_DIR: Final = Path(__file__).parent / "static"
# Page modules; each exports `router` with paths relative to /console (see the package docstring). The create
# forms come first: their `/tasks/new` must not be taken for a task id by a page route.
ROUTERS: Final[tuple[APIRouter, ...]] = (auth.router, forms.router, sync_pages.router, tasks.router, groups.router,
                                         sync_tasks.router)
# POST routes that cannot have a session yet, and check their own CSRF token (a pre-session double submit).
_SESSIONLESS_POSTS: Final = frozenset({"/signin"})


def _sign_in_redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    target = f"{PREFIX}/signin" + (f"?next={quote(exc.next_path, safe='')}" if exc.next_path else "")
    if request.headers.get("hx-request"):
        # htmx swaps responses in place; HX-Redirect makes it load the sign-in page instead.
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CsrfRefused)
    ctx: ConsoleContext = getattr(request.app.state, CONSOLE_STATE)
    session = await session_of(request, ctx)
    return render(request, session, "error.html", status=403, title="Request refused", message=exc.reason)


async def _refused(request: Request, exc: Exception) -> Response:
    # An operation refused outside a page that shows it inline. As on the API, only messages written for users
    # are shown (a TaskError's, with the API's status, and a UsageError's); any other error is named by kind.
    assert isinstance(exc, FerryError)
    ctx: ConsoleContext = getattr(request.app.state, CONSOLE_STATE)
    session = await session_of(request, ctx)
    if isinstance(exc, TaskError):
        status, message = exc.status, exc.message
    elif isinstance(exc, UsageError):
        status, message = 400, exc.message
    elif isinstance(exc, NotFoundError):
        status, message = 404, "There is no such page."
    elif isinstance(exc, TransientError | LocalStateError):
        status, message = 503, "The service is unavailable for a moment; try again shortly."
    else:
        log.error("console request %s failed", request.url.path, exc_info=exc)
        status, message = 500, "Something went wrong on the server; the error is in its log."
    return render(request, session, "error.html", status=status, title="Not possible", message=message)


async def _not_found(request: Request, exc: Exception) -> Response:
    # Unknown pages and malformed ids (a task id that is not a number) alike: a page, not FastAPI's JSON.
    ctx: ConsoleContext = getattr(request.app.state, CONSOLE_STATE)
    session = await session_of(request, ctx)
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 404
    message = "There is no such page." if status == 404 else str(getattr(exc, "detail", "")) or "Not possible."
    return render(request, session, "error.html", status=status, title="Not found" if status == 404 else "Error",
                  message=message)


def create_console(ctx: ConsoleContext, routers: Sequence[APIRouter] = ROUTERS) -> list[BaseRoute]:
    """The routes to add to the main application: `/console` itself and the console app mounted below it."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    setattr(app.state, CONSOLE_STATE, ctx)
    app.add_exception_handler(SignInRequired, _sign_in_redirect)
    app.add_exception_handler(CsrfRefused, _csrf_refused)
    app.add_exception_handler(FerryError, _refused)
    app.add_exception_handler(StarletteHTTPException, _not_found)
    app.add_exception_handler(RequestValidationError, _not_found)
    _check_every_post_is_protected(routers)
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/tasks", status_code=303)

    return [Route(PREFIX, home, methods=["GET"]), Mount(PREFIX, app=app)]


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    # FastAPI keeps an included router as one lazy entry (its `original_router`), so walk into those too.
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None) or getattr(route, "app", None)
        if isinstance(inner, APIRouter):
            yield from _api_routes(inner.routes)


def _check_every_post_is_protected(routers: Sequence[APIRouter]) -> None:
    # A state-changing route that forgot the CSRF check must not be served at all.
    for router in routers:
        for route in _api_routes(router.routes):
            if not (route.methods or set()) - {"GET", "HEAD"} or route.path in _SESSIONLESS_POSTS:
                continue
            calls = {dep.call for dep in route.dependant.dependencies}
            if checked_form not in calls:
                raise RuntimeError(f"console route {route.path} changes state without the CSRF check")
