"""`ferry serve` at its edges, as a client or an attacker meets it: slow and silent connections, the concurrency
limit, secrets in the access log, file permissions, replayed signatures, forged Host headers, server paths."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import select
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from ferry_service import fill, overrides, prefix_task, wait_task
from huaweicloudsdkoms.v2 import (
    CreateSyncTaskReq,
    CreateSyncTaskRequest,
    ListTasksRequest,
    OmsClient,
    ShowTaskRequest,
)
from live_server import Tenant, build_services, oms_client, serve, stop, unused_port, wait_listening
from sdk_signing import signed_sdk_request

from ferry.api.app import create_app
from ferry.service.smn import shown_record_path, template_values

pytestmark = pytest.mark.timeout(180)
FERRY = [sys.executable, "-m", "ferry.cli"]
# Short deadlines so that each case ends in about a second; the slack covers a busy two-core machine.
HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE, MAX_CONNECTIONS = 1.0, 1.0, 2.0, 6
SLACK = 2.5


@dataclass
class Served:
    url: str
    port: int
    data: Path
    log: Path
    env: dict[str, str]
    project: str
    ak: str
    sk: str

    def client(self) -> Any:
        return oms_client(self.url, self.ak, self.sk, self.project)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(seaweed_a: Any, seaweed_b: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serve-edges")
    data = home / "data"
    env = dict(os.environ, FERRY_DATA_DIR=str(data),
               FERRY_ENDPOINT_OVERRIDES=json.dumps(overrides(seaweed_a, seaweed_b)),
               FERRY_HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT), FERRY_HTTP_BODY_TIMEOUT=str(BODY_TIMEOUT),
               FERRY_HTTP_BODY_MIN_RATE=str(1024 * 1024), FERRY_HTTP_KEEP_ALIVE=str(KEEP_ALIVE),
               FERRY_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    for name in ("FERRY_DATABASE_URL", "FERRY_MASTER_KEY", "FERRY_PUBLIC_URL", "FERRY_LOG_LEVEL"):
        env.pop(name, None)
    project = uuid.uuid4().hex
    made = subprocess.run([*FERRY, "credentials", "create", "--project-id", project], env=env,
                          capture_output=True, text=True, check=True)
    cred = json.loads(made.stdout)
    # What an older Ferry left behind: a world-readable data directory and database.
    data.chmod(0o755)
    (data / "ferry.db").chmod(0o644)
    port = unused_port()
    log = home / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([*FERRY, "serve", "--port", str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        yield Served(f"http://127.0.0.1:{port}", port, data, log, env, project, cred["access_key"],
                     cred["secret_key"])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _connect(served: Served) -> socket.socket:
    return socket.create_connection(("127.0.0.1", served.port), timeout=10)


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[float | None, bytes]:
    """(seconds until the server closed the connection, what it sent first); None if it stayed open."""
    began = time.monotonic()
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return None, got
    except ConnectionResetError:
        pass
    return time.monotonic() - began, got


def _trickle(sock: socket.socket, data: bytes, every: float, timeout: float) -> tuple[float | None, bytes]:
    """Send `data` a byte at a time, one per `every` seconds, until the server answers or closes."""
    began = time.monotonic()
    for byte in data:
        if time.monotonic() - began > timeout:
            return None, b""
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - began, b""
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            closed, got = _read_until_closed(sock, timeout)
            return (None if closed is None else time.monotonic() - began), got
    return None, b""


# -- slow and silent connections (issue 15 item 3) -----------------------------------------------------------------


def test_a_silent_connection_is_closed_at_the_header_deadline(served: Served) -> None:
    with _connect(served) as sock:
        closed, got = _read_until_closed(sock, HEADER_TIMEOUT + SLACK + 3)
    assert closed is not None, "a connection that sent nothing was still open"
    assert closed <= HEADER_TIMEOUT + SLACK and got == b""


def test_a_trickled_header_is_cut_at_the_header_deadline(served: Served) -> None:
    head = b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with _connect(served) as sock:
        closed, _ = _trickle(sock, head, every=0.2, timeout=HEADER_TIMEOUT + SLACK + 3)
    assert closed is not None, "a connection trickling its header was still open"
    assert closed <= HEADER_TIMEOUT + SLACK


@pytest.mark.parametrize("where", ["authenticated", "unknown route"])
def test_a_slow_body_is_cut_at_the_body_deadline(served: Served, where: str) -> None:
    path = f"/v2/{served.project}/tasks" if where == "authenticated" else "/nowhere"
    size = 100_000  # 1 s + 100 kB at 1 MiB/s: a deadline of about 1.1 s
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    with _connect(served) as sock:
        sock.sendall(head)
        closed, got = _trickle(sock, b"x" * size, every=0.2, timeout=BODY_TIMEOUT + 1 + SLACK + 3)
    assert closed is not None, "a connection sending its body slowly was still open"
    assert closed <= BODY_TIMEOUT + 0.1 + 1 + SLACK
    if where == "authenticated":
        # The signature check reads the body under the same deadline and answers before the connection goes.
        status, _, body = got.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408"), got[:200]
        assert json.loads(body)["error_code"] == "APIGW.0201"


def test_an_idle_keep_alive_connection_is_closed(served: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request("GET", "/")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200 and answer.getheader("connection") != "close"
        assert conn.sock is not None
        closed, _ = _read_until_closed(conn.sock, KEEP_ALIVE + SLACK + 3)
    finally:
        conn.close()
    assert closed is not None and closed <= KEEP_ALIVE + SLACK


def test_sdk_calls_work_beside_slow_connections(served: Served) -> None:
    silent = [_connect(served) for _ in range(2)]
    slow = _connect(served)
    try:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert served.client().list_tasks(ListTasksRequest()).count == 0
    finally:
        for sock in (*silent, slow):
            sock.close()


def test_connections_beyond_the_limit_get_an_oms_503(served: Served) -> None:
    held: list[http.client.HTTPConnection] = []
    refused = None
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
            conn.request("GET", "/")
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200:
                refused = (answer.status, json.loads(body), answer.getheader("retry-after"))
                conn.close()
                break
            held.append(conn)
        assert refused is not None, f"{len(held)} connections were all served"
        assert refused[0] == 503 and refused[1]["error_code"] == "OMS.0503" and refused[2]
        assert len(held) <= MAX_CONNECTIONS
        for conn in held:
            assert conn.sock is not None
            assert _read_until_closed(conn.sock, KEEP_ALIVE + SLACK + 3)[0] is not None
    finally:
        for conn in held:
            conn.close()
    # Once the idle ones are gone, there is room again.
    assert served.client().list_tasks(ListTasksRequest()).count >= 0


def test_the_body_read_of_authentication_has_a_time_limit() -> None:
    """Under a server without ferry's own deadlines (plain uvicorn), authentication still stops waiting."""
    from ferry.settings import HttpLimits

    tenant = Tenant()
    services = build_services([tenant], clock=_now, records=[])
    limits = HttpLimits(body_timeout=0.5, body_min_rate=1024 * 1024)
    app = create_app(dataclasses.replace(services, http_limits=limits))
    running = serve(app)
    try:
        port = int(running.url.rsplit(":", 1)[1])
        head = (f"POST /v2/{tenant.project_id}/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Length: 1000\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            closed, got = _trickle(sock, b"x" * 1000, every=0.1, timeout=0.5 + SLACK + 3)
    finally:
        stop(running)
    assert closed is not None and closed <= 0.5 + SLACK
    status, _, body = got.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408") and json.loads(body)["error_code"] == "APIGW.0201"


def _now() -> datetime:
    return datetime.now(UTC)


# -- secrets and data at rest (issue 15 item 6) ---------------------------------------------------------------------


def test_the_access_log_hides_query_secrets(served: Served) -> None:
    secret = "QuerySecret" + uuid.uuid4().hex
    task = uuid.uuid4()
    r = requests.post(f"{served.url}/v2/sync-notifications/{task}", params={"token": secret, "limit": "7"},
                      json={}, timeout=10)
    assert r.status_code in (401, 404)
    text = served.log_text()
    assert f"/v2/sync-notifications/{task}" in text, "the request is not in the access log"
    assert secret not in text
    assert "token=***" in text and "limit=7" in text


@pytest.fixture(scope="module")
def finished(served: Served, seaweed_a: Any, seaweed_b: Any, bucket_factory_module: Any) -> Any:
    """A task that ran to its end in the served process, so that its records exist."""
    sb, db = bucket_factory_module(seaweed_a), bucket_factory_module(seaweed_b)
    fill(seaweed_a, sb, {"a.txt": b"a", "b/c.txt": b"bc"})
    client = served.client()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, enable_failed_object_recording=True))
    done, _ = wait_task(client, created.id, lambda t: t.status in (4, 5), timeout=60)
    assert done.status == 5, done.error_reason
    return done


