"""Migration tasks in distributed mode on three `ferry worker` processes, a real Redis broker and PostgreSQL:
every object verified; a worker killed with kill -9 mid-unit; the broker restarted empty mid-task."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from ferry_service import fill, prefix_task, s3_client, start_service, wait_task
from huaweicloudsdkoms.v2 import (
    CreateTaskReq,
    CreateTaskRequest,
    DstNodeReq,
    ListFile,
    OmsClient,
    SrcNodeReq,
    StartTaskReq,
    StartTaskRequest,
    StopTaskRequest,
)
from sqlalchemy import select

from cluster import Cluster, cluster, rows, wait_for
from faultproxy import Damage, Trickle
from ferry.db.metric_models import metric_snapshots
from ferry.runner.distributed import DistributedRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(seaweed_a: Any, seaweed_b: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(seaweed_a, seaweed_b, tmp_path_factory.mktemp("cluster")) as made:
        yield made


@pytest.fixture(scope="module")
def http_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A plain HTTP server on 127.0.0.1 serving a directory: the source of url_list tasks."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _buckets(seaweed_a: Any, seaweed_b: Any, count: int, size: int = 4096) -> tuple[str, str, dict[str, bytes]]:
    src, dst = f"src-{uuid.uuid4().hex[:10]}", f"dst-{uuid.uuid4().hex[:10]}"
    s3_client(seaweed_a).create_bucket(Bucket=src)
    s3_client(seaweed_b).create_bucket(Bucket=dst)
    bodies = {f"d{i % 3}/obj-{i:05d}": os.urandom(size) for i in range(count)}
    fill(seaweed_a, src, bodies)
    return src, dst, bodies


def _etags(server: Any, bucket: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def _start(nodes: Cluster, seaweed_a: Any, seaweed_b: Any, src: str, dst: str) -> tuple[OmsClient, int]:
    client = nodes.live.client()
    made = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst))
    return client, int(made.id)


def _held_unit(nodes: Cluster, task_id: int, pids: Collection[int], wanted: Callable[[Any], bool],
               what: str) -> dict[str, Any]:
    """Wait (60 s at most) for a running unit of the task that one of `pids` holds and `wanted` accepts: its id
    (`unit`), the holder's `pid` and lease `owner`, and its `done` objects."""
    found: dict[str, Any] = {}

    def held() -> bool:
        for u in nodes.units(task_id):
            owner = u["lease_owner"] or ""
            pid = int(owner.split("/")[1]) if owner.count("/") == 2 else -1
            if u["state"] == "running" and pid in pids and wanted(u):
                found.update(unit=u["id"], pid=pid, owner=owner, done=u["objects_done"])
                return True
        return False

    wait_for(held, 60, what)
    return found


def _done(client: OmsClient, task_id: int, timeout: float = 120.0) -> Any:
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5), timeout=timeout, every=0.2)
    return task


