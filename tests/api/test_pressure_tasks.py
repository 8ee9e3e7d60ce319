"""Migration tasks over a hostile network (tests/faultproxy.py in front of the source store): a store capped at N
requests/s, stalls mid-body and an object that always fails. The task finishes; only the bad object fails."""

from __future__ import annotations

import json
import os
import time
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ferry_service import (
    FerryService,
    fill,
    listing,
    overrides,
    prefix_task,
    s3_client,
    start_service,
    wait_task,
)
from prometheus_client.parser import text_string_to_metric_families

from faultproxy import FaultProxy, RateCap, Stall, Status

pytestmark = pytest.mark.timeout(300)


def store_tallies(svc: FerryService) -> dict[tuple[str, str, str, str], float]:
    """(metric, backend, operation, code or reason) -> value, from the service's /metrics."""
    text = httpx.get(f"{svc.url}/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("ferry_store_request_errors_total", "ferry_store_retries_total"):
                key = (s.name, s.labels["backend"], s.labels["operation"], s.labels.get("code") or s.labels["reason"])
                out[key] = s.value
    return out


def grew(before: dict[tuple[str, str, str, str], float], after: dict[tuple[str, str, str, str], float],
         key: tuple[str, str, str, str]) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def proxy(seaweed_a: Any) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweed_a.endpoint).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, seaweed_a: Any, seaweed_b: Any,
        proxy: FaultProxy) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp("ferry-pressure")
    src = types.SimpleNamespace(endpoint=proxy.endpoint)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(overrides(src, seaweed_b)))
        mp.setenv("FERRY_STALL_TIMEOUT", "1")
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()


@pytest.fixture(autouse=True)
def _clear(proxy: FaultProxy) -> Iterator[None]:
    yield
    proxy.clear()


def test_a_task_through_a_request_rate_cap_copies_every_object(svc: FerryService, proxy: FaultProxy,
                                                               seaweed_a: Any, seaweed_b: Any,
                                                               bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"k{i:04d}": os.urandom(900) for i in range(150)}
    fill(seaweed_a, sb, bodies)
    cap = proxy.add(RateCap(per_second=50, burst=25))
    before = store_tallies(svc)
    started = time.monotonic()
    client = svc.client()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5), timeout=120)
    elapsed = time.monotonic() - started
    assert task.status == 5, task.error_reason
    assert (task.successful_num, task.failed_num) == (len(bodies), 0)
    assert cap.fired > 0 and cap.matched / elapsed < 125  # about what the store takes, not thousands refused
    # /metrics saw the refusals as throttled retries of the S3 source, by operation, and nothing else failed.
    after = store_tallies(svc)
    throttled = sum(grew(before, after, k) for k in after if k[0] == "ferry_store_retries_total" and k[3] ==
                    "throttled")
    assert throttled > 0 and all(k[1] == "s3" for k in after if grew(before, after, k))
    # A retry counted as failed is one whose answer never came: the module's 1 s stall timeout can fire on a
    # busy machine (CI: 4 of them once). Every answer that did come was a refusal, never an error status.
    errors = {k: grew(before, after, k) for k in after if k[0] == "ferry_store_request_errors_total"}
    unanswered = sum(n for k, n in errors.items() if k[3] == "TransientError")
    assert {k[3] for k, n in errors.items() if n} <= {"SlowDown", "503", "TransientError"}, errors
    assert sum(grew(before, after, k) for k in after if k[0] == "ferry_store_retries_total" and k[3] ==
               "failed") <= unanswered
    assert {k: v[0] for k, v in listing(seaweed_b, db).items()} == {k: len(v) for k, v in bodies.items()}


def test_a_task_survives_stalls_and_fails_only_its_bad_object(svc: FerryService, proxy: FaultProxy,
                                                               seaweed_a: Any, seaweed_b: Any,
                                                               bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"k{i:03d}": os.urandom(100_000) for i in range(20)}
    fill(seaweed_a, sb, {**bodies, "bad": b"x" * 1000})
    stall = proxy.add(Stall(after=20_000), method="GET", path=f"^/{sb}/k", first=3)
    bad = proxy.add(Status(500), method="GET", path=f"^/{sb}/bad$")
    before = store_tallies(svc)
    started = time.monotonic()
    client = svc.client()
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5), timeout=120)
    assert time.monotonic() - started < 90
    assert (task.successful_num, task.failed_num) == (len(bodies), 1), task.error_reason
    assert stall.fired == 3 and bad.fired >= 5
    # The bad object's five 500s are on /metrics as failed reads of the S3 source with their code, four retried.
    after = store_tallies(svc)
    assert grew(before, after, ("ferry_store_request_errors_total", "s3", "read", "InternalError")) >= 5
    assert grew(before, after, ("ferry_store_retries_total", "s3", "read", "failed")) >= 4
    written = set(listing(seaweed_b, db))
    [failed_list] = [k for k in written if k.startswith("oms/task/")]
    assert written - {failed_list} == set(bodies)
    text = s3_client(seaweed_b).get_object(Bucket=db, Key=failed_list)["Body"].read().decode()
    assert "bad" in text and "InternalError" in text and "gave up after 5 attempts" in text, text
