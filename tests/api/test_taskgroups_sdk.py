"""Task groups through the real OmsClient: a SeaweedFS bucket split into list tasks run by the task runner."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    BandwidthPolicyDto,
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    DeleteTaskGroupRequest,
    ListFile,
    ListTaskGroupRequest,
    ListTasksRequest,
    OmsClient,
    RetryTaskGroupReq,
    RetryTaskGroupRequest,
    ShowTaskGroupRequest,
    StartTaskGroupReq,
    StartTaskGroupRequest,
    StopTaskGroupRequest,
    TaskGroupDstNode,
    TaskGroupSrcNode,
    UpdateBandwidthPolicyReq,
    UpdateTaskGroupRequest,
)
from live_server import ShiftedClock, Tenant, build_services, next_second, oms_client, serve, stop

from ferry.api.app import create_app
from ferry.db.database import open_database
from ferry.oms import CreateTaskGroupReq as GroupReq
from ferry.runner.groups import GroupRunner, GroupRunnerSettings, SplitSettings, _Splitter
from ferry.runner.migration import LocalRunner, RunnerSettings
from ferry.sandbox import SeaweedServer
from ferry.secrets import SecretBox
from ferry.service.groups import GroupContext, create_task_group, runner_ports
from ferry.service.smn import publish_end
from ferry.service.tasks import TaskContext, TaskError, TaskLimits
from pgdb import pg_database

SRC_CLOUD, SRC_REGION, DST_REGION = "Aliyun", "cn-hangzhou", "cn-north-4"
PER_TASK = 5  # objects per task of a group: small, so a few dozen objects make several tasks
WAIT = 60.0


@dataclass
class Env:
    tag: str  # the database flavour, also in bucket names: each flavour's run starts from empty buckets
    client: OmsClient
    other: OmsClient
    src: SeaweedServer
    dst: SeaweedServer
    runner: LocalRunner
    groups: GroupRunner
    data_dir: Path
    files: Path  # served over HTTP at `files_url`, an operator-allowed URL source
    files_url: str
    gctx: GroupContext


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{tmp_path_factory.mktemp('groups-db') / 'ferry.db'}"
    else:
        for url in pg_database():
            yield "pg", url


@pytest.fixture(scope="module")
def env(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, tmp_path_factory: pytest.TempPathFactory,
        database: tuple[str, str]) -> Iterator[Env]:
    tag, url = database
    data_dir = tmp_path_factory.mktemp("groups")
    files = tmp_path_factory.mktemp("url-source")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(files)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    files_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    engine = open_database(url)
    box = SecretBox.load(data_dir)
    runner = LocalRunner(engine, box, data_dir, RunnerSettings(max_tasks=3, concurrency=8, poll_interval=0.2,
                                                               progress_interval=0.25, retry_delay=0.5),
                         publish_end=publish_end)
    # Lower-case keys, as load_overrides() produces them from FERRY_ENDPOINT_OVERRIDES.
    overrides = {f"{SRC_CLOUD}/{SRC_REGION}".lower(): seaweed_a.endpoint,
                 f"huaweicloud/{DST_REGION}": seaweed_b.endpoint, "urlsource/files": files_url}
    tasks = TaskContext(engine=engine, box=box, data_dir=data_dir, overrides=overrides, notify=runner.notify)
    gctx = GroupContext(tasks=tasks, split=SplitSettings(objects_per_task=PER_TASK))
    grunner = GroupRunner(runner_ports(gctx),
                          GroupRunnerSettings(poll_interval=0.2, heartbeat_interval=0.5, retry_delay=0.5))
    gctx = dataclasses.replace(gctx, notify=grunner.notify)
    tenant, other = Tenant(), Tenant()
    services = dataclasses.replace(build_services([tenant, other], ShiftedClock(), []), tasks=tasks, groups=gctx)
    running = serve(create_app(services))
    runner.start()
    grunner.start()
    try:
        yield Env(tag, oms_client(running.url, tenant.ak, tenant.sk, tenant.project_id),
                  oms_client(running.url, other.ak, other.sk, other.project_id),
                  seaweed_a, seaweed_b, runner, grunner, data_dir, files, files_url, gctx)
    finally:
        grunner.stop()
        runner.stop()
        stop(running)
        engine.dispose()
        httpd.shutdown()
        httpd.server_close()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        return


def fill(store: SeaweedServer, bucket: str, keys: dict[str, bytes]) -> None:
    for key, body in keys.items():
        status, _ = store.request("PUT", f"/{bucket}/{key}", body=body, headers={"Content-Type": "text/plain"})
        assert status == 200


def sample(n: int, size: int = 100, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}dir{i % 3}/obj-{i:03d} x.bin": hashlib.sha256(str(i).encode()).digest() * (size // 32)
            for i in range(n)}


def group_req(env: Env, src_bucket: str, dst_bucket: str, *, src_sk: str | None = None, **kw: Any) -> Any:
    return CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(ak=env.src.access_key, sk=src_sk or env.src.secret_key, region=SRC_REGION,
                                  bucket=src_bucket, cloud_type=SRC_CLOUD, object_key=kw.pop("object_key", None)),
        dst_node=TaskGroupDstNode(ak=env.dst.access_key, sk=env.dst.secret_key, region=DST_REGION, bucket=dst_bucket,
                                  save_prefix=kw.pop("save_prefix", None)),
        **kw))


def show(env: Env, group_id: str) -> Any:
    return env.client.show_task_group(ShowTaskGroupRequest(group_id=group_id))


def wait_for(env: Env, group_id: str, statuses: set[int], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        g = show(env, group_id)
        if g.status in statuses:
            return g
        # A status that cannot change by itself ends the wait at once, saying why.
        assert g.status not in {3, 4, 5, 6}, (g.status, g.error_reason, task_summary(env, group_id))
        assert time.monotonic() < deadline, f"group stuck in status {g.status}"
        time.sleep(0.2)


def wait_deleted(env: Env, group_id: str) -> None:
    """8 "waiting for deletion" until the runner has removed what the group left, then gone (404)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            assert show(env, group_id).status == 8
        except ClientRequestException as exc:
            assert (exc.status_code, exc.error_code) == (404, "OMS.1009")
            return
        assert time.monotonic() < deadline
        time.sleep(0.1)


