"""Destination encryption with a KMS key (dst crypto_type KMS) for tasks and sync tasks, through the OMS SDK.

moto stands for the destination: it implements SSE-KMS (and KMS keys) as AWS does, which SeaweedFS does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from ferry_service import FerryService, fill, prefix_task, start_service, wait_task
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CreateSyncEventsRequest,
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    ShowTaskGroupRequest,
    StartSyncTaskReq,
    StartSyncTaskRequest,
    StartTaskReq,
    StartTaskRequest,
    StopSyncTaskRequest,
    SyncObjectReq,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)
from sync_live import SyncLive, sync_live, wait_for

from ferry.runner.sync import SyncSettings
from ferry.sandbox import MotoServer, S3Server, SeaweedServer

pytestmark = pytest.mark.timeout(240)
SYNC_SETTINGS = SyncSettings(
    reconcile_seconds=3600, tasks_refresh_seconds=0.1, lease_seconds=10, retry_base_seconds=0.1,
    retry_max_seconds=0.5, max_attempts=2, poll_seconds=0.2, node_id="kms-test",
)


def _s3(server: S3Server) -> Any:
    return boto3.client("s3", endpoint_url=server.endpoint, region_name=server.region,
                        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)


@pytest.fixture(scope="module")
def kms_key(moto: MotoServer) -> str:
    kms = boto3.client("kms", endpoint_url=moto.endpoint, region_name=moto.region,
                       aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key)
    key_id: str = kms.create_key(Description="ferry destination key")["KeyMetadata"]["KeyId"]
    return key_id


def _encryption(server: S3Server, bucket: str, key: str) -> tuple[str | None, str | None]:
    head = _s3(server).head_object(Bucket=bucket, Key=key)
    return head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, seaweed_a: SeaweedServer, moto: MotoServer
        ) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp("ferry-kms")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(
            {"Aliyun/cn-hangzhou": seaweed_a.endpoint, "HuaweiCloud/cn-north-4": moto.endpoint}))
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()


def test_task_writes_every_object_under_the_kms_key(svc: FerryService, seaweed_a: SeaweedServer, moto: MotoServer,
                                                    bucket_factory: Any, kms_key: str) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(moto)
    bodies = {f"k{i}.txt": f"body {i}".encode() * 50 for i in range(12)}
    fill(seaweed_a, src, bodies)
    req = prefix_task(seaweed_a, src, moto, dst)
    req.body.dst_node.crypto_type = "KMS"
    req.body.dst_node.kms_key_id = kms_key
    client = svc.client()
    task_id = client.create_task(req).id
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    assert (task.status, task.successful_num, task.failed_num) == (5, 12, 0)
    for key, body in bodies.items():
        sse, key_id = _encryption(moto, dst, key)
        assert sse == "aws:kms" and key_id is not None and kms_key in key_id, key
        assert _s3(moto).get_object(Bucket=dst, Key=key)["Body"].read() == body


def test_task_group_passes_the_kms_key_to_its_tasks(svc: FerryService, seaweed_a: SeaweedServer, moto: MotoServer,
                                                    bucket_factory: Any, kms_key: str) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(moto)
    fill(seaweed_a, src, {f"g/{i}.bin": bytes([i]) * 64 for i in range(5)})
    client = svc.client()
    group_id = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(cloud_type="Aliyun", region="cn-hangzhou", ak=seaweed_a.access_key,
                                  sk=seaweed_a.secret_key, bucket=src, object_key=["g/"]),
        dst_node=TaskGroupDstNode(ak=moto.access_key, sk=moto.secret_key, region="cn-north-4", bucket=dst,
                                  crypto_type="KMS", kms_key_id=kms_key)))).group_id
    wait_for(lambda: client.show_task_group(ShowTaskGroupRequest(group_id=group_id)).status in (4, 5, 6), 90,
             "the task group")
    group = client.show_task_group(ShowTaskGroupRequest(group_id=group_id))
    assert (group.status, group.success_num) == (6, 5)  # 6: completed
    for i in range(5):
        sse, key_id = _encryption(moto, dst, f"g/{i}.bin")
        assert sse == "aws:kms" and key_id is not None and kms_key in key_id


def test_task_without_kms_leaves_objects_unencrypted(svc: FerryService, seaweed_a: SeaweedServer,
                                                     moto: MotoServer, bucket_factory: Any) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(moto)
    fill(seaweed_a, src, {"plain.txt": b"plain"})
    client = svc.client()
    task_id = client.create_task(prefix_task(seaweed_a, src, moto, dst)).id
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    assert task.status == 5
    assert _encryption(moto, dst, "plain.txt") == (None, None)


@pytest.fixture(scope="module")
def sync_kms(seaweed_a: SeaweedServer, moto: MotoServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[SyncLive]:
    # sync_live maps AWS/us-east-1 to the source and HuaweiCloud/cn-north-4 to the destination (moto here).
    with sync_live(seaweed_a, moto, tmp_path_factory.mktemp("sync-kms"), SYNC_SETTINGS) as live:  # type: ignore[arg-type]
        yield live


def test_sync_task_encrypts_reconciled_and_event_copies(sync_kms: SyncLive, seaweed_a: SeaweedServer,
                                                        moto: MotoServer, bucket_factory: Any, kms_key: str) -> None:
    live = sync_kms
    src, dst = bucket_factory(seaweed_a), bucket_factory(moto)
    fill(seaweed_a, src, {"before.txt": b"existed before the task"})
    task_id = live.create_task(src, dst, dst_crypto_type="KMS", dst_kms_key_id=kms_key)
    client = live.client()

    def present(key: str) -> bool:
        return key in {o["Key"] for o in _s3(moto).list_objects_v2(Bucket=dst).get("Contents", [])}

    wait_for(lambda: present("before.txt"), 30, "the reconciled copy")
    fill(seaweed_a, src, {"after event.txt": b"sent by an event"})
    client.create_sync_events(CreateSyncEventsRequest(
        sync_task_id=task_id, body=SyncObjectReq(object_keys=["after%20event.txt"])))
    wait_for(lambda: present("after event.txt"), 30, "the event's copy")
    for key in ("before.txt", "after event.txt"):
        sse, key_id = _encryption(moto, dst, key)
        assert sse == "aws:kms" and key_id is not None and kms_key in key_id, key

    client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
    creds = StartSyncTaskReq(src_ak=seaweed_a.access_key, src_sk=seaweed_a.secret_key, dst_ak=moto.access_key,
                             dst_sk=moto.secret_key, dst_crypto_type="KMS",
                             dst_kms_key_id="f" * 8 + "-ffff-ffff-ffff-" + "f" * 12)
    with pytest.raises(ClientRequestException) as exc:
        client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=creds))
    assert exc.value.status_code == 400 and "KMS key" in exc.value.error_msg
    creds.dst_kms_key_id = kms_key
    client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=creds))


def test_kms_on_a_store_that_cannot_encrypt_fails_the_objects_and_keeps_nothing(
        tmp_path: Path, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, bucket_factory: Any) -> None:
    """SeaweedFS (no KMS configured) refuses SSE-KMS writes: each object fails with the reason, nothing lands
    unencrypted; a restart may not switch the task to another key."""
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {"a.txt": b"a", "b.txt": b"b"})
    key_id = "1" * 8 + "-1111-1111-1111-" + "1" * 12
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(
            {"Aliyun/cn-hangzhou": seaweed_a.endpoint, "HuaweiCloud/cn-north-4": seaweed_b.endpoint}))
        started = start_service(tmp_path, f"sqlite:///{tmp_path / 'ferry.db'}")
        try:
            client = started.value.client()
            req = prefix_task(seaweed_a, src, seaweed_b, dst)
            req.body.dst_node.crypto_type = "KMS"
            req.body.dst_node.kms_key_id = key_id
            task_id = client.create_task(req).id
            task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
            assert (task.status, task.successful_num, task.failed_num) == (4, 0, 2)
            assert _s3(seaweed_b).list_objects_v2(Bucket=dst).get("KeyCount", 0) == 0
            # The failed list could not be written there either (also under KMS): said so, and kept locally;
            # the task's outcome is still that of its objects.
            record = task.failed_object_record
            assert (record.list_file_key, record.error_code) == (None, "S3M.0307"), record
            assert task.error_reason.error_code == "FERRY.0422"
            failed = (tmp_path / "records").rglob("failed.jsonl")
            reasons = [json.loads(line)["reason"] for path in failed for line in path.read_text().splitlines()]
            assert sorted(r.rsplit(": ", 1)[0] for r in reasons) == [f"put s3://{dst}/a.txt", f"put s3://{dst}/b.txt"]

            # A restart re-supplies keys, not encryption: another KMS key is refused, the task's own is fine.
            restart = StartTaskReq(src_ak=seaweed_a.access_key, src_sk=seaweed_a.secret_key,
                                   dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
                                   dst_crypto_type="KMS", dst_kms_key_id="2" * 8 + "-2222-2222-2222-" + "2" * 12)
            with pytest.raises(ClientRequestException) as exc:
                client.start_task(StartTaskRequest(task_id=task_id, body=restart))
            assert exc.value.status_code == 400 and "KMS key" in exc.value.error_msg
            restart.dst_kms_key_id = key_id
            client.start_task(StartTaskRequest(task_id=task_id, body=restart))
        finally:
            started.close()
