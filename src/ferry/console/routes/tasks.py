"""Migration tasks: the list (status filter, paging), a task's page with live progress, and its actions.

Live progress is polled, not pushed: the page's script asks `/tasks/{id}/live` every 2 s (and the speed chart
every 10 s) while the task is unfinished. The runner writes a task's counters to the database every second or
so, so a push channel would itself have to poll the database per open page; polling keeps each request short
and stateless, works through any proxy and on any of several server processes, and costs no thread or
connection per watcher (server-sent events would hold one open for as long as the page is).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from ferry import oms as s
from ferry.console.context import Console, ConsoleContext
from ferry.console.forms import MIB, bandwidth_request, keys_request, perform
from ferry.console.paging import Paging
from ferry.console.render import PAGE_HEADERS, human_duration_ms, human_size, human_time_ms, percent, render, speed
from ferry.console.session import CheckedForm, CurrentProject, ProjectSession
from ferry.service import task_report, tasks
from ferry.service.tasks import TaskContext, TaskError

router = APIRouter()

STATUS_NAMES: Final = {
    1: "waiting", 2: "running", 3: "paused", 4: "failed", 5: "succeeded", 6: "retrying", 7: "pausing",
}
# Statuses in which the page keeps polling: the task can still change by itself.
LIVE_STATUSES: Final = frozenset({1, 2, 6, 7})
DONE_MESSAGES: Final = {
    "stop": "Stop requested: a running task pauses once its objects in flight are finished.",
    "start": "The task is queued to run again.",
    "retry": "The task is queued to retry its failed objects only.",
    "bandwidth": "The bandwidth policy is changed; a running task follows it within seconds.",
    "delete": "The task is deleted.",
}
TaskIdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]


def task_context(ctx: ConsoleContext) -> TaskContext:
    if ctx.tasks is None:
        raise TaskError(404, s.Codes.NO_API, "This server runs no migration tasks.")
    return ctx.tasks


@router.get("/tasks")
async def task_list(request: Request, ctx: Console, session: CurrentProject, limit: str | None = None,
                    offset: str | None = None, status: str | None = None, done: str | None = None) -> Response:
    paging = Paging.parse("/console/tasks", limit, offset, status)
    status_filter = int(paging.status) if paging.status.isdigit() and int(paging.status) in STATUS_NAMES else None
    query = s.ListTasksQuery(limit=paging.limit, offset=paging.offset,
                             status=s.TaskStatus(status_filter) if status_filter else None)
    tctx = task_context(ctx)
    listed = await run_in_threadpool(tasks.list_tasks, tctx, session.project_id, query)
    return render(request, session, "tasks.html", tasks=listed.tasks or [],
                  paging=paging.with_count(listed.count or 0), statuses=STATUS_NAMES,
                  flash_ok=DONE_MESSAGES.get(done or ""))


def live_view(task: s.TaskResp) -> dict[str, Any]:
    """What the task page refreshes while it is open: raw numbers, and the same numbers as shown."""
    status = int(task.status or 0)
    done = (task.successful_num or 0) + (task.skipped_num or 0)
    finished = done + (task.failed_num or 0)
    total = task.total_num or 0
    objects_fraction = finished / total if total else (1.0 if status == 5 else 0.0)
    left = task.left_time if status == 2 else None
    listing = "" if task.is_query_over or status == 5 else " (still listing)"
    reason = task.error_reason
    return {
        "status": status,
        "live": status in LIVE_STATUSES,
        "progress": task.progress or 0.0,
        "objects_fraction": objects_fraction,
        "failed_num": task.failed_num or 0,
        "text": {
            "status": STATUS_NAMES.get(status, str(status)),
            "progress": percent(task.progress),
            "objects": f"{done:,} / {total:,}{listing}",
            "failed": f"{task.failed_num or 0:,}",
            "skipped": f"{task.skipped_num or 0:,}",
            "restoring": f"{task.restoring_num or 0:,}",
            "size": f"{human_size(task.complete_size or 0)} / {human_size(task.total_size or 0)}",
            "speed": speed(task.migrate_speed) if status == 2 else "–",
            "left": human_duration_ms(left) if left is not None else "–",
            "started": human_time_ms(task.start_time),
            "total_time": human_duration_ms(task.total_time),
            "reason": f"{reason.error_msg} ({reason.error_code})" if reason and reason.error_code else "",
        },
    }


async def _task_page(request: Request, ctx: ConsoleContext, session: ProjectSession, task_id: int,
                     status: int = 200, **flash: Any) -> Response:
    tctx = task_context(ctx)
    task = await run_in_threadpool(tasks.show_task, tctx, session.project_id, task_id)
    failures = await run_in_threadpool(task_report.failure_groups, tctx, session.project_id, task_id)
    return render(request, session, "task.html", status=status, task=task, live=live_view(task),
                  failures=failures, statuses=STATUS_NAMES, object_lists=task_report.OBJECT_LISTS,
                  src_cloud=(task.src_node.cloud_type.value if task.src_node and task.src_node.cloud_type else ""),
                  **flash)


@router.get("/tasks/{task_id}")
async def task_page(request: Request, ctx: Console, session: CurrentProject, task_id: TaskIdPath,
                    done: str | None = None) -> Response:
    return await _task_page(request, ctx, session, task_id, flash_ok=DONE_MESSAGES.get(done or ""))


@router.get("/tasks/{task_id}/live")
async def task_live(ctx: Console, session: CurrentProject, task_id: TaskIdPath) -> Response:
    task = await run_in_threadpool(tasks.show_task, task_context(ctx), session.project_id, task_id)
    return JSONResponse(live_view(task), headers={"cache-control": "no-store"})


@router.get("/tasks/{task_id}/speed")
async def task_speed(ctx: Console, session: CurrentProject, task_id: TaskIdPath) -> Response:
    points = await run_in_threadpool(task_report.speed_history, task_context(ctx), session.project_id, task_id)
    return JSONResponse({
        "t": [p.at for p in points],
        "mib": [round(p.bytes_per_second / MIB, 3) for p in points],
        "objects": [round(p.objects_per_second, 2) for p in points],
    }, headers={"cache-control": "no-store"})


@router.get("/tasks/{task_id}/failures")
async def task_failures(request: Request, ctx: Console, session: CurrentProject, task_id: TaskIdPath) -> Response:
    """The failures card alone, for the page to swap in when the failed count changes."""
    tctx = task_context(ctx)
    task = await run_in_threadpool(tasks.show_task, tctx, session.project_id, task_id)
    failures = await run_in_threadpool(task_report.failure_groups, tctx, session.project_id, task_id)
    return render(request, session, "_failures.html", task=task, failures=failures,
                  object_lists=task_report.OBJECT_LISTS)


@router.get("/tasks/{task_id}/objects/{which}.jsonl")
async def task_objects(ctx: Console, session: CurrentProject, task_id: TaskIdPath, which: str) -> Response:
    chosen = next((w for w in task_report.OBJECT_LISTS if w == which), None)
    if chosen is None:
        raise TaskError(404, s.Codes.NOT_FOUND, "There is no such object list.")
    lines = await run_in_threadpool(task_report.object_list, task_context(ctx), session.project_id, task_id,
                                    chosen)

    def chunks() -> Iterator[bytes]:
        buf: list[str] = []
        for line in lines:
            buf.append(line)
            if len(buf) >= 1000:
                yield "".join(buf).encode("utf-8")
                buf = []
        if buf:
            yield "".join(buf).encode("utf-8")

    headers = {**PAGE_HEADERS, "content-disposition": f'attachment; filename="task-{task_id}-{which}.jsonl"'}
    return StreamingResponse(chunks(), media_type="application/x-ndjson", headers=headers)


async def _act(request: Request, ctx: ConsoleContext, session: ProjectSession, task_id: int, done: str,
               action: Callable[[TaskContext], None]) -> Response:
    """Run a task operation; on success back to the page (or the list, after a delete) with a message, on
    refusal the page again with the API's own words."""
    tctx = task_context(ctx)

    async def refused(status: int, message: str) -> Response:
        return await _task_page(request, ctx, session, task_id, status=status, flash_error=message)

    target = "/console/tasks?done=delete" if done == "delete" else f"/console/tasks/{task_id}?done={done}"
    return await perform(lambda: action(tctx), refused, target)


