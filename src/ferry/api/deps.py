"""What route modules share: the service bundle, the caller's identity, and the OMS JSON answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse

from ferry.api.auth import CredentialStore, Principal, require_principal
from ferry.api.errors import DEFAULT_MAX_BODY
from ferry.oms import OmsError, dump
from ferry.service.buckets import HelperSettings
from ferry.settings import HttpLimits, MetricsSettings

if TYPE_CHECKING:
    from ferry.service.groups import GroupContext
    from ferry.service.sync import SyncContext
    from ferry.service.tasks import TaskContext


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ApiServices:
    """The callables the API edge needs from the layers below; each new route area adds its own fields.

    Service callables are plain synchronous functions (routes declared with `def` run them in the thread
    pool), so the database layer needs no async twin.
    """

    credentials: CredentialStore
    # Records that the project accepted the privacy agreement (update_privacy_agreement_record).
    record_privacy_agreement: Callable[[str], None]
    clock: Callable[[], datetime] = field(default=_utcnow)
    max_body: int = DEFAULT_MAX_BODY
    # How long a request body may take to arrive (the body part of the FERRY_HTTP_* limits).
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    # FERRY_PUBLIC_URL: the root of links the API hands out; None names the address the request came in on.
    public_url: str | None = None
    # Sync tasks (routes.sync_tasks): database, secret box and worker wake-up; None answers 404 APIGW.0101.
    sync: SyncContext | None = None
    # Bucket helpers (routes.buckets): where clouds are and which CDN hosts may be probed.
    bucket_helpers: HelperSettings = field(default_factory=HelperSettings)
    # Migration tasks (routes.tasks, bandwidth/batch updates in routes.misc); None answers 404 APIGW.0101.
    tasks: TaskContext | None = None
    # Task groups (routes.taskgroups): the task context plus split settings; None answers 404 APIGW.0101.
    groups: GroupContext | None = None
    # GET /metrics (routes.metrics): its bearer token and how many tasks get series of their own.
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


SERVICES_STATE = "ferry_services"


async def get_services(request: Request) -> ApiServices:
    """FastAPI dependency: the ApiServices given to create_app (async: FastAPI would otherwise hand even this
    attribute read to its thread pool, one more hand-over per request)."""
    services: ApiServices = getattr(request.app.state, SERVICES_STATE)
    return services


Services = Annotated[ApiServices, Depends(get_services)]
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


def public_base_url(request: Request) -> str:
    """The root of links in answers (`GET /`, the notification URL): FERRY_PUBLIC_URL, else the address and port
    the connection came in on. Never the Host header, which the caller chooses."""
    services: ApiServices = getattr(request.app.state, SERVICES_STATE)
    if services.public_url:
        return services.public_url
    server = request.scope.get("server")
    if not server or server[1] is None:
        return ""  # a Unix socket: relative links
    host, port = server
    host = f"[{host}]" if ":" in host else host
    return f"{request.scope.get('scheme', 'http')}://{host}:{port}"


def ok(model: BaseModel) -> JSONResponse:
    """HTTP 200 with the model as OMS JSON (real JSON types, None fields omitted, arrays for RootModels)."""
    content: Any = dump(model)
    return JSONResponse(content)


async def json_body(request: Request) -> Any:
    """The body of a route that takes free-form JSON (None when empty); 400 OMS.0001 when it is not JSON.

    Routes with a request model get this from FastAPI; the others must read their body here, because
    json.loads raises RecursionError, not ValueError, on deeply nested input.
    """
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise OmsError.invalid_parameter("the body is not valid JSON or is nested too deeply") from None
