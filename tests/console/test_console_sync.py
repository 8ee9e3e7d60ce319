"""The sync task list of the console in headless Chromium: status, this month's counters, the status filter."""

from __future__ import annotations

import time
from typing import Any

import pytest
from console_browser import ConsolePage
from ferry_service import DST_REGION, SRC_REGION, FerryService, fill
from huaweicloudsdkoms.v2 import CreateSyncTaskReq, CreateSyncTaskRequest
from playwright.sync_api import expect

from ferry.sandbox import SeaweedServer

pytestmark = pytest.mark.timeout(180)


def test_the_sync_list_shows_this_months_counters(console: ConsolePage, console_service: FerryService,
                                                  seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
                                                  bucket_factory: Any) -> None:
    svc = console_service
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {f"s/{i}.txt": b"x" * 1000 for i in range(3)})
    task_id = svc.client().create_sync_task(CreateSyncTaskRequest(body=CreateSyncTaskReq(
        src_cloud_type="Aliyun", src_region=SRC_REGION, src_bucket=src, src_ak=seaweed_a.access_key,
        src_sk=seaweed_a.secret_key, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
        dst_region=DST_REGION, dst_bucket=dst, description="kept in sync"))).sync_task_id

    console.sign_in(svc.tenant)
    row = console.page.locator(f"tr[data-sync-task-id='{task_id}']")
    # The list is not live: reload until the first reconciliation has copied the three objects.
    deadline = time.monotonic() + 60
    while True:
        console.go("/console/sync-tasks?status=SYNCHRONIZING")
        synced = row.locator("td[data-label='Synced (month)']")
        if synced.count() and synced.inner_text().startswith("3"):
            break
        assert time.monotonic() < deadline, row.inner_text() if row.count() else "no row"
        time.sleep(1)
    expect(row).to_contain_text("kept in sync")
    expect(row.locator("td[data-label='Size (month)']")).to_have_text("2.9 KiB")
    expect(row.locator(".status")).to_have_text("synchronizing")
    console.shot("sync-tasks")
    console.go("/console/sync-tasks?status=STOPPED")
    expect(row).to_have_count(0)
