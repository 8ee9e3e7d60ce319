"""Event tallies: capped label sets, store errors and retries counted by the retry wrapper, snapshots published
by one process and added by another, and the bounded task list a scrape reads."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from ferry import metrics
from ferry.db.api_models import migration_tasks
from ferry.db.database import open_database
from ferry.db.metric_models import metric_snapshots
from ferry.db.metric_repo import SNAPSHOT_MAX_AGE, SnapshotPublisher, load_snapshots, publish_snapshot, task_figures
from ferry.errors import AccessError, NotFoundError, TransientError
from ferry.objects import ObjectMeta
from ferry.service.metrics import metrics_snapshot
from ferry.settings import MetricsSettings
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import BackendWrapper, RetryingBackend
from pgdb import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The scrape's queries on the embedded SQLite and on PostgreSQL (skipped when none is reachable)."""
    if request.param == "sqlite":
        eng = open_database(f"sqlite:///{tmp_path / 'm.db'}")
        yield eng
        eng.dispose()
        return
    urls = pg_database()
    eng = open_database(next(urls))
    try:
        yield eng
    finally:
        eng.dispose()
        urls.close()


def test_a_tally_caps_its_label_sets() -> None:
    tally = metrics.CounterTally("t_total", "test", ("code",), max_series=2, register=False)
    for code in ("a", "b", "c", "d", "a"):
        tally.inc(code)
    assert {s.labels: s.value for s in tally.family().samples} == {("a",): 2, ("b",): 1, ("other",): 2}
    with pytest.raises(ValueError):
        tally.inc("a", "extra")


def test_histogram_buckets_are_cumulative() -> None:
    hist = metrics.HistogramTally("h_seconds", "test", (1, 10), register=False)
    for v in (0.5, 1.0, 5, 50):
        hist.observe(v)
    (sample,) = hist.family().samples
    assert sample.buckets == (2, 3, 4) and sample.value == 4 and sample.total == 56.5


class _Failing(BackendWrapper):
    """HEAD raises the queued errors, one per call, then answers."""

    def __init__(self, inner: Any, *errors: Exception) -> None:
        super().__init__(inner)
        self.errors = list(errors)

    async def head(self, key: str) -> Any:
        if self.errors:
            raise self.errors.pop(0)
        return await self.inner.head(key)


def _throttled() -> TransientError:
    exc = TransientError("503 SlowDown")
    exc.s3_code, exc.http_status = "SlowDown", 503
    return exc


def _reset() -> TransientError:
    return TransientError("connection reset")


async def _sleep(_: float) -> None:
    return None


async def test_the_retry_wrapper_tallies_errors_and_retries_by_kind_operation_and_code() -> None:
    store = MemoryBackend(MemoryStore(), "b")
    await store.put("k", b"x", ObjectMeta(content_type="text/plain"))
    errors, retries = metrics.STORE_REQUEST_ERRORS, metrics.STORE_RETRIES
    before = (errors.value("mem", "head", "SlowDown"), errors.value("mem", "head", "TransientError"),
              retries.value("mem", "head", "throttled"), retries.value("mem", "head", "failed"),
              errors.value("mem", "head", "AccessDenied"))
    backend = RetryingBackend(_Failing(store, _throttled(), _throttled(), _reset()), sleep=_sleep)
    await backend.head("k")
    # A missing object is an answer, not a failure; a refused key is a failure, never retried.
    missing = RetryingBackend(_Failing(store, NotFoundError("no such key")), sleep=_sleep)
    with pytest.raises(NotFoundError):
        await missing.head("k")
    denied = RetryingBackend(_Failing(store, AccessError("denied", s3_code="AccessDenied")), sleep=_sleep)
    with pytest.raises(AccessError):
        await denied.head("k")
    after = (errors.value("mem", "head", "SlowDown"), errors.value("mem", "head", "TransientError"),
             retries.value("mem", "head", "throttled"), retries.value("mem", "head", "failed"),
             errors.value("mem", "head", "AccessDenied"))
    assert tuple(a - b for a, b in zip(after, before, strict=True)) == (2, 1, 2, 1, 1)
    assert errors.value("mem", "head", "NoSuchKey") == errors.value("mem", "head", "NotFoundError") == 0


