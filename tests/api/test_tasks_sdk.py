"""Migration tasks through the real OMS SDK against the live service, SeaweedFS stores, SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ferry_service import (
    FerryService,
    fill,
    listing,
    overrides,
    prefix_task,
    s3_client,
    start_service,
    wait_task,
)
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    BandwidthPolicyDto,
    BatchUpdateTasksReq,
    BatchUpdateTasksRequest,
    CreateTaskRequest,
    DeleteTaskRequest,
    DstNodeReq,
    ListFile,
    ListTasksRequest,
    ShowTaskRequest,
    SrcNodeReq,
    StartTaskReq,
    StartTaskRequest,
    StopTaskRequest,
    UpdateBandwidthPolicyReq,
    UpdateBandwidthPolicyRequest,
)
from huaweicloudsdkoms.v2 import (
    CreateTaskReq as SdkCreateTaskReq,
)
from live_server import next_second, oms_client
from sqlalchemy import select

from ferry.db.api_models import migration_tasks
from ferry.db.job_repo import JobRepo
from ferry.db.task_repo import TaskRepo
from ferry.oms import CreateTaskReq
from ferry.service import tasks as task_service
from ferry.service.tasks import TaskContext, TaskError, TaskLimits
from ferry.settings import records_dir
from pgdb import pg_database

pytestmark = pytest.mark.timeout(300)
MiB = 1024 * 1024
WHOLE_DAY = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # A record that cannot be formatted is not a leak.
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def log_capture() -> Iterator[_Capture]:
    handler = _Capture()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves files; a GET of one under /slow/ answers after a second (a HEAD at once)."""

    def do_GET(self) -> None:
        if self.path.startswith("/slow/"):
            time.sleep(1.0)
        super().do_GET()


@pytest.fixture(scope="module")
def http_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A plain HTTP server on 127.0.0.1 serving a directory: the source of url_list tasks."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(_Files, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def svc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, seaweed_a: Any, seaweed_b: Any,
        log_capture: _Capture, http_files: tuple[Path, str]) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp(f"ferry-{request.param}")
    pg = pg_database() if request.param == "postgresql" else None
    url = next(pg) if pg is not None else f"sqlite:///{data_dir / 'ferry.db'}"
    with pytest.MonkeyPatch.context() as mp:
        # The HTTP source is on loopback: the operator allows it explicitly, as a URLSource entry.
        table = {**overrides(seaweed_a, seaweed_b), "URLSource/test-files": http_files[1]}
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(table))
        started = start_service(data_dir, url)
        try:
            yield started.value
        finally:
            started.close()
            if pg is not None:
                pg.close()


@pytest.fixture(autouse=True)
def _no_secret_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "svc" not in request.fixturenames:
        return
    svc: FerryService = request.getfixturevalue("svc")
    capture: _Capture = request.getfixturevalue("log_capture")
    a, b = request.getfixturevalue("seaweed_a"), request.getfixturevalue("seaweed_b")
    text = "\n".join(capture.lines)
    assert "ferry.runner" in text, "the log capture saw nothing of the runner"
    for secret in (a.secret_key, b.secret_key, svc.tenant.sk, svc.other.sk):
        assert secret not in text, "a secret key appeared in a log line"


def assert_error(exc: ClientRequestException, status: int, code: str) -> None:
    assert (exc.status_code, exc.error_code) == (status, code), (exc.status_code, exc.error_code, exc.error_msg)
    assert exc.request_id


def assert_no_credentials(raw: bytes | str, *servers: Any) -> None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    for s in servers:
        assert s.secret_key not in text and s.access_key not in text


def get_text(server: Any, bucket: str, key: str) -> str:
    text: str = s3_client(server).get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return text


def sizes(bodies: dict[str, bytes]) -> int:
    return sum(len(v) for v in bodies.values())


# ------------------------------------------------------------------------------------------------------------


