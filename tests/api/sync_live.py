"""Test helper: a live API with sync tasks and their workers over two SeaweedFS servers, driven by the OMS SDK."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests
from huaweicloudsdkoms.v2 import CreateSyncTaskReq, CreateSyncTaskRequest, OmsClient
from live_server import ShiftedClock, Tenant, build_services, oms_client, serve, stop
from sdk_signing import signed_sdk_request

from ferry.api.app import create_app
from ferry.db.database import open_database
from ferry.runner.sync import SyncBackground, SyncSettings
from ferry.sandbox import SeaweedServer
from ferry.secrets import SecretBox
from ferry.service.sync import SyncContext, build_sync_service

SRC_REGION = "us-east-1"  # AWS/us-east-1 -> the source SeaweedFS
DST_REGION = "cn-north-4"  # HuaweiCloud/cn-north-4 -> the destination SeaweedFS


@dataclass
class SyncLive:
    url: str
    tenant: Tenant
    other: Tenant
    src: SeaweedServer
    dst: SeaweedServer
    ctx: SyncContext
    background: SyncBackground

    def client(self, tenant: Tenant | None = None) -> OmsClient:
        t = tenant or self.tenant
        return oms_client(self.url, t.ak, t.sk, t.project_id)

    def task_req(self, src_bucket: str, dst_bucket: str, **extra: object) -> CreateSyncTaskReq:
        return CreateSyncTaskReq(
            src_cloud_type="AWS", src_region=SRC_REGION, src_bucket=src_bucket,
            src_ak=self.src.access_key, src_sk=self.src.secret_key,
            dst_ak=self.dst.access_key, dst_sk=self.dst.secret_key,
            dst_region=DST_REGION, dst_bucket=dst_bucket, **extra,
        )

    def create_task(self, src_bucket: str, dst_bucket: str, tenant: Tenant | None = None, **extra: object) -> str:
        resp = self.client(tenant).create_sync_task(
            CreateSyncTaskRequest(body=self.task_req(src_bucket, dst_bucket, **extra))
        )
        task_id: str = resp.sync_task_id
        return task_id

    def wait_reconciled(self, task_id: str, after: float = 0.0, timeout: float = 30.0) -> None:
        """Until the task's reconciliation has finished (at a time later than `after`)."""

        def done() -> bool:
            row = self.ctx.repo.get_task(task_id)
            return row is not None and row.reconciled_at is not None and row.reconciled_at > after

        wait_for(done, timeout, f"reconciliation of {task_id}")


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def put(server: SeaweedServer, bucket: str, key: str, data: bytes, headers: dict[str, str] | None = None) -> None:
    status, body = server.request("PUT", f"/{bucket}/{key}", body=data, headers=headers)
    assert status == 200, (status, body[:200])


def get(server: SeaweedServer, bucket: str, key: str) -> bytes | None:
    status, body = server.request("GET", f"/{bucket}/{key}")
    if status == 404:
        return None
    assert status == 200, (status, body[:200])
    return body


def encoded(key: str) -> str:
    return quote(key, safe="")


def overrides(src: SeaweedServer, dst: SeaweedServer) -> str:
    return json.dumps({f"AWS/{SRC_REGION}": src.endpoint, f"HuaweiCloud/{DST_REGION}": dst.endpoint})


@contextmanager
def env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def sync_live(src: SeaweedServer, dst: SeaweedServer, state: Path, settings: SyncSettings, *,
              run_workers: bool = True, more_endpoints: dict[str, str] | None = None) -> Iterator[SyncLive]:
    """The API and (unless `run_workers` is false: events then stay pending) the sync workers; `more_endpoints`
    adds "Cloud/region" entries to the operator's endpoint table (an Azurite for Azure/eastus, say)."""
    table = {**json.loads(overrides(src, dst)), **(more_endpoints or {})}
    with env(FERRY_ENDPOINT_OVERRIDES=json.dumps(table)):
        engine = open_database(f"sqlite:///{state / 'ferry.db'}")
        box = SecretBox(os.urandom(32))
        ctx, background = build_sync_service(engine, box, settings)
        tenant, other = Tenant(), Tenant()
        services = dataclasses.replace(build_services([tenant, other], ShiftedClock(), []), sync=ctx)
        running = serve(create_app(services))
        if run_workers:
            background.start()
        try:
            yield SyncLive(running.url, tenant, other, src, dst, ctx, background)
        finally:
            if run_workers:
                background.stop()
            stop(running)
            engine.dispose()


def signed(live: SyncLive, method: str, path: str, *, body: object = None,
           query: list[tuple[str, object]] | None = None, tenant: Tenant | None = None) -> requests.Response:
    """A request signed like the SDK's, for Ferry's extension routes (`{project_id}` in `path` is filled in)."""
    t = tenant or live.tenant
    host = live.url.removeprefix("http://")
    raw = json.dumps(body).encode() if body is not None else None
    req = signed_sdk_request(ak=t.ak, sk=t.sk, project_id=t.project_id, method=method, path=path, body=raw,
                             host=host, query=query)
    return requests.request(method, f"{live.url}{req.uri}", headers=req.header_params, data=raw, timeout=30)


def s3_event(bucket: str, *keys: str, name: str = "ObjectCreated:Put") -> dict[str, object]:
    """An S3 event notification (the shape AWS documents and MinIO sends) with one record per key."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2024-01-01T00:00:00.000Z", "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": 3, "eTag": "0" * 32}},
    } for key in keys]}
