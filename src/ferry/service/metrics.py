"""One snapshot of what Ferry is doing, for `/metrics` (and any page that shows the same figures).

Task figures are read from the database at each call, so they are exactly the rows show_task answers from,
whichever process or machine runs the task, and they survive restarts. Event tallies (store errors, retries,
latencies) are this process's own plus what other processes published (db/metric_repo.SnapshotPublisher).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine

from ferry import metrics
from ferry.db import metric_repo
from ferry.db.metric_repo import StatusTotals, SyncFigures, TaskFigures
from ferry.db.task_repo import RUNNING, SUCCEEDED
from ferry.settings import MetricsSettings


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything a scrape shows, taken at `taken_at` (epoch seconds)."""

    tasks: list[TaskFigures]  # bounded: see MetricsSettings
    statuses: list[StatusTotals]  # every task, by status
    groups: dict[int, int]  # task groups by stored status
    sync: list[SyncFigures]
    events: list[metrics.Family]
    taken_at: float


def shown_speed(task: TaskFigures) -> int:
    """Bytes per second as show_task gives it: only a running task has a speed."""
    return task.speed if task.status == RUNNING else 0


def shown_progress(task: TaskFigures) -> float:
    """Progress as show_task gives it: 1 once succeeded, else the stored fraction kept within 0..1."""
    return 1.0 if task.status == SUCCEEDED else min(max(task.progress, 0.0), 1.0)


def shown_left_seconds(task: TaskFigures) -> float | None:
    """Seconds left as show_task gives them (in ms there): None while unknown."""
    if task.left_time is not None:
        return task.left_time / 1000
    return 0.0 if task.status == SUCCEEDED else None


def metrics_snapshot(engine: Engine, settings: MetricsSettings, now: float | None = None) -> MetricsSnapshot:
    """Read every figure once: a capped list of tasks, totals by status, groups, sync tasks, published tallies."""
    now = time.time() if now is None else now
    return MetricsSnapshot(
        tasks=metric_repo.task_figures(engine, now - settings.recent_seconds, settings.max_tasks),
        statuses=metric_repo.status_totals(engine),
        groups=metric_repo.group_status_counts(engine),
        sync=metric_repo.sync_figures(engine, settings.max_tasks),
        events=metrics.families(metric_repo.load_snapshots(engine, now)),
        taken_at=now,
    )