@pytest.fixture(scope="module")
def bucket_factory_module() -> Any:
    def make(server: Any) -> str:
        return str(server.create_bucket(f"edges-{uuid.uuid4().hex[:12]}"))

    return make


def test_the_data_directory_and_its_files_are_private(served: Served, finished: Any) -> None:
    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(served.data) == 0o700
    files = [p for p in served.data.rglob("*") if p.is_file()]
    db_files = [p for p in files if p.name.startswith("ferry.db")]
    records = [p for p in files if "records" in p.relative_to(served.data).parts]
    assert {p.name for p in db_files} >= {"ferry.db", "ferry.db-wal", "ferry.db-shm"}
    assert {p.name for p in records} >= {"failed.jsonl", "success.jsonl", "skip.jsonl"}
    loose = {str(p.relative_to(served.data)): oct(mode(p)) for p in files if mode(p) & 0o077}
    assert not loose, f"readable by others: {loose}"
    dirs = [p for p in served.data.rglob("*") if p.is_dir()]
    assert not {str(p): oct(mode(p)) for p in dirs if mode(p) & 0o077}
    # The directory an older version left open was tightened, and the log says so.
    assert "permissions" in served.log_text() and str(served.data) in served.log_text()


def test_the_failed_list_key_is_not_a_server_path(served: Served, finished: Any) -> None:
    """No answer names where the server keeps its data: a run without failures has no failed list to name, and
    a list a stored row names by its server path (as older versions stored it) is shown relative to records/."""
    shown = served.client().show_task(ShowTaskRequest(task_id=finished.id))
    assert shown.failed_object_record.list_file_key is None
    raw = json.dumps(shown.to_dict(), default=str)
    assert str(served.data) not in raw
    stored = str(served.data / "records" / served.project / str(finished.id) / "failed.jsonl")
    assert shown_record_path(stored) == f"{served.project}/{finished.id}/failed.jsonl"
    assert shown_record_path("oms/task/t/failed_object_lists/1.failed_list.txt").startswith("oms/task/")
    # SMN messages name the lists the same way.
    message = template_values(name="t", succeeded=True, started_at=None, seconds=1, bytes_done=1, src_bucket="s",
                              dst_bucket="d", records={"success": stored.replace("failed", "success")})
    assert message["Success_object_list_path"] == f"{served.project}/{finished.id}/success.jsonl"


