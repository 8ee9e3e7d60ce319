"""A sync task whose source is Azure Blob (Azurite), through the official OMS SDK: events, reconciliation, restore."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CreateSyncEventsRequest,
    CreateSyncTaskReq,
    CreateSyncTaskRequest,
    ShowSyncTaskRequest,
    StartSyncTaskReq,
    StartSyncTaskRequest,
    StopSyncTaskRequest,
    SyncObjectReq,
)
from sync_live import DST_REGION, SyncLive, encoded, get, sync_live, wait_for

from ferry.objects import ObjectMeta
from ferry.runner.sync import SyncSettings
from ferry.sandbox import AzuriteServer, S3Server, SeaweedServer
from ferry.storage.azure import AzureBackend
from ferry.storage.azure_auth import account_credentials

SETTINGS = SyncSettings(
    reconcile_seconds=3600, tasks_refresh_seconds=0.1, lease_seconds=10, retry_base_seconds=0.1,
    retry_max_seconds=0.5, max_attempts=3, restore_poll_seconds=0.3, poll_seconds=0.2, node_id="azure-sdk-test",
)
AZURE_REGION = "eastus"


@pytest.fixture(autouse=True)
def _delete_tasks_after(azure_live: SyncLive) -> Iterator[None]:
    yield  # a project holds at most 5 sync tasks
    for tenant in (azure_live.tenant, azure_live.other):
        rows, _ = azure_live.ctx.repo.list_tasks(tenant.project_id, None, 100, 0)
        for row in rows:
            azure_live.ctx.repo.delete_task(tenant.project_id, row.id)


@pytest.fixture(scope="module")
def azure_live(azurite: AzuriteServer, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncLive]:
    with sync_live(seaweed_a, seaweed_b, tmp_path_factory.mktemp("sync-azure"), SETTINGS,
                   more_endpoints={f"Azure/{AZURE_REGION}": azurite.blob_endpoint}) as server:
        yield server


def _put(azurite: AzuriteServer, container: str, blobs: dict[str, bytes], tier: str | None = None) -> None:
    async def go() -> None:
        creds = account_credentials(azurite.access_key, key=azurite.secret_key, endpoint=azurite.blob_endpoint)
        backend = AzureBackend(creds, container)
        try:
            for key, data in blobs.items():
                await backend.put(key, data, ObjectMeta(content_type="text/x-azure", user={"x-colour": "blue"}),
                                  storage_class=tier)
        finally:
            await backend.close()

    asyncio.run(go())


def _req(azurite: AzuriteServer, live: SyncLive, src: str, dst: str, **extra: object) -> CreateSyncTaskReq:
    return CreateSyncTaskReq(
        src_cloud_type="Azure", src_region=AZURE_REGION, src_bucket=src, src_ak=azurite.access_key,
        src_sk=azurite.secret_key, dst_ak=live.dst.access_key, dst_sk=live.dst.secret_key, dst_region=DST_REGION,
        dst_bucket=dst, **extra)


def _month(live: SyncLive, task_id: str) -> dict[str, int]:
    r = live.client().show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))
    return {"success": r.monthly_success_object, "failure": r.monthly_failure_object, "skip": r.monthly_skip_object}


def test_an_azure_source_syncs_events_and_reconciles(
    azure_live: SyncLive, azurite: AzuriteServer, bucket_factory: Callable[[S3Server], str],
) -> None:
    live = azure_live
    src, dst = bucket_factory(azurite), bucket_factory(live.dst)
    before = {f"old/{i:02d}": f"old {i}".encode() for i in range(12)} | {"unicod\u00e9/a b+c%d.txt": b"odd"}
    _put(azurite, src, before)
    client = live.client()
    task_id = client.create_sync_task(CreateSyncTaskRequest(
        body=_req(azurite, live, src, dst, enable_metadata_migration=True))).sync_task_id
    # The first reconciliation is the initial full copy.
    wait_for(lambda: all(get(live.dst, dst, k) == v for k, v in before.items()), 30, "initial full copy")
    live.wait_reconciled(task_id)

    _put(azurite, src, {"new/event.txt": b"by event"})
    client.create_sync_events(CreateSyncEventsRequest(
        sync_task_id=task_id, body=SyncObjectReq(object_keys=[encoded("new/event.txt")])))
    wait_for(lambda: get(live.dst, dst, "new/event.txt") == b"by event", 30, "event copied")
    status, _ = live.dst.request("HEAD", f"/{dst}/new/event.txt")
    assert status == 200

    # Without events: a restart reconciles what changed (a new blob, one rewritten with another size).
    _put(azurite, src, {"new/quiet.txt": b"no event", "old/00": b"changed size"})
    client.stop_sync_task(StopSyncTaskRequest(sync_task_id=task_id))
    client.start_sync_task(StartSyncTaskRequest(sync_task_id=task_id, body=StartSyncTaskReq(
        src_ak=azurite.access_key, src_sk=azurite.secret_key, dst_ak=live.dst.access_key,
        dst_sk=live.dst.secret_key)))
    wait_for(lambda: get(live.dst, dst, "new/quiet.txt") == b"no event", 30, "reconciliation copy")
    wait_for(lambda: get(live.dst, dst, "old/00") == b"changed size", 30, "changed blob re-copied")
    live.wait_reconciled(task_id)
    assert _month(live, task_id)["failure"] == 0

    # Metadata came along: Content-Type and the user metadata, hyphenated name and all.
    from ferry.storage.s3 import S3Backend

    async def head() -> ObjectMeta | None:
        b = S3Backend(live.dst.endpoint, "us-east-1", live.dst.access_key, live.dst.secret_key, dst)
        try:
            return (await b.head("new/event.txt")).meta
        finally:
            await b.close()

    meta = asyncio.run(head())
    assert meta is not None and meta.content_type == "text/x-azure" and meta.user.get("x-colour") == "blue"
    shown = client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))
    assert azurite.secret_key not in shown.raw_content.decode()
    assert azurite.access_key not in shown.raw_content.decode()


def test_an_archived_azure_blob_is_rehydrated_then_copied(
    azure_live: SyncLive, azurite: AzuriteServer, bucket_factory: Callable[[S3Server], str],
) -> None:
    live = azure_live
    src, dst = bucket_factory(azurite), bucket_factory(live.dst)
    client = live.client()
    task_id = client.create_sync_task(CreateSyncTaskRequest(
        body=_req(azurite, live, src, dst, enable_restore=True))).sync_task_id
    live.wait_reconciled(task_id)
    _put(azurite, src, {"frozen.bin": b"from the archive"}, tier="ARCHIVE")
    client.create_sync_events(CreateSyncEventsRequest(
        sync_task_id=task_id, body=SyncObjectReq(object_keys=["frozen.bin"])))
    # The copy meets 409 BlobArchived, the task asks for a rehydration (Set Blob Tier), and copies it once back.
    wait_for(lambda: get(live.dst, dst, "frozen.bin") == b"from the archive", 30, "rehydrated blob copied")


def test_wrong_azure_keys_or_container_are_refused_at_creation(
    azure_live: SyncLive, azurite: AzuriteServer, bucket_factory: Callable[[S3Server], str],
) -> None:
    live = azure_live
    src, dst = bucket_factory(azurite), bucket_factory(live.dst)
    wrong = "d3JvbmcgYWNjb3VudCBrZXkgZm9yIGEgdGVzdCBvZiBmZXJyeQ=="
    for changes, code in (({"src_sk": wrong}, ("OMS.0151", "OMS.0152")), ({"src_bucket": "no-such-container"},
                                                                         ("OMS.0155",))):
        req = _req(azurite, live, src, dst)
        for name, value in changes.items():
            setattr(req, name, value)
        with pytest.raises(ClientRequestException) as exc:
            live.client(live.other).create_sync_task(CreateSyncTaskRequest(body=req))
        assert exc.value.status_code == 400 and exc.value.error_code in code, exc.value.error_msg
        assert wrong not in exc.value.error_msg and azurite.secret_key not in exc.value.error_msg
