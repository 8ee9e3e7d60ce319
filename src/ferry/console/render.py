"""Jinja2 rendering of console pages: the template environment, display filters, and page security headers."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ferry import __name__ as _pkg
from ferry.console.session import CSRF_FIELD, ProjectSession

STATIC_PREFIX: Final = "/console/static/"
# The page's scripts are files of ours; inline styles are needed by uPlot, which sizes its canvas with them.
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
              "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
PAGE_HEADERS: Final = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    # Pages show a project's tasks: no shared cache may keep them.
    "cache-control": "no-store",
}
# Changes with each release, so browsers fetch the new static files after an upgrade.
_STATIC_VERSION: Final = str(int(time.time()))


def human_size(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def human_duration_ms(ms: int | float | None) -> str:
    """A duration in milliseconds as '1 h 02 min', '3 min 05 s', '12 s'; '–' when unknown."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)) or ms < 0:
        return "–"
    seconds = int(ms // 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def human_time_ms(ms: int | None) -> str:
    """Epoch milliseconds as a UTC time; '–' for 0 or None (OMS's 'not yet')."""
    if not ms:
        return "–"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def percent(fraction: float | None) -> str:
    if fraction is None:
        return "–"
    return f"{max(0.0, min(fraction, 1.0)) * 100:.1f} %"


def speed(bytes_per_second: int | float | None) -> str:
    return "–" if not bytes_per_second else f"{human_size(bytes_per_second)}/s"


def static_url(path: str) -> str:
    return f"{STATIC_PREFIX}{path}?v={_STATIC_VERSION}"


ENV: Final = Environment(
    loader=PackageLoader(_pkg, "console/templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(size=human_size, duration=human_duration_ms, when=human_time_ms, percent=percent, speed=speed)
ENV.globals.update(static=static_url, csrf_field=CSRF_FIELD)


def render(request: Request, session: ProjectSession | None, template: str, status: int = 200,
           **values: Any) -> HTMLResponse:
    """A console page: `template` with the session (None on the sign-in page), its CSRF token and `values`."""
    context: Mapping[str, Any] = {
        "request": request,
        "session": session,
        "csrf_token": session.csrf_token if session is not None else values.pop("csrf_token", ""),
        "flash_error": values.pop("flash_error", None),
        "flash_ok": values.pop("flash_ok", None),
        **values,
    }
    html = ENV.get_template(template).render(context)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)
