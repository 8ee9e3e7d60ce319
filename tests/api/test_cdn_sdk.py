"""CDN mode through the official OMS SDK: migration tasks, task groups and sync tasks whose `source_cdn` fetches
the bytes through the local CDN (tests/cdn_server.py), and the errors and failures a user sees."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ferry_service import FerryService, fill, overrides, prefix_task, start_service, wait_task
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CreateSyncEventsRequest,
    CreateSyncTaskReq,
    CreateSyncTaskRequest,
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    ListSyncTasksRequest,
    ShowSyncTaskRequest,
    ShowTaskGroupRequest,
    SourceCdnReq,
    StartSyncTaskReq,
    StartSyncTaskRequest,
    StartTaskReq,
    StartTaskRequest,
    StopSyncTaskRequest,
    SyncObjectReq,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)
from live_server import next_second

from cdn_server import CdnConfig, CdnTestServer
from ferry.db.job_repo import JobRepo
from ferry.db.task_repo import TaskRepo
from ferry.sandbox import SeaweedServer

pytestmark = pytest.mark.timeout(300)
SRC_REGION, DST_REGION = "cn-hangzhou", "cn-north-4"
CDN_KEY = "cdnSecret" + os.urandom(6).hex()
OBJECTS = {"plain.txt": b"hello through the cdn", "odd key+plus%25/ünï.bin": os.urandom(70_000), "empty": b""}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def logs() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
        logs: _Capture) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp("ferry-cdn")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
        # The local CDN listens on loopback: the operator allows that host explicitly.
        mp.setenv("FERRY_CDN_ALLOWED_HOSTS", "127.0.0.1")
        mp.setenv("FERRY_SYNC_WORKERS", "thread")
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()
    # No CDN key in the data directory in plaintext, nor in any log line.
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert CDN_KEY.encode() not in path.read_bytes(), path
    assert CDN_KEY not in "\n".join(logs.lines)


@contextlib.contextmanager
def cdn(src: SeaweedServer, bucket: str, kind: str) -> Iterator[CdnTestServer]:
    with CdnTestServer(src, bucket, CdnConfig(auth_type=kind, key=CDN_KEY, ak=src.access_key, sk=src.secret_key,
                                              bucket=bucket)) as server:
        yield server


def _source_cdn(server: CdnTestServer, kind: str, key: str | None = CDN_KEY) -> SourceCdnReq:
    return SourceCdnReq(authentication_type=kind, domain=server.domain, protocol="http", authentication_key=key)


def _buckets(svc: FerryService, a: SeaweedServer, b: SeaweedServer, tag: str) -> tuple[str, str]:
    suffix = os.urandom(3).hex()
    return a.create_bucket(f"cdn-{tag}-src-{suffix}"), b.create_bucket(f"cdn-{tag}-dst-{suffix}")


def _get(server: SeaweedServer, bucket: str, key: str) -> bytes | None:
    status, body = server.request("GET", f"/{bucket}/{key}")
    return body if status == 200 else None


def _failed_reasons(svc: FerryService, task_id: int) -> dict[str, str | None]:
    row = TaskRepo(svc.service.engine).get(task_id)
    assert row is not None and row.job_id is not None
    return {r.key: r.reason for r in JobRepo(svc.service.engine).iter_results(row.job_id, "failed")}


def _error(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientRequestException) as info:
        call()
    return info.value.status_code, info.value.error_code, info.value.error_msg


def test_a_migration_task_fetches_through_the_cdn_and_shows_no_key(
    svc: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
) -> None:
    src, dst = _buckets(svc, seaweed_a, seaweed_b, "task")
    fill(seaweed_a, src, OBJECTS)
    client = svc.client()
    with cdn(seaweed_a, src, "ALIYUN_OSS_C") as server:
        req = prefix_task(seaweed_a, src, seaweed_b, dst, source_cdn=_source_cdn(server, "ALIYUN_OSS_C"),
                          consistency_check="crc64")
        task_id = client.create_task(req).id
        task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
        assert (task.status, task.successful_num, task.failed_num) == (5, len(OBJECTS), 0)
        assert task.source_cdn.domain == server.domain and task.source_cdn.authentication_type == "ALIYUN_OSS_C"
        assert CDN_KEY not in json.dumps(task.to_dict(), default=str)
        assert len(server.requests) >= len(OBJECTS) and server.refusals == []
    for key, body in OBJECTS.items():
        assert _get(seaweed_b, dst, key) == body


def test_bad_cdn_settings_are_oms_errors(svc: FerryService, seaweed_a: SeaweedServer,
                                         seaweed_b: SeaweedServer) -> None:
    src, dst = _buckets(svc, seaweed_a, seaweed_b, "bad")
    client = svc.client()

    def create(**cdn: Any) -> Any:
        source = SourceCdnReq(**{"authentication_type": "ALIYUN_OSS_A", "domain": "cdn.example.com",
                                 "protocol": "https", **cdn})
        return client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, source_cdn=source))

    for kind in ("ALIYUN_OSS_A", "ALIYUN_OSS_B", "ALIYUN_OSS_C", "TENCENT_COS_A", "TENCENT_COS_B", "TENCENT_COS_C",
                 "TENCENT_COS_D", "AZURE_SAS_TOKEN"):
        assert _error(lambda k=kind: create(authentication_type=k))[:2] == (400, "OMS.1032")
        next_second()
    status, code, msg = _error(lambda: create(authentication_type="ALIYUN_OSS_F", authentication_key=CDN_KEY))
    assert (status, code) == (400, "OMS.0001") and CDN_KEY not in msg
    status, code, msg = _error(lambda: create(domain="cdn.example.com/path", authentication_key=CDN_KEY))
    assert (status, code) == (400, "OMS.0001") and CDN_KEY not in msg
    group = CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(ak=seaweed_a.access_key, sk=seaweed_a.secret_key, region=SRC_REGION, bucket=src,
                                  cloud_type="Aliyun"),
        dst_node=TaskGroupDstNode(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, region=DST_REGION, bucket=dst),
        source_cdn=SourceCdnReq(authentication_type="TENCENT_COS_D", domain="cdn.example.com", protocol="https")))
    assert _error(lambda: client.create_task_group(group))[:2] == (400, "OMS.1032")


def test_stale_cdn_bytes_and_a_wrong_key_fail_objects_with_their_reasons(
    svc: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
) -> None:
    src, dst = _buckets(svc, seaweed_a, seaweed_b, "fail")
    fill(seaweed_a, src, OBJECTS)
    client = svc.client()
    with cdn(seaweed_a, src, "TENCENT_COS_D") as server:
        server.tampered["plain.txt"] = b"stale cache of another version"
        task_id = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst,
                                                 source_cdn=_source_cdn(server, "TENCENT_COS_D"))).id
        task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
        assert (task.status, task.successful_num, task.failed_num) == (4, len(OBJECTS) - 1, 1)
        reason = _failed_reasons(svc, task_id)["plain.txt"]
        assert reason is not None and reason.startswith("COMPARE_SRC_AND_CDN_FAILURE: ")
        assert _get(seaweed_b, dst, "plain.txt") is None

        next_second()
        src2, dst2 = _buckets(svc, seaweed_a, seaweed_b, "wrong")
        fill(seaweed_a, src2, OBJECTS)
    with cdn(seaweed_a, src2, "TENCENT_COS_D") as server:
        wrong = client.create_task(prefix_task(seaweed_a, src2, seaweed_b, dst2,
                                               source_cdn=_source_cdn(server, "TENCENT_COS_D", "notTheKey123"))).id
        task, _ = wait_task(client, wrong, lambda t: t.status in (4, 5))
        assert (task.status, task.failed_num) == (4, len(OBJECTS))
        assert all("the CDN refused the signed URL" in (r or "") for r in _failed_reasons(svc, wrong).values())
        assert server.refusals and {s for s, _ in server.refusals} == {403}
        # A restart must re-supply the key; with the right one, the failed objects copy.
        body = {"src_ak": seaweed_a.access_key, "src_sk": seaweed_a.secret_key, "dst_ak": seaweed_b.access_key,
                "dst_sk": seaweed_b.secret_key, "migrate_failed_object": True}
        assert _error(lambda: client.start_task(StartTaskRequest(task_id=wrong, body=StartTaskReq(**body))))[:2] \
            == (400, "OMS.1032")
        client.start_task(StartTaskRequest(task_id=wrong, body=StartTaskReq(
            **body, source_cdn_authentication_key=CDN_KEY)))
        task, _ = wait_task(client, wrong, lambda t: t.status == 5)
    for key, data in OBJECTS.items():
        assert _get(seaweed_b, dst2, key) == data


def test_a_task_group_fetches_through_the_cdn(svc: FerryService, seaweed_a: SeaweedServer,
                                              seaweed_b: SeaweedServer) -> None:
    src, dst = _buckets(svc, seaweed_a, seaweed_b, "group")
    fill(seaweed_a, src, OBJECTS)
    client = svc.client()
    with cdn(seaweed_a, src, "TENCENT_COS_B") as server:
        gid = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
            src_node=TaskGroupSrcNode(ak=seaweed_a.access_key, sk=seaweed_a.secret_key, region=SRC_REGION,
                                      bucket=src, cloud_type="Aliyun"),
            dst_node=TaskGroupDstNode(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, region=DST_REGION,
                                      bucket=dst),
            source_cdn=_source_cdn(server, "TENCENT_COS_B")))).group_id
        deadline = time.monotonic() + 120
        while (g := client.show_task_group(ShowTaskGroupRequest(group_id=gid))).status != 6:
            assert g.status not in (3, 4, 5) and time.monotonic() < deadline, g
            time.sleep(0.2)
        assert (g.success_num, g.fail_num) == (len(OBJECTS), 0)
        assert g.source_cdn.domain == server.domain and CDN_KEY not in json.dumps(g.to_dict(), default=str)
        fetched = {p.partition("?")[0].split("/", 3)[-1] for p in server.requests}
        assert "plain.txt" in fetched and server.refusals == []
    for key, body in OBJECTS.items():
        assert _get(seaweed_b, dst, key) == body


@pytest.mark.parametrize("kind", ["ALIYUN_OSS_C", "TENCENT_COS_D"])
def test_a_sync_task_copies_events_and_reconciles_through_the_cdn(
    kind: str, svc: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
) -> None:
    src, dst = _buckets(svc, seaweed_a, seaweed_b, "sync")
    fill(seaweed_a, src, {"before/" + k: v for k, v in OBJECTS.items()})
    client = svc.client()

    def month() -> Any:
        return client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))

    def wait(check: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    with cdn(seaweed_a, src, kind) as server:
        keys = {"src_ak": seaweed_a.access_key, "src_sk": seaweed_a.secret_key, "dst_ak": seaweed_b.access_key,
                "dst_sk": seaweed_b.secret_key}
        task_id = client.create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
            src_cloud_type="Aliyun", src_region=SRC_REGION, src_bucket=src, dst_region=DST_REGION, dst_bucket=dst,
            source_cdn=_source_cdn(server, kind), **keys))).sync_task_id
        # The initial reconciliation copies what is there, through the CDN.
        wait(lambda: all(_get(seaweed_b, dst, "before/" + k) == v for k, v in OBJECTS.items()), "initial copy")
        # Events copy new objects; a stale CDN copy is a failure, never a silent copy.
        fill(seaweed_a, src, {"new.txt": b"new object", "stale.txt": b"the bucket's version"})
        server.tampered["stale.txt"] = b"an old cached version"
        client.create_sync_events(CreateSyncEventsRequest(sync_task_id=task_id, body=SyncObjectReq(
            object_keys=["new.txt", "stale.txt"])))
        wait(lambda: _get(seaweed_b, dst, "new.txt") == b"new object", "event copy")
        wait(lambda: month().monthly_failure_object >= 1, "stale object counted as failed")
        assert _get(seaweed_b, dst, "stale.txt") is None
        # Stopped, then started again: the key must be re-supplied; the restart reconciles.
        client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
        fill(seaweed_a, src, {"later.txt": b"written while stopped"})
        server.tampered.clear()
        assert _error(lambda: client.start_sync_task(StartSyncTaskRequest(
            sync_task_id=task_id, body=StartSyncTaskReq(**keys))))[:2] == (400, "OMS.1032")
        client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=StartSyncTaskReq(
            **keys, source_cdn_authentication_key=CDN_KEY)))
        wait(lambda: _get(seaweed_b, dst, "later.txt") == b"written while stopped", "reconciliation")
        wait(lambda: _get(seaweed_b, dst, "stale.txt") == b"the bucket's version", "stale object retried")
        assert server.refusals == []
        shown = client.list_sync_tasks(ListSyncTasksRequest(limit=100))
        mine = [t for t in shown.tasks if t.sync_task_id == task_id]
        assert mine[0].source_cdn.authentication_type == kind
        assert CDN_KEY not in json.dumps(shown.to_dict(), default=str)