def test_a_task_runs_on_three_workers_and_every_object_is_verified(nodes: Cluster, seaweed_a: Any,
                                                                    seaweed_b: Any) -> None:
    src, dst, _ = _buckets(seaweed_a, seaweed_b, 150)
    done_before = {r["id"]: r["units_done"] for r in nodes.worker_rows()}
    client, task_id = _start(nodes, seaweed_a, seaweed_b, src, dst)
    task = _done(client, task_id)
    assert task.status == 5, task.error_reason
    assert (task.total_num, task.successful_num, task.failed_num) == (150, 150, 0)
    assert _etags(seaweed_b, dst) == _etags(seaweed_a, src)
    units = nodes.units(task_id)
    kinds = [u["kind"] for u in units]
    # The listing was split by folder: the bucket's root unit handed each of d0/, d1/ and d2/ on as a range unit
    # of its own, and each of those its copies in units of at most 20 objects (--unit-keys 20).
    ranges = sorted(json.loads(u["spec"])["items"][0][0] for u in units if u["kind"] == "range")
    assert ranges == ["", "d0/", "d1/", "d2/"], ranges
    assert kinds.count("keys") == 9 and all(u["state"] == "done" for u in units)
    assert sum(u["objects_done"] for u in units if u["kind"] == "keys") == 150
    # The work was spread: more than one worker process finished units of it.
    def worked() -> list[Any]:  # each worker reports its count with its heartbeat, every 5 s
        return [r for r in nodes.worker_rows() if r["units_done"] > done_before.get(r["id"], 0)]

    wait_for(lambda: sum(r["units_done"] - done_before.get(r["id"], 0) for r in worked()) >= len(units), 20,
             "the workers' counts")
    assert len(worked()) >= 2, nodes.worker_rows()
    # Nothing of the task's credentials is in any unit (a message carries only the id).
    assert all("secret" not in u["spec"].lower() and seaweed_a.secret_key not in u["spec"] for u in units)
    # Each worker publishes its own tallies for the server's /metrics (it serves none itself).
    pids = {str(p.pid) for p in nodes.live_workers()}

    def published() -> set[str]:
        found = rows(nodes.live.service.engine, select(metric_snapshots.c.source))
        return {r["source"].rsplit("/", 1)[-1] for r in found if r["source"].startswith("worker@")}

    wait_for(lambda: pids <= published(), 20, "the workers' metric snapshots")


def test_a_failed_object_is_listed_and_fails_the_task_as_embedded(nodes: Cluster, seaweed_a: Any,
                                                                   seaweed_b: Any) -> None:
    src, dst, bodies = _buckets(seaweed_a, seaweed_b, 30)
    bad = "d1/obj-00004"
    # Every write of that one object arrives damaged: its verification fails, each time.
    rule = nodes.proxy.add(Damage(count=2), method="PUT", path=f"^/{dst}/{bad}$")
    try:
        client = nodes.live.client()
        made = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, enable_failed_object_recording=True))
        task = _done(client, int(made.id))
    finally:
        nodes.proxy.remove(rule)
    assert rule.fired >= 1
    assert (task.status, task.successful_num, task.failed_num, task.total_num) == (4, 29, 1, 30)
    assert task.error_reason.error_code == "FERRY.0422"
    listed = task.failed_object_record.list_file_key
    assert listed, task.failed_object_record
    body = s3_client(seaweed_b).get_object(Bucket=dst, Key=listed)["Body"].read().decode()
    assert [json.loads(line)["key"] for line in body.splitlines()] == [bad]
    copied = _etags(seaweed_b, dst)
    assert bad not in copied and len([k for k in copied if k in bodies]) == 29


def _url_list_task(client: OmsClient, seaweed_b: Any, dst: str, lines: list[str]) -> int:
    s3_client(seaweed_b).put_object(Bucket=dst, Key="lists/urls.txt", Body="\n".join(lines).encode())
    body = CreateTaskReq(
        task_type="url_list", enable_failed_object_recording=True,
        src_node=SrcNodeReq(cloud_type="URLSource", list_file=ListFile(list_file_key="lists/urls.txt", obs_bucket=dst)),
        dst_node=DstNodeReq(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, bucket=dst, region="cn-north-4"))
    return int(client.create_task(CreateTaskRequest(body=body)).id)


def _url_list_run(client: OmsClient, seaweed_b: Any, dst: str, lines: list[str], later: Path) -> list[Any]:
    """A url_list task over `lines`, then (once `later` exists) its failed objects again: both runs' tasks."""
    task_id = _url_list_task(client, seaweed_b, dst, lines)
    first = _done(client, task_id)
    later.write_bytes(b"late")
    try:
        client.start_task(StartTaskRequest(task_id=task_id, body=StartTaskReq(
            dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key, migrate_failed_object=True)))
        again = _done(client, task_id)
    finally:
        later.unlink()
    return [first, again]


