"""The worker on both brokers (Redis and RabbitMQ on 127.0.0.1, each test on a namespace of its own): units run
once each however many messages name them, their progress is written from inside, and a drain stops cleanly."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.db.database import open_database
from ferry.db.unit_repo import UnitDraft, UnitRepo, UnitRow
from ferry.runner.broker import Sender
from ferry.runner.units import HANDLERS, UnitContext, handles
from ferry.runner.worker import UnitWorker, WorkerSettings
from ferry.secrets import SecretBox
from pgdb import pg_database

RUNS: list[int] = []


@handles("test_steps")
async def _steps(unit: UnitRow, ctx: UnitContext) -> None:
    RUNS.append(unit.id)
    for step in range(int(unit.spec["steps"])):
        await asyncio.sleep(0.1)
        ctx.progress.objects_done = step + 1


@pytest.fixture
def engine() -> Iterator[object]:
    gen = pg_database()
    eng = open_database(next(gen))
    try:
        yield eng
    finally:
        eng.dispose()
        gen.close()


def _rabbit_cleanup(namespace: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    try:
        channel = conn.channel()
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(f"{namespace}.ferry-units{suffix}")
    finally:
        conn.close()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_units_run_once_each_on_either_broker_and_the_worker_drains(engine: object, tmp_path: Path,
                                                                   scheme: str) -> None:
    RUNS.clear()
    namespace = f"t{uuid.uuid4().hex[:10]}"
    url = (f"redis://127.0.0.1:6379/0?namespace={namespace}" if scheme == "redis"
           else f"amqp://guest:guest@127.0.0.1:5672/%2F?namespace={namespace}")
    units = UnitRepo(engine)  # type: ignore[arg-type]
    worker = UnitWorker(engine, SecretBox(os.urandom(32)), url, tmp_path,  # type: ignore[arg-type]
                        WorkerSettings(threads=2, heartbeat=0.2, beat_interval=0.5))
    thread = threading.Thread(target=worker.serve, daemon=True)
    sender = Sender(url)
    try:
        thread.start()
        ids = units.add("task", "1", 1, [UnitDraft("test_steps", spec={"steps": 5}) for _ in range(4)])
        sender.send(ids)
        sender.send(ids)  # every message twice: the second finds the unit taken or finished
        deadline = time.monotonic() + 60
        while units.summary("task", "1", 1).open or len(RUNS) < len(ids):
            assert time.monotonic() < deadline, units.summary("task", "1", 1)
            time.sleep(0.1)
        time.sleep(1.0)  # the duplicates arrive meanwhile and change nothing
        summary = units.summary("task", "1", 1)
        assert summary.by_state == {"done": 4} and summary.objects_done == 20
        assert sorted(RUNS) == sorted(ids)  # each unit's handler ran once
        assert all(units.get(i).attempts == 1 for i in ids)  # type: ignore[union-attr]
    finally:
        worker.request_drain()
        thread.join(60)
        sender.close()
        if scheme == "amqp":
            _rabbit_cleanup(namespace)
    assert not thread.is_alive()
    assert "test_steps" in HANDLERS
