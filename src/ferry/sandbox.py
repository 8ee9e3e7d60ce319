"""Real local storage servers (SeaweedFS `weed mini`, moto, Azurite) on free 127.0.0.1 ports for tests, bench, demo."""

from __future__ import annotations

import abc
import atexit
import base64
import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from ferry.storage.sigv4 import EMPTY_SHA256, SigV4Signer, quote_path

HOST = "127.0.0.1"
REGION = "us-east-1"
GRPC_OFFSET = 10_000  # SeaweedFS serves gRPC on every HTTP port + 10000

_reserved: set[int] = set()
_reserved_lock = threading.Lock()
_running: set[S3Server] = set()


class SandboxError(RuntimeError):
    """A local server could not be found, started or reached."""


def find_binary(name: str) -> str:
    """`name` next to the running interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SandboxError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers set SO_REUSEADDR too, so a port held only by TIME_WAIT connections counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def reserve_ports(count: int, *, with_grpc: bool = False) -> list[int]:
    """`count` distinct free loopback ports (and each port + 10000 when `with_grpc`), held for this process.

    Ports are drawn below the kernel's ephemeral range so that outgoing connections cannot take them
    between the check and the server's bind; `release_ports` gives them back.
    """
    high = _ephemeral_low() - (GRPC_OFFSET if with_grpc else 0)
    low = 10_000
    if high - low < 1000:
        low, high = 1024, 65535 - (GRPC_OFFSET if with_grpc else 0)
    chosen: list[int] = []
    with _reserved_lock:
        for _ in range(5000):
            p = random.randrange(low, high)
            group = (p, p + GRPC_OFFSET) if with_grpc else (p,)
            if any(q in _reserved for q in group) or not all(_port_is_free(q) for q in group):
                continue
            chosen.append(p)
            _reserved.update(group)
            if len(chosen) == count:
                return chosen
        _release_locked(chosen, with_grpc)
    raise SandboxError("no free loopback ports found")


def release_ports(ports: list[int], *, with_grpc: bool = False) -> None:
    with _reserved_lock:
        _release_locked(ports, with_grpc)


def _release_locked(ports: list[int], with_grpc: bool) -> None:
    for p in ports:
        _reserved.discard(p)
        if with_grpc:
            _reserved.discard(p + GRPC_OFFSET)


def _die_with_parent() -> None:
    # Linux only: the server gets SIGKILL when the thread that started it dies, so a crashed test run
    # leaves no orphans behind.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class S3Server(abc.ABC):
    """A child process in its own process group, with S3 credentials and a signed-request helper."""

    name = "server"
    startup_timeout = 30.0

    def __init__(self, *, access_key: str | None = None, secret_key: str | None = None) -> None:
        self.access_key = access_key or "FERRY" + secrets.token_hex(8).upper()[:15]
        self.secret_key = secret_key or secrets.token_urlsafe(30)[:40]
        self.region = REGION
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._log_file: IO[bytes] | None = None

    # -- public -----------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if not self.port:
            raise SandboxError(f"{self.name} is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        where = f"http://{HOST}:{self.port}" if self.port else None
        return f"{type(self).__name__}(endpoint={where})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if self.running:
            return self
        last: Exception | None = None
        for _ in range(3):
            try:
                self._start_once()
                _running.add(self)
                return self
            except SandboxError as e:
                # Another process may have bound one of our ports in the gap between check and bind.
                last = e
                self._kill()
        raise SandboxError(f"{self.name} failed to start: {last}")

    def stop(self) -> None:
        self._kill()
        _running.discard(self)

    def request(
        self, method: str, path: str, *, query: str = "", body: bytes = b"",
        headers: dict[str, str] | None = None, timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """A signed request to the S3 endpoint (`path` unencoded, e.g. `/bucket/key`): status and body."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            epath = quote_path(path)
            signer = SigV4Signer(self.access_key, self.secret_key, self.region)
            signed = signer.sign(method, f"{HOST}:{self.port}", epath, query, headers or {},
                                 payload_hash=EMPTY_SHA256 if not body else _sha256(body))
            conn.request(method, epath + (f"?{query}" if query else ""), body=body or None, headers=signed)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` (an existing one owned by us is fine) and return its name."""
        status, body = self.request("PUT", f"/{name}")
        if status not in (200, 409) or (status == 409 and b"BucketAlreadyOwnedByYou" not in body
                                         and b"BucketAlreadyExists" not in body):
            raise SandboxError(f"create bucket {name} on {self.name}: HTTP {status} {body[:200]!r}")
        return name

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the server's output (for diagnosing a failed start)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-n:])

    # -- for subclasses ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _start_once(self) -> None:
        """Start the server process once (SeaweedServer, MotoServer)."""

    def _spawn(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self._log_path = log_path
        log = open(log_path, "wb")  # noqa: SIM115 - the child owns it until stop()
        self._log_file = log
        in_main = threading.current_thread() is threading.main_thread()
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=env, preexec_fn=_die_with_parent if in_main else None,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise SandboxError(f"{self.name} exited during startup:\n{self.log_tail()}")
            try:
                status, _ = self.request("GET", "/", timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        raise SandboxError(f"{self.name} did not answer on {self.endpoint} in time:\n{self.log_tail()}")

    def _kill(self, grace: float = 0.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if grace > 0:
                    os.killpg(proc.pid, signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(grace)
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        elif proc is not None:
            # The leader is gone; make sure no straggler of its group survives.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        log = self._log_file
        self._log_file = None
        if log is not None:
            log.close()


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class SeaweedServer(S3Server):
    """`weed mini` (master, volume, filer, S3) on free loopback ports, with static S3 credentials.

    With `data_dir=None` the data lives in a temporary directory removed on stop and the server is killed
    outright (nothing to flush); with a `data_dir` it is asked to shut down cleanly first.
    """

    name = "seaweedfs"

    def __init__(
        self, *, access_key: str | None = None, secret_key: str | None = None,
        data_dir: str | os.PathLike[str] | None = None, volume_size_limit_mb: int = 64,
    ) -> None:
        super().__init__(access_key=access_key, secret_key=secret_key)
        self._user_dir = Path(data_dir) if data_dir is not None else None
        self._dir: Path | None = None
        self._ports: list[int] = []
        self.volume_size_limit_mb = volume_size_limit_mb
        # A second identity that may read and list every bucket but write none (a read-only destination).
        self.read_only_key = "FERRYRO" + secrets.token_hex(8).upper()[:13]
        self.read_only_secret = secrets.token_urlsafe(30)[:40]

    def _start_once(self) -> None:
        if self._user_dir is not None:
            self._dir = self._user_dir
            self._dir.mkdir(parents=True, exist_ok=True)
        elif self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ferry-weed-"))
        data = self._dir / "data"
        data.mkdir(exist_ok=True)
        config = self._dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "ferry",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }, {
            "name": "reader",
            "credentials": [{"accessKey": self.read_only_key, "secretKey": self.read_only_secret}],
            "actions": ["Read", "List"],
        }]}))
        config.chmod(0o600)
        master, volume, filer, s3, admin = self._ports = reserve_ports(5, with_grpc=True)
        self.port = s3
        argv = [
            find_binary("weed"), "mini", f"-dir={data}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            f"-s3.port={s3}", f"-admin.port={admin}",
            # The gRPC ports default to HTTP + 10000; naming them keeps that explicit and reserved.
            f"-master.port.grpc={master + GRPC_OFFSET}", f"-volume.port.grpc={volume + GRPC_OFFSET}",
            f"-filer.port.grpc={filer + GRPC_OFFSET}", f"-s3.port.grpc={s3 + GRPC_OFFSET}",
            f"-admin.port.grpc={admin + GRPC_OFFSET}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Real S3 refuses writes to a missing bucket; weed would create it silently.
            "-s3.autoCreateBucket=false",
            "-master.telemetry=false", f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-filer.localSocket={self._dir / 'filer.sock'}", f"-s3.localSocket={self._dir / 's3.sock'}",
            f"-s3.config={config}",
        ]
        self._spawn(argv, self._dir / "weed.log")
        self._wait_ready()

    def _kill(self, grace: float = 0.0) -> None:
        super()._kill(grace=grace if grace else (5.0 if self._user_dir is not None else 0.0))
        ports, self._ports = self._ports, []
        for p in ports:
            # weed names its unix sockets after the gRPC ports under /tmp; a SIGKILL leaves them behind.
            for kind in ("master", "volume", "filer", "s3", "admin"):
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{p + GRPC_OFFSET}.sock")
            for kind in ("filer", "s3"):
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{kind}-{p}.sock")
        release_ports(ports, with_grpc=True)

    def stop(self) -> None:
        super().stop()
        if self._user_dir is None and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.port = 0


class MotoServer(S3Server):
    """`moto_server` on a free loopback port: archive/restore and SSE semantics that SeaweedFS lacks."""

    name = "moto"

    def __init__(self, *, access_key: str | None = None, secret_key: str | None = None) -> None:
        super().__init__(access_key=access_key, secret_key=secret_key)
        self._dir: Path | None = None

    def _start_once(self) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ferry-moto-"))
        (port,) = reserve_ports(1)
        self.port = port
        env = dict(os.environ)
        # moto would otherwise try instance-metadata and real-AWS lookups; keep it self-contained.
        env.update({"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                    "AWS_DEFAULT_REGION": self.region, "MOTO_ALLOW_NONEXISTENT_REGION": "true"})
        self._spawn([find_binary("moto_server"), "-H", HOST, "-p", str(port)], self._dir / "moto.log", env)
        self._wait_ready()

    def _kill(self, grace: float = 0.0) -> None:
        super()._kill(grace)
        if self.port:
            release_ports([self.port])

    def stop(self) -> None:
        super().stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.port = 0


class AzuriteServer(S3Server):
    """Azurite's blob service (`azurite-blob`, from npm) on a free loopback port, in-memory, with an account of its
    own: `access_key` is the account name, `secret_key` its key (base64), as OMS passes them (`ak`/`sk`).

    The binary is the one `scripts/bootstrap.sh test` installed under tools/azurite (or `$AZURITE_BLOB`, or
    `azurite-blob` on PATH)."""

    name = "azurite"

    def __init__(self) -> None:
        account = "ferry" + secrets.token_hex(4)
        key = base64.b64encode(secrets.token_bytes(64)).decode("ascii")
        super().__init__(access_key=account, secret_key=key)
        self._dir: Path | None = None

    @property
    def blob_endpoint(self) -> str:
        """The account's blob service URL (path style: the account is the first segment)."""
        return f"{self.endpoint}/{self.access_key}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.access_key};AccountKey={self.secret_key};"
                f"BlobEndpoint={self.blob_endpoint};")

    def _start_once(self) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ferry-azurite-"))
        (port,) = reserve_ports(1)
        self.port = port
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = f"{self.access_key}:{self.secret_key}"
        argv = [azurite_binary(), "--blobHost", HOST, "--blobPort", str(port), "--inMemoryPersistence",
                "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl", "--disableTelemetry"]
        self._spawn(argv, self._dir / "azurite.log", env)
        self._wait_ready()

    def request(
        self, method: str, path: str, *, query: str = "", body: bytes = b"",
        headers: dict[str, str] | None = None, timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """A SharedKey-signed request to the account (`path` unencoded, after the account: `/container`)."""
        from urllib.parse import parse_qsl

        from ferry.storage.azure_auth import API_VERSION, SharedKeySigner, http_date

        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            epath = quote_path(f"/{self.access_key}{path}")
            signed = {"x-ms-date": http_date(), "x-ms-version": API_VERSION, **(headers or {})}
            signer = SharedKeySigner(self.access_key, base64.b64decode(self.secret_key))
            signed["Authorization"] = signer.authorization(method, epath, parse_qsl(query), signed, len(body))
            conn.request(method, epath + (f"?{query}" if query else ""), body=body or None, headers=signed)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def create_bucket(self, name: str) -> str:
        """Create container `name` (an existing one is fine) and return its name."""
        status, body = self.request("PUT", f"/{name}", query="restype=container")
        if status not in (201, 409):
            raise SandboxError(f"create container {name} on azurite: HTTP {status} {body[:200]!r}")
        return name

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise SandboxError(f"{self.name} exited during startup:\n{self.log_tail()}")
            try:
                status, _ = self.request("GET", "", query="comp=list", timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SandboxError(f"{self.name} did not answer on {self.endpoint} in time:\n{self.log_tail()}")

    def _kill(self, grace: float = 0.0) -> None:
        super()._kill(grace)
        if self.port:
            release_ports([self.port])

    def stop(self) -> None:
        super().stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.port = 0


def azurite_binary() -> str:
    """`azurite-blob`: `$AZURITE_BLOB`, else the project's tools/azurite install, else on PATH."""
    given = os.environ.get("AZURITE_BLOB")
    if given:
        return given
    local = Path(__file__).resolve().parents[2] / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if local.is_file():
        return str(local)
    found = shutil.which("azurite-blob")
    if found is None:
        raise SandboxError("azurite-blob not found: run scripts/bootstrap.sh test (it installs it with npm)")
    return found


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()
