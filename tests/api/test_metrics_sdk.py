"""GET /metrics scraped while a real migration runs (SeaweedFS stores, the OMS SDK): its figures are show_task's."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ferry_service import DST_REGION, FerryService, fill, overrides, prefix_task, start_service, wait_task
from huaweicloudsdkoms.v2 import (
    BandwidthPolicyDto,
    CreateSyncEventsRequest,
    CreateSyncTaskReq,
    CreateSyncTaskRequest,
    ListTasksRequest,
    ShowSyncTaskRequest,
    ShowTaskRequest,
    SyncObjectReq,
)
from prometheus_client.parser import text_string_to_metric_families

from ferry.metrics import SYNC_EVENT_LATENCY

pytestmark = pytest.mark.timeout(180)
TOKEN = "metrics-token-for-tests"
SYNC_REGION = "us-east-1"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, seaweed_a: Any, seaweed_b: Any) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp("ferry-metrics")
    with pytest.MonkeyPatch.context() as mp:
        table = {**overrides(seaweed_a, seaweed_b), f"AWS/{SYNC_REGION}": seaweed_a.endpoint}
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(table))
        mp.setenv("FERRY_METRICS_TOKEN", TOKEN)
        # The sync workers in their own process, as `ferry serve` runs them: their tallies reach /metrics
        # through the database.
        mp.setenv("FERRY_SYNC_WORKERS", "process")
        mp.setenv("FERRY_METRICS_PUBLISH_SECONDS", "0.5")
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()


def scrape(svc: FerryService, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{svc.url}/metrics", headers=headers, timeout=30)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of every sample in an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def of_task(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, task_id: int | str,
            **labels: str) -> float | None:
    for (sample, got), value in values.items():
        d = dict(got)
        if sample == name and d.get("task_id") == str(task_id) and all(d.get(k) == v for k, v in labels.items()):
            return value
    return None


def test_metrics_during_a_migration_match_the_tasks_own_counters(svc: FerryService, seaweed_a: Any,
                                                                  seaweed_b: Any, bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"k/{i:03d}": os.urandom(16 * 1024 + i) for i in range(120)}
    fill(seaweed_a, sb, bodies)
    # A copy already there and equal: skipped, so the skipped series are not all zero.
    fill(seaweed_b, db, {k: v for k, v in list(bodies.items())[:20]})
    client = svc.client()
    # 1 MiB/s over ~2 MB: the run lasts a couple of seconds, long enough to be scraped mid-way.
    window = [BandwidthPolicyDto(start="00:00", end="00:00", max_bandwidth=MiB)]
    created = client.create_task(prefix_task(seaweed_a, sb, seaweed_b, db, bandwidth_policy=window,
                                             object_overwrite_mode="SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE"))
    scraped: list[dict[Any, float]] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            answer = scrape(svc)
            assert answer.status_code == 200, answer.text
            scraped.append(samples(answer.text))
            time.sleep(0.1)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5))
    finally:
        done.set()
        thread.join()
    assert task.status == 5, task.error_reason
    assert (task.successful_num, task.skipped_num, task.failed_num) == (100, 20, 0)

    # Mid-way scrapes saw the task running and its counters move, never back.
    running = [v for v in scraped if of_task(v, "ferry_task_status", created.id) == 2]
    assert running, "no scrape saw the task running"
    copied = [of_task(v, "ferry_task_objects_total", created.id, result="copied") for v in scraped]
    seen = [c for c in copied if c is not None]
    assert seen == sorted(seen), seen
    assert any(0 < c < 100 for c in seen), seen
    assert any(of_task(v, "ferry_task_speed_bytes_per_second", created.id) for v in running)
    assert any(0 < (of_task(v, "ferry_task_progress_ratio", created.id) or 0) < 1 for v in running)
    assert any(v[("ferry_tasks", (("status", "running"),))] >= 1 for v in running)

    # At the end, the scrape says exactly what show_task says.
    task = client.show_task(ShowTaskRequest(task_id=created.id))
    final = samples(scrape(svc).text)
    expected = {
        ("ferry_task_objects_total", "copied"): task.successful_num,
        ("ferry_task_objects_total", "skipped"): task.skipped_num,
        ("ferry_task_objects_total", "failed"): task.failed_num,
        ("ferry_task_bytes_total", "copied"): task.real_size,
        ("ferry_task_bytes_total", "skipped"): task.complete_size - task.real_size,
    }
    for (name, result), want in expected.items():
        assert of_task(final, name, created.id, result=result) == want, (name, result)
    assert of_task(final, "ferry_task_listed_objects", created.id) == task.total_num
    assert of_task(final, "ferry_task_listed_bytes", created.id) == task.total_size
    assert of_task(final, "ferry_task_listing_done", created.id) == 1
    assert of_task(final, "ferry_task_progress_ratio", created.id) == task.progress == 1
    assert of_task(final, "ferry_task_speed_bytes_per_second", created.id) == task.migrate_speed == 0
    assert of_task(final, "ferry_task_eta_seconds", created.id) == task.left_time == 0
    assert of_task(final, "ferry_task_status", created.id) == 5
    assert of_task(final, "ferry_task_objects_total", created.id, project_id=svc.tenant.project_id) == 100
    # The totals over every task include this one's.
    assert final[("ferry_objects_total", (("result", "copied"),))] >= 100
    listed = client.list_tasks(ListTasksRequest(limit=100)).count
    assert sum(v for (name, _), v in final.items() if name == "ferry_tasks") == listed


def test_metrics_needs_the_token_when_one_is_set(svc: FerryService) -> None:
    for token in (None, "wrong", TOKEN[:-1]):
        answer = scrape(svc, token)
        assert answer.status_code == 401, (token, answer.status_code)
        body = answer.json()
        assert set(body) == {"error_code", "error_msg"} and body["error_code"] == "APIGW.0301", body
        assert answer.headers["www-authenticate"].startswith("Bearer")
    answer = httpx.get(f"{svc.url}/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert answer.status_code == 401
    ok = scrape(svc)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")


def test_api_latency_is_labelled_by_route_template_not_by_path(svc: FerryService) -> None:
    client = svc.client()
    client.list_tasks(ListTasksRequest(limit=5))
    httpx.get(f"{svc.url}/v2/{svc.tenant.project_id}/no/such/route/here")
    httpx.get(f"{svc.url}/console/tasks/123456789012345")  # a mounted app's route, signed out
    text = scrape(svc).text
    values = samples(text)
    routes = {dict(labels)["route"] for (name, labels), _ in values.items()
              if name == "ferry_api_request_duration_seconds_count"}
    assert "/v2/{project_id}/tasks" in routes, routes
    assert "unmatched" in routes, routes
    # No raw path, project id or task id becomes a label value.
    assert svc.tenant.project_id not in json.dumps(sorted(routes))
    assert all("{" in r or r in ("unmatched", "/metrics", "/") for r in routes if not r.startswith("/console")), routes
    assert "/console/tasks/{task_id}" in routes, routes  # the console's routes carry their mount
    listed = [v for (name, labels), v in values.items() if name == "ferry_api_request_duration_seconds_count"
              and dict(labels) == {"method": "GET", "route": "/v2/{project_id}/tasks", "status": "200"}]
    assert listed and listed[0] >= 1


def test_sync_figures_and_the_worker_process_latency_reach_metrics(svc: FerryService, seaweed_a: Any,
                                                                   seaweed_b: Any, bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    client = svc.client()
    task_id = client.create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
        src_cloud_type="AWS", src_region=SYNC_REGION, src_bucket=sb, src_ak=seaweed_a.access_key,
        src_sk=seaweed_a.secret_key, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
        dst_region=DST_REGION, dst_bucket=db))).sync_task_id
    files = {f"ev/{i}": os.urandom(1000 + i) for i in range(3)}
    fill(seaweed_a, sb, files)
    client.create_sync_events(CreateSyncEventsRequest(sync_task_id=task_id,
                                                      body=SyncObjectReq(object_keys=list(files))))
    # This process's own tally (other tests may have run sync workers here): what the scrape shows beyond it
    # came from the worker process.
    here = sum(SYNC_EVENT_LATENCY.count(o) for o in ("success", "skip"))
    deadline = time.monotonic() + 60
    while True:
        values = samples(scrape(svc).text)
        settled = sum(v for (name, labels), v in values.items()
                      if name == "ferry_sync_event_latency_seconds_count" and dict(labels)["outcome"] in
                      ("success", "skip"))
        pending = of_task(values, "ferry_sync_events_pending", task_id)
        if settled - here >= len(files) and pending == 0:
            break
        assert time.monotonic() < deadline, (settled, here, pending)
        time.sleep(0.2)
    shown = client.show_sync_task(ShowSyncTaskRequest(sync_task_id=task_id, query_time=int(time.time() * 1000)))
    assert of_task(values, "ferry_sync_events_accepted_total", task_id) == shown.monthly_acceptance_request == 3
    copied = of_task(values, "ferry_sync_objects_total", task_id, result="copied")
    skipped = of_task(values, "ferry_sync_objects_total", task_id, result="skipped")
    assert (copied, skipped) == (shown.monthly_success_object, shown.monthly_skip_object)
    assert of_task(values, "ferry_sync_bytes_total", task_id) == shown.monthly_size
    assert values[("ferry_sync_tasks", (("status", "synchronizing"),))] >= 1
