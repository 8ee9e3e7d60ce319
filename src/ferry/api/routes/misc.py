"""Miscellaneous operations (§1.6): the privacy-agreement record, task bandwidth policy and batch updates."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from ferry.api.deps import CurrentPrincipal, Services, ok
from ferry.api.routes.tasks import done, task_context
from ferry.oms import BatchUpdateTasksReq, EmptyResponse, TaskId, UpdateBandwidthPolicyReq
from ferry.service import tasks

router = APIRouter()


@router.post("/privacy-agreements", response_model=EmptyResponse, summary="update_privacy_agreement_record")
def update_privacy_agreement_record(principal: CurrentPrincipal, services: Services) -> JSONResponse:
    services.record_privacy_agreement(principal.project_id)
    return ok(EmptyResponse())


@router.put("/tasks/{task_id}/bandwidth-policy", response_model=EmptyResponse, summary="update_bandwidth_policy")
def update_bandwidth_policy(task_id: TaskId, body: UpdateBandwidthPolicyReq, principal: CurrentPrincipal,
                            services: Services) -> JSONResponse:
    ctx = task_context(services)
    return done(lambda: tasks.update_bandwidth_policy(ctx, principal.project_id, task_id, body))


@router.post("/tasks/batch-update", response_model=EmptyResponse, summary="batch_update_tasks")
def batch_update_tasks(body: BatchUpdateTasksReq, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = task_context(services)
    return done(lambda: tasks.batch_update_tasks(ctx, principal.project_id, body))
