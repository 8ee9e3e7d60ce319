"""Sync tasks: the list (status filter, paging). A sync task's own page and the create forms live beside it."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ferry import oms as s
from ferry.console.context import Console, ConsoleContext
from ferry.console.paging import Paging
from ferry.console.render import render
from ferry.console.session import CurrentProject
from ferry.service import sync
from ferry.service.sync import SyncContext
from ferry.service.tasks import TaskError

router = APIRouter()

SYNC_STATUSES: Final = {st.value: st.value.lower() for st in s.SyncStatus}


def sync_context(ctx: ConsoleContext) -> SyncContext:
    if ctx.sync is None:
        raise TaskError(404, s.Codes.NO_API, "This server runs no sync tasks.")
    return ctx.sync


@router.get("/sync-tasks")
async def sync_list(request: Request, ctx: Console, session: CurrentProject, limit: str | None = None,
                    offset: str | None = None, status: str | None = None) -> Response:
    paging = Paging.parse("/console/sync-tasks", limit, offset, status)
    chosen = s.SyncStatus(paging.status) if paging.status in SYNC_STATUSES else None
    rows, count = await run_in_threadpool(
        lambda: sync.list_sync_tasks(sync_context(ctx), session.project_id, limit=paging.limit,
                                     offset=paging.offset, status=chosen))
    return render(request, session, "sync_tasks.html", rows=rows, paging=paging.with_count(count),
                  statuses=SYNC_STATUSES)
