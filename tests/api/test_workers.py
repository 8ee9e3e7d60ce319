"""The cluster's workers as operators see them: `GET /v2/{project_id}/workers` (signed like every call) and
`ferry workers` (a table, or --json) show the same rows from one service function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from ferry_service import FerryService, start_service
from sdk_signing import SdkSigningAuth
from sqlalchemy import update

from ferry.db.cluster_models import cluster_workers
from ferry.db.cluster_repo import WorkerRepo
from ferry.db.unit_repo import UnitDraft, UnitRepo
from pgdb import pg_database


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FerryService, str]]:
    home = tmp_path_factory.mktemp("workers")
    for url in pg_database():
        started = start_service(home, url, run_tasks=False)
        target = started.value
        engine = target.service.engine
        workers = WorkerRepo(engine)
        workers.register("hostA/101/x1", "worker", "hostA", 101, "1.2.3", {"concurrency": 64})
        workers.register("hostB/202/x2", "worker", "hostB", 202, "1.2.3", {})
        workers.register("api/7/x3", "server", "api", 7, "1.2.3", {})
        workers.beat("hostA/101/x1", units_in_flight=3, units_done=40)
        # hostB went silent two minutes ago: listed, but not alive.
        with engine.begin() as conn:
            conn.execute(update(cluster_workers).where(cluster_workers.c.id == "hostB/202/x2")
                         .values(heartbeat_at=cluster_workers.c.heartbeat_at - 120))
        units = UnitRepo(engine)
        ids = units.add("task", "1", 1, [UnitDraft("range") for _ in range(5)])
        assert units.claim(ids[0], "hostA/101/x1", 30) is not None
        try:
            yield target, url
        finally:
            started.close()


def test_the_api_lists_the_workers_with_their_heartbeats(cluster: tuple[FerryService, str]) -> None:
    target, _ = cluster
    t = target.tenant
    unsigned = requests.get(f"{target.url}/v2/{t.project_id}/workers", timeout=30)
    assert unsigned.status_code == 401
    resp = requests.get(f"{target.url}/v2/{t.project_id}/workers", auth=SdkSigningAuth(t.ak, t.sk, t.project_id),
                        headers={"X-Project-Id": t.project_id}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == 3 and body["queued_units"] == 4 and body["running_units"] == 1
    by_host = {w["host"]: w for w in body["workers"]}
    a, b, api = by_host["hostA"], by_host["hostB"], by_host["api"]
    assert (a["role"], a["pid"], a["units_in_flight"], a["units_done"], a["alive"]) == ("worker", 101, 3, 40, True)
    assert a["heartbeat_age"] < 30 and a["heartbeat_time"] >= a["start_time"] - 1000
    assert b["alive"] is False and b["heartbeat_age"] >= 119
    assert api["role"] == "server"


def _ferry(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FERRY_DATABASE_URL=url)
    return subprocess.run([sys.executable, "-m", "ferry.cli", "workers", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_cli_shows_the_same_rows(cluster: tuple[FerryService, str], tmp_path: Path) -> None:
    _, url = cluster
    run = _ferry(url, "--json")
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["count"] == 3 and (body["queued_units"], body["running_units"]) == (4, 1)
    assert {(w["host"], w["pid"], w["alive"]) for w in body["workers"]} == {
        ("hostA", 101, True), ("hostB", 202, False), ("api", 7, True)}

    table = _ferry(url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ROLE", "HOST", "PID", "STATE"]
    [row_a] = [ln for ln in lines if "hostA" in ln]
    assert row_a.split()[:6] == ["worker", "hostA", "101", "running", "3", "40"]
    assert "(silent)" in next(ln for ln in lines if "hostB" in ln)
    assert lines[-1] == "1 worker(s) alive; units: 4 queued, 1 running"
