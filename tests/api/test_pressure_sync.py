"""Sync tasks over a hostile network (tests/faultproxy.py in front of the source): a store capped at N requests/s,
a 503 storm and an object that always fails. Every key ends copied or failed with its reason; none is failed for
throttling alone."""

from __future__ import annotations

import os
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from huaweicloudsdkoms.v2 import CreateSyncEventsRequest, ShowSyncTaskRequest, SyncObjectReq
from sync_live import SyncLive, get, put, sync_live, wait_for

from faultproxy import FaultProxy, RateCap, Status
from ferry.runner.sync import SyncSettings
from ferry.sandbox import SeaweedServer

BucketFactory = Callable[[SeaweedServer], str]

SETTINGS = SyncSettings(
    reconcile_seconds=3600, tasks_refresh_seconds=0.1, lease_seconds=10, retry_base_seconds=0.1,
    retry_max_seconds=0.5, max_attempts=3, poll_seconds=0.2, node_id="pressure-test",
)


@pytest.fixture(scope="module")
def proxy(seaweed_a: SeaweedServer) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweed_a.endpoint).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def sync_server(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, proxy: FaultProxy,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncLive]:
    # The source as the sync task sees it: seaweed_a, reached through the proxy.
    src: Any = types.SimpleNamespace(endpoint=proxy.endpoint, access_key=seaweed_a.access_key,
                                     secret_key=seaweed_a.secret_key, request=seaweed_a.request)
    with sync_live(src, seaweed_b, tmp_path_factory.mktemp("pressure"), SETTINGS) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(sync_server: SyncLive, proxy: FaultProxy) -> Iterator[None]:
    yield
    proxy.clear()
    live = sync_server
    repo = live.ctx.repo
    rows, _ = repo.list_tasks(live.tenant.project_id, None, 100, 0)
    for row in rows:
        repo.delete_task(live.tenant.project_id, row.id)


def _month(live: SyncLive, task_id: str) -> tuple[int, int]:
    r = live.client().show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))
    return r.monthly_success_object, r.monthly_failure_object


def test_reconciling_through_a_request_rate_cap_copies_every_object(
        sync_server: SyncLive, proxy: FaultProxy, seaweed_a: SeaweedServer, bucket_factory: BucketFactory) -> None:
    live = sync_server
    sb, db = bucket_factory(seaweed_a), bucket_factory(live.dst)
    bodies = {f"r/{i:04d}": os.urandom(700) for i in range(120)}
    for key, body in bodies.items():
        put(seaweed_a, sb, key, body)
    cap = proxy.add(RateCap(per_second=40, burst=20))
    started = time.monotonic()
    task_id = live.create_task(sb, db)
    live.wait_reconciled(task_id, timeout=90)
    elapsed = time.monotonic() - started
    assert cap.fired > 0
    assert all(get(live.dst, db, k) == v for k, v in bodies.items())
    assert live.ctx.repo.get_task(task_id) is not None
    assert cap.matched / elapsed < 100  # about as many as the store takes, not thousands refused


def test_events_through_a_503_storm_use_up_no_attempts(
        sync_server: SyncLive, proxy: FaultProxy, seaweed_a: SeaweedServer, bucket_factory: BucketFactory) -> None:
    live = sync_server
    sb, db = bucket_factory(seaweed_a), bucket_factory(live.dst)
    task_id = live.create_task(sb, db)
    live.wait_reconciled(task_id)
    keys = [f"e/{i:03d}" for i in range(10)]  # an event carries at most 10
    for key in keys:
        put(seaweed_a, sb, key, key.encode() * 10)
    storm = proxy.add(Status(503), method="HEAD", path=f"^/{sb}/e/")
    live.client().create_sync_events(CreateSyncEventsRequest(sync_task_id=task_id,
                                                             body=SyncObjectReq(object_keys=keys)))
    sent = time.monotonic()
    # The storm lasts until every key has been refused (a busy machine may take a while to reach them all)
    # and at least 4 s: longer than 3 attempts of 3 tries each take when throttling counts as failing.
    wait_for(lambda: storm.fired >= len(keys), 60, "every key refused")
    time.sleep(max(0.0, 4 - (time.monotonic() - sent)))
    proxy.remove(storm)
    wait_for(lambda: _month(live, task_id)[0] >= len(keys), 60, "every key synced")
    assert _month(live, task_id) == (len(keys), 0)
    assert all(get(live.dst, db, k) == k.encode() * 10 for k in keys)


def test_an_object_that_always_fails_fails_alone_with_its_reason(
        sync_server: SyncLive, proxy: FaultProxy, seaweed_a: SeaweedServer, bucket_factory: BucketFactory) -> None:
    live = sync_server
    sb, db = bucket_factory(seaweed_a), bucket_factory(live.dst)
    task_id = live.create_task(sb, db)
    live.wait_reconciled(task_id)
    for key in ("ok/1", "ok/2", "bad"):
        put(seaweed_a, sb, key, b"x" * 100)
    rule = proxy.add(Status(500), method="GET", path=f"^/{sb}/bad$")
    live.client().create_sync_events(CreateSyncEventsRequest(
        sync_task_id=task_id, body=SyncObjectReq(object_keys=["ok/1", "bad", "ok/2"])))
    wait_for(lambda: _month(live, task_id) == (2, 1), 60, "two synced and one failed")
    assert rule.fired >= 3
    [failed] = live.ctx.repo.given_up(task_id, None, 10)
    assert failed.key == "bad" and failed.reason is not None
    assert "HTTP 500 InternalError" in failed.reason and "gave up after 3 attempts" in failed.reason
