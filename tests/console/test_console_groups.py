"""A task group's console page in headless Chromium: its tasks, live status, stop, a refused start, delete."""

from __future__ import annotations

import re
from typing import Any

import pytest
from ferry_service import DST_REGION, SRC_REGION, FerryService, fill
from huaweicloudsdkoms.v2 import (
    BandwidthPolicyDto,
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    ShowTaskGroupRequest,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)
from playwright.sync_api import expect

from conftest import ConsolePage
from ferry.sandbox import SeaweedServer

pytestmark = pytest.mark.timeout(240)
MIB = 1024 * 1024


def test_a_group_page_shows_its_tasks_and_is_stopped_and_deleted_from_it(
        console: ConsolePage, console_service: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
        bucket_factory: Any) -> None:
    svc = console_service
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {f"g/{i:02d}.bin": bytes([i]) * (256 * 1024) for i in range(40)})
    client = svc.client()
    group_id = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(ak=seaweed_a.access_key, sk=seaweed_a.secret_key, region=SRC_REGION,
                                  bucket=src, cloud_type="Aliyun"),
        dst_node=TaskGroupDstNode(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, region=DST_REGION, bucket=dst),
        description="console group",
        bandwidth_policy=[BandwidthPolicyDto(start="00:00", end="23:59", max_bandwidth=MIB)]))).group_id

    console.sign_in(svc.tenant)
    console.go("/console/groups")
    row = console.page.locator(f"tr[data-group-id='{group_id}']")
    expect(row).to_contain_text("console group")
    console.shot("groups")
    row.locator("a").click()
    page = console.page
    # Its task appears once the split made it, without a reload (htmx refreshes the live part).
    expect(page.locator("#group-live tr[data-task-id]")).to_have_count(1, timeout=30_000)
    expect(page.locator("text=at most 1.0 MiB/s")).to_be_visible()
    console.shot("group-running")

    page.click("button[value=stop]")
    expect(page.locator(".flash.ok")).to_contain_text("Stop requested")
    expect(page.locator("[data-group-status]")).to_have_text("paused", timeout=30_000)
    assert client.show_task_group(ShowTaskGroupRequest(group_id=group_id)).status == 3

    # Started without the keys: refused in the API's words, and the group stays paused.
    page.click("#start-form summary")
    page.click("#start-form button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("OMS.")
    console.shot("group-start-refused")
    assert client.show_task_group(ShowTaskGroupRequest(group_id=group_id)).status == 3

    page.once("dialog", lambda d: d.accept())
    page.click("button.danger")
    expect(page).to_have_url(re.compile(r"/console/groups\?done=delete$"))
    expect(page.locator(".flash.ok")).to_contain_text("being deleted")
