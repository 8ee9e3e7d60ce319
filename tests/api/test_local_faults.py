"""Local faults under `ferry serve`: PostgreSQL restarted, the SQLite file full, locked or deleted mid-task."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from ferry_service import FAST_RUNNER, fill, listing, overrides, prefix_task, start_service, wait_task
from huaweicloudsdkoms.v2 import BandwidthPolicyDto, ShowTaskRequest
from sqlalchemy import Engine, event

from ferry.db.job_repo import ObjectResult
from ferry.engine.pipeline import Transfer
from ferry.objects import ObjectInfo
from pgdb import PG_ADMIN, pg_database

pytestmark = pytest.mark.timeout(240)
MiB = 1024 * 1024


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each key was copied successfully (a verified object copied again shows as 2)."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    original = Transfer._copy

    async def counting(self: Transfer, obj: ObjectInfo) -> ObjectResult:
        result = await original(self, obj)
        if result.status == "success":
            with lock:
                seen[obj.key] += 1
        return result

    monkeypatch.setattr(Transfer, "_copy", counting)
    return seen


@pytest.fixture
def pg_url() -> Iterator[str]:
    gen = pg_database()
    url = next(gen)
    try:
        yield url
    finally:
        gen.close()


def _restart_postgres(db_name: str, closed_for: float) -> None:
    """What a PostgreSQL restart looks like to its clients: every connection to the database dropped, and no
    new one accepted for a while."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db_name,))
            time.sleep(closed_for)
        finally:
            admin.execute(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS true')


@pytest.mark.parametrize("closed_for", [1.5, 7.0], ids=["brief", "past-half-the-lease"])
def test_postgres_restart_mid_task_loses_nothing(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str,
                                                 copies: Counter[str], closed_for: float) -> None:
    """Brief: the run waits in place. Longer than half the lease (10 s): the run stops rather than risk its lease,
    records what it finished once the database is back, and the task resumes (status 6, then 2)."""
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"r/{i:04d}": os.urandom(16 * 1024) for i in range(150)}
    fill(seaweed_a, sb, bodies)
    started = start_service(tmp_path, pg_url, runner=replace(FAST_RUNNER, fault_retry_delay=1.0))
    try:
        client = started.value.client()
        policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
        created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
        wait_task(client, created.id, lambda t: t.successful_num >= 20)
        _restart_postgres(pg_url.rsplit("/", 1)[1], closed_for=closed_for)
        done, _ = wait_task(client, created.id, lambda t: t.status in (3, 4, 5), timeout=120)
        assert done.status == 5, done.error_reason
        assert (done.successful_num, done.failed_num, done.skipped_num) == (len(bodies), 0, 0)
        assert done.complete_size == sum(len(b) for b in bodies.values())
    finally:
        started.close()
    assert {k: v[0] for k, v in listing(seaweed_b, db).items()} == {k: len(v) for k, v in bodies.items()}
    assert set(copies) == set(bodies) and max(copies.values()) == 1, [k for k, n in copies.items() if n > 1]