@router.post("/tasks/{task_id}/stop")
async def stop(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
               task_id: TaskIdPath) -> Response:
    return await _act(request, ctx, session, task_id, "stop",
                      lambda t: tasks.stop_task(t, session.project_id, task_id))


@router.post("/tasks/{task_id}/start")
async def start(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                task_id: TaskIdPath) -> Response:
    def run(t: TaskContext) -> None:
        tasks.start_task(t, session.project_id, task_id, keys_request(s.StartTaskReq, form))
    return await _act(request, ctx, session, task_id, "start", run)


@router.post("/tasks/{task_id}/retry")
async def retry_failed(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                       task_id: TaskIdPath) -> Response:
    def run(t: TaskContext) -> None:
        tasks.start_task(t, session.project_id, task_id, keys_request(s.StartTaskReq, form, migrate_failed_object=True))
    return await _act(request, ctx, session, task_id, "retry", run)


@router.post("/tasks/{task_id}/bandwidth")
async def change_bandwidth(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                           task_id: TaskIdPath) -> Response:
    def run(t: TaskContext) -> None:
        tasks.update_bandwidth_policy(t, session.project_id, task_id, bandwidth_request(form))
    return await _act(request, ctx, session, task_id, "bandwidth", run)


@router.post("/tasks/{task_id}/delete")
async def delete(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm,
                 task_id: TaskIdPath) -> Response:
    return await _act(request, ctx, session, task_id, "delete",
                      lambda t: tasks.delete_task(t, session.project_id, task_id))
