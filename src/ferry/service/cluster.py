"""The cluster as operators see it: live workers and servers with their heartbeats, and the units waiting or running.

One function for the workers API (`GET /v2/{project_id}/workers`) and `ferry workers`, reading WorkerRepo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine, func, select

from ferry.db.cluster_models import work_units
from ferry.db.cluster_repo import WorkerRepo
from ferry.db.unit_repo import QUEUED, RUNNING

# A worker beats every few seconds; one silent for longer than this is shown as not alive (its row stays until
# the coordinator forgets it, and its units' leases run out meanwhile).
DEAD_AFTER: Final = 30.0


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker or dispatching server: where it runs, what it holds, and how long since it was heard from."""

    id: str
    role: str
    host: str
    pid: int
    state: str
    units_in_flight: int
    units_done: int
    started_at: float
    heartbeat_at: float
    heartbeat_age: float
    version: str
    alive: bool


@dataclass(frozen=True, slots=True)
class ClusterView:
    workers: list[WorkerView]
    queued_units: int
    running_units: int


def cluster_status(engine: Engine, dead_after: float = DEAD_AFTER) -> ClusterView:
    """Every registered worker and server (by role, host, pid) and the count of open units."""
    rows = WorkerRepo(engine).list()
    workers = [WorkerView(id=r.id, role=r.role, host=r.host, pid=r.pid, state=r.state,
                          units_in_flight=r.units_in_flight, units_done=r.units_done, started_at=r.started_at,
                          heartbeat_at=r.heartbeat_at, heartbeat_age=round(r.age, 3), version=r.version,
                          alive=r.age <= dead_after) for r in rows]
    # The (state, lease_expires) index answers this without reading the table's rows.
    with engine.connect() as conn:
        counts: dict[str, int] = {str(state): int(n) for state, n in conn.execute(
            select(work_units.c.state, func.count()).where(work_units.c.state.in_((QUEUED, RUNNING)))
            .group_by(work_units.c.state))}
    return ClusterView(workers, counts.get(QUEUED, 0), counts.get(RUNNING, 0))
