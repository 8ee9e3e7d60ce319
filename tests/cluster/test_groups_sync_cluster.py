"""A task group and a sync task in distributed mode: three `ferry worker` processes, Redis, PostgreSQL, SeaweedFS.

The group is split by a worker (a `group_split` unit) into list tasks; the sync task's first reconciliation is
cut into range units run by the workers, and its events are taken by the workers' sync loops. Every object is
checked byte for byte on the destination, and the API's counters are those of embedded mode.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from cluster_procs import Workers, broker_url, sending, workers
from ferry_service import FerryService, fill, start_service
from huaweicloudsdkoms.v2 import (
    CreateSyncEventsRequest,
    CreateSyncTaskReq,
    CreateSyncTaskRequest,
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    ListTasksRequest,
    ShowSyncTaskRequest,
    ShowTaskGroupRequest,
    SyncObjectReq,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)
from sync_live import env

from ferry.db.group_repo import GroupRepo
from ferry.db.sync_repo import SyncRepo
from ferry.db.unit_repo import DONE, UnitRepo
from ferry.runner.groups import SPLIT_KIND
from ferry.runner.sync_units import OWNER_KIND, RECONCILE_KIND
from ferry.sandbox import SeaweedServer
from pgdb import pg_database

GROUP_CLOUD, GROUP_REGION = "Aliyun", "cn-hangzhou"
SYNC_CLOUD, SYNC_REGION = "AWS", "us-east-1"
DST_REGION = "cn-north-4"
PER_TASK = 5
WAIT = 120.0


@dataclass
class Cluster:
    service: FerryService
    workers: Workers
    src: SeaweedServer
    dst: SeaweedServer

    @property
    def engine(self) -> Any:
        return self.service.service.engine


@pytest.fixture(scope="module")
def cluster(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for db_url in pg_database():
        data_dir = tmp_path_factory.mktemp("cluster")
        url = broker_url()
        table = {f"{GROUP_CLOUD}/{GROUP_REGION}": seaweed_a.endpoint, f"{SYNC_CLOUD}/{SYNC_REGION}": seaweed_a.endpoint,
                 f"HuaweiCloud/{DST_REGION}": seaweed_b.endpoint}
        settings = {"FERRY_BROKER_URL": url, "FERRY_DATABASE_URL": db_url, "FERRY_DATA_DIR": str(data_dir),
                    "FERRY_ENDPOINT_OVERRIDES": json.dumps(table), "FERRY_GROUP_TASK_OBJECTS": str(PER_TASK),
                    "FERRY_SYNC_RECONCILE_UNITS": "3", "FERRY_SYNC_POLL_SECONDS": "0.2"}
        with env(**settings):
            # The server: the API, the group runner handing splits out, the reconciliation dispatcher.
            started = start_service(data_dir, db_url)
            try:
                engine = started.value.service.engine
                with workers(3, settings, data_dir) as procs, sending(engine, url):
                    yield Cluster(started.value, procs, seaweed_a, seaweed_b)
            finally:
                started.close()


def _wait(check: Any, what: str, cluster: Cluster, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.workers.log_tail()}")
        time.sleep(0.2)


def _body(store: SeaweedServer, bucket: str, key: str) -> bytes | None:
    status, body = store.request("GET", f"/{bucket}/{key}")
    return body if status == 200 else None


def _objects(prefixes: str, n: int) -> dict[str, bytes]:
    return {f"{p}/{i:03d}.bin": os.urandom(64 + i) for p in prefixes for i in range(n)}


def test_a_task_group_is_split_on_a_worker_and_completes(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex[:8]
    src = cluster.src.create_bucket(f"dgroup-src-{tag}")
    dst = cluster.dst.create_bucket(f"dgroup-dst-{tag}")
    objects = dict(list(_objects("abcde", 5).items())[:23])
    fill(cluster.src, src, objects)
    client = cluster.service.client()
    created = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(ak=cluster.src.access_key, sk=cluster.src.secret_key, region=GROUP_REGION,
                                  bucket=src, cloud_type=GROUP_CLOUD),
        dst_node=TaskGroupDstNode(ak=cluster.dst.access_key, sk=cluster.dst.secret_key, region=DST_REGION,
                                  bucket=dst))))
    gid = created.group_id

    def completed() -> Any:
        g = client.show_task_group(ShowTaskGroupRequest(group_id=gid))
        assert g.status not in (3, 4, 5), (g.status, g.error_reason)
        return g if g.status == 6 else None

    g = _wait(completed, f"group {gid}", cluster)
    size = sum(len(b) for b in objects.values())
    assert (g.total_task_num, g.complete_task_num, g.failed_task_num) == (5, 5, 0)
    assert (g.total_num, g.success_num, g.fail_num, g.skip_num) == (23, 23, 0, 0)
    assert (g.total_size, g.complete_size) == (size, size)
    for key, body in objects.items():
        assert _body(cluster.dst, dst, key) == body, key
    # The split ran as one unit on a worker, which recorded what it put into tasks.
    units = UnitRepo(cluster.engine)
    run = units.last_run("group", gid)
    assert run is not None
    [unit] = units.of_owner("group", gid, run, states=(DONE,))
    assert unit.kind == SPLIT_KIND and unit.listed == 23 and unit.bytes_done == size
    assert unit.watermark == "chunk 5"


def test_a_sync_task_reconciles_in_ranges_and_takes_events_on_the_workers(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex[:8]
    src = cluster.src.create_bucket(f"dsync-src-{tag}")
    dst = cluster.dst.create_bucket(f"dsync-dst-{tag}")
    first = _objects("amx", 30)
    fill(cluster.src, src, first)
    client = cluster.service.client()
    task_id = client.create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
        src_cloud_type=SYNC_CLOUD, src_region=SYNC_REGION, src_bucket=src, src_ak=cluster.src.access_key,
        src_sk=cluster.src.secret_key, dst_ak=cluster.dst.access_key, dst_sk=cluster.dst.secret_key,
        dst_region=DST_REGION, dst_bucket=dst))).sync_task_id
    repo = SyncRepo(cluster.engine)

    def reconciled() -> bool:
        row = repo.get_task(task_id)
        return row is not None and row.reconciled_at is not None

    _wait(reconciled, f"the first reconciliation of {task_id}", cluster)
    row = repo.get_task(task_id)
    assert row is not None and row.last_error is None
    units = UnitRepo(cluster.engine)
    run = units.last_run(OWNER_KIND, task_id)
    assert run is not None
    done = units.of_owner(OWNER_KIND, task_id, run, states=(DONE,))
    assert len(done) == 3 and all(u.kind == RECONCILE_KIND for u in done)
    assert sum(u.listed for u in done) == len(first) and sum(u.objects_done for u in done) == len(first)
    for key, body in first.items():
        assert _body(cluster.dst, dst, key) == body, key

    # Events: taken from the database by the workers' sync loops (no message each), copied and verified.
    later = _objects("q", 10)
    fill(cluster.src, src, later)
    client.create_sync_events(CreateSyncEventsRequest(sync_task_id=task_id,
                                                      body=SyncObjectReq(object_keys=list(later))))
    _wait(lambda: all(_body(cluster.dst, dst, k) == b for k, b in later.items()), "the events' copies", cluster)

    def month() -> Any:
        return client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))

    total = len(first) + len(later)
    shown = _wait(lambda: (m := month()).monthly_success_object == total and m, "the statistics", cluster, 30)
    size = sum(len(b) for b in first.values()) + sum(len(b) for b in later.values())
    assert (shown.monthly_acceptance_request, shown.monthly_failure_object, shown.monthly_size) == (
        len(later), 0, size)
    assert repo.pending_count(task_id) == 0


@pytest.mark.slow
def test_a_split_whose_worker_is_killed_resumes_on_another_from_its_checkpoint(cluster: Cluster) -> None:
    """kill -9 of the worker splitting a group: its unit's lease runs out (30 s, the worker's lease_ttl), the
    unit is sent again and claimed by another worker, which takes the group's lease at once (its holder is a
    dead process of this host) and goes on from the last chunk written: no task twice, no object missed."""
    tag = uuid.uuid4().hex[:8]
    src = cluster.src.create_bucket(f"dgroup-kill-src-{tag}")
    dst = cluster.dst.create_bucket(f"dgroup-kill-dst-{tag}")
    objects = {f"k/{i:04d}": os.urandom(32) for i in range(400)}
    fill(cluster.src, src, objects)
    client = cluster.service.client()
    gid = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(ak=cluster.src.access_key, sk=cluster.src.secret_key, region=GROUP_REGION,
                                  bucket=src, cloud_type=GROUP_CLOUD),
        dst_node=TaskGroupDstNode(ak=cluster.dst.access_key, sk=cluster.dst.secret_key, region=DST_REGION,
                                  bucket=dst)))).group_id
    groups = GroupRepo(cluster.engine)
    pids = {p.pid: p for p in cluster.workers.procs if p.poll() is None}

    def splitting() -> Any:
        row = groups.get(gid)
        if row is None or row.task_count < 3 or not row.lease_owner:
            return None
        pid = int(row.lease_owner.split("/")[1])
        return (pid, row.task_count) if pid in pids else None

    pid, before = _wait(splitting, "the split to be under way on a worker", cluster, 60)
    pids[pid].kill()
    pids[pid].wait(10)
    killed_at = time.monotonic()
    row = groups.get(gid)
    assert row is not None and row.task_count < len(objects) // PER_TASK, "the split ended before the kill"

    def completed() -> Any:
        g = client.show_task_group(ShowTaskGroupRequest(group_id=gid))
        assert g.status not in (3, 4, 5), (g.status, g.error_reason)
        return g if g.status == 6 else None

    g = _wait(completed, f"group {gid} after the kill", cluster, 180)
    assert (g.total_task_num, g.complete_task_num, g.failed_task_num) == (80, 80, 0)
    assert (g.total_num, g.success_num) == (400, 400)
    assert client.list_tasks(ListTasksRequest(group_id=gid, limit=100)).count == 80
    for key, body in objects.items():
        assert _body(cluster.dst, dst, key) == body, key
    units = UnitRepo(cluster.engine)
    run = units.last_run("group", gid)
    assert run is not None
    [unit] = units.of_owner("group", gid, run, states=(DONE,))
    assert unit.attempts == 2 and unit.watermark == "chunk 80"
    print(f"split resumed after the kill at chunk {before}; group completed {time.monotonic() - killed_at:.1f} s "
          "after it")
