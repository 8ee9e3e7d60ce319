"""Task groups: the list (status filter, paging) and a group's page with its tasks and actions."""

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
from ferry.service import groups
from ferry.service.groups import GroupContext
from ferry.service.tasks import TaskError

router = APIRouter()

GROUP_STATUS_NAMES: Final = {
    0: "waiting", 1: "executing", 2: "monitoring", 3: "paused", 4: "create failed", 5: "migrate failed",
    6: "completed", 7: "pausing", 8: "waiting for deletion",
}


def group_context(ctx: ConsoleContext) -> GroupContext:
    if ctx.groups is None:
        raise TaskError(404, s.Codes.NO_API, "This server runs no task groups.")
    return ctx.groups


@router.get("/groups")
async def group_list(request: Request, ctx: Console, session: CurrentProject, limit: str | None = None,
                     offset: str | None = None, status: str | None = None) -> Response:
    paging = Paging.parse("/console/groups", limit, offset, status)
    chosen = int(paging.status) if paging.status.isdigit() and int(paging.status) in GROUP_STATUS_NAMES else None
    query = s.ListTaskGroupQuery(limit=paging.limit, offset=paging.offset,
                                 status=s.GroupStatus(chosen) if chosen is not None else None)
    listed = await run_in_threadpool(groups.list_task_group, group_context(ctx), session.project_id, query)
    return render(request, session, "groups.html", groups=listed.taskgroups or [],
                  paging=paging.with_count(listed.count or 0), statuses=GROUP_STATUS_NAMES)