def _failed_reasons(seaweed_b: Any, dst: str, task: Any) -> dict[str, str]:
    text = s3_client(seaweed_b).get_object(Bucket=dst, Key=task.failed_object_record.list_file_key)["Body"].read()
    return {x["key"]: x["reason"] for x in map(json.loads, text.decode().splitlines())}


def _counts(task: Any) -> tuple[Any, ...]:
    return (task.status, task.total_num, task.successful_num, task.failed_num, task.skipped_num, task.total_size,
            task.complete_size, task.real_size, task.progress,
            task.error_reason.error_code if task.error_reason else None)


def test_a_url_list_task_runs_on_the_workers_as_embedded(nodes: Cluster, seaweed_b: Any, http_files: tuple[Path, str],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root, base = http_files
    sub = f"u{uuid.uuid4().hex[:8]}"
    (root / sub).mkdir()
    files = {f"{sub}/f{i:02d}.bin": os.urandom(3000 + i) for i in range(12)}
    for name, body in files.items():
        (root / name).write_bytes(body)
    port = base.rsplit(":", 1)[1]
    failing = {
        "missing.bin": f"{base}/{sub}/missing.bin",  # a 404 (there for the rerun of failed objects)
        "blocked": "http://127.0.0.1:9/internal",  # loopback, and not allowed by the operator
        "via-localhost": f"http://localhost:{port}/{sub}/f00.bin",  # the allowed server by another name
    }
    lines = [f"{base}/{name}" if i % 2 else f"{base}/{name}\tnamed/{name.rsplit('/', 1)[1]}"
             for i, name in enumerate(files)] + [f"{url}\t{key}" for key, url in failing.items()]
    wanted = {(name if i % 2 else f"named/{name.rsplit('/', 1)[1]}"): body
              for i, (name, body) in enumerate(files.items())}
    # The allow-list is the server's when the task is made, stored with it: the workers' own environment names
    # no URLSource, and must not need to.
    table = {**json.loads(os.environ["FERRY_ENDPOINT_OVERRIDES"]), "URLSource/test-files": base}
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(table))
    assert "URLSource" not in nodes.env["FERRY_ENDPOINT_OVERRIDES"]

    # The same list embedded, for the counters and reasons to equal.
    monkeypatch.delenv("FERRY_BROKER_URL")
    embedded = start_service(tmp_path / "embedded", f"sqlite:///{tmp_path / 'embedded.db'}")
    try:
        edst = f"dst-{uuid.uuid4().hex[:10]}"
        s3_client(seaweed_b).create_bucket(Bucket=edst)
        expected = _url_list_run(embedded.value.client(), seaweed_b, edst, lines, root / sub / "missing.bin")
    finally:
        embedded.close()
    monkeypatch.setenv("FERRY_BROKER_URL", nodes.broker_url)

    runner = nodes.live.service.runner
    assert isinstance(runner, DistributedRunner)
    # Units of 5 URLs (the coordinator's default is 1,000): the list is spread over the workers.
    monkeypatch.setattr(runner, "dispatch", dataclasses.replace(runner.dispatch, unit_keys=5))
    dst = f"dst-{uuid.uuid4().hex[:10]}"
    s3_client(seaweed_b).create_bucket(Bucket=dst)
    done_before = sum(r["units_done"] for r in nodes.worker_rows())
    got = _url_list_run(nodes.live.client(), seaweed_b, dst, lines, root / sub / "missing.bin")
    assert [_counts(t) for t in got] == [_counts(t) for t in expected]
    first, again = got
    assert (first.status, first.successful_num, first.failed_num) == (4, 12, 3), first.error_reason
    assert (again.status, again.successful_num, again.failed_num) == (4, 13, 2), again.error_reason
    reasons = _failed_reasons(seaweed_b, dst, first)
    assert reasons == _failed_reasons(seaweed_b, edst, expected[0])
    assert "HTTP 404" in reasons["missing.bin"], reasons
    for key in ("blocked", "via-localhost"):  # the SSRF guard on the worker, as on the server
        assert "not a public address" in reasons[key] and "not allowed" in reasons[key], reasons[key]
    assert set(_failed_reasons(seaweed_b, dst, again)) == {"blocked", "via-localhost"}
    # Every object's bytes are the URL's.
    s3 = s3_client(seaweed_b)
    for key, body in {**wanted, "missing.bin": b"late"}.items():
        assert s3.get_object(Bucket=dst, Key=key)["Body"].read() == body, key
    # The work was units the workers held: 3 of 5 URLs, then one for the failed ones.
    units = nodes.units(int(first.id))
    assert [(u["run"], len(json.loads(u["spec"])["urls"])) for u in units] == [(1, 5), (1, 5), (1, 5), (2, 3)]
    assert all(u["kind"] == "keys" and u["state"] == "done" and u["attempts"] >= 1 for u in units), units
    assert all(seaweed_b.secret_key not in u["spec"] for u in units)  # URLs and names only, never a key
    wait_for(lambda: sum(r["units_done"] for r in nodes.worker_rows()) >= done_before + len(units), 20,
             "the workers' counts")


