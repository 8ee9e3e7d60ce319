"""Ferry's extension for distributed mode: the cluster's live workers (not in the OMS SDK; same auth and errors).

- `GET /v2/{project_id}/workers` — every registered worker and dispatching server (role, host, pid, state, units
  in flight and done, start and last heartbeat in ms since the epoch, seconds since that heartbeat, whether it
  is alive) and the counts of queued and running units. Workers serve every project, so any authenticated
  project sees the same list; it names no task, bucket or key. The embedded server (no broker) has none.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from ferry.api.deps import CurrentPrincipal, Services, ok
from ferry.api.routes.tasks import task_context
from ferry.oms import ResponseModel
from ferry.service.cluster import cluster_status

router = APIRouter()


class WorkerInfo(ResponseModel):
    id: str | None = None
    role: str | None = None
    host: str | None = None
    pid: int | None = None
    state: str | None = None
    alive: bool | None = None
    units_in_flight: int | None = None
    units_done: int | None = None
    start_time: int | None = None
    heartbeat_time: int | None = None
    heartbeat_age: float | None = None
    version: str | None = None


class ListWorkersResponse(ResponseModel):
    workers: list[WorkerInfo] | None = None
    count: int | None = None
    queued_units: int | None = None
    running_units: int | None = None


@router.get("/workers", response_model=ListWorkersResponse, summary="ferry: the cluster's live workers")
def list_workers(principal: CurrentPrincipal, services: Services) -> JSONResponse:
    view = cluster_status(task_context(services).engine)
    workers = [WorkerInfo(id=w.id, role=w.role, host=w.host, pid=w.pid, state=w.state, alive=w.alive,
                          units_in_flight=w.units_in_flight, units_done=w.units_done,
                          start_time=int(w.started_at * 1000), heartbeat_time=int(w.heartbeat_at * 1000),
                          heartbeat_age=w.heartbeat_age, version=w.version) for w in view.workers]
    return ok(ListWorkersResponse(workers=workers, count=len(workers), queued_units=view.queued_units,
                                  running_units=view.running_units))
