"""Task group operations (§1.3): create, list, show, start, stop, retry, update, delete — thin over service.groups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse

from ferry.api.deps import CurrentPrincipal, Services, ok
from ferry.api.routes.tasks import call, done
from ferry.oms import (
    Codes,
    CreateTaskGroupReq,
    CreateTaskGroupResponse,
    EmptyResponse,
    GroupId,
    ListTaskGroupQuery,
    ListTaskGroupResponse,
    Messages,
    OmsError,
    RetryTaskGroupReq,
    ShowTaskGroupResponse,
    StartTaskGroupReq,
    UpdateBandwidthPolicyReq,
)
from ferry.service import groups
from ferry.service.groups import GroupContext

router = APIRouter()


def group_context(services: Services) -> GroupContext:
    """The group store, or 404 APIGW.0101 when this server was built without one (operation not published)."""
    if services.groups is None:
        raise OmsError(404, Codes.NO_API, Messages.NO_API)
    return services.groups


@router.post("/taskgroups", response_model=CreateTaskGroupResponse, summary="create_task_group")
def create_task_group(body: CreateTaskGroupReq, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = group_context(services)
    return ok(call(lambda: groups.create_task_group(ctx, principal.project_id, body)))


@router.get("/taskgroups", response_model=ListTaskGroupResponse, summary="list_task_group")
def list_task_group(query: Annotated[ListTaskGroupQuery, Query()], principal: CurrentPrincipal,
                    services: Services) -> JSONResponse:
    ctx = group_context(services)
    return ok(call(lambda: groups.list_task_group(ctx, principal.project_id, query)))


@router.get("/taskgroups/{group_id}", response_model=ShowTaskGroupResponse, summary="show_task_group")
def show_task_group(group_id: GroupId, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = group_context(services)
    return ok(call(lambda: groups.show_task_group(ctx, principal.project_id, group_id)))


@router.put("/taskgroups/{group_id}/start", response_model=EmptyResponse, summary="start_task_group")
def start_task_group(group_id: GroupId, body: StartTaskGroupReq, principal: CurrentPrincipal,
                     services: Services) -> JSONResponse:
    ctx = group_context(services)
    return done(lambda: groups.start_task_group(ctx, principal.project_id, group_id, body))


@router.put("/taskgroups/{group_id}/stop", response_model=EmptyResponse, summary="stop_task_group")
def stop_task_group(group_id: GroupId, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = group_context(services)
    return done(lambda: groups.stop_task_group(ctx, principal.project_id, group_id))


@router.put("/taskgroups/{group_id}/retry", response_model=EmptyResponse, summary="retry_task_group")
def retry_task_group(group_id: GroupId, body: RetryTaskGroupReq, principal: CurrentPrincipal,
                     services: Services) -> JSONResponse:
    ctx = group_context(services)
    return done(lambda: groups.retry_task_group(ctx, principal.project_id, group_id, body))


@router.put("/taskgroups/{group_id}/update", response_model=EmptyResponse, summary="update_task_group")
def update_task_group(group_id: GroupId, body: UpdateBandwidthPolicyReq, principal: CurrentPrincipal,
                      services: Services) -> JSONResponse:
    ctx = group_context(services)
    return done(lambda: groups.update_task_group(ctx, principal.project_id, group_id, body))


@router.delete("/taskgroups/{group_id}", response_model=EmptyResponse, summary="delete_task_group")
def delete_task_group(group_id: GroupId, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = group_context(services)
    return done(lambda: groups.delete_task_group(ctx, principal.project_id, group_id))
