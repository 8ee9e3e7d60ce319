"""Test helper: the real Ferry service (database, runner, API) on 127.0.0.1, on SQLite or a throwaway PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huaweicloudsdkoms.v2 import (
    CreateTaskReq,
    CreateTaskRequest,
    DstNodeReq,
    OmsClient,
    ShowTaskRequest,
    SrcNodeReq,
)
from live_server import oms_client, serve, stop

from ferry.runner.migration import RunnerSettings
from ferry.serve import Service, build
from ferry.service.credentials import create_credential
from ferry.service.tasks import TaskLimits

SRC_REGION, DST_REGION = "cn-hangzhou", "cn-north-4"
FAST_RUNNER = RunnerSettings(poll_interval=0.2, progress_interval=0.25, lease_ttl=10.0, retry_delay=0.5,
                             concurrency=16)


@dataclass
class Tenant:
    project_id: str
    ak: str
    sk: str


@dataclass
class FerryService:
    """A running service plus two tenants with real credentials stored in its database."""

    url: str
    service: Service
    tenant: Tenant
    other: Tenant

    def client(self, tenant: Tenant | None = None) -> OmsClient:
        t = tenant or self.tenant
        return oms_client(self.url, t.ak, t.sk, t.project_id)


def overrides(src: Any, dst: Any) -> dict[str, str]:
    return {f"Aliyun/{SRC_REGION}": src.endpoint, f"HuaweiCloud/{DST_REGION}": dst.endpoint}


@dataclass
class _Started:
    value: FerryService
    close: Callable[[], None]


def start_service(data_dir: Path, db_url: str, *, run_tasks: bool = True, limits: TaskLimits | None = None,
                  runner: RunnerSettings = FAST_RUNNER) -> _Started:
    service = build(data_dir, db_url, run_tasks=run_tasks, runner_settings=runner, limits=limits)
    tenants = []
    for _ in range(2):
        made = create_credential(service.engine, service.box, uuid.uuid4().hex)
        tenants.append(Tenant(made.project_id, made.access_key, made.secret_key))
    running = serve(service.app)
    service.start_runner()

    def close() -> None:
        stop(running)
        service.close()

    return _Started(FerryService(running.url, service, tenants[0], tenants[1]), close)


def prefix_task(src: Any, sbucket: str, dst: Any, dbucket: str, **extra: Any) -> CreateTaskRequest:
    object_key = extra.pop("object_key", [""])
    task_type = extra.pop("task_type", "prefix")
    list_file = extra.pop("list_file", None)
    body = CreateTaskReq(
        task_type=task_type,
        src_node=SrcNodeReq(cloud_type="Aliyun", region=SRC_REGION, ak=src.access_key, sk=src.secret_key,
                            bucket=sbucket, object_key=object_key, list_file=list_file),
        dst_node=DstNodeReq(ak=dst.access_key, sk=dst.secret_key, bucket=dbucket, region=DST_REGION,
                            save_prefix=extra.pop("save_prefix", None)),
        **extra,
    )
    return CreateTaskRequest(body=body)


def wait_task(client: OmsClient, task_id: int, until: Callable[[Any], bool], timeout: float = 90.0,
              every: float = 0.1) -> tuple[Any, list[Any]]:
    """Poll show_task until `until(task)`; returns the last task and every sample seen."""
    deadline = time.monotonic() + timeout
    samples = []
    while True:
        task = client.show_task(ShowTaskRequest(task_id=task_id))
        samples.append(task)
        if until(task):
            return task, samples
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} stuck: {json.dumps(task.to_dict(), default=str)[:2000]}")
        time.sleep(every)


def s3_client(server: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def fill(server: Any, bucket: str, bodies: dict[str, bytes]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = s3_client(server)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), bodies.items()))


def listing(server: Any, bucket: str) -> dict[str, Any]:
    """key -> (size, LastModified) of every object in the bucket."""
    out: dict[str, Any] = {}
    for page in s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: (o["Size"], o["LastModified"]) for o in page.get("Contents", [])})
    return out