def test_error_codes_and_store_kinds_stay_bounded() -> None:
    weird = TransientError("x")
    weird.s3_code = "<html>Bad Gateway</html>" * 10
    weird.http_status = 502
    assert metrics.error_code(weird) == "502"
    assert metrics.error_code(TimeoutError()) == "TimeoutError"
    assert metrics.backend_kind("s3://bucket/some/prefix") == "s3"
    assert metrics.backend_kind("file:///srv/data") == "file"
    assert metrics.backend_kind("no scheme here") == "other"


def test_published_snapshots_are_added_to_this_process_tallies(engine: Engine) -> None:
    now = time.time()
    latency = metrics.SYNC_EVENT_LATENCY
    own = latency.count("success")
    other = {"ferry_sync_event_latency_seconds": [[["success"], 3, [0] * (len(latency.bounds) - 1) + [3, 3], 90.0]],
             "ferry_store_retries_total": [[["s3", "put", "throttled"], 7, [], 0]],
             "ferry_unknown_total": [[["x"], 1, [], 0]]}
    publish_snapshot(engine, "sync@host:a", {"ferry_store_retries_total": [[["s3", "put", "throttled"], 1, [], 0]]},
                     now)
    publish_snapshot(engine, "sync@host:a", other, now)  # replaces the first: one row per source
    publish_snapshot(engine, "sync@gone:b", other, now - SNAPSHOT_MAX_AGE - 10)
    publish_snapshot(engine, "sync@host:c", {"ferry_store_retries_total": [["not a sample"]]}, now)
    with engine.connect() as conn:
        sources = set(conn.execute(select(metric_snapshots.c.source)).scalars())
    assert sources == {"sync@host:a", "sync@host:c"}  # the stale one was dropped by the last write
    snap = metrics_snapshot(engine, MetricsSettings(), now)
    fams = {f.name: f for f in snap.events}
    (hist,) = [s for s in fams["ferry_sync_event_latency_seconds"].samples if s.labels == ("success",)]
    assert hist.value == own + 3
    retries = {s.labels: s.value for s in fams["ferry_store_retries_total"].samples}
    assert retries[("s3", "put", "throttled")] == metrics.STORE_RETRIES.value("s3", "put", "throttled") + 7
    assert len(load_snapshots(engine, now)) == 2


def test_the_publisher_writes_on_its_interval_and_once_more_when_stopped(engine: Engine) -> None:
    calls = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        return {"ferry_store_retries_total": [[["s3", "get", "failed"], len(calls), [], 0]]}

    publisher = SnapshotPublisher(engine, "worker@x", snapshot, time.time, interval=0.05).start()
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    publisher.stop()
    (row,) = load_snapshots(engine, time.time())
    assert row["ferry_store_retries_total"][0][1] == len(calls) >= 3


def _task(engine: Engine, task_id: int, status: int, updated_at: float) -> None:
    with engine.begin() as conn:
        conn.execute(insert(migration_tasks).values(
            id=task_id, project_id="p", group_type="NORMAL_TASK", name=f"t{task_id}", description="",
            task_type="prefix", status=status, priority=2, src_spec="{}", dst_spec="{}", options="{}",
            bandwidth_policy="[]", run_mode="resume", created_at=updated_at, updated_at=updated_at,
            success_num=task_id, deleted_at=None))


