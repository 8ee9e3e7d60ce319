"""`ferry serve` killed with SIGKILL right after accepting sync events copies every accepted key after a restart;
its periodic reconciliation copies objects written without any event."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from huaweicloudsdkoms.v2 import (
    CreateSyncEventsRequest,
    CreateSyncTaskReq,
    CreateSyncTaskRequest,
    OmsClient,
    ShowSyncTaskRequest,
    SyncObjectReq,
)

from ferry.db.database import open_database
from ferry.db.sync_repo import SyncRepo
from ferry.sandbox import SeaweedServer
from pgdb import pg_database

FERRY = [sys.executable, "-m", "ferry.cli"]
SRC_REGION, DST_REGION = "us-east-1", "cn-north-4"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """`ferry serve` as a child process over one state directory, restartable."""

    def __init__(self, state: Path, db_url: str, src: SeaweedServer, dst: SeaweedServer, **settings: str) -> None:
        self.state = state
        self.env = {
            **os.environ,
            "FERRY_DATA_DIR": str(state),
            "FERRY_DATABASE_URL": db_url,
            "FERRY_ENDPOINT_OVERRIDES": json.dumps({f"AWS/{SRC_REGION}": src.endpoint,
                                                    f"HuaweiCloud/{DST_REGION}": dst.endpoint}),
            "FERRY_NODE_ID": "kill-test",
            **settings,
        }
        self.env.pop("FERRY_MASTER_KEY", None)
        self.port = _port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.project_id = uuid.uuid4().hex
        made = subprocess.run([*FERRY, "credentials", "create", "--project-id", self.project_id], env=self.env,
                              capture_output=True, text=True, check=True, timeout=60)
        creds = json.loads(made.stdout.strip().splitlines()[-1])
        self.ak, self.sk = creds["access_key"], creds["secret_key"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.state / "serve.log", "ab")  # noqa: SIM115 - the child writes it while it lives
        self.proc = subprocess.Popen([*FERRY, "serve", "--port", str(self.port)], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.state / "serve.log").read_text(errors="replace")[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("ferry serve did not listen")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def client(self) -> OmsClient:
        from huaweicloudsdkcore.auth.credentials import BasicCredentials

        return (OmsClient.new_builder().with_credentials(BasicCredentials(self.ak, self.sk, self.project_id))
                .with_endpoints([self.url]).build())


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path: Path, seaweed_a: SeaweedServer,
           seaweed_b: SeaweedServer) -> Iterator[Served]:
    # The API and the sync workers are separate processes (the default) sharing the database: on PostgreSQL
    # as a scaled-out deployment would run them.
    pg = pg_database() if request.param == "postgresql" else None
    url = next(pg) if pg is not None else f"sqlite:///{tmp_path / 'ferry.db'}"
    # Two keys at a time, so a backlog is still queued when the process dies; no periodic reconciliation in
    # the first two lives, so after the kill only the durable events can bring the keys over.
    s = Served(tmp_path, url, seaweed_a, seaweed_b, FERRY_SYNC_CONCURRENCY="2", FERRY_SYNC_RECONCILE_SECONDS="3600")
    try:
        yield s
    finally:
        s.stop()
        if pg is not None:
            pg.close()


def _in_destination(dst: SeaweedServer, bucket: str, keys: list[str]) -> set[str]:
    return {k for k in keys if dst.request("HEAD", f"/{bucket}/{k}")[0] == 200}


def _wait(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kill9_after_accepting_events_loses_none(
    served: Served, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
) -> None:
    src_bucket = seaweed_a.create_bucket(f"kill-src-{uuid.uuid4().hex[:8]}")
    dst_bucket = seaweed_b.create_bucket(f"kill-dst-{uuid.uuid4().hex[:8]}")
    served.start()
    client = served.client()
    task_id = client.create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
        src_cloud_type="AWS", src_region=SRC_REGION, src_bucket=src_bucket, src_ak=seaweed_a.access_key,
        src_sk=seaweed_a.secret_key, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
        dst_region=DST_REGION, dst_bucket=dst_bucket,
    ))).sync_task_id
    repo = SyncRepo(open_database(served.env["FERRY_DATABASE_URL"]))

    def reconciled() -> bool:
        row = repo.get_task(task_id)
        return row is not None and row.reconciled_at is not None

    _wait(reconciled, 30, "the initial (empty) full copy")
    keys = [f"burst/{i:03d} k\u00e9y.bin" for i in range(200)]
    for key in keys:
        assert seaweed_a.request("PUT", f"/{src_bucket}/{key}", body=key.encode())[0] == 200
    for i in range(0, len(keys), 10):
        client.create_sync_events(CreateSyncEventsRequest(sync_task_id=task_id, body=SyncObjectReq(
            object_keys=[quote(k, safe="") for k in keys[i:i + 10]])))
    served.kill9()
    copied_before = _in_destination(seaweed_b, dst_bucket, keys)
    pending = repo.pending_count(task_id)
    assert pending > 0, "everything was copied before the kill; the test would prove nothing"
    assert len(copied_before) + pending >= len(keys)  # a key leaves the queue only once it is copied

    served.start()
    _wait(lambda: _in_destination(seaweed_b, dst_bucket, keys) == set(keys), 90, "every accepted key copied")
    assert [seaweed_b.request("GET", f"/{dst_bucket}/{k}")[1] for k in keys] == [k.encode() for k in keys]
    _wait(lambda: repo.pending_count(task_id) == 0, 30, "an empty queue")

    def counters() -> tuple[int, int, int, int]:
        r = client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))
        return (r.monthly_acceptance_request, r.monthly_success_object, r.monthly_skip_object,
                r.monthly_failure_object)

    request, success, skip, failure = counters()
    # Copies finished just before the kill but not yet recorded are found in sync after it: skipped.
    assert (request, failure) == (len(keys), 0) and success + skip == len(keys) and success >= len(keys) - 64

    # Written without any event: the periodic reconciliation finds and copies it.
    served.stop()
    served.env["FERRY_SYNC_RECONCILE_SECONDS"] = "1"
    served.start()
    assert seaweed_a.request("PUT", f"/{src_bucket}/no-event.txt", body=b"quiet")[0] == 200
    _wait(lambda: seaweed_b.request("GET", f"/{dst_bucket}/no-event.txt") == (200, b"quiet"), 30,
          "reconciliation copy")
    _wait(lambda: counters()[1] == success + 1, 10, "the reconciliation copy counted")
