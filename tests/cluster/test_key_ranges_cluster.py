"""A flat bucket of a byte-ordered source (moto, into another moto bucket) in distributed mode: three `ferry worker`
processes, Redis and PostgreSQL list it in key ranges (start-after splitting), and every object is copied once
and verified."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ferry_service import fill, prefix_task, s3_client, wait_task

from cluster import Cluster, cluster
from faultproxy import Status
from ferry.service import tasks

pytestmark = pytest.mark.slow

FLAT = 2000
RANGES = 4


@pytest.fixture(scope="module")
def nodes(moto: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Copy units of 100 objects; a flat listing is cut into up to 4 key ranges. Both sides list in byte
    # order (a destination that does not would be read whole by every range: no cut).
    with cluster(moto, moto, tmp_path_factory.mktemp("cluster"),
                 worker_args=("--unit-keys", "100", "--list-ranges", str(RANGES))) as made:
        yield made


def _etags(server: Any, bucket: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def _started_by(logs: Path) -> dict[int, set[str]]:
    """unit id -> the worker logs that say they started it."""
    found: dict[int, set[str]] = defaultdict(set)
    for log in logs.glob("worker-*.log"):
        for m in re.finditer(r"unit (\d+) \(range of task", log.read_text(errors="replace")):
            found[int(m.group(1))].add(log.name)
    return found


def test_a_flat_bucket_is_listed_in_key_ranges_by_workers(
        nodes: Cluster, moto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = f"flat-{uuid.uuid4().hex[:10]}", f"dst-{uuid.uuid4().hex[:10]}"
    s3_client(moto).create_bucket(Bucket=src)
    s3_client(moto).create_bucket(Bucket=dst)
    # 2,000 keys at the bucket's root (hex names: 16 first characters to cut at, two unicode ones) and a folder.
    bodies = {hashlib.md5(str(i).encode()).hexdigest()[:12]: os.urandom(32) for i in range(FLAT)}
    bodies.update({"é-accent": b"e", "中-cjk": b"c"})
    bodies.update({f"sub/{i:02d}": os.urandom(16) for i in range(30)})
    fill(moto, src, bodies)

    # An endpoint from the operator's table lists in no order Ferry vouches for (storage.stores); these (moto,
    # AWS's byte order, and the proxy in front of it) are taken as a cloud's own endpoints would be.
    original = tasks._endpoint_spec
    ordered = {moto.endpoint.rstrip("/"), nodes.proxy.endpoint.rstrip("/")}

    def vouched(ep: Any) -> dict[str, Any]:
        spec = original(ep)
        if ep.url.rstrip("/") in ordered:
            spec["from_override"] = False
        return spec

    monkeypatch.setattr(tasks, "_endpoint_spec", vouched)
    puts = nodes.proxy.add(Status(503), method="PUT", path=f"^/{dst}/", first=0)  # counts, never fires
    try:
        client = nodes.live.client()
        task_id = int(client.create_task(prefix_task(moto, src, moto, dst)).id)
        task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5), timeout=240, every=0.2)
    finally:
        nodes.proxy.remove(puts)
    assert task.status == 5, task.error_reason
    total = len(bodies)
    assert (task.total_num, task.successful_num, task.failed_num) == (total, total, 0)
    assert _etags(moto, dst) == _etags(moto, src)
    # No object was written twice.
    assert puts.matched == total, puts.matched

    units = [u for u in nodes.units(task_id) if u["kind"] == "range"]
    # The root was split by folder (sub/), then its own objects by key: the root keeps the first range, the
    # others are range units of their own, contiguous, the last one open.
    root = next(u for u in units if json.loads(u["spec"])["items"][0][0] == "" and u["start_after"] is None)
    cut = sorted((u for u in units if u["start_after"] is not None), key=lambda u: u["start_after"])
    spans = [(u["start_after"], u["end_key"]) for u in units]
    assert root["end_key"] is not None and 2 <= len(cut) <= RANGES - 1, spans
    edges = [root["end_key"]] + [u["end_key"] for u in cut]
    assert [u["start_after"] for u in cut] == edges[:-1] and edges[-1] is None
    assert all(json.loads(u["spec"])["direct"] for u in [root, *cut])
    assert sorted(json.loads(u["spec"])["items"][0][0] for u in units if u not in cut and u is not root) == ["sub/"]
    # Every range listed part of the flat keys, and the listing progress adds up to the objects.
    assert all(u["listed"] > 0 for u in [root, *cut]), [u["listed"] for u in units]
    assert sum(u["listed"] for u in units) == total
    # Each key range is a unit of its own, run by a worker process (which one is the broker's choice: one
    # worker took all four in a CI-like run, so the test does not ask for two).
    started = _started_by(nodes.logs)
    assert all(len(started[u["id"]]) >= 1 for u in [root, *cut]), {u["id"]: started[u["id"]] for u in units}