def task_summary(env: Env, group_id: str) -> list[tuple[Any, ...]]:
    """Each task of the group as (name, status, total, success, skipped, failed, error) for failure messages."""
    tasks = env.client.list_tasks(ListTasksRequest(group_id=group_id, limit=100)).tasks
    return [(t.name[-6:], t.status, t.total_num, t.successful_num, t.skipped_num, t.failed_num,
             t.error_reason.error_msg if t.error_reason else None) for t in tasks]


def keys_body(store: SeaweedServer, bucket: str, key: str) -> bytes:
    status, body = store.request("GET", f"/{bucket}/{key}")
    assert status == 200, key
    return body


def list_keys(store: SeaweedServer, bucket: str, prefix: str = "") -> list[str]:
    query = f"list-type=2&max-keys=1000&prefix={quote(prefix, safe='')}"
    status, body = store.request("GET", f"/{bucket}", query=query)
    assert status == 200
    return re.findall(r"<Key>([^<]*)</Key>", body.decode())


def keys_of(env: Env) -> dict[str, str]:
    return {"src_ak": env.src.access_key, "src_sk": env.src.secret_key, "dst_ak": env.dst.access_key,
            "dst_sk": env.dst.secret_key}


def fails(call: Callable[[], object], status: int, code: str) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as info:
        call()
    assert (info.value.status_code, info.value.error_code) == (status, code), info.value.error_msg
    return info.value


