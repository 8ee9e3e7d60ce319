"""Sign-in with a project's access key and secret key (or an X-Auth-Token), and sign-out."""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Final, Literal

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from ferry.console.context import Console, ConsoleContext
from ferry.console.render import render
from ferry.console.session import (
    COOKIE_PATH,
    CSRF_FIELD,
    SIGNIN_COOKIE,
    CheckedForm,
    CsrfRefused,
    CurrentProject,
    clear_session_cookie,
    form_text,
    read_form,
    same_origin,
    seal_session,
    session_of,
    set_session_cookie,
)

router = APIRouter()
# Compared against when the access key is unknown, so that "no such key" takes as long as "wrong secret".
_DECOY: Final = os.urandom(32).hex()
_REFUSED: Final = "The access key and secret key (or the token) are not valid."


def _safe_next(value: str) -> str:
    # Only back into the console: an open redirect would let a link sign someone in and send them elsewhere.
    if value.startswith("/console/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/tasks"


def _signin_page(request: Request, ctx: ConsoleContext, next_path: str, error: str | None = None,
                 access_key: str = "", status: int = 200) -> Response:
    pre = secrets.token_urlsafe(24)
    response = render(request, None, "signin.html", status=status, csrf_token=pre, next_path=next_path,
                      access_key=access_key, flash_error=error)
    # Double submit: a page of another site cannot read this cookie to copy it into its own form.
    response.set_cookie(SIGNIN_COOKIE, pre, max_age=3600, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=ctx.secure_cookies)
    return response


@router.get("/signin")
async def signin_form(request: Request, ctx: Console, next: str = "") -> Response:
    if await session_of(request, ctx) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _signin_page(request, ctx, _safe_next(next))


def _verify(ctx: ConsoleContext, access_key: str, secret_key: str,
            token: str) -> tuple[str, Literal["aksk", "token"], str] | None:
    """`(project_id, method, credential)` when the keys or the token are valid, else None."""
    if token:
        project_id = ctx.credentials.lookup_token(token)
        return (project_id, "token", token) if project_id else None
    found = ctx.credentials.lookup_access_key(access_key) if access_key else None
    expected = found[1] if found is not None else _DECOY
    matches = hmac.compare_digest(expected.encode(), secret_key.encode())
    if found is None or not matches or not secret_key:
        return None
    return found[0], "aksk", access_key


@router.post("/signin")
async def signin(request: Request, ctx: Console) -> Response:
    form = await read_form(request)
    pre = request.cookies.get(SIGNIN_COOKIE, "")
    sent = form_text(form, CSRF_FIELD)
    if not pre or not hmac.compare_digest(pre.encode(), sent.encode()) or not same_origin(request):
        raise CsrfRefused("the sign-in form expired or came from another site; reload it and try again")
    next_path = _safe_next(form_text(form, "next"))
    access_key = form_text(form, "access_key")
    found = await run_in_threadpool(_verify, ctx, access_key, form_text(form, "secret_key"), form_text(form, "token"))
    if found is None:
        # The secret and the token are never sent back into the page.
        return _signin_page(request, ctx, next_path, _REFUSED, access_key=access_key, status=401)
    project_id, method, credential = found
    value, _ = seal_session(ctx, project_id, method, credential)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(response, ctx, value)
    response.delete_cookie(SIGNIN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/signout")
async def signout(ctx: Console, session: CurrentProject, form: CheckedForm) -> Response:
    ctx.signed_out.add(session.session_id, session.expires_at)
    response = RedirectResponse("/console/signin", status_code=303)
    clear_session_cookie(response, ctx)
    return response