def test_prefix_task_copies_a_bucket(svc: FerryService, seaweed_a: Any, seaweed_b: Any, bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    # Keys whose byte order differs from SeaweedFS's directory order, nested folders, unicode.
    names = [f"d{i % 4}/k{i:04d}" for i in range(140)] + ["a b/c", "a-b", "a/b", "d1/sub/deep/x", "ü/ñ.txt"]
    bodies = {k: os.urandom(8 * 1024 + i) for i, k in enumerate(names)}
    fill(seaweed_a, sb, bodies)
    client = svc.client()
    started = time.time()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=WHOLE_DAY,
                                             description="nightly copy", task_priority="HIGH"))
    assert created.id > 0 and created.task_name
    assert_no_credentials(created.raw_content, seaweed_a, seaweed_b)
    task, samples = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert task.status == 5, task.error_reason
    n, total = len(bodies), sizes(bodies)
    assert (task.total_num, task.successful_num, task.failed_num, task.skipped_num) == (n, n, 0, 0)
    assert (task.total_size, task.complete_size, task.real_size) == (total, total, total)
    assert task.progress == 1 and task.is_query_over is True and task.left_time == 0
    assert task.migrate_since == 0 and task.migrate_speed == 0
    assert abs(task.start_time / 1000 - started) < 30 and task.total_time > 0
    assert (task.task_type, task.group_type, task.task_priority) == ("prefix", "NORMAL_TASK", "HIGH")
    assert task.description == "nightly copy" and task.name == created.task_name
    assert task.src_node.bucket == sb and task.src_node.cloud_type == "Aliyun" and task.dst_node.bucket == db
    assert task.bandwidth_policy[0].max_bandwidth == MiB
    assert_no_credentials(task.raw_content, seaweed_a, seaweed_b)
    # Progress moved while it ran: a running sample part-way through.
    moving = [t for t in samples if t.status == 2 and 0 < t.complete_size < total]
    assert moving, [(t.status, t.complete_size) for t in samples]
    assert any(0 < t.progress < 1 for t in moving)
    # 1 MiB/s over ~1.2 MB (half a second of burst allowed): the window was enforced.
    assert task.total_time >= 400, task.total_time

    got = listing(seaweed_b, db)
    assert {k: v[0] for k, v in got.items()} == {k: len(v) for k, v in bodies.items()}
    dst = s3_client(seaweed_b)
    for k in [*list(bodies)[::9], "a b/c", "ü/ñ.txt"]:
        assert dst.get_object(Bucket=db, Key=k)["Body"].read() == bodies[k]
    success = svc.service.data_dir / "records" / svc.tenant.project_id / str(task.id) / "success.jsonl"
    assert len(success.read_text().splitlines()) == n
    assert task.failed_object_record.result is False and task.failed_object_record.list_file_key is None

    listed = client.list_tasks(ListTasksRequest(limit=100))
    assert created.id in [t.id for t in listed.tasks] and listed.count >= 1
    assert_no_credentials(listed.raw_content, seaweed_a, seaweed_b)
    assert created.id not in [t.id for t in svc.client(svc.other).list_tasks(ListTasksRequest()).tasks or []]
    with pytest.raises(ClientRequestException) as info:
        svc.client(svc.other).show_task(ShowTaskRequest(task_id=created.id))
    assert_error(info.value, 404, "OMS.0054")
    # The stored row holds the keys only encrypted, and a finished task does not keep them at all.
    with svc.service.engine.connect() as conn:
        stored = conn.execute(select(migration_tasks).where(migration_tasks.c.id == created.id)).mappings().one()
    assert stored["secrets"] is None
    assert seaweed_a.secret_key not in json.dumps(dict(stored), default=str)


def test_save_prefix_is_a_folder(svc: FerryService, seaweed_a: Any, seaweed_b: Any, bucket_factory: Any) -> None:
    """`save_prefix="all"` is the folder `all/`: the source key as OMS keeps it goes under it, never glued on."""
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, sb, {"photos/2024/img.jpg": b"jpeg", "other.txt": b"no"})
    client = svc.client()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, object_key=["photos/"],
                                             save_prefix="all"))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert task.status == 5, task.error_reason
    assert set(listing(seaweed_b, db)) == {"all/photos/2024/img.jpg"}
    assert task.dst_node.save_prefix == "all/"
    # The object lists name both keys: the source's, and where it went.
    success = records_dir(svc.service.data_dir, svc.tenant.project_id, created.id) / "success.jsonl"
    assert [(x["key"], x["dst_key"]) for x in map(json.loads, success.read_text().splitlines())] == [
        ("photos/2024/img.jpg", "all/photos/2024/img.jpg")]