def test_group_splits_a_bucket_into_tasks_and_completes(env: Env) -> None:
    src = env.src.create_bucket(f"group-src-all-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-all-{env.tag}")
    objects = sample(23)
    fill(env.src, src, objects)
    created = env.client.create_task_group(group_req(env, src, dst, description="whole bucket"))
    gid = created.group_id
    assert len(gid) == 36
    g = wait_for(env, gid, {6})
    assert (g.total_task_num, g.create_task_num, g.complete_task_num, g.failed_task_num) == (5, 5, 5, 0)
    assert (g.executing_task_num, g.waiting_task_num, g.paused_task_num) == (0, 0, 0)
    size = sum(len(b) for b in objects.values())
    assert (g.total_num, g.create_complete_num, g.success_num, g.fail_num, g.skip_num) == (23, 23, 23, 0, 0)
    assert (g.total_size, g.create_complete_size, g.complete_size) == (size, size, size)
    assert g.src_node.cloud_type == "ALIYUN" and g.src_node.bucket == src and g.dst_node.bucket == dst
    assert g.task_type == "PREFIX" and g.description == "whole bucket" and g.start_time > 0 and g.total_time >= 0
    tasks = env.client.list_tasks(ListTasksRequest(group_id=gid, limit=100))
    assert tasks.count == 5
    assert all(t.group_type == "GROUP_TASK" and t.group_id == gid and t.status == 5 for t in tasks.tasks)
    assert sorted(t.total_num for t in tasks.tasks) == [3, 5, 5, 5, 5]
    for key, body in objects.items():
        assert keys_body(env.dst, dst, key) == body
    # The list files the split wrote into the destination are gone once the group completed.
    deadline = time.monotonic() + 10
    while list_keys(env.dst, dst, "oms/") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list_keys(env.dst, dst, "oms/") == []
    listed = env.client.list_task_group(ListTaskGroupRequest(limit=100))
    assert gid in [x.group_id for x in listed.taskgroups]
    # The status filter reads the stored status, which the group runner brings in line within a poll (0.2 s
    # here, seconds on a loaded machine).
    deadline = time.monotonic() + 10
    while gid not in (done := [x.group_id for x in env.client.list_task_group(ListTaskGroupRequest(status=6))
                               .taskgroups]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gid in done
    # A completed group cannot be stopped, retried or re-limited, but can be deleted, with its tasks.
    fails(lambda: env.client.stop_task_group(StopTaskGroupRequest(group_id=gid)), 409, "OMS.0070")
    fails(lambda: env.client.retry_task_group(RetryTaskGroupRequest(gid, RetryTaskGroupReq(**keys_of(env)))),
          409, "OMS.0070")
    policy = UpdateBandwidthPolicyReq([BandwidthPolicyDto(start="00:00", end="08:00", max_bandwidth=2 * 1024**2)])
    fails(lambda: env.client.update_task_group(UpdateTaskGroupRequest(gid, policy)), 409, "OMS.0070")
    env.client.delete_task_group(DeleteTaskGroupRequest(group_id=gid))
    assert env.client.list_tasks(ListTasksRequest(group_id=gid)).count == 0
    wait_deleted(env, gid)


def test_group_of_prefixes_with_save_prefix(env: Env) -> None:
    src = env.src.create_bucket(f"group-src-prefixes-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-prefixes-{env.tag}")
    objects = {**sample(8, prefix="keep/"), **sample(4, prefix="also/"), **sample(6, prefix="skip/")}
    fill(env.src, src, objects)
    gid = env.client.create_task_group(group_req(env, src, dst, object_key=["keep/", "also/"],
                                                 save_prefix="copied/")).group_id
    g = wait_for(env, gid, {6})
    assert (g.total_num, g.success_num, g.total_task_num) == (12, 12, 3)
    got = sorted(list_keys(env.dst, dst, "copied/"))
    assert got == sorted(f"copied/{k}" for k in objects if not k.startswith("skip/"))


def test_group_stop_update_start(env: Env) -> None:
    src = env.src.create_bucket(f"group-src-stop-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-stop-{env.tag}")
    # 2.5 MiB per task, far above the limiter's burst (half a second at 1 MiB/s): still running when stopped.
    objects = sample(40, size=512 * 1024)
    fill(env.src, src, objects)
    slow = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=1024 * 1024)]  # all day, 1 MB/s
    gid = env.client.create_task_group(group_req(env, src, dst, bandwidth_policy=slow)).group_id
    wait_for(env, gid, {1, 2})
    fails(lambda: env.client.delete_task_group(DeleteTaskGroupRequest(group_id=gid)), 409, "OMS.0070")
    fails(lambda: env.client.start_task_group(StartTaskGroupRequest(gid, StartTaskGroupReq(**keys_of(env)))),
          409, "OMS.0070")
    env.client.stop_task_group(StopTaskGroupRequest(group_id=gid))
    g = wait_for(env, gid, {3})
    assert g.executing_task_num == 0 and g.waiting_task_num == 0
    assert g.success_num < 40  # stopped before the end
    fast = UpdateBandwidthPolicyReq([BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=200 * 1024**2)])
    env.client.update_task_group(UpdateTaskGroupRequest(gid, fast))
    assert show(env, gid).bandwidth_policy[0].max_bandwidth == 200 * 1024**2
    tasks = env.client.list_tasks(ListTasksRequest(group_id=gid, limit=100)).tasks
    assert all(t.bandwidth_policy[0].max_bandwidth == 200 * 1024**2 for t in tasks if t.status != 5)
    fails(lambda: env.client.start_task_group(StartTaskGroupRequest(gid, StartTaskGroupReq(
        dst_ak=env.dst.access_key, dst_sk=env.dst.secret_key))), 400, "OMS.0001")
    next_second()  # the start refused above, signed again: the same signed write twice would be a replay
    env.client.start_task_group(StartTaskGroupRequest(gid, StartTaskGroupReq(**keys_of(env))))
    g = wait_for(env, gid, {6})
    for key, body in objects.items():
        assert keys_body(env.dst, dst, key) == body
    assert (g.total_num, g.success_num + g.skip_num, g.fail_num, g.total_task_num) == (40, 40, 0, 8), \
        task_summary(env, gid)


