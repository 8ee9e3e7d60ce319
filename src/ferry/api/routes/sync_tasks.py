"""Sync-task operations (§1.4) plus Ferry's extensions: bucket notifications and the failed-key list.

Extensions (not in the OMS SDK, same auth and error shapes):
- `POST /v2/{project_id}/sync-tasks/{id}/notifications` — body: an S3-style event notification (AWS S3 direct
  or via SNS, MinIO, Ceph RGW webhook JSON); its ObjectCreated records become sync events. Signed like every
  other call (AK/SK or X-Auth-Token).
- `POST /v2/{project_id}/sync-tasks/{id}/notification-token` — issue (or rotate) the task's notification token
  and answer `{"token", "url"}`; the token is shown once and stored only as a hash.
- `POST /v2/sync-notifications/{id}` — the same notification endpoint for stores that cannot sign requests:
  authenticated by that token, given as `Authorization: Bearer <token>` (MinIO's webhook `auth_token`),
  `X-Ferry-Token: <token>`, or `?token=<token>` (for webhooks that only take a URL; it may then end up in
  proxy logs, so prefer a header where the store allows one).
- `GET /v2/{project_id}/sync-tasks/{id}/failed-objects?limit&offset` — keys that failed, still being retried
  or given up, with attempts and the last reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from ferry.api.deps import CurrentPrincipal, Services, json_body, ok, public_base_url
from ferry.api.routes.buckets import helper_answer
from ferry.db.sync_repo import QueueFullError, SyncTaskRow
from ferry.errors import NotFoundError
from ferry.oms import (
    INT64_MAX,
    Codes,
    CreateSyncTaskReq,
    CreateSyncTaskResponse,
    EmptyResponse,
    ErrorReasonResp,
    ListSyncTasksQuery,
    ListSyncTasksResponse,
    ListSyncTaskStatisticQuery,
    ListSyncTaskStatisticResponse,
    Messages,
    OmsError,
    RequestModel,
    ResponseModel,
    ShowSyncTaskQuery,
    ShowSyncTaskResponse,
    SourceCdnResp,
    StartSyncTaskReq,
    StatisticData,
    StatisticTypeData,
    SyncObjectReq,
    SyncTaskId,
    SyncTaskInfo,
)
from ferry.service import sync
from ferry.service.buckets import HelperError
from ferry.service.quotas import RateLimitedError

router = APIRouter()
# Mounted outside /v2/{project_id}: authenticated by the per-task notification token, not by a signature.
public_router = APIRouter()

# How soon a notifier whose queue is full should try again: about what workers need to make room.
QUEUE_FULL_RETRY: Final = 30
NOTIFICATION_PATH: Final = "/v2/sync-notifications/{sync_task_id}"


async def _context(services: Services) -> sync.SyncContext:
    if services.sync is None:
        # A deployment without the sync service answers as if the operation were not published.
        raise OmsError(404, Codes.NO_API, Messages.NO_API)
    return services.sync


Sync = Annotated[sync.SyncContext, Depends(_context)]


# -- conversions between the service's records and the OMS models ---------------------------------------------

def _common(row: SyncTaskRow) -> dict[str, Any]:
    s = row.spec
    return {
        "sync_task_id": row.id, "src_cloud_type": s.src_cloud_type, "src_region": s.src_region,
        "src_bucket": s.src_bucket, "create_time": int(row.created_at * 1000),
        "last_start_time": int(row.last_start_at * 1000), "dst_bucket": s.dst_bucket, "dst_region": s.dst_region,
        "description": s.description, "status": row.status,
        "enable_metadata_migration": s.enable_metadata_migration, "enable_restore": s.enable_restore,
        "app_id": s.app_id, "object_overwrite_mode": s.object_overwrite_mode,
        "dst_storage_policy": s.dst_storage_policy, "consistency_check": s.consistency_check,
        # Ferry's extension (the SDK ignores it; raw answers carry it): why the workers stopped the task.
        "error_reason": ErrorReasonResp(error_code=row.error_code, error_msg=row.error_msg or "")
        if row.error_code else None,
    }


def _info(row: SyncTaskRow) -> SyncTaskInfo:
    s = row.spec
    cdn = None
    if s.cdn_domain and s.cdn_protocol:
        cdn = SourceCdnResp.model_validate(
            {"domain": s.cdn_domain, "protocol": s.cdn_protocol, "authentication_type": s.cdn_authentication_type}
        )
    return SyncTaskInfo.model_validate({**_common(row), "source_cdn": cdn})


# -- the eight OMS operations ---------------------------------------------------------------------------------

@router.post("/sync-tasks", response_model=CreateSyncTaskResponse, summary="create_sync_task")
async def create_sync_task(body: CreateSyncTaskReq, principal: CurrentPrincipal, ctx: Sync) -> JSONResponse:
    spec, creds = sync.request_spec(body)
    try:
        task_id = await sync.create_sync_task(ctx, principal.project_id, spec, creds)
    except HelperError as exc:
        raise helper_answer(exc) from None
    return ok(CreateSyncTaskResponse(sync_task_id=task_id))


@router.get("/sync-tasks", response_model=ListSyncTasksResponse, summary="list_sync_tasks")
def list_sync_tasks(
    query: Annotated[ListSyncTasksQuery, Query()], principal: CurrentPrincipal, ctx: Sync
) -> JSONResponse:
    rows, count = sync.list_sync_tasks(
        ctx, principal.project_id, limit=query.limit, offset=query.offset,
        status=query.status,
    )
    return ok(ListSyncTasksResponse(tasks=[_info(r) for r in rows], count=count))


@router.get("/sync-tasks/{sync_task_id}", response_model=ShowSyncTaskResponse, summary="show_sync_task")
def show_sync_task(
    sync_task_id: SyncTaskId, query: Annotated[ShowSyncTaskQuery, Query()], principal: CurrentPrincipal,
    ctx: Sync,
) -> JSONResponse:
    row, month = sync.show_sync_task(ctx, principal.project_id, sync_task_id, query.query_time)
    return ok(ShowSyncTaskResponse.model_validate({
        **_common(row),
        "monthly_acceptance_request": month.request, "monthly_success_object": month.success,
        "monthly_failure_object": month.failure, "monthly_skip_object": month.skip, "monthly_size": month.size,
    }))


@router.delete("/sync-tasks/{sync_task_id}", response_model=EmptyResponse, summary="delete_sync_task")
def delete_sync_task(sync_task_id: SyncTaskId, principal: CurrentPrincipal, ctx: Sync) -> JSONResponse:
    sync.delete_sync_task(ctx, principal.project_id, sync_task_id)
    return ok(EmptyResponse())


@router.post("/sync-tasks/{sync_task_id}/start", response_model=EmptyResponse, summary="start_sync_task")
async def start_sync_task(
    sync_task_id: SyncTaskId, body: StartSyncTaskReq, principal: CurrentPrincipal, ctx: Sync
) -> JSONResponse:
    creds, kms_key = sync.start_request(body)
    try:
        await sync.start_sync_task(ctx, principal.project_id, sync_task_id, creds, kms_key)
    except HelperError as exc:
        raise helper_answer(exc) from None
    return ok(EmptyResponse())


@router.post("/sync-tasks/{sync_task_id}/stop", response_model=EmptyResponse, summary="stop_sync_task")
def stop_sync_task(sync_task_id: SyncTaskId, principal: CurrentPrincipal, ctx: Sync) -> JSONResponse:
    sync.stop_sync_task(ctx, principal.project_id, sync_task_id)
    return ok(EmptyResponse())


@router.post("/sync-tasks/{sync_task_id}/events", response_model=EmptyResponse, summary="create_sync_events")
async def create_sync_events(
    sync_task_id: SyncTaskId, body: SyncObjectReq, principal: CurrentPrincipal, ctx: Sync
) -> JSONResponse:
    # The hot path of sync tasks: awaited on the event loop, committed by the context's one commit thread.
    try:
        await sync.create_sync_events(ctx, principal.project_id, sync_task_id, body.object_keys)
    except QueueFullError as exc:
        # A quota answer as OMS gives one (400 and the quota row's code): the SDK loses a 429's body.
        raise OmsError(400, Codes.QUOTA, f"The pending sync events exceed the limit: {exc.message}.") from None
    return ok(EmptyResponse())


@router.get("/sync-tasks/{sync_task_id}/statistics", response_model=ListSyncTaskStatisticResponse,
            summary="list_sync_task_statistic")
def list_sync_task_statistic(
    sync_task_id: SyncTaskId, query: Annotated[ListSyncTaskStatisticQuery, Query()], principal: CurrentPrincipal,
    ctx: Sync,
) -> JSONResponse:
    result = sync.list_sync_task_statistic(
        ctx, principal.project_id, sync_task_id, query.data_type, query.start_time,
        query.end_time,
    )
    datas = [
        StatisticTypeData.model_validate(
            {"data_type": kind, "data": [StatisticData(time_stamp=t, statistic_num=n) for t, n in points]}
        )
        for kind, points in result.series
    ]
    return ok(ListSyncTaskStatisticResponse.model_validate(
        {"sync_task_id": sync_task_id, "statistic_time_type": result.granularity, "statistic_datas": datas}
    ))


# -- extensions -----------------------------------------------------------------------------------------------

class NotificationResponse(ResponseModel):
    accepted: int | None = None
    ignored: int | None = None


class NotificationTokenResponse(ResponseModel):
    token: str | None = None
    url: str | None = None


class FailedObject(ResponseModel):
    key: str | None = None
    state: str | None = None
    attempts: int | None = None
    reason: str | None = None
    update_time: int | None = None
    next_attempt_time: int | None = None


class FailedObjectsResponse(ResponseModel):
    objects: list[FailedObject] | None = None
    count: int | None = None


class FailedObjectsQuery(RequestModel):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    # Not OMS's 10,000-row PageOffset (a task may have far more failed keys), but what the database can count.
    offset: Annotated[int, Field(ge=0, le=INT64_MAX)] = 0


def _notified(result: sync.NotificationResult) -> JSONResponse:
    return ok(NotificationResponse(accepted=result.accepted, ignored=result.ignored))


async def _notification(call: Callable[..., sync.NotificationResult], *args: Any) -> JSONResponse:
    """Run a notification call; a full queue or an exhausted rate is a 429 with Retry-After, which the
    stores sending notifications (MinIO, SNS) retry later, where a 400 would make them drop the event."""
    try:
        return _notified(await run_in_threadpool(call, *args))
    except QueueFullError as exc:
        raise OmsError(429, Codes.QUOTA, f"The pending sync events exceed the limit: {exc.message}.",
                       headers={"Retry-After": str(QUEUE_FULL_RETRY)}) from None
    except RateLimitedError as exc:
        raise OmsError(429, Codes.THROTTLED, f"The throttling threshold has been reached: {exc.message}.",
                       headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))}) from None


@router.post("/sync-tasks/{sync_task_id}/notifications", response_model=NotificationResponse,
             summary="ferry: accept an S3-style bucket notification")
async def notify(sync_task_id: SyncTaskId, request: Request, principal: CurrentPrincipal, ctx: Sync) -> JSONResponse:
    payload = await json_body(request)
    return await _notification(sync.notify_sync_task, ctx, principal.project_id, sync_task_id, payload)


@router.post("/sync-tasks/{sync_task_id}/notification-token", response_model=NotificationTokenResponse,
             summary="ferry: issue the token of the unsigned notification URL")
def notification_token(
    sync_task_id: SyncTaskId, request: Request, principal: CurrentPrincipal, ctx: Sync
) -> JSONResponse:
    token = sync.issue_notification_token(ctx, principal.project_id, sync_task_id)
    url = public_base_url(request) + NOTIFICATION_PATH.format(sync_task_id=sync_task_id)
    # The one answer that carries a secret, by design: the caller asked for it, and it exists nowhere else.
    return JSONResponse({"token": token, "url": url})


@router.get("/sync-tasks/{sync_task_id}/failed-objects", response_model=FailedObjectsResponse,
            summary="ferry: keys that failed, with their reason")
def failed_objects(
    sync_task_id: SyncTaskId, query: Annotated[FailedObjectsQuery, Query()], principal: CurrentPrincipal,
    ctx: Sync,
) -> JSONResponse:
    rows, count = sync.list_key_problems(ctx, principal.project_id, sync_task_id, limit=query.limit,
                                         offset=query.offset)
    objects = [
        FailedObject(key=r.key, state="retrying" if r.state == "pending" else r.state, attempts=r.attempts,
                     reason=r.reason, update_time=int(r.updated_at * 1000),
                     next_attempt_time=int(r.next_attempt_at * 1000) if r.state == "pending" else None)
        for r in rows
    ]
    return ok(FailedObjectsResponse(objects=objects, count=count))


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-ferry-token") or request.query_params.get("token") or ""


@public_router.post(NOTIFICATION_PATH, response_model=NotificationResponse,
                    summary="ferry: bucket notification authenticated by the task's token")
async def notify_with_token(sync_task_id: SyncTaskId, request: Request, services: Services) -> JSONResponse:
    ctx = await _context(services)
    token = _bearer(request)
    try:
        row = await run_in_threadpool(sync.task_for_token, ctx, sync_task_id, token)
    except NotFoundError:
        # One answer for "no token", "wrong token" and "no such task".
        raise OmsError.unauthorized() from None
    payload = await json_body(request)
    return await _notification(sync.accept_notification, ctx, row, payload)