def test_read_only_destination_fails_the_task_with_its_reason(svc: FerryService, seaweed_a: Any, seaweed_b: Any,
                                                               bucket_factory: Any) -> None:
    """Keys that may not write the destination: the task fails (4) at once with an error_reason that names the
    destination and the keys to fix, instead of retrying (6) with no reason."""
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, sb, {f"k{i}": b"data" for i in range(20)})
    reader = SimpleNamespace(access_key=seaweed_b.read_only_key, secret_key=seaweed_b.read_only_secret)
    client = svc.client()
    created = client.create_task(prefix_task(seaweed_a, sb, reader, db))
    task, samples = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert task.status == 4 and [t.status for t in samples if t.status == 6] == []
    assert task.error_reason.error_code == "TRF.0051", task.error_reason
    assert task.error_reason.error_msg.startswith("destination: ") and "AccessDenied" in task.error_reason.error_msg
    assert "dst_ak" in task.error_reason.error_msg
    assert listing(seaweed_b, db) == {}
    # Status 6 (retrying: a run failed for a passing reason and is tried again) is a filter like the others.
    retrying = client.list_tasks(ListTasksRequest(status=6, limit=100))
    assert all(t.status == 6 for t in retrying.tasks or [])


def test_a_large_object_shows_progress_while_it_moves(svc: FerryService, seaweed_a: Any, seaweed_b: Any,
                                                      bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    body = os.urandom(24 * MiB)  # one object, streamed into one PUT
    fill(seaweed_a, sb, {"big.bin": body})
    client = svc.client()
    # 6 MiB/s: about 3.5 s, in which show_task must see the bytes move, not only the object at its end.
    limited = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=6 * MiB)]
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=limited))
    task, samples = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert task.status == 5, task.error_reason
    assert (task.total_size, task.complete_size, task.real_size, task.successful_num) == (len(body),) * 3 + (1,)
    moving = [t for t in samples if t.status == 2 and 0 < t.complete_size < len(body)]
    assert moving, [(t.status, t.complete_size, t.progress) for t in samples]
    assert all(0 < t.progress < 1 and t.successful_num == 0 for t in moving)
    assert any(t.migrate_speed > 0 for t in moving), [(t.complete_size, t.migrate_speed) for t in moving]


def test_the_failed_object_list_is_written_into_the_destination_bucket(
        svc: FerryService, seaweed_a: Any, seaweed_b: Any, bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, sb, {"a.txt": b"a", "b.txt": b"bb"})
    client = svc.client()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, task_type="object",
                                             object_key=["a.txt", "b.txt", "gone/x y.bin"]))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert (task.status, task.successful_num, task.failed_num) == (4, 2, 1), task.error_reason
    assert task.error_reason.error_code == "FERRY.0422"
    record = task.failed_object_record
    # Where OMS puts it: oms/task/<task name>/failed_object_lists/<timestamp>.failed_list.txt
    assert re.fullmatch(rf"oms/task/{task.name}/failed_object_lists/\d{{13}}\.failed_list\.txt",
                        record.list_file_key or ""), record
    assert record.result is True and not record.error_code
    listed = s3_client(seaweed_b).get_object(Bucket=db, Key=record.list_file_key)["Body"].read()
    assert [json.loads(x)["key"] for x in listed.decode().splitlines()] == ["gone/x y.bin"]
    assert "does not exist" in json.loads(listed)["reason"]
    # The server keeps its own copy, in records/ of its data directory.
    local = svc.service.data_dir / "records" / svc.tenant.project_id / str(task.id) / "failed.jsonl"
    assert local.read_bytes() == listed

    # Retried once the object exists: nothing failed this time, so no list; the earlier one stays, as in OMS.
    fill(seaweed_a, sb, {"gone/x y.bin": b"late"})
    client.start_task(StartTaskRequest(task_id=created.id, body=StartTaskReq(
        src_ak=seaweed_a.access_key, src_sk=seaweed_a.secret_key,
        dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key, migrate_failed_object=True)))
    done, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert done.status == 5 and done.failed_object_record.list_file_key is None
    assert set(listing(seaweed_b, db)) == {"a.txt", "b.txt", "gone/x y.bin", record.list_file_key}


