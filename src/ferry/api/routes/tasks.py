"""Migration task operations (§1.2): create, list, show, start, stop, delete — thin over service.tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse

from ferry.api.deps import CurrentPrincipal, Services, ok
from ferry.oms import (
    Codes,
    CreateTaskReq,
    CreateTaskResponse,
    EmptyResponse,
    ListTasksQuery,
    ListTasksResponse,
    Messages,
    OmsError,
    ShowTaskResponse,
    StartTaskReq,
    TaskId,
    refusal,
)
from ferry.service import tasks
from ferry.service.tasks import TaskContext, TaskError

router = APIRouter()
T = TypeVar("T")


def task_context(services: Services) -> TaskContext:
    """The task store, or 404 APIGW.0101 when this server was built without one (operation not published)."""
    if services.tasks is None:
        raise OmsError(404, Codes.NO_API, Messages.NO_API)
    return services.tasks


@contextmanager
def oms_errors() -> Iterator[None]:
    """Answer a refused task operation with its documented status and OMS code."""
    try:
        yield
    except TaskError as exc:
        raise refusal(exc) from None


def call(fn: Callable[[], T]) -> T:
    with oms_errors():
        return fn()


def done(fn: Callable[[], object]) -> JSONResponse:
    """Run a task operation whose answer is an empty body."""
    call(fn)
    return ok(EmptyResponse())


@router.post("/tasks", response_model=CreateTaskResponse, summary="create_task")
def create_task(body: CreateTaskReq, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = task_context(services)
    return ok(call(lambda: tasks.create_task(ctx, principal.project_id, body)))


@router.get("/tasks", response_model=ListTasksResponse, summary="list_tasks")
def list_tasks(query: Annotated[ListTasksQuery, Query()], principal: CurrentPrincipal,
               services: Services) -> JSONResponse:
    ctx = task_context(services)
    return ok(call(lambda: tasks.list_tasks(ctx, principal.project_id, query)))


@router.get("/tasks/{task_id}", response_model=ShowTaskResponse, summary="show_task")
def show_task(task_id: TaskId, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = task_context(services)
    return ok(call(lambda: tasks.show_task(ctx, principal.project_id, task_id)))


@router.post("/tasks/{task_id}/start", response_model=EmptyResponse, summary="start_task")
def start_task(task_id: TaskId, body: StartTaskReq, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = task_context(services)
    return done(lambda: tasks.start_task(ctx, principal.project_id, task_id, body))


@router.post("/tasks/{task_id}/stop", response_model=EmptyResponse, summary="stop_task")
def stop_task(task_id: TaskId, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = task_context(services)
    return done(lambda: tasks.stop_task(ctx, principal.project_id, task_id))


@router.delete("/tasks/{task_id}", response_model=EmptyResponse, summary="delete_task")
def delete_task(task_id: TaskId, principal: CurrentPrincipal, services: Services) -> JSONResponse:
    ctx = task_context(services)
    return done(lambda: tasks.delete_task(ctx, principal.project_id, task_id))
