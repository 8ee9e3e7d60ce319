"""Local faults under `ferry serve`: PostgreSQL restarted, the SQLite file full, locked or deleted mid-task."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ferry_service import fill, listing, overrides, prefix_task, start_service, wait_task
from huaweicloudsdkoms.v2 import BandwidthPolicyDto

from ferry.db.job_repo import ObjectResult
from ferry.engine.pipeline import Transfer
from ferry.objects import ObjectInfo
from pgdb import PG_ADMIN, pg_database

pytestmark = pytest.mark.timeout(240)
MiB = 1024 * 1024


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each key was copied successfully (a verified object copied again shows as 2)."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    original = Transfer._copy

    async def counting(self: Transfer, obj: ObjectInfo) -> ObjectResult:
        result = await original(self, obj)
        if result.status == "success":
            with lock:
                seen[obj.key] += 1
        return result

    monkeypatch.setattr(Transfer, "_copy", counting)
    return seen


@pytest.fixture
def pg_url() -> Iterator[str]:
    gen = pg_database()
    url = next(gen)
    try:
        yield url
    finally:
        gen.close()


def _restart_postgres(db_name: str, closed_for: float) -> None:
    """What a PostgreSQL restart looks like to its clients: every connection to the database dropped, and no
    new one accepted for a while."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db_name,))
            time.sleep(closed_for)
        finally:
            admin.execute(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS true')


def test_postgres_restart_mid_task_loses_nothing(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str,
                                                 copies: Counter[str]) -> None:
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"r/{i:04d}": os.urandom(16 * 1024) for i in range(150)}
    fill(seaweed_a, sb, bodies)
    started = start_service(tmp_path, pg_url)
    try:
        client = started.value.client()
        policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
        created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
        wait_task(client, created.id, lambda t: t.successful_num >= 20)
        _restart_postgres(pg_url.rsplit("/", 1)[1], closed_for=1.5)
        done, _ = wait_task(client, created.id, lambda t: t.status in (3, 4, 5), timeout=120)
        assert done.status == 5, done.error_reason
        assert (done.successful_num, done.failed_num, done.skipped_num) == (len(bodies), 0, 0)
        assert done.complete_size == sum(len(b) for b in bodies.values())
    finally:
        started.close()
    assert {k: v[0] for k, v in listing(seaweed_b, db).items()} == {k: len(v) for k, v in bodies.items()}
    assert set(copies) == set(bodies) and max(copies.values()) == 1, [k for k, n in copies.items() if n > 1]