def test_failed_split_then_retry(env: Env) -> None:
    src = env.src.create_bucket(f"group-src-badkeys-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-badkeys-{env.tag}")
    fill(env.src, src, sample(7))
    gid = env.client.create_task_group(group_req(env, src, dst, src_sk="not-the-secret")).group_id
    g = wait_for(env, gid, {4})
    assert g.error_reason.error_code == "TRF.0151" and "not-the-secret" not in g.error_reason.error_msg
    assert g.total_task_num == 0
    env.client.retry_task_group(RetryTaskGroupRequest(gid, RetryTaskGroupReq(**keys_of(env))))
    g = wait_for(env, gid, {6})
    assert (g.total_num, g.success_num, g.total_task_num) == (7, 7, 2)
    missing = env.client.create_task_group(group_req(env, "no-such-source-bucket", dst)).group_id
    assert wait_for(env, missing, {4}).error_reason.error_code == "TRF.0155"
    empty_bucket = env.src.create_bucket(f"group-src-empty-{env.tag}")
    empty = env.client.create_task_group(group_req(env, empty_bucket, dst)).group_id
    assert wait_for(env, empty, {4}).error_reason.error_code == "TRF.0012"


def test_failed_migration_then_retry_failed_objects(env: Env) -> None:
    src = env.src.create_bucket(f"group-src-retry-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-retry-{env.tag}")
    objects = sample(12)
    fill(env.src, src, objects)
    env.runner.stop()  # tasks wait until their source objects are gone
    try:
        gid = env.client.create_task_group(group_req(env, src, dst)).group_id
        g = wait_for(env, gid, {2})
        deadline = time.monotonic() + WAIT
        while g.total_task_num < 3 or g.waiting_task_num < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)
            g = show(env, gid)
        gone = sorted(objects)[:2]
        for key in gone:
            assert env.src.request("DELETE", f"/{src}/{key}")[0] in (200, 204)
    finally:
        env.runner.start()
    g = wait_for(env, gid, {5})
    assert (g.fail_num, g.success_num, g.failed_task_num) == (2, 10, 1)
    # The failed task's list is in the destination bucket, where OMS puts a group task's list.
    (failed,) = [t for t in env.client.list_tasks(ListTasksRequest(group_id=gid, limit=100)).tasks if t.failed_num]
    list_key = failed.failed_object_record.list_file_key
    assert list_key.startswith(f"oms/task_group/{gid}/failed_object_lists/{failed.name}/"), list_key
    listed = [json.loads(x)["key"] for x in keys_body(env.dst, dst, list_key).decode().splitlines()]
    assert sorted(listed) == gone
    fill(env.src, src, {k: objects[k] for k in gone})
    env.client.retry_task_group(RetryTaskGroupRequest(gid, RetryTaskGroupReq(migrate_failed_object=True,
                                                                            **keys_of(env))))
    g = wait_for(env, gid, {6})
    assert (g.fail_num, g.success_num, g.complete_task_num) == (0, 12, 3)
    for key, body in objects.items():
        assert keys_body(env.dst, dst, key) == body


