"""What `/metrics` reads at scrape time: task, group and sync-task figures, and other processes' published tallies.

Each reader is one SQL statement whose result is bounded (a capped task list, or one row per status or per sync
task), so a scrape costs a few queries whatever the number of tasks; nothing here is cached, so the figures are
the rows' own, whichever process (or machine) wrote them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Engine, case, delete, func, insert, or_, select, update

from ferry.db.api_models import migration_tasks as t
from ferry.db.group_models import task_groups as g
from ferry.db.metric_models import metric_snapshots as m
from ferry.db.sync_models import sync_events as se
from ferry.db.sync_models import sync_stats as ss
from ferry.db.sync_models import sync_tasks as st
from ferry.db.task_repo import ACTIVE, WAITING

log = logging.getLogger(__name__)

# A published snapshot older than this is from a process gone for good: dropped, and no longer added.
SNAPSHOT_MAX_AGE: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class TaskFigures:
    """One migration task's counters as its row holds them (what show_task answers)."""

    id: int
    project_id: str
    status: int
    total_num: int
    total_size: int
    success_num: int
    skip_num: int
    fail_num: int
    complete_size: int
    real_size: int
    restoring_num: int
    speed: int
    progress: float
    listing_done: bool
    left_time: int | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class StatusTotals:
    """Every (not deleted) migration task of one status, summed."""

    status: int
    tasks: int
    success_num: int
    skip_num: int
    fail_num: int
    complete_size: int
    real_size: int


@dataclass(frozen=True, slots=True)
class SyncFigures:
    """One sync task: its status, its lifetime statistics and the keys waiting in its queue."""

    id: str
    project_id: str
    status: str
    accepted: int
    success: int
    failure: int
    skip: int
    size: int
    pending: int
    failed_keys: int


def task_figures(engine: Engine, since: float, limit: int) -> list[TaskFigures]:
    """Tasks that run or wait to run, then tasks updated since `since` (finished, paused, failed lately), at most
    `limit` of them, the running ones first and then the most recently updated."""
    live = t.c.status.in_((WAITING, *ACTIVE))
    q = (select(t.c.id, t.c.project_id, t.c.status, t.c.total_num, t.c.total_size, t.c.success_num, t.c.skip_num,
                t.c.fail_num, t.c.complete_size, t.c.real_size, t.c.restoring_num, t.c.speed, t.c.progress,
                t.c.is_query_over, t.c.left_time, t.c.updated_at)
         .where(t.c.deleted_at.is_(None), or_(live, t.c.updated_at >= since))
         .order_by(case((live, 0), else_=1), t.c.updated_at.desc(), t.c.id)
         .limit(limit))
    with engine.connect() as conn:
        return [TaskFigures(r.id, r.project_id, r.status, r.total_num, r.total_size, r.success_num, r.skip_num,
                            r.fail_num, r.complete_size, r.real_size, r.restoring_num, r.speed, float(r.progress),
                            bool(r.is_query_over), r.left_time, r.updated_at)
                for r in conn.execute(q)]


def status_totals(engine: Engine) -> list[StatusTotals]:
    """One row per task status present: how many tasks, and their counters summed."""
    q = (select(t.c.status, func.count(), func.sum(t.c.success_num), func.sum(t.c.skip_num), func.sum(t.c.fail_num),
                func.sum(t.c.complete_size), func.sum(t.c.real_size))
         .where(t.c.deleted_at.is_(None)).group_by(t.c.status))
    with engine.connect() as conn:
        return [StatusTotals(int(r[0]), int(r[1]), *(int(v or 0) for v in r[2:])) for r in conn.execute(q)]


def group_status_counts(engine: Engine) -> dict[int, int]:
    """How many task groups (not deleted) are in each stored status."""
    q = select(g.c.status, func.count()).where(g.c.deleted_at.is_(None)).group_by(g.c.status)
    with engine.connect() as conn:
        return {int(s): int(n) for s, n in conn.execute(q)}


def sync_figures(engine: Engine, limit: int) -> list[SyncFigures]:
    """Sync tasks (at most `limit`, running ones first) with their statistics summed over all their buckets and
    their queues counted by state."""
    stats = (select(ss.c.task_id, func.sum(ss.c.request).label("request"), func.sum(ss.c.success).label("success"),
                    func.sum(ss.c.failure).label("failure"), func.sum(ss.c.skip).label("skip"),
                    func.sum(ss.c.size).label("size"))
             .group_by(ss.c.task_id).subquery())
    queue = (select(se.c.task_id,
                    func.sum(case((se.c.state == "pending", 1), else_=0)).label("pending"),
                    func.sum(case((se.c.state == "failed", 1), else_=0)).label("failed"))
             .group_by(se.c.task_id).subquery())
    q = (select(st.c.id, st.c.project_id, st.c.status, stats.c.request, stats.c.success, stats.c.failure,
                stats.c.skip, stats.c.size, queue.c.pending, queue.c.failed)
         .select_from(st.outerjoin(stats, stats.c.task_id == st.c.id).outerjoin(queue, queue.c.task_id == st.c.id))
         .order_by(case((st.c.status == "SYNCHRONIZING", 0), else_=1), st.c.id)
         .limit(limit))
    with engine.connect() as conn:
        return [SyncFigures(r[0], r[1], r[2], *(int(v or 0) for v in r[3:])) for r in conn.execute(q)]


# -- published tallies -------------------------------------------------------------------------------------------
def publish_snapshot(engine: Engine, source: str, samples: Mapping[str, Any], now: float) -> None:
    """Write `source`'s tallies (replacing what it wrote before) and drop snapshots of long-gone processes."""
    raw = json.dumps(samples, separators=(",", ":"))
    with engine.begin() as conn:
        done = conn.execute(update(m).where(m.c.source == source).values(updated_at=now, samples=raw))
        if not done.rowcount:
            conn.execute(insert(m).values(source=source, updated_at=now, samples=raw))
        conn.execute(delete(m).where(m.c.updated_at < now - SNAPSHOT_MAX_AGE))


def load_snapshots(engine: Engine, now: float) -> list[dict[str, Any]]:
    """Every published snapshot still fresh, decoded (a row that does not decode is skipped)."""
    with engine.connect() as conn:
        rows = conn.execute(select(m.c.samples).where(m.c.updated_at >= now - SNAPSHOT_MAX_AGE)).scalars().all()
    out = []
    for raw in rows:
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


class SnapshotPublisher:
    """Publishes `snapshot()` as `source` every `interval` seconds from a thread of its own, and once more when
    stopped, so that what the process counted up to its stop is not lost."""

    thread_name = "ferry-metrics-publisher"

    def __init__(self, engine: Engine, source: str, snapshot: Callable[[], Mapping[str, Any]],
                 clock: Callable[[], float], interval: float = 5.0) -> None:
        self.engine = engine
        self.source = source[:160]
        self._snapshot = snapshot
        self._clock = clock
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        try:
            publish_snapshot(self.engine, self.source, self._snapshot(), self._clock())
        except Exception as exc:  # a database restarting: the next round writes it
            log.debug("metrics snapshot not published: %s", exc)

    def start(self) -> SnapshotPublisher:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5 if timeout is None else timeout)
            self._thread = None
        self.publish()
