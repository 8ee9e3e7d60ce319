"""Caps on what sync-task callers may queue, through the OMS SDK and the notification routes: pending events per
task and per project, and the per-project notification rate (limits lowered here so that a few calls reach them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import CreateSyncEventsRequest, SyncObjectReq
from live_server import Tenant, next_second
from sync_live import SyncLive, env, s3_event, signed, sync_live

from ferry.runner.sync import SyncSettings
from ferry.sandbox import SeaweedServer

BucketFactory = Callable[[SeaweedServer], str]
PER_TASK, PER_PROJECT, BURST = 25, 40, 20
LIMITS = {"FERRY_SYNC_MAX_PENDING_PER_TASK": str(PER_TASK), "FERRY_SYNC_MAX_PENDING_PER_PROJECT": str(PER_PROJECT),
          "FERRY_SYNC_NOTIFY_RATE": "0.1", "FERRY_SYNC_NOTIFY_BURST": str(BURST)}


@pytest.fixture
def limited(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[SyncLive]:
    # No sync workers: accepted events stay pending, so the queue only grows.
    with env(**LIMITS), sync_live(seaweed_a, seaweed_b, tmp_path_factory.mktemp("limits"),
                                  SyncSettings(reconcile_seconds=3600), run_workers=False) as server:
        yield server


def _events(live: SyncLive, task_id: str, keys: list[str], tenant: Tenant | None = None) -> None:
    live.client(tenant).create_sync_events(
        CreateSyncEventsRequest(sync_task_id=task_id, body=SyncObjectReq(object_keys=keys)))


def _refused(live: SyncLive, task_id: str, keys: list[str]) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as info:
        _events(live, task_id, keys)
    return info.value


def _keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(n)]


def test_pending_events_are_capped_per_task(limited: SyncLive, bucket_factory: BucketFactory) -> None:
    live = limited
    src, dst = bucket_factory(live.src), bucket_factory(live.dst)
    task_id = live.create_task(src, dst)
    _events(live, task_id, _keys("a", 10))
    _events(live, task_id, _keys("b", 10))
    refused = _refused(live, task_id, _keys("c", 10))
    assert (refused.status_code, refused.error_code) == (400, "OMS.0077")
    assert "sync task" in refused.error_msg and str(PER_TASK) in refused.error_msg
    _events(live, task_id, _keys("c", 5))  # exactly up to the limit
    assert live.ctx.repo.pending_count(task_id) == PER_TASK
    assert (_refused(live, task_id, ["one-more"]).error_code) == "OMS.0077"

    # A bucket notification into the full queue: 429 with Retry-After, which notifying stores retry on.
    resp = signed(live, "POST", f"/v2/{{project_id}}/sync-tasks/{task_id}/notifications", body=s3_event(src, "n1"))
    assert resp.status_code == 429 and resp.json()["error_code"] == "OMS.0077", resp.text
    assert int(resp.headers["Retry-After"]) >= 1
    assert live.ctx.repo.pending_count(task_id) == PER_TASK  # nothing of the refused calls was queued


def test_pending_events_are_capped_per_project(limited: SyncLive, bucket_factory: BucketFactory) -> None:
    live = limited
    src, dst = bucket_factory(live.src), bucket_factory(live.dst)
    first = live.create_task(src, dst)
    next_second()  # the same signed create twice within a second would be a replay
    second = live.create_task(src, dst)
    for prefix in ("a", "b"):
        _events(live, first, _keys(prefix, 10))
    _events(live, second, _keys("c", 10))
    _events(live, second, _keys("d", 10))  # 40: the project's limit, though each task is below its own
    refused = _refused(live, second, ["e"])
    assert (refused.status_code, refused.error_code) == (400, "OMS.0077") and "project" in refused.error_msg
    assert live.ctx.repo.pending_count(first) + live.ctx.repo.pending_count(second) == PER_PROJECT
    # Another project has a queue of its own.
    theirs = live.create_task(src, dst, tenant=live.other)
    _events(live, theirs, _keys("x", 10), tenant=live.other)
    assert live.ctx.repo.pending_count(theirs) == 10


def test_notifications_are_rate_limited_per_project(limited: SyncLive, bucket_factory: BucketFactory) -> None:
    live = limited
    src, dst = bucket_factory(live.src), bucket_factory(live.dst)
    task_id = live.create_task(src, dst)
    path = f"/v2/{{project_id}}/sync-tasks/{task_id}/notifications"
    # A burst's worth of records passes at once (removals cost a token too, though they queue nothing).
    resp = signed(live, "POST", path, body={"Records": [
        *s3_event(src, *_keys("k", BURST - 2))["Records"],
        *s3_event(src, "gone-1", "gone-2", name="ObjectRemoved:Delete")["Records"]]})
    assert resp.status_code == 200 and resp.json() == {"accepted": BURST - 2, "ignored": 2}, resp.text
    resp = signed(live, "POST", path, body=s3_event(src, "one-more"))
    assert resp.status_code == 429 and resp.json()["error_code"] == "APIGW.0308", resp.text
    assert int(resp.headers["Retry-After"]) >= 5  # a token comes back every 10 s
    # The unsigned notification URL draws on the same project's tokens.
    token = signed(live, "POST", f"/v2/{{project_id}}/sync-tasks/{task_id}/notification-token").json()["token"]
    r = requests.post(f"{live.url}/v2/sync-notifications/{task_id}", json=s3_event(src, "one-more"),
                      headers={"X-Ferry-Token": token}, timeout=10)
    assert r.status_code == 429 and r.json()["error_code"] == "APIGW.0308" and "Retry-After" in r.headers
    assert live.ctx.repo.pending_count(task_id) == BURST - 2
    # Another project's notifications are not held back.
    theirs = live.create_task(src, dst, tenant=live.other)
    resp = signed(live, "POST", f"/v2/{{project_id}}/sync-tasks/{theirs}/notifications",
                  body=s3_event(src, "mine"), tenant=live.other)
    assert resp.status_code == 200 and resp.json()["accepted"] == 1, resp.text
