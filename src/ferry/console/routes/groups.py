"""Task groups: the list (status filter, paging) and a group's page with its tasks and actions.

A group's page refreshes its summary and its page of tasks with htmx every 3 s while the group can change
by itself (the fragment it swaps in stops asking once the group has settled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ferry import oms as s
from ferry.console.context import Console, ConsoleContext
from ferry.console.forms import bandwidth_request, keys_request, perform
from ferry.console.paging import Paging
from ferry.console.render import render
from ferry.console.routes.tasks import STATUS_NAMES
from ferry.console.session import CheckedForm, CurrentProject, ProjectSession, form_text
from ferry.service import groups, tasks
from ferry.service.groups import GroupContext
from ferry.service.tasks import TaskError

router = APIRouter()

GROUP_STATUS_NAMES: Final = {
    0: "waiting", 1: "executing", 2: "monitoring", 3: "paused", 4: "create failed", 5: "migrate failed",
    6: "completed", 7: "pausing", 8: "waiting for deletion",
}
LIVE_GROUP_STATUSES: Final = frozenset({0, 1, 2, 7, 8})
DONE_MESSAGES: Final = {
    "stop": "Stop requested: the group stops creating tasks and its tasks pause.",
    "start": "The group runs again.",
    "retry": "The group's failed work runs again.",
    "bandwidth": "The bandwidth policy is changed for the group and its unfinished tasks.",
    "delete": "The task group is being deleted with its tasks.",
}
GroupIdPath = Annotated[str, Path(min_length=1, max_length=100)]


def group_context(ctx: ConsoleContext) -> GroupContext:
    if ctx.groups is None:
        raise TaskError(404, s.Codes.NO_API, "This server runs no task groups.")
    return ctx.groups


@router.get("/groups")
async def group_list(request: Request, ctx: Console, session: CurrentProject, limit: str | None = None,
                     offset: str | None = None, status: str | None = None, done: str | None = None) -> Response:
    paging = Paging.parse("/console/groups", limit, offset, status)
    chosen = int(paging.status) if paging.status.isdigit() and int(paging.status) in GROUP_STATUS_NAMES else None
    query = s.ListTaskGroupQuery(limit=paging.limit, offset=paging.offset,
                                 status=s.GroupStatus(chosen) if chosen is not None else None)
    listed = await run_in_threadpool(groups.list_task_group, group_context(ctx), session.project_id, query)
    return render(request, session, "groups.html", groups=listed.taskgroups or [],
                  paging=paging.with_count(listed.count or 0), statuses=GROUP_STATUS_NAMES,
                  flash_ok=DONE_MESSAGES.get(done or ""))


async def _group_values(ctx: ConsoleContext, session: ProjectSession, group_id: str, limit: str | None,
                        offset: str | None) -> dict[str, Any]:
    gctx = group_context(ctx)
    group = await run_in_threadpool(groups.show_task_group, gctx, session.project_id, group_id)
    paging = Paging.parse(f"/console/groups/{group_id}", limit, offset, None)
    query = s.ListTasksQuery(group_id=group_id, limit=paging.limit, offset=paging.offset)
    listed = await run_in_threadpool(tasks.list_tasks, gctx.tasks, session.project_id, query)
    src = group.src_node.cloud_type.value if group.src_node and group.src_node.cloud_type else ""
    return {"group": group, "tasks": listed.tasks or [], "paging": paging.with_count(listed.count or 0),
            "statuses": STATUS_NAMES, "group_statuses": GROUP_STATUS_NAMES, "src_cloud": src,
            "live": int(group.status or 0) in LIVE_GROUP_STATUSES}


@router.get("/groups/{group_id}")
async def group_page(request: Request, ctx: Console, session: CurrentProject, group_id: GroupIdPath,
                     limit: str | None = None, offset: str | None = None, done: str | None = None) -> Response:
    values = await _group_values(ctx, session, group_id, limit, offset)
    return render(request, session, "group.html", flash_ok=DONE_MESSAGES.get(done or ""), **values)


@router.get("/groups/{group_id}/live")
async def group_live(request: Request, ctx: Console, session: CurrentProject, group_id: GroupIdPath,
                     limit: str | None = None, offset: str | None = None) -> Response:
    """The live part of the page (summary and the page of tasks), for htmx to swap in."""
    values = await _group_values(ctx, session, group_id, limit, offset)
    return render(request, session, "_group_live.html", **values)


async def _act(request: Request, ctx: ConsoleContext, session: ProjectSession, group_id: str, done: str,
               action: Callable[[GroupContext], None]) -> Response:
    gctx = group_context(ctx)

    async def refused(status: int, message: str) -> Response:
        values = await _group_values(ctx, session, group_id, None, None)
        return render(request, session, "group.html", status=status, flash_error=message, **values)

    target = "/console/groups?done=delete" if done == "delete" else f"/console/groups/{group_id}?done={done}"
    return await perform(lambda: action(gctx), refused, target)


@router.post("/groups/{group_id}/stop")
async def stop(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
               group_id: GroupIdPath) -> Response:
    return await _act(request, ctx, session, group_id, "stop",
                      lambda g: groups.stop_task_group(g, session.project_id, group_id))


@router.post("/groups/{group_id}/start")
async def start(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                group_id: GroupIdPath) -> Response:
    return await _act(request, ctx, session, group_id, "start", lambda g: groups.start_task_group(
        g, session.project_id, group_id, keys_request(s.StartTaskGroupReq, form)))


@router.post("/groups/{group_id}/retry")
async def retry(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                group_id: GroupIdPath) -> Response:
    failed_only = form_text(form, "migrate_failed_object") == "on"
    return await _act(request, ctx, session, group_id, "retry", lambda g: groups.retry_task_group(
        g, session.project_id, group_id,
        keys_request(s.RetryTaskGroupReq, form, migrate_failed_object=failed_only)))


@router.post("/groups/{group_id}/bandwidth")
async def change_bandwidth(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                           group_id: GroupIdPath) -> Response:
    return await _act(request, ctx, session, group_id, "bandwidth", lambda g: groups.update_task_group(
        g, session.project_id, group_id, bandwidth_request(form)))


@router.post("/groups/{group_id}/delete")
async def delete(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                 group_id: GroupIdPath) -> Response:
    return await _act(request, ctx, session, group_id, "delete",
                      lambda g: groups.delete_task_group(g, session.project_id, group_id))
