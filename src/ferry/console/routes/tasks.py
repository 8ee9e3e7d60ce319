"""Migration tasks: the list (status filter, paging), a task's page with live progress, and its actions."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ferry import oms as s
from ferry.console.context import Console, ConsoleContext
from ferry.console.paging import Paging
from ferry.console.render import render
from ferry.console.session import CurrentProject
from ferry.service import tasks
from ferry.service.tasks import TaskContext, TaskError

router = APIRouter()

STATUS_NAMES: Final = {
    1: "waiting", 2: "running", 3: "paused", 4: "failed", 5: "succeeded", 6: "retrying", 7: "pausing",
}


def task_context(ctx: ConsoleContext) -> TaskContext:
    if ctx.tasks is None:
        raise TaskError(404, s.Codes.NO_API, "This server runs no migration tasks.")
    return ctx.tasks


def validation_message(exc: ValidationError) -> str:
    """A pydantic refusal in the words the API's 400 uses: each field and what is wrong with it."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "Invalid parameter settings. " + "; ".join(parts)


@router.get("/tasks")
async def task_list(request: Request, ctx: Console, session: CurrentProject, limit: str | None = None,
                    offset: str | None = None, status: str | None = None) -> Response:
    paging = Paging.parse("/console/tasks", limit, offset, status)
    status_filter = int(paging.status) if paging.status.isdigit() and int(paging.status) in STATUS_NAMES else None
    query = s.ListTasksQuery(limit=paging.limit, offset=paging.offset,
                             status=s.TaskStatus(status_filter) if status_filter else None)
    tctx = task_context(ctx)
    listed = await run_in_threadpool(tasks.list_tasks, tctx, session.project_id, query)
    return render(request, session, "tasks.html", tasks=listed.tasks or [],
                  paging=paging.with_count(listed.count or 0), statuses=STATUS_NAMES)
