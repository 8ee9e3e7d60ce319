"""Console sessions and CSRF: a sealed, expiring session cookie, the signed-in project, and checked forms.

The session lives in one cookie sealed with AES-GCM under a key derived from the master key, not in a table: any
server process sharing the master key accepts it, and nothing is written per sign-in. It holds the project, how
it signed in and the credential it proved (an access key id, or the X-Auth-Token itself, sealed), an expiry and
a random session id. Every request looks that credential up again, so revoking the access key or the token ends
its console sessions at once; signing out forgets the session id in this process until it would have expired.

CSRF: every state-changing route reads its body through `checked_form`, which wants the session's CSRF token
(an HMAC of the session id) in the form field `csrf_token` or the X-CSRF-Token header, and refuses a request
whose Origin is another site. The cookie is also SameSite=Lax and HttpOnly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from ferry.console.context import Console, ConsoleContext

COOKIE: Final = "ferry_session"
SIGNIN_COOKIE: Final = "ferry_signin"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"
COOKIE_PATH: Final = "/console"
MAX_FORM: Final = 1 << 20
_AAD: Final = b"ferry-console-session-v1"
_NONCE: Final = 12


class SignInRequired(Exception):
    """No valid session: the app answers with a redirect to the sign-in page (`next` brings the user back)."""

    def __init__(self, next_path: str = "") -> None:
        super().__init__("sign in required")
        self.next_path = next_path


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token, or from another site's page: 403."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ProjectSession:
    """The signed-in project of a console request. `csrf_token` goes into every form the page renders."""

    project_id: str
    method: Literal["aksk", "token"]
    session_id: str
    expires_at: float
    csrf_token: str


@dataclass(frozen=True)
class _Sealed:
    project_id: str
    method: Literal["aksk", "token"]
    credential: str
    session_id: str
    expires_at: float


def _aead(ctx: ConsoleContext) -> AESGCM:
    return AESGCM(ctx.session_key)


def csrf_for(ctx: ConsoleContext, session_id: str) -> str:
    return hmac.new(ctx.session_key, b"csrf\x00" + session_id.encode(), hashlib.sha256).hexdigest()


def seal_session(ctx: ConsoleContext, project_id: str, method: Literal["aksk", "token"], credential: str,
                 now: float | None = None) -> tuple[str, ProjectSession]:
    """A new session's cookie value and the session it stands for."""
    now = time.time() if now is None else now
    sid = secrets.token_hex(16)
    expires = now + ctx.session_ttl
    payload = json.dumps({"p": project_id, "m": method, "c": credential, "s": sid, "e": expires}).encode()
    nonce = os.urandom(_NONCE)
    value = base64.urlsafe_b64encode(nonce + _aead(ctx).encrypt(nonce, payload, _AAD)).decode().rstrip("=")
    return value, ProjectSession(project_id, method, sid, expires, csrf_for(ctx, sid))


def _unseal(ctx: ConsoleContext, value: str, now: float) -> _Sealed | None:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        payload = json.loads(_aead(ctx).decrypt(raw[:_NONCE], raw[_NONCE:], _AAD))
        sealed = _Sealed(str(payload["p"]), payload["m"], str(payload["c"]), str(payload["s"]), float(payload["e"]))
    except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
        return None
    if sealed.method not in ("aksk", "token") or sealed.expires_at <= now:
        return None
    return sealed


def _still_valid(ctx: ConsoleContext, sealed: _Sealed) -> bool:
    # The credential may have been revoked (or the token expired) since sign-in.
    if sealed.method == "aksk":
        found = ctx.credentials.lookup_access_key(sealed.credential)
        return found is not None and found[0] == sealed.project_id
    return ctx.credentials.lookup_token(sealed.credential) == sealed.project_id


async def session_of(request: Request, ctx: ConsoleContext) -> ProjectSession | None:
    """The request's valid session, or None."""
    value = request.cookies.get(COOKIE)
    if not value or len(value) > 8192:
        return None
    sealed = _unseal(ctx, value, time.time())
    if sealed is None or sealed.session_id in ctx.signed_out:
        return None
    # The store may hit the database; keep that off the event loop.
    if not await run_in_threadpool(_still_valid, ctx, sealed):
        return None
    return ProjectSession(sealed.project_id, sealed.method, sealed.session_id, sealed.expires_at,
                          csrf_for(ctx, sealed.session_id))


async def current_project(request: Request, ctx: Console) -> ProjectSession:
    """FastAPI dependency of every console page: the signed-in project, else a redirect to the sign-in page."""
    session = await session_of(request, ctx)
    if session is None:
        path = request.url.path
        query = request.url.query
        raise SignInRequired(path + (f"?{query}" if query else "") if request.method == "GET" else "")
    return session


CurrentProject = Annotated[ProjectSession, Depends(current_project)]


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site's page (Origin or Referer host differs
    from the Host it was sent to); requests without either (old browsers, curl) rely on the token alone."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == host
    referer = request.headers.get("referer")
    return referer is None or urlsplit(referer).netloc == host


async def read_form(request: Request) -> FormData:
    """The URL-encoded body of a console form (bounded; anything else is refused as a CSRF attempt would be)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if body and content_type != "application/x-www-form-urlencoded":
        raise CsrfRefused("the form was not sent as a form")
    if len(body) > MAX_FORM:
        raise CsrfRefused("the form is too large")
    try:
        pairs: list[tuple[str, str | UploadFile]] = list(
            parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2000))
    except (UnicodeDecodeError, ValueError):
        raise CsrfRefused("the form is not valid") from None
    return FormData(pairs)


async def checked_form(request: Request, session: CurrentProject) -> FormData:
    """FastAPI dependency of every state-changing route: the form, once its CSRF token and origin are right."""
    form = await read_form(request)
    token = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), session.csrf_token.encode()):
        raise CsrfRefused("the form's security token is missing or stale; reload the page and try again")
    if not same_origin(request):
        raise CsrfRefused("the request came from another site")
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]


def set_session_cookie(response: Response, ctx: ConsoleContext, value: str) -> None:
    response.set_cookie(COOKIE, value, max_age=int(ctx.session_ttl), path=COOKIE_PATH, httponly=True,
                        samesite="lax", secure=ctx.secure_cookies)


def clear_session_cookie(response: Response, ctx: ConsoleContext) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax", secure=ctx.secure_cookies)


def form_text(form: FormData, name: str) -> str:
    """A text field of a form ('' when absent; an uploaded file never reaches here: forms are URL-encoded)."""
    value: Any = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""