def test_group_request_errors(env: Env) -> None:
    dst = env.dst.create_bucket(f"group-dst-errors-{env.tag}")
    fails(lambda: show(env, "00000000-0000-0000-0000-000000000000"), 404, "OMS.1009")
    fails(lambda: env.client.delete_task_group(DeleteTaskGroupRequest(group_id="nope")), 404, "OMS.1009")
    fails(lambda: env.client.create_task_group(group_req(env, "src-bucket", dst, description="a<b")), 400, "OMS.0078")
    fails(lambda: env.client.create_task_group(group_req(env, "src-bucket", dst, task_type="SIDEWAYS")),
          400, "OMS.0001")
    fails(lambda: env.client.create_task_group(group_req(env, "src-bucket", dst, task_type="LIST")),
          400, "OMS.0001")  # LIST needs src_node.list_file
    req = group_req(env, "src-bucket", dst)
    req.body.src_node.cloud_type = "Azure"
    fails(lambda: env.client.create_task_group(req), 400, "OMS.0001")
    fails(lambda: env.client.list_task_group(ListTaskGroupRequest(limit=101)), 400, "OMS.0001")
    fails(lambda: env.client.list_task_group(ListTaskGroupRequest(status=10)), 400, "OMS.0001")
    # Another project never sees this project's groups.
    src = env.src.create_bucket(f"group-src-private-{env.tag}")
    fill(env.src, src, sample(2))
    gid = env.client.create_task_group(group_req(env, src, dst)).group_id
    fails(lambda: env.other.show_task_group(ShowTaskGroupRequest(group_id=gid)), 404, "OMS.1009")
    fails(lambda: env.other.delete_task_group(DeleteTaskGroupRequest(group_id=gid)), 404, "OMS.1009")
    assert gid not in [x.group_id for x in env.other.list_task_group(ListTaskGroupRequest()).taskgroups]
    wait_for(env, gid, {6})


def test_group_refuses_a_region_as_a_task_does(env: Env) -> None:
    """Groups and tasks resolve their endpoints alike: an unknown destination region is OMS.0060 at creation,
    not a task creation failure once the split runs."""
    dst = env.dst.create_bucket(f"group-dst-region-{env.tag}")
    req = group_req(env, "src-bucket", dst)
    req.body.dst_node.region = "cn-nowhere-1"
    fails(lambda: env.client.create_task_group(req), 400, "OMS.0060")


def test_split_crashing_mid_way_resumes_without_twin_tasks(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    src = env.src.create_bucket(f"group-src-crash-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-crash-{env.tag}")
    objects = sample(22)
    fill(env.src, src, objects)
    original = _Splitter._create_task
    crashes: list[int] = []

    def create_then_crash(self: _Splitter) -> None:
        original(self)
        if self.chunk == 2 and not crashes:
            # The task of chunk 2 exists but its checkpoint was never written: the redone chunk must not
            # create a twin, and the chunks before it must not be listed into new tasks again.
            crashes.append(self.chunk)
            raise RuntimeError("simulated crash between task creation and checkpoint")

    monkeypatch.setattr(_Splitter, "_create_task", create_then_crash)
    gid = env.client.create_task_group(group_req(env, src, dst)).group_id
    g = wait_for(env, gid, {6})
    assert crashes == [2]
    assert (g.total_task_num, g.total_num, g.success_num, g.fail_num) == (5, 22, 22, 0)
    tasks = env.client.list_tasks(ListTasksRequest(group_id=gid, limit=100)).tasks
    assert sorted(t.name[-6:] for t in tasks) == [f"{i:06d}" for i in range(5)]
    assert sum(t.total_num for t in tasks) == 22


def test_list_group_splits_its_list_file(env: Env) -> None:
    src = env.src.create_bucket(f"group-src-list-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-list-{env.tag}")
    lists = env.dst.create_bucket(f"group-lists-{env.tag}")
    objects = sample(14)
    fill(env.src, src, {**objects, "not-listed.bin": b"x"})
    chosen = sorted(objects)[:12]
    body = "\r\n".join(quote(k, safe="/") for k in chosen).encode() + b"\n\n"
    fill(env.dst, lists, {"lists/chosen.txt": body})
    req = group_req(env, src, dst, task_type="LIST")
    req.body.src_node.list_file = ListFile(list_file_key="lists/chosen.txt", obs_bucket=lists)
    gid = env.client.create_task_group(req).group_id
    g = wait_for(env, gid, {6})
    assert (g.task_type, g.total_task_num, g.total_num, g.success_num, g.fail_num) == ("LIST", 3, 12, 12, 0)
    assert g.src_node.list_file.list_file_key == "lists/chosen.txt"
    assert sorted(k for k in list_keys(env.dst, dst) if not k.startswith("oms/")) == chosen
    missing = group_req(env, src, dst, task_type="LIST")
    missing.body.src_node.list_file = ListFile(list_file_key="lists/absent.txt", obs_bucket=lists)
    gid = env.client.create_task_group(missing).group_id
    assert wait_for(env, gid, {4}).error_reason.error_code == "TRF.0013"


def test_deleting_a_paused_group_removes_its_tasks_and_list_files(env: Env) -> None:
    src = env.src.create_bucket(f"group-src-del-{env.tag}")
    dst = env.dst.create_bucket(f"group-dst-del-{env.tag}")
    # 2.5 MiB per task, far above the limiter's burst (half a second at 1 MiB/s): still copying when stopped.
    fill(env.src, src, sample(30, size=512 * 1024))
    slow = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=1024 * 1024)]
    gid = env.client.create_task_group(group_req(env, src, dst, bandwidth_policy=slow)).group_id
    wait_for(env, gid, {2})
    env.client.stop_task_group(StopTaskGroupRequest(group_id=gid))
    wait_for(env, gid, {3})
    assert list_keys(env.dst, dst, f"oms/taskgroup/{gid}/")
    env.client.delete_task_group(DeleteTaskGroupRequest(group_id=gid))
    assert env.client.list_tasks(ListTasksRequest(group_id=gid)).count == 0
    wait_deleted(env, gid)
    assert list_keys(env.dst, dst, "oms/") == []


