"""Test helper: tenants with generated AK/SK, a live uvicorn server on 127.0.0.1, and the real OMS SDK client."""

from __future__ import annotations

import logging
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import uvicorn
from fastapi import APIRouter, FastAPI
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkoms.v2 import OmsClient

from ferry.api.app import PROJECT_ROUTERS, create_app
from ferry.api.auth import InMemoryCredentialStore
from ferry.api.deps import ApiServices
from ferry.service.buckets import HelperSettings


@dataclass
class Tenant:
    project_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ak: str = field(default_factory=lambda: "FERRY" + secrets.token_hex(8).upper())
    sk: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))


@dataclass
class ShiftedClock:
    """The server's clock, which tests move to make the SDK's X-Sdk-Date look stale."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class LiveServer:
    url: str
    tenant: Tenant
    other: Tenant
    clock: ShiftedClock
    privacy_records: list[str]
    app: FastAPI


def free_port() -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on such sockets, and without it every
    # keep-alive response stalls ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class _Running:
    server: uvicorn.Server
    thread: threading.Thread
    url: str


def serve(app: FastAPI) -> _Running:
    """Run `app` with uvicorn in a background thread on a free 127.0.0.1 port."""
    sock = free_port()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return _Running(server, thread, f"http://127.0.0.1:{port}")


def build_services(tenants: Sequence[Tenant], clock: ShiftedClock, records: list[str]) -> ApiServices:
    store = InMemoryCredentialStore()
    for t in tenants:
        store.add_access_key(t.ak, t.sk, t.project_id)
        store.add_token(t.token, t.project_id)
    # Bucket helpers reach only the operator's table: no test request may go to a public cloud.
    return ApiServices(credentials=store, record_privacy_agreement=records.append, clock=clock,
                       bucket_helpers=HelperSettings(endpoint_overrides={}, public_endpoints=False))


def start_live(extra_routers: Sequence[APIRouter] = ()) -> tuple[LiveServer, _Running]:
    tenant, other = Tenant(), Tenant()
    clock = ShiftedClock()
    records: list[str] = []
    app = create_app(
        build_services([tenant, other], clock, records),
        # Test routers come first so a probe route wins over a real route on the same path.
        routers=(*extra_routers, *PROJECT_ROUTERS),
    )
    running = serve(app)
    return LiveServer(running.url, tenant, other, clock, records, app), running


def stop(running: _Running) -> None:
    running.server.should_exit = True
    running.thread.join(timeout=10)


def next_second() -> None:
    """Wait until the SDK's X-Sdk-Date (whole seconds) has moved on. Ferry accepts a signed write once, and the SDK
    signs the same call made twice within one second identically: a test that repeats a call on purpose (to see
    the answer to a second stop, delete or create) waits here first. The clock has no event to await."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def oms_client(url: str, ak: str, sk: str, project_id: str) -> OmsClient:
    # The SDK logs every request at INFO through its own handlers; keep test output readable.
    logging.getLogger("HttpClient").setLevel(logging.WARNING)
    return OmsClient.new_builder().with_credentials(BasicCredentials(ak, sk, project_id)).with_endpoints([url]).build()


def unused_port() -> int:
    """A port free on 127.0.0.1 now, for a server started as a separate process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until the `ferry serve` process `proc` accepts connections on `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ferry serve exited during startup"
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("ferry serve did not start listening")
