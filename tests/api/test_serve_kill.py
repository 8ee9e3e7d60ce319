"""`ferry serve` killed with -9 in the middle of a task, then restarted: the task resumes and every object arrives."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from ferry_service import DST_REGION, SRC_REGION, fill, listing, overrides, prefix_task, s3_client, wait_task
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    BandwidthPolicyDto,
    ShowTaskRequest,
    UpdateBandwidthPolicyReq,
    UpdateBandwidthPolicyRequest,
)
from live_server import oms_client, unused_port, wait_listening

pytestmark = pytest.mark.timeout(240)
FERRY = [sys.executable, "-m", "ferry.cli"]
N = 300
SIZE = 24 * 1024
MiB = 1024 * 1024


def _finished(db: Path) -> dict[str, float]:
    """Keys recorded as done; copies that landed but were not yet recorded at the kill come back as skipped."""
    with sqlite3.connect(db, timeout=5) as conn:
        return dict(conn.execute("SELECT key, updated_at FROM job_objects WHERE status IN ('success', 'skipped')"))


def test_kill_9_mid_task_then_restart_finishes_everything(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                          tmp_path: Path) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"obj/{i:04d}": os.urandom(SIZE) for i in range(N)}
    fill(seaweed_a, sb, bodies)
    data = tmp_path / "data"
    env = dict(os.environ, FERRY_DATA_DIR=str(data), FERRY_LOG_LEVEL="DEBUG",
               FERRY_ENDPOINT_OVERRIDES=json.dumps(overrides(seaweed_a, seaweed_b)))
    for name in ("FERRY_DATABASE_URL", "FERRY_MASTER_KEY"):
        env.pop(name, None)
    project = uuid.uuid4().hex
    made = subprocess.run([*FERRY, "credentials", "create", "--project-id", project], env=env,
                          capture_output=True, text=True, check=True)
    cred = json.loads(made.stdout)
    port = unused_port()
    logs = [tmp_path / "serve-1.log", tmp_path / "serve-2.log"]

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as fh:
            proc = subprocess.Popen([*FERRY, "serve", "--port", str(port)], env=env, stdout=fh,
                                    stderr=subprocess.STDOUT)
        wait_listening(port, proc)
        return proc

    first = start(logs[0])
    try:
        client = oms_client(f"http://127.0.0.1:{port}", cred["access_key"], cred["secret_key"], project)
        policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
        began = time.monotonic()
        created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
        mid, _ = wait_task(client, created.id, lambda t: t.successful_num >= N // 5, every=0.05)
        elapsed = time.monotonic() - began
        assert mid.status == 2 and mid.successful_num < N
        # The 1 MiB/s window holds: no more than the rate plus the half-second burst (and a little slack).
        assert mid.complete_size <= MiB * (elapsed + 1.0), (mid.complete_size, elapsed)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)

    before = _finished(data / "ferry.db")
    # Results reach the database in batches, so fewer may be recorded than the live counter showed.
    assert 0 < len(before) < N
    stamps = {k: v[1] for k, v in listing(seaweed_b, db).items() if k in before}
    time.sleep(1.1)  # a re-copy would now show a newer LastModified

    second = start(logs[1])
    try:
        restarted = time.monotonic()
        client = oms_client(f"http://127.0.0.1:{port}", cred["access_key"], cred["secret_key"], project)
        try:  # lifts the 1 MiB/s limit so the rest goes fast
            client.update_bandwidth_policy(UpdateBandwidthPolicyRequest(
                task_id=created.id, body=UpdateBandwidthPolicyReq(bandwidth_policy=[])))
        except ClientRequestException as e:
            # On a loaded machine the resumed task can finish the rest (~6 s at the limit) before this call.
            assert e.error_code == "OMS.0070", e
        done, samples = wait_task(client, created.id, lambda t: t.status in (4, 5), timeout=120)
        resumed_in = time.monotonic() - restarted
        assert done.status == 5, done.error_reason
        assert all(t.status in (1, 2) for t in samples[:-1])
        assert (done.total_num, done.successful_num + done.skipped_num, done.failed_num) == (N, N, 0)
        assert done.total_size == N * SIZE and done.complete_size == N * SIZE
        shown = client.show_task(ShowTaskRequest(task_id=created.id))
        assert shown.status == 5
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, "ferry serve did not shut down cleanly on SIGTERM"
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)

    after = _finished(data / "ferry.db")
    assert set(after) == set(bodies)
    assert all(after[k] == t for k, t in before.items()), "an object verified before the kill was recorded again"
    got = listing(seaweed_b, db)
    assert {k: v[0] for k, v in got.items()} == {k: SIZE for k in bodies}
    assert all(got[k][1] == t for k, t in stamps.items()), "an object copied before the kill was copied again"
    dst = s3_client(seaweed_b)
    for k in list(bodies)[::25]:
        assert dst.get_object(Bucket=db, Key=k)["Body"].read() == bodies[k]
    text = "".join(p.read_text(errors="replace") for p in logs)
    assert "ferry.runner" in text and f"task {created.id}" in text
    for secret in (seaweed_a.secret_key, seaweed_b.secret_key, cred["secret_key"]):
        assert secret not in text, "a secret appeared in the service log"
    print(f"\nkill -9 after {len(before)}/{N} objects; restart finished the rest in {resumed_in:.1f}s "
          f"({SRC_REGION} -> {DST_REGION})")
