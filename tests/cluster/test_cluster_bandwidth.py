"""A task's bandwidth policy holds for the task as a whole in distributed mode: with 3 `ferry worker` processes
as with 1, the destination fills at the policy's rate (within 10 %), not at the rate times the worker count."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from ferry_service import fill, prefix_task, s3_client, wait_task
from huaweicloudsdkoms.v2 import BandwidthPolicyDto

from cluster import Cluster, cluster

pytestmark = pytest.mark.slow

MIB = 1 << 20
LIMIT = 1 * MIB  # what one worker of the test cluster (2 units at a time, 4 objects each) moves well above
SIZE = 128 * 1024
COUNT = 100  # 12.5 MiB: ~12.5 s at the limit


@pytest.fixture(scope="module")
def nodes(seaweed_a: Any, seaweed_b: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(seaweed_a, seaweed_b, tmp_path_factory.mktemp("bandwidth")) as made:
        yield made


def _stored(server: Any, bucket: str) -> int:
    total = 0
    for page in s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def _steady_rate(nodes: Cluster, seaweed_a: Any, seaweed_b: Any) -> float:
    """Bytes/s at which the destination filled between 20 % and 80 % of the task (the start, with its listing
    and the budget's saved-up burst, and the tail, with fewer units left than workers, are left out)."""
    src, dst = f"src-{uuid.uuid4().hex[:10]}", f"dst-{uuid.uuid4().hex[:10]}"
    s3_client(seaweed_a).create_bucket(Bucket=src)
    s3_client(seaweed_b).create_bucket(Bucket=dst)
    fill(seaweed_a, src, {f"d{i % 4}/obj-{i:05d}": os.urandom(SIZE) for i in range(COUNT)})
    client = nodes.live.client()
    policy = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=LIMIT)]  # all day
    task_id = int(client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, bandwidth_policy=policy)).id)
    total = COUNT * SIZE
    marks: dict[float, float] = {}
    deadline = time.monotonic() + 120
    while len(marks) < 2 and time.monotonic() < deadline:
        stored = _stored(seaweed_b, dst)
        for share in (0.2, 0.8):
            if share not in marks and stored >= share * total:
                marks[share] = time.monotonic()
        time.sleep(0.1)
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5), timeout=120, every=0.2)
    assert task.status == 5 and task.successful_num == COUNT, task.error_reason
    return 0.6 * total / (marks[0.8] - marks[0.2])


def test_the_bandwidth_limit_holds_with_three_workers_and_with_one(nodes: Cluster, seaweed_a: Any,
                                                                    seaweed_b: Any) -> None:
    assert len(nodes.live_workers()) == 3
    three = _steady_rate(nodes, seaweed_a, seaweed_b)
    for w in nodes.live_workers()[1:]:
        w.send_signal(signal.SIGTERM)
        w.wait(60)
    assert len(nodes.live_workers()) == 1
    one = _steady_rate(nodes, seaweed_a, seaweed_b)
    print(f"limit {LIMIT / MIB:.1f} MiB/s: 3 workers {three / MIB:.3f} MiB/s, 1 worker {one / MIB:.3f} MiB/s")
    # The ceiling is the point: never more than 10 % above the policy, whatever the worker count (a
    # per-process limiter gives 3x with three workers). Below it, a unit's start and end on a loaded 2-core
    # machine leave moments with nothing to send, which a limit does not make up for; the limiter alone,
    # always busy, is within 10 % both ways (tests/integration/test_cluster_limits.py).
    for workers, rate in ((3, three), (1, one)):
        assert 0.75 * LIMIT <= rate <= 1.10 * LIMIT, f"{workers} worker(s): {rate / MIB:.2f} MiB/s"