def test_a_paused_url_list_task_resumes_from_its_units_and_keeps_its_failed_urls(
        nodes: Cluster, seaweed_b: Any, http_files: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = http_files
    sub = f"p{uuid.uuid4().hex[:8]}"
    (root / sub).mkdir()
    names = [f"{sub}/f{i:02d}.bin" for i in range(20)]
    for name in names:
        (root / name).write_bytes(os.urandom(4096))
    # Each unit's first key is a URL that answers 404: its result is only known to the unit that looked it up,
    # and a stop after the unit's watermark passed it must not lose it.
    lines = [f"{base}/{name}" for name in names] + [f"{base}/{sub}/gone-{i}\t{sub}/f{i:02d}.a" for i in (0, 10)]
    table = {**json.loads(os.environ["FERRY_ENDPOINT_OVERRIDES"]), "URLSource/test-files": base}
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(table))
    runner = nodes.live.service.runner
    assert isinstance(runner, DistributedRunner)
    monkeypatch.setattr(runner, "dispatch", dataclasses.replace(runner.dispatch, unit_keys=11))
    dst = f"dst-{uuid.uuid4().hex[:10]}"
    s3_client(seaweed_b).create_bucket(Bucket=dst)
    slow = nodes.proxy.add(Trickle(2048), method="PUT", path=f"^/{dst}/{sub}/")  # 2 s per object
    try:
        client = nodes.live.client()
        task_id = _url_list_task(client, seaweed_b, dst, lines)
        # Stopped once both units wrote a watermark: each is past the unit's 404, whose lookup came first.
        wait_for(lambda: [u["watermark"] is not None for u in nodes.units(task_id)] == [True, True], 60,
                 "both units' watermarks")
        client.stop_task(StopTaskRequest(task_id=task_id))
        wait_task(client, task_id, lambda t: t.status == 3, timeout=60, every=0.2)
        time.sleep(2.5)  # the workers' next lease renewal (see test_a_paused_task_resumes_from_its_units_watermarks)
        client.start_task(StartTaskRequest(task_id=task_id, body=StartTaskReq(
            dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))
        task = _done(client, task_id)
    finally:
        nodes.proxy.remove(slow)
    # An object written as the stop came, its result not yet recorded, is found at the destination: skipped.
    assert (task.status, task.successful_num + task.skipped_num, task.failed_num, task.total_num) == (4, 20, 2, 22)
    reasons = _failed_reasons(seaweed_b, dst, task)
    assert sorted(reasons) == [f"{sub}/f00.a", f"{sub}/f10.a"] and all("HTTP 404" in r for r in reasons.values())
    s3 = s3_client(seaweed_b)
    for name in names:
        assert s3.get_object(Bucket=dst, Key=name)["Body"].read() == (root / name).read_bytes(), name
    units = nodes.units(task_id)
    assert {u["run"] for u in units} == {1, 2} and all(u["kind"] == "keys" for u in units)
    # The second run is the first's unfinished units, each from its watermark: no URL was copied again but
    # those in flight at the stop (4 per worker process).
    assert all(u["start_after"] is not None for u in units if u["run"] == 2), units
    assert 20 <= slow.matched <= 20 + 2 * 12, slow.matched


def test_a_url_list_unit_whose_worker_is_killed_keeps_its_failed_url(
        nodes: Cluster, seaweed_b: Any, http_files: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = http_files
    sub = f"k{uuid.uuid4().hex[:8]}"
    (root / sub).mkdir()
    names = [f"{sub}/f{i:02d}.bin" for i in range(10)]
    for name in names:
        (root / name).write_bytes(os.urandom(4096))
    # One unit; its first key answers 404, and is recorded when the watermark passes it, before the kill.
    lines = [f"{base}/{name}" for name in names] + [f"{base}/{sub}/gone\t{sub}/f00.a"]
    table = {**json.loads(os.environ["FERRY_ENDPOINT_OVERRIDES"]), "URLSource/test-files": base}
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(table))
    dst = f"dst-{uuid.uuid4().hex[:10]}"
    s3_client(seaweed_b).create_bucket(Bucket=dst)
    slow = nodes.proxy.add(Trickle(2048), method="PUT", path=f"^/{dst}/{sub}/")  # 2 s per object
    try:
        client = nodes.live.client()
        task_id = _url_list_task(client, seaweed_b, dst, lines)
        pids = {w.pid: w for w in nodes.live_workers()}
        victim = _held_unit(nodes, task_id, pids, lambda u: u["watermark"] is not None,
                            "the unit's watermark past its 404")
        os.kill(victim["pid"], signal.SIGKILL)
        pids[victim["pid"]].wait(10)
        task = _done(client, task_id)
    finally:
        nodes.proxy.remove(slow)
    assert (task.status, task.successful_num + task.skipped_num, task.failed_num, task.total_num) == (4, 10, 1, 11)
    reasons = _failed_reasons(seaweed_b, dst, task)
    assert list(reasons) == [f"{sub}/f00.a"] and "HTTP 404" in reasons[f"{sub}/f00.a"], reasons
    unit = next(u for u in nodes.units(task_id) if u["id"] == victim["unit"])
    assert unit["attempts"] == 2 and unit["state"] == "done", unit
    nodes.start_worker()  # three again for the next test
    nodes.wait_registered(3)


def test_a_paused_task_resumes_from_its_units_watermarks(nodes: Cluster, seaweed_a: Any, seaweed_b: Any) -> None:
    count = 120
    src, dst, _ = _buckets(seaweed_a, seaweed_b, count)
    slow = nodes.proxy.add(Trickle(8192), method="PUT", path=f"^/{dst}/")
    try:
        client, task_id = _start(nodes, seaweed_a, seaweed_b, src, dst)
        wait_task(client, task_id, lambda t: t.successful_num >= 20, timeout=60, every=0.2)
        client.stop_task(StopTaskRequest(task_id=task_id))
        wait_task(client, task_id, lambda t: t.status == 3, timeout=60, every=0.2)
        first = nodes.units(task_id)
        # Stopping cancelled every open unit: the workers stop at their next heartbeat.
        assert first and all(u["state"] in ("done", "cancelled") for u in first)
        # A worker learns of it at its unit's next lease renewal (every --lease-ttl / 3 = 1.3 s here); a start
        # sooner than that could have the old and the new run copy the same objects side by side for a moment.
        time.sleep(2.5)
        client.start_task(StartTaskRequest(task_id=task_id, body=StartTaskReq(
            src_ak=seaweed_a.access_key, src_sk=seaweed_a.secret_key,
            dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))
        task = _done(client, task_id)
    finally:
        nodes.proxy.remove(slow)
    assert task.status == 5, task.error_reason
    assert (task.successful_num, task.failed_num, task.total_num) == (count, 0, count)
    assert _etags(seaweed_b, dst) == _etags(seaweed_a, src)
    units = nodes.units(task_id)
    runs = {u["run"] for u in units}
    assert runs == {1, 2}
    # The second run is the first run's unfinished units only, each from where it got to: nothing was listed
    # again and no unit finished in the first run came back.
    carried = [u for u in units if u["run"] == 2]
    assert len(carried) == sum(1 for u in units if u["run"] == 1 and u["state"] == "cancelled")
    assert all(u["kind"] == "keys" for u in carried)
    # Written again at most: what was in flight when it stopped (4 per worker, 3 workers), each object at most
    # twice more (its write already on the wire when the stop reached it, unrecorded, and the new run's).
    assert count <= slow.matched <= count + 2 * 12, slow.matched


def test_a_worker_killed_mid_unit_loses_nothing_and_only_that_unit_is_copied_again(
        nodes: Cluster, seaweed_a: Any, seaweed_b: Any) -> None:
    count = 120
    src, dst, _ = _buckets(seaweed_a, seaweed_b, count)
    # Each PUT of 4 KiB into the destination takes about half a second: a unit of 20 objects, 4 at a time,
    # runs for about 2.5 s, long enough to be killed in the middle.
    slow = nodes.proxy.add(Trickle(8192), method="PUT", path=f"^/{dst}/")
    try:
        client, task_id = _start(nodes, seaweed_a, seaweed_b, src, dst)
        pids = {w.pid: w for w in nodes.live_workers()}
        victim = _held_unit(nodes, task_id, pids, lambda u: u["kind"] == "keys" and u["objects_done"] > 0,
                            "a keys unit part done on a worker")
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        pids[victim["pid"]].wait(10)

        def taken_over() -> bool:
            row = next(u for u in nodes.units(task_id) if u["id"] == victim["unit"])
            return row["state"] == "done" or (row["attempts"] >= 2 and row["state"] == "running")

        wait_for(taken_over, 60, "the killed worker's unit taken over")
        delay = time.monotonic() - killed_at
        task = _done(client, task_id)
    finally:
        nodes.proxy.remove(slow)
    # Bound: the lease (--lease-ttl 4) runs out, then the coordinator's next look (tick 0.5 s) sends it again;
    # the message was sent more than FERRY_RESEND_SECONDS (2) before. Generous slack for a loaded machine.
    assert delay < 4 + 2 + 0.5 + 10, delay
    assert task.status == 5, task.error_reason
    assert (task.successful_num, task.failed_num) == (count, 0)
    assert _etags(seaweed_b, dst) == _etags(seaweed_a, src)
    row = next(u for u in nodes.units(task_id) if u["id"] == victim["unit"])
    assert row["attempts"] == 2 and row["state"] == "done"
    # At most the killed worker's units (it runs 2 at once) were copied again, each at most once more (20
    # objects); every other object went to the destination exactly once.
    again = [u for u in nodes.units(task_id) if u["attempts"] > 1]
    assert 1 <= len(again) <= 2 and all(u["attempts"] == 2 for u in again)
    assert count <= slow.matched <= count + 20 * len(again), (slow.matched, again)
    nodes.start_worker()  # three again for the next test
    nodes.wait_registered(3)


def test_sigterm_drains_a_worker_handing_back_the_unit_it_cannot_finish(nodes: Cluster, seaweed_a: Any,
                                                                        seaweed_b: Any) -> None:
    count = 60
    src, dst, _ = _buckets(seaweed_a, seaweed_b, count)
    # Two seconds per object: a unit of 20, 4 at a time, needs about 10 s, twice the workers' --drain-timeout.
    slow = nodes.proxy.add(Trickle(2048), method="PUT", path=f"^/{dst}/")
    try:
        client, task_id = _start(nodes, seaweed_a, seaweed_b, src, dst)
        procs = {w.pid: w for w in nodes.live_workers()}
        victim = _held_unit(nodes, task_id, procs, lambda u: u["kind"] == "keys" and u["objects_done"] > 0,
                            "a keys unit part done on a worker")
        os.kill(victim["pid"], signal.SIGTERM)
        asked = time.monotonic()
        rc = procs[victim["pid"]].wait(40)
        drained_in = time.monotonic() - asked
        row = next(u for u in nodes.units(task_id) if u["id"] == victim["unit"])
        task = _done(client, task_id)
    finally:
        nodes.proxy.remove(slow)
    # It stopped taking units, gave the running one its 5 s, then handed it back with its watermark (not left
    # to a lease running out), said it stopped, and exited cleanly.
    assert rc == 0 and drained_in < 5 + 15, (rc, drained_in)
    assert row["lease_owner"] != victim["owner"] and row["watermark"] is not None, row
    assert all(w["id"] != victim["owner"] for w in nodes.worker_rows())
    assert task.status == 5, task.error_reason
    assert (task.successful_num, task.failed_num) == (count, 0)
    assert _etags(seaweed_b, dst) == _etags(seaweed_a, src)
    final = next(u for u in nodes.units(task_id) if u["id"] == victim["unit"])
    assert final["attempts"] == 2 and final["state"] == "done"
    # Only the objects in flight at the hand-back (4 at a time in each unit the worker held: 2 at most) may
    # have been written twice.
    again = [u for u in nodes.units(task_id) if u["attempts"] > 1]
    assert 1 <= len(again) <= 2
    assert count <= slow.matched <= count + 4 * len(again), (slow.matched, again)
    nodes.start_worker()
    nodes.wait_registered(3)


def test_the_broker_restarted_empty_mid_task_loses_nothing(nodes: Cluster, seaweed_a: Any, seaweed_b: Any) -> None:
    count = 240  # 12 units of 20 for 6 worker threads: some wait in the broker when it goes
    src, dst, _ = _buckets(seaweed_a, seaweed_b, count)
    slow = nodes.proxy.add(Trickle(16384), method="PUT", path=f"^/{dst}/")
    try:
        client, task_id = _start(nodes, seaweed_a, seaweed_b, src, dst)

        def some_waiting() -> bool:
            units = nodes.units(task_id)
            return (sum(u["kind"] == "keys" and u["state"] == "queued" for u in units) >= 3
                    and any(u["state"] == "running" and u["kind"] == "keys" for u in units))

        wait_for(some_waiting, 60, "units running and units waiting in the broker")
        nodes.redis.kill()  # its queue is gone with it: nothing is saved
        time.sleep(1.0)
        nodes.redis.start()
        task, samples = wait_task(client, task_id, lambda t: t.status in (4, 5), timeout=150, every=0.2)
    finally:
        nodes.proxy.remove(slow)
    # While it ran, the task showed its progress as an embedded run does: the objects listed, those done so
    # far, a fraction between, and the listing over once every range unit was.
    running = [t for t in samples if t.status == 2]
    assert any(t.total_num == count and 0 < t.successful_num < count and 0 < t.progress < 1 for t in running)
    done = [t.successful_num for t in running]
    assert done == sorted(done)
    assert task.status == 5, task.error_reason
    assert (task.successful_num, task.failed_num) == (count, 0)
    assert _etags(seaweed_b, dst) == _etags(seaweed_a, src)
    # The units whose messages were lost were sent again, and each object was written once.
    assert count <= slow.matched <= count + 20, slow.matched


def test_worker_logs_hold_no_secret(nodes: Cluster, seaweed_a: Any) -> None:
    logs = "".join(p.read_text(errors="replace") for p in Path(nodes.logs).glob("worker-*.log"))
    assert "started" in logs  # the workers did log their units
    for secret in (seaweed_a.secret_key, nodes.env["FERRY_MASTER_KEY"]):
        assert secret not in logs
