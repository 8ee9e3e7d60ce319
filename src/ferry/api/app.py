"""The FastAPI application factory: OMS v2 routes, authentication, and OMS-shaped errors wired together."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from ferry.api.auth import VERIFIER_STATE, RequestVerifier, require_principal
from ferry.api.deps import SERVICES_STATE, ApiServices
from ferry.api.errors import RequestContextMiddleware, install_error_handlers
from ferry.api.routes import buckets, cluster, helpers, metrics, misc, sync_tasks, taskgroups, tasks, versions
from ferry.oms import oms_error_for_validation

PROJECT_PREFIX: Final = "/v2/{project_id}"
OPENAPI_URL: Final = "/openapi.json"

# Route modules mounted under /v2/{project_id}, every route authenticated. A new area (tasks, taskgroups,
# sync-tasks, the bucket helpers that talk to source clouds, bandwidth/batch updates) is a module in
# ferry.api.routes exporting `router` with paths relative to the prefix; add its router here and its
# service callables to ApiServices. Until then those operations answer 404 APIGW.0101.
PROJECT_ROUTERS: Final[tuple[APIRouter, ...]] = (
    helpers.router, misc.router, buckets.router, sync_tasks.router, tasks.router, taskgroups.router,
    cluster.router,
)
PENDING_ROUTE_MODULES: Final[tuple[str, ...]] = ()

# Routers outside /v2/{project_id} that authenticate on their own terms (the sync-task notification
# webhook takes a per-task token, for stores that cannot sign requests).
PUBLIC_ROUTERS: Final[tuple[APIRouter, ...]] = (sync_tasks.public_router,)


def create_app(
    services: ApiServices,
    *,
    routers: Sequence[APIRouter] = PROJECT_ROUTERS,
    public_routers: Sequence[APIRouter] = PUBLIC_ROUTERS,
    mounts: Sequence[BaseRoute] = (),
) -> FastAPI:
    """Build the OMS v2 API over `services`; `routers` are the authenticated /v2/{project_id} route modules.

    Its OpenAPI document is served at OPENAPI_URL without authentication, like `GET /`: it describes only what
    Huawei's public API reference already does (no secret, no project, no task), and OMS clients, code
    generators and fuzzers need it before they hold any key. The interactive docs stay off: they load their
    script from a public CDN, which a self-hosted server must not make its users' browsers do.

    `mounts` are routes of applications beside the API (the web console at /console), served by the same server
    with their own authentication; they come before the catch-all version route."""
    app = FastAPI(
        title="Ferry OMS v2 API",
        version="2",
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL,
        # The SDK never follows redirects, so trailing slashes are absorbed by the middleware instead.
        redirect_slashes=False,
    )
    setattr(app.state, SERVICES_STATE, services)
    setattr(app.state, VERIFIER_STATE, RequestVerifier(services.credentials, clock=services.clock))
    install_error_handlers(app, oms_error_for_validation)
    app.add_middleware(RequestContextMiddleware, max_body=services.max_body, limits=services.http_limits)
    for router in routers:
        app.include_router(router, prefix=PROJECT_PREFIX, dependencies=[Depends(require_principal)])
    for router in public_routers:
        app.include_router(router)
    # Outside the OMS API: a Prometheus scrape, with a bearer token of its own when FERRY_METRICS_TOKEN is set.
    app.include_router(metrics.router)
    app.router.routes.extend(mounts)
    # Last, so that its catch-all `/{version}` can never shadow another route.
    app.include_router(versions.router)
    _check_every_project_route_is_authenticated(app)
    return app


def _effective_routes(routes: Sequence[BaseRoute], prefix: str = "",
                      dependencies: frozenset[object] = frozenset()) -> Iterator[tuple[str, set[object]]]:
    """Each API route's full path and the callables it depends on, also inside included routers: FastAPI
    0.165 keeps an included router as one lazy entry (`original_router`, with the prefix and dependencies of
    its inclusion), so app.routes alone shows none of their routes."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, {dep.call for dep in route.dependant.dependencies} | set(dependencies)
        inner = getattr(route, "original_router", None)
        if isinstance(inner, APIRouter):
            included = getattr(route, "include_context", None)
            extra = {d.dependency for d in getattr(included, "dependencies", None) or ()}
            yield from _effective_routes(inner.routes, prefix + (getattr(included, "prefix", "") or ""),
                                         dependencies | extra)


def _check_every_project_route_is_authenticated(app: FastAPI) -> None:
    # A route that reaches the project prefix some other way must not slip through without authentication.
    for path, calls in _effective_routes(app.routes):
        if path.startswith(PROJECT_PREFIX) and require_principal not in calls:
            raise RuntimeError(f"route {path} is not authenticated")