class PageCap:
    """A full disk as SQLite sees it, without privileges: `PRAGMA max_page_count` on every connection the
    service checks out makes a write that needs a new page fail with SQLITE_FULL, as ENOSPC does."""

    def __init__(self, engine: Engine) -> None:
        self.full = False
        event.listen(engine, "checkout", self._apply)

    def _apply(self, dbapi_conn: Any, *_: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {1 if self.full else 1073741823}")


def _reason(task: Any) -> str:
    return (task.error_reason.error_msg or "") if task.error_reason else ""


def _objects(server: Any, bucket: str, n: int = 150) -> dict[str, bytes]:
    bodies = {f"r/{i:04d}": os.urandom(16 * 1024) for i in range(n)}
    fill(server, bucket, bodies)
    return bodies


def test_sqlite_disk_full_pauses_the_task_then_it_goes_on(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          copies: Counter[str]) -> None:
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = _objects(seaweed_a, sb)
    started = start_service(tmp_path, f"sqlite:///{tmp_path / 'ferry.db'}",
                            runner=replace(FAST_RUNNER, state_patience=120.0))
    cap = PageCap(started.value.service.engine)
    try:
        client = started.value.client()
        policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
        created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
        wait_task(client, created.id, lambda t: t.successful_num >= 20)
        cap.full = True
        # The task says it is paused, why, where, and how much room it needs; nothing more is counted done.
        paused, _ = wait_task(client, created.id, lambda t: "is full" in _reason(t), timeout=60)
        why = _reason(paused)
        assert paused.status == 2 and paused.error_reason.error_code == "FERRY.0507", why
        assert why.startswith("Paused: the disk of the data directory") and str(tmp_path) in why, why
        assert "free at least 64.0 MiB" in why, why
        held = paused.successful_num
        time.sleep(2)
        assert client.show_task(ShowTaskRequest(task_id=created.id)).successful_num <= held + 20
        cap.full = False
        done, _ = wait_task(client, created.id, lambda t: t.status in (3, 4, 5), timeout=120)
        assert done.status == 5 and not _reason(done), _reason(done)
        assert (done.successful_num, done.failed_num, done.skipped_num) == (len(bodies), 0, 0)
    finally:
        started.close()
    assert {k: v[0] for k, v in listing(seaweed_b, db).items()} == {k: len(v) for k, v in bodies.items()}
    assert max(copies.values()) == 1, [k for k, n in copies.items() if n > 1]


def test_sqlite_disk_full_past_patience_retries_later_and_resumes(seaweed_a: Any, seaweed_b: Any,
                                                                   bucket_factory: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   copies: Counter[str]) -> None:
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = _objects(seaweed_a, sb)
    started = start_service(tmp_path, f"sqlite:///{tmp_path / 'ferry.db'}",
                            runner=replace(FAST_RUNNER, state_patience=1.0, fault_retry_delay=1.0))
    cap = PageCap(started.value.service.engine)
    try:
        client = started.value.client()
        policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
        created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
        wait_task(client, created.id, lambda t: t.successful_num >= 20)
        cap.full = True
        # Past its patience the run ends in status 6 (retrying), saying why; attempts are not used up by it.
        waiting, _ = wait_task(client, created.id, lambda t: t.status == 6, timeout=60)
        assert "is full" in _reason(waiting) and "Tried again in 1 s" in _reason(waiting), _reason(waiting)
        time.sleep(3)  # retried meanwhile, still full: still waiting, never failed
        assert client.show_task(ShowTaskRequest(task_id=created.id)).status in (2, 6)
        cap.full = False
        done, _ = wait_task(client, created.id, lambda t: t.status in (3, 4, 5), timeout=120)
        assert done.status == 5 and not _reason(done), _reason(done)
        # Objects copied while their results could not be recorded are found at the destination: skipped, not
        # copied again.
        assert done.failed_num == 0 and done.successful_num + done.skipped_num == len(bodies)
    finally:
        started.close()
    assert {k: v[0] for k, v in listing(seaweed_b, db).items()} == {k: len(v) for k, v in bodies.items()}
    assert max(copies.values()) == 1, [k for k, n in copies.items() if n > 1]


def test_sqlite_locked_past_its_busy_timeout_pauses_then_goes_on(seaweed_a: Any, seaweed_b: Any,
                                                                 bucket_factory: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 copies: Counter[str]) -> None:
    import ferry.db.database

    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
    # A short busy timeout, so that a lock held for 4 s is "locked" to Ferry and not merely slow.
    pragmas = tuple(p for p in ferry.db.database.SQLITE_PRAGMAS if "busy_timeout" not in p)
    monkeypatch.setattr(ferry.db.database, "SQLITE_PRAGMAS", (*pragmas, "PRAGMA busy_timeout=300"))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = _objects(seaweed_a, sb)
    path = tmp_path / "ferry.db"
    started = start_service(tmp_path, f"sqlite:///{path}", runner=replace(FAST_RUNNER, state_patience=60.0))
    try:
        client = started.value.client()
        policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
        created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
        wait_task(client, created.id, lambda t: t.successful_num >= 20)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            time.sleep(4)
        finally:
            other.execute("ROLLBACK")
            other.close()
        done, _ = wait_task(client, created.id, lambda t: t.status in (3, 4, 5), timeout=120)
        assert done.status == 5 and not _reason(done), _reason(done)
        assert (done.successful_num, done.failed_num, done.skipped_num) == (len(bodies), 0, 0)
    finally:
        started.close()
    assert max(copies.values()) == 1 and set(copies) == set(bodies)


def test_sqlite_file_deleted_mid_task_stops_without_starting_over(seaweed_a: Any, seaweed_b: Any,
                                                                  bucket_factory: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  copies: Counter[str]) -> None:
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = _objects(seaweed_a, sb)
    path = tmp_path / "ferry.db"
    started = start_service(tmp_path, f"sqlite:///{path}")
    try:
        client = started.value.client()
        policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
        created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
        wait_task(client, created.id, lambda t: t.successful_num >= 20)
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            name.unlink(missing_ok=True)
        # The run stops within a few progress intervals: no object is started after that.
        deadline = time.monotonic() + 20
        while True:
            before = sum(copies.values())
            time.sleep(2)
            if sum(copies.values()) == before:
                break
            assert time.monotonic() < deadline, "copying went on after the database was deleted"
        assert before < len(bodies)
        # The API says it cannot serve (503), rather than answering from a database that no longer exists...
        with pytest.raises(Exception) as info:
            client.show_task(ShowTaskRequest(task_id=created.id))
        assert getattr(info.value, "status_code", None) == 503
        # ...and no empty database was made in its place behind the operator's back.
        assert not path.exists()
    finally:
        started.close()


def test_postgres_restart_under_a_sync_task_loses_no_event(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           pg_url: str) -> None:
    from huaweicloudsdkoms.v2 import (
        CreateSyncEventsRequest,
        CreateSyncTaskReq,
        CreateSyncTaskRequest,
        ShowSyncTaskRequest,
        SyncObjectReq,
    )

    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(
        {"AWS/us-east-1": seaweed_a.endpoint, "HuaweiCloud/cn-north-4": seaweed_b.endpoint}))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    started = start_service(tmp_path, pg_url)
    try:
        client = started.value.client()
        task_id = client.create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
            src_cloud_type="AWS", src_region="us-east-1", src_bucket=sb, src_ak=seaweed_a.access_key,
            src_sk=seaweed_a.secret_key, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
            dst_region="cn-north-4", dst_bucket=db))).sync_task_id

        def month() -> tuple[int, int, int]:
            r = client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))
            return r.monthly_success_object, r.monthly_failure_object, r.monthly_skip_object

        bodies = _objects(seaweed_a, sb, 60)
        keys = [quote(k, safe="") for k in sorted(bodies)]  # events carry URL-encoded keys

        def events(chosen: list[str]) -> None:
            for i in range(0, len(chosen), 10):  # at most 10 keys a request
                client.create_sync_events(CreateSyncEventsRequest(
                    sync_task_id=task_id, body=SyncObjectReq(object_keys=chosen[i:i + 10])))

        events(keys[:30])
        _restart_postgres(pg_url.rsplit("/", 1)[1], closed_for=2.0)
        events(keys[30:])
        deadline = time.monotonic() + 90
        while month()[0] + month()[2] < len(keys):
            assert time.monotonic() < deadline, month()
            time.sleep(0.2)
        success, failed, skipped = month()
        # Nothing lost, nothing failed. Not asserted: success + skipped == len(keys). An outcome write retried
        # across the restart can count a key twice (once copied, once found there): a known over-count of the
        # monthly statistics, seen once in a fresh-clone run (60 + 8 for 60 keys).
        assert failed == 0 and success + skipped >= len(keys) and success >= len(keys) - 30, month()
    finally:
        started.close()
    assert {k: v[0] for k, v in listing(seaweed_b, db).items()} == {k: len(v) for k, v in bodies.items()}


def test_a_used_data_directory_without_its_database_is_said_at_start(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from ferry.serve import build

    url = f"sqlite:///{tmp_path / 'ferry.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FERRY_MASTER_KEY", raising=False)  # the key file in the data directory marks it as used
        build(tmp_path, url, run_tasks=False).close()
        assert "starting on a new, empty one" not in caplog.text  # a first start is just that
        (tmp_path / "ferry.db").unlink()
        with caplog.at_level("WARNING", logger="ferry.serve"):
            build(tmp_path, url, run_tasks=False).close()
    assert f"no database at {tmp_path / 'ferry.db'}" in caplog.text and "starting on a new, empty one" in caplog.text
