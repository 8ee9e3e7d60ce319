"""A clean shutdown in the middle of a task leaves it running-but-unleased; the next service resumes it at once."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from ferry_service import fill, listing, overrides, prefix_task, start_service, wait_task
from huaweicloudsdkoms.v2 import BandwidthPolicyDto, UpdateBandwidthPolicyReq, UpdateBandwidthPolicyRequest

from ferry.db.task_repo import RUNNING, TaskRepo

pytestmark = pytest.mark.timeout(180)
MiB = 1024 * 1024


def test_clean_shutdown_mid_task_resumes_on_next_start(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(seaweed_a, seaweed_b)))
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"r/{i:04d}": os.urandom(16 * 1024) for i in range(150)}
    fill(seaweed_a, sb, bodies)
    url = f"sqlite:///{tmp_path / 'ferry.db'}"
    first = start_service(tmp_path, url)
    svc = first.value
    client = svc.client()
    policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=policy))
    wait_task(client, created.id, lambda t: t.successful_num >= 20)
    first.close()

    row = TaskRepo(svc.service.engine).get(created.id)
    assert row is not None and row.status == RUNNING and row.lease_owner is None
    assert row.secrets is not None  # still needed to resume without the caller
    assert 20 <= row.success_num < len(bodies)

    second = start_service(tmp_path, url)
    try:
        client = second.value.client(svc.tenant)
        client.update_bandwidth_policy(UpdateBandwidthPolicyRequest(
            task_id=created.id, body=UpdateBandwidthPolicyReq(bandwidth_policy=[])))
        began = time.monotonic()
        done, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
        assert done.status == 5 and done.successful_num + done.skipped_num == len(bodies), done.error_reason
        assert time.monotonic() - began < 30
    finally:
        second.close()
    assert {k: v[0] for k, v in listing(seaweed_b, db).items()} == {k: len(v) for k, v in bodies.items()}
