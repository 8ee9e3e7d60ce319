"""`enable_restore` on migration tasks and task groups, through the OMS SDK, with moto as an AWS source that has
real archive semantics: a GLACIER object refuses GET until it is restored (moto restores at once)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from ferry_service import FerryService, fill, prefix_task, s3_client, start_service, wait_task
from huaweicloudsdkoms.v2 import (
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    ShowTaskGroupRequest,
    ShowTaskRequest,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)
from sync_live import wait_for

from ferry.sandbox import MotoServer, SeaweedServer

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, seaweed_a: SeaweedServer, moto: MotoServer
        ) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp("ferry-restore")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(
            {"AWS/us-east-1": moto.endpoint, "HuaweiCloud/cn-north-4": seaweed_a.endpoint}))
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()


def _archive(moto: MotoServer, bucket: str, bodies: dict[str, bytes]) -> None:
    client = s3_client(moto)
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=key, Body=body, StorageClass="GLACIER")


def _aws_task(moto: MotoServer, src: str, seaweed: SeaweedServer, dst: str, **extra: Any) -> Any:
    req = prefix_task(moto, src, seaweed, dst, **extra)
    req.body.src_node.cloud_type, req.body.src_node.region = "AWS", "us-east-1"
    return req


@pytest.mark.parametrize("restore", [True, False])
def test_a_task_restores_archived_objects_or_fails_them_at_once(
        svc: FerryService, moto: MotoServer, seaweed_a: SeaweedServer, bucket_factory: Any, restore: bool) -> None:
    src, dst = bucket_factory(moto), bucket_factory(seaweed_a)
    cold = {f"cold/{i}.bin": bytes([i]) * (100 + i) for i in range(4)}
    hot = {f"hot/{i}.txt": f"hot {i}".encode() for i in range(3)}
    _archive(moto, src, cold)
    fill(moto, src, hot)
    client = svc.client()
    task_id = client.create_task(_aws_task(moto, src, seaweed_a, dst, enable_restore=restore)).id
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    shown = json.loads(client.show_task(ShowTaskRequest(task_id=task_id)).raw_content)
    assert shown["restoring_num"] == 0 and shown["enable_restore"] is restore
    got = s3_client(seaweed_a)
    copied = {o["Key"] for o in got.list_objects_v2(Bucket=dst).get("Contents", [])}
    if restore:
        assert (task.status, task.successful_num, task.failed_num) == (5, 7, 0)
        assert copied == set(cold) | set(hot)
        for key, body in cold.items():
            assert got.get_object(Bucket=dst, Key=key)["Body"].read() == body
    else:
        assert (task.status, task.successful_num, task.failed_num) == (4, 3, 4)
        lists = {k for k in copied if k.startswith("oms/task/")}
        assert copied - lists == set(hot) and len(lists) == 1
        failed = got.get_object(Bucket=dst, Key=lists.pop())["Body"].read().decode()
        assert all(k in failed for k in cold) and "enable_restore" in failed, failed


def test_a_task_group_passes_enable_restore_to_its_tasks(svc: FerryService, moto: MotoServer,
                                                        seaweed_a: SeaweedServer, bucket_factory: Any) -> None:
    src, dst = bucket_factory(moto), bucket_factory(seaweed_a)
    cold = {f"g/{i}.bin": bytes([i]) * 64 for i in range(5)}
    _archive(moto, src, cold)
    client = svc.client()
    group_id = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(cloud_type="AWS", region="us-east-1", ak=moto.access_key, sk=moto.secret_key,
                                  bucket=src, object_key=["g/"]),
        dst_node=TaskGroupDstNode(ak=seaweed_a.access_key, sk=seaweed_a.secret_key, region="cn-north-4",
                                  bucket=dst),
        enable_restore=True))).group_id
    wait_for(lambda: client.show_task_group(ShowTaskGroupRequest(group_id=group_id)).status in (4, 5, 6), 90,
             "the task group")
    group = client.show_task_group(ShowTaskGroupRequest(group_id=group_id))
    assert (group.status, group.success_num) == (6, 5)  # 6: completed
    assert json.loads(group.raw_content)["restoring_num"] == 0
    for key, body in cold.items():
        assert s3_client(seaweed_a).get_object(Bucket=dst, Key=key)["Body"].read() == body