def test_stop_start_resume_and_lifecycle_rules(svc: FerryService, seaweed_a: Any, seaweed_b: Any,
                                               bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"p/{i:04d}": os.urandom(16 * 1024) for i in range(160)}
    fill(seaweed_a, sb, bodies)
    client = svc.client()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=WHOLE_DAY))
    task_id = created.id
    wait_task(client, task_id, lambda t: t.status == 2 and t.successful_num >= 15)

    for call in (lambda: client.delete_task(DeleteTaskRequest(task_id=task_id)),
                 lambda: client.start_task(StartTaskRequest(task_id=task_id, body=StartTaskReq(
                     src_ak=seaweed_a.access_key, src_sk=seaweed_a.secret_key,
                     dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))):
        with pytest.raises(ClientRequestException) as info:
            call()
        assert_error(info.value, 409, "OMS.0070")

    assert client.stop_task(StopTaskRequest(task_id=task_id)).status_code == 200
    paused, samples = wait_task(client, task_id, lambda t: t.status == 3)
    assert all(t.status in (2, 7, 3) for t in samples)
    assert 15 <= paused.successful_num < len(bodies)
    before = listing(seaweed_b, db)
    time.sleep(1.1)  # a re-copy would now show a newer LastModified
    with pytest.raises(ClientRequestException) as info:
        client.stop_task(StopTaskRequest(task_id=task_id))
    assert_error(info.value, 409, "OMS.0070")
    assert client.show_task(ShowTaskRequest(task_id=task_id)).successful_num == paused.successful_num

    # A paused task is unfinished: its policy may change; lift the limit so the rest goes fast.
    client.update_bandwidth_policy(UpdateBandwidthPolicyRequest(
        task_id=task_id, body=UpdateBandwidthPolicyReq(bandwidth_policy=[])))
    with pytest.raises(ClientRequestException) as info:
        client.start_task(StartTaskRequest(task_id=task_id, body=StartTaskReq(
            dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))
    assert_error(info.value, 400, "OMS.0001")  # the source keys are missing
    client.start_task(StartTaskRequest(task_id=task_id, body=StartTaskReq(
        src_ak=seaweed_a.access_key, src_sk=seaweed_a.secret_key,
        dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))
    done, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    assert done.status == 5, done.error_reason
    assert (done.total_num, done.successful_num + done.skipped_num, done.failed_num) == (160, 160, 0)
    assert done.bandwidth_policy == [] or done.bandwidth_policy is None
    after = listing(seaweed_b, db)
    assert {k: v[0] for k, v in after.items()} == {k: len(v) for k, v in bodies.items()}
    assert all(after[k] == v for k, v in before.items()), "an object finished before the pause was copied again"

    with pytest.raises(ClientRequestException) as info:
        client.update_bandwidth_policy(UpdateBandwidthPolicyRequest(
            task_id=task_id, body=UpdateBandwidthPolicyReq(bandwidth_policy=WHOLE_DAY)))
    assert_error(info.value, 409, "OMS.0070")
    client.delete_task(DeleteTaskRequest(task_id=task_id))
    next_second()
    for call in (lambda: client.show_task(ShowTaskRequest(task_id=task_id)),
                 lambda: client.delete_task(DeleteTaskRequest(task_id=task_id))):
        with pytest.raises(ClientRequestException) as info:
            call()
        assert_error(info.value, 404, "OMS.0054")


def test_object_and_list_tasks_retry_only_failed_objects(svc: FerryService, seaweed_a: Any, seaweed_b: Any,
                                                         bucket_factory: Any) -> None:
    sb, db, db2 = bucket_factory(seaweed_a), bucket_factory(seaweed_b), bucket_factory(seaweed_b)
    bodies = {"f/1": b"one", "f/2": b"two", "f/sub/3": b"three", "g/4": b"four", "h": b"aitch", "h2": b"x"}
    fill(seaweed_a, sb, bodies)
    client = svc.client()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, task_type="object",
                                             object_key=["f/", "h", "later"]))
    failed, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert failed.status == 4
    assert (failed.successful_num, failed.failed_num) == (4, 1), failed
    assert failed.error_reason.error_code == "FERRY.0422"
    assert failed.failed_object_record.result is True
    failed_list = failed.failed_object_record.list_file_key
    lines = [json.loads(x) for x in get_text(seaweed_b, db, failed_list).splitlines()]
    assert [x["key"] for x in lines] == ["later"]
    assert set(listing(seaweed_b, db)) == {"f/1", "f/2", "f/sub/3", "h", failed_list}
    before = listing(seaweed_b, db)
    time.sleep(1.1)

    fill(seaweed_a, sb, {"later": b"now it exists"})
    client.start_task(StartTaskRequest(task_id=created.id, body=StartTaskReq(
        src_ak=seaweed_a.access_key, src_sk=seaweed_a.secret_key,
        dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key, migrate_failed_object=True)))
    done, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert done.status == 5 and (done.successful_num, done.failed_num) == (5, 0)
    after = listing(seaweed_b, db)
    assert set(after) == {"f/1", "f/2", "f/sub/3", "h", "later", failed_list}
    assert all(after[k] == v for k, v in before.items()), "a retry of failed objects copied others again"

    # A list task: the list file lives in a bucket of the destination region, one URL-encoded key per line.
    s3_client(seaweed_b).put_object(Bucket=db2, Key="lists/keys.txt", Body=b"g/4\nf%2F1\n\nh2\n",
                                    ContentType="text/plain")
    listed = client.create_task(prefix_task(
        seaweed_a, sb, seaweed_b, db2, task_type="list", object_key=None, save_prefix="copy/",
        list_file=ListFile(list_file_key="lists/keys.txt", obs_bucket=db2)))
    lt, _ = wait_task(client, listed.id, lambda t: t.status in (4, 5))
    assert lt.status == 5 and lt.successful_num == 3, lt.error_reason
    assert set(listing(seaweed_b, db2)) == {"lists/keys.txt", "copy/g/4", "copy/f/1", "copy/h2"}
    assert lt.src_node.list_file.list_file_key == "lists/keys.txt"

    # migrate_since (seconds in, ms out): everything older is skipped, counted, and not copied.
    since = int(time.time()) + 3600
    db3 = bucket_factory(seaweed_b)
    skipped = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db3, migrate_since=since))
    st, _ = wait_task(client, skipped.id, lambda t: t.status in (4, 5))
    assert (st.status, st.skipped_num, st.successful_num, st.migrate_since) == (5, 7, 0, since * 1000)
    assert listing(seaweed_b, db3) == {}

    missing = client.create_task(prefix_task(
        seaweed_a, sb, seaweed_b, db2, task_type="list", object_key=None,
        list_file=ListFile(list_file_key="lists/none.txt", obs_bucket=db2)))
    mt, _ = wait_task(client, missing.id, lambda t: t.status in (4, 5))
    assert mt.status == 4 and mt.error_reason.error_code == "TRF.0013"


