"""Sync tasks through the official OMS SDK against live SeaweedFS servers: every operation and its errors."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CreateSyncEventsRequest,
    CreateSyncTaskRequest,
    DeleteSyncTaskRequest,
    ListSyncTasksRequest,
    ListSyncTaskStatisticRequest,
    ShowSyncTaskRequest,
    SourceCdnReq,
    StartSyncTaskReq,
    StartSyncTaskRequest,
    StopSyncTaskRequest,
    SyncObjectReq,
)
from live_server import next_second
from sdk_signing import signed_sdk_request
from sync_live import SyncLive, encoded, get, put, sync_live, wait_for

from ferry.runner.sync import SyncSettings
from ferry.sandbox import SeaweedServer

BucketFactory = Callable[[SeaweedServer], str]

# Reconciliation is triggered explicitly here (start, or a fresh task), so event outcomes stay deterministic.
SETTINGS = SyncSettings(
    reconcile_seconds=3600, tasks_refresh_seconds=0.1, lease_seconds=10, retry_base_seconds=0.1,
    retry_max_seconds=0.5, max_attempts=3, poll_seconds=0.2, node_id="sdk-test",
)


@pytest.fixture(scope="module")
def sync_server(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[SyncLive]:
    with sync_live(seaweed_a, seaweed_b, tmp_path_factory.mktemp("sync"), SETTINGS) as server:
        yield server


@pytest.fixture(autouse=True)
def _delete_tasks_after(sync_server: SyncLive) -> Iterator[None]:
    # Each project may hold only 5 sync tasks; tests leave none behind.
    yield
    repo = sync_server.ctx.repo
    for tenant in (sync_server.tenant, sync_server.other):
        rows, _ = repo.list_tasks(tenant.project_id, None, 100, 0)
        for row in rows:
            repo.delete_task(tenant.project_id, row.id)


def _error(exc: pytest.ExceptionInfo[ClientRequestException]) -> tuple[int, str]:
    return exc.value.status_code, exc.value.error_code


def _now_ms() -> int:
    return int(time.time() * 1000)


def _events(live: SyncLive, task_id: str, *keys: str) -> None:
    live.client().create_sync_events(
        CreateSyncEventsRequest(sync_task_id=task_id, body=SyncObjectReq(object_keys=list(keys)))
    )


def _buckets(live: SyncLive, bucket_factory: BucketFactory) -> tuple[str, str]:
    return bucket_factory(live.src), bucket_factory(live.dst)


def _month(live: SyncLive, task_id: str) -> dict[str, int]:
    r = live.client().show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms()))
    return {"request": r.monthly_acceptance_request, "success": r.monthly_success_object,
            "failure": r.monthly_failure_object, "skip": r.monthly_skip_object, "size": r.monthly_size}


def _series(live: SyncLive, task_id: str, start: int, end: int, types: str = "REQUEST,SUCCESS,FAILURE,SKIP,SIZE"
            ) -> tuple[str, dict[str, list[tuple[int, int]]]]:
    r = live.client().list_sync_task_statistic(ListSyncTaskStatisticRequest(
        sync_task_id=task_id, data_type=types, start_time=start, end_time=end,
    ))
    return r.statistic_time_type, {
        d.data_type: [(p.time_stamp, p.statistic_num) for p in d.data] for d in r.statistic_datas
    }


def test_lifecycle_list_show_stop_start_delete(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    client = live.client()
    task_id = live.create_task(src, dst, description="nightly copy", enable_metadata_migration=True,
                               consistency_check="transmission", dst_storage_policy="STANDARD")
    shown = client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms()))
    assert (shown.status, shown.src_bucket, shown.dst_bucket, shown.description) == (
        "SYNCHRONIZING", src, dst, "nightly copy")
    assert (shown.src_cloud_type, shown.src_region, shown.dst_region) == ("AWS", "us-east-1", "cn-north-4")
    assert shown.consistency_check == "no_check"  # the SDK's "transmission" spelling, answered as documented
    assert shown.object_overwrite_mode == "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE"
    assert shown.enable_metadata_migration is True and shown.enable_restore is False
    assert abs(shown.create_time - _now_ms()) < 60_000 and shown.monthly_acceptance_request == 0
    raw = shown.raw_content.decode()
    assert live.src.secret_key not in raw and live.dst.secret_key not in raw and live.src.access_key not in raw

    listed = client.list_sync_tasks(ListSyncTasksRequest())
    assert task_id in {t.sync_task_id for t in listed.tasks} and listed.count == len(listed.tasks)
    info = next(t for t in listed.tasks if t.sync_task_id == task_id)
    assert (info.status, info.dst_storage_policy, info.consistency_check) == ("SYNCHRONIZING", "STANDARD", "no_check")

    client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
    stopped = client.list_sync_tasks(ListSyncTasksRequest(status="STOPPED", limit=100))
    assert [t.sync_task_id for t in stopped.tasks] == [task_id] and stopped.count == 1
    assert client.list_sync_tasks(ListSyncTasksRequest(status="SYNCHRONIZING", limit=1, offset=0)).count >= 0
    next_second()
    with pytest.raises(ClientRequestException) as exc:
        client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
    assert _error(exc) == (400, "OMS.0001") and "SYNCHRONIZING" in exc.value.error_msg
    with pytest.raises(ClientRequestException) as exc:
        _events(live, task_id, "a.txt")
    assert _error(exc) == (400, "OMS.0001") and "STOPPED" in exc.value.error_msg

    creds = StartSyncTaskReq(src_ak=live.src.access_key, src_sk=live.src.secret_key,
                             dst_ak=live.dst.access_key, dst_sk=live.dst.secret_key)
    client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=creds))
    again = client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms()))
    assert again.status == "SYNCHRONIZING" and again.last_start_time >= shown.last_start_time
    next_second()
    with pytest.raises(ClientRequestException) as exc:
        client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=creds))
    assert _error(exc) == (400, "OMS.0001")

    # Another project sees nothing of it.
    other = live.client(live.other)
    with pytest.raises(ClientRequestException) as exc:
        other.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms()))
    assert _error(exc) == (404, "OMS.1009")
    with pytest.raises(ClientRequestException) as exc:
        other.delete_sync_task(DeleteSyncTaskRequest(sync_task_id=task_id))
    assert _error(exc) == (404, "OMS.1009")
    assert task_id not in {t.sync_task_id for t in other.list_sync_tasks(ListSyncTasksRequest()).tasks or []}

    client.delete_sync_task(DeleteSyncTaskRequest(sync_task_id=task_id))
    next_second()
    for call in (
        lambda: client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms())),
        lambda: client.delete_sync_task(DeleteSyncTaskRequest(sync_task_id=task_id)),
        lambda: client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id)),
        lambda: _events(live, task_id, "a.txt"),
    ):
        with pytest.raises(ClientRequestException) as exc:
            call()
        assert _error(exc) == (404, "OMS.1009")


def test_create_validation_and_quota(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    client = live.client(live.other)

    def rejected(**changes: object) -> tuple[int, str, str]:
        req = live.task_req(src, dst)
        for name, value in changes.items():
            setattr(req, name, value)
        with pytest.raises(ClientRequestException) as exc:
            client.create_sync_task(CreateSyncTaskRequest(body=req))
        return exc.value.status_code, exc.value.error_code, exc.value.error_msg

    assert rejected(description="a <b>")[:2] == (400, "OMS.0078")
    assert rejected(description="x" * 256)[:2] == (400, "OMS.0001")
    assert rejected(src_cloud_type="Google")[:2] == (400, "OMS.0001")  # a task cloud, not a sync cloud
    assert rejected(src_cloud_type="Azure")[:2] == (400, "OMS.0001")  # us-east-1 is no Azure region
    assert rejected(src_sk="s" * 101)[:2] == (400, "OMS.0001")
    assert rejected(dst_ak=None)[:2] == (400, "OMS.0001")
    assert rejected(dst_storage_policy="COLD")[:2] == (400, "OMS.0001")
    assert rejected(consistency_check="md5")[:2] == (400, "OMS.0001")
    assert rejected(dst_crypto_type="KMS")[:2] == (400, "OMS.0001")
    assert rejected(src_bucket="Not_A_Bucket")[:2] == (400, "OMS.0001")
    assert rejected(src_region="us east 1")[:2] == (400, "OMS.0001")  # not a region name
    next_second()
    status, code, msg = rejected(src_sk="s" * 101)
    assert "s" * 20 not in msg  # the rejected secret is never echoed
    # A well-formed name that is no region of the cloud (and not in the operator's table) names no endpoint.
    status, code, msg = rejected(src_region="cn-nowhere-9")
    assert (status, code) == (400, "OMS.0001") and "not a region" in msg

    made = [
        client.create_sync_task(CreateSyncTaskRequest(body=live.task_req(src, dst, consistency_check=check,
                                                                         source_cdn=cdn))).sync_task_id
        for check, cdn in (("crc64", None), ("size_last_modified", None), ("no_check", None), (None, None),
                           (None, SourceCdnReq(authentication_type="NONE", domain="cdn.example.com",
                                               protocol="https")))
    ]
    assert len(set(made)) == 5
    listed = client.list_sync_tasks(ListSyncTasksRequest(limit=100))
    assert listed.count == 5 and {t.sync_task_id for t in listed.tasks} == set(made)
    assert [t.source_cdn.domain for t in listed.tasks if t.source_cdn] == ["cdn.example.com"]
    assert client.list_sync_tasks(ListSyncTasksRequest(limit=2, offset=4)).count == 5
    assert len(client.list_sync_tasks(ListSyncTasksRequest(limit=2, offset=4)).tasks) == 1
    next_second()
    status, code, msg = rejected()
    assert (status, code) == (400, "OMS.0077") and "5" in msg
    for task_id in made:
        client.delete_sync_task(DeleteSyncTaskRequest(sync_task_id=task_id))
    with pytest.raises(ClientRequestException) as exc:
        client.list_sync_tasks(ListSyncTasksRequest(limit=101))
    assert _error(exc) == (400, "OMS.0001")


def test_events_copy_coalesce_and_statistics_agree(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst, enable_metadata_migration=True)
    live.wait_reconciled(task_id)  # the (empty) initial full copy is done: what follows is events only
    started = _now_ms()
    files = {
        "plain.txt": b"hello",
        "dir/a b+c%d.txt": b"spaces, plus and percent",
        "unicod\u00e9/\u6587\u4ef6.bin": bytes(range(256)) * 40,
    }
    for key, data in files.items():
        put(live.src, src, key, data, headers={"Content-Type": "text/x-ferry", "x-amz-meta-colour": "blue"})
    # A burst for one key within one call coalesces into one queue row (and one copy).
    _events(live, task_id, encoded("plain.txt"), encoded("plain.txt"), encoded("dir/a b+c%d.txt"))
    _events(live, task_id, encoded("unicod\u00e9/\u6587\u4ef6.bin"))
    wait_for(lambda: all(get(live.dst, dst, k) == v for k, v in files.items()), 30, "events copied")
    status, _ = live.dst.request("HEAD", f"/{dst}/plain.txt")
    assert status == 200

    total = sum(len(v) for v in files.values())
    wait_for(lambda: _month(live, task_id)["success"] == 3, 10, "outcomes recorded")
    assert _month(live, task_id) == {"request": 4, "success": 3, "failure": 0, "skip": 0, "size": total}

    # The same key again, unchanged: skipped (already in sync), counted as such.
    _events(live, task_id, encoded("plain.txt"))
    wait_for(lambda: _month(live, task_id)["skip"] == 1, 10, "skip recorded")

    # Same size, new content within the same second: the MD5 ETags tell them apart, so it is copied.
    put(live.src, src, "plain.txt", b"HELLO")
    _events(live, task_id, encoded("plain.txt"))
    wait_for(lambda: get(live.dst, dst, "plain.txt") == b"HELLO", 10, "modified object re-copied")
    wait_for(lambda: _month(live, task_id)["success"] == 4, 10, "outcome recorded")

    month = _month(live, task_id)
    kind, series = _series(live, task_id, started - 60_000, _now_ms() + 60_000)
    assert kind == "FIVE_MINUTES"
    assert list(series) == ["REQUEST", "SUCCESS", "FAILURE", "SKIP", "SIZE"]
    for name, field in (("REQUEST", "request"), ("SUCCESS", "success"), ("FAILURE", "failure"), ("SKIP", "skip"),
                        ("SIZE", "size")):
        assert sum(n for _, n in series[name]) == month[field], name
    stamps = [t for t, _ in series["SUCCESS"]]
    assert all(b - a == 300_000 for a, b in itertools.pairwise(stamps)) and stamps[0] % 300_000 == 0

    # Longer than a day: hourly points, same totals; request order of types kept; seconds accepted too.
    kind, series = _series(live, task_id, started - 2 * 86_400_000, _now_ms() + 1000, "SIZE,SUCCESS")
    assert kind == "ONE_HOUR" and list(series) == ["SIZE", "SUCCESS"]
    assert sum(n for _, n in series["SIZE"]) == month["size"]
    kind, series = _series(live, task_id, started // 1000 - 60, _now_ms() // 1000 + 60, "SUCCESS")
    assert kind == "FIVE_MINUTES" and sum(n for _, n in series["SUCCESS"]) == month["success"]

    # A month that has nothing: all zero.
    last_year = _now_ms() - 400 * 86_400_000
    r = live.client().show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=last_year))
    assert (r.monthly_acceptance_request, r.monthly_success_object, r.monthly_size) == (0, 0, 0)

    # Metadata migrated (enable_metadata_migration): Content-Type and user metadata.
    resp = requests.head(f"{live.dst.endpoint}/{dst}/unicod%C3%A9/%E6%96%87%E4%BB%B6.bin", timeout=10)
    assert resp.status_code in (200, 403)  # anonymous HEAD may be refused; the signed check follows
    from ferry.storage.s3 import S3Backend

    async def head() -> tuple[str | None, dict[str, str]]:
        b = S3Backend(live.dst.endpoint, "us-east-1", live.dst.access_key, live.dst.secret_key, dst)
        try:
            info = await b.head("dir/a b+c%d.txt")
            assert info.meta is not None
            return info.meta.content_type, dict(info.meta.user)
        finally:
            await b.close()

    import asyncio

    ctype, user = asyncio.run(head())
    assert ctype == "text/x-ferry" and user.get("colour") == "blue"


def test_event_errors(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)

    def rejected(keys: list[str], task: str = task_id) -> tuple[int, str, str]:
        with pytest.raises(ClientRequestException) as exc:
            live.client().create_sync_events(
                CreateSyncEventsRequest(sync_task_id=task, body=SyncObjectReq(object_keys=keys))
            )
        return exc.value.status_code, exc.value.error_code, exc.value.error_msg

    assert rejected([f"k{i}" for i in range(11)])[:2] == (400, "OMS.0001")
    assert rejected([])[:2] == (400, "OMS.0001")
    assert rejected([""])[:2] == (400, "OMS.0001")
    assert rejected(["%FF%FE"])[:2] == (400, "OMS.0001")  # not UTF-8 once decoded
    status, code, msg = rejected(["a" * 1025])
    assert (status, code) == (400, "OMS.0001") and "1024" in msg
    assert rejected([encoded("\u6587" * 342)])[:2] == (400, "OMS.0001")  # 1026 bytes of UTF-8
    assert rejected(["x" * 16385])[:2] == (400, "OMS.0001")
    assert rejected(["a.txt"], task="00000000-0000-0000-0000-000000000000")[:2] == (404, "OMS.1009")
    # Ten keys is the documented maximum and fine; a key that does not exist fails with a reason.
    _events(live, task_id, *[f"missing-{i}" for i in range(9)], encoded("exactly/1024/" + "k" * 1011))
    wait_for(lambda: _month(live, task_id)["failure"] == 10, 15, "failures recorded")
    resp = _signed(live, "GET", f"/v2/{{project_id}}/sync-tasks/{task_id}/failed-objects",
                   query=[("limit", 5)])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == 10 and len(body["objects"]) == 5
    assert {o["state"] for o in body["objects"]} == {"failed"}
    assert all(o["reason"] == "the source object does not exist" for o in body["objects"])
    # An offset beyond what the database can count is refused, not a 500 (found by the schema fuzz).
    resp = _signed(live, "GET", f"/v2/{{project_id}}/sync-tasks/{task_id}/failed-objects",
                   query=[("offset", 2**63)])
    assert resp.status_code == 400 and resp.json()["error_code"] == "OMS.0001", resp.text


def test_failed_keys_are_listed_in_the_destination_bucket(sync_server: SyncLive, bucket_factory: BucketFactory
                                                          ) -> None:
    """The OMS API has no call that names a sync task's failed keys (only counts): they are written where OMS
    users look for them, a list in the destination bucket, refreshed as keys fail or recover."""
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    live.wait_reconciled(task_id)
    list_key = f"oms/sync_task/{task_id}/failed_object_lists/failed_list.txt"
    put(live.src, src, "here.txt", b"fine")
    _events(live, task_id, encoded("gone/a b.txt"), encoded("here.txt"))
    wait_for(lambda: get(live.dst, dst, list_key) is not None, 15, "the failed list in the destination")
    lines = [json.loads(x) for x in (get(live.dst, dst, list_key) or b"").decode().splitlines()]
    assert [x["key"] for x in lines] == ["gone/a b.txt"]
    assert lines[0]["reason"] == "the source object does not exist" and lines[0]["attempts"] >= 1
    # The two events are worked on at once: the good key may land just after the list.
    wait_for(lambda: get(live.dst, dst, "here.txt") == b"fine", 15, "the good key synced")

    # The key turns up and syncs: the list goes, since nothing has failed any more.
    put(live.src, src, "gone/a b.txt", b"late")
    _events(live, task_id, encoded("gone/a b.txt"))
    wait_for(lambda: get(live.dst, dst, "gone/a b.txt") == b"late", 15, "the late key synced")
    wait_for(lambda: get(live.dst, dst, list_key) is None, 15, "the emptied failed list removed")


def _signed(live: SyncLive, method: str, path: str, *, body: object = None,
            query: list[tuple[str, object]] | None = None, raw: bytes | None = None) -> requests.Response:
    host = live.url.removeprefix("http://")
    if body is not None:
        raw = json.dumps(body).encode()
    req = signed_sdk_request(ak=live.tenant.ak, sk=live.tenant.sk, project_id=live.tenant.project_id,
                             method=method, path=path, body=raw, host=host, query=query)
    url = f"{live.url}{req.uri}"
    return requests.request(method, url, headers=req.header_params, data=raw, timeout=30)


def test_deeply_nested_json_is_a_400_on_every_route(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    """JSON nested deeper than the parser's recursion limit is bad input, not a server failure: a 400 in the
    OMS error shape on the notification routes as on the OMS ones, and nothing is accepted."""
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    token = _signed(live, "POST", f"/v2/{{project_id}}/sync-tasks/{task_id}/notification-token").json()["token"]
    depth = 20_000  # far past the parser's recursion limit, well under the body limit
    deep = "[" * depth + "]" * depth
    # The last one is an SNS envelope whose Message (a JSON string) is the deeply nested part.
    for nested in (deep.encode(), b'{"Records":' * depth + b"1" + b"}" * depth,
                   b'{"object_keys":' + deep.encode() + b"}",
                   json.dumps({"Type": "Notification", "Message": deep}).encode()):
        answers = {
            path: _signed(live, "POST", f"/v2/{{project_id}}{path}", raw=nested)
            for path in ("/sync-tasks", f"/sync-tasks/{task_id}/events", f"/sync-tasks/{task_id}/notifications",
                         f"/sync-tasks/{task_id}/start", "/tasks", "/taskgroups")
        }
        answers["by token"] = requests.post(f"{live.url}/v2/sync-notifications/{task_id}", data=nested,
                                            headers={"X-Ferry-Token": token}, timeout=30)
        for where, r in answers.items():
            assert (r.status_code, r.json()["error_code"]) == (400, "OMS.0001"), (where, r.status_code, r.text)
            assert "X-Request-Id" in r.headers
    assert _month(live, task_id)["request"] == 0


def _s3_event(bucket: str, key: str, name: str = "ObjectCreated:Put") -> dict[str, object]:
    # The shape AWS S3 documents for event notifications (MinIO sends the same Records).
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2024-01-01T00:00:00.000Z", "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": 3, "eTag": "0" * 32}},
    }]}


def test_bucket_notifications_signed_and_by_token(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    for key in ("n1 space.txt", "n2.txt", "n3.txt", "gone.txt"):
        put(live.src, src, key, b"abc")

    # Signed like any OMS call; form-encoded keys (space as +).
    resp = _signed(live, "POST", f"/v2/{{project_id}}/sync-tasks/{task_id}/notifications",
                   body=_s3_event(src, "n1+space.txt"))
    assert resp.status_code == 200 and resp.json() == {"accepted": 1, "ignored": 0}, resp.text

    resp = _signed(live, "POST", f"/v2/{{project_id}}/sync-tasks/{task_id}/notification-token")
    assert resp.status_code == 200, resp.text
    token, url = resp.json()["token"], resp.json()["url"]
    assert url == f"{live.url}/v2/sync-notifications/{task_id}"

    # The unsigned URL, for stores that cannot sign: bearer token (MinIO auth_token), header, or query.
    r = requests.post(url, json=_s3_event(src, "n2.txt", "s3:ObjectCreated:Put"),
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"accepted": 1, "ignored": 0}, r.text
    inner = _s3_event(src, "n3.txt", "ObjectCreated:CompleteMultipartUpload")
    sns = {"Type": "Notification", "Message": json.dumps(inner)}
    r = requests.post(url, params={"token": token}, json=sns, timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = requests.post(url, headers={"X-Ferry-Token": token}, json={
        "Records": [*_s3_event(src, "gone.txt", "ObjectRemoved:Delete")["Records"],
                    *_s3_event("someone-else", "n2.txt")["Records"]]}, timeout=10)
    assert r.status_code == 200 and r.json() == {"accepted": 0, "ignored": 2}, r.text
    r = requests.post(url, headers={"X-Ferry-Token": token}, json={"Event": "s3:TestEvent"}, timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == 0

    for bad in ({}, {"Authorization": "Bearer nope"}, {"X-Ferry-Token": token + "x"}):
        r = requests.post(url, headers=bad, json=_s3_event(src, "n2.txt"), timeout=10)
        assert r.status_code == 401 and r.json()["error_code"] == "APIGW.0301" and "X-Request-Id" in r.headers
    r = requests.post(url, headers={"X-Ferry-Token": token}, data=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error_code"] == "OMS.0001"
    r = requests.post(url, headers={"X-Ferry-Token": token}, json={"Records": [{"eventName": "ObjectCreated:Put",
                      "s3": {"bucket": {"name": src}, "object": {"key": "%FF"}}}]}, timeout=10)
    assert r.status_code == 400 and r.json()["error_code"] == "OMS.0001"

    wait_for(lambda: all(get(live.dst, dst, k) == b"abc" for k in ("n1 space.txt", "n2.txt", "n3.txt")), 20,
             "notified keys copied")
    assert get(live.dst, dst, "gone.txt") is None  # its record was a removal: not a sync event

    # A rotated token replaces the old one.
    next_second()
    resp = _signed(live, "POST", f"/v2/{{project_id}}/sync-tasks/{task_id}/notification-token")
    r = requests.post(url, headers={"X-Ferry-Token": token}, json=_s3_event(src, "n2.txt"), timeout=10)
    assert r.status_code == 401
    r = requests.post(url, headers={"X-Ferry-Token": resp.json()["token"]}, json=_s3_event(src, "n2.txt"),
                      timeout=10)
    assert r.status_code == 200


def test_reconciliation_initial_copy_and_objects_without_events(
    sync_server: SyncLive, bucket_factory: BucketFactory
) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    before = {f"old/{i:03d}": f"old {i}".encode() for i in range(30)}
    for key, data in before.items():
        put(live.src, src, key, data)
    put(live.dst, dst, "only-in-destination", b"keep me")  # never touched (deletes are not propagated)
    task_id = live.create_task(src, dst)
    # A new task's first reconciliation is the initial full copy.
    wait_for(lambda: all(get(live.dst, dst, k) == v for k, v in before.items()), 30, "initial full copy")
    live.wait_reconciled(task_id)

    later = {f"new/{i:03d}": f"new {i}".encode() for i in range(10)}
    for key, data in later.items():
        put(live.src, src, key, data)
    put(live.src, src, "old/000", b"changed!")  # different size: must be re-copied
    # No events: a restart reconciles at once (the periodic pass does the same every reconcile_seconds).
    client = live.client()
    client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
    client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=StartSyncTaskReq(
        src_ak=live.src.access_key, src_sk=live.src.secret_key, dst_ak=live.dst.access_key,
        dst_sk=live.dst.secret_key)))
    wait_for(lambda: all(get(live.dst, dst, k) == v for k, v in later.items()), 30, "reconciliation copy")
    wait_for(lambda: get(live.dst, dst, "old/000") == b"changed!", 30, "changed object")
    live.wait_reconciled(task_id)
    assert get(live.dst, dst, "only-in-destination") == b"keep me"
    month = _month(live, task_id)
    size = sum(len(v) for v in before.values()) + sum(len(v) for v in later.values()) + len(b"changed!")
    assert month == {"request": 0, "success": 41, "failure": 0, "skip": 0, "size": size}
    _, series = _series(live, task_id, _now_ms() - 3_600_000, _now_ms())
    assert sum(n for _, n in series["SUCCESS"]) == 41 and sum(n for _, n in series["SIZE"]) == size


def test_statistics_errors(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    now = _now_ms()
    for types, start, end in (("BOGUS", now - 1000, now), ("SUCCESS", now, now - 1000),
                              ("SUCCESS", now - 1001 * 3_600_000, now)):
        with pytest.raises(ClientRequestException) as exc:
            _series(live, task_id, start, end, types)
        assert _error(exc) == (400, "OMS.0001")
    with pytest.raises(ClientRequestException) as exc:
        _series(live, "no-such-task", now - 1000, now, "SUCCESS")
    assert _error(exc) == (404, "OMS.1009")


def test_secrets_are_encrypted_at_rest(sync_server: SyncLive, bucket_factory: BucketFactory, tmp_path: Path) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    row = live.ctx.repo.get_task(task_id)
    assert row is not None
    stored = row.secrets + row.spec.to_json() + repr(row)
    for secret in (live.src.secret_key, live.dst.secret_key, live.src.access_key, live.dst.access_key):
        assert secret not in stored


def _raw(response: object) -> dict[str, object]:
    raw: bytes = response.raw_content  # type: ignore[attr-defined]
    return dict(json.loads(raw))


def test_keys_and_buckets_are_checked_at_creation_and_start(sync_server: SyncLive,
                                                            bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    client = live.client(live.other)

    def rejected(**changes: object) -> tuple[int, str, str]:
        req = live.task_req(src, dst)
        for name, value in changes.items():
            setattr(req, name, value)
        with pytest.raises(ClientRequestException) as exc:
            client.create_sync_task(CreateSyncTaskRequest(body=req))
        return exc.value.status_code, exc.value.error_code, exc.value.error_msg

    wrong = "not-the-secret-key-0123456789"
    for changes, code in (({"src_sk": wrong}, "OMS.0151"), ({"src_ak": "NOSUCHACCESSKEY"}, "OMS.0151"),
                          ({"src_bucket": "no-such-source-bucket"}, "OMS.0155"), ({"dst_sk": wrong}, "OMS.0057"),
                          ({"dst_bucket": "no-such-destination-bucket"}, "OMS.0058")):
        status, error_code, msg = rejected(**changes)
        assert (status, error_code) == (400, code), (changes, msg)
        assert wrong not in msg and ("AK/SK" in msg or "bucket" in msg)
    assert client.list_sync_tasks(ListSyncTasksRequest()).count == 0  # none of them was created

    task_id = live.create_task(src, dst, tenant=live.other)
    client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
    with pytest.raises(ClientRequestException) as exc:
        client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=StartSyncTaskReq(
            src_ak=live.src.access_key, src_sk=wrong, dst_ak=live.dst.access_key, dst_sk=live.dst.secret_key)))
    assert _error(exc) == (400, "OMS.0151")
    shown = client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms()))
    assert shown.status == "STOPPED"


def _wait_stopped(live: SyncLive, task_id: str) -> dict[str, object]:
    """Until the workers stop the task; its raw show_sync_task answer."""
    wait_for(lambda: live.client().show_sync_task(
        ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms())).status == "STOPPED", 30, "task stopped")
    return _raw(live.client().show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms())))


def test_a_destination_bucket_gone_stops_the_task_with_its_reason(sync_server: SyncLive,
                                                                 bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    live.wait_reconciled(task_id)
    assert live.dst.request("DELETE", f"/{dst}")[0] == 204
    put(live.src, src, "a.txt", b"abc")
    _events(live, task_id, "a.txt")

    shown = _wait_stopped(live, task_id)
    reason = shown["error_reason"]
    assert isinstance(reason, dict) and reason["error_code"] == "TRF.0058", shown
    assert "destination" in str(reason["error_msg"]) and "NoSuchBucket" in str(reason["error_msg"])
    assert shown["monthly_failure_object"] == 1  # the key it could not copy
    listed = live.client().list_sync_tasks(ListSyncTasksRequest())
    assert [t.status for t in listed.tasks if t.sync_task_id == task_id] == ["STOPPED"]
    [info] = [t for t in _raw(listed)["tasks"] if t["sync_task_id"] == task_id]  # type: ignore[union-attr]
    assert info["error_reason"] == reason
    failed = _signed(live, "GET", f"/v2/{{project_id}}/sync-tasks/{task_id}/failed-objects").json()
    assert [(o["key"], o["state"]) for o in failed["objects"]] == [("a.txt", "failed")]
    assert "TRF.0058" in failed["objects"][0]["reason"]
    with pytest.raises(ClientRequestException) as exc:
        _events(live, task_id, "a.txt")  # a stopped task tells the sender at once
    assert _error(exc) == (400, "OMS.0001")

    # Fixed, and started again: the reason is gone and the failed key is copied.
    live.dst.create_bucket(dst)
    live.client().start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=StartSyncTaskReq(
        src_ak=live.src.access_key, src_sk=live.src.secret_key, dst_ak=live.dst.access_key,
        dst_sk=live.dst.secret_key)))
    again = _raw(live.client().show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=_now_ms())))
    assert again["status"] == "SYNCHRONIZING" and "error_reason" not in again
    wait_for(lambda: get(live.dst, dst, "a.txt") == b"abc", 30, "the failed key copied after the start")


def test_a_source_bucket_gone_stops_the_task_at_reconciliation(sync_server: SyncLive,
                                                              bucket_factory: BucketFactory) -> None:
    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    live.wait_reconciled(task_id)
    assert live.src.request("DELETE", f"/{src}")[0] == 204
    live.ctx.repo.request_reconcile(task_id)  # what the periodic pass does every reconcile_seconds
    reason = _wait_stopped(live, task_id)["error_reason"]
    assert isinstance(reason, dict) and reason["error_code"] == "TRF.0155", reason
    assert str(reason["error_msg"]).startswith("source: ")


def test_keys_that_stop_working_stop_the_task(sync_server: SyncLive, bucket_factory: BucketFactory) -> None:
    from ferry.secrets import Secret
    from ferry.service.sync import SyncCredentials

    live = sync_server
    src, dst = _buckets(live, bucket_factory)
    task_id = live.create_task(src, dst)
    live.client().stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
    # Started with keys that no longer work (rotated since, or stored before creation checked them).
    wrong = "rotated-secret-key-0123456789"
    sealed = SyncCredentials(live.src.access_key, Secret(wrong), live.dst.access_key,
                             Secret(live.dst.secret_key)).seal(live.ctx.box)
    assert live.ctx.repo.start_task(live.tenant.project_id, task_id, sealed, time.time())
    reason = _wait_stopped(live, task_id)["error_reason"]
    assert isinstance(reason, dict) and reason["error_code"] == "TRF.0151", reason
    assert "SignatureDoesNotMatch" in str(reason["error_msg"]) and wrong not in json.dumps(reason)