def _signed(served: Served, method: str, path: str, *, host: str | None = None,
            body: bytes | None = None) -> tuple[str, dict[str, str]]:
    req = signed_sdk_request(ak=served.ak, sk=served.sk, project_id=served.project, method=method, path=path,
                             body=body, host=host or f"127.0.0.1:{served.port}")
    return f"{served.url}{req.uri}", dict(req.header_params)


def test_a_replayed_signed_write_is_refused(served: Served) -> None:
    url, headers = _signed(served, "POST", "/v2/{project_id}/privacy-agreements")
    first = requests.post(url, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    replay = requests.post(url, headers=headers, timeout=10)
    assert replay.status_code == 401 and replay.json()["error_code"] == "APIGW.0301"
    # Reads may be repeated: they change nothing.
    url, headers = _signed(served, "GET", "/v2/{project_id}/tasks")
    assert [requests.get(url, headers=headers, timeout=10).status_code for _ in range(2)] == [200, 200]


def test_the_openapi_document_is_served_without_keys(served: Served) -> None:
    r = requests.get(served.url + "/openapi.json", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json" and len(r.headers["x-request-id"]) == 32
    summaries = {op.get("summary") for ops in r.json()["paths"].values() for op in ops.values()}
    # Every operation of the official SDK (each has an `_invoker`), plus Ferry's own, marked `ferry: ...`.
    sdk_operations = {name.removesuffix("_invoker") for name in dir(OmsClient) if name.endswith("_invoker")}
    assert len(sdk_operations) == 35 and sdk_operations <= summaries
    assert {s for s in summaries - sdk_operations if not s.startswith("ferry: ")} == set()
    assert served.sk not in r.text and served.project not in r.text


def test_links_ignore_a_forged_host(served: Served, seaweed_a: Any, seaweed_b: Any) -> None:
    forged = "evil.example:666"
    for path in ("/", "/v2"):
        r = requests.get(served.url + path, headers={"Host": forged}, timeout=10)
        assert r.status_code == 200, r.text
        assert "evil" not in r.text and f"http://127.0.0.1:{served.port}/v2/" in r.text

    src, dst = f"edges-{uuid.uuid4().hex[:10]}", f"edges-{uuid.uuid4().hex[:10]}"
    seaweed_a.create_bucket(src)
    seaweed_b.create_bucket(dst)
    created = served.client().create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
        src_cloud_type="Aliyun", src_region="cn-hangzhou", src_bucket=src, src_ak=seaweed_a.access_key,
        src_sk=seaweed_a.secret_key, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
        dst_region="cn-north-4", dst_bucket=dst)))
    url, headers = _signed(served, "POST", f"/v2/{{project_id}}/sync-tasks/{created.sync_task_id}/notification-token",
                           host=forged)
    r = requests.post(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["url"] == f"http://127.0.0.1:{served.port}/v2/sync-notifications/{created.sync_task_id}"


def test_links_use_the_configured_public_url() -> None:
    services = dataclasses.replace(build_services([Tenant()], clock=_now, records=[]),
                                   public_url="https://ferry.example.com/oms")
    running = serve(create_app(services))
    try:
        r = requests.get(running.url + "/", headers={"Host": "evil.example"}, timeout=10)
    finally:
        stop(running)
    assert r.json()["versions"][0]["links"][0]["href"] == "https://ferry.example.com/oms/v2/"