def test_url_list_task_fetches_http_sources(svc: FerryService, seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                             http_files: tuple[Path, str]) -> None:
    root, base = http_files
    sub = f"set-{os.urandom(4).hex()}"
    files = {f"{sub}/pics/a.jpg": os.urandom(5000), f"{sub}/pics/b.jpg": os.urandom(7000), f"{sub}/doc.txt": b"hi"}
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    db = bucket_factory(seaweed_b)
    port = base.rsplit(":", 1)[1]
    # The file server is allowed as 127.0.0.1:<port> only; other spellings of loopback must not reach it.
    internal = {
        "blocked": "http://127.0.0.1:9/internal",  # loopback, and not allowed by the operator
        "via-localhost": f"http://localhost:{port}/{sub}/doc.txt",
        "via-mapped": f"http://[::ffff:127.0.0.1]:{port}/{sub}/doc.txt",
        "via-compatible": f"http://[::127.0.0.1]:{port}/{sub}/doc.txt",
    }
    name = loopback_name()
    if name is not None:
        internal["via-name"] = f"http://{name}:{port}/{sub}/doc.txt"  # a DNS name resolving to 127.0.0.1
    bad_ports = {"port-too-big": f"http://example.com:99999/{sub}/doc.txt",
                 "port-not-a-number": f"http://example.com:abc/{sub}/doc.txt",
                 "port-zero": f"http://example.com:0/{sub}/doc.txt"}
    lines = [
        f"{base}/{sub}/pics/a.jpg\tmedia/a.jpg",
        f"{base}/{sub}/pics/b.jpg",  # no name: the URL's path
        f"{base}/{sub}/doc.txt\tdocs%2Fdoc%20one.txt",
        *(f"{url}\t{key}" for key, url in {**internal, **bad_ports}.items()),
        f"{base}/{sub}/later.bin\tlater.bin",  # not there yet
    ]
    s3_client(seaweed_b).put_object(Bucket=db, Key="lists/urls.txt", Body="\n".join(lines).encode())
    client = svc.client()
    body = SdkCreateTaskReq(
        task_type="url_list",
        src_node=SrcNodeReq(cloud_type="URLSource", list_file=ListFile(list_file_key="lists/urls.txt", obs_bucket=db)),
        dst_node=DstNodeReq(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, bucket=db, region="cn-north-4"))
    created = client.create_task(CreateTaskRequest(body=body))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    failed = len(internal) + len(bad_ports) + 1
    assert task.status == 4 and (task.successful_num, task.failed_num) == (3, failed), task.error_reason
    assert task.src_node.cloud_type == "URLSource" and task.task_type == "url_list"
    reasons = {x["key"]: x["reason"] for x in map(json.loads, get_text(
        seaweed_b, db, task.failed_object_record.list_file_key).splitlines())}
    assert set(reasons) == {*internal, *bad_ports, "later.bin"}
    for key in internal:
        assert "not a public address" in reasons[key] and "not allowed" in reasons[key], reasons[key]
    for key in bad_ports:
        assert "port" in reasons[key], reasons[key]
    assert {k for k in listing(seaweed_b, db) if not k.startswith("oms/")} == {
        "lists/urls.txt", "media/a.jpg", f"{sub}/pics/b.jpg", "docs/doc one.txt"}
    dst = s3_client(seaweed_b)
    assert dst.get_object(Bucket=db, Key="media/a.jpg")["Body"].read() == files[f"{sub}/pics/a.jpg"]
    assert dst.get_object(Bucket=db, Key=f"{sub}/pics/b.jpg")["Body"].read() == files[f"{sub}/pics/b.jpg"]
    assert dst.get_object(Bucket=db, Key="docs/doc one.txt")["Body"].read() == b"hi"

    (root / sub / "later.bin").write_bytes(b"late")
    client.start_task(StartTaskRequest(task_id=created.id, body=StartTaskReq(
        dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key, migrate_failed_object=True)))
    again, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert (again.status, again.successful_num, again.failed_num) == (4, 4, failed - 1)
    assert dst.get_object(Bucket=db, Key="later.bin")["Body"].read() == b"late"