def test_url_list_group(env: Env) -> None:
    dst = env.dst.create_bucket(f"group-dst-urls-{env.tag}")
    lists = env.dst.create_bucket(f"group-lists-urls-{env.tag}")
    names = [f"page-{i}.html" for i in range(7)]
    for name in names:
        (env.files / name).write_bytes(name.encode() * 10)
    lines = [f"{env.files_url}/{name}\tweb/{name}" for name in names]
    fill(env.dst, lists, {"urls.txt": "\n".join(lines).encode()})
    req = CreateTaskGroupRequest(CreateTaskGroupReq(
        task_type="URL_LIST",
        src_node=TaskGroupSrcNode(list_file=ListFile(list_file_key="urls.txt", obs_bucket=lists)),
        dst_node=TaskGroupDstNode(ak=env.dst.access_key, sk=env.dst.secret_key, region=DST_REGION, bucket=dst)))
    gid = env.client.create_task_group(req).group_id
    g = wait_for(env, gid, {6})
    assert (g.task_type, g.src_node.cloud_type, g.total_task_num, g.total_num, g.success_num) == \
        ("URL_LIST", "URLSOURCE", 2, 7, 7)
    tasks = env.client.list_tasks(ListTasksRequest(group_id=gid)).tasks
    assert {t.task_type for t in tasks} == {"url_list"}
    for name in names:
        assert keys_body(env.dst, dst, f"web/{name}") == name.encode() * 10


def test_group_creation_quota(env: Env) -> None:
    # A project of its own, so that the groups of the other tests do not count.
    fresh = Tenant()
    tight = dataclasses.replace(env.gctx, limits=TaskLimits(created_per_day=2, waiting=100))
    services = dataclasses.replace(build_services([fresh], ShiftedClock(), []), tasks=env.gctx.tasks, groups=tight)
    running = serve(create_app(services))
    try:
        client = oms_client(running.url, fresh.ak, fresh.sk, fresh.project_id)
        src = env.src.create_bucket(f"group-src-quota-{env.tag}")  # empty: each group fails with TRF.0012
        dst = env.dst.create_bucket(f"group-dst-quota-{env.tag}")
        # Each create is its own request (a description apiece): the same signed write twice would be a replay.
        made = [client.create_task_group(group_req(env, src, dst, description=f"g{i}")).group_id for i in range(2)]
        err = fails(lambda: client.create_task_group(group_req(env, src, dst, description="g2")), 400, "OMS.0077")
        assert "task groups" in err.error_msg and "24 hours" in err.error_msg
        for gid in made:
            deadline = time.monotonic() + WAIT
            while client.show_task_group(ShowTaskGroupRequest(group_id=gid)).status != 4:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            client.delete_task_group(DeleteTaskGroupRequest(group_id=gid))
        # Deleting groups does not give the day's quota back.
        fails(lambda: client.create_task_group(group_req(env, src, dst, description="g3")), 400, "OMS.0077")
    finally:
        stop(running)
    none_waiting = dataclasses.replace(env.gctx, limits=TaskLimits(created_per_day=100, waiting=0))
    with pytest.raises(TaskError) as info:
        create_task_group(none_waiting, Tenant().project_id, GroupReq.model_validate({
            "src_node": {"cloud_type": SRC_CLOUD, "region": SRC_REGION, "ak": "ak", "sk": "sk", "bucket": "any"},
            "dst_node": {"ak": "ak", "sk": "sk", "region": DST_REGION, "bucket": "any"}}))
    assert (info.value.status, info.value.oms_code) == (400, "OMS.0077") and "waiting" in info.value.message
