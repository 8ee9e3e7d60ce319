"""Migration tasks reading Azure Blob (Azurite) through the official OMS SDK: account key or connection string."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ferry_service import DST_REGION, FerryService, listing, overrides, s3_client, start_service, wait_task
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    CreateTaskReq,
    CreateTaskRequest,
    DstNodeReq,
    ShowTaskGroupRequest,
    SrcNodeReq,
    StartTaskReq,
    StartTaskRequest,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)
from sqlalchemy import select

from ferry.db.api_models import migration_tasks
from ferry.objects import ObjectMeta
from ferry.sandbox import AzuriteServer
from ferry.storage.azure import AzureBackend
from ferry.storage.azure_auth import account_credentials

pytestmark = pytest.mark.timeout(300)
MiB = 1024 * 1024
AZURE_REGION = "westeurope"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a record that cannot be formatted is not a leak
            self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, azurite: AzuriteServer, seaweed_a: Any, seaweed_b: Any,
        ) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp("ferry-azure")
    lines = _Lines()
    lines.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(lines)
    root.setLevel(logging.DEBUG)
    with pytest.MonkeyPatch.context() as mp:
        table = {**overrides(seaweed_a, seaweed_b), f"Azure/{AZURE_REGION}": azurite.blob_endpoint}
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(table))
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()
            root.removeHandler(lines)
            root.setLevel(old_level)
    text = "\n".join(lines.lines)
    assert "ferry." in text, "the log capture saw nothing of Ferry"
    assert azurite.secret_key not in text and "AccountKey=" not in text, "an Azure key appeared in a log line"


def _fill(azurite: AzuriteServer, container: str, bodies: dict[str, bytes], tier: str | None = None) -> None:
    async def go() -> None:
        creds = account_credentials(azurite.access_key, key=azurite.secret_key, endpoint=azurite.blob_endpoint)
        backend = AzureBackend(creds, container)
        try:
            for key, data in bodies.items():
                await backend.put(key, data, ObjectMeta(content_type="application/x-azure"), storage_class=tier)
        finally:
            await backend.close()

    asyncio.run(go())


def _task(src: SrcNodeReq, dst: Any, dbucket: str) -> CreateTaskRequest:
    return CreateTaskRequest(body=CreateTaskReq(
        task_type="prefix", src_node=src,
        dst_node=DstNodeReq(ak=dst.access_key, sk=dst.secret_key, bucket=dbucket, region=DST_REGION)))


@pytest.mark.parametrize("auth", ["account key", "connection string"])
def test_a_migration_task_copies_an_azure_container(
    svc: FerryService, azurite: AzuriteServer, seaweed_b: Any, bucket_factory: Any, auth: str,
) -> None:
    container, db = bucket_factory(azurite), bucket_factory(seaweed_b)
    names = [f"d{i % 3}/k{i:03d}" for i in range(40)] + ["a b/c", "a-b", "ü/ñ.txt", "empty", "dir/"]
    bodies = {k: b"" if k in ("empty", "dir/") else os.urandom(4096 + i) for i, k in enumerate(names)}
    bodies["big/part-edges"] = os.urandom(17 * MiB + 3)  # past the runner's multipart threshold
    _fill(azurite, container, bodies)
    _fill(azurite, container, {"cool/x": b"cool"}, tier="IA")
    bodies["cool/x"] = b"cool"
    if auth == "account key":
        src = SrcNodeReq(cloud_type="Azure", region=AZURE_REGION, ak=azurite.access_key, sk=azurite.secret_key,
                         bucket=container, object_key=[""])
    else:
        src = SrcNodeReq(cloud_type="Azure", region=AZURE_REGION, connection_string=azurite.connection_string,
                         bucket=container, object_key=[""])
    client = svc.client()
    created = client.create_task(_task(src, seaweed_b, db))
    assert azurite.secret_key not in created.raw_content.decode()
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert task.status == 5, task.error_reason
    n, total = len(bodies), sum(len(v) for v in bodies.values())
    assert (task.total_num, task.successful_num, task.failed_num) == (n, n, 0)
    assert task.complete_size == total and task.src_node.cloud_type == "Azure"
    raw = task.raw_content.decode()
    assert azurite.secret_key not in raw and "AccountKey" not in raw

    got = listing(seaweed_b, db)
    assert {k: v[0] for k, v in got.items()} == {k: len(v) for k, v in bodies.items()}
    dst = s3_client(seaweed_b)
    for key in ("a b/c", "ü/ñ.txt", "big/part-edges", "cool/x", "d1/k001"):
        obj = dst.get_object(Bucket=db, Key=key)
        assert obj["Body"].read() == bodies[key] and obj["ContentType"] == "application/x-azure", key
    with svc.service.engine.connect() as conn:
        stored = conn.execute(select(migration_tasks).where(migration_tasks.c.id == created.id)).mappings().one()
    assert azurite.secret_key not in json.dumps(dict(stored), default=str)
    for path in svc.service.data_dir.rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".json", ".log", ".txt"):
            assert azurite.secret_key not in path.read_text(errors="replace"), path


def test_an_archived_blob_fails_alone_with_its_reason(
    svc: FerryService, azurite: AzuriteServer, seaweed_b: Any, bucket_factory: Any,
) -> None:
    container, db = bucket_factory(azurite), bucket_factory(seaweed_b)
    _fill(azurite, container, {"warm": b"w"})
    _fill(azurite, container, {"frozen": b"f"}, tier="ARCHIVE")
    src = SrcNodeReq(cloud_type="Azure", region=AZURE_REGION, ak=azurite.access_key, sk=azurite.secret_key,
                     bucket=container, object_key=[""])
    client = svc.client()
    created = client.create_task(_task(src, seaweed_b, db))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert (task.total_num, task.successful_num, task.failed_num) == (2, 1, 1)
    written = listing(seaweed_b, db)
    failed_lists = [k for k in written if k.endswith(".failed_list.txt")]
    assert set(written) - set(failed_lists) == {"warm"} and len(failed_lists) == 1
    body = s3_client(seaweed_b).get_object(Bucket=db, Key=failed_lists[0])["Body"].read().decode()
    assert "frozen" in body and "warm" not in body

    # Rehydrated meanwhile, the failed blob is copied by a restart given the connection string instead of keys.
    async def rehydrate() -> None:
        creds = account_credentials(azurite.access_key, key=azurite.secret_key, endpoint=azurite.blob_endpoint)
        backend = AzureBackend(creds, container)
        try:
            await backend.restore("frozen", 1)
        finally:
            await backend.close()

    asyncio.run(rehydrate())
    client.start_task(StartTaskRequest(task_id=created.id, body=StartTaskReq(
        connection_string=azurite.connection_string, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
        migrate_failed_object=True)))
    wait_task(client, created.id, lambda t: t.status in (4, 5) and t.successful_num == 2)
    assert s3_client(seaweed_b).get_object(Bucket=db, Key="frozen")["Body"].read() == b"f"


@pytest.mark.parametrize("auth", ["account key", "connection string"])
def test_a_task_group_reads_an_azure_container(
    svc: FerryService, azurite: AzuriteServer, seaweed_b: Any, bucket_factory: Any, auth: str,
) -> None:
    container, db = bucket_factory(azurite), bucket_factory(seaweed_b)
    bodies = {f"g/{i:02d}": os.urandom(100 + i) for i in range(25)}
    _fill(azurite, container, bodies)
    client = svc.client()
    gid = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(cloud_type="Azure", region=AZURE_REGION, bucket=container, **(
            {"ak": azurite.access_key, "sk": azurite.secret_key} if auth == "account key"
            else {"connection_string": azurite.connection_string})),
        dst_node=TaskGroupDstNode(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, region=DST_REGION,
                                  bucket=db)))).group_id
    deadline = time.monotonic() + 120
    while (group := client.show_task_group(ShowTaskGroupRequest(group_id=gid))).status not in (4, 6):
        assert time.monotonic() < deadline, group
        time.sleep(0.2)
    # A group names its source cloud in upper case, as it does URLSOURCE.
    assert (group.status, group.src_node.cloud_type, group.total_num, group.success_num) == (6, "AZURE", 25, 25)
    assert azurite.secret_key not in group.raw_content.decode()
    # The group keeps its split lists under oms/ in the destination, as OMS does.
    got = {k: v for k, v in listing(seaweed_b, db).items() if not k.startswith("oms/")}
    assert {k: v[0] for k, v in got.items()} == {k: len(v) for k, v in bodies.items()}


def test_bad_azure_source_keys_are_refused_at_creation(svc: FerryService, azurite: AzuriteServer, seaweed_b: Any,
                                                       bucket_factory: Any) -> None:
    db = bucket_factory(seaweed_b)
    key = azurite.secret_key
    cases = [
        # (region, connection string, what the answer says)
        (AZURE_REGION, f"AccountName={azurite.access_key};AccountKey={key};Colour=blue", "unknown setting"),
        (AZURE_REGION, f"AccountName={azurite.access_key};AccountKey=not*base64", "not a base64"),
        # Not mapped by the operator: a caller's endpoint must be Azure's own, never an inner address.
        ("northeurope", f"AccountName=x1y2z3;AccountKey={key};BlobEndpoint=http://169.254.169.254/x1y2z3",
         "not one of Azure's public endpoints"),
    ]
    for region, text, said in cases:
        src = SrcNodeReq(cloud_type="Azure", region=region, connection_string=text, bucket="some-container",
                         object_key=[""])
        with pytest.raises(ClientRequestException) as refused:
            svc.client().create_task(_task(src, seaweed_b, db))
        err = refused.value
        assert (err.status_code, err.error_code) == (400, "OMS.0001") and said in err.error_msg, err.error_msg
        assert key not in err.error_msg and "not*base64" not in err.error_msg
    no_keys = SrcNodeReq(cloud_type="Azure", region=AZURE_REGION, bucket="some-container", object_key=[""])
    with pytest.raises(ClientRequestException) as refused:
        svc.client().create_task(_task(no_keys, seaweed_b, db))
    assert refused.value.status_code == 400
