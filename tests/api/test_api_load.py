"""`ferry serve` under load: clients with the official SDK hammer it while a migration runs; never a 5xx, bounded
latency (generous bounds for a loaded 2-core machine: bench/api_load.py measures the figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from ferry_service import fill, prefix_task, wait_task
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException, ServerResponseException
from huaweicloudsdkoms.v2 import (
    CreateSyncEventsRequest,
    CreateSyncTaskReq,
    CreateSyncTaskRequest,
    ListTasksRequest,
    OmsClient,
    ShowTaskRequest,
    SyncObjectReq,
)
from live_server import oms_client, unused_port, wait_listening

from ferry.sandbox import SeaweedServer

pytestmark = pytest.mark.timeout(300)
FERRY = [sys.executable, "-m", "ferry.cli"]
CLIENTS, SECONDS, OBJECTS = 20, 8.0, 400
RUNNING = 2


@dataclass
class Served:
    url: str
    project: str
    ak: str
    sk: str
    log: Path

    def client(self) -> OmsClient:
        return oms_client(self.url, self.ak, self.sk, self.project)


@pytest.fixture(scope="module")
def served(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serve-load")
    env = dict(os.environ, FERRY_DATA_DIR=str(home / "data"), FERRY_ENDPOINT_OVERRIDES=json.dumps({
        "Aliyun/cn-hangzhou": seaweed_a.endpoint, "HuaweiCloud/cn-north-4": seaweed_b.endpoint}))
    for name in ("FERRY_DATABASE_URL", "FERRY_MASTER_KEY", "FERRY_PUBLIC_URL"):
        env.pop(name, None)
    project = uuid.uuid4().hex
    made = subprocess.run([*FERRY, "credentials", "create", "--project-id", project], env=env,
                          capture_output=True, text=True, check=True)
    cred = json.loads(made.stdout)
    port = unused_port()
    log = home / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([*FERRY, "serve", "--port", str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        yield Served(f"http://127.0.0.1:{port}", project, cred["access_key"], cred["secret_key"], log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"show": [], "list": [], "events": []})
    server_errors: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    running_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _hammer(served: Served, n: int, task_id: int, sync_id: str, keys: list[str], deadline: float,
            tally: Tally) -> None:
    client = served.client()
    i = n
    while time.monotonic() < deadline:
        i += 1
        op = ("show", "list", "events")[i % 3]
        started = time.monotonic()
        try:
            if op == "show":
                running = client.show_task(ShowTaskRequest(task_id=task_id)).status == RUNNING
                with tally.lock:
                    tally.running_seen += running
            elif op == "list":
                client.list_tasks(ListTasksRequest(limit=10))
            else:
                # Another key each call: a signed write is accepted once.
                key = keys[(n * 1000 + i) % len(keys)]
                client.create_sync_events(CreateSyncEventsRequest(
                    sync_task_id=sync_id, body=SyncObjectReq(object_keys=[quote(key, safe="")])))
        except ServerResponseException as e:
            with tally.lock:
                tally.server_errors.append(f"{op}: {e.status_code} {e.error_code} {e.error_msg}")
            continue
        except ClientRequestException as e:
            with tally.lock:
                tally.other_errors.append(f"{op}: {e.status_code} {e.error_code} {e.error_msg}")
            continue
        with tally.lock:
            tally.latencies[op].append(time.monotonic() - started)


def test_the_api_answers_in_bounded_time_while_a_migration_runs(
        served: Served, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, bucket_factory: Any) -> None:
    src, dst, sync_dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b), bucket_factory(seaweed_b)
    bodies = {f"load/{i:04d}.bin": os.urandom(4096) for i in range(OBJECTS)}
    fill(seaweed_a, src, bodies)
    client = served.client()
    sync_id = client.create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
        src_cloud_type="Aliyun", src_region="cn-hangzhou", src_bucket=src, src_ak=seaweed_a.access_key,
        src_sk=seaweed_a.secret_key, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
        dst_region="cn-north-4", dst_bucket=sync_dst))).sync_task_id
    task_id = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst)).id
    tally = Tally()
    deadline = time.monotonic() + SECONDS
    threads = [threading.Thread(target=_hammer, args=(served, n, task_id, sync_id, sorted(bodies), deadline, tally))
               for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client hung"

    assert tally.server_errors == [], tally.server_errors[:5]
    assert tally.other_errors == [], tally.other_errors[:5]
    assert tally.running_seen > 0, "the migration was not running under the load"
    every = sorted(x for values in tally.latencies.values() for x in values)
    assert all(len(values) >= CLIENTS for values in tally.latencies.values())
    # A quiet machine answers in tens of milliseconds (bench/api_load.py); these only catch a server that stalls.
    assert every[int(len(every) * 0.99)] < 10.0 and every[-1] < 30.0, every[-10:]
    done, _ = wait_task(client, task_id, lambda t: t.status in (4, 5), timeout=180, every=0.5)
    assert done.status == 5 and done.successful_num == OBJECTS
    assert "Traceback" not in served.log.read_text(errors="replace")
