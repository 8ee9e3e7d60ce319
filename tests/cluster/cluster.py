"""Test helper: a Ferry cluster on 127.0.0.1 — a Redis it can restart, PostgreSQL, a dispatching server in this
process and `ferry worker` processes — in front of two SeaweedFS stores (the destination behind a fault proxy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ferry_service import FAST_RUNNER, FerryService, overrides, start_service
from live_server import free_port
from sqlalchemy import select

from faultproxy import FaultProxy
from ferry.db.cluster_models import cluster_workers, work_units
from pgdb import pg_database

ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    """`redis-server` on a free loopback port, with nothing saved: a restart starts it empty."""

    def __init__(self, log: Path) -> None:
        with free_port() as sock:
            self.port = sock.getsockname()[1]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Cluster:
    db_url: str
    broker_url: str
    env: dict[str, str]
    redis: RedisServer
    proxy: FaultProxy
    live: FerryService
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_args: tuple[str, ...] = ()  # after the defaults below, so they win

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        out = (self.logs / f"worker-{n}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferry.cli", "worker", "--threads", "2", "--concurrency", "4", "--unit-keys",
             "20", "--lease-ttl", "4", "--drain-timeout", "5", *self.worker_args, *args],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    def wait_registered(self, count: int, timeout: float = 60.0) -> None:
        engine = self.live.service.engine
        wait_for(lambda: len(rows(engine, select(cluster_workers.c.id).where(
            cluster_workers.c.state == "running"))) >= count, timeout, f"{count} workers registered")

    def units(self, task_id: int) -> list[Any]:
        return rows(self.live.service.engine, select(work_units).where(work_units.c.owner_id == str(task_id))
                     .order_by(work_units.c.id))

    def worker_rows(self) -> list[Any]:
        return rows(self.live.service.engine, select(cluster_workers))


def rows(engine: Any, query: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(query).mappings().all())


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@contextmanager
def cluster(seaweed_a: Any, seaweed_b: Any, base: Path, workers: int = 3,
            worker_args: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """A cluster whose tasks migrate from `seaweed_a` (or any S3 server) to `seaweed_b` (through a fault proxy)."""
    redis = RedisServer(base / "redis.log").start()
    proxy = FaultProxy(seaweed_b.endpoint).start()
    gen = pg_database()
    db_url = next(gen)
    broker = f"{redis.url}?namespace=t{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "FERRY_DATA_DIR": str(base / "worker-data"),
        "FERRY_DATABASE_URL": db_url,
        "FERRY_BROKER_URL": broker,
        "FERRY_MASTER_KEY": os.urandom(32).hex(),
        "FERRY_ENDPOINT_OVERRIDES": json.dumps(overrides(seaweed_a, proxy)),
        "FERRY_DISPATCH_TICK": "0.5",
        "FERRY_RESEND_SECONDS": "2",
        "FERRY_LOG_LEVEL": "INFO",
    }
    mp = pytest.MonkeyPatch()
    for name in ("FERRY_DATABASE_URL", "FERRY_BROKER_URL", "FERRY_MASTER_KEY", "FERRY_ENDPOINT_OVERRIDES",
                 "FERRY_DISPATCH_TICK", "FERRY_RESEND_SECONDS"):
        mp.setenv(name, env[name])
    started = None
    made: Cluster | None = None
    try:
        started = start_service(base / "server-data", db_url, runner=FAST_RUNNER)
        made = Cluster(db_url, broker, env, redis, proxy, started.value, base, worker_args=worker_args)
        for _ in range(workers):
            made.start_worker()
        made.wait_registered(workers)
        yield made
    finally:
        if made is not None:
            for w in made.live_workers():
                w.send_signal(signal.SIGTERM)
            for w in made.workers:
                try:
                    w.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()
        if started is not None:
            started.close()
        mp.undo()
        proxy.stop()
        redis.kill()
        gen.close()
