"""The create pages: a migration task, a task group and a sync task, each a form over the service call the API's
create operation makes (`ferry.console.form_specs` derives the inputs from the same request models)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from ferry import oms as s
from ferry.console import form_specs
from ferry.console.context import Console, ConsoleContext
from ferry.console.form_specs import FormSpec, FormValues, Outcome
from ferry.console.render import render
from ferry.console.routes.groups import group_context
from ferry.console.routes.sync_tasks import sync_context
from ferry.console.routes.tasks import task_context
from ferry.console.session import CheckedForm, CurrentProject, ProjectSession
from ferry.errors import FerryError
from ferry.service import groups, sync, tasks

router = APIRouter()

# Where each form is, what it creates, and where the created resource's page is.
PATHS: Final = {"task": "/tasks/new", "group": "/groups/new", "sync": "/sync-tasks/new"}
CREATED: Final = {"task": "/console/tasks/{id}", "group": "/console/groups/{id}", "sync": "/console/sync-tasks/{id}"}
BACK: Final = {"task": "/console/tasks", "group": "/console/groups", "sync": "/console/sync-tasks"}

Create = Callable[[Any], Awaitable[str]]


def form_values(form: FormData) -> FormValues:
    """A posted form as the lists of values of each name (checkbox groups repeat a name)."""
    return {name: [v for v in form.getlist(name) if isinstance(v, str)] for name in form}


def show(request: Request, session: ProjectSession, spec: FormSpec, *, values: dict[str, Any],
         errors: form_specs.Errors, status: int = 200) -> Response:
    return render(request, session, "forms/create.html", status=status, form=spec, sections=spec.resolved(),
                  values=values, errors=errors, action="/console" + PATHS[spec.key], back=BACK[spec.key])


async def _created(ctx: ConsoleContext, spec: FormSpec, session: ProjectSession, request: Request,
                   form: FormData, create: Create) -> Response:
    posted = form_values(form)
    parsed = form_specs.parse(spec, posted)
    outcome: Outcome
    if isinstance(parsed, Outcome):
        outcome = parsed
    else:
        try:
            created = await create(parsed)
        except FerryError as exc:
            # The refusal the API would answer (`ferry.oms.refusal`), next to the inputs it is about.
            outcome = form_specs.refused(spec, posted, s.refusal(exc))
        except s.OmsError as exc:
            outcome = form_specs.refused(spec, posted, exc)
        else:
            return RedirectResponse(CREATED[spec.key].format(id=created), status_code=303)
    return show(request, session, spec, values=outcome.values, errors=outcome.errors, status=400)


def _new(spec: FormSpec) -> Callable[..., Awaitable[Response]]:
    async def page(request: Request, ctx: Console, session: CurrentProject) -> Response:
        return show(request, session, spec, values=form_specs.initial(spec), errors={})

    return page


router.add_api_route(PATHS["task"], _new(form_specs.TASK_FORM), methods=["GET"])
router.add_api_route(PATHS["group"], _new(form_specs.GROUP_FORM), methods=["GET"])
router.add_api_route(PATHS["sync"], _new(form_specs.SYNC_FORM), methods=["GET"])


@router.post(PATHS["task"])
async def create_task(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm) -> Response:
    tctx = task_context(ctx)

    async def create(req: Any) -> str:
        made = await run_in_threadpool(tasks.create_task, tctx, session.project_id, req)
        return str(made.id)

    return await _created(ctx, form_specs.TASK_FORM, session, request, form, create)


@router.post(PATHS["group"])
async def create_group(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm) -> Response:
    gctx = group_context(ctx)

    async def create(req: Any) -> str:
        made = await run_in_threadpool(groups.create_task_group, gctx, session.project_id, req)
        return str(made.group_id)

    return await _created(ctx, form_specs.GROUP_FORM, session, request, form, create)


@router.post(PATHS["sync"])
async def create_sync_task(request: Request, ctx: Console, session: CurrentProject, form: CheckedForm) -> Response:
    sctx = sync_context(ctx)

    async def create(req: Any) -> str:
        spec, creds = sync.request_spec(req)
        return await sync.create_sync_task(sctx, session.project_id, spec, creds)

    return await _created(ctx, form_specs.SYNC_FORM, session, request, form, create)
