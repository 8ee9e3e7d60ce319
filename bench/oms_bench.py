"""What the API benchmarks share: a Ferry server in its own process over two stores, SDK-signed OMS requests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from ferry.api.auth import canonical_query, canonical_uri, sign, string_to_sign
from ferry.sandbox import SeaweedServer

SRC_REGION, DST_REGION = "us-east-1", "cn-north-4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    ak: str
    sk: str
    project_id: str
    proc: subprocess.Popen[bytes]
    state: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.state, ignore_errors=True)


def start_server(src: SeaweedServer, dst: SeaweedServer, *, env: dict[str, str] | None = None,
                 builtin: Callable[[int, Path], list[str]] | None = None) -> Server:
    """`ferry serve` (or, with `builtin`, the process `builtin(port, state)` names, keys from FERRY_BENCH_*) on a
    fresh SQLite state directory, with AWS/us-east-1 at `src` and HuaweiCloud/cn-north-4 at `dst`."""
    state = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "FERRY_DATA_DIR": str(state),
        "FERRY_DATABASE_URL": f"sqlite:///{state / 'ferry.db'}",
        "FERRY_ENDPOINT_OVERRIDES": json.dumps({f"AWS/{SRC_REGION}": src.endpoint,
                                                f"HuaweiCloud/{DST_REGION}": dst.endpoint}),
        "FERRY_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    project_id = uuid.uuid4().hex
    if builtin is None:
        ferry = [sys.executable, "-m", "ferry.cli"]
        made = subprocess.run([*ferry, "credentials", "create", "--project-id", project_id], env=env,
                              capture_output=True, check=True, text=True)
        creds = json.loads(made.stdout.strip().splitlines()[-1])
        ak, sk = creds["access_key"], creds["secret_key"]
        argv = [*ferry, "serve", "--port", str(port)]
    else:
        ak, sk = "BENCH" + uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex + uuid.uuid4().hex
        env.update(FERRY_BENCH_AK=ak, FERRY_BENCH_SK=sk, FERRY_BENCH_PROJECT=project_id)
        argv = builtin(port, state)
    log = open(state / "server.log", "wb")  # noqa: SIM115 - the child writes it until stop()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{(state / 'server.log').read_text(errors='replace')[-3000:]}")
        try:
            # Ready when it answers (GET / lists the API versions), not merely when the port is bound.
            with urllib.request.urlopen(url + "/", timeout=2) as resp:
                if resp.status == 200:
                    return Server(url, ak, sk, project_id, proc, state)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start listening")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- signed OMS requests -----------------------------------------------------------------------------------------

class OmsSigner:
    """SDK-HMAC-SHA256 exactly as huaweicloudsdkcore signs (oms-api.md §2.3), without the SDK's threads."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.host = server.url.removeprefix("http://")

    def headers(self, method: str, path: str, query: str, body: bytes) -> dict[str, str]:
        date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "content-type": "application/json;charset=utf-8" if body else "application/json",
            "host": self.host,
            "user-agent": "ferry-bench/1.0",
            "x-project-id": self.server.project_id,
            "x-sdk-date": date,
        }
        signed = sorted(headers)
        canonical = "\n".join([
            method, canonical_uri(path), canonical_query(query),
            "".join(f"{name}:{headers[name]}\n" for name in signed), ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ])
        signature = sign(self.server.sk, string_to_sign(date, canonical))
        headers["authorization"] = (f"SDK-HMAC-SHA256 Access={self.server.ak}, SignedHeaders={';'.join(signed)}, "
                                    f"Signature={signature}")
        return headers


def server_ms(header: str | None) -> float | None:
    """The `dur` of a `Server-Timing: app;dur=<ms>` header (the server's own time for the request)."""
    for part in (header or "").split(";"):
        if part.strip().startswith("dur="):
            with contextlib.suppress(ValueError):
                return float(part.strip()[4:])
    return None


async def oms(session: aiohttp.ClientSession, signer: OmsSigner, method: str, path: str,
              body: Any = None, query: str = "", timings: list[float] | None = None) -> tuple[int, Any]:
    """One signed call: its status and JSON body; the server's own seconds go to `timings`."""
    raw = json.dumps(body).encode() if body is not None else b""
    full = path.replace("{project_id}", signer.server.project_id)
    url = signer.server.url + full + (f"?{query}" if query else "")
    async with session.request(method, url, data=raw or None,
                               headers=signer.headers(method, full, query, raw)) as resp:
        text = await resp.read()
        took = server_ms(resp.headers.get("Server-Timing"))
        if timings is not None and took is not None:
            timings.append(took / 1000)
        return resp.status, json.loads(text) if text else None


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]
