"""`GET /metrics`: Prometheus text exposition of tasks, sync tasks and event tallies, optionally behind a token."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Final

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ferry import metrics
from ferry.api.deps import SERVICES_STATE, ApiServices
from ferry.oms import OmsError, SyncStatus
from ferry.service.metrics import MetricsSnapshot, metrics_snapshot, shown_left_seconds, shown_progress, shown_speed

router = APIRouter()

METRICS_PATH: Final = "/metrics"
# OMS TASK_STATUS codes; every one is exported (0 when no task has it) so that series never vanish.
TASK_STATUSES: Final = {1: "waiting", 2: "running", 3: "paused", 4: "failed", 5: "succeeded", 6: "retrying",
                        7: "pausing"}
GROUP_STATUSES: Final = {0: "waiting", 1: "executing", 2: "monitoring", 3: "paused", 4: "create_failed",
                         5: "migrate_failed", 6: "completed", 7: "pausing", 8: "waiting_delete", 9: "deleted"}
SYNC_STATUSES: Final = tuple(status.value for status in SyncStatus)
_PROCESS = ProcessCollector(registry=None)


@router.get(METRICS_PATH, include_in_schema=False)
async def scrape(request: Request) -> Response:
    services: ApiServices = getattr(request.app.state, SERVICES_STATE)
    settings = services.metrics
    if settings.token is not None:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # Constant time: the comparison must not tell how much of a guessed token was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.token.encode()):
            denied = OmsError.unauthorized()
            denied.headers["WWW-Authenticate"] = 'Bearer realm="ferry-metrics"'
            raise denied
    if services.tasks is None:
        raise OmsError.not_found()
    engine = services.tasks.engine
    body = await run_in_threadpool(lambda: generate_latest(_Exposition(metrics_snapshot(engine, settings))))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class _Exposition:
    """A one-scrape collector over a snapshot (prometheus_client calls `collect`)."""

    def __init__(self, snap: MetricsSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from _task_families(self.snap)
        yield from _overall_families(self.snap)
        yield from _sync_families(self.snap)
        yield from _event_families(self.snap.events)
        yield from _PROCESS.collect()


def _task_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    names = ["task_id", "project_id"]
    objects = CounterMetricFamily("ferry_task_objects", "Objects of a migration task by result (show_task's "
                                  "successful_num, skipped_num, failed_num).", labels=[*names, "result"])
    size = CounterMetricFamily("ferry_task_bytes", "Bytes of a migration task by result: copied (real_size) and "
                               "skipped (complete_size - real_size).", labels=[*names, "result"])
    listed = GaugeMetricFamily("ferry_task_listed_objects", "Objects the task's listing found so far (total_num).",
                               labels=names)
    listed_bytes = GaugeMetricFamily("ferry_task_listed_bytes", "Bytes the task's listing found so far "
                                     "(total_size).", labels=names)
    listing_done = GaugeMetricFamily("ferry_task_listing_done", "1 once the task's listing is complete "
                                     "(is_query_over).", labels=names)
    progress = GaugeMetricFamily("ferry_task_progress_ratio", "Progress of the task from 0 to 1.", labels=names)
    speed = GaugeMetricFamily("ferry_task_speed_bytes_per_second", "Bytes per second over the last seconds "
                              "(migrate_speed; 0 unless running).", labels=names)
    eta = GaugeMetricFamily("ferry_task_eta_seconds", "Seconds left (left_time), while known.", labels=names)
    restoring = GaugeMetricFamily("ferry_task_restoring_objects", "Archived objects waiting for their restore.",
                                  labels=names)
    status = GaugeMetricFamily("ferry_task_status", "The task's OMS status code: 1 waiting, 2 running, 3 paused, "
                               "4 failed, 5 succeeded, 6 retrying, 7 pausing.", labels=names)
    for task in snap.tasks:
        ids = [str(task.id), task.project_id]
        objects.add_metric([*ids, "copied"], task.success_num)
        objects.add_metric([*ids, "skipped"], task.skip_num)
        objects.add_metric([*ids, "failed"], task.fail_num)
        size.add_metric([*ids, "copied"], task.real_size)
        size.add_metric([*ids, "skipped"], max(task.complete_size - task.real_size, 0))
        listed.add_metric(ids, task.total_num)
        listed_bytes.add_metric(ids, task.total_size)
        listing_done.add_metric(ids, 1 if task.listing_done else 0)
        progress.add_metric(ids, shown_progress(task))
        speed.add_metric(ids, shown_speed(task))
        left = shown_left_seconds(task)
        if left is not None:
            eta.add_metric(ids, left)
        restoring.add_metric(ids, task.restoring_num)
        status.add_metric(ids, task.status)
    yield from (objects, size, listed, listed_bytes, listing_done, progress, speed, eta, restoring, status)


def _overall_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    tasks = GaugeMetricFamily("ferry_tasks", "Migration tasks (not deleted) by status.", labels=["status"])
    by_status = {s.status: s for s in snap.statuses}
    for code, name in TASK_STATUSES.items():
        tasks.add_metric([name], by_status[code].tasks if code in by_status else 0)
    objects = CounterMetricFamily("ferry_objects", "Objects of every migration task not deleted, by result "
                                  "(a deleted task's share leaves the sum).", labels=["result"])
    size = CounterMetricFamily("ferry_bytes", "Bytes of every migration task not deleted, by result.",
                               labels=["result"])
    objects.add_metric(["copied"], sum(s.success_num for s in snap.statuses))
    objects.add_metric(["skipped"], sum(s.skip_num for s in snap.statuses))
    objects.add_metric(["failed"], sum(s.fail_num for s in snap.statuses))
    size.add_metric(["copied"], sum(s.real_size for s in snap.statuses))
    size.add_metric(["skipped"], sum(max(s.complete_size - s.real_size, 0) for s in snap.statuses))
    groups = GaugeMetricFamily("ferry_task_groups", "Task groups (not deleted) by stored status.", labels=["status"])
    for code, name in GROUP_STATUSES.items():
        groups.add_metric([name], snap.groups.get(code, 0))
    tracked = GaugeMetricFamily("ferry_metrics_tasks_shown", "Migration tasks that have per-task series in this "
                                "scrape (FERRY_METRICS_MAX_TASKS caps it).")
    tracked.add_metric([], len(snap.tasks))
    yield from (tasks, objects, size, groups, tracked)


def _sync_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    names = ["task_id", "project_id"]
    tasks = GaugeMetricFamily("ferry_sync_tasks", "Sync tasks by status.", labels=["status"])
    for name in SYNC_STATUSES:
        tasks.add_metric([name.lower()], sum(1 for s in snap.sync if s.status == name))
    accepted = CounterMetricFamily("ferry_sync_events_accepted", "Object events a sync task accepted "
                                   "(show_sync_task's request count).", labels=names)
    objects = CounterMetricFamily("ferry_sync_objects", "Objects a sync task settled, by result.",
                                  labels=[*names, "result"])
    size = CounterMetricFamily("ferry_sync_bytes", "Bytes a sync task copied.", labels=names)
    pending = GaugeMetricFamily("ferry_sync_events_pending", "Keys waiting in a sync task's queue.", labels=names)
    failed = GaugeMetricFamily("ferry_sync_keys_failed", "Keys a sync task gave up on (its failed list).",
                               labels=names)
    for s in snap.sync:
        ids = [s.id, s.project_id]
        accepted.add_metric(ids, s.accepted)
        objects.add_metric([*ids, "copied"], s.success)
        objects.add_metric([*ids, "skipped"], s.skip)
        objects.add_metric([*ids, "failed"], s.failure)
        size.add_metric(ids, s.size)
        pending.add_metric(ids, s.pending)
        failed.add_metric(ids, s.failed_keys)
    yield from (tasks, accepted, objects, size, pending, failed)


def _event_families(families: list[metrics.Family]) -> Iterator[Metric]:
    for fam in families:
        labels = list(fam.labelnames)
        if fam.kind == "histogram":
            hist = HistogramMetricFamily(fam.name, fam.help, labels=labels)
            bounds = [*(_bound(b) for b in fam.bounds), "+Inf"]
            for sample in fam.samples:
                hist.add_metric(list(sample.labels), list(zip(bounds, sample.buckets, strict=True)), sample.total)
            yield hist
        else:
            counter = CounterMetricFamily(fam.name.removesuffix("_total"), fam.help, labels=labels)
            for sample in fam.samples:
                counter.add_metric(list(sample.labels), sample.value)
            yield counter


def _bound(value: float) -> str:
    return repr(float(value))
