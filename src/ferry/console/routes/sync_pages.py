"""A sync task's page: its settings, the month's counters, REQUEST/SUCCESS/FAILURE/SKIP/SIZE charts over a chosen
window, the keys that failed with their reasons, and the actions the API allows (start with the keys re-supplied,
stop, delete) — each the service call the API's operation makes."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from ferry import oms as s
from ferry.console import form_specs
from ferry.console.context import Console
from ferry.console.render import PAGE_HEADERS, render
from ferry.console.routes.forms import form_values
from ferry.console.routes.sync_tasks import sync_context
from ferry.console.session import CheckedForm, CurrentProject, ProjectSession
from ferry.console.sync_view import PROBLEMS_PER_PAGE, WINDOWS, StatisticsChart, statistics_chart, sync_page, window_of
from ferry.errors import FerryError, NotFoundError
from ferry.service import sync

router = APIRouter()

TaskIdPath = Annotated[str, Path(min_length=1, max_length=255)]


async def _page(request: Request, session: ProjectSession, sctx: sync.SyncContext, task_id: str, *,
                window: str | None = None, offset: int = 0, status: int = 200, flash_error: str | None = None,
                flash_ok: str | None = None, start_errors: form_specs.Errors | None = None,
                start_values: dict[str, Any] | None = None) -> Response:
    try:
        page = await run_in_threadpool(lambda: sync_page(sctx, session.project_id, task_id, window=window,
                                                         now=time.time(), offset=offset))
    except NotFoundError:
        return render(request, session, "error.html", status=404, title="No such sync task",
                      message="This project has no sync task with this ID.")
    start_form = form_specs.START_SYNC_FORM
    return render(request, session, "sync/page.html", status=status, page=page, row=page.row, windows=list(WINDOWS),
                  per_page=PROBLEMS_PER_PAGE, flash_error=flash_error, flash_ok=flash_ok,
                  start_sections=start_form.resolved(), start_errors=start_errors or {},
                  start_values=start_values if start_values is not None else form_specs.initial(start_form))


@router.get("/sync-tasks/{task_id}")
async def sync_task_page(request: Request, ctx: Console, session: CurrentProject, task_id: TaskIdPath,
                         window: str | None = None, offset: str | None = None) -> Response:
    start = int(offset) if offset and offset.isdigit() else 0
    return await _page(request, session, sync_context(ctx), task_id, window=window, offset=start)


def chart_json(chart: StatisticsChart) -> dict[str, Any]:
    return {**chart.as_json(), "totals": chart.totals}


@router.get("/sync-tasks/{task_id}/statistics")
async def sync_statistics(ctx: Console, session: CurrentProject, task_id: TaskIdPath,
                          window: str | None = None) -> Response:
    """The chart's data (the page's script fetches it, and again every few seconds)."""
    sctx = sync_context(ctx)
    try:
        chart = await run_in_threadpool(statistics_chart, sctx, session.project_id, task_id, window_of(window),
                                        time.time())
    except NotFoundError:
        return JSONResponse({"error": "no such sync task"}, status_code=404, headers=PAGE_HEADERS)
    return JSONResponse(chart_json(chart), headers=PAGE_HEADERS)


def _here(task_id: str) -> str:
    return f"/console/sync-tasks/{task_id}"


@router.post("/sync-tasks/{task_id}/stop")
async def stop(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
               task_id: TaskIdPath) -> Response:
    sctx = sync_context(ctx)
    try:
        await run_in_threadpool(sync.stop_sync_task, sctx, session.project_id, task_id)
    except FerryError as exc:
        refused = s.refusal(exc)
        return await _page(request, session, sctx, task_id, status=refused.status,
                           flash_error=f"{refused.error_code}: {refused.error_msg}")
    return RedirectResponse(_here(task_id), status_code=303)


@router.post("/sync-tasks/{task_id}/delete")
async def delete(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                 task_id: TaskIdPath) -> Response:
    sctx = sync_context(ctx)
    try:
        await run_in_threadpool(sync.delete_sync_task, sctx, session.project_id, task_id)
    except FerryError as exc:
        refused = s.refusal(exc)
        return await _page(request, session, sctx, task_id, status=refused.status,
                           flash_error=f"{refused.error_code}: {refused.error_msg}")
    return RedirectResponse("/console/sync-tasks", status_code=303)


@router.post("/sync-tasks/{task_id}/start")
async def start(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                task_id: TaskIdPath) -> Response:
    """Start a stopped task with its keys re-supplied (StartSyncTaskReq, checked as the API checks it)."""
    sctx = sync_context(ctx)
    spec = form_specs.START_SYNC_FORM
    posted = form_values(form)
    parsed = form_specs.parse(spec, posted)
    if isinstance(parsed, form_specs.Outcome):
        return await _page(request, session, sctx, task_id, status=400, start_errors=parsed.errors,
                           start_values=parsed.values, flash_error="The task was not started: correct the keys.")
    assert isinstance(parsed, s.StartSyncTaskReq)
    creds, kms_key = sync.start_request(parsed)
    try:
        await sync.start_sync_task(sctx, session.project_id, task_id, creds, kms_key)
    except FerryError as exc:
        refused = s.refusal(exc)
        outcome = form_specs.refused(spec, posted, refused)
        return await _page(request, session, sctx, task_id, status=refused.status, start_errors=outcome.errors,
                           start_values=outcome.values, flash_error=f"{refused.error_code}: {refused.error_msg}")
    return RedirectResponse(_here(task_id), status_code=303)