def test_a_scrape_shows_running_tasks_first_then_recent_ones_up_to_the_cap(engine: Engine) -> None:
    now = time.time()
    _task(engine, 1, 5, now - 7200)  # succeeded two hours ago: too old for its own series
    _task(engine, 2, 5, now - 60)
    _task(engine, 3, 2, now - 9000)  # running (its heartbeat is late): always shown
    _task(engine, 4, 4, now - 30)
    _task(engine, 5, 1, now - 10)  # waiting
    assert [t.id for t in task_figures(engine, now - 3600, 10)] == [5, 3, 4, 2]
    assert [t.id for t in task_figures(engine, now - 3600, 2)] == [5, 3]
    snap = metrics_snapshot(engine, MetricsSettings(recent_seconds=3600, max_tasks=3), now)
    assert [t.id for t in snap.tasks] == [5, 3, 4]
    # The totals count every task, shown or not.
    assert {s.status: (s.tasks, s.success_num) for s in snap.statuses} == {5: (2, 3), 2: (1, 3), 4: (1, 4),
                                                                            1: (1, 5)}


def test_a_scrape_counts_each_sync_tasks_events_and_queue(engine: Engine) -> None:
    from test_sync_runner import _task

    from ferry.db.sync_repo import EventOutcome, SyncRepo

    repo = SyncRepo(engine)
    busy, idle = _task(repo), _task(repo)
    now = time.time()
    repo.enqueue(busy, ["a", "b", "c"], now)
    repo.enqueue(busy, ["a"], now)  # coalesced into the pending row, but accepted (and counted) again
    claimed = repo.claim("unit/1", now, 60, 10)
    done = {"a": EventOutcome(busy, "a", None, "success", size=7), "b": EventOutcome(busy, "b", None, "failed",
                                                                                      reason="gone")}
    repo.complete([EventOutcome(busy, ev.key, ev.version, done[ev.key].outcome, done[ev.key].size,
                                done[ev.key].reason) for ev in claimed if ev.key in done], now)
    snap = metrics_snapshot(engine, MetricsSettings(), now)
    figures = {s.id: s for s in snap.sync}
    assert (figures[busy].accepted, figures[busy].success, figures[busy].failure, figures[busy].size) == (4, 1, 1, 7)
    assert (figures[busy].pending, figures[busy].failed_keys) == (1, 1)
    assert (figures[idle].accepted, figures[idle].pending, figures[idle].status) == (0, 0, "SYNCHRONIZING")


async def test_sync_workers_observe_the_time_from_acceptance_to_verified(engine: Engine) -> None:
    from test_sync_runner import FAST, _put, _stores, _task

    from ferry.db.sync_repo import SyncRepo
    from sync_workers import running

    repo = SyncRepo(engine)
    task_id = _task(repo)
    src, dst = _stores()
    await _put(src, "late", b"accepted 40 s ago")
    latency = metrics.SYNC_EVENT_LATENCY
    slow_bucket = latency.bounds.index(60)

    def settled_slowly() -> float:
        (sample,) = [s for s in latency.family().samples if s.labels == ("success",)] or [None]
        if sample is None:
            return 0
        return sample.buckets[slow_bucket] - sample.buckets[slow_bucket - 1]  # observations in (30 s, 60 s]

    before = settled_slowly()
    async with running(engine, lambda _row: (src, dst), FAST):
        repo.enqueue(task_id, ["late"], time.time() - 40)  # as if the event had been accepted 40 s ago
        deadline = time.monotonic() + 30
        while repo.stat_totals(task_id, 0, 2e10).success < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    assert settled_slowly() == before + 1


PROMETHEUS = Path(__file__).resolve().parents[2] / "tools" / "prometheus"


def test_the_readme_shows_the_alert_rules_that_are_tested() -> None:
    readme = (PROMETHEUS.parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"```yaml\n{(PROMETHEUS / 'alerts.yml').read_text(encoding='utf-8')}```" in readme


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed")
def test_the_alert_rules_fire_on_a_stalled_task_and_on_failures() -> None:
    # Synthetic series in alerts.test.yml: a task that stops moving, one that keeps going, one still listing.
    result = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