def test_a_paused_url_list_task_keeps_the_urls_it_could_not_fetch(svc: FerryService, seaweed_b: Any,
                                                                   bucket_factory: Any,
                                                                   http_files: tuple[Path, str]) -> None:
    root, base = http_files
    sub = f"slow/p{os.urandom(4).hex()}"
    names = [f"{sub}/f{i:02d}.bin" for i in range(64)]
    (root / sub).mkdir(parents=True)
    for name in names:
        (root / name).write_bytes(os.urandom(1024))
    # The first key answers 404: a run stopped once the job's watermark is past it never looks at it again.
    lines = [f"{base}/{name}" for name in names] + [f"{base}/{sub}/gone\t{sub}/f00.a"]
    db = bucket_factory(seaweed_b)
    s3_client(seaweed_b).put_object(Bucket=db, Key="lists/urls.txt", Body="\n".join(lines).encode())
    client = svc.client()
    body = SdkCreateTaskReq(
        task_type="url_list", enable_failed_object_recording=True,
        src_node=SrcNodeReq(cloud_type="URLSource", list_file=ListFile(list_file_key="lists/urls.txt", obs_bucket=db)),
        dst_node=DstNodeReq(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, bucket=db, region="cn-north-4"))
    task_id = int(client.create_task(CreateTaskRequest(body=body)).id)
    engine = svc.service.engine

    def watermark() -> str | None:
        task = TaskRepo(engine).get(task_id)
        job = JobRepo(engine).get(task.job_id) if task is not None and task.job_id else None
        return job.watermark if job is not None else None

    deadline = time.monotonic() + 60
    while watermark() is None:
        assert time.monotonic() < deadline, "no watermark"
        time.sleep(0.05)
    client.stop_task(StopTaskRequest(task_id=task_id))
    paused, _ = wait_task(client, task_id, lambda t: t.status in (3, 4, 5))
    assert paused.status == 3 and paused.successful_num < len(names), "it ended before the stop"
    client.start_task(StartTaskRequest(task_id=task_id, body=StartTaskReq(
        dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    assert (task.status, task.successful_num + task.skipped_num, task.failed_num, task.total_num) == (4, 64, 1, 65)
    reasons = {x["key"]: x["reason"] for x in map(json.loads, get_text(
        seaweed_b, db, task.failed_object_record.list_file_key).splitlines())}
    assert list(reasons) == [f"{sub}/f00.a"] and "HTTP 404" in reasons[f"{sub}/f00.a"], reasons


def loopback_name() -> str | None:
    """A name of this machine that resolves only to loopback without a local suffix (its hostname from
    /etc/hosts, usually): what a check of the name alone lets through."""
    for name in (socket.gethostname(), "localhost.localdomain"):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            continue
        local = name.lower() == "localhost" or name.lower().endswith((".localhost", ".local", ".internal"))
        if infos and not local and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos):
            return name
    return None


def test_error_paths(svc: FerryService, seaweed_a: Any, seaweed_b: Any, bucket_factory: Any) -> None:
    client = svc.client()
    db = bucket_factory(seaweed_b)
    good = prefix_task(seaweed_a, "no-such-bucket-here", seaweed_b, db)

    bad_sig = oms_client(svc.url, svc.tenant.ak, svc.tenant.sk + "x", svc.tenant.project_id)
    with pytest.raises(ClientRequestException) as info:
        bad_sig.create_task(good)
    assert_error(info.value, 401, "APIGW.0301")
    wrong_project = oms_client(svc.url, svc.tenant.ak, svc.tenant.sk, svc.other.project_id)
    with pytest.raises(ClientRequestException) as info:
        wrong_project.list_tasks(ListTasksRequest())
    assert_error(info.value, 403, "APIGW.0302")

    def refused(request: Any, status: int, code: str) -> ClientRequestException:
        with pytest.raises(ClientRequestException) as info:
            client.create_task(request)
        assert_error(info.value, status, code)
        return info.value

    bad_enum = prefix_task(seaweed_a, "b1", seaweed_b, db)
    bad_enum.body.object_overwrite_mode = "SOMETIMES"
    assert "object_overwrite_mode" in refused(bad_enum, 400, "OMS.0001").error_msg
    bad_type = prefix_task(seaweed_a, "b1", seaweed_b, db, task_type="folder")
    refused(bad_type, 400, "OMS.0001")
    long_desc = prefix_task(seaweed_a, "b1", seaweed_b, db, description="x" * 256)
    assert "too long" in refused(long_desc, 400, "OMS.0001").error_msg
    refused(prefix_task(seaweed_a, "b1", seaweed_b, db, description="a <b>"), 400, "OMS.0078")
    wrong_region = prefix_task(seaweed_a, "b1", seaweed_b, db)
    wrong_region.body.dst_node.region = "cn-nowhere-1"
    refused(wrong_region, 400, "OMS.0060")
    not_url = prefix_task(seaweed_a, "b1", seaweed_b, db, task_type="url_list",
                          list_file=ListFile(list_file_key="u.txt", obs_bucket=db))
    assert "URLSource" in refused(not_url, 400, "OMS.0001").error_msg

    for call in (lambda: client.show_task(ShowTaskRequest(task_id=123456789012345)),
                 lambda: client.stop_task(StopTaskRequest(task_id=123456789012345)),
                 lambda: client.delete_task(DeleteTaskRequest(task_id=123456789012345))):
        with pytest.raises(ClientRequestException) as info:
            call()
        assert_error(info.value, 404, "OMS.0054")
    with pytest.raises(ClientRequestException) as info:
        client.show_task(ShowTaskRequest(task_id=0))
    assert_error(info.value, 400, "OMS.0054")

    # A source bucket that does not exist fails the task with the documented reason.
    created = client.create_task(good)
    failed, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    assert failed.status == 4 and failed.error_reason.error_code == "TRF.0155", failed.error_reason
    assert_no_credentials(failed.raw_content, seaweed_a, seaweed_b)
    with pytest.raises(ClientRequestException) as info:
        client.stop_task(StopTaskRequest(task_id=created.id))
    assert_error(info.value, 409, "OMS.0070")

    # Batch update: the policy and (for a failed task) the priority change; unknown ids change nothing.
    policy = [BandwidthPolicyDto(start="22:00", end="06:00", max_bandwidth=20 * MiB)]
    client.batch_update_tasks(BatchUpdateTasksRequest(body=BatchUpdateTasksReq(
        ids=[created.id], bandwidth_policy=policy, task_priority="LOW")))
    shown = client.show_task(ShowTaskRequest(task_id=created.id))
    assert shown.task_priority == "LOW" and shown.bandwidth_policy[0].start == "22:00"
    for body, status, code in (
        (BatchUpdateTasksReq(ids=[created.id, 999999999999999], bandwidth_policy=[]), 404, "OMS.0054"),
        (BatchUpdateTasksReq(group_id="no-such-group", bandwidth_policy=[]), 404, "OMS.1009"),
        (BatchUpdateTasksReq(bandwidth_policy=[]), 400, "OMS.0001"),
        (BatchUpdateTasksReq(ids=[created.id], group_id="g", bandwidth_policy=[]), 400, "OMS.0001"),
    ):
        with pytest.raises(ClientRequestException) as info:
            client.batch_update_tasks(BatchUpdateTasksRequest(body=body))
        assert_error(info.value, status, code)
    overlapping = [BandwidthPolicyDto(start="01:00", end="03:00", max_bandwidth=MiB),
                   BandwidthPolicyDto(start="02:00", end="04:00", max_bandwidth=MiB)]
    with pytest.raises(ClientRequestException) as info:
        client.update_bandwidth_policy(UpdateBandwidthPolicyRequest(
            task_id=created.id, body=UpdateBandwidthPolicyReq(bandwidth_policy=overlapping)))
    assert_error(info.value, 400, "OMS.0001")

    # Filters and paging of list_tasks.
    failed_only = client.list_tasks(ListTasksRequest(status=4, limit=100))
    assert created.id in [t.id for t in failed_only.tasks] and all(t.status == 4 for t in failed_only.tasks)
    named = client.list_tasks(ListTasksRequest(task_name=failed.name))
    assert [t.id for t in named.tasks] == [created.id] and named.count == 1
    page = client.list_tasks(ListTasksRequest(limit=1, offset=0))
    assert len(page.tasks) == 1 and page.count >= 1
    with pytest.raises(ClientRequestException) as info:
        client.list_tasks(ListTasksRequest(status=8))
    assert_error(info.value, 400, "OMS.0001")
    client.delete_task(DeleteTaskRequest(task_id=created.id))


def test_creation_quotas(svc: FerryService, seaweed_a: Any, seaweed_b: Any) -> None:
    ctx = svc.service.services.tasks
    assert ctx is not None
    tight = TaskContext(engine=ctx.engine, box=ctx.box, data_dir=ctx.data_dir,
                        limits=TaskLimits(created_per_day=2, waiting=10))
    body = {
        "task_type": "prefix",
        "src_node": {"cloud_type": "Aliyun", "region": "cn-hangzhou", "ak": seaweed_a.access_key,
                     "sk": seaweed_a.secret_key, "bucket": "no-such-source", "object_key": [""]},
        "dst_node": {"ak": seaweed_b.access_key, "sk": seaweed_b.secret_key, "bucket": "no-such-target",
                     "region": "cn-north-4"},
    }
    project = svc.other.project_id
    ids = [task_service.create_task(tight, project, CreateTaskReq.model_validate(body)).id for _ in range(2)]
    with pytest.raises(TaskError) as info:
        task_service.create_task(tight, project, CreateTaskReq.model_validate(body))
    assert (info.value.status, info.value.oms_code) == (400, "OMS.0077")
    client = svc.client(svc.other)
    for task_id in ids:
        wait_task(client, task_id, lambda t: t.status == 4)  # the source bucket does not exist
        task_service.delete_task(tight, project, task_id)
    with pytest.raises(TaskError):
        # Deleting does not give the day's quota back.
        task_service.create_task(tight, project, CreateTaskReq.model_validate(body))
    waiting = TaskContext(engine=ctx.engine, box=ctx.box, data_dir=ctx.data_dir,
                          limits=TaskLimits(created_per_day=100, waiting=0))
    with pytest.raises(TaskError) as info:
        task_service.create_task(waiting, svc.tenant.project_id, CreateTaskReq.model_validate(body))
    assert info.value.oms_code == "OMS.0077" and "waiting" in info.value.message
